//! Batched script calls (`--redis-batch`, `store/batch.rs`): rate-limit decisions against the
//! reference model, and cache reads (the read script wrapped by `compile/batch.rs`).
//!
//! Many ids send at once, each its own requests one after the other: the engine then has many
//! decisions waiting for Redis at the same moment and sends them in batch script calls, while
//! each id's decisions still come in a known order, so every reply can be checked exactly
//! against that id's model ("a capacity C; a request of cost c is admitted iff used + c <= C;
//! a denial charges nothing", every window a day long so time changes nothing).
//!
//! The same requests run with batching on (the default, on a standalone Redis), with
//! `--redis-batch 0`, and on a cluster (where the engine never batches); the metrics say which
//! path ran.

use anyhow::{Context as _, Result, ensure};
use patternd_e2e::origin::Origin;
use patternd_e2e::{
    Backend, Reply, World, burst, cache_status, metric_value, on_every_backend, send,
};

/// The rules: every windowed algorithm with a capacity of 10, and a rule of two limits (7 an
/// hour and 10 a day) decided all or nothing.
const POLICY: &str = "app: batch
rules:
  fw:
    rate_limit: { algorithm: fixed_window, limit: 10, window: 1d }
  sw:
    rate_limit: { algorithm: sliding_window, limit: 10, window: 1d }
  sl:
    rate_limit: { algorithm: sliding_log, limit: 10, window: 1d }
  tb:
    rate_limit: { algorithm: token_bucket, limit: 10, window: 1d }
  gc:
    rate_limit: { algorithm: gcra, limit: 10, window: 1d }
  two:
    rate_limit:
      limits:
        - { algorithm: fixed_window, limit: 7, window: 1h }
        - { algorithm: fixed_window, limit: 10, window: 1d }
";

const RULES: [&str; 6] = ["fw", "sw", "sl", "tb", "gc", "two"];

/// Ids sending at once, and requests each sends in turn.
const IDS: usize = 48;
const REQUESTS: usize = 14;

/// The expected answer to one request: (allowed, remaining, the limit reported).
type Expected = (bool, u64, u64);

/// The model of one id of `rule`: its answers to `costs`, in order.
fn model(rule: &str, costs: &[u64]) -> Vec<Expected> {
    let mut used = 0;
    costs
        .iter()
        .map(|&c| {
            if rule == "two" {
                // Admitted within both; the reply names the limit with the least left when
                // admitted (the hourly 7), and the denying limit with the longest wait when
                // denied (the daily 10 when both deny: its window ends later).
                if used + c <= 7 {
                    used += c;
                    (true, 7 - used, 7)
                } else if used + c > 10 {
                    (false, 10 - used, 10)
                } else {
                    (false, 7 - used, 7)
                }
            } else if used + c <= 10 {
                used += c;
                (true, 10 - used, 10)
            } else {
                (false, 10 - used, 10)
            }
        })
        .collect()
}

/// Costs 0 to 4 for id `n` (a fixed pseudo-random sequence per id): enough to fill the
/// capacity, with denials after it, and cost-0 queries on the way.
fn costs(n: usize) -> Vec<u64> {
    let mut x = (n as u64).wrapping_mul(2_654_435_761).wrapping_add(12_345);
    (0..REQUESTS)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % 5
        })
        .collect()
}

fn check(r: &Reply, (allowed, remaining, limit): Expected, ctx: &str) -> Result<()> {
    ensure!(!r.degraded(), "{ctx}: degraded with Redis up: {r:?}");
    ensure!(
        r.status == if allowed { 200 } else { 429 },
        "{ctx}: status: {r:?}"
    );
    ensure!(r.allowed() == allowed, "{ctx}: allowed: {r:?}");
    ensure!(
        r.remaining() == remaining,
        "{ctx}: remaining {remaining}: {r:?}"
    );
    ensure!(r.u64_field("limit") == limit, "{ctx}: limit {limit}: {r:?}");
    Ok(())
}

