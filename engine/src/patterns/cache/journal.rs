//! The write-behind flusher: delivers journaled writes to the origin, at least once.
//!
//! One task per `write: behind` rule and engine process (started by `run`, which follows
//! reloads), so a slow origin delays only its own rule. A rule has one journal per slot group
//! (`slot_groups`, docs/cache.md): the task polls every group's journal, concurrently, and
//! backs off on a group whose journal is empty (100 ms doubling to 1 s), so idle groups cost
//! about one cheap call per second each, and a write to an idle group waits up to that long.
//! Replicas share each journal's work through its consumer group `patternd` (each process is
//! its own consumer, named uniquely), and everything that moves an entry is one script, in
//! the entry's group:
//!
//! 1. `fetch`: takes back this consumer's failed entries whose backoff has passed, and other
//!    consumers' entries idle longer than any live attempt can take (their engine died
//!    mid-flush), then reads new entries. The attempt number is the entry's delivery count,
//!    which Redis keeps, so it survives restarts.
//! 2. Entries are grouped by id; only the newest write of an id is delivered, the older ones
//!    are acknowledged without a call (`begin`, which also skips an entry that a newer write
//!    in the journal supersedes, and takes the id's flush lease so replicas never deliver two
//!    writes of one id at once, which could reorder them on the origin).
//! 3. `PUT` to the origin (bounded by `origin_timeout`). 2xx: `ack` (XACK + XDEL). Otherwise
//!    the entry stays pending and is retried after `retry_backoff · 2^(attempt-1)` (capped);
//!    after `max_attempts`, `dead` moves it to the dead letters and acknowledges it.
//!
//! An entry is acknowledged only after the origin accepted it (or a newer write of the same id
//! took its place), so killing an engine at any point loses nothing: its pending entries are
//! taken over by the next poll of any engine once they have been idle long enough.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use reqwest::Method;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::reply::{self, Entry};
use super::{CacheRule, duration_ms};
use crate::patterns::random::{self, NoEntropy};
use crate::patterns::reply::ReplyError;
use crate::policy::cache::WriteMode;
use crate::runtime::Runtime;
use crate::store::{Store, StoreError};

/// Entries taken per rule and poll (each id group is delivered concurrently).
const BATCH: usize = 64;
/// Pause between polls of a group whose journal holds entries not yet due.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// The longest pause between polls of a group whose journal is empty (the pause doubles from
/// `IDLE_POLL` on every empty poll).
const MAX_IDLE_POLL: Duration = Duration::from_secs(1);
/// Retry backoff never grows past this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A consumer with nothing pending that has not read for this long is removed from the group.
const GONE_CONSUMER: Duration = Duration::from_secs(3600);

/// A unique consumer name for this process: pid plus 64 random bits, so a restarted engine
/// (even with the same pid in a new container) never inherits a dead consumer's identity.
pub fn consumer_name() -> Result<String, NoEntropy> {
    Ok(format!(
        "patternd-{}-{:016x}",
        std::process::id(),
        u64::from_le_bytes(random::bytes::<8>()?)
    ))
}

