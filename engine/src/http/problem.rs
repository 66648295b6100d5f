//! The one error type of the HTTP layer, rendered as RFC 9457 `application/problem+json`, and
//! every mapping into it: one `From` per pattern error, one for store failures.
//!
//! Client mistakes are 4xx with a message that says what to fix. Internal failures are 5xx
//! whose body leaks nothing: the detail goes to the log only. A Redis failure is a 503
//! `redis-unavailable` whose body never carries the Redis client's text (it names hosts,
//! addresses and internals; `/readyz` is the place that says why).
//!
//! Every problem type, `urn:patternd:problem:<type>`, spelled one way ([`Kind`]):
//!
//! | type | status | when |
//! | --- | --- | --- |
//! | `bad-request` | 400 | bad input: a body, a query string, a path segment, a header, an id |
//! | `malformed-request` | 400 | not HTTP/1.1 at all (answered by the listener, `parse_errors`) |
//! | `unauthorized` | 401 | `/admin` without the right bearer token |
//! | `forbidden` | 403 | `/admin` from a non-loopback client when no admin token is set |
//! | `rejected` | 403 | a plugin refused the request (a session hook, or a pubsub hook's publish or subscribe) |
//! | `unknown-app` | 404 | no such app is loaded |
//! | `unknown-rule` | 404 | the app has no such rule of the route's pattern |
//! | `no-route` | 404 | no such route |
//! | `not-found` | 404 | no such thing: a session, a cached value (or one to patch) |
//! | `method-not-allowed` | 405 | the route has no such method |
//! | `body-timeout` | 408 | the body did not arrive within `--body-read-timeout` |
//! | `conflict` | 409 | a lock held by another holder, or a token that does not hold it; a queue receipt that holds no lease; a user's sessions rotated again and again during a list or logout |
//! | `not-hash` | 409 | a PATCH on a `format: string` cache rule |
//! | `cache-bypassed` | 409 | the cache plugin bypassed a write that only the cache could take |
//! | `not-write-behind` | 409 | dead letters of a cache rule that is not `write: behind` |
//! | `precondition-failed` | 412 | `If-Match` / `If-None-Match` did not hold |
//! | `too-large` | 413 | a body over 64 KiB, a cache value over `max_value_bytes` |
//! | `uri-too-long` | 414 | a request target over 64 KiB (listener) |
//! | `unsupported-media-type` | 415 | a cache PATCH that is not JSON |
//! | `invalid-policy` | 422 | a reload whose policies have errors (with every diagnostic) |
//! | `unprocessable` | 422 | any other 422 |
//! | `header-too-large` | 431 | a request head over the listener's limits |
//! | `client-error` | other 4xx | any other client error |
//! | `internal` | 500 | a bug or an unexpected reply: logged, the body says nothing more |
//! | `plugin-failed` | 500 | the rule's plugin failed and the rule has no fallback |
//! | `redis-wrong-type` | 500 | a key of the rule holds another type (another client wrote it) |
//! | `origin-failed` | 502 | a cache origin failed, refused a write or could not be reached |
//! | `redis-unavailable` | 503 | Redis is down, slow or refusing commands |
//! | `journal-full` | 503 | the write-behind journal is at `journal_max_len` |
//! | `queue-full` | 503 | a queue holds `max_len` jobs: the push is refused, never dropped |
//! | `not-replicated` | 503 | a write of a rule with `durability` reached too few replicas in time (a lock grant is taken back; a cache write is applied on the primary) |
//! | `not-ready` | 503 | `/readyz`: Redis unreachable or the scripts not loaded |
//! | `origin-timeout` | 504 | a cache origin did not answer in time |
//! | `job-rejected` | 422 | a queue rule's plugin refused the pushed job (its reason is the detail) |
//! | `score-rejected` | 422 | a leaderboard rule's plugin refused a submitted score (its reason is the detail); nothing was recorded |
//! | `entry-rejected` | 422 | a stream rule's plugin refused an appended entry (which, and its reason, are the detail); nothing was appended |

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::patterns::cache::read::ReadError;
use crate::patterns::cache::write::WriteError;
use crate::patterns::ratelimit::ReleaseError;
use crate::patterns::{
    CheckError, CounterError, InputError, LeaderboardError, LockError, OpError, PubSubError,
    QueueError, SessionError, StreamError,
};
use crate::policy::Diagnostic;
use crate::runtime::ReloadError;
use crate::store::StoreError;

