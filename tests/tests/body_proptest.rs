//! Property tests of request bodies, end to end: arbitrary bytes, arbitrary JSON, and the
//! routes' own fields with values of every type and range (numbers beyond u64 and f64,
//! duplicate keys, deep nesting) go to every data route that reads a JSON body (rate limit,
//! sessions, locks, ops, cache PUT/PATCH/_invalidate) of a real patternd with a real Redis.
//! Every answer must be a success or a 4xx problem+json: never a 5xx, never a dropped
//! connection (what a panicking handler gives), and the server never logs a panic.
//!
//! Cases are bounded (`CASES` per route) so the file runs in a few seconds once built.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, Result};
use patternd_e2e::{Reply, TempDir, World};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::Value;

const CASES: u32 = 96;

const POLICY: &str = "
app: fz
rules:
  rl: { rate_limit: { algorithm: fixed_window, limit: 1000000, window: 1h } }
  cc: { rate_limit: { algorithm: concurrency, limit: 1000000, lease: 10s } }
  web: { session: { idle_ttl: 30m, absolute_ttl: 24h } }
  lk: { lock: { ttl: 10s, max_ttl: 1m, max_wait: 100ms } }
  sem: { lock: { ttl: 10s, permits: 2, max_wait: 100ms } }
  op: { ops: { plugin: fz, op: count } }
  s: { cache: { ttl: 1h, max_value_bytes: 4096 } }
  h: { cache: { ttl: 1h, format: hash, max_value_bytes: 4096 } }
";

/// A Lua plugin with one op that cannot fail on any input (it counts calls and returns the
/// number of arguments), so a 5xx from `/v1/ops` could only be the engine's.
const PLUGIN: &str = r#"return { ops = { count = { keys = { "n" }, script = [[
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], 60000)
return #ARGV
]] } } }"#;

/// JSON text built by hand, so numbers can be what no `serde_json::Value` holds.
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn render(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => out.push_str(&Value::String(s.clone()).to_string()),
            J::Arr(items) => {
                out.push('[');
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    x.render(out);
                }
                out.push(']');
            }
            J::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    v.render(out);
                }
                out.push('}');
            }
        }
    }

    fn text(&self) -> String {
        let mut s = String::new();
        self.render(&mut s);
        s
    }
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..100).prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        proptest::sample::select(vec![
            "-0",
            "0.0",
            "1.5",
            "-1",
            "1e3",
            "1E-7",
            "1e999",
            "-1e999",
            "1e-999",
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775808",
            "-9223372036854775809",
            "123456789012345678901234567890",
        ])
        .prop_map(str::to_string),
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{1,12}",
        "[%{}:/.a-z ]{0,12}",
        any::<String>(),
        (0usize..3000).prop_map(|n| "x".repeat(n)),
    ]
}

fn json(keys: &'static [&'static str]) -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        number().prop_map(J::Num),
        string().prop_map(J::Str),
    ];
    let key = prop_oneof![
        3 => proptest::sample::select(keys).prop_map(str::to_string),
        1 => string(),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(J::Arr),
            proptest::collection::vec((key.clone(), inner), 0..8).prop_map(J::Obj),
        ]
    })
}

/// A request body; shown as text (lossy) when proptest reports a failing input.
#[derive(Clone)]
struct Body(Vec<u8>);

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// A value of the kind the field takes (so requests reach the code behind the parse), at the
/// edges of its range.
/// `token` is a live lock token, so extend and release get past the token check sometimes.
fn plausible(key: &str, token: &str) -> BoxedStrategy<J> {
    let small = || (0u64..1000).prop_map(|n| J::Num(n.to_string()));
    let word = || "[a-z0-9]{1,8}".prop_map(J::Str);
    match key {
        "token" => prop_oneof![
            2 => Just(J::Str(token.to_string())),
            1 => word(),
            1 => string().prop_map(J::Str),
        ]
        .boxed(),
        "id" | "user" | "name" | "nick" => prop_oneof![
            3 => word(),
            1 => small(),
            1 => string().prop_map(J::Str),
        ]
        .boxed(),
        "cost" | "ttl_ms" | "wait_ms" => prop_oneof![
            3 => small(),
            1 => number().prop_map(J::Num),
        ]
        .boxed(),
        "data" => proptest::collection::vec(("[a-z]{1,6}", json(&["cart"])), 0..4)
            .prop_map(J::Obj)
            .boxed(),
        "args" => proptest::collection::vec(prop_oneof![word(), small()], 0..4)
            .prop_map(J::Arr)
            .boxed(),
        "tags" => proptest::collection::vec(
            prop_oneof![3 => word(), 1 => string().prop_map(J::Str)],
            0..4,
        )
        .prop_map(J::Arr)
        .boxed(),
        _ => json(&[]).boxed(),
    }
}

