//! Loader tests beyond the golden files: several files, defaults, the schema.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn src(name: &str, text: &str) -> (PathBuf, String) {
    (PathBuf::from(name), text.to_string())
}

#[test]
fn defaults_are_applied() {
    let l = load_sources(&[src(
        "a.yaml",
        "app: a\nrules:\n  r: { rate_limit: { algorithm: token_bucket, limit: 7, window: 1s } }\n",
    )])
    .expect("valid");
    let rule = l.policy.rules().next().expect("one rule");
    let RuleKind::RateLimit(rl) = &rule.kind else {
        panic!("a rate-limit rule")
    };
    assert_eq!(rl.limits.len(), 1);
    assert_eq!(rl.limits[0].burst, 7, "burst defaults to limit");
    assert_eq!(rl.limits[0].window, Duration::from_secs(1));
    assert_eq!(rl.on_redis_error, OnRedisError::Allow);
    assert!(!rl.shadow);
    assert_eq!(rule.location.line, 3);
}

#[test]
fn duplicate_apps_across_files_point_at_both() {
    let err = load_sources(&[
        src(
            "one.yaml",
            "app: shop\nrules:\n  a: { rate_limit: { algorithm: gcra, limit: 1, window: 1s } }\n",
        ),
        src(
            "two.yaml",
            "app: shop\nrules:\n  b: { rate_limit: { algorithm: gcra, limit: 1, window: 1s } }\n",
        ),
    ])
    .expect_err("duplicate app");
    let text = err.to_string();
    assert!(
        text.contains("two.yaml:1:6: error: duplicate app `shop`: already defined at one.yaml:1:6"),
        "{text}"
    );
}

#[test]
fn errors_of_all_files_are_reported_together() {
    let err = load_sources(&[
        src(
            "one.yaml",
            "app: x\nrules:\n  a: { rate_limit: { algorithm: gcra, limit: 0, window: 1s } }\n",
        ),
        src(
            "two.yaml",
            "app: y\nrules:\n  b: { rate_limit: { algorithm: gcra, limit: 1, window: soon } }\n",
        ),
    ])
    .expect_err("two errors");
    assert_eq!(err.error_count(), 2, "{err}");
    assert!(err.to_string().contains("one.yaml:3:"));
    assert!(err.to_string().contains("two.yaml:3:"));
}

#[test]
fn typos_get_a_suggestion() {
    let err = load_sources(&[src(
        "t.yaml",
        "app: t\nrules:\n  a: { rate_limit: { algoritm: gcra, limit: 1, window: 1s } }\n",
    )])
    .expect_err("typo");
    assert!(
        err.to_string().contains("did you mean `algorithm`?"),
        "{err}"
    );
}

#[test]
fn big_sliding_log_warns() {
    let l = load_sources(&[src(
        "w.yaml",
        "app: w\nrules:\n  a: { rate_limit: { algorithm: sliding_log, limit: 1000000, window: 1h } }\n",
    )])
    .expect("valid with a warning");
    assert_eq!(l.warnings.len(), 1);
    assert!(l.warnings[0].message.contains("sliding_window"));
}

#[test]
fn non_mapping_files_are_errors_not_panics() {
    for text in [
        "",
        "- a\n- b\n",
        "just text",
        "app: [1, 2]\nrules: 3\n",
        "app: a\nrules:\n  r: 5\n",
    ] {
        let r = load_sources(&[src("n.yaml", text)]);
        assert!(r.is_err(), "{text:?} should fail");
    }
}

#[test]
fn schema_describes_the_language() {
    let s = json_schema().to_string();
    for needle in [
        "rate_limit",
        "sliding_window",
        "on_redis_error",
        "id_from",
        "additionalProperties",
    ] {
        assert!(s.contains(needle), "schema lacks {needle}");
    }
}

