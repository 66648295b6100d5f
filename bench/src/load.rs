//! The HTTP load generator: N keep-alive HTTP/1.1 connections, one task each, every task
//! sending its next request as soon as the previous answer is read (closed loop, no
//! pipelining), or, with a target rate, on a fixed schedule (open loop: latency then shows
//! the service time at that load instead of the queueing that a saturating closed loop
//! builds up, which is roughly connections / throughput). It shares two cores with Redis and
//! patternd, so it is kept lean: a fixed body template rewritten in place, no JSON encoding or
//! decoding, statuses counted, bodies drained without being collected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;

use crate::hist::Histogram;

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const DONE: u8 = 2;

/// The request body; the 12 zeros are overwritten with each request's id. Twelve digits, like
/// redis-benchmark's `__rand_int__`, so both sides touch exactly the same Redis keys.
const BODY: &[u8; 30] = br#"{"id":"000000000000","cost":1}"#;
const ID_AT: std::ops::Range<usize> = 7..19;

/// A connection that fails this many times in a row (connect or request) ends its task.
const MAX_CONSECUTIVE_FAILURES: u32 = 20;

/// What one operation of the load is.
#[derive(Clone)]
pub enum Shape {
    /// POST `uri` with the JSON body template carrying a random id (rate-limit decisions).
    PostId,
    /// GET `uri` followed by a random 12-digit id (cache reads).
    GetId,
    /// PUT `uri` followed by a random 12-digit id, with this JSON value (cache writes). The
    /// write's 204 counts as its success.
    PutId(Bytes),
    /// GET one of these paths, picked at random (session reads).
    GetOneOf(Arc<Vec<Uri>>),
    /// POST `uri` + a random id acquires (the answer's JSON carries `"token"`), then DELETE on
    /// the same path with `{"token": …}` releases: one operation, timed as a whole. A 409 on
    /// acquire (another connection holds that id) counts as denied.
    LockCycle,
    /// `batch` pushes (POST `uri`, 201), one pop of up to `batch` jobs (POST `pop`, which
    /// carries `?count=`), then an ack of each popped job with its receipt (204): one
    /// operation, timed as a whole, that completes as many cycles as it acked. A pop that
    /// finds nothing (it cannot, while every connection pushes before it pops) counts as
    /// denied.
    QueueCycle { batch: u64, pop: Uri },
    /// POST `uri` with `{"item": "<random 12-digit id>"}` (a counter add).
    PostItem,
    /// POST `uri` with `{"member": <random id>, "score": 1<6 random digits>}`: a leaderboard
    /// submit (a whole number below 2^32, as `ties: first` takes).
    Submit,
}

/// The body of a counter add; the 12 zeros are overwritten with each request's item, the
/// same ids redis-benchmark's `__rand_int__` gives the baseline's PFADD.
const ITEM_BODY: &[u8; 23] = br#"{"item":"000000000000"}"#;
const ITEM_AT: std::ops::Range<usize> = 9..21;

/// The submit body; the 12 zeros are the member, the 6 after `1` the score.
const SUBMIT: &[u8; 41] = br#"{"member":"000000000000","score":1000000}"#;
const MEMBER_AT: std::ops::Range<usize> = 11..23;
const SCORE_AT: std::ops::Range<usize> = 34..40;

/// The job every queue cycle pushes: a small payload, like an order reference. It holds no
/// `"id"` or `"receipt"` field, so the pop answer's are found by a plain scan.
const QUEUE_PUSH: &[u8] = br#"{"payload":{"order":"bench-000042","sku":"A-1"}}"#;

