//! Server-assisted client-side caching: one dedicated RESP3 connection with `CLIENT TRACKING ON
//! BCAST PREFIX …` for the key prefixes of every near cache (see `near`), so that a change to
//! any of those keys — by this engine, another replica, or anything else writing to Redis —
//! reaches every engine as an invalidation message.
//!
//! Broadcast mode rather than default tracking: default mode only reports keys this very
//! connection read, and the reads happen inside scripts on the pool's connections. With
//! prefixes Redis reports every modified key under them, whoever modified it.
//!
//! Near caches are live only while this connection is subscribed and answering pings. When it
//! drops, every near cache is switched off (and emptied) before anything else happens, since
//! invalidations may be lost from that moment; it reconnects with backoff and switches them
//! on again, empty.
//!
//! On a cluster, a node reports only the keys it owns, so there is one such connection per
//! primary, all feeding one channel, and near caches are live only while every one of them is
//! subscribed and answering. The primaries come from `CLUSTER SLOTS` (asked of the seeds), and
//! are asked again on every ping: when the set changes (a failover, a node added), every
//! connection is dropped and made again, and the near caches restart empty. The cluster
//! client's own push channel is not used: its reconnects do not restore `CLIENT TRACKING`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::{AsyncConnectionConfig, ProtocolVersion, PushKind, Value};
use tokio::sync::Notify;

use super::StoreError;
use super::connect::RedisTarget;
use super::near::{Invalidate, lock};

/// How often the tracking connection is pinged: a silent half-open connection would otherwise
/// keep near caches serving without invalidations.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A live near cache and the prefix of its keys.
type Target = (String, Arc<dyn Invalidate>);

struct Listener {
    prefix: String,
    target: Weak<dyn Invalidate>,
}

/// The tracking connection's supervisor. One per process; near caches register with it.
pub struct Tracker {
    target: RedisTarget,
    listeners: Mutex<Vec<Listener>>,
    changed: Notify,
    live: AtomicBool,
}

impl Tracker {
    /// The tracking connection to `target`, with the pool's TLS settings and credentials,
    /// in RESP3 (invalidations arrive as pushes).
    pub fn new(target: &RedisTarget) -> Result<Arc<Self>, StoreError> {
        Ok(Arc::new(Self {
            target: target.clone(),
            listeners: Mutex::new(Vec::new()),
            changed: Notify::new(),
            live: AtomicBool::new(false),
        }))
    }

    /// Adds a near cache for keys under `prefix`. It goes live once the tracking connection
    /// has subscribed to the prefix; it is forgotten when dropped.
    pub fn register(&self, prefix: String, target: Weak<dyn Invalidate>) {
        lock(&self.listeners).push(Listener { prefix, target });
        // A permit is stored if the loop is not waiting yet, so no registration is missed.
        self.changed.notify_one();
    }

