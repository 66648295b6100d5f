//! The pub/sub scenario: fan-out latency of one channel to many subscribers, patternd's SSE
//! subscriptions (`GET /v1/pubsub/bench/fan/{channel}`, published with `POST` on the same
//! path) against Redis' own pub/sub (raw `SUBSCRIBE` connections receiving `PUBLISH`) on the
//! same Redis, measured the same way.
//!
//! Every subscriber is a raw TCP connection read by its own task with a minimal parser
//! (HTTP/1.1 chunked body + SSE lines on one side, RESP2 on the other), so the client-side
//! cost is alike on both sides and no extra task hop sits between the socket and the clock.
//! Each message carries its publish time from this program's monotonic clock; a delivery's
//! latency is the time of the socket read that completed it minus that. Messages are spaced
//! `--publish-interval` apart so each fan-out is measured on its own.
//!
//! Readiness: probe messages are published until every subscriber has seen one (on patternd
//! the first subscriber's Redis subscription and the others' joins are then certain).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use hyper::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::args::Args;
use crate::hist::Histogram;
use crate::measure::Pids;
use crate::patterns::APP;
use crate::procs;

/// The pub/sub rule of the benchmark policy.
pub const RULE: &str = "fan";
/// The channel both sides publish to (on Redis the baseline's own channel name).
const CHANNEL: &str = "room-1";
const PROBE: &[u8] = b"probe";
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long subscribers may take to connect and see a probe.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long after the last publish a subscriber may still deliver.
const DRAIN: Duration = Duration::from_secs(3);
/// Descriptors this program needs besides its subscribers (Redis, patternd, files).
const FD_HEADROOM: u64 = 256;

/// One side's figures.
pub struct Side {
    pub name: &'static str,
    pub subscribers: usize,
    pub messages: usize,
    /// Latency of every delivery (µs).
    pub latency: Histogram,
    /// Per message: the latency of its first subscriber (µs): the path through the server,
    /// before the subscribers' reads queue up behind each other on this program's thread(s).
    pub first: Histogram,
    /// Per message: the latency of its last subscriber (µs).
    pub last: Histogram,
    pub lost: u64,
    /// SSE `event: gap` / `event: dropped` seen (patternd only).
    pub gaps: u64,
    pub secs: f64,
    pub cpu_patternd: f64,
    pub cpu_redis: f64,
    pub cpu_loadgen: f64,
    pub cpu_other: f64,
}

impl Side {
    pub fn delivered(&self) -> u64 {
        self.latency.count()
    }

    fn expected(&self) -> u64 {
        (self.subscribers * self.messages) as u64
    }

    pub fn loss_share(&self) -> f64 {
        self.lost as f64 / self.expected().max(1) as f64
    }

    fn per_delivery_us(&self, cpu: f64) -> f64 {
        cpu * 1e6 / self.delivered().max(1) as f64
    }

    fn util(&self, cpu: f64) -> f64 {
        cpu / self.secs * 100.0
    }
}

pub struct PubSubResults {
    pub interval: Duration,
    pub sides: Vec<Side>,
}

/// The soft limit on open files from /proc/self/limits; `None` when unlimited or unreadable.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Whether this program may open `--subscribers` sockets (with a margin for the rest).
pub fn check_open_files(args: &Args) -> anyhow::Result<()> {
    // One side's subscribers are open at a time (each side closes its own before the next).
    if let Some(limit) = open_files_limit() {
        let need = args.subscribers as u64 + FD_HEADROOM;
        if limit < need {
            bail!(
                "{} subscribers need about {need} open files; the limit is {limit} (raise it with `ulimit -n {need}`)",
                args.subscribers
            );
        }
    }
    Ok(())
}

