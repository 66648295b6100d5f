//! A real origin HTTP server for the cache tests, run inside the test process.
//!
//! It serves `GET /items/{id}` from an in-memory map and accepts `PUT`/`PATCH`/`DELETE` on the
//! same path, counting every request per id, so tests can prove how often patternd reached the
//! origin. It can be made to fail (any status), to be slow, to hold writes until the test
//! releases them, and to go down entirely (its listener closed, so connections are refused)
//! and come back on the same port. Every request is logged with the path as it arrived, also
//! those outside `/items/` (answered 404), so tests can prove where patternd's requests went.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use tokio::task::JoinHandle;

/// One stored item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub content_type: String,
    pub body: Vec<u8>,
    /// Sent back as `Cache-Tag: a, b` on GET.
    pub tags: Vec<String>,
}

/// A write the origin received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub method: String,
    pub id: String,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
}

#[derive(Default)]
struct Inner {
    items: HashMap<String, Item>,
    /// Requests by (method, id), successful or not.
    hits: HashMap<(String, String), u64>,
    /// Writes that were accepted (2xx), in arrival order.
    writes: Vec<Write>,
    /// Answer every request with this status instead (`None`: behave).
    fail_status: Option<u16>,
    /// Answer writes only with this status (`None`: accept them).
    fail_writes: Option<u16>,
    /// Sleep this long before answering.
    delay: Duration,
    /// GET only: read the item when the request arrives, then sleep this long before
    /// answering with what was read (a slow origin whose answer predates later writes).
    get_delay: Duration,
    /// The header GET answers carry an item's tags in (`None`: `Cache-Tag`).
    tag_header: Option<String>,
    /// Extra header fields GET answers for an id carry (found or not), e.g. `Cache-Control`.
    headers: HashMap<String, Vec<(String, String)>>,
    /// Every request as (method, path as received, still percent-encoded), in arrival order.
    requests: Vec<(String, String)>,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    /// `true` while writes are held: a write that arrives waits (counted and logged) until
    /// it turns `false`.
    hold: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            hold: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }
}

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }
}

/// The origin server. Dropping it stops it.
pub struct Origin {
    addr: SocketAddr,
    shared: Shared,
    task: Option<JoinHandle<()>>,
    /// Closes the open connections of the current listener on `stop`.
    kill: Kill,
}

