//! `lock` rules → their Lua scripts and key layout. Pure.
//!
//! A mutex is a semaphore of one permit, so one set of scripts serves both; the rule's lease
//! and permits travel in ARGV (prepared once per snapshot), and every lock rule shares one
//! checked set, built once.

use std::sync::{Arc, LazyLock};

use super::{KeySpace, Script, luacheck};
use crate::policy::Rule;
use crate::policy::lock::Lock;

const PRELUDE: &str = include_str!("lua/lock/prelude.lua");

/// The scripts of lock rules.
#[derive(Debug, Clone)]
pub struct LockScripts {
    pub acquire: Arc<Script>,
    pub extend: Arc<Script>,
    pub release: Arc<Script>,
    /// Takes back the permit of an acquire whose answer was lost (see `patterns::lock`).
    pub abandon: Arc<Script>,
}

impl LockScripts {
    pub fn all(&self) -> Vec<Arc<Script>> {
        vec![
            self.acquire.clone(),
            self.extend.clone(),
            self.release.clone(),
            self.abandon.clone(),
        ]
    }
}

fn script(what: &str, body: &str) -> Arc<Script> {
    let source = format!("-- patternd lock {what}\n{PRELUDE}\n{body}");
    Arc::new(Script::new(format!("lock {what}"), source))
}

static SCRIPTS: LazyLock<LockScripts> = LazyLock::new(|| LockScripts {
    acquire: script("acquire", include_str!("lua/lock/acquire.lua")),
    extend: script("extend", include_str!("lua/lock/extend.lua")),
    release: script("release", include_str!("lua/lock/release.lua")),
    abandon: script("abandon", include_str!("lua/lock/abandon.lua")),
});

#[derive(Debug, Clone)]
pub struct CompiledLock {
    pub scripts: LockScripts,
}

pub fn compile(_rule: &Rule, _spec: &Lock) -> Result<CompiledLock, String> {
    let scripts = SCRIPTS.clone();
    luacheck::check_builtin(scripts.all().iter().map(|s| s.as_ref()))?;
    Ok(CompiledLock { scripts })
}

impl CompiledLock {
    pub fn scripts(&self) -> Vec<Arc<Script>> {
        self.scripts.all()
    }

    /// Key templates with what each holds.
    pub fn key_layout(&self, keys: &KeySpace) -> Vec<(String, String)> {
        let t = |sub: &str| keys.template(sub).replace("<id>", "<resource>");
        vec![
            (
                t("h"),
                "ZSET of holders: token → lease expiry ms; expires with the longest lease".to_string(),
            ),
            (
                t("fence"),
                "STRING: the last fencing token handed out; expires a day after the last acquire (fences stay increasing after, being at least Redis TIME in µs)".to_string(),
            ),
            (
                t("rel"),
                "ZSET of the last 32 released tokens, so a repeated release is not an error; expires max(max_ttl, 1m) after the last release".to_string(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_scripts_pass_the_lua_check() {
        for s in SCRIPTS.all() {
            luacheck::check(&s.name, &s.source).unwrap_or_else(|e| panic!("{}: {e}", s.name));
        }
    }
}
