//! Job queues at request time: push, pop (a long poll), ack, nack, extend, stats; each one
//! script call in the queue's one slot ([docs/queue.md](../../../../docs/queue.md)).
//!
//! A pop that finds nothing waits without holding a Redis connection: it awaits this rule's
//! in-process `Notify` (a push or a nack through this engine wakes one waiter per job) or a
//! short re-poll ([`REPOLL`], and never later than the next delayed job or lapse the script
//! reports), which is how pushes through other replicas are seen. A blocking command
//! (BZPOPMIN) would need a connection per waiter, and it could not take a job's lease
//! (visibility, receipt) in the same atomic step.
//!
//! Background: [`reaper`] calls the pop script with `count` 0 for every queue rule, so due
//! delayed jobs, lapsed leases and dead letters move, and the gauges stay right, without
//! any popper. Dead letters: [`dead`].

pub mod dead;
pub mod push;
pub mod reaper;

use std::time::Duration;

use metrics::{Counter, Gauge};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::random;
use super::reply::{Items, ReplyError};
use crate::compile::queue::{QueueScripts, sub};
use crate::compile::{CompiledQueue, KeySpace};
use crate::patterns::cache::origin::OriginError;
use crate::plugin::decision::{MAX_QUEUE_DEDUP_ID_BYTES, MAX_QUEUE_PRIORITY};
use crate::plugin::{PluginBinding, PluginError, QueueDecision, RequestFacts};
use crate::policy::Rule;
use crate::policy::duration;
use crate::policy::queue::{Queue, QueueFallback};
use crate::store::{Store, StoreError};

/// A waiting pop asks Redis again this often at least: pushes through other engines wake
/// nobody here.
pub const REPOLL: Duration = Duration::from_millis(200);
/// Due delayed jobs and lapsed leases moved per script call, at most (of each).
const MAINTAIN_BATCH: u64 = 100;
/// A nack's backoff never grows past this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Dedup ids longer than this are refused.
pub const MAX_DEDUP_ID_BYTES: usize = 256;
/// Priorities: 0 (default) to 9; higher pops first.
pub const MAX_PRIORITY: u64 = 9;

// A queue hook's choices are bounded in `plugin::decision` (which cannot see this module): the
// same bounds as a client's.
const _: () = assert!(MAX_QUEUE_PRIORITY as u64 == MAX_PRIORITY);
const _: () = assert!(MAX_QUEUE_DEDUP_ID_BYTES == MAX_DEDUP_ID_BYTES);

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the queue is full: it holds {held} jobs (max_len {max_len}); retry later")]
    Full { held: u64, max_len: u64 },
    #[error(
        "this receipt holds no lease on job `{0}`: the job was acknowledged already, or its visibility lapsed and it is (or will be) delivered again"
    )]
    StaleReceipt(String),
    #[error("`after` is not a dead letter (any more): {0}")]
    UnknownDeadLetter(String),
    #[error("the rule's plugin rejected the job: {0}")]
    Rejected(String),
    #[error(transparent)]
    Plugin(PluginError),
    #[error("no secure random source: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unexpected reply of the queue {0} script: {1}")]
    Reply(&'static str, ReplyError),
}

/// A pushed job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub id: String,
    /// True when the push's `dedup_id` was pushed within the window: `id` is that job's.
    pub deduplicated: bool,
    /// The rule's plugin failed and its `fallback: accept` pushed the job as asked.
    pub fallback: bool,
}

/// A popped job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    /// Proves the lease for ack, nack and extend; a redelivery gets a new one.
    pub receipt: String,
    /// Deliveries so far, this one included.
    pub attempts: u64,
    pub priority: u64,
    pub payload: Value,
}

/// How many jobs a queue holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub ready: u64,
    pub delayed: u64,
    pub in_flight: u64,
    pub dead: u64,
}

/// What a nack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nacked {
    /// Retried after this long (0: ready now).
    Retry(Duration),
    /// It had its `max_attempts` deliveries: now a dead letter.
    DeadLettered,
}

/// Events counted per rule (`patternd_queue_events_total`).
pub const EVENTS: &[&str] = &[
    "pushed",
    "deduplicated",
    "full",
    "popped",
    "acked",
    "nacked",
    "extended",
    "stale_receipt",
    "redelivered",
    "dead_lettered",
    "replayed",
    "delivered",
    "delivery_failed",
    "rejected",
];
/// Job states (`patternd_queue_jobs`).
pub const STATES: &[&str] = &["ready", "delayed", "in_flight", "dead"];

