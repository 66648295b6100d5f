//! Locks and semaphores end to end over HTTP against a real Redis: mutual exclusion under
//! contention (no lost update), fencing tokens, expiry, owner checks, semaphores, bad input.
//! Every test but the outage (one server stopped and restarted) runs on a standalone Redis and
//! on a three-primary cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use patternd_e2e::{
    Backend, Patternd, Reply, World, burst, eventually, metric_value, on_every_backend,
};
use redis::AsyncCommands as _;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const POLICY: &str = "app: shop
rules:
  order: { lock: { ttl: 30s, max_wait: 60s } }
  slots: { lock: { ttl: 30s, permits: 3 } }
  brief: { lock: { ttl: 500ms, max_ttl: 1h } }
  brief-slots: { lock: { ttl: 500ms, permits: 2, max_ttl: 1h } }
  web: { session: { idle_ttl: 30m, absolute_ttl: 24h } }
";

async fn acquire(p: &Patternd, rule: &str, resource: &str, body: Value) -> Result<Reply> {
    p.post_json(&format!("/v1/locks/shop/{rule}/{resource}"), &body)
        .await
}

async fn release(p: &Patternd, rule: &str, resource: &str, token: &str) -> Result<Reply> {
    let req = p
        .client()
        .delete(p.url(&format!("/v1/locks/shop/{rule}/{resource}")))
        .json(&json!({ "token": token }));
    p.send(req).await
}

async fn extend(p: &Patternd, rule: &str, resource: &str, body: Value) -> Result<Reply> {
    p.post_json(&format!("/v1/locks/shop/{rule}/{resource}/extend"), &body)
        .await
}

fn token(r: &Reply) -> String {
    r.json["token"].as_str().unwrap_or_default().to_string()
}

/// An acquire of the held `order` lock on `resource` through `p`, waiting up to 8 s in the
/// background; returned once it has found the lock held at least once (counted on `p`'s
/// metric, not timed).
async fn waiting_acquire(p: &Arc<Patternd>, resource: &str) -> Result<JoinHandle<Result<Reply>>> {
    let waiter = {
        let (p, resource) = (p.clone(), resource.to_string());
        tokio::spawn(
            async move { acquire(&p, "order", &resource, json!({ "wait_ms": 8000 })).await },
        )
    };
    eventually(
        Duration::from_secs(8),
        "the waiter to find the lock held",
        || async {
            let m = p.get("/metrics").await?;
            let retries = metric_value(
                &m.text,
                "patternd_lock_requests_total",
                &[("rule", "order"), ("outcome", "retry")],
            );
            Ok((retries.unwrap_or(0.0) >= 1.0).then_some(()))
        },
    )
    .await?;
    Ok(waiter)
}

/// A token of the right shape that nobody was ever given.
fn forged(fence: u64) -> String {
    format!("{fence}.AAAAAAAAAAAAAAAAAAAAAA")
}

async fn fifty_workers_never_lose_an_update_and_fences_increase(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = Arc::new(w.patternd);
    // The counter lives on whichever node owns it; each worker gets its own handle.
    let counter = w.redis.conn_for_key("shared-counter").await?;
    // Shared state the lock protects: a counter in Redis updated by read, then write (two
    // round trips: without mutual exclusion updates get lost), and the fences in the order
    // the critical sections ran.
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let fences = Arc::new(tokio::sync::Mutex::new(Vec::<u64>::new()));
    burst(50, |_| {
        let (p, mut conn) = (p.clone(), counter.clone());
        let (inside, overlaps, fences) = (inside.clone(), overlaps.clone(), fences.clone());
        async move {
            for _ in 0..2 {
                // Waits are bounded per request: on a busy machine a worker may time out
                // and simply ask again (counted, not timed).
                let mut attempts = 0;
                let r = loop {
                    attempts += 1;
                    let r = acquire(&p, "order", "counter", json!({ "wait_ms": 5000 })).await?;
                    if r.status == 200 || attempts >= 50 {
                        break r;
                    }
                    r.assert_problem(409);
                };
                ensure!(r.status == 200, "acquire: {r:?}");
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                fences.lock().await.push(r.u64_field("fence"));
                let n: Option<u64> = conn.get("shared-counter").await?;
                tokio::task::yield_now().await;
                let () = conn.set("shared-counter", n.unwrap_or(0) + 1).await?;
                inside.fetch_sub(1, Ordering::SeqCst);
                let rel = release(&p, "order", "counter", &token(&r)).await?;
                ensure!(
                    rel.status == 200 && rel.json == json!({"released": true}),
                    "release: {rel:?}"
                );
            }
            Ok(())
        }
    })
    .await?;
    let n: u64 = counter.clone().get("shared-counter").await?;
    assert_eq!(n, 100, "lost updates");
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "critical sections overlapped"
    );
    let fences = fences.lock().await.clone();
    assert_eq!(fences.len(), 100);
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "fences must strictly increase in acquisition order: {fences:?}"
    );
    Ok(())
}