/// RFC 9211 `Cache-Status`, on a cache answer's errors too: it says how far the cache got.
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The type of a problem: its one spelling (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    MalformedRequest,
    Unauthorized,
    Forbidden,
    Rejected,
    UnknownApp,
    UnknownRule,
    NoRoute,
    NotFound,
    MethodNotAllowed,
    BodyTimeout,
    Conflict,
    NotHash,
    CacheBypassed,
    NotWriteBehind,
    PreconditionFailed,
    TooLarge,
    UriTooLong,
    UnsupportedMediaType,
    InvalidPolicy,
    Unprocessable,
    HeaderTooLarge,
    ClientError,
    Internal,
    PluginFailed,
    RedisWrongType,
    OriginFailed,
    RedisUnavailable,
    JournalFull,
    NotReplicated,
    NotReady,
    OriginTimeout,
    QueueFull,
    JobRejected,
    EntryRejected,
    ScoreRejected,
}

impl Kind {
    /// Every kind, for the test that the module doc lists them all.
    #[cfg(test)]
    const ALL: &[Kind] = &[
        Kind::BadRequest,
        Kind::MalformedRequest,
        Kind::Unauthorized,
        Kind::Forbidden,
        Kind::Rejected,
        Kind::UnknownApp,
        Kind::UnknownRule,
        Kind::NoRoute,
        Kind::NotFound,
        Kind::MethodNotAllowed,
        Kind::BodyTimeout,
        Kind::Conflict,
        Kind::NotHash,
        Kind::CacheBypassed,
        Kind::NotWriteBehind,
        Kind::PreconditionFailed,
        Kind::TooLarge,
        Kind::UriTooLong,
        Kind::UnsupportedMediaType,
        Kind::InvalidPolicy,
        Kind::Unprocessable,
        Kind::HeaderTooLarge,
        Kind::ClientError,
        Kind::Internal,
        Kind::PluginFailed,
        Kind::RedisWrongType,
        Kind::OriginFailed,
        Kind::RedisUnavailable,
        Kind::JournalFull,
        Kind::NotReplicated,
        Kind::NotReady,
        Kind::OriginTimeout,
        Kind::QueueFull,
        Kind::JobRejected,
        Kind::EntryRejected,
        Kind::ScoreRejected,
    ];

