//! What each rule asks of Redis: whether its keys may be evicted, whether it needs its writes
//! to survive a restart, how many replicas it waits for, which Redis features (and versions)
//! and modules it uses. One exhaustive `match` on `RuleKind`: a new pattern does not compile
//! until someone decides what it needs here.

use crate::policy::cache::WriteMode;
use crate::policy::period::Period;
use crate::policy::{Rule, RuleKind};

use super::info::Version;

/// What eviction may do to a rule's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Eviction {
    /// Nothing stored (pub/sub channels).
    NoKeys,
    /// Eviction is the point (cache values): a lost value is filled again from the origin.
    Evictable,
    /// Eviction costs accuracy, not correctness (rate-limit counters: an evicted window
    /// admits up to one more window of requests for that id).
    Tolerant,
    /// Keys patternd cannot classify (a plugin's ops write what the plugin decides).
    Unknown,
    /// Must not be evicted, and carries TTLs, so `volatile-*` can pick it (locks: a second
    /// holder; sessions: a logout nobody asked for).
    Keep,
    /// Must not be evicted, and has no TTL (queues, streams, write-behind journals): safe
    /// under `noeviction` and `volatile-*`, lost under `allkeys-*`.
    KeepNoTtl,
}

impl Eviction {
    pub fn label(self) -> &'static str {
        match self {
            Eviction::NoKeys => "no-keys",
            Eviction::Evictable => "evictable",
            Eviction::Tolerant => "tolerant",
            Eviction::Unknown => "unknown",
            Eviction::Keep => "keep",
            Eviction::KeepNoTtl => "keep-no-ttl",
        }
    }
}

/// A Redis feature a rule uses, with the version that brought it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub since: Version,
}

const fn feature(name: &'static str, major: u32, minor: u32) -> Feature {
    Feature {
        name,
        since: Version(major, minor, 0),
    }
}

/// Every script reads `TIME` and then writes, which Redis replicates only with script effects
/// replication: the default since 5.0 (the only mode since 7.0). Every rule uses it.
pub const SCRIPT_EFFECTS: Feature =
    feature("scripts that write after TIME (effects replication)", 5, 0);
/// The engine's connections to each cluster primary speak RESP3 (`HELLO 3`).
pub const RESP3: Feature = feature("RESP3 (HELLO 3) connections per cluster primary", 6, 0);

/// What one rule asks of Redis.
#[derive(Debug, Clone)]
pub struct Usage {
    /// `app/rule`.
    pub rule: String,
    pub pattern: &'static str,
    /// Its kinds of keys (a write-behind cache has evictable values and a journal to keep).
    pub eviction: Vec<Eviction>,
    /// Why its writes must survive a restart, when they must.
    pub durable: Option<&'static str>,
    /// Replicas a write waits for (`durability.replicas`).
    pub replicas: u32,
    pub features: Vec<Feature>,
    /// Modules it needs loaded.
    pub modules: Vec<&'static str>,
}

