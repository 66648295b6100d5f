//! `queue:` rules: what the YAML may say, the validated model, and the checks between.
//!
//! A queue rule is a reliable job queue served at `/v1/queues/{app}/{rule}`: push, pop with a
//! visibility timeout and a receipt per job, ack / nack / extend, dead letters after
//! `max_attempts` deliveries ([docs/queue.md](../../../docs/queue.md)). Every bound a request
//! or a script depends on is decided here: how many jobs a queue holds (`max_len`), how many
//! dead letters it keeps (`dead_max_len`), how many jobs one pop takes (`max_pop`) and how
//! long one waits (`max_wait`).

use std::path::Path;
use std::time::Duration;

use marked_yaml::{Node, Spanned};
use schemars::JsonSchema;
use serde::Deserialize;

use super::diagnostic::Location;
use super::ir::PluginRef;
use super::raw::{DurationText, RawPluginRef};
use super::validate::{Validator, loc};

/// A `queue` block, served at `/v1/queues/{app}/{rule}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    /// How long a popped job stays invisible to other workers before it goes back to the
    /// queue by itself (default `30s`).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub visibility: Option<Spanned<String>>,
    /// The longest visibility an `_extend` may ask for (default: 12h, or `visibility` if longer).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub max_visibility: Option<Spanned<String>>,
    /// Deliveries of a job before it moves to the dead letters (default 5).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub max_attempts: Option<Spanned<i64>>,
    /// A nacked job without its own delay is retried after `retry_backoff · 2^(attempts-1)`,
    /// at most 15 minutes (default `1s`).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub retry_backoff: Option<Spanned<String>>,
    /// Jobs a queue holds at most (ready, delayed and in flight together); a push beyond is
    /// refused with 503 `queue-full`, never dropped (default 100000).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub max_len: Option<Spanned<i64>>,
    /// Dead letters kept; beyond, the oldest are dropped (default 10000).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub dead_max_len: Option<Spanned<i64>>,
    /// A second push with the same `dedup_id` within this long is answered with the first
    /// push's job id and adds no job (default `5m`).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub dedup_window: Option<Spanned<String>>,
    /// The longest `delay` a push may ask for (default `7d`).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub max_delay: Option<Spanned<String>>,
    /// Jobs one pop may take (`count`), at most 100 (default 10).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub max_pop: Option<Spanned<i64>>,
    /// The longest a pop may wait for a job (`wait`), at most `60s` (default `20s`).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub max_wait: Option<Spanned<String>>,
    /// Push delivery: patternd itself POSTs each job to this endpoint, acks it on a 2xx and
    /// nacks it (the rule's backoff, then the dead letters) otherwise; no polling worker.
    #[serde(default)]
    #[schemars(with = "Option<RawPush>")]
    pub push: Option<Spanned<RawPush>>,
    /// A plugin whose `queue` hook sees each push before it is stored: it accepts the job
    /// (choosing its delay, priority or dedup id) or rejects it (422 `job-rejected`).
    #[serde(default)]
    #[schemars(with = "Option<RawPluginRef>")]
    pub plugin: Option<Spanned<RawPluginRef>>,
    /// What a push does when the plugin fails: `fail` (500 `plugin-failed`, the default) or
    /// `accept` (the job is pushed as the client asked).
    #[serde(default)]
    #[schemars(with = "Option<QueueFallbackName>")]
    pub fallback: Option<Spanned<String>>,
}

/// Schema-only: the `fallback` values.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum QueueFallbackName {
    Fail,
    Accept,
}

/// What a push does when the rule's plugin fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueFallback {
    /// 500 `plugin-failed`; nothing is pushed.
    #[default]
    Fail,
    /// Pushed as the client asked, as if the rule had no plugin.
    Accept,
}

