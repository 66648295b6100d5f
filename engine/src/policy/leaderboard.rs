//! `leaderboard:` rules: what the YAML may say, the validated model, and the checks between.
//!
//! A leaderboard rule serves boards at `/v1/leaderboards/{app}/{rule}/{board}`: one sorted
//! set per board and period ([docs/leaderboard.md](../../../docs/leaderboard.md)). Every
//! bound a script depends on is decided here: members per board (`max_size`), entries per
//! page (`max_page`), periods an aggregate may span (`keep` + 1), the largest score
//! (`max_score`, and with `ties: first` the 32 score bits of the encoding).

use std::path::Path;
use std::time::Duration;

use marked_yaml::{Node, Spanned};
use schemars::JsonSchema;
use serde::Deserialize;

use super::diagnostic::Location;
use super::ir::PluginRef;
use super::period::{Period, PeriodText};
use super::raw::{DurationText, RawPluginRef};
use super::validate::{Validator, loc};

/// A `leaderboard` block, served at `/v1/leaderboards/{app}/{rule}/{board}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLeaderboard {
    /// `none` (one all-time board, the default), `day`, `week` (ISO, Monday start), `month`
    /// (UTC calendar periods), or a duration of whole seconds (fixed periods from the epoch).
    #[serde(default)]
    #[schemars(with = "Option<PeriodText>")]
    pub period: Option<Spanned<String>>,
    /// Closed periods kept readable (`?period=previous|<label>`, aggregates) after they
    /// end (default 1, at most 400); a period's board expires `keep` periods after its end.
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 0))]
    pub keep: Option<Spanned<i64>>,
    /// How a submit changes a member's score: `best` (kept only if better, the default),
    /// `latest` (replaced) or `sum` (added).
    #[serde(default)]
    #[schemars(with = "Option<UpdateName>")]
    pub update: Option<Spanned<String>>,
    /// `desc` (higher is better, the default) or `asc` (lower is better: times, golf).
    #[serde(default)]
    #[schemars(with = "Option<OrderName>")]
    pub order: Option<Spanned<String>>,
    /// `shared` (equal scores share a rank, 1-2-2-4; the default) or `first` (equal scores
    /// rank by who reached them first; integer scores 0 … 4294967295).
    #[serde(default)]
    #[schemars(with = "Option<TiesName>")]
    pub ties: Option<Spanned<String>>,
    /// Members a board keeps; after each submit the worst beyond are dropped (default 10000,
    /// at most 1000000).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub max_size: Option<Spanned<i64>>,
    /// Entries one read may return: a top page's `limit`, 2·`k`+1 around a member (default
    /// 100, at most 1000).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub max_page: Option<Spanned<i64>>,
    /// The largest absolute score a submit (or a sum) may reach; beyond is a 400 (default and
    /// ceiling: 4294967295 with `ties: first`, 9007199254740992 otherwise). With `ties: first`
    /// the bits it does not need go to the time: a smaller `max_score` orders ties finer.
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub max_score: Option<Spanned<i64>>,
    /// How long an aggregate over several periods is cached before it is computed again
    /// (default `5s`, at most `1h`).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub aggregate_cache: Option<Spanned<String>>,
    /// A plugin whose `leaderboard` hook sees each submit first (anti-cheat): it accepts it,
    /// rejects it (422 `score-rejected`) or replaces its score (`max_score` still applies).
    #[serde(default)]
    #[schemars(with = "Option<RawPluginRef>")]
    pub plugin: Option<Spanned<RawPluginRef>>,
    /// What a submit does when the plugin fails: `fail` (500 `plugin-failed`, the default) or
    /// `accept` (recorded as sent).
    #[serde(default)]
    #[schemars(with = "Option<LeaderboardFallbackName>")]
    pub fallback: Option<Spanned<String>>,
}

/// Schema-only: the `fallback` values.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum LeaderboardFallbackName {
    Fail,
    Accept,
}

/// What a submit does when the rule's plugin fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeaderboardFallback {
    /// 500 `plugin-failed`; nothing is recorded.
    #[default]
    Fail,
    /// Recorded as sent, as if the rule had no plugin.
    Accept,
}

/// Schema-only: the `update` values.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum UpdateName {
    Best,
    Latest,
    Sum,
}

/// Schema-only: the `order` values.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum OrderName {
    Desc,
    Asc,
}

/// Schema-only: the `ties` values.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum TiesName {
    Shared,
    First,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    Best,
    Latest,
    Sum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Desc,
    Asc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ties {
    Shared,
    First,
}

/// A validated `leaderboard` rule.
#[derive(Debug, Clone)]
pub struct Leaderboard {
    pub period: Period,
    pub keep: u64,
    pub update: Update,
    pub order: Order,
    pub ties: Ties,
    pub max_size: u64,
    pub max_page: u64,
    pub max_score: u64,
    pub aggregate_cache: Duration,
    /// The plugin whose `leaderboard` hook decides each submit.
    pub plugin: Option<PluginRef>,
    pub fallback: LeaderboardFallback,
    pub location: Location,
}

