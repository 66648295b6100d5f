//! The stream hook end to end, in both hosts: the `entry-gate` WebAssembly component (world
//! `plugin-stream`) and its Lua twin check each appended entry (one rejected entry refuses the
//! whole append, 422, nothing stored); a failing hook falls back as the rule says; components
//! built for older worlds keep loading, and a stream rule naming a plugin without the hook is
//! refused at load.

use anyhow::Result;
use patternd_e2e::{
    Backend, Patternd, PluginWorld, Reply, metric_value, on_every_backend, plugins_from_dist,
    policy_dir, run_cli,
};
use serde_json::{Value, json};

const GATES: &str = "app: s
rules:
  gate-wasm:
    stream:
      max_len: 100
      plugin:
        name: entry-gate
        config: { require: [type], types: [click, view], source_header: X-Source }
  gate-lua:
    stream:
      max_len: 100
      plugin:
        name: entry-gate-lua
        config: { require: [type], types: [click, view], source_header: X-Source }
";

async fn append(p: &Patternd, rule: &str, body: Value, source: bool) -> Result<Reply> {
    let mut req = p
        .client()
        .post(p.url(&format!("/v1/streams/s/{rule}")))
        .json(&body);
    if source {
        req = req.header("X-Source", "web");
    }
    p.send(req).await
}

async fn stored(p: &Patternd, rule: &str) -> Result<usize> {
    let r = p.get(&format!("/v1/streams/s/{rule}?count=100")).await?;
    anyhow::ensure!(r.status == 200, "{r:?}");
    Ok(r.json["entries"].as_array().map_or(usize::MAX, Vec::len))
}

fn assert_rejected(r: &Reply, says: &str) {
    r.assert_problem(422);
    assert_eq!(
        r.json["type"],
        json!("urn:patternd:problem:entry-rejected"),
        "{r:?}"
    );
    assert!(
        r.json["detail"].as_str().is_some_and(|d| d.contains(says)),
        "{says}: {r:?}"
    );
}

async fn gates_decide_each_entry(b: Backend) -> Result<()> {
    let w = PluginWorld::on(
        b,
        &[("s.yaml", GATES)],
        plugins_from_dist(&["entry-gate.wasm", "entry-gate-lua.lua"])?,
    )
    .await?;
    let p = &w.patternd;
    for rule in ["gate-wasm", "gate-lua"] {
        let r = append(p, rule, json!({ "data": { "type": "click" } }), false).await?;
        assert_rejected(&r, "needs the `x-source` header");
        // The second entry of three is bad: none of them is stored.
        let batch = json!({ "entries": [
            { "type": "click" }, { "type": "scroll" }, { "type": "view" }
        ] });
        let r = append(p, rule, batch, true).await?;
        assert_rejected(&r, "entry 1 (counting from 0): unknown type `scroll`");
        let r = append(p, rule, json!({ "data": [1] }), true).await?;
        assert_rejected(&r, "an entry must be a JSON object");
        assert_eq!(stored(p, rule).await?, 0, "{rule}");

        let batch = json!({ "entries": [{ "type": "click" }, { "type": "view", "n": 2 }] });
        let r = append(p, rule, batch, true).await?;
        assert_eq!(r.status, 201, "{rule}: {r:?}");
        assert_eq!(r.json["ids"].as_array().map(Vec::len), Some(2), "{rule}");
        assert_eq!(r.json.get("fallback"), None, "{rule}: {r:?}");
        assert_eq!(stored(p, rule).await?, 2, "{rule}");
    }
    let metrics = p.get("/metrics").await?.text;
    for rule in ["gate-wasm", "gate-lua"] {
        assert_eq!(
            metric_value(
                &metrics,
                "patternd_stream_entries_total",
                &[("app", "s"), ("rule", rule), ("event", "rejected")]
            ),
            Some(3.0),
            "{rule}"
        );
    }
    Ok(())
}

on_every_backend!(gates_decide_each_entry);

/// A hook that errors or runs out of budget: `fallback: accept` appends as sent (and says so),
/// the default answers 500 and appends nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_hook_uses_the_rules_fallback() -> Result<()> {
    let policy = "app: s
