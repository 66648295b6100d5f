//! Cache rules under attack and under faults, end to end (issue 9): ids that are dot
//! segments, write-through when Redis stalls or fails between the origin and the cache, and
//! DELETE of ids near the length bound. Real redis-server, real patternd, a real origin
//! (tests/src/origin.rs, which logs every path it was asked for). Counts and states, never
//! timings: the origin holds writes until the test releases them. Every test but the stall
//! runs on a standalone Redis and on a three-primary cluster.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use patternd_e2e::cache_keys;
use patternd_e2e::origin::Origin;
use patternd_e2e::raw::raw_request;
use patternd_e2e::{Backend, Patternd, Reply, World, eventually, on_every_backend};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// One request written by hand: reqwest (the `url` crate) would resolve `..`, `%2e%2e` and
/// `%2E` in the path before sending it, and those spellings are what this file is about.
/// Returns (status, the raw answer).
async fn raw(p: &Patternd, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_request(p.port(), req.into_bytes())
        .await
        .context("patternd did not answer")?;
    Ok((answer.status, answer.text))
}

/// Requests that reached the origin anywhere but `/items/<one segment>`.
fn off_item_paths(origin: &Origin) -> Vec<(String, String)> {
    origin
        .requests()
        .into_iter()
        .filter(|(_, path)| {
            let Some(seg) = path.strip_prefix("/items/") else {
                return true;
            };
            seg.is_empty() || seg.contains('/')
        })
        .collect()
}

async fn dot_segment_ids_are_refused_on_every_cache_route(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("...", "text/plain", b"three dots", &[]);
    origin.set("%2e%2e", "text/plain", b"percent", &[]);
    let policy = format!(
        "app: w\nrules:\n  r:\n    cache:\n      origin: {o}\n      ttl: 1h\n\
         \x20 t:\n    cache:\n      origin: {o}\n      ttl: 1h\n      write: through\n\
         \x20 h:\n    cache:\n      origin: {o}\n      ttl: 1h\n      format: hash\n      write: through\n\
         \x20 b:\n    cache:\n      origin: {o}\n      ttl: 1h\n      write: behind\n      retry_backoff: 50ms\n      max_attempts: 1\n\
         \x20 c:\n    cache:\n      ttl: 1h\n",
        o = origin.template()
    );
    let w = World::on(b, &[("w.yaml", &policy)], &[]).await?;
    let p = &w.patternd;

    // Every spelling of `.` and `..` a client can send, on every route of every kind of rule.
    for rule in ["r", "t", "h", "b", "c"] {
        for id in ["%2e%2e", "%2E%2E", ".%2e", "%2e.", "..", "%2e", "%2E", "."] {
            for method in ["GET", "DELETE", "PUT", "PATCH"] {
                let path = format!("/v1/cache/w/{rule}/{id}");
                let (status, text) = raw(p, method, &path, r#"{"a": 1}"#).await?;
                assert_eq!(status, 400, "{method} {path}: {text}");
                let lower = text.to_ascii_lowercase();
                assert!(
                    lower.contains("content-type: application/problem+json"),
                    "{method} {path}: {text}"
                );
                assert!(text.contains("path navigation"), "{method} {path}: {text}");
            }
        }
    }
    assert_eq!(
        off_item_paths(&origin),
        vec![],
        "the origin saw another path"
    );
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
    assert!(origin.writes().is_empty());

    // Ids that only look like dots stay one segment: `...` is a name, and `%2e%2e` (sent as
    // %252e%252e) is the four characters, percent-encoded again on the way to the origin.
    let (status, text) = raw(p, "GET", "/v1/cache/w/r/...", "").await?;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("three dots"), "{text}");
    let (status, text) = raw(p, "GET", "/v1/cache/w/r/%252e%252e", "").await?;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("percent"), "{text}");
    assert_eq!(
        origin.requests(),
        vec![
            ("GET".to_string(), "/items/...".to_string()),
            ("GET".to_string(), "/items/%252e%252e".to_string()),
        ]
    );
    Ok(())
}

on_every_backend!(dot_segment_ids_are_refused_on_every_cache_route);

