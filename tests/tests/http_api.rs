//! The HTTP surface: forward-auth GET, problem+json errors, shadow rules, metrics, health.

use anyhow::Result;
use patternd_e2e::{World, metric_value};
use serde_json::json;

const POLICY: &str = "app: web
rules:
  edge:
    rate_limit: { algorithm: fixed_window, limit: 2, window: 1h, id_from: { header: X-Forwarded-For } }
  keyed:
    rate_limit: { algorithm: gcra, limit: 1, window: 1h, id_from: { header: X-Api-Key } }
  plain:
    rate_limit: { algorithm: sliding_window, limit: 5, window: 1h }
  trial:
    rate_limit: { algorithm: fixed_window, limit: 2, window: 1h, shadow: true }
";

#[tokio::test(flavor = "multi_thread")]
async fn forward_auth_get_takes_the_id_from_a_header() -> Result<()> {
    let w = World::start(&[("web.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let edge = "/v1/ratelimit/web/edge";
    // X-Forwarded-For is read from the right: the id is the address the gateway saw (its
    // rightmost entry), whatever the client wrote to the left of it.
    for (xff, status, remaining) in [
        ("198.51.100.9, 203.0.113.7", 200, 1),
        ("203.0.113.7", 200, 0),
        (" forged ,10.0.0.9, 203.0.113.7 ", 429, 0),
        ("203.0.113.7, 198.51.100.1", 200, 1),
    ] {
        let r = p.get_with(edge, &[("x-forwarded-for", xff)]).await?;
        assert_eq!(
            (r.status, r.remaining()),
            (status, remaining),
            "{xff}: {r:?}"
        );
        assert!(r.header("ratelimit").is_some(), "{r:?}");
    }
    // The GET form and the POST form share one counter per id.
    let r = p.check("web", "edge", "198.51.100.1", 1).await?;
    assert_eq!((r.status, r.remaining()), (200, 0), "{r:?}");
    // `?cost=` works on GET.
    let r = p
        .get_with(
            &format!("{edge}?cost=2"),
            &[("x-forwarded-for", "192.0.2.1")],
        )
        .await?;
    assert_eq!((r.status, r.remaining()), (200, 0), "{r:?}");
    p.get_with(
        &format!("{edge}?cost=-1"),
        &[("x-forwarded-for", "192.0.2.2")],
    )
    .await?
    .assert_problem(400);

    // Any header can be the id source.
    let keyed = "/v1/ratelimit/web/keyed";
    let r = p.get_with(keyed, &[("x-api-key", "key-1")]).await?;
    assert_eq!(r.status, 200, "{r:?}");
    let r = p.get_with(keyed, &[("X-API-KEY", "key-1")]).await?;
    assert_eq!(r.status, 429, "{r:?}");
    let r = p.get_with(keyed, &[("x-api-key", "key-2")]).await?;
    assert_eq!(r.status, 200, "{r:?}");

    // Without the header there is no id: a client error, not a decision.
    let r = p.get_with(edge, &[("x-api-key", "key-1")]).await?;
    r.assert_problem(400);
    assert!(r.detail().contains("x-forwarded-for"), "{r:?}");
    // A rule without id_from has no GET form.
    let r = p
        .get_with(
            "/v1/ratelimit/web/plain",
            &[("x-forwarded-for", "192.0.2.1")],
        )
        .await?;
    r.assert_problem(400);
    assert!(r.detail().contains("id_from"), "{r:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_status_picks_the_status_of_a_denial() -> Result<()> {
    let w = World::start(&[("web.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let keyed = "/v1/ratelimit/web/keyed";
    let r = p
        .get_with(&format!("{keyed}?deny_status=403"), &[("x-api-key", "k")])
        .await?;
    assert_eq!(
        r.status, 200,
        "an allowed request is 200 whatever deny_status: {r:?}"
    );
    for (q, status) in [
        ("", 429),
        ("?deny_status=429", 429),
        ("?deny_status=403", 403),
        ("?deny_status=401", 401),
    ] {
        let r = p
            .get_with(&format!("{keyed}{q}"), &[("x-api-key", "k")])
            .await?;
        assert_eq!((r.status, r.allowed()), (status, false), "{q}: {r:?}");
        assert!(r.header("retry-after").is_some(), "{q}: {r:?}");
    }
    for bad in ["200", "500", "forbidden", ""] {
        let r = p
            .get_with(&format!("{keyed}?deny_status={bad}"), &[("x-api-key", "k")])
            .await?;
        r.assert_problem(400);
        assert!(r.detail().contains("429, 403 or 401"), "{bad}: {r:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn client_errors_are_problem_json() -> Result<()> {
    let w = World::start(&[("web.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let plain = "/v1/ratelimit/web/plain";

    p.post_json("/v1/ratelimit/nope/plain", &json!({"id": "a"}))
        .await?
        .assert_problem(404);
    p.post_json("/v1/ratelimit/web/nope", &json!({"id": "a"}))
        .await?
        .assert_problem(404);

    let bad_bodies: Vec<(&str, String)> = vec![
        ("malformed JSON", r#"{"id": "a", "cost": "#.to_string()),
        ("not an object", r#"["a"]"#.to_string()),
        ("positional array", r#"["a", 3]"#.to_string()),
        ("a bare string", r#""a""#.to_string()),
        ("empty body", String::new()),
        ("missing id", r#"{"cost": 1}"#.to_string()),
        ("empty id", r#"{"id": ""}"#.to_string()),
        ("id not a string", r#"{"id": {"nested": true}}"#.to_string()),
        (
            "id over 512 bytes",
            json!({"id": "x".repeat(513)}).to_string(),
        ),
        (
            "id over 512 bytes, multi-byte",
            json!({"id": "é".repeat(257)}).to_string(),
        ),
        ("negative cost", r#"{"id": "a", "cost": -1}"#.to_string()),
        ("fractional cost", r#"{"id": "a", "cost": 1.5}"#.to_string()),
        ("cost as text", r#"{"id": "a", "cost": "2"}"#.to_string()),
        (
            "cost above the capacity",
            r#"{"id": "a", "cost": 6}"#.to_string(),
        ),
        (
            "huge cost",
            r#"{"id": "a", "cost": 18446744073709551616}"#.to_string(),
        ),
        ("unknown field", r#"{"id": "a", "costs": 1}"#.to_string()),
    ];
    for (what, body) in &bad_bodies {
        let r = p.post_raw(plain, body).await?;
        assert_eq!(r.status, 400, "{what}: {r:?}");
        r.assert_problem(400);
    }
    let r = p
        .post_raw(plain, &json!({"id": "x".repeat(70_000)}).to_string())
        .await?;
    r.assert_problem(413);

    // None of the rejected requests was charged to `a`; the longest allowed id works.
    let r = p.check("web", "plain", "a", 5).await?;
    assert_eq!((r.status, r.remaining()), (200, 0), "{r:?}");
    let r = p.check("web", "plain", &"é".repeat(256), 1).await?;
    assert_eq!(r.status, 200, "a 512-byte id is allowed: {r:?}");
    // Numeric ids are ids too (the same as their decimal text).
    p.post_json(plain, &json!({"id": 42})).await?;
    let r = p.check("web", "plain", "42", 1).await?;
    assert_eq!(r.remaining(), 3, "{r:?}");

    p.get("/nope").await?.assert_problem(404);
    p.get("/v1/ratelimit/web").await?.assert_problem(404);
    p.post_json("/v1/ratelimit/web/plain/extra", &json!({"id": "a"}))
        .await?
        .assert_problem(404);
    let c = p.client();
    for req in [
        c.put(p.url(plain)).json(&json!({"id": "a"})),
        c.patch(p.url(plain)),
        c.delete(p.url(plain)),
        c.delete(p.url("/healthz")),
        c.post(p.url("/metrics")),
        c.get(p.url("/admin/reload")),
    ] {
        p.send(req).await?.assert_problem(405);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_rule_counts_but_never_denies() -> Result<()> {
    let w = World::start(&[("web.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    for i in 0..5u64 {
        let r = p.check("web", "trial", "tester", 1).await?;
        assert_eq!((r.status, r.allowed()), (200, true), "#{i}: {r:?}");
        assert!(r.header("retry-after").is_none(), "{r:?}");
        let over = i >= 2;
        assert_eq!(
            r.json
                .get("shadow_denied")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            over,
            "#{i}: {r:?}"
        );
        assert_eq!(r.remaining(), 1u64.saturating_sub(i), "#{i}: {r:?}");
    }
    let metrics = p.get("/metrics").await?.text;
    let count = |outcome| {
        metric_value(
            &metrics,
            "patternd_decisions_total",
            &[("app", "web"), ("rule", "trial"), ("outcome", outcome)],
        )
    };
    assert_eq!(count("allowed"), Some(2.0), "{metrics}");
    assert_eq!(count("shadow_denied"), Some(3.0), "{metrics}");
    assert_eq!(count("denied").unwrap_or(0.0), 0.0, "{metrics}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_decisions_and_health_endpoints_answer() -> Result<()> {
    let w = World::start(&[("web.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    for _ in 0..7 {
        p.check("web", "plain", "m", 1).await?;
    }
    for _ in 0..3 {
        p.get_with(
            "/v1/ratelimit/web/edge",
            &[("x-forwarded-for", "192.0.2.9")],
        )
        .await?;
    }
    let r = p.get("/metrics").await?;
    assert_eq!(r.status, 200);
    assert!(r.content_type().starts_with("text/plain"), "{r:?}");
    for (rule, outcome, n) in [
        ("plain", "allowed", 5.0),
        ("plain", "denied", 2.0),
        ("edge", "allowed", 2.0),
        ("edge", "denied", 1.0),
    ] {
        assert_eq!(
            metric_value(
                &r.text,
                "patternd_decisions_total",
                &[("app", "web"), ("rule", rule), ("outcome", outcome)]
            ),
            Some(n),
            "{rule} {outcome}:\n{}",
            r.text
        );
    }
    let r = p.get("/healthz").await?;
    assert_eq!(r.status, 200, "{r:?}");
    let r = p.get("/readyz").await?;
    assert_eq!((r.status, &r.json["ready"]), (200, &json!(true)), "{r:?}");
    Ok(())
}
