//! Cache reads and invalidation: `GET`/`DELETE /v1/cache/{app}/{rule}/{id}` and
//! `POST /v1/cache/{app}/{rule}/_invalidate`. Thin: parse, call `patterns::cache`, render.
//!
//! `_invalidate` is a reserved segment: the static route wins over `{id}`, so an id spelled
//! `_invalidate` cannot be read through this API.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{preconditions, set_etag};
use crate::http::AppState;
use crate::http::extract::{self, CacheId, Example, Headers, JsonObject, Query, Rule};
use crate::http::problem::{ApiError, CACHE_STATUS, Problem};
use crate::patterns::cache::CacheRule;
use crate::patterns::cache::conditional::GetOutcome;
use crate::patterns::cache::read::ReadRequest;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(get_value, delete_value))
        .routes(routes!(invalidate))
}

#[derive(Deserialize)]
struct GetQuery {
    fields: Option<String>,
}

// `GET /v1/cache/{app}/{rule}/{id}[?fields=a,b]`.
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
        (status = 400, description = "Bad input", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such value (or unknown app/rule); an origin 404 is cached for negative_ttl",
            body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match did not match the value's ETag",
            body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The origin failed (or its value is too large, or not a JSON object for format: hash) and no stale value may be served",
            body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable (with `on_redis_error: origin`: and the origin's concurrency is in use); `Cache-Status: patternd; detail=redis-unavailable`", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The origin timed out and no stale value may be served",
            body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_value(
    State(state): State<AppState>,
    c: Rule<CacheRule>,
    CacheId(id): CacheId,
    Query(q): Query<GetQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let fields = q.fields.map(|f| {
        f.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
    });
    let (parts, _) = request.into_parts();
    let conditions = preconditions(&parts.headers)?;
    let facts = c
        .wants_facts()
        .then(|| extract::facts(&parts, "GET", &id, 1, Headers::All));
    let out = c
        .get(
            &state.runtime.store,
            ReadRequest {
                id: &id,
                fields,
                facts,
                redis_budget: state.runtime.redis_timeout(),
            },
        )
        .await?;
    // RFC 9110 §13.2.1: preconditions only apply to what would otherwise be a 2xx, so
    // errors (404, 5xx) are answered as they are.
    Ok(match conditions.evaluate_get(out.version.as_deref()) {
        GetOutcome::Serve => {
            // Built directly: `(StatusCode, Bytes).into_response()` would set a content type
            // only to have it replaced below.
            let mut resp = Response::new(axum::body::Body::from(out.body.into_bytes()));
            set_etag(&mut resp, out.version.as_deref());
            let h = resp.headers_mut();
            // From the owned Strings: the header values take their buffers over.
            if let Ok(v) = HeaderValue::try_from(out.content_type) {
                h.insert(axum::http::header::CONTENT_TYPE, v);
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
        GetOutcome::Failed => {
            return Err(ApiError::PreconditionFailed(
                "If-Match does not match the current value's ETag".to_string(),
            )
            .with_cache_status(out.cache_status));
        }
    })
}

// `DELETE /v1/cache/{app}/{rule}/{id}`: the value, the rule's `related` ids, their leases.
#[utoipa::path(delete, path = "/v1/cache/{app}/{rule}/{id}", tag = "cache", operation_id = "cache_delete",
    description = "Drops the value, the values of the rule's `related` ids, and their refresh leases, atomically. `write: behind`: a value whose newest write is still in the journal is kept (counted in `pending`) until the write reaches the origin, because the origin's copy is older until then.",
    params(("app" = String, Path), ("rule" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, body = DeleteResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_value(
    State(state): State<AppState>,
    c: Rule<CacheRule>,
    CacheId(id): CacheId,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let facts = c
        .wants_facts()
        .then(|| extract::facts(&parts, "DELETE", &id, 1, Headers::All));
    let (deleted, pending) = c.delete(&state.runtime.store, &id, facts).await?;
    Ok(axum::Json(DeleteResponse { deleted, pending }).into_response())
}

// `POST /v1/cache/{app}/{rule}/_invalidate` with `{"tags": [...]}`.
#[utoipa::path(post, path = "/v1/cache/{app}/{rule}/_invalidate", tag = "cache", operation_id = "cache_invalidate",
    description = "Invalidates every value carrying any of the tags (from the origin's Cache-Tag/Surrogate-Key, \
        a PUT's Cache-Tag, or the plugin). O(tags) work: tag versions are bumped.",
    params(("app" = String, Path), ("rule" = String, Path)),
    request_body = InvalidateRequest,
    responses(
        (status = 200, body = InvalidateResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
async fn invalidate(
    State(state): State<AppState>,
    c: Rule<CacheRule>,
    JsonObject(req): JsonObject<InvalidateRequest>,
) -> Result<Response, ApiError> {
    let bumped = c.invalidate(&state.runtime.store, &req.tags).await?;
    Ok(axum::Json(InvalidateResponse { bumped }).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct InvalidateRequest {
    /// 1 to 100 tags, each 1 to 128 bytes without commas or whitespace.
    tags: Vec<String>,
}

impl Example for InvalidateRequest {
    const EXAMPLE: &'static str = r#"{"tags": ["product:1"]}"#;
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