on_every_backend!(fifty_workers_never_lose_an_update_and_fences_increase);

async fn expiry_lets_the_next_holder_in_and_the_stale_holder_is_refused(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let a = acquire(p, "brief", "invoice-7", json!({ "ttl_ms": 300 })).await?;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.u64_field("expires_in_ms") <= 300, "{a:?}");
    let b = acquire(p, "brief", "invoice-7", json!({})).await?;
    b.assert_problem(409);
    assert!(b.header("retry-after").is_some(), "{b:?}");
    let hint = b.u64_field("retry_after_ms");
    assert!(hint > 0 && hint <= 300, "{b:?}");

    // A crashed holder never releases: its lease lapses and the next holder gets in.
    let b = eventually(Duration::from_secs(20), "the lease to lapse", || async {
        let r = acquire(p, "brief", "invoice-7", json!({ "ttl_ms": 60000 })).await?;
        Ok((r.status == 200).then_some(r))
    })
    .await?;
    assert!(
        b.u64_field("fence") > a.u64_field("fence"),
        "a later holder has a higher fence: {a:?} {b:?}"
    );
    // The stale holder can neither extend nor release the new holder's lock.
    extend(p, "brief", "invoice-7", json!({ "token": token(&a) }))
        .await?
        .assert_problem(409);
    release(p, "brief", "invoice-7", &token(&a))
        .await?
        .assert_problem(409);
    acquire(p, "brief", "invoice-7", json!({}))
        .await?
        .assert_problem(409);
    // The owner releases; the same release again is not an error.
    let r = release(p, "brief", "invoice-7", &token(&b)).await?;
    assert_eq!(
        (r.status, &r.json),
        (200, &json!({"released": true})),
        "{r:?}"
    );
    let r = release(p, "brief", "invoice-7", &token(&b)).await?;
    assert_eq!(
        (r.status, &r.json),
        (200, &json!({"released": false})),
        "{r:?}"
    );
    let c = acquire(p, "brief", "invoice-7", json!({})).await?;
    assert_eq!(c.status, 200, "{c:?}");
    assert!(c.u64_field("fence") > b.u64_field("fence"));
    Ok(())
}

on_every_backend!(expiry_lets_the_next_holder_in_and_the_stale_holder_is_refused);

async fn fences_keep_increasing_after_the_counter_key_is_gone(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let a = acquire(p, "order", "doc", json!({})).await?;
    assert_eq!(a.status, 200, "{a:?}");
    release(p, "order", "doc", &token(&a)).await?;
    // The counter expires after a day without acquires; simulate that.
    let keys = w.redis.scan_all().await?;
    let fence_keys: Vec<&Vec<u8>> = keys.iter().filter(|k| k.ends_with(b":fence")).collect();
    assert_eq!(fence_keys.len(), 1, "{keys:?}");
    let mut conn = w.redis.conn_for_key(fence_keys[0]).await?;
    let n: u64 = conn.del(fence_keys[0]).await?;
    assert_eq!(n, 1);
    let b = acquire(p, "order", "doc", json!({})).await?;
    assert_eq!(b.status, 200, "{b:?}");
    assert!(
        b.u64_field("fence") > a.u64_field("fence"),
        "{a:?} then {b:?}"
    );
    Ok(())
}

on_every_backend!(fences_keep_increasing_after_the_counter_key_is_gone);

