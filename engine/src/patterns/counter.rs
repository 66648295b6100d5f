//! Counter rules at request time: unique counts (HyperLogLog), Bloom filters and plain
//! counters, per period. One script call per request, and a second one only when the engine's
//! clock guessed another period than Redis TIME (see `compile/lua/counter/prelude.lua`).
//!
//! Every key of a call belongs to one id (its hash tag), one key per period: a read over a
//! range of periods is one slot, one call. A range is at most `keep + 1` periods (the current
//! one and the kept closed ones), so a call's work is bounded by the policy, as is a batch
//! (`max_batch` items).

use std::time::Duration;

use metrics::Counter as MetricCounter;
use redis::Value;
use tokio::sync::OnceCell;

use super::reply::{self, ReplyError};
use super::{InputError, check_id};
use crate::compile::counter::CounterScripts;
use crate::compile::{CompiledCounter, KeySpace, Script};
use crate::policy::Rule;
use crate::policy::counter::{BloomBackend, BloomSize, Counter, CounterKind};
use crate::policy::period::Period;
use crate::store::{Store, StoreError};

/// The largest amount one count add may carry: far from i64's end, so a period's counter
/// only overflows after a million such adds (Redis then refuses the INCRBY).
pub const MAX_BY: i64 = 1_000_000_000_000;
/// The longest item, in bytes.
pub const MAX_ITEM_BYTES: usize = 1024;
/// A guess of the period that Redis TIME keeps refusing is a bug, not clock skew: after this
/// many calls the request fails.
const PERIOD_ATTEMPTS: usize = 3;
/// The RedisBloom commands the module backend calls.
const BLOOM_COMMANDS: &[&str] = &["BF.INSERT", "BF.MEXISTS"];

#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{0}")]
    BadRequest(String),
    /// `backend: redisbloom`, and a server lacks the module.
    #[error("the rule's Bloom filter needs the RedisBloom module, and a Redis server lacks it")]
    NoModule,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unexpected reply of a counter script: {0}")]
    Reply(#[from] ReplyError),
    #[error("{0}")]
    Internal(String),
}

/// Which periods a read or a check names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Current,
    Previous,
    Index(i64),
}

/// The periods of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    One(Which),
    /// From, to (both included).
    Range(Which, Which),
    /// The current period and the n - 1 before it.
    Last(u64),
}

/// What an add carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddInput {
    Items(Vec<String>),
    By(i64),
}

/// The answer of an add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// `unique`: whether an estimate register changed (the count may have grown).
    Unique { period: String, changed: bool },
    /// `count`: the period's value after the add.
    Count { period: String, value: i64 },
    /// `bloom`: per item, whether it was new to the filter; the filter's count of new adds.
    Bloom {
        period: String,
        added: Vec<bool>,
        stats: BloomStats,
    },
}

/// A Bloom filter's fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BloomStats {
    /// Adds that were new to the filter: about the distinct items added (false positives
    /// are not counted).
    pub count: u64,
    pub capacity: u64,
    /// Past capacity: the false-positive rate is above the configured one (Lua), or the
    /// filter grows (RedisBloom).
    pub saturated: bool,
}

/// The answer of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The labels of the periods read, oldest first.
    pub periods: Vec<String>,
    pub value: ReadValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadValue {
    /// `unique`: distinct items over the periods; `cached` when a range's count came from
    /// the range cache.
    Unique {
        count: u64,
        cached: bool,
    },
    /// `count`: each period's value (as `periods`) and their sum.
    Count {
        values: Vec<i64>,
        sum: i64,
    },
    Bloom(BloomStats),
}

/// The answer of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub period: String,
    pub present: Vec<bool>,
    pub stats: BloomStats,
}

struct Metrics {
    add_ok: MetricCounter,
    read_ok: MetricCounter,
    check_ok: MetricCounter,
    failed: MetricCounter,
    saturated: MetricCounter,
    period_retries: MetricCounter,
}

impl Metrics {
    fn new(app: &str, rule: &str) -> Self {
        let req = |op: &'static str, outcome: &'static str| metrics::counter!("patternd_counting_requests_total", "app" => app.to_string(), "rule" => rule.to_string(), "op" => op, "outcome" => outcome);
        Self {
            add_ok: req("add", "ok"),
            read_ok: req("read", "ok"),
            check_ok: req("check", "ok"),
            failed: req("any", "failed"),
            saturated: metrics::counter!("patternd_bloom_saturated_total", "app" => app.to_string(), "rule" => rule.to_string()),
            period_retries: metrics::counter!("patternd_period_retries_total", "app" => app.to_string(), "rule" => rule.to_string()),
        }
    }
}

