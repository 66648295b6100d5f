//! The cache, session, lock and queue scenarios: their policy, the setup each needs before it can be
//! measured (an origin and a filled cache, live sessions), and a raw Redis client baseline for
//! the patterns redis-benchmark cannot drive (a session read needs a live session id, a lock
//! release needs the token its acquire returned, a queue ack the receipt its pop returned).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hyper::{StatusCode, Uri};

use crate::baseline::Baseline;
use crate::hist::Histogram;
use crate::procs;

pub const APP: &str = "bench";
/// Distinct cache ids: all of them are filled before the measured phase, so it sees hits only.
pub const CACHE_IDS: u64 = 10_000;
/// Live sessions read at random.
pub const SESSIONS: u64 = 5_000;
/// The queue rule both queue scenarios push to, pop from and ack on.
pub const QUEUE_RULE: &str = "work";
/// Jobs per operation of the `queue_batch` scenario: pushes, one pop's `count`, acks. At most
/// the rule's `max_pop` (default 10).
pub const QUEUE_BATCH: u64 = 10;
/// The leaderboard rule and board both leaderboard scenarios use.
pub const BOARD_RULE: &str = "board";
pub const BOARD: &str = "global";
/// Members the board keeps: the leaderboard scenarios' board is full.
pub const BOARD_SIZE: u64 = 10_000;

/// The payload of every pushed job, the same as the HTTP side's (`load::QUEUE_PUSH`).
pub fn queue_payload() -> serde_json::Value {
    serde_json::json!({"order": "bench-000042", "sku": "A-1"})
}

/// The cache rule of the write scenario: no origin, so a PUT is stored in Redis only.
pub const WRITE_RULE: &str = "note";

/// The origin's answer: a small JSON document, like a product record.
const ITEM_BYTES: usize = 256;

/// The rules the pattern scenarios use, added to the benchmark policy.
pub fn policy(origin: Option<SocketAddr>) -> String {
    let mut p = String::new();
    if let Some(o) = origin {
        p.push_str(&cache_rule(o));
        p.push_str(&format!(
            "  item_near:\n    cache: {{ origin: \"http://{o}/items/{{id}}\", ttl: 1h, near_cache: {{ max_entries: 20000 }} }}\n"
        ));
    }
    p.push_str(&format!("  {WRITE_RULE}:\n    cache: {{ ttl: 1h }}\n"));
    p.push_str("  web:\n    session: { idle_ttl: 30m, absolute_ttl: 24h }\n");
    p.push_str("  order:\n    lock: { ttl: 30s }\n");
    p.push_str("  hll:\n    counter: { kind: unique, period: day, keep: 7 }\n");
    p.push_str(&format!(
        "  {QUEUE_RULE}:\n    queue: {{ visibility: 30s, max_pop: {QUEUE_BATCH} }}\n"
    ));
    p.push_str(&format!(
        "  {BOARD_RULE}:\n    leaderboard: {{ period: day, keep: 1, update: best, ties: first, max_size: {BOARD_SIZE} }}\n"
    ));
    // The default buffer (256 messages a client may fall behind) is far more than a fan-out
    // spaced out in time needs.
    p.push_str(&format!("  {}:\n    pubsub: {{}}\n", crate::pubsub::RULE));
    p
}

/// The cache rule `item` (no near cache) on the local origin: the cache and floors scenarios'.
pub fn cache_rule(origin: SocketAddr) -> String {
    format!("  item:\n    cache: {{ origin: \"http://{origin}/items/{{id}}\", ttl: 1h }}\n")
}

/// The origin's body for every id: JSON padded to `ITEM_BYTES`.
pub fn item_body() -> Vec<u8> {
    let head = r#"{"name":"benchmark item","price":1999,"currency":"EUR","description":""#;
    let tail = r#""}"#;
    let pad = ITEM_BYTES.saturating_sub(head.len() + tail.len());
    let mut b = Vec::with_capacity(ITEM_BYTES);
    b.extend_from_slice(head.as_bytes());
    b.extend(std::iter::repeat_n(b'x', pad));
    b.extend_from_slice(tail.as_bytes());
    b
}

