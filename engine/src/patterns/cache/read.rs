//! The read side of a cache rule: GET (cache-aside with stampede protection), DELETE and tag
//! invalidation.
//!
//! One read script call decides everything for a GET (hit, miss, early XFetch refresh, stale,
//! who holds the refresh lease); the engine then serves, fills, or waits. Waiters poll the read
//! script with short jittered sleeps (growing from 10 ms to 100 ms) until the fill lands or
//! `fill_wait` passes: each poll is one EVALSHA of a few HMGETs, so 200 waiters cost Redis a
//! few thousand cheap calls per second for the length of one origin fetch.
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use redis::Value;

use super::freshness::{self, Bounds, Uncacheable};
use super::origin::{MAX_TAGS, OriginError, OriginResponse};
use super::{CacheRule, NearValue, duration_ms};
use crate::patterns::{InputError, check_id, random};
use crate::plugin::{PluginError, RequestFacts};
use crate::policy::cache::CacheFormat;
use crate::policy::cache::CacheOnRedisError;
use crate::store::near::Ticket;
use crate::store::{Store, StoreError};

/// At most this many `fields` per GET, and tags per invalidation.
pub const MAX_FIELDS: usize = 64;
pub const MAX_INVALIDATE_TAGS: usize = 100;
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
    lease_ms: String,
    swr_ms: String,
    beta: String,
    sie_ms: String,
}

