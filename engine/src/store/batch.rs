//! Calls of one script gathered into one call of its batch variant (`--redis-batch`).
//!
//! Under load, many requests wait for Redis at once. Each script call costs Redis a fixed
//! amount beyond the script's own work (reading and parsing the command, finding the script,
//! building KEYS and ARGV, writing the reply) and costs the engine a command to encode and a
//! reply to parse. A batch script decides several calls in order in one call, so that cost is
//! paid once per batch. The answers are the ones separate calls would give: a script runs
//! atomically, so a batch is the same as its calls run back to back, with nothing in between.
//!
//! **Forming batches.** One task per batcher takes the first waiting call, then every call
//! already queued behind it, up to `max` (the engine's setting, never a number a client
//! chooses), and sends them as one call. Nothing waits for a batch to fill: an idle engine
//! sends batches of one, as fast as before. At most `in_flight` batches of one batcher are
//! out at once; while they are, calls queue and the next batch is larger. That is what turns
//! load into batching.
//!
//! **Standalone Redis only.** A batch's keys are those of unrelated ids, so they span cluster
//! slots; on a cluster the engine makes separate calls, each in one slot, and the client
//! pipelines them per node (`route.rs`). Each call's own keys are still checked to share a
//! slot (`slots`), so a key layout that breaks the cluster rule fails here too.
//!
//! **Failures.** The batch script runs each call under `pcall`: a call whose Redis command
//! fails (WRONGTYPE on one id's key) answers `{-1, error}` and the others stand. A failure
//! of the batch call itself (timeout, connection, NOSCRIPT twice) is every call's failure,
//! as it would have been for separate calls sent at that moment.
//!
//! **Dropped callers.** A caller that stops waiting (its request was cancelled) does not take
//! its call out of the batch, as an EVALSHA already written to the socket is not taken back:
//! Redis decides it either way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::{Store, StoreError, slots};
use crate::compile::Script;

/// Calls queued for one batcher at most; past it, callers wait to queue (backpressure on the
/// requests, which the listener's connection limit bounds anyway).
const QUEUE: usize = 4096;

/// One call: its keys and arguments (as many as every call of this batcher has), where its
/// answer goes, and when it must have one.
struct Call {
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
    answer: oneshot::Sender<Result<Value, StoreError>>,
    /// Queued + the command timeout: a separate call's bound, counted from the queue.
    deadline: Instant,
}

/// How a batch script finds each call's keys and arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Every call has as many keys and arguments as the others (a rate-limit rule's batch
    /// script knows how many): KEYS and ARGV are the calls' one after the other. The reply is
    /// flat: `width` elements per call, one after the other (a call that failed: `-1`, its
    /// error, then padding), each call answered with its `width` elements as an array. One
    /// array instead of an array per call: Redis spends less on sending it.
    Fixed { width: usize },
    /// Every call has as many keys and arguments as the others, and its reply is `width`
    /// numbers: the reply is `{ packed, i, error, … }`, the numbers of every call packed as
    /// little-endian doubles in one string (a call that failed: `-1` and zeros), then the
    /// index (from 1) and error of each call that failed. Redis' client then parses one
    /// string per batch instead of `width` integers per call, which was most of its parsing.
    Packed { width: usize },
    /// Calls may differ (`compile::batch::wrap`): ARGV starts with the number of calls and
    /// their key and argument counts; the reply is flat, each call's reply preceded by its
    /// element count.
    Counted,
}

/// Gathers calls of one script into calls of its batch variant. Dropping it ends its task
/// once the calls queued have been sent.
pub struct Batcher {
    queue: mpsc::Sender<Call>,
    /// The store's command timeout.
    timeout: Duration,
}

impl Batcher {
    /// Starts the task, when `store` batches. Must run inside the tokio runtime.
    ///
    /// `batch`: the script's batch variant. Its contract: `KEYS` are the calls' keys one
    /// after the other, `ARGV` their arguments one after the other (`Layout::Counted`: after
    /// the count of calls and each call's key and argument counts), and the reply has one
    /// element per call, in order: what the single script replies, or `{-1, message}` when
    /// one of that call's Redis commands failed.
    ///
    /// None when `store` does not batch (`--redis-batch` 0 or 1, or a cluster): the caller
    /// then makes separate calls. Up to `Store::batch_max` calls per batch, and one batch per
    /// pooled connection out at once, so a batcher can keep every connection busy.
    pub fn start(store: &Store, batch: Arc<Script>, layout: Layout) -> Option<Self> {
        let max = store.batch_max()?;
        let in_flight = store.pool_len().max(1);
        let (queue, calls) = mpsc::channel(QUEUE);
        let timeout = store.command_timeout();
        tokio::spawn(run(store.clone(), batch, layout, calls, max, in_flight));
        Some(Self { queue, timeout })
    }