    /// Whether invalidations are flowing right now.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Runs the connection for the life of the process.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.run().await })
    }

    /// The live listeners (dropping forgotten ones) and their distinct prefixes.
    fn current(&self) -> (Vec<String>, Vec<Target>) {
        let mut ls = lock(&self.listeners);
        ls.retain(|l| l.target.strong_count() > 0);
        let targets: Vec<Target> = ls
            .iter()
            .filter_map(|l| Some((l.prefix.clone(), l.target.upgrade()?)))
            .collect();
        let mut prefixes: Vec<String> = targets.iter().map(|(p, _)| p.clone()).collect();
        prefixes.sort();
        prefixes.dedup();
        // Redis refuses overlapping BCAST prefixes; keep only the shortest of nested ones
        // (it covers the others).
        let mut kept: Vec<String> = Vec::new();
        for p in prefixes {
            if !kept.iter().any(|k| p.starts_with(k.as_str())) {
                kept.push(p);
            }
        }
        (kept, targets)
    }

    async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let (prefixes, targets) = self.current();
            if prefixes.is_empty() {
                self.changed.notified().await;
                continue;
            }
            let result = self.session(&prefixes, &targets).await;
            // Whatever ended the session, invalidations may be missed from now on.
            self.live.store(false, Ordering::Release);
            metrics::gauge!("patternd_near_cache_live").set(0.0);
            for (_, t) in &targets {
                t.set_live(false);
            }
            drop(targets);
            match result {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "near cache invalidation connection lost; near caches are off until it is back");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// The servers to track: the one server, or every primary of the cluster.
    async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        if !self.target.is_cluster() {
            return Ok(vec![Node {
                addr: None,
                client: self.target.node_client(None, ProtocolVersion::RESP3)?,
            }]);
        }
        let mut last = None;
        for (host, port) in self.target.seeds() {
            let asked = async {
                let client = self
                    .target
                    .node_client(Some((host, *port)), ProtocolVersion::RESP3)?;
                let mut con = client.get_multiplexed_async_connection().await?;
                primaries(&mut con, host).await
            };
            match tokio::time::timeout(PING_TIMEOUT, asked).await {
                Ok(Ok(found)) if !found.is_empty() => {
                    return found
                        .into_iter()
                        .map(|(h, p)| {
                            let client = self
                                .target
                                .node_client(Some((&h, p)), ProtocolVersion::RESP3)?;
                            Ok(Node {
                                addr: Some((h, p)),
                                client,
                            })
                        })
                        .collect();
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(StoreError::Timeout(PING_TIMEOUT)),
            }
        }
        Err(last.unwrap_or_else(|| {
            StoreError::Redis(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no seed node named the cluster's primaries",
            )))
        }))
    }

    /// One subscribed connection per node: returns Ok when the set of prefixes or the
    /// cluster's primaries changed, Err when a connection failed.
    async fn session(&self, prefixes: &[String], targets: &[Target]) -> Result<(), StoreError> {
        let nodes = self.nodes().await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let cfg = AsyncConnectionConfig::new()
            .set_push_sender(tx)
            .set_connection_timeout(Some(PING_TIMEOUT))
            .set_response_timeout(Some(PING_TIMEOUT));
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("TRACKING").arg("ON").arg("BCAST");
        for p in prefixes {
            cmd.arg("PREFIX").arg(p);
        }
        let mut cons = Vec::with_capacity(nodes.len());
        for node in &nodes {
            let mut con = node
                .client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?;
            let () = cmd.query_async(&mut con).await?;
            cons.push(con);
        }
        // Every primary is subscribed: nothing written from now on goes unreported.
        for (_, t) in targets {
            t.set_live(true);
        }
        self.live.store(true, Ordering::Release);
        metrics::gauge!("patternd_near_cache_live").set(1.0);
        tracing::info!(
            prefixes = prefixes.len(),
            nodes = cons.len(),
            "near cache invalidations subscribed"
        );
        let known: Vec<(String, u16)> = nodes.iter().filter_map(|n| n.addr.clone()).collect();

        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else {
                        return Err(StoreError::Redis(redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "tracking connection closed",
                        ))));
                    };
                    match msg.kind {
                        PushKind::Invalidate => dispatch(&msg.data, targets),
                        PushKind::Disconnection => {
                            return Err(StoreError::Redis(redis::RedisError::from((
                                redis::ErrorKind::Io,
                                "tracking connection dropped",
                            ))));
                        }
                        _ => {}
                    }
                }
                () = self.changed.notified() => return Ok(()),
                _ = ping.tick() => {
                    for con in &mut cons {
                        let pong = tokio::time::timeout(
                            PING_TIMEOUT,
                            redis::cmd("PING").query_async::<String>(con),
                        )
                        .await;
                        match pong {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => return Err(StoreError::Redis(e)),
                            Err(_) => return Err(StoreError::Timeout(PING_TIMEOUT)),
                        }
                    }
                    if let (Some(con), Some((host, _))) = (cons.first_mut(), known.first()) {
                        let now = tokio::time::timeout(PING_TIMEOUT, primaries(con, host)).await;
                        match now {
                            Ok(Ok(now)) if now != known => {
                                tracing::info!(
                                    before = ?known,
                                    now = ?now,
                                    "the cluster's primaries changed: tracking them anew"
                                );
                                return Ok(());
                            }
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => return Err(e),
                            Err(_) => return Err(StoreError::Timeout(PING_TIMEOUT)),
                        }
                    }
                }
            }
        }
    }
}

