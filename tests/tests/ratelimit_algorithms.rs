//! Exact decisions for every algorithm, against a reference model written here.
//!
//! Windows are a day long, so refill and window roll-over cannot change a count during a test
//! that lasts seconds: every algorithm then reduces to one model, "a capacity C; a request of
//! cost c is admitted iff used + c <= C; a denial charges nothing", and the engine must agree
//! with it exactly, request by request, including `remaining`.
//!
//! Every test runs on a standalone Redis and on a three-primary cluster, with ids spread so
//! their keys reach every primary.

use std::collections::BTreeMap;

use anyhow::Result;
use patternd_e2e::{Backend, Reply, World, burst, on_every_backend, send};

/// Every algorithm with its rule name in the test policy.
const ALGORITHMS: [(&str, &str); 6] = [
    ("fw", "fixed_window"),
    ("sw", "sliding_window"),
    ("sl", "sliding_log"),
    ("tb", "token_bucket"),
    ("gc", "gcra"),
    ("cc", "concurrency"),
];

/// One limit block; concurrency takes a lease instead of a window.
fn limit_yaml(algorithm: &str, limit: u64, burst: Option<u64>) -> String {
    let span = if algorithm == "concurrency" {
        "lease: 1h"
    } else {
        "window: 1d"
    };
    let burst = burst.map(|b| format!(", burst: {b}")).unwrap_or_default();
    format!("{{ algorithm: {algorithm}, limit: {limit}, {span}{burst} }}")
}

/// A policy with one rule per algorithm, all with `limit`, named `<prefix><code>`.
fn policy(app: &str, prefix: &str, limit: u64) -> String {
    let mut y = format!("app: {app}\nrules:\n");
    for (code, alg) in ALGORITHMS {
        y.push_str(&format!(
            "  {prefix}{code}:\n    rate_limit: {}\n",
            limit_yaml(alg, limit, None)
        ));
    }
    y
}

/// The reference model shared by every algorithm when time does not matter.
struct Model {
    capacity: u64,
    used: u64,
}

impl Model {
    fn new(capacity: u64) -> Self {
        Self { capacity, used: 0 }
    }

    /// (allowed, remaining) for a request of `cost`, updating the state like the engine must.
    fn request(&mut self, cost: u64) -> (bool, u64) {
        if self.used + cost <= self.capacity {
            self.used += cost;
            (true, self.capacity - self.used)
        } else {
            (false, self.capacity - self.used)
        }
    }
}

fn assert_decision(r: &Reply, allowed: bool, remaining: u64, limit: u64, ctx: &str) {
    assert_eq!(
        r.status,
        if allowed { 200 } else { 429 },
        "{ctx}: status: {r:?}"
    );
    assert_eq!(r.allowed(), allowed, "{ctx}: allowed: {r:?}");
    assert_eq!(r.remaining(), remaining, "{ctx}: remaining: {r:?}");
    assert_eq!(r.u64_field("limit"), limit, "{ctx}: limit: {r:?}");
    assert!(!r.degraded(), "{ctx}: degraded with Redis up: {r:?}");
    assert!(
        r.content_type().starts_with("application/json"),
        "{ctx}: {r:?}"
    );
    if allowed {
        assert!(r.header("retry-after").is_none(), "{ctx}: {r:?}");
        assert_eq!(r.u64_field("retry_after_ms"), 0, "{ctx}: {r:?}");
    } else {
        let secs: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{ctx}: 429 without a numeric Retry-After: {r:?}"));
        assert!(secs >= 1, "{ctx}: {r:?}");
        assert!(r.u64_field("retry_after_ms") >= 1, "{ctx}: {r:?}");
    }
}

/// Ids (`{prefix}N`) whose keys land on each primary of a cluster, used in turn.
fn spread_ids(b: &Backend, prefix: &str) -> Result<Vec<String>> {
    // Every key of an id carries it as the hash tag: its slot is the id's.
    b.spread_ids(prefix, |id| format!("{{{id}}}"))
}

