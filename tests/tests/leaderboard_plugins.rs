//! The leaderboard hook end to end, in both hosts: the `score-gate` WebAssembly component
//! (world `plugin-leaderboard`) and its Lua twin see each submit before it is recorded and
//! accept it, reject it (422 `score-rejected`, nothing recorded) or cap its score (the rule's
//! `max_score` still applies to the capped score); a failing hook falls back as the rule says;
//! components built for older worlds keep loading, and a leaderboard rule naming a plugin
//! without the hook is refused at load.

use anyhow::Result;
use patternd_e2e::{
    Backend, Patternd, PluginWorld, Reply, metric_value, on_every_backend, plugins_from_dist,
    policy_dir, run_cli,
};
use serde_json::{Value, json};

const GATES: &str = "app: lb
rules:
  gate-wasm:
    leaderboard:
      max_score: 5000
      plugin:
        name: score-gate
        config: { cap: 1000, banned: [mallory], client_header: X-Client, boards: [chess, go] }
  gate-lua:
    leaderboard:
      max_score: 5000
      plugin:
        name: score-gate-lua
        config: { cap: 1000, banned: [mallory], client_header: X-Client, boards: [chess, go] }
";

async fn submit(
    p: &Patternd,
    rule: &str,
    board: &str,
    member: &str,
    score: Value,
    client: bool,
) -> Result<Reply> {
    let mut req = p
        .client()
        .post(p.url(&format!("/v1/leaderboards/lb/{rule}/{board}")))
        .json(&json!({ "member": member, "score": score }));
    if client {
        req = req.header("X-Client", "game/1.2");
    }
    p.send(req).await
}

/// The member's recorded score, or None when it is not on the board.
async fn recorded(p: &Patternd, rule: &str, board: &str, member: &str) -> Result<Option<f64>> {
    let r = p
        .get(&format!(
            "/v1/leaderboards/lb/{rule}/{board}/members/{member}"
        ))
        .await?;
    match r.status {
        200 => Ok(r.json["score"].as_f64()),
        404 => Ok(None),
        _ => anyhow::bail!("{r:?}"),
    }
}

fn assert_rejected(r: &Reply, says: &str) {
    r.assert_problem(422);
    assert_eq!(
        r.json["type"],
        json!("urn:patternd:problem:score-rejected"),
        "{r:?}"
    );
    assert!(
        r.json["detail"].as_str().is_some_and(|d| d.contains(says)),
        "{says}: {r:?}"
    );
}