/// A body for a route whose JSON object has the fields `keys`.
fn body(keys: &'static [&'static str], token: &str) -> impl Strategy<Value = Body> {
    let field = (proptest::sample::select(keys), json(keys));
    // Each field present or not, of its own kind or anything.
    let fields: Vec<_> = keys
        .iter()
        .map(|k| {
            proptest::option::weighted(
                0.8,
                prop_oneof![6 => plausible(k, token), 1 => json(keys)]
                    .prop_map(move |v| (k.to_string(), v)),
            )
        })
        .collect();
    prop_oneof![
        // Arbitrary bytes.
        1 => proptest::collection::vec(any::<u8>(), 0..128),
        // Arbitrary JSON values.
        1 => json(keys).prop_map(|j| j.text().into_bytes()),
        // The route's fields with values of their kind, now and then of any kind.
        4 => fields.prop_map(|f| J::Obj(f.into_iter().flatten().collect()).text().into_bytes()),
        // The route's fields (repeated, missing, or with a stranger), values of any type.
        2 => (proptest::collection::vec(field, 0..5), proptest::option::of((string(), json(keys))))
            .prop_map(|(mut fields, extra)| {
                let mut fields: Vec<(String, J)> =
                    fields.drain(..).map(|(k, v)| (k.to_string(), v)).collect();
                fields.extend(extra);
                J::Obj(fields).text().into_bytes()
            }),
        // Deep nesting and other shapes a parser may trip over.
        1 => (1usize..5000, any::<bool>(), prop_oneof![Just(""), Just("\u{feff}"), Just(" \n")])
            .prop_map(|(depth, map, pre)| {
                let (open, close) = if map { ("{\"id\":", "}") } else { ("[", "]") };
                format!("{pre}{}1{}", open.repeat(depth), close.repeat(depth)).into_bytes()
            }),
    ]
    .prop_map(Body)
}

/// The answer is a success, or a 4xx problem+json that agrees with its status.
fn acceptable(what: &str, body: &[u8], r: &Reply) -> Result<(), TestCaseError> {
    let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
    prop_assert!(
        r.status < 500,
        "{} with body {:?} answered {}: {}",
        what,
        shown,
        r.status,
        r.text
    );
    if r.status >= 400 && r.status != 429 {
        prop_assert!(
            r.content_type().starts_with("application/problem+json"),
            "{} with body {:?}: a {} that is not problem+json: {:?}",
            what,
            shown,
            r.status,
            r
        );
        prop_assert_eq!(
            r.json.get("status").and_then(Value::as_u64),
            Some(u64::from(r.status)),
            "{} with body {:?}: {:?}",
            what,
            shown,
            r
        );
    }
    Ok(())
}

/// `CASES` per route and a fixed seed unless `PROPTEST_CASES` / `PROPTEST_RNG_SEED` say
/// otherwise (as in the engine's property tests), so a red run is a finding, not a new draw.
fn config() -> Config {
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = CASES;
    }
    if c.rng_seed == RngSeed::Random {
        c.rng_seed = RngSeed::Fixed(0x7061_7474_6572_6e64);
    }
    // A failure is reported with its shrunk input; nothing is written to disk.
    c.failure_persistence = None;
    c
}

struct Route {
    method: reqwest::Method,
    /// `{n}` is replaced by the case number (fresh lock resources, cache ids).
    path: String,
    keys: &'static [&'static str],
}

