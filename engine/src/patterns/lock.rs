//! Locks and semaphores at request time: one EVALSHA per attempt, polite waiting.
//!
//! A waiting acquire never spins: it retries with jittered exponential backoff (capped by the
//! script's own hint of when the next lease lapses), bounded by the request's `wait_ms` (at
//! most the rule's `max_wait`), and a release through this engine wakes its local waiters at
//! once.

use std::time::Duration;

use metrics::Counter;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::lost_grant::LostGrant;
use super::random;
use super::{InputError, MAX_ID_BYTES, check_id};
use crate::compile::lock::LockScripts;
use crate::compile::{CompiledLock, KeySpace};
use crate::policy::Rule;
use crate::policy::durability::Durability;
use crate::policy::lock::Lock;
use crate::store::{Pinned, Store, StoreError};

/// The fence counter outlives every lease by far; after it expires fences still increase,
/// being at least Redis TIME in µs.
const FENCE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Waiters are woken by stripe: a wake-up for another resource of the stripe only costs an
/// early retry.
const WAKE_STRIPES: usize = 64;
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{0}")]
    BadRequest(String),
    #[error("malformed token")]
    BadToken,
    #[error("held by another holder (retry in about {retry_after_ms} ms)")]
    Held { retry_after_ms: u64 },
    #[error("this token does not hold the lock (never held, or its lease lapsed)")]
    NotOwner,
    #[error("no secure random source: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

/// A granted lease.
#[derive(Debug, Clone)]
pub struct Lease {
    pub token: String,
    pub fence: u64,
    pub expires_in_ms: u64,
}

struct Counters {
    acquired: Counter,
    busy: Counter,
    retried: Counter,
    extended: Counter,
    released: Counter,
    refused: Counter,
    failed: Counter,
}

impl Counters {
    fn new(app: &str, rule: &str) -> Self {
        let c = |outcome: &'static str| metrics::counter!("patternd_lock_requests_total", "app" => app.to_string(), "rule" => rule.to_string(), "outcome" => outcome);
        Self {
            acquired: c("acquired"),
            busy: c("busy"),
            retried: c("retry"),
            extended: c("extended"),
            released: c("released"),
            refused: c("not_owner"),
            failed: c("failed"),
        }
    }
}

/// A lock rule ready to serve.
pub struct Locker {
    pub app: String,
    pub rule: String,
    keys: KeySpace,
    scripts: LockScripts,
    pub ttl: Duration,
    pub max_ttl: Duration,
    pub max_wait: Duration,
    pub permits: u64,
    permits_arg: String,
    fence_ttl_arg: String,
    released_ttl_arg: String,
    wake: Vec<Notify>,
    counters: Counters,
    /// Replicas a grant or an extension must reach before it is answered (see
    /// `policy::durability`).
    durability: Option<Durability>,
}

fn token_random() -> Result<String, LockError> {
    random::token::<{ random::TOKEN_BYTES }>().map_err(|e| LockError::Random(e.to_string()))
}

/// `<fence>.<22 base64url>`: the fence is part of the token (so extend can report it without
/// another structure), the random part makes it unguessable.
fn parse_token(token: &str) -> Option<u64> {
    let (fence, secret) = token.split_once('.')?;
    if !random::is_token(secret) {
        return None;
    }
    if fence.is_empty() || fence.len() > 20 || !fence.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    fence.parse().ok()
}

/// The resource name: the same bounds as any entity id, worded for this API.
fn check_resource(resource: &str) -> Result<(), LockError> {
    check_id(resource).map_err(|e| match e {
        InputError::EmptyId => LockError::BadRequest("the resource name must not be empty".into()),
        InputError::IdTooLong(n) => LockError::BadRequest(format!(
            "the resource name is {n} bytes; at most {MAX_ID_BYTES} are allowed"
        )),
        other => LockError::Input(other),
    })
}