struct Metrics {
    pushed: Counter,
    deduplicated: Counter,
    full: Counter,
    popped: Counter,
    acked: Counter,
    nacked: Counter,
    extended: Counter,
    stale: Counter,
    redelivered: Counter,
    dead_lettered: Counter,
    replayed: Counter,
    delivered: Counter,
    delivery_failed: Counter,
    rejected: Counter,
    plugin_failed: Counter,
    states: [Gauge; 4],
}

impl Metrics {
    fn new(app: &str, rule: &str) -> Self {
        let c = |event: &'static str| metrics::counter!("patternd_queue_events_total", "app" => app.to_string(), "rule" => rule.to_string(), "event" => event);
        let g = |state: &'static str| metrics::gauge!("patternd_queue_jobs", "app" => app.to_string(), "rule" => rule.to_string(), "state" => state);
        Self {
            pushed: c("pushed"),
            deduplicated: c("deduplicated"),
            full: c("full"),
            popped: c("popped"),
            acked: c("acked"),
            nacked: c("nacked"),
            extended: c("extended"),
            stale: c("stale_receipt"),
            redelivered: c("redelivered"),
            dead_lettered: c("dead_lettered"),
            replayed: c("replayed"),
            delivered: c("delivered"),
            delivery_failed: c("delivery_failed"),
            rejected: c("rejected"),
            plugin_failed: metrics::counter!("patternd_plugin_failures_total", "app" => app.to_string(), "rule" => rule.to_string()),
            states: [g("ready"), g("delayed"), g("in_flight"), g("dead")],
        }
    }
}

/// Every key list a queue script takes, built once per snapshot.
struct Keys {
    push: Vec<String>,
    /// pop and nack: ready, delayed, inflight, dead, jobs, meta, seq.
    pop: Vec<String>,
    ack: Vec<String>,
    extend: Vec<String>,
    dead_list: Vec<String>,
    replay: Vec<String>,
}

impl Keys {
    fn new(ks: &KeySpace) -> Self {
        let k = |subs: &[&str]| subs.iter().map(|s| ks.rule_key(s)).collect::<Vec<_>>();
        use sub::*;
        Self {
            push: k(&[READY, DELAYED, INFLIGHT, JOBS, META, SEQ, DEDUP, DEDUP_IDS]),
            pop: k(&[READY, DELAYED, INFLIGHT, DEAD, JOBS, META, SEQ]),
            ack: k(&[INFLIGHT, JOBS, META]),
            extend: k(&[INFLIGHT, META]),
            dead_list: k(&[DEAD, JOBS, META]),
            replay: k(&[READY, DELAYED, INFLIGHT, DEAD, META, SEQ]),
        }
    }
}

