//! Redis going away and coming back: lost scripts (NOSCRIPT), a killed server, readiness.

use std::time::{Duration, Instant};

use anyhow::Result;
use patternd_e2e::{PluginWorld, World, burst, eventually, lua_plugins, metric_value, send};

const POLICY: &str = "app: res
rules:
  open:
    rate_limit: { algorithm: fixed_window, limit: 100, window: 1h, on_redis_error: allow }
  closed:
    rate_limit: { algorithm: sliding_log, limit: 100, window: 1h, on_redis_error: deny }
  small:
    rate_limit: { algorithm: fixed_window, limit: 3, window: 1h }
  wide:
    rate_limit: { algorithm: gcra, limit: 20, window: 1d }
  jobs:
    rate_limit: { algorithm: concurrency, limit: 2, lease: 1h }
";

/// An outage answer must come within the command timeout (300 ms by default) plus HTTP
/// overhead; two seconds is a correctness bound (the request did not hang on a dead Redis),
/// not a performance threshold.
const OUTAGE_BOUND: Duration = Duration::from_secs(2);

async fn script_flush(w: &World) -> Result<()> {
    let mut conn = w.redis.conn().await?;
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn noscript_is_recovered_transparently() -> Result<()> {
    let w = World::start(&[("res.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    for expected in [2, 1] {
        let r = p.check("res", "small", "u", 1).await?;
        assert_eq!((r.status, r.remaining()), (200, expected), "{r:?}");
    }
    let lease = p.check("res", "jobs", "u", 1).await?;
    let lease = lease.lease().unwrap_or_default().to_string();

    script_flush(&w).await?;
    // The counts survived (only scripts were flushed) and the decisions stay exact.
    let r = p.check("res", "small", "u", 1).await?;
    assert_eq!(
        (r.status, r.remaining(), r.degraded()),
        (200, 0, false),
        "{r:?}"
    );
    let r = p.check("res", "small", "u", 1).await?;
    assert_eq!((r.status, r.degraded()), (429, false), "{r:?}");
    // The release script is recovered the same way.
    let r = p.release("res", "jobs", &lease).await?;
    assert_eq!(
        (r.status, &r.json["released"]),
        (200, &serde_json::json!(true)),
        "{r:?}"
    );

    // Many requests meeting NOSCRIPT at once: each reloads and retries; the limit holds.
    script_flush(&w).await?;
    let replies = burst(60, |_| {
        send(
            p.client()
                .post(p.url("/v1/ratelimit/res/wide"))
                .json(&serde_json::json!({"id": "crowd"})),
        )
    })
    .await?;
    let mut admitted = 0;
    for r in &replies {
        assert_eq!(r.json["degraded"], false, "{}", r.json);
        admitted += u32::from(r.status == 200);
    }
    assert_eq!(admitted, 20);

    let metrics = p.get("/metrics").await?.text;
    let reloads = metric_value(&metrics, "patternd_script_reloads_total", &[]).unwrap_or(0.0);
    assert!(reloads >= 2.0, "NOSCRIPT reloads not counted:\n{metrics}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_is_decided_by_on_redis_error_and_recovers() -> Result<()> {
    let mut w = World::start(&[("res.yaml", POLICY)], &[]).await?;
    for rule in ["open", "closed"] {
        let r = w.patternd.check("res", rule, "before", 1).await?;
        assert_eq!((r.status, r.degraded()), (200, false), "{r:?}");
    }
    assert_eq!(w.patternd.get("/readyz").await?.status, 200);

    w.redis.stop();

    // Several rounds: the first request may meet the dropped connection, later ones the
    // refused reconnects; every one must be answered by the rule's on_redis_error, quickly.
    for round in 0..3 {
        let started = Instant::now();
        let r = w.patternd.check("res", "open", "during", 1).await?;
        let took = started.elapsed();
        assert!(
            took < OUTAGE_BOUND,
            "round {round}: allow rule took {took:?}"
        );
        assert_eq!(
            (r.status, r.allowed(), r.degraded()),
            (200, true, true),
            "{r:?}"
        );
        assert_eq!(r.header("patternd-degraded"), Some("allowed-without-redis"));

        let started = Instant::now();
        let r = w.patternd.check("res", "closed", "during", 1).await?;
        let took = started.elapsed();
        assert!(
            took < OUTAGE_BOUND,
            "round {round}: deny rule took {took:?}"
        );
        assert_eq!(
            (r.status, r.allowed(), r.degraded()),
            (429, false, true),
            "{r:?}"
        );
        assert_eq!(r.header("patternd-degraded"), Some("denied-without-redis"));
        assert!(r.header("retry-after").is_some(), "{r:?}");

        let started = Instant::now();
        let r = w.patternd.get("/readyz").await?;
        let took = started.elapsed();
        assert!(took < OUTAGE_BOUND, "round {round}: /readyz took {took:?}");
        r.assert_problem(503);
    }
    // Liveness is not readiness: the process itself is fine.
    assert_eq!(w.patternd.get("/healthz").await?.status, 200);

    w.redis.restart_same_port()?;

    // The connections come back by themselves; the scripts the restart lost are reloaded on
    // NOSCRIPT. Bounded wait, since reconnects back off.
    let p = &w.patternd;
    let r = eventually(
        Duration::from_secs(10),
        "non-degraded decisions",
        || async {
            let r = p.check("res", "open", "probe", 1).await?;
            Ok((!r.degraded()).then_some(r))
        },
    )
    .await?;
    assert_eq!(r.status, 200);
    // The restarted Redis is empty: the deny rule starts from a full quota, decided by Redis.
    let r = p.check("res", "closed", "after", 1).await?;
    assert_eq!(
        (r.status, r.remaining(), r.degraded()),
        (200, 99, false),
        "{r:?}"
    );
    let r = p.check("res", "closed", "after", 1).await?;
    assert_eq!(
        (r.status, r.remaining(), r.degraded()),
        (200, 98, false),
        "{r:?}"
    );
    eventually(Duration::from_secs(10), "/readyz 200", || async {
        Ok((p.get("/readyz").await?.status == 200).then_some(()))
    })
    .await?;

    let metrics = p.get("/metrics").await?.text;
    let count = |rule: &str, outcome: &str| {
        metric_value(
            &metrics,
            "patternd_decisions_total",
            &[("app", "res"), ("rule", rule), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };
    // Three rounds each; the allow rule may add a few from the recovery probes.
    assert_eq!(count("closed", "degraded_denied"), 3.0, "{metrics}");
    assert!(count("open", "degraded_allowed") >= 3.0, "{metrics}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn patternd_starts_while_redis_is_down() -> Result<()> {
    // A patternd started before its Redis answers: degraded decisions and 503 readiness, then
    // normal service once Redis is up, with no restart of patternd.
    let mut w = World::start(&[("res.yaml", POLICY)], &[]).await?;
    w.redis.stop();
    let policies = w.policies.path().to_path_buf();
    let url = w.redis.url();
    let late = patternd_e2e::Patternd::start(&url, &policies, &[]).await?;
    let r = late.check("res", "closed", "x", 1).await?;
    assert_eq!((r.status, r.degraded()), (429, true), "{r:?}");
    late.get("/readyz").await?.assert_problem(503);

    w.redis.restart_same_port()?;
    eventually(Duration::from_secs(10), "late patternd ready", || async {
        Ok((late.get("/readyz").await?.status == 200).then_some(()))
    })
    .await?;
    let r = late.check("res", "closed", "x", 1).await?;
    assert_eq!(
        (r.status, r.remaining(), r.degraded()),
        (200, 99, false),
        "{r:?}"
    );
    Ok(())
}

const OUTAGE_POLICY: &str = "app: out
rules:
  web:
    session: { idle_ttl: 30m, absolute_ttl: 24h }
  door:
    lock: { ttl: 30s }
  daily:
    ops: { plugin: quota, op: daily-quota }
";

/// Every pattern answers an outage through the one mapping of store failures: 503
/// `redis-unavailable` in our words, never the Redis client's (addresses, `os error`s, the
/// breaker's reason); `/readyz` is where the cause is told.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_503_says_nothing_of_redis_internals() -> Result<()> {
    let plugins = lua_plugins(&[("quota.lua", "quota/quota.lua")])?;
    let mut w = PluginWorld::start(&[("out.yaml", OUTAGE_POLICY)], plugins).await?;
    w.world.redis.stop();
    let p = &w.patternd;
    // Twice: the pool's connections fail one by one, and the breaker may open meanwhile.
    for _ in 0..2 {
        for (path, json) in [
            ("/v1/sessions/out/web", serde_json::json!({"user": "ivy"})),
            ("/v1/locks/out/door/gate", serde_json::json!({})),
            (
                "/v1/ops/out/daily",
                serde_json::json!({"id": "u1", "args": [3]}),
            ),
        ] {
            let r = p.post_json(path, &json).await?;
            r.assert_problem(503);
            assert_eq!(
                (r.json["type"].as_str(), r.detail()),
                (
                    Some("urn:patternd:problem:redis-unavailable"),
                    "Redis is unavailable"
                ),
                "{path}: {r:?}"
            );
        }
    }
    Ok(())
}