async fn every_algorithm_matches_the_model_with_costs(b: Backend) -> Result<()> {
    let w = World::on(b, &[("alg.yaml", &policy("alg", "", 10))], &[]).await?;
    let p = &w.patternd;
    let ids = spread_ids(&w.redis, "user-")?;
    // Mixed costs against a capacity of 10, with denials in the middle (which must charge
    // nothing) and cost 0 (a pure query).
    let costs = [3, 1, 2, 5, 1, 0, 4, 1, 1, 2, 1, 1, 0];
    for (n, (code, alg)) in ALGORITHMS.into_iter().enumerate() {
        let (id, other) = (&ids[n % ids.len()], &ids[(n + 1) % ids.len()]);
        let mut model = Model::new(10);
        // Concurrency is a number in flight: no window, the draft's `concurrent-requests`
        // unit; token_bucket and gcra add their burst.
        let policy_header = match alg {
            "concurrency" => format!("\"{code}\";q=10;qu=\"concurrent-requests\""),
            "token_bucket" | "gcra" => format!("\"{code}\";q=10;w=86400;patternd-burst=10"),
            _ => format!("\"{code}\";q=10;w=86400"),
        };
        for (i, &cost) in costs.iter().enumerate() {
            let (allowed, remaining) = model.request(cost);
            let r = p.check("alg", code, id, cost).await?;
            let ctx = format!("{alg} request #{i} cost {cost}");
            assert_decision(&r, allowed, remaining, 10, &ctx);
            assert_eq!(
                r.header("ratelimit-policy"),
                Some(policy_header.as_str()),
                "{ctx}: {r:?}"
            );
            assert_eq!(
                r.header("ratelimit")
                    .and_then(|h| h.split(';').nth(1))
                    .map(str::to_string),
                Some(format!("r={remaining}")),
                "{ctx}: RateLimit header: {r:?}"
            );
            // Concurrency hands out a lease for every admitted request that holds a slot.
            let wants_lease = alg == "concurrency" && allowed && cost > 0;
            assert_eq!(r.lease().is_some(), wants_lease, "{ctx}: lease: {r:?}");
        }
        assert_eq!(
            model.used, 10,
            "{alg}: the sequence should fill the capacity"
        );
        // Another id is untouched by all of the above.
        let r = p.check("alg", code, other, 10).await?;
        assert_decision(&r, true, 0, 10, &format!("{alg}: a fresh id"));
    }
    Ok(())
}

on_every_backend!(every_algorithm_matches_the_model_with_costs);

async fn burst_admits_exactly_burst_and_defaults_to_limit(b: Backend) -> Result<()> {
    let yaml = format!(
        "app: burst\nrules:\n  tb_burst:\n    rate_limit: {}\n  gc_burst:\n    rate_limit: {}\n  tb_default:\n    rate_limit: {}\n  gc_default:\n    rate_limit: {}\n",
        limit_yaml("token_bucket", 5, Some(12)),
        limit_yaml("gcra", 5, Some(12)),
        limit_yaml("token_bucket", 5, None),
        limit_yaml("gcra", 5, None),
    );
    let w = World::on(b, &[("burst.yaml", &yaml)], &[]).await?;
    let p = &w.patternd;
    let ids = spread_ids(&w.redis, "client-")?;
    let (client, fresh, fresh2) = (&ids[0], &ids[1], &ids[2]);
    for (rule, capacity) in [
        ("tb_burst", 12),
        ("gc_burst", 12),
        ("tb_default", 5),
        ("gc_default", 5),
    ] {
        let mut admitted = 0;
        for i in 0..capacity + 3 {
            let r = p.check("burst", rule, client, 1).await?;
            let allowed = i < capacity;
            // `limit` is the quota per window (5); the bucket's capacity is `burst`, and what
            // it holds now (`remaining`) may exceed `limit`.
            let remaining = capacity - (i + 1).min(capacity);
            assert_decision(&r, allowed, remaining, 5, &format!("{rule} #{i}"));
            assert_eq!(r.u64_field("burst"), capacity, "{rule} #{i}: {r:?}");
            admitted += u64::from(r.allowed());
        }
        assert_eq!(admitted, capacity, "{rule}");
        // The whole burst in one request is allowed from a fresh id; one more unit is bad input
        // (it could never be allowed), not a denial.
        let r = p.check("burst", rule, fresh, capacity).await?;
        assert_decision(&r, true, 0, 5, &format!("{rule}: whole burst at once"));
        p.check("burst", rule, fresh2, capacity + 1)
            .await?
            .assert_problem(400);
    }
    Ok(())
}

