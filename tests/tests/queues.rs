//! Job queues end to end over HTTP against a real Redis, on a standalone server and on a
//! three-primary cluster: many workers through several engines (every job acked exactly
//! once), a worker that never acks (redelivery, dead letters, replay), delays, priorities,
//! dedup, nack with backoff, a full queue, stale receipts, bad input.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use patternd_e2e::origin::Origin;
use patternd_e2e::{Backend, Patternd, Reply, World, eventually, metric_value, on_every_backend};
use serde_json::{Value, json};
use tokio::sync::Mutex;

const POLICY: &str = "app: q
rules:
  work: { queue: { visibility: 30s, max_pop: 50, max_wait: 5s } }
  flaky: { queue: { visibility: 1s, max_attempts: 2 } }
  later: { queue: {} }
  tiny: { queue: { max_len: 3 } }
  retry: { queue: { retry_backoff: 300ms, max_attempts: 3 } }
  mutex: { lock: { ttl: 30s } }
";

async fn push(p: &Patternd, rule: &str, body: Value) -> Result<Reply> {
    p.post_json(&format!("/v1/queues/q/{rule}"), &body).await
}

async fn pop(p: &Patternd, rule: &str, query: &str) -> Result<Reply> {
    p.post_raw(&format!("/v1/queues/q/{rule}/_pop{query}"), "")
        .await
}

async fn job_op(p: &Patternd, rule: &str, id: &str, op: &str, body: Value) -> Result<Reply> {
    p.post_json(&format!("/v1/queues/q/{rule}/jobs/{id}/_{op}"), &body)
        .await
}

fn jobs(r: &Reply) -> Vec<Value> {
    assert_eq!(r.status, 200, "{r:?}");
    r.json["jobs"].as_array().cloned().unwrap_or_default()
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or_default()
}

async fn stats(p: &Patternd, rule: &str) -> Result<(u64, u64, u64, u64)> {
    let r = p.get(&format!("/v1/queues/q/{rule}")).await?;
    ensure!(r.status == 200, "{r:?}");
    let n = |f: &str| r.json[f].as_u64().unwrap_or(u64::MAX);
    Ok((n("ready"), n("delayed"), n("in_flight"), n("dead")))
}

/// Pops until a job comes (waiting up to 5 s per pop, 20 s in all).
async fn pop_one(p: &Patternd, rule: &str) -> Result<Value> {
    eventually(Duration::from_secs(20), "a job to pop", || async {
        Ok(jobs(&pop(p, rule, "?wait=5s").await?).into_iter().next())
    })
    .await
}

const JOBS: usize = 5000;
const WORKERS: usize = 20;

