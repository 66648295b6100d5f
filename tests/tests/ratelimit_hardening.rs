//! Rate limits and locks under attack and under faults (issue 9, items 4 and 7).
//!
//! - A request's cost never sizes the work a script does: a cost of a million is one entry in
//!   Redis for `sliding_log` and `concurrency`, and releasing a lease costs the same whatever
//!   its token claims.
//! - An acquire whose answer never reached the client (Redis stalled past the command timeout)
//!   leaves no holder behind once Redis runs it late: locks and concurrency leases.
//!
//! The first group runs on a standalone Redis and on a three-primary cluster; the stalls stop
//! one server and stay standalone.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use patternd_e2e::{
    Backend, RedisServer, World, eventually, metric_value, on_every_backend, redis_now_ms,
};
use serde_json::{Value, json};

const POLICY: &str = "app: hard
rules:
  log:
    rate_limit: { algorithm: sliding_log, limit: 1000000000000, window: 1h }
  small-log:
    rate_limit: { algorithm: sliding_log, limit: 10, window: 3s }
  churn:
    rate_limit: { algorithm: sliding_log, limit: 1000, window: 1s }
  held:
    rate_limit: { algorithm: concurrency, limit: 1000000000000, lease: 1h }
  one:
    rate_limit: { algorithm: concurrency, limit: 1, lease: 60s, on_redis_error: deny }
  one-open:
    rate_limit: { algorithm: concurrency, limit: 1, lease: 60s, on_redis_error: allow }
  mutex: { lock: { ttl: 60s } }
  pair: { lock: { ttl: 60s, permits: 2 } }
";

const MILLION: u64 = 1_000_000;
const TRILLION: u64 = 1_000_000_000_000;

/// The keys Redis holds for one id of one rule (found by SCAN, so the test does not depend on
/// the algorithm codes in key names).
async fn keys_of(w: &World, pattern: &str, rule: &str, id: &str) -> Result<Vec<String>> {
    let prefix = format!("hard:{pattern}:{rule}:{{{id}}}:");
    Ok(w.redis
        .scan_names()
        .await?
        .into_iter()
        .filter(|k| k.starts_with(&prefix))
        .collect())
}

/// The one sorted set among `keys` (the log or the leases), with its size and memory.
async fn zset_stats(w: &World, keys: &[String]) -> Result<(String, u64, u64)> {
    for k in keys {
        let mut conn = w.redis.conn_for_key(k).await?;
        let t: String = redis::cmd("TYPE").arg(k).query_async(&mut conn).await?;
        if t == "zset" {
            let n: u64 = redis::cmd("ZCARD").arg(k).query_async(&mut conn).await?;
            let mem: u64 = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(k)
                .query_async(&mut conn)
                .await?;
            return Ok((k.clone(), n, mem));
        }
    }
    anyhow::bail!("no sorted set among {keys:?}")
}