/// `ties: first` puts the score in the upper 32 of a double's 53 integer bits and the time
/// in the lower 21 (see `compile::leaderboard`): the largest score it can hold exactly.
pub const FIRST_MAX_SCORE: u64 = (1 << 32) - 1;
/// Without the encoding, scores are doubles: integers stay exact up to 2^53.
pub const SHARED_MAX_SCORE: u64 = 1 << 53;
pub const MAX_KEEP: u64 = 400;
pub const MAX_MAX_SIZE: u64 = 1_000_000;
pub const MAX_MAX_PAGE: u64 = 1000;
const DEFAULT_KEEP: u64 = 1;
const DEFAULT_MAX_SIZE: u64 = 10_000;
const DEFAULT_MAX_PAGE: u64 = 100;
const DEFAULT_AGGREGATE_CACHE: Duration = Duration::from_secs(5);
const MAX_AGGREGATE_CACHE: Duration = Duration::from_secs(3600);

impl Validator {
    pub(super) fn leaderboard(
        &mut self,
        path: &Path,
        rule: &str,
        raw: &Spanned<RawLeaderboard>,
        body: &Node,
    ) -> Option<Leaderboard> {
        let before = self.error_count();
        let at = loc(path, raw.span());
        let period = match &raw.period {
            None => Some(Period::None),
            Some(p) => self.period(path, "period", p),
        };
        let keep = match &raw.keep {
            None => DEFAULT_KEEP,
            Some(k) if **k < 0 || k.unsigned_abs() > MAX_KEEP => {
                self.err(
                    &loc(path, k.span()),
                    format!("`keep` must be 0 … {MAX_KEEP}, not {}", **k),
                );
                DEFAULT_KEEP
            }
            Some(k) => {
                if period == Some(Period::None) {
                    self.err(
                        &loc(path, k.span()),
                        format!("rule `{rule}`: `keep` applies to boards with a `period`; a `period: none` board never closes"),
                    );
                }
                k.unsigned_abs()
            }
        };
        let update = self.word(
            path,
            "update",
            &raw.update,
            &[
                ("best", Update::Best),
                ("latest", Update::Latest),
                ("sum", Update::Sum),
            ],
            Update::Best,
        );
        let order = self.word(
            path,
            "order",
            &raw.order,
            &[("desc", Order::Desc), ("asc", Order::Asc)],
            Order::Desc,
        );
        let ties = self.word(
            path,
            "ties",
            &raw.ties,
            &[("shared", Ties::Shared), ("first", Ties::First)],
            Ties::Shared,
        );
        let max_size = self.lb_bounded(
            path,
            "max_size",
            &raw.max_size,
            DEFAULT_MAX_SIZE,
            MAX_MAX_SIZE,
        );
        let max_page = self.lb_bounded(
            path,
            "max_page",
            &raw.max_page,
            DEFAULT_MAX_PAGE,
            MAX_MAX_PAGE,
        );
        let ceiling = match ties {
            Ties::First => FIRST_MAX_SCORE,
            Ties::Shared => SHARED_MAX_SCORE,
        };
        let max_score = match &raw.max_score {
            None => ceiling,
            Some(m) if **m < 1 || m.unsigned_abs() > ceiling => {
                let why = match ties {
                    Ties::First => {
                        "with `ties: first` a score has at most 32 bits (at least 21 of a double's 53 order equal scores by time)"
                    }
                    Ties::Shared => "scores are doubles, exact integers only up to 2^53",
                };
                self.err(
                    &loc(path, m.span()),
                    format!("`max_score` must be 1 … {ceiling}, not {}: {why}", **m),
                );
                ceiling
            }
            Some(m) => m.unsigned_abs(),
        };
        let aggregate_cache = match &raw.aggregate_cache {
            None => DEFAULT_AGGREGATE_CACHE,
            Some(d) => match self.duration(path, "aggregate_cache", d) {
                Some(v) if v > MAX_AGGREGATE_CACHE => {
                    self.err(&loc(path, d.span()), "`aggregate_cache` must be at most 1h");
                    DEFAULT_AGGREGATE_CACHE
                }
                Some(v) => v,
                None => DEFAULT_AGGREGATE_CACHE,
            },
        };
        let (plugin, proceeds) = self.body_hook(
            path,
            rule,
            "leaderboard",
            "the submit (board, member, score)",
            "accept",
            raw.plugin.as_ref(),
            raw.fallback.as_ref(),
            body,
        );
        let fallback = if proceeds {
            LeaderboardFallback::Accept
        } else {
            LeaderboardFallback::Fail
        };
        if self.error_count() > before {
            return None;
        }
        Some(Leaderboard {
            period: period?,
            keep,
            update,
            order,
            ties,
            max_size,
            max_page,
            max_score,
            aggregate_cache,
            plugin,
            fallback,
            location: at,
        })
    }

