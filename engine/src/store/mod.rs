//! Redis: the connection pool, script loading and invocation. Knows nothing about HTTP.
//!
//! The request path uses a small pool of multiplexed, auto-reconnecting connections
//! (`ConnectionManager`): concurrent requests pipeline on them and no request opens a
//! connection. Every call is bounded by the command timeout, so a dead Redis answers an error
//! in bounded time instead of hanging a request.

pub mod admin;
pub mod batch;
pub mod blocking;
pub mod connect;
pub mod managed;
pub mod near;
pub mod pubsub;
mod route;
mod slots;
pub mod tracking;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterConfig;
use redis::{ErrorKind, FromRedisValue, ServerErrorKind};

use crate::compile::Script;
use crate::compile::keys;
use connect::{ConnectError, Endpoint, RedisTarget};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
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
    /// The breaker is open: Redis failed at the connection level and has not answered a
    /// probe since. Nothing was sent.
    #[error("Redis is unavailable (circuit open: {0})")]
    CircuitOpen(Arc<str>),
    /// A key the script touched holds another type than the rule writes: another client
    /// wrote it. Not an outage; the id is unusable until the key is fixed.
    /// The call's keys span cluster slots (`slots`): a bug in a script's key layout, refused
    /// before it is sent, so it shows on one node as it would on a cluster.
    #[error("script `{script}` was called with keys in several cluster slots: {detail}")]
    CrossSlot { script: String, detail: String },
    /// A write the rule wants on `wanted` replicas before it is acknowledged reached only
    /// `acked` within the rule's `durability.timeout` (replication is asynchronous; a
    /// replica is down or lagging). The write is applied on the primary.
    #[error(
        "the write reached {acked} of the {wanted} replicas the rule asks for (WAIT timed out \
         after {timeout:?})"
    )]
    NotReplicated {
        wanted: u32,
        acked: u32,
        timeout: Duration,
    },
    /// The batch (`batch`) this call was in ended without an answer (its task stopped).
    #[error("the batched script call this call was part of ended without an answer")]
    BatchLost,
    /// A batch script's reply was not the replies of its calls: a bug.
    #[error(
        "batch script `{script}` answered {elements} elements, not the replies of its {calls} calls"
    )]
    BatchReply {
        script: String,
        calls: usize,
        elements: usize,
    },
    #[error(
        "WRONGTYPE: a key of this rule (under `{namespace}`) holds another type of value than \
         the rule writes; another client wrote it"
    )]
    WrongType { namespace: String },
}

impl StoreError {
    /// True when the failure says nothing about the request: Redis is down, slow,
    /// unreachable, or refuses every command for now (loading, read-only replica, out of
    /// memory, busy with a script, our credentials refused). Such failures are decided by a
    /// rate-limit rule's `on_redis_error` and answer 503 elsewhere. False for errors about the
    /// data or the script (WRONGTYPE, a script error): those are not outages.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Timeout(_)
            | StoreError::CircuitOpen(_)
            | StoreError::NotReplicated { .. }
            | StoreError::BatchLost => true,
            StoreError::Redis(e) => {
                self.is_connection_failure()
                    || e.kind() == ErrorKind::AuthenticationFailed
                    // A cluster between topologies: a slot whose primary died is refused
                    // (CLUSTERDOWN) or redirected back and forth (MOVED, ASK) until its
                    // replica is promoted and the client's slot map follows; the client
                    // retries a few times itself, and what is left is an outage of that
                    // shard, not an error of the request.
                    || e.kind() == ErrorKind::ClusterConnectionNotFound
                    || matches!(
                        e.kind(),
                        ErrorKind::Server(
                            ServerErrorKind::BusyLoading
                                | ServerErrorKind::TryAgain
                                | ServerErrorKind::ClusterDown
                                | ServerErrorKind::Moved
                                | ServerErrorKind::Ask
                                | ServerErrorKind::MasterDown
                                | ServerErrorKind::ReadOnly
                                | ServerErrorKind::NoPerm
                        )
                    )
                    || matches!(e.code(), Some("OOM" | "BUSY" | "NOAUTH"))
            }
            _ => false,
        }
    }

    /// A failure of the connection itself (refused, reset, I/O error, no answer in time):
    /// what the breaker counts. Errors Redis answers with (LOADING, OOM, …) come back fast
    /// and prove the connection works, so they never open it.
    fn is_connection_failure(&self) -> bool {
        match self {
            StoreError::Timeout(_) => true,
            StoreError::Redis(e) => e.is_io_error() || e.is_connection_dropped() || e.is_timeout(),
            _ => false,
        }
    }

    /// The `kind` label of `patternd_redis_errors_total`.
    fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::CircuitOpen(_) => "circuit_open",
            StoreError::NotReplicated { .. } => "not_replicated",
            StoreError::WrongType { .. } => "wrong_type",
            StoreError::Redis(e) if e.code() == Some("WRONGTYPE") => "wrong_type",
            StoreError::Redis(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                "noscript"
            }
            e if e.is_connection_failure() => "connection",
            e if e.is_unavailable() => "unavailable",
            _ => "other",
        }
    }
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The URL, credentials and TLS files (shared with the tracking connection).
    pub target: RedisTarget,
    pub pool_size: usize,
    /// Bound on every command, including the wait for a reconnect.
    pub command_timeout: Duration,
    /// `--redis-batch`: the most calls one batch script call takes (`batch`); 0 or 1: no
    /// batching. Ignored on a cluster.
    pub batch_max: usize,
}

