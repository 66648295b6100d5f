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
use super::raw::DurationText;
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
}

/// A validated `pubsub` rule.
#[derive(Debug, Clone)]
pub struct PubSub {
    pub max_message_bytes: u64,
    pub heartbeat: Duration,
    pub client_buffer: u64,
    pub location: Location,
}

impl Validator {
    pub(super) fn pubsub(
        &mut self,
        path: &Path,
        _rule: &str,
        raw: &Spanned<RawPubSub>,
        _body: &Node,
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
        if self.error_count() > before {
            return None;
        }
        Some(PubSub {
            max_message_bytes,
            heartbeat,
            client_buffer,
            location: at,
        })
    }
}
