//! `/v1/streams/{app}/{rule}` and below: thin handlers around `patterns::stream`.
//!
//! The live tail is its own route (`/_tail`) rather than content negotiation on the range
//! read: a browser's `EventSource` cannot choose its `Accept` header's other values, and a
//! separate path keeps both documented apart.

use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::{self, Example, Headers, Id, JsonObject, Query, Rule};
use super::problem::{ApiError, Problem};
use super::sse::{self, Rendered, SseBody};
use crate::patterns::StreamRule;
use crate::patterns::stream::TailEvent;
use doc::{StreamAck, StreamAcked, StreamAppend, StreamAppended, StreamEntries, StreamGroupRead};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(append, range))
        .routes(routes!(tail))
        .routes(routes!(dead))
        .routes(routes!(read_group))
        .routes(routes!(ack))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppendBody {
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    entries: Option<Vec<Value>>,
}

impl Example for AppendBody {
    const EXAMPLE: &'static str =
        r#"{"data": {"order": 42}} or {"entries": [{"order": 42}, {"order": 43}]}"#;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    ids: Vec<String>,
}

impl Example for AckBody {
    const EXAMPLE: &'static str = r#"{"ids": ["1700000000000-0"]}"#;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
    count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupQuery {
    consumer: String,
    count: Option<u64>,
    wait: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TailQuery {
    last_event_id: Option<String>,
}

/// An entry's data is the JSON text appended; anything else (written by another client) is
/// shown as a string.
fn data(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

// `POST /v1/streams/{app}/{rule}` with `{"data": ...}` or `{"entries": [...]}`.
#[utoipa::path(post, path = "/v1/streams/{app}/{rule}", tag = "streams", operation_id = "stream_append",
    description = "Appends one entry (`data`) or a batch (`entries`, at most the rule's `max_batch`), trimming the stream to its `max_len` and `retention` in the same script.",
    params(("app" = String, Path), ("rule" = String, Path)),
    request_body = StreamAppend,
    responses((status = 201, body = StreamAppended),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The rule's plugin rejected an entry (`entry-rejected`); nothing was appended", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The rule's plugin failed and the rule has no `fallback: accept`", body = Problem, content_type = "application/problem+json")))]
async fn append(
    State(state): State<AppState>,
    rule: Rule<StreamRule>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = extract::read_body(body).await?;
    let req: AppendBody = extract::object(&body, AppendBody::EXAMPLE)?;
    let facts = rule
        .wants_facts()
        .then(|| extract::facts(&parts, "POST", "", 0, Headers::All));
    let values = match (req.data, req.entries) {
        (Some(d), None) => vec![d],
        (None, Some(e)) => e,
        _ => {
            return Err(ApiError::BadRequest(
                "send either `data` (one entry) or `entries` (a batch)".into(),
            ));
        }
    };
    let texts: Vec<String> = values.iter().map(Value::to_string).collect();
    let (ids, fallback) = rule.append(&state.runtime.store, &texts, facts).await?;
    let body = if fallback {
        json!({ "ids": ids, "fallback": true })
    } else {
        json!({ "ids": ids })
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

// `GET /v1/streams/{app}/{rule}?from=&to=&count=`.
#[utoipa::path(get, path = "/v1/streams/{app}/{rule}", tag = "streams", operation_id = "stream_range",
    description = "Entries from `from` to `to` (inclusive; `(id` excludes; default `-` and `+`), at most `count` (default 10, at most the rule's `max_count`). `next` is the `from` of the following page.",
    params(("app" = String, Path), ("rule" = String, Path),
        ("from" = Option<String>, Query), ("to" = Option<String>, Query), ("count" = Option<u64>, Query)),
    responses((status = 200, body = StreamEntries)))]
async fn range(
    State(state): State<AppState>,
    rule: Rule<StreamRule>,
    Query(q): Query<RangeQuery>,
) -> Result<Response, ApiError> {
    let entries = rule
        .range(
            &state.runtime.store,
            q.from.as_deref(),
            q.to.as_deref(),
            q.count,
        )
        .await?;
    let next = entries.last().map(|e| format!("({}", e.id));
    let entries: Vec<Value> = entries
        .iter()
        .map(|e| json!({ "id": e.id, "data": data(&e.data) }))
        .collect();
    Ok(Json(json!({ "entries": entries, "next": next })).into_response())
}

// `GET /v1/streams/{app}/{rule}/_dead?from=&to=&count=`.
#[utoipa::path(get, path = "/v1/streams/{app}/{rule}/_dead", tag = "streams", operation_id = "stream_dead_letters",
    description = "Dead letters: entries claimed past `max_deliveries`, with the original `id`, `group`, `consumer`, `deliveries` and `data`.",
    params(("app" = String, Path), ("rule" = String, Path),
        ("from" = Option<String>, Query), ("to" = Option<String>, Query), ("count" = Option<u64>, Query)),
    responses((status = 200, body = StreamEntries)))]
async fn dead(
    State(state): State<AppState>,
    rule: Rule<StreamRule>,
    Query(q): Query<RangeQuery>,
) -> Result<Response, ApiError> {
    let letters = rule
        .dead_letters(
            &state.runtime.store,
            q.from.as_deref(),
            q.to.as_deref(),
            q.count,
        )
        .await?;
    let next = letters.last().map(|e| format!("({}", e.id));
    let entries: Vec<Value> = letters
        .iter()
        .map(|l| {
            let mut o = serde_json::Map::new();
            o.insert("dead_id".into(), json!(l.id));
            for (k, v) in &l.fields {
                let v = match k.as_str() {
                    "d" => ("data".to_string(), data(v)),
                    "deliveries" => (
                        k.clone(),
                        v.parse::<u64>().map_or_else(|_| json!(v), |n| json!(n)),
                    ),
                    _ => (k.clone(), json!(v)),
                };
                o.insert(v.0, v.1);
            }
            Value::Object(o)
        })
        .collect();
    Ok(Json(json!({ "entries": entries, "next": next })).into_response())
}

fn render_tail(ev: TailEvent) -> Rendered {
    match ev {
        TailEvent::Entry(e) => Rendered {
            bytes: sse::event(Some(&e.id), None, e.data.as_bytes()),
            last: false,
        },
        TailEvent::Dropped(reason) => Rendered {
            bytes: sse::event(
                None,
                Some("dropped"),
                json!({ "reason": reason }).to_string().as_bytes(),
            ),
            last: true,
        },
    }
}

// `GET /v1/streams/{app}/{rule}/_tail`, `Last-Event-ID` to resume.
#[utoipa::path(get, path = "/v1/streams/{app}/{rule}/_tail", tag = "streams", operation_id = "stream_tail",
    description = "The live tail as Server-Sent Events: each entry is an event whose `id` is its stream id and whose `data` is its JSON. With `Last-Event-ID` (or `?last_event_id=`; `0-0` for everything retained) it resumes right after that entry: nothing lost, nothing twice. A client further behind than the rule's `tail_buffer` gets `event: dropped` and the stream ends; it reconnects with its last id.",
    params(("app" = String, Path), ("rule" = String, Path),
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this stream id"),
        ("last_event_id" = Option<String>, Query, description = "the same, for clients that cannot set headers")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String)))]
