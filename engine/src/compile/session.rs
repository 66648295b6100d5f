//! `session` rules → their Lua scripts and key layout. Pure.
//!
//! The scripts do not depend on the rule (its TTLs travel in ARGV, prepared once per snapshot),
//! so every session rule shares one checked set, built once.

use std::sync::{Arc, LazyLock};

use super::recipe::{Block, Recipe, assemble, lua_file};
use super::{KeySpace, Script, luacheck};
use crate::policy::Rule;
use crate::policy::session::Session;

/// Length of the shard tag that starts every session id (`<shard>.<random>`).
pub const SHARD_LEN: usize = 4;

const PRELUDE: Block = lua_file!("session/prelude.lua");
/// Every session script.
const ANY: &[Block] = &[PRELUDE];
/// The scripts that read or change a live session: `live`, `touch`.
const LIVE: &[Block] = &[PRELUDE, lua_file!("session/live.lua")];

const fn recipe(
    name: &'static str,
    includes: &'static [Block<'static>],
    body: Block<'static>,
) -> Recipe<'static> {
    Recipe::new(name, includes, body)
}

const CREATE: Recipe = recipe("session create", ANY, lua_file!("session/create.lua"));
const GET: Recipe = recipe("session get", LIVE, lua_file!("session/get.lua"));
const PATCH: Recipe = recipe("session patch", LIVE, lua_file!("session/patch.lua"));
const ROTATE: Recipe = recipe("session rotate", LIVE, lua_file!("session/rotate.lua"));
const DESTROY: Recipe = recipe("session destroy", ANY, lua_file!("session/destroy.lua"));
const LIST: Recipe = recipe("session list", ANY, lua_file!("session/list.lua"));
const LOGOUT: Recipe = recipe("session logout", ANY, lua_file!("session/logout.lua"));
const REAP: Recipe = recipe("session reap", ANY, lua_file!("session/reap.lua"));

/// The recipes, for the `compile` module doc.
#[cfg(test)]
pub(super) const RECIPES: &[Recipe<'static>] =
    &[CREATE, GET, PATCH, ROTATE, DESTROY, LIST, LOGOUT, REAP];

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
    pub reap: Arc<Script>,
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
            self.reap.clone(),
        ]
    }
}