/// Every rule: `IDS` ids at once, each id's requests in turn, every reply against the model.
/// Returns (batch calls, calls in batches) from the metrics.
async fn every_id_matches_its_model(w: &World) -> Result<(f64, f64)> {
    let p = &w.patternd;
    for rule in RULES {
        let results = burst(IDS, |n| {
            let client = p.client().clone();
            let url = p.url(&format!("/v1/ratelimit/batch/{rule}"));
            async move {
                let id = format!("id-{n}");
                let costs = costs(n);
                let mut replies = Vec::with_capacity(costs.len());
                for &cost in &costs {
                    let r = send(
                        client
                            .post(&url)
                            .json(&serde_json::json!({"id": id, "cost": cost})),
                    )
                    .await?;
                    replies.push(r);
                }
                Ok((costs, replies))
            }
        })
        .await?;
        for (n, (costs, replies)) in results.iter().enumerate() {
            for (i, (r, e)) in replies.iter().zip(model(rule, costs)).enumerate() {
                check(r, e, &format!("{rule}, id-{n}, request #{i} of {costs:?}"))?;
            }
        }
    }
    let metrics = p.get("/metrics").await?.text;
    let batches = metric_value(&metrics, "patternd_redis_batches_total", &[])
        .context("patternd_redis_batches_total missing")?;
    let batched = metric_value(&metrics, "patternd_redis_batched_calls_total", &[])
        .context("patternd_redis_batched_calls_total missing")?;
    Ok((batches, batched))
}

async fn decisions_match_the_model_with_many_ids_at_once(b: Backend) -> Result<()> {
    // A loaded 2-core machine must not turn queued decisions into degraded ones.
    let is_cluster = matches!(b, Backend::Cluster(_));
    let w = World::on(b, &[("batch.yaml", POLICY)], &["--redis-timeout", "10s"]).await?;
    let (batches, batched) = every_id_matches_its_model(&w).await?;
    if is_cluster {
        ensure!(
            batches == 0.0 && batched == 0.0,
            "a cluster never batches: {batches} batches of {batched} calls"
        );
    } else {
        // Every decision went through the batcher, and with 48 ids sending at once some
        // batches held several decisions (the path this file exists to check).
        let decisions = (RULES.len() * IDS * REQUESTS) as f64;
        ensure!(
            batched == decisions,
            "{batched} calls in batches for {decisions} decisions"
        );
        ensure!(
            batched > batches,
            "no batch held more than one decision: {batches} batches of {batched} calls"
        );
    }
    Ok(())
}

on_every_backend!(decisions_match_the_model_with_many_ids_at_once);

/// The same requests with batching off: one script call per decision, no batch.
#[test]
fn decisions_match_the_model_without_batching() -> patternd_e2e::backend::TestResult {
    patternd_e2e::backend::run(Backend::standalone, |b| async move {
        let w = World::on(
            b,
            &[("batch.yaml", POLICY)],
            &["--redis-timeout", "10s", "--redis-batch", "0"],
        )
        .await?;
        let (batches, batched) = every_id_matches_its_model(&w).await?;
        ensure!(
            batches == 0.0 && batched == 0.0,
            "--redis-batch 0 batched: {batches} batches of {batched} calls"
        );
        Ok(())
    })
}

/// One id whose key holds another type fails alone: the other decisions of its batch stand.
async fn a_broken_key_fails_only_its_own_decision(b: Backend) -> Result<()> {
    let w = World::on(b, &[("batch.yaml", POLICY)], &["--redis-timeout", "10s"]).await?;
    let bad = "broken";
    let key = format!("batch:ratelimit:fw:{{{bad}}}:0fw");
    let mut conn = w.redis.conn_for_key(&key).await?;
    redis::cmd("HSET")
        .arg(&key)
        .arg("x")
        .arg("1")
        .query_async::<()>(&mut conn)
        .await?;
    let p = &w.patternd;
    let replies = burst(64, |n| {
        let client = p.client().clone();
        let url = p.url("/v1/ratelimit/batch/fw");
        let id = if n % 8 == 0 {
            bad.to_string()
        } else {
            format!("ok-{n}")
        };
        async move {
            let r = send(
                client
                    .post(&url)
                    .json(&serde_json::json!({"id": id, "cost": 1})),
            )
            .await?;
            Ok((id, r))
        }
    })
    .await?;
    for (id, r) in &replies {
        if id == bad {
            r.assert_problem(500);
            ensure!(
                r.json["type"] == "urn:patternd:problem:redis-wrong-type",
                "{r:?}"
            );
        } else {
            check(r, (true, 9, 10), id)?;
        }
    }
    Ok(())
}

on_every_backend!(a_broken_key_fails_only_its_own_decision);