/// A queue rule ready to serve.
pub struct QueueRule {
    pub app: String,
    pub rule: String,
    pub spec: Queue,
    keys: Keys,
    scripts: QueueScripts,
    /// Pops of this rule waiting for a job in this engine.
    wake: Notify,
    metrics: Metrics,
    /// Push delivery (`push:`), when the rule has it.
    pub pusher: Option<push::Pusher>,
    /// The rule's plugin (its name, for the log) and its binding: the `queue` hook.
    plugin: Option<(String, PluginBinding)>,
    visibility_arg: String,
    max_attempts_arg: String,
    dead_max_len_arg: String,
    max_len_arg: String,
    dedup_window_arg: String,
    backoff_arg: String,
    backoff_cap_arg: String,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn fresh_token() -> Result<String, QueueError> {
    random::token::<{ random::TOKEN_BYTES }>().map_err(|e| QueueError::Random(e.to_string()))
}

/// A duration parameter of a request (`delay`, `wait`, `visibility`): the policy grammar
/// (`250ms`, `5s`, `1m`), `0s` allowed, at most `max`.
pub fn duration_param(name: &str, text: &str, max: Duration) -> Result<Duration, QueueError> {
    let d = duration::parse(text).map_err(|e| QueueError::BadRequest(format!("`{name}`: {e}")))?;
    if d > max {
        return Err(QueueError::BadRequest(format!(
            "`{name}` {text} is above the rule's maximum of {}",
            duration::format(max)
        )));
    }
    Ok(d)
}

/// A job id or receipt that came back from a client: the shape patternd gives them, checked
/// before it reaches a script.
fn check_token(what: &str, s: &str) -> Result<(), QueueError> {
    if random::is_token(s) {
        Ok(())
    } else {
        Err(QueueError::BadRequest(format!(
            "malformed {what} `{}`: expected the 22 characters patternd gave",
            s.chars().take(40).collect::<String>()
        )))
    }
}

impl QueueRule {
    pub fn new(
        rule: &Rule,
        spec: &Queue,
        compiled: &CompiledQueue,
        keys: &KeySpace,
        plugin: Option<(String, PluginBinding)>,
    ) -> Result<Self, OriginError> {
        let base = ms(spec.retry_backoff).max(1);
        let pusher = spec
            .push
            .as_ref()
            .map(|p| push::Pusher::new(&rule.app, &rule.name, p))
            .transpose()?;
        Ok(Self {
            app: rule.app.clone(),
            rule: rule.name.clone(),
            spec: spec.clone(),
            keys: Keys::new(keys),
            scripts: compiled.scripts.clone(),
            wake: Notify::new(),
            metrics: Metrics::new(&rule.app, &rule.name),
            visibility_arg: ms(spec.visibility).max(1).to_string(),
            max_attempts_arg: spec.max_attempts.to_string(),
            dead_max_len_arg: spec.dead_max_len.to_string(),
            max_len_arg: spec.max_len.to_string(),
            dedup_window_arg: ms(spec.dedup_window).max(1).to_string(),
            backoff_arg: base.to_string(),
            backoff_cap_arg: ms(MAX_BACKOFF).max(base).to_string(),
            pusher,
            plugin,
        })
    }

    fn reply_err(what: &'static str) -> impl Fn(ReplyError) -> QueueError {
        move |e| QueueError::Reply(what, e)
    }

    /// True when the rule's plugin wants the request facts (the handler builds them only then).
    pub fn wants_facts(&self) -> bool {
        self.plugin.is_some()
    }

    /// Pushes a job: `payload` (any JSON), ready after `delay`, `priority` 0-9 (higher pops
    /// first), deduplicated by `dedup_id` within the rule's `dedup_window`. With a plugin, its
    /// `queue` hook sees the push first (`facts`, and what the client asked as the fields
    /// `delay_ms`, `priority`, `dedup_id`) and may change those three or reject the job; when it
    /// fails, the rule's `fallback` decides.
    pub async fn push(
        &self,
        store: &Store,
        payload: &Value,
        delay: Option<&str>,
        dedup_id: Option<&str>,
        priority: Option<u64>,
        facts: Option<RequestFacts>,
    ) -> Result<Pushed, QueueError> {
        let mut delay = match delay {
            Some(d) => duration_param("delay", d, self.spec.max_delay)?,
            None => Duration::ZERO,
        };
        let mut priority = priority.unwrap_or(0);
        if priority > MAX_PRIORITY {
            return Err(QueueError::BadRequest(format!(
                "`priority` must be from 0 to {MAX_PRIORITY}, not {priority}"
            )));
        }
        let mut dedup_id = dedup_id.unwrap_or("").to_string();
        if dedup_id.len() > MAX_DEDUP_ID_BYTES {
            return Err(QueueError::BadRequest(format!(
                "`dedup_id` is {} bytes; at most {MAX_DEDUP_ID_BYTES} are allowed",
                dedup_id.len()
            )));
        }
        let payload = payload.to_string();
        let mut fallback = false;
        if let Some((name, binding)) = &self.plugin {
            let mut facts = facts.unwrap_or_default();
            facts.fields = vec![
                ("delay_ms".into(), ms(delay).to_string()),
                ("priority".into(), priority.to_string()),
                (
                    "dedup_id".into(),
                    Value::String(dedup_id.clone()).to_string(),
                ),
            ];
            match binding.queue(&facts, &payload, ms(self.spec.max_delay)) {
                Ok(QueueDecision::Accept(choice)) => {
                    if let Some(d) = choice.delay_ms {
                        delay = Duration::from_millis(d);
                    }
                    if let Some(p) = choice.priority {
                        priority = u64::from(p);
                    }
                    if let Some(id) = choice.dedup_id {
                        dedup_id = id;
                    }
                }
                Ok(QueueDecision::Reject(reason)) => {
                    self.metrics.rejected.increment(1);
                    return Err(QueueError::Rejected(reason));
                }
                Err(e) => {
                    self.metrics.plugin_failed.increment(1);
                    tracing::warn!(app = %self.app, rule = %self.rule, plugin = %name, error = %e, "queue plugin failed");
                    match self.spec.fallback {
                        QueueFallback::Accept => fallback = true,
                        QueueFallback::Fail => return Err(QueueError::Plugin(e)),
                    }
                }
            }
        }
        let id = fresh_token()?;
        let delay = ms(delay).to_string();
        let priority = priority.to_string();
        let args: [&[u8]; 7] = [
            id.as_bytes(),
            payload.as_bytes(),
            delay.as_bytes(),
            priority.as_bytes(),
            dedup_id.as_bytes(),
            self.dedup_window_arg.as_bytes(),
            self.max_len_arg.as_bytes(),
        ];
        let reply: Vec<redis::Value> = store
            .eval(&self.scripts.push, &self.keys.push, &args)
            .await?;
        let mut it = Items::new(reply);
        let status = it.next_int().map_err(Self::reply_err("push"))?;
        let text = it.next_text().map_err(Self::reply_err("push"))?;
        match status {
            1 => {
                self.metrics.pushed.increment(1);
                if delay == "0" {
                    self.wake.notify_one();
                }
                Ok(Pushed {
                    id: text,
                    deduplicated: false,
                    fallback,
                })
            }
            0 => {
                self.metrics.deduplicated.increment(1);
                Ok(Pushed {
                    id: text,
                    deduplicated: true,
                    fallback,
                })
            }
            _ => {
                self.metrics.full.increment(1);
                Err(QueueError::Full {
                    held: text.parse().unwrap_or(self.spec.max_len),
                    max_len: self.spec.max_len,
                })
            }
        }
    }

