//! Sessions end to end over HTTP against a real Redis: the whole lifecycle, idle and absolute
//! timeouts, no resurrection, rotation, logout everywhere, max_per_user, bad ids, the plugin
//! hook, and the key layout (TTLs, one hash slot per user). Every test but the outage runs on
//! a standalone Redis and on a three-primary cluster; the users of the logout test (alice, bob,
//! erin, `{x}`) have their shards on all three primaries.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use patternd_e2e::{
    Backend, Patternd, Reply, TempDir, World, burst, eventually, on_every_backend, policy_dir,
};
use redis::AsyncCommands as _;
use serde_json::{Value, json};

const POLICY: &str = "app: shop
rules:
  web: { session: { idle_ttl: 30m, absolute_ttl: 24h, max_per_user: 5 } }
  idle: { session: { idle_ttl: 1s, absolute_ttl: 1h } }
  capped: { session: { idle_ttl: 1h, absolute_ttl: 2s } }
  two: { session: { idle_ttl: 30m, absolute_ttl: 24h, max_per_user: 2 } }
  order: { lock: { ttl: 30s } }
";

async fn create(p: &Patternd, rule: &str, user: &str, data: Value) -> Result<String> {
    let r = p
        .post_json(
            &format!("/v1/sessions/shop/{rule}"),
            &json!({ "user": user, "data": data }),
        )
        .await?;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.json["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/sessions/shop/{rule}/{id}").as_str())
    );
    Ok(id)
}

async fn get(p: &Patternd, rule: &str, sid: &str) -> Result<Reply> {
    p.get(&format!("/v1/sessions/shop/{rule}/{sid}")).await
}

async fn patch(p: &Patternd, rule: &str, sid: &str, data: Value) -> Result<Reply> {
    let req = p
        .client()
        .patch(p.url(&format!("/v1/sessions/shop/{rule}/{sid}")))
        .json(&json!({ "data": data }));
    p.send(req).await
}

