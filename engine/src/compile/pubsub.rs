//! `pubsub` rules → their scripts and channel layout. Pure.
//!
//! Pub/sub stores nothing: its one script publishes (PUBLISH on one server, SPUBLISH on a
//! cluster, where the channel's slot picks the shard). It is a script only so that the
//! channel travels in KEYS like every key (the slot check sees it) and a NOSCRIPT is
//! recovered like any other. Channels are named by the key builder:
//! `{app}:pubsub:{rule}:{<channel>}:c`, so a channel name cannot leave its rule's namespace.

use std::sync::{Arc, LazyLock};

use super::recipe::{Recipe, assemble, lua_file};
use super::{KeySpace, Script, luacheck};
use crate::policy::Rule;
use crate::policy::pubsub::PubSub;

const PUBLISH: Recipe = Recipe::new("pubsub publish", &[], lua_file!("pubsub/publish.lua"));
const SPUBLISH: Recipe = Recipe::new("pubsub spublish", &[], lua_file!("pubsub/spublish.lua"));

/// The recipes, for the `compile` module doc.
#[cfg(test)]
pub(super) const RECIPES: &[Recipe<'static>] = &[PUBLISH, SPUBLISH];

/// The scripts of pub/sub rules.
#[derive(Debug, Clone)]
pub struct PubSubScripts {
    /// PUBLISH, for one server.
    pub publish: Arc<Script>,
    /// SPUBLISH, for a cluster.
    pub spublish: Arc<Script>,
}

static SCRIPTS: LazyLock<PubSubScripts> = LazyLock::new(|| PubSubScripts {
    publish: assemble(&PUBLISH),
    spublish: assemble(&SPUBLISH),
});

#[derive(Debug, Clone)]
pub struct CompiledPubSub {
    pub scripts: PubSubScripts,
}

pub fn compile(_rule: &Rule, _spec: &PubSub) -> Result<CompiledPubSub, String> {
    let scripts = SCRIPTS.clone();
    luacheck::check_builtin([scripts.publish.as_ref(), scripts.spublish.as_ref()])?;
    Ok(CompiledPubSub { scripts })
}

/// The Redis channel of `channel`.
pub fn channel_key(keys: &KeySpace, channel: &str) -> String {
    keys.key(channel, "c")
}

impl CompiledPubSub {
    pub fn scripts(&self) -> Vec<Arc<Script>> {
        vec![self.scripts.publish.clone(), self.scripts.spublish.clone()]
    }

    pub fn key_layout(&self, keys: &KeySpace) -> Vec<(String, String)> {
        vec![(
            keys.template("c").replace("<id>", "<channel>"),
            "a pub/sub CHANNEL, not a key: nothing is stored (at-most-once)".to_string(),
        )]
    }
}
