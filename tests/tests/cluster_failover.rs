//! A primary of a real Redis Cluster killed under load (SIGKILL, as a crash would): its
//! replica is promoted, patternd follows the new topology by itself, and rate-limit decisions
//! answer per their failure mode meanwhile — only for ids on the dead shard; the other shards
//! keep deciding normally (one dead node does not open the breaker for everyone).
//!
//! The test prints what the issue asks to measure (how long decisions on the dead shard were
//! degraded, how many answers were), but asserts only what must hold whatever the machine's
//! speed: the other shards were served normally while it was down, and the dead shard's ids
//! are decided normally again after the promotion. A lock grant and a write-behind write
//! acknowledged with `durability` on the dying shard survive the failover. Then every node's script cache is
//! flushed (what a restarted primary without persistence looks like) and decisions still
//! work: NOSCRIPT is answered on whichever node lacks the script. An SSE subscriber of a
//! channel on the dying shard gets `event: gap`, then messages again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use patternd_e2e::cluster::{ClusterOptions, RedisCluster, key_slot};
use patternd_e2e::origin::Origin;
use patternd_e2e::sse::SseClient;
use patternd_e2e::{Patternd, cache_keys, policy_dir};

const POLICY: &str = r#"
app: fo
rules:
  api:
    rate_limit: { algorithm: fixed_window, limit: 1000000, window: 1m, on_redis_error: allow }
  # 3 s: a replica counts in WAIT once its primary has its first REPLCONF ACK (sent every
  # second), a moment after the harness sees its link up.
  order:
    lock: { ttl: 60s, max_wait: 100ms, durability: { replicas: 1, timeout: 3s } }
  profile:
    cache:
      origin: ORIGIN
      ttl: 1h
      write: behind
      max_attempts: 1000
      retry_backoff: 100ms
      origin_timeout: 1s
      durability: { replicas: 1, timeout: 3s }
  news:
    pubsub: { heartbeat: 1s }
"#;

/// The key of a fixed-window decision for `id` (the key builder's layout).
fn key_of(id: &str) -> String {
    format!("fo:ratelimit:api:{{{id}}}")
}

#[derive(Debug, Clone, Copy)]
struct Answer {
    at: Instant,
    shard: usize,
    status: u16,
    degraded: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_followed_and_only_its_shard_is_degraded_meanwhile() -> Result<()> {
    let t0 = Instant::now();
    let mut cluster = RedisCluster::start(ClusterOptions { replicas: true })?;
    eprintln!("cluster started in {:?}", t0.elapsed());
    let origin = Origin::start().await?;
    let dir = policy_dir(&[("fo.yaml", &POLICY.replace("ORIGIN", &origin.template()))])?;
    let pd = Patternd::start(&cluster.url(), dir.path(), &["--redis-timeout", "250ms"]).await?;
    eprintln!("patternd ready at {:?}", t0.elapsed());
    let ids = cluster.ids_on_every_primary("u", key_of)?;
    let victim = cluster.owner_of_key(key_of(&ids[0]))?;

    // A lock granted with `durability` on the shard about to die: its replica has it (WAIT,
    // routed to the owning primary over the cluster connection) before the grant is answered.
    let resource = cluster.id_on("r", |id| format!("fo:lock:order:{{{id}}}:h"), victim.port)?;
    let granted = pd
        .post_json(
            &format!("/v1/locks/fo/order/{resource}"),
            &serde_json::json!({}),
        )
        .await?;
    ensure!(
        granted.status == 200,
        "{} {}\n{}",
        granted.status,
        granted.text,
        pd.log()
    );

    // A write-behind write acknowledged (202, after WAIT) on the same shard while the origin
    // refuses it: it waits in the shard's journal, which the failover must not lose.
    let profile = cluster.id_on(
        "w",
        |id| cache_keys::key("fo", "profile", id, "v"),
        victim.port,
    )?;
    origin.fail_writes_with(Some(503));
    let put = pd
        .put_with(
            &format!("/v1/cache/fo/profile/{profile}"),
            "kept",
            &[("content-type", "text/plain")],
        )
        .await?;
    ensure!(put.status == 202, "{} {}", put.status, put.text);
    // An SSE subscriber of a channel on the same shard (sharded pub/sub: the engine's
    // SSUBSCRIBE goes to the primary about to die).
    let channel = cluster.id_on("c", |id| format!("fo:pubsub:news:{{{id}}}:c"), victim.port)?;
    let channel_path = format!("/v1/pubsub/fo/news/{channel}");
    let mut sub = SseClient::connect(pd.client(), &pd.url(&channel_path), &[]).await?;
    let first = sub.event(Duration::from_secs(30)).await?;
    ensure!(first.event == "subscribed", "{first:?}");
    eprintln!(
        "lock granted, write-behind acknowledged, subscribed at {:?}",
        t0.elapsed()
    );
    // Load: one client per shard, each deciding its id in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (shard, id) in ids.iter().enumerate() {
        let (client, url, stop) = (
            pd.client().clone(),
            pd.url("/v1/ratelimit/fo/api"),
            stop.clone(),
        );
        let body = serde_json::json!({ "id": id });
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = client.post(&url).json(&body).send().await;
                let at = Instant::now();
                match r {
                    Ok(r) => seen.push(Answer {
                        at,
                        shard,
                        status: r.status().as_u16(),
                        degraded: r.headers().contains_key("patternd-degraded"),
                    }),
                    Err(_) => seen.push(Answer {
                        at,
                        shard,
                        status: 0,
                        degraded: true,
                    }),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let killed_at = Instant::now();
    let (cluster, promoted) = tokio::task::spawn_blocking(move || {
        let promoted = cluster.kill_primary(victim.port);
        (cluster, promoted)
    })
    .await?;
    let promoted = promoted?;
    let promoted_at = Instant::now();
    ensure!(promoted.serves(key_slot(key_of(&ids[0]))), "{promoted:?}");

    // Until the dead shard's id has been decided normally for a while (bounded: patternd
    // must follow the promotion by itself, without a restart).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = pd.check("fo", "api", &ids[0], 1).await?;
        if r.status == 200 && r.header("patternd-degraded").is_none() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "decisions on the promoted shard still degraded 30 s after the promotion: {} {:?}\n{}",
            r.status,
            r.header("patternd-degraded"),
            pd.log()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await?);
    }
    answers.sort_by_key(|a| a.at);

