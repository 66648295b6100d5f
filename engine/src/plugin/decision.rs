//! The plugin contract on the engine side: request facts in, decisions out. Mirrors the
//! records of `plugins/wit/plugin.wit`; both hosts convert to and from these types and
//! validate what a plugin returns before anything reaches Redis.

use crate::policy::Algorithm;

use super::{Limits, PluginError};

/// The longest TTL a plugin may decide (366 days): the cache's tag versions are remembered
/// this long at most (`CacheRule::tag_memory_ms`).
pub const MAX_TTL_MS: u64 = 366 * 86_400_000;

/// The facts of one request.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    pub method: String,
    pub path: String,
    pub id: String,
    /// The cost the caller asked for (default 1); a limit's cost defaults to it.
    pub cost: u64,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub client_addr: Option<String>,
    /// Exposed JSON body fields, each as JSON text.
    pub fields: Vec<(String, String)>,
}

impl RequestFacts {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One limit a plugin asks to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynLimit {
    pub key_suffix: String,
    pub cost: u64,
    pub limit: u64,
    pub window_ms: u64,
    pub burst: u64,
    pub algorithm: Algorithm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitDecision {
    Skip,
    Deny(String),
    Check(Vec<DynLimit>),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CacheDecision {
    pub key: Option<String>,
    pub ttl_ms: Option<u64>,
    pub bypass: bool,
    pub tags: Vec<String>,
}

/// A session as the session hook sees it. Times are Redis clock, ms since the epoch.
#[derive(Debug, Clone, Copy)]
pub struct SessionFacts<'a> {
    pub user: &'a str,
    /// Field name → JSON text.
    pub data: &'a [(String, String)],
    pub created_ms: u64,
    /// The previous touch (create, sliding read, patch or rotate), not the read being decided.
    pub last_seen_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionDecision {
    Allow,
    Reject(String),
}

/// The pubsub hook's answer for one publish or subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubSubDecision {
    Allow,
    Reject(String),
}

/// The stream hook's answer for one appended entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamDecision {
    Accept,
    Reject(String),
}

/// The leaderboard hook's answer for one submitted score.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaderboardDecision {
    Accept,
    Reject(String),
    /// Record this score instead; the rule's `max_score` check still applies.
    Score(f64),
}

/// One submit as the leaderboard hook sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub app: String,
    pub rule: String,
    pub board: String,
    pub member: String,
    pub score: f64,
}

/// Highest priority a queue hook may choose (the queue's own range, `0..=9`).
pub const MAX_QUEUE_PRIORITY: u8 = 9;
/// Longest dedup id a queue hook may choose (the queue's own bound for a client's).
pub const MAX_QUEUE_DEDUP_ID_BYTES: usize = 256;

/// What a queue hook chose for a push; `None` keeps what the push asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueChoice {
    pub delay_ms: Option<u64>,
    pub priority: Option<u8>,
    pub dedup_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueDecision {
    Accept(QueueChoice),
    Reject(String),
}

