//! Cache writes end to end: PUT/PATCH with `write: cache | through | behind` against a real
//! origin HTTP server (tests/src/origin.rs) and a real Redis, including an origin that refuses,
//! is slow or is down, the dead letters, and an engine killed with SIGKILL in the middle of a
//! flush. Counts, never timings: waits are generous `eventually`s. Every test runs on a
//! standalone Redis and on a three-primary cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use patternd_e2e::cache_keys;
use patternd_e2e::origin::Origin;
use patternd_e2e::{
    Backend, Patternd, PluginWorld, Reply, World, eventually, lua_plugins, metric_value,
    on_every_backend,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn value_key(rule: &str, id: &str) -> String {
    cache_keys::key("w", rule, id, "v")
}

/// The journal `id`'s writes go to (the one of its slot group).
fn journal_of(rule: &str, id: &str) -> String {
    cache_keys::journal_of("w", rule, id)
}

/// Every slot group's journal of `rule` (default `slot_groups`).
fn journals(rule: &str) -> Vec<String> {
    (0..cache_keys::DEFAULT_GROUPS)
        .map(|g| cache_keys::group_key("w", rule, g, "journal"))
        .collect()
}

/// Undelivered writes of `rule`, over all its slot groups.
async fn journal_len(w: &World, rule: &str) -> Result<u64> {
    let mut n = 0;
    for j in journals(rule) {
        n += xlen(w, &j).await?;
    }
    Ok(n)
}

async fn put(
    p: &Patternd,
    rule: &str,
    id: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Result<Reply> {
    p.put_with(&format!("/v1/cache/w/{rule}/{id}"), body, headers)
        .await
}

async fn patch(
    p: &Patternd,
    rule: &str,
    id: &str,
    body: &str,
    content_type: &str,
) -> Result<Reply> {
    p.patch_with(
        &format!("/v1/cache/w/{rule}/{id}"),
        body,
        &[("content-type", content_type)],
    )
    .await
}

async fn hget(w: &World, key: &str, field: &str) -> Result<Option<Vec<u8>>> {
    let mut c = w.redis.conn_for_key(key).await?;
    Ok(redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(&mut c)
        .await?)
}

/// The value's packed meta (`cache_keys::Meta`).
async fn meta(w: &World, key: &str) -> Result<cache_keys::Meta> {
    let m = hget(w, key, "m")
        .await?
        .with_context(|| format!("no meta in {key}"))?;
    cache_keys::Meta::parse(&m)
}

async fn xlen(w: &World, key: &str) -> Result<u64> {
    let mut c = w.redis.conn_for_key(key).await?;
    Ok(redis::cmd("XLEN").arg(key).query_async(&mut c).await?)
}

async fn exists(w: &World, key: &str) -> Result<bool> {
    let mut c = w.redis.conn_for_key(key).await?;
    let n: u64 = redis::cmd("EXISTS").arg(key).query_async(&mut c).await?;
    Ok(n == 1)
}

/// The origin's current body of `id`, as text.
fn origin_body(origin: &Origin, id: &str) -> Option<String> {
    origin
        .item(id)
        .map(|i| String::from_utf8_lossy(&i.body).into_owned())
}

/// Waits until the origin has `body` for `id` (write-behind delivers in the background).
async fn until_delivered(origin: &Origin, id: &str, body: &str) -> Result<()> {
    let what = format!("{body:?} delivered to the origin's {id}");
    eventually(WAIT, &what, || async {
        Ok(origin_body(origin, id).filter(|b| b == body).map(drop))
    })
    .await
}

/// Waits until the origin has an object equal to `want` for `id` (a PATCH reaches it whole).
async fn until_delivered_json(origin: &Origin, id: &str, want: Value) -> Result<()> {
    let what = format!("{want} delivered to the origin's {id}");
    eventually(WAIT, &what, || async {
        Ok(origin
            .item(id)
            .and_then(|i| serde_json::from_slice::<Value>(&i.body).ok())
            .filter(|v| *v == want)
            .map(drop))
    })
    .await
}

/// PUTs `new` to `b/k` while the origin refuses writes, and waits for the first refused
/// delivery: the write is acknowledged, cached and stays in the journal.
async fn put_while_refused(p: &Patternd, origin: &Origin) -> Result<()> {
    origin.fail_writes_with(Some(503));
    let r = put(p, "b", "k", b"new", &[("content-type", "text/plain")]).await?;
    assert_eq!(r.status, 202, "{r:?}");
    eventually(WAIT, "a refused delivery attempt", || async {
        Ok((origin.hits("PUT", "k") >= 1).then_some(()))
    })
    .await
}

/// The origin accepts writes again: waits until the pending `new` of `b/k` is delivered and
/// the journal is empty.
async fn accept_and_deliver(w: &World, origin: &Origin) -> Result<()> {
    origin.fail_writes_with(None);
    until_delivered(origin, "k", "new").await?;
    until_journal_drained(w).await
}

/// GETs `b/k`, which must answer the written `new`.
async fn reads_new(p: &Patternd) -> Result<Reply> {
    let g = p.get("/v1/cache/w/b/k").await?;
    assert_eq!((g.status, g.text.as_str()), (200, "new"), "{g:?}");
    Ok(g)
}

/// Waits until rule `b`'s journal is empty: every entry delivered, or settled otherwise.
async fn until_journal_drained(w: &World) -> Result<()> {
    eventually(WAIT, "rule b's journal to be empty", || async {
        Ok((journal_len(w, "b").await? == 0).then_some(()))
    })
    .await
}

/// Waits until rule `b` has `n` dead letters.
async fn until_dead_letters(p: &Patternd, n: u64) -> Result<()> {
    eventually(WAIT, &format!("{n} dead letter(s)"), || async {
        Ok((dead_letters(p, "").await?.json["total"] == json!(n)).then_some(()))
    })
    .await
}

async fn write_through_stores_only_what_the_origin_accepted(b: Backend) -> Result<()> {
    let mut origin = Origin::start().await?;
    let policy = format!(
        "app: w\nrules:\n  t:\n    cache:\n      origin: {}\n      ttl: 1h\n      write: through\n      origin_timeout: 500ms\n",
        origin.template()
    );
    let w = World::on(b, &[("w.yaml", &policy)], &[]).await?;
    let p = &w.patternd;

    let r = put(p, "t", "a", b"v1", &[("content-type", "text/plain")]).await?;
    assert_eq!(r.status, 204, "{r:?}");
    let item = origin.item("a").context("the origin got no write")?;
    assert_eq!(item.body, b"v1");
    assert_eq!(item.content_type, "text/plain");
    assert_eq!(
        hget(&w, &value_key("t", "a"), "b").await?.as_deref(),
        Some(&b"v1"[..])
    );
    let g = p.get("/v1/cache/w/t/a").await?;
    assert_eq!((g.status, g.text.as_str()), (200, "v1"), "{g:?}");
    assert!(g.content_type().starts_with("text/plain"), "{g:?}");

    // The origin refuses: 502, and neither the cache nor the origin changed.
    origin.fail_writes_with(Some(500));
    put(p, "t", "a", b"v2", &[]).await?.assert_problem(502);
    assert_eq!(
        hget(&w, &value_key("t", "a"), "b").await?.as_deref(),
        Some(&b"v1"[..])
    );
    assert_eq!(origin_body(&origin, "a").as_deref(), Some("v1"));
    // A refused first write of an id stores nothing at all.
    put(p, "t", "fresh", b"x", &[]).await?.assert_problem(502);
    assert!(!exists(&w, &value_key("t", "fresh")).await?);
    origin.fail_writes_with(None);

    // The origin is slower than origin_timeout: 504. It may still apply the write, so the
    // cached value is dropped rather than served as if the write had not happened, and the
    // next read asks the origin.
    origin.set_delay(Duration::from_secs(3));
    let r = put(p, "t", "a", b"v3", &[]).await?;
    r.assert_problem(504);
    assert!(r.detail().contains("dropped"), "{r:?}");
    assert_eq!(hget(&w, &value_key("t", "a"), "b").await?, None);
    origin.set_delay(Duration::ZERO);
    let g = p.get("/v1/cache/w/t/a").await?;
    assert_eq!(g.status, 200, "{g:?}");
    assert!(["v1", "v3"].contains(&g.text.as_str()), "{g:?}");
    assert!(
        g.header("cache-status").unwrap_or("").contains("fwd=miss"),
        "{g:?}"
    );
    let cached = g.text.clone().into_bytes();

    // The origin is down (connections refused: the write never left): 502, cache unchanged.
    origin.stop().await;
    let r = put(p, "t", "a", b"v4", &[]).await?;
    r.assert_problem(502);
    assert!(r.detail().contains("the cache was not changed"), "{r:?}");
    assert_eq!(
        hget(&w, &value_key("t", "a"), "b").await?.as_deref(),
        Some(&cached[..])
    );
    origin.restart().await?;

    // And once it accepts again, both change.
    let r = put(p, "t", "a", b"v5", &[]).await?;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(origin_body(&origin, "a").as_deref(), Some("v5"));
    assert_eq!(
        hget(&w, &value_key("t", "a"), "b").await?.as_deref(),
        Some(&b"v5"[..])
    );

    let m = p.get("/metrics").await?.text;
    let stored = metric_value(
        &m,
        "patternd_cache_writes_total",
        &[("rule", "t"), ("mode", "through"), ("result", "stored")],
    );
    assert_eq!(stored, Some(2.0), "{m}");
    let failed = metric_value(
        &m,
        "patternd_cache_writes_total",
        &[("rule", "t"), ("result", "origin_error")],
    );
    assert_eq!(failed, Some(3.0), "{m}");
    Ok(())
}

on_every_backend!(write_through_stores_only_what_the_origin_accepted);

fn behind_policy(origin: &Origin, extra: &str) -> String {
    format!(
        "app: w\nrules:\n  b:\n    cache:\n      origin: {}\n      ttl: 1h\n      write: behind\n      origin_timeout: 1s\n{extra}",
        origin.template()
    )
}

/// A world serving [`behind_policy`].
async fn behind_world(b: Backend, origin: &Origin, extra: &str) -> Result<World> {
    World::on(b, &[("w.yaml", &behind_policy(origin, extra))], &[]).await
}

async fn write_behind_is_acknowledged_then_delivered(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    let w = behind_world(b, &origin, "").await?;
    let p = &w.patternd;

    let r = put(
        p,
        "b",
        "k1",
        b"hello",
        &[("content-type", "text/plain"), ("cache-tag", "t1, t2")],
    )
    .await?;
    assert_eq!(r.status, 202, "{r:?}");
    assert!(
        r.json["journal_id"]
            .as_str()
            .is_some_and(|j| j.contains('-')),
        "{r:?}"
    );
    // Read-your-writes: the cache has it at once.
    let g = p.get("/v1/cache/w/b/k1").await?;
    assert_eq!((g.status, g.text.as_str()), (200, "hello"), "{g:?}");

    until_delivered(&origin, "k1", "hello").await?;
    assert_eq!(
        origin.item("k1").map(|i| i.content_type),
        Some("text/plain".to_string())
    );
    until_journal_drained(&w).await?;
    assert_eq!(origin.hits("PUT", "k1"), 1);
    let m = p.get("/metrics").await?.text;
    assert_eq!(
        metric_value(
            &m,
            "patternd_cache_flush_total",
            &[("rule", "b"), ("result", "delivered")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "patternd_cache_writes_total",
            &[("rule", "b"), ("mode", "behind"), ("result", "accepted")]
        ),
        Some(1.0),
        "{m}"
    );
    Ok(())
}

on_every_backend!(write_behind_is_acknowledged_then_delivered);

async fn write_behind_coalesces_repeated_writes_while_the_origin_is_down(b: Backend) -> Result<()> {
    let mut origin = Origin::start().await?;
    let w = behind_world(
        b,
        &origin,
        "      max_attempts: 1000\n      retry_backoff: 50ms\n",
    )
    .await?;
    let p = &w.patternd;
    origin.stop().await;

    const WRITES: usize = 40;
    for i in 1..=WRITES {
        let r = put(p, "b", "hot", format!("v{i}").as_bytes(), &[]).await?;
        assert_eq!(r.status, 202, "{r:?}");
    }
    // While the origin is down the cache already serves the newest write.
    let g = p.get("/v1/cache/w/b/hot").await?;
    assert_eq!(g.text, format!("v{WRITES}"));
    assert_eq!(origin.hits("PUT", "hot"), 0);
    // The backlog gauge sees the undelivered write(s).
    eventually(WAIT, "a backlog in the gauge", || async {
        let m = p.get("/metrics").await?.text;
        let backlog = metric_value(&m, "patternd_cache_journal_backlog", &[("rule", "b")]);
        Ok(backlog.filter(|b| *b >= 1.0))
    })
    .await?;

    origin.restart().await?;
    until_delivered(&origin, "hot", &format!("v{WRITES}")).await?;
    until_journal_drained(&w).await?;
    // Nothing older arrives after the newest, and far fewer calls than writes were needed.
    let writes = origin.writes();
    let last = writes
        .iter()
        .rev()
        .find(|wr| wr.id == "hot")
        .context("no write")?;
    assert_eq!(last.body, format!("v{WRITES}").into_bytes());
    let puts = origin.hits("PUT", "hot");
    assert!(
        puts >= 1 && puts < WRITES as u64,
        "{puts} origin PUTs for {WRITES} writes"
    );
    let m = p.get("/metrics").await?.text;
    let coalesced = metric_value(
        &m,
        "patternd_cache_flush_total",
        &[("rule", "b"), ("result", "coalesced")],
    )
    .unwrap_or(0.0);
    assert!(coalesced >= 1.0, "{m}");
    Ok(())
}

on_every_backend!(write_behind_coalesces_repeated_writes_while_the_origin_is_down);

async fn replay(p: &Patternd, body: Value) -> Result<Reply> {
    p.post_json("/admin/cache/w/b/dead-letters/replay", &body)
        .await
}

async fn dead_letters(p: &Patternd, query: &str) -> Result<Reply> {
    p.get(&format!("/admin/cache/w/b/dead-letters{query}"))
        .await
}

async fn failing_origin_fills_the_dead_letters_which_replay_delivers(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    let policy = format!(
        "{}  c:\n    cache:\n      ttl: 1h\n",
        behind_policy(
            &origin,
            "      max_attempts: 3\n      retry_backoff: 50ms\n"
        )
    );
    let w = World::on(b, &[("w.yaml", &policy)], &[]).await?;
    let p = &w.patternd;
    origin.fail_writes_with(Some(503));

    for id in ["d1", "d2"] {
        assert_eq!(put(p, "b", id, id.as_bytes(), &[]).await?.status, 202);
    }
    let page = eventually(WAIT, "both writes in the dead letters", || async {
        let r = dead_letters(p, "").await?;
        Ok((r.json["total"] == json!(2)).then_some(r))
    })
    .await?;
    assert_eq!(journal_len(&w, "b").await?, 0, "moved, not copied");
    eventually(WAIT, "the dead-letter gauge", || async {
        let m = p.get("/metrics").await?.text;
        let dead = metric_value(&m, "patternd_cache_dead_letters", &[("rule", "b")]);
        Ok(dead.filter(|d| *d == 2.0))
    })
    .await?;
    let letters = page.json["dead_letters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(letters.len(), 2, "{page:?}");
    // Oldest first: the order the two failed (they were delivered concurrently).
    let first_id = letters[0]["id"].as_str().unwrap_or("").to_string();
    let second_id = if first_id == "d1" { "d2" } else { "d1" };
    for (l, id) in letters.iter().zip([first_id.as_str(), second_id]) {
        assert_eq!(l["id"], json!(id), "{l}");
        assert_eq!(l["attempts"], json!(3), "{l}");
        assert_eq!(l["payload_bytes"], json!(2), "{l}");
        assert!(
            l["error"].as_str().is_some_and(|e| e.contains("503")),
            "{l}"
        );
        assert!(l["failed_at_ms"].as_u64().is_some_and(|t| t > 0), "{l}");
    }
    // Exactly max_attempts calls per write, no more.
    assert_eq!((origin.hits("PUT", "d1"), origin.hits("PUT", "d2")), (3, 3));

    // Pagination.
    let first = dead_letters(p, "?count=1").await?;
    assert_eq!(
        first.json["dead_letters"].as_array().map(Vec::len),
        Some(1),
        "{first:?}"
    );
    let after = first.json["next_after"].as_str().unwrap_or("").to_string();
    assert_eq!(after, letters[0]["entry"].as_str().unwrap_or("-"));
    let second = dead_letters(p, &format!("?count=1&after={after}")).await?;
    assert_eq!(
        second.json["dead_letters"][0]["id"],
        json!(second_id),
        "{second:?}"
    );
    dead_letters(p, "?count=0").await?.assert_problem(400);
    dead_letters(p, "?after=nope").await?.assert_problem(400);
    // A malformed query is a problem too, not axum's plain-text rejection.
    dead_letters(p, "?count=1&count=2")
        .await?
        .assert_problem(400);
    p.get("/admin/cache/w/c/dead-letters")
        .await?
        .assert_problem(409);
    p.get("/admin/cache/w/nope/dead-letters")
        .await?
        .assert_problem(404);

    // Replay one by id, then the rest, with the origin accepting again.
    origin.fail_writes_with(None);
    let r = replay(p, json!({ "ids": [after, "0:1-1"] })).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (r.json["replayed"].clone(), r.json["not_found"].clone()),
        (json!(1), json!(1))
    );
    until_delivered(&origin, &first_id, &first_id).await?;
    assert_eq!(origin.item(second_id), None);
    let r = replay(p, json!({})).await?;
    assert_eq!(r.json["replayed"], json!(1), "{r:?}");
    until_delivered(&origin, second_id, second_id).await?;
    let page = dead_letters(p, "").await?;
    assert_eq!(page.json["total"], json!(0), "{page:?}");
    replay(p, json!({ "ids": ["x"] }))
        .await?
        .assert_problem(400);
    let m = p.get("/metrics").await?.text;
    assert_eq!(
        metric_value(
            &m,
            "patternd_cache_flush_total",
            &[("rule", "b"), ("result", "dead_lettered")]
        ),
        Some(2.0),
        "{m}"
    );
    Ok(())
}

on_every_backend!(failing_origin_fills_the_dead_letters_which_replay_delivers);

/// Write-behind with ids whose values live on each primary: every write reaches the origin;
/// failures dead-letter in their own group's list, and the merged listing and the replay
/// work across groups (so across primaries on a cluster).
async fn write_behind_and_dead_letters_reach_every_primary(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    let ids = b.spread_ids("b", |id| value_key("b", id))?;
    let w = behind_world(
        b,
        &origin,
        "      retry_backoff: 50ms\n      max_attempts: 2\n",
    )
    .await?;
    let p = &w.patternd;
    let nodes = w.redis.nodes().await?;
    let ports: BTreeSet<u16> = ids
        .iter()
        .map(|id| nodes.port_of(value_key("b", id)))
        .collect::<Result<_>>()?;
    assert_eq!(ports.len(), nodes.len(), "one id per primary: {ids:?}");
    for id in &ids {
        let r = put(p, "b", id, id.as_bytes(), &[("content-type", "text/plain")]).await?;
        assert_eq!(r.status, 202, "{r:?}");
    }
    for id in &ids {
        until_delivered(&origin, id, id).await?;
    }
    origin.fail_writes_with(Some(503));
    for id in &ids {
        assert_eq!(put(p, "b", id, b"again", &[]).await?.status, 202);
    }
    until_dead_letters(p, ids.len() as u64).await?;
    let page = dead_letters(p, "").await?;
    let listed: BTreeSet<&str> = page.json["dead_letters"]
        .as_array()
        .map(|l| l.iter().filter_map(|d| d["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(listed, ids.iter().map(String::as_str).collect(), "{page:?}");
    origin.fail_writes_with(None);
    let r = replay(p, json!({})).await?;
    assert_eq!(r.json["replayed"], json!(ids.len()), "{r:?}");
    for id in &ids {
        until_delivered(&origin, id, "again").await?;
    }
    until_journal_drained(&w).await?;
    Ok(())
}

on_every_backend!(write_behind_and_dead_letters_reach_every_primary);

async fn a_superseded_dead_letter_is_not_replayed_over_a_newer_write(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    let w = behind_world(
        b,
        &origin,
        "      max_attempts: 1\n      retry_backoff: 50ms\n",
    )
    .await?;
    let p = &w.patternd;
    origin.fail_writes_with(Some(500));
    assert_eq!(put(p, "b", "x", b"old", &[]).await?.status, 202);
    until_dead_letters(p, 1).await?;
    origin.fail_writes_with(None);
    assert_eq!(put(p, "b", "x", b"new", &[]).await?.status, 202);
    until_delivered(&origin, "x", "new").await?;
    let r = p
        .post_json("/admin/cache/w/b/dead-letters/replay", &json!({}))
        .await?;
    assert_eq!(r.json["replayed"], json!(1), "{r:?}");
    until_journal_drained(&w).await?;
    assert_eq!(origin_body(&origin, "x").as_deref(), Some("new"));
    assert_eq!(
        origin.hits("PUT", "x"),
        2,
        "old (refused) and new, never old again"
    );
    Ok(())
}

on_every_backend!(a_superseded_dead_letter_is_not_replayed_over_a_newer_write);

async fn a_full_journal_refuses_writes_instead_of_dropping_any(b: Backend) -> Result<()> {
    let mut origin = Origin::start().await?;
    let w = behind_world(
        b,
        &origin,
        // One slot group: the bound applies per group (journal_max_len / slot_groups).
        "      journal_max_len: 3\n      slot_groups: 1\n      retry_backoff: 50ms\n      max_attempts: 1000\n",
    )
    .await?;
    let p = &w.patternd;
    origin.stop().await;
    for id in ["j1", "j2", "j3"] {
        assert_eq!(put(p, "b", id, id.as_bytes(), &[]).await?.status, 202);
    }
    let r = put(p, "b", "j4", b"j4", &[]).await?;
    r.assert_problem(503);
    assert!(r.detail().contains("journal"), "{r:?}");
    assert!(
        !exists(&w, &cache_keys::key_in("w", "b", 1, "j4", "v")).await?,
        "a refused write is not cached"
    );
    assert_eq!(
        xlen(&w, &cache_keys::group_key("w", "b", 0, "journal")).await?,
        3,
        "nothing trimmed"
    );

    origin.restart().await?;
    until_journal_drained(&w).await?;
    let ids: BTreeSet<String> = origin.writes().into_iter().map(|wr| wr.id).collect();
    assert_eq!(ids, ["j1", "j2", "j3"].map(String::from).into());
    assert_eq!(
        put(p, "b", "j4", b"j4", &[]).await?.status,
        202,
        "room again"
    );
    Ok(())
}

on_every_backend!(a_full_journal_refuses_writes_instead_of_dropping_any);

async fn values_over_max_value_bytes_are_refused_and_never_stored(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    let policy = format!(
        "app: w\nrules:\n  s:\n    cache:\n      ttl: 1h\n      max_value_bytes: 1000\n  big:\n    cache:\n      ttl: 1h\n      max_value_bytes: 300000\n  b:\n    cache:\n      origin: {}\n      ttl: 1h\n      write: behind\n      max_value_bytes: 1000\n  h:\n    cache:\n      ttl: 1h\n      format: hash\n      max_value_bytes: 100\n",
        origin.template()
    );
    let w = World::on(b, &[("w.yaml", &policy)], &[]).await?;
    let p = &w.patternd;

    let r = put(p, "s", "x", &[b'a'; 1001], &[]).await?;
    r.assert_problem(413);
    assert!(r.detail().contains("1000"), "{r:?}");
    assert!(!exists(&w, &value_key("s", "x")).await?);
    assert_eq!(put(p, "s", "x", &[b'a'; 1000], &[]).await?.status, 204);
    // Larger than the router's default body limit for JSON endpoints, within the rule's.
    assert_eq!(
        put(p, "big", "x", &vec![b'z'; 200_000], &[]).await?.status,
        204
    );
    put(p, "big", "y", &vec![b'z'; 300_001], &[])
        .await?
        .assert_problem(413);
    assert!(!exists(&w, &value_key("big", "y")).await?);

    // Write-behind: neither the value nor a journal entry.
    put(p, "b", "x", &[b'a'; 1001], &[])
        .await?
        .assert_problem(413);
    assert!(!exists(&w, &value_key("b", "x")).await?);
    assert_eq!(journal_len(&w, "b").await?, 0);

    // PATCH too.
    assert_eq!(put(p, "h", "o", br#"{"a":1}"#, &[]).await?.status, 204);
    let long = format!(r#"{{"a":"{}"}}"#, "x".repeat(200));
    patch(p, "h", "o", &long, "application/json")
        .await?
        .assert_problem(413);
    assert_eq!(
        hget(&w, &value_key("h", "o"), "f:a").await?.as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(origin.writes().len(), 0);
    let m = p.get("/metrics").await?.text;
    assert!(
        metric_value(
            &m,
            "patternd_cache_writes_total",
            &[("rule", "s"), ("result", "too_large")]
        ) == Some(1.0),
        "{m}"
    );
    Ok(())
}

on_every_backend!(values_over_max_value_bytes_are_refused_and_never_stored);

async fn patch_updates_fields_following_the_write_mode(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    let t = origin.template();
    let policy = format!(
        "app: w\nrules:\n  h:\n    cache:\n      ttl: 1h\n      format: hash\n  s:\n    cache:\n      ttl: 1h\n  ht:\n    cache:\n      origin: {t}\n      ttl: 1h\n      format: hash\n      write: through\n  hb:\n    cache:\n      origin: {t}\n      ttl: 1h\n      format: hash\n      write: behind\n"
    );
    let w = World::on(b, &[("w.yaml", &policy)], &[]).await?;
    let p = &w.patternd;

    // write: cache.
    assert_eq!(
        put(
            p,
            "h",
            "o",
            br#"{"a": 1, "b": "x"}"#,
            &[("cache-tag", "objs")]
        )
        .await?
        .status,
        204
    );
    let r = patch(
        p,
        "h",
        "o",
        r#"{"b": null, "c": [1, 2]}"#,
        "application/merge-patch+json",
    )
    .await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json, json!({"a": 1, "c": [1, 2]}));
    let key = value_key("h", "o");
    assert_eq!(hget(&w, &key, "f:b").await?, None);
    assert_eq!(hget(&w, &key, "f:c").await?.as_deref(), Some(&b"[1,2]"[..]));
    assert_eq!(meta(&w, &key).await?.tags, "objs", "tags kept");
    let g = p.get("/v1/cache/w/h/o").await?;
    assert_eq!(g.json, json!({"a": 1, "c": [1, 2]}), "{g:?}");

    let long_id = "i".repeat(600);
    put(p, "h", &long_id, br#"{"a": 1}"#, &[])
        .await?
        .assert_problem(400);
    put(
        p,
        "h",
        "o",
        br#"{"a": 1}"#,
        &[("cache-tag", &"t".repeat(129))],
    )
    .await?
    .assert_problem(400);
    patch(p, "h", "missing", r#"{"a": 1}"#, "application/json")
        .await?
        .assert_problem(404);
    assert!(!exists(&w, &value_key("h", "missing")).await?);
    patch(p, "s", "o", r#"{"a": 1}"#, "application/json")
        .await?
        .assert_problem(409);
    patch(p, "h", "o", "a=1", "text/plain")
        .await?
        .assert_problem(415);
    patch(p, "h", "o", "[1]", "application/json")
        .await?
        .assert_problem(400);
    put(p, "h", "o", b"not json", &[])
        .await?
        .assert_problem(400);

    // A tag invalidation makes the value gone for PATCH too (no resurrection).
    let inv = p
        .post_json("/v1/cache/w/h/_invalidate", &json!({"tags": ["objs"]}))
        .await?;
    assert!(inv.status < 300, "{inv:?}");
    patch(p, "h", "o", r#"{"a": 2}"#, "application/json")
        .await?
        .assert_problem(404);

    // write: through: the origin gets the PATCH first.
    assert_eq!(put(p, "ht", "o", br#"{"a": 1}"#, &[]).await?.status, 204);
    let r = patch(p, "ht", "o", r#"{"a": 5}"#, "application/json").await?;
    assert_eq!((r.status, r.json.clone()), (200, json!({"a": 5})), "{r:?}");
    let last = origin
        .writes()
        .into_iter()
        .last()
        .context("no origin write")?;
    assert_eq!(
        (last.method.as_str(), last.body.as_slice()),
        ("PATCH", &br#"{"a": 5}"#[..])
    );
    origin.fail_writes_with(Some(409));
    patch(p, "ht", "o", r#"{"a": 6}"#, "application/json")
        .await?
        .assert_problem(502);
    assert_eq!(
        hget(&w, &value_key("ht", "o"), "f:a").await?.as_deref(),
        Some(&b"5"[..])
    );
    origin.fail_writes_with(None);
    // Not cached: the origin takes the patch, nothing to patch here.
    assert_eq!(
        patch(p, "ht", "other", r#"{"a": 1}"#, "application/json")
            .await?
            .status,
        204
    );

    // write: behind: the whole object reaches the origin as a PUT.
    assert_eq!(
        put(p, "hb", "o", br#"{"a": 1, "b": 2}"#, &[]).await?.status,
        202
    );
    let r = patch(p, "hb", "o", r#"{"b": 3}"#, "application/json").await?;
    assert_eq!(r.status, 202, "{r:?}");
    assert!(r.header("patternd-journal-id").is_some(), "{r:?}");
    until_delivered_json(&origin, "o", json!({"a": 1, "b": 3})).await?;
    Ok(())
}

on_every_backend!(patch_updates_fields_following_the_write_mode);

async fn an_engine_killed_mid_flush_loses_no_acknowledged_write(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    let policy = format!(
        "app: w\nrules:\n  b:\n    cache:\n      origin: {}\n      ttl: 1h\n      write: behind\n      origin_timeout: 3s\n      retry_backoff: 100ms\n",
        origin.template()
    );
    let mut w = World::on(b, &[("w.yaml", &policy)], &[]).await?;
    // Slow (but within origin_timeout) so the first engine is surely in the middle of
    // delivering when it is killed.
    origin.set_delay(Duration::from_secs(2));

    const IDS: usize = 30;
    for i in 0..IDS {
        let r = put(
            &w.patternd,
            "b",
            &format!("id{i}"),
            format!("v{i}").as_bytes(),
            &[],
        )
        .await?;
        assert_eq!(r.status, 202, "{r:?}");
    }
    eventually(WAIT, "the first engine to be delivering", || async {
        let reached: u64 = (0..IDS)
            .map(|i| origin.hits("PUT", &format!("id{i}")))
            .sum();
        Ok((reached > 0).then_some(()))
    })
    .await?;
    // Entries the first engine took and has not acknowledged: in flight.
    let mut nodes = w.redis.nodes().await?;
    let mut in_flight = 0;
    for j in journals("b") {
        let summary: redis::RedisResult<Vec<redis::Value>> = redis::cmd("XPENDING")
            .arg(&j)
            .arg("patternd")
            .query_async(nodes.conn(&j)?)
            .await;
        // A group nobody wrote to has no journal (NOGROUP).
        if let Ok(summary) = summary {
            in_flight += match summary.first() {
                Some(redis::Value::Int(n)) => *n,
                other => panic!("XPENDING summary: {other:?}"),
            };
        }
    }
    assert!(in_flight > 0, "nothing in flight");
    w.patternd.kill();
    // Nothing was accepted yet: every delivery in flight died with the engine.
    assert!(origin.writes().len() < IDS);
    origin.set_delay(Duration::ZERO);

    // A new engine (another consumer) on the same Redis takes the dead consumer's entries over.
    w.patternd = Patternd::start(&w.redis.url(), w.policies.path(), &[]).await?;
    let delivered = eventually(WAIT, "every acknowledged write at the origin", || async {
        let ids: BTreeSet<String> = origin.writes().into_iter().map(|wr| wr.id).collect();
        Ok((ids.len() == IDS).then_some(ids))
    })
    .await?;
    for i in 0..IDS {
        ensure!(delivered.contains(&format!("id{i}")), "id{i} lost");
        assert_eq!(
            origin_body(&origin, &format!("id{i}")),
            Some(format!("v{i}"))
        );
    }
    // Entries are acknowledged only after the origin accepted them: an empty journal means the
    // new engine delivered the dead engine's in-flight entries too.
    until_journal_drained(&w).await?;
    let m = w.patternd.get("/metrics").await?.text;
    let delivered = metric_value(
        &m,
        "patternd_cache_flush_total",
        &[("rule", "b"), ("result", "delivered")],
    )
    .unwrap_or(0.0);
    assert!(
        delivered >= in_flight as f64,
        "{delivered} delivered by the new engine, {in_flight} were in flight\n{m}"
    );
    Ok(())
}

on_every_backend!(an_engine_killed_mid_flush_loses_no_acknowledged_write);

async fn two_replicas_share_the_journal_and_keep_each_ids_write_order(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    let w = behind_world(b, &origin, "      retry_backoff: 50ms\n").await?;
    let other = Patternd::start(&w.redis.url(), w.policies.path(), &[]).await?;
    // Slow enough that both flushers are busy at once.
    origin.set_delay(Duration::from_millis(100));

    const IDS: usize = 20;
    const VERSIONS: usize = 3;
    for v in 1..=VERSIONS {
        for i in 0..IDS {
            let via = if (i + v) % 2 == 0 {
                &w.patternd
            } else {
                &other
            };
            let r = put(via, "b", &format!("r{i}"), format!("v{v}").as_bytes(), &[]).await?;
            assert_eq!(r.status, 202, "{r:?}");
        }
    }
    until_journal_drained(&w).await?;
    // Every id ends with its newest write: no older write landed after a newer one, whichever
    // replica delivered which.
    for i in 0..IDS {
        assert_eq!(
            origin_body(&origin, &format!("r{i}")),
            Some(format!("v{VERSIONS}")),
            "r{i}"
        );
    }
    // Without failures no write is delivered twice; coalescing may save some.
    let calls: u64 = (0..IDS).map(|i| origin.hits("PUT", &format!("r{i}"))).sum();
    assert!(
        calls >= IDS as u64 && calls <= (IDS * VERSIONS) as u64,
        "{calls} origin PUTs"
    );
    let delivered = |text: String| {
        metric_value(
            &text,
            "patternd_cache_flush_total",
            &[("rule", "b"), ("result", "delivered")],
        )
        .unwrap_or(0.0)
    };
    let a = delivered(w.patternd.get("/metrics").await?.text);
    let b = delivered(other.get("/metrics").await?.text);
    assert_eq!(
        (a + b) as u64,
        calls,
        "every origin call is one delivery of one replica"
    );
    Ok(())
}

on_every_backend!(two_replicas_share_the_journal_and_keep_each_ids_write_order);

async fn the_flusher_follows_reloads(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    let w = World::on(
        b,
        &[(
            "w.yaml",
            "app: w\nrules:\n  c:\n    cache:\n      ttl: 1h\n",
        )],
        &[],
    )
    .await?;
    let p = &w.patternd;
    // A write-behind rule that did not exist when the engine started.
    w.policies.write("w.yaml", &behind_policy(&origin, ""))?;
    let r = p.post_json("/admin/reload", &json!({})).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(put(p, "b", "late", b"x", &[]).await?.status, 202);
    until_delivered(&origin, "late", "x").await?;
    Ok(())
}

on_every_backend!(the_flusher_follows_reloads);

async fn every_key_has_a_ttl_except_the_declared_streams(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    let policy = format!(
        "{}  c:\n    cache:\n      ttl: 1h\n      format: hash\n",
        behind_policy(
            &origin,
            "      max_attempts: 1\n      retry_backoff: 50ms\n"
        )
    );
    let w = World::on(b, &[("w.yaml", &policy)], &[]).await?;
    let p = &w.patternd;
    for i in 0..5 {
        assert_eq!(
            put(p, "b", &format!("k{i}"), b"v", &[("cache-tag", "a b")])
                .await?
                .status,
            202
        );
    }
    eventually(WAIT, "delivery", || async {
        Ok((origin.writes().len() == 5).then_some(()))
    })
    .await?;
    origin.fail_writes_with(Some(500));
    assert_eq!(put(p, "b", "dead", b"v", &[]).await?.status, 202);
    until_dead_letters(p, 1).await?;
    assert_eq!(
        put(p, "c", "o", br#"{"x": 1}"#, &[("cache-tag", "objs")])
            .await?
            .status,
        204
    );
    assert_eq!(
        patch(p, "c", "o", r#"{"y": 2}"#, "application/json")
            .await?
            .status,
        200
    );

    let mut nodes = w.redis.nodes().await?;
    let keys = w.redis.scan_all().await?;
    let mut streams = BTreeSet::new();
    assert!(keys.len() > 8, "{} keys", keys.len());
    for k in keys {
        let name = String::from_utf8_lossy(&k).into_owned();
        assert!(name.starts_with("w:cache:"), "{name} outside the namespace");
        let conn = nodes.conn(&k)?;
        let kind: String = redis::cmd("TYPE").arg(&k).query_async(conn).await?;
        let pttl: i64 = redis::cmd("PTTL").arg(&k).query_async(conn).await?;
        if kind == "stream" {
            streams.insert(name);
        } else {
            assert!(pttl > 0, "{name} ({kind}) has no TTL: {pttl}");
        }
    }
    // Only rule b's journals and dead letters, of some slot groups.
    assert!(!streams.is_empty());
    for s in &streams {
        assert!(
            (0..cache_keys::DEFAULT_GROUPS).any(|g| [
                cache_keys::group_key("w", "b", g, "journal"),
                cache_keys::group_key("w", "b", g, "dead")
            ]
            .contains(s)),
            "{s}"
        );
    }
    Ok(())
}

on_every_backend!(every_key_has_a_ttl_except_the_declared_streams);

/// A write-behind value whose write is still in the journal is newer than the origin's copy:
/// past its ttl, reads neither serve nor store the origin's older copy (the origin refusing
/// writes, then down), and once the write is delivered the written value is what reads see.
async fn a_journaled_write_is_never_replaced_by_the_origins_older_copy(b: Backend) -> Result<()> {
    let mut origin = Origin::start().await?;
    origin.set("k", "text/plain", b"old", &[]);
    let policy = format!(
        "app: w\nrules:\n  b:\n    cache:\n      origin: {}\n      ttl: 1s\n      stale_if_error: 10m\n      write: behind\n      origin_timeout: 1s\n      retry_backoff: 100ms\n      max_attempts: 1000\n",
        origin.template()
    );
    let w = World::on(b, &[("w.yaml", &policy)], &[]).await?;
    let p = &w.patternd;

    let g = p.get("/v1/cache/w/b/k").await?;
    assert_eq!((g.status, g.text.as_str()), (200, "old"), "{g:?}");
    assert_eq!(origin.gets("k"), 1);

    // The origin serves reads but refuses writes: the PUT stays in the journal.
    put_while_refused(p, &origin).await?;
    // Past the value's ttl: without the journal check a read would refresh from the origin.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        let g = reads_new(p).await?;
        let cs = g.header("cache-status").unwrap_or("");
        assert!(cs.starts_with("patternd; hit"), "{cs}");
    }
    assert_eq!(origin.gets("k"), 1, "no refresh reached the origin");
    assert_eq!(
        hget(&w, &value_key("b", "k"), "b").await?.as_deref(),
        Some(&b"new"[..])
    );
    assert!(journal_len(&w, "b").await? >= 1, "still journaled");

    // The origin down altogether: still the written value.
    origin.stop().await;
    reads_new(p).await?;

    // Back, accepting writes: the write is delivered, and reads see it, now from the origin too.
    origin.restart().await?;
    accept_and_deliver(&w, &origin).await?;
    for _ in 0..3 {
        reads_new(p).await?;
    }
    Ok(())
}

on_every_backend!(a_journaled_write_is_never_replaced_by_the_origins_older_copy);

/// A write-through PATCH of an id that is not cached, while a fill of that id is in flight
/// with the origin's pre-patch answer: the fill must not store it (the PATCH leaves a write
/// marker in the lease instead of deleting it). Deterministic: the origin reads the item when
/// the GET arrives and answers seconds later, and the PATCH is sent once the GET has arrived.
async fn a_fill_in_flight_during_a_through_patch_does_not_store_pre_patch_data(
    b: Backend,
) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("p", "application/json", br#"{"a": 1, "b": 1}"#, &[]);
    let policy = format!(
        "app: w\nrules:\n  ht:\n    cache:\n      origin: {}\n      ttl: 1h\n      format: hash\n      write: through\n      origin_timeout: 10s\n",
        origin.template()
    );
    let w = World::on(b, &[("w.yaml", &policy)], &[]).await?;
    let p = &w.patternd;

    origin.set_get_delay(Duration::from_secs(3));
    let (g, r) = tokio::join!(p.get("/v1/cache/w/ht/p"), async {
        eventually(WAIT, "the fill's GET at the origin", || async {
            Ok((origin.gets("p") == 1).then_some(()))
        })
        .await?;
        patch(p, "ht", "p", r#"{"a": 2}"#, "application/json").await
    });
    let (g, r) = (g?, r?);
    assert_eq!(
        r.status, 204,
        "not cached: the origin took the patch; {r:?}"
    );
    // The read began before the PATCH: it may see the old object, but must not store it.
    assert_eq!(
        (g.status, g.json.clone()),
        (200, json!({"a": 1, "b": 1})),
        "{g:?}"
    );
    let cs = g.header("cache-status").unwrap_or("").to_string();
    assert!(!cs.contains("stored"), "{cs}");
    assert_eq!(hget(&w, &value_key("ht", "p"), "f:a").await?, None);

    origin.set_get_delay(Duration::ZERO);
    let g = p.get("/v1/cache/w/ht/p").await?;
    assert_eq!(
        (g.status, g.json.clone()),
        (200, json!({"a": 2, "b": 1})),
        "{g:?}"
    );
    assert_eq!(origin.gets("p"), 2, "the next read filled from the origin");
    let g = p.get("/v1/cache/w/ht/p").await?;
    assert_eq!(
        (g.status, g.json.clone()),
        (200, json!({"a": 2, "b": 1})),
        "{g:?}"
    );
    assert_eq!(origin.gets("p"), 2, "and that fill was stored");
    Ok(())
}

on_every_backend!(a_fill_in_flight_during_a_through_patch_does_not_store_pre_patch_data);

/// Write-behind rules are flushed concurrently: while one rule's origin holds a delivery for
/// a long time, another rule's writes still reach their origin.
async fn a_slow_origin_does_not_hold_up_other_rules_deliveries(b: Backend) -> Result<()> {
    let slow = Origin::start().await?;
    let fast = Origin::start().await?;
    let policy = format!(
        "app: w\nrules:\n  slow:\n    cache:\n      origin: {}\n      ttl: 1h\n      write: behind\n      origin_timeout: 5m\n  fast:\n    cache:\n      origin: {}\n      ttl: 1h\n      write: behind\n      origin_timeout: 5s\n",
        slow.template(),
        fast.template()
    );
    let w = World::on(b, &[("w.yaml", &policy)], &[]).await?;
    let p = &w.patternd;

    // Far longer than the waits below: a serial flusher would be stuck on it throughout.
    slow.set_delay(Duration::from_secs(600));
    assert_eq!(put(p, "slow", "a", b"x", &[]).await?.status, 202);
    eventually(WAIT, "the slow delivery in flight", || async {
        Ok((slow.hits("PUT", "a") == 1).then_some(()))
    })
    .await?;
    const IDS: usize = 5;
    for i in 0..IDS {
        let r = put(p, "fast", &format!("f{i}"), format!("v{i}").as_bytes(), &[]).await?;
        assert_eq!(r.status, 202, "{r:?}");
    }
    eventually(WAIT, "every fast-rule write delivered", || async {
        let ids: BTreeSet<String> = fast.writes().into_iter().map(|w| w.id).collect();
        Ok((ids.len() == IDS).then_some(()))
    })
    .await?;
    for i in 0..IDS {
        assert_eq!(origin_body(&fast, &format!("f{i}")), Some(format!("v{i}")));
    }
    assert!(
        slow.writes().is_empty(),
        "the slow delivery is still in flight"
    );
    Ok(())
}

on_every_backend!(a_slow_origin_does_not_hold_up_other_rules_deliveries);

/// A journaled write outlives its value's own lifetime while it is being retried: the value
/// (ttl 1s, no staleness) would expire long before the origin accepts the write, and a read
/// would then fill the origin's older copy; each delivery attempt keeps it alive instead.
async fn a_pending_write_keeps_its_value_alive_until_delivered(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("k", "text/plain", b"old", &[]);
    let policy = format!(
        "app: w\nrules:\n  b:\n    cache:\n      origin: {}\n      ttl: 1s\n      write: behind\n      origin_timeout: 1s\n      retry_backoff: 100ms\n      max_attempts: 1000\n",
        origin.template()
    );
    let w = World::on(b, &[("w.yaml", &policy)], &[]).await?;
    let p = &w.patternd;

    put_while_refused(p, &origin).await?;
    // Well past the value's own hard lifetime (1s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(exists(&w, &value_key("b", "k")).await?, "kept alive");
    reads_new(p).await?;
    assert_eq!(
        origin.gets("k"),
        0,
        "the origin's older copy was never read"
    );

    origin.fail_writes_with(None);
    until_delivered(&origin, "k", "new").await?;
    reads_new(p).await?;
    Ok(())
}

on_every_backend!(a_pending_write_keeps_its_value_alive_until_delivered);

/// DELETE and tag invalidation of a value whose write-behind write is still pending keep the
/// value (and its `jp`) until the write is delivered: dropping it would make the next read
/// fill the origin's older copy, a stale read of an acknowledged write. After delivery the
/// invalidation takes effect (the next read fills the origin, which now has the write) and a
/// DELETE drops the value.
async fn delete_and_invalidation_keep_a_pending_value_until_delivered(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("k", "text/plain", b"old", &[]);
    let w = behind_world(
        b,
        &origin,
        "      retry_backoff: 100ms\n      max_attempts: 1000\n      related: [\"{id}:extra\"]\n",
    )
    .await?;
    let p = &w.patternd;

    origin.fail_writes_with(Some(503));
    let r = put(
        p,
        "b",
        "k",
        b"new",
        &[("content-type", "text/plain"), ("cache-tag", "t1")],
    )
    .await?;
    assert_eq!(r.status, 202, "{r:?}");
    let d = p.delete("/v1/cache/w/b/k").await?;
    assert_eq!(d.status, 200, "{d:?}");
    assert_eq!(
        (d.json["deleted"].clone(), d.json["pending"].clone()),
        (json!(0), json!(1)),
        "{d:?}"
    );
    assert!(
        hget(&w, &value_key("b", "k"), "jp").await?.is_some(),
        "jp kept"
    );
    reads_new(p).await?;

    let inv = p
        .post_json("/v1/cache/w/b/_invalidate", &json!({"tags": ["t1"]}))
        .await?;
    assert_eq!(inv.json["bumped"], json!(1), "{inv:?}");
    reads_new(p).await?;
    // Neither the DELETE nor the invalidation let a read reach the origin's older copy.
    assert_eq!(
        origin.gets("k"),
        0,
        "the origin's older copy was never read"
    );

    accept_and_deliver(&w, &origin).await?;
    // Delivered: the tag invalidation now applies, and the origin has the write.
    let g = reads_new(p).await?;
    assert!(
        g.header("cache-status").unwrap_or("").contains("fwd=miss"),
        "{g:?}"
    );
    assert_eq!(origin.gets("k"), 1);
    // And a DELETE drops it like any cached value.
    let d = p.delete("/v1/cache/w/b/k").await?;
    assert_eq!(
        (d.json["deleted"].clone(), d.json["pending"].clone()),
        (json!(1), json!(0)),
        "{d:?}"
    );
    assert!(!exists(&w, &value_key("b", "k")).await?);
    Ok(())
}

on_every_backend!(delete_and_invalidation_keep_a_pending_value_until_delivered);

/// A replayed dead letter that is still the id's newest write becomes the value's `jp`
/// (atomically in the replay script): reads keep serving it instead of refreshing from the
/// origin's older copy until it is delivered.
async fn a_replayed_dead_letter_keeps_reads_off_the_origin_until_delivered(
    b: Backend,
) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("k", "text/plain", b"old", &[]);
    let policy = behind_policy(
        &origin,
        "      ttl: 1s\n      stale_while_revalidate: 1h\n      max_attempts: 2\n      retry_backoff: 3s\n",
    )
    .replace("      ttl: 1h\n", "");
    let w = World::on(b, &[("w.yaml", &policy)], &[]).await?;
    let p = &w.patternd;

    origin.fail_writes_with(Some(500));
    let r = put(p, "b", "k", b"new", &[("content-type", "text/plain")]).await?;
    assert_eq!(r.status, 202, "{r:?}");
    until_dead_letters(p, 1).await?;
    let r = replay(p, json!({})).await?;
    assert_eq!(r.json["replayed"], json!(1), "{r:?}");

    // `jp` names the replayed journal entry.
    let journal = journal_of("b", "k");
    let mut conn = w.redis.conn_for_key(&journal).await?;
    let entries: Vec<(String, redis::Value)> = redis::cmd("XRANGE")
        .arg(&journal)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let jp = hget(&w, &value_key("b", "k"), "jp").await?;
    assert_eq!(jp.as_deref(), Some(entries[0].0.as_bytes()));

    // Past its freshness (ttl 1s; dead-lettering took a 3s backoff): a read would refresh
    // from the origin unless the value is known to be newer than the origin's copy. The
    // replayed entry's next attempt is 3s away, so it is still pending here.
    for _ in 0..3 {
        reads_new(p).await?;
    }
    assert_eq!(
        origin.gets("k"),
        0,
        "the origin's older copy was never read"
    );

    accept_and_deliver(&w, &origin).await?;
    assert_eq!(dead_letters(p, "").await?.json["total"], json!(0));
    Ok(())
}

on_every_backend!(a_replayed_dead_letter_keeps_reads_off_the_origin_until_delivered);

/// The cache plugin hook runs for PUT and PATCH too: the write lands on the key the plugin
/// chose (one per Accept-Language with the example `cache-key` plugin), with its TTL and
/// tags, so GETs of that variant see it; the journal still delivers to the origin URL of the
/// client's id. Bypass: write-through writes the origin only; other modes answer 409.
async fn writes_run_the_cache_plugin_hook(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("1", "text/plain", b"origin", &[]);
    let plugin = "      plugin:\n        name: cache-key\n        config:\n          vary: [accept-language]\n          ttl_ms: { default: 60000 }\n          bypass_header: x-no-cache\n";
    let policy = format!(
        "app: w\nrules:\n  b:\n    cache:\n      origin: {o}\n      ttl: 1h\n      write: behind\n      origin_timeout: 1s\n      retry_backoff: 50ms\n{plugin}  t:\n    cache:\n      origin: {o}\n      ttl: 1h\n      write: through\n{plugin}  h:\n    cache:\n      origin: {o}\n      ttl: 1h\n      format: hash\n      write: behind\n      retry_backoff: 50ms\n{plugin}",
        o = origin.template()
    );
    let plugins = lua_plugins(&[("cache-key.lua", "cache-key/cache-key.lua")])?;
    let w = PluginWorld::on(b, &[("w.yaml", &policy)], plugins).await?;
    let p = &w.patternd;

    let r = put(
        p,
        "b",
        "1",
        b"hello-en",
        &[("content-type", "text/plain"), ("accept-language", "en")],
    )
    .await?;
    assert_eq!(r.status, 202, "{r:?}");
    let g = p
        .get_with("/v1/cache/w/b/1", &[("accept-language", "en")])
        .await?;
    assert_eq!((g.status, g.text.as_str()), (200, "hello-en"), "{g:?}");
    assert!(
        g.header("cache-status").unwrap_or("").contains("hit"),
        "{g:?}"
    );
    assert_eq!(origin.gets("1"), 0);
    // The plugin's key, TTL and tag; nothing under the client's id.
    let key = value_key("b", "1:en");
    assert_eq!(meta(&w, &key).await?.tags, "id:1");
    let mut conn = w.redis.conn_for_key(&key).await?;
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await?;
    assert!(pttl > 0 && pttl <= 60_000, "{pttl}");
    assert!(!exists(&w, &value_key("b", "1")).await?);
    // Delivered to the client's id's origin URL.
    until_delivered(&origin, "1", "hello-en").await?;
    until_journal_drained(&w).await?;

    // PATCH of a hash variant: the plugin's key too, the journal to the client's id.
    assert_eq!(
        put(p, "h", "2", br#"{"a": 1}"#, &[("accept-language", "de")])
            .await?
            .status,
        202
    );
    let r = p
        .patch_with(
            "/v1/cache/w/h/2",
            r#"{"b": 2}"#,
            &[
                ("content-type", "application/json"),
                ("accept-language", "de"),
            ],
        )
        .await?;
    assert_eq!(r.status, 202, "{r:?}");
    let g = p
        .get_with("/v1/cache/w/h/2", &[("accept-language", "de")])
        .await?;
    assert_eq!(g.json, json!({"a": 1, "b": 2}), "{g:?}");
    until_delivered_json(&origin, "2", json!({"a": 1, "b": 2})).await?;

    // Bypass: behind has nothing it could write → 409, nothing stored or journaled.
    let r = put(p, "b", "3", b"x", &[("x-no-cache", "1")]).await?;
    r.assert_problem(409);
    assert_eq!(journal_len(&w, "b").await?, 0);
    // Through: the origin only.
    let r = put(p, "t", "3", b"through", &[("x-no-cache", "1")]).await?;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(origin_body(&origin, "3").as_deref(), Some("through"));
    for k in w.redis.scan_all().await? {
        assert!(
            !k.starts_with(cache_keys::key("w", "t", "3", "").as_bytes()),
            "{}",
            String::from_utf8_lossy(&k)
        );
    }
    Ok(())
}

on_every_backend!(writes_run_the_cache_plugin_hook);
