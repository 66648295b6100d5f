//! Rate limiting at request time: one EVALSHA per decision.

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use metrics::Counter;
use redis::FromRedisValue;

use super::lost_grant::LostGrant;
use super::random;
use super::{InputError, check_id};
use crate::compile::{CompiledRateLimit, DynamicScripts, KeySpace, RATELIMIT_REPLY_WIDTH, Script};
use crate::plugin::{DynLimit, PluginBinding, PluginError, RateLimitDecision, RequestFacts};
use crate::policy::{Algorithm, IdFrom, Limit, OnRedisError, RateLimit, Rule};
use crate::store::batch::{Batcher, Layout};
use crate::store::{Store, StoreError};

/// The largest cost a request may ask for when a plugin decides the limits (the plugin's
/// limits then bound it exactly).
const MAX_DYNAMIC_COST: u64 = 1_000_000_000_000;

/// A rate-limit rule ready to serve. Built once per snapshot: everything that does not depend
/// on the request (scripts, key suffixes, header text, metric handles, plugin instances) is
/// prepared here.
pub struct RateLimiter {
    pub app: String,
    pub rule: String,
    keys: KeySpace,
    /// The rule's own limits, or a plugin rule's fallback.
    fixed: Option<Fixed>,
    /// Plugin rules: the plugin and the script for the limits it chooses.
    dynamic: Option<Dynamic>,
    release: Option<Arc<Script>>,
    pub on_redis_error: OnRedisError,
    pub shadow: bool,
    pub id_from: Option<IdFrom>,
    counters: Counters,
    /// `deny_cache: true`: ids Redis denied, answered here until their retry time.
    deny_cache: Option<DenyCache>,
    /// Decisions of the fixed limits gathered into batch calls (`store::batch`), started on
    /// first use (a snapshot is also built outside the runtime, by `patternd check`); None
    /// when batching is off, on a cluster, for concurrency and plugin rules.
    batcher: OnceLock<Option<Batcher>>,
}

/// Ids at most one deny cache holds; past it, new denials are not cached until entries lapse
/// (a bound on memory whatever ids clients send). About 100 bytes each plus the id.
const DENY_CACHE_MAX: usize = 100_000;

/// Denials answered from this engine's memory until their retry time, without Redis.
///
/// Exact (the answer Redis would give) because an entry is kept only when no capacity can come
/// back for any request it serves before its end:
/// - Redis reported `remaining` 0 for the rule's one limit, so every request of cost >= 1 is
///   denied now;
/// - fixed_window: the counter only grows until its key expires at the retry time, whatever
///   the denied cost; sliding_window and gcra: `remaining` grows while the id is still
///   denied, so only a cost-1 denial is kept (its retry time is when the first unit is back);
/// - it serves requests of cost >= 1 (a cost-0 query is always allowed), and ends 1.001 ms before the retry time Redis named measured from when
///   the request was sent: Redis rounds its retry time up by at most that, and computed it
///   after the request was sent, so the entry ends no later than the true moment.
///
/// Nothing can give the id capacity back early: no request is admitted before the retry time
/// (by any engine), and a policy reload builds a new limiter with an empty cache. Only a key
/// deleted by hand in Redis is not seen; the engine then denies until the retry time.
struct DenyCache {
    /// Whether a denial of any cost is kept (fixed_window) or only of cost 1.
    any_cost: bool,
    entries: std::sync::Mutex<Entries>,
    hits: Counter,
}

#[derive(Default)]
struct Entries {
    map: std::collections::HashMap<Box<str>, Denial>,
    /// After a sweep of a full cache that freed nothing, no other sweep before this: under
    /// an attack from more live ids than the cache holds, a denial must not cost a walk of
    /// every entry (under the lock) each time.
    no_sweep_before: Option<std::time::Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Denial {
    /// When Redis was asked (a lower bound of when it decided).
    asked: std::time::Instant,
    /// Redis' reset and retry times, in ms after `asked`.
    reset_ms: u64,
    retry_ms: u64,
}

/// Redis rounds a retry time up by up to this much (`up` in `ratelimit/prelude.lua`), in µs.
const REDIS_ROUNDING_US: u64 = 1_001;

impl DenyCache {
    fn new(any_cost: bool, app: &str, rule: &str) -> Self {
        Self {
            any_cost,
            entries: std::sync::Mutex::new(Entries::default()),
            hits: metrics::counter!("patternd_ratelimit_deny_cache_hits_total", "app" => app.to_string(), "rule" => rule.to_string()),
        }
    }

    /// The script reply Redis would give now for `id` at `cost`, if a kept denial covers it:
    /// `{0, 0, 0, reset_after_ms, retry_after_ms}`, counted down from when Redis answered.
    fn lookup(&self, id: &str, cost: u64, now: std::time::Instant) -> Option<Vec<i64>> {
        if cost == 0 {
            return None;
        }
        let mut entries = self.entries.lock().ok()?;
        let d = *entries.map.get(id)?;
        let elapsed_us =
            u64::try_from(now.saturating_duration_since(d.asked).as_micros()).unwrap_or(u64::MAX);
        let end_us = (d.retry_ms * 1000).saturating_sub(REDIS_ROUNDING_US);
        if elapsed_us >= end_us {
            entries.map.remove(id);
            return None;
        }
        drop(entries);
        // Whole ms, rounded up like Redis' (`up`): never shorter than the true wait.
        let left = |ms: u64| {
            let us = (ms * 1000).saturating_sub(elapsed_us);
            i64::try_from(us.div_ceil(1000).max(1)).unwrap_or(i64::MAX)
        };
        Some(vec![0, 0, 0, left(d.reset_ms), left(d.retry_ms)])
    }