/// Checks a plugin's rate-limit decision against the same bounds a policy file has, so a
/// buggy plugin cannot create a key outside its namespace, a limit Lua cannot count, or a
/// flood of keys.
pub fn validate_rate_limit(
    plugin: &str,
    d: RateLimitDecision,
    limits: &Limits,
) -> Result<RateLimitDecision, PluginError> {
    let bad = |message: String| PluginError::BadOutput {
        plugin: plugin.to_string(),
        message,
    };
    match &d {
        RateLimitDecision::Skip => {}
        RateLimitDecision::Deny(reason) => {
            if reason.len() > limits.max_string_bytes {
                return Err(bad(format!("deny reason is {} bytes", reason.len())));
            }
        }
        RateLimitDecision::Check(list) => {
            if list.is_empty() {
                return Err(bad("`check` with no limits".into()));
            }
            if list.len() > limits.max_output_items {
                return Err(bad(format!(
                    "{} limits; at most {} per decision",
                    list.len(),
                    limits.max_output_items
                )));
            }
            for l in list {
                if l.key_suffix.is_empty()
                    || l.key_suffix.len() > 64
                    || !l
                        .key_suffix
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return Err(bad(format!(
                        "key suffix `{}` must be 1 to 64 letters, digits, `-`, `_` or `.`",
                        l.key_suffix.chars().take(80).collect::<String>()
                    )));
                }
                if l.limit == 0 || l.limit > 1_000_000_000_000 {
                    return Err(bad(format!("limit {} out of range", l.limit)));
                }
                if l.burst == 0 || l.burst > 1_000_000_000_000 {
                    return Err(bad(format!("burst {} out of range", l.burst)));
                }
                if l.window_ms == 0 || l.window_ms > 366 * 86_400_000 {
                    return Err(bad(format!("window {} ms out of range", l.window_ms)));
                }
                if l.algorithm == Algorithm::Concurrency {
                    return Err(bad("plugins cannot ask for concurrency limits".into()));
                }
            }
            // Two limits with one suffix would be one key counted twice in one script (a
            // fixed window charged twice, a log once), or, with two algorithms, two policy
            // items of one name. Refused, whatever the algorithms: the call fails like any
            // bad decision, and the rule's fallback decides.
            for (i, l) in list.iter().enumerate() {
                if list[..i].iter().any(|o| o.key_suffix == l.key_suffix) {
                    return Err(bad(format!(
                        "key suffix `{}` is used by two limits; each limit needs its own",
                        l.key_suffix
                    )));
                }
            }
        }
    }
    Ok(d)
}

/// Checks a plugin's cache decision: a key and tags of bounded size and count (they become
/// Redis keys and set members), a TTL Redis can express.
pub fn validate_cache(
    plugin: &str,
    d: CacheDecision,
    limits: &Limits,
) -> Result<CacheDecision, PluginError> {
    let bad = |message: String| PluginError::BadOutput {
        plugin: plugin.to_string(),
        message,
    };
    if let Some(key) = &d.key
        && (key.is_empty() || key.len() > limits.max_string_bytes)
    {
        return Err(bad(format!(
            "cache key is {} bytes; 1 to {} allowed",
            key.len(),
            limits.max_string_bytes
        )));
    }
    if let Some(ttl) = d.ttl_ms
        && (ttl == 0 || ttl > MAX_TTL_MS)
    {
        return Err(bad(format!("ttl {ttl} ms out of range")));
    }
    if d.tags.len() > limits.max_output_items {
        return Err(bad(format!(
            "{} tags; at most {} per decision",
            d.tags.len(),
            limits.max_output_items
        )));
    }
    if let Some(t) = d
        .tags
        .iter()
        .find(|t| t.is_empty() || t.len() > limits.max_string_bytes)
    {
        return Err(bad(format!(
            "a tag is {} bytes; 1 to {} allowed",
            t.len(),
            limits.max_string_bytes
        )));
    }
    Ok(d)
}

/// Checks a plugin's session decision: a rejection reason of bounded size (it is sent to the
/// client).
pub fn validate_session(
    plugin: &str,
    d: SessionDecision,
    limits: &Limits,
) -> Result<SessionDecision, PluginError> {
    if let SessionDecision::Reject(reason) = &d
        && reason.len() > limits.max_string_bytes
    {
        return Err(PluginError::BadOutput {
            plugin: plugin.to_string(),
            message: format!("reject reason is {} bytes", reason.len()),
        });
    }
    Ok(d)
}

