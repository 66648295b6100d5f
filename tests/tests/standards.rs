//! The standards patternd publishes against, checked with the standards' own validators:
//! the OpenAPI document (openapi-spec-validator, then one request per documented operation),
//! the Prometheus exposition (`promtool check metrics`, and every metric the README documents
//! present from the start), and the policy JSON Schema (python-jsonschema) against
//! `patternd check` on a table of documents.
//!
//! The validators are external programs, as a user would run them. A missing validator fails
//! the test with the command that installs it (`.ci/run` installs them): a standards test
//! that skips itself would pass without checking anything.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};
use patternd_e2e::origin::Origin;
use patternd_e2e::{Patternd, RedisServer, TempDir, policy_dir, run_cli};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "std-admin-token";

fn workspace_root() -> Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace root")?
        .to_path_buf())
}

/// Runs `python3 -c <script>` with `stdin`; fails with `install` when `module` is missing.
fn python(module: &str, install: &str, script: &str, stdin: &str) -> Result<(bool, String)> {
    let probe = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "the Python module `{module}` is needed to check this standard; install it with \
             `{install}` (.ci/run does)"
        ),
    }
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running python3")?;
    child
        .stdin
        .take()
        .context("python3 stdin")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// Every pattern, so every documented operation and every documented metric has a rule.
