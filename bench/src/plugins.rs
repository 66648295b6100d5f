//! The plugin scenario: what deciding a rule with a plugin costs, next to the same rule
//! without one, in one run.
//!
//! 1. Hook cost, in process: the example plugins `tiered-limits` (a Rust component, so
//!    WebAssembly) and `tiered-limits-lua` (Lua) are loaded through patternd's own hosts
//!    (`PluginSet::load_dir`, what `patternd serve --plugins` runs), bound to the same tiers
//!    config, warmed up, and every `rate_limit` call is timed. The request carries what the
//!    HTTP handler would hand over for the load generator's request, so the host's conversion
//!    of headers is part of the figure.
//! 2. HTTP: one patternd serves three rules that decide the same limit, `plain` (a fixed
//!    window written in the policy) and `wasm` and `lua` (the plugins pick a fixed window from
//!    the X-Tier header). The load generator drives each for the same time with the same
//!    requests, all of them carrying `X-Tier: pro`, so the only difference is the plugin.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, bail};
use patternd::plugin::{Limits, PluginBinding, PluginSet, RateLimitDecision, RequestFacts};
use serde_json::json;

use crate::measure::Measured;
use crate::procs;

/// The app of the scenario's rules.
pub const APP: &str = "plug";

/// The tier every request names, and the header it travels in.
pub const TIER_HEADER: &str = "x-tier";
pub const TIER: &str = "pro";

/// Limits far above what a run can reach, so every request is allowed: allowed requests are
/// the honest worst case (see `procs::POLICY`), and a denial must not make a variant cheaper.
/// The three rules decide exactly the same limit; the policy and `tiers_config` must agree.
pub const POLICY: &str = "\
# Written by patternd-bench into a temporary directory (plugin scenario).
app: plug
rules:
  plain:
    rate_limit: { algorithm: fixed_window, limit: 1000000, window: 1m }
  wasm:
    rate_limit:
      plugin:
        name: tiered-limits
        headers: [x-tier]
        config:
          header: X-Tier
          default: free
          tiers:
            free: { limit: 1000000, window: 1m }
            pro: { limit: 1000000, window: 1m }
  lua:
    rate_limit:
      plugin:
        name: tiered-limits-lua
        headers: [x-tier]
        config:
          header: X-Tier
          default: free
          tiers:
            free: { limit: 1000000, window: 1m }
            pro: { limit: 1000000, window: 1m }
";

/// The plugins' config as the rules of `POLICY` give it, for the in-process bindings.
fn tiers_config() -> serde_json::Value {
    json!({ "header": "X-Tier", "default": "free",
            "tiers": { "free": { "limit": 1_000_000, "window": "1m" },
                       "pro": { "limit": 1_000_000, "window": "1m" } } })
}

/// One way of deciding the limit: a rule of `POLICY`, and the plugin that decides it.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    /// Column title.
    pub name: &'static str,
    pub rule: &'static str,
    /// File name in the plugins directory; `None` for the rule without a plugin.
    pub plugin: Option<&'static str>,
}

/// The baseline first: the ratios are against it.
pub const VARIANTS: [Variant; 3] = [
    Variant {
        name: "no plugin",
        rule: "plain",
        plugin: None,
    },
    Variant {
        name: "wasm plugin",
        rule: "wasm",
        plugin: Some("tiered-limits.wasm"),
    },
    Variant {
        name: "lua plugin",
        rule: "lua",
        plugin: Some("tiered-limits-lua.lua"),
    },
];

/// Each variant's measured time is split into this many phases, run in the order plain, wasm,
/// lua, then lua, wasm, plain, and so on: drift over the run (Redis growing its keyspace,
/// another process starting on this shared machine) then weighs on every variant about
/// equally instead of on whichever ran last.
pub const ROUNDS: u32 = 2;

/// The order of the phases: `(round, variant index)`.
pub fn schedule() -> Vec<(u32, usize)> {
    (0..ROUNDS)
        .flat_map(|round| {
            let order: Vec<usize> = if round % 2 == 0 {
                (0..VARIANTS.len()).collect()
            } else {
                (0..VARIANTS.len()).rev().collect()
            };
            order.into_iter().map(move |v| (round, v))
        })
        .collect()
}

/// Calls of each hook timed after the warm-up, in blocks that alternate between the plugins
/// for the same reason as `ROUNDS`.
const WARMUP_CALLS: usize = 2_000;
const BLOCK: usize = 1_000;

/// The plugins directory the scenario uses: a private copy, so a `plugins/build.sh` run by
/// someone else during the benchmark cannot swap a file under the server.
pub struct Prepared {
    pub dir: PathBuf,
    /// Set when plugins/dist could not be rebuilt and an older build is measured.
    pub warning: Option<String>,
}

