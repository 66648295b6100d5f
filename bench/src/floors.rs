//! The floors scenario (issue 16): what patternd costs per rate-limit decision and per cache hit,
//! as ratios to the floors of its own stack measured in the same run on the same machine.
//!
//! - HTTP floor: the engine's own `GET /healthz` under the same load (same connections, same
//!   load generator): patternd CPU per request with no pattern work and no Redis call.
//! - Redis floor of a decision: redis-benchmark EVALSHA of the naive fixed window users write by
//!   hand (`INCR`, and `PEXPIRE` when the counter is new), keys and ids like patternd's.
//! - Redis floor of a cache hit: redis-benchmark `GET` of values of the same size.
//!
//! Then patternd under the same load: fixed_window and sliding_window decisions (nearly all
//! allowed), the fixed window's denial path (a small keyspace whose ids are all over the limit)
//! without and with the rule's `deny_cache`, and cache hits; each as engine CPU and Redis CPU per request, ratios to the floors, and p99.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;

use crate::args::Args;
use crate::baseline::{self, Baseline};
use crate::load;
use crate::measure::{self, Measured};
use crate::patterns;
use crate::row;

/// The naive fixed window: one counter per id and window, its expiry set by the first request.
pub const NAIVE_SCRIPT: &str = "local n = redis.call('INCR', KEYS[1]) \
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
return n";

/// Ids of the denial run: few enough that every one is over its limit after the warm-up.
pub const DENY_IDS: u64 = 1_000;

/// The goals of issue 16.
const GOAL_ENGINE_RATIO: f64 = 1.4;
const GOAL_REDIS_RATIO: f64 = 1.0;
const GOAL_P99_MS: f64 = 3.0;

/// The rules this scenario adds to the benchmark policy.
pub fn policy() -> String {
    let mut p = String::new();
    p.push_str("  fw:\n    rate_limit: { algorithm: fixed_window, limit: 1000000, window: 1m }\n");
    // Limit 1 for an hour: after its first request an id is denied for the rest of the run.
    p.push_str("  fw_deny:\n    rate_limit: { algorithm: fixed_window, limit: 1, window: 1h }\n");
    // The same with the engine's deny cache: denials answered without Redis.
    p.push_str(
        "  fw_deny_cached:\n    rate_limit: { algorithm: fixed_window, limit: 1, window: 1h, deny_cache: true }\n",
    );
    p
}

/// One line of `INFO commandstats`: a command, its calls and its µs in Redis.
#[derive(Debug, Clone)]
pub struct CmdStat {
    pub command: String,
    pub calls: u64,
    pub usec: u64,
}

/// Resets Redis' command statistics (`CONFIG RESETSTAT`), so the next read covers one phase.
async fn reset_stats(con: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<()> {
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(con)
        .await
        .context("CONFIG RESETSTAT")
}

/// `INFO commandstats`, busiest command first. The commands a script calls are counted too
/// (with their own µs, which are part of the script's).
async fn read_stats(con: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<Vec<CmdStat>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .context("INFO commandstats")?;
    let mut out: Vec<CmdStat> = info
        .lines()
        .filter_map(|l| {
            let (name, fields) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |f: &str| {
                fields
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            Some(CmdStat {
                command: name.to_string(),
                calls: field("calls")?,
                usec: field("usec")?,
            })
        })
        .filter(|c| !matches!(c.command.as_str(), "info" | "config|resetstat" | "ping"))
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.usec));
    Ok(out)
}