async fn listed(p: &Patternd, rule: &str, user: &str) -> Result<Vec<String>> {
    let r = p
        .get(&format!("/v1/sessions/shop/{rule}/users/{user}"))
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    Ok(r.json["sessions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

async fn session_keys(w: &World) -> Result<Vec<String>> {
    w.redis.scan_names().await
}

async fn the_whole_lifecycle(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let sid = create(
        p,
        "web",
        "alice",
        json!({ "cart": 3, "lang": "en", "gone": null }),
    )
    .await?;
    // `<4 hex shard>.<random base64url>`: at least 128 random bits.
    let (shard, random) = sid.split_once('.').unwrap_or_default();
    assert!(
        shard.len() == 4 && shard.bytes().all(|c| c.is_ascii_hexdigit()),
        "{sid}"
    );
    assert!(random.len() * 6 >= 128, "{sid}");
    assert!(
        random
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
        "{sid}"
    );

    let r = get(p, "web", &sid).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["user"], "alice");
    assert_eq!(r.json["data"], json!({ "cart": 3, "lang": "en" }));
    let ttl = r.u64_field("expires_in_ms");
    assert!(ttl > 29 * 60_000 && ttl <= 30 * 60_000, "{r:?}");

    // Field-level merge: set one, delete one, leave the rest.
    let r = patch(
        p,
        "web",
        &sid,
        json!({ "cart": { "items": [1, 2] }, "lang": null }),
    )
    .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let r = get(p, "web", &sid).await?;
    assert_eq!(
        r.json["data"],
        json!({ "cart": { "items": [1, 2] } }),
        "{r:?}"
    );

    // Every key has a TTL, and a user's keys share one hash tag (one cluster slot).
    let keys = session_keys(&w).await?;
    assert_eq!(keys.len(), 3, "session + two index keys: {keys:?}");
    let mut nodes = w.redis.nodes().await?;
    for k in &keys {
        let ttl: i64 = nodes.conn(k)?.pttl(k).await?;
        assert!(ttl > 0, "{k} has no TTL");
        assert!(k.starts_with("shop:session:web:{"), "{k}");
        assert!(
            k.contains(&format!("{{{shard}}}")),
            "{k} is not in shard {shard}"
        );
    }

    let r = p.delete(&format!("/v1/sessions/shop/web/{sid}")).await?;
    assert_eq!(
        (r.status, &r.json),
        (200, &json!({"destroyed": true})),
        "{r:?}"
    );
    get(p, "web", &sid).await?.assert_problem(404);
    // A late write after logout does not bring the session back.
    patch(p, "web", &sid, json!({ "cart": 4 }))
        .await?
        .assert_problem(404);
    get(p, "web", &sid).await?.assert_problem(404);
    assert!(session_keys(&w).await?.is_empty(), "nothing left behind");
    let r = p.delete(&format!("/v1/sessions/shop/web/{sid}")).await?;
    assert_eq!(
        (r.status, &r.json),
        (200, &json!({"destroyed": false})),
        "{r:?}"
    );

    let m = p.get("/metrics").await?.text;
    let count = |op: &str| {
        patternd_e2e::metric_value(
            &m,
            "patternd_session_requests_total",
            &[("app", "shop"), ("rule", "web"), ("op", op)],
        )
    };
    assert_eq!(count("create"), Some(1.0), "{m}");
    assert_eq!(count("read"), Some(2.0), "{m}");
    assert_eq!(count("not_found"), Some(3.0), "{m}");
    Ok(())
}

on_every_backend!(the_whole_lifecycle);

async fn late_writes_racing_a_delete_never_resurrect(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = Arc::new(w.patternd);
    for round in 0..5 {
        let sid = create(&p, "web", "racer", json!({ "n": 0 })).await?;
        let replies = burst(20, |i| {
            let (p, sid) = (p.clone(), sid.clone());
            async move {
                if i == 10 {
                    p.delete(&format!("/v1/sessions/shop/web/{sid}")).await
                } else {
                    patch(&p, "web", &sid, json!({ "n": i })).await
                }
            }
        })
        .await?;
        for r in replies {
            assert!(r.status == 200 || r.status == 404, "{r:?}");
        }
        get(&p, "web", &sid).await?.assert_problem(404);
        assert!(
            listed(&p, "web", "racer").await?.is_empty(),
            "round {round}"
        );
    }
    let keys = w.redis.scan_names().await?;
    assert!(keys.is_empty(), "{keys:?}");
    Ok(())
}

on_every_backend!(late_writes_racing_a_delete_never_resurrect);

async fn an_idle_session_expires(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let sid = create(p, "idle", "bob", json!({})).await?;
    let r = get(p, "idle", &sid).await?;
    assert!(r.u64_field("expires_in_ms") <= 1000, "{r:?}");
    // Listing does not touch the session; wait for it to drop out of the index.
    eventually(
        Duration::from_secs(20),
        "the idle session to expire",
        || async { Ok(listed(p, "idle", "bob").await?.is_empty().then_some(())) },
    )
    .await?;
    get(p, "idle", &sid).await?.assert_problem(404);
    patch(p, "idle", &sid, json!({ "x": 1 }))
        .await?
        .assert_problem(404);
    eventually(Duration::from_secs(20), "every key to expire", || async {
        Ok(session_keys(&w).await?.is_empty().then_some(()))
    })
    .await?;
    Ok(())
}

on_every_backend!(an_idle_session_expires);

async fn activity_never_extends_the_absolute_lifetime(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let sid = create(p, "capped", "carol", json!({ "a": 1 })).await?;
    let rotated = p
        .post_json(
            &format!("/v1/sessions/shop/capped/{sid}/rotate"),
            &json!({}),
        )
        .await?;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    assert!(rotated.u64_field("expires_in_ms") <= 2000, "{rotated:?}");
    let sid = rotated.json["id"].as_str().unwrap_or_default().to_string();
    // Read and write constantly: the session still ends at absolute_ttl.
    let mut reads = 0u32;
    eventually(
        Duration::from_secs(20),
        "the absolute lifetime to end",
        || {
            reads += 1;
            let sid = sid.clone();
            async move {
                let r = get(p, "capped", &sid).await?;
                if r.status == 404 {
                    return Ok(Some(()));
                }
                assert_eq!(r.status, 200, "{r:?}");
                assert!(
                    r.u64_field("expires_in_ms") <= 2000,
                    "slid past the cap: {r:?}"
                );
                let r = patch(p, "capped", &sid, json!({ "a": 2 })).await?;
                assert!(r.status == 200 || r.status == 404, "{r:?}");
                Ok(None)
            }
        },
    )
    .await?;
    patch(p, "capped", &sid, json!({ "a": 3 }))
        .await?
        .assert_problem(404);
    Ok(())
}

on_every_backend!(activity_never_extends_the_absolute_lifetime);

async fn rotation_moves_the_session_and_kills_the_old_id(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let old = create(p, "web", "dave", json!({ "role": "admin" })).await?;
    let other = create(p, "web", "dave", json!({})).await?;
    let r = p
        .post_json(&format!("/v1/sessions/shop/web/{old}/rotate"), &json!({}))
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let new = r.json["id"].as_str().unwrap_or_default().to_string();
    assert_ne!(new, old);
    assert_eq!(
        new.split('.').next(),
        old.split('.').next(),
        "same shard, same slot"
    );
    get(p, "web", &old).await?.assert_problem(404);
    patch(p, "web", &old, json!({ "role": "x" }))
        .await?
        .assert_problem(404);
    let r = get(p, "web", &new).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (&r.json["user"], &r.json["data"]),
        (&json!("dave"), &json!({ "role": "admin" }))
    );
    // The index follows, keeping the creation order (the rotated one is still the older).
    assert_eq!(listed(p, "web", "dave").await?, vec![new.clone(), other]);
    // A dead id cannot be rotated.
    p.post_json(&format!("/v1/sessions/shop/web/{old}/rotate"), &json!({}))
        .await?
        .assert_problem(404);
    Ok(())
}

on_every_backend!(rotation_moves_the_session_and_kills_the_old_id);

async fn logout_everywhere_and_max_per_user(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let mut alice = Vec::new();
    for i in 0..3 {
        alice.push(create(p, "web", "alice", json!({ "device": i })).await?);
    }
    let bob = create(p, "web", "bob", json!({})).await?;
    assert_eq!(listed(p, "web", "alice").await?, alice);
    let r = p.delete("/v1/sessions/shop/web/users/alice").await?;
    assert_eq!(
        (r.status, &r.json),
        (200, &json!({"destroyed": 3})),
        "{r:?}"
    );
    for sid in &alice {
        get(p, "web", sid).await?.assert_problem(404);
    }
    assert!(listed(p, "web", "alice").await?.is_empty());
    assert_eq!(get(p, "web", &bob).await?.status, 200);
    let r = p.delete("/v1/sessions/shop/web/users/alice").await?;
    assert_eq!(r.json, json!({"destroyed": 0}), "{r:?}");

    // max_per_user: 2 → the third create evicts the oldest.
    let s1 = create(p, "two", "erin", json!({})).await?;
    let s2 = create(p, "two", "erin", json!({})).await?;
    assert_eq!(
        get(p, "two", &s1).await?.status,
        200,
        "reading does not reorder"
    );
    let s3 = create(p, "two", "erin", json!({})).await?;
    get(p, "two", &s1).await?.assert_problem(404);
    assert_eq!(get(p, "two", &s2).await?.status, 200);
    assert_eq!(get(p, "two", &s3).await?.status, 200);
    assert_eq!(listed(p, "two", "erin").await?, vec![s2, s3]);
    // Users whose names need escaping stay apart from everyone else.
    for user in ["a}b", "{x}", "user/with spaces", "ü"] {
        let sid = create(p, "two", user, json!({ "who": user })).await?;
        let r = get(p, "two", &sid).await?;
        assert_eq!(r.json["user"], user);
        let path = format!(
            "/v1/sessions/shop/two/users/{}",
            user.replace('/', "%2F")
                .replace(' ', "%20")
                .replace('{', "%7B")
                .replace('}', "%7D")
        );
        let r = p.get(&path).await?;
        assert_eq!(
            r.json["sessions"].as_array().map(Vec::len),
            Some(1),
            "{user}: {r:?}"
        );
    }
    Ok(())
}

on_every_backend!(logout_everywhere_and_max_per_user);

async fn bad_ids_and_bad_bodies_are_clear_problems(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let real = create(p, "web", "frank", json!({})).await?;
    let (shard, random) = real.split_once('.').unwrap_or_default();
    let forged = format!("{shard}.{}", "A".repeat(random.len()));
    let other_shard = format!("{}.{random}", if shard == "0000" { "0001" } else { "0000" });
    for bad in [
        "garbage",
        "abcd",
        "ABCD.xyz",
        &format!("{shard}.short"),
        &format!("{shard}.{random}x"),
        &forged,
        &other_shard,
        "%7B%7D.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ] {
        get(p, "web", bad).await?.assert_problem(404);
        patch(p, "web", bad, json!({ "x": 1 }))
            .await?
            .assert_problem(404);
        p.post_json(&format!("/v1/sessions/shop/web/{bad}/rotate"), &json!({}))
            .await?
            .assert_problem(404);
        let r = p.delete(&format!("/v1/sessions/shop/web/{bad}")).await?;
        assert_eq!(r.json, json!({"destroyed": false}), "{bad}: {r:?}");
    }
    assert_eq!(
        get(p, "web", &real).await?.status,
        200,
        "the real one is untouched"
    );

    let post = |body: &'static str| p.post_raw("/v1/sessions/shop/web", body);
    for body in [
        "",
        "[]",
        "{}",
        r#"{"user": ""}"#,
        r#"{"user": true}"#,
        r#"{"user": "a", "data": [1]}"#,
        r#"{"user": "a", "data": {"": 1}}"#,
        r#"{"user": "a", "colour": "red"}"#,
        "{nope",
    ] {
        post(body).await?.assert_problem(400);
    }
    // A numeric user id is its decimal text.
    let r = p
        .post_json("/v1/sessions/shop/web", &json!({ "user": 42 }))
        .await?;
    assert_eq!(r.status, 201, "{r:?}");
    let sid = r.json["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(get(p, "web", &sid).await?.json["user"], "42");
    let long_user = "u".repeat(600);
    let r = p
        .post_json("/v1/sessions/shop/web", &json!({ "user": long_user }))
        .await?;
    r.assert_problem(400);
    assert!(r.detail().contains("`user` is 600 bytes"), "{r:?}");
    let req = p
        .client()
        .patch(p.url(&format!("/v1/sessions/shop/web/{real}")))
        .json(&json!({ "cart": 1 }));
    p.send(req).await?.assert_problem(400);
    p.post_json("/v1/sessions/shop/nope", &json!({ "user": "a" }))
        .await?
        .assert_problem(404);
    p.post_json("/v1/sessions/shop/order", &json!({ "user": "a" }))
        .await?
        .assert_problem(404);
    p.post_json("/v1/sessions/nope/web", &json!({ "user": "a" }))
        .await?
        .assert_problem(404);
    Ok(())
}

on_every_backend!(bad_ids_and_bad_bodies_are_clear_problems);

const GUARD_PLUGIN: &str = r#"-- session hook: rejects banned users' sessions, and sessions read without the header the
-- rule's config names.
local cfg = {}
local function init(config)
  cfg.header = config.header
end
local function session(req, s)
  if s.data.banned == true then
    return { reject = 'user is banned' }
  end
  if cfg.header and not req.headers[cfg.header] then
    return { reject = 'missing ' .. cfg.header }
  end
  return 'allow'
end
return { init = init, session = session }
"#;

async fn a_plugin_session_hook_validates_on_read(b: Backend) -> Result<()> {
    let plugins = TempDir::new("session-plugins")?;
    plugins.write("guard.lua", GUARD_PLUGIN)?;
    let policy = "app: shop
rules:
  guarded:
    session:
      idle_ttl: 30m
      absolute_ttl: 24h
      plugin: { name: guard, config: { header: x-device } }
";
    let dir = policy_dir(&[("shop.yaml", policy)])?;
    let plugin_dir = plugins.path().to_string_lossy().to_string();
    let p = Patternd::start(&b.url(), dir.path(), &["--plugins", &plugin_dir]).await?;
    let ok = create(&p, "guarded", "gina", json!({ "banned": false })).await?;
    let banned = create(&p, "guarded", "hank", json!({ "banned": true })).await?;
    let with = [("x-device", "phone")];
    let r = p
        .get_with(&format!("/v1/sessions/shop/guarded/{ok}"), &with)
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let r = p.get(&format!("/v1/sessions/shop/guarded/{ok}")).await?;
    r.assert_problem(403);
    assert!(r.detail().contains("missing x-device"), "{r:?}");
    let r = p
        .get_with(&format!("/v1/sessions/shop/guarded/{banned}"), &with)
        .await?;
    r.assert_problem(403);
    assert!(r.detail().contains("banned"), "{r:?}");
    // A rejected session is not deleted by the hook; the owner can still destroy it.
    let r = p
        .delete(&format!("/v1/sessions/shop/guarded/{banned}"))
        .await?;
    assert_eq!(r.json, json!({"destroyed": true}), "{r:?}");
    // Unknown ids are 404 before the plugin is asked.
    p.get_with("/v1/sessions/shop/guarded/garbage", &with)
        .await?
        .assert_problem(404);
    Ok(())
}

on_every_backend!(a_plugin_session_hook_validates_on_read);

/// Echoes the times the host passes into its rejection reason when asked (`x-echo`), and
/// otherwise rejects only a session seen before it was created (which would be a host bug).
const TIMES_PLUGIN: &str = r#"local function ms(n)
  return string.format('%.0f', n)
end
local function session(req, s)
  if type(s.created_ms) ~= 'number' or type(s.last_seen_ms) ~= 'number' then
    return { reject = 'no times' }
  end
  if req.headers['x-echo'] then
    return { reject = 'created=' .. ms(s.created_ms) .. ' seen=' .. ms(s.last_seen_ms) }
  end
  if s.created_ms <= 0 or s.last_seen_ms < s.created_ms then
    return { reject = 'impossible times' }
  end
  return 'allow'
end
return { session = session }
"#;

/// `created=<ms> seen=<ms>` from an echoing hook's rejection.
fn echoed(r: &Reply) -> Result<(u64, u64)> {
    r.assert_problem(403);
    let d = r.detail();
    let num = |tag: &str| -> Result<u64> {
        let rest = d
            .split_once(tag)
            .ok_or_else(|| anyhow::anyhow!("no {tag} in {d:?}"))?
            .1;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Ok(digits.parse()?)
    };
    Ok((num("created=")?, num("seen=")?))
}

/// Reads a session with the hook echoing (403, nothing touched) and returns what it saw.
async fn hook_sees(p: &Patternd, sid: &str) -> Result<(u64, u64)> {
    echoed(
        &p.get_with(
            &format!("/v1/sessions/shop/timed/{sid}"),
            &[("x-echo", "1")],
        )
        .await?,
    )
}

async fn the_session_hook_sees_created_and_last_seen_times(b: Backend) -> Result<()> {
    let plugins = TempDir::new("session-plugins-times")?;
    plugins.write("times.lua", TIMES_PLUGIN)?;
    let policy = "app: shop
rules:
  timed:
    session: { idle_ttl: 30m, absolute_ttl: 24h, plugin: { name: times } }
";
    let dir = policy_dir(&[("shop.yaml", policy)])?;
    let plugin_dir = plugins.path().to_string_lossy().to_string();
    let p = Patternd::start(&b.url(), dir.path(), &["--plugins", &plugin_dir]).await?;
    let sid = create(&p, "timed", "tess", json!({ "cart": 1 })).await?;
    // Times are Redis TIME in ms: pausing between touches makes each one a later ms, so the
    // comparisons below are strict. Nothing is timed.
    let pause = || tokio::time::sleep(Duration::from_millis(20));

    // Before any read, the last touch is the creation.
    let (created, seen) = hook_sees(&p, &sid).await?;
    assert_eq!(seen, created, "fresh session");
    pause().await;
    let first = get(&p, "timed", &sid).await?;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.json["created_ms"], json!(created), "{first:?}");
    assert_eq!(first.json["last_seen_ms"], json!(created), "{first:?}");

    // The first read was a touch: the hook now sees it, later than the creation.
    pause().await;
    let (c2, read_at) = hook_sees(&p, &sid).await?;
    assert_eq!(c2, created);
    assert!(read_at > created, "read at {read_at}, created {created}");
    // A rejected read is no touch: the next read reports the same last touch.
    let again = get(&p, "timed", &sid).await?;
    assert_eq!(again.json["last_seen_ms"], json!(read_at), "{again:?}");

    // PATCH and rotate are touches too; creation time survives rotation.
    pause().await;
    let r = patch(&p, "timed", &sid, json!({ "cart": 2 })).await?;
    assert_eq!(r.status, 200, "{r:?}");
    let (_, patched_at) = hook_sees(&p, &sid).await?;
    assert!(patched_at > read_at, "patched {patched_at}, read {read_at}");
    pause().await;
    let r = p
        .post_json(&format!("/v1/sessions/shop/timed/{sid}/rotate"), &json!({}))
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let new = r.json["id"].as_str().unwrap_or_default().to_string();
    let (c3, rotated_at) = hook_sees(&p, &new).await?;
    assert_eq!(c3, created, "rotation keeps the creation time");
    assert!(
        rotated_at > patched_at,
        "rotated {rotated_at}, patched {patched_at}"
    );
    // The user's list shows the same times (listing is no touch).
    let r = p.get("/v1/sessions/shop/timed/users/tess").await?;
    let listed = &r.json["sessions"][0];
    assert_eq!(
        r.json["sessions"].as_array().map(Vec::len),
        Some(1),
        "{r:?}"
    );
    assert_eq!(listed["id"], json!(new), "{r:?}");
    assert_eq!(listed["created_ms"], json!(created), "{r:?}");
    assert_eq!(listed["last_seen_ms"], json!(rotated_at), "{r:?}");
    assert!(
        listed["expires_in_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{r:?}"
    );
    Ok(())
}

on_every_backend!(the_session_hook_sees_created_and_last_seen_times);

#[tokio::test(flavor = "multi_thread")]
async fn a_session_rule_naming_a_missing_plugin_or_hook_is_refused() -> Result<()> {
    let plugins = TempDir::new("session-plugins-bad")?;
    plugins.write("nohook.lua", "return { rate_limit = function(req) end }\n")?;
    let dir = policy_dir(&[(
        "shop.yaml",
        "app: shop\nrules:\n  s: { session: { idle_ttl: 1m, absolute_ttl: 1h, plugin: { name: nohook } } }\n",
    )])?;
    let out = patternd_e2e::run_cli(&[
        "check",
        &dir.path().to_string_lossy(),
        "--plugins",
        &plugins.path().to_string_lossy(),
    ])?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("has no `session` hook"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_is_a_503_never_a_404() -> Result<()> {
    let mut w = World::start(&[("shop.yaml", POLICY)], &[]).await?;
    let sid = create(&w.patternd, "web", "ivy", json!({})).await?;
    w.redis.stop();
    for _ in 0..3 {
        // "Redis is down" must not read as "logged out".
        get(&w.patternd, "web", &sid).await?.assert_problem(503);
        w.patternd
            .post_json("/v1/sessions/shop/web", &json!({ "user": "ivy" }))
            .await?
            .assert_problem(503);
    }
    w.redis.restart_same_port()?;
    eventually(Duration::from_secs(20), "sessions to recover", || async {
        let r = w
            .patternd
            .post_json("/v1/sessions/shop/web", &json!({ "user": "ivy" }))
            .await?;
        Ok((r.status == 201).then_some(()))
    })
    .await?;
    Ok(())
}

async fn a_session_holds_a_bounded_number_of_fields(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let sid = create(p, "web", "greedy", json!({})).await?;
    let batch = |from: usize| -> Value {
        Value::Object(
            (from..from + 256)
                .map(|i| (format!("f{i}"), json!(i)))
                .collect(),
        )
    };
    for round in 0..4 {
        let r = patch(p, "web", &sid, batch(round * 256)).await?;
        assert_eq!(r.status, 200, "{r:?}");
    }
    // One more field is refused, and the patch writes nothing (not even its other fields).
    let r = patch(
        p,
        "web",
        &sid,
        json!({ "f0": "changed", "one-too-many": 1 }),
    )
    .await?;
    r.assert_problem(400);
    assert!(r.detail().contains("1024"), "{r:?}");
    let r = get(p, "web", &sid).await?;
    assert_eq!(r.json["data"]["f0"], json!(0), "{r:?}");
    assert_eq!(r.json["data"].as_object().map(|o| o.len()), Some(1024));
    // Replacing and deleting within the bound is fine.
    let r = patch(p, "web", &sid, json!({ "f0": null, "new": 1 })).await?;
    assert_eq!(r.status, 200, "{r:?}");
    // More than 256 fields in one request is refused before Redis.
    patch(
        p,
        "web",
        &sid,
        batch(5000)
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o.insert("extra".into(), json!(1));
                Value::Object(o)
            })
            .unwrap_or_default(),
    )
    .await?
    .assert_problem(400);
    Ok(())
}

on_every_backend!(a_session_holds_a_bounded_number_of_fields);

async fn concurrent_creates_and_rotations_stay_consistent(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = Arc::new(w.patternd);
    // 20 logins at once for a user allowed 2 sessions: exactly 2 survive, and the index
    // names exactly those.
    let ids = burst(20, |_| {
        let p = p.clone();
        async move { create(&p, "two", "busy", json!({})).await }
    })
    .await?;
    let mut alive = Vec::new();
    for sid in &ids {
        let r = get(&p, "two", sid).await?;
        match r.status {
            200 => alive.push(sid.clone()),
            _ => {
                r.assert_problem(404);
            }
        }
    }
    assert_eq!(alive.len(), 2, "{alive:?}");
    let mut listed_ids = listed(&p, "two", "busy").await?;
    listed_ids.sort();
    alive.sort();
    assert_eq!(listed_ids, alive);

    // Two rotations of one session at once: one wins, the other finds the id dead.
    let sid = create(&p, "web", "rot", json!({ "k": 1 })).await?;
    let rotate = |p: Arc<Patternd>, sid: String| async move {
        p.post_json(&format!("/v1/sessions/shop/web/{sid}/rotate"), &json!({}))
            .await
    };
    let (a, b) = tokio::join!(
        rotate(p.clone(), sid.clone()),
        rotate(p.clone(), sid.clone())
    );
    let (a, b) = (a?, b?);
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 404], "{a:?} {b:?}");
    let winner = if a.status == 200 { &a } else { &b };
    let new = winner.json["id"].as_str().unwrap_or_default();
    assert_eq!(listed(&p, "web", "rot").await?, vec![new.to_string()]);
    assert_eq!(get(&p, "web", new).await?.json["data"], json!({ "k": 1 }));
    Ok(())
}

