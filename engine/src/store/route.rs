//! Slot routing on a cluster: a command with a key goes straight to its slot's primary, over a
//! pooled multiplexed connection to that node, as it would to one server.
//!
//! Why not only the redis crate's `ClusterConnection`: it hands every command over a channel
//! to a task of its own, which routes it and forwards it to the node's connection, so each
//! call pays one more task hop and wake-up. Measured with `just bench --scenario cluster`, that
//! cost 10–27% more engine CPU per decision than one server (issue 12 asks for at most 10%).
//! Here the engine computes the slot (CRC16 of the hash tag every key of a call shares) and
//! looks its primary up in its own copy of the slot map: the request path is the standalone
//! one plus a table lookup.
//!
//! The crate's connection stays for everything else: commands without a key (PING, SCRIPT
//! LOAD and SCRIPT EXISTS on every primary), the slot map itself (CLUSTER SLOTS), and any call
//! the direct path cannot place:
//! - before the first map arrives (patternd starts while the cluster is down);
//! - when a node answers MOVED, ASK, TRYAGAIN, CLUSTERDOWN or READONLY: the command did not
//!   run there, so it is sent again through the crate, which follows redirects and retries,
//!   while the map is fetched anew in the background.
//!
//! A connection failure is not sent again (the command may have run, and a rate-limit charge
//! must not be made twice: on one server the caller gets the error too), but it also has the
//! map fetched anew, since the node may be gone for good (a failover promotes its replica).
//! The map is also fetched every [`REFRESH_EVERY`], and at most once per [`REFRESH_GAP`].
//!
//! **A breaker per primary.** A dead primary refuses its connections in microseconds, so its
//! calls fail far faster than the others succeed, and the pool's one breaker would count
//! three in a row and cut off every shard. So on a cluster, a direct call's connection failure
//! counts against its node only ([`NodeBreaker`]): after [`TRIP_AFTER`] in a row with no
//! success between, that node's calls fail at once (`CircuitOpen`, answered per the pattern's
//! failure mode) for a cool-down of 100 ms doubling to 1 s, after which calls try it again. The
//! other shards go on; the pool's breaker still opens when the crate's path fails (the whole
//! cluster unreachable), and its probe pings every primary.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ErrorKind, ProtocolVersion, ServerErrorKind, Value};
use tokio::sync::Notify;

use super::connect::RedisTarget;
use crate::compile::keys::SLOTS;

/// How often the slot map is fetched when nothing asks for it.
const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// The least time between two fetches: during a failover every failed call asks for one.
const REFRESH_GAP: Duration = Duration::from_millis(100);
/// After a request for a new map that found none, how often and how long to look again.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);
const FOLLOW_FOR: Duration = Duration::from_secs(30);
/// A fetch that takes longer is abandoned (the next one is tried after `REFRESH_GAP`).
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);
/// `SlotMap::owner` of a slot no primary serves.
const NO_OWNER: u16 = u16::MAX;
/// Connection failures in a row that open a node's breaker (as the pool's: one timeout under
/// load must not cut a shard off).
const TRIP_AFTER: u32 = 3;
const COOL_FIRST: Duration = Duration::from_millis(100);
const COOL_MAX: Duration = Duration::from_secs(1);

/// The slot routing of one pool: its direct node connections, the slot map they follow, and
/// the crate's cluster connection for the rest.
pub(super) struct Router {
    map: ArcSwapOption<SlotMap>,
    fallback: ClusterConnection,
    /// Asks the refresh task for a new map.
    stale: Arc<Notify>,
    /// Maps fetched so far, and the one fetch at a time (`refresh_now`).
    fetches: AtomicU64,
    fetching: tokio::sync::Mutex<()>,
    target: RedisTarget,
    /// `--redis-pool`: the connections the engine spreads its calls over, divided among the
    /// primaries (rounded up, at least one each). Not that many per node: a multiplexed
    /// connection writes every call waiting on it in one go, so spreading the same calls over
    /// more connections means more system calls per call (`just bench --scenario cluster`
    /// measured 2 per node at about 20% more engine CPU per decision than 1, with 3 primaries
    /// and a pool of 2).
    pool: usize,
    node_cfg: ConnectionManagerConfig,
}

/// Which primary serves each slot, and the connections to each.
struct SlotMap {
    /// `nodes` index per slot (`NO_OWNER` when none).
    owner: Box<[u16]>,
    nodes: Vec<Arc<Node>>,
}

/// One primary: its connections and its breaker.
pub(super) struct Node {
    addr: (String, u16),
    conns: Vec<ConnectionManager>,
    pub(super) breaker: NodeBreaker,
}

