//! `/v1/leaderboards/{app}/{rule}/{board}` and below: thin handlers around
//! `patterns::leaderboard`. Every read takes `?period=current|previous|<label>`.

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::{self, BoardMember, Example, Headers, Id, JsonObject, Query, Rule};
use super::problem::{ApiError, Problem};
use crate::patterns::LeaderboardRule;
use crate::patterns::leaderboard::{Entry, Page};
use doc::{
    LeaderboardAggregate, LeaderboardCount, LeaderboardEntry, LeaderboardPage, LeaderboardRanks,
    LeaderboardRanksBody, LeaderboardRemoved, LeaderboardSubmit, LeaderboardSubmitted,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(submit, top))
        .routes(routes!(member, remove))
        .routes(routes!(around))
        .routes(routes!(count))
        .routes(routes!(aggregate))
        .routes(routes!(ranks))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    member: String,
    score: f64,
}

impl Example for SubmitBody {
    const EXAMPLE: &'static str = r#"{"member": "alice", "score": 1200}"#;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RanksBody {
    member: String,
    boards: Vec<String>,
    #[serde(default)]
    period: Option<String>,
}

impl Example for RanksBody {
    const EXAMPLE: &'static str = r#"{"member": "alice", "boards": ["chess", "go"]}"#;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeriodQuery {
    period: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopQuery {
    period: Option<String>,
    offset: Option<u64>,
    limit: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AroundQuery {
    period: Option<String>,
    k: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AggregateQuery {
    last: u64,
    offset: Option<u64>,
    limit: Option<u64>,
    member: Option<String>,
}

/// A score as JSON: an integer when it is one (no `1200.0`), else the double.
fn score(s: f64) -> Value {
    if s.fract() == 0.0 && s.abs() <= 9_007_199_254_740_992.0 {
        #[allow(clippy::cast_possible_truncation)] // a whole number within ±2^53
        let n = s as i64;
        json!(n)
    } else {
        json!(s)
    }
}

fn entry(e: &Entry) -> Value {
    json!({ "member": e.member, "score": score(e.score), "rank": e.rank })
}

fn page(p: &Page) -> Value {
    json!({
        "period": p.period,
        "count": p.count,
        "entries": p.entries.iter().map(entry).collect::<Vec<_>>(),
    })
}

// `POST /v1/leaderboards/{app}/{rule}/{board}` with `{"member": "...", "score": n}`.
#[utoipa::path(post, path = "/v1/leaderboards/{app}/{rule}/{board}", tag = "leaderboards", operation_id = "leaderboard_submit",
    description = "Submits a score to the board's current period, as the rule's `update` says (best, latest, sum). Answers the member's new score, rank and whether it improved. A score beyond the rule's `max_score` (with `ties: first`: not a whole number 0 … 4294967295) is a 400. A rule with a `plugin` shows each submit to its `leaderboard` hook first, which may reject it (422) or replace the score (`adjusted_score`; `max_score` still applies).",
    params(("app" = String, Path), ("rule" = String, Path), ("board" = String, Path)),
    request_body = LeaderboardSubmit,
    responses(
        (status = 200, body = LeaderboardSubmitted),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown app or rule", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The rule's plugin rejected the score (`score-rejected`); nothing was recorded", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The rule's plugin failed and the rule has no `fallback: accept`", body = Problem, content_type = "application/problem+json")))]
async fn submit(
    State(state): State<AppState>,
    lb: Rule<LeaderboardRule>,
    Id(board): Id,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = extract::read_body(body).await?;
    let req: SubmitBody = extract::object(&body, SubmitBody::EXAMPLE)?;
    let facts = lb
        .wants_facts()
        .then(|| extract::facts(&parts, "POST", "", 0, Headers::All));
    let s = lb
        .submit(&state.runtime.store, &board, &req.member, req.score, facts)
        .await?;
    let mut out = json!({
        "member": req.member,
        "period": s.period,
        "score": score(s.score),
        "rank": s.rank,
        "improved": s.improved,
    });
    if let Some(a) = s.adjusted {
        out["adjusted_score"] = score(a);
    }
    if s.fallback {
        out["fallback"] = json!(true);
    }
    Ok(Json(out).into_response())
}

// `GET /v1/leaderboards/{app}/{rule}/{board}?offset=&limit=&period=`.
#[utoipa::path(get, path = "/v1/leaderboards/{app}/{rule}/{board}", tag = "leaderboards", operation_id = "leaderboard_top",
    description = "A page of the board, best first: `limit` entries (default 10, at most the rule's `max_page`) from place `offset` (default 0), with the board's member count.",
    params(("app" = String, Path), ("rule" = String, Path), ("board" = String, Path),
        ("offset" = Option<u64>, Query, description = "places to skip (default 0)"),
        ("limit" = Option<u64>, Query, description = "entries (default 10, at most max_page)"),
        ("period" = Option<String>, Query, description = "`current` (default), `previous` or a period's label")),
    responses(
        (status = 200, body = LeaderboardPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown app or rule", body = Problem, content_type = "application/problem+json")))]
async fn top(
    State(state): State<AppState>,
    lb: Rule<LeaderboardRule>,
    Id(board): Id,
    Query(q): Query<TopQuery>,
) -> Result<Response, ApiError> {
    let sel = lb.parse_period(q.period.as_deref())?;
    let limit = q.limit.unwrap_or(10);
    let p = lb
        .top(
            &state.runtime.store,
            &board,
            q.offset.unwrap_or(0),
            limit,
            sel,
        )
        .await?;
    Ok(Json(page(&p)).into_response())
}

// `GET /v1/leaderboards/{app}/{rule}/{board}/members/{member}?period=`.
#[utoipa::path(get, path = "/v1/leaderboards/{app}/{rule}/{board}/members/{member}", tag = "leaderboards", operation_id = "leaderboard_member",
    description = "A member's score and rank (404 when it is not on the board).",
    params(("app" = String, Path), ("rule" = String, Path), ("board" = String, Path), ("member" = String, Path),
        ("period" = Option<String>, Query, description = "`current` (default), `previous` or a period's label")),
    responses(
        (status = 200, body = LeaderboardEntry),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown app or rule, or the member is not on the board", body = Problem, content_type = "application/problem+json")))]
async fn member(
    State(state): State<AppState>,
    lb: Rule<LeaderboardRule>,
    BoardMember { board, member }: BoardMember,
    Query(q): Query<PeriodQuery>,
) -> Result<Response, ApiError> {
    let sel = lb.parse_period(q.period.as_deref())?;
    let (period, found) = lb.entry(&state.runtime.store, &board, &member, sel).await?;
    let Some(e) = found else {
        return Err(ApiError::NotFound(format!(
            "`{member}` is not on this board in period `{period}`"
        )));
    };
    let mut v = entry(&e);
    v["period"] = json!(period);
    Ok(Json(v).into_response())
}

// `DELETE /v1/leaderboards/{app}/{rule}/{board}/members/{member}?period=`.
#[utoipa::path(delete, path = "/v1/leaderboards/{app}/{rule}/{board}/members/{member}", tag = "leaderboards", operation_id = "leaderboard_remove",
    description = "Removes a member from the board's period (the current one by default); `removed: false` when it was not there.",
    params(("app" = String, Path), ("rule" = String, Path), ("board" = String, Path), ("member" = String, Path),
        ("period" = Option<String>, Query, description = "`current` (default), `previous` or a period's label")),
    responses(
        (status = 200, body = LeaderboardRemoved),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn remove(
    State(state): State<AppState>,
    lb: Rule<LeaderboardRule>,
    BoardMember { board, member }: BoardMember,
    Query(q): Query<PeriodQuery>,
) -> Result<Response, ApiError> {
    let sel = lb.parse_period(q.period.as_deref())?;
    let (period, removed) = lb
        .remove(&state.runtime.store, &board, &member, sel)
        .await?;
    Ok(Json(json!({ "period": period, "removed": removed })).into_response())
}

// `GET /v1/leaderboards/{app}/{rule}/{board}/members/{member}/around?k=&period=`.
#[utoipa::path(get, path = "/v1/leaderboards/{app}/{rule}/{board}/members/{member}/around", tag = "leaderboards", operation_id = "leaderboard_around",
    description = "The member with up to `k` members above and `k` below it (fewer at the top and bottom of the board), best first, in one call. 404 when the member is not on the board.",
    params(("app" = String, Path), ("rule" = String, Path), ("board" = String, Path), ("member" = String, Path),
        ("k" = Option<u64>, Query, description = "neighbours on each side (default 5; 2k+1 at most max_page)"),
        ("period" = Option<String>, Query, description = "`current` (default), `previous` or a period's label")),
    responses(
        (status = 200, body = LeaderboardPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown app or rule, or the member is not on the board", body = Problem, content_type = "application/problem+json")))]
async fn around(
    State(state): State<AppState>,
    lb: Rule<LeaderboardRule>,
    BoardMember { board, member }: BoardMember,
    Query(q): Query<AroundQuery>,
) -> Result<Response, ApiError> {
    let sel = lb.parse_period(q.period.as_deref())?;
    let p = lb
        .around(&state.runtime.store, &board, &member, q.k.unwrap_or(5), sel)
        .await?;
    Ok(Json(page(&p)).into_response())
}

// `GET /v1/leaderboards/{app}/{rule}/{board}/count?period=`.
#[utoipa::path(get, path = "/v1/leaderboards/{app}/{rule}/{board}/count", tag = "leaderboards", operation_id = "leaderboard_count",
    description = "How many members the board's period holds.",
    params(("app" = String, Path), ("rule" = String, Path), ("board" = String, Path),
        ("period" = Option<String>, Query, description = "`current` (default), `previous` or a period's label")),
    responses(
        (status = 200, body = LeaderboardCount),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn count(
    State(state): State<AppState>,
    lb: Rule<LeaderboardRule>,
    Id(board): Id,
    Query(q): Query<PeriodQuery>,
) -> Result<Response, ApiError> {
    let sel = lb.parse_period(q.period.as_deref())?;
    let (period, n) = lb.count(&state.runtime.store, &board, sel).await?;
    Ok(Json(json!({ "period": period, "count": n })).into_response())
}

// `GET /v1/leaderboards/{app}/{rule}/{board}/aggregate?last=&offset=&limit=&member=`.
#[utoipa::path(get, path = "/v1/leaderboards/{app}/{rule}/{board}/aggregate", tag = "leaderboards", operation_id = "leaderboard_aggregate",
    description = "The board over its last `last` periods (the current one included; at most `keep` + 1), scores combined as the rule updates them, equal totals sharing a rank; computed in one call and cached for the rule's `aggregate_cache`.",
    params(("app" = String, Path), ("rule" = String, Path), ("board" = String, Path),
        ("last" = u64, Query, description = "periods, 1 … keep + 1"),
        ("offset" = Option<u64>, Query, description = "places to skip (default 0)"),
        ("limit" = Option<u64>, Query, description = "entries (default 10, at most max_page)"),
        ("member" = Option<String>, Query, description = "also answer this member's aggregate score and rank")),
    responses(
        (status = 200, body = LeaderboardAggregate),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn aggregate(
    State(state): State<AppState>,
    lb: Rule<LeaderboardRule>,
    Id(board): Id,
    Query(q): Query<AggregateQuery>,
) -> Result<Response, ApiError> {
    let a = lb
        .aggregate(
            &state.runtime.store,
            &board,
            q.last,
            q.offset.unwrap_or(0),
            q.limit.unwrap_or(10),
            q.member.as_deref(),
        )
        .await?;
    Ok(Json(json!({
        "periods": a.periods,
        "count": a.count,
        "member": a.member.as_ref().map(entry),
        "entries": a.entries.iter().map(entry).collect::<Vec<_>>(),
    }))
    .into_response())
}

// `POST /v1/leaderboards/{app}/{rule}/_ranks` with `{"member", "boards": [...], "period"}`.
#[utoipa::path(post, path = "/v1/leaderboards/{app}/{rule}/_ranks", tag = "leaderboards", operation_id = "leaderboard_ranks",
    description = "One member's score and rank on several boards of the rule (at most 32) in one request: one script call per board, all at once (boards live in different cluster slots). `null` where the member is not on a board.",
    params(("app" = String, Path), ("rule" = String, Path)),
    request_body = LeaderboardRanksBody,
    responses(
        (status = 200, body = LeaderboardRanks),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn ranks(
    State(state): State<AppState>,
    lb: Rule<LeaderboardRule>,
    JsonObject(req): JsonObject<RanksBody>,
) -> Result<Response, ApiError> {
    let sel = lb.parse_period(req.period.as_deref())?;
    let found = lb
        .ranks(&state.runtime.store, &req.boards, &req.member, sel)
        .await?;
    let period = found.first().map(|(p, _)| p.clone());
    let boards: Vec<Value> = req
        .boards
        .iter()
        .zip(&found)
        .map(|(b, (_, e))| match e {
            Some(e) => json!({ "board": b, "score": score(e.score), "rank": e.rank }),
            None => json!({ "board": b, "score": null, "rank": null }),
        })
        .collect();
    Ok(Json(json!({ "member": req.member, "period": period, "boards": boards })).into_response())
}

// ------------------------------------------------------------------------------------------
// OpenAPI
// ------------------------------------------------------------------------------------------

#[allow(dead_code)] // schema types exist for the generated document only
mod doc {
    use utoipa::ToSchema;

    #[derive(ToSchema)]
    pub struct LeaderboardSubmit {
        member: String,
        /// With `ties: first`, a whole number 0 … the rule's `max_score` (at most 4294967295);
        /// otherwise any number within ±`max_score`. With `update: sum`, what to add.
        score: f64,
    }

    #[derive(ToSchema)]
    pub struct LeaderboardSubmitted {
        member: String,
        /// The period's label (`2026-11-28`, `2026-W48`, `2026-11`, `all`, …).
        period: String,
        /// The member's score now.
        score: f64,
        /// 1 is the best; null when the board is full and this score is not among its best.
        rank: Option<u64>,
        /// True when the member is new on the board or its score got better.
        improved: bool,
        /// The score the rule's plugin recorded instead of the one sent (absent when it kept it).
        adjusted_score: Option<f64>,
        /// True when the rule's plugin failed and `fallback: accept` recorded the score as sent.
        fallback: Option<bool>,
    }

    #[derive(ToSchema)]
    pub struct LeaderboardEntry {
        member: String,
        score: f64,
        /// `ties: shared`: 1 + members with a better score (1-2-2-4); `first`: the place.
        rank: u64,
        period: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct LeaderboardPage {
        period: String,
        /// Members on the board.
        count: u64,
        entries: Vec<LeaderboardEntry>,
    }

    #[derive(ToSchema)]
    pub struct LeaderboardCount {
        period: String,
        count: u64,
    }

    #[derive(ToSchema)]
    pub struct LeaderboardRemoved {
        period: String,
        removed: bool,
    }

    #[derive(ToSchema)]
    pub struct LeaderboardAggregate {
        /// The periods combined, newest first.
        periods: Vec<String>,
        count: u64,
        member: Option<LeaderboardEntry>,
        entries: Vec<LeaderboardEntry>,
    }

    #[derive(ToSchema)]
    pub struct LeaderboardRanksBody {
        member: String,
        /// 1 … 32 board ids of the rule.
        boards: Vec<String>,
        /// `current` (default), `previous` or a period's label.
        period: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct LeaderboardRank {
        board: String,
        score: Option<f64>,
        rank: Option<u64>,
    }

    #[derive(ToSchema)]
    pub struct LeaderboardRanks {
        member: String,
        period: Option<String>,
        boards: Vec<LeaderboardRank>,
    }
}