on_every_backend!(concurrent_creates_and_rotations_stay_consistent);

/// Without `max_per_user`, `user_cap` (default 1000) still bounds a user's sessions: creating
/// one more destroys the oldest, so one logout-everywhere destroys at most `user_cap` sessions
/// and the user's index never grows past it.
async fn user_cap_bounds_sessions_without_max_per_user(b: Backend) -> Result<()> {
    let policy = "app: shop
rules:
  cap: { session: { idle_ttl: 30m, absolute_ttl: 24h, user_cap: 3 } }
";
    let w = World::on(b, &[("shop.yaml", policy)], &[]).await?;
    let p = &w.patternd;
    let mut all = Vec::new();
    for i in 0..7 {
        all.push(create(p, "cap", "carol", json!({ "device": i })).await?);
    }
    // The three newest live; the four oldest were destroyed when the cap was reached.
    assert_eq!(listed(p, "cap", "carol").await?, all[4..].to_vec());
    for sid in &all[..4] {
        assert_eq!(get(p, "cap", sid).await?.status, 404, "{sid} evicted");
    }
    for sid in &all[4..] {
        assert_eq!(get(p, "cap", sid).await?.status, 200, "{sid} live");
    }
    // The user's index holds no more than the cap either.
    let mut nodes = w.redis.nodes().await?;
    for key in w.redis.scan_all().await? {
        if !key.starts_with(b"shop:session:cap:") {
            continue;
        }
        let conn = nodes.conn(&key)?;
        let t: String = redis::cmd("TYPE").arg(&key).query_async(conn).await?;
        if t == "zset" {
            let n: u64 = conn.zcard(&key).await?;
            assert!(n <= 3, "{} holds {n}", String::from_utf8_lossy(&key));
        }
    }
    let r = p.delete("/v1/sessions/shop/cap/users/carol").await?;
    assert_eq!(
        (r.status, &r.json),
        (200, &json!({"destroyed": 3})),
        "{r:?}"
    );

    // `max_per_user` above the cap is refused at load.
    let bad = "app: shop
rules:
  cap: { session: { idle_ttl: 30m, absolute_ttl: 24h, user_cap: 3, max_per_user: 5 } }
";
    let dir = policy_dir(&[("shop.yaml", bad)])?;
    let out = patternd_e2e::run_cli(&["check", &dir.path().to_string_lossy()])?;
    assert!(
        !out.status.success(),
        "max_per_user > user_cap must not load"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("user_cap")
            || String::from_utf8_lossy(&out.stderr).contains("user_cap"),
        "{out:?}"
    );
    Ok(())
}

