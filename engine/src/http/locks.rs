//! `/v1/locks/{app}/{rule}/{resource}` and below: thin handlers around `patterns::lock`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use utoipa::openapi::OpenApi;
use utoipa::{OpenApi as _, ToSchema};

use super::AppState;
use super::openapi::Problem;
use super::problem::ApiError;
use crate::patterns::{Lease, LockError, Locker};

/// The routes this module serves; the OpenAPI test checks them against the document.
pub(super) const ROUTES: &[&str] = &[
    "/v1/locks/{app}/{rule}/{resource}",
    "/v1/locks/{app}/{rule}/{resource}/extend",
];

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/locks/{app}/{rule}/{resource}",
            post(acquire).delete(release),
        )
        .route("/v1/locks/{app}/{rule}/{resource}/extend", post(extend))
}

fn lookup(state: &AppState, app: &str, rule: &str) -> Result<Arc<Locker>, ApiError> {
    let snap = state.runtime.snapshot();
    match snap.locker(app, rule) {
        Some(l) => Ok(l.clone()),
        None if !snap.has_app(app) => Err(ApiError::UnknownApp(app.to_string())),
        None => Err(ApiError::UnknownRule {
            app: app.to_string(),
            pattern: "lock",
            rule: rule.to_string(),
        }),
    }
}

fn error(e: LockError) -> ApiError {
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

/// A JSON object body (an empty body is `{}` where every field is optional).
fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    example: &str,
) -> Result<T, ApiError> {
    let body = super::body_bytes(body)?;
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::BadRequest(format!(
            "the body must be a JSON object such as {example}"
        )));
    }
    serde_json::from_slice(text)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body ({e}); send {example}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcquireBody {
    #[serde(default)]
    ttl_ms: Option<u64>,
    #[serde(default)]
    wait_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    token: String,
    #[serde(default)]
    ttl_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    token: String,
}

/// Some clients and proxies drop DELETE bodies: the token may come as `?token=` instead.
#[derive(Deserialize)]
struct ReleaseQuery {
    token: Option<String>,
}

fn lease(l: Lease) -> Response {
    Json(json!({ "token": l.token, "fence": l.fence, "expires_in_ms": l.expires_in_ms }))
        .into_response()
}

/// `POST /v1/locks/{app}/{rule}/{resource}` with `{"ttl_ms": n, "wait_ms": n}`.
async fn acquire(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((app, rule, resource)) = path.map_err(super::bad_path)?;
    let locker = lookup(&state, &app, &rule)?;
    let req: AcquireBody = parse_body(body, r#"{"ttl_ms": 30000, "wait_ms": 5000}"#)?;
    let l = locker
        .acquire(&state.runtime.store, &resource, req.ttl_ms, req.wait_ms)
        .await
        .map_err(error)?;
    Ok(lease(l))
}

/// `POST /v1/locks/{app}/{rule}/{resource}/extend` with `{"token": "...", "ttl_ms": n}`.
async fn extend(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((app, rule, resource)) = path.map_err(super::bad_path)?;
    let locker = lookup(&state, &app, &rule)?;
    let req: ExtendBody = parse_body(body, r#"{"token": "...", "ttl_ms": 30000}"#)?;
    let l = locker
        .extend(&state.runtime.store, &resource, &req.token, req.ttl_ms)
        .await
        .map_err(error)?;
    Ok(lease(l))
}

/// `DELETE /v1/locks/{app}/{rule}/{resource}` with `{"token": "..."}` (or `?token=...`).
async fn release(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    query: Result<Query<ReleaseQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((app, rule, resource)) = path.map_err(super::bad_path)?;
    let locker = lookup(&state, &app, &rule)?;
    let body = super::body_bytes(body)?;
    let query = query.map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    let token = match query.0.token {
        Some(t) if body.iter().all(u8::is_ascii_whitespace) => t,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "send the token in the body or in `?token=`, not both".into(),
            ));
        }
        None => parse_body::<ReleaseBody>(Ok(body), r#"{"token": "..."}"#)?.token,
    };
    let released = locker
        .release(&state.runtime.store, &resource, &token)
        .await
        .map_err(error)?;
    Ok(Json(json!({ "released": released })).into_response())
}