    /// Keeps a denial Redis just gave (`reply`), when it is one the cache may serve.
    fn remember(&self, id: &str, cost: u64, asked: std::time::Instant, reply: &[i64]) {
        let [0, _, 0, reset, retry] = *reply else {
            return;
        };
        if cost == 0 || (!self.any_cost && cost != 1) || retry <= 0 {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.map.len() >= DENY_CACHE_MAX {
            let now = std::time::Instant::now();
            if entries.no_sweep_before.is_some_and(|t| now < t) {
                return;
            }
            entries.map.retain(|_, d| {
                now.saturating_duration_since(d.asked).as_millis() < u128::from(d.retry_ms)
            });
            if entries.map.len() >= DENY_CACHE_MAX {
                entries.no_sweep_before = Some(now + std::time::Duration::from_secs(1));
                return;
            }
        }
        entries.map.insert(
            id.into(),
            Denial {
                asked,
                reset_ms: non_negative(reset),
                retry_ms: non_negative(retry),
            },
        );
    }
}

struct Fixed {
    script: Arc<Script>,
    /// The batch variant (`FixedLimits::batch`); None for concurrency rules.
    batch: Option<Arc<Script>>,
    subs: Vec<String>,
    limits: Vec<Limit>,
    shapes: Vec<Shape>,
    max_cost: u64,
    /// Concurrency rules: how long a lease lives unreleased.
    lease: Option<std::time::Duration>,
    policy_header: String,
    item_names: Vec<String>,
}

struct Dynamic {
    scripts: DynamicScripts,
    plugin: String,
    binding: PluginBinding,
    /// JSON body fields the plugin may see.
    fields: Vec<String>,
    /// Request headers the plugin may see (lowercase); `None`: all.
    headers: Option<Vec<String>>,
}

struct Counters {
    allowed: Counter,
    denied: Counter,
    shadow_denied: Counter,
    degraded_allowed: Counter,
    degraded_denied: Counter,
    plugin_failed: Counter,
}

impl Counters {
    fn new(app: &str, rule: &str) -> Self {
        let c = |outcome: &'static str| metrics::counter!("patternd_decisions_total", "app" => app.to_string(), "rule" => rule.to_string(), "pattern" => "ratelimit", "outcome" => outcome);
        Self {
            allowed: c("allowed"),
            denied: c("denied"),
            shadow_denied: c("shadow_denied"),
            degraded_allowed: c("degraded_allowed"),
            degraded_denied: c("degraded_denied"),
            plugin_failed: metrics::counter!("patternd_plugin_failures_total", "app" => app.to_string(), "rule" => rule.to_string()),
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The reported limit's quota per window (the denying limit, or the one with least
    /// remaining): its `limit`, also for `token_bucket` and `gcra`, whose `burst` is apart.
    pub limit: u64,
    /// `token_bucket` and `gcra`: the most the bucket holds.
    pub burst: Option<u64>,
    pub limit_index: usize,
    /// What the reported limit lets through now (for a bucket: its tokens, up to `burst`).
    pub remaining: u64,
    /// Until the reported limit's full capacity is back (for a bucket: until it is full).
    pub reset_after_ms: u64,
    pub retry_after_ms: u64,
    /// The `RateLimit` field's `r` and `t` (seconds): the same, measured against the advertised
    /// policy item (`q` = `limit` per `w` = window), so `r <= q` and `t <= w`.
    pub policy_remaining: u64,
    pub policy_reset_s: u64,
    /// Concurrency rules: the lease to release when done.
    pub lease: Option<String>,
    /// Redis could not be asked; `on_redis_error` decided.
    pub degraded: bool,
    /// Shadow rule that would have denied.
    pub shadow_denied: bool,
    /// False when the decision carries no quota (plugin skip or deny, degraded) or the rule
    /// is a shadow rule: the `RateLimit` header is then left out rather than invented, or
    /// than slowing clients down for a limit that is not enforced.
    pub quota_known: bool,
    /// Plugin rules: the `RateLimit-Policy` and item name for the limits the plugin chose.
    pub policy_header: Option<String>,
    pub item_name: Option<String>,
    /// A plugin's reason for a denial.
    pub reason: Option<String>,
    /// The plugin failed and the rule's fallback decided.
    pub fallback: bool,
}

impl Decision {
    fn bare(allowed: bool) -> Self {
        Decision {
            allowed,
            limit: 0,
            burst: None,
            limit_index: 0,
            remaining: 0,
            reset_after_ms: 0,
            retry_after_ms: 0,
            policy_remaining: 0,
            policy_reset_s: 0,
            lease: None,
            degraded: false,
            shadow_denied: false,
            quota_known: false,
            policy_header: None,
            item_name: None,
            reason: None,
            fallback: false,
        }
    }
}

/// Why a check could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Input(#[from] InputError),
    /// The plugin failed and the rule has no fallback.
    #[error(transparent)]
    Plugin(PluginError),
    /// Redis answered, but not with a decision (WRONGTYPE, a script error): not an outage,
    /// so `on_redis_error` does not apply.
    #[error(transparent)]
    Store(crate::store::StoreError),
    /// No lease member for a concurrency limit: the OS has no entropy source (see `random`).
    #[error("no secure random source: {0}")]
    Random(String),
}

/// The facts of a request, for rules whose plugin decides.
pub struct CheckRequest<'a> {
    pub id: &'a str,
    pub cost: u64,
    /// Built by the handler only when `RateLimiter::wants_facts`.
    pub facts: Option<RequestFacts>,
}

impl RateLimiter {
    pub fn new(
        rule: &Rule,
        rl: &RateLimit,
        compiled: &CompiledRateLimit,
        keys: &KeySpace,
        binding: Option<PluginBinding>,
    ) -> Self {
        let fixed = compiled.fixed.as_ref().map(|f| {
            let item_names: Vec<String> = if f.limits.len() == 1 {
                vec![rule.name.clone()]
            } else {
                (0..f.limits.len())
                    .map(|i| format!("{}-{i}", rule.name))
                    .collect()
            };
            let shapes: Vec<Shape> = f.limits.iter().map(Shape::of_limit).collect();
            let mut policy_header = String::new();
            for (i, (shape, name)) in shapes.iter().zip(&item_names).enumerate() {
                if i > 0 {
                    policy_header.push_str(", ");
                }
                shape.policy_item(&mut policy_header, name, "");
            }
            Fixed {
                script: f.script.clone(),
                batch: f.batch.clone(),
                subs: f.subs.clone(),
                shapes,
                max_cost: f.limits.iter().map(Limit::capacity).min().unwrap_or(0),
                lease: f
                    .limits
                    .iter()
                    .find(|l| l.algorithm == Algorithm::Concurrency)
                    .map(|l| l.window),
                limits: f.limits.clone(),
                policy_header,
                item_names,
            }
        });
        let dynamic = match (&compiled.dynamic, binding, &rl.plugin) {
            (Some(scripts), Some(binding), Some(p)) => Some(Dynamic {
                scripts: scripts.clone(),
                plugin: p.name.clone(),
                binding,
                fields: p.fields.clone(),
                headers: p.headers.clone(),
            }),
            _ => None,
        };
        Self {
            app: rule.app.clone(),
            rule: rule.name.clone(),
            keys: keys.clone(),
            fixed,
            dynamic,
            release: compiled.release.clone(),
            on_redis_error: rl.on_redis_error,
            shadow: rl.shadow,
            id_from: rl.id_from.clone(),
            counters: Counters::new(&rule.app, &rule.name),
            deny_cache: rl.deny_cache.then(|| {
                let any_cost = rl
                    .limits
                    .iter()
                    .all(|l| l.algorithm == Algorithm::FixedWindow);
                DenyCache::new(any_cost, &rule.app, &rule.name)
            }),
            batcher: OnceLock::new(),
        }
    }