on_every_backend!(user_cap_bounds_sessions_without_max_per_user);

/// The user's shard, as the engine computes it (`patterns/session.rs`, `shard_of`: fixed
/// forever), to find users whose sessions share one shard index.
fn shard_of(user: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in user.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:04x}", (h ^ (h >> 16)) & 0xffff)
}

/// A path segment with every byte but letters and digits percent-encoded.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The sha1 of a compiled script, from `patternd compile` (patternd loaded it at start).
fn script_sha(w: &World, name: &str) -> Result<String> {
    let out = patternd_e2e::run_cli(&["compile", &w.policies.path().to_string_lossy()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let head = format!("script {name} (sha1 ");
    text.lines()
        .find_map(|l| l.strip_prefix(head.as_str()))
        .and_then(|rest| rest.strip_suffix("):"))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no `{name}` in `patternd compile`: {text}"))
}

/// List and logout are two calls: the first reads the user's members of the shard index and
/// a cutoff (Redis's clock), the second declares their session keys (Redis Cluster checks
/// only declared keys) and re-checks that every member up to the cutoff is declared. A
/// session rotated in between (same creation order, new id) makes it act on nothing and
/// answer the new members; a session created in between is newer than the cutoff and left
/// alone, as a login just after the logout would be.
async fn a_slice_that_changed_between_the_two_calls_is_not_acted_on(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let shard = shard_of("zed");
    let prefix = format!("shop:session:web:{{{shard}}}:");
    let (ue, uc) = (format!("{prefix}ue"), format!("{prefix}uc"));
    let key = |sid: &str| {
        let random = sid.split_once('.').map(|(_, r)| r).unwrap_or_default();
        format!("{prefix}s:{random}")
    };
    let s1 = create(p, "web", "zed", json!({})).await?;
    let s2 = create(p, "web", "zed", json!({})).await?;
    let sha = script_sha(&w, "session logout")?;
    // Every key of the two calls is in the user's shard's slot: one node answers them.
    let mut conn = w.redis.conn_for_key(&ue).await?;
    let logout = |members: Vec<String>, cutoff: String| {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&sha).arg(2 + members.len()).arg(&ue).arg(&uc);
        for m in &members {
            let sid = m.rsplit('|').next().unwrap_or_default();
            cmd.arg(key(sid));
        }
        cmd.arg(members.len())
            .arg(&members)
            .arg(cutoff)
            .arg("emVk")
            .arg(5);
        cmd
    };
    // The first call: nothing declared, so it names the members and the cutoff.
    let (status, n, read, cutoff): (String, u64, Vec<String>, String) =
        logout(vec![], String::new()).query_async(&mut conn).await?;
    assert_eq!(
        (status.as_str(), n, read.len()),
        ("stale", 0, 2),
        "{read:?}"
    );
    assert!(read[0].ends_with(&s1) && read[1].ends_with(&s2), "{read:?}");
    assert!(
        read[0].starts_with("emVk|"),
        "base64url of the user: {read:?}"
    );
    assert_eq!(cutoff.len(), 16, "{cutoff}");

    // Meanwhile s1 is rotated: the second call acts on nothing and names the new member.
    let r = p
        .post_json(&format!("/v1/sessions/shop/web/{s1}/rotate"), &json!({}))
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let s1b = r.json["id"].as_str().unwrap_or_default().to_string();
    let (status, n, now, same_cutoff): (String, u64, Vec<String>, String) =
        logout(read.clone(), cutoff.clone())
            .query_async(&mut conn)
            .await?;
    assert_eq!((status.as_str(), n, &same_cutoff), ("stale", 0, &cutoff));
    assert!(now[0].ends_with(&s1b) && now[1].ends_with(&s2), "{now:?}");
    for sid in [&s1b, &s2] {
        assert_eq!(get(p, "web", sid).await?.status, 200, "{sid} untouched");
    }

    // A login after the cutoff does not make the slice stale, and survives the logout.
    let s3 = create(p, "web", "zed", json!({})).await?;
    let (status, n, _, _): (String, u64, Vec<String>, String) =
        logout(now, cutoff).query_async(&mut conn).await?;
    assert_eq!((status.as_str(), n), ("ok", 2));
    for sid in [&s1, &s1b, &s2] {
        get(p, "web", sid).await?.assert_problem(404);
    }
    assert_eq!(listed(p, "web", "zed").await?, vec![s3.clone()]);

    // Through the engine, both calls in one request.
    let r = p.delete("/v1/sessions/shop/web/users/zed").await?;
    assert_eq!(
        (r.status, &r.json),
        (200, &json!({"destroyed": 1})),
        "{r:?}"
    );
    get(p, "web", &s3).await?.assert_problem(404);
    Ok(())
}

on_every_backend!(a_slice_that_changed_between_the_two_calls_is_not_acted_on);

/// An evicting create takes the oldest out of the index in its one call (their keys are not
/// declared there), and a second call deletes them: nothing evicted is left behind.
async fn evicted_sessions_are_deleted_not_only_unindexed(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    for _ in 0..5 {
        create(p, "two", "eve", json!({})).await?;
    }
    // Two sessions and the shard index: the three evicted ones are gone from Redis.
    let keys = session_keys(&w).await?;
    assert_eq!(keys.len(), 4, "{keys:?}");
    Ok(())
}

on_every_backend!(evicted_sessions_are_deleted_not_only_unindexed);

/// Logouts racing logins of one user: every logout completes (logins during a logout are newer
/// than its cutoff, and an eviction only removes members: neither makes its slice stale), and
/// afterwards the index names exactly the live sessions.
async fn logouts_racing_logins_stay_consistent(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = Arc::new(w.patternd);
    let replies = burst(24, |n| {
        let p = p.clone();
        async move {
            if n % 3 == 0 {
                Ok((true, p.delete("/v1/sessions/shop/two/users/race").await?))
            } else {
                Ok((
                    false,
                    p.post_json("/v1/sessions/shop/two", &json!({ "user": "race" }))
                        .await?,
                ))
            }
        }
    })
    .await?;
    let mut ids = Vec::new();
    for (logout, r) in &replies {
        if *logout {
            assert_eq!(r.status, 200, "{r:?}");
        } else {
            assert_eq!(r.status, 201, "{r:?}");
            ids.push(r.json["id"].as_str().unwrap_or_default().to_string());
        }
    }
    let mut alive = Vec::new();
    for sid in &ids {
        if get(&p, "two", sid).await?.status == 200 {
            alive.push(sid.clone());
        }
    }
    assert!(alive.len() <= 2, "{alive:?}");
    let mut listed_ids = listed(&p, "two", "race").await?;
    listed_ids.sort();
    alive.sort();
    assert_eq!(listed_ids, alive);
    Ok(())
}

on_every_backend!(logouts_racing_logins_stay_consistent);

/// User ids holding the index's separator (`|`), braces, or another id as prefix, in the
/// same shard (one index): each user's list, logout and max_per_user see only its own.
async fn users_sharing_a_shard_index_stay_apart_whatever_their_ids_hold(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let base = "abc";
    let shard = shard_of(base);
    let mut users = vec![base.to_string()];
    for pattern in [
        "abc|",
        "abc}",
        "abc{",
        "abc",
        "|abc",
        "abc|0001700000000000|",
    ] {
        let found = (0..1_000_000)
            .map(|n| format!("{pattern}{n}"))
            .find(|u| shard_of(u) == shard && !users.contains(u));
        users.extend(found);
    }
    assert!(users.len() >= 5, "{users:?}");
    let mut ids = Vec::new();
    for u in &users {
        let a = create(p, "two", u, json!({ "who": u })).await?;
        let b = create(p, "two", u, json!({ "who": u })).await?;
        assert!(a.starts_with(&shard) && b.starts_with(&shard), "one shard");
        ids.push((a, b));
    }
    for (u, (a, b)) in users.iter().zip(&ids) {
        let r = p
            .get(&format!("/v1/sessions/shop/two/users/{}", segment(u)))
            .await?;
        let got: Vec<&str> = r.json["sessions"]
            .as_array()
            .map(|s| s.iter().filter_map(|e| e["id"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(got, vec![a.as_str(), b.as_str()], "{u}: {r:?}");
    }
    // One more login of the first user evicts its own oldest, nobody else's.
    let c = create(p, "two", base, json!({})).await?;
    get(p, "two", &ids[0].0).await?.assert_problem(404);
    for (a, b) in &ids[1..] {
        assert_eq!(get(p, "two", a).await?.status, 200);
        assert_eq!(get(p, "two", b).await?.status, 200);
    }
    // Logging the first user out leaves the others.
    let r = p
        .delete(&format!("/v1/sessions/shop/two/users/{}", segment(base)))
        .await?;
    assert_eq!(r.json, json!({"destroyed": 2}), "{r:?}");
    get(p, "two", &c).await?.assert_problem(404);
    for (u, (a, b)) in users.iter().zip(&ids).skip(1) {
        assert_eq!(get(p, "two", a).await?.json["user"], json!(u));
        assert_eq!(get(p, "two", b).await?.status, 200);
    }
    Ok(())
}

on_every_backend!(users_sharing_a_shard_index_stay_apart_whatever_their_ids_hold);

/// Logout-everywhere finds sessions only through the shard index, so a session the index
/// lost (evicted under maxmemory, deleted by hand) is not served: fail closed. A session
/// written before the shard index existed (no `o` field) joins it on its next touch.
async fn a_session_its_index_lost_is_gone_and_an_older_one_joins_it(b: Backend) -> Result<()> {
    let w = World::on(b, &[("shop.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let sid = create(p, "web", "bob", json!({ "k": 1 })).await?;
    let shard = shard_of("bob");
    let prefix = format!("shop:session:web:{{{shard}}}:");
    // The index and the session keys are in the shard's slot: one node holds them all.
    let mut conn = w.redis.conn_for_key(format!("{prefix}ue")).await?;
    let _: () = conn
        .del(&[format!("{prefix}ue"), format!("{prefix}uc")])
        .await?;
    get(p, "web", &sid).await?.assert_problem(404);
    assert!(
        session_keys(&w).await?.is_empty(),
        "the session was dropped"
    );

    // A session as written before `o` and the shard index.
    let random = "B".repeat(32);
    let old = format!("{shard}.{random}");
    let key = format!("{prefix}s:{random}");
    let t: (String, String) = redis::cmd("TIME").query_async(&mut conn).await?;
    let now: u64 = t.0.parse::<u64>()? * 1000;
    let _: () = conn
        .hset_multiple(
            &key,
            &[
                ("u", "bob".to_string()),
                ("i", "Ym9i".to_string()),
                ("c", now.to_string()),
                ("a", (now + 3_600_000).to_string()),
                ("d:k", "2".to_string()),
            ],
        )
        .await?;
    let _: () = conn.pexpire(&key, 600_000).await?;
    assert!(listed(p, "web", "bob").await?.is_empty(), "not indexed yet");
    let r = get(p, "web", &old).await?;
    assert_eq!(
        (r.status, &r.json["data"]),
        (200, &json!({ "k": 2 })),
        "{r:?}"
    );
    assert_eq!(listed(p, "web", "bob").await?, vec![old.clone()]);
    // Indexed now, it is served, rotated and logged out like any other.
    assert_eq!(get(p, "web", &old).await?.status, 200);
    let r = p
        .post_json(&format!("/v1/sessions/shop/web/{old}/rotate"), &json!({}))
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let new = r.json["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(listed(p, "web", "bob").await?, vec![new.clone()]);
    let r = p.delete("/v1/sessions/shop/web/users/bob").await?;
    assert_eq!(r.json, json!({"destroyed": 1}), "{r:?}");
    Ok(())
}

on_every_backend!(a_session_its_index_lost_is_gone_and_an_older_one_joins_it);