    let victim_degraded: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.shard == 0 && a.degraded)
        .collect();
    let others_during: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.shard != 0 && a.at >= killed_at && a.at <= promoted_at)
        .collect();
    let others_degraded = others_during.iter().filter(|a| a.degraded).count();
    let last_degraded = victim_degraded.last().map(|a| a.at);
    let window = last_degraded.map(|t| t.saturating_duration_since(killed_at));
    let recovered_after_promotion = last_degraded.map(|t| t.saturating_duration_since(promoted_at));
    println!(
        "failover: promotion took {:?}; dead shard degraded for {:?} after the kill \
         ({:?} after the promotion), {} degraded answers of {} on it; other shards: {} of {} \
         answers degraded meanwhile",
        promoted_at - killed_at,
        window,
        recovered_after_promotion,
        victim_degraded.len(),
        answers.iter().filter(|a| a.shard == 0).count(),
        others_degraded,
        others_during.len(),
    );
    // Every answer is a decision: never a 5xx, whatever the shard (on_redis_error: allow).
    let bad: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    ensure!(
        bad.is_empty(),
        "answers other than 200: {:?}\n{}",
        &bad[..bad.len().min(5)],
        pd.log()
    );
    // The other shards were decided normally while the victim was down: the breaker did not
    // open for them.
    ensure!(
        others_during.iter().any(|a| !a.degraded),
        "no normal decision on the live shards during the failover\n{}",
        pd.log()
    );

    // The durable grant survived the failover: the promoted replica still has its holder,
    // so nobody else is granted the resource.
    let again = pd
        .post_json(
            &format!("/v1/locks/fo/order/{resource}"),
            &serde_json::json!({}),
        )
        .await?;
    ensure!(
        again.status == 409,
        "the acknowledged grant was lost in the failover: {} {}\n{}",
        again.status,
        again.text,
        pd.log()
    );

    // The acknowledged write-behind write survived too: once the origin accepts, the flusher
    // (following the promoted primary) delivers it.
    origin.fail_writes_with(None);
    patternd_e2e::eventually(
        Duration::from_secs(30),
        "the write-behind delivery",
        || async {
            let delivered = origin
                .writes()
                .iter()
                .any(|w| w.id == profile && w.body == b"kept" && w.method == "PUT");
            ensure!(delivered, "not delivered yet");
            Ok(Some(()))
        },
    )
    .await?;

    // The subscriber is told its subscription was interrupted (`event: gap`), and once the
    // engine has subscribed again on the promoted primary, messages flow.
    let gap = sub.event(Duration::from_secs(30)).await?;
    ensure!(
        gap.event == "gap",
        "after the failover: {gap:?}\n{}",
        pd.log()
    );
    patternd_e2e::eventually(
        Duration::from_secs(30),
        "the engine to subscribe again",
        || async {
            let r = pd.post_raw(&channel_path, "after").await?;
            Ok((r.status == 200 && r.u64_field("engines") == 1).then_some(()))
        },
    )
    .await?;
    let e = sub.event(Duration::from_secs(30)).await?;
    ensure!(
        (e.event.as_str(), e.data.as_str()) == ("message", "after"),
        "after resubscribing: {e:?}"
    );

    // A restarted primary without persistence has no scripts: flush every node's script
    // cache; the next calls answer NOSCRIPT and are sent again with the script's source.
    for port in cluster.live_ports() {
        let mut con = redis::Client::open(patternd_e2e::cluster::node_url(port))?
            .get_multiplexed_async_connection()
            .await?;
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut con)
            .await?;
    }
    for id in &ids {
        let r = pd.check("fo", "api", id, 1).await?;
        ensure!(
            r.status == 200 && r.header("patternd-degraded").is_none(),
            "after SCRIPT FLUSH, {id}: {} {:?}\n{}",
            r.status,
            r.header("patternd-degraded"),
            pd.log()
        );
    }
    let metrics = pd.get("/metrics").await?;
    ensure!(
        metrics.text.contains("patternd_script_reloads_total"),
        "the NOSCRIPT recovery is counted"
    );
    drop(cluster);
    Ok(())
}
