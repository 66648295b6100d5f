//! GET of a cache rule: cache-aside with stampede protection. The fill (origin call and store,
//! and giving the lease back) is in `fill`, the near cache glue in `near`, the script's reply
//! decoding in `reply`; DELETE and tag invalidation in `invalidate`.
//!
//! One read script call decides everything for a GET (hit, miss, early XFetch refresh, stale,
//! who holds the refresh lease); the engine then serves, fills, or waits. Waiters poll the read
//! script with short jittered sleeps (growing from 10 ms to 100 ms) until the fill lands or
//! `fill_wait` passes: each poll is one EVALSHA of a few HMGETs, so 200 waiters cost Redis a
//! few thousand cheap calls per second for the length of one origin fetch.
//!
//! When reads are batched (a standalone Redis), a `format: string` read of a rule that is not
//! `write: behind` first asks the hit batch (`probe`, `lua/cache/hit_batch.lua`): read-only,
//! it answers a fresh untagged hit with the value, and anything else with "ask the read
//! script", which then decides as above. A hit, the common read, so costs Redis one HMGET and
//! the call carries one key and one argument instead of three keys and four.
//!
//! `Cache-Status` (RFC 9211) values, cache name `patternd`:
//! - `hit; ttl=N`: served fresh from the cache (also for a cached negative 404).
//! - `hit; ttl=-N` (no detail): a `write: behind` value whose write is still in the journal,
//!   served past its ttl: it is newer than the origin's copy, so it is not refreshed.
//! - `hit; ttl=-N; detail=stale-while-revalidate`: served stale while one caller refreshes.
//! - `fwd=miss; fwd-status=200; stored`: fetched from the origin and stored (`fwd=stale` when
//!   a stale value was there but past stale_while_revalidate).
//! - `fwd=miss; ttl=N; collapsed`: waited for another caller's fill (collapsed into it).
//! - `fwd=stale; [fwd-status=503;] ttl=-N; detail=stale-if-error`: the origin failed, the stale
//!   value was served.
//! - `hit; ttl=-N; detail=stale-if-error`: the origin failed moments ago (within
//!   refresh_lease; the lease holds a failure marker), so the stale value was served without
//!   asking it again: one probe per refresh_lease while the origin is down.
//! - `fwd=miss; collapsed` on a 502: no value to serve, and the fill this request waited for
//!   (or one moments before) failed; the failure is shared, the origin not asked again.
//! - `fwd=bypass; fwd-status=200`: the plugin said bypass.
//! - `detail=absent`: no value and no origin (404).
//! - `fwd=bypass; fwd-status=200; detail=redis-unavailable`: Redis could not be asked in time
//!   and the rule says `on_redis_error: origin`: the origin's answer, not stored.
//! - `detail=redis-unavailable` on a 503: Redis could not be asked in time (`fail`), or no
//!   origin permit was free (`origin`).
//!
//! Faults. The Redis calls of one GET (the read, every poll while waiting, the fill's store)
//! draw from one budget of the command timeout ([`Budget`]): however slow Redis is, a GET
//! spends at most that long waiting for it, and then answers as `on_redis_error` says. The
//! fill runs in a task of its own that the GET awaits, so a client that goes away does not
//! cancel it: the value still lands (or the lease is given back) for the callers waiting on
//! it. A lease that may have been granted to a read whose answer never arrived (the client
//! went away mid-call, or the call timed out) is given back in the background.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use redis::{FromRedisValue, Value};

use super::fill::{Fill, LeaseGuard};
use super::reply::{self, Action, ReadReply, Stored};
use super::{CacheRule, duration_ms};
use crate::compile::Script;
use crate::patterns::reply::ReplyError;
use crate::patterns::{InputError, check_id, random};
use crate::plugin::{PluginError, RequestFacts};
use crate::policy::cache::CacheFormat;
use crate::policy::cache::{CacheOnRedisError, WriteMode};
use crate::store::batch::{Batcher, Layout};
use crate::store::{Store, StoreError};