/// One connection of the pool, held on to. Redis runs one connection's commands in the order
/// they were sent, so a call through it runs after every earlier call through it, including
/// one whose caller gave up waiting (its command still sits in the connection, and Redis runs
/// it when it gets to it). That is how a grant whose answer was lost is undone after it ran.
///
/// On a cluster, a pinned connection is one fixed connection to each primary (`route.rs`), so two
/// calls on the same slot keep their order too (until the slot moves, or a redirect sends one
/// through the crate's cluster client: see docs/cluster.md).
#[derive(Clone)]
pub struct Pinned {
    conn: Conn,
}

/// One connection of the pool: to the one server, or connection `index` to every primary of
/// a cluster, placed by the engine's own slot map (`route.rs`), with the redis crate's
/// `ClusterConnection` behind it for keyless commands and redirects.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster {
        router: Arc<route::Router>,
        index: usize,
    },
}

/// The Redis pool. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    conns: Vec<Conn>,
    /// The pool of calls followed by `WAIT` (rules with `durability`), made on first use from
    /// `target`. Apart because `WAIT` blocks its connection until the replicas answer, or
    /// its timeout: on the request pool it would hold up every call pipelined behind it.
    durable: std::sync::OnceLock<Vec<Conn>>,
    target: RedisTarget,
    /// The pub/sub subscriber (`pubsub`), started on first use.
    subscriber: std::sync::OnceLock<Arc<pubsub::Subscriber>>,
    next: AtomicUsize,
    timeout: Duration,
    batch_max: usize,
    /// Resolved once: looking a metric up by name on every command costs a hash and a lock.
    latency: metrics::Histogram,
    breaker: Breaker,
    /// WRONGTYPE log lines, gated per rule (see `Store::wrong_type`).
    wrong_type_log: Mutex<HashMap<String, LogGate>>,
}