/// A counter rule ready to serve.
pub struct CounterRule {
    pub app: String,
    pub rule: String,
    keys: KeySpace,
    scripts: CounterScripts,
    pub kind: CounterKind,
    pub period: Period,
    pub keep: u64,
    pub max_batch: u64,
    /// ARGV[1] and ARGV[2] of every call: the period's kind code and length.
    period_kind: String,
    period_len: String,
    /// Without a period: the expiry after a write, in ms.
    ttl_ms: String,
    range_cache_ms: String,
    /// A Bloom rule's m and k, capacity and error rate, as ARGV.
    bloom_args: [String; 4],
    /// `auto` Bloom rules: whether every primary has RedisBloom, asked once per snapshot
    /// (on first use: the engine starts while Redis is down).
    module: OnceCell<bool>,
    metrics: Metrics,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One call: the keys of the guessed current period, and the arguments after the period's
/// (the expiry of writers, the rule's numbers); the items follow, the same for every attempt.
struct Call<'r> {
    script: &'r Script,
    keys: Vec<String>,
    /// The keys name periods relative to the current one (checked against Redis TIME).
    checked: bool,
    head: Vec<String>,
}

impl CounterRule {
    pub fn new(rule: &Rule, spec: &Counter, compiled: &CompiledCounter, keys: &KeySpace) -> Self {
        let (code, len) = spec.period.lua_args();
        let (bloom_args, range_cache_ms) = match &spec.kind {
            CounterKind::Bloom { size, .. } => (
                [
                    size.bits.to_string(),
                    size.hashes.to_string(),
                    size.capacity.to_string(),
                    format!("{}", size.error_rate),
                ],
                "0".to_string(),
            ),
            CounterKind::Unique { range_cache } => {
                (Default::default(), range_cache.map_or(0, ms).to_string())
            }
            CounterKind::Count => (Default::default(), "0".to_string()),
        };
        Self {
            app: rule.app.clone(),
            rule: rule.name.clone(),
            keys: keys.clone(),
            scripts: compiled.scripts.clone(),
            kind: spec.kind.clone(),
            period: spec.period,
            keep: spec.keep,
            max_batch: spec.max_batch,
            period_kind: code.to_string(),
            period_len: len.to_string(),
            ttl_ms: ms(spec.ttl).to_string(),
            range_cache_ms,
            bloom_args,
            module: OnceCell::new(),
            metrics: Metrics::new(&rule.app, &rule.name),
        }
    }

    /// The Bloom filter's size, for a Bloom rule.
    pub fn bloom_size(&self) -> Option<BloomSize> {
        match &self.kind {
            CounterKind::Bloom { size, .. } => Some(*size),
            _ => None,
        }
    }

    fn counted<T>(&self, r: Result<T, CounterError>) -> Result<T, CounterError> {
        if matches!(
            r,
            Err(CounterError::Store(_) | CounterError::Reply(_) | CounterError::Internal(_))
        ) {
            self.metrics.failed.increment(1);
        }
        r
    }

    /// The label of a period index.
    pub fn label(&self, index: i64) -> String {
        self.period.label(index)
    }

    /// Parses `?period=`, `?from=`/`?to=` and `?last=` into a selection (at most one way).
    pub fn selection(
        &self,
        period: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
        last: Option<u64>,
    ) -> Result<Selection, CounterError> {
        let bad = |m: String| Err(CounterError::BadRequest(m));
        match (period, from, to, last) {
            (None, None, None, None) => Ok(Selection::One(Which::Current)),
            (Some(p), None, None, None) => Ok(Selection::One(self.which(p)?)),
            (None, Some(f), Some(t), None) => Ok(Selection::Range(self.which(f)?, self.which(t)?)),
            (None, None, None, Some(n)) => {
                if n == 0 {
                    return bad("`last` must be at least 1".into());
                }
                Ok(Selection::Last(n))
            }
            (None, Some(_), None, None) | (None, None, Some(_), None) => {
                bad("a range needs both `from` and `to`".into())
            }
            _ => bad("give one of `period`, `from` and `to`, or `last`".into()),
        }
    }

