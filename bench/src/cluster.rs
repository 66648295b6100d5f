//! The cluster scenario: what the cluster client costs per call. A second patternd serves the
//! same policy against a 3-primary Redis Cluster started here (redis-server with
//! `--cluster-enabled yes`, joined by `redis-cli --cluster create`), and the same load runs
//! against both engines in alternating rounds (standalone, cluster, cluster, standalone), so a
//! drift of the machine falls on both sides alike. Reported: decisions/s, patternd's CPU per
//! decision, Redis CPU per decision (summed over the three primaries on the cluster side), and
//! the cluster/standalone ratio of patternd's CPU per decision, whose goal is ≤ 1.10.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::args::Args;
use crate::load::{self, Target};
use crate::measure::{self, Measured, Pids};
use crate::patterns;
use crate::procs::{self, ChildGuard, Patternd};

/// The goal: the cluster client's cost per call within 10% of standalone.
pub const GOAL_CPU_RATIO: f64 = 1.10;
const PRIMARIES: usize = 3;

/// Three primaries, killed when dropped.
pub struct Cluster {
    nodes: Vec<(ChildGuard, u16)>,
}

impl Cluster {
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|(_, p)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}/", seeds.join(","))
    }

    fn pids(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(g, _)| g.pid().to_string())
            .collect()
    }
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn cluster_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let p = procs::free_port()?;
        if p < 55_535 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free port with a free cluster bus port")
}

