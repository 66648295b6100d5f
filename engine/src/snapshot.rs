//! A snapshot: everything one load of the policies and plugins produces, ready to serve.
//! Immutable; a reload builds a whole new one and swaps it in (see `runtime`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::compile::{self, CompiledKind, CompiledPolicy, Script};
use crate::patterns::cache::CacheRule;
use crate::patterns::{
    CounterRule, LeaderboardRule, Locker, OpRunner, PubSubRule, QueueRule, RateLimiter, Sessions,
    StreamRule,
};
use crate::plugin::{Limits, PluginBinding, PluginSet};
use crate::policy::{self, Diagnostic, Diagnostics, RuleKind};

/// Where a snapshot is loaded from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub policies: Vec<PathBuf>,
    pub plugins: Option<PathBuf>,
    pub plugin_limits: Limits,
}

pub struct Snapshot {
    pub compiled: CompiledPolicy,
    pub plugins: PluginSet,
    /// Rate limiters by app, then rule.
    pub ratelimits: HashMap<String, HashMap<String, Arc<RateLimiter>>>,
    pub ops: HashMap<String, HashMap<String, Arc<OpRunner>>>,
    /// Cache rules by app, then rule.
    pub caches: HashMap<String, HashMap<String, Arc<CacheRule>>>,
    /// Session rules by app, then rule.
    pub sessions: HashMap<String, HashMap<String, Arc<Sessions>>>,
    /// Lock rules by app, then rule.
    pub locks: HashMap<String, HashMap<String, Arc<Locker>>>,
    /// Queue rules by app, then rule.
    pub queues: HashMap<String, HashMap<String, Arc<QueueRule>>>,
    /// Stream rules by app, then rule.
    pub streams: HashMap<String, HashMap<String, Arc<StreamRule>>>,
    /// Pub/sub rules by app, then rule.
    pub pubsubs: HashMap<String, HashMap<String, Arc<PubSubRule>>>,
    /// Counter rules by app, then rule.
    pub counters: HashMap<String, HashMap<String, Arc<CounterRule>>>,
    /// Leaderboard rules by app, then rule.
    pub leaderboards: HashMap<String, HashMap<String, Arc<LeaderboardRule>>>,
    pub scripts: Vec<Arc<Script>>,
    pub warnings: Vec<Diagnostic>,
    pub loaded_at: SystemTime,
}

impl Snapshot {
    /// Loads, validates and compiles the policies and plugins, and binds each plugin to its
    /// rules (running `init`). Touches no Redis. Fails with every diagnostic found.
    pub fn build(src: &Sources) -> Result<Snapshot, Diagnostics> {
        let loaded = policy::load_paths(&src.policies);
        let plugins = match &src.plugins {
            Some(dir) => PluginSet::load_dir(dir, src.plugin_limits),
            None => Ok(PluginSet::empty()),
        };
        // Report policy and plugin problems together.
        let (loaded, plugins) = match (loaded, plugins) {
            (Ok(l), Ok(p)) => (l, p),
            (l, p) => {
                let mut d = Vec::new();
                if let Err(e) = l {
                    d.extend(e.0);
                }
                if let Err(e) = p {
                    d.extend(e.0);
                }
                return Err(Diagnostics(d));
            }
        };
        let (compiled, compile_warnings) = compile::compile(&loaded.policy, &plugins)?;
        let mut warnings = loaded.warnings;
        warnings.extend(compile_warnings);
        Self::from_compiled(compiled, plugins, warnings)
    }

