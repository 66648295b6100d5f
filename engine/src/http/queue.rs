//! `/v1/queues/{app}/{rule}` and below, and the dead letters under `/admin/queues/…`: thin
//! handlers around `patterns::queue`.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::admin::Admin;
use super::extract::{self, Example, Headers, Id, JsonObject, Query, Rule};
use super::problem::{ApiError, Problem};
use crate::patterns::QueueRule;
use crate::patterns::queue::Nacked;
use crate::patterns::queue::dead::DeadLetter;
use doc::{
    QueueAck, QueueDeadPage, QueueExtend, QueueExtended, QueueJobs, QueueNack, QueueNacked,
    QueuePush, QueuePushed, QueueReplay, QueueReplayed, QueueStats,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(push, stats))
        .routes(routes!(pop))
        .routes(routes!(ack))
        .routes(routes!(nack))
        .routes(routes!(extend))
        .routes(routes!(dead_letters))
        .routes(routes!(replay))
}

/// Dead letters listed or replayed per call by default, and at most.
const DEFAULT_PAGE: u64 = 100;
const MAX_PAGE: u64 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    payload: Value,
    #[serde(default)]
    delay: Option<String>,
    #[serde(default)]
    dedup_id: Option<String>,
    #[serde(default)]
    priority: Option<u64>,
}

impl Example for PushBody {
    const EXAMPLE: &'static str =
        r#"{"payload": {"order": 42}, "delay": "5s", "dedup_id": "order-42", "priority": 0}"#;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PopQuery {
    count: Option<String>,
    wait: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    receipt: String,
}

impl Example for AckBody {
    const EXAMPLE: &'static str = r#"{"receipt": "..."}"#;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NackBody {
    receipt: String,
    #[serde(default)]
    delay: Option<String>,
}

impl Example for NackBody {
    const EXAMPLE: &'static str = r#"{"receipt": "...", "delay": "10s"}"#;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    receipt: String,
    #[serde(default)]
    visibility: Option<String>,
}

impl Example for ExtendBody {
    const EXAMPLE: &'static str = r#"{"receipt": "...", "visibility": "1m"}"#;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadQuery {
    count: Option<String>,
    after: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    count: Option<u64>,
}

impl Example for ReplayBody {
    const EXAMPLE: &'static str = r#"{"ids": ["..."]}"#;
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// `POST /v1/queues/{app}/{rule}` with `{"payload": …, "delay": "5s", "dedup_id": "…"}`.
#[utoipa::path(post, path = "/v1/queues/{app}/{rule}", tag = "queues", operation_id = "queue_push",
    description = "Pushes a job. With `dedup_id`, a second push of the same id within the rule's `dedup_window` adds no job and answers the first job's id (`deduplicated: true`).",
    params(("app" = String, Path), ("rule" = String, Path)),
    request_body = QueuePush,
    responses(
        (status = 201, body = QueuePushed),
        (status = 200, description = "Deduplicated: the job of the first push with this `dedup_id`", body = QueuePushed),
        (status = 503, description = "The queue holds `max_len` jobs (`queue-full`), or Redis is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown app or rule", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The rule's plugin rejected the job (`job-rejected`); nothing was pushed", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The rule's plugin failed and the rule has no `fallback: accept`", body = Problem, content_type = "application/problem+json")))]
async fn push(
    State(state): State<AppState>,
    q: Rule<QueueRule>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = extract::read_body(body).await?;
    let req: PushBody = extract::object(&body, PushBody::EXAMPLE)?;
    let facts = q
        .wants_facts()
        .then(|| extract::facts(&parts, "POST", "", 0, Headers::All));
    let pushed = q
        .push(
            &state.runtime.store,
            &req.payload,
            req.delay.as_deref(),
            req.dedup_id.as_deref(),
            req.priority,
            facts,
        )
        .await?;
    let status = if pushed.deduplicated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(if pushed.fallback {
            json!({ "id": pushed.id, "deduplicated": pushed.deduplicated, "fallback": true })
        } else {
            json!({ "id": pushed.id, "deduplicated": pushed.deduplicated })
        }),
    )
        .into_response())
}

// `GET /v1/queues/{app}/{rule}`.
#[utoipa::path(get, path = "/v1/queues/{app}/{rule}", tag = "queues", operation_id = "queue_stats",
    description = "How many jobs the queue holds, by state (due delayed jobs and lapsed leases are moved first).",
    params(("app" = String, Path), ("rule" = String, Path)),
    responses(
        (status = 200, body = QueueStats),
        (status = 404, description = "Unknown app or rule", body = Problem, content_type = "application/problem+json")))]
