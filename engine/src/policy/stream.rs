//! `stream:` rules: what the YAML may say, the validated model, and the checks between.
//!
//! A stream rule is one Redis stream per rule, bounded by design: `max_len` (XADD MAXLEN ~)
//! and/or `retention` (exact MINID from Redis TIME) must be set, so the stream never grows without
//! bound and needs no TTL. Its consumer groups are declared here, never made up by a client.

use std::path::Path;
use std::time::Duration;

use marked_yaml::{Node, Spanned};
use schemars::JsonSchema;
use serde::Deserialize;

use super::diagnostic::Location;
use super::ir::PluginRef;
use super::raw::{DurationText, RawPluginRef};
use super::validate::{Validator, loc};

/// The largest `max_len` and `dead_max_len`.
pub const MAX_STREAM_LEN: u64 = 100_000_000;
/// The largest `max_batch` and `max_count`: a script's work is bounded by these.
pub const MAX_BATCH: u64 = 1000;
/// Groups per rule.
pub const MAX_GROUPS: usize = 32;
/// The largest `max_deliveries`.
pub const MAX_DELIVERIES: u64 = 1000;
/// The largest per-client SSE buffer.
pub const MAX_TAIL_BUFFER: u64 = 65_536;

/// A `stream` block, served at `/v1/streams/{app}/{rule}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    /// Keep about this many entries (XADD MAXLEN ~: whole radix nodes are trimmed, so the
    /// stream may hold up to about 100 more). At least one of `max_len` and `retention`.
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1, max = 100000000))]
    pub max_len: Option<Spanned<i64>>,
    /// Drop entries older than this (MINID from Redis TIME, at every append).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub retention: Option<Spanned<String>>,
    /// Entries in one append, ids in one ack (default 100, at most 1000).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1, max = 1000))]
    pub max_batch: Option<Spanned<i64>>,
    /// Entries in one read, group or range (default 100, at most 1000).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1, max = 1000))]
    pub max_count: Option<Spanned<i64>>,
    /// The longest a group read may wait for entries (default `30s`).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub max_wait: Option<Spanned<String>>,
    /// Consumer groups, `[a-z0-9_-]` names; each is created on first use.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub groups: Option<Vec<Spanned<String>>>,
    /// An entry delivered and not acked for this long may be claimed by another consumer
    /// (default `30s`).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub claim_after: Option<Spanned<String>>,
    /// Deliveries of an entry to a group; one more claim moves it to the dead-letter stream
    /// instead (default 5).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1, max = 1000))]
    pub max_deliveries: Option<Spanned<i64>>,
    /// Entries the dead-letter stream keeps (default 10000, MAXLEN ~).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1, max = 100000000))]
    pub dead_max_len: Option<Spanned<i64>>,
    /// An SSE comment is sent this often on a quiet tail (default `15s`).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub heartbeat: Option<Spanned<String>>,
    /// Entries an SSE client may fall behind the tail before it is dropped (default 1024).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1, max = 65536))]
    pub tail_buffer: Option<Spanned<i64>>,
    /// A plugin whose `stream` hook sees each appended entry first: one it rejects refuses the
    /// whole append (422 `entry-rejected`).
    #[serde(default)]
    #[schemars(with = "Option<RawPluginRef>")]
    pub plugin: Option<Spanned<RawPluginRef>>,
    /// What an append does when the plugin fails: `fail` (500 `plugin-failed`, the default) or
    /// `accept` (appended as sent).
    #[serde(default)]
    #[schemars(with = "Option<StreamFallbackName>")]
    pub fallback: Option<Spanned<String>>,
}

/// Schema-only: the `fallback` values.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum StreamFallbackName {
    Fail,
    Accept,
}

/// What an append does when the rule's plugin fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamFallback {
    /// 500 `plugin-failed`; nothing is appended.
    #[default]
    Fail,
    /// Appended as sent, as if the rule had no plugin.
    Accept,
}

/// A validated `stream` rule.
#[derive(Debug, Clone)]
pub struct Stream {
    pub max_len: Option<u64>,
    pub retention: Option<Duration>,
    pub max_batch: u64,
    pub max_count: u64,
    pub max_wait: Duration,
    pub groups: Vec<String>,
    pub claim_after: Duration,
    pub max_deliveries: u64,
    pub dead_max_len: u64,
    pub heartbeat: Duration,
    pub tail_buffer: u64,
    /// The plugin whose `stream` hook decides each appended entry.
    pub plugin: Option<PluginRef>,
    pub fallback: StreamFallback,
    pub location: Location,
}

