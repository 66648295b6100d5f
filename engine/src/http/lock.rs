//! `/v1/locks/{app}/{rule}/{resource}` and below: thin handlers around `patterns::lock`.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::{self, Example, Id, JsonObject, Query, RawBody, Rule};
use super::problem::{ApiError, Problem};
use crate::patterns::{Lease, Locker};
use doc::{LockAcquire, LockExtend, LockLease, LockRelease, LockReleased};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(acquire, release))
        .routes(routes!(extend))
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

impl Example for AcquireBody {
    const EXAMPLE: &'static str = r#"{"ttl_ms": 30000, "wait_ms": 5000}"#;
}

impl Example for ExtendBody {
    const EXAMPLE: &'static str = r#"{"token": "...", "ttl_ms": 30000}"#;
}

impl Example for ReleaseBody {
    const EXAMPLE: &'static str = r#"{"token": "..."}"#;
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

// `POST /v1/locks/{app}/{rule}/{resource}` with `{"ttl_ms": n, "wait_ms": n}`.
#[utoipa::path(post, path = "/v1/locks/{app}/{rule}/{resource}", tag = "locks", operation_id = "lock_acquire",
    description = "Acquires the lock (or one permit of a semaphore rule), waiting up to `wait_ms` with jittered backoff.",
    params(("app" = String, Path), ("rule" = String, Path), ("resource" = String, Path)),
    request_body(content = Option<LockAcquire>, description = "Optional: an empty body takes the rule's defaults", content_type = "application/json"),
    responses(
        (status = 200, body = LockLease),
        (status = 409, description = "Still held after waiting", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown app or rule", body = Problem, content_type = "application/problem+json")))]
async fn acquire(
    State(state): State<AppState>,
    locker: Rule<Locker>,
    Id(resource): Id,
    JsonObject(req): JsonObject<AcquireBody>,
) -> Result<Response, ApiError> {
    let l = locker
        .acquire(&state.runtime.store, &resource, req.ttl_ms, req.wait_ms)
        .await?;
    Ok(lease(l))
}

// `POST /v1/locks/{app}/{rule}/{resource}/extend` with `{"token": "...", "ttl_ms": n}`.
#[utoipa::path(post, path = "/v1/locks/{app}/{rule}/{resource}/extend", tag = "locks", operation_id = "lock_extend",
    description = "Extends the lease of `token`; only the current holder can.",
    params(("app" = String, Path), ("rule" = String, Path), ("resource" = String, Path)),
    request_body = LockExtend,
    responses(
        (status = 200, body = LockLease),
        (status = 409, description = "The token does not hold the lock", body = Problem, content_type = "application/problem+json"),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn extend(
    State(state): State<AppState>,
    locker: Rule<Locker>,
    Id(resource): Id,
    JsonObject(req): JsonObject<ExtendBody>,
) -> Result<Response, ApiError> {
    let l = locker
        .extend(&state.runtime.store, &resource, &req.token, req.ttl_ms)
        .await?;
    Ok(lease(l))
}

// `DELETE /v1/locks/{app}/{rule}/{resource}` with `{"token": "..."}` (or `?token=...`).
#[utoipa::path(delete, path = "/v1/locks/{app}/{rule}/{resource}", tag = "locks", operation_id = "lock_release",
    description = "Releases the lease of `token`. Only the holder can; releasing the same token again answers `released: false`.",
    params(("app" = String, Path), ("rule" = String, Path), ("resource" = String, Path),
        ("token" = Option<String>, Query, description = "the token, for clients that cannot send a DELETE body")),
    request_body(content = Option<LockRelease>, description = "The token, unless it is given as `?token=`", content_type = "application/json"),
    responses(
        (status = 200, body = LockReleased),
        (status = 409, description = "The token does not hold the lock (wrong token, or its lease lapsed)", body = Problem, content_type = "application/problem+json"),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn release(
    State(state): State<AppState>,
    locker: Rule<Locker>,
    Id(resource): Id,
    Query(query): Query<ReleaseQuery>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let token = match query.token {
        Some(t) if body.iter().all(u8::is_ascii_whitespace) => t,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "send the token in the body or in `?token=`, not both".into(),
            ));
        }
        None => extract::object::<ReleaseBody>(&body, ReleaseBody::EXAMPLE)?.token,
    };
    let released = locker
        .release(&state.runtime.store, &resource, &token)
        .await?;
    Ok(Json(json!({ "released": released })).into_response())
}

// ------------------------------------------------------------------------------------------
// OpenAPI
// ------------------------------------------------------------------------------------------

#[allow(dead_code)] // schema types exist for the generated document only
mod doc {
    use utoipa::ToSchema;

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
}