/// At most this many `fields` per GET.
pub const MAX_FIELDS: usize = 64;
const MAX_FIELD_BYTES: usize = 256;

/// `Cache-Status` of a GET answered without Redis: nothing was looked up or stored.
const REDIS_UNAVAILABLE: &str = "patternd; detail=redis-unavailable";

/// A value's body as served.
#[derive(Debug, Clone)]
pub enum Body {
    /// `format: string`: the stored bytes.
    Bytes(Bytes),
    /// `format: hash`: top-level members (name, JSON text), rendered as one JSON object.
    Fields(Vec<(String, String)>),
}

impl Body {
    /// The bytes to send.
    pub fn into_bytes(self) -> Bytes {
        match self {
            Body::Bytes(b) => b,
            Body::Fields(mut f) => {
                f.sort_by(|a, b| a.0.cmp(&b.0));
                let mut s = String::from("{");
                for (i, (name, json)) in f.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    s.push_str(&serde_json::Value::String(name.clone()).to_string());
                    s.push(':');
                    s.push_str(json);
                }
                s.push('}');
                Bytes::from(s)
            }
        }
    }
}

/// A GET answered with a value.
#[derive(Debug, Clone)]
pub struct ReadOutcome {
    pub content_type: String,
    pub body: Body,
    /// The `Cache-Status` header value.
    pub cache_status: String,
    /// The served value's version (its ETag is `"<version>"`): `None` when the answer is not
    /// the stored value (the origin's answer was not stored, the cache was bypassed) or the
    /// value predates versions.
    pub version: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("Redis: {0}")]
    Redis(#[from] StoreError),
    /// Logged in full, answered as a bare 500.
    #[error("{0}")]
    Internal(String),
    /// 404: the origin has no such id, or there is no value and no origin.
    #[error("{detail}")]
    NotFound {
        detail: String,
        cache_status: String,
    },
    /// 502 or 504: the origin failed and no stale value may be served.
    #[error("{detail}")]
    Origin {
        timeout: bool,
        detail: String,
        cache_status: String,
    },
    /// 503: Redis is unavailable, the rule says `on_redis_error: origin`, and the rule's
    /// origin concurrency is in use by other such requests.
    #[error("Redis is unavailable and the origin is at its concurrency limit ({0} requests)")]
    OriginBusy(usize),
}

impl ReadError {
    pub fn cache_status(&self) -> Option<&str> {
        match self {
            ReadError::NotFound { cache_status, .. } | ReadError::Origin { cache_status, .. } => {
                Some(cache_status)
            }
            ReadError::OriginBusy(_) => Some(REDIS_UNAVAILABLE),
            ReadError::Redis(e) if e.is_unavailable() => Some(REDIS_UNAVAILABLE),
            _ => None,
        }
    }
}

/// The read script's ARGV that only depend on the rule.
pub(super) struct ReadArgv {
    /// ARGV[4]: `<lease ms> <stale_while_revalidate ms> <stale_if_error ms> <origin: 1|0>`,
    /// one argument, since a fresh hit does not read it (each argument is a Lua string Redis
    /// makes on every call).
    rule: String,
    /// XFetch β, or `None` when the rule has no origin (nothing can refresh early).
    beta: Option<f64>,
}

impl ReadArgv {
    pub(super) fn new(spec: &crate::policy::cache::Cache) -> Self {
        let origin = spec.origin.is_some();
        Self {
            rule: format!(
                "{} {} {} {}",
                duration_ms(spec.refresh_lease).max(1),
                duration_ms(spec.stale_while_revalidate),
                duration_ms(spec.stale_if_error),
                u8::from(origin),
            ),
            beta: origin.then_some(spec.beta),
        }
    }