/// Checks a plugin's queue decision: a delay within the rule's `max_delay` (`max_delay_ms`), a
/// priority in the queue's range, a dedup id of a bounded charset and length (it becomes a
/// member of the rule's dedup set), a rejection reason of bounded size (it is sent to the client).
pub fn validate_queue(
    plugin: &str,
    d: QueueDecision,
    limits: &Limits,
    max_delay_ms: u64,
) -> Result<QueueDecision, PluginError> {
    let bad = |message: String| PluginError::BadOutput {
        plugin: plugin.to_string(),
        message,
    };
    match &d {
        QueueDecision::Reject(reason) => {
            if reason.len() > limits.max_string_bytes {
                return Err(bad(format!("reject reason is {} bytes", reason.len())));
            }
        }
        QueueDecision::Accept(c) => {
            if let Some(ms) = c.delay_ms
                && ms > max_delay_ms
            {
                return Err(bad(format!(
                    "delay {ms} ms is above the rule's max_delay ({max_delay_ms} ms)"
                )));
            }
            if let Some(p) = c.priority
                && p > MAX_QUEUE_PRIORITY
            {
                return Err(bad(format!(
                    "priority {p} out of range (0 to {MAX_QUEUE_PRIORITY})"
                )));
            }
            if let Some(id) = &c.dedup_id
                && !valid_dedup_id(id)
            {
                return Err(bad(format!(
                    "dedup id `{}` must be 1 to {MAX_QUEUE_DEDUP_ID_BYTES} letters, digits, `.`, `_`, `:` or `-`",
                    id.chars().take(80).collect::<String>()
                )));
            }
        }
    }
    Ok(d)
}

/// Checks a plugin's pubsub decision: a rejection reason of bounded size (it is sent to the
/// client).
pub fn validate_pubsub(
    plugin: &str,
    d: PubSubDecision,
    limits: &Limits,
) -> Result<PubSubDecision, PluginError> {
    if let PubSubDecision::Reject(reason) = &d
        && reason.len() > limits.max_string_bytes
    {
        return Err(PluginError::BadOutput {
            plugin: plugin.to_string(),
            message: format!("reject reason is {} bytes", reason.len()),
        });
    }
    Ok(d)
}

/// Checks a plugin's stream decision: a rejection reason of bounded size (it is sent to the
/// client).
pub fn validate_stream(
    plugin: &str,
    d: StreamDecision,
    limits: &Limits,
) -> Result<StreamDecision, PluginError> {
    if let StreamDecision::Reject(reason) = &d
        && reason.len() > limits.max_string_bytes
    {
        return Err(PluginError::BadOutput {
            plugin: plugin.to_string(),
            message: format!("reject reason is {} bytes", reason.len()),
        });
    }
    Ok(d)
}

/// Checks a plugin's leaderboard decision: a rejection reason of bounded size (it is sent to
/// the client) and a finite replacement score (the rule's own bounds are checked after).
pub fn validate_leaderboard(
    plugin: &str,
    d: LeaderboardDecision,
    limits: &Limits,
) -> Result<LeaderboardDecision, PluginError> {
    let bad = |message: String| PluginError::BadOutput {
        plugin: plugin.to_string(),
        message,
    };
    match &d {
        LeaderboardDecision::Reject(reason) if reason.len() > limits.max_string_bytes => {
            Err(bad(format!("reject reason is {} bytes", reason.len())))
        }
        LeaderboardDecision::Score(s) if !s.is_finite() => {
            Err(bad(format!("score {s} is not a finite number")))
        }
        _ => Ok(d),
    }
}