impl Store {
    /// Creates the pool without waiting for Redis: connections are established lazily and
    /// re-established in the background, so patternd starts (and answers `on_redis_error`
    /// decisions, and `/readyz` 503) while Redis is still down.
    pub fn new(cfg: &StoreConfig) -> Result<Self, StoreError> {
        let size = cfg.pool_size.max(1);
        let conns = pool(&cfg.target, size, cfg.command_timeout)?;
        Ok(Self {
            inner: Arc::new(Inner {
                conns,
                durable: std::sync::OnceLock::new(),
                target: cfg.target.clone(),
                subscriber: std::sync::OnceLock::new(),
                next: AtomicUsize::new(0),
                timeout: cfg.command_timeout,
                batch_max: cfg.batch_max,
                latency: metrics::histogram!("patternd_redis_seconds"),
                breaker: Breaker::new(cfg.target.is_cluster()),
                wrong_type_log: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The URL without its password, for logs.
    pub fn redacted_url(&self) -> &str {
        self.inner.target.redacted()
    }

    /// Where the pool connects (the doctor opens its own connections there: `admin`).
    pub fn target(&self) -> &RedisTarget {
        &self.inner.target
    }

    /// True when Redis is a cluster (pub/sub is sharded there).
    pub fn is_cluster(&self) -> bool {
        self.inner.target.is_cluster()
    }

    /// The engine's one pub/sub subscriber, started on first use.
    pub fn subscriber(&self) -> Arc<pubsub::Subscriber> {
        self.inner
            .subscriber
            .get_or_init(|| pubsub::Subscriber::start(&self.inner.target))
            .clone()
    }

    /// True while the breaker refuses commands (Redis known to be down).
    pub fn breaker_open(&self) -> bool {
        self.inner.breaker.state() == OPEN
    }

    fn conn(&self) -> Conn {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.conns.len();
        self.inner.conns[i].clone()
    }

    /// The next connection of the pool, for calls that must follow each other (see `Pinned`).
    pub fn pin(&self) -> Pinned {
        Pinned { conn: self.conn() }
    }

    /// A connection of the durable pool, for a call that `wait_replicas` follows (see
    /// `Inner::durable`).
    pub fn pin_durable(&self) -> Result<Pinned, StoreError> {
        let inner = &self.inner;
        let conns = match inner.durable.get() {
            Some(c) => c,
            None => {
                let made = pool(&inner.target, inner.conns.len(), inner.timeout)?;
                inner.durable.get_or_init(|| made)
            }
        };
        let i = inner.next.fetch_add(1, Ordering::Relaxed) % conns.len();
        Ok(Pinned {
            conn: conns[i].clone(),
        })
    }

    /// `WAIT replicas timeout` after a write on `pin`: Redis answers once `replicas` replicas
    /// have acknowledged every write this connection sent before (so the call just made on
    /// it), or after `timeout` with how many did. On a cluster it goes to the primary that
    /// owns `key`, over the same node connection as the write. Fewer than asked is
    /// `StoreError::NotReplicated`.
    pub async fn wait_replicas(
        &self,
        pin: &Pinned,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("WAIT");
        let timeout_ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        cmd.arg(replicas).arg(timeout_ms);
        // WAIT itself may take `timeout`; the call's own bound comes on top of it. On a
        // cluster the crate would send WAIT to every primary: it must go to the key's.
        let bound = self.inner.timeout + timeout;
        let slot = keys::key_slot(key);
        let acked: i64 = self
            .run_routed(pin.conn.clone(), bound, &cmd, Some(slot))
            .await?;
        let acked = u32::try_from(acked.max(0)).unwrap_or(u32::MAX);
        if acked < replicas {
            let e = StoreError::NotReplicated {
                wanted: replicas,
                acked,
                timeout,
            };
            count_error(&e);
            return Err(e);
        }
        Ok(())
    }

    /// The bound on every command (`--redis-timeout`).
    pub fn command_timeout(&self) -> Duration {
        self.inner.timeout
    }

    async fn run<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        self.run_on(self.conn(), self.inner.timeout, cmd).await
    }

    /// Every command goes through here: refused at once while the breaker is open, else
    /// bounded by `timeout`; the outcome feeds the breaker. Pinned calls too: a lost grant's
    /// release refused by an open breaker is retried by its task on the same connection, so
    /// it still runs after the acquire it undoes.
    async fn run_on<T: FromRedisValue>(
        &self,
        conn: Conn,
        timeout: Duration,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        self.run_routed(conn, timeout, cmd, None).await
    }

    /// `run_on`, with the command sent on a cluster to the primary of `slot` rather than
    /// where the crate would route it (see `Inner::query`).
    async fn run_routed<T: FromRedisValue>(
        &self,
        mut conn: Conn,
        timeout: Duration,
        cmd: &redis::Cmd,
        slot: Option<u16>,
    ) -> Result<T, StoreError> {
        let breaker = &self.inner.breaker;
        if breaker.state() == OPEN {
            breaker.refused.increment(1);
            return Err(StoreError::CircuitOpen(breaker.cause()));
        }
        let started = Instant::now();
        let (res, side) = self.inner.query(cmd, &mut conn, timeout, slot).await;
        self.inner.latency.record(started.elapsed().as_secs_f64());
        match &res {
            Ok(_) => breaker.on_success(),
            Err(e) => {
                count_error(e);
                // A cluster node's failure is its own breaker's (`route::NodeBreaker`).
                if matches!(side, Side::Pool) && breaker.on_failure(e) {
                    tokio::spawn(probe(Arc::downgrade(&self.inner)));
                }
            }
        }
        res
    }

    /// Runs a script by SHA. On NOSCRIPT (Redis restarted, failed over, or SCRIPT FLUSH) the
    /// call is sent again once as `EVAL` with the script's source, transparently.
    pub async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[&[u8]],
    ) -> Result<T, StoreError> {
        self.eval_on(None, self.inner.timeout, script, keys, args, true)
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
        self.eval_on(Some(pin), timeout, script, keys, args, true)
            .await
    }

    /// A batch script's call (`batch`): its keys are several calls' keys, in several slots on
    /// a cluster, so only a standalone Redis takes it (`batch` checks each call's keys).
    /// Bounded by `timeout`: what is left of its calls' own bounds.
    pub(crate) async fn eval_batch<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[&[u8]],
        timeout: Duration,
    ) -> Result<T, StoreError> {
        self.eval_on(None, timeout, script, keys, args, false).await
    }

    /// `--redis-batch`: the most calls one batch takes (never above the batch scripts' own
    /// bound, `compile::batch::MAX_CALLS`), or None when calls are not batched (turned off, or
    /// a cluster, where a batch's keys would span slots).
    pub fn batch_max(&self) -> Option<usize> {
        let max = self.inner.batch_max.min(crate::compile::batch::MAX_CALLS);
        (max > 1 && !self.is_cluster()).then_some(max)
    }

    /// Connections of the request pool.
    fn pool_len(&self) -> usize {
        self.inner.conns.len()
    }

    /// `check_slots`: refuse keys of several slots (`slots`), as every call but a batch must.
    async fn eval_on<T: FromRedisValue>(
        &self,
        pin: Option<&Pinned>,
        timeout: Duration,
        script: &Script,
        keys: &[String],
        args: &[&[u8]],
        check_slots: bool,
    ) -> Result<T, StoreError> {
        if check_slots && slots::enabled() {
            slots::check(script, keys)?;
        }
        let conn = || pin.map_or_else(|| self.conn(), |p| p.conn.clone());
        // On a cluster the call goes to its keys' slot (they share one); computed only there.
        let slot = if self.inner.target.is_cluster() {
            keys.first().map(|k| keys::key_slot(k))
        } else {
            None
        };
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&script.sha).arg(keys.len()).arg(keys);
        for a in args {
            cmd.arg(*a);
        }
        let res = match self.run_routed(conn(), timeout, &cmd, slot).await {
            // `EVAL` rather than `SCRIPT LOAD` then `EVALSHA`: it is routed by the same first
            // key, so on a cluster it reaches exactly the node that answered NOSCRIPT (a new
            // or promoted primary), and it still works while another node is down, when a
            // `SCRIPT LOAD` to every node would fail. Redis caches the script it evaluated,
            // so the next `EVALSHA` on that node finds it. One round trip instead of two.
            Err(StoreError::Redis(e))
                if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                tracing::warn!(script = %script.name, "NOSCRIPT: sending the script's source to the node that lacks it");
                metrics::counter!("patternd_script_reloads_total").increment(1);
                let mut eval = redis::cmd("EVAL");
                eval.arg(&script.source).arg(keys.len()).arg(keys);
                for a in args {
                    eval.arg(*a);
                }
                self.run_routed(conn(), timeout, &eval, slot).await
            }
            other => other,
        };
        match res {
            Err(StoreError::Redis(e)) if e.code() == Some("WRONGTYPE") => {
                Err(self.wrong_type(script, keys, &e))
            }
            other => other,
        }
    }

