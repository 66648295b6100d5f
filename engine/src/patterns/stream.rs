//! Stream rules at request time: append, group reads (claims and dead letters included),
//! acks, range reads, and the live tail.
//!
//! **The tail reader.** One task per rule and engine reads the stream with `XREAD BLOCK` on a
//! dedicated connection (`store::blocking`, never a pooled one), and only while someone
//! listens. It broadcasts each batch with the id it read after, so a client knows whether a
//! batch follows what it has already sent: a client that resumes (`Last-Event-ID`) first
//! replays `XRANGE (last` page by page, and whenever a batch starts after its cursor it fills
//! the hole with `XRANGE` up to the batch's start first, then sends the batch's entries past
//! its cursor. Ids are compared, never positions: no entry is lost or sent twice. Each client
//! has a bounded buffer (the rule's `tail_buffer` entries); one that falls further behind is
//! dropped with a final event and may resume with its `Last-Event-ID`.
//!
//! **Long-poll of a group read.** A read with `wait` runs the read script, and when it finds
//! nothing waits for the tail reader's wake-up (an append through any engine shows there at
//! once) or a backoff (50 ms doubling to 1 s: entries become claimable with time, not with an
//! append), then runs it again, until `wait` is over. No connection is held while waiting,
//! and every engine holds one blocking connection per rule with waiters, not one per request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::Counter;
use redis::Value;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::Instant;

use super::feed::{self, Feed, NotSent};
use super::reply;
use crate::compile::stream::{StreamScripts, dead_key, stream_key};
use crate::compile::{CompiledStream, KeySpace};
use crate::plugin::{PluginBinding, PluginError, RequestFacts, StreamDecision};
use crate::policy::Rule;
use crate::policy::stream::{Stream, StreamFallback};
use crate::store::{Store, StoreError};

