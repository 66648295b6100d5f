//! Cache writes: `PUT`/`PATCH /v1/cache/{app}/{rule}/{id}`, and the write-behind dead letters
//! under `/admin/cache/{app}/{rule}/dead-letters` (behind the admin check). Thin: parse, call
//! `patterns::cache` (`write`, `dead`), render.

#![allow(dead_code)] // the OpenAPI stubs and schema types exist for the generated document only

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{OpenApi, ToSchema};

use super::AppState;
use super::openapi::Problem;
use super::problem::ApiError;
use crate::patterns::cache::dead;
use crate::patterns::cache::write::{PutRequest, WriteError};
use crate::patterns::cache::{CacheRule, check_cache_id};
use crate::policy::cache::{CacheFormat, WriteMode};

/// The routes this module serves; the OpenAPI test checks them against the document.
/// (`/v1/cache/{app}/{rule}/{id}` is shared with the read path: GET/DELETE there.)
pub(super) const ROUTES: &[&str] = &[
    "/v1/cache/{app}/{rule}/{id}",
    "/admin/cache/{app}/{rule}/dead-letters",
    "/admin/cache/{app}/{rule}/dead-letters/replay",
];

/// Dead letters listed per page by default, and at most.
const DEFAULT_PAGE: u64 = 100;
const MAX_PAGE: u64 = 1000;

pub(super) fn routes(state: AppState) -> Router<AppState> {
    let admin = Router::new()
        .route("/admin/cache/{app}/{rule}/dead-letters", get(dead_letters))
        .route(
            "/admin/cache/{app}/{rule}/dead-letters/replay",
            post(replay),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            super::admin::require_admin,
        ));
    Router::new()
        .route(
            "/v1/cache/{app}/{rule}/{id}",
            put(put_value)
                .patch(patch_value)
                .layer(axum::middleware::map_response(close_after_refusal)),
        )
        .merge(admin)
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

fn problem(status: StatusCode, slug: &'static str, detail: String) -> ApiError {
    ApiError::Problem {
        status,
        slug,
        detail,
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        let detail = e.to_string();
        match e {
            WriteError::Input(i) => ApiError::Input(i),
            WriteError::BadValue(_) => ApiError::BadRequest(detail),
            WriteError::TooLarge { .. } => {
                problem(StatusCode::PAYLOAD_TOO_LARGE, "too-large", detail)
            }
            WriteError::NotHash(_) => problem(StatusCode::CONFLICT, "not-hash", detail),
            WriteError::NotFound(_) => problem(StatusCode::NOT_FOUND, "not-cached", detail),
            WriteError::PreconditionFailed(_) => problem(
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                detail,
            ),
            WriteError::OriginRefused { .. } | WriteError::OriginUnreachable { .. } => {
                problem(StatusCode::BAD_GATEWAY, "origin-error", detail)
            }
            WriteError::OriginTimeout { .. } => {
                problem(StatusCode::GATEWAY_TIMEOUT, "origin-timeout", detail)
            }
            WriteError::JournalFull { .. } => {
                problem(StatusCode::SERVICE_UNAVAILABLE, "journal-full", detail)
            }
            WriteError::Bypassed(_) => problem(StatusCode::CONFLICT, "cache-bypassed", detail),
            WriteError::Plugin(p) => ApiError::PluginFailed(p.to_string()),
            WriteError::Store(s) if s.is_unavailable() => problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "redis-unavailable",
                "Redis is unavailable; nothing was written".to_string(),
            ),
            WriteError::Store(s) => s.into(),
            WriteError::Reply(_) | WriteError::Random(_) => ApiError::Internal(detail),
        }
    }
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
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over {
            too_large(None)
        } else {
            ApiError::BadRequest(format!("could not read the request body: {e}"))
        }
    })
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