/// The baseline (Redis SUBSCRIBE) first, then patternd's SSE subscribers.
pub async fn run(
    args: &Args,
    pids: &Pids,
    redis_port: u16,
    addr: SocketAddr,
) -> anyhow::Result<PubSubResults> {
    let redis_addr = SocketAddr::from(([127, 0, 0, 1], redis_port));
    let client = redis::Client::open(format!("redis://127.0.0.1:{redis_port}/"))?;
    let con = client.get_multiplexed_async_connection().await?;
    eprintln!(
        "[pubsub] baseline: {} Redis SUBSCRIBE connections, {} PUBLISH {:?} apart …",
        args.subscribers, args.messages, args.publish_interval
    );
    let redis_side = measure_side(
        "Redis SUBSCRIBE",
        args,
        pids,
        |_| Box::pin(redis_subscriber(redis_addr)),
        |payload| {
            let mut con = con.clone();
            Box::pin(async move {
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(CHANNEL)
                    .arg(payload)
                    .query_async(&mut con)
                    .await?;
                Ok(())
            })
        },
    )
    .await?;

    eprintln!(
        "[pubsub] patternd: {} SSE subscribers, {} publishes {:?} apart …",
        args.subscribers, args.messages, args.publish_interval
    );
    let publisher = Arc::new(procs::HttpClient::connect(addr).await?);
    let path = format!("/v1/pubsub/{APP}/{RULE}/{CHANNEL}");
    let patternd_side = {
        let sub_path = path.clone();
        measure_side(
            "patternd SSE",
            args,
            pids,
            move |_| Box::pin(sse_subscriber(addr, sub_path.clone())),
            move |payload| {
                let (publisher, path) = (publisher.clone(), path.clone());
                Box::pin(async move {
                    let (status, body) = publisher.send("POST", &path, Some(payload)).await?;
                    if status != StatusCode::OK {
                        bail!(
                            "POST {path} answered {status}: {}",
                            String::from_utf8_lossy(&body)
                        );
                    }
                    Ok(())
                })
            },
        )
        .await?
    };
    Ok(PubSubResults {
        interval: args.publish_interval,
        sides: vec![redis_side, patternd_side],
    })
}

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send>>;

/// One subscription: the payloads it receives, each with the time its bytes were read.
trait Subscriber: Send {
    /// The next message (payload, read time), or `None` at the end of the stream.
    fn next(&mut self) -> BoxFutureRef<'_, Option<Msg>>;
}

type BoxFutureRef<'a, T> = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send + 'a>>;

enum Msg {
    Data(Vec<u8>, Instant),
    /// `event: gap` or `event: dropped`.
    Trouble,
}

/// What one subscriber task saw: per message, its latency in µs (`None` if lost).
struct Seen {
    latency: Vec<Option<u64>>,
    gaps: u64,
}

