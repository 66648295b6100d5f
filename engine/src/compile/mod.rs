//! Validated policy IR → Lua scripts and key layouts. Pure: no Redis.
//!
//! Scripts are generated once per policy load, never per request. Each algorithm is one `.lua`
//! file included at build time; a rule's script is the prelude, the algorithms it uses, and a
//! generated main that calls them with the rule's limits as literal constants. So the script
//! a rule runs is readable as a whole (`patternd compile` prints it), and the per-request
//! arguments are only what varies per request: the cost (and a lease id for concurrency).
//!
//! # Scripts and their recipes
//!
//! Every script is made by `recipe::assemble` from a declared `recipe::Recipe`: a header
//! line `-- patternd <name>`, its constants, the blocks it includes in order (each may use the
//! ones before it), then its body. The Lua files are under `compile/lua/`: one folder per
//! pattern, and `shared/` for blocks of several patterns; each prelude or shared block says
//! at its top what it is for and who includes it. A test keeps this table the recipes' own.
//!
//! | script | includes, in order | body |
//! |---|---|---|
//! | `ratelimit <app>/<rule>` | `shared/clock.lua`, `ratelimit/prelude.lua` | generated: the blocks of its limits' algorithms (`ratelimit/<algorithm>.lua`), then a main calling each with the limit's numbers as literals |
//! | `ratelimit plugin-decided[ <algorithm>]` | `shared/clock.lua`, `ratelimit/prelude.lua` | generated: the blocks of every windowed algorithm (or of the one named), `ALGS` (code → function), then `ratelimit/decided.lua` |
//! | `ratelimit release-lease` | `shared/clock.lua` | `ratelimit/release_lease.lua` |
//! | `cache read` | `cache/meta.lua` | `cache/read.lua` |
//! | `cache hit batch` | `cache/meta.lua` | `cache/hit_batch.lua` |
//! | `cache fill` | `shared/clock.lua`, `cache/meta.lua`, `cache/common.lua`, `cache/store.lua` | `cache/fill.lua` |
//! | `cache release-lease` | — | `cache/release.lua` |
//! | `cache delete` | — | `cache/delete.lua` |
//! | `cache invalidate` | `shared/clock.lua` | `cache/invalidate.lua` |
//! | `cache put` | `shared/clock.lua`, `cache/meta.lua`, `cache/common.lua`, `cache/store.lua` | `cache/put.lua` |
//! | `cache patch` | `shared/clock.lua`, `cache/meta.lua`, `cache/common.lua`, `cache/store.lua` | `cache/patch.lua` |
//! | `cache through-begin` | `cache/meta.lua`, `cache/common.lua` | `cache/through_begin.lua` |
//! | `cache through-abort` | — | `cache/through_abort.lua` |
//! | `cache journal-fetch` | `cache/journal_common.lua` | `cache/journal_fetch.lua` |
//! | `cache journal-begin` | `cache/journal_common.lua` | `cache/journal_begin.lua` |
//! | `cache journal-ack` | `cache/journal_common.lua` | `cache/journal_ack.lua` |
//! | `cache journal-dead` | `cache/journal_common.lua` | `cache/journal_dead.lua` |
//! | `cache journal-replay` | — | `cache/journal_replay.lua` |
//! | `cache journal-dead-list` | — | `cache/journal_dead_list.lua` |
//! | `session create` | `session/prelude.lua` | `session/create.lua` |
//! | `session get` | `session/prelude.lua`, `session/live.lua` | `session/get.lua` |
//! | `session patch` | `session/prelude.lua`, `session/live.lua` | `session/patch.lua` |
//! | `session rotate` | `session/prelude.lua`, `session/live.lua` | `session/rotate.lua` |
//! | `session destroy` | `session/prelude.lua` | `session/destroy.lua` |
//! | `session list` | `session/prelude.lua` | `session/list.lua` |
//! | `session logout` | `session/prelude.lua` | `session/logout.lua` |
//! | `session reap` | `session/prelude.lua` | `session/reap.lua` |
//! | `lock acquire` | `shared/clock.lua`, `lock/prelude.lua` | `lock/acquire.lua` |
//! | `lock extend` | `shared/clock.lua`, `lock/prelude.lua` | `lock/extend.lua` |
//! | `lock release` | `shared/clock.lua`, `lock/prelude.lua` | `lock/release.lua` |
//! | `lock abandon` | `shared/clock.lua`, `lock/prelude.lua` | `lock/abandon.lua` |
//! | `ops <app>/<rule> (<plugin>.<op>)` | — | generated: a comment naming its keys, then the op's script from its plugin |
//! | `queue push` | `shared/clock.lua`, `queue/prelude.lua` | `queue/push.lua` |
//! | `queue pop` | `shared/clock.lua`, `queue/prelude.lua` | `queue/pop.lua` |
//! | `queue ack` | `shared/clock.lua`, `queue/prelude.lua` | `queue/ack.lua` |
//! | `queue nack` | `shared/clock.lua`, `queue/prelude.lua` | `queue/nack.lua` |
//! | `queue extend` | `shared/clock.lua`, `queue/prelude.lua` | `queue/extend.lua` |
//! | `queue dead-list` | `shared/clock.lua`, `queue/prelude.lua` | `queue/dead_list.lua` |
//! | `queue replay` | `shared/clock.lua`, `queue/prelude.lua` | `queue/replay.lua` |
//! | `stream append` | `shared/clock.lua`, `stream/prelude.lua` | `stream/append.lua` |
//! | `stream read` | `stream/prelude.lua` | `stream/read.lua` |
//! | `stream ack` | — | `stream/ack.lua` |
//! | `stream range` | — | `stream/range.lua` |
//! | `pubsub publish` | — | `pubsub/publish.lua` |
//! | `pubsub spublish` | — | `pubsub/spublish.lua` |
//! | `counter unique-add` | `shared/clock.lua`, `shared/period.lua`, `counter/prelude.lua` | `counter/unique_add.lua` |
//! | `counter unique-count` | `shared/clock.lua`, `shared/period.lua`, `counter/prelude.lua` | `counter/unique_count.lua` |
//! | `counter count-add` | `shared/clock.lua`, `shared/period.lua`, `counter/prelude.lua` | `counter/count_add.lua` |
//! | `counter count-read` | `shared/clock.lua`, `shared/period.lua`, `counter/prelude.lua` | `counter/count_read.lua` |
//! | `counter bloom-add` | `shared/clock.lua`, `shared/period.lua`, `counter/prelude.lua`, `counter/bloom.lua` | `counter/bloom_add.lua` |
//! | `counter bloom-check` | `shared/clock.lua`, `shared/period.lua`, `counter/prelude.lua`, `counter/bloom.lua` | `counter/bloom_check.lua` |
//! | `counter redisbloom-add` | `shared/clock.lua`, `shared/period.lua`, `counter/prelude.lua` | `counter/module_add.lua` |
//! | `counter redisbloom-check` | `shared/clock.lua`, `shared/period.lua`, `counter/prelude.lua` | `counter/module_check.lua` |
//! | `leaderboard submit` | `shared/clock.lua`, `shared/period.lua`, `leaderboard/prelude.lua` | `leaderboard/submit.lua` |
//! | `leaderboard rank` | `shared/clock.lua`, `shared/period.lua`, `leaderboard/prelude.lua` | `leaderboard/rank.lua` |
//! | `leaderboard top` | `shared/clock.lua`, `shared/period.lua`, `leaderboard/prelude.lua` | `leaderboard/top.lua` |
//! | `leaderboard around` | `shared/clock.lua`, `shared/period.lua`, `leaderboard/prelude.lua` | `leaderboard/around.lua` |
//! | `leaderboard count` | `shared/clock.lua`, `shared/period.lua`, `leaderboard/prelude.lua` | `leaderboard/count.lua` |
//! | `leaderboard remove` | `shared/clock.lua`, `shared/period.lua`, `leaderboard/prelude.lua` | `leaderboard/remove.lua` |
//! | `leaderboard aggregate` | `shared/clock.lua`, `shared/period.lua`, `leaderboard/prelude.lua` | `leaderboard/aggregate.lua` |