pub struct Target {
    pub addr: SocketAddr,
    pub uri: Uri,
    pub shape: Shape,
    pub host: HeaderValue,
    /// Sent with every request, after Host and Content-Type (the plugin rules read a tier
    /// header).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Target {
    pub fn new(addr: SocketAddr, path: &str) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            uri: path.parse().with_context(|| format!("bad path {path}"))?,
            shape: Shape::PostId,
            host: HeaderValue::from_str(&addr.to_string())?,
            headers: Vec::new(),
        })
    }

    pub fn with_shape(mut self, shape: Shape) -> Self {
        self.shape = shape;
        self
    }

    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
        self
    }

    fn request(&self, method: Method, uri: Uri, body: Bytes) -> Request<Full<Bytes>> {
        let json = !body.is_empty();
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        if json {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in &self.headers {
            h.insert(name.clone(), value.clone());
        }
        req
    }

    /// `uri` with a 12-digit id appended.
    fn uri_with_id(&self, id: u64) -> anyhow::Result<Uri> {
        let mut digits = [0u8; 12];
        write_id(&mut digits, id);
        let mut p = String::with_capacity(self.uri.path().len() + 13);
        p.push_str(self.uri.path());
        p.push_str(std::str::from_utf8(&digits)?);
        Ok(p.parse()?)
    }
}

/// The answer to one operation: a status to count with how many cycles it completed (one,
/// but a queue batch completes several), or a transport failure.
enum Answer {
    Status(StatusCode, Bytes, u64),
    Failed(anyhow::Error),
}

/// A 204 (a write, a release) counted as the success the figures count, 200.
fn no_content_as_ok(status: StatusCode) -> StatusCode {
    if status == StatusCode::NO_CONTENT {
        StatusCode::OK
    } else {
        status
    }
}

/// Runs one operation of `target`'s shape.
async fn operation(
    target: &Target,
    sender: &mut SendRequest<Full<Bytes>>,
    rng: &mut u64,
    keyspace: u64,
    body: &mut [u8; 30],
) -> Answer {
    let id = next_random(rng) % keyspace;
    let result = async {
        match &target.shape {
            Shape::PostId => {
                write_id(&mut body[ID_AT], id);
                let req = target.request(
                    Method::POST,
                    target.uri.clone(),
                    Bytes::copy_from_slice(&body[..]),
                );
                one(exchange(sender, req, false).await)
            }
            Shape::GetId => {
                let req = target.request(Method::GET, target.uri_with_id(id)?, Bytes::new());
                one(exchange(sender, req, false).await)
            }
            Shape::PutId(value) => {
                let req = target.request(Method::PUT, target.uri_with_id(id)?, value.clone());
                let (status, answer) = exchange(sender, req, false).await?;
                Ok((no_content_as_ok(status), answer, 1))
            }
            Shape::GetOneOf(paths) => {
                let i = usize::try_from(id % paths.len().max(1) as u64).unwrap_or(0);
                let uri = paths.get(i).cloned().context("no paths to GET")?;
                let req = target.request(Method::GET, uri, Bytes::new());
                one(exchange(sender, req, false).await)
            }
            Shape::LockCycle => {
                let uri = target.uri_with_id(id)?;
                let req = target.request(Method::POST, uri.clone(), Bytes::from_static(b"{}"));
                let (status, answer) = exchange(sender, req, true).await?;
                if status != StatusCode::OK {
                    // 409: held by another connection; the cycle ends here, as a denial.
                    let status = if status == StatusCode::CONFLICT {
                        StatusCode::TOO_MANY_REQUESTS
                    } else {
                        status
                    };
                    return Ok((status, answer, 1));
                }
                let token = strings_of(&answer, "token")
                    .first()
                    .map(|t| t.to_string())
                    .context("the acquire answer has no token")?;
                let release = format!("{{\"token\":\"{token}\"}}");
                let req = target.request(Method::DELETE, uri, Bytes::from(release));
                let (status, answer) = exchange(sender, req, false).await?;
                // A release answers 200 or 204; both count as the cycle's success.
                Ok((no_content_as_ok(status), answer, 1))
            }
            Shape::QueueCycle { batch, pop } => queue_cycle(target, sender, *batch, pop).await,
            Shape::PostItem => {
                let mut item = *ITEM_BODY;
                write_id(&mut item[ITEM_AT], id);
                let req = target.request(
                    Method::POST,
                    target.uri.clone(),
                    Bytes::copy_from_slice(&item[..]),
                );
                one(exchange(sender, req, false).await)
            }
            Shape::Submit => {
                let mut b = *SUBMIT;
                write_id(&mut b[MEMBER_AT], id);
                let mut score = [0u8; 12];
                write_id(&mut score, next_random(rng));
                b[SCORE_AT].copy_from_slice(&score[6..]);
                let req =
                    target.request(Method::POST, target.uri.clone(), Bytes::copy_from_slice(&b));
                one(exchange(sender, req, false).await)
            }
        }
    }
    .await;
    match result {
        Ok((status, body, cycles)) => Answer::Status(status, body, cycles),
        Err(e) => Answer::Failed(e),
    }
}

