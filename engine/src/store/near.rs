//! A near cache: a small, bounded, in-process copy of hot Redis values, kept correct across
//! engine replicas by Redis' own invalidation messages (see `tracking`).
//!
//! Why: a cache hit through Redis costs a script call on Redis' single thread, and on a small
//! machine that, not HTTP, bounds throughput. Keeping hot values in process makes a hit cost
//! only the HTTP exchange. Serving a value that another replica has since changed would be
//! wrong, so this cache only serves while it is *live* — while the tracking connection is
//! subscribed and healthy — and drops entries on every invalidation.
//!
//! The race that matters: a read fetches value v0 from Redis, a write replaces it, the
//! invalidation arrives, and only then does the read store v0 here — stale until its deadline.
//! Each shard has an epoch that every invalidation bumps before removing keys; a reader notes
//! the epoch before asking Redis and may store only if it is unchanged, under the shard lock.
//! So either the invalidation came first (the epoch moved: not stored), or it comes after the
//! store and removes the entry.
//!
//! Entries also carry a deadline derived from durations Redis reported (never from comparing
//! this host's clock with Redis' clock), after which they are not served.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// What an invalidation of one key means for a near cache.
pub trait Invalidate: Send + Sync {
    /// Keys Redis reported as changed; `None` means anything may have changed (the tracking
    /// connection was lost, or Redis was flushed).
    fn invalidate(&self, keys: Option<&[Vec<u8>]>);
    /// Whether invalidations are flowing. A near cache serves only while live; turning it off
    /// drops everything, since invalidations may be missed from then on.
    fn set_live(&self, live: bool);
}

struct Slot<V> {
    value: V,
    until: Instant,
}

struct Shard<V> {
    map: Mutex<HashMap<String, Slot<V>>>,
    epoch: AtomicU64,
}

/// A bounded map from Redis key to value, served only while live.
pub struct NearCache<V> {
    shards: Vec<Shard<V>>,
    per_shard: usize,
    live: AtomicBool,
    /// Keys ending with this are the rule's own keys (tag versions): a change to one may
    /// affect any entry, so it drops everything.
    drop_all_suffix: Option<String>,
    hasher: std::collections::hash_map::RandomState,
}

/// The epoch a reader saw before asking Redis; hand it back to `insert`.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    shard: usize,
    epoch: u64,
}