#[test]
fn plugin_headers_are_lowercased_checked_and_rate_limit_only() {
    let l = load_sources(&[src(
        "a.yaml",
        "app: a\nrules:\n  r:\n    rate_limit:\n      plugin: { name: p, headers: [X-Tier, x-tier, Accept] }\n",
    )])
    .expect("valid");
    let rule = l.policy.rules().next().expect("one rule");
    let RuleKind::RateLimit(rl) = &rule.kind else {
        panic!("a rate-limit rule")
    };
    let headers = rl.plugin.as_ref().and_then(|p| p.headers.clone());
    assert_eq!(
        headers,
        Some(vec!["x-tier".to_string(), "accept".to_string()])
    );

    let unset = load_sources(&[src(
        "a.yaml",
        "app: a\nrules:\n  r:\n    rate_limit:\n      plugin: { name: p }\n",
    )])
    .expect("valid");
    let rule = unset.policy.rules().next().expect("one rule");
    let RuleKind::RateLimit(rl) = &rule.kind else {
        panic!("a rate-limit rule")
    };
    assert_eq!(rl.plugin.as_ref().map(|p| p.headers.is_none()), Some(true));

    let err = load_sources(&[src(
        "a.yaml",
        "app: a\nrules:\n  r:\n    rate_limit:\n      plugin: { name: p, headers: [\"x tier\"] }\n",
    )])
    .expect_err("bad header name");
    assert!(
        err.to_string()
            .contains("`x tier` in `plugin.headers` is not a valid HTTP header name"),
        "{err}"
    );

    let err = load_sources(&[src(
        "a.yaml",
        "app: a\nrules:\n  c:\n    cache:\n      origin: http://127.0.0.1:9000/p/{id}\n      ttl: 1m\n      plugin: { name: p, headers: [x-tier] }\n",
    )])
    .expect_err("headers on a cache plugin");
    assert!(
        err.to_string()
            .contains("`plugin.headers` applies to `rate_limit` rules only, not `cache`"),
        "{err}"
    );
}

#[test]
fn id_from_forwarded_for_defaults_to_the_nearest_proxy_and_validates_its_settings() {
    let rl_of = |text: &str| {
        let l = load_sources(&[src("a.yaml", text)]).expect("valid");
        let rule = l.policy.rules().next().expect("one rule").clone();
        let RuleKind::RateLimit(rl) = rule.kind else {
            panic!("a rate-limit rule")
        };
        rl.id_from.expect("id_from")
    };
    let head = "app: a\nrules:\n  r:\n    rate_limit:\n      algorithm: gcra\n      limit: 1\n      window: 1s\n";
    let f = rl_of(&format!(
        "{head}      id_from: {{ header: X-Forwarded-For }}\n"
    ));
    assert_eq!(f.header, "x-forwarded-for");
    assert_eq!(f.forwarded_for, Some(ForwardedFor::TrustedHops(1)));
    let f = rl_of(&format!(
        "{head}      id_from: {{ header: X-Forwarded-For, trusted_hops: 2 }}\n"
    ));
    assert_eq!(f.forwarded_for, Some(ForwardedFor::TrustedHops(2)));
    let f = rl_of(&format!(
        "{head}      id_from: {{ header: X-Forwarded-For, trusted_proxies: [10.0.0.0/8, 192.0.2.7, \"2001:db8::/32\"] }}\n"
    ));
    assert_eq!(
        f.forwarded_for,
        Some(ForwardedFor::TrustedProxies(vec![
            "10.0.0.0/8".parse().expect("net"),
            "192.0.2.7/32".parse().expect("net"),
            "2001:db8::/32".parse().expect("net"),
        ]))
    );
    // Other headers are taken whole.
    let f = rl_of(&format!("{head}      id_from: {{ header: X-Api-Key }}\n"));
    assert_eq!(f.forwarded_for, None);

    for (id_from, want) in [
        (
            "{ header: X-Forwarded-For, trusted_hops: 0 }",
            "a.yaml:8:57: error: `id_from.trusted_hops` must be 1 to 32",
        ),
        (
            "{ header: X-Forwarded-For, trusted_hops: 33 }",
            "a.yaml:8:57: error: `id_from.trusted_hops` must be 1 to 32",
        ),
        (
            "{ header: X-Forwarded-For, trusted_proxies: [10.0.0.0/8, proxy.local] }",
            "a.yaml:8:73: error: `proxy.local` in `id_from.trusted_proxies` is not an IP address or CIDR range",
        ),
        (
            "{ header: X-Forwarded-For, trusted_proxies: [10.0.0.0/33] }",
            "a.yaml:8:61: error: `10.0.0.0/33` in `id_from.trusted_proxies`",
        ),
        (
            "{ header: X-Forwarded-For, trusted_proxies: [] }",
            "a.yaml:8:60: error: `id_from.trusted_proxies` is empty",
        ),
        (
            "{ header: X-Forwarded-For, trusted_hops: 2, trusted_proxies: [10.0.0.0/8] }",
            "a.yaml:8:77: error: `id_from` takes `trusted_hops` or `trusted_proxies`, not both",
        ),
        (
            "{ header: X-Real-IP, trusted_hops: 2 }",
            "a.yaml:8:51: error: `id_from.trusted_hops` applies to `header: X-Forwarded-For` only",
        ),
        (
            "{ header: X-Real-IP, trusted_proxies: [10.0.0.0/8] }",
            "a.yaml:8:54: error: `id_from.trusted_proxies` applies to `header: X-Forwarded-For` only",
        ),
    ] {
        let err = load_sources(&[src("a.yaml", &format!("{head}      id_from: {id_from}\n"))])
            .expect_err(id_from)
            .to_string();
        assert!(err.contains(want), "{id_from}:\n{err}");
    }
}