/// Builds plugins/dist with plugins/build.sh when a needed file is missing or older than the
/// example sources, the contract or the script (the script rebuilds incrementally, but starts a
/// cargo per guest, so an up-to-date dist is not rebuilt), then copies what the scenario needs
/// into `scratch/plugins`.
pub fn prepare(scratch: &Path) -> anyhow::Result<Prepared> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let dist = root.join("dist");
    let needed: Vec<&str> = VARIANTS.iter().filter_map(|v| v.plugin).collect();
    let oldest_built = needed
        .iter()
        .map(|f| fs::metadata(dist.join(f)).and_then(|m| m.modified()).ok())
        .collect::<Option<Vec<SystemTime>>>()
        .and_then(|t| t.into_iter().min());
    let newest_source = [
        procs::newest_mtime(&root.join("examples")),
        procs::newest_mtime(&root.join("wit")),
        procs::newest_mtime(&root.join("build.sh")),
    ]
    .into_iter()
    .flatten()
    .max();
    let reason = match (oldest_built, newest_source) {
        (None, _) => Some("missing"),
        (Some(b), Some(s)) if s > b => Some("older than the plugin sources"),
        _ => None,
    };
    let mut warning = None;
    if let Some(reason) = reason {
        let script = root.join("build.sh");
        if !script.exists() {
            bail!(
                "{} is {reason}, and there is no {} to build it",
                dist.display(),
                script.display()
            );
        }
        eprintln!(
            "plugins/dist is {reason}: running plugins/build.sh (needs `rustup target add wasm32-wasip2`)"
        );
        // build.sh talks on stderr; stdout is kept for the report, so send both there.
        let status = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(std::io::stderr())
            .status()
            .context("could not run bash plugins/build.sh")?;
        if !status.success() {
            if oldest_built.is_none() {
                bail!("plugins/build.sh failed ({status}), and plugins/dist has no earlier build");
            }
            let w = format!(
                "plugins/build.sh failed ({status}), so the plugin scenario measures an earlier build in {}, \
                 which is older than the plugin sources",
                dist.display()
            );
            eprintln!("warning: {w}");
            warning = Some(w);
        }
    }
    let dir = scratch.join("plugins");
    fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    for f in needed {
        fs::copy(dist.join(f), dir.join(f))
            .with_context(|| format!("could not copy {} from {}", f, dist.display()))?;
    }
    Ok(Prepared { dir, warning })
}

/// The facts the HTTP handler builds for the load generator's request to rule `rule`, so the
/// in-process call converts what a served call converts: the rules of `POLICY` list
/// `plugin.headers: [x-tier]`, so of the request's headers (host, content-type, x-tier,
/// content-length) the plugin gets only that one.
fn request_facts(rule: &str) -> RequestFacts {
    RequestFacts {
        method: "POST".into(),
        path: format!("/v1/ratelimit/{APP}/{rule}"),
        id: "000000123456".into(),
        cost: 1,
        headers: vec![(TIER_HEADER.to_string(), TIER.to_string())],
        client_addr: Some("127.0.0.1".into()),
        fields: Vec::new(),
    }
}

/// Per-call cost of one plugin's `rate_limit` hook, in nanoseconds.
#[derive(Debug, Clone)]
pub struct HookCost {
    pub calls: usize,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub mean_ns: f64,
    /// Busy share of the machine's other processes during the timing, in % of one core.
    pub other_util: f64,
}

impl HookCost {
    fn from_samples(mut ns: Vec<u64>, other_util: f64) -> Self {
        ns.sort_unstable();
        // Nearest rank, like the histogram's quantiles.
        let q = |q: f64| {
            let rank = ((q * ns.len() as f64).ceil() as usize).clamp(1, ns.len());
            ns[rank - 1]
        };
        Self {
            calls: ns.len(),
            p50_ns: q(0.50),
            p99_ns: q(0.99),
            p999_ns: q(0.999),
            max_ns: ns.last().copied().unwrap_or(0),
            mean_ns: ns.iter().sum::<u64>() as f64 / ns.len().max(1) as f64,
            other_util,
        }
    }
}

