//! The cache to the letter of the HTTP standards, end to end (real origin, real Redis, the real
//! binary): fills that raced a DELETE or a tag invalidation store nothing; ETags and
//! conditional requests (RFC 9110 §13); freshness from the origin's Cache-Control (RFC 9111)
//! with `ttl_from_origin`. Deterministic: a slow origin reads the item when a GET arrives and
//! answers later, and the racing step is sent once the origin has the GET. Counts and
//! states, never timings. Every test runs on a standalone Redis and on a three-primary cluster.

use std::time::Duration;

use anyhow::Result;
use patternd_e2e::cache_keys;
use patternd_e2e::origin::Origin;
use patternd_e2e::{Backend, Patternd, Reply, World, cache_status, eventually, on_every_backend};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// Waits until the origin has received `n` GETs of `id`.
async fn origin_has_gets(origin: &Origin, id: &str, n: u64) -> Result<()> {
    eventually(WAIT, "the fill's GET at the origin", || async {
        Ok((origin.gets(id) >= n).then_some(()))
    })
    .await
}

/// The content type of the PATCHes here.
const JSON: (&str, &str) = ("content-type", "application/json");

const SLOW: &str = "app: h
rules:
  r:
    cache:
      origin: ORIGIN
      ttl: 1h
      origin_timeout: 10s
";

// ---- Item 4: a fill in flight never undoes a DELETE or a tag invalidation ----------------

/// GET misses and fills slowly; meanwhile the origin changes and the tag is invalidated.
/// The fill began before the invalidation: it may answer the old body, but must not store it
/// (before: it stored it with the tag versions of its store, fresh for the full TTL). Both a
/// tag that no stored value carried yet (its version key did not exist) and one that did.
async fn a_fill_in_flight_does_not_undo_a_tag_invalidation(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("known", "text/plain", b"k1", &["t"]);
    origin.set("a", "text/plain", b"old", &["t"]);
    origin.set("b", "text/plain", b"old", &["fresh-tag"]);
    let w = World::with_origin_on(b, SLOW, &origin, &[]).await?;
    let p = &w.patternd;
    // `t` has a version key: a value carrying it is stored.
    let r = p.get("/v1/cache/h/r/known").await?;
    assert!(cache_status(&r).contains("stored"), "{r:?}");

    origin.set_get_delay(Duration::from_secs(3));
    for (id, tag) in [("a", "t"), ("b", "fresh-tag")] {
        let before = origin.gets(id);
        let path = format!("/v1/cache/h/r/{id}");
        let (g, inv) = tokio::join!(p.get(&path), async {
            origin_has_gets(&origin, id, before + 1).await?;
            origin.set(id, "text/plain", b"new", &[tag]);
            p.post_json("/v1/cache/h/r/_invalidate", &json!({ "tags": [tag] }))
                .await
        });
        let (g, inv) = (g?, inv?);
        assert_eq!(inv.status, 200, "{inv:?}");
        assert_eq!((g.status, g.text.as_str()), (200, "old"), "{g:?}");
        let cs = cache_status(&g);
        assert!(
            cs.starts_with("patternd; fwd=miss") && !cs.contains("stored"),
            "{id}: the fill raced the invalidation and must not be stored: {cs}"
        );
    }
    origin.set_get_delay(Duration::ZERO);
    for id in ["a", "b"] {
        let g = p.get(&format!("/v1/cache/h/r/{id}")).await?;
        assert_eq!((g.status, g.text.as_str()), (200, "new"), "{g:?}");
        assert!(cache_status(&g).contains("stored"), "{g:?}");
        let g = p.get(&format!("/v1/cache/h/r/{id}")).await?;
        assert_eq!((g.status, g.text.as_str()), (200, "new"), "{g:?}");
        assert!(cache_status(&g).starts_with("patternd; hit"), "{g:?}");
    }
    Ok(())
}

on_every_backend!(a_fill_in_flight_does_not_undo_a_tag_invalidation);