    /// The `RateLimit-Policy` header of the rule's fixed limits. None for shadow rules: their
    /// limits are not enforced, and a client honouring them would slow down for nothing.
    pub fn policy_header(&self) -> Option<&str> {
        if self.shadow {
            return None;
        }
        self.fixed.as_ref().map(|f| f.policy_header.as_str())
    }

    /// The `RateLimit` header item name of a fixed limit.
    pub fn item_name(&self, index: usize) -> &str {
        self.fixed
            .as_ref()
            .and_then(|f| f.item_names.get(index))
            .map(String::as_str)
            .unwrap_or(&self.rule)
    }

    pub fn is_concurrency(&self) -> bool {
        self.release.is_some()
    }

    /// True when a plugin decides: the handler then gathers the request's facts.
    pub fn wants_facts(&self) -> bool {
        self.dynamic.is_some()
    }

    /// The request headers this rule's plugin reads (lowercase), when the policy lists them;
    /// `None`: all headers.
    pub fn plugin_headers(&self) -> Option<&[String]> {
        self.dynamic.as_ref().and_then(|d| d.headers.as_deref())
    }

    /// JSON body fields (besides `id` and `cost`) this rule accepts.
    pub fn exposed_fields(&self) -> &[String] {
        self.dynamic
            .as_ref()
            .map(|d| d.fields.as_slice())
            .unwrap_or(&[])
    }

    /// Validates request input; the caller turns errors into 400s.
    pub fn validate(&self, id: &str, cost: u64) -> Result<(), InputError> {
        check_id(id)?;
        let max = match (&self.dynamic, &self.fixed) {
            (Some(_), _) => MAX_DYNAMIC_COST,
            (None, Some(f)) => f.max_cost,
            (None, None) => 0,
        };
        if cost > max {
            return Err(InputError::CostTooHigh { cost, max });
        }
        Ok(())
    }

    /// One decision. Redis being unavailable never surfaces as an error: the rule's
    /// `on_redis_error` decides, and the decision says it was degraded. A failing plugin
    /// falls back to the rule's `fallback`, or is an error when there is none.
    pub async fn check(
        &self,
        store: &Store,
        req: CheckRequest<'_>,
    ) -> Result<Decision, CheckError> {
        self.validate(req.id, req.cost)?;
        let Some(dynamic) = &self.dynamic else {
            return self.check_fixed(store, req.id, req.cost).await;
        };
        let facts = req.facts.unwrap_or_else(|| RequestFacts {
            id: req.id.to_string(),
            cost: req.cost,
            ..RequestFacts::default()
        });
        match dynamic.binding.rate_limit_owned(facts) {
            Ok(RateLimitDecision::Skip) => {
                self.counters.allowed.increment(1);
                Ok(Decision::bare(true))
            }
            Ok(RateLimitDecision::Deny(reason)) => {
                let mut d = Decision::bare(self.shadow);
                d.shadow_denied = self.shadow;
                d.retry_after_ms = if self.shadow { 0 } else { 1000 };
                d.reason = Some(reason);
                if self.shadow {
                    self.counters.shadow_denied.increment(1);
                } else {
                    self.counters.denied.increment(1);
                }
                Ok(d)
            }
            Ok(RateLimitDecision::Check(limits)) => {
                for l in &limits {
                    let capacity = dyn_capacity(l);
                    if l.cost > capacity {
                        return Err(InputError::CostTooHigh {
                            cost: l.cost,
                            max: capacity,
                        }
                        .into());
                    }
                }
                self.check_dynamic(store, dynamic, req.id, &limits).await
            }
            Err(e) => {
                self.counters.plugin_failed.increment(1);
                tracing::warn!(app = %self.app, rule = %self.rule, plugin = %dynamic.plugin, error = %e, "plugin failed");
                match &self.fixed {
                    Some(f) if req.cost <= f.max_cost => {
                        let mut d = self.check_fixed(store, req.id, req.cost).await?;
                        d.fallback = true;
                        Ok(d)
                    }
                    Some(f) => Err(InputError::CostTooHigh {
                        cost: req.cost,
                        max: f.max_cost,
                    }
                    .into()),
                    None => Err(CheckError::Plugin(e)),
                }
            }
        }
    }