/// A write journaled with a dot-segment id (by an engine from before ids were checked) is
/// never sent to the origin: the URL builder refuses it, so it ends in the dead letters.
async fn the_flusher_never_sends_a_dot_segment(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    let policy = format!(
        "app: w\nrules:\n  b:\n    cache:\n      origin: {}\n      ttl: 1h\n      write: behind\n      retry_backoff: 50ms\n      max_attempts: 1\n",
        origin.template()
    );
    let w = World::on(b, &[("w.yaml", &policy)], &[]).await?;
    let p = &w.patternd;
    for id in ["..", "."] {
        // Each id's journal is its slot group's, on whichever primary owns that group.
        let journal = cache_keys::journal_of("w", "b", id);
        let mut conn = w.redis.conn_for_key(&journal).await?;
        let _: String = redis::cmd("XADD")
            .arg(&journal)
            .arg("*")
            .arg("id")
            .arg(id)
            .arg("ct")
            .arg("text/plain")
            .arg("b")
            .arg("written to the origin's root")
            .query_async(&mut conn)
            .await?;
    }
    // A good write behind them is delivered: the flusher ran over all three.
    let r = p
        .send(
            p.client()
                .put(p.url("/v1/cache/w/b/ok"))
                .body("fine".to_string()),
        )
        .await?;
    assert_eq!(r.status, 202, "{r:?}");
    eventually(WAIT, "the good write delivered", || async {
        Ok((origin.item("ok").is_some()).then_some(()))
    })
    .await?;
    let dead = eventually(WAIT, "two dead letters", || async {
        let r = p.get("/admin/cache/w/b/dead-letters").await?;
        Ok((r.json["total"] == json!(2)).then_some(r))
    })
    .await?;
    for letter in dead.json["dead_letters"].as_array().into_iter().flatten() {
        let error = letter["error"].as_str().unwrap_or("");
        assert!(error.contains("one path segment"), "{letter}");
    }
    assert_eq!(
        off_item_paths(&origin),
        vec![],
        "the origin saw another path"
    );
    assert_eq!(
        origin.requests(),
        vec![("PUT".to_string(), "/items/ok".to_string())]
    );
    Ok(())
}

on_every_backend!(the_flusher_never_sends_a_dot_segment);

/// With `related: ["{id}:reviews"]`, every id PUT and GET accept can be deleted, up to the
/// bound: a related id past 512 bytes cannot hold a value, so there is nothing to drop.
async fn every_id_put_and_get_accept_can_be_deleted(b: Backend) -> Result<()> {
    let w = World::on(b,
        &[(
            "w.yaml",
            "app: w\nrules:\n  c:\n    cache:\n      ttl: 1h\n      related: [\"{id}:reviews\", \"more:{id}:more\"]\n",
        )],
        &[],
    )
    .await?;
    let p = &w.patternd;
    let put = |id: String, body: &'static str| async move {
        p.send(
            p.client()
                .put(p.url(&format!("/v1/cache/w/c/{id}")))
                .body(body),
        )
        .await
    };
    for len in 495..=512usize {
        let id = "x".repeat(len);
        let related = [format!("{id}:reviews"), format!("more:{id}:more")];
        assert_eq!(put(id.clone(), "main").await?.status, 204, "PUT {len}");
        let fits: Vec<&String> = related.iter().filter(|r| r.len() <= 512).collect();
        for r in &fits {
            assert_eq!(put((*r).clone(), "related").await?.status, 204);
        }
        let g = p.get(&format!("/v1/cache/w/c/{id}")).await?;
        assert_eq!((g.status, g.text.as_str()), (200, "main"), "GET {len}");

        let d = p.delete(&format!("/v1/cache/w/c/{id}")).await?;
        assert_eq!(d.status, 200, "DELETE of a {len}-byte id: {d:?}");
        assert_eq!(d.json["deleted"], json!(1 + fits.len()), "{len}: {d:?}");
        p.get(&format!("/v1/cache/w/c/{id}"))
            .await?
            .assert_problem(404);
        for r in &fits {
            p.get(&format!("/v1/cache/w/c/{r}"))
                .await?
                .assert_problem(404);
        }
    }
    // The bound itself holds for every route.
    let long = "x".repeat(513);
    put(long.clone(), "v").await?.assert_problem(400);
    p.get(&format!("/v1/cache/w/c/{long}"))
        .await?
        .assert_problem(400);
    p.delete(&format!("/v1/cache/w/c/{long}"))
        .await?
        .assert_problem(400);
    // Every value was deleted; what is left are the write markers DELETE leaves in the leases
    // (they stop fills that were in flight, and expire after max(refresh_lease,
    // origin_timeout + 1s)).
    let mut nodes = w.redis.nodes().await?;
    for k in w.redis.scan_all().await? {
        let name = String::from_utf8_lossy(&k).into_owned();
        assert!(name.ends_with(":lease"), "a value was left: {name}");
        let marker: String = redis::cmd("GET")
            .arg(&k)
            .query_async(nodes.conn(&k)?)
            .await?;
        assert_eq!(marker, "W", "{name}");
    }
    Ok(())
}

