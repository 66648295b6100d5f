//! Ops end to end: a plugin's operation (the example `quota` plugin's `daily-quota`) served
//! over HTTP against a real Redis, its bad input, and an op that reaches past its declared
//! keys refused on reload and by `patternd check` while the old one keeps serving. Both run on
//! a standalone Redis and on a three-primary cluster.

use anyhow::Result;
use patternd_e2e::{Backend, PluginWorld, lua_plugins, on_every_backend, policy_dir, run_cli};
use serde_json::json;

async fn daily_quota_op_counts_until_midnight(b: Backend) -> Result<()> {
    let w = PluginWorld::examples_on(b).await?;
    let p = &w.patternd;
    // Ids whose counters land on each primary of a cluster.
    let ids = w.redis.spread_ids("u", |id| format!("{{{id}}}"))?;
    let u1 = ids[0].as_str();
    for used in 1..=3u64 {
        let r = p
            .post_json("/v1/ops/plugged/daily", &json!({"id": u1, "args": [3]}))
            .await?;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.json["result"],
            json!({"used": used, "remaining": 3 - used}),
            "{r:?}"
        );
    }
    let r = p
        .post_json("/v1/ops/plugged/daily", &json!({"id": u1, "args": [3]}))
        .await?;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.json["result"]["denied"], json!(true));
    // Other ids (on the other primaries) have their own counters.
    for other in &ids[1..] {
        let r = p
            .post_json("/v1/ops/plugged/daily", &json!({"id": other, "args": [3]}))
            .await?;
        assert_eq!(r.json["result"]["used"], json!(1), "{r:?}");
    }

    // The counter expires at the next UTC midnight, by Redis' clock.
    let key = format!("plugged:ops:daily:{{{u1}}}:count");
    let mut conn = w.redis.conn_for_key(&key).await?;
    let (now, _): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut conn)
        .await
        .map(|t: (String, String)| (t.0.parse().unwrap_or(0), t.1.parse().unwrap_or(0)))?;
    let midnight = now - now % 86_400 + 86_400;
    let at: i64 = redis::cmd("EXPIRETIME")
        .arg(&key)
        .query_async(&mut conn)
        .await?;
    assert_eq!(at, midnight as i64);

    // Bad input: the op's BADARG is a 400; the engine's own checks too.
    p.post_json(
        "/v1/ops/plugged/daily",
        &json!({"id": u1, "args": ["lots"]}),
    )
    .await?
    .assert_problem(400);
    p.post_json("/v1/ops/plugged/daily", &json!({"args": [3]}))
        .await?
        .assert_problem(400);
    p.post_json("/v1/ops/plugged/daily", &json!({"id": "", "args": [3]}))
        .await?
        .assert_problem(400);
    p.post_json("/v1/ops/plugged/nope", &json!({"id": u1}))
        .await?
        .assert_problem(404);
    Ok(())
}

on_every_backend!(daily_quota_op_counts_until_midnight);

const QUOTA_POLICY: &str =
    "app: o\nrules:\n  daily:\n    ops: { plugin: quota, op: daily-quota }\n";

/// The same op, rewritten to reach a key it did not declare in two ways the old, text-matching
/// check let through (a `--` in a string hid the rest of the line; only a command's first key
/// was checked; an alias of `redis` was not followed).
const ESCAPING_QUOTA: &str = r#"return { ops = { ["daily-quota"] = { keys = { "count" }, script = [[
local s = '--' redis.call('DEL', KEYS[1], 'victim')
local r = redis
return r.call('INCR', KEYS[1])
]] } } }
"#;

async fn an_op_that_escapes_its_keys_is_refused_and_the_old_one_keeps_serving(
    b: Backend,
) -> Result<()> {
    let plugins = lua_plugins(&[("quota.lua", "quota/quota.lua")])?;
    let w = PluginWorld::on(b, &[("o.yaml", QUOTA_POLICY)], plugins).await?;
    let p = &w.patternd;
    let body = json!({"id": "u1", "args": [100]});
    let call = || p.post_json("/v1/ops/o/daily", &body);
    assert_eq!(call().await?.json["result"]["used"], json!(1));
    // A key of someone else's, outside the op's namespace.
    let mut conn = w.redis.conn_for_key("victim").await?;
    let _: () = redis::cmd("SET")
        .arg("victim")
        .arg("precious")
        .query_async(&mut conn)
        .await?;

    let path = w.plugins.write("quota.lua", ESCAPING_QUOTA)?;
    let r = p.reload().await?;
    r.assert_problem(422);
    // Both problems, each at its line and column of the plugin file.
    let file = path.to_string_lossy().to_string();
    for (line, column, says) in [
        (
            2,
            43,
            "argument 2 of DEL is a key and must be exactly `KEYS[n]`",
        ),
        (3, 11, "`redis` may only be used as `redis.call('CMD', …)`"),
    ] {
        r.assert_diagnostic(&file, line, column, says);
    }

    // The old op keeps serving (its counter goes on), and the other key is untouched.
    assert_eq!(call().await?.json["result"]["used"], json!(2));
    let victim: Option<String> = redis::cmd("GET")
        .arg("victim")
        .query_async(&mut conn)
        .await?;
    assert_eq!(victim.as_deref(), Some("precious"));

    // `patternd check` refuses it too, at the same place.
    let policies = policy_dir(&[("o.yaml", QUOTA_POLICY)])?;
    let dir = w.plugins.path().to_string_lossy().to_string();
    let pol = policies.path().to_string_lossy().to_string();
    let bad = run_cli(&["check", &pol, "--plugins", &dir])?;
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains(&format!("{file}:2:43: error:")), "{err}");
    Ok(())
}

on_every_backend!(an_op_that_escapes_its_keys_is_refused_and_the_old_one_keeps_serving);