on_every_backend!(burst_admits_exactly_burst_and_defaults_to_limit);

async fn concurrent_requests_admit_exactly_the_limit(b: Backend) -> Result<()> {
    // The Redis timeout is raised so that 200 requests queued on a loaded 2-core machine
    // cannot turn into degraded decisions: this test is about atomicity, not latency.
    let w = World::on(
        b,
        &[("conc.yaml", &policy("conc", "", 50))],
        &["--redis-timeout", "10s"],
    )
    .await?;
    let ids = spread_ids(&w.redis, "hot-")?;
    for (n, (code, alg)) in ALGORITHMS.into_iter().enumerate() {
        let id = &ids[n % ids.len()];
        let replies = burst(200, |_| {
            let p = &w.patternd;
            send(
                p.client()
                    .post(p.url(&format!("/v1/ratelimit/conc/{code}")))
                    .json(&serde_json::json!({"id": id, "cost": 1})),
            )
        })
        .await?;
        let mut statuses: BTreeMap<u16, u32> = BTreeMap::new();
        let mut remaining_seen = Vec::new();
        for r in &replies {
            assert_eq!(r.json["degraded"], false, "{alg}: {}", r.json);
            *statuses.entry(r.status).or_default() += 1;
            if r.status == 200 {
                remaining_seen.push(r.json["remaining"].as_u64().unwrap_or(u64::MAX));
            }
        }
        assert_eq!(
            statuses,
            BTreeMap::from([(200, 50), (429, 150)]),
            "{alg}: 200 concurrent requests against a limit of 50"
        );
        // Each admitted request saw a distinct remaining count 49..=0: the decisions were
        // serialized, none was computed from a stale read.
        remaining_seen.sort_unstable();
        assert_eq!(remaining_seen, (0..50).collect::<Vec<u64>>(), "{alg}");
    }
    Ok(())
}

on_every_backend!(concurrent_requests_admit_exactly_the_limit);

/// Key of limit `sub` of rule `rule` for `id` (plain ids need no escaping).
fn key(app: &str, rule: &str, id: &str, sub: &str) -> String {
    format!("{app}:ratelimit:{rule}:{{{id}}}:{sub}")
}

