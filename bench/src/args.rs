//! Command-line flags. Hand-parsed: there are few of them, and the benchmark should not pull a
//! CLI framework into its build.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

pub const USAGE: &str = "\
patternd-bench: patternd over HTTP against redis-benchmark running the same script on the same
Redis, in one run. Starts its own redis-server and patternd (release build) on free loopback ports.

usage: cargo run --release -p patternd-bench -- [flags]

  --duration D            measured phase per scenario (default 10s)
  --warmup D              warm-up before each measured phase (default 2s)
  --connections N         concurrent keep-alive HTTP/1.1 connections (default 64)
  --keyspace N            distinct ids, the same for both sides (default 100000)
  --baseline-requests N   requests redis-benchmark sends per scenario (default 200000)
  --baseline-clients N    redis-benchmark connections (default 50)
  --scenario S            sliding_window | gcra | plugins | cache | cache_near | cache_write | session
                          | lock | queue
                          | queue_batch | leaderboard | leaderboard_top | pubsub | cluster | hll
                          | floors | all
                          (default all)
  --hook-calls N          plugins: timed calls of each plugin hook, in process (default 20000)
  --load-threads N        threads of the HTTP load generator (default 1)
  --subscribers N         pubsub: subscribers of the channel, on each side (default 500)
  --messages N            pubsub: messages published, each fanned out to every subscriber
                          (default 200)
  --publish-interval D    pubsub: time between two publishes (default 25ms)
  --rate R                open loop: send R requests/s in total on a fixed schedule instead
                          of as fast as answers come back (closed loop, the default), so
                          latency shows service time rather than queueing. The floors
                          scenario picks its own rates (closed loop, then open loop at 70%
                          of the closed-loop maximum); there --rate sets the open-loop rate
  --before PATH           floors: also measure this patternd binary (e.g. a release build of
                          an older commit) on the same Redis, against the same floors, in
                          alternating rounds, and print before and after side by side
  --before-args \"FLAGS\"   floors: extra `patternd serve` flags of the before engine, split on
                          whitespace; given (even empty) without --before, the before side is
                          the same binary as after (a before == after run shows the noise)
  --after-args \"FLAGS\"    extra `patternd serve` flags of the engine under test (every
                          scenario's engine, and the after side of floors), split on whitespace
  -h, --help              this text