/// The origin's `a` changes from `old` to `new`, and `a` is DELETEd, while a GET's fill of it
/// is at the (slow) origin: the GET may answer `old` but must not store it, so the next read
/// fills `new`.
async fn delete_during_a_fill(p: &Patternd, origin: &Origin) -> Result<()> {
    origin.set_get_delay(Duration::from_secs(3));
    let (g, d) = tokio::join!(p.get("/v1/cache/h/r/a"), async {
        origin_has_gets(origin, "a", 1).await?;
        origin.set("a", "text/plain", b"new", &[]);
        p.delete("/v1/cache/h/r/a").await
    });
    let (g, d) = (g?, d?);
    assert_eq!(d.status, 200, "{d:?}");
    assert_eq!((g.status, g.text.as_str()), (200, "old"), "{g:?}");
    assert!(!cache_status(&g).contains("stored"), "{g:?}");

    origin.set_get_delay(Duration::ZERO);
    let g = p.get("/v1/cache/h/r/a").await?;
    assert_eq!((g.status, g.text.as_str()), (200, "new"), "{g:?}");
    Ok(())
}

/// GET misses and fills slowly (holding the refresh lease); meanwhile the id is DELETEd. The
/// fill must not store the answer it got before the DELETE (before: the DELETE dropped the
/// lease, and a fill finding no lease and no value stored).
async fn a_fill_in_flight_does_not_undo_a_delete(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("a", "text/plain", b"old", &[]);
    let w = World::with_origin_on(b, SLOW, &origin, &[]).await?;
    let p = &w.patternd;

    delete_during_a_fill(p, &origin).await?;
    assert_eq!(origin.gets("a"), 2);
    Ok(())
}

on_every_backend!(a_fill_in_flight_does_not_undo_a_delete);

/// The same for a fill without the lease: a caller that waited out `fill_wait` behind a lease
/// someone else holds (here: a filler that died, its lease set in Redis) fetches itself; a
/// DELETE while it is at the origin must stop its store too.
async fn a_fill_without_the_lease_does_not_undo_a_delete(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("a", "text/plain", b"old", &[]);
    let policy = "app: h
rules:
  r:
    cache:
      origin: ORIGIN
      ttl: 1h
      origin_timeout: 10s
      fill_wait: 100ms
";
    let w = World::with_origin_on(b, policy, &origin, &[]).await?;
    let p = &w.patternd;
    let lease = cache_keys::key("h", "r", "a", "lease");
    let mut c = w.redis.conn_for_key(&lease).await?;
    let _: () = redis::cmd("SET")
        .arg(&lease)
        .arg("a-filler-that-died")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut c)
        .await?;

    delete_during_a_fill(p, &origin).await?;
    Ok(())
}

on_every_backend!(a_fill_without_the_lease_does_not_undo_a_delete);

// ---- Item 14: ETags and conditional requests ---------------------------------------------

fn etag(r: &Reply) -> String {
    let e = r.header("etag").unwrap_or_default().to_string();
    assert!(
        e.len() > 2 && e.starts_with('"') && e.ends_with('"') && !e.starts_with("W/"),
        "a strong ETag: {r:?}"
    );
    e
}

const WRITES: &str = "app: h
rules:
  s:
    cache:
      origin: ORIGIN
      ttl: 1h
  j:
    cache:
      ttl: 1h
      format: hash
  t:
    cache:
      origin: ORIGIN
      ttl: 1h
      write: through
  b:
    cache:
      origin: ORIGIN
      ttl: 1h
      write: behind
";

