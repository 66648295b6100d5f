//! Lints: valid policies that repeat an anti-pattern of the seed guide (its "Anti-Patterns" and
//! "Production Checklist"). Each is a warning (`patternd check` prints it, a reload returns it,
//! `serve` logs it) that says what was found and, in plain words, why it hurts.
//!
//! Run on the validated IR after every file loaded, so a lint sees defaults applied. Several
//! anti-patterns are refused or warned where the field is checked instead (with the field's
//! own place): a sliding log with a huge limit (`ratelimit.rs`), a cache fill lease shorter than
//! the origin timeout (`cache.rs`), a push delivery longer than the job's lease (`queue.rs`, an
//! error), a session idle timeout past its absolute one (`session.rs`), a stream bounded by
//! time only (`stream.rs`), an op key without expiry (`compile/ops.rs`). Sessions cannot lack
//! an absolute timeout (`absolute_ttl` is required) and a cache cannot lack early refresh
//! (`beta` is above 0), so neither needs a lint.

use std::time::Duration;

use super::diagnostic::Diagnostic;
use super::ir::{Policy, RuleKind};

/// Values above this: the seed guide's "Large values (>1MB)".
const LARGE_VALUE: u64 = 1 << 20;
/// Leases shorter than this are shorter than a pause of the holder (GC, a network hiccup).
const SHORT_LEASE: Duration = Duration::from_secs(1);
/// Sessions living longer than this have no absolute timeout worth the name.
const LONG_SESSION: Duration = Duration::from_secs(30 * 86_400);
/// Jobs or entries in one key (one slot, one primary) beyond which a structure is a big key.
const HUGE_BOUND: u64 = 1_000_000;

pub fn lint(policy: &Policy) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for rule in policy.rules() {
        let name = &rule.name;
        match &rule.kind {
            RuleKind::Cache(c) if c.max_value_bytes > LARGE_VALUE => out.push(Diagnostic::warning(
                &c.location,
                format!(
                    "rule `{name}`: `max_value_bytes` {} allows values over 1 MiB (anti-pattern: \
                     large values). Redis serves one command at a time, so copying a big value \
                     holds up every other client, and each read moves it over the network again; \
                     split the value, or keep big objects in a store built for them",
                    c.max_value_bytes
                ),
            )),
            RuleKind::Lock(l) if l.ttl < SHORT_LEASE => out.push(Diagnostic::warning(
                &l.location,
                format!(
                    "rule `{name}`: `ttl` {} ms is shorter than a pause of the holder (anti-pattern: \
                     a lock TTL shorter than the work it guards). A garbage-collection pause or a \
                     slow network hop longer than the lease lets a second holder in while the first \
                     still works; give a ttl longer than the work and extend it, and check the \
                     fencing token where the work writes",
                    l.ttl.as_millis()
                ),
            )),
            RuleKind::Session(s) if s.absolute_ttl > LONG_SESSION => out.push(Diagnostic::warning(
                &s.location,
                format!(
                    "rule `{name}`: `absolute_ttl` is over 30 days (anti-pattern: sessions without \
                     an absolute timeout). A stolen session id stays usable that long however \
                     often the user logs in again; end sessions within days and let users log in \
                     again"
                ),
            )),
            RuleKind::Queue(q) if q.max_len + q.dead_max_len > HUGE_BOUND => out.push(Diagnostic::warning(
                &q.location,
                format!(
                    "rule `{name}`: up to {} jobs and dead letters (anti-pattern: Redis as the \
                     primary database). A queue's keys have no TTL and live in one slot, on one \
                     primary: a backlog that size is stored data, not a queue; bound `max_len` \
                     and `dead_max_len` to what workers drain in minutes",
                    q.max_len + q.dead_max_len
                ),
            )),
            RuleKind::Stream(s) if s.max_len.is_some_and(|n| n > HUGE_BOUND) => out.push(Diagnostic::warning(
                &s.location,
                format!(
                    "rule `{name}`: `max_len` {} entries in one stream key (anti-pattern: large \
                     values). A stream is one key on one primary, with no TTL; a range read or a \
                     replica resync of it moves all of it; keep history elsewhere and bound the \
                     stream to what consumers replay",
                    s.max_len.unwrap_or_default()
                ),
            )),
            RuleKind::RateLimit(_)
            | RuleKind::Cache(_)
            | RuleKind::Session(_)
            | RuleKind::Lock(_)
            | RuleKind::Ops(_)
            | RuleKind::Queue(_)
            | RuleKind::Stream(_)
            | RuleKind::PubSub(_)
            | RuleKind::Counter(_)
            | RuleKind::Leaderboard(_) => {}
        }
    }
    out
}
