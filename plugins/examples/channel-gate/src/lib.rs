//! channel-gate: a patternd plugin with a pubsub hook, which decides who may subscribe to and
//! publish on which channel of a `pubsub` rule.
//!
//! Config (the rule's `plugin.config`, as JSON; every field optional):
//!
//! ```json
//! { "user_header": "X-User",
//!   "open": ["lobby"],
//!   "publishers": ["ops"],
//!   "banned": ["spam"] }
//! ```
//!
//! - anyone may subscribe to an `open` channel; a user (the `user_header`) may also subscribe
//!   to `user.<their name>`; any other subscription is rejected (403);
//! - only the `publishers` may publish, and not a message holding a `banned` word (403).
//!
//! Its other hooks are neutral: it targets the world `plugin-pubsub`, which has them all.

// wit-bindgen's generated glue lowers a request as 14 scalar arguments.
#![allow(clippy::too_many_arguments)]

use std::sync::OnceLock;

use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "plugin-pubsub" });

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_user_header")]
    user_header: String,
    #[serde(default)]
    open: Vec<String>,
    #[serde(default)]
    publishers: Vec<String>,
    #[serde(default)]
    banned: Vec<String>,
}

fn default_user_header() -> String {
    "x-user".into()
}

/// Set once by `init`: the host calls `init` on every new instance before any hook.
static CONFIG: OnceLock<Config> = OnceLock::new();

struct ChannelGate;

impl Guest for ChannelGate {
    fn init(config: String) -> Result<(), String> {
        let mut cfg: Config = match config.trim() {
            "null" => serde_json::from_str("{}"),
            text => serde_json::from_str(text),
        }
        .map_err(|e| format!("channel-gate config: {e}"))?;
        // The host passes header names lowercase.
        cfg.user_header = cfg.user_header.to_ascii_lowercase();
        let _ = CONFIG.set(cfg);
        Ok(())
    }

    fn pubsub(
        req: Request,
        channel: String,
        op: PubsubOp,
        message: Option<String>,
    ) -> PubsubDecision {
        let Some(cfg) = CONFIG.get() else {
            return PubsubDecision::Reject("channel-gate: not initialized".into());
        };
        let user = req
            .headers
            .iter()
            .find(|h| h.name == cfg.user_header)
            .map(|h| h.value.as_str());
        match op {
            PubsubOp::Subscribe => {
                let own = user.is_some_and(|u| channel.strip_prefix("user.") == Some(u));
                if own || cfg.open.contains(&channel) {
                    PubsubDecision::Allow
                } else {
                    PubsubDecision::Reject(format!("may not subscribe to `{channel}`"))
                }
            }
            PubsubOp::Publish => {
                if !user.is_some_and(|u| cfg.publishers.iter().any(|p| p == u)) {
                    return PubsubDecision::Reject(format!("may not publish to `{channel}`"));
                }
                let text = message.unwrap_or_default();
                match cfg.banned.iter().find(|w| text.contains(w.as_str())) {
                    Some(w) => PubsubDecision::Reject(format!("the message holds `{w}`")),
                    None => PubsubDecision::Allow,
                }
            }
        }
    }

    fn rate_limit(_req: Request) -> RateLimitDecision {
        RateLimitDecision::Skip
    }

    fn cache(_req: Request) -> CacheDecision {
        CacheDecision {
            key: None,
            ttl_ms: None,
            bypass: false,
            tags: Vec::new(),
        }
    }

    fn session(_req: Request, _s: Session) -> SessionDecision {
        SessionDecision::Allow
    }
}

export!(ChannelGate);