/// 20 workers pop and ack 5,000 jobs through 3 engines on one Redis while they are pushed:
/// every job is delivered once and acked once (no job is handed to two workers, none is
/// lost), and the queue ends empty.
async fn many_workers_through_three_engines_ack_every_job_once(b: Backend) -> Result<()> {
    let w = World::on(b, &[("q.yaml", POLICY)], &[]).await?;
    let url = w.redis.url();
    let engines = Arc::new(vec![
        Patternd::start(&url, w.policies.path(), &[]).await?,
        Patternd::start(&url, w.policies.path(), &[]).await?,
    ]);
    let engine = |i: usize| -> &Patternd {
        match i % 3 {
            0 => &w.patternd,
            k => &engines[k - 1],
        }
    };
    let clients: Vec<(reqwest::Client, String)> = (0..3)
        .map(|i| (engine(i).client().clone(), engine(i).base_url()))
        .collect();

    let acked = Arc::new(AtomicUsize::new(0));
    // job id → (payload n, deliveries), shared by the workers.
    let seen: Arc<Mutex<HashMap<String, (u64, u64)>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut workers = Vec::new();
    for k in 0..WORKERS {
        let (client, base) = clients[k % 3].clone();
        let (acked, seen) = (acked.clone(), seen.clone());
        workers.push(tokio::spawn(async move {
            let pop_url = format!("{base}/v1/queues/q/work/_pop?count=10&wait=1s");
            while acked.load(Ordering::SeqCst) < JOBS {
                let r = patternd_e2e::send(client.post(&pop_url)).await?;
                for job in jobs(&r) {
                    let id = text(&job, "id").to_string();
                    {
                        let mut s = seen.lock().await;
                        let e = s
                            .entry(id.clone())
                            .or_insert((job["payload"]["n"].as_u64().unwrap_or(u64::MAX), 0));
                        e.1 += 1;
                    }
                    let ack = patternd_e2e::send(
                        client
                            .post(format!("{base}/v1/queues/q/work/jobs/{id}/_ack"))
                            .json(&json!({ "receipt": text(&job, "receipt") })),
                    )
                    .await?;
                    ensure!(ack.status == 204, "ack of {id}: {ack:?}");
                    acked.fetch_add(1, Ordering::SeqCst);
                }
            }
            anyhow::Ok(())
        }));
    }
    // Pushers: 30 tasks, through the three engines in turn.
    let mut pushers = Vec::new();
    for t in 0..30 {
        let (client, base) = clients[t % 3].clone();
        pushers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in (t..JOBS).step_by(30) {
                let r = patternd_e2e::send(
                    client
                        .post(format!("{base}/v1/queues/q/work"))
                        .json(&json!({ "payload": { "n": n } })),
                )
                .await?;
                ensure!(r.status == 201, "push {n}: {r:?}");
                ids.push(text(&r.json, "id").to_string());
            }
            anyhow::Ok(ids)
        }));
    }
    let mut pushed = Vec::new();
    for t in pushers {
        pushed.extend(t.await??);
    }
    for t in workers {
        t.await??;
    }
    let seen = seen.lock().await;
    assert_eq!(pushed.len(), JOBS);
    assert_eq!(acked.load(Ordering::SeqCst), JOBS, "every job acked once");
    assert_eq!(seen.len(), JOBS, "every pushed job was delivered");
    let twice: Vec<_> = seen.iter().filter(|(_, (_, d))| *d != 1).collect();
    assert!(twice.is_empty(), "jobs delivered more than once: {twice:?}");
    let mut ns: Vec<u64> = seen.values().map(|(n, _)| *n).collect();
    ns.sort_unstable();
    assert_eq!(
        ns,
        (0..JOBS as u64).collect::<Vec<_>>(),
        "every payload once"
    );
    for id in &pushed {
        assert!(seen.contains_key(id), "pushed {id} was never delivered");
    }
    assert_eq!(stats(&w.patternd, "work").await?, (0, 0, 0, 0));
    // The pushes and acks are counted on the engines that served them.
    let mut pushes = 0.0;
    for i in 0..3 {
        let m = engine(i).get("/metrics").await?;
        pushes += metric_value(
            &m.text,
            "patternd_queue_events_total",
            &[("rule", "work"), ("event", "pushed")],
        )
        .unwrap_or(0.0);
    }
    assert_eq!(pushes, JOBS as f64);
    Ok(())
}

