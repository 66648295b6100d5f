//! hyper's own answers to requests it cannot parse, as problem+json.
//!
//! A request whose head hyper cannot parse (a URI over 65534 bytes, a head over the read
//! buffer or with more than 100 fields, a malformed request line or header, conflicting
//! `Content-Length`) never becomes a `Request`: hyper writes a bare status line
//! (`400`, `414`, `431`, `content-length: 0`) itself and ends the connection with a parse
//! error, and offers no hook to shape that answer.
//!
//! [`Guarded`] sits between hyper and the socket. A write that consists of exactly such a
//! head (one of those statuses, no header but `content-length: 0`, `date` and `connection:
//! close`) is held back instead of sent; any later read, write or shutdown sends it first, so
//! for every other connection nothing changes but when the bytes leave. When the connection
//! then ends with the matching parse error, the server task replaces the held head with a
//! problem+json answer ([`problem_answer`]). Our own handlers never write such a head (every
//! error of ours has a content type), and a response body that happened to end with those
//! bytes would only be replaced if that same client then sent an unparseable request, so no
//! other client's bytes are ever touched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::problem::Kind;

/// The statuses hyper answers unparseable requests with.
const STATUS_LINES: [(&[u8], u16); 3] = [
    (b"400 Bad Request\r\n", 400),
    (b"414 URI Too Long\r\n", 414),
    (b"431 Request Header Fields Too Large\r\n", 431),
];

/// A head hyper wrote for an unparseable request: its version and status, and its `date`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BareHead {
    pub http10: bool,
    pub status: u16,
    pub date: Option<Vec<u8>>,
}

/// Whether `buf` is exactly one bare error head as hyper writes it.
pub fn bare_error_head(buf: &[u8]) -> Option<BareHead> {
    let (http10, rest) = if let Some(r) = buf.strip_prefix(b"HTTP/1.1 ") {
        (false, r)
    } else {
        (true, buf.strip_prefix(b"HTTP/1.0 ")?)
    };
    let (status, mut rest) = STATUS_LINES
        .iter()
        .find_map(|(line, status)| rest.strip_prefix(*line).map(|r| (*status, r)))?;
    let mut date = None;
    loop {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let (line, after) = (&rest[..end], &rest[end + 2..]);
        if line.is_empty() {
            // The head must be the whole write: nothing after the blank line.
            return after.is_empty().then_some(BareHead {
                http10,
                status,
                date,
            });
        }
        let lower = line.to_ascii_lowercase();
        if let Some(d) = lower.strip_prefix(b"date: ") {
            date = Some(d.to_vec());
        } else if lower != b"content-length: 0" && lower != b"connection: close" {
            return None;
        }
        rest = after;
    }
}

/// The problem+json answer that replaces a bare head, closing the connection.
pub fn problem_answer(head: &BareHead) -> Vec<u8> {
    let (title, detail) = match head.status {
        414 => (
            "URI Too Long",
            "the request target is longer than 65534 bytes",
        ),
        431 => (
            "Request Header Fields Too Large",
            "the request head is too large: at most 100 header fields, and the request line and headers within about 400 KiB",
        ),
        _ => (
            "Bad Request",
            "the request is not valid HTTP/1.1 (a malformed request line or header field, or conflicting Content-Length or Transfer-Encoding)",
        ),
    };
    let slug = match head.status {
        414 => Kind::UriTooLong,
        431 => Kind::HeaderTooLarge,
        _ => Kind::MalformedRequest,
    }
    .slug();
    let body = serde_json::json!({
        "type": format!("urn:patternd:problem:{slug}"),
        "title": title,
        "status": head.status,
        "detail": detail,
    })
    .to_string();
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(if head.http10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(format!("{} {title}\r\n", head.status).as_bytes());
    out.extend_from_slice(b"content-type: application/problem+json\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(b"connection: close\r\n");
    if let Some(date) = &head.date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

/// The socket as hyper sees it: every byte passes through, except that a bare error head is
/// held until the next operation (or until the server task decides what to send instead).
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    held: Option<Held>,
    /// The last write was partial: the next one continues a buffer, so it cannot be a head.
    mid_write: bool,
}

#[derive(Debug)]
struct Held {
    head: BareHead,
    bytes: Vec<u8>,
    sent: usize,
}

impl<S> Guarded<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            held: None,
            mid_write: false,
        }
    }

    /// The bare head held back, if the last thing hyper wrote was one.
    pub fn held(&self) -> Option<&BareHead> {
        self.held.as_ref().map(|h| &h.head)
    }

    /// Sends `bytes` instead of the held head (nothing of which was sent yet).
    pub fn replace_held(&mut self, bytes: Vec<u8>) {
        if let Some(h) = &mut self.held
            && h.sent == 0
        {
            h.bytes = bytes;
        }
    }
}