/// Per request of a phase: each command's calls and Redis µs, e.g. `evalsha 1.00×4.1 get 1.00×0.3`.
fn per_request(stats: &[CmdStat], requests: u64) -> String {
    let n = requests.max(1) as f64;
    stats
        .iter()
        .filter(|c| c.calls as f64 / n >= 0.01)
        .map(|c| {
            format!(
                "{} {:.2}×{:.2}µs",
                c.command,
                c.calls as f64 / n,
                c.usec as f64 / c.calls.max(1) as f64
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One patternd run of the scenario and the floors it is compared with.
pub struct Run {
    pub name: &'static str,
    pub m: Measured,
    /// Redis commands per request during the run (`INFO commandstats`).
    pub commands: Vec<CmdStat>,
    /// Redis CPU per request of the naive equivalent (µs).
    pub redis_floor_us: f64,
}

pub struct FloorsResults {
    pub healthz: Measured,
    pub naive: Baseline,
    pub naive_commands: Vec<CmdStat>,
    pub get: Baseline,
    pub runs: Vec<Run>,
}

impl FloorsResults {
    fn http_floor_us(&self) -> f64 {
        self.healthz.per_decision_us(self.healthz.cpu.patternd)
    }
}

pub async fn run(
    args: &Args,
    pids: &measure::Pids,
    redis_port: u16,
    addr: SocketAddr,
    con: &mut redis::aio::MultiplexedConnection,
    key_template: &str,
) -> anyhow::Result<FloorsResults> {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(NAIVE_SCRIPT)
        .query_async(con)
        .await
        .context("SCRIPT LOAD of the naive fixed window")?;
    // The same key shape as patternd's fixed window, prefixed so the two never share counters.
    let key = format!("naive:{}", key_template.replace("<id>", "__rand_int__"));
    eprintln!("[floors] Redis floor: redis-benchmark EVALSHA of INCR+PEXPIRE …");
    reset_stats(con).await?;
    let naive = baseline::run(&baseline::Run {
        port: redis_port,
        redis_pid: &pids.redis,
        ticks: pids.ticks,
        command: ["EVALSHA", sha.as_str(), "1", &key, "60000"]
            .map(String::from)
            .to_vec(),
        clients: args.baseline_clients,
        requests: args.baseline_requests,
        keyspace: args.keyspace,
    })
    .await?;
    let naive_commands = read_stats(con).await?;

    eprintln!(
        "[floors] filling {} cache ids through patternd …",
        patterns::CACHE_IDS
    );
    tokio::time::timeout(patterns::SETUP_TIMEOUT, patterns::fill_cache(addr, "item"))
        .await
        .context("filling the cache took too long")??;
    let size = patterns::item_body().len().to_string();
    let get_run = |test: &str, requests: u64| baseline::Run {
        port: redis_port,
        redis_pid: &pids.redis,
        ticks: pids.ticks,
        command: vec!["-t".into(), test.into(), "-d".into(), size.clone()],
        clients: args.baseline_clients,
        requests,
        keyspace: patterns::CACHE_IDS,
    };
    eprintln!("[floors] Redis floor: redis-benchmark SET (fill), then GET …");
    baseline::run(&get_run("set", patterns::CACHE_IDS * 20)).await?;
    let get = baseline::run(&get_run("get", args.baseline_requests)).await?;

    let measure = |name: &'static str, target: load::Target, keyspace: u64| {
        let a = Args {
            keyspace,
            ..args.clone()
        };
        async move {
            eprintln!(
                "[floors] {name}: {} connections, {:?} warm-up + {:?} measured …",
                a.connections, a.warmup, a.duration
            );
            measure::http(Arc::new(target), &a, a.duration, pids).await
        }
    };
    let healthz = measure(
        "GET /healthz",
        load::Target::new(addr, "/")?
            .with_shape(load::Shape::GetOneOf(Arc::new(vec!["/healthz".parse()?]))),
        args.keyspace,
    )
    .await?;
    let mut runs = Vec::new();
    for (name, rule, keyspace) in [
        ("fixed_window", "fw", args.keyspace),
        ("sliding_window", "sw", args.keyspace),
        ("fixed_window denied", "fw_deny", DENY_IDS),
        ("denied, deny_cache", "fw_deny_cached", DENY_IDS),
    ] {
        let target = load::Target::new(addr, &format!("/v1/ratelimit/{}/{rule}", patterns::APP))?;
        // The statistics cover the warm-up too: per request, they are the same.
        reset_stats(con).await?;
        let m = measure(name, target, keyspace).await?;
        let commands = read_stats(con).await?;
        runs.push(Run {
            name,
            m,
            commands,
            redis_floor_us: naive.redis_cpu_us,
        });
    }
    let target = load::Target::new(addr, &format!("/v1/cache/{}/item/", patterns::APP))?
        .with_shape(load::Shape::GetId);
    reset_stats(con).await?;
    let m = measure("cache hit", target, patterns::CACHE_IDS).await?;
    let commands = read_stats(con).await?;
    runs.push(Run {
        name: "cache hit",
        m,
        commands,
        redis_floor_us: get.redis_cpu_us,
    });
    Ok(FloorsResults {
        healthz,
        naive,
        naive_commands,
        get,
        runs,
    })
}

pub fn print(f: &FloorsResults) {
    println!("floors (issue 16): patternd against the floors of its own stack, in this run");
    println!(
        "  HTTP floor: GET /healthz under the same load: {:.1} µs patternd CPU per request, p99 {:.3} ms, {:.0} req/s",
        f.http_floor_us(),
        f.healthz.p_ms(0.99),
        f.healthz.rps()
    );
    println!(
        "  Redis floors: naive INCR+PEXPIRE EVALSHA {:.1} µs Redis CPU per call ({:.0} req/s); GET {:.1} µs ({:.0} req/s)",
        f.naive.redis_cpu_us, f.naive.rps, f.get.redis_cpu_us, f.get.rps
    );
    println!("  ({})", f.naive.command);
    println!();
    let each = |c: &dyn Fn(&Run) -> String| f.runs.iter().map(c).collect::<Vec<_>>();
    let floor = f.http_floor_us();
    row("", each(&|r| r.name.to_string()));
    row("requests/s", each(&|r| format!("{:.0}", r.m.rps())));
    row(
        "p50 / p99 (ms)",
        each(&|r| format!("{:.3} / {:.3}", r.m.p_ms(0.50), r.m.p_ms(0.99))),
    );
    row(
        "engine CPU per request (µs)",
        each(&|r| format!("{:.1}", r.m.per_decision_us(r.m.cpu.patternd))),
    );
    row(
        "  ... / HTTP floor",
        each(&|r| format!("{:.2}", r.m.per_decision_us(r.m.cpu.patternd) / floor)),
    );
    row(
        "Redis CPU per request (µs)",
        each(&|r| format!("{:.1}", r.m.per_decision_us(r.m.cpu.redis))),
    );
    row(
        "  ... / Redis floor",
        each(&|r| {
            format!(
                "{:.2}",
                r.m.per_decision_us(r.m.cpu.redis) / r.redis_floor_us
            )
        }),
    );
    row(
        "other processes' CPU (%core)",
        each(&|r| format!("{:.0}", r.m.util(r.m.cpu.other))),
    );
    row(
        "answers (ok / denied)",
        each(&|r| format!("{} / {}", r.m.stats.allowed, r.m.stats.denied)),
    );
    row(
        "errors (other status / no answer)",
        each(&|r| format!("{} / {}", r.m.stats.bad_status, r.m.stats.transport_errors)),
    );
    println!();
    // The load generator does not count its warm-up, the statistics do: figures are per call
    // of the busiest command (EVALSHA), calls × µs in Redis per call.
    println!("  Redis commands per script call (INFO commandstats): calls × µs per call");
    let per_call = |c: &[CmdStat]| per_request(c, c.first().map_or(1, |c| c.calls));
    println!("    naive INCR+PEXPIRE: {}", per_call(&f.naive_commands));
    for r in &f.runs {
        println!("    {}: {}", r.name, per_call(&r.commands));
    }
    println!();
    row("goals", Vec::new());
    row(
        &format!("  engine CPU <= {GOAL_ENGINE_RATIO}x HTTP floor"),
        each(&|r| {
            let x = r.m.per_decision_us(r.m.cpu.patternd) / floor;
            format!("{} {x:.2}", crate::mark(x <= GOAL_ENGINE_RATIO))
        }),
    );
    row(
        &format!("  Redis CPU <= {GOAL_REDIS_RATIO}x Redis floor"),
        each(&|r| {
            let x = r.m.per_decision_us(r.m.cpu.redis) / r.redis_floor_us;
            format!("{} {x:.2}", crate::mark(x <= GOAL_REDIS_RATIO))
        }),
    );
    row(
        &format!("  p99 <= {GOAL_P99_MS} ms"),
        each(&|r| {
            let p99 = r.m.p_ms(0.99);
            format!("{} {p99:.3}", crate::mark(p99 <= GOAL_P99_MS))
        }),
    );
}

/// Whether a run failed too often to mean anything.
pub fn failed(f: &FloorsResults, max_share: f64) -> bool {
    std::iter::once(&f.healthz)
        .chain(f.runs.iter().map(|r| &r.m))
        .any(|m| m.error_share() > max_share)
}