/// `push: { url, timeout, concurrency }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPush {
    /// The worker's endpoint, `http://host:port/path`; it receives
    /// `{"id", "attempts", "payload"}` as a JSON POST.
    #[schemars(with = "String", pattern(r"^http://[^/]+"))]
    pub url: Spanned<String>,
    /// One delivery's deadline (default `10s`); shorter than the rule's `visibility`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<Spanned<String>>,
    /// Deliveries in flight at once, per engine (default 4, at most 64).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub concurrency: Option<Spanned<i64>>,
}

/// A validated `push` block.
#[derive(Debug, Clone)]
pub struct Push {
    pub url: String,
    pub timeout: Duration,
    pub concurrency: u64,
}

/// Ceiling of `push.concurrency`: the HTTP client's own bound per rule.
pub const MAX_PUSH_CONCURRENCY: u64 = 64;
pub const DEFAULT_PUSH_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_PUSH_CONCURRENCY: u64 = 4;

/// A validated `queue` rule.
#[derive(Debug, Clone)]
pub struct Queue {
    pub visibility: Duration,
    pub max_visibility: Duration,
    pub max_attempts: u64,
    pub retry_backoff: Duration,
    pub max_len: u64,
    pub dead_max_len: u64,
    pub dedup_window: Duration,
    pub max_delay: Duration,
    pub max_pop: u64,
    pub max_wait: Duration,
    pub push: Option<Push>,
    /// The plugin whose `queue` hook decides each push.
    pub plugin: Option<PluginRef>,
    pub fallback: QueueFallback,
    pub location: Location,
}

/// Ceiling of `max_pop`: one pop script moves at most this many jobs.
pub const MAX_MAX_POP: u64 = 100;
/// Ceiling of `max_wait`: a long poll holds an HTTP request (never a Redis connection).
pub const MAX_MAX_WAIT: Duration = Duration::from_secs(60);
/// Ceiling of `max_len` and `dead_max_len`: a queue lives in one cluster slot, on one primary.
pub const MAX_QUEUE_LEN: u64 = 100_000_000;
/// Ceiling of `max_attempts`.
pub const MAX_MAX_ATTEMPTS: u64 = 1000;

pub const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
pub const DEFAULT_MAX_ATTEMPTS: u64 = 5;
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_LEN: u64 = 100_000;
pub const DEFAULT_DEAD_MAX_LEN: u64 = 10_000;
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(7 * 86_400);
pub const DEFAULT_MAX_POP: u64 = 10;
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(20);