    /// One pop script call: up to `count` jobs (0: maintenance only), the stats after it, and
    /// how long until the next delayed job is due or lease lapses.
    async fn pop_once(
        &self,
        store: &Store,
        count: u64,
    ) -> Result<(Vec<Job>, Stats, Option<Duration>), QueueError> {
        let receipts = (0..count)
            .map(|_| fresh_token())
            .collect::<Result<Vec<_>, _>>()?;
        let count_arg = count.to_string();
        let batch = MAINTAIN_BATCH.to_string();
        let mut args: Vec<&[u8]> = vec![
            count_arg.as_bytes(),
            self.visibility_arg.as_bytes(),
            self.max_attempts_arg.as_bytes(),
            self.dead_max_len_arg.as_bytes(),
            batch.as_bytes(),
        ];
        args.extend(receipts.iter().map(|r| r.as_bytes()));
        let reply: Vec<redis::Value> = store.eval(&self.scripts.pop, &self.keys.pop, &args).await?;
        let (requeued, died, stats, hint, jobs) =
            decode_pop(reply).map_err(Self::reply_err("pop"))?;
        self.metrics.redelivered.increment(requeued);
        self.metrics.dead_lettered.increment(died);
        self.metrics.popped.increment(jobs.len() as u64);
        self.set_gauges(stats);
        Ok((jobs, stats, hint))
    }

    fn set_gauges(&self, s: Stats) {
        for (g, v) in self
            .metrics
            .states
            .iter()
            .zip([s.ready, s.delayed, s.in_flight, s.dead])
        {
            g.set(v as f64);
        }
    }

    /// Checks a pop's `count` and `wait` against the rule's bounds.
    pub fn pop_params(
        &self,
        count: Option<&str>,
        wait: Option<&str>,
    ) -> Result<(u64, Duration), QueueError> {
        let count = match count {
            None => 1,
            Some(c) => match c.parse::<u64>() {
                Ok(n) if (1..=self.spec.max_pop).contains(&n) => n,
                _ => {
                    return Err(QueueError::BadRequest(format!(
                        "`count` must be a number from 1 to {} (the rule's max_pop), not `{c}`",
                        self.spec.max_pop
                    )));
                }
            },
        };
        let wait = match wait {
            None => Duration::ZERO,
            Some(w) => duration_param("wait", w, self.spec.max_wait)?,
        };
        Ok((count, wait))
    }

