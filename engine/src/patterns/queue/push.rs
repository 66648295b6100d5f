//! Push delivery (`push: { url, timeout, concurrency }`): patternd POSTs each job of the rule
//! to a worker's endpoint, acks it on a 2xx and nacks it otherwise, so the rule's backoff,
//! `max_attempts` and dead letters apply as they do to a polling worker: a team needs no
//! worker loop at all (as Cloud Tasks and QStash offer).
//!
//! One task per push rule and engine process (started by `run`, which follows reloads, like
//! the write-behind flusher). It pops up to `concurrency` jobs with a 1 s long poll (woken by
//! pushes through this engine), delivers them concurrently, then pops again. The HTTP side is
//! the cache's origin client (`patterns/cache/origin.rs`: a bounded pool, every request bounded
//! by the timeout, no proxy, no redirects); the retry side is the queue's own nack. A job whose
//! engine dies mid-delivery comes back after its visibility, which the policy requires to be
//! longer than `push.timeout`: delivery is at least once, and the body carries the job id for
//! the worker to deduplicate on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use reqwest::Method;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Job, QueueRule};
use crate::patterns::cache::origin::{OriginClient, OriginError};
use crate::policy::queue::Push;
use crate::runtime::Runtime;
use crate::store::Store;

/// A pop of the delivery loop waits this long for jobs before looking at the snapshot again.
const POP_WAIT: Duration = Duration::from_secs(1);
/// A worker's answer body is read up to this much, then dropped (only its status matters).
const MAX_ANSWER_BYTES: u64 = 1024 * 1024;
/// How often the supervisor looks for push rules that have no task.
const SUPERVISE: Duration = Duration::from_secs(1);

/// A push rule's delivery settings and HTTP client.
pub struct Pusher {
    pub spec: Push,
    client: OriginClient,
}

impl Pusher {
    pub fn new(app: &str, rule: &str, spec: &Push) -> Result<Self, OriginError> {
        Ok(Self {
            spec: spec.clone(),
            client: OriginClient::new(app, rule, spec.timeout)?,
        })
    }
}

/// (app, rule).
type RuleName = (String, String);

/// Runs until `stop` turns true (or its sender is dropped): one delivery task per push rule of
/// the current snapshot.
pub async fn run(runtime: Arc<Runtime>, mut stop: watch::Receiver<bool>) {
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, RuleName> = HashMap::new();
    loop {
        while let Some(done) = tasks.try_join_next_with_id() {
            let id = match done {
                Ok((id, ())) => id,
                Err(e) => {
                    tracing::error!(error = %e, "a queue push task failed; restarting it");
                    e.id()
                }
            };
            running.remove(&id);
        }
        let snap = runtime.snapshot();
        for rule in snap.queues.values().flat_map(|r| r.values()) {
            if rule.pusher.is_none() {
                continue;
            }
            let name = (rule.app.clone(), rule.rule.clone());
            if running.values().any(|n| *n == name) {
                continue;
            }
            let handle = tasks.spawn(rule_loop(runtime.clone(), name.clone(), stop.clone()));
            running.insert(handle.id(), name);
        }
        drop(snap);
        tokio::select! {
            _ = tokio::time::sleep(SUPERVISE) => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Delivers one rule's jobs until it is no longer a push rule of the current snapshot, or
/// `stop`.
async fn rule_loop(runtime: Arc<Runtime>, (app, name): RuleName, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            break;
        }
        let rule = runtime
            .snapshot()
            .queue(&app, &name)
            .filter(|r| r.pusher.is_some())
            .cloned();
        let Some(rule) = rule else { break };
        let count = rule.pusher.as_ref().map_or(1, |p| p.spec.concurrency);
        let popped = tokio::select! {
            r = rule.pop(&runtime.store, count, POP_WAIT) => r,
            _ = stop.changed() => break,
        };
        match popped {
            Ok(jobs) => {
                let mut deliveries = JoinSet::new();
                for job in jobs {
                    let (rule, store) = (rule.clone(), runtime.store.clone());
                    deliveries.spawn(async move { deliver(&rule, &store, job).await });
                }
                while deliveries.join_next().await.is_some() {}
            }
            Err(e) => {
                tracing::warn!(app = %app, rule = %name, error = %e, "queue push: pop failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(POP_WAIT) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
}

/// POSTs one job to the rule's endpoint; acks it on a 2xx, nacks it otherwise.
async fn deliver(rule: &QueueRule, store: &Store, job: Job) {
    let Some(pusher) = &rule.pusher else { return };
    let body = json!({ "id": job.id, "attempts": job.attempts, "payload": job.payload });
    let answer = pusher
        .client
        .send(
            Method::POST,
            &pusher.spec.url,
            Some("application/json"),
            Some(Bytes::from(body.to_string())),
            MAX_ANSWER_BYTES,
        )
        .await;
    let failure = match answer {
        Ok(r) if (200..300).contains(&r.status) => None,
        Ok(r) => Some(format!("the endpoint answered {}", r.status)),
        Err(e) => Some(e.to_string()),
    };
    let done = match &failure {
        None => rule.ack(store, &job.id, &job.receipt).await.map(|()| None),
        Some(_) => rule
            .nack(store, &job.id, &job.receipt, None)
            .await
            .map(Some),
    };
    match (failure, done) {
        (None, Ok(_)) => rule.metrics.delivered.increment(1),
        (Some(why), Ok(nacked)) => {
            rule.metrics.delivery_failed.increment(1);
            tracing::warn!(app = %rule.app, rule = %rule.rule, job = %job.id, attempt = job.attempts, error = %why, outcome = ?nacked, "queue push delivery failed");
        }
        (_, Err(e)) => {
            // The job comes back after its visibility and is delivered again.
            tracing::warn!(app = %rule.app, rule = %rule.rule, job = %job.id, error = %e, "queue push: ack or nack failed");
        }
    }
}
