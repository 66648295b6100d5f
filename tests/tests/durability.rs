//! `durability: { replicas, timeout }`: a write is answered only once that many replicas hold
//! it (`WAIT` after the script, on the same connection). Against a real primary with a real
//! replica (`--replicaof`), and the same primary without one: a lock grant that no replica
//! acknowledged is refused with 503 `not-replicated` and taken back, so no holder is left
//! behind that nobody was told about.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use patternd_e2e::{Patternd, RedisServer, TempDir, policy_dir};
use serde_json::json;

const POLICY: &str = r#"
app: dur
rules:
  order:
    lock: { ttl: 30s, durability: { replicas: 1, timeout: 200ms } }
  plain:
    lock: { ttl: 30s }
  profile:
    cache: { ttl: 1h, durability: { replicas: 1, timeout: 200ms } }
"#;

/// A replica of `primary` that acknowledges writes: the primary counts a replica in `WAIT`
/// only once it is `online` there (after its first `REPLCONF ACK`), a moment after the
/// replica's own link says `up`; so the harness waits until a `WAIT` of its own counts it.
fn replica_of(primary: &RedisServer) -> Result<RedisServer> {
    let port = primary.port();
    let replica = RedisServer::start_in(TempDir::new("replica")?, move |_| {
        Ok(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            port.to_string(),
        ])
    })?;
    let mut con = redis::Client::open(primary.url())?.get_connection()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let () = redis::cmd("SET")
            .arg("durability-test:probe")
            .arg(1)
            .arg("PX")
            .arg(10_000)
            .query(&mut con)?;
        let acked: i64 = redis::cmd("WAIT").arg(1).arg(100).query(&mut con)?;
        if acked >= 1 {
            return Ok(replica);
        }
        ensure!(
            Instant::now() < deadline,
            "the replica never acknowledged a write\n{}",
            replica.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_grant_is_answered_once_a_replica_has_it_and_taken_back_when_none_does() -> Result<()> {
    let redis = RedisServer::start()?;
    let dir = policy_dir(&[("dur.yaml", POLICY)])?;
    let pd = Patternd::start(&redis.url(), dir.path(), &[]).await?;

    // No replica: the grant cannot be confirmed. 503 not-replicated, after the WAIT timeout.
    let r = pd.post_json("/v1/locks/dur/order/o-1", &json!({})).await?;
    ensure!(r.status == 503, "{} {}\n{}", r.status, r.text, pd.log());
    ensure!(
        r.json["type"] == "urn:patternd:problem:not-replicated",
        "{}",
        r.text
    );
    ensure!(
        r.json["detail"]
            .as_str()
            .unwrap_or("")
            .contains("0 of the 1 replicas"),
        "{}",
        r.text
    );
    // …and the grant it made on the primary is taken back: nobody holds o-1.
    let mut con = redis.conn().await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let holders: i64 = redis::cmd("ZCARD")
            .arg("dur:lock:order:{o-1}:h")
            .query_async(&mut con)
            .await?;
        if holders == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the unconfirmed grant still holds o-1\n{}",
            pd.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A cache write is refused the same way (it is applied on the primary, not confirmed).
    let put = pd
        .put_with(
            "/v1/cache/dur/profile/7",
            r#"{"name":"Ada"}"#,
            &[("content-type", "application/json")],
        )
        .await?;
    ensure!(put.status == 503, "{} {}", put.status, put.text);
    ensure!(
        put.json["type"] == "urn:patternd:problem:not-replicated",
        "{}",
        put.text
    );
    // A rule without durability is not affected.
    let r = pd.post_json("/v1/locks/dur/plain/o-1", &json!({})).await?;
    ensure!(r.status == 200, "{} {}", r.status, r.text);

    // With a replica, the grant is answered, and the replica has it.
    let replica = replica_of(&redis)?;
    let r = pd.post_json("/v1/locks/dur/order/o-2", &json!({})).await?;
    ensure!(r.status == 200, "{} {}\n{}", r.status, r.text, pd.log());
    let mut rcon = replica.conn().await?;
    let exists: i64 = redis::cmd("EXISTS")
        .arg("dur:lock:order:{o-2}:h")
        .query_async(&mut rcon)
        .await?;
    ensure!(
        exists == 1,
        "the replica does not have the acknowledged grant"
    );
    // A cache write is acknowledged once the replica has it.
    let put = pd
        .put_with(
            "/v1/cache/dur/profile/8",
            r#"{"name":"Ada"}"#,
            &[("content-type", "application/json")],
        )
        .await?;
    ensure!(
        (200..300).contains(&put.status),
        "{} {}",
        put.status,
        put.text
    );
    // Extending it waits for the replica too.
    let token = r.json["token"].as_str().unwrap_or_default().to_owned();
    let r = pd
        .post_json(
            "/v1/locks/dur/order/o-2/extend",
            &json!({ "token": token, "ttl_ms": 60000 }),
        )
        .await?;
    ensure!(r.status == 200, "{} {}", r.status, r.text);
    let metrics = pd.get("/metrics").await?;
    ensure!(
        metrics
            .text
            .contains(r#"patternd_redis_errors_total{kind="not_replicated"} 2"#),
        "the refused grant and write are counted"
    );
    Ok(())
}