Scenarios:
  sliding_window, gcra   patternd's decisions against redis-benchmark EVALSHA of the same script
  plugins                the example plugin tiered-limits (WebAssembly, and its Lua twin):
                         each hook's cost per call in process, and HTTP decisions with each
                         plugin against the same fixed-window rule without one, each driven for
                         --duration (in rounds of alternating order). Builds plugins/dist with
                         plugins/build.sh when it is missing or stale (needs the wasm32-wasip2
                         target); under `all`, a failed build skips only this scenario.
  cache                  cache hits (GET /v1/cache/bench/item/{id}, every id filled from a local
                         origin first) against redis-benchmark GET of values of the same size
  cache_write            cache writes (PUT /v1/cache/bench/note/{id} of a 256-byte JSON value at
                         random ids, a rule without an origin: stored in Redis only), against
                         the same write (its put script) called in process through patternd's
                         library
  cache_near             the same with the rule's `near_cache` on (hits served from patternd's
                         memory, kept correct by Redis CLIENT TRACKING invalidations)
  session                GET /v1/sessions/bench/web/{sid} of live sessions, against the same
                         script called in process through patternd's library (no HTTP)
  lock                   POST /v1/locks/bench/order/{id} then DELETE with the token, against the
                         same two scripts called in process through patternd's library
  queue                  job cycles on one queue rule: POST /v1/queues/bench/work (push), .../_pop
                         (count=1, no wait), .../jobs/{id}/_ack with the receipt, against the same
                         three scripts called in process through patternd's library; figures per
                         cycle. `--scenario queue` also runs queue_batch
  queue_batch            the same in batches: 10 pushes, one pop with count=10, 10 acks per
                         operation (latency per batch; throughput and CPU per job cycle)
  leaderboard            submits (POST /v1/leaderboards/bench/board/global with a member and score:
                         random members of --keyspace, update best, ties first, max_size 10000)
                         against the same script called in process through patternd's library.
                         `--scenario leaderboard` also runs leaderboard_top
  leaderboard_top        top-10 reads (GET /v1/leaderboards/bench/board/global?limit=10) of the
                         full board, against the same script called in process
  pubsub                 fan-out of one channel to --subscribers SSE subscribers
                         (GET /v1/pubsub/bench/fan/room-1, published with POST), against as many
                         raw Redis SUBSCRIBE connections receiving PUBLISH on the same Redis:
                         latency per delivery (p50/p99/max), until the last subscriber per
                         message, deliveries lost, CPU per delivery. Needs an open-files limit
                         of about subscribers + 256
  hll                    unique counts: POST /v1/counters/bench/hll/page {item: <random id>} (a
                         HyperLogLog add, one per request, with the period check and the expiry),
                         against redis-benchmark PFADD of the same random ids to one key
  cluster                a second patternd on a 3-primary Redis Cluster started here: rate-limit
                         decisions and cache hits against the standalone engine, in alternating
                         rounds; goal: patternd CPU per decision on the cluster ≤ 1.10× standalone
                         (BENCH_CLUSTER_POOL=N gives the cluster engine --redis-pool N)
  floors                 issue 16: the floors of the stack in this run (patternd's own GET /healthz
                         under the same load; redis-benchmark EVALSHA of a naive INCR+PEXPIRE
                         fixed window; redis-benchmark GET), then patternd's fixed_window and
                         sliding_window decisions, fixed_window denials (1000 ids over a limit of 1,
                         without and with deny_cache) and cache hits: engine CPU and Redis CPU
                         per request as ratios to those floors, with p50/p99, and the Redis
                         commands per request; then fixed_window and cache hits again open loop
                         at 70% of the throughput just measured (goal p99 <= 2 ms), and the
                         issue's goals, met or not. With --before / --before-args: both engines
                         (fresh, apps bench-b and bench-a) in 2 rounds of alternating order,
                         each phase measured --duration in total per engine, and one table
                         before | after | goal. About 2.5 minutes with --duration 5s (4 with the
                         defaults), half that for one side. Run it 3 times on a shared machine
                         and compare ratios
With the defaults, `all` takes about 3 minutes after the build (floors with --before: 2 more).

Durations: 500ms, 10s, 1m, or a plain number of seconds.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    SlidingWindow,
    Gcra,
    /// Plugin hooks in process, and HTTP with and without a plugin (`plugins.rs`).
    Plugins,
    /// Cache hits over HTTP against redis-benchmark GET (`patterns.rs`).
    Cache,
    /// The same with the rule's near cache on: hits served in process.
    CacheNear,
    /// Cache writes (PUT) over HTTP against the same write called in process.
    CacheWrite,
    /// Session reads over HTTP against the same script called in process.
    Session,
    /// Lock acquire + release over HTTP against the same scripts called in process.
    Lock,
    /// Queue push + pop + ack over HTTP against the same scripts called in process.
    Queue,
    /// The same with pops of `patterns::QUEUE_BATCH` jobs.
    QueueBatch,
    /// Leaderboard submits (best score, ties first) against the same script in process.
    Leaderboard,
    /// Leaderboard top-10 reads against the same script in process.
    LeaderboardTop,
    /// Fan-out of SSE subscriptions against Redis SUBSCRIBE connections (`pubsub.rs`).
    PubSub,
    /// Rate limits and cache hits on a 3-primary cluster against standalone (`cluster.rs`).
    Cluster,
    /// HyperLogLog adds over HTTP against redis-benchmark PFADD.
    Hll,
    /// Engine and Redis CPU per decision and per cache hit as ratios to the floors of the stack
    /// (`floors.rs`).
    Floors,
}