/// Entries one XREAD of the tail reader takes at most.
const TAIL_READ_COUNT: usize = 64;
/// Batches the reader's broadcast ring holds. The feeds only move entries from it to their
/// clients' own buffers (`tail_buffer` entries each), so a short ring suffices; it is short
/// because a broadcast ring keeps its last values even once read (at most this many batches
/// of `TAIL_READ_COUNT` entries stay in memory per rule).
const TAIL_RING: usize = 16;
/// How long one XREAD BLOCK waits before the reader checks whether anyone still listens.
const TAIL_BLOCK: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A read without `count` takes this many (at most the rule's `max_count`).
const DEFAULT_COUNT: u64 = 10;
const MAX_CONSUMER_BYTES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no group `{0}` in this rule (groups are declared in the policy)")]
    NoGroup(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
    #[error("the rule's plugin rejected entry {0} (counting from 0): {1}")]
    Rejected(usize, String),
    #[error(transparent)]
    Plugin(PluginError),
}

/// A stream id `ms-seq`, compared as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId(pub u64, pub u64);

impl StreamId {
    /// `ms-seq` or `ms` (sequence 0), digits only.
    pub fn parse(s: &str) -> Option<Self> {
        let digits = |t: &str| {
            (!t.is_empty() && t.len() <= 20 && t.bytes().all(|c| c.is_ascii_digit()))
                .then(|| t.parse::<u64>().ok())
                .flatten()
        };
        match s.split_once('-') {
            Some((ms, seq)) => Some(Self(digits(ms)?, digits(seq)?)),
            None => Some(Self(digits(s)?, 0)),
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// An entry: its id and the JSON text appended.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub data: String,
}

/// An entry delivered to a group consumer.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub id: String,
    pub data: String,
    /// 1 on the first delivery; a claim counts one more.
    pub deliveries: u64,
}

/// A dead letter: an entry claimed past `max_deliveries`.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: String,
    pub fields: Vec<(String, String)>,
}

/// What a group read got.
#[derive(Debug, Clone)]
pub struct GroupRead {
    pub entries: Vec<Delivered>,
    /// Entries this read moved to the dead letters instead of delivering.
    pub dead_lettered: u64,
}

/// What an SSE tail client is sent.
#[derive(Debug, Clone)]
pub enum TailEvent {
    Entry(Entry),
    /// The last event: the client fell too far behind (or the reader stopped); it may
    /// reconnect with its `Last-Event-ID`.
    Dropped(&'static str),
}

struct Counters {
    appended: Counter,
    delivered: Counter,
    acked: Counter,
    dead: Counter,
    rejected: Counter,
    plugin_failed: Counter,
}

impl Counters {
    fn new(app: &str, rule: &str) -> Self {
        let c = |event: &'static str| metrics::counter!("patternd_stream_entries_total", "app" => app.to_string(), "rule" => rule.to_string(), "event" => event);
        Self {
            appended: c("appended"),
            delivered: c("delivered"),
            acked: c("acked"),
            dead: c("dead_lettered"),
            rejected: c("rejected"),
            plugin_failed: metrics::counter!("patternd_plugin_failures_total", "app" => app.to_string(), "rule" => rule.to_string()),
        }
    }
}

/// One batch the tail reader read: the entries after `after`.
#[derive(Debug)]
struct Batch {
    after: StreamId,
    entries: Vec<(StreamId, Entry)>,
}

/// The rule's tail reader and its listeners.
struct Tail {
    key: String,
    tx: broadcast::Sender<Arc<Batch>>,
    wake: Notify,
    waiters: AtomicUsize,
    running: AtomicBool,
    /// Where the reader is; kept across a reconnect, forgotten when it stops.
    after: Mutex<Option<StreamId>>,
}

/// Counts a long-poll waiter while it lives.
struct Waiter<'a>(&'a Tail);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Tail {
    fn listeners(&self) -> usize {
        self.tx.receiver_count() + self.waiters.load(Ordering::Acquire)
    }

    fn ensure_running(self: &Arc<Self>, store: &Store) {
        if !self.running.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            let store = store.clone();
            tokio::spawn(async move { me.run(store).await });
        }
    }

    async fn run(self: Arc<Self>, store: Store) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.read(&store).await {
                Ok(()) => {
                    if let Ok(mut a) = self.after.lock() {
                        *a = None;
                    }
                }
                Err(e) => {
                    tracing::warn!(stream = %self.key, error = %e, retry_in = ?backoff, "stream tail reader failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            if self.listeners() > 0 {
                continue;
            }
            self.running.store(false, Ordering::Release);
            // A listener that came after the check and saw `running` still set would be
            // left without a reader: look again.
            if self.listeners() == 0 || self.running.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }

    /// Reads until nobody listens (Ok) or Redis fails (Err).
    async fn read(&self, store: &Store) -> Result<(), StreamError> {
        let mut conn = store.blocking().await?;
        let known = self.after.lock().ok().and_then(|a| *a);
        let mut after = match known {
            Some(a) => a,
            None => {
                let last = conn.last(&self.key).await?;
                let start = decode_entries(last)?
                    .last()
                    .map(|(id, _)| *id)
                    .unwrap_or(StreamId(0, 0));
                // Where a fresh reader starts, announced as an empty batch: a client that
                // caught up before entries appended just before this start would otherwise
                // wait for the next append to learn of them (a quiet stream: forever). The
                // empty batch makes it fill the hole up to `start` now.
                let _ = self.tx.send(Arc::new(Batch {
                    after: start,
                    entries: Vec::new(),
                }));
                start
            }
        };
        loop {
            if self.listeners() == 0 {
                return Ok(());
            }
            let v = conn
                .read_after(&self.key, &after.to_string(), TAIL_READ_COUNT, TAIL_BLOCK)
                .await?;
            let entries = decode_xread(v)?;
            let Some((last, _)) = entries.last() else {
                continue;
            };
            let last = *last;
            let _ = self.tx.send(Arc::new(Batch { after, entries }));
            after = last;
            if let Ok(mut a) = self.after.lock() {
                *a = Some(after);
            }
            self.wake.notify_waiters();
        }
    }
}

/// A stream rule ready to serve.
pub struct StreamRule {
    pub app: String,
    pub rule: String,
    stream: String,
    dead: String,
    scripts: StreamScripts,
    pub spec: Stream,
    max_len_arg: String,
    retention_arg: String,
    claim_after_arg: String,
    max_deliveries_arg: String,
    dead_len_arg: String,
    tail: Arc<Tail>,
    counters: Counters,
    /// The rule's plugin (its name, for the log) and its binding: the `stream` hook.
    plugin: Option<(String, PluginBinding)>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A consumer name: `[A-Za-z0-9._-]{1,64}`.
/// An entry's JSON text: its one field `d` (an entry written by another client without it
/// reads as `null`).
fn entry_data(fields: Vec<(String, String)>) -> String {
    fields
        .into_iter()
        .find(|(k, _)| k == "d")
        .map(|(_, v)| v)
        .unwrap_or_else(|| "null".into())
}

fn check_consumer(c: &str) -> Result<(), StreamError> {
    if c.is_empty()
        || c.len() > MAX_CONSUMER_BYTES
        || !c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(StreamError::BadRequest(format!(
            "`consumer` must be 1 to {MAX_CONSUMER_BYTES} of `A-Z a-z 0-9 . _ -`"
        )));
    }
    Ok(())
}

/// A range bound: `-`, `+`, an id, or `(id` (exclusive).
fn check_bound(name: &str, b: &str) -> Result<(), StreamError> {
    let id = b.strip_prefix('(').unwrap_or(b);
    if b == "-" || b == "+" || StreamId::parse(id).is_some() {
        Ok(())
    } else {
        Err(StreamError::BadRequest(format!(
            "`{name}` must be `-`, `+`, a stream id (`1700000000000-0`) or `(id` for after it"
        )))
    }
}

fn bad_reply(what: &str, e: impl std::fmt::Display) -> StreamError {
    StreamError::Internal(format!("unexpected reply of {what}: {e}"))
}

/// `[[id, [field, value, ...]], ...]` (XRANGE, XREVRANGE).
fn decode_entries(v: Value) -> Result<Vec<(StreamId, Entry)>, StreamError> {
    Ok(decode_raw(v)?
        .into_iter()
        .map(|(id, sid, fields)| {
            let data = fields
                .into_iter()
                .find(|(k, _)| k == "d")
                .map(|(_, v)| v)
                .unwrap_or_else(|| "null".into());
            (sid, Entry { id, data })
        })
        .collect())
}

type RawEntry = (String, StreamId, Vec<(String, String)>);

fn decode_raw(v: Value) -> Result<Vec<RawEntry>, StreamError> {
    if matches!(v, Value::Nil) {
        return Ok(Vec::new());
    }
    let items = reply::into_array(v).map_err(|e| bad_reply("XRANGE", e))?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let mut parts = reply::into_array(item)
            .map_err(|e| bad_reply("XRANGE", e))?
            .into_iter();
        let id = parts
            .next()
            .map(reply::into_text)
            .transpose()
            .map_err(|e| bad_reply("XRANGE", e))?
            .unwrap_or_default();
        let sid = StreamId::parse(&id).ok_or_else(|| bad_reply("XRANGE", &id))?;
        let fields = match parts.next() {
            Some(f) => reply::Items::new(reply::into_array(f).map_err(|e| bad_reply("XRANGE", e))?)
                .text_pairs()
                .map_err(|e| bad_reply("XRANGE", e))?,
            None => Vec::new(),
        };
        out.push((id, sid, fields));
    }
    Ok(out)
}

