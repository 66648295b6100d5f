//! The dashboard's history (`GET /admin/samples`, drawn by `GET /admin/ui`): every
//! [`SAMPLE_EVERY`] the engine reads its own Prometheus registry and keeps what changed
//! since the previous read, per second, in a ring of the last [`CAPACITY`] samples.
//!
//! Why a server-side ring rather than the page scraping `/metrics`: the page has minutes of
//! history the moment it opens (a browser that polls only knows what it saw), it downloads a
//! few hundred bytes a second instead of the whole exposition, and the aggregation (rates,
//! histogram quantiles) is Rust with unit tests rather than JavaScript. Why read the
//! rendered exposition rather than hook the recorder: it is exactly what `/metrics` says, and
//! every metric of [`crate::metrics::ALL`] (those of patterns added later too) is sampled
//! without touching a call site.
//!
//! Bounds: the ring holds [`CAPACITY`] samples; a sample holds, per metric family of `ALL`,
//! one number per value of its breakdown label (a fixed list), one latency summary per
//! histogram, and one rate per rule that moved (the rules are the policy's). A read renders
//! the registry once (the same work as one scrape). Sample times are the engine's clock:
//! they only place points on a chart, nothing compares them with Redis time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::metrics::{ALL, Kind, Metric};

/// How often the registry is read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples kept: five minutes at one a second.
pub const CAPACITY: usize = 300;

/// One interval between two reads of the registry. Counters are per-second rates over the
/// interval, gauges their value at its end; families and entries that were zero are left out.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Increases by one per sample, so a client asks for what it has not seen (`?after=`).
    pub seq: u64,
    /// The end of the interval, Unix ms (the engine's clock).
    pub t_ms: u64,
    /// The interval's length, ms.
    pub interval_ms: u64,
    /// Counter family → breakdown label value (`outcome`, `result`, `event`, …; `total` for a
    /// family without one) → per second.
    pub rates: BTreeMap<&'static str, BTreeMap<String, f64>>,
    /// Gauge family → breakdown label value → value, summed over apps and rules.
    pub gauges: BTreeMap<&'static str, BTreeMap<String, f64>>,
    /// Histogram family → what its observations in the interval were.
    pub latency: BTreeMap<&'static str, Latency>,
    /// `app/rule` → per second, every counter of the rule added up (its activity).
    pub rules: BTreeMap<String, f64>,
}

/// A histogram over one interval, all its series merged. Quantiles are estimated from the
/// bucket counts as Prometheus' `histogram_quantile` does (linear within a bucket).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub per_s: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

/// The ring of samples, shared by the sampler task and the handler.
#[derive(Debug)]
pub struct Samples {
    ring: Mutex<VecDeque<Arc<Sample>>>,
}

impl Default for Samples {
    fn default() -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(CAPACITY)),
        }
    }
}

impl Samples {
    fn push(&self, sample: Sample) {
        // A poisoned lock only means a panic elsewhere mid-push; the ring is still whole.
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(Arc::new(sample));
    }

    /// The newest sample's `seq` (a client that saw a greater one talks to a restarted engine).
    pub fn latest(&self) -> Option<u64> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.back().map(|s| s.seq)
    }

    /// The samples newer than `after` (all of them without), oldest first.
    pub fn after(&self, after: Option<u64>) -> Vec<Arc<Sample>> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter()
            .filter(|s| after.is_none_or(|a| s.seq > a))
            .cloned()
            .collect()
    }
}

