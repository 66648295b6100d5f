//! Rate-limit rules → one script per rule composed from the algorithm files.

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};

use crate::policy::{Algorithm, Limit, RateLimit, Rule};

use super::batch::FAILED_MESSAGE;
use super::keys::KeySpace;
use super::recipe::{Block, Recipe, assemble, lua_file};
use super::{Script, luacheck};

const CLOCK: Block = lua_file!("shared/clock.lua");
const PRELUDE: Block = lua_file!("ratelimit/prelude.lua");
const DECIDED_MAIN: Block = lua_file!("ratelimit/decided.lua");

fn algorithm_block(a: Algorithm) -> Block<'static> {
    match a {
        Algorithm::FixedWindow => lua_file!("ratelimit/fixed_window.lua"),
        Algorithm::SlidingWindow => lua_file!("ratelimit/sliding_window.lua"),
        Algorithm::SlidingLog => lua_file!("ratelimit/sliding_log.lua"),
        Algorithm::TokenBucket => lua_file!("ratelimit/token_bucket.lua"),
        Algorithm::Gcra => lua_file!("ratelimit/gcra.lua"),
        Algorithm::Concurrency => lua_file!("ratelimit/concurrency.lua"),
    }
}

/// A rule's own limits (or a plugin rule's fallback): its name is the rule's.
const FIXED: Recipe = Recipe::new(
    "ratelimit <app>/<rule>",
    &[CLOCK, PRELUDE],
    Block::generated(
        "the blocks of its limits' algorithms (`ratelimit/<algorithm>.lua`), then a main calling each with the limit's numbers as literals",
    ),
);

/// Limits a plugin chose per request: see `DYNAMIC_SCRIPTS`.
const DECIDED: Recipe = Recipe::new(
    "ratelimit plugin-decided[ <algorithm>]",
    &[CLOCK, PRELUDE],
    Block::generated(
        "the blocks of every windowed algorithm (or of the one named), `ALGS` (code → function), then `ratelimit/decided.lua`",
    ),
);

const RELEASE: Recipe = Recipe::new(
    "ratelimit release-lease",
    &[CLOCK],
    lua_file!("ratelimit/release_lease.lua"),
);

/// The recipes, for the `compile` module doc.
#[cfg(test)]
pub(super) const RECIPES: &[Recipe<'static>] = &[FIXED, DECIDED, RELEASE];

/// The files the generated bodies are made of.
#[cfg(test)]
pub(super) const GENERATED_FROM: &[Block<'static>] = &[
    lua_file!("ratelimit/fixed_window.lua"),
    lua_file!("ratelimit/sliding_window.lua"),
    lua_file!("ratelimit/sliding_log.lua"),
    lua_file!("ratelimit/token_bucket.lua"),
    lua_file!("ratelimit/gcra.lua"),
    lua_file!("ratelimit/concurrency.lua"),
    DECIDED_MAIN,
];

/// The release script is the same for every concurrency rule: built and checked once.
static RELEASE_SCRIPT: LazyLock<Arc<Script>> = LazyLock::new(|| assemble(&RELEASE));

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
    let mut body = String::with_capacity(16 * 1024);
    push_algorithms(&mut body, algs.iter().copied());
    let table: Vec<String> = algs
        .iter()
        .map(|a| format!("{} = {}", a.key_code(), a.name()))
        .collect();
    let _ = writeln!(body, "local ALGS = {{ {} }}", table.join(", "));
    body.push_str(DECIDED_MAIN.text);
    DECIDED.assemble_as(name, &body)
}