    pub fn from_compiled(
        compiled: CompiledPolicy,
        plugins: PluginSet,
        warnings: Vec<Diagnostic>,
    ) -> Result<Snapshot, Diagnostics> {
        let mut ratelimits: HashMap<String, HashMap<String, Arc<RateLimiter>>> = HashMap::new();
        let mut ops: HashMap<String, HashMap<String, Arc<OpRunner>>> = HashMap::new();
        let mut caches: HashMap<String, HashMap<String, Arc<CacheRule>>> = HashMap::new();
        let mut sessions: HashMap<String, HashMap<String, Arc<Sessions>>> = HashMap::new();
        let mut locks: HashMap<String, HashMap<String, Arc<Locker>>> = HashMap::new();
        let mut queues: HashMap<String, HashMap<String, Arc<QueueRule>>> = HashMap::new();
        let mut streams: HashMap<String, HashMap<String, Arc<StreamRule>>> = HashMap::new();
        let mut pubsubs: HashMap<String, HashMap<String, Arc<PubSubRule>>> = HashMap::new();
        let mut counters: HashMap<String, HashMap<String, Arc<CounterRule>>> = HashMap::new();
        let mut leaderboards: HashMap<String, HashMap<String, Arc<LeaderboardRule>>> =
            HashMap::new();
        let mut diags = Vec::new();
        for c in compiled.rules() {
            match (&c.rule.kind, &c.kind) {
                (RuleKind::RateLimit(rl), CompiledKind::RateLimit(crl)) => {
                    let Ok(binding) = bind(&plugins, rl.plugin.as_ref(), &mut diags) else {
                        continue;
                    };
                    ratelimits.entry(c.rule.app.clone()).or_default().insert(
                        c.rule.name.clone(),
                        Arc::new(RateLimiter::new(&c.rule, rl, crl, &c.keys, binding)),
                    );
                }
                (RuleKind::Ops(_), CompiledKind::Ops(co)) => {
                    ops.entry(c.rule.app.clone()).or_default().insert(
                        c.rule.name.clone(),
                        Arc::new(OpRunner::new(&c.rule.app, &c.rule.name, co, &c.keys)),
                    );
                }
                (RuleKind::Cache(spec), CompiledKind::Cache(cc)) => {
                    let Ok(binding) = bind(&plugins, spec.plugin.as_ref(), &mut diags) else {
                        continue;
                    };
                    let binding = binding
                        .zip(spec.plugin.as_ref())
                        .map(|(b, p)| (p.name.clone(), b));
                    match CacheRule::new(&c.rule, spec, cc, &c.keys, binding) {
                        Ok(rule) => {
                            crate::metrics::register_cache_rule(
                                &c.rule.app,
                                &c.rule.name,
                                spec.write,
                            );
                            caches
                                .entry(c.rule.app.clone())
                                .or_default()
                                .insert(c.rule.name.clone(), Arc::new(rule));
                        }
                        Err(e) => diags.push(Diagnostic::error(&spec.location, e.to_string())),
                    }
                }
                (RuleKind::Session(s), CompiledKind::Session(cs)) => {
                    let Ok(binding) = bind(&plugins, s.plugin.as_ref(), &mut diags) else {
                        continue;
                    };
                    sessions.entry(c.rule.app.clone()).or_default().insert(
                        c.rule.name.clone(),
                        Arc::new(Sessions::new(&c.rule, s, cs, &c.keys, binding)),
                    );
                }
                (RuleKind::Lock(l), CompiledKind::Lock(cl)) => {
                    locks.entry(c.rule.app.clone()).or_default().insert(
                        c.rule.name.clone(),
                        Arc::new(Locker::new(&c.rule, l, cl, &c.keys)),
                    );
                }
                (RuleKind::Queue(q), CompiledKind::Queue(cq)) => {
                    let Ok(binding) = bind(&plugins, q.plugin.as_ref(), &mut diags) else {
                        continue;
                    };
                    let binding = binding
                        .zip(q.plugin.as_ref())
                        .map(|(b, p)| (p.name.clone(), b));
                    match QueueRule::new(&c.rule, q, cq, &c.keys, binding) {
                        Ok(rule) => {
                            queues
                                .entry(c.rule.app.clone())
                                .or_default()
                                .insert(c.rule.name.clone(), Arc::new(rule));
                        }
                        Err(e) => diags.push(Diagnostic::error(&q.location, e.to_string())),
                    }
                }
                (RuleKind::Stream(s), CompiledKind::Stream(cs)) => {
                    let Ok(binding) = bind(&plugins, s.plugin.as_ref(), &mut diags) else {
                        continue;
                    };
                    let binding = binding
                        .zip(s.plugin.as_ref())
                        .map(|(b, r)| (r.name.clone(), b));
                    streams.entry(c.rule.app.clone()).or_default().insert(
                        c.rule.name.clone(),
                        Arc::new(StreamRule::new(&c.rule, s, cs, &c.keys, binding)),
                    );
                }
                (RuleKind::PubSub(p), CompiledKind::PubSub(cp)) => {
                    let Ok(binding) = bind(&plugins, p.plugin.as_ref(), &mut diags) else {
                        continue;
                    };
                    let binding = binding
                        .zip(p.plugin.as_ref())
                        .map(|(b, r)| (r.name.clone(), b));
                    pubsubs.entry(c.rule.app.clone()).or_default().insert(
                        c.rule.name.clone(),
                        Arc::new(PubSubRule::new(&c.rule, p, cp, &c.keys, binding)),
                    );
                }
                (RuleKind::Counter(spec), CompiledKind::Counter(cc)) => {
                    counters.entry(c.rule.app.clone()).or_default().insert(
                        c.rule.name.clone(),
                        Arc::new(CounterRule::new(&c.rule, spec, cc, &c.keys)),
                    );
                }
                (RuleKind::Leaderboard(l), CompiledKind::Leaderboard(cl)) => {
                    let Ok(binding) = bind(&plugins, l.plugin.as_ref(), &mut diags) else {
                        continue;
                    };
                    let binding = binding
                        .zip(l.plugin.as_ref())
                        .map(|(b, r)| (r.name.clone(), b));
                    leaderboards.entry(c.rule.app.clone()).or_default().insert(
                        c.rule.name.clone(),
                        Arc::new(LeaderboardRule::new(&c.rule, l, cl, &c.keys, binding)),
                    );
                }
                _ => diags.push(Diagnostic::error(
                    &c.rule.location,
                    "internal error: rule and compiled kinds differ",
                )),
            }
        }
        if !diags.is_empty() {
            return Err(Diagnostics(diags));
        }
        let scripts = compiled.scripts();
        Ok(Snapshot {
            compiled,
            plugins,
            ratelimits,
            ops,
            caches,
            sessions,
            locks,
            queues,
            streams,
            pubsubs,
            counters,
            leaderboards,
            scripts,
            warnings,
            loaded_at: SystemTime::now(),
        })
    }

