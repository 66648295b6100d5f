//! The HTTP/1 listener: a cap on open connections, header and body read timeouts, graceful
//! shutdown, and problem+json for requests hyper cannot parse.
//!
//! `axum::serve` has none of these knobs, so connections are served with hyper's own HTTP/1
//! builder: `header_read_timeout` closes a connection whose request head (or, between
//! keep-alive requests, whose next head) has not fully arrived in time; a semaphore permit is
//! taken *before* `accept`, so at the cap new connections wait in the kernel's listen backlog
//! (costing no file descriptor of ours) instead of exhausting the descriptors that Redis and
//! origin connections need; a body must arrive whole within the body timeout.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower_service::Service as _;

use super::parse_errors::{Guarded, problem_answer};

/// What one listener allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// A request head (the first, or the next on a keep-alive connection) must arrive whole
    /// within this; otherwise the connection is closed.
    pub header_read_timeout: Duration,
    /// A request body must arrive whole within this, counted from when its head arrived;
    /// otherwise the request is answered 408 and the connection closed.
    pub body_read_timeout: Duration,
}

/// File descriptors left for everything but client connections: the Redis pool, the tracking
/// and blocking-command connections, cache origin connections (up to 64 in flight per rule),
/// policy and plugin files, the managed redis-server's pipes.
pub const MIN_FD_HEADROOM: u64 = 128;
/// The default cap never goes above this, whatever the descriptor limit: each connection
/// may hold a read buffer of up to ~400 KiB.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;

/// The default `--max-connections` for a soft `RLIMIT_NOFILE` of `nofile`: a quarter of the
/// descriptors (at least [`MIN_FD_HEADROOM`]) stay free for Redis, origins and files.
pub fn default_max_connections(nofile: u64) -> usize {
    let headroom = (nofile / 4).max(MIN_FD_HEADROOM);
    // A limit too small for that headroom still serves someone: half of it.
    let cap = if nofile > 2 * headroom {
        nofile - headroom
    } else {
        nofile / 2
    };
    usize::try_from(cap.clamp(1, DEFAULT_MAX_CONNECTIONS)).unwrap_or(1)
}

/// The soft limit on open files, from `/proc/self/limits` (Linux); `None` elsewhere or when
/// unlimited.
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&text)
}