async fn a_costly_sliding_log_request_is_one_entry(b: Backend) -> Result<()> {
    let w = World::on(b, &[("hard.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let r = p.check("hard", "log", "big", MILLION).await?;
    assert_eq!(
        (r.status, r.degraded(), r.remaining()),
        (200, false, TRILLION - MILLION),
        "{r:?}"
    );
    let r = p.check("hard", "log", "big", TRILLION - MILLION).await?;
    assert_eq!(
        (r.status, r.degraded(), r.remaining()),
        (200, false, 0),
        "the largest cost the policy allows is one entry too: {r:?}"
    );
    let r = p.check("hard", "log", "big", 1).await?;
    assert_eq!((r.status, r.degraded()), (429, false), "{r:?}");
    // Both admitted requests are still in the hour: the full quota is back after it.
    assert!(r.u64_field("retry_after_ms") > 3_000_000, "{r:?}");

    let keys = keys_of(&w, "ratelimit", "log", "big").await?;
    let (key, entries, bytes) = zset_stats(&w, &keys).await?;
    assert_eq!(entries, 2, "one entry per admitted request: {key}");
    // A million per-unit entries took about 125 MB; two entries take a few hundred bytes.
    assert!(bytes < 4096, "{key} uses {bytes} bytes");
    Ok(())
}

on_every_backend!(a_costly_sliding_log_request_is_one_entry);

async fn a_costly_lease_is_one_entry_and_a_forged_cost_frees_nothing(b: Backend) -> Result<()> {
    let w = World::on(b, &[("hard.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let r = p.check("hard", "held", "w", MILLION).await?;
    assert_eq!(
        (r.status, r.degraded(), r.remaining()),
        (200, false, TRILLION - MILLION),
        "{r:?}"
    );
    let lease = r.lease().context("a lease")?.to_string();
    let keys = keys_of(&w, "ratelimit", "held", "w").await?;
    let (key, entries, bytes) = zset_stats(&w, &keys).await?;
    assert_eq!(entries, 1, "one entry per lease: {key}");
    assert!(bytes < 4096, "{key} uses {bytes} bytes");

    // The same lease with the largest cost the policy allows: the release path must neither
    // loop over that cost nor free more than was granted.
    let (head, _) = lease.rsplit_once('.').context("lease format")?;
    let inflated = format!("{head}.{TRILLION}");
    let r = p.release("hard", "held", &inflated).await?;
    assert_eq!(
        (r.status, &r.json),
        (200, &json!({"released": false})),
        "{r:?}"
    );
    // A token nobody was given, claiming the largest cost.
    let forged = format!("dw.AAAAAAAAAAAAAAAAAAAAAA.{TRILLION}");
    let r = p.release("hard", "held", &forged).await?;
    assert_eq!(
        (r.status, &r.json),
        (200, &json!({"released": false})),
        "{r:?}"
    );
    // Still held exactly as granted.
    let r = p.check("hard", "held", "w", 0).await?;
    assert_eq!(
        (r.status, r.degraded(), r.remaining()),
        (200, false, TRILLION - MILLION),
        "{r:?}"
    );
    let r = p.release("hard", "held", &lease).await?;
    assert_eq!(r.json, json!({"released": true}), "{r:?}");
    let r = p.check("hard", "held", "w", 0).await?;
    assert_eq!((r.status, r.remaining()), (200, TRILLION), "{r:?}");
    Ok(())
}

on_every_backend!(a_costly_lease_is_one_entry_and_a_forged_cost_frees_nothing);

async fn weighted_log_retry_after_is_exact(b: Backend) -> Result<()> {
    let w = World::on(b, &[("hard.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let window = 3000.0;
    assert_eq!(p.check("hard", "small-log", "u", 3).await?.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = p.check("hard", "small-log", "u", 4).await?;
    assert_eq!((r.status, r.remaining()), (200, 3), "{r:?}");

    let keys = keys_of(&w, "ratelimit", "small-log", "u").await?;
    let (key, entries, _) = zset_stats(&w, &keys).await?;
    assert_eq!(entries, 2, "{key}");
    let mut conn = w.redis.conn_for_key(&key).await?;
    let scored: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await?;
    let (first, second) = (scored[0].1, scored[1].1);

    // Cost 5 needs 2 units back: the first request (3) leaving is enough. Cost 7 needs 4:
    // the second must leave too. The script's clock is between the two TIME reads.
    for (cost, leaves) in [(5, first), (7, second)] {
        let before = redis_now_ms(&mut conn).await?;
        let r = p.check("hard", "small-log", "u", cost).await?;
        let after = redis_now_ms(&mut conn).await?;
        assert_eq!((r.status, r.remaining()), (429, 3), "{r:?}");
        let retry = r.u64_field("retry_after_ms") as f64;
        let (lo, hi) = (leaves + window - after, leaves + window - before);
        assert!(
            retry >= lo.floor() && retry <= hi.ceil() + 1.0,
            "cost {cost}: retry {retry} not in [{lo}, {hi}]"
        );
    }
    // Once the first request left, cost 5 fits next to the second one's 4.
    let r = eventually(
        Duration::from_secs(10),
        "the first entry to leave",
        || async {
            let r = p.check("hard", "small-log", "u", 5).await?;
            Ok((r.status == 200).then_some(r))
        },
    )
    .await?;
    assert_eq!(r.remaining(), 1, "{r:?}");
    Ok(())
}

on_every_backend!(weighted_log_retry_after_is_exact);

async fn expired_entries_never_count_however_many_left_at_once(b: Backend) -> Result<()> {
    let w = World::on(b, &[("hard.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    for _ in 0..300 {
        assert_eq!(p.check("hard", "churn", "c", 1).await?.status, 200);
    }
    // Wait (on Redis' clock) until every one of them has left the 1 s window.
    let keys = keys_of(&w, "ratelimit", "churn", "c").await?;
    let (key, entries, _) = zset_stats(&w, &keys).await?;
    assert_eq!(entries, 300, "{key}");
    let mut conn = w.redis.conn_for_key(&key).await?;
    let newest: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(-1)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await?;
    eventually(Duration::from_secs(10), "the burst to leave", || async {
        let now = redis_now_ms(&mut w.redis.conn_for_key(&key).await?).await?;
        Ok((now > newest[0].1 + 1100.0).then_some(()))
    })
    .await?;
    // However the cleanup is spread over calls, none of the old entries counts.
    for k in 1..=5u64 {
        let r = p.check("hard", "churn", "c", 2).await?;
        assert_eq!((r.status, r.remaining()), (200, 1000 - 2 * k), "{r:?}");
    }
    let n: u64 = redis::cmd("ZCARD").arg(&key).query_async(&mut conn).await?;
    assert_eq!(n, 5, "expired entries are removed");
    Ok(())
}

on_every_backend!(expired_entries_never_count_however_many_left_at_once);

// ---------------------------------------------------------------------------------------------
// Redis stalling mid-acquire
// ---------------------------------------------------------------------------------------------

/// SIGSTOP / SIGCONT of the test's own redis-server (found by its pid in INFO), so a command
/// sent meanwhile waits in the socket and runs when Redis resumes, after the client gave up.
struct Stall {
    pid: String,
}

impl Stall {
    async fn of(redis: &RedisServer) -> Result<Self> {
        let mut conn = redis.conn().await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        let pid = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .context("process_id in INFO")?
            .trim()
            .to_string();
        Ok(Self { pid })
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let ok = Command::new("kill")
            .args([sig, &self.pid])
            .status()?
            .success();
        ensure!(ok, "kill {sig} {} failed", self.pid);
        Ok(())
    }

    fn pause(&self) -> Result<()> {
        self.signal("-STOP")
    }

    fn resume(&self) -> Result<()> {
        self.signal("-CONT")
    }
}

/// A few pool connections, so a release that went on another connection than the acquire
/// could overtake it.
const POOL: &[&str] = &["--redis-pool", "4"];

async fn zcard(w: &World, key: &str) -> Result<u64> {
    let mut conn = w.redis.conn_for_key(key).await?;
    Ok(redis::cmd("ZCARD").arg(key).query_async(&mut conn).await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_acquired_during_a_stall_is_not_orphaned() -> Result<()> {
    let w = World::start(&[("hard.yaml", POLICY)], POOL).await?;
    let p = &w.patternd;
    let stall = Stall::of(w.redis.server()?).await?;
    for (rule, permits) in [("mutex", 1), ("pair", 2)] {
        let path = format!("/v1/locks/hard/{rule}/printer");
        // The semaphore keeps one permit held by a live holder throughout.
        let kept = if permits > 1 {
            let r = p.post_json(&path, &json!({})).await?;
            assert_eq!(r.status, 200, "{r:?}");
            Some(r.json["token"].clone())
        } else {
            None
        };
        stall.pause()?;
        let r = p.post_json(&path, &json!({})).await;
        stall.resume()?;
        r?.assert_problem(503);

        // The late acquire ran when Redis resumed; its permit must come back long before
        // the 60 s lease would lapse.
        let holders = format!("hard:lock:{rule}:{{printer}}:h");
        let held = u64::from(kept.is_some());
        eventually(
            Duration::from_secs(10),
            "the orphaned permit back",
            || async { Ok((zcard(&w, &holders).await? == held).then_some(())) },
        )
        .await?;
        let r = p.post_json(&path, &json!({})).await?;
        assert_eq!(r.status, 200, "{r:?}");
        let token = r.json["token"].clone();
        let mut conn = w.redis.conn().await?;
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&holders)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let mut expected: Vec<Value> = kept.into_iter().chain([token]).collect();
        expected.sort_by_key(|v| v.as_str().unwrap_or_default().to_string());
        let members: Vec<Value> = members.into_iter().map(Value::from).collect();
        let mut sorted = members.clone();
        sorted.sort_by_key(|v| v.as_str().unwrap_or_default().to_string());
        assert_eq!(sorted, expected, "only live holders hold {rule}");
    }
    assert_eq!(lost_grants_released(&w, "lock").await?, 2.0);
    Ok(())
}

/// How many lost grants the engine took back (its metric): proves the permit came back by
/// that path, not by some other.
async fn lost_grants_released(w: &World, pattern: &str) -> Result<f64> {
    let metrics = w.patternd.get("/metrics").await?.text;
    Ok(metric_value(
        &metrics,
        "patternd_lost_grants_total",
        &[("pattern", pattern), ("outcome", "released")],
    )
    .unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_granted_during_a_stall_is_not_orphaned() -> Result<()> {
    let w = World::start(&[("hard.yaml", POLICY)], POOL).await?;
    let p = &w.patternd;
    let stall = Stall::of(w.redis.server()?).await?;
    for (rule, status) in [("one", 429), ("one-open", 200)] {
        stall.pause()?;
        let r = p.check("hard", rule, "job", 1).await;
        stall.resume()?;
        let r = r?;
        assert_eq!((r.status, r.degraded()), (status, true), "{r:?}");
        assert!(r.lease().is_none(), "{r:?}");

        // The late grant ran when Redis resumed; the one slot must come back long before
        // its 60 s lease would lapse.
        let r = eventually(
            Duration::from_secs(10),
            "the orphaned slot back",
            || async {
                let r = p.check("hard", rule, "job", 1).await?;
                Ok((r.status == 200 && !r.degraded()).then_some(r))
            },
        )
        .await?;
        assert_eq!(r.remaining(), 0, "{r:?}");
        let keys = keys_of(&w, "ratelimit", rule, "job").await?;
        let (key, entries, _) = zset_stats(&w, &keys).await?;
        assert_eq!(entries, 1, "only the live lease is held: {key}");
        let lease = r.lease().context("a lease")?.to_string();
        let r = p.release("hard", rule, &lease).await?;
        assert_eq!(r.json, json!({"released": true}), "{r:?}");
    }
    assert_eq!(lost_grants_released(&w, "ratelimit").await?, 2.0);
    Ok(())
}