    async fn check_fixed(
        &self,
        store: &Store,
        id: &str,
        cost: u64,
    ) -> Result<Decision, CheckError> {
        let Some(fixed) = &self.fixed else {
            return Ok(self.degraded());
        };
        // Read only for a rule with a deny cache (the clock read is per request).
        let asked = self.deny_cache.as_ref().map(|_| std::time::Instant::now());
        if let (Some(dc), Some(asked)) = (&self.deny_cache, asked)
            && let Some(reply) = dc.lookup(id, cost, asked)
        {
            dc.hits.increment(1);
            return self.interpret(Ok(reply), &fixed.shapes);
        }
        let keys = self.keys.keys(id, fixed.subs.iter().map(String::as_str));
        let mut cost_text = itoa::Buffer::new();
        let cost_arg = cost_text.format(cost).as_bytes();
        let lease_member = self
            .is_concurrency()
            .then(random::token::<{ random::TOKEN_BYTES }>)
            .transpose()
            .map_err(|e| CheckError::Random(e.to_string()))?;
        let lease_arg = lease_member.as_ref().map(|m| m.as_bytes());
        // The arguments on the stack: a batched call copies the cost into the batch's own.
        let args_all = [cost_arg, lease_arg.unwrap_or_default()];
        let args = &args_all[..1 + usize::from(lease_arg.is_some())];
        let reply: Result<Vec<i64>, _> = match (&lease_member, &self.release, fixed.lease) {
            (Some(member), Some(release), Some(lease)) if cost > 0 => {
                // Should the answer be lost (Redis stalled past the timeout, or the request
                // cancelled), the lease Redis grants late is released again: see `LostGrant`.
                let pin = store.pin();
                let lost = LostGrant::new(
                    store,
                    &pin,
                    release,
                    keys.clone(),
                    vec![lease_member_arg(member, cost).into_bytes()],
                    lease,
                    "ratelimit",
                );
                let reply = store
                    .eval_pinned(&pin, store.command_timeout(), &fixed.script, &keys, args)
                    .await;
                if reply.is_ok() {
                    lost.disarm();
                }
                reply
            }
            _ => match self.batcher(store, fixed) {
                Some(b) => b.call(keys, vec![cost_arg.to_vec()]).await.and_then(|v| {
                    Vec::<i64>::from_redis_value(v).map_err(|e| StoreError::Redis(e.into()))
                }),
                None => store.eval(&fixed.script, &keys, args).await,
            },
        };
        if let (Some(dc), Some(asked), Ok(v)) = (&self.deny_cache, asked, &reply) {
            dc.remember(id, cost, asked, v);
        }
        let mut d = self.interpret(reply, &fixed.shapes)?;
        // A cost-0 query holds no slot, so it gets no lease: one would name cost 0, which
        // `parse_lease` (rightly) refuses as malformed.
        if d.allowed && !d.shadow_denied && !d.degraded && cost > 0 {
            d.lease = lease_member.map(|m| format!("{}.{m}.{cost}", B64.encode(id)));
        }
        Ok(d)
    }

    /// The batcher of the fixed limits, when their decisions are batched (see `batcher`).
    fn batcher(&self, store: &Store, fixed: &Fixed) -> Option<&Batcher> {
        self.batcher
            .get_or_init(|| {
                // A plugin rule's fallback is decided rarely, after a plugin failure.
                if self.dynamic.is_some() {
                    return None;
                }
                Batcher::start(
                    store,
                    fixed.batch.clone()?,
                    Layout::Packed {
                        width: RATELIMIT_REPLY_WIDTH,
                    },
                )
            })
            .as_ref()
    }

    async fn check_dynamic(
        &self,
        store: &Store,
        dynamic: &Dynamic,
        id: &str,
        limits: &[DynLimit],
    ) -> Result<Decision, CheckError> {
        use std::fmt::Write as _;
        // Per request, so built without format!: the key subs, then every limit's ARGV
        // written into one buffer and sliced (one allocation instead of five per limit).
        let subs: Vec<String> = limits
            .iter()
            .map(|l| {
                let code = l.algorithm.key_code();
                let mut s = String::with_capacity(l.key_suffix.len() + code.len() + 3);
                s.push_str("p.");
                s.push_str(&l.key_suffix);
                s.push('.');
                s.push_str(code);
                s
            })
            .collect();
        let keys = self.keys.keys(id, subs.iter().map(String::as_str));
        let mut buf = String::with_capacity(limits.len() * 48);
        let mut ends: Vec<usize> = Vec::with_capacity(limits.len() * 4);
        for l in limits {
            for n in [l.cost, l.limit, l.window_ms, l.burst] {
                let _ = write!(buf, "{n}");
                ends.push(buf.len());
            }
        }
        let mut args: Vec<&[u8]> = Vec::with_capacity(limits.len() * 5);
        let mut start = 0;
        for (i, l) in limits.iter().enumerate() {
            args.push(l.algorithm.key_code().as_bytes());
            for end in &ends[i * 4..i * 4 + 4] {
                args.push(&buf.as_bytes()[start..*end]);
                start = *end;
            }
        }
        let script = dynamic
            .scripts
            .for_algorithms(limits.iter().map(|l| l.algorithm));
        let reply: Result<Vec<i64>, _> = store.eval(script, &keys, &args).await;
        let shapes: Vec<Shape> = limits.iter().map(Shape::of_dyn).collect();
        let mut d = self.interpret(reply, &shapes)?;
        if !d.degraded && !self.shadow {
            let mut header = String::with_capacity(limits.len() * (self.rule.len() + 48));
            for (i, (shape, l)) in shapes.iter().zip(limits).enumerate() {
                if i > 0 {
                    header.push_str(", ");
                }
                shape.policy_item(&mut header, &self.rule, &l.key_suffix);
            }
            d.policy_header = Some(header);
            d.item_name = limits
                .get(d.limit_index)
                .map(|l| format!("{}-{}", self.rule, l.key_suffix));
        }
        Ok(d)
    }