    /// ARGV[2], XFetch's gap `-beta * ln(rand)` for `rand` in (0, 1]: the script refreshes a
    /// fresh value early when `delta * gap >= ms left` (Vattani et al.'s
    /// `now - delta * beta * ln(rand) >= expiry`), so it needs neither `rand` nor `beta`.
    /// 0 (never early) without an origin, or when `rand` is 0 (no finite gap).
    fn xfetch_gap(&self, rand: f64) -> f64 {
        match self.beta {
            Some(beta) if rand > 0.0 => {
                let gap = -beta * rand.ln();
                // A gap <= 0 never refreshes early either (ln(1) = 0 gives -0.0: send 0).
                if gap.is_finite() && gap > 0.0 {
                    gap
                } else {
                    0.0
                }
            }
            _ => 0.0,
        }
    }
}

/// One GET.
pub struct ReadRequest<'a> {
    pub id: &'a str,
    /// `?fields=a,b` (format: hash only).
    pub fields: Option<Vec<String>>,
    /// Built by the handler when the rule has a plugin.
    pub facts: Option<RequestFacts>,
    /// How long this GET may wait for Redis in all (the store's command timeout).
    pub redis_budget: Duration,
}

/// The Redis part of one GET: every call it makes (the read, each poll while waiting, the
/// fill's store, a release) draws from one allowance, so a Redis that is slow but answers
/// each call just within the command timeout cannot stretch a GET to several timeouts.
/// Time spent on the origin or sleeping between polls is not drawn.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    pub(super) total: Duration,
    left: Duration,
}

impl Budget {
    pub(super) fn new(total: Duration) -> Self {
        Self { total, left: total }
    }

    /// Runs one Redis call within what is left; past it, `StoreError::Timeout`, which the
    /// rule's `on_redis_error` then decides like any unavailable Redis.
    pub(super) async fn run<T>(
        &mut self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if self.left.is_zero() {
            return Err(StoreError::Timeout(self.total));
        }
        let started = Instant::now();
        // With the whole allowance left (the first call), the store's own bound (the same
        // command timeout) is the deadline: a hit costs no second timer.
        let res = if self.left >= self.total {
            call.await
        } else {
            tokio::time::timeout(self.left, call)
                .await
                .unwrap_or(Err(StoreError::Timeout(self.total)))
        };
        self.left = self.left.saturating_sub(started.elapsed());
        res
    }
}

/// The per-request choices: the plugin's or the rule's.
#[derive(Clone)]
pub(super) struct Choice {
    pub(super) key_id: String,
    pub(super) ttl_ms: u64,
    pub(super) tags: Vec<String>,
}

impl CacheRule {
    /// GET of one id: cache-aside with stampede protection.
    pub async fn get(
        self: &Arc<Self>,
        store: &Store,
        req: ReadRequest<'_>,
    ) -> Result<ReadOutcome, ReadError> {
        check_id(req.id)?;
        let mut req = req;
        if let Some(fields) = &mut req.fields {
            // A member named twice would be answered twice: one JSON object has unique names.
            let mut seen = std::collections::HashSet::new();
            fields.retain(|f| seen.insert(f.clone()));
        }
        if let Some(fields) = &req.fields {
            if self.spec.format != CacheFormat::Hash {
                return Err(ReadError::BadRequest(
                    "`fields` only applies to rules with `format: hash`".into(),
                ));
            }
            if fields.is_empty() || fields.len() > MAX_FIELDS {
                return Err(ReadError::BadRequest(format!(
                    "`fields` must name 1 to {MAX_FIELDS} members"
                )));
            }
            if let Some(f) = fields
                .iter()
                .find(|f| f.is_empty() || f.len() > MAX_FIELD_BYTES)
            {
                return Err(ReadError::BadRequest(format!(
                    "field name `{f}` must be 1 to {MAX_FIELD_BYTES} bytes"
                )));
            }
        }
        let decision = self.plugin_decision(|| {
            req.facts.clone().unwrap_or_else(|| RequestFacts {
                method: "GET".into(),
                id: req.id.to_string(),
                ..RequestFacts::default()
            })
        })?;
        let mut choice = Choice {
            key_id: req.id.to_string(),
            ttl_ms: self.ttl_ms(),
            tags: Vec::new(),
        };
        if let Some(d) = decision {
            if d.bypass {
                self.counters.bypass.increment(1);
                return self.direct(req.id, req.fields.as_deref(), "").await;
            }
            if let Some(k) = d.key {
                choice.key_id = self.plugin_key(k)?;
            }
            if let Some(t) = d.ttl_ms {
                choice.ttl_ms = t;
            }
            choice.tags = d.tags;
        }
        let keys = self.keys.read(&choice.key_id);
        if let Some(hit) = self.near_hit(&keys[0], req.fields.as_deref()) {
            return Ok(hit);
        }
        let mut budget = Budget::new(req.redis_budget);
        match self
            .read_through(store, &mut budget, &req, keys, choice)
            .await
        {
            Err(ReadError::Redis(e)) if e.is_unavailable() => {
                self.without_redis(e, req.id, req.fields.as_deref()).await
            }
            other => other,
        }
    }

