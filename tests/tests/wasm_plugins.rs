//! WebAssembly plugins end to end: the Rust `tiered-limits` component decides over HTTP, the
//! `hostile` component's misbehaviors each fail one call, and a broken component never
//! replaces a working one. The components are built by `plugins/build.sh` (wasm32-wasip2).

use std::time::{Duration, Instant};

use anyhow::Result;
use patternd_e2e::{
    Backend, Patternd, PluginWorld, TempDir, burst, count, on_every_backend, plugins_from_dist,
};
use serde_json::json;

const TIERED: &str = "app: w
rules:
  tiered:
    rate_limit:
      plugin:
        name: tiered-limits
        config:
          header: X-Tier
          default: free
          tiers:
            free: { limit: 2, window: 1m }
            pro: { limit: 5, window: 1m }
";

async fn start(policy: &str, plugins: TempDir) -> Result<PluginWorld> {
    PluginWorld::start(&[("w.yaml", policy)], plugins).await
}

async fn tier(
    p: &Patternd,
    rule: &str,
    id: &str,
    tier: Option<&str>,
) -> Result<patternd_e2e::Reply> {
    let mut req = p
        .client()
        .post(p.url(&format!("/v1/ratelimit/w/{rule}")))
        .json(&json!({ "id": id }));
    if let Some(t) = tier {
        req = req.header("X-Tier", t);
    }
    p.send(req).await
}

async fn tiered_limits_component_decides_per_tier(b: Backend) -> Result<()> {
    let w = PluginWorld::on(
        b,
        &[("w.yaml", TIERED)],
        plugins_from_dist(&["tiered-limits.wasm"])?,
    )
    .await?;
    let p = &w.patternd;
    for (t, left) in [(Some("free"), 1), (None, 0)] {
        let r = tier(p, "tiered", "u", t).await?;
        assert_eq!(
            (r.status, r.remaining(), r.u64_field("limit")),
            (200, left, 2),
            "{r:?}"
        );
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"tiered-free\";q=2;w=60")
        );
    }
    assert_eq!(tier(p, "tiered", "u", Some("free")).await?.status, 429);
    for left in (0..5).rev() {
        let r = tier(p, "tiered", "u", Some("pro")).await?;
        assert_eq!((r.status, r.remaining()), (200, left), "{r:?}");
    }
    assert_eq!(tier(p, "tiered", "u", Some("pro")).await?.status, 429);
    // 100 concurrent decisions on a fresh id and tier: exactly the tier's limit passes.
    let statuses = burst(100, |_| {
        let c = p.client().clone();
        let url = p.url("/v1/ratelimit/w/tiered");
        async move {
            Ok(c.post(url)
                .header("X-Tier", "pro")
                .json(&json!({"id": "burst"}))
                .send()
                .await?
                .status()
                .as_u16())
        }
    })
    .await?;
    let ok = count(&statuses, |s| *s == 200);
    assert_eq!(ok, 5);
    Ok(())
}

on_every_backend!(tiered_limits_component_decides_per_tier);