/// A primary's breaker (see the module doc). Lock-free: the request path reads one atomic
/// while it is closed.
pub(super) struct NodeBreaker {
    /// Failures in a row since the last success.
    fails: AtomicU32,
    /// While open: until when, in ms since `epoch` (0 = closed).
    open_until: AtomicU64,
    /// The last cool-down, in ms: doubles while the node keeps failing.
    cool_ms: AtomicU64,
    epoch: Instant,
    cause: Arc<str>,
}

impl NodeBreaker {
    fn new(addr: &(String, u16)) -> Self {
        Self {
            fails: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            cool_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            cause: Arc::from(format!(
                "the cluster primary {}:{} refuses connections",
                addr.0, addr.1
            )),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `Some(cause)` while the node is cooling down: its calls are not sent.
    pub(super) fn refusing(&self) -> Option<Arc<str>> {
        let until = self.open_until.load(Ordering::Acquire);
        (until != 0 && self.now_ms() < until).then(|| self.cause.clone())
    }

    pub(super) fn on_success(&self) {
        // Loads first: a store on every success would bounce the cache line between cores.
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
        if self.open_until.load(Ordering::Relaxed) != 0 {
            self.open_until.store(0, Ordering::Release);
            self.cool_ms.store(0, Ordering::Relaxed);
            tracing::info!(cause = %self.cause, "cluster primary answers again");
        }
    }

    /// A connection failure or timeout of a call sent to this node.
    pub(super) fn on_failure(&self) {
        let after_cool_down = self.open_until.load(Ordering::Relaxed) != 0;
        if !after_cool_down && self.fails.fetch_add(1, Ordering::Relaxed) + 1 < TRIP_AFTER {
            return;
        }
        // Opens, or (a call after the cool-down failed too) opens again for twice as long.
        let cool = match self.cool_ms.load(Ordering::Relaxed) {
            0 => COOL_FIRST.as_millis(),
            ms => (u128::from(ms) * 2).min(COOL_MAX.as_millis()),
        };
        let cool = u64::try_from(cool).unwrap_or(1000);
        self.cool_ms.store(cool, Ordering::Relaxed);
        self.fails.store(0, Ordering::Relaxed);
        self.open_until
            .store(self.now_ms().saturating_add(cool).max(1), Ordering::Release);
        if !after_cool_down {
            tracing::warn!(cause = %self.cause, "cluster primary unreachable: its slots' calls fail at once (per each rule's failure mode) while the others go on");
        }
    }
}

impl Router {
    /// A router whose map is fetched in the background (when a tokio runtime runs: without
    /// one, every call goes through `fallback`).
    pub(super) fn new(
        target: RedisTarget,
        fallback: ClusterConnection,
        pool: usize,
        node_cfg: ConnectionManagerConfig,
    ) -> Arc<Self> {
        let router = Arc::new(Self {
            map: ArcSwapOption::empty(),
            fallback,
            stale: Arc::new(Notify::new()),
            fetches: AtomicU64::new(0),
            fetching: tokio::sync::Mutex::new(()),
            target,
            pool: pool.max(1),
            node_cfg,
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(refresh_loop(Arc::downgrade(&router), router.stale.clone()));
        }
        router
    }

    /// The primary of `slot` and its connection `index`, when the map names one.
    pub(super) fn node(&self, slot: u16, index: usize) -> Option<(Arc<Node>, ConnectionManager)> {
        let map = self.map.load();
        let map = map.as_ref()?;
        let node = map
            .nodes
            .get(usize::from(*map.owner.get(usize::from(slot))?))?;
        let conn = node.conns.get(index % node.conns.len())?.clone();
        Some((node.clone(), conn))
    }

    /// The crate's connection: keyless commands, and calls the direct path could not place.
    pub(super) fn fallback(&self) -> ClusterConnection {
        self.fallback.clone()
    }

    /// What a direct call's error means for the map: a redirect or a failed connection asks
    /// for a new one. True when the call was redirected (MOVED, ASK, TRYAGAIN, CLUSTERDOWN,
    /// READONLY: it did not run), so it may be sent through the crate, which follows it.
    pub(super) fn on_error(&self, e: &redis::RedisError) -> bool {
        let redirected = matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::Moved
                    | ServerErrorKind::Ask
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::ReadOnly
            )
        );
        if redirected || e.is_io_error() || e.is_connection_dropped() {
            self.stale();
        }
        redirected
    }

    /// Fetches the map now, for a call that waits on it. One fetch at a time: a caller that
    /// waited behind another's fetch uses its result instead of fetching again.
    pub(super) async fn refresh_now(&self) {
        let seen = self.fetches.load(Ordering::Acquire);
        let _one = self.fetching.lock().await;
        if self.fetches.load(Ordering::Acquire) == seen
            && let Err(e) = self.refresh().await
        {
            tracing::debug!(error = %e, "cluster slot map not fetched");
        }
    }

    /// Asks the refresh task for a new map (it fetches at most one per `REFRESH_GAP`).
    pub(super) fn stale(&self) {
        self.stale.notify_one();
    }

    /// Fetches the slot map and swaps it in when it changed. Nodes that stay keep their
    /// connections.
    /// True when the map changed.
    async fn refresh(&self) -> Result<bool, redis::RedisError> {
        let mut fallback = self.fallback.clone();
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let reply = tokio::time::timeout(
            REFRESH_TIMEOUT,
            fallback.route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random)),
        )
        .await
        .map_err(|_| redis::RedisError::from((ErrorKind::Io, "CLUSTER SLOTS timed out")))??;
        // A node that does not know its own address answers an empty host: the first seed's
        // is the best guess, and a wrong one only costs a MOVED (then the crate's path).
        let guess = self
            .target
            .seeds()
            .first()
            .map(|(h, _)| h.as_str())
            .unwrap_or("127.0.0.1");
        self.fetches.fetch_add(1, Ordering::AcqRel);
        let ranges = slot_ranges(&reply, guess);
        if ranges.is_empty() {
            return Ok(false);
        }
        let mut primaries: Vec<&(String, u16)> = ranges.iter().map(|r| &r.primary).collect();
        primaries.sort();
        primaries.dedup();
        let per_node = self.pool.div_ceil(primaries.len()).max(1);
        let old = self.map.load_full();
        let mut nodes: Vec<Arc<Node>> = Vec::new();
        let mut owner = vec![NO_OWNER; usize::from(SLOTS)].into_boxed_slice();
        for r in &ranges {
            let i = match nodes.iter().position(|n| n.addr == r.primary) {
                Some(i) => i,
                None => {
                    let kept = old
                        .as_ref()
                        .and_then(|m| m.nodes.iter().find(|n| n.addr == r.primary).cloned());
                    let node = match kept {
                        Some(n) => n,
                        None => Arc::new(self.connect(&r.primary, per_node)?),
                    };
                    nodes.push(node);
                    nodes.len() - 1
                }
            };
            let i = u16::try_from(i).unwrap_or(NO_OWNER);
            for slot in r.start..=r.end.min(SLOTS - 1) {
                owner[usize::from(slot)] = i;
            }
        }
        let changed = old.as_ref().is_none_or(|m| {
            m.owner != owner
                || m.nodes.len() != nodes.len()
                || m.nodes.iter().zip(&nodes).any(|(a, b)| a.addr != b.addr)
        });
        if changed {
            let primaries: Vec<String> = nodes
                .iter()
                .map(|n| format!("{}:{}", n.addr.0, n.addr.1))
                .collect();
            if old.is_some() {
                tracing::info!(?primaries, "cluster slot map changed: calls follow it");
            } else {
                tracing::debug!(?primaries, "cluster slot map fetched");
            }
            self.map.store(Some(Arc::new(SlotMap { owner, nodes })));
        }
        Ok(changed)
    }

    /// `per_node` lazy connections to the primary at `addr` (they connect on first use and
    /// reconnect by themselves, like the standalone pool's).
    ///
    /// RESP3, for one reason: a RESP3 `ConnectionManager` hears its connection drop (a push
    /// the client makes) and reconnects at once, used or not. A primary that dies while a
    /// pool connection to it is idle then leaves a *refused* reconnect behind, which the next
    /// call sees before sending anything, so it may go through the crate to the promoted
    /// replica. Over RESP2 that call would find a dead connection and fail with a broken pipe,
    /// which cannot be told from a command lost in flight, so it could not be sent again.
    /// The drop also has the map fetched anew. Script replies read the same in both protocols
    /// (a script answers in RESP2 types unless it asks otherwise).
    fn connect(&self, addr: &(String, u16), per_node: usize) -> Result<Node, redis::RedisError> {
        let client = self
            .target
            .node_client(Some((&addr.0, addr.1)), ProtocolVersion::RESP3)
            .map_err(|e| redis::RedisError::from((ErrorKind::Io, "node client", e.to_string())))?;
        let stale = self.stale.clone();
        let cfg = self
            .node_cfg
            .clone()
            .set_push_sender(move |msg: redis::PushInfo| {
                if msg.kind == redis::PushKind::Disconnection {
                    stale.notify_one();
                }
                Ok::<(), redis::aio::SendError>(())
            });
        let conns = (0..per_node)
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), cfg.clone()))
            .collect::<Result<_, _>>()?;
        Ok(Node {
            addr: addr.clone(),
            conns,
            breaker: NodeBreaker::new(addr),
        })
    }
}

