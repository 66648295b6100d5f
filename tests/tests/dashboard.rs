//! The dashboard (`GET /admin/ui`) in a real headless Chromium driven over WebDriver
//! (`tests/src/webdriver.rs`), against the real binary and a real redis-server: it signs in
//! with the admin token, shows the loaded rules, and its charts move when traffic is sent,
//! read back from the page's DOM. A screenshot is saved under the target dir (the path is
//! printed). Without chromium and chromedriver installed the test fails, naming them.
//!
//! `/admin/samples` (what the charts draw) is also tested on its own, without a browser.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use patternd_e2e::origin::Origin;
use patternd_e2e::webdriver::{Driver, Session};
use patternd_e2e::{World, eventually};
use serde_json::{Value, json};

const TOKEN: &str = "dash-admin-t0ken";

const SHOP: &str = "app: shop
rules:
  api:
    description: Public API per key
    rate_limit: { algorithm: fixed_window, limit: 5, window: 1h }
  product:
    description: Product pages
    cache:
      origin: ORIGIN
      ttl: 1h
      origin_timeout: 10s
  order:
    lock: { ttl: 30s, max_wait: 10s }
";

const JOBS: &str = "app: jobs
rules:
  emails:
    queue: { visibility: 1m, max_attempts: 5 }
";

/// How long the page may take to show something; a wait, never an assertion of speed.
const PAGE_WAIT: Duration = Duration::from_secs(30);

async fn world(origin: &Origin) -> Result<World> {
    let shop = SHOP.replace("ORIGIN", &origin.template());
    World::start(
        &[("shop.yaml", &shop), ("jobs.yaml", JOBS)],
        &["--admin-token", TOKEN],
    )
    .await
}

/// Waits until `script` (a function body) returns something other than null/false, and
/// returns it.
async fn wait_for(s: &Session<'_>, what: &str, script: &str) -> Result<Value> {
    eventually(PAGE_WAIT, what, || async {
        let v = s.eval(script).await?;
        Ok((!v.is_null() && v != json!(false)).then_some(v))
    })
    .await
}

/// Every chart's per-series sums over its points, as the page set them on `data-sums`.
async fn chart_sums(s: &Session<'_>) -> Result<Value> {
    s.eval(
        "const out = {};
         document.querySelectorAll('[data-chart]').forEach(c => {
           out[c.dataset.chart] = JSON.parse(c.dataset.sums);
         });
         return out;",
    )
    .await
}

fn sum_of(sums: &Value, chart: &str, series: &str) -> f64 {
    sums[chart][series].as_f64().unwrap_or(0.0)
}

/// Rate-limit decisions (allowed and denied), cache misses and hits, queue pushes and lock
/// waits: one round of what the charts plot.
async fn traffic(w: &World, round: usize) -> Result<()> {
    let p = &w.patternd;
    // 6 to 10 checks on a fresh id: 5 allowed, the rest denied (limit 5 per hour). The counts
    // vary by round only so that a long run's lines have a shape.
    for _ in 0..6 + round % 5 {
        p.check("shop", "api", &format!("client-{round}"), 1)
            .await?;
    }
    // A miss, then hits.
    for _ in 0..4 + round % 4 {
        let r = p.get(&format!("/v1/cache/shop/product/p{round}")).await?;
        ensure!(r.status == 200, "{r:?}");
    }
    let r = p
        .post_json("/v1/queues/jobs/emails", &json!({"payload": {"n": round}}))
        .await?;
    ensure!(r.status == 201, "{r:?}");
    // A held lock, and an acquire that waits for it, then gives up (retries, then busy).
    let held = p
        .post_json(&format!("/v1/locks/shop/order/o-{round}"), &json!({}))
        .await?;
    ensure!(held.status == 200, "{held:?}");
    let waiter = p
        .post_json(
            &format!("/v1/locks/shop/order/o-{round}"),
            &json!({"wait_ms": 300}),
        )
        .await?;
    ensure!(waiter.status == 409, "{waiter:?}");
    Ok(())
}

