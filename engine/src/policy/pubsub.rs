//! `pubsub:` rules: what the YAML may say, the validated model, and the checks between.
//!
//! Pub/sub keeps nothing in Redis: a message reaches the engines subscribed at that moment
//! and is gone (at-most-once). The rule bounds what an engine holds for its SSE clients.

use std::path::Path;
use std::time::Duration;

use marked_yaml::{Node, Spanned};
use schemars::JsonSchema;
use serde::Deserialize;

use super::diagnostic::Location;
use super::ir::PluginRef;
use super::raw::{DurationText, RawPluginRef};
use super::validate::{Validator, loc};

/// The largest message (the request body limit is 64 KiB).
pub const MAX_MESSAGE_BYTES: u64 = 64 * 1024;
/// The largest per-client buffer, in messages.
pub const MAX_CLIENT_BUFFER: u64 = 65_536;

/// A `pubsub` block, served at `/v1/pubsub/{app}/{rule}/{channel}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPubSub {
    /// The largest message body in bytes (default 65536).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1, max = 65536))]
    pub max_message_bytes: Option<Spanned<i64>>,
    /// An SSE comment is sent this often on a quiet subscription (default `15s`).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub heartbeat: Option<Spanned<String>>,
    /// Messages a subscriber may fall behind before it is dropped (default 256).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1, max = 65536))]
    pub client_buffer: Option<Spanned<i64>>,
    /// A plugin whose `pubsub` hook sees each publish and subscribe first: it allows it or
    /// rejects it (403 `rejected`).
    #[serde(default)]
    #[schemars(with = "Option<RawPluginRef>")]
    pub plugin: Option<Spanned<RawPluginRef>>,
    /// What a publish or subscribe does when the plugin fails: `fail` (500 `plugin-failed`,
    /// the default) or `allow` (as if the rule had no plugin).
    #[serde(default)]
    #[schemars(with = "Option<PubSubFallbackName>")]
    pub fallback: Option<Spanned<String>>,
}

/// Schema-only: the `fallback` values.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum PubSubFallbackName {
    Fail,
    Allow,
}

/// What a publish or subscribe does when the rule's plugin fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PubSubFallback {
    /// 500 `plugin-failed`; nothing is published, no stream starts.
    #[default]
    Fail,
    /// Goes ahead as if the rule had no plugin.
    Allow,
}

/// A validated `pubsub` rule.
#[derive(Debug, Clone)]
pub struct PubSub {
    pub max_message_bytes: u64,
    pub heartbeat: Duration,
    pub client_buffer: u64,
    /// The plugin whose `pubsub` hook decides each publish and subscribe.
    pub plugin: Option<PluginRef>,
    pub fallback: PubSubFallback,
    pub location: Location,
}

impl Validator {
    pub(super) fn pubsub(
        &mut self,
        path: &Path,
        rule: &str,
        raw: &Spanned<RawPubSub>,
        body: &Node,
    ) -> Option<PubSub> {
        let before = self.error_count();
        let at = loc(path, raw.span());
        let max_message_bytes = self.bounded_or(
            path,
            "max_message_bytes",
            &raw.max_message_bytes,
            MAX_MESSAGE_BYTES,
            MAX_MESSAGE_BYTES,
        );
        let client_buffer = self.bounded_or(
            path,
            "client_buffer",
            &raw.client_buffer,
            MAX_CLIENT_BUFFER,
            256,
        );
        let heartbeat = raw
            .heartbeat
            .as_ref()
            .and_then(|d| self.duration(path, "heartbeat", d))
            .unwrap_or(Duration::from_secs(15));
        let (plugin, proceeds) = self.body_hook(
            path,
            rule,
            "pubsub",
            "the message",
            "allow",
            raw.plugin.as_ref(),
            raw.fallback.as_ref(),
            body,
        );
        let fallback = if proceeds {
            PubSubFallback::Allow
        } else {
            PubSubFallback::Fail
        };
        if self.error_count() > before {
            return None;
        }
        Some(PubSub {
            max_message_bytes,
            heartbeat,
            client_buffer,
            plugin,
            fallback,
            location: at,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::policy::{RuleKind, load_sources};

    fn load(block: &str) -> Result<super::PubSub, String> {
        let text = format!("app: chat\nrules:\n  rooms:\n    pubsub: {block}\n");
        match load_sources(&[(PathBuf::from("p.yaml"), text)]) {
            Ok(l) => match l.policy.rules().next().map(|r| r.kind.clone()) {
                Some(RuleKind::PubSub(p)) => Ok(p),
                other => Err(format!("not a pubsub rule: {other:?}")),
            },
            Err(d) => Err(d.to_string()),
        }
    }

    #[test]
    fn a_plugin_and_its_fallback() {
        let p = load("{}").expect("valid");
        assert!(p.plugin.is_none());
        let p =
            load("{ plugin: { name: channel-gate, config: { open: [lobby] } }, fallback: allow }")
                .expect("valid");
        let r = p.plugin.expect("a plugin");
        assert_eq!(r.name, "channel-gate");
        assert_eq!(r.config, serde_json::json!({ "open": ["lobby"] }));
        assert_eq!(p.fallback, super::PubSubFallback::Allow);
        let p = load("{ plugin: { name: channel-gate } }").expect("valid");
        assert_eq!(p.fallback, super::PubSubFallback::Fail);
        for (block, says) in [
            (
                "{ fallback: allow }",
                "`fallback` is only used with a `plugin`",
            ),
            (
                "{ plugin: { name: g }, fallback: accept }",
                "unknown `fallback` `accept`",
            ),
            (
                "{ plugin: { name: g, fields: [x] } }",
                "`plugin.fields` does not apply to `pubsub` rules",
            ),
            (
                "{ plugin: { name: g, headers: [x-a] } }",
                "`plugin.headers` applies to `rate_limit` rules only",
            ),
        ] {
            let e = load(block).expect_err(block);
            assert!(e.contains(says), "{block}: {e}");
        }
    }
}
