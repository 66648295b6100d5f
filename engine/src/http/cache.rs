//! `/v1/cache/{app}/{rule}/{id}` reads and invalidation: thin handlers around
//! `patterns::cache`. Writes (PUT/PATCH) are in `cache_write`.
//!
//! Every route refuses the ids `.` and `..` (400): an id is one path segment of the origin
//! URL, and those two would name another path of the origin.
//!
//! `_invalidate` is a reserved segment: the static route wins over `{id}`, so an id spelled
//! `_invalidate` cannot be read through this API.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::AppState;
use super::problem::ApiError;
use crate::patterns::cache::conditional::{GetOutcome, Preconditions, etag};
use crate::patterns::cache::read::{ReadError, ReadRequest};
use crate::patterns::cache::{CacheRule, check_cache_id};
use crate::plugin::RequestFacts;

static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The routes this module serves; the OpenAPI test checks them against the document.
pub(super) const ROUTES: &[&str] = &[
    "/v1/cache/{app}/{rule}/{id}",
    "/v1/cache/{app}/{rule}/_invalidate",
];

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/cache/{app}/{rule}/{id}",
            get(get_value).delete(delete_value),
        )
        .route("/v1/cache/{app}/{rule}/_invalidate", post(invalidate))
}

/// The rule, or the 404 that says which part is unknown.
pub(crate) fn lookup(state: &AppState, app: &str, rule: &str) -> Result<Arc<CacheRule>, ApiError> {
    let snap = state.runtime.snapshot();
    match snap.cache(app, rule) {
        Some(c) => Ok(c.clone()),
        None if !snap.has_app(app) => Err(ApiError::UnknownApp(app.to_string())),
        None => Err(ApiError::UnknownRule {
            app: app.to_string(),
            pattern: "cache",
            rule: rule.to_string(),
        }),
    }
}

/// `If-Match` / `If-None-Match` of a request (RFC 9110 §13.1); a malformed one is a 400.
pub(super) fn preconditions(headers: &axum::http::HeaderMap) -> Result<Preconditions, ApiError> {
    Preconditions::parse(
        headers
            .get_all(header::IF_MATCH)
            .iter()
            .map(|v| v.as_bytes()),
        headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .map(|v| v.as_bytes()),
    )
    .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// `ETag: "<version>"`, when the answer is a stored value with a version.
pub(super) fn set_etag(resp: &mut Response, version: Option<&str>) {
    if let Some(v) = version.and_then(|v| HeaderValue::try_from(etag(v)).ok()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
}

#[derive(Deserialize)]
struct GetQuery {
    fields: Option<String>,
}

/// The facts a cache plugin sees.
pub(super) fn facts(method: &str, id: &str, req: &axum::http::request::Parts) -> RequestFacts {
    RequestFacts {
        method: method.into(),
        path: req.uri.path().to_string(),
        id: id.to_string(),
        cost: 1,
        headers: req
            .headers
            .iter()
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_string(), v.to_string()))
            })
            .collect(),
        client_addr: req
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
        fields: Vec::new(),
    }
}