// ------------------------------------------------------------------------------------------
// OpenAPI
// ------------------------------------------------------------------------------------------

#[allow(dead_code)] // schema types exist for the generated document only
mod doc {
    use super::*;

    /// Body of an acquire; both fields are optional (an empty body is fine).
    #[derive(ToSchema)]
    pub struct LockAcquire {
        /// Lease length (default: the rule's `ttl`; at most its `max_ttl`, 400 above).
        ttl_ms: Option<u64>,
        /// How long to wait for a permit (default 0; at most the rule's `max_wait`, 400 above).
        wait_ms: Option<u64>,
    }

    /// A held lease.
    #[derive(ToSchema)]
    pub struct LockLease {
        /// Proves ownership for extend and release.
        token: String,
        /// Fencing token: strictly increasing per resource, also across expiries. Pass it to
        /// the protected resource so it can refuse writes of a stale holder.
        fence: u64,
        expires_in_ms: u64,
    }

    #[derive(ToSchema)]
    pub struct LockExtend {
        token: String,
        /// The lease then ends this long from now (default: the rule's `ttl`).
        ttl_ms: Option<u64>,
    }

    #[derive(ToSchema)]
    pub struct LockRelease {
        token: String,
    }

    #[derive(ToSchema)]
    pub struct LockReleased {
        /// False when this token was already released (a repeat is not an error).
        released: bool,
    }

    #[utoipa::path(post, path = "/v1/locks/{app}/{rule}/{resource}", tag = "locks",
        description = "Acquires the lock (or one permit of a semaphore rule), waiting up to `wait_ms` with jittered backoff.",
        params(("app" = String, Path), ("rule" = String, Path), ("resource" = String, Path)),
        request_body = LockAcquire,
        responses(
            (status = 200, body = LockLease),
            (status = 409, description = "Still held after waiting", body = Problem, content_type = "application/problem+json",
                headers(("Retry-After" = u64, description = "seconds"))),
            (status = 400, body = Problem, content_type = "application/problem+json"),
            (status = 404, description = "Unknown app or rule", body = Problem, content_type = "application/problem+json")))]
    pub fn acquire() {}

    #[utoipa::path(delete, path = "/v1/locks/{app}/{rule}/{resource}", tag = "locks",
        description = "Releases the lease of `token`. Only the holder can; releasing the same token again answers `released: false`.",
        params(("app" = String, Path), ("rule" = String, Path), ("resource" = String, Path),
            ("token" = Option<String>, Query, description = "the token, for clients that cannot send a DELETE body")),
        request_body = LockRelease,
        responses(
            (status = 200, body = LockReleased),
            (status = 409, description = "The token does not hold the lock (wrong token, or its lease lapsed)", body = Problem, content_type = "application/problem+json"),
            (status = 400, body = Problem, content_type = "application/problem+json")))]
    pub fn release() {}

    #[utoipa::path(post, path = "/v1/locks/{app}/{rule}/{resource}/extend", tag = "locks",
        description = "Extends the lease of `token`; only the current holder can.",
        params(("app" = String, Path), ("rule" = String, Path), ("resource" = String, Path)),
        request_body = LockExtend,
        responses(
            (status = 200, body = LockLease),
            (status = 409, description = "The token does not hold the lock", body = Problem, content_type = "application/problem+json"),
            (status = 400, body = Problem, content_type = "application/problem+json")))]
    pub fn extend() {}

    #[derive(utoipa::OpenApi)]
    #[openapi(
        paths(acquire, release, extend),
        components(schemas(LockAcquire, LockLease, LockExtend, LockRelease, LockReleased))
    )]
    pub struct Doc;
}

/// This module's part of the OpenAPI document (merged into `/openapi.json`).
pub(super) fn api() -> OpenApi {
    doc::Doc::openapi()
}
