//! hostile: a plugin that misbehaves on purpose, for patternd's containment tests.
//!
//! Its config chooses how, `{ "mode": MODE }`, and a request's `x-mode` header overrides it (so
//! one binding can misbehave and then behave again). MODE is one of
//!
//! - `ok`: behaves (one limit, key suffix `ok`, 10 per minute);
//! - `loop`: spins forever (the host's fuel or epoch deadline must stop it);
//! - `alloc`: allocates without bound (the host's memory cap must stop it);
//! - `trap`: panics, which aborts the instance (`unreachable`);
//! - `garbage`: returns 1000 limits (1000 tags from `cache`); `escape`: a key suffix of `../../other`;
//!   `flood`: a 64 KiB deny reason (the host must refuse all three);
//! - `print`: writes to stdout and stderr, then behaves (the host must not break);
//! - `sneak`: tries to read a file and the environment, and reports what it saw as a deny
//!   reason (the host grants neither);
//! - `init-loop`, `init-fail`: misbehave in `init` instead;
//! - `echo` (session hook only): rejects with `created=<created-ms> seen=<last-seen-ms>`, so a
//!   test can see the times the host passed; (queue hook) rejects with `payload=<payload>`.
//!
//! Its queue hook (world `plugin-queue`) misbehaves the same way: `garbage` is a priority of
//! 200, `escape` a dedup id of `{other}:x`, `flood` a 64 KiB reject reason.
//!
//! One guest with a mode, rather than one per misbehavior, so the tests build one component.

// wit-bindgen's generated glue lowers a request as 14 scalar arguments.
#![allow(clippy::too_many_arguments)]

use std::sync::OnceLock;

wit_bindgen::generate!({ path: "../../wit", world: "plugin-queue" });

// The world `use`s request, session and the decision types, so they are in scope already.
use patternd::plugin::types::{Algorithm, Limit, QueueChoice};

static MODE: OnceLock<String> = OnceLock::new();

struct Hostile;

impl Guest for Hostile {
    fn init(config: String) -> Result<(), String> {
        // A tiny hand parser: this guest has no dependencies besides wit-bindgen.
        let mode = config
            .split("\"mode\"")
            .nth(1)
            .and_then(|rest| rest.split('"').nth(1))
            .ok_or_else(|| format!("hostile: config needs {{\"mode\": ...}}, got {config}"))?
            .to_string();
        match mode.as_str() {
            "init-loop" => spin(),
            "init-fail" => return Err("hostile: refusing this config, as asked".into()),
            _ => {}
        }
        let _ = MODE.set(mode);
        Ok(())
    }

    fn rate_limit(req: Request) -> RateLimitDecision {
        match mode(&req) {
            "loop" => spin(),
            "alloc" => hoard(),
            "trap" => panic!("hostile: trapping, as asked"),
            "garbage" => RateLimitDecision::Check(vec![ok_limit(&req); 1000]),
            "escape" => RateLimitDecision::Check(vec![Limit {
                key_suffix: "../../other".into(),
                ..ok_limit(&req)
            }]),
            "flood" => RateLimitDecision::Deny("x".repeat(64 << 10)),
            "print" => {
                println!("hostile: to stdout");
                eprintln!("hostile: to stderr");
                RateLimitDecision::Check(vec![ok_limit(&req)])
            }
            "sneak" => {
                let file = std::fs::read_to_string("/etc/hostname")
                    .map(|s| format!("read {} bytes", s.len()))
                    .unwrap_or_else(|e| format!("no file ({e})"));
                let env = std::env::vars().count();
                let args = std::env::args().count();
                RateLimitDecision::Deny(format!("file: {file}; env vars: {env}; args: {args}"))
            }
            _ => RateLimitDecision::Check(vec![ok_limit(&req)]),
        }
    }

    fn cache(req: Request) -> CacheDecision {
        match mode(&req) {
            "loop" => spin(),
            "trap" => panic!("hostile: trapping, as asked"),
            "garbage" => CacheDecision {
                key: None,
                ttl_ms: None,
                bypass: false,
                tags: vec!["tag".into(); 1000],
            },
            _ => CacheDecision {
                key: None,
                ttl_ms: None,
                bypass: false,
                tags: Vec::new(),
            },
        }
    }

    fn session(req: Request, s: Session) -> SessionDecision {
        match mode(&req) {
            // Not hostile: a probe that shows the host passes the session's real times.
            "echo" => {
                SessionDecision::Reject(format!("created={} seen={}", s.created_ms, s.last_seen_ms))
            }
            "loop" => spin(),
            "trap" => panic!("hostile: trapping, as asked"),
            "flood" => SessionDecision::Reject("x".repeat(64 << 10)),
            _ => SessionDecision::Allow,
        }
    }

    fn queue(req: Request, payload: String) -> QueueDecision {
        let accept = QueueChoice {
            delay_ms: None,
            priority: None,
            dedup_id: None,
        };
        match mode(&req) {
            "echo" => QueueDecision::Reject(format!("payload={payload}")),
            "loop" => spin(),
            "alloc" => hoard(),
            "trap" => panic!("hostile: trapping, as asked"),
            "garbage" => QueueDecision::Accept(QueueChoice {
                priority: Some(200),
                ..accept
            }),
            "escape" => QueueDecision::Accept(QueueChoice {
                dedup_id: Some("{other}:x".into()),
                ..accept
            }),
            "flood" => QueueDecision::Reject("x".repeat(64 << 10)),
            _ => QueueDecision::Accept(accept),
        }
    }
}

export!(Hostile);

/// The request's `x-mode` header, else the config's mode.
fn mode(req: &Request) -> &str {
    req.headers
        .iter()
        .find(|h| h.name == "x-mode")
        .map(|h| h.value.as_str())
        .or(MODE.get().map(String::as_str))
        .unwrap_or("ok")
}

fn ok_limit(req: &Request) -> Limit {
    Limit {
        key_suffix: "ok".into(),
        cost: req.cost,
        limit: 10,
        window_ms: 60_000,
        burst: None,
        algorithm: Algorithm::FixedWindow,
    }
}

/// Never returns; `black_box` keeps the optimizer from proving anything about the loop.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Allocates 1 MiB after 1 MiB until something stops it. Blocks are reserved, not filled, so
/// memory runs out long before fuel would.
fn hoard() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block: Vec<u8> = Vec::with_capacity(1 << 20);
        block.push(kept.len() as u8);
        kept.push(std::hint::black_box(block));
    }
}