async fn gates_accept_reject_and_cap(b: Backend) -> Result<()> {
    let w = PluginWorld::on(
        b,
        &[("lb.yaml", GATES)],
        plugins_from_dist(&["score-gate.wasm", "score-gate-lua.lua"])?,
    )
    .await?;
    let p = &w.patternd;
    for rule in ["gate-wasm", "gate-lua"] {
        // Rejected: nothing is recorded.
        let r = submit(p, rule, "chess", "alice", json!(10), false).await?;
        assert_rejected(&r, "a submit needs the `x-client` header");
        let r = submit(p, rule, "chess", "mallory", json!(10), true).await?;
        assert_rejected(&r, "`mallory` may not submit scores");
        let r = submit(p, rule, "poker", "alice", json!(10), true).await?;
        assert_rejected(&r, "no board `poker` here");
        assert_eq!(recorded(p, rule, "chess", "alice").await?, None, "{rule}");
        assert_eq!(recorded(p, rule, "chess", "mallory").await?, None, "{rule}");
        assert_eq!(recorded(p, rule, "poker", "alice").await?, None, "{rule}");

        // Accepted as sent.
        let r = submit(p, rule, "chess", "alice", json!(700), true).await?;
        assert_eq!(r.status, 200, "{rule}: {r:?}");
        assert_eq!(r.json["score"], json!(700), "{rule}: {r:?}");
        assert_eq!(r.json.get("adjusted_score"), None, "{rule}: {r:?}");
        assert_eq!(r.json.get("fallback"), None, "{rule}: {r:?}");

        // Capped: 3000 is recorded as 1000 (better than 700 under `update: best`).
        let r = submit(p, rule, "chess", "alice", json!(3000), true).await?;
        assert_eq!(r.status, 200, "{rule}: {r:?}");
        assert_eq!(r.json["adjusted_score"], json!(1000), "{rule}: {r:?}");
        assert_eq!(r.json["score"], json!(1000), "{rule}: {r:?}");
        assert_eq!(r.json["improved"], json!(true), "{rule}: {r:?}");
        assert_eq!(recorded(p, rule, "chess", "alice").await?, Some(1000.0));

        // The rule's own bound is checked before the hook: 6000 > max_score is a 400.
        let r = submit(p, rule, "chess", "bob", json!(6000), true).await?;
        r.assert_problem(400);
        assert_eq!(recorded(p, rule, "chess", "bob").await?, None, "{rule}");
    }
    let metrics = p.get("/metrics").await?.text;
    for rule in ["gate-wasm", "gate-lua"] {
        for (outcome, n) in [("rejected", 3.0), ("adjusted", 1.0), ("refused", 1.0)] {
            assert_eq!(
                metric_value(
                    &metrics,
                    "patternd_leaderboard_requests_total",
                    &[("app", "lb"), ("rule", rule), ("outcome", outcome)]
                ),
                Some(n),
                "{rule} {outcome}"
            );
        }
    }
    Ok(())
}

on_every_backend!(gates_accept_reject_and_cap);

/// A score the plugin chooses is checked against the rule as a sent one is: beyond
/// `max_score`, or not a whole number with `ties: first`, is a 400 and nothing is recorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_chosen_score_is_still_bounded_by_the_rule() -> Result<()> {
    let policy = "app: lb
rules:
  big: { leaderboard: { max_score: 100, plugin: { name: big } } }
  frac: { leaderboard: { ties: first, max_score: 100, plugin: { name: frac } } }
";
    let plugins = plugins_from_dist(&[])?;
    plugins.write(
        "big.lua",
        "return { leaderboard = function(req, s) return { score = s.score * 1000 } end }",
    )?;
    plugins.write(
        "frac.lua",
        "return { leaderboard = function(req, s) return { score = s.score + 0.5 } end }",
    )?;
    let w = PluginWorld::start(&[("lb.yaml", policy)], plugins).await?;
    let p = &w.patternd;
    for (rule, says) in [
        ("big", "beyond the rule's max_score 100"),
        ("frac", "not a whole number"),
    ] {
        let r = submit(p, rule, "b", "alice", json!(5), false).await?;
        r.assert_problem(400);
        let detail = r.json["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("the rule's plugin chose a score the rule refuses")
                && detail.contains(says),
            "{rule}: {r:?}"
        );
        assert_eq!(recorded(p, rule, "b", "alice").await?, None, "{rule}");
    }
    // Within the bound, the chosen score is what is recorded.
    let r = submit(p, "big", "b", "alice", json!(0.05), false).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["adjusted_score"], json!(50), "{r:?}");
    assert_eq!(recorded(p, "big", "b", "alice").await?, Some(50.0));
    Ok(())
}