async fn only_the_owner_extends_or_releases(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let a = acquire(p, "order", "cart-1", json!({ "ttl_ms": 60_000 })).await?;
    assert_eq!(a.status, 200, "{a:?}");
    let fence = a.u64_field("fence");
    for t in [forged(fence), forged(fence + 1)] {
        extend(p, "order", "cart-1", json!({ "token": t }))
            .await?
            .assert_problem(409);
        release(p, "order", "cart-1", &t).await?.assert_problem(409);
    }
    // Malformed tokens are bad requests, not ownership questions.
    for t in ["", "nope", "12.short", "x.AAAAAAAAAAAAAAAAAAAAAA"] {
        release(p, "order", "cart-1", t).await?.assert_problem(400);
    }
    // The lock is still held by its owner.
    acquire(p, "order", "cart-1", json!({}))
        .await?
        .assert_problem(409);
    let e = extend(
        p,
        "order",
        "cart-1",
        json!({ "token": token(&a), "ttl_ms": 200000 }),
    )
    .await?;
    assert_eq!(e.status, 200, "{e:?}");
    assert_eq!(e.u64_field("fence"), fence);
    assert!(e.u64_field("expires_in_ms") > 60_000, "{e:?}");
    let mut nodes = w.redis.nodes().await?;
    for k in w.redis.scan_all().await? {
        let ttl: i64 = nodes.conn(&k)?.pttl(&k).await?;
        assert!(ttl > 0, "{} has no TTL", String::from_utf8_lossy(&k));
    }
    // The token may also come as a query parameter (for clients that drop DELETE bodies).
    let r = p
        .delete(&format!("/v1/locks/shop/order/cart-1?token={}", token(&a)))
        .await?;
    assert_eq!(r.json, json!({"released": true}), "{r:?}");
    // Another resource of the rule is independent.
    let other = acquire(p, "order", "cart-2", json!({})).await?;
    assert_eq!(other.status, 200, "{other:?}");
    Ok(())
}

on_every_backend!(only_the_owner_extends_or_releases);

async fn a_waiting_acquire_gets_the_lock_when_it_is_released(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = Arc::new(w.patternd);
    let a = acquire(&p, "order", "job", json!({})).await?;
    assert_eq!(a.status, 200, "{a:?}");
    let waiter = waiting_acquire(&p, "job").await?;
    let r = release(&p, "order", "job", &token(&a)).await?;
    assert_eq!(r.json, json!({"released": true}), "{r:?}");
    let b = waiter.await??;
    assert_eq!(b.status, 200, "the waiter gets the lock: {b:?}");
    assert!(b.u64_field("fence") > a.u64_field("fence"));
    Ok(())
}

on_every_backend!(a_waiting_acquire_gets_the_lock_when_it_is_released);

async fn a_semaphore_admits_exactly_its_permits(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    // One semaphore per primary of a cluster: each admits exactly its own permits.
    let gpus = w.redis.spread_ids("gpu-", |r| format!("{{{r}}}"))?;
    let p = Arc::new(w.patternd);
    for gpu in &gpus {
        semaphore_admits_its_permits(&p, gpu).await?;
    }
    Ok(())
}

on_every_backend!(a_semaphore_admits_exactly_its_permits);

async fn semaphore_admits_its_permits(p: &Arc<Patternd>, gpu: &str) -> Result<()> {
    let replies = burst(20, |_| {
        let (p, gpu) = (p.clone(), gpu.to_string());
        async move { acquire(&p, "slots", &gpu, json!({})).await }
    })
    .await?;
    let mut granted = Vec::new();
    for r in replies {
        match r.status {
            200 => granted.push(r),
            _ => {
                r.assert_problem(409);
            }
        }
    }
    assert_eq!(granted.len(), 3, "exactly `permits` holders: {granted:?}");
    let mut fences: Vec<u64> = granted.iter().map(|r| r.u64_field("fence")).collect();
    fences.dedup();
    assert_eq!(fences.len(), 3, "every permit has its own fence");
    // Owner-checked like a mutex.
    release(p, "slots", gpu, &forged(fences[0]))
        .await?
        .assert_problem(409);
    let r = release(p, "slots", gpu, &token(&granted[0])).await?;
    assert_eq!(r.json, json!({"released": true}), "{r:?}");
    let again = acquire(p, "slots", gpu, json!({})).await?;
    assert_eq!(again.status, 200, "a released permit is free: {again:?}");
    acquire(p, "slots", gpu, json!({}))
        .await?
        .assert_problem(409);
    let e = extend(p, "slots", gpu, json!({ "token": token(&granted[1]) })).await?;
    assert_eq!(e.status, 200, "{e:?}");
    Ok(())
}