impl<V: Clone> NearCache<V> {
    /// `capacity` entries at most (spread over shards, at least one per shard).
    pub fn new(capacity: usize, drop_all_suffix: Option<String>) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    map: Mutex::new(HashMap::new()),
                    epoch: AtomicU64::new(0),
                })
                .collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            live: AtomicBool::new(false),
            drop_all_suffix,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn shard_of(&self, key: &[u8]) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// The value of `key`, if held, live, and not past its deadline.
    pub fn get(&self, key: &str) -> Option<V> {
        if !self.is_live() {
            return None;
        }
        let shard = &self.shards[self.shard_of(key.as_bytes())];
        let map = lock(&shard.map);
        let slot = map.get(key)?;
        (slot.until > Instant::now()).then(|| slot.value.clone())
    }

    /// Call before asking Redis for `key`; `None` when the cache is not live (do not store).
    pub fn ticket(&self, key: &str) -> Option<Ticket> {
        if !self.is_live() {
            return None;
        }
        let shard = self.shard_of(key.as_bytes());
        Some(Ticket {
            shard,
            epoch: self.shards[shard].epoch.load(Ordering::SeqCst),
        })
    }

    /// Stores `value` for `valid_for`, unless an invalidation touched the shard since `ticket`
    /// was taken or the cache stopped being live.
    pub fn insert(&self, key: &str, value: V, valid_for: Duration, ticket: Ticket) -> bool {
        if valid_for.is_zero() {
            return false;
        }
        let shard = &self.shards[ticket.shard];
        let mut map = lock(&shard.map);
        // Checked under the lock: an invalidation bumps the epoch first and then takes this
        // lock to remove, so it cannot slip between this check and the insert unnoticed.
        if !self.is_live() || shard.epoch.load(Ordering::SeqCst) != ticket.epoch {
            return false;
        }
        if map.len() >= self.per_shard && !map.contains_key(key) {
            // Full: drop expired entries, else an arbitrary one. Cheap, and a near cache only
            // needs to hold the hot set, which keeps coming back.
            let now = Instant::now();
            map.retain(|_, s| s.until > now);
            if map.len() >= self.per_shard
                && let Some(k) = map.keys().next().cloned()
            {
                map.remove(&k);
            }
        }
        map.insert(
            key.to_string(),
            Slot {
                value,
                until: Instant::now() + valid_for,
            },
        );
        true
    }

    /// Drops one key (after this engine changed it, without waiting for the invalidation).
    pub fn remove(&self, key: &str) {
        let shard = &self.shards[self.shard_of(key.as_bytes())];
        shard.epoch.fetch_add(1, Ordering::SeqCst);
        lock(&shard.map).remove(key);
    }

    fn clear(&self) {
        for shard in &self.shards {
            shard.epoch.fetch_add(1, Ordering::SeqCst);
            lock(&shard.map).clear();
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.map).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V: Clone + Send> Invalidate for NearCache<V> {
    fn invalidate(&self, keys: Option<&[Vec<u8>]>) {
        let Some(keys) = keys else {
            self.clear();
            return;
        };
        for key in keys {
            let suffix = self.drop_all_suffix.as_deref();
            if suffix.is_some_and(|m| !m.is_empty() && key.ends_with(m.as_bytes())) {
                self.clear();
                return;
            }
            let shard = &self.shards[self.shard_of(key)];
            shard.epoch.fetch_add(1, Ordering::SeqCst);
            if let Ok(k) = std::str::from_utf8(key) {
                lock(&shard.map).remove(k);
            }
        }
    }

    fn set_live(&self, live: bool) {
        if !live {
            // Off first, so no insert lands after the clear.
            self.live.store(false, Ordering::Release);
            self.clear();
        } else {
            self.clear();
            self.live.store(true, Ordering::Release);
        }
    }
}

/// A poisoned lock only means another thread panicked mid-operation on a plain map or list;
/// the data itself is still usable (at worst an entry is missing), so carry on rather than
/// panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    fn live() -> NearCache<u32> {
        let c = NearCache::new(64, Some("}:tags".into()));
        c.set_live(true);
        c
    }

    #[test]
    fn serves_only_while_live() {
        let c = live();
        let t = c.ticket("k").expect("live");
        assert!(c.insert("k", 1, LONG, t));
        assert_eq!(c.get("k"), Some(1));
        c.set_live(false);
        assert_eq!(c.get("k"), None);
        assert!(c.ticket("k").is_none());
        c.set_live(true);
        assert_eq!(c.get("k"), None, "going live again starts empty");
    }

    #[test]
    fn an_invalidation_between_read_and_store_wins() {
        let c = live();
        let t = c.ticket("k").expect("live");
        c.invalidate(Some(&[b"k".to_vec()]));
        assert!(!c.insert("k", 1, LONG, t), "stale read must not be stored");
        assert_eq!(c.get("k"), None);
    }

    #[test]
    fn invalidation_after_store_removes() {
        let c = live();
        let t = c.ticket("k").expect("live");
        assert!(c.insert("k", 1, LONG, t));
        c.invalidate(Some(&[b"k".to_vec()]));
        assert_eq!(c.get("k"), None);
    }

    #[test]
    fn rule_keys_drop_everything() {
        let c = live();
        for k in ["a", "b", "c"] {
            let t = c.ticket(k).expect("live");
            assert!(c.insert(k, 1, LONG, t));
        }
        c.invalidate(Some(&[b"app:cache:r:{%app.r.3}:tags".to_vec()]));
        assert!(c.is_empty());
    }

    #[test]
    fn deadlines_and_capacity_hold() {
        let c = live();
        let t = c.ticket("short").expect("live");
        assert!(c.insert("short", 1, Duration::from_nanos(1), t));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(c.get("short"), None);
        for i in 0..1000 {
            let k = format!("k{i}");
            let t = c.ticket(&k).expect("live");
            c.insert(&k, i, LONG, t);
        }
        assert!(c.len() <= 64, "bounded: {}", c.len());
    }
}