    /// One call, answered with its element of the batch's reply. Bounded by the command
    /// timeout as a separate call is, from the moment it is queued: a call that waited for
    /// a batch to go out, behind batches of a stalled Redis, gets its timeout in time too.
    /// (Like a separate call's EVALSHA already written, it may still be decided by Redis.)
    ///
    /// The bound is kept by the batcher, with one timer per batch instead of one per call:
    /// the batch that takes the call is bounded by the earliest deadline among its calls, and
    /// a call whose deadline passed before a batch took it is answered with the timeout then.
    /// The queue is in deadline order and a batch in flight ends by its own bound, so the
    /// batcher reaches every call by its deadline (give or take the scheduler's delay).
    pub async fn call(&self, keys: Vec<String>, args: Vec<Vec<u8>>) -> Result<Value, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let (answer, answered) = oneshot::channel();
        let call = Call {
            keys,
            args,
            answer,
            deadline,
        };
        match self.queue.try_send(call) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(StoreError::BatchLost),
            // A full queue (a stalled Redis under load): waiting for room counts against the
            // call's own bound.
            Err(mpsc::error::TrySendError::Full(call)) => {
                match tokio::time::timeout_at(deadline.into(), self.queue.send(call)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(StoreError::BatchLost),
                    Err(_) => return Err(StoreError::Timeout(self.timeout)),
                }
            }
        }
        answered.await.map_err(|_| StoreError::BatchLost)?
    }
}

async fn run(
    store: Store,
    batch: Arc<Script>,
    layout: Layout,
    mut calls: mpsc::Receiver<Call>,
    max: usize,
    in_flight: usize,
) {
    let batches = metrics::counter!("patternd_redis_batches_total");
    let batched = metrics::counter!("patternd_redis_batched_calls_total");
    let timeout = store.command_timeout();
    // The batches out, driven by this task itself rather than a task spawned per batch.
    let mut out = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(()) = out.next(), if !out.is_empty() => {}
            // Only while a connection is free: waiting here is what lets the calls queued
            // behind pile up into the next batch while `in_flight` batches are out.
            first = calls.recv(), if open && out.len() < in_flight => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                let group = gather(first, &mut calls, max, timeout);
                if group.is_empty() {
                    continue;
                }
                batches.increment(1);
                batched.increment(group.len() as u64);
                out.push(send(&store, &batch, layout, group));
            }
            else => break,
        }
    }
}

/// `first` and the calls queued behind it, up to `max`. A call whose deadline has passed is
/// answered with the timeout here instead. (Not counted in `patternd_redis_errors_total`: the
/// batch call that held it up is, once, when its own bound passed.)
fn gather(
    first: Call,
    calls: &mut mpsc::Receiver<Call>,
    max: usize,
    timeout: Duration,
) -> Vec<Call> {
    let now = Instant::now();
    let mut group = Vec::with_capacity(max.min(64));
    let mut next = Some(first);
    while let Some(c) = next {
        if c.deadline <= now {
            let _ = c.answer.send(Err(StoreError::Timeout(timeout)));
        } else {
            group.push(c);
        }
        if group.len() >= max {
            break;
        }
        next = calls.try_recv().ok();
    }
    group
}

