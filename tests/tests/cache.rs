//! Cache reads end to end: a real origin HTTP server (tests/src/origin.rs) counting its hits,
//! real Redis, the real binary. Counts prove the stampede and refresh claims; nothing here
//! asserts how fast anything happens. Every test but the Redis outage runs on a standalone
//! Redis and on a three-primary cluster.

use std::time::Duration;

use anyhow::{Result, ensure};
use patternd_e2e::cache_keys;
use patternd_e2e::origin::Origin;
use patternd_e2e::{
    Backend, Patternd, PluginWorld, Reply, World, burst, cache_status, eventually,
    get_cache_status, lua_plugins, metric_value, on_every_backend,
};
use serde_json::json;

async fn get(p: &Patternd, path: &str) -> Result<Reply> {
    p.get(path).await
}

const BASIC: &str = "app: shop
rules:
  product:
    cache:
      origin: ORIGIN
      ttl: 1h
      origin_timeout: 10s
";

async fn miss_then_hit_with_cache_status_and_content_type(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("1", "text/plain; charset=utf-8", b"hello", &[]);
    origin.set("a/b c", "application/xml", b"<x/>", &[]);
    let w = World::with_origin_on(b, BASIC, &origin, &[]).await?;
    let p = &w.patternd;

    let first = get(p, "/v1/cache/shop/product/1").await?;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.text, "hello");
    assert_eq!(first.content_type(), "text/plain; charset=utf-8");
    assert_eq!(
        cache_status(&first),
        "patternd; fwd=miss; fwd-status=200; stored"
    );

    let second = get(p, "/v1/cache/shop/product/1").await?;
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(second.text, "hello");
    assert_eq!(second.content_type(), "text/plain; charset=utf-8");
    let cs = cache_status(&second);
    assert!(cs.starts_with("patternd; hit; ttl="), "{cs}");
    let ttl: i64 = cs.trim_start_matches("patternd; hit; ttl=").parse()?;
    assert!(ttl > 3000 && ttl <= 3600, "{cs}");
    assert_eq!(origin.gets("1"), 1);

    // The id is one path segment of the origin URL, whatever it contains.
    let odd = get(p, "/v1/cache/shop/product/a%2Fb%20c").await?;
    assert_eq!((odd.status, odd.text.as_str()), (200, "<x/>"), "{odd:?}");
    assert_eq!(odd.content_type(), "application/xml");
    assert_eq!(origin.gets("a/b c"), 1);

    // Metrics count hits and misses per rule.
    let m = p.get("/metrics").await?.text;
    let labels = |r| [("app", "shop"), ("rule", "product"), ("result", r)];
    assert_eq!(
        metric_value(&m, "patternd_cache_requests_total", &labels("hit")),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&m, "patternd_cache_requests_total", &labels("miss")),
        Some(2.0)
    );
    assert!(m.contains("patternd_cache_origin_seconds"), "{m}");

    // Unknown rule, bad id.
    get(p, "/v1/cache/shop/nope/1").await?.assert_problem(404);
    let long = "x".repeat(513);
    get(p, &format!("/v1/cache/shop/product/{long}"))
        .await?
        .assert_problem(400);
    Ok(())
}

on_every_backend!(miss_then_hit_with_cache_status_and_content_type);