/// A server whose keys are tracked; `addr` is the cluster node's (None for one server).
struct Node {
    addr: Option<(String, u16)>,
    client: redis::Client,
}

/// The primaries that own slots, sorted, from `CLUSTER SLOTS` on `con` (a node at `asked`:
/// a node that does not know its own address answers an empty host).
async fn primaries(
    con: &mut redis::aio::MultiplexedConnection,
    asked: &str,
) -> Result<Vec<(String, u16)>, StoreError> {
    let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(con).await?;
    let mut found: Vec<(String, u16)> = super::route::slot_ranges(&reply, asked)
        .into_iter()
        .map(|r| r.primary)
        .collect();
    found.sort();
    found.dedup();
    Ok(found)
}

/// `invalidate` pushes carry an array of keys, or nil when Redis was flushed.
fn dispatch(data: &[Value], targets: &[Target]) {
    metrics::counter!("patternd_near_cache_invalidations_total").increment(1);
    let keys: Option<Vec<Vec<u8>>> = match data.first() {
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(|v| match v {
                    Value::BulkString(b) => Some(b.clone()),
                    Value::SimpleString(s) => Some(s.clone().into_bytes()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    };
    for (prefix, t) in targets {
        match &keys {
            None => t.invalidate(None),
            Some(keys) => {
                let mine: Vec<Vec<u8>> = keys
                    .iter()
                    .filter(|k| k.starts_with(prefix.as_bytes()))
                    .cloned()
                    .collect();
                if !mine.is_empty() {
                    t.invalidate(Some(&mine));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use super::*;
    use crate::store::near::NearCache;

    /// A private redis-server on a free port, killed on drop.
    struct Redis {
        child: Child,
        port: u16,
    }

    impl Redis {
        fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("free port");
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server on PATH");
            Self { child, port }
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn writes_by_anyone_invalidate_and_a_lost_connection_switches_off() {
        let mut redis = Redis::start();
        let target = RedisTarget::plain(&redis.url()).expect("url");
        let tracker = Tracker::new(&target).expect("url");
        let near: Arc<NearCache<u32>> = Arc::new(NearCache::new(100, Some("{%".into())));
        let as_dyn: Arc<dyn Invalidate> = near.clone();
        tracker.register("app:cache:r:".into(), Arc::downgrade(&as_dyn));
        let task = tracker.spawn();
        until("the near cache to go live", || near.is_live()).await;

        let key = "app:cache:r:{42}:v";
        let t = near.ticket(key).expect("live");
        assert!(near.insert(key, 7, Duration::from_secs(60), t));
        assert_eq!(near.get(key), Some(7));

        // Another client (think: another engine replica) changes the key.
        let client = redis::Client::open(redis.url()).expect("url");
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let () = redis::cmd("HSET")
            .arg(key)
            .arg("b")
            .arg("new")
            .query_async(&mut con)
            .await
            .expect("HSET");
        until("the invalidation", || near.get(key).is_none()).await;

        // Keys outside the prefix do not disturb it.
        let t = near.ticket(key).expect("live");
        assert!(near.insert(key, 8, Duration::from_secs(60), t));
        let () = redis::cmd("SET")
            .arg("other:key")
            .arg(1)
            .query_async(&mut con)
            .await
            .expect("SET");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(near.get(key), Some(8));

        // Redis goes away: the near cache stops serving at once (within a ping).
        let _ = redis.child.kill();
        let _ = redis.child.wait();
        until("the near cache to switch off", || !near.is_live()).await;
        assert_eq!(near.get(key), None);
        drop(as_dyn);
        task.abort();
    }
}
