//! The opt-in deny cache (`deny_cache: true`): once Redis denies an id, this engine answers
//! that id's requests itself until the retry time, with the answer Redis would give, and makes
//! no Redis call for them (counted with `INFO commandstats` on every node); the first request
//! after the retry time is decided by Redis again.

use anyhow::Result;
use patternd_e2e::{Backend, Reply, World, on_every_backend};

const POLICY: &str = "app: dc
rules:
  fw:
    rate_limit: { algorithm: fixed_window, limit: 2, window: 1h, deny_cache: true }
  sw:
    rate_limit: { algorithm: sliding_window, limit: 2, window: 1h, deny_cache: true }
  gc:
    rate_limit: { algorithm: gcra, limit: 2, window: 1h, burst: 2, deny_cache: true }
  short:
    rate_limit: { algorithm: fixed_window, limit: 1, window: 1s, deny_cache: true }
";

/// Script calls (EVALSHA and EVAL) Redis ran since the last reset, over every primary.
async fn script_calls(b: &Backend) -> Result<u64> {
    let mut nodes = b.nodes().await?;
    let mut calls = 0;
    for con in nodes.all() {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(con)
            .await?;
        for line in info.lines() {
            if let Some(rest) = line
                .strip_prefix("cmdstat_evalsha:calls=")
                .or_else(|| line.strip_prefix("cmdstat_eval:calls="))
            {
                calls += rest
                    .split(',')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Ok(calls)
}

async fn reset_stats(b: &Backend) -> Result<()> {
    let mut nodes = b.nodes().await?;
    for con in nodes.all() {
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<()>(con)
            .await?;
    }
    Ok(())
}

/// The parts of an answer that do not move with the clock: status, the headers, and the body
/// without its ms countdowns. The whole seconds of `Retry-After` and RateLimit's `t=` count
/// down too (a later answer, from Redis or the cache, may be a second lower when a second
/// boundary passed in between): they are left out here and compared by [`seconds`].
fn stable(r: &Reply) -> (u16, Vec<(String, String)>, serde_json::Value) {
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "date" | "content-length" | "retry-after"))
        .map(|(n, v)| {
            let v = v.to_str().unwrap_or("?");
            let v = match (n.as_str(), v.rfind(";t=")) {
                ("ratelimit", Some(at)) => format!("{};t=…", &v[..at]),
                _ => v.to_string(),
            };
            (n.to_string(), v)
        })
        .collect();
    headers.sort();
    let mut body = r.json.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("retry_after_ms");
        o.remove("reset_after_ms");
    }
    (r.status, headers, body)
}

/// `Retry-After` and RateLimit's `t=`, in whole seconds.
fn seconds(r: &Reply) -> (u64, u64) {
    let header = |name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let retry = header("retry-after").parse().unwrap_or(u64::MAX);
    let rl = header("ratelimit");
    let t = rl
        .rfind(";t=")
        .and_then(|at| rl[at + 3..].parse().ok())
        .unwrap_or(u64::MAX);
    (retry, t)
}

async fn a_cached_denial_answers_like_redis_without_asking_it(b: Backend) -> Result<()> {
    let w = World::on(b, &[("dc.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    for rule in ["fw", "sw", "gc"] {
        for _ in 0..2 {
            assert_eq!(
                p.check("dc", rule, "abuser", 1).await?.status,
                200,
                "{rule}"
            );
        }
        let from_redis = p.check("dc", rule, "abuser", 1).await?;
        assert_eq!(from_redis.status, 429, "{rule}: {from_redis:?}");
        assert_eq!(from_redis.remaining(), 0, "{rule}");

        reset_stats(&w.redis).await?;
        for _ in 0..5 {
            let cached = p.check("dc", rule, "abuser", 1).await?;
            assert_eq!(stable(&cached), stable(&from_redis), "{rule}");
            let ((r0, t0), (r1, t1)) = (seconds(&from_redis), seconds(&cached));
            assert!(
                (r0 - 1..=r0).contains(&r1) && (t0 - 1..=t0).contains(&t1),
                "{rule}: the cached answer's seconds ({r1}, {t1}) are not Redis' ({r0}, {t0}) \
                 or a second less"
            );
            let retry = cached.u64_field("retry_after_ms");
            assert!(
                retry >= 1 && retry <= from_redis.u64_field("retry_after_ms"),
                "{rule}: {cached:?} after {from_redis:?}"
            );
        }
        assert_eq!(
            script_calls(&w.redis).await?,
            0,
            "{rule}: a cached denial called Redis"
        );

        // A cost-0 query is always allowed, so it is never answered from the cache.
        let query = p.check("dc", rule, "abuser", 0).await?;
        assert_eq!(query.status, 200, "{rule}: {query:?}");
        assert_eq!(script_calls(&w.redis).await?, 1, "{rule}");
    }

    let metrics = p.get("/metrics").await?.text;
    for rule in ["fw", "sw", "gc"] {
        let line =
            format!("patternd_ratelimit_deny_cache_hits_total{{app=\"dc\",rule=\"{rule}\"}} 5");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    Ok(())
}
on_every_backend!(a_cached_denial_answers_like_redis_without_asking_it);

async fn only_exact_denials_are_cached(b: Backend) -> Result<()> {
    let w = World::on(b, &[("dc.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    // A sliding window that denies cost 2 with one unit left: a cost-1 request is still
    // allowed, so that denial must not be kept.
    assert_eq!(p.check("dc", "sw", "big", 1).await?.status, 200);
    let denied = p.check("dc", "sw", "big", 2).await?;
    assert_eq!(denied.status, 429, "{denied:?}");
    reset_stats(&w.redis).await?;
    let denied_again = p.check("dc", "sw", "big", 2).await?;
    assert_eq!(denied_again.status, 429, "{denied_again:?}");
    assert_eq!(
        script_calls(&w.redis).await?,
        1,
        "a cost-2 sliding-window denial was cached"
    );
    assert_eq!(p.check("dc", "sw", "big", 1).await?.status, 200);

    // A fixed window denying cost 2 with nothing left denies every cost: kept, and serves
    // cost 1 too.
    for _ in 0..2 {
        assert_eq!(p.check("dc", "fw", "big", 1).await?.status, 200);
    }
    assert_eq!(p.check("dc", "fw", "big", 2).await?.status, 429);
    reset_stats(&w.redis).await?;
    assert_eq!(p.check("dc", "fw", "big", 1).await?.status, 429);
    assert_eq!(script_calls(&w.redis).await?, 0);
    Ok(())
}
on_every_backend!(only_exact_denials_are_cached);

async fn the_first_request_after_the_retry_time_asks_redis(b: Backend) -> Result<()> {
    let w = World::on(b, &[("dc.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    assert_eq!(p.check("dc", "short", "once", 1).await?.status, 200);
    let denied = p.check("dc", "short", "once", 1).await?;
    assert_eq!(denied.status, 429, "{denied:?}");
    reset_stats(&w.redis).await?;
    let cached = p.check("dc", "short", "once", 1).await?;
    assert_eq!(cached.status, 429);
    assert_eq!(script_calls(&w.redis).await?, 0);

    // Past the retry time Redis named, the next request goes to Redis, which allows it.
    let wait = cached.u64_field("retry_after_ms") + 20;
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    let after = p.check("dc", "short", "once", 1).await?;
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(
        script_calls(&w.redis).await?,
        1,
        "the answer after the retry time did not come from Redis"
    );
    Ok(())
}
on_every_backend!(the_first_request_after_the_retry_time_asks_redis);