/// `PUT /v1/cache/{app}/{rule}/{id}`: the body is the value.
async fn put_value(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Path((app, rule, id)) = path.map_err(super::bad_path)?;
    let c = super::cache::lookup(&state, &app, &rule)?;
    check_cache_id(&id)?;
    let (parts, body) = request.into_parts();
    let body = value_body(&c, &parts.headers, body).await?;
    let tags = request_tags(&parts.headers)?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let conditions = super::cache::preconditions(&parts.headers)?;
    let facts = c
        .wants_facts()
        .then(|| super::cache::facts("PUT", &id, &parts));
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
        super::cache::set_etag(&mut resp, out.version.as_deref());
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

/// `PATCH /v1/cache/{app}/{rule}/{id}` with a JSON object (`format: hash` rules).
async fn patch_value(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Path((app, rule, id)) = path.map_err(super::bad_path)?;
    let c = super::cache::lookup(&state, &app, &rule)?;
    check_cache_id(&id)?;
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
            return Err(problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                format!(
                    "PATCH takes a JSON object (application/json or application/merge-patch+json), not `{ct}`"
                ),
            ));
        }
    }
    let conditions = super::cache::preconditions(&parts.headers)?;
    let body = value_body(&c, &parts.headers, body).await?;
    let facts = c
        .wants_facts()
        .then(|| super::cache::facts("PATCH", &id, &parts));
    let out = c
        .patch(
            &state.runtime.store,
            &id,
            content_type,
            body,
            facts,
            &conditions,
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
    super::cache::set_etag(&mut resp, out.version.as_deref());
    Ok(resp)
}

fn behind_rule(state: &AppState, app: &str, rule: &str) -> Result<Arc<CacheRule>, ApiError> {
    let c = super::cache::lookup(state, app, rule)?;
    if c.write_mode() != WriteMode::Behind {
        return Err(problem(
            StatusCode::CONFLICT,
            "not-write-behind",
            format!(
                "cache rule `{app}/{rule}` is not `write: behind`: it has no journal or dead letters"
            ),
        ));
    }
    Ok(c)
}

/// A stream entry id: `<ms>-<seq>`.
fn valid_entry_id(s: &str) -> bool {
    s.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.len() <= 20
            && b.len() <= 20
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    })
}

#[derive(Deserialize)]
struct DeadQuery {
    count: Option<String>,
    after: Option<String>,
}

/// One dead letter, without its payload.
#[derive(Serialize, ToSchema)]
pub struct DeadLetter {
    /// The dead-letter entry id (for `after` and replay).
    #[schema(example = "1764256000000-0")]
    entry: String,
    /// The cache id the write was for.
    id: String,
    /// Delivery attempts made.
    attempts: u64,
    /// The last delivery error.
    error: String,
    /// When it was dead-lettered, epoch ms (Redis time).
    failed_at_ms: u64,
    payload_bytes: u64,
    content_type: String,
    /// The journal entry the write was first recorded as.
    journal_id: String,
}

impl From<dead::DeadLetter> for DeadLetter {
    fn from(d: dead::DeadLetter) -> Self {
        DeadLetter {
            entry: d.entry,
            id: d.id,
            attempts: d.attempts,
            error: d.error,
            failed_at_ms: d.failed_at_ms,
            payload_bytes: d.payload_bytes,
            content_type: d.content_type,
            journal_id: d.journal_id,
        }
    }
}

/// A page of dead letters, oldest first.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterPage {
    /// Dead letters kept in all (trimmed to `journal_max_len`, oldest first).
    total: u64,
    dead_letters: Vec<DeadLetter>,
    /// Pass as `after` for the next page; absent on the last page.
    next_after: Option<String>,
}

/// `GET /admin/cache/{app}/{rule}/dead-letters?count=&after=`
async fn dead_letters(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<DeadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((app, rule)) = path.map_err(super::bad_path)?;
    // A malformed query (e.g. `count` given twice) is a problem+json 400 like any bad input,
    // not axum's plain-text rejection.
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let c = behind_rule(&state, &app, &rule)?;
    let count = match q.count.as_deref() {
        None => DEFAULT_PAGE,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "`count` must be a number from 1 to {MAX_PAGE}, not `{s}`"
                )));
            }
        },
    };
    let start = match q.after.as_deref() {
        None => "-".to_string(),
        Some(a) if valid_entry_id(a) => format!("({a}"),
        Some(a) => {
            return Err(ApiError::BadRequest(format!(
                "`after` must be a dead-letter entry id such as 1764256000000-0, not `{a}`"
            )));
        }
    };
    let (total, letters) = c.dead_letters(&state.runtime.store, &start, count).await?;
    let letters: Vec<DeadLetter> = letters.into_iter().map(DeadLetter::from).collect();
    let next_after = (letters.len() as u64 == count)
        .then(|| letters.last().map(|l| l.entry.clone()))
        .flatten();
    Ok(axum::Json(DeadLetterPage {
        total,
        dead_letters: letters,
        next_after,
    })
    .into_response())
}