/// XREAD's reply: nil, `[[key, entries]]` (RESP2) or `{key: entries}` (RESP3).
fn decode_xread(v: Value) -> Result<Vec<(StreamId, Entry)>, StreamError> {
    let entries = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs.into_iter().next().map(|(_, e)| e),
        Value::Array(streams) => match streams.into_iter().next() {
            Some(Value::Array(kv)) => kv.into_iter().nth(1),
            _ => None,
        },
        other => return Err(bad_reply("XREAD", format!("{other:?}"))),
    };
    match entries {
        Some(e) => decode_entries(e),
        None => Ok(Vec::new()),
    }
}

impl StreamRule {
    pub fn new(
        rule: &Rule,
        spec: &Stream,
        compiled: &CompiledStream,
        keys: &KeySpace,
        plugin: Option<(String, PluginBinding)>,
    ) -> Self {
        let stream = stream_key(keys);
        let (tx, _) = broadcast::channel(TAIL_RING);
        Self {
            app: rule.app.clone(),
            rule: rule.name.clone(),
            dead: dead_key(keys),
            scripts: compiled.scripts.clone(),
            spec: spec.clone(),
            max_len_arg: spec.max_len.map(|n| n.to_string()).unwrap_or_default(),
            retention_arg: spec
                .retention
                .map(|d| ms(d).to_string())
                .unwrap_or_default(),
            claim_after_arg: ms(spec.claim_after).to_string(),
            max_deliveries_arg: spec.max_deliveries.to_string(),
            dead_len_arg: spec.dead_max_len.to_string(),
            tail: Arc::new(Tail {
                key: stream.clone(),
                tx,
                wake: Notify::new(),
                waiters: AtomicUsize::new(0),
                running: AtomicBool::new(false),
                after: Mutex::new(None),
            }),
            stream,
            counters: Counters::new(&rule.app, &rule.name),
            plugin,
        }
    }