/// A dedup id a queue hook may choose.
pub fn valid_dedup_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_QUEUE_DEDUP_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubsub_decisions_are_bounded() {
        let limits = Limits::default();
        for ok in [
            PubSubDecision::Allow,
            PubSubDecision::Reject("x".repeat(limits.max_string_bytes)),
        ] {
            assert_eq!(validate_pubsub("p", ok.clone(), &limits), Ok(ok));
        }
        let long = PubSubDecision::Reject("x".repeat(limits.max_string_bytes + 1));
        match validate_pubsub("p", long, &limits) {
            Err(PluginError::BadOutput { message, .. }) => {
                assert!(message.contains("reject reason"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn leaderboard_decisions_are_bounded() {
        let limits = Limits::default();
        for ok in [
            LeaderboardDecision::Accept,
            LeaderboardDecision::Score(-3.5),
            LeaderboardDecision::Reject("x".repeat(limits.max_string_bytes)),
        ] {
            assert_eq!(
                validate_leaderboard("p", ok.clone(), &limits),
                Ok(ok.clone())
            );
        }
        for bad in [
            LeaderboardDecision::Score(f64::NAN),
            LeaderboardDecision::Score(f64::INFINITY),
            LeaderboardDecision::Reject("x".repeat(limits.max_string_bytes + 1)),
        ] {
            assert!(matches!(
                validate_leaderboard("p", bad, &limits),
                Err(PluginError::BadOutput { .. })
            ));
        }
    }

    #[test]
    fn stream_decisions_are_bounded() {
        let limits = Limits::default();
        let ok = StreamDecision::Reject("x".repeat(limits.max_string_bytes));
        assert_eq!(validate_stream("p", ok.clone(), &limits), Ok(ok));
        let long = StreamDecision::Reject("x".repeat(limits.max_string_bytes + 1));
        assert!(matches!(
            validate_stream("p", long, &limits),
            Err(PluginError::BadOutput { .. })
        ));
    }

    #[test]
    fn queue_decisions_are_bounded() {
        let limits = Limits::default();
        let accept = |delay_ms, priority, dedup_id: Option<&str>| {
            QueueDecision::Accept(QueueChoice {
                delay_ms,
                priority,
                dedup_id: dedup_id.map(str::to_string),
            })
        };
        let long_id = "a".repeat(MAX_QUEUE_DEDUP_ID_BYTES);
        for ok in [
            accept(None, None, None),
            accept(Some(0), Some(0), Some("order-42")),
            accept(Some(60_000), Some(9), Some(&long_id)),
            accept(None, None, Some("a.b_c:d-E9")),
            QueueDecision::Reject("no".into()),
            QueueDecision::Reject("x".repeat(limits.max_string_bytes)),
        ] {
            assert_eq!(validate_queue("p", ok.clone(), &limits, 60_000), Ok(ok));
        }
        let too_long = "a".repeat(MAX_QUEUE_DEDUP_ID_BYTES + 1);
        for (bad, says) in [
            (accept(Some(60_001), None, None), "max_delay"),
            (accept(None, Some(10), None), "priority 10"),
            (accept(None, None, Some("")), "dedup id"),
            (accept(None, None, Some(&too_long)), "dedup id"),
            (accept(None, None, Some("a b")), "dedup id"),
            (accept(None, None, Some("{x}")), "dedup id"),
            (accept(None, None, Some("é")), "dedup id"),
            (
                QueueDecision::Reject("x".repeat(limits.max_string_bytes + 1)),
                "reject reason",
            ),
        ] {
            match validate_queue("p", bad.clone(), &limits, 60_000) {
                Err(PluginError::BadOutput { message, .. }) => {
                    assert!(message.contains(says), "{bad:?}: {message}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    fn limit(suffix: &str, algorithm: Algorithm) -> DynLimit {
        DynLimit {
            key_suffix: suffix.to_string(),
            cost: 1,
            limit: 10,
            window_ms: 1000,
            burst: 10,
            algorithm,
        }
    }

    #[test]
    fn a_key_suffix_used_twice_is_refused_whatever_the_algorithms() {
        let limits = Limits::default();
        for (a, b) in [
            (Algorithm::FixedWindow, Algorithm::FixedWindow),
            (Algorithm::SlidingLog, Algorithm::SlidingLog),
            (Algorithm::FixedWindow, Algorithm::Gcra),
        ] {
            let d = RateLimitDecision::Check(vec![limit("x", a), limit("y", a), limit("x", b)]);
            match validate_rate_limit("p", d, &limits) {
                Err(PluginError::BadOutput { message, .. }) => {
                    assert!(message.contains("`x` is used by two limits"), "{message}");
                }
                other => panic!("{a:?}/{b:?}: {other:?}"),
            }
        }
        let ok = RateLimitDecision::Check(vec![
            limit("x", Algorithm::FixedWindow),
            limit("y", Algorithm::FixedWindow),
        ]);
        assert_eq!(validate_rate_limit("p", ok.clone(), &limits), Ok(ok));
    }
}
