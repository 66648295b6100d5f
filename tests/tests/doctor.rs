//! `patternd doctor` and `GET /admin/doctor` against real redis-servers configured wrong in
//! each way the doctor knows, and one configured right.
//!
//! Only Redis 7.0.15 can be installed here, so "an old version" is not run end to end: the
//! version check is unit-tested on the INFO text of older servers (`doctor/version.rs`).

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, Result, ensure};
use patternd_e2e::{Backend, RedisServer, World, policy_dir, run_cli};
use serde_json::{Value, json};

/// Runs `patternd doctor --redis <url> --format json <policies>`: its exit code and report.
fn doctor_json(url: &str, policies: &std::path::Path) -> Result<(i32, Value)> {
    let out = run_cli(&[
        "doctor",
        "--redis",
        url,
        "--format",
        "json",
        &policies.display().to_string(),
    ])?;
    let code = out.status.code().unwrap_or(-1);
    let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "doctor printed no JSON (exit {code}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((code, report))
}

fn doctor_text(url: &str, policies: &std::path::Path) -> Result<Output> {
    run_cli(&["doctor", "--redis", url, &policies.display().to_string()])
}

/// The checks with `id` (one per server on a cluster).
fn checks<'a>(report: &'a Value, id: &str) -> Vec<&'a Value> {
    report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["id"] == id)
        .collect()
}

fn check<'a>(report: &'a Value, id: &str) -> Result<&'a Value> {
    checks(report, id)
        .first()
        .copied()
        .with_context(|| format!("no `{id}` check in {report:#}"))
}

fn status(report: &Value, id: &str) -> Result<String> {
    Ok(check(report, id)?["status"]
        .as_str()
        .unwrap_or("")
        .to_owned())
}

fn rule<'a>(report: &'a Value, name: &str) -> Result<&'a Value> {
    report["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["rule"] == name)
        .with_context(|| format!("no rule `{name}` in {report:#}"))
}