/// Reads the registry every [`SAMPLE_EVERY`] into `samples`, for as long as the engine runs.
pub async fn run(handle: PrometheusHandle, samples: Arc<Samples>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let families = Families::new();
    let mut prev: Option<Totals> = None;
    let mut seq = 0;
    loop {
        tick.tick().await;
        // The time of the read is taken before rendering, so a slow render does not stretch
        // one interval and shrink the next.
        let at = Instant::now();
        let now = Totals::parse(&families, &handle.render(), at);
        if let Some(prev) = &prev {
            seq += 1;
            samples.push(now.since(prev, seq, unix_ms()));
        }
        prev = Some(now);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The families of [`ALL`] by exposition name, each with its breakdown label.
struct Families {
    by_name: HashMap<&'static str, (&'static Metric, Option<&'static str>)>,
}

impl Families {
    fn new() -> Self {
        let by_name = ALL
            .iter()
            .map(|m| {
                // The last label with a fixed list of values says what happened (`outcome`,
                // `result`, `event`, `state`, `kind`); `app` and `rule` are the policy's.
                let breakdown = m
                    .labels
                    .iter()
                    .rev()
                    .find(|(_, values)| !values.is_empty())
                    .map(|(name, _)| *name);
                (m.name, (m, breakdown))
            })
            .collect();
        Self { by_name }
    }

    /// The family a series name belongs to, and which part of a histogram it is.
    fn find(&self, series: &str) -> Option<(&'static Metric, Option<&'static str>, Part)> {
        if let Some(&(m, b)) = self.by_name.get(series) {
            return (m.kind != Kind::Histogram).then_some((m, b, Part::Value));
        }
        let (base, part) = [
            ("_bucket", Part::Bucket),
            ("_sum", Part::Sum),
            ("_count", Part::Count),
        ]
        .into_iter()
        .find_map(|(suffix, part)| series.strip_suffix(suffix).map(|b| (b, part)))?;
        let &(m, b) = self.by_name.get(base)?;
        (m.kind == Kind::Histogram).then_some((m, b, part))
    }
}

#[derive(Clone, Copy)]
enum Part {
    Value,
    Bucket,
    Sum,
    Count,
}

/// A histogram's series merged: cumulative count per upper bound, sum, count.
#[derive(Debug, Default, Clone)]
struct Hist {
    buckets: BTreeMap<Bound, f64>,
    sum: f64,
    count: f64,
}

/// A bucket's upper bound, ordered by `f64::total_cmp` (`+Inf` last).
#[derive(Debug, Clone, Copy)]
struct Bound(f64);
impl PartialEq for Bound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Bound {}
impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One read of the registry, summed the way samples show it.
#[derive(Debug)]
struct Totals {
    at: Instant,
    counters: HashMap<(&'static str, String), f64>,
    gauges: HashMap<(&'static str, String), f64>,
    rules: HashMap<String, f64>,
    hists: HashMap<&'static str, Hist>,
}

impl Totals {
    /// Sums the exposition text per family and breakdown value. Lines of families not in
    /// [`ALL`], comments and lines that do not parse are skipped.
    fn parse(families: &Families, text: &str, at: Instant) -> Self {
        let mut t = Totals {
            at,
            counters: HashMap::new(),
            gauges: HashMap::new(),
            rules: HashMap::new(),
            hists: HashMap::new(),
        };
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((name, labels, value)) = parse_line(line) else {
                continue;
            };
            let Some((m, breakdown, part)) = families.find(name) else {
                continue;
            };
            let label = |n: &str| labels.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
            let key = breakdown.and_then(label).unwrap_or("total").to_string();
            match part {
                Part::Value if m.kind == Kind::Counter => {
                    *t.counters.entry((m.name, key)).or_default() += value;
                    if let (Some(app), Some(rule)) = (label("app"), label("rule")) {
                        *t.rules.entry(format!("{app}/{rule}")).or_default() += value;
                    }
                }
                Part::Value => *t.gauges.entry((m.name, key)).or_default() += value,
                Part::Bucket => {
                    if let Some(le) = label("le").and_then(parse_number) {
                        let h = t.hists.entry(m.name).or_default();
                        *h.buckets.entry(Bound(le)).or_default() += value;
                    }
                }
                Part::Sum => t.hists.entry(m.name).or_default().sum += value,
                Part::Count => t.hists.entry(m.name).or_default().count += value,
            }
        }
        t
    }

    /// What changed from `prev` to `self`, per second.
    fn since(&self, prev: &Totals, seq: u64, t_ms: u64) -> Sample {
        // Rates are per the interval in whole ms, the length a sample states: a rate times
        // `interval_ms` / 1000 is the count again.
        let interval_ms = u64::try_from(self.at.saturating_duration_since(prev.at).as_millis())
            .unwrap_or(u64::MAX);
        let secs = interval_ms as f64 / 1000.0;
        // A counter never goes down within one process; a series that went missing (none
        // does today) would read as a drop, and counts as nothing.
        let rate = |now: f64, before: f64| {
            if secs > 0.0 {
                ((now - before) / secs).max(0.0)
            } else {
                0.0
            }
        };
        let mut rates: BTreeMap<&'static str, BTreeMap<String, f64>> = BTreeMap::new();
        for ((family, key), now) in &self.counters {
            let before = prev
                .counters
                .get(&(*family, key.clone()))
                .copied()
                .unwrap_or(0.0);
            let r = rate(*now, before);
            if r > 0.0 {
                rates.entry(*family).or_default().insert(key.clone(), r);
            }
        }
        let mut gauges: BTreeMap<&'static str, BTreeMap<String, f64>> = BTreeMap::new();
        for ((family, key), v) in &self.gauges {
            if *v != 0.0 {
                gauges.entry(*family).or_default().insert(key.clone(), *v);
            }
        }
        let rules = self
            .rules
            .iter()
            .map(|(rule, now)| {
                let before = prev.rules.get(rule).copied().unwrap_or(0.0);
                (rule.clone(), rate(*now, before))
            })
            .filter(|(_, r)| *r > 0.0)
            .collect();
        let latency = self
            .hists
            .iter()
            .filter_map(|(family, h)| {
                let empty = Hist::default();
                let before = prev.hists.get(family).unwrap_or(&empty);
                h.since(before, secs).map(|l| (*family, l))
            })
            .collect();
        Sample {
            seq,
            t_ms,
            interval_ms,
            rates,
            gauges,
            latency,
            rules,
        }
    }
}

impl Hist {
    /// The observations between `before` and `self`; `None` when there were none.
    fn since(&self, before: &Hist, secs: f64) -> Option<Latency> {
        let count = self.count - before.count;
        if count <= 0.0 || secs <= 0.0 {
            return None;
        }
        let buckets: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .map(|(le, cum)| (le.0, cum - before.buckets.get(le).copied().unwrap_or(0.0)))
            .collect();
        let ms = 1000.0;
        Some(Latency {
            per_s: count / secs,
            mean_ms: (self.sum - before.sum) / count * ms,
            p50_ms: quantile(&buckets, 0.5) * ms,
            p95_ms: quantile(&buckets, 0.95) * ms,
        })
    }
}

/// The `q` quantile of cumulative buckets `(upper bound, count)`, sorted by bound, as
/// Prometheus estimates it: linear between a bucket's lower and upper bound; in the `+Inf`
/// bucket, the highest finite bound.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return 0.0;
    };
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, cum) in buckets {
        if cum >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let in_bucket = cum - lower.1;
            if in_bucket <= 0.0 {
                return le;
            }
            return lower.0 + (le - lower.0) * (rank - lower.1) / in_bucket;
        }
        lower = (le, cum);
    }
    lower.0
}