    /// A WRONGTYPE from a script: named by the rule's key namespace (every key of a call
    /// shares it), logged at most once per rule every 10 s with the count of the others.
    fn wrong_type(&self, script: &Script, keys: &[String], e: &redis::RedisError) -> StoreError {
        let namespace = keys
            .first()
            .map(|k| keys::namespace(k).to_string())
            .unwrap_or_default();
        let suppressed = match self.inner.wrong_type_log.lock() {
            Ok(mut gates) => {
                // Namespaces are rule names, a handful; the bound only guards against a
                // long-running process seeing many reloads with renamed rules.
                if gates.len() >= 1024 && !gates.contains_key(&namespace) {
                    gates.clear();
                }
                gates
                    .entry(namespace.clone())
                    .or_insert_with(LogGate::new)
                    .admit(Instant::now(), WRONG_TYPE_LOG_EVERY)
            }
            Err(_) => Some(0),
        };
        if let Some(suppressed) = suppressed {
            tracing::warn!(
                namespace = %namespace,
                script = %script.name,
                suppressed,
                error = %e,
                "WRONGTYPE: a key of this rule holds another type; another client wrote it \
                 (the ids concerned answer 500 until the key is deleted or expires)"
            );
        }
        StoreError::WrongType { namespace }
    }

    /// SCRIPT LOAD (on a cluster, the crate sends it to every node), checking that Redis
    /// computed the SHA we expect.
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
        // On a cluster, the crate asks every primary and answers their logical AND.
        let found: Vec<i64> = self.run(&cmd).await?;
        Ok(found.iter().all(|&f| f == 1))
    }

    /// True when every server knows every command of `names` (`COMMAND INFO`; a command it
    /// does not know answers nil): on a cluster, asked of every primary, so a rule that uses
    /// a module's commands (RedisBloom's `BF.*`) uses them only where each shard has it.
    pub async fn commands_everywhere(&self, names: &[&str]) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("COMMAND");
        cmd.arg("INFO").arg(names);
        let infos: Vec<redis::Value> = match self.conn() {
            single @ Conn::Single(_) => self.run_on(single, self.inner.timeout, &cmd).await?,
            Conn::Cluster { router, .. } => {
                use redis::cluster_routing::{
                    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo,
                };
                let route = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::CombineArrays),
                ));
                let mut c = router.fallback();
                let reply = tokio::time::timeout(self.inner.timeout, async {
                    let value = c.route_command(cmd.clone(), route).await?.extract_error()?;
                    redis::from_redis_value::<Vec<redis::Value>>(value)
                        .map_err(redis::RedisError::from)
                })
                .await;
                match reply {
                    Err(_) => return Err(StoreError::Timeout(self.inner.timeout)),
                    Ok(r) => r?,
                }
            }
        };
        Ok(!infos.is_empty() && infos.iter().all(|v| !matches!(v, redis::Value::Nil)))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.run(&redis::cmd("PING")).await?;
        Ok(())
    }
}