/// Likewise for cache reads: an id whose value key holds another type fails alone, in the hit
/// batch and in the read script's batch, and the other reads of its batches are hits.
async fn a_broken_cache_key_fails_only_its_own_read(b: Backend) -> Result<()> {
    let policy = "app: notes
rules:
  text:
    cache: { ttl: 1h }
";
    let w = World::on(b, &[("notes.yaml", policy)], &["--redis-timeout", "10s"]).await?;
    let p = &w.patternd;
    for n in 0..7 {
        let path = format!("/v1/cache/notes/text/ok-{n}");
        let r = p.put_with(&path, format!("body {n}"), &[]).await?;
        ensure!(r.status == 204, "PUT {path}: {r:?}");
    }
    let key = patternd_e2e::cache_keys::key("notes", "text", "broken", "v");
    let mut conn = w.redis.conn_for_key(&key).await?;
    redis::cmd("SET")
        .arg(&key)
        .arg("not a hash")
        .query_async::<()>(&mut conn)
        .await?;
    let replies = burst(64, |n| {
        let client = p.client().clone();
        let id = if n % 8 == 7 {
            "broken".to_string()
        } else {
            format!("ok-{}", n % 8)
        };
        let url = p.url(&format!("/v1/cache/notes/text/{id}"));
        async move { Ok((id, send(client.get(&url)).await?)) }
    })
    .await?;
    for (id, r) in &replies {
        if id == "broken" {
            r.assert_problem(500);
            ensure!(
                r.json["type"] == "urn:patternd:problem:redis-wrong-type",
                "{r:?}"
            );
        } else {
            ensure!(r.status == 200, "{id}: {r:?}");
            ensure!(r.text == format!("body {}", &id[3..]), "{id}: {r:?}");
            ensure!(
                cache_status(r).starts_with("patternd; hit; ttl="),
                "{id}: {r:?}"
            );
        }
    }
    Ok(())
}

on_every_backend!(a_broken_cache_key_fails_only_its_own_read);

/// Redis frozen (SIGSTOP) while decisions queue behind stalled batches: every one of them is
/// answered by `on_redis_error` (none waits for Redis to come back), and once Redis resumes
/// decisions are Redis' again.
#[test]
fn decisions_queued_behind_a_stalled_redis_are_degraded_not_stuck()
-> patternd_e2e::backend::TestResult {
    patternd_e2e::backend::run(Backend::standalone, |b| async move {
        let w = World::on(b, &[("batch.yaml", POLICY)], &["--redis-timeout", "300ms"]).await?;
        let p = &w.patternd;
        let r = p.check("batch", "fw", "warm", 1).await?;
        check(&r, (true, 9, 10), "before the stall")?;
        let paused = w.redis.server()?.pause()?;
        // More decisions than one batch takes, so some wait for a batch to go out.
        let replies = burst(80, |n| {
            let client = p.client().clone();
            let url = p.url("/v1/ratelimit/batch/fw");
            async move {
                send(
                    client
                        .post(&url)
                        .json(&serde_json::json!({"id": format!("s-{n}")})),
                )
                .await
            }
        })
        .await;
        paused.resume();
        for r in replies? {
            ensure!(r.degraded(), "a decision while Redis was frozen: {r:?}");
        }
        patternd_e2e::eventually(
            std::time::Duration::from_secs(10),
            "decisions by Redis again",
            || async {
                let r = p.check("batch", "fw", "after", 1).await?;
                Ok((!r.degraded()).then_some(r))
            },
        )
        .await?;
        Ok(())
    })
}

