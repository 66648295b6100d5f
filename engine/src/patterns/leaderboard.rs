//! Leaderboards at request time: request → board key(s) → one script call → entries.
//!
//! Every call names its period's board before it runs, so the engine computes the current
//! period from its own clock, and the script checks it against Redis TIME (the one clock):
//! when they differ (a call at a period's boundary, a skewed host) the script writes nothing
//! and answers Redis' period, and the call is made once more with that period's keys. Scores
//! leave here decoded: with `ties: first` the stored value carries a tiebreak
//! (`compile::leaderboard`), which no answer shows.

use std::sync::Arc;

use tokio::task::JoinSet;

use metrics::Counter;
use redis::Value;

use super::reply::{self, Items, ReplyError};
use super::{InputError, MAX_ID_BYTES, check_id};
use crate::compile::leaderboard::{LeaderboardScripts, NONE_EPOCH_MS, split, sub, time_unit_ms};
use crate::compile::{CompiledLeaderboard, KeySpace, Script};
use crate::plugin::{LeaderboardDecision, PluginBinding, PluginError, RequestFacts, Submission};
use crate::policy::Rule;
use crate::policy::leaderboard::{Leaderboard, LeaderboardFallback, Order, Ties, Update};
use crate::policy::period::Period;
use crate::store::{Store, StoreError};

/// Boards one `_ranks` request may name: one script call each.
pub const MAX_BOARDS_PER_REQUEST: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum LeaderboardError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{0}")]
    ScoreOutOfRange(String),
    #[error("`{0}` is not on this board")]
    NotOnBoard(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unexpected reply of the leaderboard {0} script: {1}")]
    Reply(&'static str, ReplyError),
    /// The rule's plugin refused the submit; its reason.
    #[error("the rule's plugin rejected the score: {0}")]
    Rejected(String),
    #[error(transparent)]
    Plugin(PluginError),
}

/// Which period a read is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodSel {
    Current,
    Previous,
    Index(i64),
}

/// One member's place.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub member: String,
    pub score: f64,
    pub rank: u64,
}

/// What a submit did.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub period: String,
    pub score: f64,
    /// None when the board is full and this member's score is not among its best.
    pub rank: Option<u64>,
    pub improved: bool,
    /// The score the rule's plugin recorded instead of the one sent.
    pub adjusted: Option<f64>,
    /// The rule's plugin failed and its `fallback: accept` recorded the score as sent.
    pub fallback: bool,
}

/// A page of a board.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub period: String,
    /// Members on the board.
    pub count: u64,
    pub entries: Vec<Entry>,
}

/// An aggregate over several periods.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// Labels of the periods combined, newest first.
    pub periods: Vec<String>,
    pub count: u64,
    pub member: Option<Entry>,
    pub entries: Vec<Entry>,
}

struct Counters {
    submitted: Counter,
    improved: Counter,
    refused: Counter,
    read: Counter,
    removed: Counter,
    aggregated: Counter,
    retried: Counter,
    failed: Counter,
    rejected: Counter,
    adjusted: Counter,
    plugin_failed: Counter,
}

impl Counters {
    fn new(app: &str, rule: &str) -> Self {
        let c = |op: &'static str| metrics::counter!("patternd_leaderboard_requests_total", "app" => app.to_string(), "rule" => rule.to_string(), "outcome" => op);
        Self {
            submitted: c("submitted"),
            improved: c("improved"),
            refused: c("refused"),
            read: c("read"),
            removed: c("removed"),
            aggregated: c("aggregated"),
            retried: metrics::counter!("patternd_leaderboard_period_retries_total", "app" => app.to_string(), "rule" => rule.to_string()),
            failed: c("failed"),
            rejected: c("rejected"),
            adjusted: c("adjusted"),
            plugin_failed: metrics::counter!("patternd_plugin_failures_total", "app" => app.to_string(), "rule" => rule.to_string()),
        }
    }
}