static SCRIPTS: LazyLock<SessionScripts> = LazyLock::new(|| SessionScripts {
    create: assemble(&CREATE),
    get: assemble(&GET),
    patch: assemble(&PATCH),
    rotate: assemble(&ROTATE),
    destroy: assemble(&DESTROY),
    list: assemble(&LIST),
    logout: assemble(&LOGOUT),
    reap: assemble(&REAP),
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
                "HASH {u: user, i: base64url user, c: created ms, a: absolute deadline ms, l: last touch ms, o: creation µs (16 digits), d:<field>: JSON}; expires after idle_ttl, never past the deadline".to_string(),
            ),
            (
                t("ue"),
                "ZSET of the shard's sessions, member `<base64url user>|<o>|<session id>`, score expiry ms; expires with the shard's last session".to_string(),
            ),
            (
                t("uc"),
                "ZSET of the same members, score 0: ZRANGEBYLEX `[<user>|` `(<user>}` is one user's sessions, oldest first (max_per_user, else user_cap, evicts the oldest); expires with the shard's last session".to_string(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use mlua::{Lua, Value};

    use super::*;

    /// Runs a session script in Lua 5.1 against a stand-in for Redis holding at most one
    /// session hash (`fields`, flat name/value pairs) at KEYS[1]: enough for the paths that
    /// end before anything is written. What Redis would answer: HMGET gives `false` for an
    /// absent field, HGETALL of no key an empty table. Returns the reply (`false`, or
    /// `error: <message>`), and whether the script dropped anything (DEL, ZREM).
    fn run(script: &Script, fields: Option<&[&str]>, argv: &[&str]) -> (String, bool) {
        let lua = Lua::new();
        let g = lua.globals();
        let hash = lua.create_table().expect("table");
        for pair in fields.unwrap_or_default().chunks(2) {
            hash.set(pair[0], pair[1]).expect("set");
        }
        g.set(
            "HASH",
            if fields.is_some() {
                Value::Table(hash)
            } else {
                Value::Nil
            },
        )
        .expect("set");
        g.set(
            "KEYS",
            vec![
                "app:session:web:{abcd}:s:x",
                "app:session:web:{abcd}:s:y",
                "app:session:web:{abcd}:ue",
                "app:session:web:{abcd}:uc",
            ],
        )
        .expect("set");
        g.set("ARGV", argv.to_vec()).expect("set");
        lua.load(
            r#"
            redis = {
              error_reply = function(msg) return { err = msg } end,
              call = function(cmd, key, ...)
                if cmd == 'TIME' then return { '1700000000', '0' } end
                local h = key == KEYS[1] and HASH or nil
                if cmd == 'EXISTS' then return h and 1 or 0 end
                if cmd == 'HGETALL' then
                  local out = {}
                  for f, v in pairs(h or {}) do out[#out + 1] = f; out[#out + 1] = v end
                  return out
                end
                if cmd == 'HMGET' then
                  local out = {}
                  for i, f in ipairs({ ... }) do out[i] = (h and h[f]) or false end
                  return out
                end
                if cmd == 'DEL' or cmd == 'ZREM' then DROPPED = true; return 1 end
                error('the stand-in has no ' .. cmd)
              end,
            }
            "#,
        )
        .exec()
        .expect("stand-in");
        let reply: Value = lua
            .load(script.source.as_str())
            .set_name(script.name.as_str())
            .call(())
            .unwrap_or_else(|e| panic!("{}: {e}", script.name));
        let reply = match reply {
            Value::Boolean(false) => "false".to_string(),
            Value::Table(t) => match t.get::<String>("err") {
                Ok(e) => format!("error: {e}"),
                Err(_) => "a table".to_string(),
            },
            other => format!("{other:?}"),
        };
        (reply, g.get::<bool>("DROPPED").unwrap_or(false))
    }

    /// get, patch and rotate share `live`: a session gone or past its deadline is `false`
    /// (a 404), a hash without a field every session has is an error (another client wrote
    /// the key), alike in all three.
    #[test]
    fn get_patch_and_rotate_find_sessions_gone_or_malformed_alike() {
        let s = &*SCRIPTS;
        let sid = "abcd.x";
        let cases: [(&Arc<Script>, Vec<&str>); 3] = [
            (&s.get, vec![sid, "60000", "1"]),
            (&s.patch, vec![sid, "60000", "10", "f", "1"]),
            (&s.rotate, vec![sid, "abcd.y", "60000"]),
        ];
        // Created and deadline long before TIME (1700000000000 ms).
        let expired: &[&str] = &["u", "bob", "i", "Ym9i", "c", "1000", "a", "2000"];
        for (script, argv) in &cases {
            let (gone, dropped) = run(script, None, argv);
            assert_eq!(gone, "false", "{}", script.name);
            assert!(!dropped, "{}", script.name);
            for missing in ["u", "i", "c", "a"] {
                let fields: Vec<&str> = expired
                    .chunks(2)
                    .filter(|p| p[0] != missing)
                    .flatten()
                    .copied()
                    .collect();
                let (reply, dropped) = run(script, Some(&fields), argv);
                assert_eq!(
                    reply, "error: patternd: malformed session hash",
                    "{} without `{missing}`",
                    script.name
                );
                assert!(!dropped, "{}", script.name);
            }
            let (reply, dropped) = run(script, Some(expired), argv);
            assert_eq!(reply, "false", "{}", script.name);
            assert!(dropped, "{}: an expired session is dropped", script.name);
            // Within its absolute deadline, but last touched exactly `idle_ms` (60000) before
            // TIME (1700000000000 ms): gone in that millisecond, as its index finds it.
            let idle: &[&str] = &[
                "u",
                "bob",
                "i",
                "Ym9i",
                "c",
                "1000",
                "a",
                "1800000000000",
                "l",
                "1699999940000",
            ];
            let (reply, dropped) = run(script, Some(idle), argv);
            assert_eq!(reply, "false", "{}: at its idle expiry", script.name);
            assert!(
                dropped,
                "{}: a session at its idle expiry is dropped",
                script.name
            );
        }
    }
}