/// GETs carry a strong ETag that changes with the value; `If-None-Match` answers 304 (weak
/// comparison, lists, `*`) with the ETag and Cache-Status and no body; `If-Match` that does not
/// match answers 412.
async fn gets_carry_etags_and_answer_304(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("a", "text/plain", b"v1", &[]);
    let w = World::with_origin_on(b, WRITES, &origin, &[]).await?;
    let p = &w.patternd;
    let path = "/v1/cache/h/s/a";

    let miss = p.get(path).await?;
    assert!(cache_status(&miss).contains("stored"), "{miss:?}");
    let e1 = etag(&miss);
    let hit = p.get(path).await?;
    assert_eq!(
        etag(&hit),
        e1,
        "the stored value's ETag, also on the miss that stored it"
    );

    for inm in [
        e1.clone(),
        format!("W/{e1}"),
        format!("\"nope\", {e1}"),
        "*".to_string(),
    ] {
        let r = p.get_with(path, &[("if-none-match", &inm)]).await?;
        assert_eq!(r.status, 304, "{inm}: {r:?}");
        assert_eq!(r.text, "", "no body");
        assert_eq!(r.header("etag"), Some(e1.as_str()));
        assert!(cache_status(&r).starts_with("patternd; hit"), "{r:?}");
    }
    let r = p.get_with(path, &[("if-none-match", "\"1\"")]).await?;
    assert_eq!((r.status, r.text.as_str()), (200, "v1"), "{r:?}");

    let r = p.get_with(path, &[("if-match", &e1)]).await?;
    assert_eq!(r.status, 200, "{r:?}");
    let r = p
        .get_with(path, &[("if-match", &format!("W/{e1}"))])
        .await?;
    r.assert_problem(412);
    p.get_with(path, &[("if-match", "nope")])
        .await?
        .assert_problem(400);
    // A 404 stays a 404: preconditions apply only to what would be a 2xx.
    p.get_with("/v1/cache/h/s/none", &[("if-match", &e1)])
        .await?
        .assert_problem(404);

    // A new value, a new ETag; a DELETE and the same value again: still a new ETag.
    origin.set("a", "text/plain", b"v2", &[]);
    p.delete(path).await?;
    let e2 = etag(&p.get(path).await?);
    assert_ne!(e2, e1);
    let r = p.get_with(path, &[("if-none-match", &e1)]).await?;
    assert_eq!((r.status, r.text.as_str()), (200, "v2"), "{r:?}");
    p.delete(path).await?;
    let e3 = etag(&p.get(path).await?);
    assert_ne!(
        e3, e2,
        "a value deleted and stored again never repeats an ETag"
    );
    Ok(())
}

on_every_backend!(gets_carry_etags_and_answer_304);