#[tokio::test(flavor = "multi_thread")]
async fn hostile_components_fail_one_call_each() -> Result<()> {
    const MODES: [&str; 6] = ["loop", "alloc", "trap", "garbage", "escape", "flood"];
    let mut policy = String::from(
        "app: w\nrules:\n  plain: { rate_limit: { algorithm: fixed_window, limit: 1000, window: 1h } }\n",
    );
    for m in MODES {
        policy.push_str(&format!(
            "  {m}-fb:\n    rate_limit:\n      plugin: {{ name: hostile, config: {{ mode: {m} }} }}\n      fallback: {{ algorithm: fixed_window, limit: 2, window: 1h }}\n  {m}-bare:\n    rate_limit: {{ plugin: {{ name: hostile, config: {{ mode: {m} }} }} }}\n"
        ));
    }
    let w = start(&policy, plugins_from_dist(&["hostile.wasm"])?).await?;
    let p = &w.patternd;
    for m in MODES {
        for left in (0..2).rev() {
            let started = Instant::now();
            let r = p.check("w", &format!("{m}-fb"), "x", 1).await?;
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{m}: {:?}",
                started.elapsed()
            );
            assert_eq!((r.status, r.remaining()), (200, left), "{m}: {r:?}");
            assert_eq!(r.json["fallback"], json!(true), "{m}: {r:?}");
        }
        let started = Instant::now();
        let r = p.check("w", &format!("{m}-bare"), "x", 1).await?;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{m}: {:?}",
            started.elapsed()
        );
        r.assert_problem(500);
        assert_eq!(p.check("w", "plain", "x", 1).await?.status, 200, "{m}");
    }
    // The same binding behaves again once asked to (a fresh instance replaced the failed one).
    let r = p
        .send(
            p.client()
                .post(p.url("/v1/ratelimit/w/trap-bare"))
                .header("x-mode", "ok")
                .json(&json!({"id": "x"})),
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_component_never_replaces_a_working_one() -> Result<()> {
    let w = start(TIERED, plugins_from_dist(&["tiered-limits.wasm"])?).await?;
    let p = &w.patternd;
    assert_eq!(tier(p, "tiered", "u", None).await?.remaining(), 1);
    let good = std::fs::read(w.plugins.path().join("tiered-limits.wasm"))?;
    // Not a component at all, then a truncated one.
    for broken in [b"\0asm garbage".to_vec(), good[..good.len() / 2].to_vec()] {
        std::fs::write(w.plugins.path().join("tiered-limits.wasm"), &broken)?;
        let r = p.reload().await?;
        r.assert_problem(422);
        assert!(r.text.contains("tiered-limits.wasm"), "{r:?}");
        let d = tier(p, "tiered", "u", None).await?;
        assert_eq!(
            d.header("ratelimit-policy"),
            Some("\"tiered-free\";q=2;w=60"),
            "{d:?}"
        );
    }
    // The good component back: the reload is taken, and the counter carried on.
    std::fs::write(w.plugins.path().join("tiered-limits.wasm"), &good)?;
    let r = p.reload().await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(tier(p, "tiered", "u", None).await?.status, 429);
    Ok(())
}

/// The component's session hook gets the session's real times (WIT `created-ms`,
/// `last-seen-ms`): `hostile` in `echo` mode puts them in its rejection reason.
#[tokio::test(flavor = "multi_thread")]
async fn the_session_hook_gets_created_and_last_seen_times() -> Result<()> {
    let policy = "app: w
rules:
  s: { session: { idle_ttl: 30m, absolute_ttl: 24h, plugin: { name: hostile, config: { mode: ok } } } }
";
    let w = start(policy, plugins_from_dist(&["hostile.wasm"])?).await?;
    let p = &w.patternd;
    let r = p
        .post_json("/v1/sessions/w/s", &json!({ "user": "wes" }))
        .await?;
    assert_eq!(r.status, 201, "{r:?}");
    let sid = r.json["id"].as_str().unwrap_or_default().to_string();
    let path = format!("/v1/sessions/w/s/{sid}");
    // Redis TIME is in ms: the pause makes the read a later ms than the creation.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let read = p.get(&path).await?;
    assert_eq!(read.status, 200, "{read:?}");
    let created = read.json["created_ms"].as_u64().unwrap_or_default();
    assert!(created > 0, "{read:?}");
    let echo = p.get_with(&path, &[("x-mode", "echo")]).await?;
    echo.assert_problem(403);
    let d = echo.detail();
    let (c, seen) = d
        .split_once("created=")
        .and_then(|(_, rest)| rest.split_once(" seen="))
        .ok_or_else(|| anyhow::anyhow!("unexpected reason {d:?}"))?;
    assert_eq!(c.parse::<u64>()?, created, "{d}");
    // The last touch is the read above, after the creation.
    let seen: u64 = seen.parse()?;
    assert!(seen > created, "{d}");
    assert_eq!(p.get(&path).await?.json["last_seen_ms"], json!(seen));
    Ok(())
}
