//! `leaderboard` rules → their Lua scripts and key layout. Pure.
//!
//! Every leaderboard rule shares one checked set of scripts, one per operation; the rule's
//! settings travel in ARGV (prepared once per snapshot). A board's keys are tagged with the
//! board id, so every period of one board and its cached aggregates are one cluster slot:
//! an aggregate over several periods is one script call. Different boards spread over the
//! cluster; a member's ranks across several boards are one call per board.
//!
//! # Ties `first`: the encoding
//!
//! A double holds integers exactly up to 2^53. A stored score is `score · 2^t + tiebreak`:
//! the upper `53 − t` bits are the score, the lower `t` bits the time the member reached it,
//! counted in the rule's time unit from the start of its period (for `desc`, 2^t − 1 − time,
//! so earlier is higher). The split follows `max_score` ([`split`]): the score gets the bits
//! `max_score` needs, the time the rest. By default (`max_score` 4294967295) that is **32
//! score bits and 21 time bits**; `max_score` cannot ask for more than 32, so time always has
//! at least 21. The unit is the period's longest length over 2^t, rounded up
//! ([`time_unit_ms`]): with 21 bits 42 ms for a day, 289 ms for a week, 1278 ms for a month,
//! 1 ms for periods up to 34 minutes. A `period: none` board counts from 2026-01-01T00:00:00Z
//! over a horizon of 2^31 s (68 years, to 2094): with 21 bits its unit is 1024 s, with
//! `max_score: 1000000` (20 score bits, 33 time bits) 250 ms, with `max_score: 1000` 1 ms.
//! Two members that reach one score within one unit tie on time too and are ordered by
//! member (Redis' order for equal scores); after the horizon every time is the last step.

use std::sync::{Arc, LazyLock};

use super::recipe::{Block, Recipe, assemble, lua_file};
use super::{KeySpace, Script, luacheck};
use crate::policy::Rule;
use crate::policy::leaderboard::{Leaderboard, Ties};
use crate::policy::period::Period;

const INCLUDES: &[Block] = &[
    lua_file!("shared/clock.lua"),
    lua_file!("shared/period.lua"),
    lua_file!("leaderboard/prelude.lua"),
];

const SUBMIT: Recipe = Recipe::new(
    "leaderboard submit",
    INCLUDES,
    lua_file!("leaderboard/submit.lua"),
);
const RANK: Recipe = Recipe::new(
    "leaderboard rank",
    INCLUDES,
    lua_file!("leaderboard/rank.lua"),
);
const TOP: Recipe = Recipe::new(
    "leaderboard top",
    INCLUDES,
    lua_file!("leaderboard/top.lua"),
);
const AROUND: Recipe = Recipe::new(
    "leaderboard around",
    INCLUDES,
    lua_file!("leaderboard/around.lua"),
);
const COUNT: Recipe = Recipe::new(
    "leaderboard count",
    INCLUDES,
    lua_file!("leaderboard/count.lua"),
);
const REMOVE: Recipe = Recipe::new(
    "leaderboard remove",
    INCLUDES,
    lua_file!("leaderboard/remove.lua"),
);
const AGGREGATE: Recipe = Recipe::new(
    "leaderboard aggregate",
    INCLUDES,
    lua_file!("leaderboard/aggregate.lua"),
);