#[test]
fn every_body_gets_a_success_or_a_4xx() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let plugins = TempDir::new("fuzz-plugins")?;
    plugins.write("fz.lua", PLUGIN)?;
    let dir = plugins.path().to_string_lossy().to_string();
    let w = rt.block_on(World::start(&[("fz.yaml", POLICY)], &["--plugins", &dir]))?;
    let p = &w.patternd;

    // A live session, so PATCH bodies reach the session code and not only the 404 for an
    // unknown id.
    let created = rt.block_on(p.post_json(
        "/v1/sessions/fz/web",
        &serde_json::json!({"user": "alice", "data": {"cart": 1}}),
    ))?;
    anyhow::ensure!(created.status == 201, "session create: {created:?}");
    let sid = created.json["id"]
        .as_str()
        .context("session id")?
        .to_string();
    let session_path = format!("/v1/sessions/fz/web/{sid}");
    // A held lock, so extend and release bodies can carry a live token.
    let held = rt.block_on(p.post_json(
        "/v1/locks/fz/lk/held",
        &serde_json::json!({"ttl_ms": 60000}),
    ))?;
    anyhow::ensure!(held.status == 200, "lock: {held:?}");
    let token = held.json["token"].as_str().context("token")?.to_string();
    // A cached object, so PATCH bodies reach the merge and not only the 404 for an unknown id.
    let put = rt.block_on(
        p.send(
            p.client()
                .put(p.url("/v1/cache/fz/h/obj"))
                .header("content-type", "application/json")
                .body(r#"{"name": "ada"}"#),
        ),
    )?;
    anyhow::ensure!(put.status < 300, "cache put: {put:?}");

    use reqwest::Method;
    let routes = [
        Route {
            method: Method::POST,
            path: "/v1/ratelimit/fz/rl".into(),
            keys: &["id", "cost"],
        },
        Route {
            method: Method::POST,
            path: "/v1/ratelimit/fz/cc".into(),
            keys: &["id", "cost"],
        },
        Route {
            method: Method::POST,
            path: "/v1/sessions/fz/web".into(),
            keys: &["user", "data"],
        },
        Route {
            method: Method::PATCH,
            path: session_path,
            keys: &["data"],
        },
        Route {
            method: Method::POST,
            path: "/v1/locks/fz/lk/r{n}".into(),
            keys: &["ttl_ms", "wait_ms"],
        },
        Route {
            method: Method::POST,
            path: "/v1/locks/fz/sem/r{n}".into(),
            keys: &["ttl_ms", "wait_ms"],
        },
        Route {
            method: Method::POST,
            path: "/v1/locks/fz/lk/held/extend".into(),
            keys: &["token", "ttl_ms"],
        },
        Route {
            method: Method::DELETE,
            path: "/v1/locks/fz/lk/held".into(),
            keys: &["token"],
        },
        Route {
            method: Method::POST,
            path: "/v1/ops/fz/op".into(),
            keys: &["id", "args"],
        },
        Route {
            method: Method::PUT,
            path: "/v1/cache/fz/s/i{n}".into(),
            keys: &["id"],
        },
        Route {
            method: Method::PUT,
            path: "/v1/cache/fz/h/i{n}".into(),
            keys: &["name", "nick"],
        },
        Route {
            method: Method::PATCH,
            path: "/v1/cache/fz/h/obj".into(),
            keys: &["name", "nick"],
        },
        Route {
            method: Method::POST,
            path: "/v1/cache/fz/s/_invalidate".into(),
            keys: &["tags"],
        },
    ];

    let seq = AtomicU64::new(0);
    for route in &routes {
        let what = format!("{} {}", route.method, route.path);
        let mut runner = TestRunner::new(config());
        let successes = AtomicU64::new(0);
        let result = runner.run(&body(route.keys, &token), |body| {
            let n = seq.fetch_add(1, Ordering::Relaxed);
            let url = p.url(&route.path.replace("{n}", &n.to_string()));
            let req = p
                .client()
                .request(route.method.clone(), url)
                .header("content-type", "application/json")
                .body(body.0.clone());
            let reply = rt
                .block_on(p.send(req))
                .map_err(|e| TestCaseError::fail(format!("{what}: no answer ({e:#})")))?;
            if reply.status < 300 {
                successes.fetch_add(1, Ordering::Relaxed);
            }
            acceptable(&what, &body.0, &reply)
        });
        if let Err(e) = result {
            anyhow::bail!("{what}: {e}");
        }
        // The generator reaches the code behind the parse, not only its refusals.
        anyhow::ensure!(
            successes.load(Ordering::Relaxed) > 0,
            "{what}: no body was accepted"
        );
    }
    let log = p.log();
    anyhow::ensure!(!log.contains("panicked"), "patternd panicked:\n{log}");
    // The server is still whole: a plain decision works.
    let r = rt.block_on(p.check("fz", "rl", "after", 1))?;
    anyhow::ensure!(r.status == 200, "{r:?}");
    Ok(())
}
