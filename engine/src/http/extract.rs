//! What every route takes from a request, in one place: the rule its `{app}` and `{rule}`
//! path segments name, the entity id segment, JSON-object bodies, query strings, and the
//! facts a plugin sees. Every rejection is an [`ApiError`], so it is answered problem+json
//! like any other error.
//!
//! Axum extractors rather than plain functions: a handler's signature then says what it takes
//! (`Rule<Locker>`, `Id`, `JsonObject<AcquireBody>`), extraction runs in argument order, and
//! a handler cannot forget a check (the JSON-object rule, the 404 of an unknown rule) or map a
//! rejection its own way. Two plain functions remain for handlers that read the body
//! themselves: [`object`] (a lock release takes its token from the body or the query) and
//! [`read_body`] (a rate-limit check parses the common body without building a JSON tree).

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::problem::ApiError;
use super::{AppState, MAX_BODY_BYTES, server};
use crate::patterns::cache::{CacheRule, check_cache_id};
use crate::patterns::{
    CounterRule, LeaderboardRule, Locker, OpRunner, PubSubRule, QueueRule, RateLimiter, Sessions,
    StreamRule,
};
use crate::plugin::RequestFacts;
use crate::snapshot::Snapshot;

/// A pattern whose rules a route looks up by `{app}` and `{rule}`.
pub trait Pattern: Send + Sync + 'static {
    /// The pattern as an unknown-rule 404 names it.
    const NAME: &'static str;
    fn find(snap: &Snapshot, app: &str, rule: &str) -> Option<Arc<Self>>;
}

impl Pattern for RateLimiter {
    const NAME: &'static str = "ratelimit";
    fn find(snap: &Snapshot, app: &str, rule: &str) -> Option<Arc<Self>> {
        snap.ratelimiter(app, rule).cloned()
    }
}

impl Pattern for CacheRule {
    const NAME: &'static str = "cache";
    fn find(snap: &Snapshot, app: &str, rule: &str) -> Option<Arc<Self>> {
        snap.cache(app, rule).cloned()
    }
}

impl Pattern for Sessions {
    const NAME: &'static str = "session";
    fn find(snap: &Snapshot, app: &str, rule: &str) -> Option<Arc<Self>> {
        snap.sessions(app, rule).cloned()
    }
}

impl Pattern for Locker {
    const NAME: &'static str = "lock";
    fn find(snap: &Snapshot, app: &str, rule: &str) -> Option<Arc<Self>> {
        snap.locker(app, rule).cloned()
    }
}

impl Pattern for OpRunner {
    const NAME: &'static str = "ops";
    fn find(snap: &Snapshot, app: &str, rule: &str) -> Option<Arc<Self>> {
        snap.op(app, rule).cloned()
    }
}

impl Pattern for QueueRule {
    const NAME: &'static str = "queue";
    fn find(snap: &Snapshot, app: &str, rule: &str) -> Option<Arc<Self>> {
        snap.queue(app, rule).cloned()
    }
}

impl Pattern for StreamRule {
    const NAME: &'static str = "stream";
    fn find(snap: &Snapshot, app: &str, rule: &str) -> Option<Arc<Self>> {
        snap.stream(app, rule).cloned()
    }
}

impl Pattern for PubSubRule {
    const NAME: &'static str = "pubsub";
    fn find(snap: &Snapshot, app: &str, rule: &str) -> Option<Arc<Self>> {
        snap.pubsub(app, rule).cloned()
    }
}

impl Pattern for CounterRule {
    const NAME: &'static str = "counter";
    fn find(snap: &Snapshot, app: &str, rule: &str) -> Option<Arc<Self>> {
        snap.counter(app, rule).cloned()
    }
}

impl Pattern for LeaderboardRule {
    const NAME: &'static str = "leaderboard";
    fn find(snap: &Snapshot, app: &str, rule: &str) -> Option<Arc<Self>> {
        snap.leaderboard(app, rule).cloned()
    }
}

/// The rule of pattern `P` that the path's `{app}` and `{rule}` name, from the current
/// snapshot: 404 `unknown-app` when no such app is loaded, 404 `unknown-rule` when the app
/// has no such rule of this pattern.
pub struct Rule<P> {
    pub app: String,
    pub name: String,
    pub rule: Arc<P>,
}

/// To the `Arc`, so methods that take `self: &Arc<Self>` (a cache read) are called on it too.
impl<P> Deref for Rule<P> {
    type Target = Arc<P>;
    fn deref(&self) -> &Arc<P> {
        &self.rule
    }
}

/// The two segments every pattern route starts with (other parameters are ignored here).
#[derive(Deserialize)]
struct RulePath {
    app: String,
    rule: String,
}

