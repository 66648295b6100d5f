//! The floors scenario (issue 16): what patternd costs per rate-limit decision and per cache hit,
//! as ratios to the floors of its own stack measured in the same run on the same machine.
//!
//! - HTTP floor: the engine's own `GET /healthz` under the same load (same connections, same
//!   load generator): patternd CPU per request with no pattern work and no Redis call.
//! - Redis floor of a decision: redis-benchmark EVALSHA of the naive fixed window users write by
//!   hand (`INCR`, and `PEXPIRE` when the counter is new), keys and ids like patternd's.
//! - Redis floor of a cache hit: redis-benchmark `GET` of values of the same size.
//!
//! Then patternd under the same load, closed loop: fixed_window and sliding_window decisions
//! (nearly all allowed), the fixed window's denial path (a small keyspace whose ids are all over
//! the limit) without and with the rule's `deny_cache`, and cache hits; each as engine CPU and
//! Redis CPU per request, ratios to the floors, p50/p99 and Redis commands per request. Then
//! fixed_window and cache hits again open loop at 70% of the closed-loop throughput just
//! measured, for the issue's open-loop p99 goal.
//!
//! With a before engine (`--before`, `--before-args`), both engines run every phase on the same
//! Redis against the same floors, in rounds of alternating order (before, after, after, before),
//! each with its own app so neither reads the other's keys (a changed cache entry or counter
//! layout must not leak between them); each side's HTTP floor is its own `/healthz`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::args::Args;
use crate::baseline::{self, Baseline};
use crate::load;
use crate::measure::{self, Measured, Pids};
use crate::patterns;
use crate::procs;
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
const GOAL_OPEN_P99_MS: f64 = 2.0;
/// The open-loop phases run at this share of the closed-loop maximum (the issue's 70%).
const OPEN_SHARE: f64 = 0.7;
/// Rounds of a before/after comparison. Two, in alternating order, so a drift of the shared
/// machine over a phase weighs on both engines alike; each round measures half of --duration.
pub const ROUNDS: u32 = 2;

/// The apps of the two engines of a comparison: names of one length, so keys are too.
const APP_BEFORE: &str = "bench-b";
const APP_AFTER: &str = "bench-a";

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

/// The whole policy of one engine of a comparison: the benchmark policy's rules (the sliding
/// window), the cache rule and this scenario's rules, under `app`. Only these, so an older
/// binary that lacks a later pattern (leaderboards, counters) still starts.
pub fn engine_policy(app: &str, origin: SocketAddr) -> String {
    format!(
        "{}{}{}",
        procs::POLICY.replacen("app: bench\n", &format!("app: {app}\n"), 1),
        patterns::cache_rule(origin),
        policy()
    )
}

/// Which floor a phase is compared with, besides its engine's HTTP floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Floor {
    /// The phase is the HTTP floor.
    Http,
    /// The naive INCR+PEXPIRE script.
    Naive,
    /// A plain GET.
    Get,
}

#[derive(Debug, Clone, Copy)]
enum What {
    Healthz,
    /// POST /v1/ratelimit/{app}/{rule} over ids below the keyspace (`None`: --keyspace).
    RateLimit(&'static str, Option<u64>),
    CacheHit,
}

/// One measured phase of every engine.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub name: &'static str,
    what: What,
    floor: Floor,
    /// Run again open loop at `OPEN_SHARE` of its closed-loop throughput.
    open_loop: bool,
    /// The issue's goals are about it (a decision, a cache hit; not the denial paths).
    goals: bool,
}

pub const PHASES: [Phase; 6] = [
    Phase {
        name: "GET /healthz (HTTP floor)",
        what: What::Healthz,
        floor: Floor::Http,
        open_loop: false,
        goals: false,
    },
    Phase {
        name: "fixed_window",
        what: What::RateLimit("fw", None),
        floor: Floor::Naive,
        open_loop: true,
        goals: true,
    },
    Phase {
        name: "sliding_window",
        what: What::RateLimit("sw", None),
        floor: Floor::Naive,
        open_loop: false,
        goals: true,
    },
    Phase {
        name: "fixed_window denied",
        what: What::RateLimit("fw_deny", Some(DENY_IDS)),
        floor: Floor::Naive,
        open_loop: false,
        goals: false,
    },
    Phase {
        name: "denied, deny_cache",
        what: What::RateLimit("fw_deny_cached", Some(DENY_IDS)),
        floor: Floor::Naive,
        open_loop: false,
        goals: false,
    },
    Phase {
        name: "cache hit",
        what: What::CacheHit,
        floor: Floor::Get,
        open_loop: true,
        goals: true,
    },
];