impl ReadArgv {
    pub(super) fn new(spec: &crate::policy::cache::Cache) -> Self {
        Self {
            lease_ms: duration_ms(spec.refresh_lease).max(1).to_string(),
            swr_ms: duration_ms(spec.stale_while_revalidate).to_string(),
            beta: spec.beta.to_string(),
            sie_ms: duration_ms(spec.stale_if_error).to_string(),
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
    total: Duration,
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

/// What the read script said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Absent,
    Hit,
    Refresh,
    Stale,
    StaleRefresh,
    /// Past stale_while_revalidate, inside stale_if_error, and the origin failed moments ago.
    StaleError,
    /// No usable value, and the origin failed moments ago on another caller's fill.
    Failed,
    Fetch,
    Wait,
    /// No value, and the origin's last answer may not be stored: ask it without waiting.
    Pass,
}

/// A value the read script returned.
#[derive(Debug, Clone)]
struct Stored {
    st: String,
    ct: String,
    /// Ms of freshness left at the read (negative: stale).
    left: i64,
    /// Ms the value's fill took (XFetch's recompute time; 0 for written values).
    delta: i64,
    body: Body,
    /// `ver` ('' for a value stored before versions existed).
    version: String,
}

impl Stored {
    fn version(&self) -> Option<String> {
        (!self.version.is_empty()).then(|| self.version.clone())
    }
}

struct Reply {
    action: Action,
    /// Redis TIME (µs) of the read: a fill that follows passes it to the fill script.
    start: String,
    value: Option<Stored>,
}

/// The per-request choices: the plugin's or the rule's.
#[derive(Clone)]
struct Choice {
    key_id: String,
    ttl_ms: u64,
    tags: Vec<String>,
}

/// What a fill got from the origin. `stored`: the version it was stored as, if it was;
/// `uncacheable`: why the origin's own header fields kept it from being stored
/// (`ttl_from_origin`), as a `Cache-Status` detail.
enum Fetched {
    Value {
        content_type: String,
        body: Body,
        stored: Option<String>,
        uncacheable: Option<&'static str>,
    },
    NotFound {
        stored: bool,
        uncacheable: Option<&'static str>,
    },
}

/// How long a fill's value lives: fresh for `ttl_ms`, then kept `stale_ms`; `windows`: the
/// value's own (stale_while_revalidate, stale_if_error) in ms, from the origin's answer.
#[derive(Debug, Clone, Copy)]
struct FillLife {
    ttl_ms: u64,
    stale_ms: u64,
    windows: Option<(u64, u64)>,
}

/// What the fill script stores: `st` '200', '404', or 'pass' (nothing; see `cache_fill.lua`).
struct FillValue<'a> {
    st: &'a str,
    ct: &'a str,
    life: FillLife,
    delta_ms: u64,
    tags: &'a [String],
    body: Option<&'a Body>,
}

/// `Cache-Status` parameters after `fwd-status` for a fill's answer: `; stored`, or the
/// reason it was not stored.
fn stored_param(stored: bool, uncacheable: Option<&str>) -> String {
    match (stored, uncacheable) {
        (true, _) => "; stored".to_string(),
        (false, Some(why)) => format!("; detail={why}"),
        (false, None) => String::new(),
    }
}

enum FetchError {
    /// Timeout or unreachable: stale_if_error applies.
    Down(OriginError),
    /// A 5xx: stale_if_error applies.
    Failed(u16),
    /// Anything else (another status, too large, not a JSON object): no stale.
    Bad(String),
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
        let keys = self.read_keys(&choice.key_id);
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
                    let Some(v) = value else {
                        return Err(self.bad_reply());
                    };
                    if reply.action == Action::Refresh {
                        self.counters.refresh.increment(1);
                        self.spawn_fill(
                            store,
                            budget,
                            req.id,
                            keys.clone(),
                            (token, reply.start),
                            choice,
                        );
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
                    let Some(v) = value else {
                        return Err(self.bad_reply());
                    };
                    if reply.action == Action::StaleRefresh {
                        self.spawn_fill(
                            store,
                            budget,
                            req.id,
                            keys.clone(),
                            (token, reply.start),
                            choice,
                        );
                    }
                    self.counters.stale.increment(1);
                    let status = format!(
                        "patternd; hit; ttl={}; detail=stale-while-revalidate",
                        ttl_secs(v.left)
                    );
                    return self.serve(v, status, req.id);
                }
                Action::StaleError => {
                    let Some(v) = value else {
                        return Err(self.bad_reply());
                    };
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
                    return self
                        .fill_now(
                            store,
                            budget,
                            req.id,
                            &keys,
                            (token, reply.start),
                            value,
                            &choice,
                            &req.fields,
                        )
                        .await;
                }
                Action::Wait => {
                    waited = true;
                    let jitter = Duration::from_micros(
                        (random::unit().map_err(no_entropy)? * pause.as_micros() as f64 * 0.5)
                            as u64,
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

    /// This caller fills (it holds the lease, or waited out `fill_wait`), serving a stale
    /// value if the origin fails inside `stale_if_error`.
    #[allow(clippy::too_many_arguments)]
    async fn fill_now(
        self: &Arc<Self>,
        store: &Store,
        budget: &Budget,
        id: &str,
        keys: &[String],
        (token, start): (String, String),
        stale: Option<Stored>,
        choice: &Choice,
        fields: &Option<Vec<String>>,
    ) -> Result<ReadOutcome, ReadError> {
        let fwd = if stale.as_ref().is_some_and(|s| s.st == "200") {
            "stale"
        } else {
            "miss"
        };
        let started = Instant::now();
        let sie = i64::try_from(duration_ms(self.spec.stale_if_error)).unwrap_or(0);
        // A failure holds the lease as a marker, so the callers waiting for this fill (and the
        // next ones for a while) are served stale at once, or share the failure, instead of
        // each asking the failing origin again.
        let has_stale = stale
            .as_ref()
            .is_some_and(|s| s.st == "200" && -s.left <= sie);
        let hold = Some(self.failure_hold_ms(has_stale));
        // The fill runs in a task of its own, which this GET awaits: if the client goes away
        // (axum drops this future), the fill still completes, so the callers waiting for it
        // get the value instead of waiting out `fill_wait` behind an orphaned lease.
        let fill = {
            let (this, store, id, keys) =
                (self.clone(), store.clone(), id.to_string(), keys.to_vec());
            let (choice, mut budget) = (choice.clone(), *budget);
            tokio::spawn(async move {
                this.fetch_and_store(
                    &store,
                    &mut budget,
                    &id,
                    &keys,
                    (&token, &start),
                    &choice,
                    hold,
                )
                .await
            })
        };
        let fetched = fill.await.map_err(|e| {
            tracing::error!(app = %self.app, rule = %self.rule, error = %e, "cache fill task failed");
            ReadError::Internal(format!("cache fill task failed: {e}"))
        })?;
        match fetched {
            Ok(Fetched::Value {
                content_type,
                body,
                stored,
                uncacheable,
            }) => {
                self.counters.miss.increment(1);
                let param = stored_param(stored.is_some(), uncacheable);
                Ok(ReadOutcome {
                    content_type,
                    body: select(body, fields.as_deref()),
                    cache_status: format!("patternd; fwd={fwd}; fwd-status=200{param}"),
                    version: stored,
                })
            }
            Ok(Fetched::NotFound {
                stored,
                uncacheable,
            }) => {
                self.counters.negative.increment(1);
                let stored = stored_param(stored, uncacheable);
                Err(ReadError::NotFound {
                    detail: format!("the origin has no `{id}`"),
                    cache_status: format!("patternd; fwd={fwd}; fwd-status=404{stored}"),
                })
            }
            Err(e) => {
                let fwd_status = match &e {
                    FetchError::Failed(s) => format!("; fwd-status={s}"),
                    _ => String::new(),
                };
                let elapsed = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
                let usable = matches!(e, FetchError::Down(_) | FetchError::Failed(_));
                if usable
                    && let Some(s) = stale
                    && s.st == "200"
                    && -(s.left - elapsed) <= sie
                {
                    self.counters.stale.increment(1);
                    let status = format!(
                        "patternd; fwd=stale{fwd_status}; ttl={}; detail=stale-if-error",
                        ttl_secs(s.left - elapsed)
                    );
                    return self.serve(s, status, id);
                }
                self.counters.error.increment(1);
                let (timeout, detail) = match e {
                    FetchError::Down(e) => (e.is_timeout(), e.to_string()),
                    FetchError::Failed(s) => (false, format!("the origin answered {s}")),
                    FetchError::Bad(d) => (false, d),
                };
                Err(ReadError::Origin {
                    timeout,
                    detail,
                    cache_status: format!("patternd; fwd={fwd}{fwd_status}"),
                })
            }
        }
    }

    /// Background refresh (early XFetch or stale_while_revalidate): the caller was already
    /// answered; failures only release the lease and log.
    fn spawn_fill(
        self: &Arc<Self>,
        store: &Store,
        budget: &Budget,
        id: &str,
        keys: Vec<String>,
        (token, start): (String, String),
        choice: Choice,
    ) {
        let this = self.clone();
        let store = store.clone();
        let id = id.to_string();
        // Its own allowance: the caller was answered already.
        let mut budget = Budget::new(budget.total);
        tokio::spawn(async move {
            // The value is still servable (fresh or stale), so with stale_if_error a failure
            // holds the lease: no other refresh hammers the failing origin for a while.
            let hold = (!this.spec.stale_if_error.is_zero()).then(|| this.failure_hold_ms(true));
            if let Err(e) = this
                .fetch_and_store(
                    &store,
                    &mut budget,
                    &id,
                    &keys,
                    (&token, &start),
                    &choice,
                    hold,
                )
                .await
            {
                let why = match e {
                    FetchError::Down(e) => e.to_string(),
                    FetchError::Failed(s) => format!("the origin answered {s}"),
                    FetchError::Bad(d) => d,
                };
                tracing::warn!(app = %this.app, rule = %this.rule, error = %why, "background cache refresh failed");
            }
        });
    }

    /// How long the failure marker stays after a failed fill: with a stale value to serve,
    /// refresh_lease (one probe of the origin per period); without, only as long as callers
    /// wait for a fill (min(refresh_lease, fill_wait)), since it turns reads into 502s.
    fn failure_hold_ms(&self, has_stale: bool) -> u64 {
        let lease = duration_ms(self.spec.refresh_lease);
        let ms = if has_stale {
            lease
        } else {
            lease.min(duration_ms(self.spec.fill_wait))
        };
        ms.max(1)
    }

    /// Fetches from the origin and stores the answer with the fill script. On a failure the
    /// lease is released, so the next caller may try at once; or, with `hold_on_failure` and
    /// an origin that is down or failing, turned into the failure marker for that many ms.
    /// `start` is the Redis TIME of the read this fill follows (see `cache_fill.lua`).
    #[allow(clippy::too_many_arguments)]
    async fn fetch_and_store(
        self: &Arc<Self>,
        store: &Store,
        budget: &mut Budget,
        id: &str,
        keys: &[String],
        (token, start): (&str, &str),
        choice: &Choice,
        hold_on_failure: Option<u64>,
    ) -> Result<Fetched, FetchError> {
        let (Some(client), Some(url)) = (&self.origin, self.origin_url(id)) else {
            return Err(FetchError::Bad("the rule has no origin".into()));
        };
        let res = client.get(&url, self.spec.max_value_bytes).await;
        let failure = match res {
            Ok(r) if r.status == 200 => match self.decode(&r) {
                Ok((ct, body)) => {
                    let life = match self.origin_lifetimes(&r, choice.ttl_ms, true) {
                        Ok(l) => l,
                        Err(why) => {
                            self.pass(store, budget, keys, token, start).await;
                            return Ok(Fetched::Value {
                                content_type: ct,
                                body,
                                stored: None,
                                uncacheable: Some(why.detail()),
                            });
                        }
                    };
                    // The plugin's tags first: when there are too many, the origin's are cut.
                    let mut tags: Vec<String> =
                        Vec::with_capacity(choice.tags.len() + r.tags.len());
                    for t in choice.tags.iter().chain(&r.tags) {
                        if !tags.contains(t) {
                            tags.push(t.clone());
                        }
                    }
                    tags.truncate(MAX_TAGS);
                    let delta = duration_ms(r.elapsed).max(1);
                    let stored = self
                        .fill_script(
                            store,
                            budget,
                            keys,
                            (token, start),
                            FillValue {
                                st: "200",
                                ct: &ct,
                                life,
                                delta_ms: delta,
                                tags: &tags,
                                body: Some(&body),
                            },
                        )
                        .await;
                    return Ok(Fetched::Value {
                        content_type: ct,
                        body,
                        stored,
                        uncacheable: None,
                    });
                }
                Err(detail) => FetchError::Bad(detail),
            },
            Ok(r) if r.status == 404 => {
                let Some(neg) = self.spec.negative_ttl else {
                    self.release(store, budget, keys, token, None).await;
                    return Ok(Fetched::NotFound {
                        stored: false,
                        uncacheable: None,
                    });
                };
                let life = match self.origin_lifetimes(&r, duration_ms(neg), false) {
                    Ok(l) => l,
                    Err(why) => {
                        self.pass(store, budget, keys, token, start).await;
                        return Ok(Fetched::NotFound {
                            stored: false,
                            uncacheable: Some(why.detail()),
                        });
                    }
                };
                let stored = self
                    .fill_script(
                        store,
                        budget,
                        keys,
                        (token, start),
                        FillValue {
                            st: "404",
                            ct: "",
                            life,
                            delta_ms: 0,
                            tags: &[],
                            body: None,
                        },
                    )
                    .await
                    .is_some();
                return Ok(Fetched::NotFound {
                    stored,
                    uncacheable: None,
                });
            }
            Ok(r) if r.status >= 500 => FetchError::Failed(r.status),
            Ok(r) => FetchError::Bad(format!(
                "the origin answered {}; only 200 and 404 can be cached",
                r.status
            )),
            Err(OriginError::TooLarge { max }) => FetchError::Bad(format!(
                "the origin's value is larger than max_value_bytes ({max} bytes); not stored"
            )),
            Err(e) => FetchError::Down(e),
        };
        let hold = hold_on_failure
            .filter(|_| matches!(failure, FetchError::Down(_) | FetchError::Failed(_)));
        self.release(store, budget, keys, token, hold).await;
        Err(failure)
    }

    /// How long an origin answer is kept: the rule's `ttl` (`ttl_ms`: the rule's, the plugin's
    /// or negative_ttl) and stale windows, or with `ttl_from_origin` what the answer's own
    /// header fields allow within those (`Err`: not to be stored). `own_windows`: the answer
    /// is a value (a negative entry has no stale windows).
    fn origin_lifetimes(
        &self,
        r: &OriginResponse,
        ttl_ms: u64,
        own_windows: bool,
    ) -> Result<FillLife, Uncacheable> {
        let (swr, sie) = if own_windows {
            (
                duration_ms(self.spec.stale_while_revalidate),
                duration_ms(self.spec.stale_if_error),
            )
        } else {
            (0, 0)
        };
        if !self.spec.ttl_from_origin {
            return Ok(FillLife {
                ttl_ms,
                stale_ms: if own_windows { self.stale_ms() } else { 0 },
                windows: None,
            });
        }
        let l = freshness::lifetimes(
            &r.freshness,
            Bounds {
                ttl_ms,
                swr_ms: swr,
                sie_ms: sie,
            },
        )?;
        Ok(FillLife {
            ttl_ms: l.ttl_ms,
            stale_ms: l.swr_ms.max(l.sie_ms),
            windows: own_windows.then_some((l.swr_ms, l.sie_ms)),
        })
    }

    /// The origin's answer may not be stored: the fill script drops the value this fill would
    /// have replaced and leaves the pass marker for refresh_lease (see `cache_fill.lua`).
    async fn pass(
        self: &Arc<Self>,
        store: &Store,
        budget: &mut Budget,
        keys: &[String],
        token: &str,
        start: &str,
    ) {
        let hold = duration_ms(self.spec.refresh_lease).max(1);
        self.fill_script(
            store,
            budget,
            keys,
            (token, start),
            FillValue {
                st: "pass",
                ct: "",
                life: FillLife {
                    ttl_ms: hold,
                    stale_ms: 0,
                    windows: None,
                },
                delta_ms: 0,
                tags: &[],
                body: None,
            },
        )
        .await;
    }

    /// The origin's answer as this rule stores it: `format: hash` needs a JSON object.
    fn decode(&self, r: &OriginResponse) -> Result<(String, Body), String> {
        match self.spec.format {
            CacheFormat::String => Ok((
                r.content_type
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".into()),
                Body::Bytes(r.body.clone()),
            )),
            CacheFormat::Hash => {
                let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| {
                    format!("the rule has `format: hash` but the origin's body is not JSON: {e}")
                })?;
                let serde_json::Value::Object(map) = v else {
                    return Err(
                        "the rule has `format: hash` but the origin's body is not a JSON object"
                            .into(),
                    );
                };
                Ok((
                    "application/json".into(),
                    Body::Fields(map.into_iter().map(|(k, v)| (k, v.to_string())).collect()),
                ))
            }
        }
    }

    /// Runs the fill script; a Redis failure is logged and reported as not stored (the caller
    /// still serves what the origin said), and the lease is given back in the background so
    /// the next caller fills at once instead of waiting for it to expire. Returns the version
    /// the value was stored as, if it was.
    async fn fill_script(
        self: &Arc<Self>,
        store: &Store,
        budget: &mut Budget,
        keys: &[String],
        (token, start): (&str, &str),
        v: FillValue<'_>,
    ) -> Option<String> {
        let (swr, sie) = match v.life.windows {
            Some((a, b)) => (a.to_string(), b.to_string()),
            None => (String::new(), String::new()),
        };
        let nums = [
            v.life.ttl_ms.to_string(),
            v.life.stale_ms.to_string(),
            v.delta_ms.to_string(),
            self.marker_ms().to_string(),
            v.tags.len().to_string(),
        ];
        let mut args: Vec<&[u8]> = vec![
            token.as_bytes(),
            self.tag_prefix().as_bytes(),
            v.st.as_bytes(),
            v.ct.as_bytes(),
            nums[0].as_bytes(),
            nums[1].as_bytes(),
            nums[2].as_bytes(),
            start.as_bytes(),
            nums[3].as_bytes(),
            swr.as_bytes(),
            sie.as_bytes(),
            nums[4].as_bytes(),
        ];
        args.extend(v.tags.iter().map(String::as_bytes));
        match v.body {
            None => args.push(b"-"),
            Some(Body::Bytes(b)) => {
                args.push(b"b");
                args.push(b);
            }
            Some(Body::Fields(f)) => {
                args.push(b"f");
                for (n, val) in f {
                    args.push(n.as_bytes());
                    args.push(val.as_bytes());
                }
            }
        }
        match budget
            .run(store.eval::<Vec<Value>>(&self.scripts.fill, keys, &args))
            .await
        {
            Ok(reply) => match reply.as_slice() {
                [Value::Int(1), ver, ..] => into_text(ver.clone()),
                _ => None,
            },
            Err(e) => {
                tracing::warn!(app = %self.app, rule = %self.rule, error = %e, "cache fill could not be stored; giving the lease back");
                // If the call did run (a timeout), the lease is no longer this token's and
                // the release does nothing.
                self.release_later(store, keys, token, None);
                None
            }
        }
    }

    /// Gives the lease back, or (`hold_ms`) turns it into the failure marker for that long,
    /// within the GET's Redis budget; when that runs out first, in the background.
    async fn release(
        self: &Arc<Self>,
        store: &Store,
        budget: &mut Budget,
        keys: &[String],
        token: &str,
        hold_ms: Option<u64>,
    ) {
        let Some(lease) = keys.get(1) else { return };
        let hold = hold_ms.map(|ms| ms.to_string());
        let mut args: Vec<&[u8]> = vec![token.as_bytes()];
        if let Some(h) = &hold {
            args.push(h.as_bytes());
        }
        let res = budget
            .run(store.eval::<i64>(&self.scripts.release, std::slice::from_ref(lease), &args))
            .await;
        match res {
            Ok(_) => {}
            Err(StoreError::Timeout(_)) => self.release_later(store, keys, token, hold_ms),
            Err(e) => {
                tracing::warn!(app = %self.app, rule = %self.rule, error = %e, "could not release a cache lease; it expires by itself");
            }
        }
    }

    /// `release` in a task of its own, bounded by the store's command timeout only: for a GET
    /// that was dropped or whose budget ran out. Best effort: if it fails, or reaches Redis
    /// before the call that took the lease, the lease expires by itself (`refresh_lease`).
    fn release_later(
        self: &Arc<Self>,
        store: &Store,
        keys: &[String],
        token: &str,
        hold_ms: Option<u64>,
    ) {
        let (Some(lease), Ok(rt)) = (keys.get(1), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let (this, store, lease, token) = (
            self.clone(),
            store.clone(),
            lease.clone(),
            token.to_string(),
        );
        rt.spawn(async move {
            let hold = hold_ms.map(|ms| ms.to_string());
            let mut args: Vec<&[u8]> = vec![token.as_bytes()];
            if let Some(h) = &hold {
                args.push(h.as_bytes());
            }
            if let Err(e) = store
                .eval::<i64>(&this.scripts.release, std::slice::from_ref(&lease), &args)
                .await
            {
                tracing::warn!(app = %this.app, rule = %this.rule, error = %e, "could not release a cache lease; it expires by itself");
            }
        });
    }

    async fn read_script(
        &self,
        store: &Store,
        budget: &mut Budget,
        keys: &[String],
        token: &str,
        rand: f64,
        fields: Option<&[String]>,
    ) -> Result<Reply, ReadError> {
        let rand = rand.to_string();
        let c = &self.read_argv;
        let mut args: Vec<&[u8]> = Vec::with_capacity(9 + fields.map_or(0, <[String]>::len));
        args.extend_from_slice(&[
            self.tag_prefix().as_bytes(),
            rand.as_bytes(),
            token.as_bytes(),
            c.lease_ms.as_bytes(),
            c.swr_ms.as_bytes(),
            c.beta.as_bytes(),
            if self.origin.is_some() { b"1" } else { b"0" },
            c.sie_ms.as_bytes(),
        ]);
        match fields {
            Some(f) => {
                args.push(b"fields");
                args.extend(f.iter().map(String::as_bytes));
            }
            // `format: string` values are one member: the script reads it with the meta
            // fields in one HMGET instead of walking the whole hash.
            None if self.spec.format == CacheFormat::String => args.push(b"body"),
            None => args.push(b"all"),
        }
        let raw: Vec<Value> = budget
            .run(store.eval(&self.scripts.read, keys, &args))
            .await?;
        self.parse_reply(raw).ok_or_else(|| self.bad_reply())
    }

    /// The read script's reply, taking its buffers over (the body is not copied).
    fn parse_reply(&self, raw: Vec<Value>) -> Option<Reply> {
        let action = match bytes(raw.first()?)? {
            b"absent" => Action::Absent,
            b"hit" => Action::Hit,
            b"refresh" => Action::Refresh,
            b"stale" => Action::Stale,
            b"stale_refresh" => Action::StaleRefresh,
            b"stale_error" => Action::StaleError,
            b"failed" => Action::Failed,
            b"fetch" => Action::Fetch,
            b"wait" => Action::Wait,
            b"pass" => Action::Pass,
            _ => return None,
        };
        if raw.len() < 8 {
            return Some(Reply {
                action,
                start: into_text(raw.into_iter().nth(1)?)?,
                value: None,
            });
        }
        let left = match raw.get(4)? {
            Value::Int(n) => *n,
            other => std::str::from_utf8(bytes(other)?).ok()?.parse().ok()?,
        };
        let delta = match raw.get(6) {
            Some(Value::Int(n)) => *n,
            _ => 0,
        };
        let mut it = raw.into_iter();
        it.next(); // the action
        let start = into_text(it.next()?)?;
        let st = into_text(it.next()?)?;
        let ct = into_text(it.next()?)?;
        it.next(); // left
        let body = it.next()?;
        it.next(); // delta
        let version = into_text(it.next()?)?;
        let body = match self.spec.format {
            CacheFormat::String => Body::Bytes(into_bytes(body)?),
            CacheFormat::Hash => {
                let mut f = Vec::with_capacity(it.len() / 2);
                while let (Some(n), Some(v)) = (it.next(), it.next()) {
                    f.push((into_text(n)?, into_text(v)?));
                }
                Body::Fields(f)
            }
        };
        Some(Reply {
            action,
            start,
            value: Some(Stored {
                st,
                ct,
                left,
                delta,
                body,
                version,
            }),
        })
    }

    /// A near cache hit, if this engine holds a live copy.
    fn near_hit(&self, key: &str, fields: Option<&[String]>) -> Option<ReadOutcome> {
        let v = self.near.as_ref()?.get(key)?;
        self.counters.hit.increment(1);
        self.counters.near_hit.increment(1);
        let left = v.fresh_until.saturating_duration_since(Instant::now());
        let left = i64::try_from(left.as_millis()).unwrap_or(i64::MAX);
        Some(ReadOutcome {
            content_type: v.content_type,
            body: match fields {
                Some(f) => select(v.body, Some(f)),
                None => v.body,
            },
            cache_status: format!("patternd; hit; ttl={}; detail=near", ttl_secs(left)),
            version: v.version,
        })
    }

    /// Keeps a fresh value read from Redis in the near cache, until the earlier of the rule's
    /// `max_age` and the start of the XFetch window (three recompute times before expiry, where
    /// early refreshes become likely): reads near expiry go to Redis, so the read script can
    /// still refresh a hot key early, once.
    fn near_store(&self, key: &str, v: &Stored, ticket: Option<Ticket>) {
        let (Some(near), Some(ticket), Some(spec)) = (&self.near, ticket, &self.spec.near_cache)
        else {
            return;
        };
        if v.st != "200" || v.left <= 0 {
            return;
        }
        let margin = (v.delta.max(0) as f64 * self.spec.beta * 3.0).ceil() as i64;
        let usable = u64::try_from(v.left.saturating_sub(margin)).unwrap_or(0);
        let valid_for = Duration::from_millis(usable).min(spec.max_age);
        let content_type = if self.spec.format == CacheFormat::Hash {
            "application/json".to_string()
        } else if v.ct.is_empty() {
            "application/octet-stream".to_string()
        } else {
            v.ct.clone()
        };
        let fresh_until = Instant::now() + Duration::from_millis(v.left.unsigned_abs());
        near.insert(
            key,
            NearValue {
                content_type,
                body: v.body.clone(),
                version: v.version(),
                fresh_until,
            },
            valid_for,
            ticket,
        );
    }

    fn bad_reply(&self) -> ReadError {
        tracing::error!(app = %self.app, rule = %self.rule, "unexpected cache read script reply");
        ReadError::Internal("unexpected cache read script reply".into())
    }

    /// A stored value as an answer: a negative entry is a 404.
    fn serve(&self, v: Stored, cache_status: String, id: &str) -> Result<ReadOutcome, ReadError> {
        if v.st != "200" {
            return Err(ReadError::NotFound {
                detail: format!("the origin has no `{id}` (cached)"),
                cache_status,
            });
        }
        let version = v.version();
        let content_type = if self.spec.format == CacheFormat::Hash {
            "application/json".to_string()
        } else if v.ct.is_empty() {
            "application/octet-stream".to_string()
        } else {
            v.ct
        };
        Ok(ReadOutcome {
            content_type,
            body: v.body,
            cache_status,
            version,
        })
    }

    /// DELETE of one id: its value, its related ids' values, and their leases, in one script.
    /// Returns (values dropped, values kept because their write-behind write is still
    /// pending: see `cache_delete.lua`).
    pub async fn delete(
        &self,
        store: &Store,
        id: &str,
        facts: Option<RequestFacts>,
    ) -> Result<(i64, i64), ReadError> {
        check_id(id)?;
        let decision = self.plugin_decision(|| {
            facts.unwrap_or_else(|| RequestFacts {
                method: "DELETE".into(),
                id: id.to_string(),
                ..RequestFacts::default()
            })
        })?;
        let key_id = match decision.and_then(|d| d.key) {
            Some(k) => self.plugin_key(k)?,
            None => id.to_string(),
        };
        let mut keys = self.id_keys(&key_id);
        for rid in self.related_ids(id) {
            keys.extend(self.id_keys(&rid));
            self.forget(&rid);
        }
        self.forget(&key_id);
        let behind = self.spec.write == crate::policy::cache::WriteMode::Behind;
        if behind {
            keys.push(self.keys.rule_key(crate::compile::cache::JOURNAL_SUB));
        }
        let flag: &[u8] = if behind { b"1" } else { b"0" };
        let marker = self.marker_ms().to_string();
        let reply: Vec<i64> = store
            .eval(&self.scripts.delete, &keys, &[flag, marker.as_bytes()])
            .await?;
        Ok((
            reply.first().copied().unwrap_or(0),
            reply.get(1).copied().unwrap_or(0),
        ))
    }

    /// Invalidates every value carrying any of `tags`: bumps their versions. Returns how many
    /// tags were referenced by some value (the others had no version key to bump).
    pub async fn invalidate(&self, store: &Store, tags: &[String]) -> Result<i64, ReadError> {
        if tags.is_empty() || tags.len() > MAX_INVALIDATE_TAGS {
            return Err(ReadError::BadRequest(format!(
                "`tags` must hold 1 to {MAX_INVALIDATE_TAGS} tags"
            )));
        }
        if let Some(t) = tags.iter().find(|t| !super::valid_tag(t)) {
            return Err(ReadError::BadRequest(format!(
                "tag `{t}` must be 1 to 128 bytes without commas or whitespace"
            )));
        }
        let mut unique: Vec<&String> = tags.iter().collect();
        unique.sort();
        unique.dedup();
        let keys: Vec<String> = unique.iter().map(|t| self.tag_key(t)).collect();
        let created_ms = self.marker_ms().to_string();
        let n = store
            .eval(&self.scripts.invalidate, &keys, &[created_ms.as_bytes()])
            .await?;
        self.forget_all();
        Ok(n)
    }
}

/// Gives a lease back in the background when dropped armed: around a read script call, so a
/// GET dropped mid-call (its client went away) does not leave the lease the call may have
/// granted it to block every other caller until it expires.
struct LeaseGuard<'a> {
    rule: &'a Arc<CacheRule>,
    store: &'a Store,
    keys: &'a [String],
    token: &'a str,
    armed: bool,
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.rule
                .release_later(self.store, self.keys, self.token, None);
        }
    }
}

/// `format: hash` with `?fields=`: only those members.
fn select(body: Body, fields: Option<&[String]>) -> Body {
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
fn ttl_secs(left_ms: i64) -> i64 {
    left_ms.div_euclid(1000)
}

/// A reply element as text, reusing its buffer when it is valid UTF-8.
fn into_text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(
            String::from_utf8(b)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A reply element as bytes, without copying.
fn into_bytes(v: Value) -> Option<Bytes> {
    match v {
        Value::BulkString(b) => Some(Bytes::from(b)),
        Value::SimpleString(s) => Some(Bytes::from(s)),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