impl<P: Pattern> FromRequestParts<AppState> for Rule<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path(RulePath { app, rule }) = Path::from_request_parts(parts, state)
            .await
            .map_err(bad_path)?;
        let snap = state.runtime.snapshot();
        match P::find(&snap, &app, &rule) {
            Some(found) => Ok(Rule {
                app,
                name: rule,
                rule: found,
            }),
            None if !snap.has_app(&app) => Err(ApiError::UnknownApp(app)),
            None => Err(ApiError::UnknownRule {
                app,
                pattern: P::NAME,
                rule,
            }),
        }
    }
}

/// The entity segment after `{app}/{rule}`: a cache `{id}`, a session `{sid}`, a lock
/// `{resource}`, a session `{user}`, a rate-limit `{lease}`, a queue job's `{id}`. The pattern checks it (a
/// malformed session id is a 404 like an unknown one, for instance); a cache id is checked
/// here, see [`CacheId`].
pub struct Id(pub String);

#[derive(Deserialize)]
struct IdPath {
    #[serde(
        alias = "sid",
        alias = "resource",
        alias = "user",
        alias = "lease",
        alias = "group",
        alias = "channel",
        alias = "board"
    )]
    id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(IdPath { id }) = Path::from_request_parts(parts, state)
            .await
            .map_err(bad_path)?;
        Ok(Id(id))
    }
}

/// A leaderboard's `{board}` and `{member}` segments (the pattern checks both).
pub struct BoardMember {
    pub board: String,
    pub member: String,
}

#[derive(Deserialize)]
struct BoardMemberPath {
    board: String,
    member: String,
}

impl<S: Send + Sync> FromRequestParts<S> for BoardMember {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(BoardMemberPath { board, member }) = Path::from_request_parts(parts, state)
            .await
            .map_err(bad_path)?;
        Ok(BoardMember { board, member })
    }
}

/// A cache `{id}`: also one path segment of the origin's URL, so `.` and `..` (path
/// navigation) are refused with a 400 before anything else is done.
pub struct CacheId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for CacheId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Id(id) = Id::from_request_parts(parts, state).await?;
        check_cache_id(&id)?;
        Ok(CacheId(id))
    }
}

/// The query string as `T`; one that does not fit (an unknown or repeated parameter, a
/// value of the wrong type) is a 400.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| Query(q))
            .map_err(bad_query)
    }
}

/// A body type, with the example its 400s show.
pub trait Example {
    /// A valid body, e.g. `{"token": "..."}`.
    const EXAMPLE: &'static str;
}

/// A JSON-object body (see [`object`]).
pub struct JsonObject<T>(pub T);

impl<T: DeserializeOwned + Example, S: Send + Sync> FromRequest<S> for JsonObject<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let RawBody(body) = RawBody::from_request(req, state).await?;
        object(&body, T::EXAMPLE).map(JsonObject)
    }
}

/// The body as it came, up to `MAX_BODY_BYTES` (413 above, 408 when it does not arrive in
/// time), for a handler that decides itself how to read it.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        read_body(req.into_body()).await.map(RawBody)
    }
}

/// A body that must be a JSON object: an empty one is `{}` (so a body whose fields are all
/// optional may be left out), anything else that is not an object is a 400 that shows
/// `example`. serde's derived `Deserialize` also reads a struct from a JSON array
/// (`["alice", {}]`), which would be taken silently; the API takes objects only.
pub fn object<T: DeserializeOwned>(body: &[u8], example: &str) -> Result<T, ApiError> {
    serde_json::from_slice(object_text(body, example)?)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body ({e}); send {example}")))
}

/// The text of a JSON-object body, before it is parsed: `{}` for an empty one, a 400 for
/// anything that does not start as an object.
pub fn object_text<'a>(body: &'a [u8], example: &str) -> Result<&'a [u8], ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Ok(b"{}"),
        Some(b'{') => Ok(body),
        Some(_) => Err(ApiError::BadRequest(format!(
            "the body must be a JSON object such as {example}"
        ))),
    }
}

/// Which request headers a plugin sees.
#[derive(Clone, Copy)]
pub enum Headers<'a> {
    /// Every header whose value is visible ASCII.
    All,
    /// These, looked up by name (the others are never copied).
    Only(&'a [String]),
    None,
}

impl<'a> From<Option<&'a [String]>> for Headers<'a> {
    /// A rule's `plugin.headers`: the listed ones, or all when it lists none.
    fn from(only: Option<&'a [String]>) -> Self {
        only.map_or(Headers::All, Headers::Only)
    }
}

/// The facts a plugin sees of a request (its body fields are the caller's to add).
pub fn facts(
    parts: &Parts,
    method: &str,
    id: &str,
    cost: u64,
    headers: Headers<'_>,
) -> RequestFacts {
    RequestFacts {
        method: method.into(),
        path: parts.uri.path().to_string(),
        id: id.to_string(),
        cost,
        headers: header_pairs(&parts.headers, headers),
        client_addr: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
        fields: Vec::new(),
    }
}