/// Sends one batch and hands each caller its answer.
async fn send(store: &Store, batch: &Script, layout: Layout, group: Vec<Call>) {
    let n = group.len();
    // The earliest deadline of its calls (nearly always the first's) bounds the batch.
    let bound = group
        .iter()
        .map(|c| c.deadline)
        .min()
        .map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
    let mut keys = Vec::with_capacity(n * group[0].keys.len());
    let mut args = Vec::with_capacity(2 * n + 1 + n * group[0].args.len());
    let mut answers = Vec::with_capacity(n);
    let mut counts: Vec<(usize, usize)> = Vec::new();
    for c in group {
        // Each call in one slot, as a separate call must be (see the module doc).
        if slots::enabled()
            && let Err(e) = slots::check(batch, &c.keys)
        {
            let _ = c.answer.send(Err(e));
            continue;
        }
        if layout == Layout::Counted {
            counts.push((c.keys.len(), c.args.len()));
        }
        keys.extend(c.keys);
        args.extend(c.args);
        answers.push(c.answer);
    }
    if answers.is_empty() {
        return;
    }
    if layout == Layout::Counted {
        // `compile::batch::wrap`'s head: n and the one shape of every call, or -n and each
        // call's counts.
        let head: Vec<Vec<u8>> = match counts.split_first() {
            Some((first, rest)) if rest.iter().all(|c| c == first) => vec![
                counts.len().to_string().into_bytes(),
                first.0.to_string().into_bytes(),
                first.1.to_string().into_bytes(),
            ],
            _ => std::iter::once(format!("-{}", counts.len()).into_bytes())
                .chain(counts.iter().map(|c| c.0.to_string().into_bytes()))
                .chain(counts.iter().map(|c| c.1.to_string().into_bytes()))
                .collect(),
        };
        args.splice(0..0, head);
    }
    let arg_refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    let reply: Result<Vec<Value>, StoreError> =
        store.eval_batch(batch, &keys, &arg_refs, bound).await;
    let calls = answers.len();
    // Each call's own reply from the flat one, or the number of elements that made no sense.
    let reply = reply.map(|items| {
        let elements = items.len();
        match layout {
            Layout::Counted => unflatten(items, calls),
            Layout::Fixed { width } => split(items, calls, width),
            Layout::Packed { width } => unpack(items, calls, width),
        }
        .ok_or(elements)
    });
    match reply {
        Ok(Ok(items)) => {
            for (item, answer) in items.into_iter().zip(answers) {
                let _ = answer.send(item_result(store, batch, &keys, item));
            }
        }
        Ok(Err(elements)) => {
            let e = StoreError::BatchReply {
                script: batch.name.clone(),
                calls,
                elements,
            };
            tracing::error!(error = %e, "malformed batch reply");
            for answer in answers {
                let _ = answer.send(Err(share(&e)));
            }
        }
        Err(e) => {
            // Named by the configured bound, as a separate call's timeout is (the batch's own
            // was what was left of it).
            let e = match e {
                StoreError::Timeout(_) => StoreError::Timeout(store.command_timeout()),
                e => e,
            };
            for answer in answers {
                let _ = answer.send(Err(share(&e)));
            }
        }
    }
}

/// The replies of `calls` calls from a `Layout::Fixed` batch's flat reply: `width` elements
/// each, a failed call's `-1, error` without its padding. None when the count is not that.
fn split(items: Vec<Value>, calls: usize, width: usize) -> Option<Vec<Value>> {
    if width == 0 || items.len() != calls * width {
        return None;
    }
    let mut items = items.into_iter();
    let replies = (0..calls)
        .map(|_| {
            let mut reply: Vec<Value> = items.by_ref().take(width).collect();
            if matches!(reply.first(), Some(Value::Int(-1))) {
                reply.truncate(2);
            }
            Value::Array(reply)
        })
        .collect();
    Some(replies)
}

/// The replies of `calls` calls from a `Layout::Packed` batch's reply: `width` integers each,
/// every number truncated toward zero as Redis turns a Lua number into an integer reply, and a
/// failed call's `-1, error`. None when the reply does not hold exactly that.
fn unpack(items: Vec<Value>, calls: usize, width: usize) -> Option<Vec<Value>> {
    const NUMBER: usize = std::mem::size_of::<f64>();
    let mut items = items.into_iter();
    let Some(Value::BulkString(packed)) = items.next() else {
        return None;
    };
    if width == 0 || packed.len() != calls * width * NUMBER {
        return None;
    }
    let mut failed: Vec<Option<Value>> = Vec::new();
    while let Some(index) = items.next() {
        let Value::Int(index) = index else {
            return None;
        };
        let at = usize::try_from(index).ok()?.checked_sub(1)?;
        if at >= calls {
            return None;
        }
        if failed.is_empty() {
            failed.resize(calls, None);
        }
        failed[at] = Some(items.next()?);
    }
    let mut replies = Vec::with_capacity(calls);
    for (at, call) in packed.chunks_exact(width * NUMBER).enumerate() {
        let mut numbers = Vec::with_capacity(width);
        for n in call.chunks_exact(NUMBER) {
            let bytes: [u8; NUMBER] = n.try_into().ok()?;
            // `as` truncates toward zero, as Redis' `(long long)` cast of a Lua number does.
            numbers.push(Value::Int(f64::from_le_bytes(bytes) as i64));
        }
        let reply = if matches!(numbers.first(), Some(Value::Int(-1))) {
            let error = failed.get_mut(at).and_then(Option::take)?;
            vec![Value::Int(-1), error]
        } else {
            numbers
        };
        replies.push(Value::Array(reply));
    }
    Some(replies)
}