on_every_backend!(every_id_put_and_get_accept_can_be_deleted);

/// The test's own redis-server process, stopped with SIGSTOP (a stall: connections stay
/// open, nothing is answered) and continued when dropped, so a failing test never leaves it
/// stopped.
struct Stalled(u32);

impl Stalled {
    async fn start(w: &World) -> Result<Self> {
        let mut conn = w.redis.conn().await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        let pid: u32 = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|v| v.trim().parse().ok())
            .context("no process_id in INFO")?;
        signal("-STOP", pid)?;
        Ok(Self(pid))
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        let _ = signal("-CONT", self.0);
    }
}

fn signal(sig: &str, pid: u32) -> Result<()> {
    let st = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()?;
    ensure!(st.success(), "kill {sig} {pid} failed");
    Ok(())
}

/// Through rules whose origin may hold a write as long as the test needs; after a failed
/// cache update, readers wait `fill_wait` for the write's marker before reading the origin.
fn through_policy(origin: &Origin) -> String {
    format!(
        "app: w\nrules:\n  t:\n    cache:\n      origin: {o}\n      ttl: 1h\n      write: through\n      origin_timeout: 20s\n      fill_wait: 1s\n\
         \x20 h:\n    cache:\n      origin: {o}\n      ttl: 1h\n      format: hash\n      write: through\n      origin_timeout: 20s\n      fill_wait: 1s\n",
        o = origin.template()
    )
}

async fn get_text(p: &Patternd, path: &str) -> Result<(u16, String)> {
    let r = p.get(path).await?;
    Ok((r.status, r.text))
}

/// Redis stalls after the origin accepted a write-through: the answer must not say
/// "nothing was written" (the origin has it), and once Redis is back no read serves the value
/// the write replaced. And when Redis is stalled before the write, nothing reaches the origin
/// and the 503 says so truthfully.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_through_during_a_redis_stall_tells_the_truth() -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("k", "text/plain", b"old", &[]);
    let w = World::start(&[("w.yaml", &through_policy(&origin))], &[]).await?;
    let p = &w.patternd;
    assert_eq!(get_text(p, "/v1/cache/w/t/k").await?, (200, "old".into()));

    // Stalled before the write: 503, and the origin never saw it.
    {
        let _stall = Stalled::start(&w).await?;
        let r = p
            .send(p.client().put(p.url("/v1/cache/w/t/k")).body("early"))
            .await?;
        r.assert_problem(503);
        assert!(r.detail().contains("nothing was written"), "{r:?}");
    }
    assert_eq!(origin.hits("PUT", "k"), 0);
    assert!(origin.writes().is_empty());

    // Stalled while the origin holds the write: Redis stops after the write's first step,
    // the origin accepts, and the step that stores the value meets the stall.
    origin.hold_writes();
    let (r, stall) = tokio::join!(
        p.send(
            p.client()
                .put(p.url("/v1/cache/w/t/k"))
                .header("content-type", "text/plain")
                .body("new")
        ),
        async {
            eventually(WAIT, "the PUT at the origin", || async {
                Ok((origin.hits("PUT", "k") == 1).then_some(()))
            })
            .await?;
            let stall = Stalled::start(&w).await?;
            origin.release_writes();
            anyhow::Ok(stall)
        }
    );
    // Redis continues only once patternd has answered.
    let (r, stall) = (r?, stall?);
    drop(stall);
    assert_eq!(
        origin.item("k").map(|i| i.body),
        Some(b"new".to_vec()),
        "the origin has the write"
    );
    assert!(
        !r.text.contains("nothing was written"),
        "the origin has the write, the answer says otherwise: {r:?}"
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        r.header("patternd-degraded"),
        Some("cache-not-updated"),
        "{r:?}"
    );
    for _ in 0..3 {
        assert_eq!(get_text(p, "/v1/cache/w/t/k").await?, (200, "new".into()));
    }
    Ok(())
}