#[test]
fn deny_cache_is_allowed_only_where_a_cached_denial_is_exact() {
    let load = |rl: &str| {
        load_sources(&[src(
            "d.yaml",
            &format!("app: d\nrules:\n  r:\n    rate_limit: {rl}\n"),
        )])
    };
    for ok in [
        "{ algorithm: fixed_window, limit: 5, window: 1m, deny_cache: true }",
        "{ algorithm: sliding_window, limit: 5, window: 1m, deny_cache: true }",
        "{ algorithm: gcra, limit: 5, window: 1m, deny_cache: true }",
        "{ algorithm: token_bucket, limit: 5, window: 1m, deny_cache: false }",
    ] {
        let l = load(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        let rule = l.policy.rules().next().expect("one rule");
        let RuleKind::RateLimit(rl) = &rule.kind else {
            panic!("a rate-limit rule")
        };
        assert_eq!(rl.deny_cache, ok.contains("deny_cache: true"), "{ok}");
    }
    for (bad, want) in [
        (
            "{ algorithm: token_bucket, limit: 5, window: 1m, deny_cache: true }",
            "`deny_cache` needs exactly one `fixed_window`, `sliding_window` or `gcra` limit",
        ),
        (
            "{ algorithm: sliding_log, limit: 5, window: 1m, deny_cache: true }",
            "`deny_cache` needs exactly one",
        ),
        (
            "{ algorithm: concurrency, limit: 5, lease: 1m, deny_cache: true }",
            "`deny_cache` needs exactly one",
        ),
        (
            "{ limits: [{ algorithm: fixed_window, limit: 5, window: 1m }, { algorithm: fixed_window, limit: 50, window: 1h }], deny_cache: true }",
            "`deny_cache` needs exactly one",
        ),
        (
            "{ algorithm: fixed_window, limit: 5, window: 1m, shadow: true, deny_cache: true }",
            "a shadow rule never denies",
        ),
    ] {
        let err = load(bad).expect_err(bad).to_string();
        assert!(err.contains(want), "{bad}:\n{err}");
    }
}
