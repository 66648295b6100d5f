//! Streams end to end over HTTP against a real Redis (standalone and a three-primary cluster):
//! consumer groups, acks, claims, dead letters after max_deliveries, trimming bounds, range
//! reads, the SSE tail resuming with Last-Event-ID (nothing lost, nothing twice), bad input.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use patternd_e2e::sse::SseClient;
use patternd_e2e::{Backend, Patternd, Reply, World, eventually, on_every_backend};
use redis::AsyncCommands as _;
use serde_json::{Value, json};

/// A loaded machine must not turn a slow answer into a 503: these tests are about delivery.
const SLOW_OK: &[&str] = &["--redis-timeout", "10s"];

const POLICY: &str = "app: shop
rules:
  orders:
    stream:
      max_len: 10000
      groups: [billing, shipping]
      claim_after: 300ms
      max_deliveries: 2
      max_count: 20
      max_batch: 50
      max_wait: 20s
      heartbeat: 200ms
  short:
    stream: { max_len: 50, max_batch: 50 }
  recent:
    stream: { retention: 1s }
  firehose:
    stream: { max_len: 100000, tail_buffer: 4 }
";

/// The rule's stream key, as the key builder makes it (`{app}:stream:{rule}:{%app.rule}:s`).
fn stream_key(rule: &str) -> String {
    format!("shop:stream:{rule}:{{%shop.{rule}}}:s")
}

async fn append(p: &Patternd, rule: &str, entries: &[Value]) -> Result<Vec<String>> {
    let r = p
        .post_json(
            &format!("/v1/streams/shop/{rule}"),
            &json!({ "entries": entries }),
        )
        .await?;
    ensure!(r.status == 201, "append: {r:?}");
    Ok(r.json["ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

async fn read(p: &Patternd, group: &str, consumer: &str, query: &str) -> Result<Reply> {
    p.get(&format!(
        "/v1/streams/shop/orders/groups/{group}?consumer={consumer}{query}"
    ))
    .await
}

fn ids_of(r: &Reply) -> Vec<String> {
    r.json["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn ack(p: &Patternd, group: &str, ids: &[&str]) -> Result<u64> {
    let r = p
        .post_json(
            &format!("/v1/streams/shop/orders/groups/{group}/ack"),
            &json!({ "ids": ids }),
        )
        .await?;
    ensure!(r.status == 200, "ack: {r:?}");
    Ok(r.u64_field("acked"))
}

async fn groups_ack_claim_and_dead_letters(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], SLOW_OK).await?;
    let p = &w.patternd;
    let ids = append(
        p,
        "orders",
        &[json!({"n": 1}), json!({"n": 2}), json!({"n": 3})],
    )
    .await?;
    assert_eq!(ids.len(), 3);

    // A takes two, B the third: one group never hands an entry to two consumers at once.
    let a = read(p, "billing", "a", "&count=2").await?;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(ids_of(&a), ids[..2]);
    assert_eq!(a.json["entries"][0]["data"], json!({"n": 1}));
    assert_eq!(a.json["entries"][0]["deliveries"], 1);
    let b_read = read(p, "billing", "b", "&count=10").await?;
    assert_eq!(ids_of(&b_read), ids[2..]);
    assert_eq!(ack(p, "billing", &[&ids[2]]).await?, 1);
    assert_eq!(
        ack(p, "billing", &[&ids[2]]).await?,
        0,
        "a second ack acks nothing"
    );
    assert_eq!(ack(p, "billing", &[&ids[0]]).await?, 1);

    // Another group sees every entry, independently.
    let s = read(p, "shipping", "s1", "&count=10").await?;
    assert_eq!(ids_of(&s), ids);

    // ids[1] stays unacked with A: once idle past claim_after, B claims it (2nd delivery).
    let claimed = eventually(
        Duration::from_secs(10),
        "B to claim the idle entry",
        || async {
            let r = read(p, "billing", "b", "").await?;
            Ok((!ids_of(&r).is_empty()).then_some(r))
        },
    )
    .await?;
    assert_eq!(ids_of(&claimed), [ids[1].clone()]);
    assert_eq!(claimed.json["entries"][0]["deliveries"], 2);

    // Delivered max_deliveries (2) times and still not acked: the next claim moves it to the
    // dead letters and acks it, in one script.
    let dead = eventually(
        Duration::from_secs(10),
        "the entry to be dead-lettered",
        || async {
            let r = read(p, "billing", "a", "").await?;
            ensure!(ids_of(&r).is_empty(), "delivered a third time: {r:?}");
            Ok((r.u64_field("dead_lettered") == 1).then_some(r))
        },
    )
    .await?;
    assert_eq!(dead.status, 200);
    let letters = p.get("/v1/streams/shop/orders/_dead").await?;
    assert_eq!(letters.status, 200, "{letters:?}");
    let e = &letters.json["entries"][0];
    assert_eq!(e["id"], json!(ids[1]));
    assert_eq!(e["group"], "billing");
    assert_eq!(e["deliveries"], 2);
    assert_eq!(e["data"], json!({"n": 2}));
    assert_eq!(letters.json["entries"].as_array().map(Vec::len), Some(1));
    // Nothing is pending any more: a later read finds nothing to claim or deliver.
    let after = read(p, "billing", "a", "").await?;
    assert!(ids_of(&after).is_empty() && after.u64_field("dead_lettered") == 0);

    // Consumer records stay bounded: one with nothing pending is gone once its entries were
    // claimed away or its own read found nothing; one with pending entries stays.
    let key = stream_key("orders");
    let mut conn = w.redis.conn_for_key(&key).await?;
    let billing: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&key)
        .arg("billing")
        .query_async(&mut conn)
        .await?;
    assert!(billing.is_empty(), "billing consumers left: {billing:?}");
    let shipping: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&key)
        .arg("shipping")
        .query_async(&mut conn)
        .await?;
    assert_eq!(shipping.len(), 1, "s1 holds three pending entries");
    Ok(())
}