    /// True when the rule's plugin wants the request facts (the handler builds them only then).
    pub fn wants_facts(&self) -> bool {
        self.plugin.is_some()
    }

    /// Asks the rule's plugin, if any, about each entry in order (at most `max_batch` calls,
    /// checked before): the first rejection refuses the whole append. Returns true when the
    /// plugin failed and `fallback: accept` let the append through.
    fn decide(&self, facts: Option<RequestFacts>, entries: &[String]) -> Result<bool, StreamError> {
        let Some((name, binding)) = &self.plugin else {
            return Ok(false);
        };
        let facts = facts.unwrap_or_default();
        for (i, entry) in entries.iter().enumerate() {
            match binding.stream(&facts, entry) {
                Ok(StreamDecision::Accept) => {}
                Ok(StreamDecision::Reject(reason)) => {
                    self.counters.rejected.increment(1);
                    return Err(StreamError::Rejected(i, reason));
                }
                Err(e) => {
                    self.counters.plugin_failed.increment(1);
                    tracing::warn!(app = %self.app, rule = %self.rule, plugin = %name, error = %e, "stream plugin failed");
                    return match self.spec.fallback {
                        StreamFallback::Accept => Ok(true),
                        StreamFallback::Fail => Err(StreamError::Plugin(e)),
                    };
                }
            }
        }
        Ok(false)
    }

    fn count(&self, count: Option<u64>) -> Result<u64, StreamError> {
        match count {
            None => Ok(DEFAULT_COUNT.min(self.spec.max_count)),
            Some(0) => Err(StreamError::BadRequest("`count` must be at least 1".into())),
            Some(n) if n > self.spec.max_count => Err(StreamError::BadRequest(format!(
                "`count` {n} is above the rule's max_count of {}",
                self.spec.max_count
            ))),
            Some(n) => Ok(n),
        }
    }

    /// Appends entries (JSON texts), at most `max_batch`; returns their ids in order, and
    /// whether the rule's plugin failed and its `fallback: accept` let them through.
    pub async fn append(
        &self,
        store: &Store,
        entries: &[String],
        facts: Option<RequestFacts>,
    ) -> Result<(Vec<String>, bool), StreamError> {
        if entries.is_empty() {
            return Err(StreamError::BadRequest("nothing to append".into()));
        }
        if entries.len() as u64 > self.spec.max_batch {
            return Err(StreamError::BadRequest(format!(
                "{} entries; this rule takes at most {} per append (max_batch)",
                entries.len(),
                self.spec.max_batch
            )));
        }
        let fallback = self.decide(facts, entries)?;
        let mut args: Vec<&[u8]> = Vec::with_capacity(entries.len() + 2);
        args.push(self.max_len_arg.as_bytes());
        args.push(self.retention_arg.as_bytes());
        args.extend(entries.iter().map(|e| e.as_bytes()));
        let keys = [self.stream.clone()];
        let ids: Vec<String> = store.eval(&self.scripts.append, &keys, &args).await?;
        self.counters.appended.increment(ids.len() as u64);
        Ok((ids, fallback))
    }

