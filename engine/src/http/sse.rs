//! Server-Sent Events (`text/event-stream`), framed per the WHATWG HTML standard's "Server-sent
//! events" section: an event is `id:`, `event:` and `data:` lines ending with an empty line;
//! data holding line breaks (`\r\n`, `\r` or `\n`) is one `data:` line per line (a client
//! joins them with `\n`); a line starting with `:` is a comment (the heartbeat); `retry:` sets
//! the client's reconnection delay. Every line ends with `\n`.
//!
//! [`SseBody`] turns a pattern's bounded event channel into a response body, with a
//! heartbeat comment whenever nothing else was sent for the rule's `heartbeat`, so idle
//! proxies keep the connection open. Shared by stream tails and pub/sub subscriptions.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use tokio::sync::mpsc;

/// The client's reconnection delay we ask for, in ms (`retry:`).
pub const RETRY_MS: u64 = 2000;

/// One event: optional id and type, and data (any text; line breaks are split correctly).
pub fn event(id: Option<&str>, kind: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 32);
    if let Some(id) = id {
        // An id with a line break would end the field, and one with NUL is ignored by
        // clients: neither is sent (stream ids never hold them).
        if !id.contains(['\n', '\r', '\0']) {
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(id.as_bytes());
            out.push(b'\n');
        }
    }
    if let Some(kind) = kind
        && !kind.contains(['\n', '\r'])
    {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.push(b'\n');
    }
    for line in lines(data) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    Bytes::from(out)
}

/// `data` split at `\r\n`, `\r` and `\n`; empty data is one empty line (an event with empty
/// data, which the client dispatches).
fn lines(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\n' => {
                out.push(&data[start..i]);
                start = i + 1;
            }
            b'\r' => {
                out.push(&data[start..i]);
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&data[start..]);
    out
}

/// A comment line (ignored by clients; keeps proxies from timing the connection out).
pub fn comment(text: &str) -> Bytes {
    let text = text.replace(['\n', '\r'], " ");
    Bytes::from(format!(": {text}\n\n"))
}

/// `retry: ms`, the first thing every stream sends.
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// A rendered event, and whether it is the last one.
pub struct Rendered {
    pub bytes: Bytes,
    pub last: bool,
}

/// The body of an event stream: the rendered events of `rx`, heartbeats between them.
pub struct SseBody<T> {
    rx: mpsc::Receiver<T>,
    render: fn(T) -> Rendered,
    heartbeat: tokio::time::Interval,
    first: Option<Bytes>,
    done: bool,
    gauge: metrics::Gauge,
}

impl<T> SseBody<T> {
    pub fn new(
        rx: mpsc::Receiver<T>,
        render: fn(T) -> Rendered,
        heartbeat: Duration,
        pattern: &'static str,
    ) -> Self {
        let gauge = metrics::gauge!("patternd_sse_clients", "pattern" => pattern);
        gauge.increment(1.0);
        let period = heartbeat.max(Duration::from_millis(10));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            rx,
            render,
            heartbeat,
            first: Some(retry(RETRY_MS)),
            done: false,
            gauge,
        }
    }
}

impl<T> Drop for SseBody<T> {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

impl<T: Send + 'static> http_body::Body for SseBody<T> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let me = self.get_mut();
        if let Some(first) = me.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if me.done {
            return Poll::Ready(None);
        }
        match me.rx.poll_recv(cx) {
            Poll::Ready(Some(ev)) => {
                let r = (me.render)(ev);
                me.done = r.last;
                me.heartbeat.reset();
                Poll::Ready(Some(Ok(Frame::data(r.bytes))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match me.heartbeat.poll_tick(cx) {
                Poll::Ready(_) => Poll::Ready(Some(Ok(Frame::data(comment("heartbeat"))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// The response: `text/event-stream`, never cached, never buffered by a proxy.
pub fn response<T: Send + 'static>(body: SseBody<T>) -> Response {
    let mut r = Body::new(body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_framed_with_id_type_and_data() {
        assert_eq!(
            event(Some("1-0"), Some("gap"), b"{\"a\":1}"),
            Bytes::from_static(b"id: 1-0\nevent: gap\ndata: {\"a\":1}\n\n")
        );
        assert_eq!(event(None, None, b"x"), Bytes::from_static(b"data: x\n\n"));
    }

    #[test]
    fn multi_line_data_is_one_data_line_per_line_for_every_line_break() {
        assert_eq!(
            event(None, None, b"a\nb\r\nc\rd"),
            Bytes::from_static(b"data: a\ndata: b\ndata: c\ndata: d\n\n")
        );
        // A trailing break is an empty last line; empty data is one empty data line.
        assert_eq!(
            event(None, None, b"a\n"),
            Bytes::from_static(b"data: a\ndata: \n\n")
        );
        assert_eq!(event(None, None, b""), Bytes::from_static(b"data: \n\n"));
    }

    #[test]
    fn ids_and_types_that_would_break_the_framing_are_left_out() {
        assert_eq!(
            event(Some("1\n2"), Some("a\nb"), b"x"),
            Bytes::from_static(b"data: x\n\n")
        );
    }

    #[test]
    fn comments_and_retry() {
        assert_eq!(comment("heartbeat"), Bytes::from_static(b": heartbeat\n\n"));
        assert_eq!(comment("a\nb"), Bytes::from_static(b": a b\n\n"));
        assert_eq!(retry(2000), Bytes::from_static(b"retry: 2000\n\n"));
    }
}