/// The replies of `calls` calls from a `Layout::Counted` batch's flat reply (see
/// `compile::batch::wrap`): per call, an element count c and c elements (an array reply), or
/// -1 and the reply itself. None when the reply does not hold exactly that.
fn unflatten(items: Vec<Value>, calls: usize) -> Option<Vec<Value>> {
    let mut out = Vec::with_capacity(calls);
    let mut items = items.into_iter();
    while let Some(head) = items.next() {
        let Value::Int(c) = head else {
            return None;
        };
        if c == -1 {
            out.push(items.next()?);
            continue;
        }
        let c = usize::try_from(c).ok()?;
        let reply: Vec<Value> = items.by_ref().take(c).collect();
        if reply.len() != c {
            return None;
        }
        out.push(Value::Array(reply));
    }
    (out.len() == calls).then_some(out)
}

/// The batch call's failure, as each of its calls' own: the same variant, so that
/// `on_redis_error`, the breaker's view and the metrics treat it as a separate call's.
fn share(e: &StoreError) -> StoreError {
    match e {
        StoreError::Timeout(d) => StoreError::Timeout(*d),
        StoreError::Redis(r) => StoreError::Redis(r.clone()),
        StoreError::CircuitOpen(c) => StoreError::CircuitOpen(c.clone()),
        StoreError::WrongType { namespace } => StoreError::WrongType {
            namespace: namespace.clone(),
        },
        StoreError::CrossSlot { script, detail } => StoreError::CrossSlot {
            script: script.clone(),
            detail: detail.clone(),
        },
        StoreError::BatchReply {
            script,
            calls,
            elements,
        } => StoreError::BatchReply {
            script: script.clone(),
            calls: *calls,
            elements: *elements,
        },
        StoreError::BatchLost => StoreError::BatchLost,
        // Not met on the request path (configuration and loading errors); kept as text.
        other => StoreError::Redis(redis::RedisError::from((
            redis::ErrorKind::Client,
            "batched script call failed",
            other.to_string(),
        ))),
    }
}

/// One element of a batch reply: `{-1, message}` is that call's Redis error, anything else its
/// answer.
fn item_result(
    store: &Store,
    batch: &Script,
    keys: &[String],
    item: Value,
) -> Result<Value, StoreError> {
    match &item {
        Value::Array(parts) if parts.len() == 2 && matches!(parts[0], Value::Int(-1)) => {
            let message = match &parts[1] {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => format!("{other:?}"),
            };
            let e = server_error(&message);
            let e = if e.code() == Some("WRONGTYPE") {
                store.wrong_type(batch, keys, &e)
            } else {
                StoreError::Redis(e)
            };
            // Counted as a separate call's failure would be (`patternd_redis_errors_total`).
            // The breaker is not fed: Redis answered, so the connection works.
            super::count_error(&e);
            Err(e)
        }
        _ => Ok(item),
    }
}