/// A leaderboard rule ready to serve.
pub struct LeaderboardRule {
    pub app: String,
    pub rule: String,
    keys: KeySpace,
    scripts: LeaderboardScripts,
    pub spec: Leaderboard,
    /// ARGV[1..4] of every call: period kind, length, ties, order.
    fixed: [String; 4],
    update_arg: &'static str,
    max_size_arg: String,
    max_score_arg: String,
    unit_arg: String,
    cache_arg: String,
    counters: Counters,
    /// The rule's plugin (its name, for the log) and its binding: the `leaderboard` hook.
    plugin: Option<(String, PluginBinding)>,
}

/// A score as it travels to Redis: the shortest text that reads back as the same double.
fn score_text(s: f64) -> String {
    if s.fract() == 0.0 && s.abs() < 9.007_199_254_740_992e15 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

fn check(what: &str, id: &str) -> Result<(), LeaderboardError> {
    check_id(id).map_err(|e| match e {
        InputError::EmptyId => {
            LeaderboardError::BadRequest(format!("the {what} must not be empty"))
        }
        InputError::IdTooLong(n) => LeaderboardError::BadRequest(format!(
            "the {what} is {n} bytes; at most {MAX_ID_BYTES} are allowed"
        )),
        other => LeaderboardError::Input(other),
    })
}

impl LeaderboardRule {
    pub fn new(
        rule: &Rule,
        spec: &Leaderboard,
        compiled: &CompiledLeaderboard,
        keys: &KeySpace,
        plugin: Option<(String, PluginBinding)>,
    ) -> Self {
        let (kind, len) = spec.period.lua_args();
        let (_, time_bits) = split(spec.max_score);
        Self {
            app: rule.app.clone(),
            rule: rule.name.clone(),
            keys: keys.clone(),
            scripts: compiled.scripts.clone(),
            spec: spec.clone(),
            fixed: [
                kind.to_string(),
                len.to_string(),
                match spec.ties {
                    Ties::First => (1u64 << time_bits).to_string(),
                    Ties::Shared => "0".to_string(),
                },
                if spec.order == Order::Desc { "1" } else { "0" }.to_string(),
            ],
            update_arg: match spec.update {
                Update::Best => "best",
                Update::Latest => "latest",
                Update::Sum => "sum",
            },
            max_size_arg: spec.max_size.to_string(),
            max_score_arg: spec.max_score.to_string(),
            unit_arg: time_unit_ms(spec.period, time_bits).to_string(),
            cache_arg: spec.aggregate_cache.as_millis().max(1).to_string(),
            counters: Counters::new(&rule.app, &rule.name),
            plugin,
        }
    }

    /// True when the rule's plugin wants the request facts (the handler builds them only then).
    pub fn wants_facts(&self) -> bool {
        self.plugin.is_some()
    }

    /// Asks the rule's plugin, if any, about a submit (already checked against the rule).
    /// Returns the score to record, whether the plugin replaced it, and whether the plugin
    /// failed and `fallback: accept` let the score through as sent.
    fn decide(
        &self,
        facts: Option<RequestFacts>,
        board: &str,
        member: &str,
        score: f64,
    ) -> Result<(f64, bool, bool), LeaderboardError> {
        let Some((name, binding)) = &self.plugin else {
            return Ok((score, false, false));
        };
        let mut facts = facts.unwrap_or_default();
        facts.id = member.to_string();
        let sub = Submission {
            app: self.app.clone(),
            rule: self.rule.clone(),
            board: board.to_string(),
            member: member.to_string(),
            score,
        };
        match binding.leaderboard(&facts, &sub) {
            Ok(LeaderboardDecision::Accept) => Ok((score, false, false)),
            Ok(LeaderboardDecision::Score(s)) => {
                self.counters.adjusted.increment(1);
                Ok((s, true, false))
            }
            Ok(LeaderboardDecision::Reject(reason)) => {
                self.counters.rejected.increment(1);
                Err(LeaderboardError::Rejected(reason))
            }
            Err(e) => {
                self.counters.plugin_failed.increment(1);
                tracing::warn!(app = %self.app, rule = %self.rule, plugin = %name, error = %e, "leaderboard plugin failed");
                match self.spec.fallback {
                    LeaderboardFallback::Accept => Ok((score, false, true)),
                    LeaderboardFallback::Fail => Err(LeaderboardError::Plugin(e)),
                }
            }
        }
    }

    pub fn label(&self, idx: i64) -> String {
        self.spec.period.label(idx)
    }

    /// `current`, `previous` or a period's label, as `?period=` gives it.
    pub fn parse_period(&self, text: Option<&str>) -> Result<PeriodSel, LeaderboardError> {
        match text {
            None | Some("current") => Ok(PeriodSel::Current),
            Some("previous") if self.spec.period == Period::None => Err(LeaderboardError::BadRequest(
                "this board has no periods (`period: none`), so no `previous`".into(),
            )),
            Some("previous") => Ok(PeriodSel::Previous),
            Some(label) => self.spec.period.parse_label(label).map(PeriodSel::Index).ok_or_else(|| {
                LeaderboardError::BadRequest(format!(
                    "`period` must be `current`, `previous` or a period's label such as `{}`, not `{label}`",
                    self.label(self.spec.period.guess_now())
                ))
            }),
        }
    }

    /// Checks a submitted score against the rule: finite, within `max_score`, and with
    /// `ties: first` a whole number from 0 (the score bits of the encoding).
    pub fn check_score(&self, score: f64) -> Result<(), LeaderboardError> {
        let max = self.spec.max_score as f64;
        if !score.is_finite() {
            return Err(LeaderboardError::BadRequest(
                "`score` must be a finite number".into(),
            ));
        }
        if self.spec.ties == Ties::First {
            if score.fract() != 0.0 || score < 0.0 {
                return Err(LeaderboardError::ScoreOutOfRange(format!(
                    "`score` {score} is not a whole number from 0: with `ties: first` a score is an integer 0 … {} (its bits and the time's share a double's 53)",
                    self.spec.max_score
                )));
            }
            if self.spec.update == Update::Sum && score < 0.0 {
                return Err(LeaderboardError::ScoreOutOfRange(
                    "`score` must not be negative".into(),
                ));
            }
        }
        if score.abs() > max {
            return Err(LeaderboardError::ScoreOutOfRange(format!(
                "`score` {score_t} is beyond the rule's max_score {max_t}{why}",
                score_t = score_text(score),
                max_t = self.spec.max_score,
                why = if self.spec.ties == Ties::First {
                    let (bits, time) = split(self.spec.max_score);
                    format!(
                        " (with `ties: first` a score has {bits} bits and the time it was reached {time}, of a double's 53)"
                    )
                } else {
                    String::new()
                }
            )));
        }
        Ok(())
    }

    fn failed<T>(&self, r: Result<T, StoreError>) -> Result<T, LeaderboardError> {
        r.map_err(|e| {
            self.counters.failed.increment(1);
            LeaderboardError::Store(e)
        })
    }

    /// Runs `script` on the board(s) of period `sel`: `keys(idx)` names the keys of period
    /// `idx` and `args` are the script's own ARGV (from 6). A period marker in the reply
    /// (the engine's clock and Redis' disagree about the current period) makes one more call
    /// with Redis' period. Returns the period index used and the reply after the marker.
    async fn run<K>(
        &self,
        store: &Store,
        script: &Script,
        name: &'static str,
        sel: PeriodSel,
        keys: K,
        args: &[&[u8]],
    ) -> Result<(i64, Vec<Value>), LeaderboardError>
    where
        K: Fn(i64) -> Vec<String>,
    {
        let mut current = self.spec.period.guess_now();
        for attempt in 0..2 {
            let (target, check) = match (self.spec.period, sel) {
                (Period::None, _) => (0, String::new()),
                (_, PeriodSel::Current) => (current, current.to_string()),
                (_, PeriodSel::Previous) => (current - 1, current.to_string()),
                (_, PeriodSel::Index(i)) => (i, String::new()),
            };
            let mut argv: Vec<&[u8]> = Vec::with_capacity(5 + args.len());
            argv.extend(self.fixed.iter().map(|s| s.as_bytes()));
            argv.push(check.as_bytes());
            argv.extend_from_slice(args);
            let reply: Vec<Value> = self.failed(store.eval(script, &keys(target), &argv).await)?;
            let mut items = Items::new(reply);
            let tag = items
                .next_text()
                .map_err(|e| LeaderboardError::Reply(name, e))?;
            if tag == "period" {
                let actual = items
                    .next_int()
                    .map_err(|e| LeaderboardError::Reply(name, e))?;
                self.counters.retried.increment(1);
                if attempt == 0 {
                    current = actual;
                    continue;
                }
                break;
            }
            let mut rest = vec![Value::SimpleString(tag)];
            rest.extend(items.rest());
            return Ok((target, rest));
        }
        Err(LeaderboardError::Reply(
            name,
            ReplyError::Unexpected {
                what: "period",
                value: "Redis' period changed twice in one request".into(),
            },
        ))
    }

    /// The board key of period `idx`, and the ARGV a submit needs for it.
    fn board(&self, board: &str, idx: i64) -> String {
        self.keys.key(board, &sub::period(idx))
    }

    /// Submits a score: checked against the rule, then shown to the rule's plugin (which may
    /// reject it or replace it: a replacement is checked against the rule again), then recorded.
    pub async fn submit(
        &self,
        store: &Store,
        board: &str,
        member: &str,
        score: f64,
        facts: Option<RequestFacts>,
    ) -> Result<Submitted, LeaderboardError> {
        check("board", board)?;
        check("member", member)?;
        if let Err(e) = self.check_score(score) {
            self.counters.refused.increment(1);
            return Err(e);
        }
        let (score, adjusted, fallback) = self.decide(facts, board, member, score)?;
        if adjusted && let Err(e) = self.check_score(score) {
            self.counters.refused.increment(1);
            return Err(match e {
                LeaderboardError::ScoreOutOfRange(m) | LeaderboardError::BadRequest(m) => {
                    LeaderboardError::ScoreOutOfRange(format!(
                        "the rule's plugin chose a score the rule refuses: {m}"
                    ))
                }
                other => other,
            });
        }
        let mut s = self.record(store, board, member, score).await?;
        s.adjusted = adjusted.then_some(score);
        s.fallback = fallback;
        Ok(s)
    }

    /// Records a checked score.
    async fn record(
        &self,
        store: &Store,
        board: &str,
        member: &str,
        score: f64,
    ) -> Result<Submitted, LeaderboardError> {
        let score_arg = score_text(score);
        let p = self.spec.period;
        // The expiry and the tiebreak's origin depend on the period, which the script may
        // correct: they are computed per attempt from the period the keys name.
        let mut current = p.guess_now();
        for _ in 0..2 {
            let (expire_at, start) = match p {
                Period::None => (String::new(), NONE_EPOCH_MS),
                _ => {
                    let keep = i64::try_from(self.spec.keep).unwrap_or(0);
                    (p.end_ms(current + keep).to_string(), p.start_ms(current))
                }
            };
            let start = start.to_string();
            let check = if p == Period::None {
                String::new()
            } else {
                current.to_string()
            };
            let argv: [&[u8]; 13] = [
                self.fixed[0].as_bytes(),
                self.fixed[1].as_bytes(),
                self.fixed[2].as_bytes(),
                self.fixed[3].as_bytes(),
                check.as_bytes(),
                member.as_bytes(),
                score_arg.as_bytes(),
                self.update_arg.as_bytes(),
                self.max_size_arg.as_bytes(),
                self.max_score_arg.as_bytes(),
                expire_at.as_bytes(),
                start.as_bytes(),
                self.unit_arg.as_bytes(),
            ];
            let idx = if p == Period::None { 0 } else { current };
            let keys = [self.board(board, idx)];
            let reply: Vec<Value> =
                self.failed(store.eval(&self.scripts.submit, &keys, &argv).await)?;
            let bad = |e| LeaderboardError::Reply("submit", e);
            let mut items = Items::new(reply);
            match items.next_text().map_err(bad)?.as_str() {
                "ok" => {
                    let score = parse_score(&items.next_text().map_err(bad)?).map_err(bad)?;
                    let rank = items.next_text().map_err(bad)?;
                    let rank = if rank.is_empty() {
                        None
                    } else {
                        Some(rank.parse().map_err(|_| bad(unexpected("rank", &rank)))?)
                    };
                    let improved = items.next_int().map_err(bad)? == 1;
                    self.counters.submitted.increment(1);
                    if improved {
                        self.counters.improved.increment(1);
                    }
                    return Ok(Submitted {
                        period: self.label(idx),
                        score,
                        rank,
                        improved,
                        adjusted: None,
                        fallback: false,
                    });
                }
                "period" => {
                    current = items.next_int().map_err(bad)?;
                    self.counters.retried.increment(1);
                }
                "too_large" => {
                    self.counters.refused.increment(1);
                    let total = items.next_text().map_err(bad)?;
                    return Err(LeaderboardError::ScoreOutOfRange(format!(
                        "the sum would be {total}, beyond the rule's max_score {}; nothing was changed",
                        self.spec.max_score
                    )));
                }
                "negative" => {
                    self.counters.refused.increment(1);
                    let total = items.next_text().map_err(bad)?;
                    return Err(LeaderboardError::ScoreOutOfRange(format!(
                        "the sum would be {total}: with `ties: first` a score is never negative; nothing was changed"
                    )));
                }
                other => return Err(bad(unexpected("tag", other))),
            }
        }
        Err(LeaderboardError::Reply(
            "submit",
            unexpected("period", "Redis' period changed twice in one request"),
        ))
    }

    /// A member's score and rank.
    pub async fn entry(
        &self,
        store: &Store,
        board: &str,
        member: &str,
        sel: PeriodSel,
    ) -> Result<(String, Option<Entry>), LeaderboardError> {
        check("board", board)?;
        check("member", member)?;
        let args: [&[u8]; 1] = [member.as_bytes()];
        let (idx, reply) = self
            .run(
                store,
                &self.scripts.rank,
                "rank",
                sel,
                |i| vec![self.board(board, i)],
                &args,
            )
            .await?;
        self.counters.read.increment(1);
        let bad = |e| LeaderboardError::Reply("rank", e);
        let mut items = Items::new(reply);
        let found = match items.next_text().map_err(bad)?.as_str() {
            "ok" => Some(Entry {
                member: member.to_string(),
                score: parse_score(&items.next_text().map_err(bad)?).map_err(bad)?,
                rank: rank_of(&items.next_value().map_err(bad)?).map_err(bad)?,
            }),
            "none" => None,
            other => return Err(bad(unexpected("tag", other))),
        };
        Ok((self.label(idx), found))
    }

    /// Ranks of one member on several boards: one call per board (each board is its own
    /// slot), all at once.
    pub async fn ranks(
        self: &Arc<Self>,
        store: &Store,
        boards: &[String],
        member: &str,
        sel: PeriodSel,
    ) -> Result<Vec<(String, Option<Entry>)>, LeaderboardError> {
        if boards.is_empty() || boards.len() > MAX_BOARDS_PER_REQUEST {
            return Err(LeaderboardError::BadRequest(format!(
                "`boards` must name 1 … {MAX_BOARDS_PER_REQUEST} boards, not {}",
                boards.len()
            )));
        }
        for b in boards {
            check("board", b)?;
        }
        check("member", member)?;
        let mut tasks = JoinSet::new();
        for (i, b) in boards.iter().enumerate() {
            let (rule, store, board, member) =
                (self.clone(), store.clone(), b.clone(), member.to_string());
            tasks.spawn(async move { (i, rule.entry(&store, &board, &member, sel).await) });
        }
        let mut out: Vec<Option<(String, Option<Entry>)>> = vec![None; boards.len()];
        while let Some(done) = tasks.join_next().await {
            let (i, r) = done
                .map_err(|e| LeaderboardError::Reply("rank", unexpected("task", &e.to_string())))?;
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(r?);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    fn page_bound(&self, what: &str, n: u64) -> Result<(), LeaderboardError> {
        if n > self.spec.max_page {
            return Err(LeaderboardError::BadRequest(format!(
                "{what} {n} is above the rule's max_page {}",
                self.spec.max_page
            )));
        }
        Ok(())
    }

    /// `limit` entries from place `offset` (0 is the best).
    pub async fn top(
        &self,
        store: &Store,
        board: &str,
        offset: u64,
        limit: u64,
        sel: PeriodSel,
    ) -> Result<Page, LeaderboardError> {
        check("board", board)?;
        self.page_bound("`limit`", limit)?;
        if offset >= self.spec.max_size {
            return Err(LeaderboardError::BadRequest(format!(
                "`offset` {offset} is beyond the board's max_size {}",
                self.spec.max_size
            )));
        }
        let (o, l) = (offset.to_string(), limit.to_string());
        let args: [&[u8]; 2] = [o.as_bytes(), l.as_bytes()];
        let (idx, reply) = self
            .run(
                store,
                &self.scripts.top,
                "top",
                sel,
                |i| vec![self.board(board, i)],
                &args,
            )
            .await?;
        self.counters.read.increment(1);
        self.page(idx, reply, "top")
    }

    /// Up to `k` members above and below `member` (fewer at the edges); None when the member
    /// is not on the board.
    pub async fn around(
        &self,
        store: &Store,
        board: &str,
        member: &str,
        k: u64,
        sel: PeriodSel,
    ) -> Result<Page, LeaderboardError> {
        check("board", board)?;
        check("member", member)?;
        self.page_bound("2·`k` + 1 =", 2 * k.min(u64::MAX / 4) + 1)?;
        let k = k.to_string();
        let args: [&[u8]; 2] = [member.as_bytes(), k.as_bytes()];
        let (idx, reply) = self
            .run(
                store,
                &self.scripts.around,
                "around",
                sel,
                |i| vec![self.board(board, i)],
                &args,
            )
            .await?;
        self.counters.read.increment(1);
        if matches!(reply.first(), Some(v) if reply::text(v).is_ok_and(|t| t == "none")) {
            return Err(LeaderboardError::NotOnBoard(member.to_string()));
        }
        self.page(idx, reply, "around")
    }

    fn page(
        &self,
        idx: i64,
        reply: Vec<Value>,
        name: &'static str,
    ) -> Result<Page, LeaderboardError> {
        let bad = |e| LeaderboardError::Reply(name, e);
        let mut items = Items::new(reply);
        let tag = items.next_text().map_err(bad)?;
        if tag != "ok" {
            return Err(bad(unexpected("tag", &tag)));
        }
        let count = reply::uint(&items.next_value().map_err(bad)?).map_err(bad)?;
        Ok(Page {
            period: self.label(idx),
            count,
            entries: entries(items).map_err(bad)?,
        })
    }

    pub async fn count(
        &self,
        store: &Store,
        board: &str,
        sel: PeriodSel,
    ) -> Result<(String, u64), LeaderboardError> {
        check("board", board)?;
        let (idx, reply) = self
            .run(
                store,
                &self.scripts.count,
                "count",
                sel,
                |i| vec![self.board(board, i)],
                &[],
            )
            .await?;
        self.counters.read.increment(1);
        let bad = |e| LeaderboardError::Reply("count", e);
        let n = reply::uint(reply::at(&reply, 1).map_err(bad)?).map_err(bad)?;
        Ok((self.label(idx), n))
    }

    pub async fn remove(
        &self,
        store: &Store,
        board: &str,
        member: &str,
        sel: PeriodSel,
    ) -> Result<(String, bool), LeaderboardError> {
        check("board", board)?;
        check("member", member)?;
        let args: [&[u8]; 1] = [member.as_bytes()];
        let (idx, reply) = self
            .run(
                store,
                &self.scripts.remove,
                "remove",
                sel,
                |i| vec![self.board(board, i)],
                &args,
            )
            .await?;
        let bad = |e| LeaderboardError::Reply("remove", e);
        let n = reply::int(reply::at(&reply, 1).map_err(bad)?).map_err(bad)?;
        if n == 1 {
            self.counters.removed.increment(1);
        }
        Ok((self.label(idx), n == 1))
    }

    /// The board over its last `last` periods (the current one included), combined as the
    /// rule updates scores; equal totals share a rank.
    pub async fn aggregate(
        &self,
        store: &Store,
        board: &str,
        last: u64,
        offset: u64,
        limit: u64,
        member: Option<&str>,
    ) -> Result<Aggregate, LeaderboardError> {
        check("board", board)?;
        if let Some(m) = member {
            check("member", m)?;
        }
        if self.spec.period == Period::None {
            return Err(LeaderboardError::BadRequest(
                "this board has no periods (`period: none`) to aggregate".into(),
            ));
        }
        let most = self.spec.keep + 1;
        if last == 0 || last > most {
            return Err(LeaderboardError::BadRequest(format!(
                "`last` must be 1 … {most} (the current period and the `keep` {} kept), not {last}",
                self.spec.keep
            )));
        }
        self.page_bound("`limit`", limit)?;
        if offset >= self.spec.max_size {
            return Err(LeaderboardError::BadRequest(format!(
                "`offset` {offset} is beyond the board's max_size {}",
                self.spec.max_size
            )));
        }
        let (o, l) = (offset.to_string(), limit.to_string());
        let args: [&[u8]; 6] = [
            o.as_bytes(),
            l.as_bytes(),
            member.unwrap_or("").as_bytes(),
            self.cache_arg.as_bytes(),
            self.max_size_arg.as_bytes(),
            self.update_arg.as_bytes(),
        ];
        let n = i64::try_from(last).unwrap_or(1);
        let keys = |idx: i64| {
            let mut k = Vec::with_capacity(last as usize + 1);
            k.push(self.keys.key(board, &sub::aggregate(last, idx)));
            for i in 0..n {
                k.push(self.board(board, idx - i));
            }
            k
        };
        let (idx, reply) = self
            .run(
                store,
                &self.scripts.aggregate,
                "aggregate",
                PeriodSel::Current,
                keys,
                &args,
            )
            .await?;
        self.counters.aggregated.increment(1);
        let bad = |e| LeaderboardError::Reply("aggregate", e);
        let mut items = Items::new(reply);
        let _ok = items.next_text().map_err(bad)?;
        let count = reply::uint(&items.next_value().map_err(bad)?).map_err(bad)?;
        let score = items.next_text().map_err(bad)?;
        let rank = items.next_value().map_err(bad)?;
        let member = match member {
            Some(m) if !score.is_empty() => Some(Entry {
                member: m.to_string(),
                score: parse_score(&score).map_err(bad)?,
                rank: rank_of(&rank).map_err(bad)?,
            }),
            _ => None,
        };
        Ok(Aggregate {
            periods: (0..n).map(|i| self.label(idx - i)).collect(),
            count,
            member,
            entries: entries(items).map_err(bad)?,
        })
    }
}

fn unexpected(what: &'static str, value: &str) -> ReplyError {
    ReplyError::Unexpected {
        what,
        value: value.to_string(),
    }
}

fn parse_score(t: &str) -> Result<f64, ReplyError> {
    t.parse::<f64>().map_err(|_| unexpected("score", t))
}

fn rank_of(v: &Value) -> Result<u64, ReplyError> {
    reply::uint(v)
}

/// `member, score, rank` triples.
fn entries(mut items: Items) -> Result<Vec<Entry>, ReplyError> {
    let mut out = Vec::with_capacity(items.len() / 3);
    while !items.is_empty() {
        let member = items.next_text()?;
        let score = parse_score(&items.next_text()?)?;
        let rank = rank_of(&items.next_value()?)?;
        out.push(Entry {
            member,
            score,
            rank,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_text_reads_back_exactly() {
        for s in [
            0.0,
            1.0,
            4_294_967_295.0,
            9_007_199_254_740_992.0,
            -3.5,
            0.1,
            1e-7,
            123.456,
        ] {
            assert_eq!(score_text(s).parse::<f64>().expect("a number"), s, "{s}");
        }
        assert_eq!(score_text(4_294_967_295.0), "4294967295");
    }
}
