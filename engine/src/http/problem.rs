//! The one error type of the HTTP layer, rendered as RFC 9457 `application/problem+json`.
//!
//! Client mistakes are 4xx with a message that says what to fix. Internal failures are 5xx
//! whose body leaks nothing: the detail goes to the log only.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::patterns::InputError;
use crate::policy::Diagnostic;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
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
    #[error("method {0} is not allowed on this route")]
    MethodNotAllowed(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Forwarded(#[from] super::forwarded::ForwardedError),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("admin endpoints answer loopback clients only when no admin token is set")]
    Forbidden,
    #[error("the policies have errors; the running policies keep serving")]
    ReloadRejected(Vec<Diagnostic>),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("the rule's plugin failed and the rule has no fallback")]
    PluginFailed(String),
    /// A named thing (a session) that does not exist, or no longer.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the resource's state (a lock held by someone else, a token
    /// that does not hold it). `retry_after_ms` adds a Retry-After header.
    #[error("{message}")]
    Conflict {
        message: String,
        retry_after_ms: Option<u64>,
    },
    /// A plugin refused the request (e.g. a session hook rejecting a session).
    #[error("{0}")]
    Rejected(String),
    /// Logged in full, answered as a bare 500.
    #[error("internal error")]
    Internal(String),
    /// Any other problem a pattern reports with its own status and type, e.g. the cache's
    /// 404 (no such value), 502/504 (origin failed or timed out) and 503 (Redis unavailable).
    #[error("{detail}")]
    Problem {
        status: StatusCode,
        slug: &'static str,
        detail: String,
    },
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::UnknownApp(_)
            | ApiError::UnknownRule { .. }
            | ApiError::NoRoute(_)
            | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Rejected(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest(_) | ApiError::Input(_) | ApiError::Forwarded(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::ReloadRejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) | ApiError::PluginFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Problem { status, .. } => *status,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            ApiError::UnknownApp(_) => "unknown-app",
            ApiError::UnknownRule { .. } => "unknown-rule",
            ApiError::NoRoute(_) => "no-route",
            ApiError::NotFound(_) => "not-found",
            ApiError::Conflict { .. } => "conflict",
            ApiError::Rejected(_) => "rejected",
            ApiError::MethodNotAllowed(_) => "method-not-allowed",
            ApiError::BadRequest(_) | ApiError::Input(_) | ApiError::Forwarded(_) => "bad-request",
            ApiError::TooLarge(_) => "too-large",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::ReloadRejected(_) => "invalid-policy",
            ApiError::NotReady(_) => "not-ready",
            ApiError::Internal(_) => "internal",
            ApiError::PluginFailed(_) => "plugin-failed",
            ApiError::Problem { slug, .. } => slug,
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
        match e {
            e @ StoreError::WrongType { .. } => ApiError::Problem {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                slug: "redis-wrong-type",
                detail: e.to_string(),
            },
            e if e.is_unavailable() => ApiError::Problem {
                status: StatusCode::SERVICE_UNAVAILABLE,
                slug: "redis-unavailable",
                detail: "Redis is unavailable".into(),
            },
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({
            "type": format!("urn:patternd:problem:{}", self.slug()),
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
/// axum extractor's text/plain rejection, such as a repeated query parameter, or an empty
/// one) becomes one, keeping its status, its text as the detail (4xx only: a 5xx leaks
/// nothing) and its other headers (`Allow`, `Retry-After`, …). Decision bodies
/// (`application/json`, e.g. a 429 denial) are answers, not errors, and pass unchanged.
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
    let slug = match status {
        StatusCode::BAD_REQUEST => "bad-request",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        s if s.is_server_error() => "internal",
        _ => "client-error",
    };
    let mut out = ApiError::Problem {
        status,
        slug,
        detail,
    }
    .into_response();
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