/// Fetches the map at once, then on request (at most once per `REFRESH_GAP`) and every
/// `REFRESH_EVERY`. A request that finds the map unchanged (a node just went away, and its
/// replica is not promoted yet) is followed by fetches every [`FOLLOW_EVERY`] for up to
/// [`FOLLOW_FOR`], so a pool that sends nothing meanwhile (the durable pool, an idle shard)
/// still follows the promotion when it comes. Holds the router weakly: a dropped pool ends it.
async fn refresh_loop(router: Weak<Router>, stale: Arc<Notify>) {
    let mut following: Option<tokio::time::Instant> = None;
    let mut asked = false;
    loop {
        let Some(r) = router.upgrade() else {
            return;
        };
        let fetched = {
            let _one = r.fetching.lock().await;
            r.refresh().await
        };
        match fetched {
            Ok(true) => following = None,
            Ok(false) if asked && following.is_none() => {
                following = Some(tokio::time::Instant::now() + FOLLOW_FOR);
            }
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(error = %e, "cluster slot map not fetched (calls go through the cluster client meanwhile)");
            }
        }
        drop(r);
        tokio::time::sleep(REFRESH_GAP).await;
        let wait = match following {
            Some(until) if tokio::time::Instant::now() < until => FOLLOW_EVERY,
            _ => {
                following = None;
                REFRESH_EVERY
            }
        };
        asked = tokio::time::timeout(wait, stale.notified()).await.is_ok();
    }
}

