//! A real Redis Cluster for the end-to-end tests (issue 12): three primaries started from the
//! installed `redis-server`, optionally one replica each, joined by `redis-cli --cluster
//! create`, on free loopback ports.
//!
//! Same rules as the standalone [`RedisServer`](crate::RedisServer): every node has its own
//! temp dir and log, persistence is off, nothing touches the machine's Redis on 6379, the
//! processes are killed on drop and the logs are printed when a test fails. Two additions:
//!
//! - [`shared`] starts one cluster per test process, on first use, for every test of that
//!   binary (a cluster costs a few seconds to form). Tests sharing it must keep to their own
//!   keys (their own app names or ids) and never flush it or change its topology; a test that
//!   kills nodes starts its own with [`RedisCluster::start`].
//! - A static is never dropped, so each cluster also has a watchdog (`sh`) that kills its
//!   nodes and removes their dirs once the test process is gone, however it ended.
//!
//! A node's cluster bus listens on its port + 10000, so every port is below 55535 and both
//! ports were free when picked. `--cluster-node-timeout` is short (1 s) and replicas may
//! always take over (`--cluster-replica-validity-factor 0`), so a failover takes a few
//! seconds rather than the default's tens.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::ops::{Deref, RangeInclusive};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use crate::{PORT_ATTEMPTS, TempDir, read_lossy};

/// Hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// How many primaries [`RedisCluster::start`] starts.
pub const PRIMARIES: usize = 3;
/// A node's cluster bus listens on its port plus this.
const BUS_OFFSET: u16 = 10000;
/// Ports at or above this have no room for their bus port.
const PORT_LIMIT: u16 = u16::MAX - BUS_OFFSET;
/// `--cluster-node-timeout`: how long a node may be unreachable before it is failed over.
const NODE_TIMEOUT_MS: u64 = 1000;
/// How long the cluster may take to form, or to recover from a failover.
const READY_TIMEOUT: Duration = Duration::from_secs(40);
/// Read timeout of the harness's own connections, so a dead or frozen node cannot hang a test.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of each node's log printed when a test fails.
const LOG_TAIL: usize = 80;

// ---------------------------------------------------------------------------------------------
// Hash slots
// ---------------------------------------------------------------------------------------------

/// The hash slot of `key`, as the cluster spec defines it: CRC16 (XMODEM) of the key modulo
/// 16384, where a key holding `{…}` with at least one byte between the first `{` and the next
/// `}` hashes only those bytes (its hash tag). `{}` and an unclosed `{` hash the whole key.
pub fn key_slot(key: impl AsRef<[u8]>) -> u16 {
    let key = key.as_ref();
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// CRC16-CCITT as Redis uses it: polynomial 0x1021, initial value 0, no reflection.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (0..8).fold(crc ^ (u16::from(b) << 8), |c, _| {
            if c & 0x8000 != 0 {
                (c << 1) ^ 0x1021
            } else {
                c << 1
            }
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Topology, as CLUSTER NODES reports it
// ---------------------------------------------------------------------------------------------

/// One node of the cluster as one member sees it (a line of `CLUSTER NODES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    /// A primary (`master`), else a replica of `primary_id`.
    pub primary: bool,
    pub primary_id: Option<String>,
    /// Flagged `fail` (agreed dead) or `fail?` (unreachable from the reporting node).
    pub failing: bool,
    /// The slot ranges it serves (primaries only).
    pub slots: Vec<RangeInclusive<u16>>,
}

impl NodeInfo {
    pub fn url(&self) -> String {
        node_url(self.port)
    }

    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|r| r.contains(&slot))
    }
}

fn parse_nodes(text: &str) -> Result<Vec<NodeInfo>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            ensure!(f.len() >= 8, "short CLUSTER NODES line: {line:?}");
            // `ip:port@cport[,hostname]`
            let port = f[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("no port in CLUSTER NODES line: {line:?}"))?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                // `[slot->-id]` / `[slot-<-id]` are migrations in flight, not ownership.
                .filter(|s| !s.starts_with('['))
                .map(|s| {
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    Ok(a.parse()?..=b.parse()?)
                })
                .collect::<Result<Vec<RangeInclusive<u16>>>>()
                .with_context(|| format!("bad slots in CLUSTER NODES line: {line:?}"))?;
            Ok(NodeInfo {
                id: f[0].to_string(),
                port,
                primary: flags.contains(&"master"),
                primary_id: (f[3] != "-").then(|| f[3].to_string()),
                failing: flags.iter().any(|x| x.starts_with("fail")),
                slots,
            })
        })
        .collect()
}

