//! One test body, run on a standalone Redis and on a Redis Cluster (issue 12).
//!
//! A pattern test that makes sense on both is written once, as
//! `async fn name(b: Backend) -> Result<()>`, and [`on_every_backend!`](crate::on_every_backend)
//! turns it into two tests, `name::standalone` and `name::cluster`. The body starts its world
//! with [`World::on`](crate::World::on) and reads what patternd wrote through
//! [`Backend::conn_for_key`] (the node that owns the key), never through a connection to "the"
//! Redis, which a cluster does not have.
//!
//! **Isolation.** Tests of one binary run in parallel and reuse app names, so they cannot share
//! a cluster the way they would share keys. Each cluster test leases one from a small pool
//! of clusters per test process, exclusively. On release the harness flushes its primaries
//! (FLUSHALL and SCRIPT FLUSH: servers the harness started, never 6379) and puts it back, so
//! the next test finds an empty cluster without paying the 2-3 s a new one takes to form.
//! The pool grows on demand up to the number of test threads (at most [`MAX_POOL`]); a
//! lease waits when all are in use. Pool clusters live in a static, which is never dropped:
//! [`RedisCluster`]'s watchdog kills their nodes when the test process ends, however it ends.
//! A cluster that a test left unhealthy (a node gone, slots moved) is not returned: it is
//! dropped (its nodes killed) and a fresh one is started when needed.
//!
//! **Ids on every primary.** [`Backend::spread_ids`] gives ids whose keys land on each of the
//! three primaries, so a test's keys reach every shard. On a standalone server it gives the
//! same ids (those the default three-way slot split would spread), so both variants of a
//! test run the very same requests.

use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::cluster::{ClusterOptions, PRIMARIES, RedisCluster, SLOTS, key_slot};
use crate::{Paused, RedisServer, scan_all};

/// The most clusters one test process starts (each is three redis-server processes).
pub const MAX_POOL: usize = 4;

/// Where a test's world keeps its data.
#[derive(Debug)]
pub enum Backend {
    /// A redis-server of this test alone ([`RedisServer::start`]).
    Standalone(RedisServer),
    /// A three-primary cluster leased from the process's pool, exclusively.
    Cluster(ClusterLease),
}

impl Backend {
    /// A fresh standalone redis-server.
    pub fn standalone() -> Result<Self> {
        Ok(Self::Standalone(RedisServer::start()?))
    }