/// A worker that pops and never acks: the job comes back after its visibility with its
/// attempt count, and another worker does it (the first worker's receipt is refused). A job
/// nobody acks moves to the dead letters after max_attempts, by itself (the reaper; no pop
/// runs meanwhile), and a replay brings it back.
async fn unacked_jobs_return_then_dead_letter_and_replay(b: Backend) -> Result<()> {
    let w = World::on(b, &[("q.yaml", POLICY)], &[]).await?;
    let second = Patternd::start(&w.redis.url(), w.policies.path(), &[]).await?;
    let p = &w.patternd;

    let a = push(p, "flaky", json!({ "payload": { "job": "a" } })).await?;
    assert_eq!(a.status, 201, "{a:?}");
    let first = jobs(&pop(p, "flaky", "").await?);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["attempts"], 1);
    // Invisible while its lease runs.
    assert!(jobs(&pop(&second, "flaky", "").await?).is_empty());
    // The crashed worker never acks; another worker gets it after the visibility.
    let again = pop_one(&second, "flaky").await?;
    assert_eq!(again["id"], first[0]["id"]);
    assert_eq!(again["attempts"], 2);
    assert_ne!(again["receipt"], first[0]["receipt"]);
    let id = text(&again, "id");
    job_op(
        p,
        "flaky",
        id,
        "ack",
        json!({ "receipt": first[0]["receipt"] }),
    )
    .await?
    .assert_problem(409);
    let done = job_op(
        &second,
        "flaky",
        id,
        "ack",
        json!({ "receipt": again["receipt"] }),
    )
    .await?;
    assert_eq!(done.status, 204, "{done:?}");

    // Nobody acks this one: two deliveries, then the dead letters.
    let dead_id = text(
        &push(p, "flaky", json!({ "payload": { "job": "b" } }))
            .await?
            .json,
        "id",
    )
    .to_string();
    assert_eq!(text(&pop_one(p, "flaky").await?, "id"), dead_id);
    assert_eq!(text(&pop_one(p, "flaky").await?, "id"), dead_id);
    // No request moves it: the reapers do, and their gauges say so (reading /metrics moves
    // nothing, unlike the stats route).
    eventually(
        Duration::from_secs(10),
        "the reaper to move the job to the dead letters",
        || async {
            let m = p.get("/metrics").await?;
            let gauge = |state: &str| {
                metric_value(
                    &m.text,
                    "patternd_queue_jobs",
                    &[("rule", "flaky"), ("state", state)],
                )
            };
            Ok((gauge("dead") == Some(1.0) && gauge("in_flight") == Some(0.0)).then_some(()))
        },
    )
    .await?;
    assert_eq!(stats(p, "flaky").await?, (0, 0, 0, 1));
    let page = p.get("/admin/queues/q/flaky/dead-letters").await?;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(page.json["total"], 1);
    let letter = &page.json["dead_letters"][0];
    assert_eq!(letter["id"], dead_id.as_str());
    assert_eq!(letter["attempts"], 2);
    assert_eq!(letter["reason"], "lapsed");
    assert_eq!(letter["payload"], json!({ "job": "b" }));
    let m = p.get("/metrics").await?;
    let dead_lettered = metric_value(
        &m.text,
        "patternd_queue_events_total",
        &[("rule", "flaky"), ("event", "dead_lettered")],
    );
    let dead_lettered_2 = metric_value(
        &second.get("/metrics").await?.text,
        "patternd_queue_events_total",
        &[("rule", "flaky"), ("event", "dead_lettered")],
    );
    assert_eq!(
        dead_lettered.unwrap_or(0.0) + dead_lettered_2.unwrap_or(0.0),
        1.0
    );

    // Replay: back to ready with its attempts reset, done by a worker.
    let r = p
        .post_json(
            "/admin/queues/q/flaky/dead-letters/replay",
            &json!({ "ids": [dead_id] }),
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json,
        json!({ "replayed": 1, "not_found": 0, "queue_full": false })
    );
    let back = pop_one(&second, "flaky").await?;
    assert_eq!(
        (text(&back, "id"), back["attempts"].as_u64()),
        (dead_id.as_str(), Some(1))
    );
    let done = job_op(
        &second,
        "flaky",
        &dead_id,
        "ack",
        json!({ "receipt": back["receipt"] }),
    )
    .await?;
    assert_eq!(done.status, 204, "{done:?}");
    assert_eq!(stats(p, "flaky").await?, (0, 0, 0, 0));
    let r = p
        .post_json(
            "/admin/queues/q/flaky/dead-letters/replay",
            &json!({ "ids": [dead_id] }),
        )
        .await?;
    assert_eq!(r.json["not_found"], 1);
    Ok(())
}