    /// Redis could not be asked in time: the rule's `on_redis_error` answers.
    async fn without_redis(
        &self,
        e: StoreError,
        id: &str,
        fields: Option<&[String]>,
    ) -> Result<ReadOutcome, ReadError> {
        tracing::warn!(app = %self.app, rule = %self.rule, error = %e, "Redis unavailable; on_redis_error decides");
        if self.spec.on_redis_error == CacheOnRedisError::Fail || self.origin.is_none() {
            self.counters.redis_error.increment(1);
            return Err(ReadError::Redis(e));
        }
        // Never queue: without Redis there is no collapsing across callers, so every GET
        // would reach the origin; beyond its concurrency the answer is a quick 503.
        let Ok(_permit) = self.without_redis.try_acquire() else {
            self.counters.redis_error.increment(1);
            return Err(ReadError::OriginBusy(super::origin::MAX_IN_FLIGHT));
        };
        self.counters.redis_origin.increment(1);
        self.direct(id, fields, "; detail=redis-unavailable").await
    }

    /// The cache-aside read through Redis: the read script, then serve, fill or wait.
    async fn read_through(
        self: &Arc<Self>,
        store: &Store,
        budget: &mut Budget,
        req: &ReadRequest<'_>,
        keys: Vec<String>,
        choice: Choice,
    ) -> Result<ReadOutcome, ReadError> {
        // Taken before asking Redis: an invalidation arriving meanwhile voids the copy.
        let mut ticket = self.near.as_ref().and_then(|n| n.ticket(&keys[0]));
        let deadline = Instant::now() + self.spec.fill_wait;
        let mut pause = Duration::from_millis(10);
        let mut waited = false;
        if let Some(v) = self
            .probe(store, budget, &keys, req.fields.as_deref())
            .await?
        {
            // What the read script's `hit` below does, first time round.
            self.near_store(&keys[0], &v, ticket.take());
            self.counters.hit.increment(1);
            let status = format!("patternd; hit; ttl={}", ttl_secs(v.left));
            return self.serve(v, status, req.id);
        }
        loop {
            let (token, rand) = random::token_and_unit().map_err(no_entropy)?;
            let reply = {
                // Dropped mid-call (the client went away), the read may have granted this
                // token the lease that nobody will fill: the guard gives it back.
                let mut guard = LeaseGuard {
                    rule: self,
                    store,
                    keys: &keys,
                    token: &token,
                    armed: true,
                };
                let reply = self
                    .read_script(store, budget, &keys, &token, rand, req.fields.as_deref())
                    .await;
                // A call that timed out may still run in Redis and grant it: give it back too.
                guard.armed = matches!(reply, Err(ReadError::Redis(StoreError::Timeout(_))));
                reply?
            };
            let value = reply.value;
            // A waiter past its deadline (the filler is slow or gone) fetches without the
            // lease: the fill script then stores only into an absent value whose lease nobody
            // holds.
            let action = match reply.action {
                Action::Wait if Instant::now() >= deadline => Action::Fetch,
                a => a,
            };
            match action {
                Action::Absent => {
                    return Err(ReadError::NotFound {
                        detail: format!("no cached value for `{}`", req.id),
                        cache_status: "patternd; detail=absent".into(),
                    });
                }
                Action::Hit | Action::Refresh => {
                    let v = self.served_value(value)?;
                    if reply.action == Action::Refresh {
                        self.counters.refresh.increment(1);
                        let fill = Fill::new(req.id, &keys, token, reply.start, choice);
                        self.spawn_fill(store, budget, fill);
                    }
                    if reply.action == Action::Hit && !waited && req.fields.is_none() {
                        self.near_store(&keys[0], &v, ticket.take());
                    }
                    let ttl = ttl_secs(v.left);
                    let status = if waited {
                        self.counters.collapsed.increment(1);
                        format!("patternd; fwd=miss; ttl={ttl}; collapsed")
                    } else {
                        self.counters.hit.increment(1);
                        format!("patternd; hit; ttl={ttl}")
                    };
                    return self.serve(v, status, req.id);
                }
                Action::Stale | Action::StaleRefresh => {
                    let v = self.served_value(value)?;
                    if reply.action == Action::StaleRefresh {
                        let fill = Fill::new(req.id, &keys, token, reply.start, choice);
                        self.spawn_fill(store, budget, fill);
                    }
                    self.counters.stale.increment(1);
                    let status = format!(
                        "patternd; hit; ttl={}; detail=stale-while-revalidate",
                        ttl_secs(v.left)
                    );
                    return self.serve(v, status, req.id);
                }
                Action::StaleError => {
                    let v = self.served_value(value)?;
                    self.counters.stale.increment(1);
                    let status = format!(
                        "patternd; hit; ttl={}; detail=stale-if-error",
                        ttl_secs(v.left)
                    );
                    return self.serve(v, status, req.id);
                }
                Action::Failed => {
                    self.counters.error.increment(1);
                    return Err(ReadError::Origin {
                        timeout: false,
                        detail: format!(
                            "the origin failed moments ago filling `{}` for another request; \
                             it is asked again shortly",
                            req.id
                        ),
                        cache_status: "patternd; fwd=miss; collapsed".into(),
                    });
                }
                // Pass: without the lease; the fill script stores an answer that may be stored
                // only into an absent value whose lease holds nothing or the pass marker.
                Action::Fetch | Action::Pass => {
                    let fill = Fill::new(req.id, &keys, token, reply.start, choice);
                    return self
                        .fill_now(store, budget, fill, value, req.fields.as_deref())
                        .await;
                }
                Action::Wait => {
                    waited = true;
                    let jitter = Duration::from_micros(
                        (random::draw() * pause.as_micros() as f64 * 0.5) as u64,
                    );
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep((pause + jitter).min(left)).await;
                    pause = (pause * 3 / 2).min(Duration::from_millis(100));
                }
            }
        }
    }