    pub fn ratelimiter(&self, app: &str, rule: &str) -> Option<&Arc<RateLimiter>> {
        self.ratelimits.get(app)?.get(rule)
    }

    pub fn cache(&self, app: &str, rule: &str) -> Option<&Arc<CacheRule>> {
        self.caches.get(app)?.get(rule)
    }

    pub fn op(&self, app: &str, rule: &str) -> Option<&Arc<OpRunner>> {
        self.ops.get(app)?.get(rule)
    }

    pub fn sessions(&self, app: &str, rule: &str) -> Option<&Arc<Sessions>> {
        self.sessions.get(app)?.get(rule)
    }

    pub fn locker(&self, app: &str, rule: &str) -> Option<&Arc<Locker>> {
        self.locks.get(app)?.get(rule)
    }

    pub fn queue(&self, app: &str, rule: &str) -> Option<&Arc<QueueRule>> {
        self.queues.get(app)?.get(rule)
    }

    pub fn stream(&self, app: &str, rule: &str) -> Option<&Arc<StreamRule>> {
        self.streams.get(app)?.get(rule)
    }

    pub fn pubsub(&self, app: &str, rule: &str) -> Option<&Arc<PubSubRule>> {
        self.pubsubs.get(app)?.get(rule)
    }

    pub fn counter(&self, app: &str, rule: &str) -> Option<&Arc<CounterRule>> {
        self.counters.get(app)?.get(rule)
    }

    pub fn leaderboard(&self, app: &str, rule: &str) -> Option<&Arc<LeaderboardRule>> {
        self.leaderboards.get(app)?.get(rule)
    }

    pub fn has_app(&self, app: &str) -> bool {
        self.compiled.apps.contains_key(app)
    }

    pub fn rule_count(&self) -> usize {
        self.compiled.rules().count()
    }
}

/// Binds a rule's plugin (running its `init`); a missing plugin or a failed `init` is a
/// diagnostic at the rule's `plugin.name`, and `Err` tells the caller to skip the rule.
fn bind(
    plugins: &PluginSet,
    plugin: Option<&crate::policy::PluginRef>,
    diags: &mut Vec<Diagnostic>,
) -> Result<Option<PluginBinding>, ()> {
    let Some(p) = plugin else {
        return Ok(None);
    };
    match plugins.get(&p.name).map(|pl| pl.bind(p.config.clone())) {
        Some(Ok(b)) => Ok(Some(b)),
        Some(Err(e)) => {
            diags.push(Diagnostic::error(&p.location, e.to_string()));
            Err(())
        }
        None => {
            diags.push(Diagnostic::error(
                &p.location,
                format!("no plugin `{}`", p.name),
            ));
            Err(())
        }
    }
}
