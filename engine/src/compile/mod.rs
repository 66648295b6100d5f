//! Validated policy IR → Lua scripts and key layouts. Pure: no Redis.
//!
//! Scripts are generated once per policy load, never per request. Each algorithm is one `.lua`
//! file included at build time; a rule's script is the prelude, the algorithms it uses, and a
//! generated main that calls them with the rule's limits as literal constants. So the script
//! a rule runs is readable as a whole (`patternd compile` prints it), and the per-request
//! arguments are only what varies per request: the cost (and a lease id for concurrency).

pub mod keys;
pub mod luacheck;
mod ratelimit;

use std::sync::Arc;

use indexmap::IndexMap;

use crate::policy::{Diagnostic, Diagnostics, Policy, Rule, RuleKind};

pub use keys::KeySpace;
pub use ratelimit::CompiledRateLimit;

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
}

impl CompiledRule {
    /// Every script this rule needs loaded in Redis.
    pub fn scripts(&self) -> Vec<Arc<Script>> {
        match &self.kind {
            CompiledKind::RateLimit(rl) => rl.scripts(),
        }
    }

    /// Key templates with what each holds, for `patternd compile` and the admin API.
    pub fn key_layout(&self) -> Vec<(String, String)> {
        match &self.kind {
            CompiledKind::RateLimit(rl) => rl.key_layout(&self.keys),
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

/// Compiles every rule; a script that fails the Lua 5.1 check is an error at the rule's place.
pub fn compile(policy: &Policy) -> Result<CompiledPolicy, Diagnostics> {
    let mut out = CompiledPolicy::default();
    let mut diags = Vec::new();
    for app in policy.apps.values() {
        let mut rules = IndexMap::new();
        for rule in app.rules.values() {
            let keys = KeySpace::new(&rule.app, rule.kind.pattern(), &rule.name);
            let kind = match &rule.kind {
                RuleKind::RateLimit(rl) => {
                    ratelimit::compile(rule, rl).map(CompiledKind::RateLimit)
                }
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
        Ok(out)
    } else {
        Err(Diagnostics(diags))
    }
}

#[cfg(test)]
mod golden;