/// An exchange that completes one cycle.
fn one(r: anyhow::Result<(StatusCode, Bytes)>) -> anyhow::Result<(StatusCode, Bytes, u64)> {
    r.map(|(status, body)| (status, body, 1))
}

/// [`Shape::QueueCycle`]: push `batch` jobs, pop up to `batch`, ack each popped one. Answers
/// 200 with the number of jobs acked, 429 for an empty pop, or the first unexpected answer.
async fn queue_cycle(
    target: &Target,
    sender: &mut SendRequest<Full<Bytes>>,
    batch: u64,
    pop: &Uri,
) -> anyhow::Result<(StatusCode, Bytes, u64)> {
    for _ in 0..batch {
        let req = target.request(
            Method::POST,
            target.uri.clone(),
            Bytes::from_static(QUEUE_PUSH),
        );
        let (status, answer) = exchange(sender, req, false).await?;
        if status != StatusCode::CREATED {
            return Ok((status, answer, 0));
        }
    }
    let req = target.request(Method::POST, pop.clone(), Bytes::new());
    let (status, answer) = exchange(sender, req, true).await?;
    if status != StatusCode::OK {
        return Ok((status, answer, 0));
    }
    let ids = strings_of(&answer, "id");
    let receipts = strings_of(&answer, "receipt");
    if ids.len() != receipts.len() {
        anyhow::bail!(
            "a pop answer with {} ids and {} receipts: {}",
            ids.len(),
            receipts.len(),
            String::from_utf8_lossy(&answer)
        );
    }
    if ids.is_empty() {
        return Ok((StatusCode::TOO_MANY_REQUESTS, answer, 1));
    }
    let base = target.uri.path();
    for (id, receipt) in ids.iter().zip(&receipts) {
        let uri: Uri = format!("{base}/jobs/{id}/_ack").parse()?;
        let ack = format!("{{\"receipt\":\"{receipt}\"}}");
        let req = target.request(Method::POST, uri, Bytes::from(ack));
        let (status, answer) = exchange(sender, req, false).await?;
        if status != StatusCode::NO_CONTENT {
            return Ok((status, answer, 0));
        }
    }
    Ok((StatusCode::OK, Bytes::new(), ids.len() as u64))
}

/// Every string value of `"field":"…"` in a JSON answer, in order, found without a JSON
/// parser (job ids and receipts are URL-safe tokens: no escapes).
fn strings_of<'a>(body: &'a [u8], field: &str) -> Vec<&'a str> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Vec::new();
    };
    let needle = format!("\"{field}\":\"");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(&needle) {
        let value = &rest[at + needle.len()..];
        let Some(len) = value.find('"') else {
            break;
        };
        out.push(&value[..len]);
        rest = &value[len..];
    }
    out
}