/// Many ids read at once, each id's reads in turn: every answer is the one a separate read
/// script call gives (a miss filled from the origin, then hits with the origin's body), the
/// origin is asked once per id, and on a standalone Redis the reads went in batches.
async fn cache_reads_in_batches_answer_as_separate_reads(b: Backend) -> Result<()> {
    const IDS: usize = 40;
    let is_cluster = b.is_cluster();
    let origin = Origin::start().await?;
    for n in 0..IDS {
        origin.set(
            &format!("i{n}"),
            "text/plain",
            format!("body {n}").as_bytes(),
            &[],
        );
    }
    let policy = "app: shop
rules:
  product:
    cache:
      origin: ORIGIN
      ttl: 1h
      origin_timeout: 10s
";
    let w = World::with_origin_on(b, policy, &origin, &["--redis-timeout", "10s"]).await?;
    let p = &w.patternd;
    let results = burst(IDS, |n| {
        let client = p.client().clone();
        let url = p.url(&format!("/v1/cache/shop/product/i{n}"));
        async move {
            let mut replies = Vec::new();
            for _ in 0..4 {
                replies.push(send(client.get(&url)).await?);
            }
            Ok(replies)
        }
    })
    .await?;
    for (n, replies) in results.iter().enumerate() {
        for (i, r) in replies.iter().enumerate() {
            let ctx = format!("id i{n}, read #{i}");
            ensure!(r.status == 200, "{ctx}: {r:?}");
            ensure!(r.text == format!("body {n}"), "{ctx}: {r:?}");
            let cs = cache_status(r);
            if i == 0 {
                ensure!(
                    cs == "patternd; fwd=miss; fwd-status=200; stored",
                    "{ctx}: {cs}"
                );
            } else {
                ensure!(cs.starts_with("patternd; hit; ttl="), "{ctx}: {cs}");
            }
        }
        ensure!(
            origin.gets(&format!("i{n}")) == 1,
            "id i{n} fetched more than once"
        );
    }
    let metrics = p.get("/metrics").await?.text;
    let batched = metric_value(&metrics, "patternd_redis_batched_calls_total", &[])
        .context("patternd_redis_batched_calls_total missing")?;
    let batches = metric_value(&metrics, "patternd_redis_batches_total", &[])
        .context("patternd_redis_batches_total missing")?;
    if is_cluster {
        ensure!(batched == 0.0, "a cluster never batches: {batched}");
    } else {
        // Every script call went through a batcher (fills are separate scripts): each read
        // asked the hit batch first, and each id's first read, a miss, then the read script.
        ensure!(
            batched == (IDS * 5) as f64,
            "{batched} calls in batches for {} reads",
            IDS * 4
        );
        ensure!(batched > batches, "{batches} batches of {batched} reads");
    }
    Ok(())
}

on_every_backend!(cache_reads_in_batches_answer_as_separate_reads);

/// Reads of one rule with different numbers of arguments (a `format: hash` value read whole,
/// and with one or two `fields`) waiting at once: a batch then carries each call's own key and
/// argument counts instead of one shape for all (`compile::batch::wrap`), and every answer is
/// still that call's own.
async fn cache_reads_of_different_shapes_share_batches(b: Backend) -> Result<()> {
    let is_cluster = matches!(b, Backend::Cluster(_));
    let origin = Origin::start().await?;
    const SHAPED: usize = 16;
    for n in 0..SHAPED {
        origin.set(
            &format!("u{n}"),
            "application/json",
            format!(r#"{{"name": "user {n}", "age": {n}, "city": "c{n}"}}"#).as_bytes(),
            &[],
        );
    }
    let policy = "app: shop
rules:
  profile:
    cache:
      origin: ORIGIN
      format: hash
      ttl: 1h
";
    let w = World::with_origin_on(b, policy, &origin, &[]).await?;
    let p = &w.patternd;
    for n in 0..SHAPED {
        let r = p.get(&format!("/v1/cache/shop/profile/u{n}")).await?;
        ensure!(r.status == 200, "fill u{n}: {r:?}");
    }
    let results = burst(64, |t| {
        let client = p.client().clone();
        let base = p.url("/v1/cache/shop/profile/");
        async move {
            let mut replies = Vec::new();
            for i in 0..6 {
                let n = (t + i) % SHAPED;
                let query = ["", "?fields=name", "?fields=age,city"][(t + i) % 3];
                let r = send(client.get(format!("{base}u{n}{query}"))).await?;
                replies.push((n, query, r));
            }
            Ok(replies)
        }
    })
    .await?;
    for (n, query, r) in results.iter().flatten() {
        let ctx = format!("u{n}{query}");
        ensure!(r.status == 200, "{ctx}: {r:?}");
        ensure!(cache_status(r).starts_with("patternd; hit"), "{ctx}: {r:?}");
        let want = match *query {
            "" => {
                serde_json::json!({"name": format!("user {n}"), "age": n, "city": format!("c{n}")})
            }
            "?fields=name" => serde_json::json!({"name": format!("user {n}")}),
            _ => serde_json::json!({"age": n, "city": format!("c{n}")}),
        };
        ensure!(r.json == want, "{ctx}: {:?}", r.json);
    }
    let metrics = p.get("/metrics").await?.text;
    let batched = metric_value(&metrics, "patternd_redis_batched_calls_total", &[])
        .context("patternd_redis_batched_calls_total missing")?;
    let batches = metric_value(&metrics, "patternd_redis_batches_total", &[])
        .context("patternd_redis_batches_total missing")?;
    if !is_cluster {
        ensure!(batched > batches, "{batches} batches of {batched} reads");
    }
    Ok(())
}

on_every_backend!(cache_reads_of_different_shapes_share_batches);

/// A value written with PUT: its path, body and request headers.
type Put<'a> = (&'a str, &'a [u8], &'a [(&'a str, &'a str)]);