rules:
  boom-accept: { stream: { max_len: 10, plugin: { name: boom }, fallback: accept } }
  boom-fail: { stream: { max_len: 10, plugin: { name: boom }, fallback: fail } }
  loop-accept: { stream: { max_len: 10, plugin: { name: spin }, fallback: accept } }
  loop-fail: { stream: { max_len: 10, plugin: { name: spin } } }
";
    let plugins = plugins_from_dist(&[])?;
    plugins.write(
        "boom.lua",
        "return { stream = function(req, entry) error('boom') end }",
    )?;
    plugins.write(
        "spin.lua",
        "return { stream = function() while true do end end }",
    )?;
    let w = PluginWorld::start(&[("s.yaml", policy)], plugins).await?;
    let p = &w.patternd;
    let body = json!({ "entries": [{ "n": 1 }, { "n": 2 }] });
    for m in ["boom", "loop"] {
        let rule = format!("{m}-accept");
        let r = append(p, &rule, body.clone(), false).await?;
        assert_eq!(r.status, 201, "{m}: {r:?}");
        assert_eq!(r.json["fallback"], json!(true), "{m}: {r:?}");
        assert_eq!(stored(p, &rule).await?, 2, "{m}");

        let rule = format!("{m}-fail");
        let r = append(p, &rule, body.clone(), false).await?;
        r.assert_problem(500);
        assert_eq!(
            r.json["type"],
            json!("urn:patternd:problem:plugin-failed"),
            "{m}: {r:?}"
        );
        assert_eq!(stored(p, &rule).await?, 0, "{m}");
    }
    Ok(())
}

/// `tiered-limits.wasm` (world `plugin`), `job-gate.wasm` (`plugin-queue`) and
/// `channel-gate.wasm` (`plugin-pubsub`) predate the stream hook: they load beside a stream
/// rule of another plugin, and naming them (or a Lua plugin without `stream`) in a stream rule
/// is a load diagnostic at the rule.
#[tokio::test(flavor = "multi_thread")]
async fn plugins_without_the_stream_hook_cannot_serve_streams() -> Result<()> {
    let plugins = plugins_from_dist(&[
        "tiered-limits.wasm",
        "job-gate.wasm",
        "channel-gate.wasm",
        "channel-gate-lua.lua",
        "entry-gate.wasm",
    ])?;
    let good = "app: s
rules:
  tiered:
    rate_limit:
      plugin: { name: tiered-limits, config: { header: X-Tier, default: free, tiers: { free: { limit: 1, window: 1m } } } }
  rooms:
    pubsub: { plugin: { name: channel-gate, config: { publishers: [ops] } } }
  events:
    stream: { max_len: 10, plugin: { name: entry-gate } }
";
    let w = PluginWorld::start(&[("s.yaml", good)], plugins).await?;
    let p = &w.patternd;
    assert_eq!(p.check("s", "tiered", "u", 1).await?.status, 200);
    assert_eq!(p.check("s", "tiered", "u", 1).await?.status, 429);
    let r = append(p, "events", json!({ "data": { "a": 1 } }), false).await?;
    assert_eq!(r.status, 201, "{r:?}");

    let dir = w.plugins.path().to_string_lossy().to_string();
    let hint =
        " (a component exports it when built for the world patternd:plugin/plugin-stream@0.1.0)";
    for (name, hint) in [
        ("tiered-limits", hint),
        ("job-gate", hint),
        ("channel-gate", hint),
        ("channel-gate-lua", ""),
    ] {
        let policies = policy_dir(&[(
            "bad.yaml",
            &format!(
                "app: s\nrules:\n  events:\n    stream: {{ max_len: 10, plugin: {{ name: {name} }} }}\n"
            ),
        )])?;
        let pol = policies.path().to_string_lossy().to_string();
        let out = run_cli(&["check", &pol, "--plugins", &dir])?;
        assert!(!out.status.success(), "{name}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let says = format!("bad.yaml:3:3: error: plugin `{name}` has no `stream` hook{hint}");
        assert!(err.contains(&says), "{name}: {err}");
    }
    Ok(())
}
