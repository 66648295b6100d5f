//! The origin HTTP client of a cache rule: one per rule, with the rule's timeout and a bounded
//! connection pool.
//!
//! Bounds: every request (connect, send, the whole body) is bounded by `origin_timeout`; at
//! most `MAX_IN_FLIGHT` requests per rule are in flight (the permit wait counts against the
//! timeout), so a slow origin cannot make one engine open connections without limit; idle
//! connections are kept (at most `MAX_IDLE` per host) and closed after `IDLE_TIMEOUT`. Bodies
//! are read chunk by chunk and abandoned as soon as they pass the rule's `max_value_bytes`, so
//! an oversized answer is never buffered whole.
//!
//! Reads use [`OriginClient::get`]; writes (the write path: through and behind) use
//! [`OriginClient::send`] with any method.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use reqwest::Method;
use tokio::sync::Semaphore;

/// Concurrent origin requests per rule and engine.
pub const MAX_IN_FLIGHT: usize = 64;
/// Idle keep-alive connections per origin host.
const MAX_IDLE: usize = 32;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Tags per value taken from an origin's `Cache-Tag`/`Surrogate-Key` (the rest are dropped).
pub const MAX_TAGS: usize = 32;
/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("the origin did not answer within {0:?}")]
    Timeout(Duration),
    /// No connection could be made: the request was never sent.
    #[error("the origin could not be reached: {0}")]
    Connect(String),
    /// The request failed after a connection was made (it may have been received).
    #[error("the origin could not be reached: {0}")]
    Unreachable(String),
    #[error("the origin's answer is larger than max_value_bytes ({max} bytes)")]
    TooLarge { max: u64 },
    #[error("could not build the origin client: {0}")]
    Client(String),
}

impl OriginError {
    /// 504 for a timeout, 502 for everything else the origin did wrong.
    pub fn is_timeout(&self) -> bool {
        matches!(self, OriginError::Timeout(_))
    }
}

/// What the origin answered.
#[derive(Debug, Clone)]
pub struct OriginResponse {
    pub status: u16,
    pub content_type: Option<String>,
    /// From `Cache-Tag` and `Surrogate-Key` (space- or comma-separated), valid ones only.
    pub tags: Vec<String>,
    pub body: Bytes,
    /// How long the request took (XFetch's recompute time).
    pub elapsed: Duration,
    /// `Cache-Control`, `Age`, `Expires`, `Date` as received (`ttl_from_origin`).
    pub freshness: super::freshness::OriginFreshness,
}

/// One rule's origin client. Cheap to clone.
#[derive(Clone)]
pub struct OriginClient {
    http: reqwest::Client,
    permits: Arc<Semaphore>,
    timeout: Duration,
    latency: metrics::Histogram,
}

impl OriginClient {
    pub fn new(app: &str, rule: &str, timeout: Duration) -> Result<Self, OriginError> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .pool_max_idle_per_host(MAX_IDLE)
            .pool_idle_timeout(IDLE_TIMEOUT)
            // The origin is a backend next to the engine: an HTTP(S)_PROXY meant for outbound
            // traffic must not sit between them (and see every cached value).
            .no_proxy()
            // The origin answers for this rule itself: following a redirect elsewhere would
            // cache another resource under this id.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OriginError::Client(e.to_string()))?;
        Ok(Self {
            http,
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            timeout,
            latency: metrics::histogram!("patternd_cache_origin_seconds", "app" => app.to_string(), "rule" => rule.to_string()),
        })
    }

    /// `GET url`, reading at most `max_bytes` of body.
    pub async fn get(&self, url: &str, max_bytes: u64) -> Result<OriginResponse, OriginError> {
        self.send(Method::GET, url, None, None, max_bytes).await
    }

    /// Any request (the write path uses PUT/PATCH/DELETE), with an optional body and content
    /// type; the answer's body is read up to `max_bytes`.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Option<Bytes>,
        max_bytes: u64,
    ) -> Result<OriginResponse, OriginError> {
        let started = Instant::now();
        let res = tokio::time::timeout(
            self.timeout,
            self.send_inner(method, url, content_type, body, max_bytes),
        )
        .await;
        let elapsed = started.elapsed();
        self.latency.record(elapsed.as_secs_f64());
        match res {
            Err(_) => Err(OriginError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(mut r)) => {
                r.elapsed = elapsed;
                Ok(r)
            }
        }
    }

    async fn send_inner(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Option<Bytes>,
        max_bytes: u64,
    ) -> Result<OriginResponse, OriginError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| OriginError::Client(e.to_string()))?;
        let mut req = self.http.request(method, url);
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let mut resp = req.send().await.map_err(|e| self.classify(e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers();
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut tags = Vec::new();
        for name in ["cache-tag", "surrogate-key"] {
            for v in headers.get_all(name) {
                if let Ok(text) = v.to_str() {
                    tags.extend(parse_tags(text));
                }
            }
        }
        tags.sort();
        tags.dedup();
        tags.truncate(MAX_TAGS);
        let freshness = freshness_fields(headers);
        if resp.content_length().is_some_and(|n| n > max_bytes) {
            return Err(OriginError::TooLarge { max: max_bytes });
        }
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.classify(e))? {
            if (buf.len() + chunk.len()) as u64 > max_bytes {
                return Err(OriginError::TooLarge { max: max_bytes });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(OriginResponse {
            status,
            content_type,
            tags,
            body: Bytes::from(buf),
            elapsed: Duration::ZERO,
            freshness,
        })
    }

    fn classify(&self, e: reqwest::Error) -> OriginError {
        if e.is_timeout() {
            OriginError::Timeout(self.timeout)
        } else {
            // The source chain says why (refused, reset…); reqwest's top message alone does not.
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            if e.is_connect() {
                OriginError::Connect(msg)
            } else {
                OriginError::Unreachable(msg)
            }
        }
    }
}

/// The header fields that decide an answer's freshness. A field that is not visible ASCII
/// counts as present but unreadable (`"\u{0}"`), so the freshness rules treat it as invalid
/// rather than absent. Several `Cache-Control` lines are one list.
fn freshness_fields(headers: &reqwest::header::HeaderMap) -> super::freshness::OriginFreshness {
    let one = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("\u{0}").to_string())
    };
    let mut cc: Option<String> = None;
    for v in headers.get_all(reqwest::header::CACHE_CONTROL) {
        let text = v.to_str().unwrap_or("\u{0}");
        match &mut cc {
            Some(all) => {
                all.push_str(", ");
                all.push_str(text);
            }
            None => cc = Some(text.to_string()),
        }
    }
    super::freshness::OriginFreshness {
        cache_control: cc,
        age: one("age"),
        expires: one("expires"),
        date: one("date"),
    }
}

/// True for a tag the data contract allows: 1 to 128 bytes, no `,` and no whitespace.
pub fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TAG_BYTES
        && !t.contains(',')
        && !t.chars().any(char::is_whitespace)
}

/// Tags of a `Cache-Tag`/`Surrogate-Key` value: separated by commas and/or whitespace; invalid
/// ones (too long) are dropped.
pub fn parse_tags(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| valid_tag(t))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_on_commas_and_spaces() {
        let t: Vec<String> = parse_tags(" a, b c,,d\te ").collect();
        assert_eq!(t, ["a", "b", "c", "d", "e"]);
        let long = "x".repeat(129);
        assert_eq!(parse_tags(&long).count(), 0);
        assert!(valid_tag("product:1"));
        assert!(!valid_tag("a b") && !valid_tag("a,b") && !valid_tag(""));
    }
}