impl Phase {
    fn keyspace(&self, args: &Args) -> u64 {
        match self.what {
            What::Healthz => args.keyspace,
            What::RateLimit(_, ids) => ids.unwrap_or(args.keyspace),
            What::CacheHit => patterns::CACHE_IDS,
        }
    }

    fn target(&self, e: &Engine) -> anyhow::Result<load::Target> {
        Ok(match self.what {
            What::Healthz => load::Target::new(e.addr, "/")?
                .with_shape(load::Shape::GetOneOf(Arc::new(vec!["/healthz".parse()?]))),
            What::RateLimit(rule, _) => {
                load::Target::new(e.addr, &format!("/v1/ratelimit/{}/{rule}", e.app))?
            }
            What::CacheHit => load::Target::new(e.addr, &format!("/v1/cache/{}/item/", e.app))?
                .with_shape(load::Shape::GetId),
        })
    }
}

/// The order of the measured parts of one phase: `(round, engine index)`. One engine: one
/// round. Two: before, after, then after, before.
pub fn schedule(engines: usize) -> Vec<(u32, usize)> {
    let rounds = if engines > 1 { ROUNDS } else { 1 };
    (0..rounds)
        .flat_map(|round| {
            let order: Vec<usize> = if round % 2 == 0 {
                (0..engines).collect()
            } else {
                (0..engines).rev().collect()
            };
            order.into_iter().map(move |i| (round, i))
        })
        .collect()
}

/// One line of `INFO commandstats`: a command, its calls and its µs in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// `INFO commandstats`, busiest command first.
async fn read_stats(con: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<Vec<CmdStat>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .context("INFO commandstats")?;
    Ok(parse_stats(&info))
}

/// The same on a blocking connection: read at the edges of a measured phase, inside the load
/// generator's probe (a loopback round trip, like the /proc reads there).
fn read_stats_sync(con: &RefCell<redis::Connection>) -> anyhow::Result<Vec<CmdStat>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut *con.borrow_mut())
        .context("INFO commandstats")?;
    Ok(parse_stats(&info))
}

/// The lines of `INFO commandstats`, busiest command first. The commands a script calls are
/// counted too (with their own µs, which are part of the script's). Our own reads are left out.
fn parse_stats(info: &str) -> Vec<CmdStat> {
    let mut out: Vec<CmdStat> = info
        .lines()
        .filter_map(|l| {
            let (name, fields) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
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
    out
}

/// What ran between two readings of the statistics, busiest first.
fn stats_delta(before: &[CmdStat], after: &[CmdStat]) -> Vec<CmdStat> {
    let mut out: Vec<CmdStat> = after
        .iter()
        .map(|c| {
            let old = before.iter().find(|o| o.command == c.command);
            CmdStat {
                command: c.command.clone(),
                calls: c.calls.saturating_sub(old.map_or(0, |o| o.calls)),
                usec: c.usec.saturating_sub(old.map_or(0, |o| o.usec)),
            }
        })
        .filter(|c| c.calls > 0)
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.usec));
    out
}

/// Adds `more` into `acc`, command by command.
fn stats_add(acc: &mut Vec<CmdStat>, more: Vec<CmdStat>) {
    for c in more {
        match acc.iter_mut().find(|a| a.command == c.command) {
            Some(a) => {
                a.calls += c.calls;
                a.usec += c.usec;
            }
            None => acc.push(c),
        }
    }
    acc.sort_by_key(|c| std::cmp::Reverse(c.usec));
}

fn is_script(command: &str) -> bool {
    matches!(
        command,
        "evalsha" | "eval" | "evalsha_ro" | "eval_ro" | "fcall"
    )
}