/// 200 concurrent GETs of a cold id, spread over two engine replicas, reach the origin once.
async fn cold_id_stampede_reaches_the_origin_once(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("hot", "application/json", br#"{"v":1}"#, &[]);
    // Slow enough that every request arrives while the first fill is in flight.
    origin.set_delay(Duration::from_millis(500));
    let w = World::with_origin_on(b, BASIC, &origin, &[]).await?;
    // A second replica on the same Redis: the lease is in Redis, not in one process.
    let other = Patternd::start(&w.redis.url(), w.policies.path(), &[]).await?;
    let replies = burst(200, |i| {
        let p = if i % 2 == 0 { &w.patternd } else { &other };
        get_cache_status(p.client().clone(), p.url("/v1/cache/shop/product/hot"))
    })
    .await?;
    let mut stored = 0;
    for (status, cs, body) in replies {
        assert_eq!(status, 200, "{cs} {body}");
        assert_eq!(body, r#"{"v":1}"#);
        if cs.ends_with("stored") {
            stored += 1;
        }
    }
    assert_eq!(
        origin.gets("hot"),
        1,
        "the origin was reached more than once"
    );
    assert_eq!(stored, 1, "exactly one caller filled");
    Ok(())
}

on_every_backend!(cold_id_stampede_reaches_the_origin_once);

async fn hot_key_near_expiry_is_refreshed_once_in_the_background(b: Backend) -> Result<()> {
    // XFetch: the fill takes ~300 ms (delta) and beta 3, so a hot key is refreshed in roughly
    // its last second or two; a 10 s ttl makes a second early refresh right after the first
    // vanishingly unlikely. No stale_while_revalidate: a client could only see the refresh as
    // a miss if XFetch failed.
    const POLICY: &str = "app: shop
rules:
  hot:
    cache:
      origin: ORIGIN
      ttl: 10s
      beta: 3
      origin_timeout: 10s
";
    let origin = Origin::start().await?;
    origin.set("k", "text/plain", b"v1", &[]);
    origin.set_delay(Duration::from_millis(300));
    let w = World::with_origin_on(b, POLICY, &origin, &[]).await?;
    let p = &w.patternd;
    let first = get(p, "/v1/cache/shop/hot/k").await?;
    assert_eq!((first.status, first.text.as_str()), (200, "v1"));
    origin.set("k", "text/plain", b"v2", &[]);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers = burst(8, |_| {
        let client = p.client().clone();
        let url = p.url("/v1/cache/shop/hot/k");
        let stop = stop.clone();
        async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (status, cs, body) = get_cache_status(client.clone(), url.clone()).await?;
                if body == "v2" {
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                seen.push((status, cs, body));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(seen)
        }
    });
    let mut total = 0;
    for (status, cs, body) in tokio::time::timeout(Duration::from_secs(60), readers)
        .await??
        .into_iter()
        .flatten()
    {
        total += 1;
        assert_eq!(status, 200, "{cs} {body}");
        assert!(
            cs.starts_with("patternd; hit; ttl="),
            "a client saw something other than a hit: {cs} ({body})"
        );
    }
    assert!(total > 8, "too few requests to say anything: {total}");
    assert_eq!(origin.gets("k"), 2, "one fill and exactly one refresh");
    let m = p.get("/metrics").await?.text;
    assert_eq!(
        metric_value(
            &m,
            "patternd_cache_requests_total",
            &[("rule", "hot"), ("result", "refresh")]
        ),
        Some(1.0)
    );
    Ok(())
}

on_every_backend!(hot_key_near_expiry_is_refreshed_once_in_the_background);

async fn stale_while_revalidate_serves_stale_and_refreshes_once(b: Backend) -> Result<()> {
    // beta tiny: no early refresh, so the value really goes stale.
    const POLICY: &str = "app: shop
rules:
  swr:
    cache:
      origin: ORIGIN
      ttl: 1s
      stale_while_revalidate: 1h
      beta: 0.0001
";
    let origin = Origin::start().await?;
    origin.set("s", "text/plain", b"old", &[]);
    let w = World::with_origin_on(b, POLICY, &origin, &[]).await?;
    let p = &w.patternd;
    assert_eq!(get(p, "/v1/cache/shop/swr/s").await?.text, "old");
    origin.set("s", "text/plain", b"new", &[]);
    // Wait (without asserting how long) until the value is stale: the first stale read is
    // answered at once with the old value and starts one background refresh.
    let stale = eventually(Duration::from_secs(30), "a stale answer", || async {
        let r = get(p, "/v1/cache/shop/swr/s").await?;
        ensure!(r.status == 200, "{r:?}");
        Ok(cache_status(&r)
            .contains("detail=stale-while-revalidate")
            .then_some(r))
    })
    .await?;
    assert_eq!(stale.text, "old");
    let cs = cache_status(&stale);
    assert!(cs.starts_with("patternd; hit; ttl=-"), "{cs}");
    let fresh = eventually(Duration::from_secs(30), "the refreshed value", || async {
        let r = get(p, "/v1/cache/shop/swr/s").await?;
        ensure!(r.status == 200, "{r:?}");
        Ok((r.text == "new").then_some(r))
    })
    .await?;
    assert!(
        cache_status(&fresh).starts_with("patternd; hit; ttl="),
        "{fresh:?}"
    );
    assert_eq!(origin.gets("s"), 2);
    Ok(())
}

on_every_backend!(stale_while_revalidate_serves_stale_and_refreshes_once);

const SIE: &str = "app: shop
rules:
  sie:
    cache:
      origin: ORIGIN
      ttl: 1s
      stale_if_error: 1h
      beta: 0.0001
      origin_timeout: 5s
      refresh_lease: 200ms
";

async fn stale_if_error_with_the_origin_failing_then_down(b: Backend) -> Result<()> {
    let mut origin = Origin::start().await?;
    origin.set("x", "text/plain", b"kept", &[]);
    let w = World::with_origin_on(b, SIE, &origin, &[]).await?;
    let p = &w.patternd;
    assert_eq!(get(p, "/v1/cache/shop/sie/x").await?.text, "kept");

    // Failing origin: once the value is past its ttl, the stale value is served.
    origin.fail_with(Some(503));
    let r = eventually(Duration::from_secs(30), "stale-if-error on 503", || async {
        let r = get(p, "/v1/cache/shop/sie/x").await?;
        ensure!(r.status == 200, "{r:?}");
        Ok(cache_status(&r).contains("stale-if-error").then_some(r))
    })
    .await?;
    assert_eq!(r.text, "kept");
    let cs = cache_status(&r);
    assert!(
        cs.starts_with("patternd; fwd=stale; fwd-status=503; ttl=-"),
        "{cs}"
    );

    // Origin down (connections refused, pooled ones closed): still the stale value, whether
    // a read probes the origin (`fwd=stale`, no status) or is answered from the failure marker
    // of the last probe (`hit`, within refresh_lease).
    origin.stop().await;
    let r = eventually(
        Duration::from_secs(30),
        "a probe of the down origin",
        || async {
            let r = get(p, "/v1/cache/shop/sie/x").await?;
            ensure!(r.status == 200 && r.text == "kept", "{r:?}");
            ensure!(cache_status(&r).ends_with("detail=stale-if-error"), "{r:?}");
            Ok(cache_status(&r)
                .starts_with("patternd; fwd=stale; ttl=-")
                .then_some(r))
        },
    )
    .await?;
    assert_eq!(r.text, "kept");

    // Back: the next read refreshes and stores.
    origin.fail_with(None);
    origin.set("x", "text/plain", b"fresh", &[]);
    origin.restart().await?;
    let r = eventually(Duration::from_secs(30), "a refill", || async {
        let r = get(p, "/v1/cache/shop/sie/x").await?;
        Ok((r.text == "fresh").then_some(r))
    })
    .await?;
    assert_eq!(
        cache_status(&r),
        "patternd; fwd=stale; fwd-status=200; stored"
    );
    Ok(())
}

on_every_backend!(stale_if_error_with_the_origin_failing_then_down);

async fn origin_failures_without_stale_are_502_and_504(b: Backend) -> Result<()> {
    const POLICY: &str = "app: shop
rules:
  strict:
    cache:
      origin: ORIGIN
      ttl: 1h
      origin_timeout: 300ms
      max_value_bytes: 1000
  wide:
    cache:
      origin: ORIGIN
      ttl: 1h
      origin_timeout: 10s
";
    let mut origin = Origin::start().await?;
    origin.set("big", "text/plain", &[b'x'; 2000], &[]);
    origin.set("ok", "text/plain", b"fine", &[]);
    let w = World::with_origin_on(b, POLICY, &origin, &[]).await?;
    let p = &w.patternd;

    // Too large: refused, never stored (the next read reaches the origin again).
    for n in 1..=2 {
        let r = get(p, "/v1/cache/shop/strict/big").await?;
        r.assert_problem(502);
        assert!(r.detail().contains("max_value_bytes"), "{r:?}");
        assert_eq!(origin.gets("big"), n);
    }

    // A 5xx with nothing cached.
    origin.fail_with(Some(500));
    let r = get(p, "/v1/cache/shop/wide/ok").await?;
    r.assert_problem(502);
    assert_eq!(cache_status(&r), "patternd; fwd=miss; fwd-status=500");
    origin.fail_with(None);

    // An origin slower than origin_timeout: 504.
    origin.set_delay(Duration::from_secs(5));
    let r = get(p, "/v1/cache/shop/strict/ok").await?;
    r.assert_problem(504);
    assert_eq!(cache_status(&r), "patternd; fwd=miss");
    origin.set_delay(Duration::ZERO);

    // Down: 502 that says so. (Another id: `ok` still remembers its failure above for a
    // moment, see the next test.)
    origin.stop().await;
    let r = get(p, "/v1/cache/shop/wide/other").await?;
    r.assert_problem(502);
    assert!(r.detail().contains("could not be reached"), "{r:?}");

    // Nothing of these failures was stored: no values, only expiring failure markers.
    let mut nodes = w.redis.nodes().await?;
    for k in w.redis.scan_all().await? {
        let name = String::from_utf8_lossy(&k).into_owned();
        assert!(name.ends_with(":lease"), "{name} was stored");
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&k)
            .query_async(nodes.conn(&k)?)
            .await?;
        assert!(pttl > 0, "{name}: {pttl}");
    }
    Ok(())
}

on_every_backend!(origin_failures_without_stale_are_502_and_504);

async fn negative_caching_of_origin_404(b: Backend) -> Result<()> {
    const POLICY: &str = "app: shop
rules:
  neg:
    cache:
      origin: ORIGIN
      ttl: 1h
      negative_ttl: 1s
  plain:
    cache:
      origin: ORIGIN
      ttl: 1h
";
    let origin = Origin::start().await?;
    let w = World::with_origin_on(b, POLICY, &origin, &[]).await?;
    let p = &w.patternd;

    let r = get(p, "/v1/cache/shop/neg/gone").await?;
    r.assert_problem(404);
    assert_eq!(
        cache_status(&r),
        "patternd; fwd=miss; fwd-status=404; stored"
    );
    // The item appears at the origin, but the 404 is remembered for negative_ttl.
    origin.set("gone", "text/plain", b"here", &[]);
    let r = get(p, "/v1/cache/shop/neg/gone").await?;
    r.assert_problem(404);
    assert!(cache_status(&r).starts_with("patternd; hit"), "{r:?}");
    assert_eq!(origin.gets("gone"), 1);
    // …and then forgotten.
    let r = eventually(
        Duration::from_secs(30),
        "the negative entry to expire",
        || async {
            let r = get(p, "/v1/cache/shop/neg/gone").await?;
            Ok((r.status == 200).then_some(r))
        },
    )
    .await?;
    assert_eq!(r.text, "here");

    // Without negative_ttl a 404 is not stored: every read asks the origin.
    for n in 1..=2 {
        let r = get(p, "/v1/cache/shop/plain/nothing").await?;
        r.assert_problem(404);
        assert_eq!(cache_status(&r), "patternd; fwd=miss; fwd-status=404");
        assert_eq!(origin.gets("nothing"), n);
    }
    Ok(())
}

on_every_backend!(negative_caching_of_origin_404);

async fn without_an_origin_a_missing_value_is_404(b: Backend) -> Result<()> {
    let w = World::on(
        b,
        &[(
            "c.yaml",
            "app: shop\nrules:\n  frag:\n    cache: { ttl: 1m }\n",
        )],
        &[],
    )
    .await?;
    let r = get(&w.patternd, "/v1/cache/shop/frag/none").await?;
    r.assert_problem(404);
    assert_eq!(cache_status(&r), "patternd; detail=absent");
    Ok(())
}

on_every_backend!(without_an_origin_a_missing_value_is_404);

async fn delete_drops_the_value_and_its_related_ids(b: Backend) -> Result<()> {
    const POLICY: &str = "app: shop
rules:
  user:
    cache:
      origin: ORIGIN
      ttl: 1h
      related: [\"{id}:profile\", \"{id}:posts\"]
";
    let origin = Origin::start().await?;
    for id in ["9", "9:profile", "9:posts", "10"] {
        origin.set(id, "text/plain", id.as_bytes(), &[]);
    }
    let w = World::with_origin_on(b, POLICY, &origin, &[]).await?;
    let p = &w.patternd;
    for id in ["9", "9:profile", "9:posts", "10"] {
        assert_eq!(get(p, &format!("/v1/cache/shop/user/{id}")).await?.text, id);
    }
    let d = p.delete("/v1/cache/shop/user/9").await?;
    assert_eq!(d.status, 200, "{d:?}");
    assert_eq!(d.json["deleted"], 3);
    let mut nodes = w.redis.nodes().await?;
    let keys: Vec<String> = w.redis.scan_names().await?;
    // Besides the other value, only the write markers DELETE leaves in the dropped ids'
    // leases (a fill in flight must not store what it read before the DELETE); they expire
    // after max(refresh_lease, origin_timeout + 1s) = 3s here.
    let mut want = vec![cache_keys::key("shop", "user", "10", "v")];
    let leases: Vec<String> = ["9:posts", "9:profile", "9"]
        .iter()
        .map(|id| cache_keys::key("shop", "user", id, "lease"))
        .collect();
    want.extend(leases.iter().cloned());
    want.sort();
    assert_eq!(keys, want, "{keys:?}");
    for k in &leases {
        let (marker, pttl): (String, i64) = redis::pipe()
            .cmd("GET")
            .arg(k)
            .cmd("PTTL")
            .arg(k)
            .query_async(nodes.conn(k)?)
            .await?;
        assert_eq!(marker, "W", "{k}");
        assert!(pttl > 0 && pttl <= 3000, "{k}: {pttl}");
    }
    // Read again: misses for the dropped ids, a hit for the other.
    for id in ["9", "9:profile", "9:posts"] {
        let r = get(p, &format!("/v1/cache/shop/user/{id}")).await?;
        assert!(cache_status(&r).contains("fwd=miss"), "{id}: {r:?}");
        assert_eq!(origin.gets(id), 2);
    }
    let r = get(p, "/v1/cache/shop/user/10").await?;
    assert!(cache_status(&r).starts_with("patternd; hit"), "{r:?}");
    // Deleting what is not there is fine.
    let d = p.delete("/v1/cache/shop/user/nobody").await?;
    assert_eq!((d.status, d.json["deleted"].clone()), (200, json!(0)));
    Ok(())
}

on_every_backend!(delete_drops_the_value_and_its_related_ids);

/// Reads, fills, a tag invalidation and DELETEs with a related id, for ids whose values live
/// on each primary. On a cluster every cache script runs on the node of its id's slot group;
/// one that touched another slot would fail with CROSSSLOT or MOVED here. (On standalone
/// `spread_ids` gives the same ids, so both variants send the same requests.)
async fn every_read_operation_reaches_every_primary(b: Backend) -> Result<()> {
    const POLICY: &str = "app: ccl
rules:
  r:
    cache:
      origin: ORIGIN
      ttl: 1h
      related: [\"{id}:x\"]
";
    let origin = Origin::start().await?;
    let ids = b.spread_ids("r", |id| cache_keys::key("ccl", "r", id, "v"))?;
    let w = World::with_origin_on(b, POLICY, &origin, &[]).await?;
    let p = &w.patternd;
    let nodes = w.redis.nodes().await?;
    let mut ports = std::collections::BTreeSet::new();
    for id in &ids {
        origin.set(id, "text/plain", id.as_bytes(), &["all", id]);
        origin.set(&format!("{id}:x"), "text/plain", b"x", &[]);
        let r = get(p, &format!("/v1/cache/ccl/r/{id}")).await?;
        assert_eq!((r.status, r.text.as_str()), (200, id.as_str()), "{r:?}");
        let r = get(p, &format!("/v1/cache/ccl/r/{id}")).await?;
        assert!(cache_status(&r).starts_with("patternd; hit"), "{id}: {r:?}");
        assert_eq!(
            get(p, &format!("/v1/cache/ccl/r/{id}:x")).await?.status,
            200
        );
        // The value is where its group's slot lives.
        let key = cache_keys::key("ccl", "r", id, "v");
        let mut conn = w.redis.conn_for_key(&key).await?;
        let exists: u64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        assert_eq!(exists, 1, "{key}");
        ports.insert(nodes.port_of(&key)?);
    }
    assert_eq!(ports.len(), nodes.len(), "one id per primary: {ids:?}");

    // The invalidation reaches every group, on every primary.
    let r = p
        .post_json("/v1/cache/ccl/r/_invalidate", &json!({"tags": ["all"]}))
        .await?;
    assert_eq!(
        (r.status, r.json["bumped"].clone()),
        (200, json!(1)),
        "{r:?}"
    );
    for id in &ids {
        let r = get(p, &format!("/v1/cache/ccl/r/{id}")).await?;
        assert!(cache_status(&r).contains("fwd=miss"), "{id}: {r:?}");
        assert_eq!(origin.gets(id), 2, "{id}");
    }

    // DELETE with a related id (in another group, often on another primary).
    for id in &ids {
        let d = p.delete(&format!("/v1/cache/ccl/r/{id}")).await?;
        assert_eq!(
            (d.status, d.json["deleted"].clone()),
            (200, json!(2)),
            "{d:?}"
        );
        let r = get(p, &format!("/v1/cache/ccl/r/{id}:x")).await?;
        assert!(cache_status(&r).contains("fwd=miss"), "{id}: {r:?}");
    }
    Ok(())
}

on_every_backend!(every_read_operation_reaches_every_primary);

async fn tag_invalidation_is_bounded_and_tag_keys_expire(b: Backend) -> Result<()> {
    const POLICY: &str = "app: shop
rules:
  item:
    cache:
      origin: ORIGIN
      ttl: 1h
      stale_if_error: 1h
";
    let origin = Origin::start().await?;
    origin.set("a", "text/plain", b"a", &["brand:1", "sale"]);
    origin.set("b", "text/plain", b"b", &["sale"]);
    origin.set("c", "text/plain", b"c", &["brand:2"]);
    let w = World::with_origin_on(b, POLICY, &origin, &[]).await?;
    let p = &w.patternd;
    for id in ["a", "b", "c"] {
        assert_eq!(
            get(p, &format!("/v1/cache/shop/item/{id}")).await?.status,
            200
        );
    }
    // Surrogate-Key works too (space-separated).
    origin.set_tag_header("Surrogate-Key");
    origin.set("d", "text/plain", b"d", &["sale", "brand:3"]);
    assert_eq!(get(p, "/v1/cache/shop/item/d").await?.status, 200);

    // Every slot group's tag versions have a TTL at least as long as every value of the
    // group that records a tag.
    let mut nodes = w.redis.nodes().await?;
    let names = w.redis.scan_names().await?;
    let tag_keys: Vec<&String> = names.iter().filter(|k| k.ends_with(":tags")).collect();
    let groups: std::collections::BTreeSet<u32> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| cache_keys::group_of(id, cache_keys::DEFAULT_GROUPS))
        .collect();
    assert_eq!(tag_keys.len(), groups.len(), "{names:?}");
    for k in &names {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(k)
            .query_async(nodes.conn(k)?)
            .await?;
        assert!(pttl > 0, "{k} has no TTL ({pttl})");
        assert!(k.starts_with("shop:cache:item:"), "{k}");
    }
    for id in ["a", "b", "c", "d"] {
        let g = cache_keys::group_of(id, cache_keys::DEFAULT_GROUPS);
        let tags = cache_keys::group_key("shop", "item", g, "tags");
        assert!(tag_keys.contains(&&tags), "{tags} in {tag_keys:?}");
        let value_key = cache_keys::key("shop", "item", id, "v");
        let value: i64 = redis::cmd("PTTL")
            .arg(&value_key)
            .query_async(nodes.conn(&value_key)?)
            .await?;
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&tags)
            .query_async(nodes.conn(&tags)?)
            .await?;
        // Written in the same script as (or after) the values: never shorter than them
        // (a second of slack for the time between the two PTTL calls).
        assert!(pttl + 1000 >= value, "{tags}: {pttl} < {value}");
    }

    // Invalidate `sale`: a, b and d go, c stays.
    let r = p
        .post_json(
            "/v1/cache/shop/item/_invalidate",
            &json!({"tags": ["sale", "never-used"]}),
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["bumped"], 1, "{r:?}");
    for id in ["a", "b", "d"] {
        let r = get(p, &format!("/v1/cache/shop/item/{id}")).await?;
        assert_eq!(
            cache_status(&r),
            "patternd; fwd=miss; fwd-status=200; stored",
            "{id}"
        );
        assert_eq!(origin.gets(id), 2, "{id}");
    }
    let r = get(p, "/v1/cache/shop/item/c").await?;
    assert!(cache_status(&r).starts_with("patternd; hit"), "{r:?}");
    // The invalidation reached every slot group. A group that holds no tagged value keeps
    // its tag versions only as long as a fill in flight may take (max(refresh_lease,
    // origin_timeout + 1s) = 3s here): long enough to stop a fill that raced the invalidation.
    for g in 0..cache_keys::DEFAULT_GROUPS {
        let tags = cache_keys::group_key("shop", "item", g, "tags");
        let (version, pttl): (Option<f64>, i64) = redis::pipe()
            .cmd("ZSCORE")
            .arg(&tags)
            .arg("never-used")
            .cmd("PTTL")
            .arg(&tags)
            .query_async(nodes.conn(&tags)?)
            .await?;
        assert!(version.is_some_and(|v| v > 1e15), "{tags}: {version:?}");
        if !groups.contains(&g) {
            assert!(pttl > 0 && pttl <= 3000, "{tags}: {pttl}");
        }
    }
    // Invalidated values are not served stale either, even under stale_if_error.
    p.post_json(
        "/v1/cache/shop/item/_invalidate",
        &json!({"tags": ["brand:2"]}),
    )
    .await?;
    origin.fail_with(Some(500));
    get(p, "/v1/cache/shop/item/c").await?.assert_problem(502);
    origin.fail_with(None);

    // Bad input.
    for body in [
        json!({"tags": []}),
        json!({"tags": ["two words"]}),
        json!({"tags": ["a,b"]}),
        json!({"nope": 1}),
    ] {
        p.post_json("/v1/cache/shop/item/_invalidate", &body)
            .await?
            .assert_problem(400);
    }
    Ok(())
}

on_every_backend!(tag_invalidation_is_bounded_and_tag_keys_expire);

async fn hash_format_stores_fields_and_reads_some(b: Backend) -> Result<()> {
    const POLICY: &str = "app: shop
rules:
  profile:
    cache:
      origin: ORIGIN
      format: hash
      ttl: 1h
  plain:
    cache:
      origin: ORIGIN
      ttl: 1h
";
    let origin = Origin::start().await?;
    origin.set(
        "7",
        "application/json",
        br#"{"name": "Ada", "age": 36, "langs": ["en", "fr"], "boss": null}"#,
        &[],
    );
    origin.set("list", "application/json", b"[1, 2]", &[]);
    let w = World::with_origin_on(b, POLICY, &origin, &[]).await?;
    let p = &w.patternd;

    let all = get(p, "/v1/cache/shop/profile/7").await?;
    assert_eq!(all.status, 200, "{all:?}");
    assert_eq!(all.content_type(), "application/json");
    let want = json!({"name": "Ada", "age": 36, "langs": ["en", "fr"], "boss": null});
    assert_eq!(all.json, want);
    // Stored one HASH field per member.
    let value_key = cache_keys::key("shop", "profile", "7", "v");
    let mut conn = w.redis.conn_for_key(&value_key).await?;
    let name: String = redis::cmd("HGET")
        .arg(&value_key)
        .arg("f:name")
        .query_async(&mut conn)
        .await?;
    assert_eq!(name, "\"Ada\"");
    let has_body: bool = redis::cmd("HEXISTS")
        .arg(cache_keys::key("shop", "profile", "7", "v"))
        .arg("b")
        .query_async(&mut conn)
        .await?;
    assert!(!has_body);

    let some = get(p, "/v1/cache/shop/profile/7?fields=name,langs,missing,name").await?;
    assert_eq!(some.status, 200, "{some:?}");
    assert!(cache_status(&some).starts_with("patternd; hit"), "{some:?}");
    assert_eq!(some.json, json!({"name": "Ada", "langs": ["en", "fr"]}));
    assert_eq!(origin.gets("7"), 1);

    // A body that is not a JSON object cannot be a hash.
    let r = get(p, "/v1/cache/shop/profile/list").await?;
    r.assert_problem(502);
    assert!(r.detail().contains("not a JSON object"), "{r:?}");
    // `fields` is for hash rules only.
    get(p, "/v1/cache/shop/plain/7?fields=a")
        .await?
        .assert_problem(400);
    Ok(())
}

on_every_backend!(hash_format_stores_fields_and_reads_some);

async fn every_cache_key_has_a_ttl_and_its_namespace(b: Backend) -> Result<()> {
    const POLICY: &str = "app: hyg
rules:
  c:
    cache:
      origin: ORIGIN
      ttl: 1h
      negative_ttl: 1m
      stale_while_revalidate: 1m
";
    let origin = Origin::start().await?;
    let ids = ["plain", "{", "}", "a}:v", "%7B", "x y", "ünï", "{}{}"];
    for (i, id) in ids.iter().enumerate() {
        if i % 2 == 0 {
            origin.set(id, "text/plain", id.as_bytes(), &["t1", "t:2"]);
        }
    }
    let w = World::with_origin_on(b, POLICY, &origin, &[]).await?;
    let p = &w.patternd;
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    for (i, id) in ids.iter().enumerate() {
        let r = get(p, &format!("/v1/cache/hyg/c/{}", enc(id))).await?;
        assert_eq!(r.status, if i % 2 == 0 { 200 } else { 404 }, "{id}: {r:?}");
    }
    // A lease outstanding: a slow fill in flight while keys are read.
    origin.set("slow", "text/plain", b"s", &[]);
    origin.set_delay(Duration::from_secs(3));
    let slow = {
        let client = p.client().clone();
        let url = p.url("/v1/cache/hyg/c/slow");
        tokio::spawn(async move { client.get(url).send().await })
    };
    let mut nodes = w.redis.nodes().await?;
    eventually(Duration::from_secs(30), "the lease key", || async {
        let keys = w.redis.scan_all().await?;
        Ok(keys
            .iter()
            .any(|k| k.ends_with(b"}:slow:lease"))
            .then_some(()))
    })
    .await?;
    let keys = w.redis.scan_all().await?;
    assert!(keys.len() >= ids.len() + 2, "{keys:?}");
    for k in &keys {
        let name = String::from_utf8_lossy(k);
        assert!(name.starts_with("hyg:cache:c:{%hyg.c."), "{name}");
        let pttl: i64 = redis::cmd("PTTL")
            .arg(k)
            .query_async(nodes.conn(k)?)
            .await?;
        assert!(pttl > 0, "{name} has no TTL ({pttl})");
    }
    slow.await??;
    Ok(())
}

on_every_backend!(every_cache_key_has_a_ttl_and_its_namespace);

/// The example `cache-key` Lua plugin: a key per Accept-Language, a TTL, tags, bypass.
async fn plugin_chooses_key_ttl_tags_and_bypass(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("1", "text/plain", b"one", &[]);
    let policy = "app: shop
rules:
  page:
    cache:
      origin: ORIGIN
      ttl: 1h
      plugin:
        name: cache-key
        config:
          vary: [accept-language]
          ttl_ms: { default: 60000 }
          bypass_header: x-no-cache
"
    .replace("ORIGIN", &origin.template());
    let plugins = lua_plugins(&[("cache-key.lua", "cache-key/cache-key.lua")])?;
    let w = PluginWorld::on(b, &[("p.yaml", &policy)], plugins).await?;
    let p = &w.patternd;
    let path = "/v1/cache/shop/page/1";

    let en = p.get_with(path, &[("accept-language", "en")]).await?;
    assert_eq!(
        cache_status(&en),
        "patternd; fwd=miss; fwd-status=200; stored"
    );
    let de = p.get_with(path, &[("accept-language", "de")]).await?;
    assert_eq!(
        cache_status(&de),
        "patternd; fwd=miss; fwd-status=200; stored"
    );
    let en2 = p.get_with(path, &[("accept-language", "en")]).await?;
    assert!(cache_status(&en2).starts_with("patternd; hit"), "{en2:?}");
    assert_eq!(origin.gets("1"), 2);

    // One key per variant, inside the rule's namespace, with the plugin's TTL.
    let mut nodes = w.redis.nodes().await?;
    for variant in ["1:en", "1:de"] {
        let key = cache_keys::key("shop", "page", variant, "v");
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(nodes.conn(&key)?)
            .await?;
        assert!(pttl > 0 && pttl <= 60_000, "{key}: {pttl}");
    }

    // Bypass: straight to the origin, nothing read or stored.
    let b = p.get_with(path, &[("x-no-cache", "1")]).await?;
    assert_eq!((b.status, b.text.as_str()), (200, "one"));
    assert_eq!(cache_status(&b), "patternd; fwd=bypass; fwd-status=200");
    assert_eq!(origin.gets("1"), 3);

    // The plugin's tag `id:1` reaches every variant.
    let r = p
        .post_json(
            "/v1/cache/shop/page/_invalidate",
            &json!({"tags": ["id:1"]}),
        )
        .await?;
    assert_eq!(r.json["bumped"], 1, "{r:?}");
    for lang in ["en", "de"] {
        let r = p.get_with(path, &[("accept-language", lang)]).await?;
        assert!(cache_status(&r).contains("fwd=miss"), "{lang}: {r:?}");
    }
    assert_eq!(origin.gets("1"), 5);
    Ok(())
}

on_every_backend!(plugin_chooses_key_ttl_tags_and_bypass);

/// Redis down: a 503 problem, and the origin is not flooded with the traffic Redis absorbed.
#[tokio::test(flavor = "multi_thread")]
async fn redis_down_is_a_503_and_spares_the_origin() -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("1", "text/plain", b"one", &[]);
    let mut w = World::with_origin(BASIC, &origin, &[]).await?;
    w.redis.stop();
    let r = get(&w.patternd, "/v1/cache/shop/product/1").await?;
    r.assert_problem(503);
    assert_eq!(origin.gets("1"), 0);
    Ok(())
}

