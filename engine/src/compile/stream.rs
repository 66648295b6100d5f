//! `stream` rules → their Lua scripts and key layout. Pure.
//!
//! Every stream rule shares one checked set of scripts, built once; the rule's bounds travel
//! in ARGV (prepared once per snapshot). A rule has two keys, both under the rule's own hash
//! tag (`KeySpace::rule_key`), so every call is one slot: the stream and its dead letters.
//! Neither has a TTL: both are bounded by MAXLEN ~ (and an exact MINID for a `retention`), the
//! stated bound of this key layout. The live tail and the long-poll wake-up read the stream
//! with XREAD BLOCK on a dedicated connection (`store::blocking`), not through a script.

use std::sync::{Arc, LazyLock};

use super::recipe::{Block, Recipe, assemble, lua_file};
use super::{KeySpace, Script, luacheck};
use crate::policy::Rule;
use crate::policy::stream::Stream;

const PRELUDE: Block = lua_file!("stream/prelude.lua");

const APPEND: Recipe = Recipe::new(
    "stream append",
    &[lua_file!("shared/clock.lua"), PRELUDE],
    lua_file!("stream/append.lua"),
);
const READ: Recipe = Recipe::new("stream read", &[PRELUDE], lua_file!("stream/read.lua"));
const ACK: Recipe = Recipe::new("stream ack", &[], lua_file!("stream/ack.lua"));
const RANGE: Recipe = Recipe::new("stream range", &[], lua_file!("stream/range.lua"));

/// The recipes, for the `compile` module doc.
#[cfg(test)]
pub(super) const RECIPES: &[Recipe<'static>] = &[APPEND, READ, ACK, RANGE];

/// The scripts of stream rules.
#[derive(Debug, Clone)]
pub struct StreamScripts {
    pub append: Arc<Script>,
    pub read: Arc<Script>,
    pub ack: Arc<Script>,
    pub range: Arc<Script>,
}

impl StreamScripts {
    pub fn all(&self) -> Vec<Arc<Script>> {
        vec![
            self.append.clone(),
            self.read.clone(),
            self.ack.clone(),
            self.range.clone(),
        ]
    }
}

static SCRIPTS: LazyLock<StreamScripts> = LazyLock::new(|| StreamScripts {
    append: assemble(&APPEND),
    read: assemble(&READ),
    ack: assemble(&ACK),
    range: assemble(&RANGE),
});

#[derive(Debug, Clone)]
pub struct CompiledStream {
    pub scripts: StreamScripts,
}

pub fn compile(_rule: &Rule, _spec: &Stream) -> Result<CompiledStream, String> {
    let scripts = SCRIPTS.clone();
    luacheck::check_builtin(scripts.all().iter().map(|s| s.as_ref()))?;
    Ok(CompiledStream { scripts })
}

/// The stream's key.
pub fn stream_key(keys: &KeySpace) -> String {
    keys.rule_key("s")
}

/// The dead-letter stream's key (same slot as the stream).
pub fn dead_key(keys: &KeySpace) -> String {
    keys.rule_key("dead")
}

impl CompiledStream {
    pub fn scripts(&self) -> Vec<Arc<Script>> {
        self.scripts.all()
    }

    /// Key templates with what each holds.
    pub fn key_layout(&self, keys: &KeySpace) -> Vec<(String, String)> {
        vec![
            (
                stream_key(keys),
                "STREAM of entries (field `d`: the JSON appended) and the rule's consumer groups; no TTL: bounded by max_len (MAXLEN ~) and/or retention (exact MINID from Redis TIME) at every append".to_string(),
            ),
            (
                dead_key(keys),
                "STREAM of dead letters (fields id, group, consumer, deliveries, d): entries claimed past max_deliveries; no TTL: bounded by dead_max_len (MAXLEN ~)".to_string(),
            ),
        ]
    }
}