pub mod batch;
pub mod cache;
pub mod counter;
pub mod keys;
pub mod leaderboard;
pub mod lock;
pub mod luacheck;
pub mod ops;
pub mod pubsub;
pub mod queue;
mod ratelimit;
mod recipe;
pub mod session;
pub mod stream;

use std::sync::Arc;

use indexmap::IndexMap;

use crate::plugin::PluginSet;
use crate::policy::{Diagnostic, Diagnostics, Policy, Rule, RuleKind};

pub use cache::CompiledCache;
pub use counter::CompiledCounter;
pub use keys::KeySpace;
pub use leaderboard::CompiledLeaderboard;
pub use lock::CompiledLock;
pub use ops::CompiledOps;
pub use pubsub::CompiledPubSub;
pub use queue::CompiledQueue;
pub use ratelimit::{
    CompiledRateLimit, DynamicScripts, FixedLimits, REPLY_WIDTH as RATELIMIT_REPLY_WIDTH,
};
pub use session::CompiledSession;
pub use stream::CompiledStream;

/// A Lua script ready for SCRIPT LOAD / EVALSHA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// What the script is for, e.g. `ratelimit shop/login`.
    pub name: String,
    pub source: String,
    /// SHA1 of `source`, as Redis computes it.
    pub sha: String,
}