async fn a_crashed_permit_holder_frees_its_permit_when_the_lease_lapses(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let long = acquire(p, "brief-slots", "q", json!({ "ttl_ms": 600_000 })).await?;
    assert_eq!(long.status, 200, "{long:?}");
    let crashed = acquire(p, "brief-slots", "q", json!({})).await?;
    assert_eq!(crashed.status, 200, "{crashed:?}");
    acquire(p, "brief-slots", "q", json!({}))
        .await?
        .assert_problem(409);
    let next = eventually(
        Duration::from_secs(20),
        "the crashed lease to lapse",
        || async {
            let r = acquire(p, "brief-slots", "q", json!({ "ttl_ms": 600_000 })).await?;
            Ok((r.status == 200).then_some(r))
        },
    )
    .await?;
    assert!(next.u64_field("fence") > crashed.u64_field("fence"));
    // The lapsed holder's token is refused; the live one still holds.
    release(p, "brief-slots", "q", &token(&crashed))
        .await?
        .assert_problem(409);
    let r = release(p, "brief-slots", "q", &token(&long)).await?;
    assert_eq!(r.status, 200, "{r:?}");
    Ok(())
}

on_every_backend!(a_crashed_permit_holder_frees_its_permit_when_the_lease_lapses);

async fn bad_requests_are_clear_problems(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    acquire(p, "order", "x", json!({ "ttl_ms": 0 }))
        .await?
        .assert_problem(400);
    let r = acquire(p, "order", "x", json!({ "ttl_ms": 301_000 })).await?;
    r.assert_problem(400);
    assert!(r.detail().contains("max_ttl"), "{r:?}");
    acquire(p, "order", "x", json!({ "ttl": 5 }))
        .await?
        .assert_problem(400);
    acquire(p, "order", "x", json!({ "ttl_ms": -1 }))
        .await?
        .assert_problem(400);
    p.post_raw("/v1/locks/shop/order/x", "[1, 2]")
        .await?
        .assert_problem(400);
    p.post_raw("/v1/locks/shop/order/x", "{not json")
        .await?
        .assert_problem(400);
    // An empty body takes every default.
    let r = p.post_raw("/v1/locks/shop/order/x", "").await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.u64_field("expires_in_ms"), 30_000);
    // Release and extend need a token.
    p.delete("/v1/locks/shop/order/x")
        .await?
        .assert_problem(400);
    extend(p, "order", "x", json!({}))
        .await?
        .assert_problem(400);
    acquire(p, "nope", "x", json!({}))
        .await?
        .assert_problem(404);
    acquire(p, "web", "x", json!({})).await?.assert_problem(404);
    p.post_json("/v1/locks/nope/order/x", &json!({}))
        .await?
        .assert_problem(404);
    let long = "r".repeat(600);
    let r = acquire(p, "order", &long, json!({})).await?;
    r.assert_problem(400);
    assert!(r.detail().contains("resource name is 600 bytes"), "{r:?}");
    Ok(())
}

on_every_backend!(bad_requests_are_clear_problems);

async fn wait_ms_over_max_wait_is_refused_like_ttl_ms_over_max_ttl(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    // `order` has max_wait 60s. One millisecond more is refused, before anything is
    // acquired, with the bound in the detail (as `ttl_ms` over `max_ttl` is).
    let r = acquire(p, "order", "w", json!({ "wait_ms": 60_001 })).await?;
    r.assert_problem(400);
    assert!(
        r.detail().contains("max_wait") && r.detail().contains("60000 ms"),
        "{r:?}"
    );
    // `slots` has the default max_wait, 30s.
    let r = acquire(p, "slots", "w", json!({ "wait_ms": 30_001 })).await?;
    r.assert_problem(400);
    assert!(r.detail().contains("30000 ms"), "{r:?}");
    // Nothing was taken: the bound itself is accepted and the lock is free.
    let r = acquire(p, "order", "w", json!({ "wait_ms": 60_000 })).await?;
    assert_eq!(r.status, 200, "{r:?}");
    Ok(())
}

