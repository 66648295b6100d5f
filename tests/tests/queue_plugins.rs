//! The queue hook end to end, in both hosts: the `job-gate` WebAssembly component (world
//! `plugin-queue`) and its Lua twin reject, delay, prioritize and deduplicate pushes over HTTP;
//! a failing hook (`hostile`, a Lua error) falls back as the rule says; a component built for
//! the world `plugin` (no queue hook) keeps serving its other rules, and a queue rule naming a
//! plugin without the hook is refused at load.

use anyhow::Result;
use patternd_e2e::{
    Backend, Patternd, PluginWorld, Reply, metric_value, on_every_backend, plugins_from_dist,
    policy_dir, run_cli,
};
use serde_json::{Value, json};

const GATES: &str = "app: q
rules:
  gate-wasm:
    queue:
      plugin:
        name: job-gate
        config: { require: [to], delays: { digest: 1h }, urgent_header: X-Urgent, dedup_field: order }
  gate-lua:
    queue:
      plugin:
        name: job-gate-lua
        config: { require: [to], delays: { digest: 1h }, urgent_header: X-Urgent, dedup_field: order }
";

async fn push(p: &Patternd, rule: &str, body: Value, urgent: bool) -> Result<Reply> {
    let mut req = p
        .client()
        .post(p.url(&format!("/v1/queues/q/{rule}")))
        .json(&body);
    if urgent {
        req = req.header("X-Urgent", "1");
    }
    p.send(req).await
}

async fn stats(p: &Patternd, rule: &str) -> Result<(u64, u64)> {
    let r = p.get(&format!("/v1/queues/q/{rule}")).await?;
    anyhow::ensure!(r.status == 200, "{r:?}");
    let n = |f: &str| r.json[f].as_u64().unwrap_or(u64::MAX);
    Ok((n("ready"), n("delayed")))
}

async fn pop_all(p: &Patternd, rule: &str) -> Result<Vec<Value>> {
    let r = p
        .post_raw(&format!("/v1/queues/q/{rule}/_pop?count=10"), "")
        .await?;
    anyhow::ensure!(r.status == 200, "{r:?}");
    Ok(r.json["jobs"].as_array().cloned().unwrap_or_default())
}

async fn gates_decide_each_push(b: Backend) -> Result<()> {
    let w = PluginWorld::on(
        b,
        &[("q.yaml", GATES)],
        plugins_from_dist(&["job-gate.wasm", "job-gate-lua.lua"])?,
    )
    .await?;
    let p = &w.patternd;
    for rule in ["gate-wasm", "gate-lua"] {
        // Rejected: 422 job-rejected with the plugin's reason; nothing is stored.
        let r = push(p, rule, json!({ "payload": { "kind": "digest" } }), false).await?;
        r.assert_problem(422);
        assert_eq!(
            r.json["type"],
            json!("urn:patternd:problem:job-rejected"),
            "{rule}: {r:?}"
        );
        assert!(
            r.json["detail"]
                .as_str()
                .is_some_and(|d| d.contains("a job needs `to`")),
            "{rule}: {r:?}"
        );
        assert_eq!(stats(p, rule).await?, (0, 0), "{rule}");

        // Delayed by its kind (the client asked for none).
        let r = push(
            p,
            rule,
            json!({ "payload": { "to": "a", "kind": "digest" } }),
            false,
        )
        .await?;
        assert_eq!(r.status, 201, "{rule}: {r:?}");
        assert_eq!(r.json.get("fallback"), None, "{rule}: {r:?}");
        assert_eq!(stats(p, rule).await?, (0, 1), "{rule}");

        // Prioritized by a header: the urgent job pops first, with priority 9; the other
        // keeps the priority its client asked for.
        let r = push(
            p,
            rule,
            json!({ "payload": { "to": "b" }, "priority": 3 }),
            false,
        )
        .await?;
        assert_eq!(r.status, 201, "{rule}: {r:?}");
        let r = push(p, rule, json!({ "payload": { "to": "c" } }), true).await?;
        assert_eq!(r.status, 201, "{rule}: {r:?}");
        let jobs = pop_all(p, rule).await?;
        let seen: Vec<(Value, Value)> = jobs
            .iter()
            .map(|j| (j["payload"]["to"].clone(), j["priority"].clone()))
            .collect();
        assert_eq!(
            seen,
            vec![(json!("c"), json!(9)), (json!("b"), json!(3))],
            "{rule}"
        );

        // Deduplicated by the order it carries, though the client gave no dedup id.
        let first = push(
            p,
            rule,
            json!({ "payload": { "to": "d", "order": 42 } }),
            false,
        )
        .await?;
        assert_eq!(first.status, 201, "{rule}: {first:?}");
        let again = push(
            p,
            rule,
            json!({ "payload": { "to": "d", "order": 42 } }),
            false,
        )
        .await?;
        assert_eq!(again.status, 200, "{rule}: {again:?}");
        assert_eq!(again.json["deduplicated"], json!(true));
        assert_eq!(again.json["id"], first.json["id"]);
    }
    let metrics = p.get("/metrics").await?.text;
    for rule in ["gate-wasm", "gate-lua"] {
        assert_eq!(
            metric_value(
                &metrics,
                "patternd_queue_events_total",
                &[("app", "q"), ("rule", rule), ("event", "rejected")]
            ),
            Some(1.0),
            "{rule}"
        );
    }
    Ok(())
}

on_every_backend!(gates_decide_each_push);