async fn a_waiting_read_gets_an_entry_appended_through_another_engine(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], SLOW_OK).await?;
    let other = Patternd::start(&w.redis.url(), w.policies.path(), SLOW_OK).await?;
    // The group exists before the waiter starts, so the entry is new to it.
    let first = read(&w.patternd, "billing", "w", "").await?;
    assert_eq!(first.status, 200);
    let waiter = {
        let url = w
            .patternd
            .url("/v1/streams/shop/orders/groups/billing?consumer=w&wait=20s");
        let client = w.patternd.client().clone();
        tokio::spawn(async move {
            let r = client.get(url).send().await?;
            anyhow::Ok(r.json::<Value>().await?)
        })
    };
    let ids = append(&other, "orders", &[json!({"late": true})]).await?;
    let got = waiter.await??;
    assert_eq!(got["entries"][0]["id"], json!(ids[0]), "{got}");
    assert_eq!(got["entries"][0]["data"], json!({"late": true}));
    Ok(())
}

async fn streams_stay_within_their_bounds(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], SLOW_OK).await?;
    let p = &w.patternd;
    let batch: Vec<Value> = (0..50).map(|i| json!({ "i": i })).collect();
    for _ in 0..20 {
        append(p, "short", &batch).await?;
    }
    let mut conn = w.redis.conn_for_key(stream_key("short")).await?;
    let len: u64 = conn.xlen(stream_key("short")).await?;
    // MAXLEN ~ trims whole radix nodes (100 entries each by default): at least max_len kept,
    // less than max_len + 100.
    assert!((50..150).contains(&len), "length {len} after 1000 appends");
    let ttl: i64 = conn.ttl(stream_key("short")).await?;
    assert_eq!(ttl, -1, "bounded by length, not by a TTL");

    // Retention: entries older than 1s go at a later append (MINID from Redis TIME).
    let old = append(p, "recent", &[json!("old")]).await?;
    eventually(
        Duration::from_secs(10),
        "the old entry to be trimmed",
        || async {
            append(p, "recent", &[json!("new")]).await?;
            let r = p.get("/v1/streams/shop/recent?count=1").await?;
            Ok((r.json["entries"][0]["id"] != json!(old[0])).then_some(()))
        },
    )
    .await?;
    Ok(())
}

async fn range_reads_page_through_the_stream(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], SLOW_OK).await?;
    let p = &w.patternd;
    let entries: Vec<Value> = (0..25).map(|i| json!({ "i": i })).collect();
    let ids = append(p, "orders", &entries).await?;
    let mut got = Vec::new();
    let mut from = "-".to_string();
    loop {
        let r = p
            .client()
            .get(p.url("/v1/streams/shop/orders"))
            .query(&[("from", from.as_str()), ("count", "10")]);
        let r = p.send(r).await?;
        assert_eq!(r.status, 200, "{r:?}");
        let page = ids_of(&r);
        if page.is_empty() {
            assert_eq!(r.json["next"], Value::Null);
            break;
        }
        ensure!(page.len() <= 10, "a page over count");
        got.extend(page);
        from = r.json["next"].as_str().unwrap_or_default().to_string();
    }
    assert_eq!(got, ids);
    // Inclusive bounds.
    let r = p
        .send(
            p.client()
                .get(p.url("/v1/streams/shop/orders"))
                .query(&[("from", ids[3].as_str()), ("to", ids[5].as_str())]),
        )
        .await?;
    assert_eq!(ids_of(&r), ids[3..6]);
    assert_eq!(r.json["entries"][1]["data"], json!({"i": 4}));
    Ok(())
}

