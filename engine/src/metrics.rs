//! Every metric patternd exports, in one list: name, type, HELP text, labels (with their
//! values where they are fixed) and histogram buckets.
//!
//! [`ALL`] is what the recorder is set up from (HELP via `describe_*`, buckets per histogram),
//! what a scrape right after start shows (every series whose labels are known then, at zero),
//! and what README's metrics table is checked against (`tests::readme_documents_every_metric`;
//! `tests::every_metric_in_the_code_is_listed` finds metric names used anywhere else in the
//! engine). Call sites keep using the `metrics` macros with these names.
//!
//! Latencies are histograms, never summaries: quantiles of a summary cannot be aggregated
//! across replicas, bucket counts can.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

use crate::policy::cache::WriteMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family.
#[derive(Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// Label names in order, each with its fixed values (empty: values come from the policy,
    /// e.g. `app` and `rule`).
    pub labels: &'static [(&'static str, &'static [&'static str])],
    /// Histograms only: bucket upper bounds, in seconds.
    pub buckets: &'static [f64],
}

/// Redis round trips: 100 µs to 1 s (the command timeout is 300 ms by default).
const REDIS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Origin requests: 1 ms to 30 s (the longest sensible `origin_timeout`).
const ORIGIN_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const APP: (&str, &[&str]) = ("app", &[]);
const RULE: (&str, &[&str]) = ("rule", &[]);

pub const DECISION_OUTCOMES: &[&str] = &[
    "allowed",
    "denied",
    "shadow_denied",
    "degraded_allowed",
    "degraded_denied",
    "ok",
    "failed",
];
pub const LOST_GRANT_PATTERNS: &[&str] = &["lock", "ratelimit"];
pub const LOST_GRANT_OUTCOMES: &[&str] = &["released", "nothing_held", "gave_up", "skipped"];
pub const RELOAD_RESULTS: &[&str] = &["ok", "rejected"];
pub const CACHE_WRITE_MODES: &[&str] = &["cache", "through", "behind"];
pub const CACHE_WRITE_RESULTS: &[&str] = &[
    "stored",
    "accepted",
    "cache_unconfirmed",
    "too_large",
    "origin_error",
    "origin_timeout",
    "journal_full",
    "not_found",
    "not_hash",
    "precondition_failed",
    "bad_request",
    "bypassed",
    "plugin_failed",
    "redis_error",
    "internal",
];
pub const REDIS_ERROR_KINDS: &[&str] = &[
    "connection",
    "timeout",
    "circuit_open",
    "unavailable",
    "wrong_type",
    "noscript",
    "not_replicated",
    "other",
];
pub const BREAKER_STATES: &[&str] = &["open", "half_open", "closed"];
pub const CACHE_FLUSH_RESULTS: &[&str] = &["delivered", "failed", "coalesced", "dead_lettered"];