fn policy(origin: &str) -> String {
    format!(
        "app: std
rules:
  rl:
    rate_limit: {{ algorithm: fixed_window, limit: 100, window: 1h, id_from: {{ header: X-Api-Key }} }}
  conc:
    rate_limit: {{ algorithm: concurrency, limit: 5, lease: 30s }}
  quick:
    rate_limit: {{ algorithm: fixed_window, limit: 100, window: 1h, deny_cache: true }}
  page:
    cache: {{ origin: \"{origin}\", ttl: 1m, format: hash, write: behind }}
  thru:
    cache: {{ origin: \"{origin}\", ttl: 1m, write: through }}
  plain:
    cache: {{ ttl: 1m, near_cache: {{ max_entries: 10 }} }}
  web:
    session: {{ idle_ttl: 30m, absolute_ttl: 24h }}
  order:
    lock: {{ ttl: 30s }}
  daily:
    ops: {{ plugin: quota, op: daily-quota }}
  jobs:
    queue: {{ visibility: 1m }}
  events:
    stream: {{ max_len: 100, groups: [g] }}
  notify:
    pubsub: {{ heartbeat: 1s }}
  visits:
    counter: {{ kind: unique, period: day }}
  seen:
    counter: {{ kind: bloom, capacity: 1000 }}
  board:
    leaderboard: {{ period: day, ties: first }}
"
    )
}

struct Served {
    patternd: Patternd,
    origin: Origin,
    _policies: TempDir,
    _plugins: TempDir,
    _redis: RedisServer,
}

async fn serve() -> Result<Served> {
    let redis = RedisServer::start()?;
    let origin = Origin::start().await?;
    let policies = policy_dir(&[("std.yaml", &policy(&origin.template()))])?;
    let plugins = TempDir::new("plugins")?;
    let quota = workspace_root()?.join("plugins/examples/quota/quota.lua");
    std::fs::copy(&quota, plugins.path().join("quota.lua"))
        .with_context(|| format!("copying {}", quota.display()))?;
    let plugins_arg = plugins.path().to_string_lossy().into_owned();
    let patternd = Patternd::start(
        &redis.url(),
        policies.path(),
        &["--admin-token", ADMIN_TOKEN, "--plugins", &plugins_arg],
    )
    .await?;
    Ok(Served {
        patternd,
        origin,
        _policies: policies,
        _plugins: plugins,
        _redis: redis,
    })
}

// ---------------------------------------------------------------------------------------------
// OpenAPI
// ---------------------------------------------------------------------------------------------

const OPENAPI_INSTALL: &str = "python3 -m pip install openapi-spec-validator";

#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_validates() -> Result<()> {
    let s = serve().await?;
    let r = s.patternd.get("/openapi.json").await?;
    assert_eq!(r.status, 200);
    assert!(r.json.is_object(), "{}", r.text);
    let (ok, out) = python(
        "openapi_spec_validator",
        OPENAPI_INSTALL,
        "import json, sys\n\
         from openapi_spec_validator import validate\n\
         validate(json.load(sys.stdin))\n\
         print('valid')",
        &r.text,
    )?;
    assert!(ok, "openapi-spec-validator refuses /openapi.json:\n{out}");
    Ok(())
}

/// One request that the operation should answer successfully.
struct Probe {
    method: &'static str,
    path: String,
    body: Option<(String, &'static str)>,
    headers: Vec<(&'static str, String)>,
    /// An event stream: only the status and headers are read (it never ends by itself).
    sse: bool,
}

impl Probe {
    fn new(method: &'static str, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            body: None,
            headers: Vec::new(),
            sse: false,
        }
    }
    fn event_stream(mut self) -> Self {
        self.sse = true;
        self
    }
    fn json(mut self, body: Value) -> Self {
        self.body = Some((body.to_string(), "application/json"));
        self
    }
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
}

async fn send(p: &Patternd, probe: &Probe) -> Result<patternd_e2e::Reply> {
    let method = reqwest::Method::from_bytes(probe.method.to_ascii_uppercase().as_bytes())?;
    let mut req = p.client().request(method, p.url(&probe.path));
    for (k, v) in &probe.headers {
        req = req.header(*k, v);
    }
    if let Some((body, ct)) = &probe.body {
        req = req.header("content-type", *ct).body(body.clone());
    }
    if probe.sse {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(patternd_e2e::Reply {
                status,
                headers: resp.headers().clone(),
                text: String::new(),
                json: Value::Null,
            });
        }
        let text = resp.text().await?;
        return Ok(patternd_e2e::Reply {
            status,
            headers: reqwest::header::HeaderMap::new(),
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        });
    }
    p.send(req).await
}

/// A request for `method path` against the test policy, with whatever state it needs made
/// first (a session to read, a lease to release). A documented operation without an entry
/// here fails the test: every operation is probed.
async fn probe_for(s: &Served, method: &str, path: &str) -> Result<Probe> {
    let p = &s.patternd;
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let session = || async {
        let r = p
            .post_json("/v1/sessions/std/web", &json!({"user": "alice"}))
            .await?;
        anyhow::ensure!(r.status == 201, "{r:?}");
        Ok::<String, anyhow::Error>(r.json["id"].as_str().unwrap_or_default().to_string())
    };
    let lock = || async {
        let r = p.post_json("/v1/locks/std/order/o-1", &json!({})).await?;
        anyhow::ensure!(r.status == 200, "{r:?}");
        Ok::<String, anyhow::Error>(r.json["token"].as_str().unwrap_or_default().to_string())
    };
    // A job pushed and popped: its id and receipt.
    let job = || async {
        let r = p
            .post_json("/v1/queues/std/jobs", &json!({"payload": {"n": 1}}))
            .await?;
        anyhow::ensure!(r.status == 201, "{r:?}");
        let r = p.post_raw("/v1/queues/std/jobs/_pop", "").await?;
        let j = &r.json["jobs"][0];
        anyhow::ensure!(j["receipt"].is_string(), "{r:?}");
        let text = |f: &str| j[f].as_str().unwrap_or_default().to_string();
        Ok::<(String, String), anyhow::Error>((text("id"), text("receipt")))
    };
    Ok(match (method, path) {
        ("post", "/v1/queues/{app}/{rule}") => {
            Probe::new("post", "/v1/queues/std/jobs").json(json!({"payload": {"n": 2}}))
        }
        ("get", "/v1/queues/{app}/{rule}") => Probe::new("get", "/v1/queues/std/jobs"),
        ("post", "/v1/queues/{app}/{rule}/_pop") => {
            Probe::new("post", "/v1/queues/std/jobs/_pop?count=2")
        }
        (
            "post",
            "/v1/queues/{app}/{rule}/jobs/{id}/_ack"
            | "/v1/queues/{app}/{rule}/jobs/{id}/_nack"
            | "/v1/queues/{app}/{rule}/jobs/{id}/_extend",
        ) => {
            let (id, receipt) = job().await?;
            let op = path.rsplit('/').next().unwrap_or_default();
            Probe::new("post", format!("/v1/queues/std/jobs/jobs/{id}/{op}"))
                .json(json!({"receipt": receipt}))
        }
        ("get", "/admin/queues/{app}/{rule}/dead-letters") => {
            Probe::new("get", "/admin/queues/std/jobs/dead-letters")
                .header("authorization", &bearer)
        }
        ("post", "/admin/queues/{app}/{rule}/dead-letters/replay") => {
            Probe::new("post", "/admin/queues/std/jobs/dead-letters/replay")
                .header("authorization", &bearer)
                .json(json!({"count": 1}))
        }
        ("post", "/v1/ratelimit/{app}/{rule}") => {
            Probe::new("post", "/v1/ratelimit/std/rl").json(json!({"id": "u-1"}))
        }
        ("get", "/v1/ratelimit/{app}/{rule}") => {
            Probe::new("get", "/v1/ratelimit/std/rl").header("x-api-key", "k-1")
        }
        ("delete", "/v1/ratelimit/{app}/{rule}/leases/{lease}") => {
            let r = p.check("std", "conc", "u-1", 1).await?;
            let lease = r.json["lease"].as_str().unwrap_or_default().to_string();
            Probe::new("delete", format!("/v1/ratelimit/std/conc/leases/{lease}"))
        }
        ("post", "/v1/ops/{app}/{rule}") => {
            Probe::new("post", "/v1/ops/std/daily").json(json!({"id": "u-1", "args": [10]}))
        }
        ("get", "/v1/cache/{app}/{rule}/{id}") => {
            s.origin
                .set("p-1", "application/json", br#"{"name": "a"}"#, &[]);
            Probe::new("get", "/v1/cache/std/page/p-1")
        }
        ("put", "/v1/cache/{app}/{rule}/{id}") => {
            Probe::new("put", "/v1/cache/std/page/p-2").json(json!({"name": "b"}))
        }
        ("patch", "/v1/cache/{app}/{rule}/{id}") => {
            let r = send(
                p,
                &Probe::new("put", "/v1/cache/std/page/p-3").json(json!({"name": "c"})),
            )
            .await?;
            anyhow::ensure!(r.status == 202, "{r:?}");
            Probe::new("patch", "/v1/cache/std/page/p-3").json(json!({"name": "d"}))
        }
        ("delete", "/v1/cache/{app}/{rule}/{id}") => Probe::new("delete", "/v1/cache/std/page/p-1"),
        ("post", "/v1/cache/{app}/{rule}/_invalidate") => {
            Probe::new("post", "/v1/cache/std/page/_invalidate").json(json!({"tags": ["t"]}))
        }
        ("get", "/admin/cache/{app}/{rule}/dead-letters") => {
            Probe::new("get", "/admin/cache/std/page/dead-letters").header("authorization", &bearer)
        }
        ("post", "/admin/cache/{app}/{rule}/dead-letters/replay") => {
            Probe::new("post", "/admin/cache/std/page/dead-letters/replay")
                .header("authorization", &bearer)
                .json(json!({"count": 1}))
        }
        ("post", "/v1/sessions/{app}/{rule}") => {
            Probe::new("post", "/v1/sessions/std/web").json(json!({"user": "bob"}))
        }
        ("get", "/v1/sessions/{app}/{rule}/{sid}") => {
            Probe::new("get", format!("/v1/sessions/std/web/{}", session().await?))
        }
        ("patch", "/v1/sessions/{app}/{rule}/{sid}") => Probe::new(
            "patch",
            format!("/v1/sessions/std/web/{}", session().await?),
        )
        .json(json!({"data": {"cart": 1}})),
        ("delete", "/v1/sessions/{app}/{rule}/{sid}") => Probe::new(
            "delete",
            format!("/v1/sessions/std/web/{}", session().await?),
        ),
        ("post", "/v1/sessions/{app}/{rule}/{sid}/rotate") => Probe::new(
            "post",
            format!("/v1/sessions/std/web/{}/rotate", session().await?),
        ),
        ("get", "/v1/sessions/{app}/{rule}/users/{user}") => {
            Probe::new("get", "/v1/sessions/std/web/users/alice")
        }
        ("delete", "/v1/sessions/{app}/{rule}/users/{user}") => {
            Probe::new("delete", "/v1/sessions/std/web/users/carol")
        }
        ("post", "/v1/locks/{app}/{rule}/{resource}") => {
            Probe::new("post", "/v1/locks/std/order/o-2").json(json!({"wait_ms": 0}))
        }
        ("post", "/v1/locks/{app}/{rule}/{resource}/extend") => {
            Probe::new("post", "/v1/locks/std/order/o-1/extend")
                .json(json!({"token": lock().await?}))
        }
        ("delete", "/v1/locks/{app}/{rule}/{resource}") => {
            Probe::new("delete", "/v1/locks/std/order/o-1").json(json!({"token": lock().await?}))
        }
        ("post", "/v1/streams/{app}/{rule}") => {
            Probe::new("post", "/v1/streams/std/events").json(json!({"data": {"n": 1}}))
        }
        ("get", "/v1/streams/{app}/{rule}") => Probe::new("get", "/v1/streams/std/events?count=5"),
        ("get", "/v1/streams/{app}/{rule}/_dead") => {
            Probe::new("get", "/v1/streams/std/events/_dead")
        }
        ("get", "/v1/streams/{app}/{rule}/_tail") => {
            Probe::new("get", "/v1/streams/std/events/_tail").event_stream()
        }
        ("get", "/v1/streams/{app}/{rule}/groups/{group}") => {
            Probe::new("get", "/v1/streams/std/events/groups/g?consumer=c1")
        }
        ("post", "/v1/streams/{app}/{rule}/groups/{group}/ack") => {
            Probe::new("post", "/v1/streams/std/events/groups/g/ack").json(json!({"ids": ["1-0"]}))
        }
        ("post", "/v1/pubsub/{app}/{rule}/{channel}") => {
            let mut probe = Probe::new("post", "/v1/pubsub/std/notify/news");
            probe.body = Some(("hello".into(), "application/octet-stream"));
            probe
        }
        ("get", "/v1/pubsub/{app}/{rule}/{channel}") => {
            Probe::new("get", "/v1/pubsub/std/notify/news").event_stream()
        }
        ("post", "/v1/counters/{app}/{rule}/{id}") => {
            Probe::new("post", "/v1/counters/std/visits/home").json(json!({"items": ["a", "b"]}))
        }
        ("get", "/v1/counters/{app}/{rule}/{id}") => {
            Probe::new("get", "/v1/counters/std/visits/home?last=2")
        }
        ("post", "/v1/counters/{app}/{rule}/{id}/check") => {
            Probe::new("post", "/v1/counters/std/seen/c-1/check").json(json!({"item": "a"}))
        }
        ("post", "/v1/leaderboards/{app}/{rule}/{board}") => {
            Probe::new("post", "/v1/leaderboards/std/board/g")
                .json(json!({"member": "m1", "score": 7}))
        }
        ("get", "/v1/leaderboards/{app}/{rule}/{board}") => {
            Probe::new("get", "/v1/leaderboards/std/board/g?limit=5")
        }
        ("get", "/v1/leaderboards/{app}/{rule}/{board}/members/{member}") => {
            Probe::new("get", "/v1/leaderboards/std/board/g/members/m1")
        }
        ("delete", "/v1/leaderboards/{app}/{rule}/{board}/members/{member}") => {
            Probe::new("delete", "/v1/leaderboards/std/board/g/members/m2")
        }
        ("get", "/v1/leaderboards/{app}/{rule}/{board}/members/{member}/around") => {
            Probe::new("get", "/v1/leaderboards/std/board/g/members/m1/around?k=2")
        }
        ("get", "/v1/leaderboards/{app}/{rule}/{board}/count") => {
            Probe::new("get", "/v1/leaderboards/std/board/g/count?period=previous")
        }
        ("get", "/v1/leaderboards/{app}/{rule}/{board}/aggregate") => Probe::new(
            "get",
            "/v1/leaderboards/std/board/g/aggregate?last=2&member=m1",
        ),
        ("post", "/v1/leaderboards/{app}/{rule}/_ranks") => {
            Probe::new("post", "/v1/leaderboards/std/board/_ranks")
                .json(json!({"member": "m1", "boards": ["g", "h"]}))
        }
        ("get", "/healthz" | "/readyz" | "/metrics" | "/openapi.json") => Probe::new("get", path),
        // The dashboard's static shell needs no token (its script sends it).
        ("get", "/admin/ui") => Probe::new("get", path),
        ("get", "/admin/ui/{file}") => Probe::new("get", "/admin/ui/dashboard.js"),
        ("get", "/admin/samples") => {
            Probe::new("get", "/admin/samples?after=0").header("authorization", &bearer)
        }
        ("get", "/admin/policies" | "/admin/doctor") | ("post", "/admin/reload") => {
            Probe::new(if method == "get" { "get" } else { "post" }, path)
                .header("authorization", &bearer)
        }
        _ => anyhow::bail!("no probe for {method} {path}: add one to `probe_for`"),
    })
}

/// Headers that carry API meaning: an answer that sends one must document it.
const API_HEADERS: &[&str] = &[
    "ratelimit",
    "ratelimit-policy",
    "retry-after",
    "cache-status",
    "location",
    "patternd-degraded",
    "patternd-journal-id",
    "www-authenticate",
    "etag",
];

/// The answer is one the document lists for the operation, with a documented content type
/// (problem+json for every 4xx and 5xx) and documented API headers.
fn assert_documented(doc: &Value, op: &Value, what: &str, r: &patternd_e2e::Reply) {
    let status = r.status.to_string();
    let resp = op["responses"]
        .get(&status)
        .or_else(|| op["responses"].get("default"))
        .unwrap_or_else(|| {
            panic!(
                "{what}: status {status} is not documented (documented: {:?}); {r:?}",
                op["responses"]
                    .as_object()
                    .map(|m| m.keys().collect::<Vec<_>>())
            )
        });
    // Shared responses live in components and are referenced.
    let resp = match resp["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/responses/");
            &doc["components"]["responses"][name]
        }
        None => resp,
    };
    let ct = r
        .header("content-type")
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let documented: Vec<&String> = resp["content"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    // Errors are problem+json; a denial is a decision (the same body as an allowed one).
    let decision = matches!(
        (op["operationId"].as_str().unwrap_or(""), r.status),
        ("ratelimit_check" | "ops_call", 429) | ("ratelimit_check_get", 401 | 403 | 429)
    );
    if r.status >= 400 && !decision {
        assert_eq!(ct, "application/problem+json", "{what}: {r:?}");
    }
    if documented.is_empty() {
        assert!(
            r.text.is_empty(),
            "{what}: {status} documents no body, but one came ({ct}): {r:?}"
        );
    } else {
        assert!(
            documented.iter().any(|d| *d == &ct || *d == "*/*"),
            "{what}: content type `{ct}` is not documented for {status} ({documented:?})"
        );
    }
    let headers: BTreeSet<String> = resp["headers"]
        .as_object()
        .map(|m| m.keys().map(|k| k.to_ascii_lowercase()).collect())
        .unwrap_or_default();
    for h in API_HEADERS {
        if r.headers.contains_key(*h) {
            assert!(
                headers.contains(*h),
                "{what}: the answer {status} carries `{h}`, which the document does not list ({headers:?})"
            );
        }
    }
}

fn operations(doc: &Value) -> Result<Vec<(String, String, Value)>> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().context("no paths")? {
        for (method, op) in item.as_object().context("a path item is not an object")? {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                ops.push((method.clone(), path.clone(), op.clone()));
            }
        }
    }
    Ok(ops)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_operation_answers_as_documented() -> Result<()> {
    let s = serve().await?;
    let p = &s.patternd;
    let doc = p.get("/openapi.json").await?.json;
    let ops = operations(&doc)?;
    assert!(ops.len() >= 27, "{} operations", ops.len());
    let mut ids = BTreeSet::new();
    for (method, path, op) in &ops {
        let what = format!("{} {path}", method.to_ascii_uppercase());
        let id = op["operationId"].as_str().unwrap_or_default().to_string();
        assert!(
            ids.insert(id.clone()),
            "{what}: operationId `{id}` is used twice"
        );

        let probe = probe_for(&s, method, path).await?;
        let r = send(p, &probe).await?;
        assert!(r.status < 400, "{what}: the probe failed: {r:?}");
        assert_documented(&doc, op, &what, &r);

        // An unknown app: the documented 404, as problem+json.
        if path.contains("{app}") {
            let mut bad = Probe::new(probe.method, probe.path.replacen("/std/", "/nope/", 1));
            bad.body = probe.body.clone();
            bad.headers = probe.headers.clone();
            let r = send(p, &bad).await?;
            assert_eq!(r.status, 404, "{what} of an unknown app: {r:?}");
            assert_documented(&doc, op, &format!("{what} (unknown app)"), &r);
        }
        // Admin operations without the token: the documented 401, and the scheme named.
        if path.starts_with("/admin/") && !path.starts_with("/admin/ui") {
            let mut anon = Probe::new(probe.method, probe.path.clone());
            anon.body = probe.body.clone();
            let r = send(p, &anon).await?;
            assert_eq!(r.status, 401, "{what} without a token: {r:?}");
            assert_documented(&doc, op, &format!("{what} (no token)"), &r);
            let schemes: Vec<&str> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_object())
                .flat_map(|s| s.keys().map(String::as_str))
                .collect();
            assert!(
                schemes
                    .iter()
                    .all(|n| doc["components"]["securitySchemes"].get(*n).is_some())
                    && !schemes.is_empty(),
                "{what}: no security scheme ({schemes:?})"
            );
        }
    }

    // A denied check: the 429 and its headers are documented too.
    for _ in 0..5 {
        p.check("std", "conc", "full", 1).await?;
    }
    let r = p.check("std", "conc", "full", 1).await?;
    assert_eq!(r.status, 429, "{r:?}");
    let op = &doc["paths"]["/v1/ratelimit/{app}/{rule}"]["post"];
    assert_documented(&doc, op, "POST /v1/ratelimit (denied)", &r);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------------------------

/// The README's metrics table: name → (type, label → documented values).
type Documented = BTreeMap<String, (String, BTreeMap<String, Vec<String>>)>;

fn readme_metrics() -> Result<Documented> {
    let readme = std::fs::read_to_string(workspace_root()?.join("README.md"))?;
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .context("README has no Metrics section")?
        .split("\n## ")
        .next()
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `patternd_")) {
        let cells: Vec<&str> = line
            .split(" | ")
            .map(|c| c.trim_matches(['|', ' ']))
            .collect();
        let name = cells[0].trim_matches('`').to_string();
        let kind = cells.get(1).copied().unwrap_or_default().to_string();
        let mut labels = BTreeMap::new();
        // `label` (`v1`, `v2`), `label2`, …
        let label_text = cells.get(2).copied().unwrap_or_default();
        let mut rest = label_text;
        while let Some(start) = rest.find('`') {
            let after = &rest[start + 1..];
            let Some(end) = after.find('`') else { break };
            let label = after[..end].to_string();
            rest = &after[end + 1..];
            let mut values = Vec::new();
            if let Some(inner) = rest.trim_start().strip_prefix('(') {
                let close = inner.find(')').unwrap_or(inner.len());
                values = inner[..close]
                    .split(',')
                    .map(|v| v.trim().trim_matches('`').to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                rest = &inner[close..];
            }
            if label != "—" {
                labels.insert(label, values);
            }
        }
        out.insert(name, (kind, labels));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_pass_promtool_and_every_documented_series_is_there_from_the_start() -> Result<()> {
    let s = serve().await?;
    // No request yet: what a scrape right after start sees.
    let r = s.patternd.get("/metrics").await?;
    assert_eq!(r.status, 200);
    let text = r.text;

    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = promtool else {
        panic!(
            "promtool is needed to check the exposition; install it with \
             `apt-get download prometheus && dpkg -x prometheus_*.deb /tmp/prom && \
             cp /tmp/prom/usr/bin/promtool /usr/local/bin/` (.ci/run does)"
        );
    };
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            types.insert(name.to_string(), kind.to_string());
        }
    }
    for (name, kind) in &types {
        assert_ne!(
            kind, "summary",
            "{name} is a summary: summaries cannot be aggregated across replicas"
        );
    }
    let documented = readme_metrics()?;
    assert!(documented.len() >= 15, "{documented:?}");
    for (name, (kind, labels)) in &documented {
        assert_eq!(
            types.get(name),
            Some(kind),
            "{name}: documented as a {kind}, exposed as {:?} at start",
            types.get(name)
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
        let series: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                let metric = l.split(['{', ' ']).next().unwrap_or("");
                metric == name
                    || (kind == "histogram"
                        && metric
                            .strip_prefix(name.as_str())
                            .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s)))
            })
            .collect();
        assert!(!series.is_empty(), "{name}: no series at start");
        for (label, values) in labels {
            for v in values {
                assert!(
                    series
                        .iter()
                        .any(|l| l.contains(&format!("{label}=\"{v}\""))),
                    "{name}: no series with {label}=\"{v}\" at start"
                );
            }
            assert!(
                series.iter().all(|l| l.contains(&format!("{label}=\""))),
                "{name}: a series without the label `{label}`"
            );
        }
    }
    // Every exposed family is documented.
    for name in types.keys() {
        assert!(
            documented.contains_key(name),
            "{name} is exposed but not in the README's metrics table"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Policy JSON Schema vs `patternd check`
// ---------------------------------------------------------------------------------------------

fn doc_with(rule: Value) -> Value {
    json!({"app": "shop", "rules": {"r": rule}})
}

fn rl(fields: Value) -> Value {
    let mut base = json!({"algorithm": "fixed_window", "limit": 5, "window": "1m"});
    if let (Some(b), Some(f)) = (base.as_object_mut(), fields.as_object()) {
        for (k, v) in f {
            if v.is_null() {
                b.remove(k);
            } else {
                b.insert(k.clone(), v.clone());
            }
        }
    }
    doc_with(json!({ "rate_limit": base }))
}

/// (case, document, accepted?) — both the schema and `check` must give the expected answer.
fn cases() -> Vec<(&'static str, Value, bool)> {
    let origin = "http://127.0.0.1:9/items/{id}";
    let mut v = vec![
        ("minimal rate limit", rl(json!({})), true),
        (
            "two pattern blocks",
            doc_with(
                json!({"rate_limit": {"algorithm": "fixed_window", "limit": 5, "window": "1m"}, "lock": {"ttl": "30s"}}),
            ),
            false,
        ),
        ("an empty rule", doc_with(json!({})), false),
        (
            "only a description",
            doc_with(json!({"description": "x"})),
            false,
        ),
        (
            "a rule name with a dot",
            json!({"app": "shop", "rules": {"Bad.Name": {"lock": {"ttl": "1s"}}}}),
            false,
        ),
        (
            "an upper-case app",
            json!({"app": "Shop", "rules": {"r": {"lock": {"ttl": "1s"}}}}),
            false,
        ),
        (
            "permits over 10000",
            doc_with(json!({"lock": {"ttl": "1s", "permits": 20000}})),
            false,
        ),
        (
            "permits 10000",
            doc_with(json!({"lock": {"ttl": "1s", "permits": 10000}})),
            true,
        ),
        ("lock: null", doc_with(json!({"lock": null})), false),
        (
            "a null next to a block",
            doc_with(json!({"lock": {"ttl": "1s"}, "cache": null})),
            false,
        ),
        (
            "a null field",
            doc_with(json!({"lock": {"ttl": "1s", "permits": null}})),
            false,
        ),
        (
            "origin not a url",
            doc_with(json!({"cache": {"ttl": "1m", "origin": "not a url"}})),
            false,
        ),
        (
            "origin https",
            doc_with(json!({"cache": {"ttl": "1m", "origin": "https://x/{id}"}})),
            false,
        ),
        (
            "origin without {id}",
            doc_with(json!({"cache": {"ttl": "1m", "origin": "http://x/items"}})),
            false,
        ),
        (
            "origin other placeholder",
            doc_with(json!({"cache": {"ttl": "1m", "origin": "http://x/{id}/{v}"}})),
            false,
        ),
        (
            "origin without host",
            doc_with(json!({"cache": {"ttl": "1m", "origin": "http:///{id}"}})),
            false,
        ),
        (
            "origin ok",
            doc_with(json!({"cache": {"ttl": "1m", "origin": origin}})),
            true,
        ),
        (
            "write behind without origin",
            doc_with(json!({"cache": {"ttl": "1m", "write": "behind"}})),
            false,
        ),
        (
            "max_attempts without behind",
            doc_with(json!({"cache": {"ttl": "1m", "origin": origin, "max_attempts": 3}})),
            false,
        ),
        (
            "write behind ok",
            doc_with(
                json!({"cache": {"ttl": "1m", "origin": origin, "write": "behind", "max_attempts": 3}}),
            ),
            true,
        ),
        (
            "unknown format",
            doc_with(json!({"cache": {"ttl": "1m", "format": "xml"}})),
            false,
        ),
        (
            "related without {id}",
            doc_with(json!({"cache": {"ttl": "1m", "related": ["x"]}})),
            false,
        ),
        (
            "related is the id",
            doc_with(json!({"cache": {"ttl": "1m", "related": ["{id}"]}})),
            false,
        ),
        (
            "beta 0",
            doc_with(json!({"cache": {"ttl": "1m", "beta": 0}})),
            false,
        ),
        (
            "beta 101",
            doc_with(json!({"cache": {"ttl": "1m", "beta": 101}})),
            false,
        ),
        (
            "max_value_bytes over 64 MiB",
            doc_with(json!({"cache": {"ttl": "1m", "max_value_bytes": 67108865}})),
            false,
        ),
        (
            "on_redis_error origin without origin",
            doc_with(json!({"cache": {"ttl": "1m", "on_redis_error": "origin"}})),
            false,
        ),
        (
            "user_cap over 100000",
            doc_with(
                json!({"session": {"idle_ttl": "1m", "absolute_ttl": "1h", "user_cap": 100001}}),
            ),
            false,
        ),
        ("limit 0", rl(json!({"limit": 0})), false),
        (
            "limit over 10^12",
            rl(json!({"limit": 1_000_000_000_001_i64})),
            false,
        ),
        (
            "limit 10^12",
            rl(json!({"limit": 1_000_000_000_000_i64})),
            true,
        ),
        (
            "unknown algorithm",
            rl(json!({"algorithm": "leaky"})),
            false,
        ),
        ("unknown field", rl(json!({"limt": 5})), false),
        ("no algorithm", rl(json!({"algorithm": null})), false),
        ("no limit", rl(json!({"limit": null})), false),
        ("no window", rl(json!({"window": null})), false),
        ("burst on a fixed window", rl(json!({"burst": 3})), false),
        (
            "burst on gcra",
            rl(json!({"algorithm": "gcra", "burst": 3})),
            true,
        ),
        (
            "lease on a window algorithm",
            rl(json!({"lease": "1m"})),
            false,
        ),
        (
            "concurrency with lease",
            rl(json!({"algorithm": "concurrency", "window": null, "lease": "30s"})),
            true,
        ),
        (
            "concurrency with a window",
            rl(json!({"algorithm": "concurrency", "lease": "30s"})),
            false,
        ),
        (
            "concurrency without lease",
            rl(json!({"algorithm": "concurrency", "window": null})),
            false,
        ),
        (
            "on_redis_error maybe",
            rl(json!({"on_redis_error": "maybe"})),
            false,
        ),
        (
            "limits and inline",
            rl(json!({"limits": [{"algorithm": "fixed_window", "limit": 5, "window": "1m"}]})),
            false,
        ),
        (
            "empty limits",
            doc_with(json!({"rate_limit": {"limits": []}})),
            false,
        ),
        (
            "two limits",
            doc_with(json!({"rate_limit": {"limits": [
                {"algorithm": "fixed_window", "limit": 5, "window": "1m"},
                {"algorithm": "sliding_window", "limit": 50, "window": "1h"}]}})),
            true,
        ),
        (
            "concurrency among limits",
            doc_with(json!({"rate_limit": {"limits": [
                {"algorithm": "concurrency", "limit": 5, "lease": "1m"},
                {"algorithm": "fixed_window", "limit": 50, "window": "1h"}]}})),
            false,
        ),
        (
            "fallback without plugin",
            rl(json!({"fallback": {"algorithm": "fixed_window", "limit": 1, "window": "1s"}})),
            false,
        ),
        (
            "id_from with a bad header",
            rl(json!({"id_from": {"header": "X Api"}})),
            false,
        ),
        (
            "trusted_hops with X-Forwarded-For",
            rl(json!({"id_from": {"header": "x-forwarded-for", "trusted_hops": 2}})),
            true,
        ),
        (
            "trusted_hops with another header",
            rl(json!({"id_from": {"header": "X-Api-Key", "trusted_hops": 2}})),
            false,
        ),
        (
            "trusted_hops over 32",
            rl(json!({"id_from": {"header": "X-Forwarded-For", "trusted_hops": 33}})),
            false,
        ),
        (
            "trusted_hops and trusted_proxies",
            rl(
                json!({"id_from": {"header": "X-Forwarded-For", "trusted_hops": 1, "trusted_proxies": ["10.0.0.0/8"]}}),
            ),
            false,
        ),
        (
            "trusted_proxies ok",
            rl(
                json!({"id_from": {"header": "X-Forwarded-For", "trusted_proxies": ["10.0.0.0/8", "::1"]}}),
            ),
            true,
        ),
        (
            "ops ok",
            doc_with(json!({"ops": {"plugin": "quota", "op": "daily-quota"}})),
            true,
        ),
        (
            "ops with an empty op",
            doc_with(json!({"ops": {"plugin": "quota", "op": ""}})),
            false,
        ),
        (
            "lock max_ttl",
            doc_with(json!({"lock": {"ttl": "1s", "max_ttl": "1m"}})),
            true,
        ),
    ];
    // Durations: one grammar for the schema and the loader.
    for (text, ok) in [
        ("1m", true),
        ("250ms", true),
        ("1h30m", true),
        ("1d2h3m4s5ms", true),
        ("366d", true),
        ("90s", true),
        ("1ms", true),
        ("0s", false),
        ("0ms0s", false),
        ("1M", false),
        ("1y", false),
        ("1w", false),
        ("1.5s", false),
        ("1 minute", false),
        ("1 m", false),
        (" 1m", false),
        ("1min", false),
        ("1sec", false),
        ("60", false),
        ("", false),
        ("-1s", false),
        ("+1s", false),
        ("1us", false),
        ("1ns", false),
        ("m", false),
        ("1h 30m", false),
    ] {
        v.push((
            Box::leak(format!("window `{text}`").into_boxed_str()),
            rl(json!({ "window": text })),
            ok,
        ));
    }
    v
}

/// Refused by `check` only: rules that JSON Schema cannot say (sums, cross-field numbers,
/// names resolved against other files or the plugins directory). Each is documented in the
/// schema's descriptions; the test keeps the list honest.
fn loader_only() -> Vec<(&'static str, Value)> {
    vec![
        ("window over 366d", rl(json!({"window": "367d"}))),
        ("window summing over 366d", rl(json!({"window": "366d1h"}))),
        (
            "a duration too large to add up",
            rl(json!({"window": "99999999999999999999d"})),
        ),
        (
            "trusted_proxies not an address",
            rl(
                json!({"id_from": {"header": "X-Forwarded-For", "trusted_proxies": ["proxy.local"]}}),
            ),
        ),
        (
            "max_ttl shorter than ttl",
            doc_with(json!({"lock": {"ttl": "1m", "max_ttl": "1s"}})),
        ),
        (
            "max_per_user over user_cap",
            doc_with(
                json!({"session": {"idle_ttl": "1m", "absolute_ttl": "1h", "max_per_user": 20, "user_cap": 10}}),
            ),
        ),
    ]
}

/// Validates every document against the schema in one Python run: `[(valid, why)]`.
fn schema_verdicts(schema: &str, docs: &[Value]) -> Result<Vec<(bool, String)>> {
    let input = json!({"schema": serde_json::from_str::<Value>(schema)?, "docs": docs});
    let (ok, out) = python(
        "jsonschema",
        "python3 -m pip install jsonschema",
        "import json, sys\n\
         from jsonschema.validators import validator_for\n\
         d = json.load(sys.stdin)\n\
         cls = validator_for(d['schema'])\n\
         cls.check_schema(d['schema'])\n\
         v = cls(d['schema'])\n\
         out = []\n\
         for doc in d['docs']:\n\
         \x20   errs = sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))\n\
         \x20   out.append([not errs, '; '.join(e.message[:200] for e in errs[:3])])\n\
         print(json.dumps(out))",
        &input.to_string(),
    )?;
    anyhow::ensure!(ok, "python-jsonschema failed:\n{out}");
    let parsed: Vec<(bool, String)> = serde_json::from_str(out.trim())
        .with_context(|| format!("python-jsonschema printed: {out}"))?;
    Ok(parsed)
}

fn check_verdict(dir: &TempDir, doc: &Value) -> Result<(bool, String)> {
    // JSON is YAML: the very text the schema judged is what `check` reads.
    let file = dir.write("policy.yaml", &serde_json::to_string_pretty(doc)?)?;
    let plugins = dir.path().join("plugins");
    if !plugins.exists() {
        std::fs::create_dir(&plugins)?;
        std::fs::copy(
            workspace_root()?.join("plugins/examples/quota/quota.lua"),
            plugins.join("quota.lua"),
        )?;
    }
    let out = run_cli(&[
        "check",
        "--plugins",
        &plugins.to_string_lossy(),
        &file.to_string_lossy(),
    ])?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn policy_schema_and_check_agree() -> Result<()> {
    let schema = run_cli(&["schema"])?;
    assert!(schema.status.success());
    let schema = String::from_utf8(schema.stdout)?;
    let cases = cases();
    let docs: Vec<Value> = cases.iter().map(|(_, d, _)| d.clone()).collect();
    let verdicts = schema_verdicts(&schema, &docs)?;
    let dir = TempDir::new("schema-cases")?;
    let mut wrong = Vec::new();
    for ((name, doc, expected), (schema_ok, why)) in cases.iter().zip(&verdicts) {
        let (check_ok, diags) = check_verdict(&dir, doc)?;
        if *schema_ok != *expected || check_ok != *expected {
            wrong.push(format!(
                "{name}: expected {}, schema {} ({why}), check {} ({})",
                if *expected { "accepted" } else { "refused" },
                if *schema_ok { "accepts" } else { "refuses" },
                if check_ok { "accepts" } else { "refuses" },
                diags.trim()
            ));
        }
    }
    let loader_only = loader_only();
    let docs: Vec<Value> = loader_only.iter().map(|(_, d)| d.clone()).collect();
    for ((name, doc), (schema_ok, why)) in loader_only.iter().zip(schema_verdicts(&schema, &docs)?)
    {
        let (check_ok, _) = check_verdict(&dir, doc)?;
        if !schema_ok || check_ok {
            wrong.push(format!(
                "{name} (loader only): schema {} ({why}), check {}",
                if schema_ok { "accepts" } else { "refuses" },
                if check_ok { "accepts" } else { "refuses" }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} disagreement(s):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    Ok(())
}
