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
//! A double holds integers exactly up to 2^53. A stored score is `score · 2^21 + tiebreak`:
//! the upper **32 bits** are the score (0 … 4294967295), the lower **21 bits** the time the
//! member reached it, counted in the rule's time unit from the start of its period (for
//! `desc`, 2^21 − 1 − time, so earlier is higher). The unit is the period's longest length
//! over 2^21, rounded up ([`time_unit_ms`]): 42 ms for a day, 289 ms for a week, 1278 ms for
//! a month, 1 ms for periods up to 35 minutes; a `period: none` board counts quarter-hours
//! (900 s) from 2026-01-01T00:00:00Z, which lasts until 2085; after that its ties fall back
//! to member order. Two members that reach one score within one unit tie on time too and
//! are ordered by member (Redis' order for equal scores).

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

const SUBMIT: Recipe = Recipe::new("leaderboard submit", INCLUDES, lua_file!("leaderboard/submit.lua"));
const RANK: Recipe = Recipe::new("leaderboard rank", INCLUDES, lua_file!("leaderboard/rank.lua"));
const TOP: Recipe = Recipe::new("leaderboard top", INCLUDES, lua_file!("leaderboard/top.lua"));
const AROUND: Recipe = Recipe::new("leaderboard around", INCLUDES, lua_file!("leaderboard/around.lua"));
const COUNT: Recipe = Recipe::new("leaderboard count", INCLUDES, lua_file!("leaderboard/count.lua"));
const REMOVE: Recipe = Recipe::new("leaderboard remove", INCLUDES, lua_file!("leaderboard/remove.lua"));
const AGGREGATE: Recipe = Recipe::new(
    "leaderboard aggregate",
    INCLUDES,
    lua_file!("leaderboard/aggregate.lua"),
);

/// The recipes, for the `compile` module doc.
#[cfg(test)]
pub(super) const RECIPES: &[Recipe<'static>] = &[SUBMIT, RANK, TOP, AROUND, COUNT, REMOVE, AGGREGATE];

/// Bits of the tiebreak in an encoded score (`ties: first`).
pub const TIE_BITS: u32 = 21;
/// 2^21.
pub const TIE: f64 = (1u64 << TIE_BITS) as f64;
/// Where a `period: none` board's time counts from: 2026-01-01T00:00:00Z.
pub const NONE_EPOCH_MS: i64 = 1_767_225_600_000;
/// A `period: none` board's time unit: a quarter-hour, so 2^21 units last 59.8 years.
pub const NONE_UNIT_MS: u64 = 900_000;

/// The tiebreak's unit: the period's longest length over 2^21, rounded up.
pub fn time_unit_ms(period: Period) -> u64 {
    let longest: u64 = match period {
        Period::None => return NONE_UNIT_MS,
        Period::Day => 86_400_000,
        Period::Week => 7 * 86_400_000,
        Period::Month => 31 * 86_400_000,
        Period::Every(ms) => ms,
    };
    longest.div_ceil(1 << TIE_BITS).max(1)
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
            Ties::First => format!(
                "score · 2^21 + tiebreak (score < 2^32, tiebreak in units of {} ms)",
                time_unit_ms(spec.period)
            ),
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
        for p in [Period::Day, Period::Week, Period::Month, Period::Every(2000), Period::Every(86_400_000 * 366)] {
            let unit = time_unit_ms(p);
            let longest = match p {
                Period::Month => 31 * 86_400_000,
                Period::Week => 7 * 86_400_000,
                Period::Day => 86_400_000,
                Period::Every(ms) => ms,
                Period::None => 0,
            };
            assert!(longest.div_ceil(unit) <= 1 << TIE_BITS, "{p:?}");
        }
        assert_eq!(time_unit_ms(Period::Day), 42);
        assert_eq!(time_unit_ms(Period::Week), 289);
        assert_eq!(time_unit_ms(Period::Month), 1278);
        assert_eq!(time_unit_ms(Period::Every(2000)), 1);
        // The largest score and tiebreak stay below 2^53, so the double is exact.
        let max = ((1u64 << 32) - 1) * (1 << TIE_BITS) + (1 << TIE_BITS) - 1;
        assert_eq!(max, (1u64 << 53) - 1);
        assert_eq!(max as f64 as u64, max);
    }
}