    /// The origin directly, nothing read or stored: the plugin said bypass, or (`why` =
    /// `; detail=redis-unavailable`, appended to every `Cache-Status`) Redis is unavailable.
    async fn direct(
        &self,
        id: &str,
        fields: Option<&[String]>,
        why: &str,
    ) -> Result<ReadOutcome, ReadError> {
        let (Some(client), Some(url)) = (&self.origin, self.origin_url(id)) else {
            return Err(ReadError::NotFound {
                detail: format!("the cache was bypassed and the rule has no origin for `{id}`"),
                cache_status: format!("patternd; fwd=bypass{why}"),
            });
        };
        match client.get(&url, self.spec.max_value_bytes).await {
            Ok(r) if r.status == 200 => {
                let cs = format!("patternd; fwd=bypass; fwd-status=200{why}");
                let (ct, body) = self.decode(&r).map_err(|detail| ReadError::Origin {
                    timeout: false,
                    detail,
                    cache_status: cs.clone(),
                })?;
                Ok(ReadOutcome {
                    content_type: ct,
                    body: select(body, fields),
                    cache_status: cs,
                    version: None,
                })
            }
            Ok(r) if r.status == 404 => Err(ReadError::NotFound {
                detail: format!("the origin has no `{id}`"),
                cache_status: format!("patternd; fwd=bypass; fwd-status=404{why}"),
            }),
            Ok(r) => Err(ReadError::Origin {
                timeout: false,
                detail: format!("the origin answered {}", r.status),
                cache_status: format!("patternd; fwd=bypass; fwd-status={}{why}", r.status),
            }),
            Err(e) => Err(ReadError::Origin {
                timeout: e.is_timeout(),
                detail: e.to_string(),
                cache_status: format!("patternd; fwd=bypass{why}"),
            }),
        }
    }

