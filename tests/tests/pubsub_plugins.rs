//! The pubsub hook end to end, in both hosts: the `channel-gate` WebAssembly component (world
//! `plugin-pubsub`) and its Lua twin allow and reject subscribes (403 before any stream) and
//! publishes (403, nothing published) over HTTP; a failing hook falls back as the rule says; a
//! component built for the world `plugin` or `plugin-queue` (no pubsub hook) keeps serving its
//! other rules, and a pubsub rule naming a plugin without the hook is refused at load.

use std::time::Duration;

use anyhow::{Result, ensure};
use patternd_e2e::sse::SseClient;
use patternd_e2e::{
    Backend, Patternd, PluginWorld, Reply, metric_value, on_every_backend, plugins_from_dist,
    policy_dir, run_cli,
};
use serde_json::json;

const GATES: &str = "app: chat
rules:
  gate-wasm:
    pubsub:
      plugin:
        name: channel-gate
        config: { open: [lobby], publishers: [ops], banned: [spam] }
  gate-lua:
    pubsub:
      plugin:
        name: channel-gate-lua
        config: { open: [lobby], publishers: [ops], banned: [spam] }
";

const WITHIN: Duration = Duration::from_secs(30);

async fn publish(p: &Patternd, rule: &str, channel: &str, user: &str, body: &str) -> Result<Reply> {
    let req = p
        .client()
        .post(p.url(&format!("/v1/pubsub/chat/{rule}/{channel}")))
        .header("x-user", user)
        .body(body.to_string());
    p.send(req).await
}

async fn subscribe(p: &Patternd, rule: &str, channel: &str, user: &str) -> Result<SseClient> {
    let url = p.url(&format!("/v1/pubsub/chat/{rule}/{channel}"));
    let mut c = SseClient::connect(p.client(), &url, &[("x-user", user)]).await?;
    let first = c.event(WITHIN).await?;
    ensure!(first.event == "subscribed", "first event: {first:?}");
    Ok(c)
}

/// A subscribe the hook refuses: its answer, not a stream.
async fn refused_subscribe(p: &Patternd, rule: &str, channel: &str, user: &str) -> Result<Reply> {
    let req = p
        .client()
        .get(p.url(&format!("/v1/pubsub/chat/{rule}/{channel}")))
        .header("accept", "text/event-stream")
        .header("x-user", user);
    p.send(req).await
}

fn assert_rejected(r: &Reply, says: &str) {
    r.assert_problem(403);
    assert_eq!(
        r.json["type"],
        json!("urn:patternd:problem:rejected"),
        "{r:?}"
    );
    assert!(
        r.json["detail"].as_str().is_some_and(|d| d.contains(says)),
        "{says}: {r:?}"
    );
}

async fn gates_decide_each_publish_and_subscribe(b: Backend) -> Result<()> {
    let w = PluginWorld::on(
        b,
        &[("chat.yaml", GATES)],
        plugins_from_dist(&["channel-gate.wasm", "channel-gate-lua.lua"])?,
    )
    .await?;
    let p = &w.patternd;
    for rule in ["gate-wasm", "gate-lua"] {
        // Subscribes: an open channel and one's own are allowed; another's is 403.
        let mut lobby = subscribe(p, rule, "lobby", "ann").await?;
        let mut own = subscribe(p, rule, "user.ann", "ann").await?;
        let r = refused_subscribe(p, rule, "user.bob", "ann").await?;
        assert_rejected(&r, "may not subscribe to `user.bob`");

        // Publishes: only a publisher, and not a banned word; a refused one reaches no one.
        let r = publish(p, rule, "lobby", "ann", "hello").await?;
        assert_rejected(&r, "may not publish to `lobby`");
        let r = publish(p, rule, "lobby", "ops", "buy spam now").await?;
        assert_rejected(&r, "the message holds `spam`");
        let r = publish(p, rule, "lobby", "ops", "welcome").await?;
        assert_eq!(r.status, 200, "{rule}: {r:?}");
        assert_eq!(r.json.get("fallback"), None, "{rule}: {r:?}");
        assert_eq!(lobby.event(WITHIN).await?.data, "welcome", "{rule}");
        let r = publish(p, rule, "user.ann", "ops", "for ann").await?;
        assert_eq!(r.status, 200, "{rule}: {r:?}");
        assert_eq!(own.event(WITHIN).await?.data, "for ann", "{rule}");
    }
    let metrics = p.get("/metrics").await?.text;
    for rule in ["gate-wasm", "gate-lua"] {
        assert_eq!(
            metric_value(
                &metrics,
                "patternd_pubsub_rejected_total",
                &[("app", "chat"), ("rule", rule)]
            ),
            Some(3.0),
            "{rule}"
        );
    }
    Ok(())
}

on_every_backend!(gates_decide_each_publish_and_subscribe);

/// A hook that errors or runs out of budget fails its call alone: `fallback: allow` lets the
/// publish or subscribe through (a publish says so), the default answers 500 and neither
/// publishes nor starts a stream.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_hook_uses_the_rules_fallback() -> Result<()> {
    let policy = "app: chat