/// One row of `CLUSTER SLOTS`: a slot range and its primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub primary: (String, u16),
}

/// The rows of a `CLUSTER SLOTS` reply (`[start, end, [host, port, id, …], replicas…]`). A
/// node that does not know its own address answers an empty host: `asked` stands for it.
/// Rows that cannot be read, or whose primary is unknown (`?`), are left out.
pub(super) fn slot_ranges(reply: &Value, asked: &str) -> Vec<SlotRange> {
    let Value::Array(rows) = reply else {
        return Vec::new();
    };
    let int = |v: Option<&Value>| match v {
        Some(Value::Int(n)) => u16::try_from(*n).ok(),
        _ => None,
    };
    rows.iter()
        .filter_map(|row| {
            let Value::Array(parts) = row else {
                return None;
            };
            let (start, end) = (int(parts.first())?, int(parts.get(1))?);
            let Some(Value::Array(node)) = parts.get(2) else {
                return None;
            };
            let host = match node.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => return None,
            };
            let port = int(node.get(1))?;
            let host = if host.is_empty() {
                asked.to_owned()
            } else {
                host
            };
            (host != "?").then_some(SlotRange {
                start,
                end,
                primary: (host, port),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_breaker_opens_after_failures_in_a_row_and_closes_on_success() {
        let b = NodeBreaker::new(&("10.0.0.1".into(), 7000));
        for _ in 0..TRIP_AFTER - 1 {
            b.on_failure();
        }
        b.on_success();
        for _ in 0..TRIP_AFTER - 1 {
            b.on_failure();
        }
        assert!(
            b.refusing().is_none(),
            "a success between failures starts again"
        );
        b.on_failure();
        let cause = b.refusing().expect("open after three in a row");
        assert!(cause.contains("10.0.0.1:7000"), "{cause}");
        // After the cool-down, calls go through; one that fails reopens it for longer.
        std::thread::sleep(Duration::from_millis(5));
        b.open_until.store(1, Ordering::Release);
        assert!(b.refusing().is_none());
        b.on_failure();
        assert!(b.refusing().is_some());
        assert_eq!(b.cool_ms.load(Ordering::Relaxed), 200);
        b.on_success();
        assert!(b.refusing().is_none());
        assert_eq!(b.cool_ms.load(Ordering::Relaxed), 0);
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn slot_rows_name_their_primaries() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("10.0.0.1"), Value::Int(7000), bulk("id1")]),
                Value::Array(vec![bulk("10.0.0.4"), Value::Int(7003), bulk("id4")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                Value::Array(vec![bulk(""), Value::Int(7001), bulk("id2")]),
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                Value::Array(vec![bulk("?"), Value::Int(7002)]),
            ]),
            Value::Int(3),
        ]);
        let rows = slot_ranges(&reply, "seed");
        assert_eq!(
            rows,
            vec![
                SlotRange {
                    start: 0,
                    end: 5460,
                    primary: ("10.0.0.1".into(), 7000)
                },
                SlotRange {
                    start: 5461,
                    end: 10922,
                    primary: ("seed".into(), 7001)
                },
            ]
        );
        assert!(slot_ranges(&Value::Nil, "seed").is_empty());
    }
}