/// `GET /v1/cache/{app}/{rule}/{id}[?fields=a,b]`.
async fn get_value(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Response {
    let result = async {
        let Path((app, rule, id)) = path.map_err(super::bad_path)?;
        let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let c = lookup(&state, &app, &rule)?;
        check_cache_id(&id).map_err(ApiError::from)?;
        let fields = q.fields.map(|f| {
            f.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        });
        let (parts, _) = request.into_parts();
        let conditions = preconditions(&parts.headers)?;
        let facts = c.wants_facts().then(|| facts("GET", &id, &parts));
        c.get(
            &state.runtime.store,
            ReadRequest {
                id: &id,
                fields,
                facts,
                redis_budget: state.runtime.redis_timeout(),
            },
        )
        .await
        .map(|out| (out, conditions))
        .map_err(Failure::from)
    }
    .await;
    match result {
        // RFC 9110 §13.2.1: preconditions only apply to what would otherwise be a 2xx, so
        // errors (404, 5xx) are answered as they are.
        Ok((out, conditions)) => match conditions.evaluate_get(out.version.as_deref()) {
            GetOutcome::Serve => {
                let mut resp = (StatusCode::OK, out.body.into_bytes()).into_response();
                set_etag(&mut resp, out.version.as_deref());
                let h = resp.headers_mut();
                // From the owned Strings: the header values take their buffers over.
                if let Ok(v) = HeaderValue::try_from(out.content_type) {
                    h.insert(header::CONTENT_TYPE, v);
                }
                if let Ok(v) = HeaderValue::try_from(out.cache_status) {
                    h.insert(CACHE_STATUS.clone(), v);
                }
                resp
            }
            // §15.4.5: no content; the ETag (and Cache-Status) it would have carried.
            GetOutcome::NotModified => {
                let mut resp = StatusCode::NOT_MODIFIED.into_response();
                set_etag(&mut resp, out.version.as_deref());
                if let Ok(v) = HeaderValue::try_from(out.cache_status) {
                    resp.headers_mut().insert(CACHE_STATUS.clone(), v);
                }
                resp
            }
            GetOutcome::Failed => Failure {
                error: ApiError::Problem {
                    status: StatusCode::PRECONDITION_FAILED,
                    slug: "precondition-failed",
                    detail: "If-Match does not match the current value's ETag".to_string(),
                },
                cache_status: Some(out.cache_status),
            }
            .into_response(),
        },
        Err(f) => f.into_response(),
    }
}

/// `DELETE /v1/cache/{app}/{rule}/{id}`: the value, the rule's `related` ids, their leases.
async fn delete_value(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    request: Request,
) -> Result<Response, Failure> {
    let Path((app, rule, id)) = path.map_err(super::bad_path)?;
    let c = lookup(&state, &app, &rule)?;
    check_cache_id(&id).map_err(ApiError::from)?;
    let (parts, _) = request.into_parts();
    let facts = c.wants_facts().then(|| facts("DELETE", &id, &parts));
    let (deleted, pending) = c.delete(&state.runtime.store, &id, facts).await?;
    Ok(axum::Json(DeleteResponse { deleted, pending }).into_response())
}

/// `POST /v1/cache/{app}/{rule}/_invalidate` with `{"tags": [...]}`.
async fn invalidate(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, Failure> {
    let Path((app, rule)) = path.map_err(super::bad_path)?;
    let c = lookup(&state, &app, &rule)?;
    let body = super::body_bytes(body)?;
    let req: InvalidateRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be a JSON object such as {{\"tags\": [\"product:1\"]}}: {e}"
        ))
    })?;
    let bumped = c.invalidate(&state.runtime.store, &req.tags).await?;
    Ok(axum::Json(InvalidateResponse { bumped }).into_response())
}

/// A problem, with the `Cache-Status` that explains it when the cache got that far.
pub(crate) struct Failure {
    error: ApiError,
    cache_status: Option<String>,
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure {
            error,
            cache_status: None,
        }
    }
}