    /// One of a few words, or a diagnostic naming them.
    fn word<T: Copy>(
        &mut self,
        path: &Path,
        field: &str,
        raw: &Option<Spanned<String>>,
        words: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(w) = raw else { return default };
        if let Some((_, v)) = words.iter().find(|(name, _)| *name == w.as_str()) {
            return *v;
        }
        let mut names: Vec<String> = words.iter().map(|(n, _)| format!("`{n}`")).collect();
        let last = names.pop().unwrap_or_default();
        let expected = if names.is_empty() {
            last
        } else {
            format!("{} or {last}", names.join(", "))
        };
        self.err(
            &loc(path, w.span()),
            format!("unknown `{field}` `{}`; expected {expected}", w.as_str()),
        );
        default
    }

    fn lb_bounded(
        &mut self,
        path: &Path,
        field: &str,
        n: &Option<Spanned<i64>>,
        default: u64,
        max: u64,
    ) -> u64 {
        let Some(n) = n else { return default };
        match self.positive(path, field, n) {
            Some(v) if v > max => {
                self.err(
                    &loc(path, n.span()),
                    format!("`{field}` {v} is above {max}"),
                );
                default
            }
            Some(v) => v,
            None => default,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::{Leaderboard, LeaderboardFallback, Order, Ties, Update};
    use crate::policy::period::Period;
    use crate::policy::{RuleKind, load_sources};

    fn load(block: &str) -> Result<Leaderboard, String> {
        let text = format!("app: a\nrules:\n  lb:\n    leaderboard: {block}\n");
        match load_sources(&[(PathBuf::from("p.yaml"), text)]) {
            Ok(l) => match &l.policy.apps["a"].rules["lb"].kind {
                RuleKind::Leaderboard(b) => Ok(b.clone()),
                other => Err(format!("not a leaderboard: {other:?}")),
            },
            Err(d) => Err(d.to_string()),
        }
    }

    #[test]
    fn defaults_and_settings() {
        let d = load("{}").expect("empty block is valid");
        assert_eq!(d.period, Period::None);
        assert_eq!(
            (d.update, d.order, d.ties),
            (Update::Best, Order::Desc, Ties::Shared)
        );
        assert_eq!(
            (d.max_size, d.max_page, d.max_score),
            (10_000, 100, 1 << 53)
        );
        let s =
            load("{ period: week, keep: 3, update: sum, order: asc, ties: first, max_size: 50 }")
                .expect("valid");
        assert_eq!(
            (s.period, s.keep, s.max_score),
            (Period::Week, 3, (1 << 32) - 1)
        );
        assert_eq!(
            load("{ period: 2s }").expect("valid").period,
            Period::Every(2000)
        );
    }

    #[test]
    fn a_plugin_and_its_fallback() {
        let b =
            load("{ plugin: { name: g, config: { cap: 10 } }, fallback: accept }").expect("valid");
        assert_eq!(b.plugin.expect("a plugin").name, "g");
        assert_eq!(b.fallback, LeaderboardFallback::Accept);
        assert_eq!(
            load("{ plugin: { name: g } }").expect("valid").fallback,
            LeaderboardFallback::Fail
        );
        for (block, says) in [
            (
                "{ fallback: accept }",
                "`fallback` is only used with a `plugin`",
            ),
            (
                "{ plugin: { name: g }, fallback: allow }",
                "unknown `fallback` `allow`",
            ),
            (
                "{ plugin: { name: g, fields: [x] } }",
                "`plugin.fields` does not apply to `leaderboard` rules",
            ),
        ] {
            let e = load(block).expect_err(block);
            assert!(e.contains(says), "{block}: {e}");
        }
    }

    #[test]
    fn bad_settings_are_named() {
        for (block, want) in [
            (
                "{ update: most }",
                "unknown `update` `most`; expected `best`, `latest` or `sum`",
            ),
            ("{ order: up }", "unknown `order` `up`"),
            ("{ ties: random }", "unknown `ties` `random`"),
            ("{ period: fortnight }", "unknown period `fortnight`"),
            ("{ period: 1500ms }", "whole number of seconds"),
            ("{ keep: 2 }", "`keep` applies to boards with a `period`"),
            ("{ period: day, keep: 401 }", "`keep` must be 0 … 400"),
            ("{ max_size: 0 }", "`max_size` must be at least 1"),
            (
                "{ max_size: 1000001 }",
                "`max_size` 1000001 is above 1000000",
            ),
            ("{ max_page: 1001 }", "`max_page` 1001 is above 1000"),
            ("{ ties: first, max_score: 4294967296 }", "at most 32 bits"),
            ("{ aggregate_cache: 2h }", "at most 1h"),
            ("{ size: 3 }", "size"),
        ] {
            let e = load(block).expect_err(block);
            assert!(e.contains(want), "{block}: {e}");
        }
    }
}