    fn which(&self, text: &str) -> Result<Which, CounterError> {
        match text {
            "current" => Ok(Which::Current),
            "previous" if self.period == Period::None => Err(CounterError::BadRequest(
                "this rule has no period, so no `previous` one".into(),
            )),
            "previous" => Ok(Which::Previous),
            label => self.period.parse_label(label).map(Which::Index).ok_or_else(|| {
                CounterError::BadRequest(format!(
                    "`{label}` is not a period of this rule; expected `current`, `previous` or a label such as `{}`",
                    self.period.label(self.period.guess_now())
                ))
            }),
        }
    }

    /// The period indexes a selection names when `current` is the current one, oldest first,
    /// and whether they depend on which period is current.
    fn indexes(&self, sel: Selection, current: i64) -> Result<(Vec<i64>, bool), CounterError> {
        let at = |w: Which| match w {
            Which::Current => (current, true),
            Which::Previous => (current - 1, true),
            Which::Index(i) => (i, false),
        };
        let longest = self.keep + 1;
        let (from, to, relative) = match sel {
            Selection::One(w) => {
                let (i, rel) = at(w);
                (i, i, rel)
            }
            Selection::Range(f, t) => {
                let ((f, rf), (t, rt)) = (at(f), at(t));
                if f > t {
                    return Err(CounterError::BadRequest(format!(
                        "`from` ({}) is after `to` ({})",
                        self.label(f),
                        self.label(t)
                    )));
                }
                (f, t, rf || rt)
            }
            Selection::Last(n) => {
                if n > longest {
                    return Err(CounterError::BadRequest(format!(
                        "`last` {n} is more than the {longest} period(s) this rule keeps (keep + 1)"
                    )));
                }
                let back = i64::try_from(n).unwrap_or(1) - 1;
                (current - back, current, true)
            }
        };
        let span = u64::try_from(to - from)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        if span > longest {
            return Err(CounterError::BadRequest(format!(
                "the range holds {span} periods; this rule keeps {longest} (keep + 1)"
            )));
        }
        Ok(((from..=to).collect(), relative))
    }

    /// The expiry arguments of a write to period `idx`.
    fn expiry(&self, idx: i64) -> (String, &'static str) {
        match self.period {
            Period::None => (self.ttl_ms.clone(), "in"),
            p => {
                let keep = i64::try_from(self.keep).unwrap_or(0);
                (p.end_ms(idx.saturating_add(keep)).to_string(), "at")
            }
        }
    }