impl From<ReadError> for Failure {
    fn from(e: ReadError) -> Self {
        let cache_status = e.cache_status().map(str::to_string);
        let error = match e {
            ReadError::Input(i) => ApiError::Input(i),
            ReadError::BadRequest(m) => ApiError::BadRequest(m),
            ReadError::Plugin(p) => ApiError::PluginFailed(p.to_string()),
            ReadError::Redis(s) => s.into(),
            ReadError::Internal(m) => ApiError::Internal(m),
            e @ ReadError::OriginBusy(_) => ApiError::Problem {
                status: StatusCode::SERVICE_UNAVAILABLE,
                slug: "redis-unavailable",
                detail: e.to_string(),
            },
            ReadError::NotFound { detail, .. } => ApiError::Problem {
                status: StatusCode::NOT_FOUND,
                slug: "not-found",
                detail,
            },
            ReadError::Origin {
                timeout, detail, ..
            } => ApiError::Problem {
                status: if timeout {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                },
                slug: if timeout {
                    "origin-timeout"
                } else {
                    "origin-failed"
                },
                detail,
            },
        };
        Failure {
            error,
            cache_status,
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut resp = self.error.into_response();
        if let Some(v) = self
            .cache_status
            .and_then(|s| HeaderValue::from_str(&s).ok())
        {
            resp.headers_mut().insert(CACHE_STATUS.clone(), v);
        }
        resp
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct InvalidateRequest {
    /// 1 to 100 tags, each 1 to 128 bytes without commas or whitespace.
    tags: Vec<String>,
}

#[derive(Serialize, ToSchema)]
struct InvalidateResponse {
    /// How many of the tags were carried by some live value (and now no longer are).
    bumped: i64,
}

#[derive(Serialize, ToSchema)]
struct DeleteResponse {
    /// How many values were dropped (the id's and its related ids').
    deleted: i64,
    /// `write: behind`: values kept because their newest write is still in the journal (the
    /// origin's copy is older until it is delivered); they are ordinary cached copies again
    /// once delivered.
    pending: i64,
}

#[utoipa::path(get, path = "/v1/cache/{app}/{rule}/{id}", tag = "cache", operation_id = "cache_get",
    description = "Cache-aside read: the cached value, or the origin's (stored). `Cache-Status` \
        (RFC 9211) says hit, miss and stored, stale, or collapsed; `detail=redis-unavailable` when \
        Redis could not be asked and the rule's `on_redis_error: origin` served the origin's answer.",
    params(("app" = String, Path), ("rule" = String, Path), ("id" = String, Path),
        ("fields" = Option<String>, Query, description = "format: hash only: comma-separated top-level members to return"),
        ("If-None-Match" = Option<String>, Header, description = "RFC 9110 §13.1.2: `*` or entity-tags (weak comparison); a match answers 304"),
        ("If-Match" = Option<String>, Header, description = "RFC 9110 §13.1.1: `*` or entity-tags (strong comparison); no match answers 412")),
    responses(
        (status = 200, description = "The value, with the origin's content type (or the one it was PUT with); `format: hash`: a JSON object; `ETag` when it is the stored value",
            body = String, content_type = "*/*",
            headers(("Cache-Status" = String, description = "RFC 9211: hit, miss and stored, stale, collapsed…"), ("ETag" = Option<String>))),
        (status = 304, description = "If-None-Match matched: no content",
            headers(("Cache-Status" = String), ("ETag" = Option<String>))),
        (status = 400, description = "Bad input", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such value (or unknown app/rule); an origin 404 is cached for negative_ttl",
            body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match did not match the value's ETag",
            body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 502, description = "The origin failed (or its value is too large, or not a JSON object for format: hash) and no stale value may be served",
            body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable (with `on_redis_error: origin`: and the origin's concurrency is in use); `Cache-Status: patternd; detail=redis-unavailable`", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 504, description = "The origin timed out and no stale value may be served",
            body = super::openapi::Problem, content_type = "application/problem+json"),
    ))]
#[allow(dead_code)]
fn doc_get() {}

#[utoipa::path(delete, path = "/v1/cache/{app}/{rule}/{id}", tag = "cache", operation_id = "cache_delete",
    description = "Drops the value, the values of the rule's `related` ids, and their refresh leases, atomically. `write: behind`: a value whose newest write is still in the journal is kept (counted in `pending`) until the write reaches the origin, because the origin's copy is older until then.",
    params(("app" = String, Path), ("rule" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, body = DeleteResponse),
        (status = 400, body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, body = super::openapi::Problem, content_type = "application/problem+json"),
    ))]
#[allow(dead_code)]
fn doc_delete() {}

#[utoipa::path(post, path = "/v1/cache/{app}/{rule}/_invalidate", tag = "cache", operation_id = "cache_invalidate",
    description = "Invalidates every value carrying any of the tags (from the origin's Cache-Tag/Surrogate-Key, \
        a PUT's Cache-Tag, or the plugin). O(tags) work: tag versions are bumped.",
    params(("app" = String, Path), ("rule" = String, Path)),
    request_body = InvalidateRequest,
    responses(
        (status = 200, body = InvalidateResponse),
        (status = 400, body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, body = super::openapi::Problem, content_type = "application/problem+json"),
    ))]
#[allow(dead_code)]
fn doc_invalidate() {}

#[derive(OpenApi)]
#[openapi(
    paths(doc_get, doc_delete, doc_invalidate),
    components(schemas(InvalidateRequest, InvalidateResponse, DeleteResponse))
)]
struct CacheApi;

/// This module's part of the OpenAPI document (merged into `/openapi.json`).
pub(super) fn api() -> utoipa::openapi::OpenApi {
    CacheApi::openapi()
}