impl Script {
    pub fn new(name: impl Into<String>, source: String) -> Self {
        let sha = redis::Script::new(&source).get_hash().to_string();
        Self {
            name: name.into(),
            source,
            sha,
        }
    }
}

/// One rule, compiled.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub rule: Rule,
    pub keys: KeySpace,
    pub kind: CompiledKind,
}

#[derive(Debug, Clone)]
pub enum CompiledKind {
    RateLimit(CompiledRateLimit),
    Cache(CompiledCache),
    Session(CompiledSession),
    Lock(CompiledLock),
    Ops(CompiledOps),
    Queue(CompiledQueue),
    Stream(CompiledStream),
    PubSub(CompiledPubSub),
    Counter(CompiledCounter),
    Leaderboard(CompiledLeaderboard),
}

impl CompiledRule {
    /// Every script this rule needs loaded in Redis.
    pub fn scripts(&self) -> Vec<Arc<Script>> {
        match &self.kind {
            CompiledKind::RateLimit(rl) => rl.scripts(),
            CompiledKind::Cache(c) => c.scripts.clone(),
            CompiledKind::Session(c) => c.scripts(),
            CompiledKind::Lock(c) => c.scripts(),
            CompiledKind::Ops(op) => vec![op.script.clone()],
            CompiledKind::Queue(q) => q.scripts(),
            CompiledKind::Stream(c) => c.scripts(),
            CompiledKind::PubSub(c) => c.scripts(),
            CompiledKind::Counter(c) => c.scripts(),
            CompiledKind::Leaderboard(c) => c.scripts(),
        }
    }

    /// Key templates with what each holds, for `patternd compile` and the admin API.
    pub fn key_layout(&self) -> Vec<(String, String)> {
        match &self.kind {
            CompiledKind::RateLimit(rl) => rl.key_layout(&self.keys),
            CompiledKind::Cache(c) => c.key_layout(&self.keys),
            CompiledKind::Session(c) => c.key_layout(&self.keys),
            CompiledKind::Lock(c) => c.key_layout(&self.keys),
            CompiledKind::Queue(q) => match &self.rule.kind {
                RuleKind::Queue(spec) => q.key_layout(&self.keys, spec),
                _ => Vec::new(),
            },
            CompiledKind::Stream(c) => c.key_layout(&self.keys),
            CompiledKind::PubSub(c) => c.key_layout(&self.keys),
            CompiledKind::Counter(c) => match &self.rule.kind {
                RuleKind::Counter(spec) => c.key_layout(&self.keys, spec),
                _ => Vec::new(),
            },
            CompiledKind::Leaderboard(c) => match &self.rule.kind {
                RuleKind::Leaderboard(spec) => c.key_layout(&self.keys, spec),
                _ => Vec::new(),
            },
            CompiledKind::Ops(op) => op
                .keys
                .iter()
                .map(|k| {
                    (
                        self.keys.template(k),
                        format!("declared by op `{}` of plugin `{}`", op.op, op.plugin),
                    )
                })
                .collect(),
        }
    }
}