    /// Runs the call `build` makes for the engine's guess of the current period, and again
    /// for Redis' own when the script says the guess was wrong. `tail` (the items) follows
    /// the call's own arguments. Returns the reply after its `'ok'`, and the current period
    /// the call was made for.
    async fn run<'r, F>(
        &'r self,
        store: &Store,
        tail: &[&[u8]],
        build: F,
    ) -> Result<(Vec<Value>, i64), CounterError>
    where
        F: Fn(i64) -> Result<Call<'r>, CounterError>,
    {
        let mut current = self.period.guess_now();
        for _ in 0..PERIOD_ATTEMPTS {
            let call = build(current)?;
            let guess = if call.checked && self.period != Period::None {
                current.to_string()
            } else {
                String::new()
            };
            let mut args: Vec<&[u8]> = Vec::with_capacity(call.head.len() + tail.len() + 3);
            args.push(self.period_kind.as_bytes());
            args.push(self.period_len.as_bytes());
            args.push(guess.as_bytes());
            args.extend(call.head.iter().map(|h| h.as_bytes()));
            args.extend(tail.iter().copied());
            let reply: Value = store.eval(call.script, &call.keys, &args).await?;
            let mut items = reply::into_array(reply)?;
            let tag = items
                .first()
                .map(reply::text)
                .transpose()?
                .unwrap_or_default();
            match tag.as_str() {
                "ok" => {
                    items.remove(0);
                    return Ok((items, current));
                }
                "period" => {
                    let actual = items.get(1).ok_or(ReplyError::Missing(1))?;
                    self.metrics.period_retries.increment(1);
                    current = reply::int(actual)?;
                }
                other => {
                    return Err(CounterError::Internal(format!(
                        "a counter script answered `{other}`"
                    )));
                }
            }
        }
        Err(CounterError::Internal(format!(
            "Redis TIME named another period {PERIOD_ATTEMPTS} times in a row"
        )))
    }

    /// The expiry arguments of a write to period `idx`, as a call's first two.
    fn write_head(&self, idx: i64) -> Vec<String> {
        let (at, mode) = self.expiry(idx);
        vec![at, mode.to_string()]
    }

    fn check_items(&self, items: &[String]) -> Result<(), CounterError> {
        if items.is_empty() {
            return Err(CounterError::BadRequest("`items` must not be empty".into()));
        }
        let max = usize::try_from(self.max_batch).unwrap_or(usize::MAX);
        if items.len() > max {
            return Err(CounterError::BadRequest(format!(
                "{} items in one request; this rule takes at most {max} (`max_batch`)",
                items.len()
            )));
        }
        if let Some(long) = items.iter().find(|i| i.len() > MAX_ITEM_BYTES) {
            return Err(CounterError::BadRequest(format!(
                "an item is {} bytes; at most {MAX_ITEM_BYTES} are allowed",
                long.len()
            )));
        }
        Ok(())
    }

    /// An add's body fields as this rule's kind takes them: `item` or `items` (`unique`,
    /// `bloom`), `by` (`count`, default 1). Also whether the answer is per item (a batch).
    pub fn add_input(
        &self,
        item: Option<String>,
        items: Option<Vec<String>>,
        by: Option<i64>,
    ) -> Result<(AddInput, bool), CounterError> {
        match (&self.kind, by) {
            (CounterKind::Count, by) if item.is_none() && items.is_none() => {
                Ok((AddInput::By(by.unwrap_or(1)), false))
            }
            (CounterKind::Count, _) => Err(CounterError::BadRequest(
                "a `count` rule adds `by` (an integer), not items".into(),
            )),
            (_, Some(_)) => Err(CounterError::BadRequest(format!(
                "a `{}` rule adds `item` or `items`, not `by`",
                self.kind.name()
            ))),
            (_, None) => {
                let (list, batch) = item_list(item, items)?;
                Ok((AddInput::Items(list), batch))
            }
        }
    }

    /// Whether this Bloom rule uses RedisBloom (asked of Redis once, for `auto`).
    async fn uses_module(&self, store: &Store) -> Result<bool, CounterError> {
        let CounterKind::Bloom { backend, .. } = &self.kind else {
            return Ok(false);
        };
        let needed = match backend {
            BloomBackend::Lua => return Ok(false),
            BloomBackend::RedisBloom => true,
            BloomBackend::Auto => false,
        };
        let found = *self
            .module
            .get_or_try_init(|| async {
                let found = store.commands_everywhere(BLOOM_COMMANDS).await?;
                tracing::info!(
                    app = %self.app,
                    rule = %self.rule,
                    redisbloom = found,
                    "counter: Bloom filters {}",
                    if found { "use RedisBloom (every primary has it)" } else { "use the Lua bitmap (RedisBloom is not on every primary)" }
                );
                Ok::<_, StoreError>(found)
            })
            .await?;
        if needed && !found {
            return Err(CounterError::NoModule);
        }
        Ok(found)
    }

    /// Adds items (`unique`, `bloom`) or an amount (`count`) to the current period of `id`.
    pub async fn add(
        &self,
        store: &Store,
        id: &str,
        input: AddInput,
    ) -> Result<Added, CounterError> {
        check_id(id)?;
        let r = self.add_inner(store, id, input).await;
        let r = self.counted(r);
        if r.is_ok() {
            self.metrics.add_ok.increment(1);
        }
        r
    }

    async fn add_inner(
        &self,
        store: &Store,
        id: &str,
        input: AddInput,
    ) -> Result<Added, CounterError> {
        match (&self.kind, input) {
            (CounterKind::Count, AddInput::By(by)) => {
                if !(-MAX_BY..=MAX_BY).contains(&by) {
                    return Err(CounterError::BadRequest(format!(
                        "`by` must be between -{MAX_BY} and {MAX_BY}"
                    )));
                }
                let by = by.to_string();
                let (reply, current) = self
                    .run(store, &[by.as_bytes()], |cur| {
                        Ok(Call {
                            script: &self.scripts.count_add,
                            keys: vec![self.keys.key(id, &format!("p:{cur}"))],
                            checked: true,
                            head: self.write_head(cur),
                        })
                    })
                    .await?;
                let value = reply::int(reply.first().ok_or(ReplyError::Missing(1))?)?;
                Ok(Added::Count {
                    period: self.label(current),
                    value,
                })
            }
            (CounterKind::Count, AddInput::Items(_)) => Err(CounterError::BadRequest(
                "a `count` rule adds `by` (an integer), not items".into(),
            )),
            (_, AddInput::By(_)) => Err(CounterError::BadRequest(format!(
                "a `{}` rule adds `item` or `items`, not `by`",
                self.kind.name()
            ))),
            (CounterKind::Unique { .. }, AddInput::Items(items)) => {
                self.check_items(&items)?;
                let tail: Vec<&[u8]> = items.iter().map(|i| i.as_bytes()).collect();
                let (reply, current) = self
                    .run(store, &tail, |cur| {
                        Ok(Call {
                            script: &self.scripts.unique_add,
                            keys: vec![self.keys.key(id, &format!("p:{cur}"))],
                            checked: true,
                            head: self.write_head(cur),
                        })
                    })
                    .await?;
                let changed = reply::int(reply.first().ok_or(ReplyError::Missing(1))?)? == 1;
                Ok(Added::Unique {
                    period: self.label(current),
                    changed,
                })
            }
            (CounterKind::Bloom { size, .. }, AddInput::Items(items)) => {
                self.check_items(&items)?;
                let module = self.uses_module(store).await?;
                let tail: Vec<&[u8]> = items.iter().map(|i| i.as_bytes()).collect();
                let (reply, current) = self
                    .run(store, &tail, |cur| {
                        let mut head = self.write_head(cur);
                        let (script, filter, numbers) = if module {
                            (&self.scripts.module_add, "f", &self.bloom_args[2..4])
                        } else {
                            (&self.scripts.bloom_add, "b", &self.bloom_args[0..2])
                        };
                        head.extend(numbers.iter().cloned());
                        Ok(Call {
                            script,
                            keys: self.keys.keys(
                                id,
                                [format!("{filter}:{cur}").as_str(), &format!("n:{cur}")],
                            ),
                            checked: true,
                            head,
                        })
                    })
                    .await?;
                let (stats, flags) = self.bloom_reply(&reply, size.capacity, items.len())?;
                if stats.saturated {
                    self.metrics.saturated.increment(1);
                }
                Ok(Added::Bloom {
                    period: self.label(current),
                    added: flags,
                    stats,
                })
            }
        }
    }

    /// `{count, flag per item}` of the Bloom scripts.
    fn bloom_reply(
        &self,
        reply: &[Value],
        capacity: u64,
        items: usize,
    ) -> Result<(BloomStats, Vec<bool>), CounterError> {
        let count = reply::uint(reply.first().ok_or(ReplyError::Missing(1))?)?;
        let flags = reply[1..]
            .iter()
            .map(|v| reply::int(v).map(|f| f == 1))
            .collect::<Result<Vec<_>, _>>()?;
        if flags.len() != items {
            return Err(CounterError::Internal(format!(
                "a Bloom script answered {} flags for {items} items",
                flags.len()
            )));
        }
        Ok((
            BloomStats {
                count,
                capacity,
                saturated: count > capacity,
            },
            flags,
        ))
    }

    /// Reads the periods `sel` names for `id`: a unique count over them, each counter and
    /// their sum, or (a Bloom rule, one period) the filter's fill.
    pub async fn read(
        &self,
        store: &Store,
        id: &str,
        sel: Selection,
    ) -> Result<Read, CounterError> {
        check_id(id)?;
        let r = self.read_inner(store, id, sel).await;
        let r = self.counted(r);
        if r.is_ok() {
            self.metrics.read_ok.increment(1);
        }
        r
    }

    async fn read_inner(
        &self,
        store: &Store,
        id: &str,
        sel: Selection,
    ) -> Result<Read, CounterError> {
        // Bad selections are refused before any call (the current period only shifts them).
        let (first, _) = self.indexes(sel, self.period.guess_now())?;
        if matches!(self.kind, CounterKind::Bloom { .. }) && first.len() > 1 {
            return Err(CounterError::BadRequest(
                "a Bloom filter is read one period at a time (`period=`)".into(),
            ));
        }
        match &self.kind {
            CounterKind::Bloom { size, .. } => {
                let checked = self.check(store, id, sel, &[], size.capacity).await?;
                Ok(Read {
                    periods: vec![checked.period],
                    value: ReadValue::Bloom(checked.stats),
                })
            }
            CounterKind::Unique { .. } => {
                let (reply, current) = self
                    .run(store, &[], |cur| {
                        let (idx, relative) = self.indexes(sel, cur)?;
                        let mut keys: Vec<String> = idx
                            .iter()
                            .map(|i| self.keys.key(id, &format!("p:{i}")))
                            .collect();
                        let cache = self.range_cache_ms != "0" && idx.len() > 1;
                        if let (true, Some(f), Some(t)) = (cache, idx.first(), idx.last()) {
                            keys.push(self.keys.key(id, &format!("r:{f}:{t}")));
                        }
                        Ok(Call {
                            script: &self.scripts.unique_count,
                            keys,
                            checked: relative,
                            head: vec![if cache {
                                self.range_cache_ms.clone()
                            } else {
                                "0".to_string()
                            }],
                        })
                    })
                    .await?;
                let (idx, _) = self.indexes(sel, current)?;
                let count = reply::uint(reply.first().ok_or(ReplyError::Missing(1))?)?;
                let cached = reply::int(reply.get(1).ok_or(ReplyError::Missing(2))?)? == 1;
                Ok(Read {
                    periods: idx.iter().map(|i| self.label(*i)).collect(),
                    value: ReadValue::Unique { count, cached },
                })
            }
            CounterKind::Count => {
                let (reply, current) = self
                    .run(store, &[], |cur| {
                        let (idx, relative) = self.indexes(sel, cur)?;
                        Ok(Call {
                            script: &self.scripts.count_read,
                            keys: idx
                                .iter()
                                .map(|i| self.keys.key(id, &format!("p:{i}")))
                                .collect(),
                            checked: relative,
                            head: Vec::new(),
                        })
                    })
                    .await?;
                let (idx, _) = self.indexes(sel, current)?;
                let values = reply
                    .iter()
                    .map(reply::int)
                    .collect::<Result<Vec<_>, _>>()?;
                if values.len() != idx.len() {
                    return Err(CounterError::Internal(format!(
                        "the count-read script answered {} values for {} periods",
                        values.len(),
                        idx.len()
                    )));
                }
                // Each value is an i64 Redis kept; their sum may not be.
                let sum = values
                    .iter()
                    .try_fold(0i64, |acc, v| acc.checked_add(*v))
                    .ok_or_else(|| {
                        CounterError::BadRequest(
                            "the sum of these periods does not fit in a 64-bit integer".into(),
                        )
                    })?;
                Ok(Read {
                    periods: idx.iter().map(|i| self.label(*i)).collect(),
                    value: ReadValue::Count { values, sum },
                })
            }
        }
    }

    /// Checks items against the Bloom filter of one period (`sel` names one).
    pub async fn check_items_in(
        &self,
        store: &Store,
        id: &str,
        sel: Selection,
        items: &[String],
    ) -> Result<Checked, CounterError> {
        check_id(id)?;
        let CounterKind::Bloom { size, .. } = &self.kind else {
            return Err(CounterError::BadRequest(format!(
                "`check` is for `kind: bloom` rules; this one is `{}`",
                self.kind.name()
            )));
        };
        if !matches!(sel, Selection::One(_)) {
            return Err(CounterError::BadRequest(
                "a check names one period (`period=`), not a range".into(),
            ));
        }
        self.check_items(items)?;
        let r = self.check(store, id, sel, items, size.capacity).await;
        let r = self.counted(r);
        if r.is_ok() {
            self.metrics.check_ok.increment(1);
        }
        r
    }

    async fn check(
        &self,
        store: &Store,
        id: &str,
        sel: Selection,
        items: &[String],
        capacity: u64,
    ) -> Result<Checked, CounterError> {
        let module = self.uses_module(store).await?;
        let tail: Vec<&[u8]> = items.iter().map(|i| i.as_bytes()).collect();
        let (reply, current) = self
            .run(store, &tail, |cur| {
                let (idx, relative) = self.indexes(sel, cur)?;
                let i = idx.first().copied().unwrap_or(cur);
                let (script, filter, head) = if module {
                    (&self.scripts.module_check, "f", Vec::new())
                } else {
                    (
                        &self.scripts.bloom_check,
                        "b",
                        self.bloom_args[0..2].to_vec(),
                    )
                };
                Ok(Call {
                    script,
                    keys: self
                        .keys
                        .keys(id, [format!("{filter}:{i}").as_str(), &format!("n:{i}")]),
                    checked: relative,
                    head,
                })
            })
            .await?;
        let (idx, _) = self.indexes(sel, current)?;
        let (stats, present) = self.bloom_reply(&reply, capacity, items.len())?;
        Ok(Checked {
            period: self.label(idx.first().copied().unwrap_or(current)),
            present,
            stats,
        })
    }
}

