//! Cache reads under faults: a client that goes away in the middle of a fill, a Redis that is
//! slow or frozen, a Redis that is gone. Real origin, real Redis (frozen with SIGSTOP, or
//! killed), the real binary. Assertions are on answers and counts; the few durations are
//! bounds far from the expected times, never thresholds.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use patternd_e2e::origin::Origin;
use patternd_e2e::{
    Patternd, Reply, World, burst, cache_status, eventually, get_cache_status, scan_names, send,
};
use tokio::io::AsyncWriteExt;

/// `n` concurrent GETs of `path`, each with the time it took.
async fn concurrent_gets(p: &Patternd, path: &str, n: usize) -> Result<Vec<(Reply, Duration)>> {
    burst(n, |_| {
        let req = p.client().get(p.url(path));
        async move {
            let started = Instant::now();
            let reply = send(req).await?;
            Ok((reply, started.elapsed()))
        }
    })
    .await
}

/// A client that sends a GET and goes away before the answer: its fill must still land for
/// the callers that wait on it. `fill_wait` and `refresh_lease` are far longer than the test
/// client's 10 s timeout, so a fill that died with its client (an orphaned lease) makes the
/// waiters time out, and one that completes answers them after about one origin fetch.
#[tokio::test(flavor = "multi_thread")]
async fn a_fill_outlives_the_client_that_started_it() -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("1", "text/plain", b"one", &[]);
    origin.set_delay(Duration::from_millis(1500));
    let policy = "app: shop
rules:
  product:
    cache: { origin: 'ORIGIN', ttl: 1h, origin_timeout: 10s, fill_wait: 20s, refresh_lease: 30s }
";
    let w = World::with_origin(policy, &origin, &[]).await?;
    let p = &w.patternd;

    // The first caller takes the lease and reaches the origin, then hangs up.
    let mut quitter = tokio::net::TcpStream::connect(("127.0.0.1", p.port())).await?;
    quitter
        .write_all(b"GET /v1/cache/shop/product/1 HTTP/1.1\r\nhost: patternd\r\n\r\n")
        .await?;
    eventually(
        Duration::from_secs(10),
        "the fill to reach the origin",
        || async { Ok((origin.gets("1") == 1).then_some(())) },
    )
    .await?;
    drop(quitter);

    // Callers arriving meanwhile wait for that fill and get its value.
    let replies = concurrent_gets(p, "/v1/cache/shop/product/1", 8).await?;
    for (r, took) in &replies {
        assert_eq!((r.status, r.text.as_str()), (200, "one"), "{r:?}");
        assert!(cache_status(r).contains("collapsed"), "{r:?}");
        eprintln!("waiter answered after {took:?}");
    }
    assert_eq!(origin.gets("1"), 1, "the abandoned fill was repeated");
    // And it was stored: the next read is a hit.
    let r = p.get("/v1/cache/shop/product/1").await?;
    assert!(cache_status(&r).starts_with("patternd; hit"), "{r:?}");
    assert_eq!(origin.gets("1"), 1);
    Ok(())
}

/// A Redis that answers every call, but each only just within the command timeout (frozen for
/// most of each second): a waiting GET's polls add up, and the GET ends once they together
/// reach one command timeout (503 `redis-unavailable`), instead of polling on for `fill_wait`.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_redis_cannot_stretch_a_get_past_one_command_timeout() -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("1", "text/plain", b"one", &[]);
    // The lease holder's fill never lands while the test runs: the second caller waits.
    origin.set_delay(Duration::from_secs(30));
    let policy = "app: shop
rules:
  product:
    cache: { origin: 'ORIGIN', ttl: 1h, origin_timeout: 60s, fill_wait: 60s, refresh_lease: 60s }
";
    // Each stall below (0.8 s) is well inside the 2 s command timeout: no single call fails.
    let w = World::with_origin(policy, &origin, &["--redis-timeout", "2s"]).await?;
    let p = &w.patternd;

    let holder = {
        let (client, url) = (p.client().clone(), p.url("/v1/cache/shop/product/1"));
        tokio::spawn(async move { client.get(url).send().await })
    };
    eventually(
        Duration::from_secs(10),
        "the fill to reach the origin",
        || async { Ok((origin.gets("1") == 1).then_some(())) },
    )
    .await?;

    let waiter = {
        let (client, url) = (p.client().clone(), p.url("/v1/cache/shop/product/1"));
        tokio::spawn(async move {
            let started = Instant::now();
            let reply = get_cache_status(client, url).await?;
            eprintln!("the waiter was answered after {:?}", started.elapsed());
            anyhow::Ok(reply)
        })
    };
    // Freeze Redis for 0.8 s of every 0.85 s until the waiter is answered.
    let mut stalls = 0;
    while !waiter.is_finished() && stalls < 40 {
        let paused = w.redis.pause()?;
        tokio::time::sleep(Duration::from_millis(800)).await;
        paused.resume();
        stalls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, cs, body) = waiter.await??;
    assert_eq!(status, 503, "{cs} {body}");
    assert_eq!(cs, "patternd; detail=redis-unavailable", "{body}");
    assert!(body.contains("redis-unavailable"), "{body}");
    // The waiter gave up on Redis, not on the origin: nobody else asked it.
    assert_eq!(origin.gets("1"), 1);
    holder.abort();
    Ok(())
}

