//! One measured phase of HTTP load against patternd, with the CPU every party used during it
//! (read from /proc at both edges), so the scenarios report throughput, latency and CPU per
//! decision the same way.

use std::sync::Arc;
use std::time::Duration;

use crate::args::Args;
use crate::load::{self, Stats, Target};
use crate::procs;

/// The processes whose CPU is read.
pub struct Pids {
    pub patternd: String,
    pub redis: String,
    /// More Redis processes whose CPU counts as Redis' (a cluster's other primaries).
    pub redis_more: Vec<String>,
    /// Clock ticks per second of /proc's figures.
    pub ticks: u64,
}

/// CPU clock ticks read at one edge of the measured phase.
struct CpuSample {
    patternd: u64,
    redis: u64,
    loadgen: u64,
    /// Busy time of the whole machine.
    machine: u64,
}

/// CPU seconds used during the measured phase(s).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub patternd: f64,
    pub redis: f64,
    /// This program (the load generator).
    pub loadgen: f64,
    /// Every other process on the machine (compilers, other benchmarks): cores taken from us.
    pub other: f64,
}

/// What one or more measured phases against one target saw.
pub struct Measured {
    pub stats: Stats,
    /// Wall time of the measured phase(s), in seconds.
    pub secs: f64,
    pub cpu: CpuUse,
}

impl Measured {
    /// Decisions per second.
    pub fn rps(&self) -> f64 {
        self.stats.decisions() as f64 / self.secs
    }

    /// CPU µs per decision, of one party.
    pub fn per_decision_us(&self, cpu_secs: f64) -> f64 {
        cpu_secs * 1e6 / self.stats.decisions().max(1) as f64
    }

    /// CPU use in % of one core, of one party.
    pub fn util(&self, cpu_secs: f64) -> f64 {
        cpu_secs / self.secs * 100.0
    }

    /// Latency quantile in ms.
    pub fn p_ms(&self, q: f64) -> f64 {
        self.stats.latency.quantile_us(q) as f64 / 1000.0
    }

    pub fn error_share(&self) -> f64 {
        let all = self.stats.decisions() + self.stats.errors();
        if all == 0 {
            1.0
        } else {
            self.stats.errors() as f64 / all as f64
        }
    }

    /// Adds another phase against the same target (the plugin scenario splits each variant's
    /// time into rounds).
    pub fn absorb(&mut self, o: Measured) {
        self.stats.merge(o.stats);
        self.secs += o.secs;
        self.cpu.patternd += o.cpu.patternd;
        self.cpu.redis += o.cpu.redis;
        self.cpu.loadgen += o.cpu.loadgen;
        self.cpu.other += o.cpu.other;
    }
}

/// Drives `target` with the load generator (warm-up, then `duration` measured) and reads the
/// CPU of patternd, Redis, this program and the machine around the measured part.
pub async fn http(
    target: Arc<Target>,
    args: &Args,
    duration: Duration,
    pids: &Pids,
) -> anyhow::Result<Measured> {
    Ok(http_probed(target, args, duration, pids, || Ok(()))
        .await?
        .0)
}

/// [`http`] that also calls `extra` at both edges of the measured phase (right after the CPU
/// readings), for figures that must cover exactly the measured requests (Redis command counts).
pub async fn http_probed<E>(
    target: Arc<Target>,
    args: &Args,
    duration: Duration,
    pids: &Pids,
    extra: impl Fn() -> anyhow::Result<E>,
) -> anyhow::Result<(Measured, (E, E))> {
    let out = load::run(
        target,
        args.connections,
        args.keyspace,
        args.warmup,
        duration,
        args.rate,
        || {
            let cpu = CpuSample {
                patternd: procs::cpu_ticks(&pids.patternd)?,
                redis: pids
                    .redis_more
                    .iter()
                    .try_fold(procs::cpu_ticks(&pids.redis)?, |sum, pid| {
                        anyhow::Ok(sum + procs::cpu_ticks(pid)?)
                    })?,
                loadgen: procs::cpu_ticks("self")?,
                machine: procs::machine_busy_ticks()?,
            };
            Ok((cpu, extra()?))
        },
    )
    .await?;
    let ((a, extra_a), (b, extra_b)) = out.probes;
    let cpu_secs =
        |f: fn(&CpuSample) -> u64| f(&b).saturating_sub(f(&a)) as f64 / pids.ticks as f64;
    let patternd = cpu_secs(|c| c.patternd);
    let redis = cpu_secs(|c| c.redis);
    let loadgen = cpu_secs(|c| c.loadgen);
    let other = (cpu_secs(|c| c.machine) - patternd - redis - loadgen).max(0.0);
    let m = Measured {
        stats: out.stats,
        secs: out.elapsed.as_secs_f64(),
        cpu: CpuUse {
            patternd,
            redis,
            loadgen,
            other,
        },
    };
    Ok((m, (extra_a, extra_b)))
}
