//! The cache rule's side of the near cache (`store::near`): what a near hit serves, which
//! values are kept and for how long, and dropping copies after writes through this engine.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::CacheRule;
use super::read::{Body, ReadOutcome, select, ttl_secs};
use super::reply::Stored;
use crate::store::near::{Invalidate, Ticket};

/// A value in the near cache: what a near hit serves.
#[derive(Debug, Clone)]
pub struct NearValue {
    pub content_type: String,
    pub body: Body,
    /// The value's version (its ETag without quotes; `None` for a value stored before
    /// versions existed).
    pub version: Option<String>,
    /// When the value stops being fresh, in this host's monotonic clock, derived from the
    /// freshness left that Redis reported (never from comparing clocks).
    pub fresh_until: Instant,
}

impl CacheRule {
    /// The near cache to register for invalidations: the prefix of the rule's keys and the
    /// cache. `None` without `near_cache:`.
    pub fn near_registration(&self) -> Option<(String, Weak<dyn Invalidate>)> {
        let near = self.near.clone()?;
        let near: Arc<dyn Invalidate> = near;
        Some((self.keys.namespace().to_string(), Arc::downgrade(&near)))
    }

    /// Drops this engine's near copy of `id` after a write through this engine, so this
    /// engine reads its own writes at once; other engines hear of it from Redis.
    pub fn forget(&self, id: &str) {
        if let Some(n) = &self.near {
            n.remove(&self.keys.value(id));
        }
    }

    /// Drops every near copy (after a tag invalidation through this engine).
    pub fn forget_all(&self) {
        if let Some(n) = &self.near {
            n.invalidate(None);
        }
    }

    /// A near cache hit, if this engine holds a live copy.
    pub(super) fn near_hit(&self, key: &str, fields: Option<&[String]>) -> Option<ReadOutcome> {
        let v = self.near.as_ref()?.get(key)?;
        self.counters.hit.increment(1);
        self.counters.near_hit.increment(1);
        let left = v.fresh_until.saturating_duration_since(Instant::now());
        let left = i64::try_from(left.as_millis()).unwrap_or(i64::MAX);
        Some(ReadOutcome {
            content_type: v.content_type,
            body: match fields {
                Some(f) => select(v.body, Some(f)),
                None => v.body,
            },
            cache_status: format!("patternd; hit; ttl={}; detail=near", ttl_secs(left)),
            version: v.version,
        })
    }

    /// Keeps a fresh value read from Redis in the near cache, until the earlier of the rule's
    /// `max_age` and the start of the XFetch window (three recompute times before expiry, where
    /// early refreshes become likely): reads near expiry go to Redis, so the read script can
    /// still refresh a hot key early, once.
    pub(super) fn near_store(&self, key: &str, v: &Stored, ticket: Option<Ticket>) {
        let (Some(near), Some(ticket), Some(spec)) = (&self.near, ticket, &self.spec.near_cache)
        else {
            return;
        };
        if v.st != "200" || v.left <= 0 {
            return;
        }
        let margin = (v.delta.max(0) as f64 * self.spec.beta * 3.0).ceil() as i64;
        let usable = u64::try_from(v.left.saturating_sub(margin)).unwrap_or(0);
        let valid_for = Duration::from_millis(usable).min(spec.max_age);
        let content_type = self.served_content_type(v.ct.clone());
        let fresh_until = Instant::now() + Duration::from_millis(v.left.unsigned_abs());
        near.insert(
            key,
            NearValue {
                content_type,
                body: v.body.clone(),
                version: v.version(),
                fresh_until,
            },
            valid_for,
            ticket,
        );
    }
}
