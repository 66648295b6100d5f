//! `session` rules → their Lua scripts and key layout. Pure.
//!
//! The scripts do not depend on the rule (its TTLs travel in ARGV, prepared once per snapshot),
//! so every session rule shares one checked set, built once.

use std::sync::{Arc, LazyLock};

use super::{KeySpace, Script, luacheck};
use crate::policy::Rule;
use crate::policy::session::Session;

/// Length of the shard tag that starts every session id (`<shard>.<random>`).
pub const SHARD_LEN: usize = 4;

const PRELUDE: &str = include_str!("lua/session/prelude.lua");

/// The scripts of session rules.
#[derive(Debug, Clone)]
pub struct SessionScripts {
    pub create: Arc<Script>,
    pub get: Arc<Script>,
    pub patch: Arc<Script>,
    pub rotate: Arc<Script>,
    pub destroy: Arc<Script>,
    pub list: Arc<Script>,
    pub logout: Arc<Script>,
}

impl SessionScripts {
    pub fn all(&self) -> Vec<Arc<Script>> {
        vec![
            self.create.clone(),
            self.get.clone(),
            self.patch.clone(),
            self.rotate.clone(),
            self.destroy.clone(),
            self.list.clone(),
            self.logout.clone(),
        ]
    }
}

fn script(what: &str, body: &str) -> Arc<Script> {
    let source =
        format!("-- patternd session {what}\nlocal SHARD_LEN = {SHARD_LEN}\n{PRELUDE}\n{body}");
    Arc::new(Script::new(format!("session {what}"), source))
}

static SCRIPTS: LazyLock<SessionScripts> = LazyLock::new(|| SessionScripts {
    create: script("create", include_str!("lua/session/create.lua")),
    get: script("get", include_str!("lua/session/get.lua")),
    patch: script("patch", include_str!("lua/session/patch.lua")),
    rotate: script("rotate", include_str!("lua/session/rotate.lua")),
    destroy: script("destroy", include_str!("lua/session/destroy.lua")),
    list: script("list", include_str!("lua/session/list.lua")),
    logout: script("logout", include_str!("lua/session/logout.lua")),
});

#[derive(Debug, Clone)]
pub struct CompiledSession {
    pub scripts: SessionScripts,
}

pub fn compile(_rule: &Rule, _spec: &Session) -> Result<CompiledSession, String> {
    let scripts = SCRIPTS.clone();
    luacheck::check_builtin(scripts.all().iter().map(|s| s.as_ref()))?;
    Ok(CompiledSession { scripts })
}

impl CompiledSession {
    pub fn scripts(&self) -> Vec<Arc<Script>> {
        self.scripts.all()
    }

    /// Key templates with what each holds.
    pub fn key_layout(&self, keys: &KeySpace) -> Vec<(String, String)> {
        let t = |sub: &str| keys.template(sub).replace("<id>", "<shard>");
        vec![
            (
                t("s:<random>"),
                "HASH {u: user, i: base64url user, c: created ms, a: absolute deadline ms, l: last touch ms, d:<field>: JSON}; expires after idle_ttl, never past the deadline".to_string(),
            ),
            (
                t("ue:<base64url user>"),
                "ZSET of the user's session ids by expiry ms; expires with the last session".to_string(),
            ),
            (
                t("uc:<base64url user>"),
                "ZSET of the user's session ids by creation µs (max_per_user, else user_cap, evicts the oldest); expires with the last session".to_string(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_scripts_pass_the_lua_check() {
        for s in SCRIPTS.all() {
            luacheck::check(&s.name, &s.source).unwrap_or_else(|e| panic!("{}: {e}", s.name));
        }
    }
}