/// Body of a replay: all fields optional.
#[derive(Deserialize, Serialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Replay only these dead-letter entries (at most 1000).
    ids: Option<Vec<String>>,
    /// Without `ids`: replay the oldest `count` (default 100, at most 1000).
    count: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct ReplayResponse {
    /// Moved back into the journal (delivered by the flusher like new writes; a write that a
    /// newer one superseded meanwhile is acknowledged without a call).
    replayed: u64,
    /// Given ids that are not dead letters (any more).
    not_found: u64,
    /// True when the journal filled up (`journal_max_len`) before all were moved.
    journal_full: bool,
}

/// `POST /admin/cache/{app}/{rule}/dead-letters/replay`
async fn replay(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Path((app, rule)) = path.map_err(super::bad_path)?;
    let c = behind_rule(&state, &app, &rule)?;
    let body = super::read_body(request.into_body()).await?;
    let req: ReplayRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    // Duplicates would be moved twice (the script reads the entries before deleting them).
    let mut ids = req.ids.unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    ids.retain(|i| seen.insert(i.clone()));
    if ids.len() as u64 > MAX_PAGE {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_PAGE} ids per replay"
        )));
    }
    if let Some(bad) = ids.iter().find(|i| !valid_entry_id(i)) {
        return Err(ApiError::BadRequest(format!(
            "`{bad}` is not a dead-letter entry id such as 1764256000000-0"
        )));
    }
    let count = req.count.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&count) {
        return Err(ApiError::BadRequest(format!(
            "`count` must be from 1 to {MAX_PAGE}"
        )));
    }
    let done = c.replay(&state.runtime.store, &ids, count).await?;
    metrics::counter!("patternd_cache_dead_letters_replayed_total", "app" => app.clone(), "rule" => rule.clone()).increment(done.replayed);
    Ok(axum::Json(ReplayResponse {
        replayed: done.replayed,
        not_found: done.not_found,
        journal_full: done.journal_full,
    })
    .into_response())
}

// ---- OpenAPI -------------------------------------------------------------------------------

/// `PUT` with `write: behind`: the write is in the journal.
#[derive(Serialize, ToSchema)]
pub struct PutAccepted {
    /// The journal entry that carries the write to the origin.
    #[schema(example = "1764256000000-0")]
    journal_id: String,
}

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
        (status = 503, description = "write: behind: the journal holds journal_max_len undelivered writes, or Redis is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "write: through: the origin timed out (it may have applied the write); the cached value was dropped", body = Problem, content_type = "application/problem+json"),
    ))]
fn put_doc() {}

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
fn patch_doc() {}

#[utoipa::path(get, path = "/admin/cache/{app}/{rule}/dead-letters", tag = "admin", operation_id = "cache_dead_letters",
    description = "Write-behind entries that failed `max_attempts` deliveries, oldest first, without payloads. Bearer token, or loopback only without one.",
    params(("app" = String, Path), ("rule" = String, Path),
        ("count" = Option<u64>, Query, description = "page size, 1-1000 (default 100)"),
        ("after" = Option<String>, Query, description = "list entries after this entry id (`next_after` of the previous page)")),
    responses(
        (status = 200, body = DeadLetterPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The rule is not `write: behind`", body = Problem, content_type = "application/problem+json"),
    ))]
fn dead_letters_doc() {}

#[utoipa::path(post, path = "/admin/cache/{app}/{rule}/dead-letters/replay", tag = "admin", operation_id = "cache_dead_letters_replay",
    description = "Moves dead letters back into the journal, atomically (each entry is in exactly one of the two streams); the flusher then delivers them like new writes. A replayed write that a newer write of the same id superseded is acknowledged without reaching the origin. Bearer token, or loopback only without one.",
    params(("app" = String, Path), ("rule" = String, Path)),
    request_body(content = Option<ReplayRequest>, content_type = "application/json"),
    responses(
        (status = 200, body = ReplayResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The rule is not `write: behind`", body = Problem, content_type = "application/problem+json"),
    ))]
fn replay_doc() {}

#[derive(OpenApi)]
#[openapi(
    paths(put_doc, patch_doc, dead_letters_doc, replay_doc),
    components(schemas(PutAccepted, DeadLetter, DeadLetterPage, ReplayRequest, ReplayResponse))
)]
struct WriteApi;

/// This module's part of the OpenAPI document (merged into `/openapi.json`).
pub(super) fn api() -> utoipa::openapi::OpenApi {
    WriteApi::openapi()
}