    /// Turns a script reply into a decision (and counts it). Only an unavailable Redis is
    /// decided by `on_redis_error`; another error (WRONGTYPE, a script error) is returned.
    fn interpret(
        &self,
        reply: Result<Vec<i64>, crate::store::StoreError>,
        shapes: &[Shape],
    ) -> Result<Decision, CheckError> {
        Ok(match reply {
            Ok(v) if v.len() == 5 => {
                let allowed = v[0] == 1;
                let idx = usize::try_from(v[1])
                    .unwrap_or(0)
                    .min(shapes.len().saturating_sub(1));
                let mut d = Decision::bare(allowed || self.shadow);
                d.limit_index = idx;
                d.remaining = non_negative(v[2]);
                d.reset_after_ms = non_negative(v[3]);
                d.retry_after_ms = if allowed { 0 } else { non_negative(v[4]) };
                if let Some(shape) = shapes.get(idx) {
                    d.limit = shape.limit;
                    d.burst = shape.is_bucket().then_some(shape.burst);
                    (d.policy_remaining, d.policy_reset_s) =
                        shape.service_limit(d.remaining, d.reset_after_ms);
                    if !allowed {
                        // The draft: Retry-After SHOULD NOT come before the end of `t`. On a
                        // denial `t` is the time within which no more than `r` is usable for
                        // this request: until it may retry.
                        d.policy_reset_s = d.policy_reset_s.min(retry_after_s(d.retry_after_ms));
                    }
                }
                d.shadow_denied = !allowed && self.shadow;
                // A shadow rule's quota is not enforced: no `RateLimit` field for it.
                d.quota_known = !self.shadow;
                if allowed {
                    self.counters.allowed.increment(1);
                } else if self.shadow {
                    self.counters.shadow_denied.increment(1);
                } else {
                    self.counters.denied.increment(1);
                }
                d
            }
            Ok(v) => {
                tracing::error!(app = %self.app, rule = %self.rule, reply = ?v, "unexpected script reply");
                self.degraded()
            }
            Err(e) if e.is_unavailable() => {
                // Every request fails the same way during an outage: log once a second,
                // the metrics count every one.
                if log_gate() {
                    tracing::warn!(app = %self.app, rule = %self.rule, error = %e, "Redis unavailable; on_redis_error decides");
                }
                self.degraded()
            }
            Err(e) => return Err(CheckError::Store(e)),
        })
    }

    fn degraded(&self) -> Decision {
        let allowed = self.on_redis_error == OnRedisError::Allow;
        if allowed {
            self.counters.degraded_allowed.increment(1);
        } else {
            self.counters.degraded_denied.increment(1);
        }
        let mut d = Decision::bare(allowed);
        d.limit = self
            .fixed
            .as_ref()
            .and_then(|f| f.limits.first())
            .map(|l| l.limit)
            .unwrap_or(0);
        // A denied client should come back soon: Redis may be back in a second.
        d.retry_after_ms = if allowed { 0 } else { 1000 };
        d.degraded = true;
        d
    }

    /// Releases a concurrency lease. Ok(false) when it was not held (expired or released).
    pub async fn release(&self, store: &Store, lease: &str) -> Result<bool, ReleaseError> {
        let script = self.release.as_ref().ok_or(ReleaseError::NotConcurrency)?;
        let (id, member, cost) = self.parse_lease(lease)?;
        let subs = self
            .fixed
            .as_ref()
            .map(|f| f.subs.as_slice())
            .unwrap_or(&[]);
        let keys = self.keys.keys(&id, subs.iter().map(String::as_str));
        // The member names the cost the lease was granted with: a token claiming another
        // cost names no member and frees nothing, and the script's work is one lookup.
        let member = lease_member_arg(&member, cost);
        let removed: i64 = store
            .eval(script, &keys, &[member.as_bytes()])
            .await
            .map_err(ReleaseError::Store)?;
        Ok(removed > 0)
    }

    fn parse_lease(&self, lease: &str) -> Result<(String, String, u64), InputError> {
        let bad = || InputError::BadLease(lease.chars().take(64).collect());
        let mut parts = lease.split('.');
        let (Some(id_b64), Some(member), Some(cost), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let id = B64
            .decode(id_b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)?;
        check_id(&id).map_err(|_| bad())?;
        let cost: u64 = cost.parse().map_err(|_| bad())?;
        let max = self.fixed.as_ref().map(|f| f.max_cost).unwrap_or(0);
        if cost == 0 || cost > max || !random::is_token(member) {
            return Err(bad());
        }
        Ok((id, member.to_string(), cost))
    }
}

/// A lease's member in the leases ZSET: `<lease id>:<cost>` (see `concurrency.lua`).
fn lease_member_arg(id: &str, cost: u64) -> String {
    format!("{id}:{cost}")
}

fn dyn_capacity(l: &DynLimit) -> u64 {
    match l.algorithm {
        Algorithm::TokenBucket | Algorithm::Gcra => l.burst,
        _ => l.limit,
    }
}

/// A limit as the IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers) describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    algorithm: Algorithm,
    limit: u64,
    /// The window, or a concurrency limit's lease.
    window_ms: u64,
    burst: u64,
}

impl Shape {
    fn of_limit(l: &Limit) -> Self {
        Shape {
            algorithm: l.algorithm,
            limit: l.limit,
            window_ms: l.window_ms(),
            burst: l.burst,
        }
    }

    fn of_dyn(l: &DynLimit) -> Self {
        Shape {
            algorithm: l.algorithm,
            limit: l.limit,
            window_ms: l.window_ms,
            burst: l.burst,
        }
    }

    fn is_bucket(&self) -> bool {
        matches!(self.algorithm, Algorithm::TokenBucket | Algorithm::Gcra)
    }

    /// The policy's `w`: whole seconds (the draft has no sub-second windows), rounded up, so
    /// `q` per `w` never advertises more than the limit lets through.
    fn window_s(&self) -> u64 {
        self.window_ms.div_ceil(1000).max(1)
    }