/// The blocks of `algs`, each followed by an empty line (as `assemble` joins includes).
fn push_algorithms(body: &mut String, algs: impl Iterator<Item = Algorithm>) {
    for alg in algs {
        body.push_str(algorithm_block(alg).text);
        body.push('\n');
    }
}

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
    /// The same limits deciding a batch of calls in one script call, in order (`store::batch`,
    /// `Layout::Packed`): KEYS are each call's keys of `subs` one after the other, `ARGV[i]`
    /// call i's cost; the reply is `{ packed, i, error, … }`: [`REPLY_WIDTH`] numbers per call
    /// packed as little-endian doubles (what the per-call script replies, or `-1` and zeros),
    /// then the index and error of each call that failed. None for rules with a concurrency
    /// limit.
    pub batch: Option<Arc<Script>>,
}

/// The elements of a rate-limit script's reply (see `CompiledRateLimit`), and the numbers of
/// each call in a batch script's packed reply.
pub const REPLY_WIDTH: usize = 5;

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
        let mut v: Vec<Arc<Script>> = self
            .fixed
            .iter()
            .flat_map(|f| std::iter::once(f.script.clone()).chain(f.batch.clone()))
            .collect();
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
                        "STRING of 32 bytes, struct.pack('<dddd', w, c, p, l): window number, two counts and the newest admission's time, expires after two windows (a HASH {w, c, p, l} of earlier builds is read and replaced)",
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
        let what = if rl.plugin.is_some() { "fallback " } else { "" };
        let name = format!("ratelimit {what}{}/{}", rule.app, rule.name);
        let script = fixed_script(&name, &fixed_limits);
        let batch = batch_script(&name, &fixed_limits);
        for s in std::iter::once(&script).chain(&batch) {
            luacheck::check(&s.name, &s.source).map_err(|e| {
                format!(
                    "internal error: the generated script for rule `{}` fails the Lua 5.1 check: {e}",
                    rule.name
                )
            })?;
        }
        Some(FixedLimits {
            script,
            batch,
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
        luacheck::check_builtin([RELEASE_SCRIPT.as_ref()])?;
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

/// The script of a rule's limits, named `name` (see `FIXED`).
pub(super) fn fixed_script(name: &str, limits: &[Limit]) -> Arc<Script> {
    let body = generate(limits, false);
    FIXED.assemble_as(name, &body)
}

/// The batch variant of a rule's script (see `FixedLimits::batch`), or None for a rule with a
/// concurrency limit (its lease id and the release of a lost grant are per call).
pub(super) fn batch_script(name: &str, limits: &[Limit]) -> Option<Arc<Script>> {
    if limits.iter().any(|l| l.algorithm == Algorithm::Concurrency) {
        return None;
    }
    let body = generate(limits, true);
    Some(FIXED.assemble_as(&format!("{name} batch"), &body))
}

/// The generated body of a rule's script: the algorithms its limits use, then a main with the
/// limits as literal constants. `batched`: a main that decides one decision per ARGV entry,
/// in order (see `FixedLimits::batch`).
fn generate(limits: &[Limit], batched: bool) -> String {
    let mut s = String::with_capacity(8 * 1024);
    push_algorithms(
        &mut s,
        Algorithm::ALL
            .into_iter()
            .filter(|alg| limits.iter().any(|l| l.algorithm == *alg)),
    );
    if batched {
        let _ = writeln!(
            s,
            "-- KEYS: per decision, the keys of the limits in order ({} each); ARGV[i]: decision i's cost",
            limits.len()
        );
        s.push_str(
            "-- returns { packed, failed decision's index, its error, ... }: `packed` holds, per decision, its five\n\
             -- numbers (allowed, reported limit index, remaining, reset_after_ms, retry_after_ms) as little-endian\n\
             -- doubles; a decision whose Redis call failed has -1, 0, 0, 0, 0 there and its error after (the\n\
             -- other decisions stand)\n",
        );
    } else {
        s.push_str(
            "-- KEYS: the keys of the limits in order (concurrency: leases, units held); ARGV[1]: cost; ARGV[2]: lease id (concurrency only)\n",
        );
        s.push_str(
            "-- returns {allowed, reported limit index, remaining, reset_after_ms, retry_after_ms}\n",
        );
        s.push_str("local cost = tonumber(ARGV[1])\n");
    }
    // A fixed window's time is its key's PTTL: a rule of fixed windows only reads no clock,
    // which saves a TIME call (a quarter of the script's Redis calls) on every decision.
    // A batch reads the clock once: its decisions are taken at one instant, in order, as
    // sequential calls within the same microsecond would be.
    if limits.iter().all(|l| l.algorithm == Algorithm::FixedWindow) {
        s.push_str("local now = 0 -- fixed windows read no clock\n");
    } else {
        s.push_str("local now = now_ms()\n");
    }
    if batched {
        // `one` is defined once per batch; `k` is the offset of its decision's keys in KEYS.
        // It returns the five numbers (or raises), which go straight into the flat reply.
        s.push_str("local function one(k, cost)\n  ");
        push_decision(&mut s, limits, "k + ", false);
        s.push_str("end\n");
        // The numbers go out packed in one string: the engine's Redis client parses one bulk
        // string per batch instead of five integers per decision (most of a batch's parsing).
        // `out` is made at its full size at once (zeros from `string.byte`) instead of grown
        // by rehashing; both it and `unpack` push every value on Lua's stack, within what
        // `batch::MAX_CALLS` allows for.
        let _ = writeln!(
            s,
            "local out, failed = {{ string.byte(string.rep('\\0', {REPLY_WIDTH} * #ARGV), 1, -1) }}, nil\n\
             for i = 1, #ARGV do\n\
             \x20 local ok, r, index, remaining, reset, retry = pcall(one, (i - 1) * {}, tonumber(ARGV[i]))\n\
             \x20 local o = {REPLY_WIDTH} * (i - 1)\n\
             \x20 if ok then\n\
             \x20   out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = r, index, remaining, reset, retry\n\
             \x20 else\n\
             \x20   out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = -1, 0, 0, 0, 0\n\
             \x20   failed = failed or {{}}\n\
             \x20   failed[#failed + 1] = i\n\
             \x20   failed[#failed + 1] = {FAILED_MESSAGE}\n\
             \x20 end\n\
             end\n\
             local packed = struct.pack(string.rep('<d', #out), unpack(out))\n\
             if failed then return {{ packed, unpack(failed) }} end\n\
             return {{ packed }}",
            limits.len()
        );
    } else {
        push_decision(&mut s, limits, "", true);
    }
    s
}

/// The `return` of one decision: the limits' algorithms called with their numbers as literals,
/// their keys as `KEYS[<offset><n>]`. `table`: the reply's five numbers in a table (a script's
/// reply), else as values (a batch's `one`).
fn push_decision(s: &mut String, limits: &[Limit], offset: &str, table: bool) {
    let (open, close) = if table { ("{ ", " }") } else { ("", "") };
    // One limit (the common rule): no table of results to combine (see `decide_one`).
    if let [l] = limits
        && l.algorithm != Algorithm::Concurrency
    {
        let _ = writeln!(
            s,
            "return {open}decide_one({}(KEYS[{offset}1], {}, {}, {}, cost, now)){close}",
            l.algorithm.name(),
            l.limit,
            l.window_ms(),
            l.burst
        );
        return;
    }
    let _ = writeln!(s, "return {open}decide({{");
    // KEYS follow `limit_subs`: one per limit, a concurrency limit's second key after its first.
    let mut k = 0;
    for l in limits {
        k += 1;
        let key = k;
        let extra = if l.algorithm == Algorithm::Concurrency {
            k += 1;
            format!(", ARGV[2], KEYS[{offset}{k}]")
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "  {{ {}(KEYS[{offset}{key}], {}, {}, {}, cost, now{extra}) }},",
            l.algorithm.name(),
            l.limit,
            l.window_ms(),
            l.burst
        );
    }
    let _ = writeln!(s, "}}){close}");
}