    async fn read_script(
        &self,
        store: &Store,
        budget: &mut Budget,
        keys: &[String],
        token: &str,
        rand: f64,
        fields: Option<&[String]>,
    ) -> Result<ReadReply, ReadError> {
        let gap = self.read_argv.xfetch_gap(rand).to_string();
        let mut args: Vec<&[u8]> = Vec::with_capacity(4 + fields.map_or(0, <[String]>::len));
        args.push(match fields {
            Some(_) => b"fields",
            // `format: string` values are one member: the script reads it with the meta
            // fields in one HMGET instead of walking the whole hash.
            None if self.spec.format == CacheFormat::String => b"body",
            None => b"all",
        });
        args.extend_from_slice(&[
            gap.as_bytes(),
            token.as_bytes(),
            self.read_argv.rule.as_bytes(),
        ]);
        if let Some(f) = fields {
            args.extend(f.iter().map(String::as_bytes));
        }
        let raw: Vec<Value> = match self.read_batcher(store) {
            Some(b) => {
                let call = b.call(keys.to_vec(), args.iter().map(|a| a.to_vec()).collect());
                let one = budget.run(call).await?;
                Vec::<Value>::from_redis_value(one)
                    .map_err(|e| ReadError::from(StoreError::Redis(e.into())))?
            }
            None => {
                budget
                    .run(store.eval(&self.scripts.read, keys, &args))
                    .await?
            }
        };
        reply::read(raw, self.spec.format).map_err(|e| self.bad_reply(&e))
    }

    /// The value of a fresh hit from the hit batch (`lua/cache/hit_batch.lua`), or None when
    /// the read script must answer: the value is not a fresh untagged hit, or the read is not
    /// one the hit batch takes (`fields`, `format: hash`, `write: behind`, or reads that are
    /// not batched: batching off, a cluster). The hit batch answers a hit as the read script
    /// would at that instant and changes nothing, so asking it first changes no answer; it
    /// takes the value's key and the XFetch gap only, instead of the read's three keys and
    /// four arguments (docs/performance.md, fourth round).
    async fn probe(
        &self,
        store: &Store,
        budget: &mut Budget,
        keys: &[String],
        fields: Option<&[String]>,
    ) -> Result<Option<Stored>, ReadError> {
        if fields.is_some()
            || self.spec.format != CacheFormat::String
            || self.spec.write == WriteMode::Behind
        {
            return Ok(None);
        }
        let Some(batcher) = self.hit_batcher(store) else {
            return Ok(None);
        };
        let gap = self.read_argv.xfetch_gap(random::draw()).to_string();
        let call = batcher.call(vec![keys[0].clone()], vec![gap.into_bytes()]);
        let one = budget.run(call).await?;
        reply::hit(one).map_err(|e| self.bad_reply(&e))
    }

    /// The batcher of this rule's hit batch (see `CacheRule::hit_batcher`).
    fn hit_batcher(&self, store: &Store) -> Option<&Batcher> {
        let layout = Layout::Fixed {
            width: crate::compile::cache::HIT_REPLY_WIDTH,
        };
        started(&self.hit_batcher, store, &self.scripts.hit_batch, layout)
    }

    /// The batcher of this rule's reads (see `CacheRule::read_batcher`).
    fn read_batcher(&self, store: &Store) -> Option<&Batcher> {
        started(
            &self.read_batcher,
            store,
            &self.scripts.read_batch,
            Layout::Counted,
        )
    }

    /// The value of an action that serves one (`reply::read` checked it came with one).
    fn served_value(&self, value: Option<Stored>) -> Result<Stored, ReadError> {
        value.ok_or_else(|| self.bad_reply(&ReplyError::Missing(2)))
    }