impl Scenario {
    pub const ALL: [Scenario; 16] = [
        Scenario::SlidingWindow,
        Scenario::Gcra,
        Scenario::Plugins,
        Scenario::Cache,
        Scenario::CacheNear,
        Scenario::CacheWrite,
        Scenario::Session,
        Scenario::Lock,
        Scenario::Queue,
        Scenario::QueueBatch,
        Scenario::Leaderboard,
        Scenario::LeaderboardTop,
        Scenario::PubSub,
        Scenario::Cluster,
        Scenario::Hll,
        Scenario::Floors,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::SlidingWindow => "sliding_window",
            Scenario::Gcra => "gcra",
            Scenario::Plugins => "plugins",
            Scenario::Cache => "cache",
            Scenario::CacheNear => "cache_near",
            Scenario::CacheWrite => "cache_write",
            Scenario::Session => "session",
            Scenario::Lock => "lock",
            Scenario::Queue => "queue",
            Scenario::QueueBatch => "queue_batch",
            Scenario::Leaderboard => "leaderboard",
            Scenario::LeaderboardTop => "leaderboard_top",
            Scenario::PubSub => "pubsub",
            Scenario::Cluster => "cluster",
            Scenario::Hll => "hll",
            Scenario::Floors => "floors",
        }
    }

    /// The rule of the benchmark policy (see `procs::POLICY`) that runs this algorithm against
    /// a redis-benchmark baseline; `None` for the plugin scenario, which has rules of its own.
    pub fn rule(self) -> Option<&'static str> {
        match self {
            Scenario::SlidingWindow => Some("sw"),
            Scenario::Gcra => Some("gcra"),
            Scenario::Plugins
            | Scenario::Cache
            | Scenario::CacheNear
            | Scenario::CacheWrite
            | Scenario::Session
            | Scenario::Lock
            | Scenario::Queue
            | Scenario::QueueBatch
            | Scenario::Leaderboard
            | Scenario::LeaderboardTop
            | Scenario::PubSub
            | Scenario::Cluster
            | Scenario::Hll
            | Scenario::Floors => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Args {
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub keyspace: u64,
    pub baseline_requests: u64,
    pub baseline_clients: u64,
    pub scenarios: Vec<Scenario>,
    /// Whether `--scenario` named one scenario (a failure to prepare it is then an error,
    /// rather than a skipped part of `all`).
    pub explicit_scenario: bool,
    pub hook_calls: usize,
    pub load_threads: usize,
    /// Open-loop target rate (requests/s); `None` for a closed loop.
    pub rate: Option<f64>,
    /// pubsub: subscribers per side, messages, and the time between publishes.
    pub subscribers: usize,
    pub messages: usize,
    pub publish_interval: Duration,
    /// floors: the before engine's binary (`None`: the same binary as after).
    pub before: Option<PathBuf>,
    /// floors: the before engine's extra `serve` flags; `Some` (even empty) asks for a
    /// before/after comparison like `before` does.
    pub before_args: Option<Vec<String>>,
    /// Extra `serve` flags of the engine under test (every scenario; floors' after side).
    pub after_args: Vec<String>,
}

impl Args {
    /// Whether the floors scenario compares a before engine with the engine under test.
    pub fn compare(&self) -> bool {
        self.before.is_some() || self.before_args.is_some()
    }
}

impl Default for Args {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            connections: 64,
            keyspace: 100_000,
            baseline_requests: 200_000,
            baseline_clients: 50,
            scenarios: Scenario::ALL.to_vec(),
            explicit_scenario: false,
            hook_calls: 20_000,
            load_threads: 1,
            rate: None,
            subscribers: 500,
            messages: 200,
            publish_interval: Duration::from_millis(25),
            before: None,
            before_args: None,
            after_args: Vec::new(),
        }
    }
}