impl Validator {
    pub(super) fn queue(
        &mut self,
        path: &Path,
        rule: &str,
        raw: &Spanned<RawQueue>,
        body: &Node,
    ) -> Option<Queue> {
        let before = self.error_count();
        let at = loc(path, raw.span());
        let dur = |v: &mut Self, field: &str, d: &Option<Spanned<String>>, default| {
            d.as_ref()
                .and_then(|d| v.duration(path, field, d))
                .unwrap_or(default)
        };
        let visibility = dur(self, "visibility", &raw.visibility, DEFAULT_VISIBILITY);
        let max_visibility = dur(
            self,
            "max_visibility",
            &raw.max_visibility,
            DEFAULT_MAX_VISIBILITY.max(visibility),
        );
        if max_visibility < visibility
            && let Some(m) = &raw.max_visibility
        {
            self.err(
                &loc(path, m.span()),
                format!("rule `{rule}`: `max_visibility` is shorter than `visibility`"),
            );
        }
        let retry_backoff = dur(
            self,
            "retry_backoff",
            &raw.retry_backoff,
            DEFAULT_RETRY_BACKOFF,
        );
        let dedup_window = dur(
            self,
            "dedup_window",
            &raw.dedup_window,
            DEFAULT_DEDUP_WINDOW,
        );
        let max_delay = dur(self, "max_delay", &raw.max_delay, DEFAULT_MAX_DELAY);
        let max_wait = dur(self, "max_wait", &raw.max_wait, DEFAULT_MAX_WAIT);
        if max_wait > MAX_MAX_WAIT
            && let Some(m) = &raw.max_wait
        {
            self.err(
                &loc(path, m.span()),
                format!("rule `{rule}`: `max_wait` must be at most 60s (a pop is a long poll)"),
            );
        }
        let max_attempts = self.bounded(
            path,
            "max_attempts",
            &raw.max_attempts,
            DEFAULT_MAX_ATTEMPTS,
            MAX_MAX_ATTEMPTS,
        );
        let max_len = self.bounded(
            path,
            "max_len",
            &raw.max_len,
            DEFAULT_MAX_LEN,
            MAX_QUEUE_LEN,
        );
        let dead_max_len = self.bounded(
            path,
            "dead_max_len",
            &raw.dead_max_len,
            DEFAULT_DEAD_MAX_LEN,
            MAX_QUEUE_LEN,
        );
        let max_pop = self.bounded(path, "max_pop", &raw.max_pop, DEFAULT_MAX_POP, MAX_MAX_POP);
        let push = raw.push.as_ref().map(|p| {
            let url = p.url.as_str();
            let host_ok = url
                .strip_prefix("http://")
                .and_then(|rest| rest.split('/').next())
                .is_some_and(|h| !h.is_empty());
            if !host_ok {
                self.err(
                    &loc(path, p.url.span()),
                    format!("`push.url` must be an http:// URL with a host (got `{url}`)"),
                );
            }
            let timeout = dur(self, "push.timeout", &p.timeout, DEFAULT_PUSH_TIMEOUT);
            if timeout >= visibility {
                self.err(
                    &loc(path, p.span()),
                    format!(
                        "rule `{rule}`: `push.timeout` must be shorter than `visibility`, or a job \
                         would be delivered again while its first delivery still runs"
                    ),
                );
            }
            let concurrency = self.bounded(
                path,
                "push.concurrency",
                &p.concurrency,
                DEFAULT_PUSH_CONCURRENCY,
                MAX_PUSH_CONCURRENCY,
            );
            Push {
                url: url.to_string(),
                timeout,
                concurrency,
            }
        });
        let (plugin, proceeds) = self.body_hook(
            path,
            rule,
            "queue",
            "the payload",
            "accept",
            raw.plugin.as_ref(),
            raw.fallback.as_ref(),
            body,
        );
        let fallback = if proceeds {
            QueueFallback::Accept
        } else {
            QueueFallback::Fail
        };
        if self.error_count() > before {
            return None;
        }
        Some(Queue {
            visibility,
            max_visibility,
            max_attempts,
            retry_backoff,
            max_len,
            dead_max_len,
            dedup_window,
            max_delay,
            max_pop,
            max_wait,
            push,
            plugin,
            fallback,
            location: at,
        })
    }

