//! A GET's fill: the origin call, and storing its answer with the fill script (or the pass
//! marker, or the failure marker). A fill the caller waits for runs in a task of its own, so
//! a client that goes away does not cancel it; a background refresh (early XFetch or
//! stale_while_revalidate) has its own Redis budget, the caller being answered already.
//!
//! The refresh lease is given back after a failed fill (or turned into the failure marker),
//! and for a GET that may hold a lease it will never fill: dropped mid-call, or a call that
//! timed out (which may still run in Redis).

use std::sync::Arc;
use std::time::Instant;

use redis::Value;

use super::freshness::{self, Bounds, Uncacheable};
use super::origin::{MAX_TAGS, OriginError, OriginResponse};
use super::read::{Body, Budget, Choice, ReadError, ReadOutcome, select, ttl_secs};
use super::reply::{self, Stored};
use super::{CacheKeys, CacheRule, duration_ms};
use crate::policy::cache::CacheFormat;
use crate::store::{Store, StoreError};

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

/// What the fill script stores: `st` '200', '404', or 'pass' (nothing; see `lua/cache/fill.lua`).
struct FillValue<'a> {
    st: &'a str,
    ct: &'a str,
    life: FillLife,
    delta_ms: u64,
    tags: &'a [String],
    body: Option<&'a Body>,
}

impl<'a> FillValue<'a> {
    /// The origin's 200: its value, the time its fetch took (XFetch's `delta`) and its tags.
    fn value(
        ct: &'a str,
        body: &'a Body,
        life: FillLife,
        delta_ms: u64,
        tags: &'a [String],
    ) -> Self {
        Self {
            st: "200",
            ct,
            life,
            delta_ms,
            tags,
            body: Some(body),
        }
    }

    /// The origin's 404, kept as a negative entry.
    fn negative(life: FillLife) -> Self {
        Self::bare("404", life)
    }

    /// The pass marker, for `hold_ms`: the origin's answer may not be stored.
    fn pass(hold_ms: u64) -> Self {
        Self::bare(
            "pass",
            FillLife {
                ttl_ms: hold_ms,
                stale_ms: 0,
                windows: None,
            },
        )
    }

    fn bare(st: &'a str, life: FillLife) -> Self {
        Self {
            st,
            ct: "",
            life,
            delta_ms: 0,
            tags: &[],
            body: None,
        }
    }
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

impl FetchError {
    /// The origin is down or failing (rather than answering something uncacheable): a stale
    /// value may be served, and the lease may hold the failure marker.
    fn stale_usable(&self) -> bool {
        matches!(self, FetchError::Down(_) | FetchError::Failed(_))
    }