/// PUT and PATCH honour If-Match (412 when the value changed meanwhile, nothing written) and
/// If-None-Match: * (create only), checked in the write's own script, for every write mode.
async fn writes_honour_if_match(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    let w = World::with_origin_on(b, WRITES, &origin, &[]).await?;
    let p = &w.patternd;

    // write: cache, format: string.
    let path = "/v1/cache/h/s/x";
    p.put_with(path, "v0", &[("if-match", "*")])
        .await?
        .assert_problem(412);
    let r = p.put_with(path, "v1", &[("if-none-match", "*")]).await?;
    assert_eq!(r.status, 204, "{r:?}");
    let e1 = etag(&r);
    assert_eq!(
        etag(&p.get(path).await?),
        e1,
        "the PUT's ETag is the value's"
    );
    p.put_with(path, "again", &[("if-none-match", "*")])
        .await?
        .assert_problem(412);
    let r = p.put_with(path, "v2", &[("if-match", &e1)]).await?;
    assert_eq!(r.status, 204, "{r:?}");
    let e2 = etag(&r);
    assert_ne!(e2, e1);
    // A writer still holding e1 lost the race: 412, and the value is v2.
    let lost = p.put_with(path, "v3", &[("if-match", &e1)]).await?;
    lost.assert_problem(412);
    assert_eq!(p.get(path).await?.text, "v2");
    // Weak tags never match If-Match (strong comparison).
    p.put_with(path, "v3", &[("if-match", &format!("W/{e2}"))])
        .await?
        .assert_problem(412);
    p.put_with(path, "v3", &[("if-match", &format!("\"0\", {e2}"))])
        .await?;
    assert_eq!(p.get(path).await?.text, "v3");

    // format: hash: PATCH with If-Match; the PUT carries no ETag (the object is re-encoded).
    let path = "/v1/cache/h/j/o";
    let r = p.put_with(path, r#"{"a": 1}"#, &[]).await?;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.header("etag"), None, "{r:?}");
    let e1 = etag(&p.get(path).await?);
    let r = p
        .patch_with(path, r#"{"b": 2}"#, &[JSON, ("if-match", &e1)])
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let e2 = etag(&r);
    assert_eq!(etag(&p.get(path).await?), e2);
    p.patch_with(path, r#"{"c": 3}"#, &[JSON, ("if-match", &e1)])
        .await?
        .assert_problem(412);
    let g = p.get(path).await?;
    assert_eq!(g.json, json!({"a": 1, "b": 2}), "{g:?}");
    // An absent value stays a 404 (the PATCH would be one anyway).
    p.patch_with(
        "/v1/cache/h/j/none",
        r#"{"c": 3}"#,
        &[JSON, ("if-match", &e1)],
    )
    .await?
    .assert_problem(404);

    // write: through: a failed precondition never reaches the origin.
    let path = "/v1/cache/h/t/y";
    let r = p.put_with(path, "t1", &[]).await?;
    assert_eq!(r.status, 204, "{r:?}");
    let e1 = etag(&r);
    assert_eq!(origin.hits("PUT", "y"), 1);
    p.put_with(path, "t2", &[("if-match", "\"1\"")])
        .await?
        .assert_problem(412);
    assert_eq!(origin.hits("PUT", "y"), 1, "the origin was not written");
    let r = p.put_with(path, "t2", &[("if-match", &e1)]).await?;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(origin.hits("PUT", "y"), 2);
    assert_eq!(p.get(path).await?.text, "t2");

    // write: behind: a failed precondition journals nothing.
    let path = "/v1/cache/h/b/z";
    let r = p.put_with(path, "b1", &[]).await?;
    assert_eq!(r.status, 202, "{r:?}");
    let e1 = etag(&r);
    p.put_with(path, "refused", &[("if-match", "\"1\"")])
        .await?
        .assert_problem(412);
    let r = p.put_with(path, "b2", &[("if-match", &e1)]).await?;
    assert_eq!(r.status, 202, "{r:?}");
    let delivered = eventually(WAIT, "the accepted writes delivered", || async {
        let bodies: Vec<Vec<u8>> = origin
            .writes()
            .into_iter()
            .filter(|w| w.id == "z")
            .map(|w| w.body)
            .collect();
        Ok((bodies.last().map(Vec::as_slice) == Some(&b"b2"[..])).then_some(bodies))
    })
    .await?;
    assert!(
        !delivered.contains(&b"refused".to_vec()),
        "a refused write was journaled: {delivered:?}"
    );

    // Malformed conditions are a 400, not ignored.
    p.put_with("/v1/cache/h/s/x", "v", &[("if-match", "\"1\" \"2\"")])
        .await?
        .assert_problem(400);
    Ok(())
}

on_every_backend!(writes_honour_if_match);

// ---- Item 15: the origin's Cache-Control -------------------------------------------------

fn ttl_of(r: &Reply) -> i64 {
    let cs = cache_status(r);
    cs.split("; ")
        .find_map(|p| p.strip_prefix("ttl="))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {cs:?}"))
}

const FROM_ORIGIN: &str = "app: h
rules:
  o:
    cache:
      origin: ORIGIN
      ttl: 1h
      stale_while_revalidate: 1h
      negative_ttl: 1h
      ttl_from_origin: true
  plain:
    cache:
      origin: ORIGIN
      ttl: 1h
";

/// With `ttl_from_origin`, `max-age`/`s-maxage` (minus `Age`) set the freshness within the
/// rule's ttl; `no-store`, `private` and `no-cache` answers are served but not stored (with
/// a Cache-Status detail, and later callers go to the origin without queueing); without the
/// option the same answers are cached for the rule's ttl.
async fn ttl_from_origin_follows_cache_control(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    for (id, cc, age) in [
        ("ma", "max-age=30", None),
        ("sm", "max-age=3000, s-maxage=20", None),
        ("cap", "max-age=99999999", None),
        ("aged", "max-age=100", Some("90")),
        ("ns", "no-store", None),
        ("pv", "private, max-age=60", None),
        ("nc", "no-cache", None),
        ("zero", "max-age=0, must-revalidate", None),
    ] {
        origin.set(id, "text/plain", id.as_bytes(), &[]);
        let mut h = vec![("cache-control", cc)];
        if let Some(a) = age {
            h.push(("age", a));
        }
        origin.set_headers(id, &h);
    }
    let w = World::with_origin_on(b, FROM_ORIGIN, &origin, &[]).await?;
    let p = &w.patternd;

    for (id, lo, hi) in [
        ("ma", 25, 30),
        ("sm", 15, 20),
        ("cap", 3500, 3600),
        ("aged", 5, 10),
    ] {
        let r = p.get(&format!("/v1/cache/h/o/{id}")).await?;
        assert!(cache_status(&r).contains("stored"), "{r:?}");
        let hit = p.get(&format!("/v1/cache/h/o/{id}")).await?;
        assert!(cache_status(&hit).starts_with("patternd; hit"), "{hit:?}");
        let ttl = ttl_of(&hit);
        assert!(
            (lo..hi).contains(&ttl),
            "{id}: ttl {ttl} not in {lo}..{hi}: {hit:?}"
        );
        // The rule without the option ignores the origin's Cache-Control.
        p.get(&format!("/v1/cache/h/plain/{id}")).await?;
        let plain = p.get(&format!("/v1/cache/h/plain/{id}")).await?;
        assert!(ttl_of(&plain) > 3500, "{plain:?}");
    }

    for (id, detail) in [
        ("ns", "no-store"),
        ("pv", "private"),
        ("nc", "no-cache"),
        ("zero", "stale"),
    ] {
        for n in 1..=3 {
            let r = p.get(&format!("/v1/cache/h/o/{id}")).await?;
            assert_eq!((r.status, r.text.as_str()), (200, id), "{r:?}");
            assert_eq!(
                cache_status(&r),
                format!("patternd; fwd=miss; fwd-status=200; detail={detail}"),
                "{r:?}"
            );
            assert_eq!(r.header("etag"), None, "not stored, no ETag");
            assert_eq!(origin.gets(id), n, "{id}: every GET asks the origin");
        }
        let key = cache_keys::key("h", "o", id, "v");
        let mut c = w.redis.conn_for_key(&key).await?;
        let exists: u64 = redis::cmd("EXISTS").arg(&key).query_async(&mut c).await?;
        assert_eq!(exists, 0, "{id} is not stored");
        // Stored by the rule that ignores Cache-Control.
        let before = origin.gets(id);
        p.get(&format!("/v1/cache/h/plain/{id}")).await?;
        let r = p.get(&format!("/v1/cache/h/plain/{id}")).await?;
        assert!(cache_status(&r).starts_with("patternd; hit"), "{r:?}");
        assert_eq!(origin.gets(id), before + 1);
    }

    // An answer that becomes cacheable is stored again (the pass marker does not stick).
    origin.set_headers("ns", &[("cache-control", "max-age=60")]);
    let r = p.get("/v1/cache/h/o/ns").await?;
    assert!(cache_status(&r).contains("stored"), "{r:?}");
    let r = p.get("/v1/cache/h/o/ns").await?;
    assert!(cache_status(&r).starts_with("patternd; hit"), "{r:?}");

    // A 404 with max-age is cached within negative_ttl.
    origin.set_headers("gone", &[("cache-control", "max-age=40")]);
    p.get("/v1/cache/h/o/gone").await?.assert_problem(404);
    let r = p.get("/v1/cache/h/o/gone").await?;
    r.assert_problem(404);
    let ttl = ttl_of(&r);
    assert!((35..40).contains(&ttl), "{r:?}");
    Ok(())
}

on_every_backend!(ttl_from_origin_follows_cache_control);

/// The stale windows: the rule's apply when the origin says nothing; the origin's own
/// `stale-while-revalidate=0`, or `must-revalidate`, withdraw the rule's (the value is refetched
/// once stale, never served stale).
async fn stale_windows_from_the_origin(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    for (id, cc) in [
        ("dflt", "max-age=1"),
        ("swr0", "max-age=1, stale-while-revalidate=0"),
        ("mr", "max-age=1, must-revalidate"),
    ] {
        origin.set(id, "text/plain", b"v1", &[]);
        origin.set_headers(id, &[("cache-control", cc)]);
    }
    let w = World::with_origin_on(b, FROM_ORIGIN, &origin, &[]).await?;
    let p = &w.patternd;
    for id in ["dflt", "swr0", "mr"] {
        let r = p.get(&format!("/v1/cache/h/o/{id}")).await?;
        assert!(cache_status(&r).contains("stored"), "{r:?}");
        origin.set(id, "text/plain", b"v2", &[]);
    }
    // The rule's stale_while_revalidate (1h): served stale once the second is over.
    eventually(WAIT, "dflt served stale", || async {
        let r = p.get("/v1/cache/h/o/dflt").await?;
        Ok(cache_status(&r)
            .contains("detail=stale-while-revalidate")
            .then_some(()))
    })
    .await?;
    for id in ["swr0", "mr"] {
        eventually(WAIT, "refetched once stale", || async {
            let r = p.get(&format!("/v1/cache/h/o/{id}")).await?;
            assert_eq!(r.status, 200, "{r:?}");
            assert!(
                !cache_status(&r).contains("detail=stale"),
                "{id} served stale although the origin withdrew it: {r:?}"
            );
            Ok((r.text == "v2").then_some(()))
        })
        .await?;
    }
    Ok(())
}

on_every_backend!(stale_windows_from_the_origin);

/// A value as a build before the packed meta (`m`, lua/cache/meta.lua) stored it: every meta
/// field a member of its own, numbers as text. Fresh for an hour.
async fn store_earlier_layout(
    w: &World,
    rule: &str,
    id: &str,
    tags: &str,
    ver: &str,
    content: &[(&str, &str)],
) -> Result<()> {
    let key = cache_keys::key("h", rule, id, "v");
    let mut conn = w.redis.conn_for_key(&key).await?;
    let now = patternd_e2e::redis_now_ms(&mut conn).await?;
    let mut cmd = redis::cmd("HSET");
    cmd.arg(&key)
        .arg("st")
        .arg("200")
        .arg("fresh")
        .arg(format!("{:.3}", now + 3_600_000.0))
        .arg("delta")
        .arg("0")
        .arg("tags")
        .arg(tags)
        .arg("tv")
        .arg(format!("{:.0}", now * 1000.0))
        .arg("ver")
        .arg(ver);
    for (name, value) in content {
        cmd.arg(*name).arg(*value);
    }
    let () = cmd.query_async(&mut conn).await?;
    let () = redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(3_600_000)
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// The value's members: (name, value) sorted by name.
async fn members(w: &World, rule: &str, id: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let key = cache_keys::key("h", rule, id, "v");
    let mut conn = w.redis.conn_for_key(&key).await?;
    let mut all: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut conn)
        .await?;
    all.sort();
    Ok(all)
}

/// An upgrade keeps the cache: values stored before the meta was packed into one member are
/// served as hits with their ETags (the hit batch, on a standalone Redis, leaves them to the
/// read script), checked by a write's precondition and by a tag invalidation, and
/// replaced by the packed layout at the id's next store, with no member of the old left.
async fn values_of_the_earlier_layout_are_read_and_replaced(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("old", "text/plain", b"from the origin", &[]);
    origin.set("tagged", "text/plain", b"from the origin", &[]);
    let w = World::with_origin_on(b, WRITES, &origin, &[]).await?;
    let p = &w.patternd;
    store_earlier_layout(
        &w,
        "s",
        "old",
        "",
        "12345",
        &[("ct", "text/plain"), ("b", "legacy")],
    )
    .await?;
    store_earlier_layout(
        &w,
        "s",
        "tagged",
        "tg",
        "7",
        &[("ct", "text/plain"), ("b", "legacy")],
    )
    .await?;
    store_earlier_layout(
        &w,
        "j",
        "o",
        "",
        "77",
        &[("ct", "application/json"), ("f:a", "1"), ("f:b", "\"x\"")],
    )
    .await?;

    // Hits, concurrently (on a standalone Redis, in batches), with the stored version.
    let replies = patternd_e2e::burst(16, |_| {
        patternd_e2e::get_cache_status(p.client().clone(), p.url("/v1/cache/h/s/old"))
    })
    .await?;
    for (status, cs, body) in replies {
        assert_eq!((status, body.as_str()), (200, "legacy"), "{cs}");
        assert!(cs.starts_with("patternd; hit; ttl="), "{cs}");
    }
    let r = p.get("/v1/cache/h/s/old").await?;
    assert_eq!(r.header("etag"), Some("\"12345\""), "{r:?}");
    let r = p.get("/v1/cache/h/s/tagged").await?;
    assert_eq!((r.status, r.text.as_str()), (200, "legacy"), "{r:?}");
    let r = p.get("/v1/cache/h/j/o").await?;
    assert_eq!(r.json, json!({"a": 1, "b": "x"}), "{r:?}");
    assert_eq!(r.header("etag"), Some("\"77\""), "{r:?}");
    assert_eq!(origin.gets("old") + origin.gets("tagged"), 0);

    // A precondition compares with the old layout's version; the write packs the meta.
    p.put_with("/v1/cache/h/s/old", "v2", &[("if-match", "\"1\"")])
        .await?
        .assert_problem(412);
    let r = p
        .put_with(
            "/v1/cache/h/s/old",
            "v2",
            &[("if-match", "\"12345\""), ("content-type", "text/plain")],
        )
        .await?;
    assert_eq!(r.status, 204, "{r:?}");
    let names: Vec<String> = members(&w, "s", "old")
        .await?
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(names, ["b", "m"], "only the packed layout is left");
    let all = members(&w, "s", "old").await?;
    let meta = cache_keys::Meta::parse(&all[1].1)?;
    assert_eq!(
        (meta.st.as_str(), meta.ct.as_str(), meta.tags.as_str()),
        ("200", "text/plain", "")
    );
    assert!(meta.ver.parse::<u64>()? > 12345, "{meta:?}");
    assert_eq!(
        etag(&p.get("/v1/cache/h/s/old").await?),
        format!("\"{}\"", meta.ver)
    );

    let r = p
        .patch_with(
            "/v1/cache/h/j/o",
            r#"{"c": 2}"#,
            &[JSON, ("if-match", "\"77\"")],
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let g = p.get("/v1/cache/h/j/o").await?;
    assert_eq!(g.json, json!({"a": 1, "b": "x", "c": 2}), "{g:?}");
    let names: Vec<String> = members(&w, "j", "o")
        .await?
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(names, ["f:a", "f:b", "f:c", "m"]);

    // The old layout's tags count: an invalidation makes it a miss.
    let r = p
        .post_json("/v1/cache/h/s/_invalidate", &json!({ "tags": ["tg"] }))
        .await?;
    assert!(r.status < 300, "{r:?}");
    let r = p.get("/v1/cache/h/s/tagged").await?;
    assert_eq!(
        (r.status, r.text.as_str()),
        (200, "from the origin"),
        "{r:?}"
    );
    assert!(cache_status(&r).contains("stored"), "{r:?}");
    Ok(())
}

on_every_backend!(values_of_the_earlier_layout_are_read_and_replaced);