/// `None` when help was asked for.
pub fn parse(mut it: impl Iterator<Item = String>) -> anyhow::Result<Option<Args>> {
    let mut a = Args::default();
    while let Some(flag) = it.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        if name == "-h" || name == "--help" {
            return Ok(None);
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .with_context(|| format!("{name} needs a value\n\n{USAGE}"))?,
        };
        let ctx = || format!("bad value `{value}` for {name}");
        match name.as_str() {
            "--duration" => a.duration = parse_duration(&value).with_context(ctx)?,
            "--warmup" => a.warmup = parse_duration(&value).with_context(ctx)?,
            "--connections" => a.connections = value.parse().with_context(ctx)?,
            "--keyspace" => a.keyspace = value.parse().with_context(ctx)?,
            "--baseline-requests" => a.baseline_requests = value.parse().with_context(ctx)?,
            "--baseline-clients" => a.baseline_clients = value.parse().with_context(ctx)?,
            "--load-threads" => a.load_threads = value.parse().with_context(ctx)?,
            "--subscribers" => a.subscribers = value.parse().with_context(ctx)?,
            "--messages" => a.messages = value.parse().with_context(ctx)?,
            "--publish-interval" => {
                a.publish_interval = parse_duration(&value).with_context(ctx)?
            }
            "--hook-calls" => a.hook_calls = value.parse().with_context(ctx)?,
            "--rate" => {
                let r: f64 = value.parse().with_context(ctx)?;
                a.rate = (r > 0.0).then_some(r);
            }
            "--before" => a.before = Some(PathBuf::from(value)),
            "--before-args" => a.before_args = Some(split_flags(&value)),
            "--after-args" => a.after_args = split_flags(&value),
            "--scenario" => {
                a.scenarios = match value.as_str() {
                    "all" => Scenario::ALL.to_vec(),
                    "sliding_window" | "sw" => vec![Scenario::SlidingWindow],
                    "gcra" => vec![Scenario::Gcra],
                    "plugins" => vec![Scenario::Plugins],
                    "cache" => vec![Scenario::Cache],
                    "cache_near" => vec![Scenario::CacheNear],
                    "cache_write" => vec![Scenario::CacheWrite],
                    "session" => vec![Scenario::Session],
                    "lock" => vec![Scenario::Lock],
                    "queue" => vec![Scenario::Queue, Scenario::QueueBatch],
                    "queue_batch" => vec![Scenario::QueueBatch],
                    "leaderboard" => vec![Scenario::Leaderboard, Scenario::LeaderboardTop],
                    "leaderboard_top" => vec![Scenario::LeaderboardTop],
                    "pubsub" => vec![Scenario::PubSub],
                    "cluster" => vec![Scenario::Cluster],
                    "hll" => vec![Scenario::Hll],
                    "floors" => vec![Scenario::Floors],
                    _ => bail!(
                        "{}: expected sliding_window, gcra, plugins, cache, cache_near, cache_write, session, lock, queue, queue_batch, leaderboard, leaderboard_top, pubsub, cluster, hll, floors or all",
                        ctx()
                    ),
                };
                a.explicit_scenario = value != "all";
            }
            _ => bail!("unknown flag `{name}`\n\n{USAGE}"),
        }
    }
    if a.connections == 0
        || a.keyspace == 0
        || a.baseline_requests == 0
        || a.baseline_clients == 0
        || a.hook_calls == 0
        || a.subscribers == 0
        || a.messages == 0
    {
        bail!(
            "--connections, --keyspace, --baseline-requests, --baseline-clients, --hook-calls, --subscribers and --messages must be positive"
        );
    }
    // redis-benchmark's __rand_int__ is 12 digits; both sides must build the same ids.
    if a.keyspace > 999_999_999_999 {
        bail!("--keyspace is at most 999999999999 (redis-benchmark writes 12-digit ids)");
    }
    if a.duration.is_zero() || a.publish_interval.is_zero() {
        bail!("--duration and --publish-interval must be positive");
    }
    if a.compare() && !a.scenarios.contains(&Scenario::Floors) {
        bail!("--before and --before-args apply to the floors scenario (--scenario floors or all)");
    }
    a.load_threads = a.load_threads.max(1);
    Ok(Some(a))
}

