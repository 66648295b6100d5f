//! Pub/sub subscriptions: one subscriber connection per engine, fanned out in process.
//!
//! Every SSE subscriber of a channel shares one Redis subscription: the first one subscribes,
//! the last one to leave unsubscribes, and messages reach every client through a
//! `tokio::sync::broadcast` channel per Redis channel, bounded by the rule's `client_buffer`
//! (a client that falls further behind gets `Lagged` and is dropped by its stream, rather
//! than the engine buffering without bound).
//!
//! One server: one RESP3 `ConnectionManager` with `SUBSCRIBE` (its channels resubscribed by
//! the crate after every reconnect). A cluster: one RESP3 `ClusterConnection` with
//! `SSUBSCRIBE`: the crate keeps one connection per node, sends each channel's subscription to
//! the primary owning its slot. The crate does not move a subscription to a promoted replica
//! by itself (measured: after a failover every publish reached 0 engines), so when a node
//! connection drops, this task makes a new cluster connection and subscribes every channel
//! again, retrying until the channel's primary answers (`tests/tests/cluster_failover.rs`). Sharded pub/sub has no pattern form, so patternd offers none.
//!
//! Whenever a connection drops, messages may be lost until the subscription is back: every
//! channel then gets a `Gap` event (SSE `event: gap`). A ping every second makes a dead
//! connection show (and reconnect) even when no message is due.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterConfig;
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::StoreError;
use super::connect::RedisTarget;

const PING_EVERY: Duration = Duration::from_secs(1);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum PubSubEvent {
    Message(Bytes),
    /// The subscriber connection dropped: messages published meanwhile are lost.
    Gap,
}

enum Command {
    Subscribe(String, oneshot::Sender<Result<(), StoreError>>),
    Unsubscribe(String),
}

struct Channel {
    tx: broadcast::Sender<PubSubEvent>,
    /// Set once Redis confirmed the subscription; later subscribers wait on it too.
    ready: Arc<tokio::sync::OnceCell<()>>,
}

/// The engine's subscriber. One per process (see `Store::subscriber`).
pub struct Subscriber {
    channels: Mutex<HashMap<String, Channel>>,
    commands: mpsc::UnboundedSender<Command>,
}

/// One client's subscription; unsubscribes the engine from Redis when the last one drops.
pub struct Subscription {
    pub rx: broadcast::Receiver<PubSubEvent>,
    channel: String,
    owner: Arc<Subscriber>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Subscriber {
    /// Starts the subscriber's connection task (it connects on first use).
    pub fn start(target: &RedisTarget) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let me = Arc::new(Self {
            channels: Mutex::new(HashMap::new()),
            commands: tx,
        });
        tokio::spawn(run(target.clone(), Arc::downgrade(&me), rx));
        me
    }

    /// Subscribes to `channel` (a key from the key builder), with `buffer` messages of slack
    /// per client. Returns once Redis confirmed the subscription.
    pub async fn subscribe(
        self: &Arc<Self>,
        channel: &str,
        buffer: usize,
    ) -> Result<Subscription, StoreError> {
        let (rx, ready) = {
            let mut map = lock(&self.channels);
            let c = map.entry(channel.to_string()).or_insert_with(|| Channel {
                tx: broadcast::channel(buffer.max(1)).0,
                ready: Arc::new(tokio::sync::OnceCell::new()),
            });
            (c.tx.subscribe(), c.ready.clone())
        };
        // From here on a failure drops `sub`, which unsubscribes if it was the last.
        let sub = Subscription {
            rx,
            channel: channel.to_string(),
            owner: self.clone(),
        };
        // The first subscriber of the channel subscribes in Redis; the others wait for it (and
        // one of them tries again if it failed): no polling, one SUBSCRIBE per channel.
        let confirm = ready.get_or_try_init(|| async {
            let (done, answer) = oneshot::channel();
            self.commands
                .send(Command::Subscribe(channel.to_string(), done))
                .map_err(|_| closed())?;
            answer.await.unwrap_or_else(|_| Err(closed()))
        });
        tokio::time::timeout(COMMAND_TIMEOUT * 2, confirm)
            .await
            .map_err(|_| StoreError::Timeout(COMMAND_TIMEOUT * 2))??;
        Ok(sub)
    }

    fn dispatch(&self, channel: &[u8], event: PubSubEvent) {
        let map = lock(&self.channels);
        if let Some(c) = std::str::from_utf8(channel).ok().and_then(|ch| map.get(ch)) {
            let _ = c.tx.send(event);
        }
    }

    fn gap(&self) {
        let map = lock(&self.channels);
        for c in map.values() {
            let _ = c.tx.send(PubSubEvent::Gap);
        }
    }

    fn subscribed_channels(&self) -> Vec<String> {
        lock(&self.channels).keys().cloned().collect()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = lock(&self.owner.channels);
        // Our receiver still counts here: the last one leaving sees 1.
        if let Some(c) = map.get(&self.channel)
            && c.tx.receiver_count() <= 1
        {
            map.remove(&self.channel);
            // Sent under the lock: a new subscription of the same channel queues its
            // SUBSCRIBE after this UNSUBSCRIBE, in order.
            let _ = self
                .owner
                .commands
                .send(Command::Unsubscribe(self.channel.clone()));
        }
    }
}

fn closed() -> StoreError {
    StoreError::Redis(redis::RedisError::from((
        redis::ErrorKind::Io,
        "the subscriber connection task ended",
    )))
}

enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channel).await,
            Conn::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.unsubscribe(channel).await,
            Conn::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }

    async fn ping(&mut self) -> redis::RedisResult<()> {
        let ping = redis::cmd("PING");
        match self {
            Conn::Single(c) => ping.query_async::<Value>(c).await.map(|_| ()),
            Conn::Cluster(c) => ping.query_async::<Value>(c).await.map(|_| ()),
        }
    }
}

async fn connect(
    target: &RedisTarget,
    pushes: mpsc::UnboundedSender<PushInfo>,
) -> Result<Conn, StoreError> {
    if target.is_cluster() {
        let client = target.cluster_client_resp3()?;
        let cfg = ClusterConfig::new()
            .set_connection_timeout(COMMAND_TIMEOUT)
            .set_push_sender(pushes);
        let conn = tokio::time::timeout(
            COMMAND_TIMEOUT,
            client.get_async_connection_with_config(cfg),
        )
        .await
        .map_err(|_| StoreError::Timeout(COMMAND_TIMEOUT))??;
        Ok(Conn::Cluster(conn))
    } else {
        let client = target.node_client(None, ProtocolVersion::RESP3)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_push_sender(pushes)
            .set_automatic_resubscription();
        Ok(Conn::Single(
            ConnectionManager::new_lazy_with_config(client, cfg).map_err(StoreError::Url)?,
        ))
    }
}

/// Subscribes a new cluster connection to every channel this engine's clients hold. Fails
/// (and the caller retries with a new connection) while a channel's primary is unreachable,
/// for example until its replica is promoted.
async fn resubscribe_all(
    c: &mut Conn,
    owner: &std::sync::Weak<Subscriber>,
) -> Result<(), StoreError> {
    let channels = owner
        .upgrade()
        .map(|me| me.subscribed_channels())
        .unwrap_or_default();
    for ch in &channels {
        tokio::time::timeout(COMMAND_TIMEOUT, c.subscribe(ch))
            .await
            .map_err(|_| StoreError::Timeout(COMMAND_TIMEOUT))??;
    }
    if !channels.is_empty() {
        tracing::info!(
            channels = channels.len(),
            "pub/sub subscriptions renewed on the cluster"
        );
    }
    Ok(())
}

/// The connection task: subscribe and unsubscribe in order, dispatch messages, report gaps.
async fn run(
    target: RedisTarget,
    owner: std::sync::Weak<Subscriber>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let (push_tx, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
    let mut conn: Option<Conn> = None;
    // On a cluster, a dropped node connection makes a new cluster connection that subscribes
    // every channel again itself (see `resubscribe`).
    let mut resubscribe = false;
    let mut backoff = Duration::from_millis(50);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if conn.is_none() {
            let made = match connect(&target, push_tx.clone()).await {
                Ok(mut c) if resubscribe => match resubscribe_all(&mut c, &owner).await {
                    Ok(()) => Ok(c),
                    Err(e) => Err(e),
                },
                other => other,
            };
            match made {
                Ok(c) => {
                    conn = Some(c);
                    resubscribe = false;
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "pub/sub connection failed");
                    // Pending subscribes fail fast rather than wait for Redis.
                    while let Ok(cmd) = commands.try_recv() {
                        if let Command::Subscribe(_, done) = cmd {
                            let _ = done.send(Err(StoreError::Timeout(COMMAND_TIMEOUT)));
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    if owner.strong_count() == 0 {
                        return;
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return };
                match cmd {
                    Command::Subscribe(ch, done) => {
                        let r = tokio::time::timeout(COMMAND_TIMEOUT, c.subscribe(&ch)).await;
                        let r = match r {
                            Err(_) => Err(StoreError::Timeout(COMMAND_TIMEOUT)),
                            Ok(r) => r.map_err(StoreError::from),
                        };
                        let _ = done.send(r);
                    }
                    Command::Unsubscribe(ch) => {
                        if let Ok(Err(e)) = tokio::time::timeout(COMMAND_TIMEOUT, c.unsubscribe(&ch)).await {
                            tracing::debug!(error = %e, "unsubscribe failed (the subscription ends with the connection)");
                        }
                    }
                }
            }
            push = pushes.recv() => {
                let Some(push) = push else { return };
                let Some(me) = owner.upgrade() else { return };
                match push.kind {
                    PushKind::Message | PushKind::SMessage => {
                        if let [Value::BulkString(ch), payload] = push.data.as_slice() {
                            let bytes = match payload {
                                Value::BulkString(b) => Bytes::from(b.clone()),
                                Value::SimpleString(s) => Bytes::from(s.clone()),
                                _ => Bytes::new(),
                            };
                            metrics::counter!("patternd_pubsub_received_total").increment(1);
                            me.dispatch(ch, PubSubEvent::Message(bytes));
                        }
                    }
                    PushKind::Disconnection => {
                        tracing::warn!(channels = me.subscribed_channels().len(), "pub/sub connection dropped: subscribers are told about the gap");
                        metrics::counter!("patternd_pubsub_gaps_total").increment(1);
                        me.gap();
                        // The crate does not move a sharded subscription to a promoted
                        // replica by itself (a cluster failover left every publish reaching
                        // 0 engines): start over with a new connection and subscribe anew.
                        if matches!(c, Conn::Cluster(_)) {
                            conn = None;
                            resubscribe = true;
                        }
                    }
                    _ => {}
                }
            }
            _ = ping.tick() => {
                if owner.strong_count() == 0 {
                    return;
                }
                // A failed ping makes the crate reconnect (and resubscribe); nothing else to do.
                if let Ok(Err(e)) = tokio::time::timeout(COMMAND_TIMEOUT, c.ping()).await {
                    tracing::debug!(error = %e, "pub/sub ping failed");
                }
            }
        }
    }
}