/// Who serves which slots, as `(first, last, port)` sorted: two nodes agree on the cluster's
/// configuration when their maps are equal.
fn slot_map(nodes: &[NodeInfo]) -> Vec<(u16, u16, u16)> {
    let mut map: Vec<_> = nodes
        .iter()
        .filter(|n| n.primary)
        .flat_map(|n| n.slots.iter().map(|r| (*r.start(), *r.end(), n.port)))
        .collect();
    map.sort_unstable();
    map
}

pub fn node_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/")
}

/// A blocking connection to one node (no redirections followed: the harness asks each node
/// about itself).
fn node_conn(port: u16) -> Result<redis::Connection> {
    let client = redis::Client::open(node_url(port))?;
    let conn = client
        .get_connection_with_timeout(IO_TIMEOUT)
        .with_context(|| format!("connecting to cluster node :{port}"))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

fn query<T: redis::FromRedisValue>(port: u16, cmd: &mut redis::Cmd) -> Result<T> {
    let mut c = node_conn(port)?;
    cmd.query(&mut c)
        .with_context(|| format!("asking cluster node :{port}"))
}

/// `field:value` lines of an INFO-style answer (`CLUSTER INFO`, `INFO replication`).
fn info_field<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

// ---------------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------------

/// Whether [`RedisCluster::start`] gives each primary a replica (for failover tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterOptions {
    pub replicas: bool,
}

#[derive(Debug)]
struct Node {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Node {
    fn log(&self) -> String {
        read_lossy(&self.dir.path().join("redis.log"))
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A cluster node: a standalone redis-server of the harness with cluster mode on.
fn spawn_node(port: u16, dir: &Path) -> Result<Child> {
    let args: Vec<String> = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        &dir.join("nodes.conf").to_string_lossy(),
        "--cluster-node-timeout",
        &NODE_TIMEOUT_MS.to_string(),
        "--cluster-replica-validity-factor",
        "0",
    ]
    .map(str::to_string)
    .into();
    super::spawn_redis(port, dir, &args)
}

/// `n` distinct loopback ports below [`PORT_LIMIT`] whose bus ports are free too. The
/// listeners are held until all are picked, so the OS cannot hand one out twice.
fn pick_ports(n: usize) -> Result<Vec<u16>> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..1000 {
        if ports.len() == n {
            return Ok(ports);
        }
        let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if port == 6379 || port >= PORT_LIMIT {
            continue;
        }
        let Ok(bus) = TcpListener::bind(("127.0.0.1", port + BUS_OFFSET)) else {
            continue;
        };
        held.push(l);
        held.push(bus);
        ports.push(port);
    }
    bail!("no {n} free loopback port pairs (port, port + {BUS_OFFSET}) below {PORT_LIMIT}")
}

/// Starts one node in its own dir, re-picking the port when another process took it.
fn start_node(first_port: u16) -> Result<Node> {
    let dir = TempDir::new("redis-cluster")?;
    let mut port = first_port;
    let mut last_err = anyhow!("no attempt made");
    for _ in 0..PORT_ATTEMPTS {
        match spawn_node(port, dir.path()) {
            Ok(child) => {
                return Ok(Node {
                    port,
                    dir,
                    child: Some(child),
                });
            }
            Err(e) => last_err = e,
        }
        port = pick_ports(1)?[0];
    }
    Err(last_err.context(format!(
        "cluster node did not start; its log:\n{}",
        read_lossy(&dir.path().join("redis.log"))
    )))
}

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

/// A Redis Cluster this test (or test process, see [`shared`]) started and owns.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    watchdog: Option<Child>,
}