/// Script calls and the commands run inside them (or alone), per request.
fn calls_per_request(stats: &[CmdStat], requests: u64) -> (f64, f64) {
    let n = requests.max(1) as f64;
    let (scripts, inner): (Vec<&CmdStat>, Vec<&CmdStat>) =
        stats.iter().partition(|c| is_script(&c.command));
    let sum = |v: Vec<&CmdStat>| v.iter().map(|c| c.calls).sum::<u64>() as f64 / n;
    (sum(scripts), sum(inner))
}

/// Per request (or call): each command's calls and Redis µs per call, e.g.
/// `evalsha 1.00×4.1µs, get 1.00×0.3µs`.
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

/// An engine the phases run against.
struct Engine {
    label: &'static str,
    /// The app of its policy (its keys and URLs).
    app: &'static str,
    addr: SocketAddr,
    pids: Pids,
    /// Binary and flags, for the report.
    describe: String,
    /// Set when this scenario started the engine: stopped when dropped.
    guard: Option<procs::Patternd>,
}

impl Engine {
    fn check_alive(&mut self) -> anyhow::Result<()> {
        match &mut self.guard {
            Some(p) => p
                .guard
                .check_alive()
                .with_context(|| format!("the {} engine", self.label)),
            None => Ok(()),
        }
    }
}

/// What the scenario needs from the run: the engine under test and its Redis.
pub struct Setup<'a> {
    /// The engine under test's binary (the after side of a comparison).
    pub bin: &'a Path,
    /// Scratch directory: each engine of a comparison gets a policy directory below it.
    pub dir: &'a Path,
    pub redis: &'a procs::Redis,
    /// The cache rule's origin.
    pub origin: SocketAddr,
    /// The engine the other scenarios use (app `bench`, started with --after-args): the one
    /// side without a comparison.
    pub main: SocketAddr,
    pub pids: &'a Pids,
    /// The fixed window's key template (`bench:…:{<id>}`), for the naive script's keys.
    pub key_template: &'a str,
}

fn copy_pids(p: &Pids, patternd: String) -> Pids {
    Pids {
        patternd,
        redis: p.redis.clone(),
        redis_more: p.redis_more.clone(),
        ticks: p.ticks,
    }
}

/// One phase of one engine, all its rounds.
pub struct PhaseResult {
    pub m: Measured,
    /// Redis commands during the measured part (`INFO commandstats` at its edges).
    pub commands: Vec<CmdStat>,
}

/// One open-loop phase of one engine.
pub struct OpenResult {
    /// The rate asked for (requests/s).
    pub rate: f64,
    pub m: Measured,
}

pub struct SideResult {
    pub label: &'static str,
    pub describe: String,
    /// Indexed like `PHASES`.
    pub closed: Vec<PhaseResult>,
    /// Indexed like `PHASES`; `Some` for the phases with an open-loop run.
    pub open: Vec<Option<OpenResult>>,
}

impl SideResult {
    fn http_floor_us(&self) -> f64 {
        self.closed
            .iter()
            .zip(PHASES)
            .find(|(_, p)| p.floor == Floor::Http)
            .map_or(f64::NAN, |(r, _)| r.m.per_decision_us(r.m.cpu.patternd))
    }
}

pub struct FloorsResults {
    pub naive: Baseline,
    pub naive_commands: Vec<CmdStat>,
    pub get: Baseline,
    pub sides: Vec<SideResult>,
    pub rounds: u32,
    pub connections: usize,
    /// Measured time of each phase per engine (all rounds).
    pub duration: Duration,
    /// `--rate`, which replaces the 70% of the open-loop phases.
    pub fixed_rate: Option<f64>,
}

impl FloorsResults {
    fn floor_us(&self, side: &SideResult, floor: Floor) -> f64 {
        match floor {
            Floor::Http => side.http_floor_us(),
            Floor::Naive => self.naive.redis_cpu_us,
            Floor::Get => self.get.redis_cpu_us,
        }
    }
}