async fn measure_side(
    name: &'static str,
    args: &Args,
    pids: &Pids,
    connect: impl Fn(usize) -> BoxFuture<Box<dyn Subscriber>>,
    publish: impl Fn(Vec<u8>) -> BoxFuture<()>,
) -> anyhow::Result<Side> {
    let n = args.messages;
    let epoch = Instant::now();
    let ready = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);

    // One at a time: each waits for its subscription's confirmation (or the response head).
    let mut subs = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        subs.push(
            tokio::time::timeout(READY_TIMEOUT, connect(i))
                .await
                .with_context(|| format!("{name}: subscriber {i} did not connect"))?
                .with_context(|| format!("{name}: subscriber {i}"))?,
        );
    }
    let mut tasks = Vec::with_capacity(subs.len());
    for mut sub in subs {
        let (ready, done, mut stop) = (ready.clone(), done.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen {
                latency: vec![None; n],
                gaps: 0,
            };
            let mut probed = false;
            let mut got = 0;
            loop {
                let msg = tokio::select! {
                    m = sub.next() => m?,
                    _ = stop.changed() => break,
                };
                match msg {
                    None => break,
                    Some(Msg::Trouble) => seen.gaps += 1,
                    Some(Msg::Data(payload, at)) => {
                        if payload == PROBE {
                            if !probed {
                                probed = true;
                                ready.fetch_add(1, Ordering::Relaxed);
                            }
                            continue;
                        }
                        let (seq, sent_us) = parse_payload(&payload)?;
                        let at_us = at.duration_since(epoch).as_micros() as u64;
                        if let Some(slot) = seen.latency.get_mut(seq)
                            && slot.is_none()
                        {
                            *slot = Some(at_us.saturating_sub(sent_us));
                            got += 1;
                            if got == n {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
            anyhow::Ok(seen)
        }));
    }

    // Probes until every subscriber has seen one.
    let start = Instant::now();
    while ready.load(Ordering::Relaxed) < args.subscribers {
        if start.elapsed() > READY_TIMEOUT {
            bail!(
                "{name}: only {} of {} subscribers received a probe within {READY_TIMEOUT:?}",
                ready.load(Ordering::Relaxed),
                args.subscribers
            );
        }
        publish(PROBE.to_vec()).await?;
        tokio::time::sleep(PROBE_EVERY).await;
    }
    // Probes still in flight are delivered before the measured messages.
    tokio::time::sleep(PROBE_EVERY).await;

    let cpu = CpuSample::take(pids)?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(args.publish_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 0..n {
        tick.tick().await;
        let sent_us = epoch.elapsed().as_micros() as u64;
        publish(format!("{seq} {sent_us}").into_bytes()).await?;
    }
    let last_publish = Instant::now();
    while done.load(Ordering::Relaxed) < args.subscribers && last_publish.elapsed() < DRAIN {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu.since(pids)?;
    let _ = stop_tx.send(true);

    let mut latency = Histogram::default();
    let mut last_of = vec![None::<u64>; n];
    let mut first_of = vec![None::<u64>; n];
    let (mut lost, mut gaps) = (0, 0);
    for t in tasks {
        let seen = t
            .await
            .map_err(|e| anyhow!("{name}: a subscriber task failed: {e}"))??;
        gaps += seen.gaps;
        for (seq, l) in seen.latency.into_iter().enumerate() {
            match l {
                Some(us) => {
                    latency.record(us);
                    last_of[seq] = Some(last_of[seq].map_or(us, |m| m.max(us)));
                    first_of[seq] = Some(first_of[seq].map_or(us, |m| m.min(us)));
                }
                None => lost += 1,
            }
        }
    }
    let (mut first, mut last) = (Histogram::default(), Histogram::default());
    for us in last_of.into_iter().flatten() {
        last.record(us);
    }
    for us in first_of.into_iter().flatten() {
        first.record(us);
    }
    Ok(Side {
        name,
        subscribers: args.subscribers,
        messages: n,
        latency,
        first,
        last,
        lost,
        gaps,
        secs,
        cpu_patternd: cpu.0,
        cpu_redis: cpu.1,
        cpu_loadgen: cpu.2,
        cpu_other: cpu.3,
    })
}

/// `"{seq} {publish µs}"`.
fn parse_payload(p: &[u8]) -> anyhow::Result<(usize, u64)> {
    let s = std::str::from_utf8(p)?;
    let (seq, us) = s
        .split_once(' ')
        .with_context(|| format!("unexpected message `{s}`"))?;
    Ok((seq.parse()?, us.parse()?))
}

/// CPU ticks of patternd, Redis, this program and the machine.
struct CpuSample([u64; 4]);

impl CpuSample {
    fn take(pids: &Pids) -> anyhow::Result<Self> {
        Ok(Self([
            procs::cpu_ticks(&pids.patternd)?,
            procs::cpu_ticks(&pids.redis)?,
            procs::cpu_ticks("self")?,
            procs::machine_busy_ticks()?,
        ]))
    }

    /// CPU seconds (patternd, Redis, this program, everything else) since `self`.
    fn since(&self, pids: &Pids) -> anyhow::Result<(f64, f64, f64, f64)> {
        let now = Self::take(pids)?;
        let d = |i: usize| now.0[i].saturating_sub(self.0[i]) as f64 / pids.ticks as f64;
        let other = (d(3) - d(0) - d(1) - d(2)).max(0.0);
        Ok((d(0), d(1), d(2), other))
    }
}

/// A socket with a read buffer that remembers when its last bytes arrived.
struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    last_read: Instant,
}

impl Reader {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            last_read: Instant::now(),
        }
    }

    /// Reads more bytes; `false` at the end of the stream.
    async fn fill(&mut self) -> anyhow::Result<bool> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut chunk = [0u8; 8192];
        let got = self.stream.read(&mut chunk).await?;
        self.last_read = Instant::now();
        self.buf.extend_from_slice(&chunk[..got]);
        Ok(got > 0)
    }

    /// One line without its `\r\n` or `\n`; `None` at the end of the stream.
    async fn line(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                let mut line = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    async fn exact(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        while self.buf.len() - self.pos < n {
            if !self.fill().await? {
                bail!("the connection closed");
            }
        }
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(out)
    }
}

/// A raw RESP2 `SUBSCRIBE` connection.
struct RedisSub(Reader);

async fn redis_subscriber(addr: SocketAddr) -> anyhow::Result<Box<dyn Subscriber>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let cmd = format!(
        "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{CHANNEL}\r\n",
        CHANNEL.len()
    );
    stream.write_all(cmd.as_bytes()).await?;
    let mut r = RedisSub(Reader::new(stream));
    let confirm = r.array().await?.context("closed before subscribing")?;
    if confirm.first().map(Vec::as_slice) != Some(b"subscribe") {
        bail!("SUBSCRIBE answered {confirm:?}");
    }
    Ok(Box::new(r))
}

