//! Rate-limit rules → one script per rule composed from the algorithm files.

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};

use crate::policy::{Algorithm, Limit, RateLimit, Rule};

use super::keys::KeySpace;
use super::{Script, luacheck};

const PRELUDE: &str = include_str!("lua/ratelimit/prelude.lua");
const RELEASE_LEASE: &str = include_str!("lua/ratelimit/release_lease.lua");

fn algorithm_source(a: Algorithm) -> &'static str {
    match a {
        Algorithm::FixedWindow => include_str!("lua/ratelimit/fixed_window.lua"),
        Algorithm::SlidingWindow => include_str!("lua/ratelimit/sliding_window.lua"),
        Algorithm::SlidingLog => include_str!("lua/ratelimit/sliding_log.lua"),
        Algorithm::TokenBucket => include_str!("lua/ratelimit/token_bucket.lua"),
        Algorithm::Gcra => include_str!("lua/ratelimit/gcra.lua"),
        Algorithm::Concurrency => include_str!("lua/ratelimit/concurrency.lua"),
    }
}

/// The release script is the same for every concurrency rule: built and checked once.
static RELEASE_SCRIPT: LazyLock<Arc<Script>> = LazyLock::new(|| {
    Arc::new(Script::new(
        "ratelimit release-lease",
        RELEASE_LEASE.to_string(),
    ))
});

/// The scripts checking limits a plugin chose per request, limits in ARGV: one per window
/// algorithm (the common case: every limit of a decision has the same algorithm, and a script
/// that defines only that algorithm does less work in Redis per call), and one general script
/// for mixed decisions. Shared by all plugin rules, built and checked once.
static DYNAMIC_SCRIPTS: LazyLock<DynamicScripts> = LazyLock::new(|| {
    let windowed: Vec<Algorithm> = Algorithm::ALL
        .into_iter()
        .filter(|a| *a != Algorithm::Concurrency)
        .collect();
    DynamicScripts {
        general: dynamic_source("ratelimit plugin-decided", &windowed),
        single: windowed
            .iter()
            .map(|a| {
                let name = format!("ratelimit plugin-decided {}", a.name());
                (*a, dynamic_source(&name, std::slice::from_ref(a)))
            })
            .collect(),
    }
});

/// Plugin-decided scripts: see `DYNAMIC_SCRIPTS`.
#[derive(Debug, Clone)]
pub struct DynamicScripts {
    pub general: Arc<Script>,
    pub single: Vec<(Algorithm, Arc<Script>)>,
}

impl DynamicScripts {
    /// The script for a decision whose limits use `algs`.
    pub fn for_algorithms(&self, mut algs: impl Iterator<Item = Algorithm>) -> &Arc<Script> {
        let Some(first) = algs.next() else {
            return &self.general;
        };
        if algs.all(|a| a == first)
            && let Some((_, s)) = self.single.iter().find(|(a, _)| *a == first)
        {
            return s;
        }
        &self.general
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Script>> {
        std::iter::once(&self.general).chain(self.single.iter().map(|(_, s)| s))
    }
}

fn dynamic_source(name: &str, algs: &[Algorithm]) -> Arc<Script> {
    let mut s = String::with_capacity(16 * 1024);
    s.push_str("-- patternd rate limit with limits chosen per request by a plugin\n");
    s.push_str("-- KEYS[i]: the key of limit i; ARGV[5i-4 .. 5i]: algorithm code, cost, limit, window_ms, burst\n");
    s.push_str(PRELUDE);
    for alg in algs {
        s.push('\n');
        s.push_str(algorithm_source(*alg));
    }
    let table: Vec<String> = algs
        .iter()
        .map(|a| format!("{} = {}", a.key_code(), a.name()))
        .collect();
    let _ = write!(s, "\nlocal ALGS = {{ {} }}", table.join(", "));
    s.push_str(DYNAMIC_MAIN);
    Arc::new(Script::new(name, s))
}

const DYNAMIC_MAIN: &str = r#"
local now = now_ms()
local results = {}
for i = 1, #KEYS do
  local b = (i - 1) * 5
  local f = ALGS[ARGV[b + 1]]
  if f == nil then return redis.error_reply('patternd: unknown algorithm ' .. tostring(ARGV[b + 1])) end
  results[i] = f(KEYS[i], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5]), tonumber(ARGV[b + 2]), now)
end
return decide(results)
"#;

/// The plugin-decided scripts, for the runtime.
pub fn dynamic_scripts() -> DynamicScripts {
    DYNAMIC_SCRIPTS.clone()
}

/// A rule's own limits (or a plugin rule's fallback), compiled into one script.
#[derive(Debug, Clone)]
pub struct FixedLimits {
    pub script: Arc<Script>,
    /// The script's keys, in KEYS order: per limit, index + algorithm code (e.g. `0fw`); a
    /// concurrency limit has a second key, its units held (`0cl.n`).
    pub subs: Vec<String>,
    pub limits: Vec<Limit>,
}

/// A compiled rate-limit rule.
///
/// Script contract (fixed limits): `KEYS` are the rule's key space's keys of `subs`, in order
/// (one per limit, two for concurrency); `ARGV[1]` is the cost, `ARGV[2]` the lease id for
/// concurrency rules. Every
/// rate-limit script replies `{allowed (0|1), reported limit index, remaining,
/// reset_after_ms, retry_after_ms}`.
#[derive(Debug, Clone)]
pub struct CompiledRateLimit {
    /// The rule's limits; for a plugin rule, its fallback (if any).
    pub fixed: Option<FixedLimits>,
    /// Plugin rules: the script for the limits the plugin chooses.
    pub dynamic: Option<DynamicScripts>,
    /// For concurrency rules, the script that releases a lease.
    pub release: Option<Arc<Script>>,
}