/// Redis refuses the script that stores a write-through after the origin accepted it (here
/// by ACL; in production: OOM, a failover, a lost connection): the answer says the origin has
/// the write, and no read serves the value it replaced — for PUT and for PATCH.
async fn a_failed_cache_update_never_serves_the_replaced_value(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("k", "text/plain", b"old", &[]);
    origin.set("o", "application/json", br#"{"a": 1, "b": 1}"#, &[]);
    let w = World::on(b, &[("w.yaml", &through_policy(&origin))], &[]).await?;
    let p = &w.patternd;
    assert_eq!(get_text(p, "/v1/cache/w/t/k").await?, (200, "old".into()));
    let g = p.get("/v1/cache/w/h/o").await?;
    assert_eq!((g.status, g.json), (200, json!({"a": 1, "b": 1})));
    let mut nodes = w.redis.nodes().await?;

    origin.hold_writes();
    // On every primary: a cluster refuses the scripts wherever the keys are.
    let redis = &w.redis;
    let acl = |rule: &'static str| async move {
        for mut c in redis.nodes().await?.all().map(|c| c.clone()) {
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg("default")
                .arg(rule)
                .query_async(&mut c)
                .await?;
        }
        anyhow::Ok(())
    };
    let refuse_scripts = || acl("-evalsha");
    let allow_scripts = || acl("+@all");
    // PUT, then PATCH: each reaches the origin, the scripts are refused, the origin answers.
    let put = p
        .client()
        .put(p.url("/v1/cache/w/t/k"))
        .header("content-type", "text/plain")
        .body("new");
    let patch = p
        .client()
        .patch(p.url("/v1/cache/w/h/o"))
        .header("content-type", "application/json")
        .body(r#"{"a": 2}"#);
    for (req, method, id) in [(put, "PUT", "k"), (patch, "PATCH", "o")] {
        let (r, done) = tokio::join!(p.send(req), async {
            eventually(WAIT, "the write at the origin", || async {
                Ok((origin.hits(method, id) == 1).then_some(()))
            })
            .await?;
            refuse_scripts().await?;
            origin.release_writes();
            anyhow::Ok(())
        });
        done?;
        let r: Reply = r?;
        allow_scripts().await?;
        origin.hold_writes();
        assert_eq!(r.status, 204, "{method}: {r:?}");
        assert_eq!(
            r.header("patternd-degraded"),
            Some("cache-not-updated"),
            "{method}: {r:?}"
        );
    }
    origin.release_writes();
    assert_eq!(origin.writes().len(), 2);

    // The replaced values are never served: reads get the origin's (written) copies.
    for _ in 0..3 {
        assert_eq!(get_text(p, "/v1/cache/w/t/k").await?, (200, "new".into()));
        let g = p.get("/v1/cache/w/h/o").await?;
        assert_eq!(
            (g.status, g.json.clone()),
            (200, json!({"a": 2, "b": 1})),
            "{g:?}"
        );
    }
    // Every key left behind still expires.
    for k in w.redis.scan_all().await? {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&k)
            .query_async(nodes.conn(&k)?)
            .await?;
        assert!(pttl > 0, "{} has no TTL", String::from_utf8_lossy(&k));
    }
    Ok(())
}

on_every_backend!(a_failed_cache_update_never_serves_the_replaced_value);