async fn the_tail_resumes_with_last_event_id_losing_and_repeating_nothing(
    b: Backend,
) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], SLOW_OK).await?;
    let p = &w.patternd;
    let other = Patternd::start(&w.redis.url(), w.policies.path(), SLOW_OK).await?;
    let url = p.url("/v1/streams/shop/orders/_tail");
    let within = Duration::from_secs(20);
    let entries: Vec<Value> = (0..30).map(|i| json!({ "i": i, "text": "a\nb" })).collect();
    let mut appended = append(p, "orders", &entries).await?;

    // Resume after the 10th: the 20 after it, in order, then live ones.
    let mut c = SseClient::connect(p.client(), &url, &[("Last-Event-ID", &appended[9])]).await?;
    let mut received: Vec<String> = appended[..10].to_vec();
    for _ in 0..20 {
        let e = c.event(within).await?;
        let data: Value = serde_json::from_str(&e.data)?;
        assert_eq!(
            data["text"], "a\nb",
            "data with a line break survives the framing"
        );
        received.push(e.last_event_id);
    }
    assert_eq!(c.retry, Some(2000));
    assert_eq!(received, appended);

    // Appends through another engine while connected, then while disconnected, then while
    // reconnecting: the client reconnects with its last id twice along the way.
    let writer = {
        let other_url = other.base_url();
        let client = reqwest::Client::new();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for round in 0..10 {
                let body: Vec<Value> = (0..7).map(|i| json!({ "round": round, "i": i })).collect();
                let r = client
                    .post(format!("{other_url}/v1/streams/shop/orders"))
                    .json(&json!({ "entries": body }))
                    .send()
                    .await?;
                let v: Value = r.json().await?;
                for id in v["ids"].as_array().into_iter().flatten() {
                    ids.push(id.as_str().unwrap_or_default().to_string());
                }
                tokio::task::yield_now().await;
            }
            anyhow::Ok(ids)
        })
    };
    let total = 30 + 70;
    let mut reconnects = 0;
    while received.len() < total {
        if received.len() == 45 || received.len() == 70 {
            drop(c);
            reconnects += 1;
            let last = received.last().cloned().unwrap_or_default();
            c = SseClient::connect(p.client(), &url, &[("Last-Event-ID", &last)]).await?;
        }
        let e = c.event(within).await.with_context(|| {
            format!(
                "after {} events ({reconnects} reconnects)\n{}",
                received.len(),
                p.log()
            )
        })?;
        ensure!(e.event == "message", "unexpected event {e:?}");
        received.push(e.last_event_id);
    }
    appended.extend(writer.await??);
    assert_eq!(reconnects, 2);
    assert_eq!(received, appended, "every entry exactly once, in order");

    // `?last_event_id=` does the same for clients that cannot set headers; heartbeats come
    // while nothing is appended.
    let q = format!("{url}?last_event_id={}", appended[98]);
    let mut c2 = SseClient::connect(p.client(), &q, &[]).await?;
    assert_eq!(c2.event(within).await?.last_event_id, appended[99]);
    let mut skipped = Vec::new();
    assert_eq!(c2.comment(within, &mut skipped).await?, "heartbeat");
    assert!(skipped.is_empty(), "{skipped:?}");
    Ok(())
}

async fn bad_input_is_a_problem(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], SLOW_OK).await?;
    let p = &w.patternd;
    let base = "/v1/streams/shop/orders";
    p.post_json(base, &json!({})).await?.assert_problem(400);
    p.post_json(base, &json!({"data": 1, "entries": [2]}))
        .await?
        .assert_problem(400);
    p.post_json(base, &json!({"entries": []}))
        .await?
        .assert_problem(400);
    let many: Vec<Value> = (0..51).map(|i| json!(i)).collect();
    p.post_json(base, &json!({ "entries": many }))
        .await?
        .assert_problem(400);
    p.post_json(base, &json!({"data": 1, "extra": 2}))
        .await?
        .assert_problem(400);
    p.post_raw(base, "not json").await?.assert_problem(400);
    p.get(&format!("{base}?count=21"))
        .await?
        .assert_problem(400);
    p.get(&format!("{base}?from=yesterday"))
        .await?
        .assert_problem(400);
    p.get(&format!("{base}/groups/nope?consumer=a"))
        .await?
        .assert_problem(404);
    p.get(&format!("{base}/groups/billing?consumer=a%20b"))
        .await?
        .assert_problem(400);
    p.get(&format!("{base}/groups/billing"))
        .await?
        .assert_problem(400);
    p.get(&format!("{base}/groups/billing?consumer=a&wait=21s"))
        .await?
        .assert_problem(400);
    p.get(&format!("{base}/groups/billing?consumer=a&wait=soon"))
        .await?
        .assert_problem(400);
    p.get(&format!("{base}/groups/billing?consumer=a&count=0"))
        .await?
        .assert_problem(400);
    p.post_json(
        &format!("{base}/groups/billing/ack"),
        &json!({"ids": ["x"]}),
    )
    .await?
    .assert_problem(400);
    p.post_json(&format!("{base}/groups/billing/ack"), &json!({"ids": []}))
        .await?
        .assert_problem(400);
    p.get_with(&format!("{base}/_tail"), &[("Last-Event-ID", "x-y")])
        .await?
        .assert_problem(400);
    p.get("/v1/streams/shop/nope").await?.assert_problem(404);
    Ok(())
}

