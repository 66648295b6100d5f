//! `counter:` rules: what the YAML may say, the validated model, and the checks between.
//!
//! One rule counts one thing per id, per period: distinct items (`kind: unique`, a
//! HyperLogLog), membership (`kind: bloom`, a Bloom filter) or a plain number (`kind: count`).
//! Every period's key expires `keep` periods after the period closes, so memory is bounded by
//! `keep + 1` periods per id; without a period, a key expires `ttl` after its last write.

use std::path::Path;
use std::time::Duration;

use marked_yaml::{Node, Spanned};
use schemars::JsonSchema;
use serde::Deserialize;

use super::diagnostic::Location;
use super::period::{Period, PeriodText};
use super::raw::DurationText;
use super::validate::{Validator, loc};

/// The most closed periods a rule keeps (a year of days); also the longest range a read sums.
pub const MAX_KEEP: u64 = 366;
/// The most items one add or check may carry.
pub const MAX_MAX_BATCH: u64 = 10_000;
/// A Redis string holds at most 512 MiB, so a bitmap at most 2^32 bits.
pub const MAX_BLOOM_BITS: u64 = 1 << 32;
/// The smallest `error_rate`: 1e-6 already takes 20 hash positions per item.
pub const MIN_ERROR_RATE: f64 = 1e-6;
/// The largest `error_rate` a Bloom filter is worth having at.
pub const MAX_ERROR_RATE: f64 = 0.5;

/// A `counter` block, served at `/v1/counters/{app}/{rule}/{id}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCounter {
    /// `unique` (distinct items, HyperLogLog, 0.81% standard error), `bloom` (membership,
    /// a Bloom filter) or `count` (a plain integer counter).
    #[schemars(with = "CounterKindName")]
    pub kind: Spanned<String>,
    /// `none` (default), `day`, `week`, `month` (UTC, ISO weeks) or a duration such as `1h`
    /// (fixed periods counted from the Unix epoch, whole seconds, at least `1s`).
    #[serde(default)]
    #[schemars(with = "Option<PeriodText>")]
    pub period: Option<Spanned<String>>,
    /// Closed periods kept and readable (default 7, at most 366); a period's keys expire
    /// `keep` periods after it closes. Only with a `period`.
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1, max = 366))]
    pub keep: Option<Spanned<i64>>,
    /// Without a `period`: keys expire this long after their last write (default `30d`).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub ttl: Option<Spanned<String>>,
    /// The most items one add or check may carry (default 1000, at most 10000).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1, max = 10000))]
    pub max_batch: Option<Spanned<i64>>,
    /// `bloom`: the distinct items the filter is sized for; past it, answers say
    /// `saturated` (required for `bloom`).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub capacity: Option<Spanned<i64>>,
    /// `bloom`: the false-positive rate at `capacity` (default 0.01; 1e-6 to 0.5).
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub error_rate: Option<Spanned<f64>>,
    /// `bloom`: `auto` (default: RedisBloom when every primary has the module, else the Lua
    /// bitmap), `lua` or `redisbloom` (required: answers 503 where the module is missing).
    #[serde(default)]
    #[schemars(with = "Option<BloomBackendName>")]
    pub backend: Option<Spanned<String>>,
    /// `unique`: a count over several periods is kept this long and answered again (default:
    /// not kept, every range read merges).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub range_cache: Option<Spanned<String>>,
}

/// Schema-only: the `kind` values.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum CounterKindName {
    Unique,
    Bloom,
    Count,
}

/// Schema-only: the `backend` values.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum BloomBackendName {
    Auto,
    Lua,
    Redisbloom,
}

/// Where a Bloom filter lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BloomBackend {
    /// RedisBloom when every primary has it, else `Lua` (decided once per snapshot).
    Auto,
    /// A bitmap and k hash positions, in a Lua script.
    Lua,
    /// BF.INSERT / BF.MEXISTS.
    RedisBloom,
}

impl BloomBackend {
    pub fn name(self) -> &'static str {
        match self {
            BloomBackend::Auto => "auto",
            BloomBackend::Lua => "lua",
            BloomBackend::RedisBloom => "redisbloom",
        }
    }
}

/// A Bloom filter's size, from its capacity n and false-positive rate p:
/// m = ceil(-n·ln p / (ln 2)²) bits and k = round(m/n · ln 2) hash positions (at least 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BloomSize {
    pub capacity: u64,
    pub error_rate: f64,
    pub bits: u64,
    pub hashes: u32,
}

impl BloomSize {
    pub fn new(capacity: u64, error_rate: f64) -> Self {
        let n = capacity as f64;
        let ln2 = std::f64::consts::LN_2;
        let bits = (-n * error_rate.ln() / (ln2 * ln2)).ceil().max(1.0);
        let hashes = (bits / n * ln2).round().max(1.0);
        Self {
            capacity,
            error_rate,
            bits: bits as u64,
            hashes: hashes as u32,
        }
    }
}

/// What a rule counts.
#[derive(Debug, Clone, PartialEq)]
pub enum CounterKind {
    Unique {
        range_cache: Option<Duration>,
    },
    Bloom {
        size: BloomSize,
        backend: BloomBackend,
    },
    Count,
}

impl CounterKind {
    pub fn name(&self) -> &'static str {
        match self {
            CounterKind::Unique { .. } => "unique",
            CounterKind::Bloom { .. } => "bloom",
            CounterKind::Count => "count",
        }
    }
}

/// A validated `counter` rule.
#[derive(Debug, Clone)]
pub struct Counter {
    pub kind: CounterKind,
    pub period: Period,
    /// Closed periods kept (0 without a period).
    pub keep: u64,
    /// Without a period: the expiry after the last write.
    pub ttl: Duration,
    pub max_batch: u64,
    pub location: Location,
}