/// Where the screenshot goes: the integration tests' dir under the target dir.
fn screenshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_rules_and_moving_charts_in_a_real_browser() -> Result<()> {
    // First, so a machine without the browser fails here, saying what to install.
    let driver = Driver::start().await?;
    let origin = Origin::start().await?;
    for i in 0..100 {
        origin.set(&format!("p{i}"), "text/plain", b"product page", &[]);
    }
    let w = world(&origin).await?;
    let p = &w.patternd;

    // The shell is served without the token and locked down; the data behind it is not.
    let page = p.get("/admin/ui").await?;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(page.content_type(), "text/html; charset=utf-8");
    let csp = page.header("content-security-policy").unwrap_or_default();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(p.get("/admin/samples").await?.status, 401);

    let s = driver.session(1400, 1500).await?;
    s.goto(&p.url("/admin/ui")).await?;

    // No token yet: the sign-in form. A wrong token is refused, and the page says so.
    wait_for(
        &s,
        "the sign-in form",
        "return !document.getElementById('login').hidden",
    )
    .await?;
    let input = s.find("#token").await?;
    s.type_into(&input, "not-the-token").await?;
    s.click(&s.find("#login-submit").await?).await?;
    let refused = wait_for(
        &s,
        "the refusal",
        "return document.getElementById('login-error').textContent || null",
    )
    .await?;
    assert!(
        refused.as_str().unwrap_or_default().contains("refused"),
        "{refused}"
    );

    s.type_into(&s.find("#token").await?, TOKEN).await?;
    s.click(&s.find("#login-submit").await?).await?;
    wait_for(
        &s,
        "signing in",
        "return document.body.dataset.signedIn === 'true'",
    )
    .await?;
    // The token lives in this tab's sessionStorage; no cookie carries it.
    let kept = s
        .eval("return [sessionStorage.getItem('patternd-admin-token'), document.cookie]")
        .await?;
    assert_eq!(kept, json!([TOKEN, ""]));

    // Every rule, per app, with its pattern and its settings from /admin/policies.
    let rules = wait_for(
        &s,
        "the rules table",
        "const rows = [...document.querySelectorAll('tr[data-rule]')];
         return rows.length ? rows.map(r => [r.dataset.rule, r.dataset.kind,
           r.querySelector('dl').textContent]) : null;",
    )
    .await?;
    let rules: Vec<(String, String, String)> = serde_json::from_value(rules)?;
    let find = |name: &str| {
        rules
            .iter()
            .find(|r| r.0 == name)
            .unwrap_or_else(|| panic!("{name} is not on the page: {rules:?}"))
    };
    assert_eq!(rules.len(), 4, "{rules:?}");
    let api = find("shop/api");
    assert_eq!(api.1, "ratelimit");
    assert!(
        api.2.contains("algorithm=fixed_window") && api.2.contains("limit=5"),
        "{api:?}"
    );
    assert!(api.2.contains("window=1h"), "{api:?}");
    let product = find("shop/product");
    assert_eq!(product.1, "cache");
    assert!(product.2.contains(&origin.template()), "{product:?}");
    assert_eq!(find("shop/order").1, "lock");
    assert_eq!(find("jobs/emails").1, "queue");

    // The doctor: its findings when the engine has one, else says it is unavailable.
    let bearer = format!("Bearer {TOKEN}");
    let doctor = p
        .get_with("/admin/doctor", &[("authorization", bearer.as_str())])
        .await?;
    let state = wait_for(
        &s,
        "the doctor panel",
        "const d = document.getElementById('doctor-panel').dataset;
         return d.state === 'loading' ? null : [d.state, d.checks || null,
           document.getElementById('doctor').textContent];",
    )
    .await?;
    if doctor.status == 200 {
        assert_eq!(state[0], doctor.json["status"], "{state}");
        let checks = doctor.json["checks"].as_array().map_or(0, Vec::len);
        assert_eq!(state[1], json!(checks.to_string()), "{state}");
    } else {
        assert_eq!(state[0], "unavailable", "{state}");
        let text = state[2].as_str().unwrap_or_default();
        assert!(text.contains("doctor unavailable"), "{state}");
    }

    // The charts, from the page's DOM, before and after traffic.
    let before = chart_sums(&s).await?;
    assert_eq!(sum_of(&before, "decisions", "denied"), 0.0, "{before}");
    let rounds = std::env::var("PATTERND_DASHBOARD_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    for round in 0..rounds {
        traffic(&w, round).await?;
        // Spread over a few samples (one a second), so the lines have a shape.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let after = eventually(PAGE_WAIT, "the charts to show the traffic", || async {
        let sums = chart_sums(&s).await?;
        let moved = [
            ("decisions", "allowed"),
            ("decisions", "denied"),
            ("cache", "hit ratio"),
            ("origin", "p50"),
            ("queues", "ready"),
            ("locks", "waits"),
            ("redis", "p95"),
        ]
        .iter()
        .all(|(c, series)| sum_of(&sums, c, series) > 0.0);
        Ok(moved.then_some(sums))
    })
    .await
    .with_context(|| format!("{:#}", before))?;
    // Each rule that got traffic shows activity in its row.
    let activity = wait_for(
        &s,
        "rule activity",
        "const a = r => Number(document.querySelector(`tr[data-rule=\"${r}\"]`).dataset.activity);
         const v = ['shop/api', 'shop/product', 'jobs/emails'].map(a);
         return v.every(x => x > 0) ? v : null;",
    )
    .await?;
    eprintln!("charts after traffic: {after}\nrule activity: {activity}");

    // Nothing the page did was blocked by its own CSP.
    let violations = s
        .eval("return document.body.dataset.cspViolations || null")
        .await?;
    assert!(
        violations.is_null(),
        "CSP violations: {violations} ({})",
        s.eval("return document.body.dataset.cspViolation").await?
    );

    let shot = screenshot_path("dashboard.png");
    s.screenshot(&shot).await?;
    eprintln!("dashboard screenshot: {}", shot.display());

    // Reloaded, the page signs in from sessionStorage and has the history at once (the ring
    // on the server, not what this tab saw).
    s.goto(&p.url("/admin/ui")).await?;
    let history = wait_for(
        &s,
        "the history after a reload",
        "const c = document.querySelector('[data-chart=decisions]');
         return c && Number(c.dataset.points) > 0 ? JSON.parse(c.dataset.sums) : null;",
    )
    .await?;
    assert!(history["denied"].as_f64().unwrap_or(0.0) > 0.0, "{history}");

    // Forgetting the token signs out, in this tab and its storage.
    s.click(&s.find("#logout").await?).await?;
    let out = wait_for(
        &s,
        "signing out",
        "return !document.getElementById('login').hidden
           && sessionStorage.getItem('patternd-admin-token') === null",
    )
    .await?;
    assert_eq!(out, json!(true));
    s.end().await?;
    Ok(())
}