/// The error Redis answered inside a batch, as the client would have parsed it from a single
/// call's reply (so its code and kind, e.g. OOM or WRONGTYPE, are the same).
fn server_error(message: &str) -> redis::RedisError {
    let line: String = message
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    let resp = format!("-{line}\r\n");
    match redis::parse_redis_value(resp.as_bytes()) {
        Ok(Value::ServerError(e)) => e.into(),
        Ok(_) | Err(_) => redis::RedisError::from((
            redis::ErrorKind::Extension,
            "error in a batched script call",
            line,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(
        queue: &mpsc::Sender<Call>,
        key: &str,
        deadline: Instant,
    ) -> oneshot::Receiver<Result<Value, StoreError>> {
        let (answer, answered) = oneshot::channel();
        let call = Call {
            keys: vec![key.to_string()],
            args: Vec::new(),
            answer,
            deadline,
        };
        assert!(queue.try_send(call).is_ok(), "room in the queue");
        answered
    }

    /// The bound a separate call has, kept without a timer per call: a call whose deadline
    /// passed while it waited for a batch is answered with the timeout (the configured one),
    /// not sent; the others go, at most `max` of them.
    #[test]
    fn a_batch_takes_calls_in_time_and_answers_the_late_ones_with_the_timeout() {
        let (queue, mut calls) = mpsc::channel(16);
        let timeout = Duration::from_millis(300);
        let late = Instant::now();
        let later = late + Duration::from_secs(60);
        let mut answers = [
            queued(&queue, "late-1", late),
            queued(&queue, "a", later),
            queued(&queue, "late-2", late),
            queued(&queue, "b", later),
            queued(&queue, "c", later),
            queued(&queue, "d", later),
        ];
        let first = calls.try_recv().expect("a queued call");
        let group = gather(first, &mut calls, 3, timeout);
        let keys: Vec<&str> = group.iter().map(|c| c.keys[0].as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        for i in [0, 2] {
            match answers[i].try_recv() {
                Ok(Err(StoreError::Timeout(d))) => assert_eq!(d, timeout),
                other => panic!("call {i}: {other:?}"),
            }
        }
        // The one past `max` waits for the next batch, unanswered.
        let rest = calls.try_recv().expect("d is still queued");
        assert_eq!(rest.keys, ["d"]);
        assert!(answers[5].try_recv().is_err());
    }

    #[test]
    fn a_flat_reply_gives_each_call_its_own() {
        let int = Value::Int;
        let text = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let flat = vec![
            int(2),
            text("hit"),
            int(7),
            int(-1),
            Value::Nil,
            int(0),
            int(2),
            int(-1),
            text("WRONGTYPE x"),
        ];
        let calls = unflatten(flat.clone(), 4).expect("four calls");
        assert_eq!(
            calls,
            [
                Value::Array(vec![text("hit"), int(7)]),
                Value::Nil,
                Value::Array(vec![]),
                Value::Array(vec![int(-1), text("WRONGTYPE x")]),
            ]
        );
        // Another number of calls, a count past the end, or a count that is no integer.
        assert!(unflatten(flat.clone(), 3).is_none());
        assert!(unflatten(vec![int(3), int(1)], 1).is_none());
        assert!(unflatten(vec![text("2"), int(1), int(2)], 1).is_none());
        assert!(unflatten(vec![int(-2), int(1)], 1).is_none());

        // Fixed width: a failed call's padding is dropped.
        let flat = vec![int(1), int(0), int(-1), text("OOM x"), int(0), int(0)];
        let calls = split(flat.clone(), 2, 3).expect("two calls");
        assert_eq!(
            calls,
            [
                Value::Array(vec![int(1), int(0), int(-1)]),
                Value::Array(vec![text("OOM x"), int(0), int(0)]),
            ]
        );
        let calls = split(flat.clone(), 3, 2).expect("three calls");
        assert_eq!(calls[1], Value::Array(vec![int(-1), text("OOM x")]));
        assert!(split(flat.clone(), 4, 2).is_none());
        assert!(split(flat, 6, 0).is_none());
    }

    #[test]
    fn a_packed_reply_gives_each_call_its_numbers_or_its_error() {
        let int = Value::Int;
        let text = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let pack = |numbers: &[f64]| {
            Value::BulkString(numbers.iter().flat_map(|n| n.to_le_bytes()).collect())
        };
        // Three calls of two numbers; the second failed. Fractions truncate toward zero, as
        // Redis' integer reply of a Lua number does.
        let reply = vec![
            pack(&[1.0, 99.9, -1.0, 0.0, 0.0, -2.5]),
            int(2),
            text("WRONGTYPE x"),
        ];
        let calls = unpack(reply.clone(), 3, 2).expect("three calls");
        assert_eq!(
            calls,
            [
                Value::Array(vec![int(1), int(99)]),
                Value::Array(vec![int(-1), text("WRONGTYPE x")]),
                Value::Array(vec![int(0), int(-2)]),
            ]
        );
        // No failure: the string alone.
        let calls = unpack(vec![pack(&[0.0, 1e15])], 1, 2).expect("one call");
        assert_eq!(
            calls,
            [Value::Array(vec![int(0), int(1_000_000_000_000_000)])]
        );
        // The wrong length, a failed call without its error, an index out of range, no
        // string first, or a width of 0.
        assert!(unpack(reply.clone(), 2, 2).is_none());
        assert!(unpack(vec![pack(&[-1.0, 0.0])], 1, 2).is_none());
        assert!(unpack(vec![pack(&[1.0, 0.0]), int(2), text("x")], 1, 2).is_none());
        assert!(unpack(vec![pack(&[1.0, 0.0]), int(0), text("x")], 1, 2).is_none());
        assert!(unpack(vec![int(1), int(0)], 1, 2).is_none());
        assert!(unpack(vec![pack(&[])], 0, 0).is_none());
    }

    #[test]
    fn an_error_inside_a_batch_keeps_its_redis_code() {
        let e = server_error("WRONGTYPE Operation against a key holding the wrong kind of value");
        assert_eq!(e.code(), Some("WRONGTYPE"));
        let e = server_error("OOM command not allowed when used memory > 'maxmemory'.");
        assert_eq!(e.code(), Some("OOM"));
        assert!(StoreError::Redis(e).is_unavailable());
        let e = server_error("line one\r\nline two");
        assert!(e.to_string().contains("one  line two"), "{e}");
    }
}
