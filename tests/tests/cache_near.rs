//! The near cache end to end: two engine replicas on one real Redis, a real origin. A near hit
//! must never outlive a change made through any replica, or straight in Redis, and a lost
//! invalidation connection must switch near caches off. Nothing here depends on timing
//! beyond generous `eventually` waits for an invalidation to travel.

use std::time::Duration;

use anyhow::{Result, ensure};
use patternd_e2e::cache_keys;
use patternd_e2e::origin::Origin;
use patternd_e2e::{Backend, Patternd, Reply, World, cache_status, eventually, metric_value};

const POLICY: &str = "app: shop
rules:
  product:
    cache:
      origin: ORIGIN
      ttl: 1h
      origin_timeout: 10s
      near_cache: { max_entries: 1000, max_age: 1m }
";

const WAIT: Duration = Duration::from_secs(10);

fn is_near(r: &Reply) -> bool {
    cache_status(r).contains("detail=near")
}

/// GETs until this engine answers from its near cache (it goes live once its tracking
/// connection has subscribed, shortly after start).
async fn until_near(p: &Patternd, path: &str) -> Result<Reply> {
    eventually(WAIT, "a near cache hit", || async {
        let r = p.get(path).await?;
        ensure!(r.status == 200, "{r:?}");
        ensure!(is_near(&r), "not a near hit: {}", cache_status(&r));
        Ok(Some(r))
    })
    .await
}

struct Two {
    a: Patternd,
    b: Patternd,
    _policies: patternd_e2e::TempDir,
    redis: Backend,
}

async fn two(origin: &Origin) -> Result<Two> {
    let World {
        patternd: a,
        policies,
        redis,
    } = World::with_origin(POLICY, origin, &[]).await?;
    let b = Patternd::start(&redis.url(), policies.path(), &[]).await?;
    Ok(Two {
        a,
        b,
        _policies: policies,
        redis,
    })
}

async fn put(p: &Patternd, id: &str, body: &str) -> Result<Reply> {
    p.put_with(
        &format!("/v1/cache/shop/product/{id}"),
        body,
        &[("content-type", "text/plain")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn near_hits_never_outlive_a_write_through_another_replica() -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("1", "text/plain", b"v1", &[]);
    let t = two(&origin).await?;
    let path = "/v1/cache/shop/product/1";

    let near = until_near(&t.a, path).await?;
    assert_eq!(near.text, "v1");
    assert_eq!(near.content_type(), "text/plain");
    assert_eq!(origin.gets("1"), 1, "one fill, then hits");

    // A write through replica B reaches replica A's near copy through Redis.
    let w = put(&t.b, "1", "v2").await?;
    assert_eq!(w.status, 204, "{w:?}");
    eventually(WAIT, "replica A to drop its copy", || async {
        let r = t.a.get(path).await?;
        ensure!(r.text == "v2", "still {}: {}", r.text, cache_status(&r));
        Ok(Some(()))
    })
    .await?;
    // And it is near-cached again from then on, with the new value.
    assert_eq!(until_near(&t.a, path).await?.text, "v2");

    // A write through A itself is read back at once on A: no waiting for the message.
    for i in 3..8 {
        let v = format!("v{i}");
        let w = put(&t.a, "1", &v).await?;
        assert_eq!(w.status, 204, "{w:?}");
        let r = t.a.get(path).await?;
        assert_eq!(r.text, v, "read-your-writes on the same replica");
    }

    // A change made straight in Redis, by anything, invalidates too.
    let mut con = t.redis.conn().await?;
    let key = cache_keys::key("shop", "product", "1", "v");
    assert_eq!(until_near(&t.a, path).await?.text, "v7");
    let () = redis::cmd("HSET")
        .arg(key)
        .arg("b")
        .arg("raw")
        .query_async(&mut con)
        .await?;
    eventually(WAIT, "the raw change to show", || async {
        let r = t.a.get(path).await?;
        ensure!(r.text == "raw", "still {}", r.text);
        Ok(Some(()))
    })
    .await?;

    // DELETE through B: A stops serving its copy and fills from the origin again.
    until_near(&t.a, path).await?;
    let d = t.b.delete(path).await?;
    assert_eq!(d.status, 200, "{d:?}");
    eventually(WAIT, "the delete to show on A", || async {
        let r = t.a.get(path).await?;
        ensure!(r.text == "v1", "still {}", r.text);
        Ok(Some(()))
    })
    .await?;
    assert_eq!(origin.gets("1"), 2);

    let m = t.a.get("/metrics").await?.text;
    let hits = metric_value(
        &m,
        "patternd_near_cache_hits_total",
        &[("app", "shop"), ("rule", "product")],
    )
    .unwrap_or(0.0);
    assert!(hits >= 3.0, "near hits counted: {hits}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tag_invalidation_through_another_replica_drops_near_copies() -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("1", "text/plain", b"one", &["red"]);
    origin.set("2", "text/plain", b"two", &["blue"]);
    let t = two(&origin).await?;

    until_near(&t.a, "/v1/cache/shop/product/1").await?;
    until_near(&t.a, "/v1/cache/shop/product/2").await?;
    assert_eq!((origin.gets("1"), origin.gets("2")), (1, 1));

    let inv =
        t.b.post_json(
            "/v1/cache/shop/product/_invalidate",
            &serde_json::json!({"tags": ["red"]}),
        )
        .await?;
    assert_eq!(inv.status, 200, "{inv:?}");
    // The tagged value is fetched again; A must not answer it from its near cache.
    eventually(WAIT, "the tagged value to be refetched", || async {
        let r = t.a.get("/v1/cache/shop/product/1").await?;
        ensure!(r.status == 200, "{r:?}");
        ensure!(
            origin.gets("1") == 2,
            "origin asked {} times",
            origin.gets("1")
        );
        Ok(Some(()))
    })
    .await?;
    // The untagged one is still in Redis: no second origin fetch for it.
    let two = t.a.get("/v1/cache/shop/product/2").await?;
    assert_eq!(two.text, "two");
    assert_eq!(origin.gets("2"), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_redis_switches_the_near_cache_off() -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("1", "text/plain", b"v1", &[]);
    let mut t = two(&origin).await?;
    let path = "/v1/cache/shop/product/1";
    until_near(&t.a, path).await?;

    // With Redis gone, invalidations could be missed: no near hit may be served.
    t.redis.stop();
    eventually(WAIT, "near hits to stop", || async {
        let r = t.a.get(path).await?;
        ensure!(!is_near(&r), "still a near hit");
        ensure!(r.status == 503, "{r:?}");
        Ok(Some(()))
    })
    .await?;

    // Back: the near cache comes back too (empty, then filled again).
    t.redis.restart_same_port()?;
    let r = until_near(&t.a, path).await?;
    assert_eq!(r.text, "v1");
    Ok(())
}