impl Usage {
    pub fn of(rule: &Rule, cluster: bool) -> Self {
        let mut features = vec![SCRIPT_EFFECTS];
        let mut eviction = Vec::new();
        let mut durable = None;
        let mut replicas = 0;
        let mut modules = Vec::new();
        match &rule.kind {
            RuleKind::RateLimit(_) => eviction.push(Eviction::Tolerant),
            RuleKind::Cache(c) => {
                eviction.push(Eviction::Evictable);
                if c.write == WriteMode::Behind {
                    eviction.push(Eviction::KeepNoTtl);
                    durable = Some(
                        "write-behind journal: writes acknowledged with 202 wait there for the origin",
                    );
                    features.push(feature("XPENDING … IDLE (write-behind journal)", 6, 2));
                }
                if c.near_cache.is_some() {
                    features.push(feature("CLIENT TRACKING BCAST (near cache)", 6, 0));
                }
                replicas = c.durability.as_ref().map_or(0, |d| d.replicas);
            }
            RuleKind::Session(_) => eviction.push(Eviction::Keep),
            RuleKind::Lock(l) => {
                eviction.push(Eviction::Keep);
                replicas = l.durability.as_ref().map_or(0, |d| d.replicas);
            }
            RuleKind::Ops(_) => eviction.push(Eviction::Unknown),
            RuleKind::Queue(_) => {
                eviction.push(Eviction::KeepNoTtl);
                durable = Some("queue: jobs acknowledged with 201 live only in Redis");
            }
            RuleKind::Stream(s) => {
                eviction.push(Eviction::KeepNoTtl);
                durable = Some("stream: appended entries live only in Redis");
                features.push(feature("XAUTOCLAIM (stream consumer groups)", 6, 2));
                features.push(feature("XPENDING … IDLE (stream consumer groups)", 6, 2));
                if s.retention.is_some() {
                    features.push(feature("XTRIM MINID (stream retention)", 6, 2));
                }
            }
            RuleKind::Counter(c) => {
                // Every key has a TTL (its period's, or `ttl`), but an evicted one loses counts.
                eviction.push(Eviction::Keep);
                // `backend: auto` falls back to the Lua bitmap; only `redisbloom` needs it.
                if let crate::policy::counter::CounterKind::Bloom {
                    backend: crate::policy::counter::BloomBackend::RedisBloom,
                    ..
                } = c.kind
                {
                    modules.push("bf");
                }
            }
            // A board is a ranking users see: evicting it drops every score in it. Period
            // boards carry TTLs (`volatile-*` may pick them); `period: none` boards have none.
            RuleKind::Leaderboard(l) => eviction.push(if l.period == Period::None {
                Eviction::KeepNoTtl
            } else {
                Eviction::Keep
            }),
            RuleKind::PubSub(_) => {
                eviction.push(Eviction::NoKeys);
                if cluster {
                    features.push(feature("SPUBLISH / SSUBSCRIBE (sharded pub/sub)", 7, 0));
                }
            }
        }
        if cluster {
            features.push(RESP3);
        }
        Self {
            rule: format!("{}/{}", rule.app, rule.name),
            pattern: rule.kind.pattern(),
            eviction,
            durable,
            replicas,
            features,
            modules,
        }
    }

    /// The most protective of its kinds, for the report's `eviction` field.
    pub fn strictest(&self) -> Eviction {
        self.eviction
            .iter()
            .copied()
            .max()
            .unwrap_or(Eviction::NoKeys)
    }

    pub fn has(&self, e: Eviction) -> bool {
        self.eviction.contains(&e)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::policy::load_sources;

    fn usages(yaml: &str, cluster: bool) -> Vec<Usage> {
        let l = load_sources(&[(PathBuf::from("t.yaml"), yaml.to_owned())]).expect("valid");
        l.policy.rules().map(|r| Usage::of(r, cluster)).collect()
    }

    #[test]
    fn every_kind_is_classified() {
        let u = usages(
            "app: a\nrules:\n  rl: { rate_limit: { algorithm: fixed_window, limit: 5, window: 1m } }\n  \
             c: { cache: { ttl: 1m } }\n  \
             wb: { cache: { ttl: 1m, origin: 'http://127.0.0.1:1/{id}', write: behind } }\n  \
             s: { session: { idle_ttl: 1m, absolute_ttl: 1h } }\n  \
             l: { lock: { ttl: 10s, durability: { replicas: 1 } } }\n  \
             q: { queue: {} }\n  st: { stream: { max_len: 100, retention: 1h } }\n  \
             p: { pubsub: {} }\n",
            true,
        );
        let by = |r: &str| u.iter().find(|x| x.rule == r).expect(r);
        assert_eq!(by("a/rl").strictest(), Eviction::Tolerant);
        assert_eq!(by("a/c").strictest(), Eviction::Evictable);
        assert_eq!(
            by("a/wb").eviction,
            [Eviction::Evictable, Eviction::KeepNoTtl]
        );
        assert!(by("a/wb").durable.is_some() && by("a/q").durable.is_some());
        assert_eq!(by("a/s").strictest(), Eviction::Keep);
        assert_eq!(by("a/l").replicas, 1);
        assert_eq!(by("a/st").strictest(), Eviction::KeepNoTtl);
        assert!(
            by("a/st")
                .features
                .iter()
                .any(|f| f.name.starts_with("XTRIM MINID"))
        );
        assert_eq!(by("a/p").strictest(), Eviction::NoKeys);
        assert!(
            by("a/p")
                .features
                .iter()
                .any(|f| f.since == Version(7, 0, 0))
        );
        // Standalone pub/sub publishes with PUBLISH, which every version has.
        let one = usages("app: a\nrules:\n  p: { pubsub: {} }\n", false);
        assert!(one[0].features.iter().all(|f| f.since < Version(6, 0, 0)));
    }
}
