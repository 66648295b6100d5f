//! The running engine: the current snapshot behind an `ArcSwap`, the Redis pool, and reload.
//!
//! Reload builds a complete new snapshot and loads its scripts into Redis, and swaps only on
//! success: a bad policy never replaces a good one, and requests in flight keep the snapshot
//! they started with.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use crate::policy::Diagnostics;
use crate::snapshot::{Snapshot, Sources};
use crate::store::tracking::Tracker;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the policies have errors:\n{0}")]
    Invalid(#[from] Diagnostics),
    #[error("Redis refused a script: {0}")]
    ScriptRejected(#[source] StoreError),
}

pub struct Runtime {
    snapshot: ArcSwap<Snapshot>,
    pub store: Store,
    sources: Sources,
    /// Serializes reloads so two concurrent reloads cannot swap in an older build last.
    reload_lock: Mutex<()>,
    /// Invalidations for the near caches (`near_cache:` cache rules), when enabled.
    tracker: std::sync::OnceLock<Arc<Tracker>>,
}

impl Runtime {
    pub fn new(snapshot: Snapshot, store: Store, sources: Sources) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            store,
            sources,
            reload_lock: Mutex::new(()),
            tracker: std::sync::OnceLock::new(),
        }
    }

    /// The store's command timeout (`--redis-timeout`): a cache GET's Redis calls together
    /// get this much (see `patterns::cache::read`).
    pub fn redis_timeout(&self) -> Duration {
        self.store.command_timeout()
    }

    /// Connects the near caches of this and every later snapshot to `tracker`'s invalidations.
    /// Near caches serve nothing until the tracker has subscribed to their keys.
    pub fn enable_near_caches(&self, tracker: Arc<Tracker>) {
        let tracker = self.tracker.get_or_init(|| tracker);
        register_near_caches(tracker, &self.snapshot());
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Loads the current snapshot's scripts; logs instead of failing when Redis is down, since
    /// NOSCRIPT recovery loads them on first use anyway. True when Redis answered.
    pub async fn preload_scripts(&self) -> bool {
        let snap = self.snapshot();
        match self.store.load_scripts(&snap.scripts).await {
            Ok(()) => {
                tracing::info!(
                    scripts = snap.scripts.len(),
                    "Redis answers: scripts loaded"
                );
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "Redis does not answer yet: requests get on_redis_error or 503 until it does; scripts load then"
                );
                false
            }
        }
    }

    /// After a failed [`Runtime::preload_scripts`]: retries quietly (250 ms doubling to 5 s)
    /// until Redis answers, then logs it once. A retry while the breaker is open is refused
    /// without reaching Redis.
    pub async fn preload_scripts_until_redis_answers(&self) {
        let mut pause = Duration::from_millis(250);
        loop {
            tokio::time::sleep(pause).await;
            let snap = self.snapshot();
            if self.store.load_scripts(&snap.scripts).await.is_ok() {
                tracing::info!(
                    scripts = snap.scripts.len(),
                    "Redis answers: scripts loaded"
                );
                return;
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// Re-reads the policies and plugins. On success the new snapshot serves from the next request.
    pub async fn reload(&self) -> Result<Arc<Snapshot>, ReloadError> {
        let _guard = self.reload_lock.lock().await;
        let sources = self.sources.clone();
        // Parsing, the Lua checks and plugin `init`s are CPU work: keep them off the request
        // workers.
        let built = tokio::task::spawn_blocking(move || Snapshot::build(&sources))
            .await
            .unwrap_or_else(|e| {
                Err(Diagnostics(vec![crate::policy::Diagnostic::error(
                    &crate::policy::Location::file_start(std::path::Path::new("<reload>")),
                    format!("reload task failed: {e}"),
                )]))
            })?;
        match self.store.load_scripts(&built.scripts).await {
            Ok(()) => {}
            Err(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, "Redis unavailable during reload; scripts load on first use");
            }
            Err(e) => return Err(ReloadError::ScriptRejected(e)),
        }
        let new = Arc::new(built);
        self.snapshot.store(new.clone());
        // The old snapshot's near caches drop out of the tracker when it is dropped.
        if let Some(t) = self.tracker.get() {
            register_near_caches(t, &new);
        }
        metrics::counter!("patternd_reloads_total", "result" => "ok").increment(1);
        for d in &new.warnings {
            d.log();
        }
        tracing::info!(rules = new.rule_count(), "policies reloaded");
        Ok(new)
    }
}

fn register_near_caches(tracker: &Tracker, snap: &Snapshot) {
    for rule in snap.caches.values().flat_map(|r| r.values()) {
        if let Some((prefix, near)) = rule.near_registration() {
            tracker.register(prefix, near);
        }
    }
}