impl Validator {
    pub(super) fn counter(
        &mut self,
        path: &Path,
        _rule: &str,
        raw: &Spanned<RawCounter>,
        _body: &Node,
    ) -> Option<Counter> {
        let before = self.error_count();
        let at = loc(path, raw.span());
        let period = match &raw.period {
            None => Some(Period::None),
            Some(p) => self.period(path, "period", p),
        };
        let periodic = !matches!(period, Some(Period::None));
        let keep = match &raw.keep {
            Some(k) if !periodic => {
                self.err(
                    &loc(path, k.span()),
                    "`keep` needs a `period` (without one, keys expire `ttl` after their last write)",
                );
                0
            }
            None if periodic => 7,
            None => 0,
            Some(k) => self.at_most(path, "keep", k, MAX_KEEP).unwrap_or(7),
        };
        let ttl = match &raw.ttl {
            Some(t) if periodic => {
                self.err(
                    &loc(path, t.span()),
                    "`ttl` is for rules without a `period`; a period's keys expire `keep` periods after it closes",
                );
                None
            }
            Some(t) => self.duration(path, "ttl", t),
            None => Some(Duration::from_secs(30 * 86_400)),
        };
        let max_batch = raw
            .max_batch
            .as_ref()
            .and_then(|b| self.at_most(path, "max_batch", b, MAX_MAX_BATCH))
            .unwrap_or(1000);
        let kind_name = raw.kind.as_str();
        let only_for = |v: &mut Validator, field: &str, span: &marked_yaml::Span, kind: &str| {
            v.err(
                &loc(path, span),
                format!("`{field}` applies to `kind: {kind}` only, not `{kind_name}`"),
            );
        };
        if kind_name != "bloom" {
            for (field, span) in [
                ("capacity", raw.capacity.as_ref().map(|c| c.span())),
                ("error_rate", raw.error_rate.as_ref().map(|c| c.span())),
                ("backend", raw.backend.as_ref().map(|c| c.span())),
            ] {
                if let Some(span) = span {
                    only_for(self, field, span, "bloom");
                }
            }
        }
        if kind_name != "unique"
            && let Some(r) = &raw.range_cache
        {
            only_for(self, "range_cache", r.span(), "unique");
        }
        let kind = match kind_name {
            "unique" => {
                let range_cache = raw
                    .range_cache
                    .as_ref()
                    .and_then(|r| self.duration(path, "range_cache", r));
                Some(CounterKind::Unique { range_cache })
            }
            "count" => Some(CounterKind::Count),
            "bloom" => self.bloom(path, raw, &at),
            other => {
                self.err(
                    &loc(path, raw.kind.span()),
                    format!("unknown `kind` `{other}`; expected `unique`, `bloom` or `count`"),
                );
                None
            }
        };
        if self.error_count() > before {
            return None;
        }
        Some(Counter {
            kind: kind?,
            period: period?,
            keep,
            ttl: ttl?,
            max_batch,
            location: at,
        })
    }

    fn bloom(&mut self, path: &Path, raw: &RawCounter, at: &Location) -> Option<CounterKind> {
        let capacity = match &raw.capacity {
            None => {
                self.err(
                    at,
                    "`kind: bloom` needs a `capacity` (the distinct items the filter is sized for)",
                );
                None
            }
            Some(c) => self.positive(path, "capacity", c),
        };
        let error_rate = match &raw.error_rate {
            None => Some(0.01),
            Some(e) if !(MIN_ERROR_RATE..=MAX_ERROR_RATE).contains(&**e) => {
                self.err(
                    &loc(path, e.span()),
                    format!(
                        "`error_rate` must be between {MIN_ERROR_RATE} and {MAX_ERROR_RATE}, not {}",
                        **e
                    ),
                );
                None
            }
            Some(e) => Some(**e),
        };
        let backend = match raw.backend.as_ref().map(|b| (b.as_str(), b)) {
            None | Some(("auto", _)) => BloomBackend::Auto,
            Some(("lua", _)) => BloomBackend::Lua,
            Some(("redisbloom", _)) => BloomBackend::RedisBloom,
            Some((other, b)) => {
                self.err(
                    &loc(path, b.span()),
                    format!("unknown `backend` `{other}`; expected `auto`, `lua` or `redisbloom`"),
                );
                BloomBackend::Auto
            }
        };
        let size = BloomSize::new(capacity?, error_rate?);
        if size.bits > MAX_BLOOM_BITS {
            let span = raw
                .capacity
                .as_ref()
                .map_or(at.clone(), |c| loc(path, c.span()));
            self.err(
                &span,
                format!(
                    "a filter for {} items at error rate {} needs {} bits; a Redis bitmap holds at most 2^32",
                    size.capacity, size.error_rate, size.bits
                ),
            );
            return None;
        }
        Some(CounterKind::Bloom { size, backend })
    }

    /// A positive number at most `max`.
    fn at_most(&mut self, path: &Path, field: &str, n: &Spanned<i64>, max: u64) -> Option<u64> {
        let v = self.positive(path, field, n)?;
        if v > max {
            self.err(
                &loc(path, n.span()),
                format!("`{field}` {v} is above {max}"),
            );
            return None;
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook sizes: 1% at 9.59 bits and 7 hashes per item, 0.1% at 14.38 and 10.
    #[test]
    fn bloom_sizes_follow_the_formulas() {
        let s = BloomSize::new(1_000_000, 0.01);
        assert_eq!((s.bits, s.hashes), (9_585_059, 7));
        let s = BloomSize::new(10_000, 0.001);
        assert_eq!((s.bits, s.hashes), (143_776, 10));
        let s = BloomSize::new(1, 0.5);
        assert_eq!((s.bits, s.hashes), (2, 1));
    }
}
