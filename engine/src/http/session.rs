//! `/v1/sessions/{app}/{rule}` and below: thin handlers around `patterns::session`.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::{self, Example, Headers, Id, JsonObject, Rule};
use super::problem::{ApiError, Problem};
use crate::patterns::Sessions;
use doc::{
    SessionCreate, SessionCreated, SessionDestroyed, SessionList, SessionPatch, SessionPatched,
    SessionRead, SessionsLoggedOut,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    // A static segment wins over `{sid}`; session ids always contain a dot, so no id is ever
    // `users`.
    OpenApiRouter::default()
        .routes(routes!(create))
        .routes(routes!(read, patch, destroy))
        .routes(routes!(rotate))
        .routes(routes!(list, logout))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    user: Value,
    #[serde(default)]
    data: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    data: Map<String, Value>,
}

impl Example for CreateBody {
    const EXAMPLE: &'static str = r#"{"user": "alice", "data": {"cart": 3}}"#;
}

impl Example for PatchBody {
    const EXAMPLE: &'static str = r#"{"data": {"cart": 4, "coupon": null}}"#;
}

// `POST /v1/sessions/{app}/{rule}` with `{"user": "...", "data": {...}}` → 201.
#[utoipa::path(post, path = "/v1/sessions/{app}/{rule}", tag = "sessions", operation_id = "session_create",
    description = "Creates a session. With `max_per_user`, the user's oldest sessions beyond it are destroyed.",
    params(("app" = String, Path), ("rule" = String, Path)),
    request_body = SessionCreate,
    responses(
        (status = 201, body = SessionCreated, headers(("Location" = String, description = "The new session's URL"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown app or rule", body = Problem, content_type = "application/problem+json")))]
async fn create(
    State(state): State<AppState>,
    sessions: Rule<Sessions>,
    JsonObject(req): JsonObject<CreateBody>,
) -> Result<Response, ApiError> {
    // Null fields are simply absent in a new session.
    let data: Vec<(String, String)> = req
        .data
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    // Like rate-limit ids, a numeric user id is taken as its decimal text.
    let user = match req.user {
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(ApiError::BadRequest(
                "`user` must be a string or a number".into(),
            ));
        }
    };
    let created = sessions.create(&state.runtime.store, &user, &data).await?;
    let resp = (
        StatusCode::CREATED,
        Json(json!({ "id": created.id, "expires_in_ms": created.expires_in_ms })),
    )
        .into_response();
    Ok(located(resp, &sessions, &created.id))
}

/// With `Location`: the URL of a new (or rotated) session.
fn located(mut resp: Response, sessions: &Rule<Sessions>, id: &str) -> Response {
    let url = format!("/v1/sessions/{}/{}/{id}", sessions.app, sessions.name);
    if let Ok(v) = HeaderValue::from_str(&url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

// `GET /v1/sessions/{app}/{rule}/{sid}`: the session, and its idle expiry slides.
#[utoipa::path(get, path = "/v1/sessions/{app}/{rule}/{sid}", tag = "sessions", operation_id = "session_read",
    description = "Reads a session and slides its idle expiry (never past its absolute lifetime). A rule's plugin may reject the session (403).",
    params(("app" = String, Path), ("rule" = String, Path), ("sid" = String, Path)),
    responses(
        (status = 200, body = SessionRead),
        (status = 403, description = "Rejected by the rule's plugin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown, expired or destroyed session (or a malformed id)", body = Problem, content_type = "application/problem+json")))]
async fn read(
    State(state): State<AppState>,
    sessions: Rule<Sessions>,
    Id(sid): Id,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let headers = if sessions.has_plugin() {
        Headers::All
    } else {
        Headers::None
    };
    let facts = extract::facts(&parts, "GET", &sid, 0, headers);
    let view = sessions.get(&state.runtime.store, &sid, facts).await?;
    let data: Map<String, Value> = view
        .data
        .into_iter()
        .map(|(k, v)| {
            let parsed = serde_json::from_str(&v).unwrap_or(Value::String(v));
            (k, parsed)
        })
        .collect();
    Ok(Json(json!({
        "user": view.user,
        "data": data,
        "created_ms": view.created_ms,
        "last_seen_ms": view.last_seen_ms,
        "expires_in_ms": view.expires_in_ms,
    }))
    .into_response())
}

// `PATCH /v1/sessions/{app}/{rule}/{sid}` with `{"data": {"field": value or null}}`.
#[utoipa::path(patch, path = "/v1/sessions/{app}/{rule}/{sid}", tag = "sessions", operation_id = "session_patch",
    description = "Merges fields into a live session; `null` deletes a field. A session that is gone stays gone: nothing is written.",
    params(("app" = String, Path), ("rule" = String, Path), ("sid" = String, Path)),
    request_body = SessionPatch,
    responses(
        (status = 200, body = SessionPatched),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn patch(
    State(state): State<AppState>,
    sessions: Rule<Sessions>,
    Id(sid): Id,
    JsonObject(req): JsonObject<PatchBody>,
) -> Result<Response, ApiError> {
    let data: Vec<(String, Option<String>)> = req
        .data
        .into_iter()
        .map(|(k, v)| {
            let v = (!v.is_null()).then(|| v.to_string());
            (k, v)
        })
        .collect();
    let ttl = sessions.patch(&state.runtime.store, &sid, &data).await?;
    Ok(Json(json!({ "expires_in_ms": ttl })).into_response())
}

// `DELETE /v1/sessions/{app}/{rule}/{sid}`: idempotent.
#[utoipa::path(delete, path = "/v1/sessions/{app}/{rule}/{sid}", tag = "sessions", operation_id = "session_destroy",
    params(("app" = String, Path), ("rule" = String, Path), ("sid" = String, Path)),
    responses((status = 200, body = SessionDestroyed)))]
async fn destroy(
    State(state): State<AppState>,
    sessions: Rule<Sessions>,
    Id(sid): Id,
) -> Result<Response, ApiError> {
    let destroyed = sessions.destroy(&state.runtime.store, &sid).await?;
    Ok(Json(json!({ "destroyed": destroyed })).into_response())
}

// `POST /v1/sessions/{app}/{rule}/{sid}/rotate` → a new id; the old one is dead.
#[utoipa::path(post, path = "/v1/sessions/{app}/{rule}/{sid}/rotate", tag = "sessions", operation_id = "session_rotate",
    description = "Moves the session to a new id (same user, data and absolute lifetime); the old id is dead at once.",
    params(("app" = String, Path), ("rule" = String, Path), ("sid" = String, Path)),
    responses(
        (status = 200, body = SessionCreated, headers(("Location" = String, description = "The session's new URL"))),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn rotate(
    State(state): State<AppState>,
    sessions: Rule<Sessions>,
    Id(sid): Id,
) -> Result<Response, ApiError> {
    let rotated = sessions.rotate(&state.runtime.store, &sid).await?;
    let resp =
        Json(json!({ "id": rotated.id, "expires_in_ms": rotated.expires_in_ms })).into_response();
    Ok(located(resp, &sessions, &rotated.id))
}

// `GET /v1/sessions/{app}/{rule}/users/{user}`: the user's live sessions, oldest first.
#[utoipa::path(get, path = "/v1/sessions/{app}/{rule}/users/{user}", tag = "sessions", operation_id = "session_list_user",
    params(("app" = String, Path), ("rule" = String, Path), ("user" = String, Path)),
    responses((status = 200, body = SessionList),
        (status = 409, description = "A session of the user was rotated during the request, again after each of 3 retries; retry after `Retry-After`", body = Problem, content_type = "application/problem+json")))]
async fn list(
    State(state): State<AppState>,
    sessions: Rule<Sessions>,
    Id(user): Id,
) -> Result<Response, ApiError> {
    let list = sessions.list(&state.runtime.store, &user).await?;
    let items: Vec<Value> = list
        .into_iter()
        .map(
            |s| json!({ "id": s.id, "created_ms": s.created_ms, "last_seen_ms": s.last_seen_ms, "expires_in_ms": s.expires_in_ms }),
        )
        .collect();
    Ok(Json(json!({ "user": user, "sessions": items })).into_response())
}

// `DELETE /v1/sessions/{app}/{rule}/users/{user}`: logout everywhere, in one atomic script
// (after a first call that names the user's sessions).
#[utoipa::path(delete, path = "/v1/sessions/{app}/{rule}/users/{user}", tag = "sessions", operation_id = "session_logout_user",
    description = "Logs the user out everywhere: every session of the user dies in one atomic script call.",
    params(("app" = String, Path), ("rule" = String, Path), ("user" = String, Path)),
    responses((status = 200, body = SessionsLoggedOut),
        (status = 409, description = "A session of the user was rotated during the request, again after each of 3 retries; retry after `Retry-After`", body = Problem, content_type = "application/problem+json")))]