    pub fn slug(self) -> &'static str {
        match self {
            Kind::BadRequest => "bad-request",
            Kind::MalformedRequest => "malformed-request",
            Kind::Unauthorized => "unauthorized",
            Kind::Forbidden => "forbidden",
            Kind::Rejected => "rejected",
            Kind::UnknownApp => "unknown-app",
            Kind::UnknownRule => "unknown-rule",
            Kind::NoRoute => "no-route",
            Kind::NotFound => "not-found",
            Kind::MethodNotAllowed => "method-not-allowed",
            Kind::BodyTimeout => "body-timeout",
            Kind::Conflict => "conflict",
            Kind::NotHash => "not-hash",
            Kind::CacheBypassed => "cache-bypassed",
            Kind::NotWriteBehind => "not-write-behind",
            Kind::PreconditionFailed => "precondition-failed",
            Kind::TooLarge => "too-large",
            Kind::UriTooLong => "uri-too-long",
            Kind::UnsupportedMediaType => "unsupported-media-type",
            Kind::InvalidPolicy => "invalid-policy",
            Kind::Unprocessable => "unprocessable",
            Kind::HeaderTooLarge => "header-too-large",
            Kind::ClientError => "client-error",
            Kind::Internal => "internal",
            Kind::PluginFailed => "plugin-failed",
            Kind::RedisWrongType => "redis-wrong-type",
            Kind::OriginFailed => "origin-failed",
            Kind::RedisUnavailable => "redis-unavailable",
            Kind::JournalFull => "journal-full",
            Kind::NotReplicated => "not-replicated",
            Kind::NotReady => "not-ready",
            Kind::OriginTimeout => "origin-timeout",
            Kind::QueueFull => "queue-full",
            Kind::JobRejected => "job-rejected",
            Kind::EntryRejected => "entry-rejected",
            Kind::ScoreRejected => "score-rejected",
        }
    }

    /// The kind of an error answer that only has a status (see [`plain_errors_as_problems`]).
    fn of_status(status: StatusCode) -> Kind {
        match status {
            StatusCode::BAD_REQUEST => Kind::BadRequest,
            StatusCode::NOT_FOUND => Kind::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Kind::MethodNotAllowed,
            StatusCode::REQUEST_TIMEOUT => Kind::BodyTimeout,
            StatusCode::PAYLOAD_TOO_LARGE => Kind::TooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Kind::UnsupportedMediaType,
            StatusCode::UNPROCESSABLE_ENTITY => Kind::Unprocessable,
            s if s.is_server_error() => Kind::Internal,
            _ => Kind::ClientError,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Forwarded(#[from] super::forwarded::ForwardedError),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("admin endpoints answer loopback clients only when no admin token is set")]
    Forbidden,
    /// A plugin refused the request (e.g. a session hook rejecting a session).
    #[error("{0}")]
    Rejected(String),
    #[error("no app `{0}` is loaded")]
    UnknownApp(String),
    #[error("app `{app}` has no {pattern} rule `{rule}`")]
    UnknownRule {
        app: String,
        pattern: &'static str,
        rule: String,
    },
    #[error("no such route: {0}")]
    NoRoute(String),
    /// A named thing (a session, a cached value) that does not exist, or no longer.
    #[error("{0}")]
    NotFound(String),
    #[error("method {0} is not allowed on this route")]
    MethodNotAllowed(String),
    #[error("{0}")]
    BodyTimeout(String),
    /// The request conflicts with the resource's state (a lock held by someone else, a token
    /// that does not hold it). `retry_after_ms` adds a Retry-After header.
    #[error("{message}")]
    Conflict {
        message: String,
        retry_after_ms: Option<u64>,
    },
    #[error("{0}")]
    NotHash(String),
    #[error("{0}")]
    CacheBypassed(String),
    #[error("{0}")]
    NotWriteBehind(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the policies have errors; the running policies keep serving")]
    ReloadRejected(Vec<Diagnostic>),
    /// Logged in full, answered as a bare 500.
    #[error("internal error")]
    Internal(String),
    #[error("the rule's plugin failed and the rule has no fallback")]
    PluginFailed(String),
    #[error("{0}")]
    RedisWrongType(String),
    #[error("{0}")]
    OriginFailed(String),
    /// Our words only, never the Redis client's (see the module doc).
    #[error("{0}")]
    RedisUnavailable(String),
    #[error("{0}")]
    JournalFull(String),
    #[error("{0}")]
    NotReplicated(String),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("{0}")]
    OriginTimeout(String),
    /// A push to a queue at `max_len`; answered with `Retry-After: 1`.
    #[error("{0}")]
    QueueFull(String),
    /// A queue rule's plugin refused a pushed job; the detail is its reason.
    #[error("{0}")]
    JobRejected(String),
    /// A stream rule's plugin refused an appended entry; the detail says which and why.
    #[error("{0}")]
    EntryRejected(String),
    /// A leaderboard rule's plugin refused a submitted score; the detail is its reason.
    #[error("{0}")]
    ScoreRejected(String),
    /// A cache answer's error, with the `Cache-Status` that explains it.
    #[error("{error}")]
    CacheStatus {
        error: Box<ApiError>,
        cache_status: String,
    },
    /// An error answer that had no problem body, rewritten: it keeps its status.
    #[error("{detail}")]
    Plain { status: StatusCode, detail: String },
}

impl ApiError {
    fn kind(&self) -> Kind {
        match self {
            ApiError::BadRequest(_) | ApiError::Input(_) | ApiError::Forwarded(_) => {
                Kind::BadRequest
            }
            ApiError::Unauthorized => Kind::Unauthorized,
            ApiError::Forbidden => Kind::Forbidden,
            ApiError::Rejected(_) => Kind::Rejected,
            ApiError::UnknownApp(_) => Kind::UnknownApp,
            ApiError::UnknownRule { .. } => Kind::UnknownRule,
            ApiError::NoRoute(_) => Kind::NoRoute,
            ApiError::NotFound(_) => Kind::NotFound,
            ApiError::MethodNotAllowed(_) => Kind::MethodNotAllowed,
            ApiError::BodyTimeout(_) => Kind::BodyTimeout,
            ApiError::Conflict { .. } => Kind::Conflict,
            ApiError::NotHash(_) => Kind::NotHash,
            ApiError::CacheBypassed(_) => Kind::CacheBypassed,
            ApiError::NotWriteBehind(_) => Kind::NotWriteBehind,
            ApiError::PreconditionFailed(_) => Kind::PreconditionFailed,
            ApiError::TooLarge(_) => Kind::TooLarge,
            ApiError::UnsupportedMediaType(_) => Kind::UnsupportedMediaType,
            ApiError::ReloadRejected(_) => Kind::InvalidPolicy,
            ApiError::Internal(_) => Kind::Internal,
            ApiError::PluginFailed(_) => Kind::PluginFailed,
            ApiError::RedisWrongType(_) => Kind::RedisWrongType,
            ApiError::OriginFailed(_) => Kind::OriginFailed,
            ApiError::RedisUnavailable(_) => Kind::RedisUnavailable,
            ApiError::JournalFull(_) => Kind::JournalFull,
            ApiError::NotReplicated(_) => Kind::NotReplicated,
            ApiError::NotReady(_) => Kind::NotReady,
            ApiError::OriginTimeout(_) => Kind::OriginTimeout,
            ApiError::QueueFull(_) => Kind::QueueFull,
            ApiError::JobRejected(_) => Kind::JobRejected,
            ApiError::EntryRejected(_) => Kind::EntryRejected,
            ApiError::ScoreRejected(_) => Kind::ScoreRejected,
            ApiError::CacheStatus { error, .. } => error.kind(),
            ApiError::Plain { status, .. } => Kind::of_status(*status),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::CacheStatus { error, .. } => error.status(),
            ApiError::Plain { status, .. } => *status,
            other => match other.kind() {
                Kind::BadRequest | Kind::MalformedRequest => StatusCode::BAD_REQUEST,
                Kind::Unauthorized => StatusCode::UNAUTHORIZED,
                Kind::Forbidden | Kind::Rejected => StatusCode::FORBIDDEN,
                Kind::UnknownApp | Kind::UnknownRule | Kind::NoRoute | Kind::NotFound => {
                    StatusCode::NOT_FOUND
                }
                Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
                Kind::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
                Kind::Conflict | Kind::NotHash | Kind::CacheBypassed | Kind::NotWriteBehind => {
                    StatusCode::CONFLICT
                }
                Kind::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
                Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                Kind::UriTooLong => StatusCode::URI_TOO_LONG,
                Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Kind::InvalidPolicy
                | Kind::Unprocessable
                | Kind::JobRejected
                | Kind::EntryRejected
                | Kind::ScoreRejected => StatusCode::UNPROCESSABLE_ENTITY,
                Kind::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Kind::ClientError => StatusCode::BAD_REQUEST,
                Kind::Internal | Kind::PluginFailed | Kind::RedisWrongType => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                Kind::OriginFailed => StatusCode::BAD_GATEWAY,
                Kind::RedisUnavailable
                | Kind::JournalFull
                | Kind::NotReplicated
                | Kind::NotReady
                | Kind::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
                Kind::OriginTimeout => StatusCode::GATEWAY_TIMEOUT,
            },
        }
    }

    /// A store failure, with the words of a 503 (see `From<StoreError>`).
    fn store(e: StoreError, unavailable: &str) -> ApiError {
        match e {
            e @ StoreError::WrongType { .. } => ApiError::RedisWrongType(e.to_string()),
            // Our words and the counts only: nothing of the Redis client's text.
            e @ StoreError::NotReplicated { .. } => ApiError::NotReplicated(e.to_string()),
            e if e.is_unavailable() => ApiError::RedisUnavailable(unavailable.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

/// Every pattern's Redis failure, mapped here once:
/// - unavailable (down, slow, breaker open, loading, …): 503 `redis-unavailable`, nothing
///   internal in the body (a rate-limit rule never gets here: its `on_redis_error` decides);
/// - WRONGTYPE: 500 `redis-wrong-type`, naming the rule's key namespace. Not a 4xx: the client
///   did nothing wrong and cannot fix it; not a 503: it is not transient, the id stays unusable
///   until someone deletes or fixes the key. The store logs it, rate-limited per rule, so it
///   is not logged here per request;
/// - anything else (a script error): a bare 500, logged.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::store(e, "Redis is unavailable")
    }
}

/// The doctor could not reach Redis: 503, like any outage (the log has the cause).
impl From<crate::doctor::DoctorError> for ApiError {
    fn from(e: crate::doctor::DoctorError) -> Self {
        e.into_store().into()
    }
}

impl From<CheckError> for ApiError {
    fn from(e: CheckError) -> Self {
        match e {
            CheckError::Input(e) => e.into(),
            CheckError::Plugin(e) => ApiError::PluginFailed(e.to_string()),
            CheckError::Store(e) => e.into(),
            CheckError::Random(m) => ApiError::Internal(m),
        }
    }
}

impl From<ReleaseError> for ApiError {
    fn from(e: ReleaseError) -> Self {
        match e {
            e @ ReleaseError::NotConcurrency => ApiError::BadRequest(e.to_string()),
            ReleaseError::Input(e) => e.into(),
            ReleaseError::Store(e) => e.into(),
        }
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Input(e) => e.into(),
            e @ (OpError::TooManyArgs(_) | OpError::ArgTooLong(_) | OpError::BadArgs { .. }) => {
                ApiError::BadRequest(e.to_string())
            }
            e @ OpError::Failed { .. } => ApiError::Internal(e.to_string()),
            OpError::Store(e) => e.into(),
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Input(e) => e.into(),
            SessionError::BadData(m) => ApiError::BadRequest(m),
            e @ SessionError::NotFound => ApiError::NotFound(e.to_string()),
            e @ SessionError::Rejected(_) => ApiError::Rejected(e.to_string()),
            SessionError::Plugin(e) => ApiError::PluginFailed(e.to_string()),
            SessionError::Random(m) => ApiError::Internal(m),
            SessionError::Store(e) => e.into(),
            e @ SessionError::Busy(_) => ApiError::Conflict {
                message: e.to_string(),
                retry_after_ms: Some(1000),
            },
            e @ SessionError::MalformedIndex => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<LockError> for ApiError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Input(e) => e.into(),
            LockError::BadRequest(m) => ApiError::BadRequest(m),
            e @ LockError::BadToken => ApiError::BadRequest(e.to_string()),
            LockError::Held { retry_after_ms } => ApiError::Conflict {
                message: "the lock is held (all permits are taken)".into(),
                retry_after_ms: Some(retry_after_ms),
            },
            e @ LockError::NotOwner => ApiError::Conflict {
                message: e.to_string(),
                retry_after_ms: None,
            },
            LockError::Random(m) | LockError::Internal(m) => ApiError::Internal(m),
            LockError::Store(e) => e.into(),
        }
    }
}

impl From<CounterError> for ApiError {
    fn from(e: CounterError) -> Self {
        let detail = e.to_string();
        match e {
            CounterError::Input(e) => e.into(),
            CounterError::BadRequest(m) => ApiError::BadRequest(m),
            // Not an outage Redis recovers from by itself: a server lacks the module the
            // rule requires (`backend: redisbloom`); the body says so, and names no server.
            CounterError::NoModule => ApiError::RedisUnavailable(detail),
            CounterError::Store(e) => e.into(),
            CounterError::Reply(_) | CounterError::Internal(_) => ApiError::Internal(detail),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        let detail = e.to_string();
        match e {
            QueueError::BadRequest(_) | QueueError::UnknownDeadLetter(_) => {
                ApiError::BadRequest(detail)
            }
            QueueError::Full { .. } => ApiError::QueueFull(detail),
            QueueError::StaleReceipt(_) => ApiError::Conflict {
                message: detail,
                retry_after_ms: None,
            },
            QueueError::Rejected(_) => ApiError::JobRejected(detail),
            QueueError::Plugin(p) => ApiError::PluginFailed(p.to_string()),
            QueueError::Store(s) => s.into(),
            QueueError::Random(_) | QueueError::Reply(..) => ApiError::Internal(detail),
        }
    }
}

impl From<LeaderboardError> for ApiError {
    fn from(e: LeaderboardError) -> Self {
        let detail = e.to_string();
        match e {
            LeaderboardError::BadRequest(_) | LeaderboardError::ScoreOutOfRange(_) => {
                ApiError::BadRequest(detail)
            }
            LeaderboardError::Input(e) => e.into(),
            LeaderboardError::NotOnBoard(_) => ApiError::NotFound(detail),
            LeaderboardError::Store(e) => e.into(),
            LeaderboardError::Reply(..) => ApiError::Internal(detail),
            LeaderboardError::Rejected(_) => ApiError::ScoreRejected(detail),
            LeaderboardError::Plugin(p) => ApiError::PluginFailed(p.to_string()),
        }
    }
}

impl From<StreamError> for ApiError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::BadRequest(m) => ApiError::BadRequest(m),
            e @ StreamError::NoGroup(_) => ApiError::NotFound(e.to_string()),
            StreamError::Internal(m) => ApiError::Internal(m),
            e @ StreamError::Rejected(..) => ApiError::EntryRejected(e.to_string()),
            StreamError::Plugin(p) => ApiError::PluginFailed(p.to_string()),
            StreamError::Store(e) => e.into(),
        }
    }
}

impl From<PubSubError> for ApiError {
    fn from(e: PubSubError) -> Self {
        match e {
            PubSubError::Input(e) => e.into(),
            PubSubError::BadRequest(m) => ApiError::BadRequest(m),
            e @ PubSubError::TooLarge(..) => ApiError::TooLarge(e.to_string()),
            e @ PubSubError::Rejected(..) => ApiError::Rejected(e.to_string()),
            PubSubError::Plugin(p) => ApiError::PluginFailed(p.to_string()),
            PubSubError::Store(e) => e.into(),
        }
    }
}

/// A cache read's failure carries the `Cache-Status` that explains it, when the cache got
/// that far (a stale value refused, the origin's failure, Redis unavailable).
impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        let cache_status = e.cache_status().map(str::to_string);
        let error = match e {
            ReadError::Input(e) => e.into(),
            ReadError::BadRequest(m) => ApiError::BadRequest(m),
            ReadError::Plugin(p) => ApiError::PluginFailed(p.to_string()),
            ReadError::Redis(s) => s.into(),
            ReadError::Internal(m) => ApiError::Internal(m),
            e @ ReadError::OriginBusy(_) => ApiError::RedisUnavailable(e.to_string()),
            ReadError::NotFound { detail, .. } => ApiError::NotFound(detail),
            ReadError::Origin {
                timeout: true,
                detail,
                ..
            } => ApiError::OriginTimeout(detail),
            ReadError::Origin { detail, .. } => ApiError::OriginFailed(detail),
        };
        match cache_status {
            Some(cache_status) => error.with_cache_status(cache_status),
            None => error,
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        let detail = e.to_string();
        match e {
            WriteError::Input(i) => ApiError::Input(i),
            WriteError::BadValue(_) => ApiError::BadRequest(detail),
            WriteError::TooLarge { .. } => ApiError::TooLarge(detail),
            WriteError::NotHash(_) => ApiError::NotHash(detail),
            WriteError::NotFound(_) => ApiError::NotFound(detail),
            WriteError::PreconditionFailed(_) => ApiError::PreconditionFailed(detail),
            WriteError::OriginRefused { .. } | WriteError::OriginUnreachable { .. } => {
                ApiError::OriginFailed(detail)
            }
            WriteError::OriginTimeout { .. } => ApiError::OriginTimeout(detail),
            WriteError::JournalFull { .. } => ApiError::JournalFull(detail),
            WriteError::Bypassed(_) => ApiError::CacheBypassed(detail),
            WriteError::Plugin(p) => ApiError::PluginFailed(p.to_string()),
            WriteError::Store(s) => ApiError::store(s, "Redis is unavailable; nothing was written"),
            WriteError::Reply(_) | WriteError::Random(_) => ApiError::Internal(detail),
        }
    }
}