    /// (the origin timed out, what went wrong).
    fn into_detail(self) -> (bool, String) {
        match self {
            FetchError::Down(e) => (e.is_timeout(), e.to_string()),
            FetchError::Failed(s) => (false, format!("the origin answered {s}")),
            FetchError::Bad(d) => (false, d),
        }
    }
}

/// One fill: the GET's id (its origin URL), the read keys it stores under, the lease token
/// the read script granted, and `start`, the Redis TIME of that read (the fill script stores
/// nothing a DELETE or invalidation after it made stale: see `lua/cache/fill.lua`).
pub(super) struct Fill {
    id: String,
    keys: Vec<String>,
    token: String,
    start: String,
    choice: Choice,
}

impl Fill {
    pub(super) fn new(
        id: &str,
        keys: &[String],
        token: String,
        start: String,
        choice: Choice,
    ) -> Self {
        Self {
            id: id.to_string(),
            keys: keys.to_vec(),
            token,
            start,
            choice,
        }
    }
}

impl CacheRule {
    /// This caller fills (it holds the lease, or waited out `fill_wait`), serving a stale
    /// value if the origin fails inside `stale_if_error`.
    pub(super) async fn fill_now(
        self: &Arc<Self>,
        store: &Store,
        budget: &Budget,
        fill: Fill,
        stale: Option<Stored>,
        fields: Option<&[String]>,
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
        let id = fill.id.clone();
        // The fill runs in a task of its own, which this GET awaits: if the client goes away
        // (axum drops this future), the fill still completes, so the callers waiting for it
        // get the value instead of waiting out `fill_wait` behind an orphaned lease.
        let fill = {
            let (this, store, mut budget) = (self.clone(), store.clone(), *budget);
            tokio::spawn(
                async move { this.fetch_and_store(&store, &mut budget, &fill, hold).await },
            )
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
                    body: select(body, fields),
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
                if e.stale_usable()
                    && let Some(s) = stale
                    && s.st == "200"
                    && -(s.left - elapsed) <= sie
                {
                    self.counters.stale.increment(1);
                    let status = format!(
                        "patternd; fwd=stale{fwd_status}; ttl={}; detail=stale-if-error",
                        ttl_secs(s.left - elapsed)
                    );
                    return self.serve(s, status, &id);
                }
                self.counters.error.increment(1);
                let (timeout, detail) = e.into_detail();
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
    pub(super) fn spawn_fill(self: &Arc<Self>, store: &Store, budget: &Budget, fill: Fill) {
        let (this, store) = (self.clone(), store.clone());
        // Its own allowance: the caller was answered already.
        let mut budget = Budget::new(budget.total);
        tokio::spawn(async move {
            // The value is still servable (fresh or stale), so with stale_if_error a failure
            // holds the lease: no other refresh hammers the failing origin for a while.
            let hold = (!this.spec.stale_if_error.is_zero()).then(|| this.failure_hold_ms(true));
            if let Err(e) = this.fetch_and_store(&store, &mut budget, &fill, hold).await {
                let (_, why) = e.into_detail();
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
    async fn fetch_and_store(
        self: &Arc<Self>,
        store: &Store,
        budget: &mut Budget,
        fill: &Fill,
        hold_on_failure: Option<u64>,
    ) -> Result<Fetched, FetchError> {
        let choice = &fill.choice;
        let (Some(client), Some(url)) = (&self.origin, self.origin_url(&fill.id)) else {
            return Err(FetchError::Bad("the rule has no origin".into()));
        };
        let res = client.get(&url, self.spec.max_value_bytes).await;
        let failure = match res {
            Ok(r) if r.status == 200 => match self.decode(&r) {
                Ok((ct, body)) => {
                    let life = match self.origin_lifetimes(&r, choice.ttl_ms, true) {
                        Ok(l) => l,
                        Err(why) => {
                            self.pass(store, budget, fill).await;
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
                    let v = FillValue::value(&ct, &body, life, delta, &tags);
                    let stored = self.fill_script(store, budget, fill, v).await;
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
                    self.release(store, budget, &fill.keys, &fill.token, None)
                        .await;
                    return Ok(Fetched::NotFound {
                        stored: false,
                        uncacheable: None,
                    });
                };
                let life = match self.origin_lifetimes(&r, duration_ms(neg), false) {
                    Ok(l) => l,
                    Err(why) => {
                        self.pass(store, budget, fill).await;
                        return Ok(Fetched::NotFound {
                            stored: false,
                            uncacheable: Some(why.detail()),
                        });
                    }
                };
                let stored = self
                    .fill_script(store, budget, fill, FillValue::negative(life))
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
        let hold = hold_on_failure.filter(|_| failure.stale_usable());
        self.release(store, budget, &fill.keys, &fill.token, hold)
            .await;
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
    /// have replaced and leaves the pass marker for refresh_lease (see `lua/cache/fill.lua`).
    async fn pass(self: &Arc<Self>, store: &Store, budget: &mut Budget, fill: &Fill) {
        let hold = duration_ms(self.spec.refresh_lease).max(1);
        self.fill_script(store, budget, fill, FillValue::pass(hold))
            .await;
    }

    /// The origin's answer as this rule stores it: `format: hash` needs a JSON object.
    pub(super) fn decode(&self, r: &OriginResponse) -> Result<(String, Body), String> {
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
        fill: &Fill,
        v: FillValue<'_>,
    ) -> Option<String> {
        let (keys, token, start) = (&fill.keys, fill.token.as_str(), fill.start.as_str());
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
            Ok(raw) => reply::fill(&raw).unwrap_or_else(|e| {
                tracing::warn!(app = %self.app, rule = %self.rule, error = %e, "unexpected cache fill script reply; taken as not stored");
                None
            }),
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
    pub(super) async fn release(
        self: &Arc<Self>,
        store: &Store,
        budget: &mut Budget,
        keys: &[String],
        token: &str,
        hold_ms: Option<u64>,
    ) {
        match budget
            .run(self.release_script(store, keys, token, hold_ms))
            .await
        {
            Ok(()) => {}
            Err(StoreError::Timeout(_)) => self.release_later(store, keys, token, hold_ms),
            Err(e) => self.release_failed(&e),
        }
    }

    /// `release` in a task of its own, bounded by the store's command timeout only: for a GET
    /// that was dropped or whose budget ran out. Best effort: if it fails, or reaches Redis
    /// before the call that took the lease, the lease expires by itself (`refresh_lease`).
    pub(super) fn release_later(
        self: &Arc<Self>,
        store: &Store,
        keys: &[String],
        token: &str,
        hold_ms: Option<u64>,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (this, store, keys, token) = (
            self.clone(),
            store.clone(),
            keys.to_vec(),
            token.to_string(),
        );
        rt.spawn(async move {
            if let Err(e) = this.release_script(&store, &keys, &token, hold_ms).await {
                this.release_failed(&e);
            }
        });
    }

    /// The release script on the lease of `keys` (a GET's read keys).
    async fn release_script(
        &self,
        store: &Store,
        keys: &[String],
        token: &str,
        hold_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let Some(lease) = CacheKeys::lease_of(keys) else {
            return Ok(());
        };
        let hold = hold_ms.map(|ms| ms.to_string());
        let mut args: Vec<&[u8]> = vec![token.as_bytes()];
        if let Some(h) = &hold {
            args.push(h.as_bytes());
        }
        store
            .eval::<i64>(&self.scripts.release, lease, &args)
            .await
            .map(drop)
    }

    fn release_failed(&self, e: &StoreError) {
        tracing::warn!(app = %self.app, rule = %self.rule, error = %e, "could not release a cache lease; it expires by itself");
    }
}

/// Gives a lease back in the background when dropped armed: around a read script call, so a
/// GET dropped mid-call (its client went away) does not leave the lease the call may have
/// granted it to block every other caller until it expires.
pub(super) struct LeaseGuard<'a> {
    pub(super) rule: &'a Arc<CacheRule>,
    pub(super) store: &'a Store,
    pub(super) keys: &'a [String],
    pub(super) token: &'a str,
    pub(super) armed: bool,
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.rule
                .release_later(self.store, self.keys, self.token, None);
        }
    }
}