/// Redis frozen: every GET is answered while it is still frozen (503 by default; the origin's
/// answer, not stored, for `on_redis_error: origin`), and the cache is unchanged afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_redis_is_answered_by_on_redis_error_while_frozen() -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("1", "text/plain", b"one", &[]);
    origin.set("2", "text/plain", b"two", &[]);
    let policy = "app: shop
rules:
  strict:
    cache: { origin: 'ORIGIN', ttl: 1h }
  open:
    cache: { origin: 'ORIGIN', ttl: 1h, on_redis_error: origin }
";
    let w = World::with_origin(policy, &origin, &[]).await?;
    let p = &w.patternd;
    // Warm: id 1 is cached in both rules.
    for rule in ["strict", "open"] {
        let r = p.get(&format!("/v1/cache/shop/{rule}/1")).await?;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(origin.gets("1"), 2);

    let paused = w.redis.pause()?;
    let strict = concurrent_gets(p, "/v1/cache/shop/strict/1", 10).await?;
    let open_hit = concurrent_gets(p, "/v1/cache/shop/open/1", 10).await?;
    let open_miss = concurrent_gets(p, "/v1/cache/shop/open/2", 10).await?;
    // Every answer above arrived while Redis was frozen (it is resumed only now).
    paused.resume();
    let slowest = strict
        .iter()
        .chain(&open_hit)
        .chain(&open_miss)
        .map(|(_, t)| *t)
        .max()
        .unwrap_or_default();
    eprintln!("slowest GET while Redis was frozen: {slowest:?}");

    for (r, _) in &strict {
        r.assert_problem(503);
        assert_eq!(
            r.json["type"], "urn:patternd:problem:redis-unavailable",
            "{r:?}"
        );
        assert_eq!(cache_status(r), "patternd; detail=redis-unavailable");
    }
    for (rs, body) in [(&open_hit, "one"), (&open_miss, "two")] {
        for (r, _) in rs {
            assert_eq!((r.status, r.text.as_str()), (200, body), "{r:?}");
            assert_eq!(r.content_type(), "text/plain");
            assert_eq!(
                cache_status(r),
                "patternd; fwd=bypass; fwd-status=200; detail=redis-unavailable"
            );
        }
    }
    // The strict rule never asked the origin; the open one asked it once per GET.
    assert_eq!(origin.gets("1"), 2 + 10);
    assert_eq!(origin.gets("2"), 10);

    // Nothing was stored from the origin while Redis was frozen: id 2 has no value.
    let mut conn = w.redis.conn().await?;
    let values: Vec<String> = scan_names(&mut conn)
        .await?
        .into_iter()
        .filter(|k| k.ends_with(":v"))
        .collect();
    assert_eq!(values.len(), 2, "{values:?}");
    assert!(values.iter().all(|k| k.ends_with("}:1:v")), "{values:?}");

    // Counted per rule and outcome.
    let m = p.get("/metrics").await?.text;
    let count = |rule, result| {
        patternd_e2e::metric_value(
            &m,
            "patternd_cache_requests_total",
            &[("app", "shop"), ("rule", rule), ("result", result)],
        )
    };
    assert_eq!(count("strict", "redis_error"), Some(10.0), "{m}");
    assert_eq!(count("open", "redis_origin"), Some(20.0), "{m}");
    Ok(())
}

/// `on_redis_error: origin` during an outage is bounded by the rule's origin concurrency (64
/// per engine): beyond it a GET is a 503 at once instead of queueing behind the origin.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_does_not_stampede_the_origin() -> Result<()> {
    const IN_FLIGHT: usize = 64;
    const EXTRA: usize = 16;
    let origin = Origin::start().await?;
    origin.set("1", "text/plain", b"one", &[]);
    let policy = "app: shop
rules:
  open:
    cache: { origin: 'ORIGIN', ttl: 1h, origin_timeout: 30s, on_redis_error: origin }
";
    let mut w = World::with_origin(policy, &origin, &[]).await?;
    w.redis.stop();
    // Slow enough that every request below arrives while the first ones hold their permits.
    origin.set_delay(Duration::from_secs(5));

    let answers = burst(IN_FLIGHT + EXTRA, |_| {
        let req = w
            .patternd
            .client()
            .get(w.patternd.url("/v1/cache/shop/open/1"));
        async move {
            let r = req.send().await?;
            Ok((r.status().as_u16(), Instant::now()))
        }
    })
    .await?;
    let mut served = Vec::new();
    let mut refused = Vec::new();
    for (status, at) in answers {
        match status {
            200 => served.push(at),
            503 => refused.push(at),
            other => anyhow::bail!("unexpected status {other}"),
        }
    }
    assert_eq!((served.len(), refused.len()), (IN_FLIGHT, EXTRA));
    assert_eq!(origin.gets("1"), IN_FLIGHT as u64);
    // The refusals did not wait for the origin: every one came before the first answer.
    let first_served = served.iter().min().copied();
    ensure!(
        refused.iter().all(|t| Some(*t) < first_served),
        "a refused GET waited for the origin"
    );
    Ok(())
}