/// A whole compiled policy: rules by app, then name.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicy {
    pub apps: IndexMap<String, IndexMap<String, Arc<CompiledRule>>>,
}

impl CompiledPolicy {
    pub fn rules(&self) -> impl Iterator<Item = &Arc<CompiledRule>> {
        self.apps.values().flat_map(|r| r.values())
    }

    /// Every distinct script (rules with the same limits share one).
    pub fn scripts(&self) -> Vec<Arc<Script>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for r in self.rules() {
            for s in r.scripts() {
                if seen.insert(s.sha.clone()) {
                    out.push(s);
                }
            }
        }
        out
    }
}

/// Compiles every rule against the loaded plugins. Every problem is a diagnostic at the
/// rule's place: a script that fails the Lua 5.1 check, a plugin that does not exist or lacks
/// the hook, an operation that is refused. Warnings (e.g. an op without expiry) come back with
/// the result.
pub fn compile(
    policy: &Policy,
    plugins: &PluginSet,
) -> Result<(CompiledPolicy, Vec<Diagnostic>), Diagnostics> {
    let mut out = CompiledPolicy::default();
    let mut diags = Vec::new();
    let mut warnings = Vec::new();
    for app in policy.apps.values() {
        let mut rules = IndexMap::new();
        for rule in app.rules.values() {
            let keys = KeySpace::new(&rule.app, rule.kind.pattern(), &rule.name);
            let kind = match &rule.kind {
                RuleKind::RateLimit(rl) => check_plugin(
                    plugins,
                    rl.plugin.as_ref().map(|p| (&p.name, &p.location)),
                    "rate_limit",
                )
                .and_then(|()| ratelimit::compile(rule, rl))
                .map(CompiledKind::RateLimit),
                RuleKind::Cache(c) => check_plugin(
                    plugins,
                    c.plugin.as_ref().map(|p| (&p.name, &p.location)),
                    "cache",
                )
                .and_then(|()| cache::compile(rule, c))
                .map(CompiledKind::Cache),
                RuleKind::Session(c) => check_plugin(
                    plugins,
                    c.plugin.as_ref().map(|p| (&p.name, &p.location)),
                    "session",
                )
                .and_then(|()| session::compile(rule, c))
                .map(CompiledKind::Session),
                RuleKind::Lock(c) => lock::compile(rule, c).map(CompiledKind::Lock),
                RuleKind::Queue(q) => check_plugin(
                    plugins,
                    q.plugin.as_ref().map(|p| (&p.name, &p.location)),
                    "queue",
                )
                .and_then(|()| queue::compile(rule, q))
                .map(CompiledKind::Queue),
                RuleKind::Stream(c) => check_plugin(
                    plugins,
                    c.plugin.as_ref().map(|p| (&p.name, &p.location)),
                    "stream",
                )
                .and_then(|()| stream::compile(rule, c))
                .map(CompiledKind::Stream),
                RuleKind::PubSub(c) => check_plugin(
                    plugins,
                    c.plugin.as_ref().map(|p| (&p.name, &p.location)),
                    "pubsub",
                )
                .and_then(|()| pubsub::compile(rule, c))
                .map(CompiledKind::PubSub),
                RuleKind::Counter(c) => counter::compile(rule, c).map(CompiledKind::Counter),
                RuleKind::Leaderboard(c) => check_plugin(
                    plugins,
                    c.plugin.as_ref().map(|p| (&p.name, &p.location)),
                    "leaderboard",
                )
                .and_then(|()| leaderboard::compile(rule, c))
                .map(CompiledKind::Leaderboard),
                RuleKind::Ops(o) => match compile_ops(plugins, rule, o) {
                    Ok(c) => {
                        for w in &c.warnings {
                            warnings.push(Diagnostic::warning(&o.location, w.clone()));
                        }
                        Ok(CompiledKind::Ops(c))
                    }
                    // A refused script: its problems are placed in the plugin's file.
                    Err(OpsRefusal::Script(found)) => {
                        diags.extend(found);
                        continue;
                    }
                    Err(OpsRefusal::Rule(msg)) => Err(msg),
                },
            };
            match kind {
                Ok(kind) => {
                    rules.insert(
                        rule.name.clone(),
                        Arc::new(CompiledRule {
                            rule: rule.clone(),
                            keys,
                            kind,
                        }),
                    );
                }
                Err(msg) => diags.push(Diagnostic::error(&rule.location, msg)),
            }
        }
        out.apps.insert(app.name.clone(), rules);
    }
    if diags.is_empty() {
        Ok((out, warnings))
    } else {
        diags.extend(warnings);
        Err(Diagnostics(diags))
    }
}