impl RedisSub {
    /// One array of bulk strings or integers (as text).
    async fn array(&mut self) -> anyhow::Result<Option<Vec<Vec<u8>>>> {
        let Some(head) = self.0.line().await? else {
            return Ok(None);
        };
        let n: usize = match head.split_first() {
            Some((b'*', n)) => std::str::from_utf8(n)?.parse()?,
            _ => bail!("unexpected RESP `{}`", String::from_utf8_lossy(&head)),
        };
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let item = self.0.line().await?.context("closed mid-reply")?;
            match item.split_first() {
                Some((b'$', len)) => {
                    let len: usize = std::str::from_utf8(len)?.parse()?;
                    let v = self.0.exact(len + 2).await?;
                    out.push(v[..len].to_vec());
                }
                Some((b':', v)) => out.push(v.to_vec()),
                _ => bail!("unexpected RESP `{}`", String::from_utf8_lossy(&item)),
            }
        }
        Ok(Some(out))
    }
}

impl Subscriber for RedisSub {
    fn next(&mut self) -> BoxFutureRef<'_, Option<Msg>> {
        Box::pin(async move {
            loop {
                let Some(mut a) = self.array().await? else {
                    return Ok(None);
                };
                if a.len() == 3 && a[0] == b"message" {
                    let payload = a.pop().unwrap_or_default();
                    return Ok(Some(Msg::Data(payload, self.0.last_read)));
                }
            }
        })
    }
}

/// An SSE subscription over HTTP/1.1: the chunked body decoded, then SSE lines.
struct SseSub {
    r: Reader,
    /// Decoded body bytes not yet split into lines.
    body: Vec<u8>,
    kind: Option<Vec<u8>>,
    data: Option<Vec<u8>>,
}

async fn sse_subscriber(addr: SocketAddr, path: String) -> anyhow::Result<Box<dyn Subscriber>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut r = Reader::new(stream);
    let status = r.line().await?.context("closed before answering")?;
    if !status.starts_with(b"HTTP/1.1 200") {
        bail!("GET {path} answered `{}`", String::from_utf8_lossy(&status));
    }
    let mut chunked = false;
    loop {
        let h = r.line().await?.context("closed in the headers")?;
        if h.is_empty() {
            break;
        }
        let h = String::from_utf8_lossy(&h).to_ascii_lowercase();
        if h.starts_with("transfer-encoding:") && h.contains("chunked") {
            chunked = true;
        }
    }
    if !chunked {
        bail!("GET {path}: the event stream is not chunked");
    }
    Ok(Box::new(SseSub {
        r,
        body: Vec::new(),
        kind: None,
        data: None,
    }))
}

impl SseSub {
    /// More body bytes from the next chunk; `false` at the end.
    async fn chunk(&mut self) -> anyhow::Result<bool> {
        let Some(size) = self.r.line().await? else {
            return Ok(false);
        };
        let size = String::from_utf8_lossy(&size);
        let size = size.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size, 16).with_context(|| format!("chunk size `{size}`"))?;
        if size == 0 {
            return Ok(false);
        }
        let data = self.r.exact(size + 2).await?;
        self.body.extend_from_slice(&data[..size]);
        Ok(true)
    }
}

