//! Giving a refresh lease back: after a failed fill (or turning it into the failure marker),
//! and for a GET that may hold a lease it will never fill (dropped mid-call, or a call that
//! timed out, which may still run in Redis).

use std::sync::Arc;

use super::budget::Budget;
use super::{CacheKeys, CacheRule};
use crate::store::{Store, StoreError};

impl CacheRule {
    /// Gives the lease back, or (`hold_ms`) turns it into the failure marker for that long,
    /// within the GET's Redis budget; when that runs out first, in the background.
    pub(super) async fn release(
        self: &Arc<Self>,
        store: &Store,
        budget: &mut Budget,
        keys: &[String],
        token: &str,
        hold_ms: Option<u64>,
    ) {
        match budget
            .run(self.release_script(store, keys, token, hold_ms))
            .await
        {
            Ok(()) => {}
            Err(StoreError::Timeout(_)) => self.release_later(store, keys, token, hold_ms),
            Err(e) => self.release_failed(&e),
        }
    }

    /// `release` in a task of its own, bounded by the store's command timeout only: for a GET
    /// that was dropped or whose budget ran out. Best effort: if it fails, or reaches Redis
    /// before the call that took the lease, the lease expires by itself (`refresh_lease`).
    pub(super) fn release_later(
        self: &Arc<Self>,
        store: &Store,
        keys: &[String],
        token: &str,
        hold_ms: Option<u64>,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (this, store, keys, token) = (
            self.clone(),
            store.clone(),
            keys.to_vec(),
            token.to_string(),
        );
        rt.spawn(async move {
            if let Err(e) = this.release_script(&store, &keys, &token, hold_ms).await {
                this.release_failed(&e);
            }
        });
    }

    /// The release script on the lease of `keys` (a GET's read keys).
    async fn release_script(
        &self,
        store: &Store,
        keys: &[String],
        token: &str,
        hold_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let Some(lease) = CacheKeys::lease_of(keys) else {
            return Ok(());
        };
        let hold = hold_ms.map(|ms| ms.to_string());
        let mut args: Vec<&[u8]> = vec![token.as_bytes()];
        if let Some(h) = &hold {
            args.push(h.as_bytes());
        }
        store
            .eval::<i64>(&self.scripts.release, lease, &args)
            .await
            .map(drop)
    }

    fn release_failed(&self, e: &StoreError) {
        tracing::warn!(app = %self.app, rule = %self.rule, error = %e, "could not release a cache lease; it expires by itself");
    }
}

/// Gives a lease back in the background when dropped armed: around a read script call, so a
/// GET dropped mid-call (its client went away) does not leave the lease the call may have
/// granted it to block every other caller until it expires.
pub(super) struct LeaseGuard<'a> {
    pub(super) rule: &'a Arc<CacheRule>,
    pub(super) store: &'a Store,
    pub(super) keys: &'a [String],
    pub(super) token: &'a str,
    pub(super) armed: bool,
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.rule
                .release_later(self.store, self.keys, self.token, None);
        }
    }
}