/// Times `calls` warm `rate_limit` calls of each plugin variant, interleaved in blocks. Blocks
/// the thread (run it off the async runtime). Returns one cost per entry of `VARIANTS` that
/// has a plugin, in that order.
pub fn hook_costs(dir: &Path, calls: usize, ticks: u64) -> anyhow::Result<Vec<HookCost>> {
    let set = PluginSet::load_dir(dir, Limits::default())
        .map_err(|e| anyhow::anyhow!("loading the plugins in {}:\n{e}", dir.display()))?;
    let mut bound: Vec<(PluginBinding, RequestFacts, &str)> = Vec::new();
    for v in &VARIANTS {
        let Some(file) = v.plugin else { continue };
        // The registry names a plugin after its file, without the extension.
        let name = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
        let plugin = set
            .get(name)
            .with_context(|| format!("plugin {name} did not load from {}", dir.display()))?;
        let binding = plugin
            .bind(tiers_config())
            .with_context(|| format!("binding {name} to the tiers config"))?;
        bound.push((binding, request_facts(v.rule), name));
    }
    // Warm-up, checking the decision: a plugin that ignored the header (default tier) or failed
    // would be timing something else.
    for (binding, facts, name) in &bound {
        for _ in 0..WARMUP_CALLS {
            match binding.rate_limit(facts) {
                Ok(RateLimitDecision::Check(limits))
                    if limits.len() == 1
                        && limits[0].key_suffix == TIER
                        && limits[0].limit == 1_000_000
                        && limits[0].window_ms == 60_000 => {}
                other => bail!(
                    "{name}: rate_limit answered {other:?}; expected one 1000000/1m limit of tier `{TIER}`"
                ),
            }
        }
    }
    let mut samples: Vec<Vec<u64>> = vec![Vec::with_capacity(calls); bound.len()];
    let busy0 = procs::machine_busy_ticks()?;
    let self0 = procs::cpu_ticks("self")?;
    let started = Instant::now();
    let mut done = 0;
    while done < calls {
        let n = BLOCK.min(calls - done);
        for ((binding, facts, name), out) in bound.iter().zip(samples.iter_mut()) {
            for _ in 0..n {
                // The server hands its facts over (`rate_limit_owned`); the copy made here
                // for that is not part of the call.
                let owned = facts.clone();
                let t = Instant::now();
                let d = binding.rate_limit_owned(owned);
                let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                d.with_context(|| format!("{name}: rate_limit failed while timed"))?;
                out.push(ns);
            }
        }
        done += n;
    }
    let secs = started.elapsed().as_secs_f64();
    let others = procs::machine_busy_ticks()?.saturating_sub(busy0) as f64
        - procs::cpu_ticks("self")?.saturating_sub(self0) as f64;
    let other_util = (others / ticks as f64).max(0.0) / secs * 100.0;
    Ok(samples
        .into_iter()
        .map(|s| HookCost::from_samples(s, other_util))
        .collect())
}

/// One variant's figures.
pub struct VariantResult {
    pub variant: Variant,
    pub hook: Option<HookCost>,
    pub http: Measured,
}

/// The scenario's figures: `VARIANTS` in order, the first one without a plugin.
pub struct PluginResults {
    pub variants: Vec<VariantResult>,
}

impl PluginResults {
    /// Decisions per second relative to the rule without a plugin.
    pub fn ratio(&self, r: &VariantResult) -> f64 {
        let base = self.variants.first().map_or(0.0, |b| b.http.rps());
        if base > 0.0 { r.http.rps() / base } else { 0.0 }
    }

    /// patternd CPU per decision above the rule without a plugin, in µs.
    pub fn extra_cpu_us(&self, r: &VariantResult) -> f64 {
        let base = self
            .variants
            .first()
            .map_or(0.0, |b| b.http.per_decision_us(b.http.cpu.patternd));
        r.http.per_decision_us(r.http.cpu.patternd) - base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_runs_once_per_round_and_the_order_alternates() {
        let s = schedule();
        assert_eq!(s.len(), ROUNDS as usize * VARIANTS.len());
        for v in 0..VARIANTS.len() {
            assert_eq!(s.iter().filter(|(_, i)| *i == v).count(), ROUNDS as usize);
        }
        assert_eq!(s[0], (0, 0));
        assert_eq!(s[VARIANTS.len()], (1, VARIANTS.len() - 1));
    }

    #[test]
    fn hook_quantiles_are_nearest_rank() {
        let c = HookCost::from_samples((1..=1000).rev().collect(), 0.0);
        assert_eq!((c.p50_ns, c.p99_ns, c.max_ns), (500, 990, 1000));
        assert_eq!(c.calls, 1000);
    }

    #[test]
    fn the_policy_and_the_in_process_config_agree() {
        // Every tier of the in-process config appears in both plugin rules of POLICY.
        for tier in ["free", "pro"] {
            assert_eq!(
                POLICY
                    .matches(&format!("{tier}: {{ limit: 1000000, window: 1m }}"))
                    .count(),
                2
            );
        }
        assert_eq!(tiers_config()["tiers"]["pro"]["limit"], 1_000_000);
        for v in VARIANTS {
            assert!(POLICY.contains(&format!("  {}:\n", v.rule)), "{}", v.rule);
        }
    }
}
