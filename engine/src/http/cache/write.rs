//! Cache writes: `PUT`/`PATCH /v1/cache/{app}/{rule}/{id}`. Thin: parse, call
//! `patterns::cache::write`, render.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;

use super::{preconditions, set_etag};
use crate::http::AppState;
use crate::http::extract::{self, CacheId, Headers, Rule};
use crate::http::problem::{ApiError, Problem};
use crate::patterns::cache::CacheRule;
use crate::patterns::cache::write::{PatchRequest, PutRequest, WriteError};
use crate::policy::cache::CacheFormat;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    // The path is shared with the read path (GET/DELETE there).
    OpenApiRouter::default().routes(
        routes!(put_value, patch_value).layer(axum::middleware::map_response(close_after_refusal)),
    )
}

/// A 413 is sent without reading the rest of the body: the connection then cannot carry
/// another request (the unread bytes would be taken for one), so tell the client to close it
/// rather than let it reuse a connection the server is about to drop.
async fn close_after_refusal(mut resp: Response) -> Response {
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The body, up to the rule's `max_value_bytes`: a larger one is refused with 413 before it
/// is read whole (a declared `Content-Length` is checked first).
async fn value_body(
    rule: &CacheRule,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<axum::body::Bytes, ApiError> {
    let max = rule.max_value_bytes();
    let too_large = |size: Option<u64>| {
        rule.count_write("too_large");
        ApiError::from(WriteError::TooLarge {
            size: size.unwrap_or(max + 1),
            max,
        })
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(declared));
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    extract::read_body_within(body, limit, || too_large(None)).await
}

/// `Cache-Tag: a, b` (commas and/or spaces; every header line).
fn request_tags(headers: &HeaderMap) -> Result<Vec<String>, ApiError> {
    let mut tags = Vec::new();
    for v in headers.get_all("cache-tag") {
        let text = v
            .to_str()
            .map_err(|_| ApiError::BadRequest("`Cache-Tag` must be ASCII".to_string()))?;
        tags.extend(
            text.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        );
    }
    Ok(tags)
}

// `PUT /v1/cache/{app}/{rule}/{id}`: the body is the value.
#[utoipa::path(put, path = "/v1/cache/{app}/{rule}/{id}", tag = "cache", operation_id = "cache_put",
    description = "Writes a value. The body is the value (`format: hash`: a JSON object, stored one field per member); its `Content-Type` is kept; `Cache-Tag: a, b` records tags (1-128 bytes, no commas or whitespace, at most 32). `write: cache` stores it; `write: through` PUTs it to the origin first and stores it only if the origin answered 2xx (meanwhile reads do not serve the value it replaces); `write: behind` stores it and appends a journal entry in one script, answers 202, and a background flusher delivers it to the origin at least once (retries with exponential backoff; coalesced per id; dead letters after `max_attempts`). A rule's cache plugin runs for writes too: the value lands on the plugin's key with its TTL and tags; the origin gets the client's id's URL. Plugin bypass: `write: through` writes the origin only (204); other modes answer 409.",
    params(("app" = String, Path), ("rule" = String, Path), ("id" = String, Path, description = "1 to 512 bytes"),
        ("Cache-Tag" = Option<String>, Header, description = "tags, comma- or space-separated"),
        ("If-Match" = Option<String>, Header, description = "`*` or the ETags the value must still have (strong comparison); else 412, nothing written"),
        ("If-None-Match" = Option<String>, Header, description = "`*`: only if no value exists; else 412, nothing written")),
    request_body(content = String, description = "The value", content_type = "*/*"),
    responses(
        (status = 204, description = "Stored (write: cache, or through after the origin accepted), with the new `ETag` for format: string. write: through with `Patternd-Degraded: cache-not-updated`: the origin accepted, Redis failed to store the value; reads go to the origin until the cache has it again",
            headers(("Patternd-Degraded" = Option<String>), ("ETag" = Option<String>))),
        (status = 202, description = "write: behind: stored and journaled (`ETag` for format: string)", body = PutAccepted,
            headers(("ETag" = Option<String>))),
        (status = 400, description = "Bad input, e.g. an id of `.` or `..`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown app or rule", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The rule's cache plugin bypassed the cache and the rule is not `write: through`; nothing written", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match / If-None-Match did not hold; nothing written (for write: through, the origin was not written either)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than max_value_bytes; nothing stored", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "write: through: the origin refused or could not be reached; the cache is unchanged, or (connection lost mid-request: the origin may have applied it) the cached value was dropped", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "write: behind: the journal of the id's slot group holds journal_max_len / slot_groups undelivered writes, or Redis is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "write: through: the origin timed out (it may have applied the write); the cached value was dropped", body = Problem, content_type = "application/problem+json"),
    ))]