async fn tail(
    State(state): State<AppState>,
    rule: Rule<StreamRule>,
    headers: HeaderMap,
    Query(q): Query<TailQuery>,
) -> Result<Response, ApiError> {
    let header = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("`Last-Event-ID` is not text".into()))?
                .to_string(),
        ),
        None => None,
    };
    let last = header.or(q.last_event_id);
    let events = rule.tail(&state.runtime.store, last.as_deref())?;
    let body = SseBody::new(events, render_tail, rule.spec.heartbeat, "stream");
    Ok(sse::response(body))
}

// `GET /v1/streams/{app}/{rule}/groups/{group}?consumer=&count=&wait=`.
#[utoipa::path(get, path = "/v1/streams/{app}/{rule}/groups/{group}", tag = "streams", operation_id = "stream_group_read",
    description = "Reads for `consumer` of `group`: entries idle past `claim_after` first (claimed; past `max_deliveries` they go to the dead letters instead), then new ones; at most `count`. With `wait` (a duration such as `5s`, at most the rule's `max_wait`) an empty read waits for entries.",
    params(("app" = String, Path), ("rule" = String, Path), ("group" = String, Path),
        ("consumer" = String, Query), ("count" = Option<u64>, Query), ("wait" = Option<String>, Query)),
    responses((status = 200, body = StreamGroupRead)))]