rules:
  boom-allow: { pubsub: { plugin: { name: boom }, fallback: allow } }
  boom-fail: { pubsub: { plugin: { name: boom }, fallback: fail } }
  loop-allow: { pubsub: { plugin: { name: spin }, fallback: allow } }
  loop-fail: { pubsub: { plugin: { name: spin } } }
";
    let plugins = plugins_from_dist(&[])?;
    plugins.write(
        "boom.lua",
        "return { pubsub = function(req, channel, op, message) error('boom') end }",
    )?;
    plugins.write(
        "spin.lua",
        "return { pubsub = function() while true do end end }",
    )?;
    let w = PluginWorld::start(&[("chat.yaml", policy)], plugins).await?;
    let p = &w.patternd;
    for m in ["boom", "loop"] {
        let rule = format!("{m}-allow");
        let mut c = subscribe(p, &rule, "news", "ann").await?;
        let r = publish(p, &rule, "news", "ann", "through").await?;
        assert_eq!(r.status, 200, "{m}: {r:?}");
        assert_eq!(r.json["fallback"], json!(true), "{m}: {r:?}");
        assert_eq!(c.event(WITHIN).await?.data, "through", "{m}");

        let rule = format!("{m}-fail");
        for r in [
            refused_subscribe(p, &rule, "news", "ann").await?,
            publish(p, &rule, "news", "ann", "x").await?,
        ] {
            r.assert_problem(500);
            assert_eq!(
                r.json["type"],
                json!("urn:patternd:problem:plugin-failed"),
                "{m}: {r:?}"
            );
        }
    }
    let metrics = p.get("/metrics").await?.text;
    assert_eq!(
        metric_value(
            &metrics,
            "patternd_plugin_failures_total",
            &[("app", "chat"), ("rule", "boom-fail")]
        ),
        Some(2.0)
    );
    Ok(())
}

/// `tiered-limits.wasm` (world `plugin`) and `job-gate.wasm` (world `plugin-queue`) predate
/// the pubsub hook: they still load and serve their rules beside a pubsub rule of another
/// plugin. Naming them (or a Lua plugin without `pubsub`) in a pubsub rule is a load
/// diagnostic at the rule.
#[tokio::test(flavor = "multi_thread")]
async fn plugins_without_the_pubsub_hook_load_and_cannot_serve_pubsub() -> Result<()> {
    let plugins = plugins_from_dist(&[
        "tiered-limits.wasm",
        "job-gate.wasm",
        "job-gate-lua.lua",
        "channel-gate.wasm",
    ])?;
    let good = "app: chat
rules:
  tiered:
    rate_limit:
      plugin: { name: tiered-limits, config: { header: X-Tier, default: free, tiers: { free: { limit: 1, window: 1m } } } }
  jobs:
    queue: { plugin: { name: job-gate } }
  gate:
    pubsub: { plugin: { name: channel-gate, config: { publishers: [ops] } } }
";
    let w = PluginWorld::start(&[("chat.yaml", good)], plugins).await?;
    let p = &w.patternd;
    assert_eq!(p.check("chat", "tiered", "u", 1).await?.status, 200);
    assert_eq!(p.check("chat", "tiered", "u", 1).await?.status, 429);
    let r = p
        .send(
            p.client()
                .post(p.url("/v1/queues/chat/jobs"))
                .json(&json!({ "payload": { "to": "x" } })),
        )
        .await?;
    assert_eq!(r.status, 201, "{r:?}");
    let r = publish(p, "gate", "news", "ops", "hi").await?;
    assert_eq!(r.status, 200, "{r:?}");

    let dir = w.plugins.path().to_string_lossy().to_string();
    let world_hint =
        " (a component exports it when built for the world patternd:plugin/plugin-pubsub@0.1.0)";
    for (name, hint) in [
        ("tiered-limits", world_hint),
        ("job-gate", world_hint),
        ("job-gate-lua", ""),
    ] {
        let policies = policy_dir(&[(
            "bad.yaml",
            &format!("app: chat\nrules:\n  rooms:\n    pubsub: {{ plugin: {{ name: {name} }} }}\n"),
        )])?;
        let pol = policies.path().to_string_lossy().to_string();
        let out = run_cli(&["check", &pol, "--plugins", &dir])?;
        assert!(!out.status.success(), "{name}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let says = format!("bad.yaml:3:3: error: plugin `{name}` has no `pubsub` hook{hint}");
        assert!(err.contains(&says), "{name}: {err}");
    }
    // Reloading into such a policy is refused; the running one keeps serving.
    w.policies.write(
        "chat.yaml",
        "app: chat\nrules:\n  gate:\n    pubsub: { plugin: { name: job-gate } }\n",
    )?;
    let r = p.reload().await?;
    r.assert_problem(422);
    assert!(r.text.contains("has no `pubsub` hook"), "{r:?}");
    let r = publish(p, "gate", "news", "ops", "still").await?;
    assert_eq!(r.status, 200, "{r:?}");
    Ok(())
}