/// The hit batch (`lua/cache/hit_batch.lua`, asked first) answers a fresh, untagged string
/// value itself and leaves every other read to the read script. Either way the answer
/// must be the one a separate read script call gives: the same reads, through an engine that
/// batches and one on the same Redis and policies that does not (`--redis-batch 0`), answer
/// with the same status, body and headers. Covers a plain value (the hit batch), a tagged one
/// and a `format: hash` one (both the read script), and an absent id.
#[test]
fn the_batch_hit_path_answers_as_a_separate_read() -> patternd_e2e::backend::TestResult {
    patternd_e2e::backend::run(Backend::standalone, |b| async move {
        let policy = "app: notes
rules:
  text:
    cache: { ttl: 1h }
  doc:
    cache: { ttl: 1h, format: hash }
";
        let w = World::on(b, &[("notes.yaml", policy)], &[]).await?;
        let batched = &w.patternd;
        let single = patternd_e2e::Patternd::start(
            &w.redis.url(),
            w.policies.path(),
            &["--redis-batch", "0"],
        )
        .await?;
        let puts: [Put; 3] = [
            (
                "/v1/cache/notes/text/plain",
                b"hello",
                &[("content-type", "text/plain")],
            ),
            (
                "/v1/cache/notes/text/tagged",
                b"tagged",
                &[("content-type", "text/plain"), ("cache-tag", "t1")],
            ),
            (
                "/v1/cache/notes/doc/d1",
                br#"{"a": 1, "b": "two"}"#,
                &[("content-type", "application/json")],
            ),
        ];
        for (path, body, headers) in puts {
            let mut req = batched.client().put(batched.url(path)).body(body.to_vec());
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            let r = send(req).await?;
            ensure!(r.status == 204, "PUT {path}: {r:?}");
        }
        let reads = [
            "/v1/cache/notes/text/plain",
            "/v1/cache/notes/text/tagged",
            "/v1/cache/notes/doc/d1",
            "/v1/cache/notes/text/absent",
        ];
        for path in reads {
            let a = send(batched.client().get(batched.url(path))).await?;
            let s = send(single.client().get(single.url(path))).await?;
            ensure!(a.status == s.status, "{path}: {a:?} against {s:?}");
            ensure!(a.text == s.text, "{path}: {a:?} against {s:?}");
            for name in ["content-type", "etag", "cache-status"] {
                // The ttl in Cache-Status counts down in whole seconds: the two reads may
                // straddle a second, so it is compared without its digits.
                let value = |r: &Reply| {
                    r.headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| v.trim_end_matches(|c: char| c.is_ascii_digit()).to_string())
                };
                ensure!(
                    value(&a) == value(&s),
                    "{path}: {name} {:?} against {:?}",
                    a.headers.get(name),
                    s.headers.get(name)
                );
            }
            if a.status == 200 {
                ensure!(
                    cache_status(&a).starts_with("patternd; hit; ttl="),
                    "{path}: {}",
                    cache_status(&a)
                );
            }
        }
        let metrics = batched.get("/metrics").await?.text;
        let batched_reads = metric_value(&metrics, "patternd_redis_batched_calls_total", &[])
            .context("patternd_redis_batched_calls_total missing")?;
        ensure!(
            batched_reads >= reads.len() as f64,
            "the batching engine's reads went in batch calls: {batched_reads}"
        );
        let metrics = single.get("/metrics").await?.text;
        let single_reads =
            metric_value(&metrics, "patternd_redis_batched_calls_total", &[]).unwrap_or(0.0);
        ensure!(
            single_reads == 0.0,
            "--redis-batch 0 batched {single_reads} calls"
        );
        Ok(())
    })
}