/// A reload that Redis refused for being down is the outage it is; the running policies
/// keep serving either way.
impl From<ReloadError> for ApiError {
    fn from(e: ReloadError) -> Self {
        match e {
            ReloadError::Invalid(d) => ApiError::ReloadRejected(d.0),
            ReloadError::ScriptRejected(e) if e.is_unavailable() => e.into(),
            e @ ReloadError::ScriptRejected(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl ApiError {
    /// This error, answered with `Cache-Status: <cache_status>`.
    pub fn with_cache_status(self, cache_status: String) -> ApiError {
        ApiError::CacheStatus {
            error: Box::new(self),
            cache_status,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::CacheStatus {
            error,
            cache_status,
        } = self
        {
            let mut resp = error.into_response();
            if let Ok(v) = HeaderValue::try_from(cache_status) {
                resp.headers_mut().insert(CACHE_STATUS.clone(), v);
            }
            return resp;
        }
        let status = self.status();
        let mut body = json!({
            "type": format!("urn:patternd:problem:{}", self.kind().slug()),
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        match &self {
            ApiError::ReloadRejected(diags) => {
                body["diagnostics"] = json!(diags);
                body["errors"] = json!(diags.iter().map(ToString::to_string).collect::<Vec<_>>());
            }
            ApiError::Internal(detail) => tracing::error!(%detail, "internal error"),
            ApiError::Conflict {
                retry_after_ms: Some(ms),
                ..
            } => body["retry_after_ms"] = json!(ms),
            ApiError::PluginFailed(detail) => {
                tracing::warn!(%detail, "plugin failed without fallback")
            }
            _ => {}
        }
        let mut resp = (status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::Conflict {
            retry_after_ms: Some(ms),
            ..
        } = &self
        {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(ms.div_ceil(1000).max(1)),
            );
        }
        if matches!(self, ApiError::QueueFull(_)) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"patternd admin\""),
            );
        }
        resp
    }
}

/// The last line of the one-place mapping: an error response that is not problem+json (an
/// axum extractor's text/plain rejection, or an empty one) becomes one, keeping its status,
/// its text as the detail (4xx only: a 5xx leaks nothing) and its other headers (`Allow`,
/// `Retry-After`, …). Decision bodies (`application/json`, e.g. a 429 denial) are answers,
/// not errors, and pass unchanged.
pub async fn plain_errors_as_problems(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    if let Some(ct) = resp.headers().get(header::CONTENT_TYPE) {
        let ct = ct.as_bytes();
        if ct.starts_with(b"application/problem+json") || ct.starts_with(b"application/json") {
            return resp;
        }
    }
    let (parts, body) = resp.into_parts();
    // Rejection texts are a line or two; anything longer is not worth quoting.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    let detail = match text {
        Some(t) if status.is_client_error() => t,
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let mut out = ApiError::Plain { status, detail }.into_response();
    let mut last = None;
    for (name, value) in parts.headers {
        // `None` continues the previous name (a header with several values).
        let name = match name {
            Some(n) => {
                last = Some(n.clone());
                n
            }
            None => match &last {
                Some(n) => n.clone(),
                None => continue,
            },
        };
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name, value);
        }
    }
    out
}

/// RFC 9457 problem details (`application/problem+json`).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // the document's schema; `ApiError` renders the answers
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(example = "urn:patternd:problem:bad-request")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    /// Reload only: every diagnostic as `file:line:column: message`.
    errors: Option<Vec<String>>,
    /// Reload only: every diagnostic with its parts.
    diagnostics: Option<Vec<serde_json::Value>>,
    /// 409 of a held lock: when the next lease lapses (also in `Retry-After`, in seconds).
    retry_after_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module doc is the list of problem types a client may see: every kind is in it,
    /// once, with its status.
    #[test]
    fn every_problem_type_is_listed_once_with_its_status() {
        let doc: String = include_str!("problem.rs")
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut seen = std::collections::BTreeSet::new();
        for kind in Kind::ALL {
            let slug = kind.slug();
            assert!(seen.insert(slug), "`{slug}` is spelled for two kinds");
            let row = format!("//! | `{slug}` | ");
            assert_eq!(doc.matches(&row).count(), 1, "`{slug}` is not listed once");
        }
        assert_eq!(
            doc.matches("//! | `").count(),
            Kind::ALL.len(),
            "the doc lists a type that is not a kind"
        );
        // Statuses as the table says, where a kind has one.
        for (error, status) in [
            (ApiError::NotFound(String::new()), 404),
            (ApiError::OriginFailed(String::new()), 502),
            (ApiError::RedisUnavailable(String::new()), 503),
            (ApiError::BodyTimeout(String::new()), 408),
        ] {
            let row = format!("//! | `{}` | {status} |", error.kind().slug());
            assert!(doc.contains(&row), "{row}");
            assert_eq!(error.status().as_u16(), status);
        }
    }

    #[test]
    fn a_store_failure_never_shows_the_redis_client_text() {
        let e: ApiError =
            StoreError::CircuitOpen("Connection refused (os error 111)".into()).into();
        assert_eq!(
            (e.status().as_u16(), e.kind().slug(), e.to_string().as_str()),
            (503, "redis-unavailable", "Redis is unavailable")
        );
        let e: ApiError =
            LockError::Store(StoreError::Timeout(std::time::Duration::from_secs(1))).into();
        assert_eq!(e.to_string(), "Redis is unavailable");
    }
}
