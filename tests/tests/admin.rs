//! `/admin`: access control and reload (a bad policy never replaces a good one).

use anyhow::Result;
use patternd_e2e::{World, position};
use serde_json::{Value, json};

const GOOD: &str = "app: adm
rules:
  api:
    rate_limit: { algorithm: fixed_window, limit: 3, window: 1h }
";

/// Rule names per app, from `GET /admin/policies`.
fn rules_of(policies: &Value, app: &str) -> Vec<String> {
    policies["apps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["app"] == app)
        .flat_map(|a| a["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["rule"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_admin_answers_loopback() -> Result<()> {
    let w = World::start(&[("adm.yaml", GOOD)], &[]).await?;
    let p = &w.patternd;
    let r = p.get("/admin/policies").await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(rules_of(&r.json, "adm"), ["api"], "{r:?}");
    let r = p.reload().await?;
    assert_eq!(
        (r.status, &r.json["reloaded"]),
        (200, &json!(true)),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_admin_requires_it() -> Result<()> {
    let w = World::start(&[("adm.yaml", GOOD)], &["--admin-token", "s3cret-t0ken"]).await?;
    let p = &w.patternd;
    let c = p.client();
    for (what, auth) in [
        ("no header", None),
        ("wrong token", Some("Bearer wrong")),
        ("token prefix", Some("Bearer s3cret")),
        ("token plus more", Some("Bearer s3cret-t0ken2")),
        ("other scheme", Some("Basic czNjcmV0LXQwa2Vu")),
        ("bare token", Some("s3cret-t0ken")),
    ] {
        for req in [
            c.get(p.url("/admin/policies")),
            c.post(p.url("/admin/reload")),
        ] {
            let req = match auth {
                Some(a) => req.header("authorization", a),
                None => req,
            };
            let r = p.send(req).await?;
            r.assert_problem(401);
            assert!(r.header("www-authenticate").is_some(), "{what}: {r:?}");
        }
    }
    let r = p
        .send(c.get(p.url("/admin/policies")).bearer_auth("s3cret-t0ken"))
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let r = p
        .send(c.post(p.url("/admin/reload")).bearer_auth("s3cret-t0ken"))
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    // The data plane does not need the admin token.
    assert_eq!(p.check("adm", "api", "u", 1).await?.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_reload_is_refused_with_diagnostics_and_a_good_one_applies() -> Result<()> {
    let w = World::start(&[("adm.yaml", GOOD)], &[]).await?;
    let p = &w.patternd;
    for remaining in [2, 1] {
        assert_eq!(p.check("adm", "api", "u", 1).await?.remaining(), remaining);
    }

    let broken = "app: adm
rules:
  api:
    rate_limit: { algorithm: fixed_window, limit: 3, window: 1h }
  fresh:
    rate_limit: { algorithm: sliding_window, limit: 0, window: 10 parsecs }
";
    let broken_path = w.policies.write("adm.yaml", broken)?;
    let r = p.reload().await?;
    r.assert_problem(422);
    let errors: Vec<String> = r.json["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    // Both problems of the rule, each at its own place, as data and as file:line:column text.
    let file = broken_path.to_string_lossy().to_string();
    for (needle, says) in [("0, window", "`limit`"), ("10 parsecs", "`window`")] {
        let (line, column) = position(broken, needle);
        r.assert_diagnostic(&file, line, column, says);
        let prefix = format!("{file}:{line}:{column}: error:");
        assert!(
            errors.iter().any(|e| e.starts_with(&prefix)),
            "{prefix} not in {errors:#?}"
        );
    }

    // The old rules keep serving, with their counts: the refused reload changed nothing.
    let r = p.check("adm", "api", "u", 1).await?;
    assert_eq!((r.status, r.remaining()), (200, 0), "{r:?}");
    assert_eq!(p.check("adm", "api", "u", 1).await?.status, 429);
    p.check("adm", "fresh", "u", 1).await?.assert_problem(404);

    // Fixed: the reload applies, the new rule serves, the old one keeps its state in Redis.
    let fixed = broken.replace("limit: 0, window: 10 parsecs", "limit: 2, window: 10s");
    w.policies.write("adm.yaml", &fixed)?;
    let r = p.reload().await?;
    assert_eq!(
        (r.status, &r.json["reloaded"]),
        (200, &json!(true)),
        "{r:?}"
    );
    assert_eq!(r.json["rules"], 2, "{r:?}");
    let r = p.check("adm", "fresh", "u", 1).await?;
    assert_eq!((r.status, r.remaining()), (200, 1), "{r:?}");
    assert_eq!(p.check("adm", "api", "u", 1).await?.status, 429);
    let r = p.get("/admin/policies").await?;
    assert_eq!(rules_of(&r.json, "adm"), ["api", "fresh"], "{r:?}");

    // A second app in a new file is picked up too; removing it on the next reload removes it.
    w.policies.write(
        "other.yaml",
        "app: other\nrules:\n  r:\n    rate_limit: { algorithm: gcra, limit: 1, window: 1m }\n",
    )?;
    assert_eq!(p.reload().await?.status, 200);
    assert_eq!(p.check("other", "r", "u", 1).await?.status, 200);
    w.policies.remove("other.yaml")?;
    assert_eq!(p.reload().await?.status, 200);
    p.check("other", "r", "u", 1).await?.assert_problem(404);
    Ok(())
}

/// One rule of `GET /admin/policies`.
fn rule_of<'a>(policies: &'a Value, app: &str, rule: &str) -> &'a Value {
    policies["apps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["app"] == app)
        .flat_map(|a| a["rules"].as_array().into_iter().flatten())
        .find(|r| r["rule"] == rule)
        .unwrap_or(&Value::Null)
}

/// Asserts `fields` of one rule of `GET /admin/policies` (called `name` in failures).
fn assert_fields(rule: &Value, name: &str, fields: &[(&str, Value)]) {
    for (field, want) in fields {
        assert_eq!(&rule[*field], want, "{name}.{field}: {rule}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_show_cache_session_and_lock_settings() -> Result<()> {
    let policy = "app: adm
rules:
  product:
    cache:
      origin: http://127.0.0.1:9/products/{id}
      ttl: 1h
      negative_ttl: 30s
      stale_while_revalidate: 30s
      stale_if_error: 10m
      related: [\"{id}:reviews\"]
      max_value_bytes: 65536
  profile:
    cache:
      origin: http://127.0.0.1:9/profiles/{id}
      format: hash
      ttl: 10m
      write: behind
      max_attempts: 4
      retry_backoff: 250ms
      journal_max_len: 1000
  web:
    session: { idle_ttl: 30m, absolute_ttl: 24h, max_per_user: 5 }
  order:
    lock: { ttl: 30s, permits: 3, max_ttl: 5m, max_wait: 10s }
";
    let w = World::start(&[("adm.yaml", policy)], &[]).await?;
    let r = w.patternd.get("/admin/policies").await?;
    assert_eq!(r.status, 200, "{r:?}");
    let product = rule_of(&r.json, "adm", "product");
    assert_fields(
        product,
        "product",
        &[
            ("kind", json!("cache")),
            ("origin", json!("http://127.0.0.1:9/products/{id}")),
            ("ttl_ms", json!(3_600_000)),
            ("negative_ttl_ms", json!(30_000)),
            ("stale_while_revalidate_ms", json!(30_000)),
            ("stale_if_error_ms", json!(600_000)),
            ("format", json!("string")),
            ("write", json!("cache")),
            ("related", json!(["{id}:reviews"])),
            ("max_value_bytes", json!(65536)),
            ("slot_groups", json!(16)),
            ("plugin", Value::Null),
        ],
    );
    assert!(product.get("max_attempts").is_none(), "{product}");
    let profile = rule_of(&r.json, "adm", "profile");
    assert_fields(
        profile,
        "profile",
        &[
            ("format", json!("hash")),
            ("write", json!("behind")),
            ("ttl_ms", json!(600_000)),
            ("negative_ttl_ms", Value::Null),
            ("max_attempts", json!(4)),
            ("retry_backoff_ms", json!(250)),
            ("journal_max_len", json!(1000)),
        ],
    );
    let web = rule_of(&r.json, "adm", "web");
    assert_fields(
        web,
        "web",
        &[
            ("kind", json!("session")),
            ("idle_ttl_ms", json!(1_800_000)),
            ("absolute_ttl_ms", json!(86_400_000)),
            ("max_per_user", json!(5)),
            ("plugin", Value::Null),
        ],
    );
    let order = rule_of(&r.json, "adm", "order");
    assert_fields(
        order,
        "order",
        &[
            ("kind", json!("lock")),
            ("ttl_ms", json!(30_000)),
            ("permits", json!(3)),
            ("max_ttl_ms", json!(300_000)),
            ("max_wait_ms", json!(10_000)),
        ],
    );
    // Every rule still lists its keys and scripts.
    for rule in [product, profile, web, order] {
        assert!(
            rule["keys"].as_array().is_some_and(|a| !a.is_empty()),
            "{rule}"
        );
        assert!(
            rule["scripts"].as_array().is_some_and(|a| !a.is_empty()),
            "{rule}"
        );
    }
    Ok(())
}
