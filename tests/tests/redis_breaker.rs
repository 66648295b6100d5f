//! Redis failures that are not a plain request: an outage answered without waiting (the
//! breaker), a stall that must not cut everyone off for one slow command, and a key another
//! client overwrote with another type (WRONGTYPE: not an outage, so no `on_redis_error`).

use std::time::{Duration, Instant};

use anyhow::Result;
use patternd_e2e::{Patternd, World, eventually, metric_value, scan_all};
use serde_json::json;

const POLICY: &str = "app: brk
rules:
  open:
    rate_limit: { algorithm: fixed_window, limit: 1000, window: 1h, on_redis_error: allow }
  closed:
    rate_limit: { algorithm: sliding_window, limit: 1000, window: 1h, on_redis_error: deny }
  door: { lock: { ttl: 30s } }
  web: { session: { idle_ttl: 30m, absolute_ttl: 24h } }
";

/// The default command timeout (`--redis-timeout`).
const TIMEOUT: Duration = Duration::from_millis(300);

async fn metrics(p: &Patternd) -> Result<String> {
    Ok(p.get("/metrics").await?.text)
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(text, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_is_answered_without_waiting_and_ends_by_itself() -> Result<()> {
    let mut w = World::start(&[("brk.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let r = p.check("brk", "open", "before", 1).await?;
    assert_eq!((r.status, r.degraded()), (200, false), "{r:?}");

    w.redis.stop();
    let p = &w.patternd;

    // 200 decisions, one after another, as a client would send them. Without a breaker each
    // waited for the connection manager's reconnect attempts (about 220 ms each: 44 s in
    // all); with it, only the requests that discover the outage pay for it.
    let n = 200;
    let mut slow = 0;
    let started = Instant::now();
    for i in 0..n {
        let rule = if i % 2 == 0 { "open" } else { "closed" };
        let t = Instant::now();
        let r = p.check("brk", rule, "during", 1).await?;
        if t.elapsed() >= TIMEOUT {
            slow += 1;
        }
        let allowed = rule == "open";
        assert_eq!(
            (r.allowed(), r.degraded()),
            (allowed, true),
            "decision {i}: {r:?}"
        );
    }
    let took = started.elapsed();
    // A correctness bound, not a benchmark: a quarter of what 200 timeouts would cost.
    assert!(
        took < TIMEOUT * n / 4,
        "200 degraded decisions took {took:?} ({slow} of them slower than the timeout)"
    );

    // The breaker answered (nearly) all of them without asking Redis: counted, not timed.
    let m = metrics(p).await?;
    let refused = value(
        &m,
        "patternd_redis_errors_total",
        &[("kind", "circuit_open")],
    );
    assert!(
        refused >= f64::from(n) - 10.0,
        "only {refused} of {n} refused by the breaker:\n{m}"
    );
    assert_eq!(value(&m, "patternd_redis_breaker_open", &[]), 1.0, "{m}");
    assert_eq!(
        value(
            &m,
            "patternd_redis_breaker_transitions_total",
            &[("to", "open")]
        ),
        1.0,
        "one outage opens the breaker once:\n{m}"
    );
    // Readiness reflects it, and says why.
    let r = p.get("/readyz").await?;
    r.assert_problem(503);
    assert!(r.detail().contains("circuit open"), "{r:?}");
    // One log line for the transition, not one per request.
    let opened = p.log().matches("Redis breaker open").count();
    assert_eq!(opened, 1, "{}", p.log());

    // Redis comes back on the same port: the background probe notices, without a restart of
    // patternd and without any request having to time out.
    w.redis.restart_same_port()?;
    let p = &w.patternd;
    eventually(Duration::from_secs(5), "non-degraded decisions", || async {
        let r = p.check("brk", "closed", "after", 1).await?;
        Ok((!r.degraded()).then_some(()))
    })
    .await?;
    let r = p.check("brk", "open", "after", 1).await?;
    assert_eq!((r.status, r.degraded()), (200, false), "{r:?}");
    assert_eq!(p.get("/readyz").await?.status, 200);
    let m = metrics(p).await?;
    assert_eq!(value(&m, "patternd_redis_breaker_open", &[]), 0.0, "{m}");
    for to in ["half_open", "closed"] {
        assert_eq!(
            value(
                &m,
                "patternd_redis_breaker_transitions_total",
                &[("to", to)]
            ),
            1.0,
            "{to}:\n{m}"
        );
    }
    let log = p.log();
    assert_eq!(log.matches("Redis breaker closed").count(), 1, "{log}");
    Ok(())
}

/// `CLIENT PAUSE … ALL`: Redis holds every client's commands (patternd's too) for `ms`.
async fn pause(w: &World, ms: u64) -> Result<redis::aio::MultiplexedConnection> {
    // No response timeout on this connection: its PING waits out the pause.
    let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = redis::Client::open(w.redis.url())?
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("ALL")
        .query_async(&mut conn)
        .await?;
    Ok(conn)
}

/// Returns once the pause is over: a paused server holds this PING too.
async fn until_unpaused(conn: &mut redis::aio::MultiplexedConnection) -> Result<()> {
    let _: String = redis::cmd("PING").query_async(conn).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_slow_command_does_not_open_the_breaker_but_a_stall_does() -> Result<()> {
    let w = World::start(&[("brk.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let r = p.check("brk", "open", "warm", 1).await?;
    assert_eq!((r.status, r.degraded()), (200, false), "{r:?}");

    // One command outlives the timeout (the pause is five timeouts long): that request is
    // degraded, and the next ones are asked of Redis again, not refused.
    let mut conn = pause(&w, 1500).await?;
    let r = p.check("brk", "open", "one", 1).await?;
    assert_eq!((r.allowed(), r.degraded()), (true, true), "{r:?}");
    until_unpaused(&mut conn).await?;
    let r = p.check("brk", "closed", "one", 1).await?;
    assert_eq!((r.status, r.degraded()), (200, false), "{r:?}");
    let m = metrics(p).await?;
    assert_eq!(
        value(&m, "patternd_redis_errors_total", &[("kind", "timeout")]),
        1.0,
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            "patternd_redis_errors_total",
            &[("kind", "circuit_open")]
        ),
        0.0,
        "{m}"
    );
    assert!(!p.log().contains("Redis breaker open"), "{}", p.log());

    // A stall: timeouts in a row open the breaker, and the rest of the stall is answered
    // at once (counted by the breaker, not timed out); it closes when Redis answers again.
    let mut conn = pause(&w, 4000).await?;
    for i in 0..20 {
        let r = p.check("brk", "closed", "stall", 1).await?;
        assert_eq!((r.allowed(), r.degraded()), (false, true), "{i}: {r:?}");
    }
    let m = metrics(p).await?;
    let timeouts = value(&m, "patternd_redis_errors_total", &[("kind", "timeout")]);
    let refused = value(
        &m,
        "patternd_redis_errors_total",
        &[("kind", "circuit_open")],
    );
    // A few timeouts open it (the first pause's one among them); the breaker refused the rest.
    assert!(
        (2.0..=4.0).contains(&timeouts) && refused >= 17.0,
        "timeouts {timeouts}, refused {refused}:\n{m}"
    );
    until_unpaused(&mut conn).await?;
    eventually(Duration::from_secs(5), "non-degraded decisions", || async {
        let r = p.check("brk", "closed", "stall", 1).await?;
        Ok((!r.degraded()).then_some(()))
    })
    .await?;
    Ok(())
}

/// Replaces every key of `id` (found by SCAN, so the test needs no key layout) with a list:
/// what another client writing the same key names would leave.
async fn poison(w: &World, id: &str) -> Result<usize> {
    let mut conn = w.redis.conn().await?;
    let tag = format!("{{{id}}}");
    let mut n = 0;
    for key in scan_all(&mut conn).await? {
        if String::from_utf8_lossy(&key).contains(&tag) {
            let () = redis::pipe()
                .del(&key)
                .rpush(&key, "written by someone else")
                .expire(&key, 3600)
                .query_async(&mut conn)
                .await?;
            n += 1;
        }
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_of_another_type_is_a_named_problem_not_an_outage() -> Result<()> {
    let w = World::start(&[("brk.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    for id in ["victim", "bystander"] {
        let r = p.check("brk", "open", id, 1).await?;
        assert_eq!((r.status, r.remaining()), (200, 999), "{r:?}");
    }
    assert!(poison(&w, "victim").await? >= 1);

    let attempts = 21;
    for _ in 0..attempts {
        let r = p.check("brk", "open", "victim", 1).await?;
        r.assert_problem(500);
        assert_eq!(
            r.json["type"], "urn:patternd:problem:redis-wrong-type",
            "{r:?}"
        );
        assert!(r.detail().contains("WRONGTYPE"), "{r:?}");
        assert!(r.detail().contains("brk:ratelimit:open:"), "{r:?}");
        assert!(r.detail().contains("another client"), "{r:?}");
        // Not an outage: on_redis_error did not decide.
        assert!(r.json.get("degraded").is_none(), "{r:?}");
        assert!(r.header("patternd-degraded").is_none(), "{r:?}");
    }
    // Other ids of the rule are untouched.
    let r = p.check("brk", "open", "bystander", 1).await?;
    assert_eq!(
        (r.status, r.remaining(), r.degraded()),
        (200, 998, false),
        "{r:?}"
    );

    // The same answer from the other patterns, through the one mapping.
    let r = p.post_json("/v1/locks/brk/door/gate", &json!({})).await?;
    assert_eq!(r.status, 200, "{r:?}");
    let token = r.json["token"].as_str().unwrap_or_default().to_string();
    let release = p
        .client()
        .delete(p.url("/v1/locks/brk/door/gate"))
        .json(&json!({ "token": token }));
    assert_eq!(p.send(release).await?.status, 200);
    assert!(poison(&w, "gate").await? >= 1);
    let r = p.post_json("/v1/locks/brk/door/gate", &json!({})).await?;
    r.assert_problem(500);
    assert!(r.detail().contains("WRONGTYPE"), "{r:?}");
    assert!(r.detail().contains("brk:lock:door:"), "{r:?}");
    let r = p.post_json("/v1/locks/brk/door/other", &json!({})).await?;
    assert_eq!(r.status, 200, "{r:?}");

    let m = metrics(p).await?;
    assert_eq!(
        value(&m, "patternd_redis_errors_total", &[("kind", "wrong_type")]),
        f64::from(attempts) + 1.0,
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            "patternd_decisions_total",
            &[("rule", "open"), ("outcome", "degraded_allowed")]
        ),
        0.0,
        "{m}"
    );
    assert_eq!(value(&m, "patternd_redis_breaker_open", &[]), 0.0, "{m}");
    // Logged once per rule, not once per request: the warn line is gated per rule every
    // 10 s (two would only mean the machine took over 10 s for these requests).
    let log = p.log();
    let lines = |ns: &str| {
        log.lines()
            .filter(|l| l.contains("WRONGTYPE") && l.contains(ns))
            .count()
    };
    assert!((1..=2).contains(&lines("brk:ratelimit:open:")), "{log}");
    assert_eq!(lines("brk:lock:door:"), 1, "{log}");
    Ok(())
}