/// A minimal origin for the cache scenario: every `GET /items/{id}` answers the same JSON.
/// It only serves the fill before the measured phase.
pub async fn start_origin() -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let body = bytes_of(item_body());
    let app = axum::Router::new().route(
        "/items/{id}",
        axum::routing::get(move || {
            let body = body.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
            }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

fn bytes_of(v: Vec<u8>) -> axum::body::Bytes {
    axum::body::Bytes::from(v)
}

/// Reads every cache id once through patternd, so the measured phase only sees hits.
pub async fn fill_cache(addr: SocketAddr, rule: &str) -> anyhow::Result<()> {
    fill_cache_of(addr, APP, rule).await
}

/// [`fill_cache`] of a rule of another app (the floors scenario's before and after engines).
pub async fn fill_cache_of(addr: SocketAddr, app: &str, rule: &str) -> anyhow::Result<()> {
    let prefix = format!("/v1/cache/{app}/{rule}/");
    each_id(addr, CACHE_IDS, move |i| {
        (
            "GET",
            format!("{prefix}{i:012}"),
            None,
            &[StatusCode::OK][..],
        )
    })
    .await
}

/// One decision for every id below `ids` on a rate-limit rule of `app` (ids as the load
/// generator writes them, 12 digits), so a measured phase finds every key created, and Redis'
/// tables grown to hold them. Keys made during a measured phase cost Redis more per call (the
/// creation, and the incremental rehash of a table that crossed a power of two while a side
/// measured), and they fell on whichever engine's keys were made second.
pub async fn fill_ratelimit_of(
    addr: SocketAddr,
    app: &str,
    rule: &str,
    ids: u64,
) -> anyhow::Result<()> {
    let path = format!("/v1/ratelimit/{app}/{rule}");
    // A rule with a limit of 1 denies from the second request on: both answers are fine.
    let ok = &[StatusCode::OK, StatusCode::TOO_MANY_REQUESTS][..];
    each_id(addr, ids, move |i| {
        let body = format!(r#"{{"id":"{i:012}","cost":1}}"#).into_bytes();
        ("POST", path.clone(), Some(body), ok)
    })
    .await
}

/// One request per id below `ids`, from 8 connections: `request(i)` gives its method, path,
/// body and the statuses that are fine.
async fn each_id<F>(addr: SocketAddr, ids: u64, request: F) -> anyhow::Result<()>
where
    F: Fn(u64) -> (&'static str, String, Option<Vec<u8>>, &'static [StatusCode])
        + Send
        + Sync
        + 'static,
{
    let next = Arc::new(AtomicU64::new(0));
    let request = Arc::new(request);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (next, request) = (next.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let client = procs::HttpClient::connect(addr).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ids {
                    return anyhow::Ok(());
                }
                let (method, path, body, ok) = request(i);
                let (status, answer) = client.send(method, &path, body).await?;
                if !ok.contains(&status) {
                    bail!(
                        "filling: {method} {path} answered {status}: {}",
                        String::from_utf8_lossy(&answer)
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("a fill task panicked")??;
    }
    Ok(())
}

/// Creates `SESSIONS` sessions and returns their read paths.
pub async fn create_sessions(addr: SocketAddr, rule: &str) -> anyhow::Result<Vec<Uri>> {
    let client = procs::HttpClient::connect(addr).await?;
    let mut paths = Vec::with_capacity(SESSIONS as usize);
    let create = format!("/v1/sessions/{APP}/{rule}");
    for i in 0..SESSIONS {
        let body = serde_json::json!({
            "user": format!("user-{i}"),
            "data": {"cart": i % 7, "locale": "en-GB", "theme": "dark"},
        });
        let (status, answer) = client
            .send("POST", &create, Some(body.to_string().into_bytes()))
            .await?;
        if status != StatusCode::CREATED {
            bail!(
                "creating a session: POST {create} answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&answer)?;
        let id = v["id"].as_str().context("the create answer has no id")?;
        paths.push(format!("{create}/{id}").parse()?);
    }
    Ok(paths)
}

/// A baseline driven from this process without HTTP: `clients` concurrent tasks calling `op`
/// until `requests` operations are done — the same shape as redis-benchmark (many clients,
/// one process), for operations it cannot express.
pub async fn raw_baseline<F, Fut>(
    label: String,
    redis_pid: &str,
    ticks: u64,
    clients: u64,
    requests: u64,
    op: F,
) -> anyhow::Result<Baseline>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let cpu0 = procs::cpu_ticks(redis_pid)?;
    let self0 = procs::cpu_ticks("self")?;
    let busy0 = procs::machine_busy_ticks()?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, op) = (next.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return anyhow::Ok(hist);
                }
                let t = Instant::now();
                op(i).await?;
                hist.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
        }));
    }
    let mut hist = Histogram::default();
    for t in tasks {
        hist.merge(&t.await.context("a baseline task panicked")??);
    }
    let elapsed = started.elapsed();
    let cpu1 = procs::cpu_ticks(redis_pid)?;
    let self1 = procs::cpu_ticks("self")?;
    let busy1 = procs::machine_busy_ticks()?;
    let secs = |t: u64| t as f64 / ticks as f64;
    let (redis, own) = (secs(cpu1 - cpu0), secs(self1 - self0));
    let others = (secs(busy1 - busy0) - redis - own).max(0.0);
    Ok(Baseline {
        command: label,
        rps: requests as f64 / elapsed.as_secs_f64(),
        p50_ms: Some(hist.quantile_us(0.50) as f64 / 1000.0),
        p99_ms: Some(hist.quantile_us(0.99) as f64 / 1000.0),
        redis_cpu_us: redis * 1e6 / requests as f64,
        client_cpu_us: own * 1e6 / requests as f64,
        other_util: others / elapsed.as_secs_f64() * 100.0,
    })
}

/// patternd's own runtime for the bench policy, in this process, on the bench's Redis: the
/// session, lock and queue baselines call exactly the scripts, keys and arguments the server uses,
/// minus HTTP.
pub struct InProcess {
    pub snapshot: patternd::snapshot::Snapshot,
    pub store: patternd::store::Store,
}

impl InProcess {
    pub fn new(policy_file: &std::path::Path, redis_url: &str) -> anyhow::Result<Self> {
        let sources = patternd::snapshot::Sources {
            policies: vec![policy_file.to_path_buf()],
            plugins: None,
            plugin_limits: patternd::plugin::Limits::default(),
        };
        let snapshot = patternd::snapshot::Snapshot::build(&sources)
            .map_err(|d| anyhow::anyhow!("the bench policy does not load in process:\n{d}"))?;
        let store = patternd::store::Store::new(&patternd::store::StoreConfig {
            target: patternd::store::connect::RedisTarget::plain(redis_url)?,
            pool_size: 2,
            command_timeout: Duration::from_secs(2),
            batch_max: 0,
        })?;
        Ok(Self { snapshot, store })
    }
}

/// Session ids out of their read paths (`…/{sid}`).
pub fn session_ids(paths: &[Uri]) -> Vec<String> {
    paths
        .iter()
        .filter_map(|p| p.path().rsplit('/').next().map(str::to_string))
        .collect()
}

/// How long the setup may take before the scenario is called failed.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