fn check_plugin(
    plugins: &PluginSet,
    named: Option<(&String, &crate::policy::Location)>,
    hook: &'static str,
) -> Result<(), String> {
    let Some((name, _)) = named else {
        return Ok(());
    };
    let Some(p) = plugins.get(name) else {
        let known: Vec<&str> = plugins.names().collect();
        return Err(match &plugins.dir {
            None => format!(
                "plugin `{name}` is named but no plugins directory was given (--plugins DIR)"
            ),
            Some(d) if known.is_empty() => {
                format!("no plugin `{name}` in {} (it has none)", d.display())
            }
            Some(d) => format!(
                "no plugin `{name}` in {}; found: {}",
                d.display(),
                known.join(", ")
            ),
        });
    };
    if !p.hooks().contains(&hook) {
        // The queue, pubsub, stream and leaderboard hooks are the ones a component may lack: say
        // which world has them.
        let hint = match (hook, p.kind()) {
            ("queue", "wasm") => {
                " (a component exports it when built for the world \
                 patternd:plugin/plugin-queue@0.1.0)"
            }
            ("pubsub", "wasm") => {
                " (a component exports it when built for the world \
                 patternd:plugin/plugin-pubsub@0.1.0)"
            }
            ("stream", "wasm") => {
                " (a component exports it when built for the world \
                 patternd:plugin/plugin-stream@0.1.0)"
            }
            ("leaderboard", "wasm") => {
                " (a component exports it when built for the world \
                 patternd:plugin/plugin-leaderboard@0.1.0)"
            }
            _ => "",
        };
        return Err(format!("plugin `{name}` has no `{hook}` hook{hint}"));
    }
    Ok(())
}

/// Why an `ops` rule did not compile: the rule names no usable op (reported at the rule), or
/// the op's script is refused (reported in the plugin file, at each problem).
enum OpsRefusal {
    Rule(String),
    Script(Vec<Diagnostic>),
}

fn compile_ops(
    plugins: &PluginSet,
    rule: &crate::policy::Rule,
    o: &crate::policy::Ops,
) -> Result<CompiledOps, OpsRefusal> {
    let plugin = plugins.get(&o.plugin).ok_or_else(|| {
        OpsRefusal::Rule(match &plugins.dir {
            None => format!(
                "plugin `{}` is named but no plugins directory was given (--plugins DIR)",
                o.plugin
            ),
            Some(d) => format!("no plugin `{}` in {}", o.plugin, d.display()),
        })
    })?;
    let decl = plugin
        .ops()
        .iter()
        .find(|d| d.name == o.op)
        .ok_or_else(|| {
            let names: Vec<&str> = plugin.ops().iter().map(|d| d.name.as_str()).collect();
            OpsRefusal::Rule(format!(
                "plugin `{}` declares no op `{}` (it declares: {})",
                o.plugin,
                o.op,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ))
        })?;
    let text = match plugin {
        crate::plugin::registry::Plugin::Lua(p) => p.source(),
        crate::plugin::registry::Plugin::Wasm(_) => "",
    };
    let file = plugins.path(&o.plugin).unwrap_or(o.location.file.as_path());
    ops::compile(
        &rule.app,
        &rule.name,
        &ops::OpSource {
            plugin: &o.plugin,
            file,
            text,
            op: &o.op,
            keys: &decl.keys,
            script: &decl.script,
        },
    )
    .map_err(OpsRefusal::Script)
}

#[cfg(test)]
mod golden;
#[cfg(test)]
mod keys_proptest;