pub const ALL: &[Metric] = &[
    Metric {
        name: "patternd_http_connections",
        kind: Kind::Gauge,
        help: "Open client connections.",
        labels: &[],
        buckets: &[],
    },
    Metric {
        name: "patternd_http_connection_limit_waits_total",
        kind: Kind::Counter,
        help: "Accepts that waited because --max-connections connections were open.",
        labels: &[],
        buckets: &[],
    },
    Metric {
        name: "patternd_http_header_timeouts_total",
        kind: Kind::Counter,
        help: "Connections closed for want of a complete request head within the header read timeout.",
        labels: &[],
        buckets: &[],
    },
    Metric {
        name: "patternd_decisions_total",
        kind: Kind::Counter,
        help: "Rate-limit decisions and plugin operation calls, by outcome.",
        labels: &[
            APP,
            RULE,
            ("pattern", &["ratelimit", "ops"]),
            ("outcome", DECISION_OUTCOMES),
        ],
        buckets: &[],
    },
    Metric {
        name: "patternd_redis_batches_total",
        kind: Kind::Counter,
        help: "Batch script calls (--redis-batch): several calls of one script decided in one Redis call.",
        labels: &[],
        buckets: &[],
    },
    Metric {
        name: "patternd_redis_batched_calls_total",
        kind: Kind::Counter,
        help: "Calls sent inside batch script calls (divided by patternd_redis_batches_total: the mean batch size).",
        labels: &[],
        buckets: &[],
    },
    Metric {
        name: "patternd_redis_seconds",
        kind: Kind::Histogram,
        help: "Redis round trips (one script call each), in seconds.",
        labels: &[],
        buckets: REDIS_BUCKETS,
    },
    Metric {
        name: "patternd_redis_errors_total",
        kind: Kind::Counter,
        help: "Failed Redis calls, by kind (circuit_open: refused by the breaker, not sent).",
        labels: &[("kind", REDIS_ERROR_KINDS)],
        buckets: &[],
    },
    Metric {
        name: "patternd_redis_breaker_open",
        kind: Kind::Gauge,
        help: "1 while the Redis circuit breaker is open, else 0.",
        labels: &[],
        buckets: &[],
    },
    Metric {
        name: "patternd_redis_breaker_transitions_total",
        kind: Kind::Counter,
        help: "Redis circuit breaker state changes, by the state entered.",
        labels: &[("to", BREAKER_STATES)],
        buckets: &[],
    },
    Metric {
        name: "patternd_script_reloads_total",
        kind: Kind::Counter,
        help: "Scripts loaded again after Redis answered NOSCRIPT (a restart, failover or SCRIPT FLUSH).",
        labels: &[],
        buckets: &[],
    },
    Metric {
        name: "patternd_reloads_total",
        kind: Kind::Counter,
        help: "Policy reloads (POST /admin/reload), by result.",
        labels: &[("result", RELOAD_RESULTS)],
        buckets: &[],
    },
    Metric {
        name: "patternd_plugin_failures_total",
        kind: Kind::Counter,
        help: "Plugin calls that failed (answered by the rule's fallback, or a 500).",
        labels: &[APP, RULE],
        buckets: &[],
    },
    Metric {
        name: "patternd_session_requests_total",
        kind: Kind::Counter,
        help: "Session requests, by operation or outcome.",
        labels: &[
            APP,
            RULE,
            (
                "op",
                &[
                    "create",
                    "read",
                    "patch",
                    "rotate",
                    "destroy",
                    "logout",
                    "not_found",
                    "rejected",
                    "failed",
                ],
            ),
        ],
        buckets: &[],
    },
    Metric {
        name: "patternd_session_evictions_total",
        kind: Kind::Counter,
        help: "Sessions destroyed because their user reached max_per_user or user_cap.",
        labels: &[APP, RULE],
        buckets: &[],
    },
    Metric {
        name: "patternd_lock_requests_total",
        kind: Kind::Counter,
        help: "Lock requests, by outcome (retry: one wait between acquire attempts).",
        labels: &[
            APP,
            RULE,
            (
                "outcome",
                &[
                    "acquired",
                    "busy",
                    "retry",
                    "extended",
                    "released",
                    "not_owner",
                    "failed",
                ],
            ),
        ],
        buckets: &[],
    },
    Metric {
        name: "patternd_leaderboard_requests_total",
        kind: Kind::Counter,
        help: "Leaderboard requests, by outcome (improved: a submit that bettered the member's score, also counted as submitted; refused: a score beyond the rule's bounds; rejected / adjusted: a submit the rule's plugin refused / whose score it replaced).",
        labels: &[
            APP,
            RULE,
            (
                "outcome",
                &[
                    "submitted",
                    "improved",
                    "refused",
                    "read",
                    "removed",
                    "aggregated",
                    "failed",
                    "rejected",
                    "adjusted",
                ],
            ),
        ],
        buckets: &[],
    },
    Metric {
        name: "patternd_leaderboard_period_retries_total",
        kind: Kind::Counter,
        help: "Leaderboard calls made again because Redis' clock put them in another period than the engine's (at a period boundary, or a skewed host).",
        labels: &[APP, RULE],
        buckets: &[],
    },
    Metric {
        name: "patternd_lost_grants_total",
        kind: Kind::Counter,
        help: "Acquires whose answer was lost (timeout, cancelled request), undone in the background, by outcome.",
        labels: &[
            ("pattern", LOST_GRANT_PATTERNS),
            ("outcome", LOST_GRANT_OUTCOMES),
        ],
        buckets: &[],
    },
    Metric {
        name: "patternd_cache_requests_total",
        kind: Kind::Counter,
        help: "Cache reads, by result.",
        labels: &[
            APP,
            RULE,
            (
                "result",
                &[
                    "hit",
                    "miss",
                    "stale",
                    "refresh",
                    "collapsed",
                    "negative",
                    "bypass",
                    "error",
                    "redis_error",
                    "redis_origin",
                ],
            ),
        ],
        buckets: &[],
    },
    Metric {
        name: "patternd_ratelimit_deny_cache_hits_total",
        kind: Kind::Counter,
        help: "Rate-limit denials answered from this engine's deny cache, without Redis (also counted as denied).",
        labels: &[APP, RULE],
        buckets: &[],
    },
    Metric {
        name: "patternd_near_cache_hits_total",
        kind: Kind::Counter,
        help: "Cache hits answered from this engine's near cache (also counted as hits).",
        labels: &[APP, RULE],
        buckets: &[],
    },
    Metric {
        name: "patternd_near_cache_live",
        kind: Kind::Gauge,
        help: "1 while the invalidation connection is subscribed and near caches serve, else 0.",
        labels: &[],
        buckets: &[],
    },
    Metric {
        name: "patternd_near_cache_invalidations_total",
        kind: Kind::Counter,
        help: "Invalidation messages received from Redis for near-cached keys.",
        labels: &[],
        buckets: &[],
    },
    Metric {
        name: "patternd_cache_origin_seconds",
        kind: Kind::Histogram,
        help: "Cache origin requests (fills and writes), in seconds.",
        labels: &[APP, RULE],
        buckets: ORIGIN_BUCKETS,
    },
    Metric {
        name: "patternd_cache_writes_total",
        kind: Kind::Counter,
        help: "Cache writes (PUT, PATCH), by write mode and result.",
        labels: &[
            APP,
            RULE,
            ("mode", CACHE_WRITE_MODES),
            ("result", CACHE_WRITE_RESULTS),
        ],
        buckets: &[],
    },
    Metric {
        name: "patternd_cache_journal_backlog",
        kind: Kind::Gauge,
        help: "Write-behind writes not yet delivered to the origin (refreshed by every flusher poll).",
        labels: &[APP, RULE],
        buckets: &[],
    },
    Metric {
        name: "patternd_cache_dead_letters",
        kind: Kind::Gauge,
        help: "Write-behind writes in the dead letters (refreshed by every flusher poll).",
        labels: &[APP, RULE],
        buckets: &[],
    },
    Metric {
        name: "patternd_cache_flush_total",
        kind: Kind::Counter,
        help: "Write-behind deliveries, by result (failed: one attempt; coalesced: superseded by a newer write).",
        labels: &[APP, RULE, ("result", CACHE_FLUSH_RESULTS)],
        buckets: &[],
    },
    Metric {
        name: "patternd_cache_dead_letters_replayed_total",
        kind: Kind::Counter,
        help: "Dead letters moved back into the journal by the replay admin route.",
        labels: &[APP, RULE],
        buckets: &[],
    },
    Metric {
        name: "patternd_queue_events_total",
        kind: Kind::Counter,
        help: "Queue job events, by event (redelivered: a lapsed lease put back; full: a push refused at max_len; stale_receipt: an ack, nack or extend refused with 409; rejected: a push the rule's plugin refused).",
        labels: &[APP, RULE, ("event", crate::patterns::queue::EVENTS)],
        buckets: &[],
    },
    Metric {
        name: "patternd_queue_jobs",
        kind: Kind::Gauge,
        help: "Jobs a queue holds, by state (refreshed by every pop and by the reaper, about once a second; every engine reports the same queue: aggregate with max).",
        labels: &[APP, RULE, ("state", crate::patterns::queue::STATES)],
        buckets: &[],
    },
    Metric {
        name: "patternd_stream_entries_total",
        kind: Kind::Counter,
        help: "Stream entries, by event: appended, delivered to a group (claims too), acked, dead_lettered (claimed past max_deliveries).",
        labels: &[
            APP,
            RULE,
            (
                "event",
                &[
                    "appended",
                    "delivered",
                    "acked",
                    "dead_lettered",
                    "rejected",
                ],
            ),
        ],
        buckets: &[],
    },
    Metric {
        name: "patternd_counting_requests_total",
        kind: Kind::Counter,
        help: "Counter requests answered, by operation (add, read, check), and the ones that failed on Redis (op any, outcome failed).",
        labels: &[
            APP,
            RULE,
            ("op", &["add", "read", "check", "any"]),
            ("outcome", &["ok", "failed"]),
        ],
        buckets: &[],
    },
    Metric {
        name: "patternd_bloom_saturated_total",
        kind: Kind::Counter,
        help: "Bloom adds answered on a filter past its capacity (saturated: the false-positive rate is above error_rate, or RedisBloom grew the filter).",
        labels: &[APP, RULE],
        buckets: &[],
    },
    Metric {
        name: "patternd_period_retries_total",
        kind: Kind::Counter,
        help: "Counter calls sent again because the engine's clock named another period than Redis TIME (clock skew near a period boundary).",
        labels: &[APP, RULE],
        buckets: &[],
    },
    Metric {
        name: "patternd_sse_clients",
        kind: Kind::Gauge,
        help: "Server-Sent Events clients connected (stream tails and pub/sub subscribers).",
        labels: &[("pattern", &["stream", "pubsub"])],
        buckets: &[],
    },
    Metric {
        name: "patternd_sse_dropped_total",
        kind: Kind::Counter,
        help: "SSE clients dropped for falling further behind than their buffer (slow readers).",
        labels: &[("pattern", &["stream", "pubsub"])],
        buckets: &[],
    },
    Metric {
        name: "patternd_pubsub_published_total",
        kind: Kind::Counter,
        help: "Messages published through patternd.",
        labels: &[APP, RULE],
        buckets: &[],
    },
    Metric {
        name: "patternd_pubsub_rejected_total",
        kind: Kind::Counter,
        help: "Publishes and subscribes the rule's plugin rejected (403).",
        labels: &[APP, RULE],
        buckets: &[],
    },
    Metric {
        name: "patternd_pubsub_received_total",
        kind: Kind::Counter,
        help: "Messages this engine's subscriber connection received (before fan-out to SSE clients).",
        labels: &[],
        buckets: &[],
    },
    Metric {
        name: "patternd_pubsub_gaps_total",
        kind: Kind::Counter,
        help: "Times the pub/sub subscriber connection dropped (every subscriber got `event: gap`).",
        labels: &[],
        buckets: &[],
    },
];

