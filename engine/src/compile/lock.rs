//! `lock` rules → their Lua scripts and key layout. Pure.
//!
//! A mutex is a semaphore of one permit, so one set of scripts serves both; the rule's lease
//! and permits travel in ARGV (prepared once per snapshot), and every lock rule shares one
//! checked set, built once.

use std::sync::{Arc, LazyLock};

use super::recipe::{Block, Recipe, assemble, lua_file};
use super::{KeySpace, Script, luacheck};
use crate::policy::Rule;
use crate::policy::lock::Lock;

const INCLUDES: &[Block] = &[lua_file!("shared/clock.lua"), lua_file!("lock/prelude.lua")];

const ACQUIRE: Recipe = Recipe::new("lock acquire", INCLUDES, lua_file!("lock/acquire.lua"));
const EXTEND: Recipe = Recipe::new("lock extend", INCLUDES, lua_file!("lock/extend.lua"));
const RELEASE: Recipe = Recipe::new("lock release", INCLUDES, lua_file!("lock/release.lua"));
const ABANDON: Recipe = Recipe::new("lock abandon", INCLUDES, lua_file!("lock/abandon.lua"));

/// The recipes, for the `compile` module doc.
#[cfg(test)]
pub(super) const RECIPES: &[Recipe<'static>] = &[ACQUIRE, EXTEND, RELEASE, ABANDON];

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

static SCRIPTS: LazyLock<LockScripts> = LazyLock::new(|| LockScripts {
    acquire: assemble(&ACQUIRE),
    extend: assemble(&EXTEND),
    release: assemble(&RELEASE),
    abandon: assemble(&ABANDON),
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