/// A hook that traps, loops, errors or returns an out-of-bounds choice fails its push alone:
/// `fallback: accept` pushes the job as asked (and says so), the default answers 500 and
/// pushes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_hook_uses_the_rules_fallback() -> Result<()> {
    let mut policy = String::from("app: q\nrules:\n");
    let modes = ["trap", "loop", "garbage", "escape", "flood"];
    for m in modes {
        policy.push_str(&format!(
            "  {m}-accept: {{ queue: {{ plugin: {{ name: hostile, config: {{ mode: {m} }} }}, fallback: accept }} }}\n  {m}-fail: {{ queue: {{ plugin: {{ name: hostile, config: {{ mode: {m} }} }} }} }}\n"
        ));
    }
    policy.push_str(
        "  lua-accept: { queue: { plugin: { name: boom }, fallback: accept } }\n  lua-fail: { queue: { plugin: { name: boom }, fallback: fail } }\n  echo: { queue: { plugin: { name: hostile, config: { mode: echo } } } }\n",
    );
    let plugins = plugins_from_dist(&["hostile.wasm"])?;
    plugins.write(
        "boom.lua",
        "return { queue = function(req, job) error('boom') end }",
    )?;
    let w = PluginWorld::start(&[("q.yaml", &policy)], plugins).await?;
    let p = &w.patternd;
    let body = json!({ "payload": { "n": 1 }, "priority": 4 });
    for m in modes.iter().copied().chain(["lua"]) {
        let rule = format!("{m}-accept");
        let r = push(p, &rule, body.clone(), false).await?;
        assert_eq!(r.status, 201, "{m}: {r:?}");
        assert_eq!(r.json["fallback"], json!(true), "{m}: {r:?}");
        let jobs = pop_all(p, &rule).await?;
        assert_eq!(jobs.len(), 1, "{m}");
        // Pushed as the client asked.
        assert_eq!(jobs[0]["priority"], json!(4), "{m}");

        let rule = format!("{m}-fail");
        let r = push(p, &rule, body.clone(), false).await?;
        r.assert_problem(500);
        assert_eq!(
            r.json["type"],
            json!("urn:patternd:problem:plugin-failed"),
            "{m}: {r:?}"
        );
        assert_eq!(stats(p, &rule).await?, (0, 0), "{m}");
    }
    // The hook sees the payload as JSON text.
    let r = push(p, "echo", json!({ "payload": { "n": 7 } }), false).await?;
    r.assert_problem(422);
    assert!(
        r.json["detail"]
            .as_str()
            .is_some_and(|d| d.contains(r#"payload={"n":7}"#)),
        "{r:?}"
    );
    let metrics = p.get("/metrics").await?.text;
    assert_eq!(
        metric_value(
            &metrics,
            "patternd_plugin_failures_total",
            &[("app", "q"), ("rule", "trap-accept")]
        ),
        Some(1.0)
    );
    Ok(())
}

/// `tiered-limits.wasm` is built for the world `plugin`, byte for byte what it was before the
/// queue hook existed: it still loads and decides its rate-limit rule beside a queue rule of
/// another plugin. Naming it (or a Lua plugin without `queue`) in a queue rule is a load
/// diagnostic at the rule.
#[tokio::test(flavor = "multi_thread")]
async fn plugins_without_the_queue_hook_load_and_cannot_serve_queues() -> Result<()> {
    let plugins = plugins_from_dist(&[
        "tiered-limits.wasm",
        "tiered-limits-lua.lua",
        "job-gate.wasm",
    ])?;
    let good = "app: q
rules:
  tiered:
    rate_limit:
      plugin: { name: tiered-limits, config: { header: X-Tier, default: free, tiers: { free: { limit: 1, window: 1m } } } }
  gate:
    queue: { plugin: { name: job-gate } }
";
    let w = PluginWorld::start(&[("q.yaml", good)], plugins).await?;
    let p = &w.patternd;
    assert_eq!(p.check("q", "tiered", "u", 1).await?.status, 200);
    assert_eq!(p.check("q", "tiered", "u", 1).await?.status, 429);
    let r = push(p, "gate", json!({ "payload": { "to": "x" } }), false).await?;
    assert_eq!(r.status, 201, "{r:?}");

    let dir = w.plugins.path().to_string_lossy().to_string();
    for (name, says) in [
        (
            "tiered-limits",
            "error: plugin `tiered-limits` has no `queue` hook (a component exports it when built for the world patternd:plugin/plugin-queue@0.1.0)",
        ),
        (
            "tiered-limits-lua",
            "error: plugin `tiered-limits-lua` has no `queue` hook",
        ),
    ] {
        let policies = policy_dir(&[(
            "bad.yaml",
            &format!("app: q\nrules:\n  jobs:\n    queue: {{ plugin: {{ name: {name} }} }}\n"),
        )])?;
        let pol = policies.path().to_string_lossy().to_string();
        let out = run_cli(&["check", &pol, "--plugins", &dir])?;
        assert!(!out.status.success(), "{name}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        // At the rule, as every missing plugin or hook is.
        assert!(
            err.contains(&format!("bad.yaml:3:3: {says}")),
            "{name}: {err}"
        );
    }
    // Reloading into such a policy is refused; the running one keeps serving.
    w.policies.write(
        "q.yaml",
        "app: q\nrules:\n  gate:\n    queue: { plugin: { name: tiered-limits } }\n",
    )?;
    let r = p.reload().await?;
    r.assert_problem(422);
    assert!(r.text.contains("has no `queue` hook"), "{r:?}");
    let r = push(p, "gate", json!({ "payload": { "to": "y" } }), false).await?;
    assert_eq!(r.status, 201, "{r:?}");
    Ok(())
}