impl RedisCluster {
    /// Starts [`PRIMARIES`] primaries (and a replica of each when asked), joins them into one
    /// cluster covering every slot, and waits until every node agrees on it.
    pub fn start(opts: ClusterOptions) -> Result<Self> {
        let count = if opts.replicas {
            2 * PRIMARIES
        } else {
            PRIMARIES
        };
        let mut cluster = Self {
            nodes: Vec::with_capacity(count),
            watchdog: None,
        };
        for port in pick_ports(count)? {
            cluster.nodes.push(start_node(port)?);
        }
        cluster.refresh_watchdog()?;
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        create.args(cluster.seeds());
        if opts.replicas {
            create.args(["--cluster-replicas", "1"]);
        }
        create.arg("--cluster-yes").stdin(Stdio::null());
        let out = create
            .output()
            .context("could not run redis-cli (is it installed and on PATH?)")?;
        ensure!(
            out.status.success(),
            "redis-cli --cluster create failed ({}):\n{}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        cluster
            .wait_ready()
            .with_context(|| format!("the new cluster did not settle\n{}", cluster.logs()))?;
        Ok(cluster)
    }

    /// `127.0.0.1:port` of every node started, live or not, in start order.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// `redis://127.0.0.1:port/` of every node started: what a cluster client
    /// (`redis::cluster::ClusterClient::new`) takes as its initial nodes.
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| node_url(n.port)).collect()
    }

    /// The cluster as one `--redis` value, in the form docs/cluster.md proposes for patternd:
    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,…/` (every node a seed).
    pub fn url(&self) -> String {
        format!("redis+cluster://{}/", self.seeds().join(","))
    }

    /// Ports of the nodes currently running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The cluster as its first live node sees it.
    pub fn topology(&self) -> Result<Vec<NodeInfo>> {
        let port = *self
            .live_ports()
            .first()
            .ok_or_else(|| anyhow!("no node of the cluster is running"))?;
        Self::topology_from(port)
    }

    fn topology_from(port: u16) -> Result<Vec<NodeInfo>> {
        let text: String = query(port, redis::cmd("CLUSTER").arg("NODES"))?;
        parse_nodes(&text)
    }

    /// The primaries serving slots, in slot order.
    pub fn primaries(&self) -> Result<Vec<NodeInfo>> {
        let mut p: Vec<_> = self
            .topology()?
            .into_iter()
            .filter(|n| n.primary && !n.slots.is_empty())
            .collect();
        p.sort_by_key(|n| n.slots.iter().map(|r| *r.start()).min());
        Ok(p)
    }

    /// The primary serving `slot`.
    pub fn owner_of_slot(&self, slot: u16) -> Result<NodeInfo> {
        self.primaries()?
            .into_iter()
            .find(|n| n.serves(slot))
            .ok_or_else(|| anyhow!("no primary serves slot {slot}"))
    }

    /// The primary serving `key`'s slot.
    pub fn owner_of_key(&self, key: impl AsRef<[u8]>) -> Result<NodeInfo> {
        self.owner_of_slot(key_slot(key))
    }

    /// A multiplexed connection to the primary serving `key`: to inspect what patternd wrote
    /// there (it answers MOVED for keys of other slots).
    pub async fn conn_for_key(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.owner_of_key(key)?.url())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// The first ids `{prefix}0`, `{prefix}1`, … whose keys (`key_of(id)`) land on each
    /// primary, one per primary in slot order: so a test's keys reach every shard.
    pub fn ids_on_every_primary(
        &self,
        prefix: &str,
        key_of: impl Fn(&str) -> String,
    ) -> Result<Vec<String>> {
        let primaries = self.primaries()?;
        let mut found: Vec<Option<String>> = vec![None; primaries.len()];
        for i in 0..10_000 {
            let id = format!("{prefix}{i}");
            let slot = key_slot(key_of(&id));
            if let Some(k) = primaries.iter().position(|p| p.serves(slot))
                && found[k].is_none()
            {
                found[k] = Some(id);
            }
            if found.iter().all(Option::is_some) {
                return Ok(found.into_iter().flatten().collect());
            }
        }
        bail!("no ids with prefix {prefix:?} reach every primary")
    }

    /// The first id `{prefix}0`, `{prefix}1`, … whose key (`key_of(id)`) lands on the
    /// primary at `port`: to put a test's key on the shard it is about to kill.
    pub fn id_on(
        &self,
        prefix: &str,
        key_of: impl Fn(&str) -> String,
        port: u16,
    ) -> Result<String> {
        let primary = self
            .primaries()?
            .into_iter()
            .find(|p| p.port == port)
            .ok_or_else(|| anyhow!(":{port} is not a primary"))?;
        (0..10_000)
            .map(|i| format!("{prefix}{i}"))
            .find(|id| primary.serves(key_slot(key_of(id))))
            .ok_or_else(|| anyhow!("no id with prefix {prefix:?} lands on :{port}"))
    }

    /// Waits until every running node says `cluster_state:ok` with all 16384 slots served,
    /// every running node reports the same slot owners, every owner is running, and every
    /// running replica's link to its primary is up.
    pub fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let why = match self.not_ready() {
                Ok(None) => return Ok(()),
                Ok(Some(why)) => why,
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!("cluster not ready after {READY_TIMEOUT:?}: {why}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Why the cluster is not ready yet, or `None` when it is.
    fn not_ready(&self) -> Result<Option<String>> {
        let live = self.live_ports();
        let mut agreed: Option<Vec<(u16, u16, u16)>> = None;
        for &port in &live {
            let info: String = query(port, redis::cmd("CLUSTER").arg("INFO"))?;
            for (field, want) in [
                ("cluster_state", "ok"),
                ("cluster_slots_assigned", "16384"),
                ("cluster_slots_ok", "16384"),
            ] {
                let got = info_field(&info, field);
                if got != Some(want) {
                    return Ok(Some(format!(":{port} has {field}:{got:?}")));
                }
            }
            let nodes = Self::topology_from(port)?;
            if nodes.len() != self.nodes.len() {
                return Ok(Some(format!(
                    ":{port} knows {} nodes of {}",
                    nodes.len(),
                    self.nodes.len()
                )));
            }
            let map = slot_map(&nodes);
            if let Some((_, _, owner)) = map.iter().find(|(_, _, p)| !live.contains(p)) {
                return Ok(Some(format!(
                    ":{port} still routes slots to stopped :{owner}"
                )));
            }
            match &agreed {
                Some(m) if *m != map => {
                    return Ok(Some(format!(":{port} disagrees on the slot owners")));
                }
                Some(_) => {}
                None => agreed = Some(map),
            }
            let me = nodes.iter().find(|n| n.port == port);
            if me.is_some_and(|n| !n.primary) {
                let repl: String = query(port, redis::cmd("INFO").arg("replication"))?;
                let link = info_field(&repl, "master_link_status");
                if link != Some("up") {
                    return Ok(Some(format!(":{port} replica link is {link:?}")));
                }
            }
        }
        Ok(None)
    }

    /// Kills the primary on `port` (SIGKILL, as a crash would) and waits until one of its
    /// replicas is promoted and every running node agrees; returns the promoted node. Fails
    /// when the node is not a primary with a replica.
    pub fn kill_primary(&mut self, port: u16) -> Result<NodeInfo> {
        let topo = self.topology()?;
        let victim = topo
            .iter()
            .find(|n| n.port == port && n.primary)
            .ok_or_else(|| anyhow!(":{port} is not a primary"))?;
        let replicas: BTreeSet<u16> = topo
            .iter()
            .filter(|n| n.primary_id.as_deref() == Some(victim.id.as_str()))
            .map(|n| n.port)
            .collect();
        ensure!(!replicas.is_empty(), "primary :{port} has no replica");
        self.node_mut(port)?.kill();
        self.refresh_watchdog()?;
        self.wait_ready()
            .with_context(|| format!("no failover after killing :{port}\n{}", self.logs()))?;
        self.primaries()?
            .into_iter()
            .find(|n| replicas.contains(&n.port))
            .ok_or_else(|| anyhow!("no replica of :{port} was promoted"))
    }

    /// Starts a stopped node again on its port with its old `nodes.conf` (its data is gone:
    /// nothing was persisted). A killed primary rejoins as a replica of the node promoted in
    /// its place. Waits until the cluster is ready.
    pub fn restart_node(&mut self, port: u16) -> Result<()> {
        let node = self.node_mut(port)?;
        ensure!(node.child.is_none(), "node :{port} is running");
        node.child = Some(
            spawn_node(port, node.dir.path())
                .with_context(|| format!("restarting cluster node :{port}"))?,
        );
        self.refresh_watchdog()?;
        self.wait_ready()
            .with_context(|| format!(":{port} did not rejoin\n{}", self.logs()))
    }

    /// A manual failover without data loss (`CLUSTER FAILOVER` on the replica on `port`):
    /// the replica and its primary swap roles. Waits until the cluster is ready.
    pub fn promote(&self, port: u16) -> Result<()> {
        let _: String = query(port, redis::cmd("CLUSTER").arg("FAILOVER"))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        while !Self::topology_from(port)?
            .iter()
            .any(|n| n.port == port && n.primary)
        {
            ensure!(Instant::now() < deadline, ":{port} was not promoted");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_ready()
    }

    fn node_mut(&mut self, port: u16) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .ok_or_else(|| anyhow!("no node of this cluster on :{port}"))
    }

    /// The tail of every node's log, each under a header.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = n.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            let _ = writeln!(
                out,
                "----- cluster node :{} log (last {} lines) -----\n{}",
                n.port,
                tail.len(),
                tail.join("\n")
            );
        }
        out.push_str("----- end of cluster logs -----");
        out
    }

    /// (Re)starts the watchdog with the current pids: it waits for this test process to end,
    /// then kills the nodes and removes their dirs. Rewritten whenever a pid changes, so it
    /// never signals a pid that is no longer ours.
    fn refresh_watchdog(&mut self) -> Result<()> {
        self.stop_watchdog();
        const SCRIPT: &str = r#"p=$1; shift
while kill -0 "$p" 2>/dev/null; do sleep 1; done
for a in "$@"; do
  case $a in
    */patternd-e2e-*) rm -rf -- "$a" ;;
    *) kill -9 "$a" 2>/dev/null ;;
  esac
done"#;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", SCRIPT, "patternd-cluster-watchdog"])
            .arg(std::process::id().to_string());
        cmd.args(
            self.nodes
                .iter()
                .filter_map(Node::pid)
                .map(|p| p.to_string()),
        );
        cmd.args(self.nodes.iter().map(|n| n.dir.path()));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning the cluster watchdog (sh)")?;
        self.watchdog = Some(child);
        Ok(())
    }

    fn stop_watchdog(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // The watchdog first: it would delete the dirs a failed test keeps for inspection.
        self.stop_watchdog();
        for n in &mut self.nodes {
            n.kill();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One cluster per test process
// ---------------------------------------------------------------------------------------------

/// The test process's cluster (three primaries, no replicas), started on first use. The
/// returned guard prints the nodes' logs when the test holding it fails.
pub fn shared() -> Result<SharedCluster> {
    static CLUSTER: OnceLock<Result<RedisCluster, String>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| {
            RedisCluster::start(ClusterOptions::default()).map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map(SharedCluster)
        .map_err(|e| anyhow!("the shared cluster did not start: {e}"))
}

/// A test's handle on the [`shared`] cluster.
#[derive(Debug)]
pub struct SharedCluster(&'static RedisCluster);

impl Deref for SharedCluster {
    type Target = RedisCluster;

    fn deref(&self) -> &RedisCluster {
        self.0
    }
}

impl Drop for SharedCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.0.logs());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_is_xmodem() {
        // The check value of CRC-16/XMODEM, and the cluster spec's reference answer.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot("123456789"), 12739);
    }

    #[test]
    fn slots_of_known_keys() {
        // Answers of CLUSTER KEYSLOT on Redis 7 (tests/tests/cluster_harness.rs checks many
        // more against a live cluster).
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("bar"), 5061);
        assert_eq!(key_slot("hello"), 866);
        assert_eq!(key_slot(""), 0);
    }

    #[test]
    fn hash_tags_follow_the_spec() {
        // The examples of the cluster spec's "Hash tags" section.
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("{user1000}.followers"), key_slot("user1000"));
        assert_eq!(key_slot("foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
        assert_eq!(key_slot("foo{bar}{zap}"), key_slot("bar"));
        assert_eq!(key_slot("{}"), crc16(b"{}") % SLOTS);
        assert_eq!(key_slot("a{b"), crc16(b"a{b") % SLOTS);
        assert_eq!(key_slot("a}b{c}"), key_slot("c"));
    }

    #[test]
    fn cluster_nodes_lines_parse() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 7000 [5461->-292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f]
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 master,fail - 1426238316232 0 5 disconnected
";
        let nodes = parse_nodes(text).unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].port, 30004);
        assert!(!nodes[0].primary);
        assert_eq!(
            nodes[0].primary_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert_eq!(nodes[1].slots, vec![0..=5460, 7000..=7000]);
        assert!(nodes[1].primary && !nodes[1].failing);
        assert!(nodes[2].failing && nodes[2].slots.is_empty());
    }
}