/// The fill's lease: a PUT that lands while an origin fetch is in flight wins; the slow answer
/// is served to its caller but not stored over the newer value.
async fn a_slow_fill_never_overwrites_a_newer_put(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("r", "text/plain", b"from-origin", &[]);
    origin.set_delay(Duration::from_secs(2));
    let w = World::with_origin_on(b, BASIC, &origin, &[]).await?;
    let p = &w.patternd;
    let slow = {
        let client = p.client().clone();
        let url = p.url("/v1/cache/shop/product/r");
        tokio::spawn(get_cache_status(client, url))
    };
    eventually(Duration::from_secs(30), "the fill's lease", || async {
        let keys = w.redis.scan_all().await?;
        Ok(keys.iter().any(|k| k.ends_with(b"}:r:lease")).then_some(()))
    })
    .await?;
    let put = p
        .send(
            p.client()
                .put(p.url("/v1/cache/shop/product/r"))
                .header("content-type", "text/plain")
                .body("from-put"),
        )
        .await?;
    assert!(put.status / 100 == 2, "{put:?}");
    let (status, cs, body) = slow.await??;
    assert_eq!((status, body.as_str()), (200, "from-origin"));
    assert_eq!(cs, "patternd; fwd=miss; fwd-status=200", "not stored");
    let r = get(p, "/v1/cache/shop/product/r").await?;
    assert_eq!(r.text, "from-put");
    assert!(cache_status(&r).starts_with("patternd; hit"), "{r:?}");
    Ok(())
}