impl<S: AsyncWrite + Unpin> Guarded<S> {
    /// Sends whatever is held, before any other operation.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(h) = &mut self.held {
            if h.sent == h.bytes.len() {
                self.held = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &h.bytes[h.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            h.sent += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Holds `buf` if it is a bare error head written at a response boundary.
    fn hold(&mut self, buf: &[u8]) -> bool {
        if self.mid_write {
            return false;
        }
        match bare_error_head(buf) {
            Some(head) => {
                self.held = Some(Held {
                    head,
                    bytes: buf.to_vec(),
                    sent: 0,
                });
                true
            }
            None => false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_release(cx))?;
        if this.hold(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.mid_write = n < buf.len();
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_release(cx))?;
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (nonempty.next(), nonempty.next())
            && this.hold(only)
        {
            return Poll::Ready(Ok(only.len()));
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        this.mid_write = n < total;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A held head stays held through a flush: hyper flushes its error answer and then
        // ends the connection, and only then is it known which answer to send.
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    #[test]
    fn hypers_bare_heads_are_recognized_and_nothing_else() {
        for (text, status, http10) in [
            (
                "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: D\r\n\r\n",
                431,
                false,
            ),
            (
                "HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: D\r\n\r\n",
                414,
                false,
            ),
            (
                "HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
                400,
                true,
            ),
        ] {
            let head = bare_error_head(text.replace('D', DATE).as_bytes());
            assert_eq!(
                head.as_ref().map(|h| (h.status, h.http10)),
                Some((status, http10)),
                "{text}"
            );
        }
        for text in [
            // Our own errors carry a content type and a body.
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 2\r\n\r\n{}",
            // Not the whole write.
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            // Another status, or another header.
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-other: 1\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            "",
        ] {
            assert_eq!(bare_error_head(text.as_bytes()), None, "{text:?}");
        }
    }

    #[test]
    fn the_answer_is_problem_json_that_closes_the_connection() {
        let head = BareHead {
            http10: false,
            status: 431,
            date: Some(DATE.as_bytes().to_vec()),
        };
        let text = String::from_utf8(problem_answer(&head)).expect("utf-8");
        let (head_text, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head_text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head_text.contains("\r\ncontent-type: application/problem+json"));
        assert!(head_text.contains(&format!("\r\ncontent-length: {}", body.len())));
        assert!(head_text.contains("\r\nconnection: close"));
        assert!(head_text.contains(&format!("\r\ndate: {DATE}")));
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["status"], 431);
        assert_eq!(v["type"], "urn:patternd:problem:header-too-large");
    }

    #[tokio::test]
    async fn a_held_head_is_sent_unchanged_by_the_next_operation_or_replaced() {
        let bare = format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n");
        // Released by the next write, in order.
        let (a, mut b) = tokio::io::duplex(4096);
        let mut g = Guarded::new(a);
        g.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 69\r\n\r\n")
            .await
            .expect("write");
        g.write_all(bare.as_bytes()).await.expect("write");
        g.flush().await.expect("flush");
        assert!(g.held().is_some());
        g.write_all(b"next").await.expect("write");
        g.shutdown().await.expect("shutdown");
        let mut got = String::new();
        b.read_to_string(&mut got).await.expect("read");
        assert_eq!(
            got,
            format!("HTTP/1.1 200 OK\r\ncontent-length: 69\r\n\r\n{bare}next")
        );

        // Replaced: the problem answer goes out instead.
        let (a, mut b) = tokio::io::duplex(4096);
        let mut g = Guarded::new(a);
        g.write_all(bare.as_bytes()).await.expect("write");
        let head = g.held().cloned().expect("held");
        g.replace_held(problem_answer(&head));
        g.shutdown().await.expect("shutdown");
        let mut got = String::new();
        b.read_to_string(&mut got).await.expect("read");
        assert!(
            got.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json"),
            "{got}"
        );
    }
}