pub async fn start_cluster(dir: &Path) -> anyhow::Result<Cluster> {
    let mut nodes = Vec::new();
    for i in 0..PRIMARIES {
        let port = cluster_port()?;
        let node_dir = dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&node_dir)?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            .arg("--cluster-config-file")
            .arg(node_dir.join("nodes.conf"))
            .arg("--dir")
            .arg(&node_dir)
            .args(["--logfile", ""]);
        let guard = ChildGuard::spawn(
            "redis-server (cluster)",
            &mut cmd,
            node_dir.join("redis.log"),
        )?;
        nodes.push((guard, port));
    }
    for (g, p) in &mut nodes {
        procs::wait_ping(g, *p).await?;
    }
    let mut create = Command::new("redis-cli");
    create.arg("--cluster").arg("create");
    for (_, p) in &nodes {
        create.arg(format!("127.0.0.1:{p}"));
    }
    let out = create
        .arg("--cluster-yes")
        .output()
        .context("redis-cli --cluster create")?;
    if !out.status.success() {
        bail!(
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for (_, p) in &nodes {
        let client = redis::Client::open(format!("redis://127.0.0.1:{p}/"))?;
        loop {
            let mut c = client.get_multiplexed_async_connection().await?;
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut c)
                .await?;
            if info.contains("cluster_state:ok") {
                break;
            }
            if Instant::now() > deadline {
                bail!("the benchmark cluster did not reach cluster_state:ok: {info}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(Cluster { nodes })
}

/// One comparison: the same load against the standalone and the cluster engine.
pub struct Pair {
    pub what: &'static str,
    pub standalone: Measured,
    pub cluster: Measured,
}

impl Pair {
    pub fn cpu_ratio(&self) -> f64 {
        let s = self
            .standalone
            .per_decision_us(self.standalone.cpu.patternd);
        let c = self.cluster.per_decision_us(self.cluster.cpu.patternd);
        c / s
    }

    pub fn print(&self) {
        let row = |side: &str, m: &Measured| {
            println!(
                "  {:<11} {:>10.0} {:>14.1} {:>14.1} {:>9.2}",
                side,
                m.rps(),
                m.per_decision_us(m.cpu.patternd),
                m.per_decision_us(m.cpu.redis),
                m.p_ms(0.99),
            );
        };
        println!("{}", self.what);
        println!(
            "  {:<11} {:>10} {:>14} {:>14} {:>9}",
            "", "decisions/s", "patternd µs/dec", "Redis µs/dec", "p99 ms"
        );
        row("standalone", &self.standalone);
        row("cluster", &self.cluster);
        let r = self.cpu_ratio();
        println!(
            "  patternd CPU per decision, cluster / standalone: {r:.2}× (goal ≤ {GOAL_CPU_RATIO:.2}×) {}",
            if r <= GOAL_CPU_RATIO { "PASS" } else { "MISS" }
        );
    }

    pub fn errors(&self) -> f64 {
        self.standalone
            .error_share()
            .max(self.cluster.error_share())
    }
}

/// Runs the rate-limit and cache-hit comparisons. `standalone` is the engine (and its Redis)
/// the other scenarios use; the cluster engine gets the same policy.
pub async fn run(
    args: &Args,
    bin: &Path,
    dir: &Path,
    extra_rules: &str,
    standalone: (&Patternd, &Pids),
    cache: bool,
) -> anyhow::Result<Vec<Pair>> {
    eprintln!("[cluster] starting a 3-primary Redis Cluster and a second patternd on it …");
    let cluster_dir = dir.join("cluster");
    std::fs::create_dir_all(&cluster_dir)?;
    let cluster = start_cluster(&cluster_dir).await?;
    let flags: Vec<String> = match std::env::var("BENCH_CLUSTER_POOL") {
        Ok(n) => vec!["--redis-pool".into(), n],
        Err(_) => Vec::new(),
    };
    let mut engine = procs::start_patternd_with(
        bin,
        &cluster_dir,
        &cluster.url(),
        None,
        &format!("{}{extra_rules}", procs::POLICY),
        &flags,
    )
    .await?;
    let nodes = cluster.pids();
    let cluster_pids = Pids {
        patternd: engine.guard.pid().to_string(),
        redis: nodes[0].clone(),
        redis_more: nodes[1..].to_vec(),
        ticks: standalone.1.ticks,
    };
    let mut pairs = Vec::new();
    let rl = |addr: SocketAddr| Target::new(addr, "/v1/ratelimit/bench/sw");
    pairs.push(
        compare(
            "rate limit (sliding_window), POST /v1/ratelimit/bench/sw",
            args,
            (Arc::new(rl(standalone.0.addr)?), standalone.1),
            (Arc::new(rl(engine.addr)?), &cluster_pids),
        )
        .await?,
    );
    engine.guard.check_alive()?;
    if cache {
        eprintln!("[cluster] filling the cluster engine's cache …");
        tokio::time::timeout(
            patterns::SETUP_TIMEOUT,
            patterns::fill_cache(engine.addr, "item"),
        )
        .await
        .context("filling the cluster's cache took too long")??;
        let get = |addr: SocketAddr| {
            Target::new(addr, &format!("/v1/cache/{}/item/", patterns::APP))
                .map(|t| t.with_shape(load::Shape::GetId))
        };
        let cache_args = Args {
            keyspace: patterns::CACHE_IDS,
            ..args.clone()
        };
        pairs.push(
            compare(
                "cache hit, GET /v1/cache/bench/item/{id}",
                &cache_args,
                (Arc::new(get(standalone.0.addr)?), standalone.1),
                (Arc::new(get(engine.addr)?), &cluster_pids),
            )
            .await?,
        );
        engine.guard.check_alive()?;
    }
    drop(engine);
    drop(cluster);
    Ok(pairs)
}

/// Alternating rounds (standalone, cluster, cluster, standalone), each half the duration.
async fn compare(
    what: &'static str,
    args: &Args,
    standalone: (Arc<Target>, &Pids),
    cluster: (Arc<Target>, &Pids),
) -> anyhow::Result<Pair> {
    let half = args.duration / 2;
    let mut s: Option<Measured> = None;
    let mut c: Option<Measured> = None;
    for (i, cluster_turn) in [false, true, true, false].into_iter().enumerate() {
        let (target, pids) = if cluster_turn { &cluster } else { &standalone };
        eprintln!(
            "[cluster] {what}: round {} of 4 ({}) …",
            i + 1,
            if cluster_turn {
                "cluster"
            } else {
                "standalone"
            }
        );
        let m = measure::http(target.clone(), args, half, pids).await?;
        let slot = if cluster_turn { &mut c } else { &mut s };
        match slot {
            Some(prev) => prev.absorb(m),
            None => *slot = Some(m),
        }
    }
    match (s, c) {
        (Some(standalone), Some(cluster)) => Ok(Pair {
            what,
            standalone,
            cluster,
        }),
        _ => bail!("no measured round"),
    }
}