    /// An empty three-primary cluster, leased from the pool until this is dropped.
    pub fn cluster() -> Result<Self> {
        Ok(Self::Cluster(ClusterLease::take()?))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// `standalone` or `cluster`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Standalone(_) => "standalone",
            Self::Cluster(_) => "cluster",
        }
    }

    /// What patternd's `--redis` gets: `redis://…` or `redis+cluster://h:p1,h:p2,h:p3/`.
    pub fn url(&self) -> String {
        match self {
            Self::Standalone(s) => s.url(),
            Self::Cluster(c) => c.url(),
        }
    }

    /// A connection to the node that owns `key`, to inspect what patternd wrote (TTLs,
    /// types). On a cluster it answers MOVED for keys of other primaries' slots, so a test
    /// asks for a connection per key it reads (keys of one id share a node).
    pub async fn conn_for_key(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<redis::aio::MultiplexedConnection> {
        match self {
            Self::Standalone(s) => s.conn().await,
            Self::Cluster(c) => c.conn_for_key(key).await,
        }
    }

    /// A connection to every primary (one on a standalone server), with the slots each
    /// serves: for a test that reads many keys, or SCANs, without asking the cluster who
    /// owns each key.
    pub async fn nodes(&self) -> Result<Nodes> {
        let mut nodes = Vec::with_capacity(PRIMARIES);
        match self {
            Self::Standalone(s) => nodes.push(NodeConn {
                port: s.port(),
                slots: vec![0..=SLOTS - 1],
                conn: s.conn().await?,
            }),
            Self::Cluster(c) => {
                for p in c.primaries()? {
                    let client = redis::Client::open(p.url())?;
                    nodes.push(NodeConn {
                        port: p.port,
                        slots: p.slots.clone(),
                        conn: client.get_multiplexed_async_connection().await?,
                    });
                }
            }
        }
        Ok(Nodes(nodes))
    }

    /// Every key on every primary, sorted (SCAN per node, never KEYS).
    pub async fn scan_all(&self) -> Result<Vec<Vec<u8>>> {
        let mut keys = Vec::new();
        for n in &mut self.nodes().await?.0 {
            keys.extend(scan_all(&mut n.conn).await?);
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// [`Backend::scan_all`], the names as text.
    pub async fn scan_names(&self) -> Result<Vec<String>> {
        Ok(self
            .scan_all()
            .await?
            .into_iter()
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect())
    }

    /// The port of the node that owns `key` (the server's own port on a standalone Redis):
    /// lets a test assert that its keys did reach every primary.
    pub fn node_of_key(&self, key: impl AsRef<[u8]>) -> Result<u16> {
        match self {
            Self::Standalone(s) => Ok(s.port()),
            Self::Cluster(c) => Ok(c.owner_of_key(key)?.port),
        }
    }

    /// The first ids `{prefix}0`, `{prefix}1`, … whose keys (`key_of(id)`) land on each
    /// primary, one per primary in slot order. On a standalone server: the ids the same call
    /// gives on a freshly created cluster (the default split of the slots in three), so both
    /// variants of a test use the same ids.
    pub fn spread_ids(&self, prefix: &str, key_of: impl Fn(&str) -> String) -> Result<Vec<String>> {
        match self {
            Self::Standalone(_) => default_split_ids(prefix, key_of),
            Self::Cluster(c) => c.ids_on_every_primary(prefix, key_of),
        }
    }

    /// The logs of the server or of every cluster node.
    pub fn log(&self) -> String {
        match self {
            Self::Standalone(s) => s.log(),
            Self::Cluster(c) => c.logs(),
        }
    }

    /// The standalone server, for a test about one server's own behaviour (restarts,
    /// stalls). Fails on a cluster: such a test must not run on one.
    pub fn server(&self) -> Result<&RedisServer> {
        match self {
            Self::Standalone(s) => Ok(s),
            Self::Cluster(_) => {
                bail!("a standalone-only test asked for the one server on a cluster")
            }
        }
    }

    fn server_mut(&mut self, what: &str) -> &mut RedisServer {
        match self {
            Self::Standalone(s) => s,
            // A test that stops "the" Redis is standalone-only by construction; running it
            // on a cluster is a mistake in the test, not a failure of patternd.
            Self::Cluster(_) => {
                panic!("{what} is standalone-only; this test must not run on a cluster")
            }
        }
    }

    /// A connection to the standalone server. On a cluster, use [`Backend::conn_for_key`].
    pub async fn conn(&self) -> Result<redis::aio::MultiplexedConnection> {
        match self {
            Self::Standalone(s) => s.conn().await,
            Self::Cluster(_) => {
                bail!("conn() reaches one node; on a cluster use conn_for_key(key)")
            }
        }
    }

    /// [`RedisServer::stop`]; standalone only (panics on a cluster).
    pub fn stop(&mut self) {
        self.server_mut("stopping the Redis").stop();
    }

    /// [`RedisServer::restart_same_port`]; standalone only (panics on a cluster).
    pub fn restart_same_port(&mut self) -> Result<()> {
        self.server_mut("restarting the Redis").restart_same_port()
    }

    /// [`RedisServer::pause`]; standalone only.
    pub fn pause(&self) -> Result<Paused> {
        self.server()?.pause()
    }
}

/// One connection per primary, by the slots it serves (see [`Backend::nodes`]).
#[derive(Debug)]
pub struct Nodes(Vec<NodeConn>);

#[derive(Debug)]
struct NodeConn {
    port: u16,
    slots: Vec<RangeInclusive<u16>>,
    conn: redis::aio::MultiplexedConnection,
}

impl Nodes {
    fn index_of(&self, key: &[u8]) -> Result<usize> {
        let slot = key_slot(key);
        self.0
            .iter()
            .position(|n| n.slots.iter().any(|r| r.contains(&slot)))
            .ok_or_else(|| anyhow!("no primary serves slot {slot}"))
    }

    /// The connection to the primary that owns `key`.
    pub fn conn(
        &mut self,
        key: impl AsRef<[u8]>,
    ) -> Result<&mut redis::aio::MultiplexedConnection> {
        let i = self.index_of(key.as_ref())?;
        Ok(&mut self.0[i].conn)
    }

    /// The port of the primary that owns `key`.
    pub fn port_of(&self, key: impl AsRef<[u8]>) -> Result<u16> {
        Ok(self.0[self.index_of(key.as_ref())?].port)
    }

    /// A connection to each primary.
    pub fn all(&mut self) -> impl Iterator<Item = &mut redis::aio::MultiplexedConnection> {
        self.0.iter_mut().map(|n| &mut n.conn)
    }

    /// How many primaries (1 on a standalone server).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The ids [`RedisCluster::ids_on_every_primary`] finds on a cluster that `redis-cli --cluster
/// create` split in three (slots 0-5460, 5461-10922, 10923-16383).
fn default_split_ids(prefix: &str, key_of: impl Fn(&str) -> String) -> Result<Vec<String>> {
    let bounds = [0, 5461, 10923, SLOTS];
    let mut found: Vec<Option<String>> = vec![None; PRIMARIES];
    for i in 0..10_000 {
        let id = format!("{prefix}{i}");
        let slot = key_slot(key_of(&id));
        let k = (0..PRIMARIES)
            .find(|&k| (bounds[k]..bounds[k + 1]).contains(&slot))
            .ok_or_else(|| anyhow!("slot {slot} out of range"))?;
        found[k].get_or_insert(id);
        if found.iter().all(Option::is_some) {
            return Ok(found.into_iter().flatten().collect());
        }
    }
    bail!("no ids with prefix {prefix:?} reach every third of the slots")
}

/// Runs one test body on the backend `make` gives, in its own multi-threaded runtime (as
/// `#[tokio::test(flavor = "multi_thread")]` would). The backend is made before the runtime,
/// because leasing a cluster may wait or start one, which blocks.
pub fn run<F, Fut>(make: fn() -> Result<Backend>, body: F) -> Result<()>
where
    F: FnOnce(Backend) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let backend = make()?;
    let name = backend.name();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the test's runtime")?;
    rt.block_on(body(backend))
        .with_context(|| format!("on the {name} backend"))
}

/// Turns each named `async fn name(b: Backend) -> Result<()>` of the test file into two tests,
/// `name::standalone` and `name::cluster`, each running the body on a fresh backend of its
/// kind (a module and a function may share a name: they live in different namespaces).
///
/// ```ignore
/// async fn admits_the_limit(b: Backend) -> Result<()> {
///     let w = World::on(b, &[("p.yaml", POLICY)], &[]).await?;
///     …
/// }
/// on_every_backend!(admits_the_limit);
/// ```
///
/// A cluster variant that cannot pass yet is skipped *explicitly*, with its reason in the
/// test list (`cargo test -- --ignored` runs it):
///
/// ```ignore
/// on_every_backend!(sessions_rotate; cluster_ignored = "session index keys built in Lua");
/// ```
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),+ $(,)?) => {
        $( $crate::on_every_backend!(@one $name, ); )+
    };
    ($($name:ident),+ $(,)? ; cluster_ignored = $why:literal) => {
        $( $crate::on_every_backend!(@one $name, #[ignore = $why]); )+
    };
    (@one $name:ident, $(#[$cluster_attr:meta])*) => {
        mod $name {
            #[test]
            fn standalone() -> $crate::backend::TestResult {
                $crate::backend::run($crate::backend::Backend::standalone, super::$name)
            }

            #[test]
            $(#[$cluster_attr])*
            fn cluster() -> $crate::backend::TestResult {
                $crate::backend::run($crate::backend::Backend::cluster, super::$name)
            }
        }
    };
}

/// What a test made by [`on_every_backend!`](crate::on_every_backend) returns.
pub type TestResult = Result<()>;

// ---------------------------------------------------------------------------------------------
// The pool of clusters
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Pool {
    idle: Vec<RedisCluster>,
    /// Clusters started and not dropped: idle or leased.
    alive: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    idle: Vec::new(),
    alive: 0,
});
static RETURNED: Condvar = Condvar::new();

fn pool() -> MutexGuard<'static, Pool> {
    // A test that panicked while holding the lock left the pool consistent (every change
    // is one push, pop or count), so its poison is ignored.
    POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many clusters the pool may hold: one per test thread, as `cargo test` runs them.
fn pool_limit() -> usize {
    std::env::var("RUST_TEST_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(Into::into))
        .unwrap_or(1)
        .clamp(1, MAX_POOL)
}

/// A cluster of the pool, this test's alone until dropped; then flushed and returned.
#[derive(Debug)]
pub struct ClusterLease(Option<RedisCluster>);

impl ClusterLease {
    /// An idle cluster of the pool, or a new one while the pool is below its limit, or the
    /// next one another test returns.
    pub fn take() -> Result<Self> {
        let mut p = pool();
        loop {
            if let Some(c) = p.idle.pop() {
                return Ok(Self(Some(c)));
            }
            if p.alive < pool_limit() {
                p.alive += 1;
                drop(p);
                return match RedisCluster::start(ClusterOptions::default()) {
                    Ok(c) => Ok(Self(Some(c))),
                    Err(e) => {
                        pool().alive -= 1;
                        RETURNED.notify_one();
                        Err(e.context("starting a cluster for the pool"))
                    }
                };
            }
            p = RETURNED.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn cluster(&self) -> &RedisCluster {
        // Only `Drop` takes it out.
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("a lease holds its cluster until dropped"))
    }
}

impl std::ops::Deref for ClusterLease {
    type Target = RedisCluster;

    fn deref(&self) -> &RedisCluster {
        self.cluster()
    }
}

/// Empties a cluster for the next test and checks it is still whole: three primaries, every
/// slot served.
fn reset(c: &RedisCluster) -> Result<()> {
    let primaries = c.primaries()?;
    anyhow::ensure!(
        primaries.len() == PRIMARIES && primaries.iter().all(|p| !p.failing),
        "the cluster changed shape: {primaries:?}"
    );
    for p in &primaries {
        let mut conn = redis::Client::open(p.url())?
            .get_connection_with_timeout(std::time::Duration::from_secs(2))?;
        redis::cmd("FLUSHALL").arg("SYNC").query::<()>(&mut conn)?;
        // Scripts too: a test about NOSCRIPT recovery must not find the last test's scripts.
        redis::cmd("SCRIPT").arg("FLUSH").query::<()>(&mut conn)?;
        // And every command allowed again, should a test have failed while it refused some
        // (cache_hardening takes EVALSHA away from the default user and gives it back).
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg("on")
            .arg("nopass")
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .query::<()>(&mut conn)?;
    }
    c.wait_ready()
}

impl Drop for ClusterLease {
    fn drop(&mut self) {
        let Some(c) = self.0.take() else { return };
        if std::thread::panicking() {
            eprintln!("{}", c.logs());
        }
        match reset(&c) {
            Ok(()) => pool().idle.push(c),
            Err(e) => {
                eprintln!("dropping a pool cluster that could not be reset: {e:#}");
                pool().alive -= 1;
                drop(c);
            }
        }
        RETURNED.notify_one();
    }
}