impl CompiledRateLimit {
    pub fn scripts(&self) -> Vec<Arc<Script>> {
        let mut v: Vec<Arc<Script>> = self.fixed.iter().map(|f| f.script.clone()).collect();
        v.extend(self.dynamic.iter().flat_map(|d| d.all().cloned()));
        v.extend(self.release.clone());
        v
    }

    pub fn key_layout(&self, keys: &KeySpace) -> Vec<(String, String)> {
        let dynamic = self.dynamic.iter().map(|_| {
            (
                keys.template("p.<key-suffix>.<algorithm code>"),
                "chosen by the plugin per request; same structures as the fixed limits".to_string(),
            )
        });
        let mut out = Vec::new();
        if let Some(f) = &self.fixed {
            let mut subs = f.subs.iter();
            for l in &f.limits {
                let what: &[&str] = match l.algorithm {
                    Algorithm::FixedWindow => &[
                        "STRING counter, expires with its window (an expiry lost is restored by the next call)",
                    ],
                    Algorithm::SlidingWindow => &[
                        "HASH {w, c, p, l}: window number, two counts and the newest admission's time, expires after two windows",
                    ],
                    Algorithm::SlidingLog => &[
                        "ZSET of admitted requests by time, member `<running total of costs>:<cost>` (one per request, whatever its cost), expires one window after the newest",
                    ],
                    Algorithm::TokenBucket => {
                        &["HASH {t, ts}: tokens and last update, expires when the bucket is full"]
                    }
                    Algorithm::Gcra => {
                        &["STRING theoretical arrival time, expires when fully reset"]
                    }
                    Algorithm::Concurrency => &[
                        "ZSET of leases by expiry time, member `<lease id>:<cost>` (one per lease), expires with the last lease",
                        "STRING: the units all leases hold, expires with the last lease",
                    ],
                };
                for w in what {
                    if let Some(s) = subs.next() {
                        out.push((keys.template(s), (*w).to_string()));
                    }
                }
            }
        }
        out.extend(dynamic);
        out
    }
}

pub(super) fn compile(rule: &Rule, rl: &RateLimit) -> Result<CompiledRateLimit, String> {
    let fixed_limits: Vec<Limit> = match (&rl.plugin, &rl.fallback) {
        (None, _) => rl.limits.clone(),
        (Some(_), Some(f)) => vec![f.clone()],
        (Some(_), None) => Vec::new(),
    };
    let fixed = if fixed_limits.is_empty() {
        None
    } else {
        let subs = limit_subs(&fixed_limits);
        let source = generate(rule, &fixed_limits);
        let what = if rl.plugin.is_some() { "fallback " } else { "" };
        let name = format!("ratelimit {what}{}/{}", rule.app, rule.name);
        luacheck::check(&name, &source).map_err(|e| {
            format!(
                "internal error: the generated script for rule `{}` fails the Lua 5.1 check: {e}",
                rule.name
            )
        })?;
        Some(FixedLimits {
            script: Arc::new(Script::new(name, source)),
            subs,
            limits: fixed_limits,
        })
    };
    let dynamic = match &rl.plugin {
        None => None,
        Some(_) => {
            let d = dynamic_scripts();
            for s in d.all() {
                luacheck::check(&s.name, &s.source).map_err(|e| {
                    format!(
                        "internal error: the plugin-decided script fails the Lua 5.1 check: {e}"
                    )
                })?;
            }
            Some(d)
        }
    };
    let release = if rl.is_concurrency() {
        luacheck::check("release-lease", RELEASE_LEASE)?;
        Some(RELEASE_SCRIPT.clone())
    } else {
        None
    };
    Ok(CompiledRateLimit {
        fixed,
        dynamic,
        release,
    })
}

/// The keys of fixed limits, in KEYS order (see `FixedLimits::subs`).
fn limit_subs(limits: &[Limit]) -> Vec<String> {
    let mut subs = Vec::with_capacity(limits.len() + 1);
    for (i, l) in limits.iter().enumerate() {
        subs.push(format!("{i}{}", l.algorithm.key_code()));
        if l.algorithm == Algorithm::Concurrency {
            subs.push(format!("{i}{}.n", l.algorithm.key_code()));
        }
    }
    subs
}

/// The whole script of a rule. Limits are literal constants in the generated main.
pub fn generate(rule: &Rule, limits: &[Limit]) -> String {
    let mut s = String::with_capacity(8 * 1024);
    let _ = writeln!(s, "-- patternd rate limit {}/{}", rule.app, rule.name);
    let _ = writeln!(
        s,
        "-- KEYS: the keys of the limits in order (concurrency: leases, units held); ARGV[1]: cost; ARGV[2]: lease id (concurrency only)"
    );
    let _ = writeln!(
        s,
        "-- returns {{allowed, reported limit index, remaining, reset_after_ms, retry_after_ms}}"
    );
    s.push_str(PRELUDE);
    for alg in Algorithm::ALL {
        if limits.iter().any(|l| l.algorithm == alg) {
            s.push('\n');
            s.push_str(algorithm_source(alg));
        }
    }
    s.push_str("\nlocal cost = tonumber(ARGV[1])\nlocal now = now_ms()\nreturn decide({\n");
    // KEYS follow `limit_subs`: one per limit, a concurrency limit's second key after its first.
    let mut k = 0;
    for l in limits {
        k += 1;
        let key = k;
        let extra = if l.algorithm == Algorithm::Concurrency {
            k += 1;
            format!(", ARGV[2], KEYS[{k}]")
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "  {}(KEYS[{key}], {}, {}, {}, cost, now{extra}),",
            l.algorithm.name(),
            l.limit,
            l.window_ms(),
            l.burst
        );
    }
    s.push_str("})\n");
    s
}