/// Delayed jobs wait, then become ready in the order of their time; a higher priority pops
/// before an older job.
async fn delays_and_priorities_order_the_jobs(b: Backend) -> Result<()> {
    let w = World::on(b, &[("q.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let mut ids = BTreeMap::new();
    for (name, delay) in [("c", "1500ms"), ("a", "500ms"), ("b", "1s")] {
        let r = push(p, "later", json!({ "payload": name, "delay": delay })).await?;
        assert_eq!(r.status, 201, "{r:?}");
        ids.insert(text(&r.json, "id").to_string(), name);
    }
    push(p, "later", json!({ "payload": "now" })).await?;
    let first = jobs(&pop(p, "later", "?count=10").await?);
    assert_eq!(first.len(), 1, "only the undelayed job is ready: {first:?}");
    assert_eq!(first[0]["payload"], "now");
    let (_, delayed, in_flight, _) = stats(p, "later").await?;
    assert_eq!((delayed, in_flight), (3, 1));
    let mut order = Vec::new();
    while order.len() < 3 {
        for j in jobs(&pop(p, "later", "?count=10&wait=5s").await?) {
            order.push(j["payload"].as_str().unwrap_or_default().to_string());
            assert!(ids.contains_key(text(&j, "id")));
        }
    }
    assert_eq!(order, ["a", "b", "c"]);

    // Priorities: 9 first, then 5, then the default 0 (oldest first within one).
    for (payload, priority) in [("low-1", 0), ("low-2", 0), ("mid", 5), ("high", 9)] {
        push(
            p,
            "later",
            json!({ "payload": payload, "priority": priority }),
        )
        .await?;
    }
    let got: Vec<Value> = jobs(&pop(p, "later", "?count=4").await?)
        .into_iter()
        .map(|j| j["payload"].clone())
        .collect();
    assert_eq!(
        got,
        [json!("high"), json!("mid"), json!("low-1"), json!("low-2")]
    );
    Ok(())
}

/// A second push with the same dedup id within the window adds no job and answers the first
/// job's id; every key of the queue is in one cluster slot.
async fn dedup_answers_the_first_job(b: Backend) -> Result<()> {
    let w = World::on(b, &[("q.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let one = push(p, "work", json!({ "payload": 1, "dedup_id": "order-1" })).await?;
    assert_eq!(
        (one.status, &one.json["deduplicated"]),
        (201, &json!(false))
    );
    let again = push(p, "work", json!({ "payload": 2, "dedup_id": "order-1" })).await?;
    assert_eq!(
        (again.status, &again.json["deduplicated"]),
        (200, &json!(true))
    );
    assert_eq!(again.json["id"], one.json["id"]);
    let other = push(p, "work", json!({ "payload": 3, "dedup_id": "order-2" })).await?;
    assert_eq!(other.status, 201);
    assert_ne!(other.json["id"], one.json["id"]);
    assert_eq!(stats(p, "work").await?, (2, 0, 0, 0));
    let got = jobs(&pop(p, "work", "?count=5").await?);
    let payloads: Vec<&Value> = got.iter().map(|j| &j["payload"]).collect();
    assert_eq!(payloads, [&json!(1), &json!(3)]);

    let keys: Vec<String> = w
        .redis
        .scan_names()
        .await?
        .into_iter()
        .filter(|k| k.starts_with("q:queue:work:"))
        .collect();
    assert!(keys.len() >= 5, "{keys:?}");
    for k in &keys {
        assert!(k.starts_with("q:queue:work:{%q.work}:"), "{k}");
        assert_eq!(w.redis.node_of_key(k)?, w.redis.node_of_key(&keys[0])?);
    }
    Ok(())
}

/// A nack without a delay retries after the rule's backoff, doubling per attempt, and the
/// last allowed attempt's nack dead-letters the job; a nack with `delay: 0s` makes it ready
/// at once.
async fn nack_retries_with_backoff_then_dead_letters(b: Backend) -> Result<()> {
    let w = World::on(b, &[("q.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    push(p, "retry", json!({ "payload": "x" })).await?;
    let mut backoffs = Vec::new();
    for attempt in 1..=3u64 {
        let job = pop_one(p, "retry").await?;
        assert_eq!(job["attempts"], attempt);
        let r = job_op(
            p,
            "retry",
            text(&job, "id"),
            "nack",
            json!({ "receipt": job["receipt"] }),
        )
        .await?;
        assert_eq!(r.status, 200, "{r:?}");
        if attempt < 3 {
            assert_eq!(r.json["dead_lettered"], false);
            backoffs.push(r.json["retry_in_ms"].as_u64().unwrap_or(0));
            // Not ready before its backoff.
            assert!(jobs(&pop(p, "retry", "").await?).is_empty());
        } else {
            assert_eq!(r.json, json!({ "dead_lettered": true }));
        }
    }
    assert_eq!(backoffs, [300, 600]);
    assert_eq!(stats(p, "retry").await?, (0, 0, 0, 1));
    let page = p.get("/admin/queues/q/retry/dead-letters").await?;
    assert_eq!(page.json["dead_letters"][0]["reason"], "nacked");

    push(p, "retry", json!({ "payload": "y" })).await?;
    let job = pop_one(p, "retry").await?;
    let r = job_op(
        p,
        "retry",
        text(&job, "id"),
        "nack",
        json!({ "receipt": job["receipt"], "delay": "0s" }),
    )
    .await?;
    assert_eq!(r.json, json!({ "dead_lettered": false, "retry_in_ms": 0 }));
    let again = jobs(&pop(p, "retry", "").await?);
    assert_eq!(again.len(), 1, "ready at once");
    assert_eq!(again[0]["attempts"], 2);
    Ok(())
}

/// A queue at max_len refuses a push with 503 `queue-full` (jobs in flight count), and takes
/// pushes again once a job is acked.
async fn a_full_queue_refuses_pushes(b: Backend) -> Result<()> {
    let w = World::on(b, &[("q.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    for n in 0..3 {
        assert_eq!(push(p, "tiny", json!({ "payload": n })).await?.status, 201);
    }
    let job = jobs(&pop(p, "tiny", "").await?).remove(0);
    let full = push(p, "tiny", json!({ "payload": 3 })).await?;
    full.assert_problem(503);
    assert_eq!(full.json["type"], "urn:patternd:problem:queue-full");
    assert_eq!(full.header("retry-after"), Some("1"));
    assert!(full.detail().contains("max_len 3"), "{full:?}");
    assert_eq!(stats(p, "tiny").await?, (2, 0, 1, 0));
    let r = job_op(
        p,
        "tiny",
        text(&job, "id"),
        "ack",
        json!({ "receipt": job["receipt"] }),
    )
    .await?;
    assert_eq!(r.status, 204);
    assert_eq!(push(p, "tiny", json!({ "payload": 3 })).await?.status, 201);
    let m = p.get("/metrics").await?;
    assert_eq!(
        metric_value(
            &m.text,
            "patternd_queue_events_total",
            &[("rule", "tiny"), ("event", "full")]
        ),
        Some(1.0)
    );
    Ok(())
}

/// Ack, nack and extend need the receipt of the job's current lease: a repeated ack, a wrong
/// receipt or another job's id is refused with 409; extend moves the visibility.
async fn stale_receipts_are_refused(b: Backend) -> Result<()> {
    let w = World::on(b, &[("q.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    push(p, "work", json!({ "payload": 1 })).await?;
    push(p, "work", json!({ "payload": 2 })).await?;
    let got = jobs(&pop(p, "work", "?count=2").await?);
    let (a, b2) = (&got[0], &got[1]);
    let (id, receipt) = (text(a, "id"), &a["receipt"]);
    // Another job's receipt holds no lease on this one.
    job_op(p, "work", id, "ack", json!({ "receipt": b2["receipt"] }))
        .await?
        .assert_problem(409);
    let ext = job_op(
        p,
        "work",
        id,
        "extend",
        json!({ "receipt": receipt, "visibility": "2m" }),
    )
    .await?;
    assert_eq!(
        (ext.status, &ext.json["visibility_ms"]),
        (200, &json!(120_000))
    );
    let ext = job_op(
        p,
        "work",
        id,
        "extend",
        json!({ "receipt": receipt, "visibility": "13h" }),
    )
    .await?;
    ext.assert_problem(400);
    assert_eq!(
        job_op(p, "work", id, "ack", json!({ "receipt": receipt }))
            .await?
            .status,
        204
    );
    for op in ["ack", "nack", "extend"] {
        let r = job_op(p, "work", id, op, json!({ "receipt": receipt })).await?;
        r.assert_problem(409);
        assert!(r.detail().contains("holds no lease"), "{r:?}");
    }
    Ok(())
}

/// Bad input is a 4xx problem that says what is wrong, and reaches no script.
async fn bad_input_is_a_clear_4xx(b: Backend) -> Result<()> {
    let w = World::on(b, &[("q.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    for (query, says) in [
        ("?count=0", "`count` must be a number from 1 to 50"),
        ("?count=51", "`count` must be a number from 1 to 50"),
        ("?count=x", "`count`"),
        ("?wait=10s", "`wait` 10s is above the rule's maximum of 5s"),
        ("?wait=5", "has no unit"),
        ("?wait=-1s", "`wait`"),
        ("?other=1", "invalid query string"),
    ] {
        let r = pop(p, "work", query).await?;
        r.assert_problem(400);
        assert!(r.detail().contains(says), "{query}: {r:?}");
    }
    for (body, says) in [
        ("not json", "must be a JSON object"),
        ("[1]", "must be a JSON object"),
        ("{}", "missing field `payload`"),
        (r#"{"payload": 1, "extra": 2}"#, "unknown field `extra`"),
        (
            r#"{"payload": 1, "priority": 10}"#,
            "`priority` must be from 0 to 9",
        ),
        (r#"{"payload": 1, "delay": "8d"}"#, "`delay` 8d is above"),
        (r#"{"payload": 1, "delay": "soon"}"#, "invalid duration"),
    ] {
        let r = p.post_raw("/v1/queues/q/work", body).await?;
        r.assert_problem(400);
        assert!(r.detail().contains(says), "{body}: {r:?}");
    }
    let r = job_op(
        p,
        "work",
        "nope",
        "ack",
        json!({ "receipt": "AAAAAAAAAAAAAAAAAAAAAA" }),
    )
    .await?;
    r.assert_problem(400);
    assert!(r.detail().contains("malformed job id"), "{r:?}");
    let r = job_op(p, "work", "AAAAAAAAAAAAAAAAAAAAAA", "ack", json!({})).await?;
    r.assert_problem(400);
    let r = push(p, "nope", json!({ "payload": 1 })).await?;
    r.assert_problem(404);
    assert_eq!(r.json["type"], "urn:patternd:problem:unknown-rule");
    // A rule of another pattern is no queue.
    pop(p, "mutex", "").await?.assert_problem(404);
    p.get("/admin/queues/q/work/dead-letters?count=0")
        .await?
        .assert_problem(400);
    p.get("/admin/queues/q/work/dead-letters?after=gone")
        .await?
        .assert_problem(400);
    Ok(())
}

/// Push delivery: patternd POSTs every job to the rule's endpoint and acks it on a 2xx; a
/// refused delivery is nacked and retried with the rule's backoff, and one the endpoint never
/// takes ends in the dead letters.
async fn push_rules_deliver_every_job_to_the_endpoint(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    let base = format!("http://127.0.0.1:{}", origin.port());
    let policy = format!(
        "app: q
rules:
  hook:
    queue: {{ visibility: 5s, max_attempts: 10, retry_backoff: 100ms, push: {{ url: \"{base}/items/hook\", timeout: 2s, concurrency: 4 }} }}
  lost:
    queue: {{ visibility: 5s, max_attempts: 2, retry_backoff: 50ms, push: {{ url: \"{base}/nowhere\", timeout: 2s }} }}
"
    );
    let w = World::on(b, &[("q.yaml", &policy)], &[]).await?;
    let p = &w.patternd;
    // The endpoint refuses at first: deliveries fail and are retried.
    origin.fail_writes_with(Some(503));
    for n in 0..10 {
        let r = push(p, "hook", json!({ "payload": { "n": n } })).await?;
        assert_eq!(r.status, 201, "{r:?}");
    }
    eventually(Duration::from_secs(10), "refused deliveries", || async {
        Ok((origin.hits("POST", "hook") >= 10).then_some(()))
    })
    .await?;
    origin.fail_writes_with(None);
    eventually(
        Duration::from_secs(20),
        "every job delivered and acked",
        || async {
            Ok(
                (origin.writes().len() >= 10 && stats(p, "hook").await? == (0, 0, 0, 0))
                    .then_some(()),
            )
        },
    )
    .await?;
    let writes = origin.writes();
    assert_eq!(
        writes.len(),
        10,
        "each job delivered once once accepted: {writes:?}"
    );
    let mut ns = Vec::new();
    for wr in &writes {
        assert_eq!((wr.method.as_str(), wr.id.as_str()), ("POST", "hook"));
        assert_eq!(wr.content_type.as_deref(), Some("application/json"));
        let body: Value = serde_json::from_slice(&wr.body)?;
        assert!(
            body["id"].is_string() && body["attempts"].as_u64() >= Some(1),
            "{body}"
        );
        ns.push(body["payload"]["n"].as_u64().unwrap_or(u64::MAX));
    }
    ns.sort_unstable();
    assert_eq!(ns, (0..10).collect::<Vec<u64>>());
    let m = p.get("/metrics").await?;
    let event = |rule: &str, e: &str| {
        metric_value(
            &m.text,
            "patternd_queue_events_total",
            &[("rule", rule), ("event", e)],
        )
    };
    assert_eq!(event("hook", "delivered"), Some(10.0));
    assert!(event("hook", "delivery_failed").unwrap_or(0.0) >= 1.0);

    // An endpoint that never takes a job: two attempts, then the dead letters.
    push(p, "lost", json!({ "payload": "x" })).await?;
    eventually(
        Duration::from_secs(10),
        "the job in the dead letters",
        || async { Ok((stats(p, "lost").await? == (0, 0, 0, 1)).then_some(())) },
    )
    .await?;
    let page = p.get("/admin/queues/q/lost/dead-letters").await?;
    let letter = &page.json["dead_letters"][0];
    assert_eq!(
        (&letter["reason"], &letter["attempts"]),
        (&json!("nacked"), &json!(2))
    );
    Ok(())
}

/// Every key a queue writes is in the rule's namespace and slot; the dedup keys expire, and
/// the only keys without a TTL are the queue's declared ones (they hold acknowledged jobs).
async fn only_the_declared_queue_keys_have_no_ttl(b: Backend) -> Result<()> {
    let w = World::on(b, &[("q.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    for (n, delay) in [(1, "0s"), (2, "1h")] {
        let r = push(
            p,
            "retry",
            json!({ "payload": n, "delay": delay, "dedup_id": format!("d{n}") }),
        )
        .await?;
        assert_eq!(r.status, 201, "{r:?}");
    }
    let job = jobs(&pop(p, "retry", "").await?).remove(0);
    // Dead-lettered at its third delivery (max_attempts 3), by nacks with no delay.
    let mut job = job;
    for _ in 0..3 {
        job_op(
            p,
            "retry",
            text(&job, "id"),
            "nack",
            json!({ "receipt": job["receipt"], "delay": "0s" }),
        )
        .await?;
        if let Some(next) = jobs(&pop(p, "retry", "").await?).into_iter().next() {
            job = next;
        }
    }
    let (_, delayed, in_flight, dead) = stats(p, "retry").await?;
    assert_eq!((delayed, dead), (1, 1), "{in_flight}");

    let mut nodes = w.redis.nodes().await?;
    let declared = [
        "ready", "delayed", "inflight", "dead", "jobs", "meta", "seq",
    ];
    let mut untimed = Vec::new();
    for k in w.redis.scan_all().await? {
        let name = String::from_utf8_lossy(&k).into_owned();
        let sub = name
            .strip_prefix("q:queue:retry:{%q.retry}:")
            .unwrap_or_else(|| panic!("{name} outside the rule's namespace and tag"));
        let conn = nodes.conn(&k)?;
        let pttl: i64 = redis::cmd("PTTL").arg(&k).query_async(conn).await?;
        if pttl > 0 {
            assert!(
                sub.starts_with("dedup"),
                "{name} has a TTL it was not declared with"
            );
        } else {
            assert!(declared.contains(&sub), "{name} has no TTL: {pttl}");
            untimed.push(sub.to_string());
        }
    }
    assert!(untimed.len() >= 5, "{untimed:?}");
    Ok(())
}

on_every_backend!(
    only_the_declared_queue_keys_have_no_ttl,
    push_rules_deliver_every_job_to_the_endpoint,
    many_workers_through_three_engines_ack_every_job_once,
    unacked_jobs_return_then_dead_letter_and_replay,
    delays_and_priorities_order_the_jobs,
    dedup_answers_the_first_job,
    nack_retries_with_backoff_then_dead_letters,
    a_full_queue_refuses_pushes,
    stale_receipts_are_refused,
    bad_input_is_a_clear_4xx,
);