fn parse_open_files_limit(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections finish
/// their requests (idle ones close at once) and returns when all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Every connection task holds a receiver; `send` asks them to shut down gracefully and
    // `closed` resolves once the last one has ended.
    let (close_tx, close_rx) = watch::channel(());
    let mut cap_log = CapLog::default();
    tokio::pin!(shutdown);
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                metrics::counter!("patternd_http_connection_limit_waits_total").increment(1);
                cap_log.reached(limits.max_connections);
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let close = close_rx.clone();
        tokio::spawn(async move {
            metrics::gauge!("patternd_http_connections").increment(1.0);
            serve_connection(stream, peer, app, limits, close).await;
            metrics::gauge!("patternd_http_connections").decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    drop(close_rx);
    let _ = close_tx.send(());
    close_tx.closed().await;
}

/// Errors of `accept` itself. Per-connection ones (the peer reset before we took it) are
/// nothing; others (out of descriptors) are logged and retried after a pause, as
/// `axum::serve` and hyper's examples do, so a full table does not spin the loop.
async fn accept_error(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The warning when the cap is reached, at most once per 10 s (a flood would otherwise log
/// a line per connection).
#[derive(Default)]
struct CapLog {
    last: Option<Instant>,
    since_last: u64,
}

impl CapLog {
    fn reached(&mut self, max: usize) {
        self.since_last += 1;
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        tracing::warn!(
            max_connections = max,
            waits = self.since_last,
            "connection limit reached: {max} connections open; new connections wait in the listen backlog until one closes (--max-connections, patternd_http_connection_limit_waits_total)"
        );
        self.last = Some(Instant::now());
        self.since_last = 0;
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    mut close: watch::Receiver<()>,
) {
    let _ = stream.set_nodelay(true);
    let body_timeout = limits.body_read_timeout;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        // Boxed: hyper's `poll_without_shutdown` wants an `Unpin` future.
        Box::pin(handle(app.clone(), req.map(Body::new), body_timeout))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut conn = builder.serve_connection(TokioIo::new(Guarded::new(stream)), service);
    // Polled without hyper's own shutdown: after a parse error the socket comes back here so
    // the answer can be replaced before it is closed.
    let result = tokio::select! {
        r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => r,
        _ = close.changed() => {
            Pin::new(&mut conn).graceful_shutdown();
            std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)).await
        }
    };
    let mut io = conn.into_parts().io.into_inner();
    match &result {
        Err(e) if e.is_timeout() => {
            metrics::counter!("patternd_http_header_timeouts_total").increment(1);
            tracing::debug!(%peer, "closed: no complete request head within the header timeout");
        }
        Err(e) if e.is_parse() || e.is_parse_too_large() => {
            // Only the answer hyper gives this very error is replaced.
            if let Some(head) = io.held().cloned()
                && (head.status == 400) != e.is_parse_too_large()
            {
                io.replace_held(problem_answer(&head));
            }
            tracing::debug!(%peer, error = %e, "unparseable request");
        }
        Err(e) => tracing::debug!(%peer, error = %e, "connection error"),
        Ok(()) => {}
    }
    // A client cut off by the header timeout gets no grace; it is the one holding slots.
    let linger = !matches!(&result, Err(e) if e.is_timeout());
    if io.shutdown().await.is_err() || !linger {
        return;
    }
    // The client may still be sending a request we answered without reading it all (a head
    // over the buffer, a body over the limit or past its deadline); closing with unread data
    // makes the kernel reset the connection, which can destroy our answer before the client
    // reads it. So after our FIN, read and drop what still comes until the client closes its
    // side (at once, for a client that is done), for a bounded time and amount, as nginx's
    // `lingering_close` does.
    let mut sink = [0u8; 8192];
    let mut left: usize = 4 << 20;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while left > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Every request's way through: its body's deadline ([`bodies`]), the routes, and an error
/// answered without a problem body rewritten into one (`plain_errors_as_problems`).
///
/// Written out here rather than as router layers: axum wraps every route in each layer
/// (a boxed service per layer), and the boxes are cloned on every request, about a dozen
/// allocations per request for three layers.
async fn handle(
    mut app: Router,
    req: Request,
    body_timeout: Duration,
) -> Result<Response, std::convert::Infallible> {
    let resp = bodies(&mut app, req, body_timeout).await;
    Ok(super::problem::plain_errors_as_problems(resp).await)
}

/// The routes' answer.
async fn route(app: &mut Router, req: Request) -> Response {
    match app.call(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

/// Every request with a body: the body gets its deadline, and an error answered before the
/// body was read to its end says `connection: close`. hyper closes such a connection anyway
/// (the rest of the body is still on the wire), and without the header a client would put
/// the connection back in its pool and lose its next request on it.
async fn bodies(app: &mut Router, req: Request, timeout: Duration) -> Response {
    use http_body::Body as _;
    if req.body().is_end_stream() {
        return route(app, req).await;
    }
    let read = Arc::new(AtomicBool::new(false));
    let mut resp = route(app, with_body_deadline(req, timeout, read.clone())).await;
    let status = resp.status();
    if (status.is_client_error() || status.is_server_error()) && !read.load(Ordering::Relaxed) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Puts a deadline on the request body; `read` is set once the body was read to its end.
fn with_body_deadline(req: Request, timeout: Duration, read: Arc<AtomicBool>) -> Request {
    let deadline = tokio::time::Instant::now() + timeout;
    req.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline,
            sleep: None,
            timeout,
            read,
        })
    })
}

/// The request body has not arrived whole within the body read timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
pub struct BodyTimeout(pub Duration);

/// A body that fails with [`BodyTimeout`] once its deadline passes. The timer is only
/// armed when the body is not ready, so a body that is already buffered costs nothing.
struct DeadlineBody {
    inner: Body,
    deadline: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
    read: Arc<AtomicBool>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if frame.is_none() || this.inner.is_end_stream() {
                this.read.store(true, Ordering::Relaxed);
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_keeps_descriptors_for_redis_and_origins() {
        // (soft limit, cap)
        for (nofile, cap) in [
            (1024, 768),
            (256, 128),
            (4096, 3072),
            (65_536, 10_000),
            (1_048_576, 10_000),
            (100, 50),
            (1, 1),
            (0, 1),
        ] {
            assert_eq!(default_max_connections(nofile), cap, "nofile {nofile}");
        }
    }

    #[test]
    fn the_open_files_limit_is_read_from_proc() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files_limit(text), Some(1024));
        assert_eq!(
            parse_open_files_limit(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(parse_open_files_limit(""), None);
    }

    /// A body whose next frame never comes, as from a client that stopped sending.
    struct Stalled;

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_body_that_stalls_fails_at_its_deadline_and_a_whole_one_passes() {
        let read = Arc::new(AtomicBool::new(false));
        let req = with_body_deadline(
            Request::new(Body::new(Stalled)),
            Duration::from_millis(50),
            read.clone(),
        );
        let err = axum::body::to_bytes(req.into_body(), 1024)
            .await
            .expect_err("times out");
        assert!(super::super::extract::timeout_in(&err).is_some(), "{err:?}");
        assert!(!read.load(Ordering::Relaxed));

        let read = Arc::new(AtomicBool::new(false));
        let req = with_body_deadline(
            Request::new(Body::from("{\"id\": \"a\"}")),
            Duration::from_millis(50),
            read.clone(),
        );
        let bytes = axum::body::to_bytes(req.into_body(), 1024)
            .await
            .expect("a whole body");
        assert_eq!(&bytes[..], b"{\"id\": \"a\"}");
        assert!(read.load(Ordering::Relaxed), "read to its end");
    }
}
