//! The queue reaper: one task per engine process that calls every queue rule's maintenance
//! (the pop script with `count` 0) about once a second, concurrently per rule, so that due
//! delayed jobs become ready, lapsed leases go back (or to the dead letters) and the
//! `patternd_queue_jobs` gauges stay right when no worker pops. It follows reloads: it reads
//! the current snapshot on every round. Engines share the work without coordination: every
//! move is atomic in its script, so two reapers (or a reaper and a pop) at once only find
//! less to do.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::runtime::Runtime;

/// The longest pause between two rounds.
const ROUND: Duration = Duration::from_secs(1);
/// The shortest: a round finding something due at once does not spin.
const MIN_ROUND: Duration = Duration::from_millis(50);

/// Runs until `stop` turns true (or its sender is dropped).
pub async fn run(runtime: Arc<Runtime>, mut stop: watch::Receiver<bool>) {
    loop {
        let snap = runtime.snapshot();
        let mut tasks = JoinSet::new();
        for rule in snap.queues.values().flat_map(|r| r.values()) {
            let (rule, runtime) = (rule.clone(), runtime.clone());
            tasks.spawn(async move {
                let r = rule.maintain(&runtime.store).await;
                if let Err(e) = &r {
                    tracing::warn!(app = %rule.app, rule = %rule.rule, error = %e, "queue maintenance failed; retrying");
                }
                r.ok().flatten()
            });
        }
        drop(snap);
        let mut pause = ROUND;
        while let Some(done) = tasks.join_next().await {
            if let Ok(Some(hint)) = done {
                pause = pause.min(hint);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause.max(MIN_ROUND)) => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
}