impl Subscriber for SseSub {
    fn next(&mut self) -> BoxFutureRef<'_, Option<Msg>> {
        Box::pin(async move {
            loop {
                let Some(i) = self.body.iter().position(|&b| b == b'\n') else {
                    if !self.chunk().await? {
                        return Ok(None);
                    }
                    continue;
                };
                let line: Vec<u8> = self.body.drain(..=i).take(i).collect();
                if line.is_empty() {
                    // The end of an event.
                    let kind = self.kind.take();
                    let data = self.data.take();
                    match kind.as_deref() {
                        None => {
                            if let Some(d) = data {
                                return Ok(Some(Msg::Data(d, self.r.last_read)));
                            }
                        }
                        Some(b"gap") | Some(b"dropped") => return Ok(Some(Msg::Trouble)),
                        Some(_) => {}
                    }
                } else if let Some(v) = line.strip_prefix(b"data: ") {
                    match &mut self.data {
                        Some(d) => {
                            d.push(b'\n');
                            d.extend_from_slice(v);
                        }
                        None => self.data = Some(v.to_vec()),
                    }
                } else if let Some(v) = line.strip_prefix(b"event: ") {
                    self.kind = Some(v.to_vec());
                }
                // Comments (heartbeats) and other fields are skipped.
            }
        })
    }
}

/// The scenario's table: Redis' own fan-out against patternd's.
pub fn print(p: &PubSubResults) {
    let Some(first) = p.sides.first() else {
        return;
    };
    println!(
        "pubsub: one channel, {} subscribers, {} messages published {:?} apart, each carrying its publish time;",
        first.subscribers, first.messages, p.interval
    );
    println!(
        "        latency = read of the delivery on the subscriber's socket − publish call start (PUBLISH on a multiplexed"
    );
    println!(
        "        redis-rs connection; patternd: POST on a keep-alive HTTP/1.1 connection). Subscribers: raw TCP, one task each,"
    );
    println!(
        "        read in turn by this program's thread(s): later subscribers wait for the reads before them (the first"
    );
    println!(
        "        subscriber's latency is the server's path alone; see the load generator's CPU per delivery)"
    );
    println!();
    let each = |f: &dyn Fn(&Side) -> String| p.sides.iter().map(f).collect::<Vec<_>>();
    let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
    crate::row("", each(&|s| s.name.to_string()));
    crate::row(
        "deliveries received / expected",
        each(&|s| format!("{} / {}", s.delivered(), s.expected())),
    );
    crate::row("deliveries lost", each(&|s| s.lost.to_string()));
    crate::row(
        "fan-out latency p50 / p99 (ms)",
        each(&|s| {
            format!(
                "{} / {}",
                ms(s.latency.quantile_us(0.50)),
                ms(s.latency.quantile_us(0.99))
            )
        }),
    );
    crate::row(
        "fan-out latency max (ms)",
        each(&|s| ms(s.latency.max_us())),
    );
    crate::row(
        "first subscriber per message p50 / p99 (ms)",
        each(&|s| {
            format!(
                "{} / {}",
                ms(s.first.quantile_us(0.50)),
                ms(s.first.quantile_us(0.99))
            )
        }),
    );
    crate::row(
        "last subscriber per message p50 / p99 (ms)",
        each(&|s| {
            format!(
                "{} / {}",
                ms(s.last.quantile_us(0.50)),
                ms(s.last.quantile_us(0.99))
            )
        }),
    );
    crate::row(
        "patternd CPU per delivery (µs)",
        each(&|s| {
            if s.name.starts_with("patternd") {
                format!("{:.2}", s.per_delivery_us(s.cpu_patternd))
            } else {
                "-".to_string()
            }
        }),
    );
    crate::row(
        "Redis CPU per delivery (µs)",
        each(&|s| format!("{:.2}", s.per_delivery_us(s.cpu_redis))),
    );
    crate::row(
        "load generator CPU per delivery (µs)",
        each(&|s| format!("{:.2}", s.per_delivery_us(s.cpu_loadgen))),
    );
    crate::row(
        "CPU patternd / Redis / loadgen (%core)",
        each(&|s| {
            format!(
                "{:.0} / {:.0} / {:.0}",
                s.util(s.cpu_patternd),
                s.util(s.cpu_redis),
                s.util(s.cpu_loadgen)
            )
        }),
    );
    crate::row(
        "other processes' CPU (%core)",
        each(&|s| format!("{:.0}", s.util(s.cpu_other))),
    );
    crate::row("SSE gap / dropped events", each(&|s| s.gaps.to_string()));
    println!();
    crate::row("goals", Vec::new());
    crate::row(
        "  (issue 13 asks for the figures; no goal)",
        each(&|_| "n/a".to_string()),
    );
}