/// The exporter, with each histogram's buckets (a histogram without buckets would be
/// exported as a summary).
pub fn prometheus_builder() -> Result<PrometheusBuilder, BuildError> {
    let mut b = PrometheusBuilder::new();
    for m in ALL.iter().filter(|m| m.kind == Kind::Histogram) {
        b = b.set_buckets_for_metric(Matcher::Full(m.name.into()), m.buckets)?;
    }
    Ok(b)
}

/// After the recorder is installed: HELP for every metric, and every series whose labels
/// are known before any rule exists, at zero (a scrape right after start shows them, and
/// `rate()` has a starting point).
pub fn describe_and_register_globals() {
    for m in ALL {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
    let _ = metrics::counter!("patternd_script_reloads_total");
    let _ = metrics::counter!("patternd_redis_batches_total");
    let _ = metrics::counter!("patternd_redis_batched_calls_total");
    for r in RELOAD_RESULTS {
        let _ = metrics::counter!("patternd_reloads_total", "result" => *r);
    }
    for p in LOST_GRANT_PATTERNS {
        for o in LOST_GRANT_OUTCOMES {
            let _ =
                metrics::counter!("patternd_lost_grants_total", "pattern" => *p, "outcome" => *o);
        }
    }
    metrics::gauge!("patternd_near_cache_live").set(0.0);
    let _ = metrics::counter!("patternd_near_cache_invalidations_total");
    for k in REDIS_ERROR_KINDS {
        let _ = metrics::counter!("patternd_redis_errors_total", "kind" => *k);
    }
    for t in BREAKER_STATES {
        let _ = metrics::counter!("patternd_redis_breaker_transitions_total", "to" => *t);
    }
    // The listener and the breaker set these as they run; until then, 0 is the truth.
    metrics::gauge!("patternd_http_connections").set(0.0);
    let _ = metrics::counter!("patternd_http_connection_limit_waits_total");
    let _ = metrics::counter!("patternd_http_header_timeouts_total");
    metrics::gauge!("patternd_redis_breaker_open").set(0.0);
    for p in ["stream", "pubsub"] {
        metrics::gauge!("patternd_sse_clients", "pattern" => p).set(0.0);
        let _ = metrics::counter!("patternd_sse_dropped_total", "pattern" => p);
    }
    let _ = metrics::counter!("patternd_pubsub_received_total");
    let _ = metrics::counter!("patternd_pubsub_gaps_total");
}

/// A cache rule's series that its runtime creates only on first use, at zero, when the
/// snapshot is built (the rule's other series are handles it holds from the start).
pub fn register_cache_rule(app: &str, rule: &str, write: WriteMode) {
    let mode = match write {
        WriteMode::Cache => "cache",
        WriteMode::Through => "through",
        WriteMode::Behind => "behind",
    };
    for r in CACHE_WRITE_RESULTS {
        let _ = metrics::counter!("patternd_cache_writes_total", "app" => app.to_string(), "rule" => rule.to_string(), "mode" => mode, "result" => *r);
    }
    if write != WriteMode::Behind {
        return;
    }
    let labels = [("app", app.to_string()), ("rule", rule.to_string())];
    let _ = metrics::gauge!("patternd_cache_journal_backlog", &labels);
    let _ = metrics::gauge!("patternd_cache_dead_letters", &labels);
    let _ = metrics::counter!("patternd_cache_dead_letters_replayed_total", &labels);
    for r in CACHE_FLUSH_RESULTS {
        let _ = metrics::counter!("patternd_cache_flush_total", "app" => app.to_string(), "rule" => rule.to_string(), "result" => *r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readme_section() -> String {
        let readme = include_str!("../../README.md");
        readme
            .split("\n## Metrics\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has a Metrics section")
            .to_string()
    }

    /// Each metric has one row: name, type, labels (fixed values in parentheses), and every
    /// row is a metric of [`ALL`].
    #[test]
    fn readme_documents_every_metric() {
        let section = readme_section();
        let rows: Vec<&str> = section
            .lines()
            .filter(|l| l.starts_with("| `patternd_"))
            .collect();
        for m in ALL {
            let row = rows
                .iter()
                .find(|r| r.starts_with(&format!("| `{}` |", m.name)))
                .unwrap_or_else(|| panic!("README's metrics table has no row for {}", m.name));
            let cells: Vec<&str> = row.split(" | ").collect();
            assert_eq!(cells.get(1).copied(), Some(m.kind.name()), "{row}");
            let labels = cells.get(2).copied().unwrap_or_default();
            for (label, values) in m.labels {
                let mut expected = format!("`{label}`");
                if !values.is_empty() {
                    let list: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
                    expected = format!("{expected} ({})", list.join(", "));
                }
                assert!(
                    labels.contains(&expected),
                    "{}: README should say {expected} in {labels}",
                    m.name
                );
            }
        }
        assert_eq!(rows.len(), ALL.len(), "README rows without a metric in ALL");
    }

    /// Every `"patternd_…"` name used in the engine's sources is a metric of [`ALL`] (or a
    /// histogram's series).
    #[test]
    fn every_metric_in_the_code_is_listed() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![src];
        let mut unknown = Vec::new();
        while let Some(p) = stack.pop() {
            if p.is_dir() {
                for e in std::fs::read_dir(&p).expect("readable").flatten() {
                    stack.push(e.path());
                }
                continue;
            }
            if p.extension().is_none_or(|e| e != "rs") || p.ends_with("metrics.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).expect("readable");
            for part in text.split("\"patternd_").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                let full = format!("patternd_{name}");
                if part[name.len()..].starts_with('"') && !ALL.iter().any(|m| m.name == full) {
                    unknown.push(format!("{}: {full}", p.display()));
                }
            }
        }
        assert!(
            unknown.is_empty(),
            "metrics missing from metrics::ALL (describe and document them):\n{}",
            unknown.join("\n")
        );
    }

    #[test]
    fn every_histogram_has_buckets() {
        for m in ALL {
            assert_eq!(
                m.kind == Kind::Histogram,
                !m.buckets.is_empty(),
                "{}",
                m.name
            );
            assert!(m.buckets.windows(2).all(|w| w[0] < w[1]), "{}", m.name);
            assert!(!m.help.is_empty(), "{}", m.name);
        }
    }
}