on_every_backend!(a_slow_fill_never_overwrites_a_newer_put);

/// A down origin costs one probe per refresh_lease, not one timeout per request: after a
/// failed fill, the lease holds a failure marker and readers get the stale value at once.
async fn a_failing_origin_is_probed_once_per_refresh_lease(b: Backend) -> Result<()> {
    const POLICY: &str = "app: shop
rules:
  probe:
    cache:
      origin: ORIGIN
      ttl: 1s
      stale_if_error: 1h
      beta: 0.0001
      origin_timeout: 500ms
      refresh_lease: 1h
";
    let origin = Origin::start().await?;
    origin.set("x", "text/plain", b"kept", &[]);
    let w = World::with_origin_on(b, POLICY, &origin, &[]).await?;
    let p = &w.patternd;
    assert_eq!(get(p, "/v1/cache/shop/probe/x").await?.text, "kept");
    // The origin now times out.
    origin.set_delay(Duration::from_secs(5));
    let probe = eventually(
        Duration::from_secs(30),
        "the first failed refresh",
        || async {
            let r = get(p, "/v1/cache/shop/probe/x").await?;
            ensure!(r.status == 200 && r.text == "kept", "{r:?}");
            Ok(cache_status(&r).contains("stale-if-error").then_some(r))
        },
    )
    .await?;
    assert!(
        cache_status(&probe).starts_with("patternd; fwd=stale; ttl=-"),
        "{probe:?}"
    );
    assert_eq!(origin.gets("x"), 2);
    let replies = burst(20, |_| {
        get_cache_status(p.client().clone(), p.url("/v1/cache/shop/probe/x"))
    })
    .await?;
    for (status, cs, body) in replies {
        assert_eq!((status, body.as_str()), (200, "kept"));
        assert!(
            cs.starts_with("patternd; hit; ttl=-") && cs.ends_with("detail=stale-if-error"),
            "{cs}"
        );
    }
    assert_eq!(origin.gets("x"), 2, "the failing origin was asked again");
    Ok(())
}