/// Validates `body` against the OpenAPI document's `Report` schema with Python's `jsonschema`
/// (JSON Schema 2020-12, the dialect of OpenAPI 3.1; installed with openapi-spec-validator,
/// which `standards.rs` needs too).
fn assert_matches_report_schema(doc: &Value, body: &Value) -> Result<()> {
    let probe = Command::new("python3")
        .args(["-c", "import jsonschema"])
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "the Python module `jsonschema` is needed to check the report against /openapi.json; \
         install it with `python3 -m pip install openapi-spec-validator` (.ci/run does)"
    );
    let script = "import json, sys\n\
        from jsonschema import Draft202012Validator\n\
        d = json.load(sys.stdin)\n\
        schema = {'$ref': '#/components/schemas/Report', 'components': d['doc']['components']}\n\
        errors = list(Draft202012Validator(schema).iter_errors(d['body']))\n\
        for e in errors: print(list(e.absolute_path), e.message)\n\
        sys.exit(1 if errors else 0)";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("python3 stdin")?
        .write_all(json!({ "doc": doc, "body": body }).to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    assert!(
        out.status.success(),
        "the report does not match its OpenAPI schema:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn config_set(redis: &RedisServer, pairs: &[(&str, &str)]) -> Result<()> {
    let mut c = redis.conn().await?;
    for (k, v) in pairs {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(k)
            .arg(v)
            .query_async(&mut c)
            .await?;
    }
    Ok(())
}

const LOCK: &str = "app: doc\nrules:\n  order: { lock: { ttl: 30s } }\n";

#[tokio::test(flavor = "multi_thread")]
async fn allkeys_lru_with_a_lock_rule_fails() -> Result<()> {
    let redis = RedisServer::start()?;
    config_set(
        &redis,
        &[("maxmemory", "64mb"), ("maxmemory-policy", "allkeys-lru")],
    )
    .await?;
    let policies = policy_dir(&[("doc.yaml", LOCK)])?;
    let (code, report) = doctor_json(&redis.url(), policies.path())?;
    let c = check(&report, "eviction")?;
    assert_eq!(c["status"], "fail", "{c:#}");
    let evidence = c["evidence"].as_str().unwrap_or("");
    assert!(
        evidence.contains("allkeys-lru") && evidence.contains("doc/order (lock)"),
        "{evidence}"
    );
    assert!(
        c["fix"].as_str().unwrap_or("").contains("noeviction"),
        "{c:#}"
    );
    assert_eq!(report["status"], "fail");
    assert_eq!(code, 1, "a failed check exits 1");

    // The same finding as text, for a person.
    let out = doctor_text(&redis.url(), policies.path())?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  Eviction policy against the rules in use  (eviction)"),
        "{text}"
    );
    assert!(
        text.contains("      fix:  CONFIG SET maxmemory-policy noeviction"),
        "{text}"
    );
    assert!(
        text.lines().last().unwrap_or("").starts_with("fail: "),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn no_maxmemory_fails() -> Result<()> {
    let redis = RedisServer::start()?;
    config_set(&redis, &[("maxmemory", "0")]).await?;
    let policies = policy_dir(&[("doc.yaml", LOCK)])?;
    let (code, report) = doctor_json(&redis.url(), policies.path())?;
    let c = check(&report, "maxmemory")?;
    assert_eq!(c["status"], "fail", "{c:#}");
    assert!(
        c["evidence"].as_str().unwrap_or("").contains("maxmemory 0"),
        "{c:#}"
    );
    assert!(
        checks(&report, "memory-used").is_empty(),
        "no share of no limit"
    );
    assert_eq!(report["redis"]["maxmemory"], 0);
    assert_eq!(code, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn persistence_off_with_write_behind_and_queues() -> Result<()> {
    // The harness starts redis-server with `--save "" --appendonly no`: nothing persisted.
    let redis = RedisServer::start()?;
    let policies = policy_dir(&[(
        "doc.yaml",
        "app: doc\nrules:\n  jobs: { queue: {} }\n  \
         profile: { cache: { ttl: 1m, origin: 'http://127.0.0.1:9/p/{id}', write: behind } }\n",
    )])?;
    let (_, report) = doctor_json(&redis.url(), policies.path())?;
    let c = check(&report, "persistence")?;
    assert_eq!(c["status"], "fail", "{c:#}");
    let evidence = c["evidence"].as_str().unwrap_or("");
    assert!(
        evidence.contains("appendonly no")
            && evidence.contains("doc/jobs")
            && evidence.contains("doc/profile"),
        "{evidence}"
    );
    assert!(
        c["fix"].as_str().unwrap_or("").contains("appendonly yes"),
        "{c:#}"
    );

    // RDB snapshots alone: better, still a warning (writes since the last one are lost).
    config_set(&redis, &[("save", "60 1")]).await?;
    let (_, report) = doctor_json(&redis.url(), policies.path())?;
    assert_eq!(status(&report, "persistence")?, "warn", "{report:#}");

    // AOF on: what these rules need.
    config_set(
        &redis,
        &[("appendonly", "yes"), ("appendfsync", "everysec")],
    )
    .await?;
    let (_, report) = doctor_json(&redis.url(), policies.path())?;
    let c = check(&report, "persistence")?;
    assert_eq!(c["status"], "ok", "{c:#}");
    assert!(c.get("fix").is_none(), "no fix when ok: {c:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_without_ttl_in_a_namespace_is_reported() -> Result<()> {
    let policy = "app: doc\nrules:\n  order: { lock: { ttl: 30s } }\n  jobs: { queue: {} }\n";
    let w = World::start(&[("doc.yaml", policy)], &["--admin-token", "t0ken"]).await?;
    let p = &w.patternd;
    let auth = [("authorization", "Bearer t0ken")];
    for resource in ["a", "b", "c"] {
        let r = p
            .send(
                p.client()
                    .post(p.url(&format!("/v1/locks/doc/order/{resource}")))
                    .json(&json!({})),
            )
            .await?;
        ensure!(r.status == 200, "acquire: {r:?}");
    }
    let r = p
        .post_json("/v1/queues/doc/jobs", &json!({ "payload": { "n": 1 } }))
        .await?;
    ensure!(r.status == 201, "push: {r:?}");
    // Another client writes into the lock rule's namespace, without a TTL.
    let mut c = w.redis.conn().await?;
    let _: () = redis::cmd("SET")
        .arg("doc:lock:order:{a}:planted")
        .arg("x")
        .query_async(&mut c)
        .await?;

    let r = p.get_with("/admin/doctor", &auth).await?;
    assert_eq!(r.status, 200, "{r:?}");
    let c = check(&r.json, "keys-without-ttl")?;
    assert_eq!(
        (&c["status"], &c["rule"]),
        (&json!("fail"), &json!("doc/order")),
        "{c:#}"
    );
    assert!(
        c["evidence"]
            .as_str()
            .unwrap_or("")
            .contains("doc:lock:order:{a}:planted"),
        "{c:#}"
    );
    let order = rule(&r.json, "doc/order")?;
    assert_eq!(
        order["no_ttl"],
        json!(["doc:lock:order:{a}:planted"]),
        "{order:#}"
    );
    // Three holders' ZSETs, their fences, and the planted key: counted exactly (small DB).
    assert_eq!(order["keys_exact"], true, "{order:#}");
    assert!(order["keys"].as_u64().unwrap_or(0) >= 7, "{order:#}");
    assert!(order["memory_bytes"].as_u64().unwrap_or(0) > 0, "{order:#}");
    assert_eq!(order["prefix"], "doc:lock:order:");
    assert_eq!(order["eviction"], "keep");
    // A queue's keys have no TTL by design (the key layout declares them): not reported.
    let jobs = rule(&r.json, "doc/jobs")?;
    assert_eq!(jobs["no_ttl"], json!([]), "{jobs:#}");
    assert!(jobs["keys"].as_u64().unwrap_or(0) >= 3, "{jobs:#}");
    assert!(
        checks(&r.json, "keys-without-ttl")
            .iter()
            .all(|c| c["rule"] == "doc/order")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_scripts_are_named() -> Result<()> {
    let w = World::start(&[("doc.yaml", LOCK)], &[]).await?;
    let redis = w.redis.server()?;
    // Log every command: the lock script's EVALSHA is then in the slow log, deterministically.
    config_set(redis, &[("slowlog-log-slower-than", "0")]).await?;
    let r = w
        .patternd
        .post_json("/v1/locks/doc/order/x", &json!({}))
        .await?;
    ensure!(r.status == 200, "acquire: {r:?}");
    let r = w.patternd.get("/admin/doctor").await?;
    assert_eq!(r.status, 200, "{r:?}");
    let c = check(&r.json, "slowlog")?;
    assert_eq!(c["status"], "warn", "{c:#}");
    let evidence = c["evidence"].as_str().unwrap_or("");
    assert!(
        evidence.contains("(rules doc/order)"),
        "the script and its rule are named: {evidence}"
    );
    assert!(evidence.contains("slowlog-log-slower-than 0"), "{evidence}");
    // Microseconds against a 5 s busy-reply-threshold.
    assert_eq!(status(&r.json, "busy-script")?, "ok", "{:#}", r.json);
    assert!(
        check(&r.json, "busy-script")?["evidence"]
            .as_str()
            .unwrap_or("")
            .contains("busy-reply-threshold 5000 ms")
    );
    Ok(())
}

const GOOD: &str = "app: doc
rules:
  order: { lock: { ttl: 30s } }
  web: { session: { idle_ttl: 30m, absolute_ttl: 24h } }
  jobs: { queue: {} }
  events: { stream: { max_len: 1000 } }
  api: { rate_limit: { algorithm: sliding_window, limit: 100, window: 1m } }
";

#[tokio::test(flavor = "multi_thread")]
async fn a_well_configured_redis_is_all_ok() -> Result<()> {
    let w = World::start(&[("doc.yaml", GOOD)], &["--admin-token", "t0ken"]).await?;
    let redis = w.redis.server()?;
    config_set(
        redis,
        &[
            ("maxmemory", "256mb"),
            ("maxmemory-policy", "noeviction"),
            ("appendonly", "yes"),
            ("appendfsync", "everysec"),
        ],
    )
    .await?;
    let p = &w.patternd;
    let auth = [("authorization", "Bearer t0ken")];
    // Some keys in every namespace.
    for (path, body, want) in [
        ("/v1/locks/doc/order/r1", json!({}), 200),
        ("/v1/sessions/doc/web", json!({ "user": "u1" }), 201),
        ("/v1/queues/doc/jobs", json!({ "payload": 1 }), 201),
        (
            "/v1/streams/doc/events",
            json!({ "entries": [{ "a": 1 }] }),
            201,
        ),
        ("/v1/ratelimit/doc/api", json!({ "id": "k" }), 200),
    ] {
        let r = p.send(p.client().post(p.url(path)).json(&body)).await?;
        ensure!(r.status == want, "{path}: {r:?}");
    }
    // The slow log keeps commands over 10 ms; a script descheduled by a busy machine could
    // land there, which says nothing about the configuration.
    let mut c = redis.conn().await?;
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut c)
        .await?;

    let r = p.get_with("/admin/doctor", &auth).await?;
    assert_eq!(r.status, 200, "{r:?}");
    let not_ok: Vec<&Value> = r.json["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["status"] != "ok")
        .collect();
    assert!(not_ok.is_empty(), "every check ok: {not_ok:#?}");
    assert_eq!(r.json["status"], "ok");
    for id in [
        "eviction",
        "maxmemory",
        "memory-used",
        "fragmentation",
        "persistence",
        "replication",
        "slowlog",
        "busy-script",
        "latency",
        "version",
        "modules",
    ] {
        check(&r.json, id)?;
    }
    for name in ["doc/order", "doc/web", "doc/jobs", "doc/events", "doc/api"] {
        let k = rule(&r.json, name)?;
        assert!(
            k["keys"].as_u64().unwrap_or(0) >= 1 && k["sampled"].as_u64().unwrap_or(0) >= 1,
            "{k:#}"
        );
    }

    // The CLI agrees, and exits 0.
    let out = doctor_text(&redis.url(), w.policies.path())?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(" 0 warn, 0 fail"), "{text}");
    Ok(())
}

/// volatile-* suits rules whose must-keep keys have no TTL (queues, streams, journals) beside
/// caches, whose values it evicts.
#[tokio::test(flavor = "multi_thread")]
async fn volatile_lru_with_caches_and_queues_is_ok() -> Result<()> {
    let redis = RedisServer::start()?;
    config_set(
        &redis,
        &[
            ("maxmemory", "256mb"),
            ("maxmemory-policy", "volatile-lru"),
            ("appendonly", "yes"),
        ],
    )
    .await?;
    let policies = policy_dir(&[(
        "doc.yaml",
        "app: doc\nrules:\n  jobs: { queue: {} }\n  \
         profile: { cache: { ttl: 1m, origin: 'http://127.0.0.1:9/p/{id}', write: behind } }\n",
    )])?;
    let (code, report) = doctor_json(&redis.url(), policies.path())?;
    assert_eq!(status(&report, "eviction")?, "ok", "{report:#}");
    assert_eq!((code, &report["status"]), (0, &json!("ok")), "{report:#}");

    // Locks beside those caches: mixed use, a warning that says to split them.
    let mixed = policy_dir(&[(
        "doc.yaml",
        "app: doc\nrules:\n  order: { lock: { ttl: 30s } }\n  \
         product: { cache: { ttl: 1m, origin: 'http://127.0.0.1:9/p/{id}' } }\n",
    )])?;
    let (code, report) = doctor_json(&redis.url(), mixed.path())?;
    let c = check(&report, "eviction")?;
    assert_eq!(c["status"], "warn", "{c:#}");
    assert!(
        c["evidence"].as_str().unwrap_or("").contains("Mixed use"),
        "{c:#}"
    );
    assert!(
        c["fix"]
            .as_str()
            .unwrap_or("")
            .contains("Redis of their own"),
        "{c:#}"
    );
    assert_eq!(code, 0, "warnings do not fail the run");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_doctor_needs_the_token_and_has_the_documented_shape() -> Result<()> {
    let w = World::start(&[("doc.yaml", LOCK)], &["--admin-token", "t0ken"]).await?;
    let p = &w.patternd;
    let r = p.get("/admin/doctor").await?;
    r.assert_problem(401);
    let r = p
        .get_with("/admin/doctor", &[("authorization", "Bearer wrong")])
        .await?;
    r.assert_problem(401);
    let r = p
        .get_with("/admin/doctor", &[("authorization", "Bearer t0ken")])
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.content_type().starts_with("application/json"), "{r:?}");
    let j = &r.json;
    assert!(
        ["ok", "warn", "fail"].contains(&j["status"].as_str().unwrap_or("")),
        "{j:#}"
    );
    let all = j["checks"].as_array().context("checks")?;
    // Ten server checks (no `memory-used` without a maxmemory), none per rule here.
    assert!(all.len() >= 10, "{j:#}");
    for c in all {
        for field in ["id", "status", "title", "evidence"] {
            assert!(c[field].is_string(), "{field} in {c:#}");
        }
        let ok = c["status"] == "ok";
        assert_eq!(
            c.get("fix").is_none(),
            ok,
            "fix absent exactly when ok: {c:#}"
        );
    }
    // The harness's Redis has no maxmemory: the worst check decides the status.
    assert_eq!(j["status"], "fail");
    assert!(j["rules"].as_array().is_some_and(|r| r.len() == 1), "{j:#}");
    let redis = &j["redis"];
    assert!(
        redis["version"].as_str().unwrap_or("").starts_with("7."),
        "{redis:#}"
    );
    assert!(redis["used_memory"].as_u64().unwrap_or(0) > 0, "{redis:#}");
    assert!(redis["maxmemory"].is_u64(), "{redis:#}");
    assert_eq!(redis["mode"], "standalone");
    // Documented in the OpenAPI document, with its schema.
    let doc = p.get("/openapi.json").await?;
    assert!(
        doc.json["paths"]["/admin/doctor"]["get"].is_object(),
        "{:#}",
        doc.json["paths"]
    );
    assert!(doc.json["components"]["schemas"]["Report"].is_object());
    assert_matches_report_schema(&doc.json, j)?;
    Ok(())
}

#[test]
fn the_cli_exits_2_when_it_cannot_run() -> Result<()> {
    let policies = policy_dir(&[("doc.yaml", LOCK)])?;
    let out = run_cli(&[
        "doctor",
        "--redis",
        "redis://127.0.0.1:1/",
        &policies.path().display().to_string(),
    ])?;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could not reach Redis"),
        "{out:?}"
    );
    let bad = policy_dir(&[("doc.yaml", "app: doc\nrules:\n  x: { lock: {} }\n")])?;
    let out = run_cli(&[
        "doctor",
        "--redis",
        "redis://127.0.0.1:1/",
        &bad.path().display().to_string(),
    ])?;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let help = run_cli(&["doctor", "--help"])?;
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("1 when any check fails"), "{help}");
    Ok(())
}

/// `patternd check` names the seed guide's anti-patterns, each with its reason, and still
/// succeeds (they are warnings).
#[test]
fn check_warns_about_anti_patterns() -> Result<()> {
    let policies = policy_dir(&[(
        "lint.yaml",
        "app: lint\nrules:\n  fast: { lock: { ttl: 200ms } }\n  \
         forever: { session: { idle_ttl: 1h, absolute_ttl: 90d } }\n  fine: { lock: { ttl: 30s } }\n",
    )])?;
    let out = run_cli(&["check", &policies.path().display().to_string()])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("lint.yaml:3:17: warning: rule `fast`: `ttl` 200 ms is shorter than a pause"),
        "{err}"
    );
    assert!(err.contains("rule `forever`: `absolute_ttl` is over 30 days (anti-pattern: sessions without an absolute timeout)"), "{err}");
    assert!(!err.contains("`fine`"), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 warning(s)"),
        "{out:?}"
    );
    Ok(())
}

/// On a cluster every server check runs on every primary, each named.
#[test]
fn every_primary_is_checked() -> Result<()> {
    patternd_e2e::backend::run(Backend::cluster, |b| async move {
        let policies = policy_dir(&[("doc.yaml", LOCK)])?;
        let (_, report) = doctor_json(&b.url(), policies.path())?;
        assert_eq!(report["redis"]["mode"], "cluster");
        assert_eq!(
            report["redis"]["nodes"].as_array().map(Vec::len),
            Some(3),
            "{report:#}"
        );
        for id in ["eviction", "maxmemory", "persistence", "version"] {
            let mut nodes: Vec<&str> = checks(&report, id)
                .iter()
                .filter_map(|c| c["node"].as_str())
                .collect();
            nodes.sort_unstable();
            nodes.dedup();
            assert_eq!(nodes.len(), 3, "{id} on every primary: {report:#}");
        }
        let v = check(&report, "version")?;
        assert!(
            v["evidence"].as_str().unwrap_or("").contains("RESP3"),
            "{v:#}"
        );
        Ok(())
    })
}