async fn a_slow_tail_client_is_dropped_and_resumes_where_it_was(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], SLOW_OK).await?;
    let p = &w.patternd;
    let url = p.url("/v1/streams/shop/firehose/_tail");
    let within = Duration::from_secs(30);
    let (slow_client, fast_client) = (reqwest::Client::new(), reqwest::Client::new());
    // Both start from the beginning (`0-0`), so nothing appended after the request is missed.
    let mut slow = SseClient::connect(&slow_client, &url, &[("Last-Event-ID", "0-0")]).await?;
    let mut fast = SseClient::connect(&fast_client, &url, &[("Last-Event-ID", "0-0")]).await?;
    let big = json!({ "blob": "x".repeat(30 * 1024) });
    let mut appended: Vec<String> = Vec::new();
    // The slow client reads nothing: once the socket buffers and its 4 slots are full, it is
    // dropped (counted). The fast one reads every entry meanwhile.
    loop {
        ensure!(appended.len() < 5000, "the slow client was never dropped");
        appended.extend(append(p, "firehose", std::slice::from_ref(&big)).await?);
        let e = fast.event(within).await?;
        ensure!(
            e.last_event_id == *appended.last().unwrap_or(&String::new()),
            "fast: {e:?}"
        );
        if appended.len().is_multiple_of(20) {
            let m = p.get("/metrics").await?;
            let dropped = patternd_e2e::metric_value(
                &m.text,
                "patternd_sse_dropped_total",
                &[("pattern", "stream")],
            );
            if dropped.unwrap_or(0.0) >= 1.0 {
                break;
            }
        }
    }
    // The slow client's stream: a prefix of the entries, then `dropped`, then the end.
    let rest = slow.rest(within).await?;
    let (last, got) = rest
        .split_last()
        .ok_or_else(|| anyhow::anyhow!("no events"))?;
    assert_eq!(last.event, "dropped", "{last:?}");
    let got: Vec<String> = got.iter().map(|e| e.last_event_id.clone()).collect();
    assert_eq!(got, appended[..got.len()], "a gapless prefix");
    ensure!(got.len() < appended.len(), "the slow client got everything");
    // It resumes from its last id and gets the rest, once each.
    let from = got.last().cloned().unwrap_or_else(|| "0-0".into());
    let mut again = SseClient::connect(&slow_client, &url, &[("Last-Event-ID", &from)]).await?;
    for want in &appended[got.len()..] {
        assert_eq!(&again.event(within).await?.last_event_id, want);
    }
    Ok(())
}

on_every_backend!(
    a_slow_tail_client_is_dropped_and_resumes_where_it_was,
    groups_ack_claim_and_dead_letters,
    a_waiting_read_gets_an_entry_appended_through_another_engine,
    streams_stay_within_their_bounds,
    range_reads_page_through_the_stream,
    the_tail_resumes_with_last_event_id_losing_and_repeating_nothing,
    bad_input_is_a_problem,
);

/// One server killed and restarted empty on the same port: the tail reader reconnects by
/// itself, and a connected client gets the entries appended after the restart.
#[tokio::test(flavor = "multi_thread")]
async fn the_tail_survives_a_redis_restart() -> Result<()> {
    let mut w = World::start(&[("shop.yaml", POLICY)], &[]).await?;
    let within = Duration::from_secs(30);
    let first = append(&w.patternd, "orders", &[json!("before")]).await?;
    let url = w.patternd.url("/v1/streams/shop/orders/_tail");
    let mut c = SseClient::connect(w.patternd.client(), &url, &[("Last-Event-ID", "0-0")]).await?;
    assert_eq!(c.event(within).await?.last_event_id, first[0]);

    w.redis.restart_same_port()?;
    // Appends are refused while Redis is away (503, or the breaker); then one goes through.
    let p = &w.patternd;
    let after = eventually(within, "an append after the restart", || async {
        let r = p
            .post_json("/v1/streams/shop/orders", &json!({ "data": "after" }))
            .await?;
        Ok((r.status == 201).then(|| r.json["ids"][0].as_str().unwrap_or_default().to_string()))
    })
    .await?;
    let e = c.event(within).await?;
    assert_eq!(
        (e.last_event_id.as_str(), e.data.as_str()),
        (after.as_str(), "\"after\"")
    );
    Ok(())
}
