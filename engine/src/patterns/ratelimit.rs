//! Rate limiting at request time: one EVALSHA per decision.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use metrics::Counter;

use super::{InputError, check_id};
use crate::compile::{CompiledRateLimit, KeySpace, Script};
use crate::policy::{IdFrom, Limit, OnRedisError, RateLimit, Rule};
use crate::store::Store;

/// A rate-limit rule ready to serve. Built once per snapshot: everything that does not depend
/// on the request (script, key suffixes, header text, metric handles) is prepared here.
pub struct RateLimiter {
    pub app: String,
    pub rule: String,
    keys: KeySpace,
    subs: Vec<String>,
    script: Arc<Script>,
    release: Option<Arc<Script>>,
    limits: Vec<Limit>,
    max_cost: u64,
    pub on_redis_error: OnRedisError,
    pub shadow: bool,
    pub id_from: Option<IdFrom>,
    policy_header: String,
    item_names: Vec<String>,
    counters: Counters,
}

struct Counters {
    allowed: Counter,
    denied: Counter,
    shadow_denied: Counter,
    degraded_allowed: Counter,
    degraded_denied: Counter,
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
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The reported limit (the denying one, or the one with least remaining).
    pub limit: u64,
    pub limit_index: usize,
    pub remaining: u64,
    pub reset_after_ms: u64,
    pub retry_after_ms: u64,
    /// Concurrency rules: the lease to release when done.
    pub lease: Option<String>,
    /// Redis could not be asked; `on_redis_error` decided.
    pub degraded: bool,
    /// Shadow rule that would have denied.
    pub shadow_denied: bool,
}

impl RateLimiter {
    pub fn new(rule: &Rule, rl: &RateLimit, compiled: &CompiledRateLimit, keys: &KeySpace) -> Self {
        let item_names: Vec<String> = if rl.limits.len() == 1 {
            vec![rule.name.clone()]
        } else {
            (0..rl.limits.len())
                .map(|i| format!("{}-{i}", rule.name))
                .collect()
        };
        // IETF httpapi ratelimit-headers: `"name";q=<quota>;w=<window seconds>` per limit.
        let policy_header = rl
            .limits
            .iter()
            .zip(&item_names)
            .map(|(l, n)| format!("\"{n}\";q={};w={}", l.capacity(), l.window.as_secs().max(1)))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            app: rule.app.clone(),
            rule: rule.name.clone(),
            keys: keys.clone(),
            subs: compiled.subs.clone(),
            script: compiled.script.clone(),
            release: compiled.release.clone(),
            limits: rl.limits.clone(),
            max_cost: rl.max_cost(),
            on_redis_error: rl.on_redis_error,
            shadow: rl.shadow,
            id_from: rl.id_from.clone(),
            policy_header,
            item_names,
            counters: Counters::new(&rule.app, &rule.name),
        }
    }

    pub fn policy_header(&self) -> &str {
        &self.policy_header
    }

    /// The `RateLimit` header item name of the reported limit.
    pub fn item_name(&self, index: usize) -> &str {
        self.item_names
            .get(index)
            .map(String::as_str)
            .unwrap_or(&self.rule)
    }

    pub fn is_concurrency(&self) -> bool {
        self.release.is_some()
    }

    /// Validates request input; the caller turns errors into 400s.
    pub fn validate(&self, id: &str, cost: u64) -> Result<(), InputError> {
        check_id(id)?;
        if cost > self.max_cost {
            return Err(InputError::CostTooHigh {
                cost,
                max: self.max_cost,
            });
        }
        Ok(())
    }

    /// One decision: one EVALSHA. Redis failures never surface as errors here: the rule's
    /// `on_redis_error` decides, and the decision says it was degraded.
    pub async fn check(&self, store: &Store, id: &str, cost: u64) -> Decision {
        let keys = self.keys.keys(id, self.subs.iter().map(String::as_str));
        let cost_arg = cost.to_string();
        let lease_member = self.is_concurrency().then(random_token);
        let mut args: Vec<&[u8]> = vec![cost_arg.as_bytes()];
        if let Some(m) = &lease_member {
            args.push(m.as_bytes());
        }
        let reply: Result<Vec<i64>, _> = store.eval(&self.script, &keys, &args).await;
        match reply {
            Ok(v) if v.len() == 5 => {
                let allowed = v[0] == 1;
                let idx = usize::try_from(v[1])
                    .unwrap_or(0)
                    .min(self.limits.len().saturating_sub(1));
                let lease = match (allowed, lease_member) {
                    // A cost-0 query holds no slot, so it gets no lease: one would name
                    // cost 0, which `parse_lease` (rightly) refuses as malformed.
                    (true, Some(m)) if cost > 0 => Some(format!("{}.{m}.{cost}", B64.encode(id))),
                    _ => None,
                };
                let d = Decision {
                    allowed: allowed || self.shadow,
                    limit: self.limits.get(idx).map(Limit::capacity).unwrap_or(0),
                    limit_index: idx,
                    remaining: non_negative(v[2]),
                    reset_after_ms: non_negative(v[3]),
                    retry_after_ms: if allowed { 0 } else { non_negative(v[4]) },
                    lease,
                    degraded: false,
                    shadow_denied: !allowed && self.shadow,
                };
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
            Err(e) => {
                if e.is_unavailable() {
                    // Every request fails the same way during an outage: log once a second,
                    // the metrics count every one.
                    if log_gate() {
                        tracing::warn!(app = %self.app, rule = %self.rule, error = %e, "Redis unavailable; on_redis_error decides");
                    }
                } else {
                    tracing::error!(app = %self.app, rule = %self.rule, error = %e, "rate-limit script failed; on_redis_error decides");
                }
                self.degraded()
            }
        }
    }

    fn degraded(&self) -> Decision {
        let allowed = self.on_redis_error == OnRedisError::Allow;
        if allowed {
            self.counters.degraded_allowed.increment(1);
        } else {
            self.counters.degraded_denied.increment(1);
        }
        let first = self.limits.first();
        Decision {
            allowed,
            limit: first.map(Limit::capacity).unwrap_or(0),
            limit_index: 0,
            remaining: 0,
            reset_after_ms: 0,
            // A denied client should come back soon: Redis may be back in a second.
            retry_after_ms: if allowed { 0 } else { 1000 },
            lease: None,
            degraded: true,
            shadow_denied: false,
        }
    }

    /// Releases a concurrency lease. Ok(false) when it was not held (expired or released).
    pub async fn release(&self, store: &Store, lease: &str) -> Result<bool, ReleaseError> {
        let script = self.release.as_ref().ok_or(ReleaseError::NotConcurrency)?;
        let (id, member, cost) = self.parse_lease(lease)?;
        let keys = self.keys.keys(&id, self.subs.iter().map(String::as_str));
        let cost_arg = cost.to_string();
        let removed: i64 = store
            .eval(script, &keys, &[member.as_bytes(), cost_arg.as_bytes()])
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
        if cost == 0 || cost > self.max_cost || member.len() != 22 || !member.bytes().all(is_b64) {
            return Err(bad());
        }
        Ok((id, member.to_string(), cost))
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

fn non_negative(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn is_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// 128 random bits from the OS CSPRNG, URL-safe (22 characters).
pub fn random_token() -> String {
    let mut buf = [0u8; 16];
    // getrandom only fails if the OS has no entropy source at all; fall back to the time
    // rather than panic, since a lease id only has to be unique, not secret.
    if getrandom::fill(&mut buf).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        buf = nanos.to_le_bytes();
    }
    B64.encode(buf)
}