impl Inner {
    /// One command on one connection, bounded by `timeout`. The pool's breaker is not
    /// consulted: `run` and the probe decide whether to call this.
    /// `slot`: on a cluster, send `cmd` to that slot's primary (every keyed call, and `WAIT`,
    /// which the crate would send elsewhere); ignored on one server. The `Side` says whose
    /// breaker the outcome concerns.
    async fn query<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        conn: &mut Conn,
        timeout: Duration,
        slot: Option<u16>,
    ) -> (Result<T, StoreError>, Side) {
        let reply = match conn {
            Conn::Single(c) => tokio::time::timeout(timeout, cmd.query_async::<T>(c)).await,
            Conn::Cluster { router, index } => {
                let deadline = tokio::time::Instant::now() + timeout;
                // The direct path: the slot's primary, as on one server. Its connection
                // failures count against that node (`route::NodeBreaker`), not the pool.
                let mut next = slot.and_then(|s| Some((s, router.node(s, *index)?)));
                let mut resent = false;
                while let Some((slot, (node, mut c))) = next.take() {
                    if let Some(cause) = node.breaker.refusing() {
                        // Its replica may have been promoted meanwhile.
                        router.stale();
                        return (Err(StoreError::CircuitOpen(cause)), Side::Node);
                    }
                    let res = tokio::time::timeout_at(deadline, cmd.query_async::<T>(&mut c)).await;
                    let err = match res {
                        Ok(Ok(v)) => {
                            node.breaker.on_success();
                            return (Ok(v), Side::Node);
                        }
                        // Redirected: it did not run; the crate follows the redirect.
                        Ok(Err(e)) if router.on_error(&e) => break,
                        Ok(Err(e)) => StoreError::Redis(e),
                        Err(_) => StoreError::Timeout(timeout),
                    };
                    if err.is_connection_failure() {
                        node.breaker.on_failure();
                        // The connection failed (not a timeout: a slow node may have run
                        // it). If a map fetched now names another primary for the slot, the
                        // node had lost the slot before the call was sent (a promotion
                        // comes `cluster-node-timeout` after a primary's death), so the
                        // call did not run where it counts: it is sent once to the new one.
                        if !resent && matches!(err, StoreError::Redis(_)) {
                            resent = true;
                            let fetched = tokio::time::timeout_at(deadline, router.refresh_now());
                            if fetched.await.is_ok() {
                                next = router
                                    .node(slot, *index)
                                    .filter(|(n, _)| !Arc::ptr_eq(n, &node))
                                    .map(|found| (slot, found));
                                if next.is_some() {
                                    continue;
                                }
                            }
                        }
                    }
                    return (Err(err), Side::Node);
                }
                // The crate's path: keyless commands, no map yet, or a redirect.
                let mut c = router.fallback();
                match slot {
                    None => tokio::time::timeout_at(deadline, cmd.query_async::<T>(&mut c)).await,
                    Some(slot) => {
                        use redis::cluster_routing::{
                            Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
                        };
                        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                            Route::new(slot, SlotAddr::Master),
                        ));
                        tokio::time::timeout_at(deadline, async {
                            // An error reply (NOSCRIPT, WRONGTYPE) comes back as a value
                            // here: made an error, as `query_async` would.
                            let value =
                                c.route_command(cmd.clone(), route).await?.extract_error()?;
                            redis::from_redis_value::<T>(value).map_err(redis::RedisError::from)
                        })
                        .await
                    }
                }
            }
        };
        let res = match reply {
            Err(_) => Err(StoreError::Timeout(timeout)),
            Ok(r) => r.map_err(StoreError::from),
        };
        (res, Side::Pool)
    }

    /// PING on every connection of the pool. A connection whose last attempt failed starts
    /// a reconnect when used, so a failed PING that says so (an I/O error) is tried once
    /// more, on the fresh connection. True when every connection answered (on a cluster,
    /// the crate sends PING to every primary of its slot map).
    async fn ping_all(&self) -> bool {
        let ping = redis::cmd("PING");
        for conn in &self.conns {
            let mut conn = conn.clone();
            let (first, _): (Result<String, _>, _) =
                self.query(&ping, &mut conn, self.timeout, None).await;
            let ok = match first {
                Ok(_) => true,
                Err(StoreError::Redis(e)) if e.is_io_error() || e.is_connection_dropped() => self
                    .query::<String>(&ping, &mut conn, self.timeout, None)
                    .await
                    .0
                    .is_ok(),
                Err(_) => false,
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

/// `size` lazy connections to `target`: they connect on first use and reconnect by
/// themselves, so nothing here waits for Redis.
fn pool(
    target: &RedisTarget,
    size: usize,
    command_timeout: Duration,
) -> Result<Vec<Conn>, StoreError> {
    let mut conns = Vec::with_capacity(size);
    let mgr_cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(command_timeout))
        // No response timeout here: `run` bounds every command (including any
        // wait for a reconnect) with one tokio timer; a second, per-request timer
        // inside redis-rs measurably cost CPU on every decision.
        .set_response_timeout(None)
        // One connection attempt per reconnect, no retries: retries inside a
        // request made every request during an outage wait for them (about 220 ms
        // each). The breaker stops requests from reaching a dead Redis, and its
        // probe does the retrying.
        .set_number_of_retries(0);
    match target.endpoint() {
        Endpoint::Single(client) => {
            for _ in 0..size {
                conns.push(Conn::Single(
                    ConnectionManager::new_lazy_with_config(client.clone(), mgr_cfg.clone())
                        .map_err(StoreError::Url)?,
                ));
            }
        }
        Endpoint::Cluster(cluster) => {
            // Pending: the crate fetches its slot map in the background and again whenever a
            // node goes away, so patternd starts while the cluster is down, as it does with
            // one server. No response timeout, for the same reason as above. One crate
            // connection serves the whole pool: it carries only what the direct path cannot.
            let cluster_cfg = ClusterConfig::new().set_connection_timeout(command_timeout);
            let fallback = cluster
                .client
                .get_pending_async_connection_with_config(cluster_cfg);
            let router = route::Router::new(target.clone(), fallback, size, mgr_cfg);
            for index in 0..size {
                conns.push(Conn::Cluster {
                    router: router.clone(),
                    index,
                });
            }
        }
    }
    Ok(conns)
}

/// Whose breaker a call's outcome concerns: the pool's, or (a call sent straight to a
/// cluster primary) that node's alone.
enum Side {
    Pool,
    Node,
}

fn count_error(e: &StoreError) {
    metrics::counter!("patternd_redis_errors_total", "kind" => e.kind()).increment(1);
}

/// Breaker states.
const CLOSED: u8 = 0;
/// Commands fail at once with `CircuitOpen`; one background probe pings Redis.
const OPEN: u8 = 1;
/// The probe got answers: commands go through again, and the first connection failure
/// reopens at once (no threshold); the first success closes.
const HALF_OPEN: u8 = 2;

/// Connection failures in a row (no success between them) that open the breaker. One
/// timeout under load (a slow script, a stall) must not cut everyone off; a refused
/// connection is conclusive and opens it at once.
const TRIP_AFTER: u32 = 3;
const PROBE_FIRST: Duration = Duration::from_millis(100);
const PROBE_MAX: Duration = Duration::from_secs(1);
const WRONG_TYPE_LOG_EVERY: Duration = Duration::from_secs(10);

/// A circuit breaker over the whole pool: while Redis is known to be down, requests are
/// answered at once instead of each paying a connection attempt or the command timeout.
/// Only the breaker's state is read on the request path (one atomic load); everything else
/// happens on transitions.
struct Breaker {
    state: AtomicU8,
    /// On a cluster, one refused connection is one node down, not Redis: the breaker then
    /// opens only after `TRIP_AFTER` failures in a row with no success between them, which
    /// the other primaries' answers keep from happening while only one node is gone.
    cluster: bool,
    /// Connection failures since the last success (while closed).
    fails: AtomicU32,
    /// Why it opened (the error that tripped it), for the `CircuitOpen` message.
    cause: Mutex<Arc<str>>,
    /// When it opened, for the log line that closes it.
    opened_at: Mutex<Option<Instant>>,
    gauge: metrics::Gauge,
    refused: metrics::Counter,
}

impl Breaker {
    fn new(cluster: bool) -> Self {
        let gauge = metrics::gauge!("patternd_redis_breaker_open");
        gauge.set(0.0);
        Self {
            state: AtomicU8::new(CLOSED),
            cluster,
            fails: AtomicU32::new(0),
            cause: Mutex::new(Arc::from("")),
            opened_at: Mutex::new(None),
            gauge,
            refused: metrics::counter!("patternd_redis_errors_total", "kind" => "circuit_open"),
        }
    }

    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    fn cause(&self) -> Arc<str> {
        self.cause
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|_| Arc::from("Redis unreachable"))
    }

    fn on_success(&self) {
        // Loads first: a store on every success would bounce the cache line between cores.
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
        if self.state() == HALF_OPEN
            && self
                .state
                .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let outage = self
                .opened_at
                .lock()
                .ok()
                .and_then(|mut t| t.take())
                .map(|t| t.elapsed());
            transition("closed");
            tracing::info!(
                ?outage,
                "Redis breaker closed: Redis answers requests again"
            );
        }
    }

    /// Counts a failure; true when this call opened the breaker (the caller then starts the
    /// one probe).
    fn on_failure(&self, e: &StoreError) -> bool {
        if !e.is_connection_failure() {
            return false;
        }
        let conclusive =
            !self.cluster && matches!(e, StoreError::Redis(r) if r.is_connection_refusal());
        let from = match self.state() {
            OPEN => return false,
            HALF_OPEN => HALF_OPEN,
            _ if conclusive => CLOSED,
            _ if self.fails.fetch_add(1, Ordering::Relaxed) + 1 >= TRIP_AFTER => CLOSED,
            _ => return false,
        };
        if self
            .state
            .compare_exchange(from, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let cause: Arc<str> = Arc::from(e.to_string());
        if let Ok(mut c) = self.cause.lock() {
            *c = cause.clone();
        }
        if let Ok(mut t) = self.opened_at.lock() {
            t.get_or_insert_with(Instant::now);
        }
        self.fails.store(0, Ordering::Relaxed);
        self.gauge.set(1.0);
        transition("open");
        tracing::warn!(
            error = %cause,
            "Redis breaker open: commands fail at once (rate limits answer on_redis_error, \
             other patterns 503) while a probe pings Redis"
        );
        true
    }

    /// The probe got answers: let requests through again.
    fn half_open(&self) {
        if self
            .state
            .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.gauge.set(0.0);
            transition("half_open");
            tracing::info!("Redis breaker half-open: Redis answers a probe; requests go through");
        }
    }
}