    fn bad_reply(&self, e: &ReplyError) -> ReadError {
        tracing::error!(app = %self.app, rule = %self.rule, error = %e, "unexpected cache read script reply");
        ReadError::Internal("unexpected cache read script reply".into())
    }

    /// The `Content-Type` a stored value is served with (`ct` as stored).
    pub(super) fn served_content_type(&self, ct: String) -> String {
        if self.spec.format == CacheFormat::Hash {
            "application/json".to_string()
        } else if ct.is_empty() {
            "application/octet-stream".to_string()
        } else {
            ct
        }
    }

    /// A stored value as an answer: a negative entry is a 404.
    pub(super) fn serve(
        &self,
        v: Stored,
        cache_status: String,
        id: &str,
    ) -> Result<ReadOutcome, ReadError> {
        if v.st != "200" {
            return Err(ReadError::NotFound {
                detail: format!("the origin has no `{id}` (cached)"),
                cache_status,
            });
        }
        // Taken over, not cloned: the value is served once.
        let version = (!v.version.is_empty()).then_some(v.version);
        Ok(ReadOutcome {
            content_type: self.served_content_type(v.ct),
            body: v.body,
            cache_status,
            version,
        })
    }
}

/// The batcher in `cell`, started on first use; None when the store does not batch.
fn started<'a>(
    cell: &'a OnceLock<Option<Batcher>>,
    store: &Store,
    script: &Arc<Script>,
    layout: Layout,
) -> Option<&'a Batcher> {
    cell.get_or_init(|| Batcher::start(store, script.clone(), layout))
        .as_ref()
}

/// `format: hash` with `?fields=`: only those members.
pub(super) fn select(body: Body, fields: Option<&[String]>) -> Body {
    match (body, fields) {
        (Body::Fields(all), Some(want)) => Body::Fields(
            all.into_iter()
                .filter(|(n, _)| want.iter().any(|w| w == n))
                .collect(),
        ),
        (b, _) => b,
    }
}

/// No lease token or jitter: the OS has no entropy source (see `random`), a bare 500.
fn no_entropy(e: random::NoEntropy) -> ReadError {
    ReadError::Internal(format!("no secure random source: {e}"))
}

/// RFC 9211 `ttl`: whole seconds of freshness left, negative when stale.
pub(super) fn ttl_secs(left_ms: i64) -> i64 {
    left_ms.div_euclid(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gap is XFetch's `-beta * ln(rand)`; without an origin, or for a draw of 0 (no
    /// finite gap), it is 0: the script then never refreshes a fresh value early.
    #[test]
    fn the_xfetch_gap() {
        let argv = |beta| ReadArgv {
            rule: String::new(),
            beta,
        };
        let with = argv(Some(2.0));
        assert!((with.xfetch_gap(0.5) - 2.0 * std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(with.xfetch_gap(1.0), 0.0);
        assert_eq!(with.xfetch_gap(0.0), 0.0);
        assert_eq!(argv(None).xfetch_gap(0.5), 0.0);
        assert_eq!(argv(Some(0.0)).xfetch_gap(0.5), 0.0);
    }

    /// Calls that each finish within the command timeout still end the GET once they add up
    /// to it; a call after that is not even started.
    #[tokio::test]
    async fn the_budget_bounds_the_sum_of_calls() {
        let total = Duration::from_secs(1);
        let mut b = Budget::new(total);
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok::<_, StoreError>(1)
        };
        assert_eq!(b.run(slow()).await.ok(), Some(1));
        assert_eq!(b.run(slow()).await.ok(), Some(1));
        // About 200 ms left: the third is cut there.
        assert!(matches!(b.run(slow()).await, Err(StoreError::Timeout(t)) if t == total));
        let mut called = false;
        let r = b
            .run(async {
                called = true;
                Ok::<_, StoreError>(1)
            })
            .await;
        assert!(matches!(r, Err(StoreError::Timeout(_))));
        assert!(!called);
    }
}