/// What the connections saw during the measured phase.
#[derive(Clone, Default)]
pub struct Stats {
    pub latency: Histogram,
    pub allowed: u64,
    pub denied: u64,
    /// Answers other than 200 and 429.
    pub bad_status: u64,
    /// Requests that got no answer (connection refused, reset, closed).
    pub transport_errors: u64,
    /// The first unexpected answer or failure, to show the user.
    pub first_error: Option<String>,
}

impl Stats {
    pub fn decisions(&self) -> u64 {
        self.allowed + self.denied
    }

    pub fn errors(&self) -> u64 {
        self.bad_status + self.transport_errors
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }

    pub fn merge(&mut self, o: Stats) {
        self.latency.merge(&o.latency);
        self.allowed += o.allowed;
        self.denied += o.denied;
        self.bad_status += o.bad_status;
        self.transport_errors += o.transport_errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

pub struct Outcome<T> {
    pub stats: Stats,
    /// Wall time of the measured phase.
    pub elapsed: Duration,
    /// `probe()` at the start and at the end of the measured phase.
    pub probes: (T, T),
}

/// Warms up, then measures for `duration`, calling `probe` (CPU readings) right at both edges
/// of the measured phase. Only answers that arrive inside the phase are counted.
pub async fn run<T>(
    target: Arc<Target>,
    connections: usize,
    keyspace: u64,
    warmup: Duration,
    duration: Duration,
    rate: Option<f64>,
    probe: impl Fn() -> anyhow::Result<T>,
) -> anyhow::Result<Outcome<T>> {
    let phase = Arc::new(AtomicU8::new(WARMUP));
    // Open loop: each connection sends every `connections / rate` seconds, the connections
    // staggered evenly so the requests do not leave in bursts.
    let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
    let now = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let (target, phase) = (target.clone(), phase.clone());
            // Distinct, non-zero seeds per connection.
            let seed = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1);
            let pace = interval.map(|iv| Pace {
                interval: iv,
                next: now + iv.mul_f64(i as f64 / connections as f64),
            });
            tokio::spawn(connection(target, keyspace, seed, phase, pace))
        })
        .collect();

    tokio::time::sleep(warmup).await;
    let first = probe()?;
    let started = Instant::now();
    phase.store(MEASURE, Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    phase.store(DONE, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let last = probe()?;

    let mut stats = Stats::default();
    for t in tasks {
        stats.merge(t.await.context("a load task panicked")?);
    }
    Ok(Outcome {
        stats,
        elapsed,
        probes: (first, last),
    })
}

async fn connect(target: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(target.addr).await?;
    // Small request/answer ping-pong: Nagle would add delay, not save packets.
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes; errors surface on the sender.
        let _ = conn.await;
    });
    Ok(sender)
}

/// The send schedule of one connection in open-loop mode.
struct Pace {
    interval: Duration,
    next: Instant,
}