async fn several_limits_are_all_or_nothing(b: Backend) -> Result<()> {
    let yaml = "app: multi
rules:
  login:
    rate_limit:
      limits:
        - { algorithm: fixed_window, limit: 5, window: 1d }
        - { algorithm: fixed_window, limit: 3, window: 1d }
  mixed:
    rate_limit:
      limits:
        - { algorithm: fixed_window, limit: 12, window: 1d }
        - { algorithm: sliding_window, limit: 11, window: 1d }
        - { algorithm: sliding_log, limit: 10, window: 1d }
        - { algorithm: token_bucket, limit: 9, window: 1d }
        - { algorithm: gcra, limit: 8, window: 1d }
";
    let w = World::on(b, &[("multi.yaml", yaml)], &[]).await?;
    let p = &w.patternd;
    // Two ids on two primaries of a cluster.
    let ids = spread_ids(&w.redis, "user-")?;
    let (alice, bob) = (ids[0].as_str(), ids[1].as_str());
    let mut conn = w
        .redis
        .conn_for_key(key("multi", "login", alice, "0fw"))
        .await?;

    // login: the second (smaller) limit denies from the 4th request on.
    for i in 0..6u64 {
        let r = p.check("multi", "login", alice, 1).await?;
        let allowed = i < 3;
        assert_decision(
            &r,
            allowed,
            2u64.saturating_sub(i),
            3,
            &format!("login #{i}"),
        );
        // The reported item is the limit that decided: `login-1`, the 3-per-day one.
        assert!(
            r.header("ratelimit")
                .is_some_and(|h| h.starts_with("\"login-1\";")),
            "{r:?}"
        );
    }
    assert_eq!(
        r_get(&mut conn, &key("multi", "login", alice, "0fw")).await?,
        Some("3".to_string()),
        "denials must not charge the 5-per-day limit"
    );
    assert_eq!(
        r_get(&mut conn, &key("multi", "login", alice, "1fw")).await?,
        Some("3".to_string())
    );
    let r = p.check("multi", "login", alice, 0).await?;
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"login-0\";q=5;w=86400, \"login-1\";q=3;w=86400"),
        "{r:?}"
    );

    // mixed: every algorithm in one script; gcra (8) is the tightest.
    let mut model = Model::new(8);
    for (i, cost) in [3u64, 4, 2, 1, 1, 2, 1].into_iter().enumerate() {
        let (allowed, remaining) = model.request(cost);
        let r = p.check("multi", "mixed", bob, cost).await?;
        assert_decision(
            &r,
            allowed,
            remaining,
            8,
            &format!("mixed #{i} cost {cost}"),
        );
    }
    assert_eq!(model.used, 8);
    // Read every limit's own state: each was charged exactly the admitted 8, none of the
    // denied costs (2, 1, 2, 1).
    let id = bob;
    let mut conn = w
        .redis
        .conn_for_key(key("multi", "mixed", id, "0fw"))
        .await?;
    let fw = r_get(&mut conn, &key("multi", "mixed", id, "0fw")).await?;
    assert_eq!(fw.as_deref(), Some("8"), "fixed_window counter");
    let sw: Vec<u8> = redis::cmd("GET")
        .arg(key("multi", "mixed", id, "1sw"))
        .query_async(&mut conn)
        .await?;
    let [_, c, prev, _] = patternd_e2e::sliding_fields(&sw)?;
    // A day boundary between two requests moves counts from `c` to `p`; their sum is what
    // was charged either way.
    assert_eq!(c + prev, 8.0, "sliding_window counts");
    // The log keeps one member per admitted request, `<running total>:<cost>`.
    let log: Vec<String> = redis::cmd("ZRANGE")
        .arg(key("multi", "mixed", id, "2wl"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    let costs: Vec<u64> = log
        .iter()
        .filter_map(|m| m.split_once(':').and_then(|(_, c)| c.parse().ok()))
        .collect();
    assert_eq!(costs.len(), log.len(), "sliding_log members: {log:?}");
    assert_eq!(costs.iter().sum::<u64>(), 8, "sliding_log entries: {log:?}");
    let tokens: f64 = redis::cmd("HGET")
        .arg(key("multi", "mixed", id, "3tb"))
        .arg("t")
        .query_async(&mut conn)
        .await?;
    // 9 - 8 = 1 token, plus a refill of 9 per day over the seconds this test ran.
    assert_eq!(tokens.floor(), 1.0, "token_bucket tokens: {tokens}");
    let tat: f64 = redis::cmd("GET")
        .arg(key("multi", "mixed", id, "4gc"))
        .query_async(&mut conn)
        .await?;
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
    let now_ms = secs as f64 * 1000.0 + micros as f64 / 1000.0;
    let interval = 86_400_000.0 / 8.0;
    // The theoretical arrival time is 8 intervals past the first request; at most a few
    // seconds of it have elapsed, far less than one 3-hour interval.
    let charged = ((tat - now_ms) / interval).ceil();
    assert_eq!(charged, 8.0, "gcra charged units (tat {tat}, now {now_ms})");
    Ok(())
}

on_every_backend!(several_limits_are_all_or_nothing);

async fn r_get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Result<Option<String>> {
    Ok(redis::cmd("GET").arg(key).query_async(conn).await?)
}