/// A group name: the rule-name alphabet (it appears in URLs and in Redis).
pub fn is_group_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

impl Validator {
    /// A positive integer field with an upper bound, or `default` when absent.
    pub(super) fn bounded_or(
        &mut self,
        path: &Path,
        field: &str,
        n: &Option<Spanned<i64>>,
        max: u64,
        default: u64,
    ) -> u64 {
        match n {
            None => default,
            Some(n) => match self.positive(path, field, n) {
                Some(v) if v > max => {
                    self.err(
                        &loc(path, n.span()),
                        format!("`{field}` {v} is above {max}"),
                    );
                    default
                }
                Some(v) => v,
                None => default,
            },
        }
    }

    fn optional_duration(
        &mut self,
        path: &Path,
        field: &str,
        d: &Option<Spanned<String>>,
        default: Duration,
    ) -> Duration {
        d.as_ref()
            .and_then(|d| self.duration(path, field, d))
            .unwrap_or(default)
    }

    pub(super) fn stream(
        &mut self,
        path: &Path,
        rule: &str,
        raw: &Spanned<RawStream>,
        body: &Node,
    ) -> Option<Stream> {
        let before = self.error_count();
        let at = loc(path, raw.span());
        if raw.max_len.is_none() && raw.retention.is_none() {
            self.err(
                &at,
                "a stream needs `max_len`, `retention` or both: it is bounded by them, not by a TTL",
            );
        }
        let max_len = raw
            .max_len
            .as_ref()
            .map(|_| self.bounded_or(path, "max_len", &raw.max_len, MAX_STREAM_LEN, 1));
        let retention = raw
            .retention
            .as_ref()
            .and_then(|d| self.duration(path, "retention", d));
        let max_batch = self.bounded_or(path, "max_batch", &raw.max_batch, MAX_BATCH, 100);
        let max_count = self.bounded_or(path, "max_count", &raw.max_count, MAX_BATCH, 100);
        let max_wait =
            self.optional_duration(path, "max_wait", &raw.max_wait, Duration::from_secs(30));
        let claim_after = self.optional_duration(
            path,
            "claim_after",
            &raw.claim_after,
            Duration::from_secs(30),
        );
        let heartbeat =
            self.optional_duration(path, "heartbeat", &raw.heartbeat, Duration::from_secs(15));
        let max_deliveries = self.bounded_or(
            path,
            "max_deliveries",
            &raw.max_deliveries,
            MAX_DELIVERIES,
            5,
        );
        let dead_max_len = self.bounded_or(
            path,
            "dead_max_len",
            &raw.dead_max_len,
            MAX_STREAM_LEN,
            10_000,
        );
        let tail_buffer =
            self.bounded_or(path, "tail_buffer", &raw.tail_buffer, MAX_TAIL_BUFFER, 1024);
        let mut groups: Vec<String> = Vec::new();
        let raw_groups = raw.groups.as_deref().unwrap_or_default();
        if raw_groups.len() > MAX_GROUPS {
            self.err(
                &at,
                format!(
                    "{} groups; a stream rule has at most {MAX_GROUPS}",
                    raw_groups.len()
                ),
            );
        }
        for g in raw_groups {
            let l = loc(path, g.span());
            if !is_group_name(g) {
                self.err(
                    &l,
                    format!(
                        "group `{}`: use lowercase letters, digits, `-` and `_` (at most 63)",
                        g.as_str()
                    ),
                );
            } else if groups.iter().any(|x| x == g.as_str()) {
                self.err(&l, format!("group `{}` is listed twice", g.as_str()));
            } else {
                groups.push(g.to_string());
            }
        }
        let (plugin, proceeds) = self.body_hook(
            path,
            rule,
            "stream",
            "each entry",
            "accept",
            raw.plugin.as_ref(),
            raw.fallback.as_ref(),
            body,
        );
        let fallback = if proceeds {
            StreamFallback::Accept
        } else {
            StreamFallback::Fail
        };
        if self.error_count() > before {
            return None;
        }
        if max_len.is_none() {
            // Bounded in age only: memory follows the append rate. Said, not refused.
            self.warn(
                &at,
                "this stream is bounded by `retention` only: it holds whatever is appended within it; add `max_len` to bound its memory",
            );
        }
        Some(Stream {
            max_len,
            retention,
            max_batch,
            max_count,
            max_wait,
            groups,
            claim_after,
            max_deliveries,
            dead_max_len,
            heartbeat,
            tail_buffer,
            plugin,
            fallback,
            location: at,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::is_group_name;
    use crate::policy::{RuleKind, load_sources};

    fn load(text: &str) -> Result<RuleKind, String> {
        load_sources(&[(PathBuf::from("s.yaml"), text.to_string())])
            .map(|l| l.policy.rules().next().map(|r| r.kind.clone()))
            .map_err(|d| d.to_string())?
            .ok_or_else(|| "no rule".to_string())
    }

    #[test]
    fn a_plugin_and_its_fallback() {
        let stream = |block: &str| {
            load(&format!(
                "app: a\nrules:\n  s: {{ stream: {{ max_len: 10, {block} }} }}\n"
            ))
            .and_then(|k| match k {
                RuleKind::Stream(s) => Ok(s),
                other => Err(format!("not a stream rule: {other:?}")),
            })
        };
        let s = stream("plugin: { name: g, config: { x: 1 } }, fallback: accept").expect("valid");
        assert_eq!(s.plugin.expect("a plugin").name, "g");
        assert_eq!(s.fallback, super::StreamFallback::Accept);
        assert_eq!(
            stream("plugin: { name: g }").expect("valid").fallback,
            super::StreamFallback::Fail
        );
        for (block, says) in [
            (
                "fallback: accept",
                "`fallback` is only used with a `plugin`",
            ),
            (
                "plugin: { name: g }, fallback: allow",
                "unknown `fallback` `allow`",
            ),
            (
                "plugin: { name: g, fields: [x] }",
                "`plugin.fields` does not apply to `stream` rules",
            ),
        ] {
            let e = stream(block).expect_err(block);
            assert!(e.contains(says), "{block}: {e}");
        }
    }

    #[test]
    fn defaults_are_applied() {
        let kind =
            load("app: a\nrules:\n  s: { stream: { max_len: 10, groups: [g] } }\n").expect("valid");
        let RuleKind::Stream(s) = kind else {
            panic!("a stream rule")
        };
        assert_eq!(s.max_len, Some(10));
        assert_eq!(s.retention, None);
        assert_eq!((s.max_batch, s.max_count, s.max_deliveries), (100, 100, 5));
        assert_eq!(s.claim_after, Duration::from_secs(30));
        assert_eq!(s.max_wait, Duration::from_secs(30));
        assert_eq!(s.heartbeat, Duration::from_secs(15));
        assert_eq!((s.dead_max_len, s.tail_buffer), (10_000, 1024));
        assert_eq!(s.groups, ["g"]);
        let kind = load("app: a\nrules:\n  p: { pubsub: {} }\n").expect("valid");
        let RuleKind::PubSub(p) = kind else {
            panic!("a pubsub rule")
        };
        assert_eq!((p.max_message_bytes, p.client_buffer), (65_536, 256));
    }

    #[test]
    fn unbounded_streams_and_bad_bounds_are_refused() {
        for (text, want) in [
            (
                "stream: { groups: [g] }",
                "needs `max_len`, `retention` or both",
            ),
            ("stream: { max_len: 0 }", "at least 1"),
            ("stream: { retention: 0s }", "at least 1ms"),
            ("stream: { max_len: 1, max_count: 1001 }", "above 1000"),
            ("stream: { max_len: 1, groups: [a, a] }", "listed twice"),
            (
                "stream: { max_len: 1, groups: [\"a:b\"] }",
                "lowercase letters",
            ),
            ("stream: { max_len: 1, claim_after: soon }", "claim_after"),
            (
                "stream: { max_len: 1, grups: [a] }",
                "did you mean `groups`",
            ),
            ("pubsub: { client_buffer: 0 }", "at least 1"),
            ("pubsub: { max_message_bytes: 65537 }", "above 65536"),
        ] {
            let err = load(&format!("app: a\nrules:\n  r: {{ {text} }}\n")).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn group_names_use_the_rule_alphabet() {
        for ok in ["billing", "a", "g-1_x", "0"] {
            assert!(is_group_name(ok), "{ok}");
        }
        for bad in ["", "Billing", "-a", "a b", "a:b", "{a}", &"a".repeat(64)] {
            assert!(!is_group_name(bad), "{bad}");
        }
    }
}