/// Header values that are not visible ASCII are left out either way.
fn header_pairs(headers: &HeaderMap, which: Headers<'_>) -> Vec<(String, String)> {
    match which {
        Headers::All => headers
            .iter()
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_string(), v.to_string()))
            })
            .collect(),
        Headers::Only(names) => {
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                for v in headers.get_all(name.as_str()) {
                    if let Ok(v) = v.to_str() {
                        out.push((name.clone(), v.to_string()));
                    }
                }
            }
            out
        }
        Headers::None => Vec::new(),
    }
}

/// The body, or a problem+json for a too-large, too-slow or unreadable one.
fn body_too_large() -> ApiError {
    ApiError::TooLarge(format!(
        "request body is larger than {MAX_BODY_BYTES} bytes"
    ))
}

/// Reads a body up to `MAX_BODY_BYTES` (every body this server reads is read here: there is
/// no router-wide body limit layer).
pub async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    read_body_within(body, MAX_BODY_BYTES, body_too_large).await
}

/// Reads a body up to `limit` bytes; `too_large` is the answer to a larger one.
pub async fn read_body_within(
    body: Body,
    limit: usize,
    too_large: impl FnOnce() -> ApiError,
) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over { too_large() } else { unreadable(&e) }
    })
}

/// A body that could not be read: 408 when it did not arrive in time, else 400.
fn unreadable(e: &(dyn std::error::Error + 'static)) -> ApiError {
    match timeout_in(e) {
        Some(t) => ApiError::BodyTimeout(t.to_string()),
        None => ApiError::BadRequest(format!("could not read the request body: {e}")),
    }
}

/// The body read timeout (`server::BodyTimeout`) somewhere in the error's chain: reading
/// the body failed because it did not arrive in time.
pub(crate) fn timeout_in<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a server::BodyTimeout> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<server::BodyTimeout>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// Path segments that are not valid UTF-8 after percent-decoding.
fn bad_path(e: PathRejection) -> ApiError {
    ApiError::BadRequest(format!("invalid path: {}", e.body_text()))
}

/// A query string that does not fit the route's parameters.
fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::BadRequest(format!("invalid query string: {}", e.body_text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default)]
        ttl_ms: Option<u64>,
    }

    const EXAMPLE: &str = r#"{"ttl_ms": 1000}"#;

    #[test]
    fn a_body_is_a_json_object_and_an_empty_one_is_empty() {
        assert_eq!(
            object::<Body>(b"", EXAMPLE).ok(),
            Some(Body { ttl_ms: None })
        );
        assert_eq!(
            object::<Body>(b" \n", EXAMPLE).ok(),
            Some(Body { ttl_ms: None })
        );
        assert_eq!(
            object::<Body>(br#" {"ttl_ms": 5}"#, EXAMPLE).ok(),
            Some(Body { ttl_ms: Some(5) })
        );
        // serde reads a struct from an array too; the API does not.
        for bad in [&b"[5]"[..], b"\"a\"", b"5", b"null"] {
            let e = object::<Body>(bad, EXAMPLE).err().map(|e| e.to_string());
            assert_eq!(
                e.as_deref(),
                Some(r#"the body must be a JSON object such as {"ttl_ms": 1000}"#),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let e = object::<Body>(br#"{"ttl": 5}"#, EXAMPLE)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("invalid JSON body (unknown field `ttl`"),
            "{e}"
        );
        assert!(e.ends_with(r#"; send {"ttl_ms": 1000}"#), "{e}");
    }

    #[test]
    fn plugins_see_the_listed_headers_or_all_or_none() {
        let req = Request::builder()
            .uri("/v1/x?y=1")
            .header("x-tier", "gold")
            .header("x-other", "no")
            .header("x-bin", &b"\xff"[..])
            .body(())
            .unwrap_or_default();
        let (parts, ()) = req.into_parts();
        let only = ["x-tier".to_string(), "x-bin".to_string()];
        let f = facts(&parts, "GET", "u1", 2, Headers::Only(&only));
        assert_eq!(
            (f.method.as_str(), f.path.as_str(), f.id.as_str(), f.cost),
            ("GET", "/v1/x", "u1", 2)
        );
        assert_eq!(f.headers, [("x-tier".to_string(), "gold".to_string())]);
        let all = facts(&parts, "GET", "u1", 1, Headers::All);
        assert_eq!(all.headers.len(), 2, "{:?}", all.headers);
        assert!(
            facts(&parts, "GET", "u1", 1, Headers::None)
                .headers
                .is_empty()
        );
        assert_eq!(all.client_addr, None);
    }
}