/// A series' labels, as (name, value) pairs in the order written.
type Labels = Vec<(String, String)>;

/// `name{label="value",…} number` (labels optional, values with `\\`, `\"`, `\n` escapes).
fn parse_line(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
    }
    // A timestamp may follow the value; the exporter writes none.
    let value = rest.split_whitespace().next().and_then(parse_number)?;
    Some((name, labels, value))
}

fn parse_number(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        s => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# HELP patternd_decisions_total Rate-limit decisions.
# TYPE patternd_decisions_total counter
patternd_decisions_total{app="shop",rule="api",pattern="ratelimit",outcome="allowed"} 10
patternd_decisions_total{app="shop",rule="api",pattern="ratelimit",outcome="denied"} 0
patternd_decisions_total{app="shop",rule="login",pattern="ratelimit",outcome="allowed"} 5
patternd_queue_jobs{app="shop",rule="jobs",state="ready"} 4
patternd_cache_origin_seconds_bucket{app="shop",rule="page",le="0.01"} 1
patternd_cache_origin_seconds_bucket{app="shop",rule="page",le="0.1"} 2
patternd_cache_origin_seconds_bucket{app="shop",rule="page",le="+Inf"} 2
patternd_cache_origin_seconds_sum{app="shop",rule="page"} 0.06
patternd_cache_origin_seconds_count{app="shop",rule="page"} 2
patternd_redis_breaker_open 0
not_ours_total 7
"#;

    const AFTER: &str = r#"patternd_decisions_total{app="shop",rule="api",pattern="ratelimit",outcome="allowed"} 14
patternd_decisions_total{app="shop",rule="api",pattern="ratelimit",outcome="denied"} 6
patternd_decisions_total{app="shop",rule="login",pattern="ratelimit",outcome="allowed"} 7
patternd_queue_jobs{app="shop",rule="jobs",state="ready"} 3
patternd_queue_jobs{app="shop",rule="mail",state="ready"} 2
patternd_cache_origin_seconds_bucket{app="shop",rule="page",le="0.01"} 1
patternd_cache_origin_seconds_bucket{app="shop",rule="page",le="0.1"} 6
patternd_cache_origin_seconds_bucket{app="shop",rule="page",le="+Inf"} 6
patternd_cache_origin_seconds_sum{app="shop",rule="page"} 0.26
patternd_cache_origin_seconds_count{app="shop",rule="page"} 6
patternd_redis_breaker_open 0
not_ours_total 9
"#;

    fn sample() -> Sample {
        let f = Families::new();
        let t0 = Instant::now();
        let before = Totals::parse(&f, BEFORE, t0);
        let after = Totals::parse(&f, AFTER, t0 + Duration::from_secs(2));
        after.since(&before, 7, 1_000)
    }

    #[test]
    fn counters_become_per_second_rates_by_their_breakdown_label() {
        let s = sample();
        assert_eq!((s.seq, s.t_ms, s.interval_ms), (7, 1_000, 2_000));
        let d = &s.rates["patternd_decisions_total"];
        // allowed: (14 - 10) + (7 - 5) over 2 s; denied: 6 over 2 s.
        assert_eq!(d["allowed"], 3.0);
        assert_eq!(d["denied"], 3.0);
        assert_eq!(d.len(), 2);
        assert_eq!(s.rules["shop/api"], 5.0);
        assert_eq!(s.rules["shop/login"], 1.0);
        // Families outside metrics::ALL are not sampled.
        assert!(!s.rates.keys().any(|k| k.starts_with("not_ours")));
    }

    #[test]
    fn gauges_are_summed_over_rules_and_zeros_left_out() {
        let s = sample();
        assert_eq!(s.gauges["patternd_queue_jobs"]["ready"], 5.0);
        assert!(!s.gauges.contains_key("patternd_redis_breaker_open"));
    }

    #[test]
    fn histograms_give_the_interval_s_rate_mean_and_quantiles() {
        let s = sample();
        let l = &s.latency["patternd_cache_origin_seconds"];
        // 4 observations in 2 s, all in (0.01, 0.1], summing 0.2 s.
        assert_eq!(l.per_s, 2.0);
        assert!((l.mean_ms - 50.0).abs() < 1e-9, "{l:?}");
        // Ranks 2 and 3.8 of 4 in the one bucket that moved: linear from 10 ms to 100 ms.
        assert!((l.p50_ms - 55.0).abs() < 1e-9, "{l:?}");
        assert!((l.p95_ms - 95.5).abs() < 1e-9, "{l:?}");
    }

    #[test]
    fn an_interval_without_observations_has_no_latency() {
        let f = Families::new();
        let t0 = Instant::now();
        let a = Totals::parse(&f, BEFORE, t0);
        let b = Totals::parse(&f, BEFORE, t0 + Duration::from_secs(1));
        let s = b.since(&a, 1, 0);
        assert!(s.latency.is_empty() && s.rates.is_empty() && s.rules.is_empty());
    }

    #[test]
    fn quantiles_in_the_infinite_bucket_are_the_highest_finite_bound() {
        let b = [(0.1, 0.0), (1.0, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(&b, 0.95), 1.0);
        assert!((quantile(&b, 0.05) - 0.55).abs() < 1e-12);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn label_values_are_unescaped() {
        let (name, labels, v) =
            parse_line(r#"x_total{a="q\"uo\\te",b="line\nbreak"} 3.5"#).expect("parses");
        assert_eq!(name, "x_total");
        assert_eq!(v, 3.5);
        assert_eq!(
            labels,
            [
                ("a".to_string(), "q\"uo\\te".to_string()),
                ("b".to_string(), "line\nbreak".to_string())
            ]
        );
        assert!(parse_line("broken{a=\"x} 1").is_none());
        assert_eq!(parse_line("bare 2").map(|l| l.2), Some(2.0));
    }

    #[test]
    fn the_ring_keeps_the_last_capacity_samples() {
        let samples = Samples::default();
        let mut s = sample();
        for seq in 1..=(CAPACITY as u64 + 5) {
            s.seq = seq;
            samples.push(s.clone());
        }
        let all = samples.after(None);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all.first().map(|s| s.seq), Some(6));
        assert_eq!(samples.latest(), Some(CAPACITY as u64 + 5));
        let newer = samples.after(Some(CAPACITY as u64 + 3));
        assert_eq!(
            newer.iter().map(|s| s.seq).collect::<Vec<_>>(),
            [CAPACITY as u64 + 4, CAPACITY as u64 + 5]
        );
    }

    /// Every family of `ALL` is found under its exposition names, and only those.
    #[test]
    fn every_family_is_recognised() {
        let f = Families::new();
        for m in ALL {
            match m.kind {
                Kind::Histogram => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        assert!(
                            f.find(&format!("{}{suffix}", m.name)).is_some(),
                            "{}",
                            m.name
                        );
                    }
                    assert!(f.find(m.name).is_none());
                }
                _ => assert!(f.find(m.name).is_some(), "{}", m.name),
            }
        }
        // A counter has no `_sum` series (built, so the metric-name scan does not see one).
        assert!(f.find(&format!("{}_sum", ALL[3].name)).is_none());
    }
}
