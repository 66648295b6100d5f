//! Redis: the connection pool, script loading and invocation. Knows nothing about HTTP.
//!
//! The request path uses a small pool of multiplexed, auto-reconnecting connections
//! (`ConnectionManager`): concurrent requests pipeline on them and no request opens a
//! connection. Every call is bounded by the command timeout, so a dead Redis answers an error
//! in bounded time instead of hanging a request.

pub mod managed;
pub mod near;
pub mod tracking;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, FromRedisValue, ServerErrorKind};

use crate::compile::Script;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("script `{name}` could not be loaded: {source}")]
    ScriptLoad {
        name: String,
        #[source]
        source: redis::RedisError,
    },
}

impl StoreError {
    /// True when the failure says nothing about the request: Redis is down, slow, or
    /// unreachable. Such failures are decided by the rule's `on_redis_error`.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Timeout(_) => true,
            StoreError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || matches!(
                        e.kind(),
                        ErrorKind::Server(
                            ServerErrorKind::BusyLoading
                                | ServerErrorKind::TryAgain
                                | ServerErrorKind::ClusterDown
                                | ServerErrorKind::MasterDown
                                | ServerErrorKind::ReadOnly
                        )
                    )
            }
            _ => false,
        }
    }
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub url: String,
    pub pool_size: usize,
    /// Bound on every command, including the wait for a reconnect.
    pub command_timeout: Duration,
}

/// One connection of the pool, held on to. Redis runs one connection's commands in the order
/// they were sent, so a call through it runs after every earlier call through it, including
/// one whose caller gave up waiting (its command still sits in the connection, and Redis runs
/// it when it gets to it). That is how a grant whose answer was lost is undone after it ran.
#[derive(Clone)]
pub struct Pinned {
    conn: ConnectionManager,
}

/// The Redis pool. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
    timeout: Duration,
    url: String,
    /// Resolved once: looking a metric up by name on every command costs a hash and a lock.
    latency: metrics::Histogram,
}

impl Store {
    /// Creates the pool without waiting for Redis: connections are established lazily and
    /// re-established in the background, so patternd starts (and answers `on_redis_error`
    /// decisions, and `/readyz` 503) while Redis is still down.
    pub fn new(cfg: &StoreConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(cfg.url.as_str()).map_err(StoreError::Url)?;
        let mgr_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.command_timeout))
            // No response timeout here: `run` bounds every command (including any wait for a
            // reconnect) with one tokio timer; a second, per-request timer inside redis-rs
            // measurably cost CPU on every decision.
            .set_response_timeout(None)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(3);
        let size = cfg.pool_size.max(1);
        let mut conns = Vec::with_capacity(size);
        for _ in 0..size {
            conns.push(
                ConnectionManager::new_lazy_with_config(client.clone(), mgr_cfg.clone())
                    .map_err(StoreError::Url)?,
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                conns,
                next: AtomicUsize::new(0),
                timeout: cfg.command_timeout,
                url: cfg.url.clone(),
                latency: metrics::histogram!("patternd_redis_seconds"),
            }),
        })
    }

    /// The URL without its password, for logs.
    pub fn redacted_url(&self) -> String {
        redact(&self.inner.url)
    }

    fn conn(&self) -> ConnectionManager {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.conns.len();
        self.inner.conns[i].clone()
    }

    /// The next connection of the pool, for calls that must follow each other (see `Pinned`).
    pub fn pin(&self) -> Pinned {
        Pinned { conn: self.conn() }
    }

    /// The bound on every command (`--redis-timeout`).
    pub fn command_timeout(&self) -> Duration {
        self.inner.timeout
    }

    async fn run<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        self.run_on(self.conn(), self.inner.timeout, cmd).await
    }

    async fn run_on<T: FromRedisValue>(
        &self,
        mut conn: ConnectionManager,
        timeout: Duration,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let res = tokio::time::timeout(timeout, cmd.query_async::<T>(&mut conn)).await;
        self.inner.latency.record(started.elapsed().as_secs_f64());
        match res {
            Err(_) => Err(StoreError::Timeout(timeout)),
            Ok(r) => r.map_err(StoreError::from),
        }
    }

    /// Runs a script by SHA. On NOSCRIPT (Redis restarted, failed over, or SCRIPT FLUSH) the
    /// script is loaded again and the call retried once, transparently.
    pub async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[&[u8]],
    ) -> Result<T, StoreError> {
        self.eval_on(None, self.inner.timeout, script, keys, args)
            .await
    }

    /// `eval` on a pinned connection (the NOSCRIPT retry too), bounded by `timeout`.
    pub async fn eval_pinned<T: FromRedisValue>(
        &self,
        pin: &Pinned,
        timeout: Duration,
        script: &Script,
        keys: &[String],
        args: &[&[u8]],
    ) -> Result<T, StoreError> {
        self.eval_on(Some(pin), timeout, script, keys, args).await
    }

    async fn eval_on<T: FromRedisValue>(
        &self,
        pin: Option<&Pinned>,
        timeout: Duration,
        script: &Script,
        keys: &[String],
        args: &[&[u8]],
    ) -> Result<T, StoreError> {
        let conn = || pin.map_or_else(|| self.conn(), |p| p.conn.clone());
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&script.sha).arg(keys.len()).arg(keys);
        for a in args {
            cmd.arg(*a);
        }
        match self.run_on(conn(), timeout, &cmd).await {
            Err(StoreError::Redis(e))
                if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                tracing::warn!(script = %script.name, "NOSCRIPT: reloading the script into Redis");
                metrics::counter!("patternd_script_reloads_total").increment(1);
                self.load_script(script).await?;
                self.run_on(conn(), timeout, &cmd).await
            }
            other => other,
        }
    }

    /// SCRIPT LOAD, checking that Redis computed the SHA we expect.
    pub async fn load_script(&self, script: &Script) -> Result<(), StoreError> {
        let sha: String = self
            .run(redis::cmd("SCRIPT").arg("LOAD").arg(&script.source))
            .await
            .map_err(|e| match e {
                StoreError::Redis(source) => StoreError::ScriptLoad {
                    name: script.name.clone(),
                    source,
                },
                other => other,
            })?;
        if sha != script.sha {
            tracing::error!(script = %script.name, expected = %script.sha, got = %sha, "Redis computed another SHA for a script");
        }
        Ok(())
    }

    /// Loads every script (at start and on reload, before a new snapshot is swapped in).
    pub async fn load_scripts(&self, scripts: &[Arc<Script>]) -> Result<(), StoreError> {
        for s in scripts {
            self.load_script(s).await?;
        }
        Ok(())
    }

    /// True when every script is loaded (for `/readyz`).
    pub async fn scripts_loaded(&self, scripts: &[Arc<Script>]) -> Result<bool, StoreError> {
        if scripts.is_empty() {
            return Ok(true);
        }
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("EXISTS");
        for s in scripts {
            cmd.arg(&s.sha);
        }
        let found: Vec<i64> = self.run(&cmd).await?;
        Ok(found.iter().all(|&f| f == 1))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.run(&redis::cmd("PING")).await?;
        Ok(())
    }
}

/// Hides the password in `redis://user:password@host`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("redis://u:secret@h:1/0"),
            "redis://u:***@h:1/0"
        );
        assert_eq!(super::redact("redis://h:1"), "redis://h:1");
    }
}