/// The write-through steps around the origin, seen from Redis: while the origin holds the
/// write, the old value is not served (readers wait for the write); a refusal puts the value
/// back as it was; a timeout (the origin may have applied the write) drops it.
async fn a_write_through_in_flight_hides_the_value_it_replaces(b: Backend) -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("k", "text/plain", b"old", &[]);
    let policy = format!(
        "app: w\nrules:\n  t:\n    cache:\n      origin: {}\n      ttl: 1h\n      write: through\n      origin_timeout: 2s\n      fill_wait: 1m\n",
        origin.template()
    );
    let w = World::on(b, &[("w.yaml", &policy)], &[]).await?;
    let p = &w.patternd;
    assert_eq!(get_text(p, "/v1/cache/w/t/k").await?, (200, "old".into()));
    // Every key this test reads is `k`'s; the listing spans every primary.
    let mut conn = w
        .redis
        .conn_for_key(cache_keys::key("w", "t", "k", "v"))
        .await?;
    let keys = |_: &mut redis::aio::MultiplexedConnection| async {
        let ks: BTreeSet<String> = w.redis.scan_names().await?.into_iter().collect();
        anyhow::Ok(ks)
    };

    // Refused: the value is back, with its expiry.
    origin.fail_writes_with(Some(422));
    origin.hold_writes();
    let (r, seen) = tokio::join!(
        p.send(p.client().put(p.url("/v1/cache/w/t/k")).body("refused")),
        async {
            eventually(WAIT, "the PUT at the origin", || async {
                Ok((origin.hits("PUT", "k") == 1).then_some(()))
            })
            .await?;
            let seen = keys(&mut conn).await?;
            origin.release_writes();
            anyhow::Ok(seen)
        }
    );
    let (r, seen) = (r?, seen?);
    r.assert_problem(502);
    assert!(r.detail().contains("the cache was not changed"), "{r:?}");
    assert!(
        seen.contains(&cache_keys::key("w", "t", "k", "held")),
        "{seen:?}"
    );
    assert!(
        !seen.contains(&cache_keys::key("w", "t", "k", "v")),
        "{seen:?}"
    );
    let ks = keys(&mut conn).await?;
    assert_eq!(
        ks,
        BTreeSet::from([cache_keys::key("w", "t", "k", "v")]),
        "restored, nothing else left"
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(cache_keys::key("w", "t", "k", "v"))
        .query_async(&mut conn)
        .await?;
    assert!(
        pttl > 3_000_000,
        "the restored value keeps its hour: {pttl}"
    );
    let g = p.get("/v1/cache/w/t/k").await?;
    assert_eq!((g.status, g.text.as_str()), (200, "old"));
    assert!(
        g.header("cache-status").unwrap_or("").contains("hit"),
        "{g:?}"
    );
    origin.fail_writes_with(None);

    // A read during the write waits for it and gets the new value, never the old one.
    origin.hold_writes();
    let (r, g) = tokio::join!(
        p.send(p.client().put(p.url("/v1/cache/w/t/k")).body("new")),
        async {
            eventually(WAIT, "the PUT at the origin", || async {
                Ok((origin.hits("PUT", "k") == 2).then_some(()))
            })
            .await?;
            let read = p.get("/v1/cache/w/t/k");
            let (g, ()) = tokio::join!(read, async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                origin.release_writes();
            });
            g
        }
    );
    let (r, g) = (r?, g?);
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!((g.status, g.text.as_str()), (200, "new"), "{g:?}");
    assert_eq!(
        origin.gets("k"),
        1,
        "the waiting read did not go to the origin"
    );

    // Timed out at the origin (still holding it): the origin may apply the write any time,
    // so the cached value is dropped and the next read asks the origin.
    origin.hold_writes();
    let r = p
        .send(p.client().put(p.url("/v1/cache/w/t/k")).body("late"))
        .await?;
    r.assert_problem(504);
    assert!(r.detail().contains("dropped"), "{r:?}");
    let ks = keys(&mut conn).await?;
    assert!(!ks.contains(&cache_keys::key("w", "t", "k", "v")), "{ks:?}");
    assert!(
        !ks.contains(&cache_keys::key("w", "t", "k", "held")),
        "{ks:?}"
    );
    let g = p.get("/v1/cache/w/t/k").await?;
    assert_eq!((g.status, g.text.as_str()), (200, "new"), "{g:?}");
    assert!(
        g.header("cache-status").unwrap_or("").contains("fwd=miss"),
        "{g:?}"
    );
    assert_eq!(
        origin.gets("k"),
        2,
        "the read after the timeout asked the origin"
    );
    origin.release_writes();
    Ok(())
}

on_every_backend!(a_write_through_in_flight_hides_the_value_it_replaces);