/// One keep-alive connection's loop. Reconnects after a failure, so a server hiccup shows as
/// counted errors rather than a silently idle connection.
async fn connection(
    target: Arc<Target>,
    keyspace: u64,
    seed: u64,
    phase: Arc<AtomicU8>,
    mut pace: Option<Pace>,
) -> Stats {
    let mut stats = Stats::default();
    let mut rng = seed;
    let mut body = *BODY;
    let mut failures = 0u32;
    'connect: while phase.load(Ordering::Relaxed) != DONE {
        let mut sender = match connect(&target).await {
            Ok(s) => s,
            Err(e) => {
                if phase.load(Ordering::Relaxed) == MEASURE {
                    stats.transport_errors += 1;
                }
                stats.note(|| format!("connect: {e:#}"));
                failures += 1;
                if failures >= MAX_CONSECUTIVE_FAILURES {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while phase.load(Ordering::Relaxed) != DONE {
            if let Some(p) = &mut pace {
                // Behind schedule (a slow answer), this sends at once and catches up; the
                // report compares the achieved rate with the target, so falling behind shows.
                tokio::time::sleep_until(p.next.into()).await;
                p.next += p.interval;
                if phase.load(Ordering::Relaxed) == DONE {
                    break;
                }
            }
            let started = Instant::now();
            let answer = operation(&target, &mut sender, &mut rng, keyspace, &mut body).await;
            let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let measuring = phase.load(Ordering::Relaxed) == MEASURE;
            match answer {
                Answer::Status(status, _, cycles)
                    if status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS =>
                {
                    failures = 0;
                    if measuring {
                        stats.latency.record(us);
                        if status == StatusCode::OK {
                            stats.allowed += cycles;
                        } else {
                            stats.denied += cycles;
                        }
                    }
                }
                Answer::Status(status, body, _) => {
                    if measuring {
                        stats.bad_status += 1;
                    }
                    stats.note(|| format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
                }
                Answer::Failed(e) => {
                    if measuring {
                        stats.transport_errors += 1;
                    }
                    stats.note(|| format!("request: {e:#}"));
                    failures += 1;
                    if failures >= MAX_CONSECUTIVE_FAILURES {
                        break 'connect;
                    }
                    continue 'connect;
                }
            }
        }
    }
    stats
}

/// Sends one request and reads the whole answer. The body is only kept for unexpected
/// statuses (to show the error); expected ones are drained frame by frame.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
    keep_body: bool,
) -> anyhow::Result<(StatusCode, Bytes)> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !keep_body && (status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS) {
        while let Some(frame) = body.frame().await {
            frame?;
        }
        Ok((status, Bytes::new()))
    } else {
        Ok((status, body.collect().await?.to_bytes()))
    }
}

/// xorshift64*: plenty for spreading ids, and free of a rand dependency.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Writes `n` as zero-padded decimal digits filling `dst`.
fn write_id(dst: &mut [u8], mut n: u64) {
    for b in dst.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_template_holds_a_member_and_a_score() {
        let mut b = *SUBMIT;
        write_id(&mut b[MEMBER_AT], 42);
        write_id(&mut b[SCORE_AT], 7);
        let v: serde_json::Value = serde_json::from_slice(&b).expect("JSON");
        assert_eq!(v["member"], "000000000042");
        assert_eq!(v["score"], 1_000_007);
    }

    #[test]
    fn body_template_holds_a_twelve_digit_id() {
        let mut body = *BODY;
        write_id(&mut body[ID_AT], 42);
        assert_eq!(&body[..], br#"{"id":"000000000042","cost":1}"#);
    }

    #[test]
    fn finds_the_token() {
        assert_eq!(
            strings_of(br#"{"token":"abc_-1","fence":3}"#, "token"),
            vec!["abc_-1"]
        );
        assert!(strings_of(br#"{"fence":3}"#, "token").is_empty());
    }

    #[test]
    fn pushes_the_payload_of_the_in_process_baseline() -> anyhow::Result<()> {
        let body: serde_json::Value = serde_json::from_slice(QUEUE_PUSH)?;
        assert_eq!(body["payload"], crate::patterns::queue_payload());
        Ok(())
    }

    #[test]
    fn finds_every_job_of_a_pop() {
        let answer = br#"{"jobs":[{"attempts":1,"id":"AAA","payload":{"order":"x"},"priority":0,"receipt":"r1"},{"attempts":1,"id":"BBB","payload":{},"priority":0,"receipt":"r2"}],"visibility_ms":30000}"#;
        assert_eq!(strings_of(answer, "id"), vec!["AAA", "BBB"]);
        assert_eq!(strings_of(answer, "receipt"), vec!["r1", "r2"]);
        assert!(strings_of(br#"{"jobs":[],"visibility_ms":30000}"#, "id").is_empty());
    }

    #[test]
    fn random_ids_cover_the_space() {
        let mut rng = 1;
        let mut seen = [false; 100];
        for _ in 0..10_000 {
            seen[(next_random(&mut rng) % 100) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