    /// A positive count of at most `max`, or `default` when absent (or invalid, with an error).
    fn bounded(
        &mut self,
        path: &Path,
        field: &str,
        n: &Option<Spanned<i64>>,
        default: u64,
        max: u64,
    ) -> u64 {
        let Some(n) = n else { return default };
        match self.positive(path, field, n) {
            Some(v) if v > max => {
                self.err(
                    &loc(path, n.span()),
                    format!("`{field}` {v} is above {max}"),
                );
                default
            }
            Some(v) => v,
            None => default,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::policy::{RuleKind, load_sources};

    fn load(block: &str) -> Result<super::Queue, String> {
        let text = format!("app: shop\nrules:\n  jobs:\n    queue: {block}\n");
        match load_sources(&[(PathBuf::from("q.yaml"), text)]) {
            Ok(l) => match l.policy.rules().next().map(|r| r.kind.clone()) {
                Some(RuleKind::Queue(q)) => Ok(q),
                other => Err(format!("not a queue rule: {other:?}")),
            },
            Err(d) => Err(d.to_string()),
        }
    }

    #[test]
    fn defaults_apply() {
        let q = load("{}").expect("an empty queue block is valid");
        assert_eq!(q.visibility, Duration::from_secs(30));
        assert_eq!(q.max_visibility, Duration::from_secs(12 * 3600));
        assert_eq!((q.max_attempts, q.max_pop), (5, 10));
        assert_eq!((q.max_len, q.dead_max_len), (100_000, 10_000));
        assert_eq!(q.max_wait, Duration::from_secs(20));
        assert_eq!(q.dedup_window, Duration::from_secs(300));
        assert!(q.push.is_none());
        let q =
            load("{ visibility: 1m, push: { url: \"http://worker:8080/jobs\" } }").expect("valid");
        let push = q.push.expect("a push block");
        assert_eq!(push.url, "http://worker:8080/jobs");
        assert_eq!(
            (push.timeout, push.concurrency),
            (Duration::from_secs(10), 4)
        );
        assert!(q.plugin.is_none());
        let q = load("{ plugin: { name: job-gate, config: { require: [to] } }, fallback: accept }")
            .expect("valid");
        let p = q.plugin.expect("a plugin");
        assert_eq!(p.name, "job-gate");
        assert_eq!(p.config, serde_json::json!({ "require": ["to"] }));
        assert_eq!(q.fallback, super::QueueFallback::Accept);
        let q = load("{ plugin: { name: job-gate } }").expect("valid");
        assert_eq!(q.fallback, super::QueueFallback::Fail);
    }

    #[test]
    fn settings_are_read() {
        let q = load(
            "{ visibility: 1s, max_attempts: 2, retry_backoff: 50ms, max_len: 3, dead_max_len: 4, dedup_window: 1m, max_delay: 1h, max_pop: 100, max_wait: 60s }",
        )
        .expect("valid");
        assert_eq!(q.visibility, Duration::from_secs(1));
        assert_eq!(q.retry_backoff, Duration::from_millis(50));
        assert_eq!(
            (q.max_attempts, q.max_len, q.dead_max_len, q.max_pop),
            (2, 3, 4, 100)
        );
        assert_eq!(q.max_delay, Duration::from_secs(3600));
        assert_eq!(q.max_wait, Duration::from_secs(60));
        // A long visibility raises the default ceiling of extensions with it.
        let q = load("{ visibility: 1d }").expect("valid");
        assert_eq!(q.max_visibility, Duration::from_secs(86_400));
    }

    #[test]
    fn bounds_are_checked_each_with_its_place() {
        for (block, says) in [
            ("{ max_pop: 101 }", "`max_pop` 101 is above 100"),
            ("{ max_pop: 0 }", "`max_pop` must be at least 1"),
            ("{ max_wait: 61s }", "`max_wait` must be at most 60s"),
            (
                "{ max_attempts: 1001 }",
                "`max_attempts` 1001 is above 1000",
            ),
            ("{ max_len: -1 }", "`max_len` must be at least 1"),
            ("{ dead_max_len: 100000001 }", "is above 100000000"),
            (
                "{ visibility: 1m, max_visibility: 30s }",
                "`max_visibility` is shorter than `visibility`",
            ),
            ("{ visibility: 5x }", "`visibility`"),
            ("{ delay: 1s }", "unknown field `delay`"),
            (
                "{ push: { url: \"ftp://x/\" } }",
                "`push.url` must be an http:// URL",
            ),
            (
                "{ visibility: 5s, push: { url: \"http://w/\", timeout: 5s } }",
                "`push.timeout` must be shorter than `visibility`",
            ),
            (
                "{ push: { url: \"http://w/\", concurrency: 65 } }",
                "`push.concurrency` 65 is above 64",
            ),
            (
                "{ fallback: accept }",
                "`fallback` is only used with a `plugin`",
            ),
            (
                "{ plugin: { name: g }, fallback: maybe }",
                "unknown `fallback` `maybe`",
            ),
            (
                "{ plugin: { name: g, fields: [x] } }",
                "`plugin.fields` does not apply to `queue` rules",
            ),
            (
                "{ plugin: { name: g, headers: [x-a] } }",
                "`plugin.headers` applies to `rate_limit` rules only",
            ),
        ] {
            let e = load(block).expect_err(block);
            assert!(e.contains(says), "{block}: {e}");
            assert!(e.contains("q.yaml:4:"), "{block}: no place in {e}");
        }
    }
}
