//! Pub/sub over Server-Sent Events end to end: 500 subscribers across two engines all receive
//! a publish (standalone and cluster, where it is sharded pub/sub), a Redis restart is
//! survived with a gap event, a slow subscriber is dropped while the others keep receiving.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};
use patternd_e2e::sse::SseClient;
use patternd_e2e::{Backend, Patternd, World, eventually, metric_value, on_every_backend};

/// A loaded machine must not turn a slow answer into a 503: these tests are about delivery.
const SLOW_OK: &[&str] = &["--redis-timeout", "10s"];

const POLICY: &str = "app: chat
rules:
  room:
    pubsub: { heartbeat: 1s }
  tiny:
    pubsub: { client_buffer: 4 }
";

const WITHIN: Duration = Duration::from_secs(30);

async fn publish(p: &Patternd, rule: &str, channel: &str, body: &str) -> Result<u64> {
    let r = p
        .post_raw(&format!("/v1/pubsub/chat/{rule}/{channel}"), body)
        .await?;
    ensure!(r.status == 200, "publish: {r:?}");
    Ok(r.u64_field("engines"))
}

async fn subscribe(
    client: &reqwest::Client,
    p: &Patternd,
    rule: &str,
    channel: &str,
) -> Result<SseClient> {
    let mut c = SseClient::connect(
        client,
        &p.url(&format!("/v1/pubsub/chat/{rule}/{channel}")),
        &[],
    )
    .await?;
    let first = c.event(WITHIN).await?;
    ensure!(first.event == "subscribed", "first event: {first:?}");
    Ok(c)
}

async fn five_hundred_subscribers_on_two_engines_all_receive_a_publish(b: Backend) -> Result<()> {
    let w = World::on(b, &[("chat.yaml", POLICY)], SLOW_OK).await?;
    let other = Patternd::start(&w.redis.url(), w.policies.path(), SLOW_OK).await?;
    let engines = Arc::new([w.patternd, other]);
    // A client per 50 subscribers: each SSE response holds its connection.
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(500);
    let (go_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    for i in 0..500 {
        let engines = engines.clone();
        let ready = ready_tx.clone();
        let mut go = go_tx.subscribe();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut c = subscribe(&client, &engines[i % 2], "room", "news").await?;
            ready.send(()).await?;
            let _ = go.recv().await;
            let e = c.event(WITHIN).await?;
            anyhow::Ok(e.data)
        }));
    }
    for _ in 0..500 {
        ready_rx.recv().await;
    }
    let _ = go_tx.send(());
    // Both engines hold one subscription each: Redis counts engines, not SSE clients.
    let reached = publish(&engines[0], "room", "news", "line one\nline two").await?;
    assert_eq!(reached, 2);
    for t in tasks {
        assert_eq!(t.await??, "line one\nline two");
    }
    // Another channel reaches nobody.
    assert_eq!(publish(&engines[1], "room", "empty", "x").await?, 0);
    Ok(())
}

async fn a_slow_subscriber_is_dropped_while_the_others_keep_receiving(b: Backend) -> Result<()> {
    let w = World::on(b, &[("chat.yaml", POLICY)], SLOW_OK).await?;
    let p = &w.patternd;
    let slow_client = reqwest::Client::new();
    let fast_client = reqwest::Client::new();
    let mut slow = subscribe(&slow_client, p, "tiny", "firehose").await?;
    let mut fast = subscribe(&fast_client, p, "tiny", "firehose").await?;
    let message = "x".repeat(32 * 1024);
    let mut sent: usize = 0;
    // The slow client reads nothing: once the socket buffers and its 4 slots are full, it is
    // dropped (counted in the metric). The fast one reads every message meanwhile.
    loop {
        ensure!(sent < 5000, "the slow subscriber was never dropped");
        assert_eq!(publish(p, "tiny", "firehose", &message).await?, 1);
        sent += 1;
        let e = fast.event(WITHIN).await?;
        ensure!(
            e.data.len() == message.len() && e.event == "message",
            "fast got {e:?}"
        );
        if sent.is_multiple_of(20) {
            let m = p.get("/metrics").await?;
            let dropped = metric_value(
                &m.text,
                "patternd_sse_dropped_total",
                &[("pattern", "pubsub")],
            );
            if dropped.unwrap_or(0.0) >= 1.0 {
                break;
            }
        }
    }
    // The others keep receiving after the drop.
    for _ in 0..5 {
        publish(p, "tiny", "firehose", "after").await?;
        assert_eq!(fast.event(WITHIN).await?.data, "after");
    }
    // The slow client's stream: some messages, then the final `dropped` event, then the end.
    let rest = slow.rest(WITHIN).await?;
    let last = rest.last().cloned();
    ensure!(
        last.as_ref().is_some_and(|e| e.event == "dropped"),
        "last event of the slow client: {last:?} after {} events",
        rest.len()
    );
    ensure!(rest.len() < sent + 1, "the slow client got everything");
    Ok(())
}

on_every_backend!(
    five_hundred_subscribers_on_two_engines_all_receive_a_publish,
    a_slow_subscriber_is_dropped_while_the_others_keep_receiving,
);

/// One server stopped and restarted on the same port: subscribers get `event: gap`, and once
/// the engine has subscribed again, messages flow.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restart_is_survived_with_a_gap_event() -> Result<()> {
    let mut w = World::start(&[("chat.yaml", POLICY)], &[]).await?;
    let client = reqwest::Client::new();
    let mut c = subscribe(&client, &w.patternd, "room", "news").await?;
    assert_eq!(publish(&w.patternd, "room", "news", "before").await?, 1);
    assert_eq!(c.event(WITHIN).await?.data, "before");

    w.redis.restart_same_port()?;
    let gap = c.event(WITHIN).await?;
    assert_eq!(gap.event, "gap", "{gap:?}");
    // Publish until the engine's subscription is back (publish counts it), then read.
    eventually(WITHIN, "the engine to subscribe again", || async {
        let r = w
            .patternd
            .post_raw("/v1/pubsub/chat/room/news", "after")
            .await?;
        Ok((r.status == 200 && r.u64_field("engines") == 1).then_some(()))
    })
    .await?;
    let e = c.event(WITHIN).await?;
    assert_eq!((e.event.as_str(), e.data.as_str()), ("message", "after"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_a_problem() -> Result<()> {
    let w = World::start(&[("chat.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let big = "x".repeat(70 * 1024);
    p.post_raw("/v1/pubsub/chat/room/news", &big)
        .await?
        .assert_problem(413);
    let long = "c".repeat(600);
    p.post_raw(&format!("/v1/pubsub/chat/room/{long}"), "x")
        .await?
        .assert_problem(400);
    p.post_raw("/v1/pubsub/chat/nope/news", "x")
        .await?
        .assert_problem(404);
    p.get(&format!("/v1/pubsub/chat/room/{long}"))
        .await?
        .assert_problem(400);
    Ok(())
}