on_every_backend!(wait_ms_over_max_wait_is_refused_like_ttl_ms_over_max_ttl);

async fn a_resource_with_a_slash_is_percent_encoded_as_one_segment(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let a = acquire(p, "order", "orders%2F1001", json!({})).await?;
    assert_eq!(a.status, 200, "{a:?}");
    // The holder's key is the decoded name, one id: `orders/1001`.
    let keys: Vec<String> = w.redis.scan_names().await?;
    assert!(
        keys.iter().any(|k| k == "shop:lock:order:{orders/1001}:h"),
        "{keys:?}"
    );
    // The same name is held, whichever way the slash is spelled in the segment.
    acquire(p, "order", "orders%2f1001", json!({}))
        .await?
        .assert_problem(409);
    // An unencoded slash is another path (a route that does not exist).
    let r = acquire(p, "order", "orders/1001", json!({})).await?;
    assert_eq!(r.status, 404, "{r:?}");
    let r = release(p, "order", "orders%2F1001", &token(&a)).await?;
    assert_eq!(r.status, 200, "{r:?}");
    Ok(())
}

on_every_backend!(a_resource_with_a_slash_is_percent_encoded_as_one_segment);

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_is_a_503_and_locking_recovers() -> Result<()> {
    let mut w = World::start(&[("shop.yaml", POLICY)], &[]).await?;
    let a = acquire(&w.patternd, "order", "r", json!({})).await?;
    assert_eq!(a.status, 200, "{a:?}");
    w.redis.stop();
    for _ in 0..3 {
        // Even a waiting acquire answers at once: an outage is not contention.
        acquire(&w.patternd, "order", "r2", json!({ "wait_ms": 5000 }))
            .await?
            .assert_problem(503);
        release(&w.patternd, "order", "r", &token(&a))
            .await?
            .assert_problem(503);
    }
    w.redis.restart_same_port()?;
    // The test's Redis keeps no data across the restart: the lock is free again, and the
    // fence (at least Redis TIME in µs) still exceeds the one handed out before.
    let b = eventually(Duration::from_secs(20), "locking to recover", || async {
        let r = acquire(&w.patternd, "order", "r", json!({})).await?;
        Ok((r.status == 200).then_some(r))
    })
    .await?;
    assert!(b.u64_field("fence") > a.u64_field("fence"), "{a:?} {b:?}");
    Ok(())
}

async fn replicas_share_locks_and_a_waiter_on_another_replica_gets_in(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let other = Arc::new(Patternd::start(&w.redis.url(), w.policies.path(), &[]).await?);
    let a = acquire(&w.patternd, "order", "shared", json!({})).await?;
    assert_eq!(a.status, 200, "{a:?}");
    acquire(&other, "order", "shared", json!({}))
        .await?
        .assert_problem(409);
    // A waiter on the other replica is not woken by this replica's release; its backoff
    // finds the lock free.
    let waiter = waiting_acquire(&other, "shared").await?;
    let r = release(&w.patternd, "order", "shared", &token(&a)).await?;
    assert_eq!(r.json, json!({"released": true}), "{r:?}");
    let b = waiter.await??;
    assert_eq!(b.status, 200, "{b:?}");
    assert!(b.u64_field("fence") > a.u64_field("fence"));
    // A repeated release of the old token changes nothing; the new holder's token releases,
    // through either replica.
    let r = release(&other, "order", "shared", &token(&a)).await?;
    assert_eq!(r.json, json!({"released": false}), "{r:?}");
    acquire(&w.patternd, "order", "shared", json!({}))
        .await?
        .assert_problem(409);
    let r = release(&w.patternd, "order", "shared", &token(&b)).await?;
    assert_eq!(r.json, json!({"released": true}), "{r:?}");
    Ok(())
}

on_every_backend!(replicas_share_locks_and_a_waiter_on_another_replica_gets_in);