async fn logout(
    State(state): State<AppState>,
    sessions: Rule<Sessions>,
    Id(user): Id,
) -> Result<Response, ApiError> {
    let n = sessions.logout(&state.runtime.store, &user).await?;
    Ok(Json(json!({ "destroyed": n })).into_response())
}

// ------------------------------------------------------------------------------------------
// OpenAPI
// ------------------------------------------------------------------------------------------

#[allow(dead_code)] // schema types exist for the generated document only
mod doc {
    use serde_json::{Map, Value};
    use utoipa::ToSchema;

    /// Body of a session create.
    #[derive(ToSchema)]
    pub struct SessionCreate {
        /// The user the session belongs to: a string or a number, 1 to 512 bytes.
        #[schema(example = "alice")]
        user: String,
        /// Initial fields: any JSON values, stored field by field.
        data: Option<Map<String, Value>>,
    }

    /// A new (or rotated) session.
    #[derive(ToSchema)]
    pub struct SessionCreated {
        /// `<shard>.<192 random bits, base64url>`: a bearer secret.
        id: String,
        expires_in_ms: u64,
    }

    /// A session as read.
    #[derive(ToSchema)]
    pub struct SessionRead {
        user: String,
        data: Map<String, Value>,
        created_ms: u64,
        /// The previous use of the session (create, read, patch or rotate), before this read.
        last_seen_ms: u64,
        /// Until the session expires unless used again (never past its absolute lifetime).
        expires_in_ms: u64,
    }

    /// Body of a session patch.
    #[derive(ToSchema)]
    pub struct SessionPatch {
        /// Fields to set; `null` deletes a field. Other fields are left alone.
        data: Map<String, Value>,
    }

    #[derive(ToSchema)]
    pub struct SessionPatched {
        expires_in_ms: u64,
    }

    #[derive(ToSchema)]
    pub struct SessionDestroyed {
        /// False when there was no live session (destroying is idempotent).
        destroyed: bool,
    }

    #[derive(ToSchema)]
    pub struct SessionListItem {
        id: String,
        created_ms: u64,
        /// The session's last use (create, read, patch or rotate).
        last_seen_ms: u64,
        expires_in_ms: u64,
    }

    #[derive(ToSchema)]
    pub struct SessionList {
        user: String,
        /// Oldest first.
        sessions: Vec<SessionListItem>,
    }

    #[derive(ToSchema)]
    pub struct SessionsLoggedOut {
        /// How many live sessions were destroyed.
        destroyed: u64,
    }
}