fn jitter(d: Duration) -> Duration {
    // Full jitter over [d/2, d]: waiters that collided once spread out.
    d.mul_f64(0.5 + random::draw() / 2.0)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Locker {
    pub fn new(rule: &Rule, spec: &Lock, compiled: &CompiledLock, keys: &KeySpace) -> Self {
        Self {
            app: rule.app.clone(),
            rule: rule.name.clone(),
            keys: keys.clone(),
            scripts: compiled.scripts.clone(),
            ttl: spec.ttl,
            max_ttl: spec.max_ttl,
            max_wait: spec.max_wait,
            permits: spec.permits,
            permits_arg: spec.permits.to_string(),
            fence_ttl_arg: ms(FENCE_TTL.max(spec.max_ttl * 2)).to_string(),
            released_ttl_arg: ms(spec.max_ttl.max(Duration::from_secs(60))).to_string(),
            wake: (0..WAKE_STRIPES).map(|_| Notify::new()).collect(),
            counters: Counters::new(&rule.app, &rule.name),
            durability: spec.durability,
        }
    }

    /// The connection of a call: one of the durable pool when `WAIT` follows it.
    fn pin(&self, store: &Store) -> Result<Pinned, LockError> {
        match self.durability {
            Some(_) => self.counted(store.pin_durable()),
            None => Ok(store.pin()),
        }
    }

    /// `WAIT` for the rule's replicas after a write on `pin`, when the rule asks for it.
    async fn replicated(&self, store: &Store, pin: &Pinned, key: &str) -> Result<(), LockError> {
        match self.durability {
            Some(d) => self.counted(store.wait_replicas(pin, key, d.replicas, d.timeout).await),
            None => Ok(()),
        }
    }

    fn stripe(&self, resource: &str) -> &Notify {
        let mut h: u32 = 0x811c_9dc5;
        for b in resource.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        &self.wake[h as usize % self.wake.len()]
    }

    fn lease_ms(&self, ttl_ms: Option<u64>) -> Result<u64, LockError> {
        match ttl_ms {
            None => Ok(ms(self.ttl).max(1)),
            Some(0) => Err(LockError::BadRequest("`ttl_ms` must be at least 1".into())),
            Some(t) if t > ms(self.max_ttl) => Err(LockError::BadRequest(format!(
                "`ttl_ms` {t} is above the rule's max_ttl of {} ms",
                ms(self.max_ttl)
            ))),
            Some(t) => Ok(t),
        }
    }

    /// `wait_ms` over `max_wait` is refused like `ttl_ms` over `max_ttl`: a silent cap would
    /// answer 409 sooner than the client asked to wait, and it could not tell why.
    fn wait(&self, wait_ms: Option<u64>) -> Result<Duration, LockError> {
        match wait_ms {
            Some(w) if w > ms(self.max_wait) => Err(LockError::BadRequest(format!(
                "`wait_ms` {w} is above the rule's max_wait of {} ms",
                ms(self.max_wait)
            ))),
            w => Ok(Duration::from_millis(w.unwrap_or(0))),
        }
    }

    fn counted<T>(&self, r: Result<T, StoreError>) -> Result<T, LockError> {
        r.map_err(|e| {
            self.counters.failed.increment(1);
            LockError::Store(e)
        })
    }

    /// Acquires a permit, waiting up to `wait_ms` (at most the rule's `max_wait`).
    pub async fn acquire(
        &self,
        store: &Store,
        resource: &str,
        ttl_ms: Option<u64>,
        wait_ms: Option<u64>,
    ) -> Result<Lease, LockError> {
        check_resource(resource)?;
        let lease_ms = self.lease_ms(ttl_ms)?;
        let lease = lease_ms.to_string();
        let wait = self.wait(wait_ms)?;
        let deadline = Instant::now() + wait;
        let keys = self.keys.keys(resource, ["h", "fence"]);
        let mut backoff = FIRST_BACKOFF;
        let wake = self.stripe(resource);
        loop {
            // Registered before the attempt, so a release between the attempt and the sleep
            // is not missed.
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let random = token_random()?;
            let args: [&[u8]; 4] = [
                random.as_bytes(),
                lease.as_bytes(),
                self.permits_arg.as_bytes(),
                self.fence_ttl_arg.as_bytes(),
            ];
            // Should the answer be lost (Redis stalled past the timeout, or the request
            // cancelled), the permit Redis grants late is taken back: see `LostGrant`. The
            // engine knows the token's random part; the abandon script finds the holder by it.
            let pin = self.pin(store)?;
            let lost = LostGrant::new(
                store,
                &pin,
                &self.scripts.abandon,
                vec![keys[0].clone()],
                vec![random.clone().into_bytes()],
                Duration::from_millis(lease_ms),
                "lock",
            );
            let reply: Vec<String> = self.counted(
                store
                    .eval_pinned(
                        &pin,
                        store.command_timeout(),
                        &self.scripts.acquire,
                        &keys,
                        &args,
                    )
                    .await,
            )?;
            match reply.as_slice() {
                [ok, token, ttl] if ok == "1" => {
                    // A fence of 0 would tell the protected resource to accept anything: a
                    // reply we cannot read is an error, never a made-up fence (the lease it
                    // may have granted is taken back when `lost` drops armed).
                    let (Some(fence), Ok(expires_in_ms)) = (parse_token(token), ttl.parse()) else {
                        self.counters.failed.increment(1);
                        return Err(LockError::Internal(format!(
                            "unexpected reply of the acquire script: {reply:?}"
                        )));
                    };
                    // Too few replicas have the grant: it is not answered, and `lost`, still
                    // armed, takes it back on the same connection.
                    self.replicated(store, &pin, &keys[0]).await?;
                    lost.disarm();
                    self.counters.acquired.increment(1);
                    return Ok(Lease {
                        fence,
                        token: token.clone(),
                        expires_in_ms,
                    });
                }
                [_, hint] => {
                    lost.disarm();
                    let hint = Duration::from_millis(hint.parse().unwrap_or(1).max(1));
                    let now = Instant::now();
                    if now >= deadline {
                        self.counters.busy.increment(1);
                        return Err(LockError::Held {
                            retry_after_ms: ms(hint),
                        });
                    }
                    self.counters.retried.increment(1);
                    let pause = jitter(backoff).min(hint).min(deadline - now);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = &mut notified => {}
                    }
                }
                other => {
                    self.counters.failed.increment(1);
                    return Err(LockError::Internal(format!(
                        "unexpected reply of the acquire script: {other:?}"
                    )));
                }
            }
        }
    }

    /// Extends the lease of `token` to end `ttl_ms` from now (default: the rule's ttl).
    pub async fn extend(
        &self,
        store: &Store,
        resource: &str,
        token: &str,
        ttl_ms: Option<u64>,
    ) -> Result<Lease, LockError> {
        check_resource(resource)?;
        let fence = parse_token(token).ok_or(LockError::BadToken)?;
        let lease = self.lease_ms(ttl_ms)?.to_string();
        let keys = [self.keys.key(resource, "h")];
        let args: [&[u8]; 2] = [token.as_bytes(), lease.as_bytes()];
        let pin = self.pin(store)?;
        let reply: Vec<u64> = self.counted(
            store
                .eval_pinned(
                    &pin,
                    store.command_timeout(),
                    &self.scripts.extend,
                    &keys,
                    &args,
                )
                .await,
        )?;
        match reply.as_slice() {
            [1, ttl] => {
                // Not replicated in time: 503; the primary has the longer lease, which is
                // harmless (the holder may retry, and fences order any writes).
                self.replicated(store, &pin, &keys[0]).await?;
                self.counters.extended.increment(1);
                Ok(Lease {
                    token: token.to_string(),
                    fence,
                    expires_in_ms: *ttl,
                })
            }
            _ => {
                self.counters.refused.increment(1);
                Err(LockError::NotOwner)
            }
        }
    }

    /// Releases the lease of `token`. True when released now, false when this token was
    /// already released; `NotOwner` when it holds nothing (wrong token, or lapsed).
    pub async fn release(
        &self,
        store: &Store,
        resource: &str,
        token: &str,
    ) -> Result<bool, LockError> {
        check_resource(resource)?;
        parse_token(token).ok_or(LockError::BadToken)?;
        let keys = self.keys.keys(resource, ["h", "rel"]);
        let args: [&[u8]; 2] = [token.as_bytes(), self.released_ttl_arg.as_bytes()];
        let n: i64 = self.counted(store.eval(&self.scripts.release, &keys, &args).await)?;
        match n {
            1 => {
                self.counters.released.increment(1);
                self.stripe(resource).notify_waiters();
                Ok(true)
            }
            0 => Ok(false),
            _ => {
                self.counters.refused.increment(1);
                Err(LockError::NotOwner)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_malformed_ones_do_not() {
        let t = format!("1732712345123456.{}", token_random().expect("random"));
        assert_eq!(parse_token(&t), Some(1_732_712_345_123_456));
        for bad in [
            "",
            ".",
            "12",
            "12.short",
            "x1.AAAAAAAAAAAAAAAAAAAAAA",
            ".AAAAAAAAAAAAAAAAAAAAAA",
            "1.AAAAAAAAAAAAAAAAAAAAA{",
        ] {
            assert_eq!(parse_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(100));
            assert!(j >= Duration::from_millis(50) && j <= Duration::from_millis(100));
        }
    }
}
