//! The write-behind dead letters, under `/admin/cache/{app}/{rule}/dead-letters` (behind the
//! admin check): list them, and replay them into the journal. Thin: parse, call
//! `patterns::cache::dead`, render.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::AppState;
use crate::http::admin::Admin;
use crate::http::extract::{Example, JsonObject, Query, Rule};
use crate::http::problem::{ApiError, Problem};
use crate::patterns::cache::{CacheRule, dead};
use crate::policy::cache::WriteMode;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(dead_letters))
        .routes(routes!(replay))
}

/// Dead letters listed per page by default, and at most.
const DEFAULT_PAGE: u64 = 100;
const MAX_PAGE: u64 = 1000;

/// A cache rule with dead letters: `write: behind` (409 `not-write-behind` for the others).
struct Behind(Rule<CacheRule>);

impl FromRequestParts<AppState> for Behind {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let c = Rule::<CacheRule>::from_request_parts(parts, state).await?;
        if c.write_mode() != WriteMode::Behind {
            return Err(ApiError::NotWriteBehind(format!(
                "cache rule `{}/{}` is not `write: behind`: it has no journal or dead letters",
                c.app, c.name
            )));
        }
        Ok(Behind(c))
    }
}

#[derive(Deserialize)]
struct DeadQuery {
    count: Option<String>,
    after: Option<String>,
}

/// One dead letter, without its payload.
#[derive(Serialize, ToSchema)]
pub struct DeadLetter {
    /// The dead letter's name, `<slot group>:<entry id>` (for `after` and replay).
    #[schema(example = "3:1764256000000-0")]
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
    /// Dead letters kept in all slot groups (each trimmed to journal_max_len / slot_groups,
    /// oldest first).
    total: u64,
    dead_letters: Vec<DeadLetter>,
    /// Pass as `after` for the next page; absent on the last page.
    next_after: Option<String>,
}

// `GET /admin/cache/{app}/{rule}/dead-letters?count=&after=`
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
async fn dead_letters(
    _: Admin,
    State(state): State<AppState>,
    Query(q): Query<DeadQuery>,
    Behind(c): Behind,
) -> Result<Response, ApiError> {
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
    let after = match q.after.as_deref() {
        None => None,
        Some(a) => match dead::parse_entry(a) {
            Some(e) => Some(e),
            None => {
                return Err(ApiError::BadRequest(format!(
                    "`after` must be a dead letter's `entry` such as 3:1764256000000-0, not `{a}`"
                )));
            }
        },
    };
    let (total, letters) = c.dead_letters(&state.runtime.store, after, count).await?;
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
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Replay only these dead letters, by `entry` (at most 1000).
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
    /// True when a slot group's journal filled up (journal_max_len / slot_groups) before all
    /// were moved.
    journal_full: bool,
}

impl Example for ReplayRequest {
    const EXAMPLE: &'static str = r#"{"ids": ["3:1764256000000-0"]}"#;
}

// `POST /admin/cache/{app}/{rule}/dead-letters/replay`
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
async fn replay(
    _: Admin,
    State(state): State<AppState>,
    Behind(c): Behind,
    JsonObject(req): JsonObject<ReplayRequest>,
) -> Result<Response, ApiError> {
    // Duplicates would be moved twice (the script reads the entries before deleting them).
    let mut ids = req.ids.unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    ids.retain(|i| seen.insert(i.clone()));
    if ids.len() as u64 > MAX_PAGE {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_PAGE} ids per replay"
        )));
    }
    let mut parsed = Vec::with_capacity(ids.len());
    for i in &ids {
        match dead::parse_entry(i) {
            Some((g, e)) => parsed.push((g, e.to_string())),
            None => {
                return Err(ApiError::BadRequest(format!(
                    "`{i}` is not a dead letter's `entry` such as 3:1764256000000-0"
                )));
            }
        }
    }
    let count = req.count.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&count) {
        return Err(ApiError::BadRequest(format!(
            "`count` must be from 1 to {MAX_PAGE}"
        )));
    }
    let done = c.replay(&state.runtime.store, &parsed, count).await?;
    metrics::counter!("patternd_cache_dead_letters_replayed_total", "app" => c.app.clone(), "rule" => c.name.clone()).increment(done.replayed);
    Ok(axum::Json(ReplayResponse {
        replayed: done.replayed,
        not_found: done.not_found,
        journal_full: done.journal_full,
    })
    .into_response())
}
