//! `/v1/counters/{app}/{rule}/{id}` and below: thin handlers around `patterns::counter`.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::{Example, Id, JsonObject, Query, Rule};
use super::problem::{ApiError, Problem};
use crate::patterns::CounterRule;
use crate::patterns::counter::{Added, BloomStats, ReadValue, item_list};
use doc::{CounterAdd, CounterAdded, CounterCheck, CounterChecked, CounterRead};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(add, read))
        .routes(routes!(check))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    #[serde(default)]
    item: Option<String>,
    #[serde(default)]
    items: Option<Vec<String>>,
    #[serde(default)]
    by: Option<i64>,
}

impl Example for AddBody {
    const EXAMPLE: &'static str = r#"{"item": "user-42"} or {"items": ["a", "b"]} or {"by": 1}"#;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    #[serde(default)]
    item: Option<String>,
    #[serde(default)]
    items: Option<Vec<String>>,
}

impl Example for CheckBody {
    const EXAMPLE: &'static str = r#"{"item": "user-42"} or {"items": ["a", "b"]}"#;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    period: Option<String>,
    from: Option<String>,
    to: Option<String>,
    last: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckQuery {
    period: Option<String>,
}

/// One flag for a single item, a list for a batch.
fn flags(f: Vec<bool>, batch: bool) -> Value {
    match (batch, f.first()) {
        (false, Some(one)) => json!(one),
        _ => json!(f),
    }
}

fn stats(v: &mut Value, s: BloomStats) {
    v["count"] = json!(s.count);
    v["capacity"] = json!(s.capacity);
    v["saturated"] = json!(s.saturated);
}

// `POST /v1/counters/{app}/{rule}/{id}` with `{"item": …}`, `{"items": […]}` or `{"by": n}`.
#[utoipa::path(post, path = "/v1/counters/{app}/{rule}/{id}", tag = "counters", operation_id = "counter_add",
    description = "Adds to the current period of `id`: `item` or `items` (a batch, at most the rule's `max_batch`) to a `unique` or `bloom` rule, `by` (default 1) to a `count` rule.",
    params(("app" = String, Path), ("rule" = String, Path), ("id" = String, Path, description = "what is counted, e.g. a page or a campaign")),
    request_body(content = Option<CounterAdd>, description = "Optional for a `count` rule (adds 1)", content_type = "application/json"),
    responses(
        (status = 200, body = CounterAdded),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown app or rule", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = Problem, content_type = "application/problem+json")))]
async fn add(
    State(state): State<AppState>,
    counter: Rule<CounterRule>,
    Id(id): Id,
    JsonObject(body): JsonObject<AddBody>,
) -> Result<Response, ApiError> {
    let (input, batch) = counter.add_input(body.item, body.items, body.by)?;
    let added = counter.add(&state.runtime.store, &id, input).await?;
    let body = match added {
        Added::Unique { period, changed } => json!({ "period": period, "changed": changed }),
        Added::Count { period, value } => json!({ "period": period, "value": value }),
        Added::Bloom {
            period,
            added,
            stats: s,
        } => {
            let mut v = json!({ "period": period, "added": flags(added, batch) });
            stats(&mut v, s);
            v
        }
    };
    Ok(Json(body).into_response())
}

// `GET /v1/counters/{app}/{rule}/{id}?period=…|from=…&to=…|last=n`.
#[utoipa::path(get, path = "/v1/counters/{app}/{rule}/{id}", tag = "counters", operation_id = "counter_read",
    description = "Reads `id`: the distinct items (`unique`: over all the periods named, their union), each period's value and their sum (`count`), or a Bloom filter's fill (`bloom`, one period). Periods: `period=current` (default), `previous` or a label; `from` and `to` (labels, `current` or `previous`); or `last=n` (the current period and the n - 1 before). A range holds at most `keep + 1` periods.",
    params(("app" = String, Path), ("rule" = String, Path), ("id" = String, Path),
        ("period" = Option<String>, Query, description = "`current`, `previous`, or a label: `2026-11-28`, `2026-W48`, `2026-11`, `2026-11-28T17:30:00Z`, `all`"),
        ("from" = Option<String>, Query, description = "first period of a range (with `to`)"),
        ("to" = Option<String>, Query, description = "last period of a range (with `from`)"),
        ("last" = Option<u64>, Query, description = "the current period and the n - 1 before it")),
    responses(
        (status = 200, body = CounterRead),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown app or rule", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = Problem, content_type = "application/problem+json")))]
async fn read(
    State(state): State<AppState>,
    counter: Rule<CounterRule>,
    Id(id): Id,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    let sel = counter.selection(
        q.period.as_deref(),
        q.from.as_deref(),
        q.to.as_deref(),
        q.last,
    )?;
    let read = counter.read(&state.runtime.store, &id, sel).await?;
    let mut v = json!({ "periods": read.periods });
    match read.value {
        ReadValue::Unique { count, cached } => {
            v["count"] = json!(count);
            v["cached"] = json!(cached);
        }
        ReadValue::Count { values, sum } => {
            v["values"] = json!(values);
            v["value"] = json!(sum);
        }
        ReadValue::Bloom(s) => stats(&mut v, s),
    }
    Ok(Json(v).into_response())
}

// `POST /v1/counters/{app}/{rule}/{id}/check?period=…` with `{"item": …}` or `{"items": […]}`.
#[utoipa::path(post, path = "/v1/counters/{app}/{rule}/{id}/check", tag = "counters", operation_id = "counter_check",
    description = "Bloom rules: whether each item is in the filter of one period (default the current one). `false` is certain; `true` may be a false positive, at about the rule's `error_rate` up to its `capacity`, more past it (`saturated`).",
    params(("app" = String, Path), ("rule" = String, Path), ("id" = String, Path),
        ("period" = Option<String>, Query, description = "`current` (default), `previous` or a label")),
    request_body = CounterCheck,
    responses(
        (status = 200, body = CounterChecked),
        (status = 400, description = "Bad input, or not a `bloom` rule", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown app or rule", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = Problem, content_type = "application/problem+json")))]
async fn check(
    State(state): State<AppState>,
    counter: Rule<CounterRule>,
    Id(id): Id,
    Query(q): Query<CheckQuery>,
    JsonObject(body): JsonObject<CheckBody>,
) -> Result<Response, ApiError> {
    let sel = counter.selection(q.period.as_deref(), None, None, None)?;
    let (list, batch) = item_list(body.item, body.items)?;
    let checked = counter
        .check_items_in(&state.runtime.store, &id, sel, &list)
        .await?;
    let mut v = json!({ "period": checked.period, "present": flags(checked.present, batch) });
    stats(&mut v, checked.stats);
    Ok(Json(v).into_response())
}

// ------------------------------------------------------------------------------------------
// OpenAPI
// ------------------------------------------------------------------------------------------

#[allow(dead_code)] // schema types exist for the generated document only
mod doc {
    use utoipa::ToSchema;

    /// One of `item`, `items` (unique and bloom rules) or `by` (count rules).
    #[derive(ToSchema)]
    pub struct CounterAdd {
        /// One item (at most 1024 bytes).
        item: Option<String>,
        /// A batch: at most the rule's `max_batch` items.
        items: Option<Vec<String>>,
        /// A count rule: the amount (default 1; negative subtracts; |by| ≤ 10^12).
        by: Option<i64>,
    }

    /// What an add did. Every answer names its `period`.
    #[derive(ToSchema)]
    pub struct CounterAdded {
        /// The label of the period added to (`all` without a period).
        period: String,
        /// `unique`: whether an estimate register changed.
        changed: Option<bool>,
        /// `count`: the period's value after the add.
        value: Option<i64>,
        /// `bloom`: whether the item was new to the filter (a list for `items`).
        added: Option<serde_json::Value>,
        /// `bloom`: adds that were new to the filter (≈ distinct items).
        count: Option<u64>,
        /// `bloom`: the rule's capacity.
        capacity: Option<u64>,
        /// `bloom`: `count` is above `capacity`: the false-positive rate is above the
        /// configured one (Lua bitmap), or the filter grows (RedisBloom).
        saturated: Option<bool>,
    }

    /// A read.
    #[derive(ToSchema)]
    pub struct CounterRead {
        /// The labels of the periods read, oldest first.
        periods: Vec<String>,
        /// `unique`: distinct items over the periods (standard error 0.81%); `bloom`: adds
        /// that were new to the filter.
        count: Option<u64>,
        /// `unique`: the range's count came from the range cache.
        cached: Option<bool>,
        /// `count`: each period's value, as `periods`.
        values: Option<Vec<i64>>,
        /// `count`: their sum.
        value: Option<i64>,
        capacity: Option<u64>,
        saturated: Option<bool>,
    }

    #[derive(ToSchema)]
    pub struct CounterCheck {
        item: Option<String>,
        items: Option<Vec<String>>,
    }

    #[derive(ToSchema)]
    pub struct CounterChecked {
        period: String,
        /// Per item (a list for `items`): `false` is certain, `true` maybe a false positive.
        present: serde_json::Value,
        count: u64,
        capacity: u64,
        saturated: bool,
    }
}