    fn check_group(&self, group: &str) -> Result<(), StreamError> {
        if self.spec.groups.iter().any(|g| g == group) {
            Ok(())
        } else {
            Err(StreamError::NoGroup(group.to_string()))
        }
    }

    /// A group read: up to `count` entries (claimed ones first), waiting up to `wait` for
    /// some (at most the rule's `max_wait`).
    pub async fn read_group(
        &self,
        store: &Store,
        group: &str,
        consumer: &str,
        count: Option<u64>,
        wait: Option<Duration>,
    ) -> Result<GroupRead, StreamError> {
        self.check_group(group)?;
        check_consumer(consumer)?;
        let count = self.count(count)?;
        let wait = wait.unwrap_or(Duration::ZERO);
        if wait > self.spec.max_wait {
            return Err(StreamError::BadRequest(format!(
                "`wait` {} ms is above the rule's max_wait of {} ms",
                ms(wait),
                ms(self.spec.max_wait)
            )));
        }
        let deadline = Instant::now() + wait;
        let keys = [self.stream.clone(), self.dead.clone()];
        let count_arg = count.to_string();
        let args: [&[u8]; 6] = [
            group.as_bytes(),
            consumer.as_bytes(),
            count_arg.as_bytes(),
            self.claim_after_arg.as_bytes(),
            self.max_deliveries_arg.as_bytes(),
            self.dead_len_arg.as_bytes(),
        ];
        let mut backoff = FIRST_BACKOFF;
        let mut waiter = None;
        loop {
            let notified = self.tail.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let v: Value = store.eval(&self.scripts.read, &keys, &args).await?;
            let read = decode_group_read(v)?;
            self.counters.dead.increment(read.dead_lettered);
            self.counters.delivered.increment(read.entries.len() as u64);
            let now = Instant::now();
            if !read.entries.is_empty() || now >= deadline {
                return Ok(read);
            }
            if waiter.is_none() {
                self.tail.waiters.fetch_add(1, Ordering::AcqRel);
                waiter = Some(Waiter(&self.tail));
                self.tail.ensure_running(store);
            }
            let pause = backoff.min(deadline - now);
            backoff = (backoff * 2).min(MAX_BACKOFF);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = &mut notified => {}
            }
        }
    }

    /// Acks entries of a group; returns how many were pending.
    pub async fn ack(
        &self,
        store: &Store,
        group: &str,
        ids: &[String],
    ) -> Result<u64, StreamError> {
        self.check_group(group)?;
        if ids.is_empty() {
            return Err(StreamError::BadRequest("`ids` is empty".into()));
        }
        if ids.len() as u64 > self.spec.max_batch {
            return Err(StreamError::BadRequest(format!(
                "{} ids; this rule takes at most {} per ack (max_batch)",
                ids.len(),
                self.spec.max_batch
            )));
        }
        if let Some(bad) = ids.iter().find(|i| StreamId::parse(i).is_none()) {
            return Err(StreamError::BadRequest(format!(
                "`{bad}` is not a stream id (`1700000000000-0`)"
            )));
        }
        let mut args: Vec<&[u8]> = Vec::with_capacity(ids.len() + 1);
        args.push(group.as_bytes());
        args.extend(ids.iter().map(|i| i.as_bytes()));
        let n: u64 = store
            .eval(&self.scripts.ack, std::slice::from_ref(&self.stream), &args)
            .await?;
        self.counters.acked.increment(n);
        Ok(n)
    }

    async fn range_raw(
        &self,
        store: &Store,
        key: &str,
        from: &str,
        to: &str,
        count: u64,
    ) -> Result<Vec<RawEntry>, StreamError> {
        check_bound("from", from)?;
        check_bound("to", to)?;
        let count = count.to_string();
        let args: [&[u8]; 3] = [from.as_bytes(), to.as_bytes(), count.as_bytes()];
        let v: Value = store
            .eval(&self.scripts.range, &[key.to_string()], &args)
            .await?;
        decode_raw(v)
    }

    /// Entries from `from` to `to` (inclusive; `(id` excludes), at most `count`.
    pub async fn range(
        &self,
        store: &Store,
        from: Option<&str>,
        to: Option<&str>,
        count: Option<u64>,
    ) -> Result<Vec<Entry>, StreamError> {
        let count = self.count(count)?;
        let raw = self
            .range_raw(
                store,
                &self.stream,
                from.unwrap_or("-"),
                to.unwrap_or("+"),
                count,
            )
            .await?;
        Ok(raw
            .into_iter()
            .map(|(id, _, fields)| Entry {
                id,
                data: entry_data(fields),
            })
            .collect())
    }

    /// Dead letters from `from` to `to`, at most `count`.
    pub async fn dead_letters(
        &self,
        store: &Store,
        from: Option<&str>,
        to: Option<&str>,
        count: Option<u64>,
    ) -> Result<Vec<DeadLetter>, StreamError> {
        let count = self.count(count)?;
        let raw = self
            .range_raw(
                store,
                &self.dead,
                from.unwrap_or("-"),
                to.unwrap_or("+"),
                count,
            )
            .await?;
        Ok(raw
            .into_iter()
            .map(|(id, _, fields)| DeadLetter { id, fields })
            .collect())
    }

    /// The live tail from after `last_event_id` (or from now), as events for one SSE client.
    pub fn tail(
        self: &Arc<Self>,
        store: &Store,
        last_event_id: Option<&str>,
    ) -> Result<mpsc::Receiver<TailEvent>, StreamError> {
        let cursor = match last_event_id {
            None => None,
            Some(s) => Some(StreamId::parse(s.trim()).ok_or_else(|| {
                StreamError::BadRequest(
                    "`Last-Event-ID` must be a stream id (`1700000000000-0`)".into(),
                )
            })?),
        };
        let rx = self.tail.tx.subscribe();
        self.tail.ensure_running(store);
        let buffer = usize::try_from(self.spec.tail_buffer)
            .unwrap_or(1024)
            .max(1);
        let (out, events) = feed::channel(buffer);
        let me = self.clone();
        let store = store.clone();
        tokio::spawn(async move { me.feed(store, rx, cursor, out).await });
        Ok(events)
    }

    /// Sends the entries after `cursor` up to `upto` (inclusive; None: the end) with XRANGE,
    /// page by page; returns the new cursor.
    async fn catch_up(
        &self,
        store: &Store,
        mut cursor: StreamId,
        upto: Option<StreamId>,
        out: &Feed<TailEvent>,
    ) -> Result<StreamId, NotSent> {
        let to = upto.map_or_else(|| "+".to_string(), |u| u.to_string());
        loop {
            let from = format!("({cursor}");
            let page = self
                .range_raw(store, &self.stream, &from, &to, self.spec.max_count)
                .await
                .map_err(|e| {
                    // Reported to the client as `redis-unavailable`; it resumes later.
                    tracing::warn!(error = %e, "stream tail catch-up failed");
                    NotSent::Full
                })?;
            let full = page.len() as u64 >= self.spec.max_count;
            for (id, sid, fields) in page {
                let data = entry_data(fields);
                out.send(TailEvent::Entry(Entry { id, data })).await?;
                cursor = sid;
            }
            if !full {
                return Ok(cursor);
            }
        }
    }

    async fn feed(
        self: Arc<Self>,
        store: Store,
        mut rx: broadcast::Receiver<Arc<Batch>>,
        mut cursor: Option<StreamId>,
        out: Feed<TailEvent>,
    ) {
        if let Some(c) = cursor {
            match self.catch_up(&store, c, None, &out).await {
                Ok(c) => cursor = Some(c),
                Err(NotSent::Closed) => return,
                Err(NotSent::Full) => return out.finish(TailEvent::Dropped("redis-unavailable")),
            }
        }
        loop {
            let batch = tokio::select! {
                () = out.closed() => return,
                b = rx.recv() => b,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(broadcast::error::RecvError::Lagged(_)) => return slow(out),
                Err(broadcast::error::RecvError::Closed) => {
                    return out.finish(TailEvent::Dropped("closed"));
                }
            };
            if let Some(c) = cursor
                && batch.after > c
            {
                match self.catch_up(&store, c, Some(batch.after), &out).await {
                    Ok(c) => cursor = Some(c),
                    Err(NotSent::Closed) => return,
                    Err(NotSent::Full) => {
                        return out.finish(TailEvent::Dropped("redis-unavailable"));
                    }
                }
            }
            for (sid, e) in &batch.entries {
                if cursor.is_some_and(|c| *sid <= c) {
                    continue;
                }
                match out.push(TailEvent::Entry(e.clone())) {
                    Ok(()) => cursor = Some(*sid),
                    Err(NotSent::Full) => return slow(out),
                    Err(NotSent::Closed) => return,
                }
            }
        }
    }
}