/// `patternd serve` flags given as one argument: split on whitespace (no quoting; no serve
/// flag takes a value with spaces).
fn split_flags(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .with_context(|| format!("`{s}` is not a duration"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => bail!("unknown unit `{unit}` (use ms, s or m)"),
    };
    Duration::try_from_secs_f64(secs).with_context(|| format!("`{s}` is not a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_duration("1m").ok(), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("3").ok(), Some(Duration::from_secs(3)));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn flags() -> anyhow::Result<()> {
        let args = |v: &[&str]| parse(v.iter().map(|s| s.to_string()));
        let a =
            args(&["--duration=3s", "--scenario", "gcra", "--rate", "5000"])?.context("help")?;
        assert_eq!(a.duration, Duration::from_secs(3));
        assert_eq!(a.rate, Some(5000.0));
        assert_eq!(a.scenarios, vec![Scenario::Gcra]);
        assert!(a.explicit_scenario);
        let a = args(&["--scenario", "plugins", "--hook-calls", "500"])?.context("help")?;
        assert_eq!(a.scenarios, vec![Scenario::Plugins]);
        assert_eq!(a.hook_calls, 500);
        let a = args(&["--scenario=all"])?.context("help")?;
        assert_eq!(a.scenarios.len(), Scenario::ALL.len());
        assert!(!a.explicit_scenario);
        let a = args(&["--scenario", "queue"])?.context("help")?;
        assert_eq!(a.scenarios, vec![Scenario::Queue, Scenario::QueueBatch]);
        let a = args(&[
            "--scenario",
            "pubsub",
            "--subscribers",
            "50",
            "--publish-interval",
            "40ms",
        ])?
        .context("help")?;
        assert_eq!(a.scenarios, vec![Scenario::PubSub]);
        assert_eq!((a.subscribers, a.messages), (50, 200));
        assert_eq!(a.publish_interval, Duration::from_millis(40));
        assert!(!a.compare());
        assert!(args(&["--help"])?.is_none());
        assert!(args(&["--nope", "1"]).is_err());
        Ok(())
    }

    #[test]
    fn before_and_after_flags() -> anyhow::Result<()> {
        let args = |v: &[&str]| parse(v.iter().map(|s| s.to_string()));
        let a = args(&[
            "--scenario",
            "floors",
            "--before",
            "/tmp/before/patternd",
            "--before-args",
            "--redis-pool 4",
            "--after-args=--batch  --redis-pool=4 ",
        ])?
        .context("help")?;
        assert!(a.compare());
        assert_eq!(a.before, Some(PathBuf::from("/tmp/before/patternd")));
        assert_eq!(
            a.before_args,
            Some(vec!["--redis-pool".to_string(), "4".to_string()])
        );
        assert_eq!(a.after_args, vec!["--batch", "--redis-pool=4"]);
        // Empty before flags still ask for a comparison: the same binary on both sides.
        let a = args(&["--scenario", "floors", "--before-args", ""])?.context("help")?;
        assert!(a.compare());
        assert_eq!(
            (a.before.as_ref(), a.before_args.as_deref()),
            (None, Some(&[][..]))
        );
        // The after flags alone do not: one engine, started with them.
        let a = args(&["--after-args", "--batch"])?.context("help")?;
        assert!(!a.compare());
        assert_eq!(a.after_args, vec!["--batch"]);
        // `all` includes floors; another single scenario has no before side.
        assert!(args(&["--before", "x"])?.context("help")?.compare());
        assert!(args(&["--scenario", "cache", "--before", "x"]).is_err());
        assert!(args(&["--scenario", "gcra", "--before-args", "--batch"]).is_err());
        Ok(())
    }
}