    /// Pops up to `count` jobs, waiting up to `wait` for the first (see the module doc).
    /// Each job is invisible to other pops for the rule's `visibility`. Empty when none came.
    pub async fn pop(
        &self,
        store: &Store,
        count: u64,
        wait: Duration,
    ) -> Result<Vec<Job>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            // Registered before the call, so a push between the call and the sleep wakes it.
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (jobs, _, hint) = self.pop_once(store, count).await?;
            let now = Instant::now();
            if !jobs.is_empty() || now >= deadline {
                return Ok(jobs);
            }
            let mut pause = REPOLL.min(deadline - now);
            if let Some(h) = hint {
                pause = pause.min(h.max(Duration::from_millis(1)));
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = &mut notified => {}
            }
        }
    }

    /// The queue's stats, after moving what is due (the maintenance a pop does first).
    pub async fn stats(&self, store: &Store) -> Result<Stats, QueueError> {
        let (_, stats, _) = self.pop_once(store, 0).await?;
        Ok(stats)
    }

    /// The reaper's call: [`QueueRule::stats`], and when something is due next.
    pub async fn maintain(&self, store: &Store) -> Result<Option<Duration>, QueueError> {
        let (_, _, hint) = self.pop_once(store, 0).await?;
        Ok(hint)
    }

    /// Acknowledges job `id`: done, and gone. `StaleReceipt` when `receipt` holds no lease.
    pub async fn ack(&self, store: &Store, id: &str, receipt: &str) -> Result<(), QueueError> {
        check_token("job id", id)?;
        check_token("receipt", receipt)?;
        let n: i64 = store
            .eval(
                &self.scripts.ack,
                &self.keys.ack,
                &[id.as_bytes(), receipt.as_bytes()],
            )
            .await?;
        if n == 1 {
            self.metrics.acked.increment(1);
            Ok(())
        } else {
            self.metrics.stale.increment(1);
            Err(QueueError::StaleReceipt(id.to_string()))
        }
    }

    /// Gives job `id` back: retried after `delay` (default: the rule's backoff), or
    /// dead-lettered after its `max_attempts` deliveries.
    pub async fn nack(
        &self,
        store: &Store,
        id: &str,
        receipt: &str,
        delay: Option<&str>,
    ) -> Result<Nacked, QueueError> {
        check_token("job id", id)?;
        check_token("receipt", receipt)?;
        let delay = match delay {
            Some(d) => ms(duration_param("delay", d, self.spec.max_delay)?).to_string(),
            None => "-1".to_string(),
        };
        let args: [&[u8]; 7] = [
            id.as_bytes(),
            receipt.as_bytes(),
            delay.as_bytes(),
            self.backoff_arg.as_bytes(),
            self.backoff_cap_arg.as_bytes(),
            self.max_attempts_arg.as_bytes(),
            self.dead_max_len_arg.as_bytes(),
        ];
        let reply: Vec<i64> = store
            .eval(&self.scripts.nack, &self.keys.pop, &args)
            .await?;
        match reply.as_slice() {
            [1, d] => {
                self.metrics.nacked.increment(1);
                if *d == 0 {
                    self.wake.notify_one();
                }
                Ok(Nacked::Retry(Duration::from_millis(
                    u64::try_from(*d).unwrap_or(0),
                )))
            }
            [2, _] => {
                self.metrics.nacked.increment(1);
                self.metrics.dead_lettered.increment(1);
                Ok(Nacked::DeadLettered)
            }
            _ => {
                self.metrics.stale.increment(1);
                Err(QueueError::StaleReceipt(id.to_string()))
            }
        }
    }

    /// Extends job `id`'s visibility to end `visibility` from now (default: the rule's, at
    /// most its `max_visibility`). Returns the visibility granted.
    pub async fn extend(
        &self,
        store: &Store,
        id: &str,
        receipt: &str,
        visibility: Option<&str>,
    ) -> Result<Duration, QueueError> {
        check_token("job id", id)?;
        check_token("receipt", receipt)?;
        let vis = match visibility {
            Some(v) => duration_param("visibility", v, self.spec.max_visibility)?,
            None => self.spec.visibility,
        };
        if vis.is_zero() {
            return Err(QueueError::BadRequest(
                "`visibility` must be at least 1ms (nack gives a job back)".into(),
            ));
        }
        let vis_arg = ms(vis).to_string();
        let reply: Vec<i64> = store
            .eval(
                &self.scripts.extend,
                &self.keys.extend,
                &[id.as_bytes(), receipt.as_bytes(), vis_arg.as_bytes()],
            )
            .await?;
        match reply.as_slice() {
            [1, _] => {
                self.metrics.extended.increment(1);
                Ok(vis)
            }
            _ => {
                self.metrics.stale.increment(1);
                Err(QueueError::StaleReceipt(id.to_string()))
            }
        }
    }
}