/// The recipes, for the `compile` module doc.
#[cfg(test)]
pub(super) const RECIPES: &[Recipe<'static>] =
    &[SUBMIT, RANK, TOP, AROUND, COUNT, REMOVE, AGGREGATE];

/// A double's exact integer bits.
pub const EXACT_BITS: u32 = 53;
/// Where a `period: none` board's time counts from: 2026-01-01T00:00:00Z.
pub const NONE_EPOCH_MS: i64 = 1_767_225_600_000;
/// How long a `period: none` board's tiebreak runs: 2^31 s (68 years).
pub const NONE_HORIZON_MS: u64 = (1 << 31) * 1000;

/// (score bits, time bits) of a `ties: first` rule: the score gets the bits `max_score`
/// needs (at most 32, the loader's ceiling with `ties: first`), the time the rest of 53.
/// Meaningless for `ties: shared`, whose scores are not encoded (time bits 0 there).
pub fn split(max_score: u64) -> (u32, u32) {
    let score = (u64::BITS - max_score.leading_zeros()).max(1);
    (score, EXACT_BITS.saturating_sub(score))
}

/// The tiebreak's unit: the period's longest length over 2^`time_bits`, rounded up.
pub fn time_unit_ms(period: Period, time_bits: u32) -> u64 {
    let longest: u64 = match period {
        Period::None => NONE_HORIZON_MS,
        Period::Day => 86_400_000,
        Period::Week => 7 * 86_400_000,
        Period::Month => 31 * 86_400_000,
        Period::Every(ms) => ms,
    };
    longest.div_ceil(1u64 << time_bits.min(62)).max(1)
}

/// The scripts of leaderboard rules.
#[derive(Debug, Clone)]
pub struct LeaderboardScripts {
    pub submit: Arc<Script>,
    pub rank: Arc<Script>,
    pub top: Arc<Script>,
    pub around: Arc<Script>,
    pub count: Arc<Script>,
    pub remove: Arc<Script>,
    pub aggregate: Arc<Script>,
}

impl LeaderboardScripts {
    pub fn all(&self) -> Vec<Arc<Script>> {
        vec![
            self.submit.clone(),
            self.rank.clone(),
            self.top.clone(),
            self.around.clone(),
            self.count.clone(),
            self.remove.clone(),
            self.aggregate.clone(),
        ]
    }
}

static SCRIPTS: LazyLock<LeaderboardScripts> = LazyLock::new(|| LeaderboardScripts {
    submit: assemble(&SUBMIT),
    rank: assemble(&RANK),
    top: assemble(&TOP),
    around: assemble(&AROUND),
    count: assemble(&COUNT),
    remove: assemble(&REMOVE),
    aggregate: assemble(&AGGREGATE),
});

/// A board's keys, by what they hold (the sub of `KeySpace::key`, under the board's tag).
pub mod sub {
    /// The board of period `idx`.
    pub fn period(idx: i64) -> String {
        format!("p:{idx}")
    }
    /// The cached aggregate of the `n` periods up to `idx`.
    pub fn aggregate(n: u64, idx: i64) -> String {
        format!("agg:{n}:{idx}")
    }
}

#[derive(Debug, Clone)]
pub struct CompiledLeaderboard {
    pub scripts: LeaderboardScripts,
}

pub fn compile(_rule: &Rule, _spec: &Leaderboard) -> Result<CompiledLeaderboard, String> {
    let scripts = SCRIPTS.clone();
    luacheck::check_builtin(scripts.all().iter().map(|s| s.as_ref()))?;
    Ok(CompiledLeaderboard { scripts })
}

impl CompiledLeaderboard {
    pub fn scripts(&self) -> Vec<Arc<Script>> {
        self.scripts.all()
    }

    /// The keys with what each holds and how long.
    pub fn key_layout(&self, keys: &KeySpace, spec: &Leaderboard) -> Vec<(String, String)> {
        let t = |sub: &str| keys.template(sub).replace("<id>", "<board>");
        let scores = match spec.ties {
            Ties::First => {
                let (score, time) = split(spec.max_score);
                format!(
                    "score · 2^{time} + tiebreak ({score} score bits, {time} time bits in units of {} ms)",
                    time_unit_ms(spec.period, time)
                )
            }
            Ties::Shared => "score".to_string(),
        };
        let life = match spec.period {
            Period::None => "no TTL: bounded by max_size".to_string(),
            _ => format!(
                "expires {} period(s) after its period ends (set on every submit)",
                spec.keep
            ),
        };
        vec![
            (
                t("p:<period index>"),
                format!(
                    "ZSET member → {scores}, at most max_size ({}) members (the worst trimmed after each submit); {life}",
                    spec.max_size
                ),
            ),
            (
                t("agg:<n>:<period index>"),
                format!(
                    "ZSET member → the last n periods combined (n ≤ keep + 1), at most max_size members; expires aggregate_cache ({} ms) after it is computed",
                    spec.aggregate_cache.as_millis()
                ),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_period_fits_its_tiebreak() {
        assert_eq!(split((1 << 32) - 1), (32, 21));
        assert_eq!(split(1_000_000), (20, 33));
        assert_eq!(split(1), (1, 52));
        for p in [
            Period::None,
            Period::Day,
            Period::Week,
            Period::Month,
            Period::Every(2000),
            Period::Every(86_400_000 * 366),
        ] {
            for bits in [21, 33, 52] {
                let unit = time_unit_ms(p, bits);
                let longest = match p {
                    Period::Month => 31 * 86_400_000,
                    Period::Week => 7 * 86_400_000,
                    Period::Day => 86_400_000,
                    Period::Every(ms) => ms,
                    Period::None => NONE_HORIZON_MS,
                };
                assert!(longest.div_ceil(unit) <= 1 << bits, "{p:?} {bits}");
            }
        }
        assert_eq!(time_unit_ms(Period::Day, 21), 42);
        assert_eq!(time_unit_ms(Period::Week, 21), 289);
        assert_eq!(time_unit_ms(Period::Month, 21), 1278);
        assert_eq!(time_unit_ms(Period::Every(2000), 21), 1);
        assert_eq!(time_unit_ms(Period::None, 21), 1_024_000);
        assert_eq!(time_unit_ms(Period::None, 33), 250);
        assert_eq!(time_unit_ms(Period::None, split(1000).1), 1);
        // The largest score and tiebreak stay below 2^53, so the double is exact.
        for max in [(1u64 << 32) - 1, 1_000_000, 1] {
            let (s, t) = split(max);
            assert!(max < 1 << s);
            let top = max * (1 << t) + (1 << t) - 1;
            assert!(top < 1 << 53);
            assert_eq!(top as f64 as u64, top);
        }
    }
}