/// A hook that errors, runs out of budget or answers a score that is not a number: `fallback:
/// accept` records the score as sent (and says so), the default answers 500 and records nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_hook_uses_the_rules_fallback() -> Result<()> {
    let mut policy = String::from("app: lb\nrules:\n");
    for m in ["boom", "spin", "nan"] {
        policy.push_str(&format!(
            "  {m}-accept: {{ leaderboard: {{ plugin: {{ name: {m} }}, fallback: accept }} }}\n  {m}-fail: {{ leaderboard: {{ plugin: {{ name: {m} }}, fallback: fail }} }}\n"
        ));
    }
    let plugins = plugins_from_dist(&[])?;
    plugins.write(
        "boom.lua",
        "return { leaderboard = function(req, s) error('boom') end }",
    )?;
    plugins.write(
        "spin.lua",
        "return { leaderboard = function() while true do end end }",
    )?;
    plugins.write(
        "nan.lua",
        "return { leaderboard = function() return { score = 0/0 } end }",
    )?;
    let w = PluginWorld::start(&[("lb.yaml", &policy)], plugins).await?;
    let p = &w.patternd;
    for m in ["boom", "spin", "nan"] {
        let rule = format!("{m}-accept");
        let r = submit(p, &rule, "b", "alice", json!(42), false).await?;
        assert_eq!(r.status, 200, "{m}: {r:?}");
        assert_eq!(r.json["fallback"], json!(true), "{m}: {r:?}");
        assert_eq!(recorded(p, &rule, "b", "alice").await?, Some(42.0), "{m}");

        let rule = format!("{m}-fail");
        let r = submit(p, &rule, "b", "alice", json!(42), false).await?;
        r.assert_problem(500);
        assert_eq!(
            r.json["type"],
            json!("urn:patternd:problem:plugin-failed"),
            "{m}: {r:?}"
        );
        assert_eq!(recorded(p, &rule, "b", "alice").await?, None, "{m}");
    }
    let metrics = p.get("/metrics").await?.text;
    assert_eq!(
        metric_value(
            &metrics,
            "patternd_plugin_failures_total",
            &[("app", "lb"), ("rule", "boom-fail")]
        ),
        Some(1.0)
    );
    Ok(())
}

/// `tiered-limits.wasm` (world `plugin`) and `entry-gate.wasm` (`plugin-stream`) predate the
/// leaderboard hook: they load beside a leaderboard rule of another plugin, and naming them
/// (or a Lua plugin without `leaderboard`) in a leaderboard rule is a load diagnostic at the
/// rule.
#[tokio::test(flavor = "multi_thread")]
async fn plugins_without_the_leaderboard_hook_cannot_serve_leaderboards() -> Result<()> {
    let plugins = plugins_from_dist(&[
        "tiered-limits.wasm",
        "entry-gate.wasm",
        "entry-gate-lua.lua",
        "score-gate.wasm",
    ])?;
    let good = "app: lb
rules:
  tiered:
    rate_limit:
      plugin: { name: tiered-limits, config: { header: X-Tier, default: free, tiers: { free: { limit: 1, window: 1m } } } }
  events:
    stream: { max_len: 10, plugin: { name: entry-gate } }
  scores:
    leaderboard: { plugin: { name: score-gate, config: { cap: 10 } } }
";
    let w = PluginWorld::start(&[("lb.yaml", good)], plugins).await?;
    let p = &w.patternd;
    assert_eq!(p.check("lb", "tiered", "u", 1).await?.status, 200);
    assert_eq!(p.check("lb", "tiered", "u", 1).await?.status, 429);
    let r = submit(p, "scores", "b", "alice", json!(50), false).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["score"], json!(10), "{r:?}");

    let dir = w.plugins.path().to_string_lossy().to_string();
    let hint = " (a component exports it when built for the world patternd:plugin/plugin-leaderboard@0.1.0)";
    for (name, hint) in [
        ("tiered-limits", hint),
        ("entry-gate", hint),
        ("entry-gate-lua", ""),
    ] {
        let policies = policy_dir(&[(
            "bad.yaml",
            &format!(
                "app: lb\nrules:\n  scores:\n    leaderboard: {{ plugin: {{ name: {name} }} }}\n"
            ),
        )])?;
        let pol = policies.path().to_string_lossy().to_string();
        let out = run_cli(&["check", &pol, "--plugins", &dir])?;
        assert!(!out.status.success(), "{name}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let says = format!("bad.yaml:3:3: error: plugin `{name}` has no `leaderboard` hook{hint}");
        assert!(err.contains(&says), "{name}: {err}");
    }
    Ok(())
}