async fn read_group(
    State(state): State<AppState>,
    rule: Rule<StreamRule>,
    Id(group): Id,
    Query(q): Query<GroupQuery>,
) -> Result<Response, ApiError> {
    let wait = match q.wait.as_deref() {
        None | Some("0") => None,
        Some(w) => Some(parse_wait(w)?),
    };
    let read = rule
        .read_group(&state.runtime.store, &group, &q.consumer, q.count, wait)
        .await?;
    let entries: Vec<Value> = read
        .entries
        .iter()
        .map(|e| json!({ "id": e.id, "data": data(&e.data), "deliveries": e.deliveries }))
        .collect();
    Ok(Json(json!({ "entries": entries, "dead_lettered": read.dead_lettered })).into_response())
}

fn parse_wait(w: &str) -> Result<Duration, ApiError> {
    crate::policy::duration::parse(w).map_err(|m| ApiError::BadRequest(format!("`wait`: {m}")))
}

// `POST /v1/streams/{app}/{rule}/groups/{group}/ack` with `{"ids": [...]}`.
#[utoipa::path(post, path = "/v1/streams/{app}/{rule}/groups/{group}/ack", tag = "streams", operation_id = "stream_ack",
    description = "Acks entries of `group` (at most the rule's `max_batch`); `acked` counts those that were pending.",
    params(("app" = String, Path), ("rule" = String, Path), ("group" = String, Path)),
    request_body = StreamAck,
    responses((status = 200, body = StreamAcked)))]
async fn ack(
    State(state): State<AppState>,
    rule: Rule<StreamRule>,
    Id(group): Id,
    JsonObject(req): JsonObject<AckBody>,
) -> Result<Response, ApiError> {
    let n = rule.ack(&state.runtime.store, &group, &req.ids).await?;
    Ok(Json(json!({ "acked": n })).into_response())
}

// ------------------------------------------------------------------------------------------
// OpenAPI
// ------------------------------------------------------------------------------------------

#[allow(dead_code)] // schema types exist for the generated document only
mod doc {
    use serde_json::Value;
    use utoipa::ToSchema;

    /// One entry (`data`) or a batch (`entries`), not both.
    #[derive(ToSchema)]
    pub struct StreamAppend {
        data: Option<Value>,
        entries: Option<Vec<Value>>,
    }

    #[derive(ToSchema)]
    pub struct StreamAppended {
        /// The new entries' stream ids, in order.
        ids: Vec<String>,
    }

    #[derive(ToSchema)]
    pub struct StreamEntry {
        id: String,
        data: Value,
    }

    #[derive(ToSchema)]
    pub struct StreamEntries {
        entries: Vec<StreamEntry>,
        /// `(<last id>`: the `from` of the next page; null when the page is empty.
        next: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct StreamDelivered {
        id: String,
        data: Value,
        /// 1 on the first delivery; each claim adds one.
        deliveries: u64,
    }

    #[derive(ToSchema)]
    pub struct StreamGroupRead {
        entries: Vec<StreamDelivered>,
        /// Entries this read moved to the dead letters (past `max_deliveries`).
        dead_lettered: u64,
    }

    #[derive(ToSchema)]
    pub struct StreamAck {
        ids: Vec<String>,
    }

    #[derive(ToSchema)]
    pub struct StreamAcked {
        acked: u64,
    }
}
