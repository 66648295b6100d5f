//! Undoing a grant whose answer never reached the client.
//!
//! A lock acquire or a concurrency lease that times out (Redis stalled past the command
//! timeout) is not cancelled: its command already sits in the connection, and Redis runs it
//! when it resumes, granting a holder nobody knows about, which then blocks the resource for
//! its whole lease. The engine generated the holder's token, so it can take it back: a
//! `LostGrant` is armed before the acquire and disarmed once its answer is read; if it is
//! dropped armed (an error, a timeout, or the request cancelled while waiting), it runs the
//! release in the background, on the same pinned connection as the acquire, so Redis runs it
//! after the acquire, whenever that happens. The release scripts are idempotent and remove
//! only that one token, so releasing a grant that never happened is harmless.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::compile::Script;
use crate::store::{Pinned, Store};

/// Background releases at once at most: during a long outage every timed-out acquire would
/// start one; past the bound, a lost grant lapses with its lease (and it is counted).
const MAX_PENDING: usize = 4096;
const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(1);

static PENDING: AtomicUsize = AtomicUsize::new(0);

/// The release of one grant, run if the grant's answer is lost.
pub(crate) struct LostGrant {
    /// `None` once disarmed.
    undo: Option<Undo>,
}

struct Undo {
    store: Store,
    pin: Pinned,
    script: Arc<Script>,
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
    /// The grant lapses by itself after this: no release is needed past it.
    lease: Duration,
    pattern: &'static str,
}

impl LostGrant {
    /// Armed: dropping it releases the grant unless `disarm` was called.
    pub(crate) fn new(
        store: &Store,
        pin: &Pinned,
        script: &Arc<Script>,
        keys: Vec<String>,
        args: Vec<Vec<u8>>,
        lease: Duration,
        pattern: &'static str,
    ) -> Self {
        Self {
            undo: Some(Undo {
                store: store.clone(),
                pin: pin.clone(),
                script: script.clone(),
                keys,
                args,
                lease,
                pattern,
            }),
        }
    }

    /// The acquire's answer was read: the caller knows what it holds.
    pub(crate) fn disarm(mut self) {
        self.undo = None;
    }
}

impl Drop for LostGrant {
    fn drop(&mut self) {
        let Some(undo) = self.undo.take() else {
            return;
        };
        let pattern = undo.pattern;
        let outcome = move |o: &'static str| metrics::counter!("patternd_lost_grants_total", "pattern" => pattern, "outcome" => o);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            outcome("skipped").increment(1);
            return;
        };
        if PENDING.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING {
            PENDING.fetch_sub(1, Ordering::Relaxed);
            outcome("skipped").increment(1);
            return;
        }
        rt.spawn(async move {
            let o = match undo.run().await {
                Some(true) => "released",
                // The acquire never ran, or granted nothing.
                Some(false) => "nothing_held",
                None => "gave_up",
            };
            PENDING.fetch_sub(1, Ordering::Relaxed);
            outcome(o).increment(1);
        });
    }
}

impl Undo {
    /// Sends the release on the acquire's connection and waits for Redis to answer, up to
    /// the lease; a broken connection is retried (the pinned connection reconnects). Whether
    /// a holder was removed, or `None` when Redis did not answer in time.
    async fn run(&self) -> Option<bool> {
        let deadline = Instant::now() + self.lease;
        let args: Vec<&[u8]> = self.args.iter().map(Vec::as_slice).collect();
        let mut pause = FIRST_RETRY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let res: Result<i64, _> = self
                .store
                .eval_pinned(&self.pin, left, &self.script, &self.keys, &args)
                .await;
            match res {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(
                            pattern = self.pattern,
                            "released a grant whose answer was lost"
                        );
                    }
                    return Some(n > 0);
                }
                Err(e) => {
                    if Instant::now() + pause >= deadline {
                        tracing::warn!(pattern = self.pattern, error = %e, "could not release a grant whose answer was lost; it lapses with its lease");
                        return None;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_RETRY);
                }
            }
        }
    }
}