    /// Appends the `RateLimit-Policy` item: `"<name>[-<suffix>]";q=<limit>;w=<window s>`, the
    /// sustained quota; buckets add their burst as the vendor parameter `patternd-burst` (the
    /// draft allows parameters of its own, prefixed); concurrency has no window: its quota
    /// unit is `concurrent-requests`.
    fn policy_item(&self, out: &mut String, name: &str, suffix: &str) {
        use std::fmt::Write as _;
        out.push('"');
        out.push_str(name);
        if !suffix.is_empty() {
            out.push('-');
            out.push_str(suffix);
        }
        let _ = write!(out, "\";q={}", self.limit);
        if self.algorithm == Algorithm::Concurrency {
            out.push_str(";qu=\"concurrent-requests\"");
            return;
        }
        let _ = write!(out, ";w={}", self.window_s());
        if self.is_bucket() {
            let _ = write!(out, ";patternd-burst={}", self.burst);
        }
    }

    /// The `RateLimit` item's `r` and `t` (seconds) for what the script reported: measured
    /// against the policy item, so `r <= q` and `t <= w`. A bucket may hold more than `limit`
    /// (up to `burst`); the policy's quota is back in full once it holds `limit` again, which
    /// is `(burst - limit) / rate` before it is full.
    fn service_limit(&self, remaining: u64, reset_ms: u64) -> (u64, u64) {
        let (r, t_ms) = if self.is_bucket() {
            let extra_units = u128::from(self.burst.saturating_sub(self.limit));
            let extra_ms = extra_units * u128::from(self.window_ms) / u128::from(self.limit.max(1));
            let extra_ms = u64::try_from(extra_ms).unwrap_or(u64::MAX);
            (remaining.min(self.limit), reset_ms.saturating_sub(extra_ms))
        } else {
            (remaining.min(self.limit), reset_ms)
        };
        // Reported durations carry a rounding margin under a millisecond; in whole seconds
        // they never exceed the window (a concurrency limit's: its lease).
        (r, t_ms.div_ceil(1000).min(self.window_s()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("this rule is not a concurrency rule; it has no leases")]
    NotConcurrency,
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Store(crate::store::StoreError),
}

/// True at most once per second across all rules.
fn log_gate() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let last = LAST.load(Ordering::Relaxed);
    now != last
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after_s(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

fn non_negative(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use std::time::{Duration, Instant};

    #[test]
    fn the_deny_cache_keeps_only_denials_with_nothing_left() {
        let t0 = Instant::now();
        let any = DenyCache::new(true, "a", "r");
        // Allowed, or denied with quota left for a smaller cost: not kept.
        any.remember("ok", 1, t0, &[1, 0, 3, 5000, 0]);
        any.remember("left", 3, t0, &[0, 0, 2, 5000, 5000]);
        // A 1 ms retry ends before Redis' rounding is spent: nothing to serve.
        any.remember("short", 1, t0, &[0, 0, 0, 1, 1]);
        for id in ["ok", "left", "short"] {
            assert_eq!(any.lookup(id, 1, t0), None, "{id}");
        }
        // A fixed window keeps a denial of any cost, and serves every cost >= 1 but not 0.
        any.remember("big", 7, t0, &[0, 0, 0, 5000, 5000]);
        assert_eq!(any.lookup("big", 1, t0), Some(vec![0, 0, 0, 5000, 5000]));
        assert_eq!(any.lookup("big", 0, t0), None);
        // Sliding window and gcra: only a cost-1 denial.
        let one = DenyCache::new(false, "a", "r");
        one.remember("two", 2, t0, &[0, 0, 0, 5000, 5000]);
        assert_eq!(one.lookup("two", 2, t0), None);
        one.remember("one", 1, t0, &[0, 0, 0, 8000, 5000]);
        assert_eq!(one.lookup("one", 3, t0), Some(vec![0, 0, 0, 8000, 5000]));
    }

    #[test]
    fn a_cached_denial_counts_down_and_ends_before_the_retry_time() {
        let t0 = Instant::now();
        let c = DenyCache::new(true, "a", "r");
        c.remember("id", 1, t0, &[0, 0, 0, 3000, 2000]);
        // 500.2 ms later: the times left, rounded up to whole ms like Redis' `up`.
        let later = t0 + Duration::from_micros(500_200);
        assert_eq!(c.lookup("id", 1, later), Some(vec![0, 0, 0, 2500, 1500]));
        // Redis rounded its retry time up by at most 1.001 ms: the entry ends that much early,
        // and then asks Redis (the entry is gone).
        let end = t0 + Duration::from_micros(2_000_000 - 1_001);
        assert_eq!(
            c.lookup("id", 1, end - Duration::from_micros(1)),
            Some(vec![0, 0, 0, 1002, 2])
        );
        assert_eq!(c.lookup("id", 1, end), None);
        assert_eq!(c.lookup("id", 1, t0), None);
    }

    #[test]
    fn a_full_deny_cache_takes_no_more_and_does_not_sweep_on_every_denial() {
        let t0 = Instant::now();
        let c = DenyCache::new(true, "a", "r");
        for i in 0..DENY_CACHE_MAX {
            c.remember(&format!("id{i}"), 1, t0, &[0, 0, 0, 60_000, 60_000]);
        }
        // Full of live denials: a new one is not kept, and the sweep that found nothing to
        // free is not repeated for a second.
        c.remember("new", 1, t0, &[0, 0, 0, 60_000, 60_000]);
        assert_eq!(c.lookup("new", 1, t0), None);
        let e = c.entries.lock().expect("lock");
        assert_eq!(e.map.len(), DENY_CACHE_MAX);
        assert!(e.no_sweep_before.is_some_and(|t| t > Instant::now()));
        drop(e);
        assert!(c.lookup("id7", 1, t0).is_some());
    }

    fn shape(algorithm: Algorithm, limit: u64, window_ms: u64, burst: u64) -> Shape {
        Shape {
            algorithm,
            limit,
            window_ms,
            burst,
        }
    }

    fn item(s: &Shape, name: &str, suffix: &str) -> String {
        let mut out = String::new();
        s.policy_item(&mut out, name, suffix);
        out
    }

    #[test]
    fn policy_items_advertise_the_sustained_quota() {
        let tb = shape(Algorithm::TokenBucket, 10, 1000, 50);
        assert_eq!(item(&tb, "edge", ""), "\"edge\";q=10;w=1;patternd-burst=50");
        let gc = shape(Algorithm::Gcra, 10, 1000, 5);
        assert_eq!(item(&gc, "t", "pro"), "\"t-pro\";q=10;w=1;patternd-burst=5");
        let fw = shape(Algorithm::FixedWindow, 100, 60_000, 100);
        assert_eq!(item(&fw, "api", ""), "\"api\";q=100;w=60");
        // Sub-second and fractional windows round up: never more than the limit allows.
        let short = shape(Algorithm::SlidingLog, 3, 250, 3);
        assert_eq!(item(&short, "s", ""), "\"s\";q=3;w=1");
        let odd = shape(Algorithm::SlidingWindow, 3, 1500, 3);
        assert_eq!(item(&odd, "o", ""), "\"o\";q=3;w=2");
        let cc = shape(Algorithm::Concurrency, 4, 30_000, 4);
        assert_eq!(
            item(&cc, "jobs", ""),
            "\"jobs\";q=4;qu=\"concurrent-requests\""
        );
    }

    #[test]
    fn service_limits_stay_within_the_policy_item() {
        // 10/s, burst 50: a full bucket is r=10 (the policy's quota), back in full now.
        let tb = shape(Algorithm::TokenBucket, 10, 1000, 50);
        assert_eq!(tb.service_limit(49, 100), (10, 0));
        // 25 tokens: 2.5 s until full, so the policy's 10 are back... already.
        assert_eq!(tb.service_limit(25, 2500), (10, 0));
        // 4 tokens: 4.6 s until full, 0.6 s until 10 are back.
        assert_eq!(tb.service_limit(4, 4600), (4, 1));
        // Empty: 5 s until full, 1 s until 10 are back.
        assert_eq!(tb.service_limit(0, 5001), (0, 1));
        // Burst below the limit: the bucket's own refill time, within the window.
        let small = shape(Algorithm::Gcra, 10, 1000, 5);
        assert_eq!(small.service_limit(0, 500), (0, 1));
        // Windows: t never exceeds w, even with the rounding margin.
        let fw = shape(Algorithm::FixedWindow, 100, 60_000, 100);
        assert_eq!(fw.service_limit(99, 60_001), (99, 60));
        assert_eq!(fw.service_limit(99, 30_500), (99, 31));
        for algorithm in Algorithm::ALL {
            for (limit, window_ms, burst) in [(10, 1000, 50), (7, 250, 3), (1, 86_400_000, 1)] {
                let s = shape(algorithm, limit, window_ms, burst);
                for remaining in [0, 1, limit, burst] {
                    for reset in [0, 1, window_ms, window_ms + 1, 2 * window_ms + 7] {
                        let (r, t) = s.service_limit(remaining, reset);
                        assert!(r <= limit && t <= s.window_s(), "{s:?}: {r} {t}");
                    }
                }
            }
        }
    }

    /// The rule `a/r` of one `rate_limit` block, built as the snapshot builds it (no Redis).
    fn limiter(rate_limit: &str) -> RateLimiter {
        let text = format!("app: a\nrules:\n  r:\n    rate_limit: {rate_limit}\n");
        let loaded = crate::policy::load_sources(&[("a.yaml".into(), text)])
            .unwrap_or_else(|e| panic!("{rate_limit}: {e:?}"));
        let (compiled, _) =
            crate::compile::compile(&loaded.policy, &crate::plugin::PluginSet::empty())
                .unwrap_or_else(|e| panic!("{rate_limit}: {e:?}"));
        let c = compiled.rules().next().expect("one rule");
        match (&c.rule.kind, &c.kind) {
            (
                crate::policy::RuleKind::RateLimit(rl),
                crate::compile::CompiledKind::RateLimit(crl),
            ) => RateLimiter::new(&c.rule, rl, crl, &c.keys, None),
            _ => panic!("not a rate limit: {rate_limit}"),
        }
    }

    const FIXED: &str = "{ algorithm: fixed_window, limit: 10, window: 1m, on_redis_error: deny }";

    /// `interpret` of a script reply `[allowed, limit index, remaining, reset ms, retry ms]`
    /// against the rule's own limits.
    fn decide(rl: &RateLimiter, reply: Result<Vec<i64>, StoreError>) -> Decision {
        let shapes = &rl.fixed.as_ref().expect("fixed limits").shapes;
        rl.interpret(reply, shapes).expect("a decision")
    }

    #[test]
    fn an_admission_reports_the_limit_and_the_quota_left() {
        let rl = limiter(FIXED);
        let d = decide(&rl, Ok(vec![1, 0, 7, 30_000, 0]));
        assert_eq!(
            d,
            Decision {
                limit: 10,
                remaining: 7,
                reset_after_ms: 30_000,
                policy_remaining: 7,
                policy_reset_s: 30,
                quota_known: true,
                ..Decision::bare(true)
            }
        );
        // A retry hint on an admission means nothing and is dropped.
        assert_eq!(
            decide(&rl, Ok(vec![1, 0, 7, 30_000, 999])).retry_after_ms,
            0
        );
    }

    #[test]
    fn a_denial_says_when_to_retry_and_t_is_no_later() {
        let rl = limiter(FIXED);
        let d = decide(&rl, Ok(vec![0, 0, 0, 30_000, 12_345]));
        assert_eq!(
            d,
            Decision {
                limit: 10,
                reset_after_ms: 30_000,
                retry_after_ms: 12_345,
                // Not the window's 30 s: a client may retry after 13 s.
                policy_reset_s: 13,
                quota_known: true,
                ..Decision::bare(false)
            }
        );
    }

    #[test]
    fn negative_and_out_of_range_reply_values_are_clamped() {
        let rl = limiter(FIXED);
        let d = decide(&rl, Ok(vec![0, -1, -3, -1, -5]));
        assert_eq!(
            (
                d.limit_index,
                d.remaining,
                d.reset_after_ms,
                d.retry_after_ms
            ),
            (0, 0, 0, 0)
        );
        assert_eq!((d.limit, d.policy_remaining, d.policy_reset_s), (10, 0, 0));
        // An index past the rule's limits names its last limit.
        let two = limiter(
            "{ limits: [{ algorithm: fixed_window, limit: 5, window: 1m }, { algorithm: fixed_window, limit: 20, window: 1h }] }",
        );
        let d = decide(&two, Ok(vec![0, 1, 0, 600_000, 600_000]));
        assert_eq!((d.limit_index, d.limit, d.policy_reset_s), (1, 20, 600));
        let d = decide(&two, Ok(vec![0, 9, 0, 1000, 1000]));
        assert_eq!((d.limit_index, d.limit), (1, 20));
        let d = decide(&two, Ok(vec![1, 0, 4, 1000, 0]));
        assert_eq!((d.limit_index, d.limit, d.remaining), (0, 5, 4));
    }

    #[test]
    fn a_bucket_reports_its_burst_and_the_policys_share_of_it() {
        let rl = limiter("{ algorithm: token_bucket, limit: 10, window: 1s, burst: 50 }");
        let d = decide(&rl, Ok(vec![1, 0, 49, 100, 0]));
        assert_eq!(
            (
                d.limit,
                d.burst,
                d.remaining,
                d.policy_remaining,
                d.policy_reset_s
            ),
            (10, Some(50), 49, 10, 0)
        );
        let window = decide(&limiter(FIXED), Ok(vec![1, 0, 1, 1, 0]));
        assert_eq!(window.burst, None);
    }

    #[test]
    fn a_shadow_rule_admits_what_it_would_deny_and_advertises_no_quota() {
        let rl = limiter("{ algorithm: fixed_window, limit: 10, window: 1m, shadow: true }");
        let d = decide(&rl, Ok(vec![0, 0, 0, 30_000, 5_000]));
        assert!(d.allowed && d.shadow_denied && !d.quota_known, "{d:?}");
        assert_eq!((d.limit, d.retry_after_ms), (10, 5_000));
        let d = decide(&rl, Ok(vec![1, 0, 3, 30_000, 0]));
        assert!(d.allowed && !d.shadow_denied && !d.quota_known, "{d:?}");
    }

    #[test]
    fn an_unavailable_redis_or_a_malformed_reply_is_decided_by_on_redis_error() {
        let deny = limiter(FIXED);
        let denied = Decision {
            limit: 10,
            retry_after_ms: 1000,
            degraded: true,
            ..Decision::bare(false)
        };
        let outage = StoreError::Timeout(std::time::Duration::from_millis(300));
        assert_eq!(decide(&deny, Err(outage)), denied);
        let open = StoreError::CircuitOpen("refused".into());
        assert_eq!(decide(&deny, Err(open)), denied);
        assert_eq!(decide(&deny, Ok(vec![1, 0, 3])), denied);
        let allow =
            limiter("{ algorithm: fixed_window, limit: 10, window: 1m, on_redis_error: allow }");
        let outage = StoreError::Timeout(std::time::Duration::from_millis(300));
        assert_eq!(
            decide(&allow, Err(outage)),
            Decision {
                limit: 10,
                degraded: true,
                ..Decision::bare(true)
            }
        );
    }

    #[test]
    fn an_error_about_the_data_is_not_an_outage() {
        let rl = limiter(FIXED);
        let shapes = &rl.fixed.as_ref().expect("fixed limits").shapes;
        let wrong = StoreError::WrongType {
            namespace: "a:ratelimit:r:".into(),
        };
        match rl.interpret(Err(wrong), shapes) {
            Err(CheckError::Store(StoreError::WrongType { namespace })) => {
                assert_eq!(namespace, "a:ratelimit:r:");
            }
            other => panic!("{other:?}"),
        }
    }

    const JOBS: &str = "{ algorithm: concurrency, limit: 4, lease: 30s }";
    const MEMBER: &str = "AbCdEfGhIjKlMnOpQrSt-_";

    fn lease(id: &str, member: &str, cost: &str) -> String {
        format!("{}.{member}.{cost}", B64.encode(id))
    }

    #[test]
    fn a_lease_names_its_id_member_and_cost() {
        let rl = limiter(JOBS);
        assert_eq!(
            rl.parse_lease(&lease("user-1", MEMBER, "2")),
            Ok(("user-1".to_string(), MEMBER.to_string(), 2))
        );
        // Any id the API accepts survives the round trip, dots and braces included.
        for id in ["a.b.c", "{x}:%", "ü", "i".repeat(512).as_str()] {
            assert_eq!(
                rl.parse_lease(&lease(id, MEMBER, "4")),
                Ok((id.to_string(), MEMBER.to_string(), 4))
            );
        }
    }

    #[test]
    fn a_malformed_lease_is_refused_naming_at_most_64_characters() {
        let rl = limiter(JOBS);
        let short = &MEMBER[..21];
        let long = format!("{MEMBER}A");
        let bad_char = MEMBER.replace('-', "+");
        let not_utf8 = format!("{}.{MEMBER}.1", B64.encode([0xff, 0xfe]));
        let too_long = lease(&"i".repeat(513), MEMBER, "1");
        for bad in [
            String::new(),
            format!("{}.{MEMBER}", B64.encode("u")),
            format!("{}.1", lease("u", MEMBER, "1")),
            format!("not base64!.{MEMBER}.1"),
            not_utf8,
            lease("", MEMBER, "1"),
            too_long.clone(),
            lease("u", MEMBER, "0"),
            lease("u", MEMBER, "5"),
            lease("u", MEMBER, "-1"),
            lease("u", MEMBER, "two"),
            lease("u", short, "1"),
            lease("u", &long, "1"),
            lease("u", &bad_char, "1"),
        ] {
            let shown: String = bad.chars().take(64).collect();
            assert_eq!(
                rl.parse_lease(&bad),
                Err(InputError::BadLease(shown)),
                "{bad}"
            );
        }
        let refused = rl.parse_lease(&too_long).map(|_| ()).unwrap_err();
        assert_eq!(
            refused.to_string(),
            format!("malformed lease `{}`", &too_long[..64])
        );
    }
}
