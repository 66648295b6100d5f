//! A snapshot: everything one policy load produces, ready to serve. Immutable; a reload
//! builds a whole new one and swaps it in (see `runtime`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::compile::{self, CompiledKind, CompiledPolicy, Script};
use crate::patterns::RateLimiter;
use crate::policy::{self, Diagnostic, Diagnostics, RuleKind};

pub struct Snapshot {
    pub compiled: CompiledPolicy,
    /// Rate limiters by app, then rule.
    pub ratelimits: HashMap<String, HashMap<String, Arc<RateLimiter>>>,
    pub scripts: Vec<Arc<Script>>,
    pub warnings: Vec<Diagnostic>,
    pub loaded_at: SystemTime,
}

impl Snapshot {
    /// Loads, validates and compiles the policy files. Pure: touches no Redis.
    pub fn build(paths: &[PathBuf]) -> Result<Snapshot, Diagnostics> {
        let loaded = policy::load_paths(paths)?;
        let compiled = compile::compile(&loaded.policy)?;
        Ok(Self::from_compiled(compiled, loaded.warnings))
    }

    pub fn from_compiled(compiled: CompiledPolicy, warnings: Vec<Diagnostic>) -> Snapshot {
        let mut ratelimits: HashMap<String, HashMap<String, Arc<RateLimiter>>> = HashMap::new();
        for c in compiled.rules() {
            match (&c.rule.kind, &c.kind) {
                (RuleKind::RateLimit(rl), CompiledKind::RateLimit(crl)) => {
                    ratelimits.entry(c.rule.app.clone()).or_default().insert(
                        c.rule.name.clone(),
                        Arc::new(RateLimiter::new(&c.rule, rl, crl, &c.keys)),
                    );
                }
            }
        }
        let scripts = compiled.scripts();
        Snapshot {
            compiled,
            ratelimits,
            scripts,
            warnings,
            loaded_at: SystemTime::now(),
        }
    }

    pub fn ratelimiter(&self, app: &str, rule: &str) -> Option<&Arc<RateLimiter>> {
        self.ratelimits.get(app)?.get(rule)
    }

    pub fn has_app(&self, app: &str) -> bool {
        self.compiled.apps.contains_key(app)
    }

    pub fn rule_count(&self) -> usize {
        self.compiled.rules().count()
    }
}