type PopReply = (u64, u64, Stats, Option<Duration>, Vec<Job>);

/// The pop script's reply (see `queue/pop.lua`).
fn decode_pop(reply: Vec<redis::Value>) -> Result<PopReply, ReplyError> {
    let mut it = Items::new(reply);
    let mut n = || -> Result<u64, ReplyError> {
        let v = it.next_int()?;
        Ok(u64::try_from(v).unwrap_or(0))
    };
    let requeued = n()?;
    let died = n()?;
    let stats = Stats {
        ready: n()?,
        delayed: n()?,
        in_flight: n()?,
        dead: n()?,
    };
    let hint = it.next_int()?;
    let hint = u64::try_from(hint).ok().map(Duration::from_millis);
    let mut jobs = Vec::with_capacity(it.len() / 5);
    while !it.is_empty() {
        let id = it.next_text()?;
        let receipt = it.next_text()?;
        let attempts = u64::try_from(it.next_int()?).unwrap_or(0);
        let priority = u64::try_from(it.next_int()?).unwrap_or(0);
        let payload = it.next_text()?;
        // Written by the push as serialized JSON; another client's text is passed on as a
        // string rather than lost.
        let payload = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
        jobs.push(Job {
            id,
            receipt,
            attempts,
            priority,
            payload,
        });
    }
    Ok((requeued, died, stats, hint, jobs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patterns::reply::tests::s;
    use redis::Value as R;

    #[test]
    fn duration_params_use_the_policy_grammar_and_the_bound() {
        let max = Duration::from_secs(30);
        assert_eq!(
            duration_param("wait", "5s", max).ok(),
            Some(Duration::from_secs(5))
        );
        assert_eq!(duration_param("wait", "0s", max).ok(), Some(Duration::ZERO));
        for bad in ["5", "", "-1s", "1.5s", "31s", "1h"] {
            let e = duration_param("wait", bad, max)
                .err()
                .map(|e| e.to_string());
            assert!(e.is_some_and(|e| e.starts_with("`wait`")), "{bad}");
        }
    }

    #[test]
    fn tokens_are_checked_before_a_script_sees_them() {
        let t = fresh_token().expect("random");
        assert!(check_token("receipt", &t).is_ok());
        for bad in ["", "short", "AAAAAAAAAAAAAAAAAAAAA{", &"A".repeat(23)] {
            assert!(check_token("receipt", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pop_replies_decode() {
        let reply = vec![
            R::Int(1),
            R::Int(0),
            R::Int(3),
            R::Int(1),
            R::Int(2),
            R::Int(0),
            R::Int(-1),
            s("job1"),
            s("rcpt"),
            R::Int(2),
            R::Int(9),
            s(r#"{"a":1}"#),
            s("job2"),
            s("rcpt2"),
            R::Int(1),
            R::Int(0),
            s("not json"),
        ];
        let (requeued, died, stats, hint, jobs) = decode_pop(reply).expect("decodes");
        assert_eq!((requeued, died, hint), (1, 0, None));
        assert_eq!(
            stats,
            Stats {
                ready: 3,
                delayed: 1,
                in_flight: 2,
                dead: 0
            }
        );
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].payload, serde_json::json!({"a": 1}));
        assert_eq!((jobs[0].attempts, jobs[0].priority), (2, 9));
        assert_eq!(jobs[1].payload, Value::String("not json".into()));
        // A job cut short is an error, not a made-up job.
        let short = vec![
            R::Int(0),
            R::Int(0),
            R::Int(0),
            R::Int(0),
            R::Int(0),
            R::Int(0),
            R::Int(5),
            s("job1"),
        ];
        assert!(decode_pop(short).is_err());
    }
}