/// `item` or `items` of a body: the items, and whether the answer is per item (a batch).
pub fn item_list(
    item: Option<String>,
    items: Option<Vec<String>>,
) -> Result<(Vec<String>, bool), CounterError> {
    match (item, items) {
        (Some(i), None) => Ok((vec![i], false)),
        (None, Some(list)) => Ok((list, true)),
        (Some(_), Some(_)) => Err(CounterError::BadRequest(
            "send `item` or `items`, not both".into(),
        )),
        (None, None) => Err(CounterError::BadRequest(
            "send `item` (one) or `items` (a batch)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile;
    use crate::plugin::PluginSet;
    use crate::policy::load_sources;

    fn rule(yaml: &str) -> CounterRule {
        let text = format!("app: a\nrules:\n  r:\n    counter: {yaml}\n");
        let loaded = load_sources(&[(std::path::PathBuf::from("c.yaml"), text)]).expect("valid");
        let (compiled, _) = compile(&loaded.policy, &PluginSet::empty()).expect("compiles");
        let c = compiled.rules().next().expect("one rule").clone();
        match (&c.rule.kind, &c.kind) {
            (crate::policy::RuleKind::Counter(spec), crate::compile::CompiledKind::Counter(cc)) => {
                CounterRule::new(&c.rule, spec, cc, &c.keys)
            }
            _ => panic!("not a counter rule"),
        }
    }

    #[test]
    fn selections_name_at_most_keep_plus_one_periods() {
        let r = rule("{ kind: count, period: day, keep: 2 }");
        let day = r.period.parse_label("2026-11-28").expect("a day");
        let sel = r.selection(None, None, None, Some(3)).expect("last 3");
        assert_eq!(
            r.indexes(sel, day).ok(),
            Some((vec![day - 2, day - 1, day], true))
        );
        assert!(r.selection(None, None, None, Some(4)).is_ok());
        assert!(r.indexes(Selection::Last(4), day).is_err());
        let sel = r
            .selection(None, Some("2026-11-26"), Some("2026-11-28"), None)
            .expect("a range");
        assert_eq!(
            r.indexes(sel, day + 5).ok(),
            Some((vec![day - 2, day - 1, day], false))
        );
        let sel = r
            .selection(None, Some("2026-11-25"), Some("2026-11-28"), None)
            .expect("parses");
        assert!(r.indexes(sel, day).is_err(), "4 periods with keep 2");
        let sel = r
            .selection(None, Some("2026-11-28"), Some("2026-11-27"), None)
            .expect("parses");
        assert!(r.indexes(sel, day).is_err(), "from after to");
        assert_eq!(
            r.indexes(Selection::One(Which::Previous), day).ok(),
            Some((vec![day - 1], true))
        );
        for (p, f, t, l) in [
            (Some("current"), Some("current"), None, None),
            (None, Some("current"), None, None),
            (None, None, None, Some(0)),
            (Some("2026-13-01"), None, None, None),
            (Some("yesterday"), None, None, None),
        ] {
            assert!(r.selection(p, f, t, l).is_err(), "{p:?} {f:?} {t:?} {l:?}");
        }
    }

    #[test]
    fn a_rule_without_period_has_one_and_expires_after_writes() {
        let r = rule("{ kind: unique, ttl: 1h }");
        assert!(r.selection(Some("previous"), None, None, None).is_err());
        assert_eq!(
            r.indexes(Selection::One(Which::Current), 0).ok(),
            Some((vec![0], true))
        );
        assert!(r.indexes(Selection::Last(2), 0).is_err());
        assert_eq!(r.expiry(0), ("3600000".to_string(), "in"));
        assert_eq!(r.label(0), "all");
    }

    #[test]
    fn period_keys_expire_keep_periods_after_their_period_closes() {
        let r = rule("{ kind: count, period: 10s, keep: 3 }");
        // Period 5 is [50 s, 60 s); it closes at 60 s and is kept through 3 more periods.
        assert_eq!(r.expiry(5), ("90000".to_string(), "at"));
    }
}
