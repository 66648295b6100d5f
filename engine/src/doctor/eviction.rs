//! The eviction policy against the rules in use.
//!
//! What each policy does to each kind of key (`usage::Eviction`):
//! - `allkeys-*` evicts anything: fine for caches, a silent loss for locks, sessions, queues,
//!   streams and write-behind journals (fail).
//! - `volatile-*` evicts only keys with a TTL: queues, streams and journals (no TTL) are safe,
//!   but locks and sessions carry TTLs, so they can be evicted like cache values (warn).
//! - `noeviction` evicts nothing: writes fail with OOM when memory is full. Right for what must
//!   be kept; for caches it turns a full cache into failed stores (warn).
//!
//! Caches beside keys that must be kept and carry TTLs have no right policy on one server:
//! the clear answer is a separate Redis for the caches (warn, mixed use).

use super::report::Check;
use super::usage::{Eviction, Usage};

const ID: &str = "eviction";
const TITLE: &str = "Eviction policy against the rules in use";

/// Rules with a kind of key, as `a/b (lock), c/d (session)`, at most 6 named.
fn names(usages: &[Usage], kind: Eviction) -> String {
    let hits: Vec<String> = usages
        .iter()
        .filter(|u| u.has(kind))
        .map(|u| format!("{} ({})", u.rule, u.pattern))
        .collect();
    let more = hits.len().saturating_sub(6);
    let mut s = hits.into_iter().take(6).collect::<Vec<_>>().join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

pub fn check(policy: &str, maxmemory: u64, usages: &[Usage]) -> Check {
    let any = |k| usages.iter().any(|u| u.has(k));
    let (caches, keep, keep_no_ttl, unknown) = (
        any(Eviction::Evictable),
        any(Eviction::Keep),
        any(Eviction::KeepNoTtl),
        any(Eviction::Unknown),
    );
    let limit = if maxmemory == 0 {
        " (no maxmemory is set, so it applies once one is)"
    } else {
        ""
    };
    let mut evidence = format!("maxmemory-policy {policy}{limit}");
    for (kind, what) in [
        (Eviction::Evictable, "caches"),
        (Eviction::Keep, "must be kept (with TTLs)"),
        (Eviction::KeepNoTtl, "must be kept (no TTL)"),
        (Eviction::Unknown, "unclassified (plugin ops)"),
    ] {
        if any(kind) {
            evidence.push_str(&format!("; {what}: {}", names(usages, kind)));
        }
    }
    let separate = "run the caches on a Redis of their own with maxmemory-policy allkeys-lru \
                    (or allkeys-lfu), and keep this one at noeviction";
    if policy.starts_with("allkeys-") {
        if keep || keep_no_ttl {
            let fix = if caches {
                format!(
                    "{separate} (CONFIG SET maxmemory-policy noeviction here, and in redis.conf)"
                )
            } else {
                "CONFIG SET maxmemory-policy noeviction (and in redis.conf)".to_owned()
            };
            return Check::fail(
                ID,
                TITLE,
                format!(
                    "{evidence}. Under {policy} Redis evicts any key when memory is full, so the \
                     keys that must be kept are dropped silently: a lock held twice, a session \
                     ended, a job, an entry or a journaled write lost"
                ),
                fix,
            );
        }
        if unknown {
            return Check::warn(
                ID,
                TITLE,
                format!(
                    "{evidence}. Op rules write keys whose purpose patternd cannot know; {policy} may evict them"
                ),
                "if the ops' keys must be kept, CONFIG SET maxmemory-policy noeviction",
            );
        }
        return Check::ok(
            ID,
            TITLE,
            format!("{evidence}: evicting the least used keys is what caches want"),
        );
    }
    if policy.starts_with("volatile-") {
        if keep && caches {
            return Check::warn(
                ID,
                TITLE,
                format!(
                    "{evidence}. Mixed use: under {policy} the locks' and sessions' keys carry TTLs \
                     just like cache values, so a full memory can evict a lock or a session \
                     instead of a cache value"
                ),
                separate.to_owned(),
            );
        }
        if keep {
            return Check::warn(
                ID,
                TITLE,
                format!(
                    "{evidence}. {policy} evicts keys that have a TTL, and every lock and \
                     session key has one: they are evicted once memory is full"
                ),
                "CONFIG SET maxmemory-policy noeviction (and in redis.conf)",
            );
        }
        return Check::ok(
            ID,
            TITLE,
            format!(
                "{evidence}: only keys with a TTL are evicted, and the keys that must be kept have none"
            ),
        );
    }
    if policy == "noeviction" {
        if caches && (keep || keep_no_ttl) {
            return Check::warn(
                ID,
                TITLE,
                format!(
                    "{evidence}. Mixed use: under noeviction a full memory is never freed by \
                     dropping cache values; every write then fails with OOM, locks, sessions, \
                     queues and streams included"
                ),
                separate.to_owned(),
            );
        }
        if caches {
            return Check::warn(
                ID,
                TITLE,
                format!(
                    "{evidence}. Under noeviction a full cache does not make room: every store \
                     fails with OOM until values expire"
                ),
                "CONFIG SET maxmemory-policy allkeys-lru (or allkeys-lfu): caches want the \
                 least used values evicted",
            );
        }
        return Check::ok(
            ID,
            TITLE,
            format!("{evidence}: nothing is evicted; writes fail with OOM when memory is full"),
        );
    }
    Check::warn(
        ID,
        TITLE,
        format!("{evidence}: an eviction policy the doctor does not know"),
        "use noeviction for keys that must be kept, allkeys-lru for caches",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;

    fn usage(rule: &str, eviction: &[Eviction]) -> Usage {
        Usage {
            rule: rule.into(),
            pattern: "x",
            eviction: eviction.to_vec(),
            durable: None,
            replicas: 0,
            features: Vec::new(),
            modules: Vec::new(),
        }
    }

    #[test]
    fn each_policy_against_each_mix() {
        let lock = usage("a/lock", &[Eviction::Keep]);
        let queue = usage("a/q", &[Eviction::KeepNoTtl]);
        let cache = usage("a/c", &[Eviction::Evictable]);
        let rl = usage("a/rl", &[Eviction::Tolerant]);
        let ops = usage("a/op", &[Eviction::Unknown]);
        let cases: &[(&str, &[&Usage], Status)] = &[
            ("allkeys-lru", &[&lock], Status::Fail),
            ("allkeys-lfu", &[&queue, &cache], Status::Fail),
            ("allkeys-lru", &[&cache, &rl], Status::Ok),
            ("allkeys-lru", &[&ops], Status::Warn),
            ("volatile-lru", &[&queue, &cache], Status::Ok),
            ("volatile-ttl", &[&lock], Status::Warn),
            ("volatile-lru", &[&lock, &cache], Status::Warn),
            ("noeviction", &[&lock, &queue, &rl], Status::Ok),
            ("noeviction", &[&cache], Status::Warn),
            ("noeviction", &[&cache, &lock], Status::Warn),
            ("whatever", &[&lock], Status::Warn),
        ];
        for (policy, rules, want) in cases {
            let rules: Vec<Usage> = rules.iter().map(|u| (*u).clone()).collect();
            let c = check(policy, 1 << 20, &rules);
            assert_eq!(c.status, *want, "{policy}: {}", c.evidence);
            assert_eq!(c.fix.is_some(), *want != Status::Ok);
        }
        let mixed = check("volatile-lru", 0, &[lock, cache]);
        assert!(mixed.fix.unwrap_or_default().contains("Redis of their own"));
        assert!(mixed.evidence.contains("no maxmemory"));
    }
}
