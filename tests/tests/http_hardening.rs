//! Holding under attack: a forged X-Forwarded-For prefix, slow clients, and errors that are
//! problem+json on every route, hyper's own parse errors included.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use patternd_e2e::origin::Origin;
use patternd_e2e::raw::{RawAnswer, raw_request};
use patternd_e2e::{
    PluginWorld, RedisServer, TempDir, World, free_port, lua_plugins, metric_value, patternd_bin,
    policy_dir,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const XFF: &str = "app: web
rules:
  edge:
    rate_limit: { algorithm: fixed_window, limit: 20, window: 1h, id_from: { header: X-Forwarded-For } }
";

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_forwarded_for_prefix_does_not_buy_a_new_quota() -> Result<()> {
    let w = World::start(&[("web.yaml", XFF)], &[]).await?;
    let p = &w.patternd;
    // The client writes `spoof-$i`; the proxy in front of patternd appends the address it saw.
    let mut statuses = Vec::new();
    for i in 0..30 {
        let xff = format!("spoof-{i}, 10.0.0.5");
        let r = p
            .get_with("/v1/ratelimit/web/edge", &[("x-forwarded-for", &xff)])
            .await?;
        statuses.push(r.status);
    }
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    let denied = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((allowed, denied), (20, 10), "{statuses:?}");
    // The id is that address: the POST form with it shares the counter.
    let r = p.check("web", "edge", "10.0.0.5", 1).await?;
    assert_eq!(r.status, 429, "{r:?}");
    Ok(())
}

const TRUSTED: &str = "app: web
rules:
  edge:
    rate_limit: { algorithm: fixed_window, limit: 1, window: 1h, id_from: { header: X-Forwarded-For } }
  two:
    rate_limit: { algorithm: fixed_window, limit: 1, window: 1h, id_from: { header: X-Forwarded-For, trusted_hops: 2 } }
  cidr:
    rate_limit: { algorithm: fixed_window, limit: 1, window: 1h, id_from: { header: X-Forwarded-For, trusted_proxies: [10.0.0.0/8, \"2001:db8::/32\"] } }
";

#[tokio::test(flavor = "multi_thread")]
async fn trusted_hops_and_trusted_proxies_pick_the_client_from_the_right() -> Result<()> {
    let w = World::start(&[("web.yaml", TRUSTED)], &[]).await?;
    let p = &w.patternd;
    let get = |rule: &'static str, lines: Vec<String>| async move {
        let pairs: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| ("x-forwarded-for", l.as_str()))
            .collect();
        p.get_with(&format!("/v1/ratelimit/web/{rule}"), &pairs)
            .await
    };
    let s = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<_>>();

    // Two trusted hops (a load balancer, then the gateway): the second entry from the right.
    for (lines, status) in [
        (s(&["spoof-a, 203.0.113.7, 10.0.0.1"]), 200),
        (s(&["spoof-b, 203.0.113.7, 10.0.0.2"]), 429),
        // Several header lines are one list, in order.
        (s(&["198.51.100.1", "203.0.113.8, 10.0.0.1"]), 200),
        (s(&["x, 203.0.113.8", "10.9.9.9"]), 429),
    ] {
        let r = get("two", lines.clone()).await?;
        assert_eq!(r.status, status, "{lines:?}: {r:?}");
    }

    // Trusted proxy ranges: the rightmost address outside them, however many proxies.
    for (lines, status) in [
        (s(&["spoof, 198.51.100.20, 10.1.1.1, 2001:db8::7"]), 200),
        (s(&["other, 198.51.100.20, 10.3.3.3"]), 429),
        // A client that reached the gateway directly is its own rightmost address.
        (s(&["10.0.0.9, 198.51.100.21"]), 200),
        (s(&["[::ffff:198.51.100.21]:4711"]), 429),
    ] {
        let r = get("cidr", lines.clone()).await?;
        assert_eq!(r.status, status, "{lines:?}: {r:?}");
    }

    // The chosen entry must be an address: anything else is the client's mistake, not an id.
    for (rule, xff) in [
        ("edge", "203.0.113.9, unknown"),
        ("edge", "203.0.113.9, spoof-1"),
        ("cidr", "203.0.113.9, not-an-ip, 10.0.0.1"),
    ] {
        let r = get(rule, s(&[xff])).await?;
        r.assert_problem(400);
        assert!(r.detail().contains("not an IP address"), "{r:?}");
    }
    let r = get("edge", s(&[" , "])).await?;
    r.assert_problem(400);

    // The settings are visible as loaded.
    let r = p.get("/admin/policies").await?;
    let rules = &r.json["apps"][0]["rules"];
    let id_from = |name: &str| {
        rules
            .as_array()
            .and_then(|a| a.iter().find(|r| r["rule"] == name))
            .map(|r| r["id_from"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(id_from("edge")["trusted_hops"], 1, "{r:?}");
    assert_eq!(id_from("two")["trusted_hops"], 2, "{r:?}");
    assert_eq!(
        id_from("cidr")["trusted_proxies"],
        serde_json::json!(["10.0.0.0/8", "2001:db8::/32"]),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_cut_off_and_cannot_starve_the_others() -> Result<()> {
    let mut w = World::start(
        &[("web.yaml", XFF)],
        &[
            "--max-connections",
            "8",
            "--header-read-timeout",
            "1s",
            "--body-read-timeout",
            "1s",
        ],
    )
    .await?;
    let port = w.patternd.port();
    // Three times the cap in clients that send half a request head, then nothing.
    let mut slow = Vec::new();
    for _ in 0..24 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await?;
        slow.push(s);
    }
    // Anyone else still gets an answer (on a connection of its own).
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;
    let r = fresh.get(w.patternd.url("/healthz")).send().await?;
    assert_eq!(r.status(), 200);
    // Every slow connection is closed by the server, none is kept forever.
    for (i, s) in slow.iter_mut().enumerate() {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .with_context(|| format!("slow connection {i} was never closed"))?;
        assert!(matches!(read, Ok(0) | Err(_)), "{i}: {read:?}");
    }

    // A body that stops halfway is answered 408 and its connection closed.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        b"POST /v1/ratelimit/web/edge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\":",
    )
    .await?;
    let answer = RawAnswer::read(&mut s).await?;
    let (status, head, body) = answer.parts();
    assert_eq!(status, 408, "{head}\n{body}");
    assert_problem(head, body, 408);

    let m = w.patternd.get("/metrics").await?;
    let value = |name: &str| metric_value(&m.text, name, &[]).unwrap_or(0.0);
    assert!(
        value("patternd_http_header_timeouts_total") >= 24.0,
        "{}",
        m.text
    );
    assert!(
        value("patternd_http_connection_limit_waits_total") >= 1.0,
        "{}",
        m.text
    );
    assert!(value("patternd_http_connections") >= 1.0, "{}", m.text);
    let log = w.patternd.log();
    assert!(
        log.contains("connection limit reached: 8 connections open"),
        "{log}"
    );
    assert!(log.contains("max_connections=8"), "{log}");

    // Graceful shutdown still ends the server by itself (it logs after every connection
    // closed; a hang would end in the harness's SIGKILL without that line).
    w.patternd.stop();
    assert!(
        w.patternd.log().contains("shutting down"),
        "{}",
        w.patternd.log()
    );
    Ok(())
}

/// A `patternd serve` started under `prlimit`, killed on drop (its log printed on failure).
struct Limited {
    child: Child,
    log: std::path::PathBuf,
    port: u16,
    _dir: TempDir,
}

impl Limited {
    async fn start(
        nofile: u32,
        redis: &RedisServer,
        policies: &TempDir,
        extra: &[&str],
    ) -> Result<Self> {
        let bin = patternd_bin()?;
        let dir = TempDir::new("nofile")?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        // Another process may take the port between pick and bind: pick again.
        for attempt in 0..5 {
            let port = free_port()?;
            let log = dir.path().join(format!("patternd-{attempt}.log"));
            let mut child = Command::new("prlimit")
                .arg(format!("--nofile={nofile}:{nofile}"))
                .arg("--")
                .arg(&bin)
                .arg("serve")
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--redis", &redis.url()])
                .arg("--policies")
                .arg(policies.path())
                .args(extra)
                .env("NO_COLOR", "1")
                .env("PATTERND_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log)?)
                .spawn()
                .context("spawning prlimit")?;
            for _ in 0..200 {
                if child.try_wait()?.is_some() {
                    break;
                }
                let up = client
                    .get(format!("http://127.0.0.1:{port}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if up {
                    return Ok(Self {
                        child,
                        log,
                        port,
                        _dir: dir,
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        bail!("patternd did not start under prlimit")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- patternd log -----\n{}\n-----", self.log());
        }
    }
}

/// The issue's own setting: a 256-descriptor limit and more slow clients than that. Before,
/// every descriptor went to a slow client, `accept` failed with EMFILE, and nobody else was
/// answered until the slow clients left.
#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_cannot_exhaust_the_file_descriptors() -> Result<()> {
    let redis = RedisServer::start()?;
    let policies = policy_dir(&[("web.yaml", XFF)])?;
    let p = Limited::start(256, &redis, &policies, &["--header-read-timeout", "2s"]).await?;
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(("127.0.0.1", p.port)).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await?;
        slow.push(s);
    }
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?;
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", p.port);
    let r = fresh.get(url("/healthz")).send().await?;
    assert_eq!(r.status(), 200);
    // Redis still works: a decision is made, not degraded.
    let r = fresh
        .post(url("/v1/ratelimit/web/edge"))
        .json(&serde_json::json!({"id": "after-the-flood"}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await?;
    assert_eq!(body["degraded"], false, "{body}");
    // The cap kept a quarter of the descriptors (at least 128) for everything else, said so,
    // and said when it was reached.
    let log = p.log();
    assert!(
        log.contains("max_connections=128 open_files_limit=256"),
        "{log}"
    );
    assert!(
        log.contains("connection limit reached: 128 connections open"),
        "{log}"
    );
    assert!(!log.contains("accept failed"), "{log}");
    drop(slow);
    Ok(())
}

fn assert_problem(head: &str, body: &str, status: u16) {
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\ncontent-type: application/problem+json"),
        "{head}\n{body}"
    );
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_eq!(v["status"], status, "{head}\n{body}");
    assert!(
        v["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_hyper_cannot_parse_get_problem_json() -> Result<()> {
    let w = World::start(&[("web.yaml", XFF)], &[]).await?;
    let port = w.patternd.port();
    let long_path = |n: usize| {
        let mut r = b"GET /v1/ratelimit/web/".to_vec();
        r.extend(std::iter::repeat_n(b'a', n));
        r.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        r
    };
    let many_fields = {
        let mut r = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..150 {
            r.extend_from_slice(format!("x-f{i}: v\r\n").as_bytes());
        }
        r.extend_from_slice(b"\r\n");
        r
    };
    for (what, request, status) in [
        ("a 70 KB path", long_path(70_000), 414),
        ("a 1 MB path", long_path(1 << 20), 431),
        ("150 header fields", many_fields, 431),
        (
            "conflicting Content-Length",
            b"POST /v1/ratelimit/web/edge HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
            400,
        ),
        ("a broken request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        (
            "a header without a colon",
            b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n".to_vec(),
            400,
        ),
    ] {
        let answer = raw_request(port, request).await.context(what)?;
        let (got, head, body) = answer.parts();
        assert_eq!(got, status, "{what}: {head}\n{body}");
        assert_problem(head, body, status);
        assert!(
            head.to_ascii_lowercase().contains("\r\nconnection: close"),
            "{what}: {head}"
        );
    }
    // The same connection keeps working for good requests, and a good request after a
    // response whose body looks like a bare error head is not touched.
    let r = w.patternd.get("/healthz").await?;
    assert_eq!(r.status, 200);
    Ok(())
}

const SWEEP: &str = "app: shop
rules:
  edge:
    rate_limit: { algorithm: fixed_window, limit: 100000, window: 1h, id_from: { header: X-Forwarded-For } }
  product:
    cache:
      origin: ORIGIN
      ttl: 1h
      origin_timeout: 5s
      write: behind
  web:
    session: { idle_ttl: 30m, absolute_ttl: 24h }
  order:
    lock: { ttl: 30s, max_wait: 1s }
  visits:
    counter: { kind: unique, period: day }
  board:
    leaderboard: { period: day, ties: first }
";

/// The rule of the sweep's policy that a route's pattern serves.
fn rule_for(template: &str) -> &'static str {
    if template.contains("/ratelimit/") {
        "edge"
    } else if template.contains("/cache/") {
        "product"
    } else if template.contains("/sessions/") {
        "web"
    } else if template.contains("/locks/") {
        "order"
    } else if template.contains("/queues/") {
        "jobs"
    } else if template.contains("/streams/") {
        "events"
    } else if template.contains("/counters/") {
        "visits"
    } else if template.contains("/leaderboards/") {
        "board"
    } else {
        "op"
    }
}

fn fill(template: &str, bad: Option<&str>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map_or(rest.len(), |e| start + e);
        let name = &rest[start + 1..end];
        let value = match name {
            _ if bad == Some(name) => "%FF%FE".to_string(),
            "app" => "shop".to_string(),
            "rule" => rule_for(template).to_string(),
            _ => "x1".to_string(),
        };
        out.push_str(&value);
        rest = &rest[(end + 1).min(rest.len())..];
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_client_error_on_every_route_is_problem_json() -> Result<()> {
    let origin = Origin::start().await?;
    origin.set("x1", "application/json", b"{\"a\":1}", &[]);
    let policy = SWEEP.replace("ORIGIN", &origin.template());
    let w = World::start(&[("shop.yaml", &policy)], &[]).await?;
    let p = &w.patternd;
    let doc = p.get("/openapi.json").await?.json;
    let paths = doc["paths"]
        .as_object()
        .context("the OpenAPI document lists paths")?
        .clone();

    let queries = [
        "?cost=1&cost=2",
        "?deny_status=1&deny_status=2",
        "?cost=1&cost=2&deny_status=1&deny_status=2&fields=a&fields=b&count=1&count=2&after=0-1&after=0-2&token=a&token=b",
        "?cost=x&deny_status=x&count=x&fields=%FF&token=%FF&after=x",
        "?%FF=1",
    ];
    let big = format!("{{\"id\": \"{}\"}}", "a".repeat(70_000));
    let bodies = [
        "{",
        "[1]",
        "\"a\"",
        "{\"id\": {}, \"cost\": \"x\", \"user\": 5, \"ttl_ms\": -1, \"wait_ms\": \"x\", \"tags\": \"x\", \"ids\": 1, \"count\": -1, \"data\": 5}",
        big.as_str(),
    ];
    let mut failures = Vec::new();
    let mut seen = std::collections::BTreeMap::<u16, usize>::new();
    // An answer lost to a reset counts as a failure too: the client got no problem at all.
    let mut check = |what: String, r: Result<patternd_e2e::Reply>| {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{what}: no answer: {e:#}"));
                return;
            }
        };
        if r.status >= 400 {
            *seen.entry(r.status).or_default() += 1;
            let ok = r.content_type().starts_with("application/problem+json")
                && r.json["status"] == r.status
                && r.json["detail"].as_str().is_some();
            if !ok {
                failures.push(format!(
                    "{what}: {} {:?} {:?}",
                    r.status,
                    r.content_type(),
                    r.text
                ));
            }
        }
    };

    for (template, ops) in &paths {
        let methods: Vec<String> = ops
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let params: Vec<&str> = template
            .split('{')
            .skip(1)
            .filter_map(|s| s.split('}').next())
            .collect();
        for method in &methods {
            let m = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())?;
            let send = |path: String, body: Option<&str>| {
                let mut req = p
                    .client()
                    .request(m.clone(), p.url(&path))
                    .header("x-forwarded-for", "192.0.2.1");
                if let Some(b) = body {
                    req = req
                        .header("content-type", "application/json")
                        .body(b.to_string());
                }
                p.send(req)
            };
            let good = fill(template, None);
            // Every path parameter broken in turn (not UTF-8 once decoded), and an unknown
            // app.
            for bad in &params {
                let path = fill(template, Some(bad));
                check(format!("{method} {path}"), send(path, None).await);
            }
            let path = good.replacen("/shop/", "/nope/", 1);
            check(format!("{method} {path}"), send(path, None).await);
            for q in queries {
                let path = format!("{good}{q}");
                check(format!("{method} {path}"), send(path, None).await);
            }
            if ["post", "put", "patch"].contains(&method.as_str()) {
                for b in bodies {
                    let shown: String = b.chars().take(40).collect();
                    check(
                        format!("{method} {good} {shown}"),
                        send(good.clone(), Some(b)).await,
                    );
                }
            }
        }
        // A method the route does not have.
        let path = fill(template, None);
        let r = p
            .send(
                p.client()
                    .request(reqwest::Method::from_bytes(b"PURGE")?, p.url(&path)),
            )
            .await;
        check(format!("PURGE {path}"), r);
    }
    let r = p.get("/no/such/route?cost=1&cost=2").await;
    check("GET /no/such/route".into(), r);

    assert!(
        failures.is_empty(),
        "not problem+json:\n{}",
        failures.join("\n")
    );
    // The two the issue names, by name.
    for q in ["?cost=1&cost=2", "?deny_status=1&deny_status=2"] {
        let r = p
            .get_with(
                &format!("/v1/ratelimit/shop/edge{q}"),
                &[("x-forwarded-for", "192.0.2.1")],
            )
            .await?;
        r.assert_problem(400);
    }
    eprintln!("error answers checked, by status: {seen:?}");
    // The sweep did reach the error paths it is about.
    for status in [400, 404, 405, 413] {
        assert!(
            seen.get(&status).is_some_and(|n| *n > 0),
            "no {status} seen: {seen:?}"
        );
    }
    Ok(())
}

/// The sweep's rules, plus an op (the example quota plugin) and a `format: hash` cache, so
/// that every route with a JSON body reaches its body.
const JSON_ROUTES: &str = "app: shop
rules:
  edge:
    rate_limit: { algorithm: fixed_window, limit: 100000, window: 1h }
  product:
    cache:
      origin: ORIGIN
      ttl: 1h
      format: hash
      write: behind
  web:
    session: { idle_ttl: 30m, absolute_ttl: 24h }
  order:
    lock: { ttl: 30s, max_wait: 1s }
  op:
    ops: { plugin: quota, op: daily-quota }
  jobs:
    queue: { visibility: 1m }
  events:
    stream: { max_len: 100, groups: [x1] }
  visits:
    counter: { kind: unique, period: day }
  board:
    leaderboard: { period: day, ties: first }
";

/// serde reads a struct from a JSON array too (`["alice"]` as `{"user": "alice"}`); every
/// route that takes a JSON body takes an object only, the routes that once took an array
/// (cache `_invalidate`, ops, dead-letter replay) included.
#[tokio::test(flavor = "multi_thread")]
async fn a_json_array_is_no_body_on_any_route() -> Result<()> {
    let origin = Origin::start().await?;
    let plugins = lua_plugins(&[("quota.lua", "quota/quota.lua")])?;
    let policy = JSON_ROUTES.replace("ORIGIN", &origin.template());
    let w = PluginWorld::start(&[("shop.yaml", &policy)], plugins).await?;
    let p = &w.patternd;
    let doc = p.get("/openapi.json").await?.json;
    let mut checked = Vec::new();
    for (template, ops) in doc["paths"].as_object().context("paths")? {
        for (method, op) in ops.as_object().context("a path item")? {
            if op["requestBody"]["content"]
                .get("application/json")
                .is_none()
            {
                continue;
            }
            let m = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())?;
            for body in ["[]", "[\"x1\", 1]"] {
                let req = p
                    .client()
                    .request(m.clone(), p.url(&fill(template, None)))
                    .header("content-type", "application/json")
                    .body(body);
                let r = p.send(req).await?;
                r.assert_problem(400);
                assert!(
                    r.detail().contains("must be a JSON object"),
                    "{method} {template} {body}: {r:?}"
                );
            }
            checked.push(format!("{method} {template}"));
        }
    }
    for named in [
        "post /v1/cache/{app}/{rule}/_invalidate",
        "post /v1/ops/{app}/{rule}",
        "post /admin/cache/{app}/{rule}/dead-letters/replay",
        "post /v1/ratelimit/{app}/{rule}",
        "post /v1/sessions/{app}/{rule}",
        "post /v1/locks/{app}/{rule}/{resource}",
        "post /v1/counters/{app}/{rule}/{id}",
        "post /v1/leaderboards/{app}/{rule}/{board}",
        "post /v1/leaderboards/{app}/{rule}/_ranks",
    ] {
        assert!(
            checked.iter().any(|c| c == named),
            "{named} not checked: {checked:?}"
        );
    }
    Ok(())
}