impl Origin {
    /// Starts on a free loopback port.
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the origin")?;
        let addr = listener.local_addr()?;
        let shared = Shared::default();
        let kill = Kill::default();
        let task = Some(serve(listener, shared.clone(), kill.clone()));
        Ok(Self {
            addr,
            shared,
            task,
            kill,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The `origin:` template for a policy: `http://127.0.0.1:PORT/items/{id}`.
    pub fn template(&self) -> String {
        format!("http://{}/items/{{id}}", self.addr)
    }

    /// Stores (or replaces) an item.
    pub fn set(&self, id: &str, content_type: &str, body: &[u8], tags: &[&str]) {
        self.shared.with(|i| {
            i.items.insert(
                id.to_string(),
                Item {
                    content_type: content_type.to_string(),
                    body: body.to_vec(),
                    tags: tags.iter().map(|t| t.to_string()).collect(),
                },
            )
        });
    }

    pub fn item(&self, id: &str) -> Option<Item> {
        self.shared.with(|i| i.items.get(id).cloned())
    }

    pub fn remove(&self, id: &str) {
        self.shared.with(|i| i.items.remove(id));
    }

    /// GET requests that reached the origin for `id` (answered or failed).
    pub fn gets(&self, id: &str) -> u64 {
        self.hits("GET", id)
    }

    /// Requests with `method` that reached the origin for `id`.
    pub fn hits(&self, method: &str, id: &str) -> u64 {
        self.shared.with(|i| {
            i.hits
                .get(&(method.to_string(), id.to_string()))
                .copied()
                .unwrap_or(0)
        })
    }

    /// Every accepted write, in arrival order.
    pub fn writes(&self) -> Vec<Write> {
        self.shared.with(|i| i.writes.clone())
    }

    /// Answer everything with `status` (e.g. 500), or behave again with `None`.
    pub fn fail_with(&self, status: Option<u16>) {
        self.shared.with(|i| i.fail_status = status);
    }

    /// Refuse writes with `status`, or accept them again with `None`.
    pub fn fail_writes_with(&self, status: Option<u16>) {
        self.shared.with(|i| i.fail_writes = status);
    }

    /// GETs read the item on arrival and answer it after `d` (writes are not delayed): a fill
    /// in flight during this time carries the item as it was before any write meanwhile.
    pub fn set_get_delay(&self, d: Duration) {
        self.shared.with(|i| i.get_delay = d);
    }

    /// GET answers for `id` (200 or 404) carry these header fields from now on, replacing
    /// those set before (e.g. `Cache-Control: max-age=5`, `Age: 3`).
    pub fn set_headers(&self, id: &str, headers: &[(&str, &str)]) {
        self.shared.with(|i| {
            i.headers.insert(
                id.to_string(),
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        });
    }

    /// Send items' tags in this header (e.g. `Surrogate-Key`) instead of `Cache-Tag`.
    pub fn set_tag_header(&self, name: &str) {
        self.shared.with(|i| i.tag_header = Some(name.to_string()));
    }

    /// Sleep this long before every answer.
    pub fn set_delay(&self, d: Duration) {
        self.shared.with(|i| i.delay = d);
    }

    /// Writes (PUT/PATCH/DELETE) that arrive from now on wait, counted in `hits` and logged,
    /// until `release_writes`: the test decides when the origin answers.
    pub fn hold_writes(&self) {
        self.shared.hold.send_replace(true);
    }

    /// Lets held writes (and later ones) through.
    pub fn release_writes(&self) {
        self.shared.hold.send_replace(false);
    }

    /// Every request so far as (method, path as it arrived, percent-encoded), in order,
    /// including those to paths other than `/items/{id}`.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.with(|i| i.requests.clone())
    }

    /// Closes the listener and every open (keep-alive) connection: connections are refused
    /// until `restart`, and a client's pooled connection cannot reach the origin either.
    pub async fn stop(&mut self) {
        self.kill.kill();
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same port, with the same items and counts.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        let mut last = None;
        for _ in 0..50 {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => {
                    self.kill = Kill::default();
                    self.task = Some(serve(l, self.shared.clone(), self.kill.clone()));
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last
            .map(anyhow::Error::from)
            .unwrap_or_else(|| anyhow::anyhow!("could not rebind")))
        .context("rebinding the origin")
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn serve(listener: tokio::net::TcpListener, shared: Shared, kill: Kill) -> JoinHandle<()> {
    let app = Router::new()
        .route("/items/{id}", any(handle))
        .fallback(elsewhere)
        .with_state(shared);
    tokio::spawn(async move {
        let _ = axum::serve(
            KillListener {
                inner: listener,
                kill,
            },
            app,
        )
        .await;
    })
}

/// axum serves each connection in its own task, which aborting the server task does not end;
/// so connections are wrapped: once killed, reads see EOF and writes fail, and every connection
/// parked on a read is woken to notice.
#[derive(Clone, Default)]
struct Kill {
    killed: Arc<AtomicBool>,
    wakers: Arc<Mutex<Vec<Waker>>>,
}

impl Kill {
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        let wakers = match self.wakers.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for w in wakers {
            w.wake();
        }
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    fn park(&self, w: &Waker) {
        let mut g = match self.wakers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if !g.iter().any(|x| x.will_wake(w)) {
            g.push(w.clone());
        }
    }
}

struct KillListener {
    inner: tokio::net::TcpListener,
    kill: Kill,
}

impl axum::serve::Listener for KillListener {
    type Io = KillStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (
            KillStream {
                inner: io,
                kill: self.kill.clone(),
            },
            addr,
        )
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

struct KillStream {
    inner: tokio::net::TcpStream,
    kill: Kill,
}

impl tokio::io::AsyncRead for KillStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.kill.killed() {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if r.is_pending() {
            self.kill.park(cx.waker());
        }
        r
    }
}

impl tokio::io::AsyncWrite for KillStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.kill.killed() {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Any path but `/items/{id}`: logged, then 404.
async fn elsewhere(State(shared): State<Shared>, method: Method, uri: Uri) -> Response {
    shared.with(|i| {
        i.requests
            .push((method.to_string(), uri.path().to_string()))
    });
    status(404, "not an item path")
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (delay, fail, fail_writes, early) = shared.with(|i| {
        i.requests
            .push((method.to_string(), uri.path().to_string()));
        *i.hits.entry((method.to_string(), id.clone())).or_insert(0) += 1;
        let early = (method == Method::GET && !i.get_delay.is_zero())
            .then(|| (i.get_delay, i.items.get(&id).cloned()));
        (i.delay, i.fail_status, i.fail_writes, early)
    });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let early_item = match early {
        Some((d, item)) => {
            tokio::time::sleep(d).await;
            Some(item)
        }
        None => None,
    };
    if let Some(s) = fail {
        return status(s, "origin failing on purpose");
    }
    let item = || early_item.unwrap_or_else(|| shared.with(|i| i.items.get(&id).cloned()));
    match method {
        Method::GET => {
            let extra = shared.with(|i| i.headers.get(&id).cloned().unwrap_or_default());
            let mut resp = get_answer(&shared, item());
            for (k, v) in extra {
                if let (Ok(k), Ok(v)) = (
                    axum::http::HeaderName::from_bytes(k.as_bytes()),
                    axum::http::HeaderValue::from_str(&v),
                ) {
                    resp.headers_mut().append(k, v);
                }
            }
            resp
        }
        Method::PUT | Method::PATCH | Method::DELETE | Method::POST => {
            // Released writes go on; a dropped sender cannot happen while the origin runs.
            let _ = shared.hold.subscribe().wait_for(|held| !*held).await;
            if let Some(s) = fail_writes {
                return status(s, "origin refusing writes on purpose");
            }
            let content_type = headers
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            shared.with(|i| {
                i.writes.push(Write {
                    method: method.to_string(),
                    id: id.clone(),
                    body: body.to_vec(),
                    content_type: content_type.clone(),
                });
                if method == Method::DELETE {
                    i.items.remove(&id);
                } else if method == Method::PUT {
                    i.items.insert(
                        id.clone(),
                        Item {
                            content_type: content_type
                                .unwrap_or_else(|| "application/octet-stream".into()),
                            body: body.to_vec(),
                            tags: Vec::new(),
                        },
                    );
                } else if method == Method::PATCH
                    && let Some(item) = i.items.get_mut(&id)
                {
                    merge_patch(item, &body);
                }
            });
            StatusCode::NO_CONTENT.into_response()
        }
        _ => status(405, "method not allowed"),
    }
}

/// A GET's answer: the item with its content type and tags, or 404.
fn get_answer(shared: &Shared, item: Option<Item>) -> Response {
    match item {
        Some(item) => {
            let mut resp = (StatusCode::OK, item.body).into_response();
            if let Ok(v) = item.content_type.parse() {
                resp.headers_mut()
                    .insert(axum::http::header::CONTENT_TYPE, v);
            }
            if let Some(v) = (!item.tags.is_empty())
                .then(|| item.tags.join(", ").parse().ok())
                .flatten()
            {
                let name = shared
                    .with(|i| i.tag_header.clone())
                    .unwrap_or_else(|| "cache-tag".to_string());
                if let Ok(name) = axum::http::HeaderName::from_bytes(name.as_bytes()) {
                    resp.headers_mut().insert(name, v);
                }
            }
            resp
        }
        None => status(404, "no such item"),
    }
}

/// A top-level JSON Merge Patch (RFC 7396) of an item holding a JSON object: the patch's
/// members replace the item's, `null` deletes one. Anything else leaves the item alone.
fn merge_patch(item: &mut Item, patch: &[u8]) {
    let (Ok(serde_json::Value::Object(mut obj)), Ok(serde_json::Value::Object(p))) = (
        serde_json::from_slice::<serde_json::Value>(&item.body),
        serde_json::from_slice::<serde_json::Value>(patch),
    ) else {
        return;
    };
    for (k, v) in p {
        if v.is_null() {
            obj.remove(&k);
        } else {
            obj.insert(k, v);
        }
    }
    if let Ok(b) = serde_json::to_vec(&serde_json::Value::Object(obj)) {
        item.body = b;
    }
}

fn status(code: u16, msg: &'static str) -> Response {
    let s = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (s, msg).into_response()
}