on_every_backend!(a_failing_origin_is_probed_once_per_refresh_lease);

/// 50 concurrent reads of a cold id while the origin fails: it is asked once, and the callers
/// that waited for that fill share its failure.
async fn a_failed_fill_is_shared_by_its_waiters(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    origin.fail_with(Some(500));
    origin.set_delay(Duration::from_millis(300));
    let w = World::with_origin_on(b, BASIC, &origin, &[]).await?;
    let p = &w.patternd;
    let replies = burst(50, |_| {
        get_cache_status(p.client().clone(), p.url("/v1/cache/shop/product/cold"))
    })
    .await?;
    let mut probes = 0;
    for (status, cs, _) in replies {
        assert_eq!(status, 502, "{cs}");
        if cs == "patternd; fwd=miss; fwd-status=500" {
            probes += 1;
        } else {
            assert_eq!(cs, "patternd; fwd=miss; collapsed");
        }
    }
    assert_eq!(probes, 1);
    assert_eq!(origin.gets("cold"), 1);
    Ok(())
}

on_every_backend!(a_failed_fill_is_shared_by_its_waiters);

/// XFetch as the read script decides it from the engine's gap (`-beta * ln(rand)`): a fresh
/// value refreshes early when `delta * gap >= ms left`. The value's `delta` is set in Redis so
/// the outcome does not depend on the draw: a delta of 10^15 ms refreshes an hour-fresh value
/// unless the draw's `-ln(rand)` is below 4e-9 (about one draw in 250 million), a delta of 0
/// never does; a negative entry and a rule without an origin (the engine sends a gap of 0)
/// never refresh early, whatever their delta.
async fn xfetch_refreshes_early_by_the_values_delta_only_with_an_origin(b: Backend) -> Result<()> {
    const POLICY: &str = "app: shop
rules:
  x:
    cache:
      origin: ORIGIN
      ttl: 1h
      negative_ttl: 1h
      origin_timeout: 10s
  local:
    cache: { ttl: 1h }
";
    const HUGE: &str = "1000000000000000";
    let origin = Origin::start().await?;
    origin.set("k", "text/plain", b"v1", &[]);
    let w = World::with_origin_on(b, POLICY, &origin, &[]).await?;
    let p = &w.patternd;
    // A lease granted for an early refresh stays until the fill gives it back; none may be
    // granted where nothing may refresh.
    let no_lease = |id: &'static str, rule: &'static str| {
        let key = cache_keys::key("shop", rule, id, "lease");
        let redis = &w.redis;
        async move {
            let mut conn = redis.conn_for_key(&key).await?;
            let n: i64 = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut conn)
                .await?;
            ensure!(n == 0, "a refresh lease was granted for {rule}/{id}");
            anyhow::Ok(())
        }
    };
    let set_delta = |id: &'static str, rule: &'static str, delta: &'static str| {
        let key = cache_keys::key("shop", rule, id, "v");
        let redis = &w.redis;
        async move {
            let mut conn = redis.conn_for_key(&key).await?;
            let m: Vec<u8> = redis::cmd("HGET")
                .arg(&key)
                .arg("m")
                .query_async(&mut conn)
                .await?;
            let mut meta = cache_keys::Meta::parse(&m)?;
            meta.delta = delta.parse()?;
            let () = redis::cmd("HSET")
                .arg(&key)
                .arg("m")
                .arg(meta.pack())
                .query_async(&mut conn)
                .await?;
            anyhow::Ok(())
        }
    };

    let r = get(p, "/v1/cache/shop/x/k").await?;
    assert_eq!((r.status, r.text.as_str()), (200, "v1"));
    origin.set("k", "text/plain", b"v2", &[]);
    // delta 0: never early.
    set_delta("k", "x", "0").await?;
    for _ in 0..3 {
        let r = get(p, "/v1/cache/shop/x/k").await?;
        assert_eq!(r.text, "v1");
        assert!(cache_status(&r).starts_with("patternd; hit; ttl="), "{r:?}");
    }
    assert_eq!(origin.gets("k"), 1);
    no_lease("k", "x").await?;
    // A huge delta: this read refreshes in the background, and serves the value it has.
    set_delta("k", "x", HUGE).await?;
    let r = get(p, "/v1/cache/shop/x/k").await?;
    assert_eq!(r.text, "v1");
    assert!(cache_status(&r).starts_with("patternd; hit; ttl="), "{r:?}");
    eventually(
        Duration::from_secs(30),
        "the early refresh to store v2",
        || async { Ok((get(p, "/v1/cache/shop/x/k").await?.text == "v2").then_some(())) },
    )
    .await?;
    let m = p.get("/metrics").await?.text;
    ensure!(
        metric_value(
            &m,
            "patternd_cache_requests_total",
            &[("rule", "x"), ("result", "refresh")]
        ) >= Some(1.0),
        "no refresh counted"
    );

    // A negative entry never refreshes early.
    let r = get(p, "/v1/cache/shop/x/gone").await?;
    r.assert_problem(404);
    set_delta("gone", "x", HUGE).await?;
    origin.set("gone", "text/plain", b"here", &[]);
    for _ in 0..3 {
        let r = get(p, "/v1/cache/shop/x/gone").await?;
        r.assert_problem(404);
        assert!(cache_status(&r).starts_with("patternd; hit; ttl="), "{r:?}");
    }
    assert_eq!(origin.gets("gone"), 1);
    no_lease("gone", "x").await?;

    // Without an origin nothing refreshes: a PUT value with a huge delta stays a plain hit.
    let r = p
        .put_with(
            "/v1/cache/shop/local/k",
            "mine",
            &[("content-type", "text/plain")],
        )
        .await?;
    ensure!(r.status < 300, "{r:?}");
    set_delta("k", "local", HUGE).await?;
    for _ in 0..3 {
        let r = get(p, "/v1/cache/shop/local/k").await?;
        assert_eq!((r.status, r.text.as_str()), (200, "mine"));
        assert!(cache_status(&r).starts_with("patternd; hit; ttl="), "{r:?}");
    }
    no_lease("k", "local").await?;
    Ok(())
}

on_every_backend!(xfetch_refreshes_early_by_the_values_delta_only_with_an_origin);