/// Runs until `stop` turns true (or its sender is dropped).
///
/// A supervisor: every poll it looks at the current snapshot and starts one task per
/// `write: behind` rule that has none (see `rule_loop`), so rules are flushed concurrently and
/// an origin that is slow or hangs delays only its own rule's deliveries. On stop it waits for
/// the rule tasks to finish their current poll.
pub async fn run(runtime: Arc<Runtime>, consumer: String, mut stop: watch::Receiver<bool>) {
    let consumer: Arc<str> = Arc::from(consumer);
    tracing::info!(consumer = %consumer, "write-behind flusher started");
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, RuleName> = HashMap::new();
    loop {
        while let Some(done) = tasks.try_join_next_with_id() {
            let id = match done {
                Ok((id, ())) => id,
                Err(e) => {
                    tracing::error!(error = %e, "a write-behind rule task failed; restarting it");
                    e.id()
                }
            };
            running.remove(&id);
        }
        let snap = runtime.snapshot();
        for rules in snap.caches.values() {
            for rule in rules.values() {
                if rule.spec.write != WriteMode::Behind {
                    continue;
                }
                let name = (rule.app.clone(), rule.rule.clone());
                if running.values().any(|n| *n == name) {
                    continue;
                }
                let handle = tasks.spawn(rule_loop(
                    runtime.clone(),
                    name.clone(),
                    consumer.clone(),
                    stop.clone(),
                ));
                running.insert(handle.id(), name);
            }
        }
        drop(snap);
        tokio::select! {
            _ = tokio::time::sleep(IDLE_POLL) => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    tracing::info!(consumer = %consumer, "write-behind flusher stopped");
}

/// (app, rule).
type RuleName = (String, String);

/// When each slot group of a rule is polled next.
#[derive(Debug, Clone, Copy)]
struct GroupPoll {
    due: Instant,
    pause: Duration,
    backlog: u64,
    dead: u64,
}

/// Flushes one rule until it is no longer a `write: behind` rule of the current snapshot, or
/// `stop`. It takes the rule from the snapshot on every poll, so it follows reloads.
async fn rule_loop(
    runtime: Arc<Runtime>,
    (app, name): RuleName,
    consumer: Arc<str>,
    mut stop: watch::Receiver<bool>,
) {
    let mut polls: Vec<GroupPoll> = Vec::new();
    loop {
        if *stop.borrow() {
            break;
        }
        let rule = runtime
            .snapshot()
            .caches
            .get(&app)
            .and_then(|rules| rules.get(&name))
            .filter(|r| r.spec.write == WriteMode::Behind)
            .cloned();
        let Some(rule) = rule else { break };
        let groups = rule.keys.groups() as usize;
        if polls.len() != groups {
            let now = Instant::now();
            polls = vec![
                GroupPoll {
                    due: now,
                    pause: IDLE_POLL,
                    backlog: 0,
                    dead: 0,
                };
                groups
            ];
        }
        let now = Instant::now();
        let mut tasks = JoinSet::new();
        for (g, p) in polls.iter().enumerate() {
            if p.due > now {
                continue;
            }
            let (store, rule, consumer) = (runtime.store.clone(), rule.clone(), consumer.clone());
            tasks.spawn(async move { (g, flush_group(&store, &rule, &consumer, g as u32).await) });
        }
        while let Some(done) = tasks.join_next().await {
            let Ok((g, polled)) = done else { continue };
            let Some(p) = polls.get_mut(g) else { continue };
            let now = Instant::now();
            match polled {
                Ok(Polled {
                    taken,
                    backlog,
                    dead,
                }) => {
                    (p.backlog, p.dead) = (backlog, dead);
                    p.pause = if taken >= BATCH {
                        Duration::ZERO
                    } else if taken > 0 || backlog > 0 {
                        IDLE_POLL
                    } else {
                        (p.pause * 2).clamp(IDLE_POLL, MAX_IDLE_POLL)
                    };
                }
                Err(e) => {
                    tracing::warn!(app = %app, rule = %name, group = g, error = %e, "write-behind poll failed; retrying");
                    p.pause = IDLE_POLL;
                }
            }
            p.due = now + p.pause;
        }
        let labels = [("app", app.clone()), ("rule", name.clone())];
        let (backlog, dead) = polls
            .iter()
            .fold((0, 0), |(b, d), p| (b + p.backlog, d + p.dead));
        metrics::gauge!("patternd_cache_journal_backlog", &labels).set(backlog as f64);
        metrics::gauge!("patternd_cache_dead_letters", &labels).set(dead as f64);
        drop(rule);
        let next = polls
            .iter()
            .map(|p| p.due)
            .min()
            .unwrap_or_else(|| Instant::now() + IDLE_POLL);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
}

/// What one poll of a group's journal found.
#[derive(Debug, Clone, Copy)]
struct Polled {
    /// Entries taken (and delivered, coalesced or given back) by this poll.
    taken: usize,
    /// The journal's length, and the dead letters', at the poll.
    backlog: u64,
    dead: u64,
}

/// Why one poll of a rule failed.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unexpected journal fetch reply: {0}")]
    Reply(#[from] ReplyError),
}

/// One poll of one slot group of a rule: fetch, coalesce, deliver.
async fn flush_group(
    store: &Store,
    rule: &Arc<CacheRule>,
    consumer: &Arc<str>,
    group: u32,
) -> Result<Polled, FlushError> {
    let w = &rule.scripts.write;
    let timeout_ms = duration_ms(rule.spec.origin_timeout);
    // Longer than a live consumer can hold an entry between taking and acknowledging it (one
    // origin attempt plus a few Redis calls), so only a dead consumer's entries are taken.
    let floor = (2 * timeout_ms + 2000).to_string();
    let base = duration_ms(rule.spec.retry_backoff).max(1);
    let cap = duration_ms(MAX_BACKOFF).max(base).to_string();
    let base = base.to_string();
    let batch = BATCH.to_string();
    let gone = duration_ms(GONE_CONSUMER).to_string();
    let raw: Vec<redis::Value> = store
        .eval(
            &w.fetch,
            &rule.keys.fetch(group),
            &[
                consumer.as_bytes(),
                batch.as_bytes(),
                floor.as_bytes(),
                base.as_bytes(),
                cap.as_bytes(),
                gone.as_bytes(),
            ],
        )
        .await?;
    let (backlog, dead, raw_entries) = reply::fetch(raw)?;
    // An entry that cannot be read is left pending (and logged) rather than stopping the
    // others: it is retried, and dead-lettered, like one the origin refused.
    let entries: Vec<Entry> = raw_entries
        .into_iter()
        .filter_map(|v| {
            reply::entry(v)
                .inspect_err(|e| {
                    tracing::warn!(app = %rule.app, rule = %rule.rule, error = %e, "unreadable write-behind journal entry; skipped");
                })
                .ok()
        })
        .collect();
    let taken = entries.len();
    let polled = Polled {
        taken,
        backlog: u64::try_from(backlog).unwrap_or(0),
        dead: u64::try_from(dead).unwrap_or(0),
    };
    if taken == 0 {
        return Ok(polled);
    }
    let mut groups: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for e in entries {
        // An entry is journaled in its value's group, unless it was written under another
        // `slot_groups` (docs/cache.md: drain the journals before changing it). Its value's
        // keys are in another slot than this journal, so no script can take both: it stays
        // pending, and is logged.
        if rule.keys.group_of(&e.key) != group {
            tracing::warn!(app = %rule.app, rule = %rule.rule, group, id = %e.key, "write-behind entry of another slot group (slot_groups changed); left in the journal");
            continue;
        }
        // Per value: `jp` (the supersede check) and the flush lease are the value's.
        groups.entry(e.key.clone()).or_default().push(e);
    }
    let mut tasks = JoinSet::new();
    for (_, mut group) in groups {
        group.sort_by_key(|e| stream_id(&e.oid));
        let store = store.clone();
        let rule = rule.clone();
        let consumer = consumer.clone();
        tasks.spawn(async move {
            if let Err(e) = deliver(&store, &rule, &consumer, group).await {
                tracing::warn!(app = %rule.app, rule = %rule.rule, error = %e, "write-behind delivery step failed; the entry stays pending");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(polled)
}

/// Why a delivery step failed: logged, and the entry stays pending for the next poll.
#[derive(Debug, thiserror::Error)]
enum DeliverError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No flush lease token: the OS has no entropy source (see `random`).
    #[error("no secure random source: {0}")]
    Random(#[from] NoEntropy),
}

/// Delivers the newest write of one id (`group` sorted oldest first).
async fn deliver(
    store: &Store,
    rule: &CacheRule,
    consumer: &str,
    mut group: Vec<Entry>,
) -> Result<(), DeliverError> {
    let Some(newest) = group.pop() else {
        return Ok(());
    };
    let w = &rule.scripts.write;
    let counter = |result: &'static str, n: u64| {
        metrics::counter!("patternd_cache_flush_total", "app" => rule.app.clone(), "rule" => rule.rule.clone(), "result" => result).increment(n);
    };
    let token = random::token::<{ random::TOKEN_BYTES }>()?;
    let lease_ms = (duration_ms(rule.spec.origin_timeout) + 1000).to_string();
    let attempt = newest.attempt.to_string();
    // The value outlives the next attempt of this write (its backoff, plus the take-over
    // floor in case this engine dies): until delivered, it is newer than the origin's copy.
    let timeout_ms = duration_ms(rule.spec.origin_timeout);
    let next_backoff = duration_ms(rule.spec.retry_backoff)
        .max(1)
        .saturating_mul(1u64 << newest.attempt.min(32))
        .min(duration_ms(MAX_BACKOFF).max(duration_ms(rule.spec.retry_backoff)));
    let keep_ms = next_backoff
        .saturating_add(timeout_ms.saturating_mul(2).saturating_add(2000))
        .to_string();
    let mut args: Vec<&[u8]> = vec![
        token.as_bytes(),
        lease_ms.as_bytes(),
        newest.eid.as_bytes(),
        newest.oid.as_bytes(),
        consumer.as_bytes(),
        attempt.as_bytes(),
        keep_ms.as_bytes(),
    ];
    args.extend(group.iter().map(|e| e.eid.as_bytes()));
    let verdict: String = store
        .eval(&w.begin, &rule.keys.flush_begin(&newest.key), &args)
        .await?;
    counter("coalesced", group.len() as u64);
    match verdict.as_str() {
        "go" => {}
        "skip" => {
            counter("coalesced", 1);
            return Ok(());
        }
        _ => return Ok(()), // "busy": another replica is delivering this id
    }
    let max = u64::from(rule.spec.max_attempts);
    let outcome = if newest.attempt > max {
        // Taken over from a consumer that died during its last allowed attempt.
        Err("attempts exhausted (the engine delivering it stopped)".to_string())
    } else {
        match (&rule.origin, rule.origin_url(&newest.id)) {
            (Some(client), Some(url)) => {
                let ct = (!newest.content_type.is_empty()).then_some(newest.content_type.as_str());
                match client
                    .send(Method::PUT, &url, ct, Some(newest.body.clone()), 64 * 1024)
                    .await
                {
                    Ok(r) if (200..300).contains(&r.status) => Ok(()),
                    Ok(r) => Err(format!("the origin answered {}", r.status)),
                    Err(e) => Err(e.to_string()),
                }
            }
            (None, _) => Err("the rule has no origin".to_string()),
            // An id that would not stay one path segment (`..`): only an entry journaled
            // before such ids were refused can hold one; it is never sent anywhere.
            (Some(_), None) => Err(format!(
                "id `{}` cannot be sent as one path segment of the origin URL",
                newest.id
            )),
        }
    };
    match outcome {
        Ok(()) => {
            let _: i64 = store
                .eval(
                    &w.ack,
                    &rule.keys.flush_ack(&newest.key),
                    &[token.as_bytes(), newest.eid.as_bytes()],
                )
                .await?;
            counter("delivered", 1);
        }
        Err(why) if newest.attempt >= max => {
            let attempts = newest.attempt.min(max).to_string();
            let keep = rule.group_journal_max_len().to_string();
            let _: i64 = store
                .eval(
                    &w.dead,
                    &rule.keys.flush_dead(&newest.key),
                    &[
                        token.as_bytes(),
                        newest.eid.as_bytes(),
                        attempts.as_bytes(),
                        why.as_bytes(),
                        keep.as_bytes(),
                    ],
                )
                .await?;
            counter("failed", 1);
            counter("dead_lettered", 1);
            tracing::warn!(app = %rule.app, rule = %rule.rule, id = %newest.id, attempts = %attempts, error = %why, "write-behind entry moved to the dead letters");
        }
        Err(why) => {
            let _: i64 = store
                .eval(
                    &w.ack,
                    &rule.keys.flush_ack(&newest.key),
                    &[token.as_bytes()],
                )
                .await?;
            counter("failed", 1);
            tracing::info!(app = %rule.app, rule = %rule.rule, id = %newest.id, attempt = newest.attempt, error = %why, "write-behind delivery failed; will retry");
        }
    }
    Ok(())
}

/// A stream entry id `ms-seq` as a sortable pair (string order would put `9-0` after `10-0`).
pub fn stream_id(s: &str) -> (u64, u64) {
    let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_sort_numerically() {
        assert!(stream_id("9-0") < stream_id("10-0"));
        assert!(stream_id("10-2") < stream_id("10-10"));
        let a = consumer_name().expect("random");
        assert!(a.starts_with("patternd-"));
        assert_ne!(a, consumer_name().expect("random"));
    }
}