/// Without `--admin-token`, admin routes answer loopback clients: the page opens without
/// asking for a token, and offers none to forget.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_the_page_opens_on_loopback() -> Result<()> {
    let driver = Driver::start().await?;
    let w = World::start(&[("jobs.yaml", JOBS)], &[]).await?;
    let s = driver.session(1000, 800).await?;
    s.goto(&w.patternd.url("/admin/ui")).await?;
    let rules = wait_for(
        &s,
        "the rules, without signing in",
        "const rows = [...document.querySelectorAll('tr[data-rule]')].map(r => r.dataset.rule);
         return rows.length ? [rows, document.getElementById('login').hidden,
           document.getElementById('logout').hidden] : null;",
    )
    .await?;
    assert_eq!(rules, json!([["jobs/emails"], true, true]));
    s.end().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn samples_are_rates_of_the_engine_s_own_metrics() -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("p1", "text/plain", b"x", &[]);
    let w = world(&origin).await?;
    let p = &w.patternd;
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];

    for (what, headers) in [
        ("no token", vec![]),
        ("wrong token", vec![("authorization", "Bearer nope")]),
    ] {
        let r = p.get_with("/admin/samples", &headers).await?;
        assert_eq!(r.status, 401, "{what}: {r:?}");
    }
    let r = p.get_with("/admin/samples?after=soon", &auth).await?;
    r.assert_problem(400);
    let r = p.get_with("/admin/samples?before=1", &auth).await?;
    r.assert_problem(400);

    for _ in 0..7 {
        p.check("shop", "api", "k", 1).await?;
    }
    // The sampler reads once a second: wait for a sample that holds the denials.
    let denied = eventually(PAGE_WAIT, "a sample with the denials", || async {
        let r = p.get_with("/admin/samples", &auth).await?;
        ensure!(r.status == 200, "{r:?}");
        let total: f64 = r.json["samples"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                s["rates"]["patternd_decisions_total"]["denied"]
                    .as_f64()
                    .unwrap_or(0.0)
                    * s["interval_ms"].as_f64().unwrap_or(0.0)
                    / 1000.0
            })
            .sum();
        Ok((total > 0.0).then_some((r.json, total)))
    })
    .await?;
    let (body, total) = denied;
    // Rates times intervals add back up to the counts: 2 denials (limit 5 of 7).
    assert!((total - 2.0).abs() < 1e-6, "{total}: {body}");
    assert_eq!(body["interval_ms"], 1000);
    assert_eq!(body["capacity"], 300);
    let samples = body["samples"].as_array().context("samples")?;
    let seqs: Vec<u64> = samples.iter().filter_map(|s| s["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(body["latest"].as_u64(), seqs.last().copied());
    let activity: f64 = samples
        .iter()
        .map(|s| {
            s["rules"]["shop/api"].as_f64().unwrap_or(0.0)
                * s["interval_ms"].as_f64().unwrap_or(0.0)
                / 1000.0
        })
        .sum();
    assert!((activity - 7.0).abs() < 1e-6, "{activity}: {body}");

    // `after` returns only what is newer.
    let last = seqs.last().copied().unwrap_or(0);
    let r = p
        .get_with(&format!("/admin/samples?after={last}"), &auth)
        .await?;
    assert!(
        r.json["samples"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|s| s["seq"].as_u64() > Some(last)),
        "{r:?}"
    );
    Ok(())
}