async fn stats(State(state): State<AppState>, q: Rule<QueueRule>) -> Result<Response, ApiError> {
    let s = q.stats(&state.runtime.store).await?;
    Ok(Json(json!({
        "ready": s.ready,
        "delayed": s.delayed,
        "in_flight": s.in_flight,
        "dead": s.dead,
    }))
    .into_response())
}

// `POST /v1/queues/{app}/{rule}/_pop?count=n&wait=5s`.
#[utoipa::path(post, path = "/v1/queues/{app}/{rule}/_pop", tag = "queues", operation_id = "queue_pop",
    description = "Takes up to `count` ready jobs (highest priority, then oldest first), waiting up to `wait` for the first. Each is invisible to other pops for the rule's `visibility`, and comes with a receipt for ack, nack and extend. An empty list when none came in time.",
    params(("app" = String, Path), ("rule" = String, Path),
        ("count" = Option<u64>, Query, description = "1 to the rule's `max_pop` (default 1)"),
        ("wait" = Option<String>, Query, description = "a duration such as `5s`, at most the rule's `max_wait` (default `0s`: no wait)")),
    responses(
        (status = 200, body = QueueJobs),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown app or rule", body = Problem, content_type = "application/problem+json")))]
async fn pop(
    State(state): State<AppState>,
    q: Rule<QueueRule>,
    Query(query): Query<PopQuery>,
) -> Result<Response, ApiError> {
    let (count, wait) = q.pop_params(query.count.as_deref(), query.wait.as_deref())?;
    let jobs = q.pop(&state.runtime.store, count, wait).await?;
    let jobs: Vec<Value> = jobs
        .into_iter()
        .map(|j| {
            json!({
                "id": j.id,
                "receipt": j.receipt,
                "attempts": j.attempts,
                "priority": j.priority,
                "payload": j.payload,
            })
        })
        .collect();
    Ok(Json(json!({
        "jobs": jobs,
        "visibility_ms": ms(q.spec.visibility),
    }))
    .into_response())
}

// `POST /v1/queues/{app}/{rule}/jobs/{id}/_ack` with `{"receipt": "…"}`.
#[utoipa::path(post, path = "/v1/queues/{app}/{rule}/jobs/{id}/_ack", tag = "queues", operation_id = "queue_ack",
    description = "The job is done: it is removed. Only the receipt of its current delivery can, within its visibility.",
    params(("app" = String, Path), ("rule" = String, Path), ("id" = String, Path, description = "the job id")),
    request_body = QueueAck,
    responses(
        (status = 204, description = "Acknowledged"),
        (status = 409, description = "The receipt holds no lease (acknowledged already, or its visibility lapsed)", body = Problem, content_type = "application/problem+json"),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn ack(
    State(state): State<AppState>,
    q: Rule<QueueRule>,
    Id(id): Id,
    JsonObject(req): JsonObject<AckBody>,
) -> Result<Response, ApiError> {
    q.ack(&state.runtime.store, &id, &req.receipt).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// `POST /v1/queues/{app}/{rule}/jobs/{id}/_nack` with `{"receipt": "…", "delay": "10s"}`.
#[utoipa::path(post, path = "/v1/queues/{app}/{rule}/jobs/{id}/_nack", tag = "queues", operation_id = "queue_nack",
    description = "Gives the job back: retried after `delay`, or after the rule's backoff (`retry_backoff` doubling per attempt); after `max_attempts` deliveries it moves to the dead letters.",
    params(("app" = String, Path), ("rule" = String, Path), ("id" = String, Path, description = "the job id")),
    request_body = QueueNack,
    responses(
        (status = 200, body = QueueNacked),
        (status = 409, description = "The receipt holds no lease", body = Problem, content_type = "application/problem+json"),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn nack(
    State(state): State<AppState>,
    q: Rule<QueueRule>,
    Id(id): Id,
    JsonObject(req): JsonObject<NackBody>,
) -> Result<Response, ApiError> {
    let body = match q
        .nack(
            &state.runtime.store,
            &id,
            &req.receipt,
            req.delay.as_deref(),
        )
        .await?
    {
        Nacked::Retry(d) => json!({ "dead_lettered": false, "retry_in_ms": ms(d) }),
        Nacked::DeadLettered => json!({ "dead_lettered": true }),
    };
    Ok(Json(body).into_response())
}

// `POST /v1/queues/{app}/{rule}/jobs/{id}/_extend` with `{"receipt": "…", "visibility": "1m"}`.
#[utoipa::path(post, path = "/v1/queues/{app}/{rule}/jobs/{id}/_extend", tag = "queues", operation_id = "queue_extend",
    description = "The job stays invisible for `visibility` from now (default: the rule's; at most its `max_visibility`).",
    params(("app" = String, Path), ("rule" = String, Path), ("id" = String, Path, description = "the job id")),
    request_body = QueueExtend,
    responses(
        (status = 200, body = QueueExtended),
        (status = 409, description = "The receipt holds no lease", body = Problem, content_type = "application/problem+json"),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn extend(
    State(state): State<AppState>,
    q: Rule<QueueRule>,
    Id(id): Id,
    JsonObject(req): JsonObject<ExtendBody>,
) -> Result<Response, ApiError> {
    let vis = q
        .extend(
            &state.runtime.store,
            &id,
            &req.receipt,
            req.visibility.as_deref(),
        )
        .await?;
    Ok(Json(json!({ "visibility_ms": ms(vis) })).into_response())
}

fn letter(d: DeadLetter) -> Value {
    json!({
        "id": d.id,
        "failed_at_ms": d.failed_at_ms,
        "attempts": d.attempts,
        "priority": d.priority,
        "reason": d.reason,
        "payload": d.payload,
    })
}

// `GET /admin/queues/{app}/{rule}/dead-letters?count=&after=`
#[utoipa::path(get, path = "/admin/queues/{app}/{rule}/dead-letters", tag = "admin", operation_id = "queue_dead_letters",
    description = "Jobs that had `max_attempts` deliveries, oldest first, with their payloads. Bearer token, or loopback only without one.",
    params(("app" = String, Path), ("rule" = String, Path),
        ("count" = Option<u64>, Query, description = "page size, 1-1000 (default 100)"),
        ("after" = Option<String>, Query, description = "list the dead letters after this job id (`next_after` of the previous page)")),
    responses(
        (status = 200, body = QueueDeadPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn dead_letters(
    _: Admin,
    State(state): State<AppState>,
    Query(query): Query<DeadQuery>,
    q: Rule<QueueRule>,
) -> Result<Response, ApiError> {
    let count = match query.count.as_deref() {
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
    let (total, letters) = q
        .dead_letters(&state.runtime.store, query.after.as_deref(), count)
        .await?;
    let next_after = (letters.len() as u64 == count)
        .then(|| letters.last().map(|l| l.id.clone()))
        .flatten();
    Ok(Json(json!({
        "total": total,
        "dead_letters": letters.into_iter().map(letter).collect::<Vec<_>>(),
        "next_after": next_after,
    }))
    .into_response())
}

// `POST /admin/queues/{app}/{rule}/dead-letters/replay`
#[utoipa::path(post, path = "/admin/queues/{app}/{rule}/dead-letters/replay", tag = "admin", operation_id = "queue_dead_letters_replay",
    description = "Moves dead letters back to ready with their attempts reset, atomically (each job is in exactly one of the two); stops when the queue is full. Bearer token, or loopback only without one.",
    params(("app" = String, Path), ("rule" = String, Path)),
    request_body(content = Option<QueueReplay>, content_type = "application/json"),
    responses(
        (status = 200, body = QueueReplayed),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json")))]
async fn replay(
    _: Admin,
    State(state): State<AppState>,
    q: Rule<QueueRule>,
    JsonObject(req): JsonObject<ReplayBody>,
) -> Result<Response, ApiError> {
    // A duplicate would be counted as not found the second time: drop it.
    let mut ids = req.ids.unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    ids.retain(|i| seen.insert(i.clone()));
    if ids.len() as u64 > MAX_PAGE {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_PAGE} ids per replay"
        )));
    }
    let count = req.count.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&count) {
        return Err(ApiError::BadRequest(format!(
            "`count` must be from 1 to {MAX_PAGE}"
        )));
    }
    let done = q.replay(&state.runtime.store, &ids, count).await?;
    Ok(Json(json!({
        "replayed": done.replayed,
        "not_found": done.not_found,
        "queue_full": done.queue_full,
    }))
    .into_response())
}

// ------------------------------------------------------------------------------------------
// OpenAPI
// ------------------------------------------------------------------------------------------

#[allow(dead_code)] // schema types exist for the generated document only
mod doc {
    use utoipa::ToSchema;

    /// A job to push.
    #[derive(ToSchema)]
    pub struct QueuePush {
        /// Any JSON value, handed to the worker as is.
        payload: serde_json::Value,
        /// Ready this long from now (a duration such as `5s`; at most the rule's `max_delay`).
        delay: Option<String>,
        /// A second push with this id within the rule's `dedup_window` adds no job.
        dedup_id: Option<String>,
        /// 0 (default) to 9; higher pops first.
        priority: Option<u64>,
    }

    #[derive(ToSchema)]
    pub struct QueuePushed {
        id: String,
        /// True when this is the job of an earlier push with the same `dedup_id`.
        deduplicated: bool,
        /// Present (true) when the rule's plugin failed and its `fallback: accept` pushed the
        /// job as asked.
        fallback: Option<bool>,
    }

    #[derive(ToSchema)]
    pub struct QueueStats {
        ready: u64,
        delayed: u64,
        in_flight: u64,
        dead: u64,
    }

    /// A popped job.
    #[derive(ToSchema)]
    pub struct QueueJob {
        id: String,
        /// Proves this delivery's lease for ack, nack and extend.
        receipt: String,
        /// Deliveries so far, this one included.
        attempts: u64,
        priority: u64,
        payload: serde_json::Value,
    }

    #[derive(ToSchema)]
    pub struct QueueJobs {
        jobs: Vec<QueueJob>,
        /// How long the jobs stay invisible to other pops.
        visibility_ms: u64,
    }

    #[derive(ToSchema)]
    pub struct QueueAck {
        receipt: String,
    }

    #[derive(ToSchema)]
    pub struct QueueNack {
        receipt: String,
        /// Retry after this long (default: the rule's backoff).
        delay: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct QueueNacked {
        /// True when the job had its `max_attempts` deliveries: now a dead letter.
        dead_lettered: bool,
        /// When retried: in how long.
        retry_in_ms: Option<u64>,
    }

    #[derive(ToSchema)]
    pub struct QueueExtend {
        receipt: String,
        /// From now (default: the rule's `visibility`; at most its `max_visibility`).
        visibility: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct QueueExtended {
        visibility_ms: u64,
    }

    #[derive(ToSchema)]
    pub struct QueueDeadLetter {
        id: String,
        /// When it was dead-lettered, epoch ms (Redis time).
        failed_at_ms: u64,
        attempts: u64,
        priority: u64,
        /// `lapsed` (its last visibility ran out) or `nacked`.
        reason: String,
        payload: serde_json::Value,
    }

    #[derive(ToSchema)]
    pub struct QueueDeadPage {
        /// Dead letters kept (at most the rule's `dead_max_len`).
        total: u64,
        dead_letters: Vec<QueueDeadLetter>,
        /// Pass as `after` for the next page; absent on the last page.
        next_after: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct QueueReplay {
        /// Replay only these (job ids, at most 1000).
        ids: Option<Vec<String>>,
        /// Without `ids`: the oldest `count` (default 100, at most 1000).
        count: Option<u64>,
    }

    #[derive(ToSchema)]
    pub struct QueueReplayed {
        replayed: u64,
        not_found: u64,
        /// True when the queue reached `max_len` before all were moved.
        queue_full: bool,
    }
}
