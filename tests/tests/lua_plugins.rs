//! Lua plugins end to end: the example plugins drive real decisions, hostile plugins are
//! contained, and a broken plugin never replaces a working one. Plugin-decided limits run on a
//! standalone Redis and on a three-primary cluster; the sandbox tests need no second backend.

use std::time::{Duration, Instant};

use anyhow::Result;
use patternd_e2e::{
    Backend, EXAMPLE_POLICY, PluginWorld, TempDir, example_file, example_plugins, lua_plugins,
    metric_value, on_every_backend, policy_dir, run_cli,
};
use serde_json::json;

async fn tiered_limits_decide_per_tier(b: Backend) -> Result<()> {
    let w = PluginWorld::examples_on(b).await?;
    let p = &w.patternd;
    let post = |tier: Option<&'static str>| {
        let mut req = p
            .client()
            .post(p.url("/v1/ratelimit/plugged/tiered"))
            .json(&json!({"id": "user-1"}));
        if let Some(t) = tier {
            req = req.header("X-Tier", t);
        }
        p.send(req)
    };
    // free: 2 per minute; a missing or unknown tier counts as free.
    let a = post(Some("free")).await?;
    assert_eq!((a.status, a.remaining()), (200, 1), "{a:?}");
    assert_eq!(
        a.header("ratelimit-policy"),
        Some("\"tiered-free\";q=2;w=60")
    );
    let b = post(None).await?;
    assert_eq!((b.status, b.remaining()), (200, 0), "{b:?}");
    let c = post(Some("platinum")).await?;
    assert_eq!(c.status, 429, "{c:?}");
    assert!(c.header("retry-after").is_some());
    // pro: its own counter, 5 per minute.
    for left in (0..5).rev() {
        let r = post(Some("pro")).await?;
        assert_eq!(
            (r.status, r.remaining(), r.u64_field("limit")),
            (200, left, 5),
            "{r:?}"
        );
    }
    assert_eq!(post(Some("pro")).await?.status, 429);

    // The plugin chose the keys' suffixes; the key builder kept them in the rule's namespace
    // and the id's slot, with TTLs.
    let names = w.redis.scan_names().await?;
    // One id: every key in its slot, on one node.
    let mut conn = w.redis.conn_for_key("{user-1}").await?;
    assert_eq!(
        names,
        [
            "plugged:ratelimit:tiered:{user-1}:p.free.fw",
            "plugged:ratelimit:tiered:{user-1}:p.pro.fw"
        ]
    );
    for k in &names {
        let ttl: i64 = redis::cmd("PTTL").arg(k).query_async(&mut conn).await?;
        assert!(ttl > 0 && ttl <= 60_000, "{k}: {ttl}");
    }
    Ok(())
}

on_every_backend!(tiered_limits_decide_per_tier);

/// `plugin.headers` lists what the plugin sees: a header left out never reaches it (the tier
/// falls back to the default), one listed does, matched case-insensitively.
async fn a_plugin_sees_only_the_headers_its_rule_lists(b: Backend) -> Result<()> {
    let policy = "\
app: hdr
rules:
  blind:
    rate_limit:
      plugin:
        name: tiered-limits-lua
        headers: [accept]
        config: { header: X-Tier, default: free, tiers: { free: { limit: 2, window: 1m }, pro: { limit: 5, window: 1m } } }
  sighted:
    rate_limit:
      plugin:
        name: tiered-limits-lua
        headers: [X-TIER]
        config: { header: X-Tier, default: free, tiers: { free: { limit: 2, window: 1m }, pro: { limit: 5, window: 1m } } }
";
    let w = PluginWorld::on(b, &[("hdr.yaml", policy)], example_plugins()?).await?;
    let p = &w.patternd;
    for (rule, tier) in [("blind", "free"), ("sighted", "pro")] {
        let r = p
            .send(
                p.client()
                    .post(p.url(&format!("/v1/ratelimit/hdr/{rule}")))
                    .header("X-Tier", "pro")
                    .header("Accept", "application/json")
                    .json(&json!({"id": "user-1"})),
            )
            .await?;
        let limit = if tier == "pro" { 5 } else { 2 };
        assert_eq!(
            (r.status, r.u64_field("limit")),
            (200, limit),
            "{rule}: {r:?}"
        );
        assert_eq!(
            r.header("ratelimit-policy").map(str::to_string),
            Some(format!("\"{rule}-{tier}\";q={limit};w=60")),
            "{rule}"
        );
    }
    Ok(())
}

on_every_backend!(a_plugin_sees_only_the_headers_its_rule_lists);