async fn put_value(
    State(state): State<AppState>,
    c: Rule<CacheRule>,
    CacheId(id): CacheId,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = value_body(&c, &parts.headers, body).await?;
    let tags = request_tags(&parts.headers)?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let conditions = preconditions(&parts.headers)?;
    let facts = c
        .wants_facts()
        .then(|| extract::facts(&parts, "PUT", &id, 1, Headers::All));
    let out = c
        .put(
            &state.runtime.store,
            PutRequest {
                id: &id,
                content_type,
                tags,
                body,
                facts,
                conditions,
            },
        )
        .await?;
    let mut resp = match out.journal_id {
        Some(jid) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "journal_id": jid })),
        )
            .into_response(),
        None => no_content(out.cache_unconfirmed),
    };
    // RFC 9110 §9.3.4: a validator only when the value was stored exactly as sent, which
    // `format: hash` does not do (members re-encoded, served in name order).
    if c.spec.format == CacheFormat::String {
        set_etag(&mut resp, out.version.as_deref());
    }
    Ok(resp)
}

/// `Patternd-Degraded`, as on rate-limit answers decided without Redis.
static DEGRADED: HeaderName = HeaderName::from_static("patternd-degraded");

/// A 204; for a write-through the origin took while Redis failed to store it, with
/// `Patternd-Degraded: cache-not-updated`: the write succeeded where it counts (the origin,
/// and reads, which go there until the cache has it again), so it is not a 5xx, and a client
/// retrying on 5xx would only write again.
fn no_content(cache_unconfirmed: bool) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if cache_unconfirmed {
        resp.headers_mut().insert(
            DEGRADED.clone(),
            HeaderValue::from_static("cache-not-updated"),
        );
    }
    resp
}

// `PATCH /v1/cache/{app}/{rule}/{id}` with a JSON object (`format: hash` rules).
#[utoipa::path(patch, path = "/v1/cache/{app}/{rule}/{id}", tag = "cache", operation_id = "cache_patch",
    description = "Updates top-level members of a `format: hash` value (a JSON object; `null` deletes a member, as JSON Merge Patch at the top level). The value becomes fresh again and keeps its tags. `write: through` PATCHes the origin first; `write: behind` journals the whole resulting object (delivered as a PUT). A value that is not cached (absent, a cached 404, or invalidated) answers 404, except with `write: through`, where the origin took the patch (204). A rule's cache plugin chooses the key (and TTL) as for PUT; bypass: `write: through` PATCHes the origin only (204), other modes answer 409.",
    params(("app" = String, Path), ("rule" = String, Path), ("id" = String, Path),
        ("If-Match" = Option<String>, Header, description = "`*` or the ETags the value must still have (strong comparison); else 412, nothing written"),
        ("If-None-Match" = Option<String>, Header, description = "entity-tags the value must not have; else 412")),
    request_body(content = Object, content_type = "application/json"),
    responses(
        (status = 200, description = "The whole object after the patch, with its new `ETag`", body = Object, content_type = "application/json",
            headers(("ETag" = String))),
        (status = 202, description = "write: behind: the object after the patch, journaled, with its new `ETag`", body = Object, content_type = "application/json",
            headers(("ETag" = String), ("Patternd-Journal-Id" = String, description = "The journal entry that carries the write to the origin"))),
        (status = 204, description = "write: through: the origin accepted; the id was not cached (or, with `Patternd-Degraded: cache-not-updated`, Redis failed to store the result)",
            headers(("Patternd-Degraded" = Option<String>))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown app or rule, or no cached value to patch", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The rule is `format: string`, or the cache plugin bypassed the cache on a rule that is not `write: through`", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match / If-None-Match did not hold; nothing written", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not a JSON content type", body = Problem, content_type = "application/problem+json"),
        (status = 502, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
        (status = 504, body = Problem, content_type = "application/problem+json"),
    ))]
async fn patch_value(
    State(state): State<AppState>,
    c: Rule<CacheRule>,
    CacheId(id): CacheId,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if let Some(ct) = content_type {
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media != "application/json" && media != "application/merge-patch+json" {
            return Err(ApiError::UnsupportedMediaType(format!(
                "PATCH takes a JSON object (application/json or application/merge-patch+json), not `{ct}`"
            )));
        }
    }
    let conditions = preconditions(&parts.headers)?;
    let body = value_body(&c, &parts.headers, body).await?;
    let facts = c
        .wants_facts()
        .then(|| extract::facts(&parts, "PATCH", &id, 1, Headers::All));
    let out = c
        .patch(
            &state.runtime.store,
            PatchRequest {
                id: &id,
                content_type,
                body,
                facts,
                conditions,
            },
        )
        .await?;
    let Some(object) = out.object else {
        // Write-through of an id that was not cached, or not stored (Redis failed): the
        // origin took the patch.
        return Ok(no_content(out.cache_unconfirmed));
    };
    let status = if out.journal_id.is_some() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut resp = (status, object).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(jid) = out.journal_id.and_then(|j| HeaderValue::from_str(&j).ok()) {
        resp.headers_mut().insert("patternd-journal-id", jid);
    }
    // The ETag of the value as GET now serves it (RFC 9110 §8.8.3: the selected
    // representation as of the end of the request).
    set_etag(&mut resp, out.version.as_deref());
    Ok(resp)
}

// ---- OpenAPI -------------------------------------------------------------------------------

/// `PUT` with `write: behind`: the write is in the journal.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // the document's schema
pub struct PutAccepted {
    /// The journal entry that carries the write to the origin.
    #[schema(example = "1764256000000-0")]
    journal_id: String,
}