/// Starts one engine of a comparison on the shared Redis, with its own app and policy directory.
async fn start_engine(
    s: &Setup<'_>,
    label: &'static str,
    app: &'static str,
    bin: &Path,
    flags: &[String],
) -> anyhow::Result<Engine> {
    if !bin.is_file() {
        bail!("the {label} binary {} does not exist", bin.display());
    }
    let dir = s.dir.join(format!("floors-{label}"));
    std::fs::create_dir_all(&dir)?;
    let p = procs::start_patternd_with(
        bin,
        &dir,
        &s.redis.url(),
        None,
        &engine_policy(app, s.origin),
        flags,
    )
    .await
    .with_context(|| format!("starting the {label} engine ({})", bin.display()))?;
    let describe = format!("{} serve {}", bin.display(), flags.join(" "))
        .trim_end()
        .to_string();
    eprintln!(
        "[floors] {label}: {describe} (http://{}, app {app})",
        p.addr
    );
    Ok(Engine {
        label,
        app,
        addr: p.addr,
        pids: copy_pids(s.pids, p.guard.pid().to_string()),
        describe,
        guard: Some(p),
    })
}

pub async fn run(
    args: &Args,
    s: &Setup<'_>,
    con: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<FloorsResults> {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(NAIVE_SCRIPT)
        .query_async(con)
        .await
        .context("SCRIPT LOAD of the naive fixed window")?;
    // The same key shape as patternd's fixed window, prefixed so the two never share counters.
    let key = format!("naive:{}", s.key_template.replace("<id>", "__rand_int__"));
    let naive_run = baseline::Run {
        port: s.redis.port,
        redis_pid: &s.pids.redis,
        ticks: s.pids.ticks,
        command: ["EVALSHA", sha.as_str(), "1", &key, "60000"]
            .map(String::from)
            .to_vec(),
        clients: args.baseline_clients,
        requests: args.baseline_requests,
        keyspace: args.keyspace,
    };
    // A first run creates most keys, so the measured one finds them as patternd's phases do
    // theirs (each is filled first, see `patterns::fill_ratelimit_of`).
    eprintln!(
        "[floors] Redis floor: redis-benchmark EVALSHA of INCR+PEXPIRE (fill, then measured) …"
    );
    baseline::run(&naive_run).await?;
    reset_stats(con).await?;
    let naive = baseline::run(&naive_run).await?;
    let naive_commands = read_stats(con).await?;

    let mut engines = if args.compare() {
        let before = args.before.as_deref().unwrap_or(s.bin);
        let before_flags = args.before_args.clone().unwrap_or_default();
        vec![
            start_engine(s, "before", APP_BEFORE, before, &before_flags).await?,
            start_engine(s, "after", APP_AFTER, s.bin, &args.after_args).await?,
        ]
    } else {
        vec![Engine {
            label: "patternd",
            app: patterns::APP,
            addr: s.main,
            pids: copy_pids(s.pids, s.pids.patternd.clone()),
            describe: format!("{} serve {}", s.bin.display(), args.after_args.join(" "))
                .trim_end()
                .to_string(),
            guard: None,
        }]
    };

    for e in &engines {
        eprintln!(
            "[floors] {}: filling {} cache ids through patternd …",
            e.label,
            patterns::CACHE_IDS
        );
        tokio::time::timeout(
            patterns::SETUP_TIMEOUT,
            patterns::fill_cache_of(e.addr, e.app, "item"),
        )
        .await
        .context("filling the cache took too long")??;
    }
    let size = patterns::item_body().len().to_string();
    let get_run = |test: &str, requests: u64| baseline::Run {
        port: s.redis.port,
        redis_pid: &s.pids.redis,
        ticks: s.pids.ticks,
        command: vec!["-t".into(), test.into(), "-d".into(), size.clone()],
        clients: args.baseline_clients,
        requests,
        keyspace: patterns::CACHE_IDS,
    };
    eprintln!("[floors] Redis floor: redis-benchmark SET (fill), then GET …");
    baseline::run(&get_run("set", patterns::CACHE_IDS * 20)).await?;
    let get = baseline::run(&get_run("get", args.baseline_requests)).await?;

    // A blocking connection for the statistics read inside the load generator's probe, which
    // cannot await. Bounded, so a stuck Redis fails the run instead of hanging it.
    let sync = redis::Client::open(s.redis.url())?
        .get_connection_with_timeout(Duration::from_secs(5))
        .context("a blocking connection to the benchmark's redis-server")?;
    sync.set_read_timeout(Some(Duration::from_secs(5)))?;
    let sync = RefCell::new(sync);

    let order = schedule(engines.len());
    let rounds = order.iter().map(|(r, _)| r + 1).max().unwrap_or(1);
    let slice = args.duration / rounds;
    // The closed-loop phases are closed whatever --rate says: their throughput is the maximum
    // the open-loop phases take their rate from.
    let closed_args = Args {
        rate: None,
        ..args.clone()
    };
    let mut closed: Vec<Vec<Option<PhaseResult>>> = engines
        .iter()
        .map(|_| PHASES.iter().map(|_| None).collect())
        .collect();
    for (p, phase) in PHASES.iter().enumerate() {
        if let What::RateLimit(rule, _) = phase.what {
            let ids = phase.keyspace(args);
            for e in &engines {
                eprintln!(
                    "[floors] {}: one {rule} decision for each of {ids} ids …",
                    e.label
                );
                tokio::time::timeout(
                    patterns::SETUP_TIMEOUT,
                    patterns::fill_ratelimit_of(e.addr, e.app, rule, ids),
                )
                .await
                .context("filling the rate-limit keys took too long")??;
            }
        }
        for &(round, i) in &order {
            let e = &mut engines[i];
            let a = Args {
                keyspace: phase.keyspace(args),
                ..closed_args.clone()
            };
            eprintln!(
                "[floors] {} {} (round {}/{rounds}): {} connections, {:?} warm-up + {:?} measured …",
                e.label,
                phase.name,
                round + 1,
                a.connections,
                a.warmup,
                slice
            );
            let target = Arc::new(phase.target(e)?);
            let (m, (c0, c1)) =
                measure::http_probed(target, &a, slice, &e.pids, || read_stats_sync(&sync)).await?;
            e.check_alive()?;
            let commands = stats_delta(&c0, &c1);
            match &mut closed[i][p] {
                Some(acc) => {
                    acc.m.absorb(m);
                    stats_add(&mut acc.commands, commands);
                }
                slot => *slot = Some(PhaseResult { m, commands }),
            }
        }
    }
    let closed: Vec<Vec<PhaseResult>> = closed
        .into_iter()
        .map(|side| side.into_iter().collect::<Option<Vec<_>>>())
        .collect::<Option<_>>()
        .context("a floors phase was never measured")?;

    let mut open: Vec<Vec<Option<OpenResult>>> = engines
        .iter()
        .map(|_| PHASES.iter().map(|_| None).collect())
        .collect();
    for (p, phase) in PHASES.iter().enumerate().filter(|(_, p)| p.open_loop) {
        for &(round, i) in &order {
            let e = &mut engines[i];
            let max = closed[i][p].m.rps();
            let rate = args.rate.unwrap_or(OPEN_SHARE * max);
            if rate < 1.0 {
                bail!(
                    "{} {}: the closed loop measured {max:.0} req/s, no rate to run open loop at",
                    e.label,
                    phase.name
                );
            }
            let a = Args {
                keyspace: phase.keyspace(args),
                rate: Some(rate),
                ..args.clone()
            };
            eprintln!(
                "[floors] {} {} open loop at {rate:.0} req/s (round {}/{rounds}): {:?} warm-up + {:?} measured …",
                e.label,
                phase.name,
                round + 1,
                a.warmup,
                slice
            );
            let m = measure::http(Arc::new(phase.target(e)?), &a, slice, &e.pids).await?;
            e.check_alive()?;
            match &mut open[i][p] {
                Some(acc) => acc.m.absorb(m),
                slot => *slot = Some(OpenResult { rate, m }),
            }
        }
    }

    let sides = engines
        .iter()
        .zip(closed)
        .zip(open)
        .map(|((e, closed), open)| SideResult {
            label: e.label,
            describe: e.describe.clone(),
            closed,
            open,
        })
        .collect();
    Ok(FloorsResults {
        naive,
        naive_commands,
        get,
        sides,
        rounds,
        connections: args.connections,
        duration: slice * rounds,
        fixed_rate: args.rate,
    })
}

/// "met" or "not met": the goals are reported, never enforced (a shared machine's noise must
/// not fail a run).
fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

pub fn print(f: &FloorsResults) {
    let compare = f.sides.len() > 1;
    println!("floors (issue 16): patternd against the floors of its own stack, in this run");
    for side in &f.sides {
        println!("  {:<8} {}", format!("{}:", side.label), side.describe);
    }
    if compare {
        println!(
            "  both engines on the same Redis, each with its own app (keys); every phase in {} rounds of alternating order \
             (before, after, after, before), {:?} measured per engine in total",
            f.rounds, f.duration
        );
    }
    println!(
        "  Redis floors{}: naive INCR+PEXPIRE EVALSHA {:.1} µs Redis CPU per call ({:.0} req/s); GET {:.1} µs ({:.0} req/s)",
        if compare { " (shared)" } else { "" },
        f.naive.redis_cpu_us,
        f.naive.rps,
        f.get.redis_cpu_us,
        f.get.rps
    );
    println!("  ({})", f.naive.command);
    let open_rate = match f.fixed_rate {
        Some(r) => format!("{r:.0} req/s (--rate)"),
        None => format!("{:.0}% of the closed-loop throughput", OPEN_SHARE * 100.0),
    };
    println!(
        "  {} connections closed loop; then fixed_window and cache hit open loop at {open_rate}",
        f.connections
    );
    println!(
        "  (open loop \"behind\": under 95% of the rate asked was sent, so its latencies understate the wait)"
    );
    println!();

    let line = |label: &str, cell: &dyn Fn(&SideResult) -> String, goal: &str| {
        let mut cells: Vec<String> = f.sides.iter().map(cell).collect();
        cells.push(goal.to_string());
        row(label, cells);
    };
    line("figure", &|s| s.label.to_string(), "goal");
    for (p, phase) in PHASES.iter().enumerate() {
        // Functions, not closures: a closure's returned borrow cannot name its argument's.
        fn closed(s: &SideResult, p: usize) -> &Measured {
            &s.closed[p].m
        }
        let goal = |g: String| if phase.goals { g } else { String::new() };
        line(phase.name, &|_| String::new(), "");
        line(
            "  requests/s",
            &|s| format!("{:.0}", closed(s, p).rps()),
            "",
        );
        line(
            "  p50 / p99 (ms)",
            &|s| {
                format!(
                    "{:.3} / {:.3}",
                    closed(s, p).p_ms(0.50),
                    closed(s, p).p_ms(0.99)
                )
            },
            &goal(format!("p99 <= {GOAL_P99_MS:.0} ms")),
        );
        line(
            "  engine CPU per request (µs)",
            &|s| {
                format!(
                    "{:.1}",
                    closed(s, p).per_decision_us(closed(s, p).cpu.patternd)
                )
            },
            "",
        );
        if phase.floor != Floor::Http {
            line(
                "    / HTTP floor",
                &|s| {
                    let x =
                        closed(s, p).per_decision_us(closed(s, p).cpu.patternd) / s.http_floor_us();
                    format!("{x:.2}×")
                },
                &goal(format!("<= {GOAL_ENGINE_RATIO}×")),
            );
            line(
                "  Redis CPU per request (µs)",
                &|s| {
                    format!(
                        "{:.1}",
                        closed(s, p).per_decision_us(closed(s, p).cpu.redis)
                    )
                },
                "",
            );
            let label = match phase.floor {
                Floor::Get => "    / GET floor",
                _ => "    / naive floor",
            };
            line(
                label,
                &|s| {
                    let x = closed(s, p).per_decision_us(closed(s, p).cpu.redis)
                        / f.floor_us(s, phase.floor);
                    format!("{x:.2}×")
                },
                &goal(format!("<= {GOAL_REDIS_RATIO:.1}×")),
            );
            line(
                "  Redis script calls / commands per request",
                &|s| {
                    let r = &s.closed[p];
                    let (scripts, inner) = calls_per_request(&r.commands, r.m.stats.decisions());
                    format!("{scripts:.2} / {inner:.2}")
                },
                "",
            );
            line(
                "  answers (ok / denied)",
                &|s| {
                    format!(
                        "{} / {}",
                        closed(s, p).stats.allowed,
                        closed(s, p).stats.denied
                    )
                },
                "",
            );
        }
        line(
            "  errors (other status / no answer)",
            &|s| {
                format!(
                    "{} / {}",
                    closed(s, p).stats.bad_status,
                    closed(s, p).stats.transport_errors
                )
            },
            "",
        );
        line(
            "  other processes' CPU (%core)",
            &|s| format!("{:.0}", closed(s, p).util(closed(s, p).cpu.other)),
            "",
        );
        if phase.open_loop {
            fn open(s: &SideResult, p: usize) -> Option<&OpenResult> {
                s.open[p].as_ref()
            }
            line(
                "  open loop: asked / achieved req/s",
                &|s| {
                    open(s, p).map_or("-".into(), |o| {
                        format!(
                            "{:.0} / {:.0}{}",
                            o.rate,
                            o.m.rps(),
                            if o.m.rps() < o.rate * 0.95 {
                                " (behind)"
                            } else {
                                ""
                            }
                        )
                    })
                },
                "",
            );
            line(
                "  open loop: p50 / p99 (ms)",
                &|s| {
                    open(s, p).map_or("-".into(), |o| {
                        format!("{:.3} / {:.3}", o.m.p_ms(0.50), o.m.p_ms(0.99))
                    })
                },
                &format!("p99 <= {GOAL_OPEN_P99_MS:.0} ms"),
            );
        }
    }
    println!();
    println!(
        "  Redis commands per request over the measured phases (INFO commandstats): calls × µs per call"
    );
    println!(
        "    naive INCR+PEXPIRE, per call: {}",
        per_request(
            &f.naive_commands,
            f.naive_commands.first().map_or(1, |c| c.calls)
        )
    );
    for (p, phase) in PHASES.iter().enumerate() {
        if phase.floor == Floor::Http {
            continue;
        }
        for s in &f.sides {
            let r = &s.closed[p];
            let per = per_request(&r.commands, r.m.stats.decisions());
            let per = if per.is_empty() {
                "no Redis command (below 0.01 per request)".to_string()
            } else {
                per
            };
            println!("    {} ({}): {per}", phase.name, s.label);
        }
    }
    for s in &f.sides {
        for (p, phase) in PHASES.iter().enumerate() {
            let first = s.closed[p].m.stats.first_error.as_ref().or_else(|| {
                s.open[p]
                    .as_ref()
                    .and_then(|o| o.m.stats.first_error.as_ref())
            });
            if let Some(e) = first {
                println!("    first error, {} ({}): {e}", phase.name, s.label);
            }
        }
    }

    println!();
    println!("goals of issue 16 (measured, met or not; reported, never enforced)");
    line("goal", &|s| s.label.to_string(), "goal");
    let goal_phases = || PHASES.iter().enumerate().filter(|(_, p)| p.goals);
    for (p, phase) in goal_phases() {
        line(
            &format!("  engine CPU / HTTP floor, {}", phase.name),
            &|s| {
                let m = &s.closed[p].m;
                let x = m.per_decision_us(m.cpu.patternd) / s.http_floor_us();
                format!("{x:.2}× {}", met(x <= GOAL_ENGINE_RATIO))
            },
            &format!("<= {GOAL_ENGINE_RATIO}×"),
        );
    }
    for (p, phase) in goal_phases() {
        let floor = if phase.floor == Floor::Get {
            "GET"
        } else {
            "naive"
        };
        line(
            &format!("  Redis CPU / {floor} floor, {}", phase.name),
            &|s| {
                let m = &s.closed[p].m;
                let x = m.per_decision_us(m.cpu.redis) / f.floor_us(s, phase.floor);
                format!("{x:.2}× {}", met(x <= GOAL_REDIS_RATIO))
            },
            &format!("<= {GOAL_REDIS_RATIO:.1}×"),
        );
    }
    for (p, phase) in goal_phases() {
        line(
            &format!("  p99, {} conns closed loop, {}", f.connections, phase.name),
            &|s| {
                let x = s.closed[p].m.p_ms(0.99);
                format!("{x:.3} ms {}", met(x <= GOAL_P99_MS))
            },
            &format!("<= {GOAL_P99_MS:.0} ms"),
        );
    }
    let at = match f.fixed_rate {
        Some(_) => "--rate".to_string(),
        None => format!("{:.0}% of max", OPEN_SHARE * 100.0),
    };
    for (p, phase) in goal_phases().filter(|(_, p)| p.open_loop) {
        line(
            &format!("  p99, open loop at {at}, {}", phase.name),
            &|s| match &s.open[p] {
                Some(o) => {
                    let x = o.m.p_ms(0.99);
                    format!("{x:.3} ms {}", met(x <= GOAL_OPEN_P99_MS))
                }
                None => "-".into(),
            },
            &format!("<= {GOAL_OPEN_P99_MS:.0} ms"),
        );
    }
    line(
        "  session/lock/plugin/cache-write no worse",
        &|_| "not measured here".into(),
        "no worse",
    );
    if compare {
        println!(
            "  (a before == after run shows this machine's noise: differences of that size mean nothing)"
        );
    }
}

/// Whether a run failed too often to mean anything.
pub fn failed(f: &FloorsResults, max_share: f64) -> bool {
    f.sides.iter().any(|s| {
        s.closed
            .iter()
            .map(|r| &r.m)
            .chain(s.open.iter().flatten().map(|o| &o.m))
            .any(|m| m.error_share() > max_share)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_engine_runs_once_two_alternate() {
        assert_eq!(schedule(1), vec![(0, 0)]);
        assert_eq!(schedule(2), vec![(0, 0), (0, 1), (1, 1), (1, 0)]);
        let s = schedule(2);
        for i in 0..2 {
            assert_eq!(s.iter().filter(|(_, e)| *e == i).count(), ROUNDS as usize);
        }
    }

    #[test]
    fn engine_policy_has_its_own_app_and_every_rule_the_phases_use() -> anyhow::Result<()> {
        let p = engine_policy(APP_BEFORE, "127.0.0.1:9".parse()?);
        assert!(p.contains("app: bench-b\n"), "{p}");
        assert!(!p.contains("app: bench\n"), "{p}");
        assert_eq!(APP_BEFORE.len(), APP_AFTER.len());
        for phase in PHASES {
            let rule = match phase.what {
                What::Healthz => continue,
                What::RateLimit(rule, _) => rule,
                What::CacheHit => "item",
            };
            assert!(
                p.contains(&format!("\n  {rule}:\n")),
                "{rule} missing in\n{p}"
            );
        }
        Ok(())
    }

    #[test]
    fn the_open_loop_phases_are_the_issues() {
        let open: Vec<&str> = PHASES
            .iter()
            .filter(|p| p.open_loop)
            .map(|p| p.name)
            .collect();
        assert_eq!(open, ["fixed_window", "cache hit"]);
        assert_eq!(PHASES.iter().filter(|p| p.floor == Floor::Http).count(), 1);
    }

    #[test]
    fn command_statistics_per_phase() {
        let info = "# Commandstats\r\n\
            cmdstat_evalsha:calls=10,usec=90,usec_per_call=9.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_get:calls=10,usec=5,usec_per_call=0.50\r\n\
            cmdstat_info:calls=3,usec=30,usec_per_call=10.00\r\n";
        let a = parse_stats(info);
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].command.as_str(), a[0].calls, a[0].usec),
            ("evalsha", 10, 90)
        );
        let b = parse_stats(
            "cmdstat_evalsha:calls=30,usec=250\r\ncmdstat_get:calls=30,usec=15\r\ncmdstat_pttl:calls=20,usec=8\r\n",
        );
        let d = stats_delta(&a, &b);
        assert_eq!(
            d.iter()
                .map(|c| (c.command.as_str(), c.calls, c.usec))
                .collect::<Vec<_>>(),
            vec![("evalsha", 20, 160), ("get", 20, 10), ("pttl", 20, 8)]
        );
        assert_eq!(calls_per_request(&d, 20), (1.0, 2.0));
        let mut acc = d.clone();
        stats_add(&mut acc, d);
        assert_eq!(acc[0].calls, 40);
        assert_eq!(
            per_request(&acc, 40),
            "evalsha 1.00×8.00µs, get 1.00×0.50µs, pttl 1.00×0.40µs"
        );
    }
}
