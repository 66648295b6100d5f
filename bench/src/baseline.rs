//! The baseline: redis-benchmark sending EVALSHA of patternd's own script straight to the same
//! Redis, with keys built the way patternd builds them. This is the most a client can get
//! from this Redis for this script on this machine; patternd's HTTP throughput is judged
//! against it.

use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::procs;

#[derive(Debug, Clone, Default)]
pub struct Baseline {
    pub command: String,
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Redis CPU per EVALSHA while redis-benchmark ran.
    pub redis_cpu_us: f64,
    /// redis-benchmark's own CPU per request.
    pub client_cpu_us: f64,
    /// CPU used by everything else on the machine, in % of one core.
    pub other_util: f64,
}

impl Baseline {
    /// A baseline whose operations each did `n` cycles, per cycle: throughput times `n`, CPU
    /// divided by `n` (latency stays per operation).
    pub fn per_cycle(mut self, n: u64) -> Self {
        let n = n.max(1) as f64;
        self.rps *= n;
        self.redis_cpu_us /= n;
        self.client_cpu_us /= n;
        self
    }
}

pub struct Run<'a> {
    pub port: u16,
    pub redis_pid: &'a str,
    pub ticks: u64,
    /// What follows `--csv`: a command (`EVALSHA sha 1 key 1`) or a test (`-t get`).
    pub command: Vec<String>,
    pub clients: u64,
    pub requests: u64,
    pub keyspace: u64,
}

pub async fn run(r: &Run<'_>) -> anyhow::Result<Baseline> {
    let args: Vec<String> = [
        "-h".to_string(),
        "127.0.0.1".into(),
        "-p".into(),
        r.port.to_string(),
        "-c".into(),
        r.clients.to_string(),
        "-n".into(),
        r.requests.to_string(),
        "-r".into(),
        r.keyspace.to_string(),
        "--csv".into(),
    ]
    .into_iter()
    .chain(r.command.iter().cloned())
    .collect::<Vec<String>>();
    let command = format!("redis-benchmark {}", args.join(" "));
    let cpu0 = procs::cpu_ticks(r.redis_pid)?;
    let client0 = procs::children_cpu_ticks()?;
    let busy0 = procs::machine_busy_ticks()?;
    let started = Instant::now();
    let out = tokio::process::Command::new("redis-benchmark")
        .args(&args)
        .kill_on_drop(true)
        .output()
        .await
        .context("could not run redis-benchmark (apt-get install redis-tools)")?;
    let elapsed = started.elapsed();
    let cpu1 = procs::cpu_ticks(r.redis_pid)?;
    let client1 = procs::children_cpu_ticks()?;
    let busy1 = procs::machine_busy_ticks()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("`{command}` failed ({}):\n{stdout}{stderr}", out.status);
    }
    // redis-benchmark reports server errors (NOSCRIPT, WRONGTYPE…) as text and still exits 0.
    if let Some(line) = stdout
        .lines()
        .chain(stderr.lines())
        .find(|l| l.contains("Error"))
    {
        bail!("`{command}` reported an error: {line}");
    }
    let mut b = parse_csv(&stdout)
        .with_context(|| format!("unexpected output of `{command}`:\n{stdout}"))?;
    // Sanity: redis-benchmark's own rate must agree with the wall clock (it includes connect
    // time, we include process start; both are small next to the run).
    let wall_rps = r.requests as f64 / elapsed.as_secs_f64();
    if b.rps > wall_rps * 1.5 {
        eprintln!(
            "note: redis-benchmark says {:.0} req/s, the wall clock says {wall_rps:.0}",
            b.rps
        );
    }
    b.command = command;
    let secs = |ticks: u64| ticks as f64 / r.ticks as f64;
    b.redis_cpu_us = secs(cpu1 - cpu0) * 1e6 / r.requests as f64;
    b.client_cpu_us = secs(client1 - client0) * 1e6 / r.requests as f64;
    // Our own process idles while redis-benchmark runs, so the rest is other work.
    let others = secs(busy1 - busy0) - secs(cpu1 - cpu0) - secs(client1 - client0);
    b.other_util = others.max(0.0) / elapsed.as_secs_f64() * 100.0;
    Ok(b)
}

/// Parses `--csv` output. redis-benchmark 7 prints
/// `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`;
/// older versions print only `"test","rps"`, so columns are looked up by name. Values are
/// aligned from the end of the row, because the first column (the command) may hold commas.
fn parse_csv(text: &str) -> anyhow::Result<Baseline> {
    let mut lines = text.lines().map(str::trim).filter(|l| l.starts_with('"'));
    let header: Vec<String> = lines
        .next()
        .context("no CSV header")?
        .split(',')
        .map(|f| f.trim_matches('"').to_string())
        .collect();
    let row: Vec<&str> = lines.next().context("no CSV row")?.split(',').collect();
    if row.len() < header.len() {
        bail!("CSV row shorter than its header");
    }
    let value = |name: &str| -> Option<f64> {
        let j = header.iter().position(|h| h == name)?;
        if j == 0 {
            return None;
        }
        row[row.len() - (header.len() - j)]
            .trim_matches('"')
            .parse()
            .ok()
    };
    Ok(Baseline {
        rps: value("rps").context("no rps column")?,
        p50_ms: value("p50_latency_ms"),
        p99_ms: value("p99_latency_ms"),
        ..Baseline::default()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_redis_benchmark_7_csv() -> anyhow::Result<()> {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
\"EVALSHA 6163 1 k:{__rand_int__}:0sw 1\",\"31201.25\",\"0.865\",\"0.200\",\"0.663\",\"2.287\",\"4.847\",\"9.255\"\n";
        let b = super::parse_csv(text)?;
        assert_eq!(b.rps, 31201.25);
        assert_eq!(b.p50_ms, Some(0.663));
        assert_eq!(b.p99_ms, Some(4.847));
        let old = super::parse_csv("\"test\",\"rps\"\n\"EVALSHA a,b\",\"100.5\"\n")?;
        assert_eq!(old.rps, 100.5);
        assert_eq!(old.p50_ms, None);
        Ok(())
    }
}
