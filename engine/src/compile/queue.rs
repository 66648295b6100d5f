//! `queue` rules → their Lua scripts and key layout. Pure.
//!
//! Every queue rule shares one checked set of scripts (the rule's settings travel in ARGV,
//! prepared once per snapshot). A queue's keys are fixed per rule, all tagged with the rule's
//! own hash tag (`KeySpace::rule_key`), so every call of a queue is one cluster slot: a pop
//! cannot name the jobs it will take before it runs, so there is no key per job. What it
//! costs: one queue lives on one primary (ARCHITECTURE.md, docs/queue.md).

use std::sync::{Arc, LazyLock};

use super::recipe::{Block, Recipe, assemble, lua_file};
use super::{KeySpace, Script, luacheck};
use crate::policy::Rule;
use crate::policy::queue::Queue;

const INCLUDES: &[Block] = &[
    lua_file!("shared/clock.lua"),
    lua_file!("queue/prelude.lua"),
];

const PUSH: Recipe = Recipe::new("queue push", INCLUDES, lua_file!("queue/push.lua"));
const POP: Recipe = Recipe::new("queue pop", INCLUDES, lua_file!("queue/pop.lua"));
const ACK: Recipe = Recipe::new("queue ack", INCLUDES, lua_file!("queue/ack.lua"));
const NACK: Recipe = Recipe::new("queue nack", INCLUDES, lua_file!("queue/nack.lua"));
const EXTEND: Recipe = Recipe::new("queue extend", INCLUDES, lua_file!("queue/extend.lua"));
const DEAD_LIST: Recipe = Recipe::new(
    "queue dead-list",
    INCLUDES,
    lua_file!("queue/dead_list.lua"),
);
const REPLAY: Recipe = Recipe::new("queue replay", INCLUDES, lua_file!("queue/replay.lua"));

/// The recipes, for the `compile` module doc.
#[cfg(test)]
pub(super) const RECIPES: &[Recipe<'static>] = &[PUSH, POP, ACK, NACK, EXTEND, DEAD_LIST, REPLAY];

/// The scripts of queue rules.
#[derive(Debug, Clone)]
pub struct QueueScripts {
    pub push: Arc<Script>,
    /// Also the maintenance call (count 0) of the reaper and the stats route.
    pub pop: Arc<Script>,
    pub ack: Arc<Script>,
    pub nack: Arc<Script>,
    pub extend: Arc<Script>,
    pub dead_list: Arc<Script>,
    pub replay: Arc<Script>,
}

impl QueueScripts {
    pub fn all(&self) -> Vec<Arc<Script>> {
        vec![
            self.push.clone(),
            self.pop.clone(),
            self.ack.clone(),
            self.nack.clone(),
            self.extend.clone(),
            self.dead_list.clone(),
            self.replay.clone(),
        ]
    }
}

static SCRIPTS: LazyLock<QueueScripts> = LazyLock::new(|| QueueScripts {
    push: assemble(&PUSH),
    pop: assemble(&POP),
    ack: assemble(&ACK),
    nack: assemble(&NACK),
    extend: assemble(&EXTEND),
    dead_list: assemble(&DEAD_LIST),
    replay: assemble(&REPLAY),
});

/// A queue's keys, by what they hold (the sub of `KeySpace::rule_key`).
pub mod sub {
    pub const READY: &str = "ready";
    pub const DELAYED: &str = "delayed";
    pub const INFLIGHT: &str = "inflight";
    pub const DEAD: &str = "dead";
    pub const JOBS: &str = "jobs";
    pub const META: &str = "meta";
    pub const SEQ: &str = "seq";
    pub const DEDUP: &str = "dedup";
    pub const DEDUP_IDS: &str = "dedup_ids";
}

#[derive(Debug, Clone)]
pub struct CompiledQueue {
    pub scripts: QueueScripts,
}

pub fn compile(_rule: &Rule, _spec: &Queue) -> Result<CompiledQueue, String> {
    let scripts = SCRIPTS.clone();
    luacheck::check_builtin(scripts.all().iter().map(|s| s.as_ref()))?;
    Ok(CompiledQueue { scripts })
}

impl CompiledQueue {
    pub fn scripts(&self) -> Vec<Arc<Script>> {
        self.scripts.all()
    }

    /// The keys with what each holds. The queue keys have no TTL: they hold acknowledged
    /// pushes, which must not expire. Their bound is the policy's: `max_len` jobs (ready,
    /// delayed, in flight) plus `dead_max_len` dead letters.
    pub fn key_layout(&self, keys: &KeySpace, spec: &Queue) -> Vec<(String, String)> {
        let (n, dead) = (spec.max_len, spec.dead_max_len);
        vec![
            (
                keys.rule_key(sub::READY),
                format!("ZSET of ready jobs: id → (9 - priority) · 10^12 + sequence; no TTL, at most max_len ({n}) jobs with delayed and in flight"),
            ),
            (
                keys.rule_key(sub::DELAYED),
                "ZSET of delayed jobs (a push's `delay`, a nack's backoff): id → due ms; no TTL, within max_len".to_string(),
            ),
            (
                keys.rule_key(sub::INFLIGHT),
                "ZSET of popped jobs: id → visibility deadline ms; no TTL, within max_len".to_string(),
            ),
            (
                keys.rule_key(sub::DEAD),
                format!("ZSET of dead letters: id → dead-lettered at ms; no TTL, at most dead_max_len ({dead}), the oldest dropped"),
            ),
            (
                keys.rule_key(sub::JOBS),
                "HASH id → payload (JSON) of every job above; no TTL, at most max_len + dead_max_len fields".to_string(),
            ),
            (
                keys.rule_key(sub::META),
                "HASH id → `<attempts> <priority> <receipt> <last reason>` of every job above; no TTL, same bound".to_string(),
            ),
            (
                keys.rule_key(sub::SEQ),
                "STRING: the counter ordering ready jobs; no TTL, one integer".to_string(),
            ),
            (
                keys.rule_key(sub::DEDUP),
                "ZSET dedup id → end of its window ms; expires dedup_window after the last push with a dedup id".to_string(),
            ),
            (
                keys.rule_key(sub::DEDUP_IDS),
                "HASH dedup id → job id; expires with the dedup ZSET".to_string(),
            ),
        ]
    }
}