fn transition(to: &'static str) {
    metrics::counter!("patternd_redis_breaker_transitions_total", "to" => to).increment(1);
}

/// The one probe of an open breaker: PINGs every connection with backoff (100 ms doubling to
/// 1 s) until all answer, then half-opens the breaker. Holds the pool weakly, so a dropped
/// Store ends it.
async fn probe(inner: Weak<Inner>) {
    let mut delay = PROBE_FIRST;
    loop {
        tokio::time::sleep(delay).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.ping_all().await {
            inner.breaker.half_open();
            return;
        }
        delay = (delay * 2).min(PROBE_MAX);
    }
}

/// At most one admitted event per period; counts the others.
struct LogGate {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogGate {
    fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last admitted)` when this event may be logged.
    fn admit(&mut self, now: Instant, every: Duration) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server error as Redis sends it (`-CODE detail`).
    fn server(line: &str) -> StoreError {
        let v = redis::parse_redis_value(format!("-{line}\r\n").as_bytes());
        match v.and_then(redis::Value::extract_error) {
            Err(e) => StoreError::Redis(e),
            Ok(v) => panic!("not an error: {v:?}"),
        }
    }

    fn io(kind: std::io::ErrorKind) -> StoreError {
        StoreError::Redis(redis::RedisError::from(std::io::Error::from(kind)))
    }

    #[test]
    fn wrong_type_and_script_errors_are_not_outages() {
        let wrongtype = server("WRONGTYPE Operation against a key holding the wrong kind of value");
        assert!(!wrongtype.is_unavailable());
        assert_eq!(wrongtype.kind(), "wrong_type");
        assert!(
            !server("ERR user_script:1: Script attempted to access nonexistent global")
                .is_unavailable()
        );
        let named = StoreError::WrongType {
            namespace: "shop:ratelimit:api:".into(),
        };
        assert!(!named.is_unavailable());
        assert!(named.to_string().contains("`shop:ratelimit:api:`"));
        for line in [
            "LOADING Redis is loading the dataset in memory",
            "READONLY You can't write against a read only replica.",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "BUSY Redis is busy running a script.",
            "NOPERM this user has no permissions",
            "MOVED 511 127.0.0.1:7002",
            "ASK 511 127.0.0.1:7002",
            "CLUSTERDOWN The cluster is down",
            "TRYAGAIN Multiple keys request during rehashing of slot",
        ] {
            let e = server(line);
            assert!(e.is_unavailable(), "{line}");
            // Redis answered: the connection works, so these never trip the breaker.
            assert!(!e.is_connection_failure(), "{line}");
        }
        assert!(StoreError::CircuitOpen(Arc::from("x")).is_unavailable());
    }

    #[test]
    fn a_refused_connection_opens_the_breaker_at_once() {
        let b = Breaker::new(false);
        assert!(b.on_failure(&io(std::io::ErrorKind::ConnectionRefused)));
        assert_eq!(b.state(), OPEN);
        assert!(b.cause().contains("refused"), "{}", b.cause());
        // Already open: nobody else starts a probe.
        assert!(!b.on_failure(&io(std::io::ErrorKind::ConnectionRefused)));
    }

    #[test]
    fn on_a_cluster_one_refused_node_does_not_open_it() {
        // One primary down refuses its connections, while the others answer: the breaker
        // must stay closed for them.
        let b = Breaker::new(true);
        let refused = io(std::io::ErrorKind::ConnectionRefused);
        for _ in 0..10 {
            assert!(!b.on_failure(&refused));
            b.on_success();
        }
        assert_eq!(b.state(), CLOSED);
        // Every node refusing (nothing answers between) still opens it.
        for _ in 0..TRIP_AFTER - 1 {
            assert!(!b.on_failure(&refused));
        }
        assert!(b.on_failure(&refused));
        assert_eq!(b.state(), OPEN);
    }

    #[test]
    fn timeouts_open_it_only_in_a_row() {
        let b = Breaker::new(false);
        let t = StoreError::Timeout(Duration::from_millis(300));
        for _ in 0..TRIP_AFTER - 1 {
            assert!(!b.on_failure(&t));
        }
        // A success between failures starts the count again.
        b.on_success();
        for _ in 0..TRIP_AFTER - 1 {
            assert!(!b.on_failure(&t));
        }
        assert_eq!(b.state(), CLOSED);
        assert!(b.on_failure(&t));
        assert_eq!(b.state(), OPEN);
    }

    #[test]
    fn answers_from_redis_never_count() {
        let b = Breaker::new(false);
        for _ in 0..10 {
            assert!(!b.on_failure(&server("WRONGTYPE x")));
            assert!(!b.on_failure(&server("LOADING x")));
        }
        assert_eq!(b.state(), CLOSED);
    }

    #[test]
    fn half_open_closes_on_success_and_reopens_on_one_failure() {
        let b = Breaker::new(false);
        assert!(b.on_failure(&io(std::io::ErrorKind::ConnectionRefused)));
        b.half_open();
        assert_eq!(b.state(), HALF_OPEN);
        // One failure is enough while half-open, even a non-conclusive one.
        assert!(b.on_failure(&io(std::io::ErrorKind::ConnectionReset)));
        assert_eq!(b.state(), OPEN);
        b.half_open();
        b.on_success();
        assert_eq!(b.state(), CLOSED);
    }

    #[test]
    fn the_log_gate_admits_one_per_period_and_counts_the_rest() {
        let mut g = LogGate::new();
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        assert_eq!(g.admit(t0, every), Some(0));
        assert_eq!(g.admit(t0 + Duration::from_secs(1), every), None);
        assert_eq!(g.admit(t0 + Duration::from_secs(9), every), None);
        assert_eq!(g.admit(t0 + Duration::from_secs(10), every), Some(2));
        assert_eq!(g.admit(t0 + Duration::from_secs(11), every), None);
    }
}