const HOSTILE: &[(&str, &str)] = &[
    ("loop", "while true do end"),
    (
        "bomb",
        "local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 4096) .. i end",
    ),
    ("boom", "error('boom')"),
    ("garbage", "return 42"),
    (
        "flood",
        "local l = {} for i = 1, 100000 do l[i] = { key_suffix = 'k' .. i, limit = 1, window_ms = 1000 } end return { check = l }",
    ),
    (
        "escape",
        "return { check = { { key_suffix = '}:../x', limit = 1, window_ms = 1000 } } }",
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn hostile_plugins_fail_one_call_and_the_server_keeps_serving() -> Result<()> {
    let plugins = TempDir::new("hostile")?;
    let mut policy = String::from(
        "app: hostile\nrules:\n  plain: { rate_limit: { algorithm: fixed_window, limit: 1000, window: 1h } }\n",
    );
    for (name, body) in HOSTILE {
        plugins.write(
            &format!("{name}.lua"),
            &format!("return {{ rate_limit = function(req) {body} end }}\n"),
        )?;
        policy.push_str(&format!(
            "  {name}-fb:\n    rate_limit:\n      plugin: {{ name: {name} }}\n      fallback: {{ algorithm: fixed_window, limit: 3, window: 1h }}\n  {name}-bare:\n    rate_limit: {{ plugin: {{ name: {name} }} }}\n"
        ));
    }
    let w = PluginWorld::start(&[("hostile.yaml", &policy)], plugins).await?;
    let p = &w.patternd;
    for (name, _) in HOSTILE {
        // With a fallback: the fallback decides, and says so.
        for left in (0..3).rev() {
            let started = Instant::now();
            let r = p.check("hostile", &format!("{name}-fb"), "x", 1).await?;
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{name}: {:?}",
                started.elapsed()
            );
            assert_eq!((r.status, r.remaining()), (200, left), "{name}: {r:?}");
            assert_eq!(r.json["fallback"], json!(true), "{name}: {r:?}");
        }
        assert_eq!(
            p.check("hostile", &format!("{name}-fb"), "x", 1)
                .await?
                .status,
            429
        );
        // Without one: a 500 problem that names no internals.
        let started = Instant::now();
        let r = p.check("hostile", &format!("{name}-bare"), "x", 1).await?;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name}: {:?}",
            started.elapsed()
        );
        r.assert_problem(500);
        assert!(r.detail().contains("plugin failed"), "{r:?}");
        // Everything else still serves.
        assert_eq!(p.check("hostile", "plain", "x", 1).await?.status, 200);
    }
    let metrics = p.get("/metrics").await?.text;
    let failures = metric_value(
        &metrics,
        "patternd_plugin_failures_total",
        &[("rule", "loop-fb")],
    );
    assert_eq!(failures, Some(4.0), "{metrics}");
    Ok(())
}

const TIERED_POLICY: &str = "app: t
rules:
  tiered:
    rate_limit:
      plugin: { name: tiers, config: { header: X-Tier, default: free, tiers: { free: { limit: 2, window: 1h } } } }
";

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_plugin_never_replaces_a_working_one() -> Result<()> {
    let plugins = lua_plugins(&[("tiers.lua", "tiered-limits-lua/tiered-limits-lua.lua")])?;
    let w = PluginWorld::start(&[("t.yaml", TIERED_POLICY)], plugins).await?;
    let p = &w.patternd;
    assert_eq!(p.check("t", "tiered", "a", 1).await?.remaining(), 1);

    // A syntax error, then a plugin whose init refuses the rule's config: both refused,
    // with the plugin's file or the rule named, and the old plugin keeps deciding.
    for (broken, needle) in [
        (
            "return { rate_limit = function(req) return { skip = true } end",
            "tiers.lua",
        ),
        (
            "return { init = function(c) return 'no thanks' end, rate_limit = function(r) return { skip = true } end }",
            "no thanks",
        ),
    ] {
        w.plugins.write("tiers.lua", broken)?;
        let r = p.reload().await?;
        r.assert_problem(422);
        assert!(r.text.contains(needle), "{needle}: {r:?}");
        // The old plugin still decides: its tier's counter keeps counting (a broken new
        // one would have answered otherwise).
        let d = p.check("t", "tiered", "a", 1).await?;
        assert_eq!(
            d.header("ratelimit-policy"),
            Some("\"tiered-free\";q=2;w=3600"),
            "{d:?}"
        );
        assert_eq!(d.remaining(), 0, "{d:?}");
    }
    assert_eq!(
        p.check("t", "tiered", "a", 1).await?.status,
        429,
        "the old counter is full"
    );

    // A good new version is taken.
    w.plugins.write(
        "tiers.lua",
        "return { rate_limit = function(req) return { deny = 'closed for maintenance' } end }",
    )?;
    let r = p.reload().await?;
    assert_eq!(r.status, 200, "{r:?}");
    let d = p.check("t", "tiered", "a", 1).await?;
    assert_eq!(d.status, 429, "{d:?}");
    assert_eq!(d.json["reason"], json!("closed for maintenance"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn check_validates_plugins_and_ops() -> Result<()> {
    let plugins = example_plugins()?;
    let policies = policy_dir(&[("plugins.yaml", &example_file(EXAMPLE_POLICY)?)])?;
    let dir = plugins.path().to_string_lossy().to_string();
    let pol = policies.path().to_string_lossy().to_string();
    let ok = run_cli(&["check", &pol, "--plugins", &dir])?;
    assert!(ok.status.success(), "{ok:?}");

    // A policy naming a missing plugin, an op that calls KEYS, and a broken plugin file.
    plugins.write("broken.lua", "return {")?;
    plugins.write(
        "sneaky.lua",
        "return { ops = { scan = { keys = { 'k' }, script = \"return redis.call('KEYS', '*')\" } } }",
    )?;
    policies.write(
        "more.yaml",
        "app: more\nrules:\n  a: { rate_limit: { plugin: { name: missing } } }\n  b: { ops: { plugin: sneaky, op: scan } }\n",
    )?;
    let bad = run_cli(&["check", &pol, "--plugins", &dir])?;
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("broken.lua:1:1"), "{err}");
    plugins.remove("broken.lua")?;
    let bad = run_cli(&["check", &pol, "--plugins", &dir])?;
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        err.contains("more.yaml:3:3: error: no plugin `missing`"),
        "{err}"
    );
    // The op's problem is placed in the plugin file, at the command's name.
    assert!(
        err.contains(
            "sneaky.lua:1:71: error: op `scan` (rule more/b): `KEYS` is not a command ops may call"
        ),
        "{err}"
    );
    Ok(())
}