/// Ends the feed of a client that fell behind by more than its buffer.
fn slow(out: Feed<TailEvent>) {
    metrics::counter!("patternd_sse_dropped_total", "pattern" => "stream").increment(1);
    out.finish(TailEvent::Dropped("slow-client"));
}

/// `{dead, id, data, deliveries, ...}`.
fn decode_group_read(v: Value) -> Result<GroupRead, StreamError> {
    let mut it = reply::Items::new(reply::into_array(v).map_err(|e| bad_reply("stream read", e))?);
    let dead_lettered =
        u64::try_from(it.next_int().map_err(|e| bad_reply("stream read", e))?).unwrap_or(0);
    let mut entries = Vec::new();
    while !it.is_empty() {
        let id = it.next_text().map_err(|e| bad_reply("stream read", e))?;
        let data = it.next_text().map_err(|e| bad_reply("stream read", e))?;
        let n = it.next_int().map_err(|e| bad_reply("stream read", e))?;
        entries.push(Delivered {
            id,
            data,
            deliveries: u64::try_from(n).unwrap_or(1),
        });
    }
    Ok(GroupRead {
        entries,
        dead_lettered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_parse_and_order_as_numbers() {
        assert_eq!(StreamId::parse("5-3"), Some(StreamId(5, 3)));
        assert_eq!(StreamId::parse("5"), Some(StreamId(5, 0)));
        assert!(StreamId(10, 0) > StreamId(9, 99));
        assert!(StreamId(10, 2) > StreamId(10, 1));
        for bad in ["", "-", "5-", "-5", "a-1", "1-b", "1-2-3", "+", "(5"] {
            assert_eq!(StreamId::parse(bad), None, "{bad}");
        }
        assert_eq!(StreamId(17, 4).to_string(), "17-4");
    }

    #[test]
    fn bounds_and_consumers_are_checked() {
        for ok in ["-", "+", "5-0", "(5-0", "7"] {
            assert!(check_bound("from", ok).is_ok(), "{ok}");
        }
        for bad in ["", "((5", "x", "5-0)", "*"] {
            assert!(check_bound("from", bad).is_err(), "{bad}");
        }
        assert!(check_consumer("worker-1.a_b").is_ok());
        for bad in ["", "a b", "a{b}", &"c".repeat(65)] {
            assert!(check_consumer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn xread_replies_decode_in_resp2_and_resp3() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let entries = Value::Array(vec![Value::Array(vec![
            s("1-1"),
            Value::Array(vec![s("d"), s("{\"a\":1}")]),
        ])]);
        let resp2 = Value::Array(vec![Value::Array(vec![s("k"), entries.clone()])]);
        let resp3 = Value::Map(vec![(s("k"), entries)]);
        for v in [resp2, resp3] {
            let got = decode_xread(v).expect("decodes");
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, StreamId(1, 1));
            assert_eq!(got[0].1.data, "{\"a\":1}");
        }
        assert!(decode_xread(Value::Nil).expect("nil").is_empty());
    }
}
