//! `/v1/sessions/{app}/{rule}` and below: thin handlers around `patterns::session`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use utoipa::openapi::OpenApi;
use utoipa::{OpenApi as _, ToSchema};

use super::AppState;
use super::openapi::Problem;
use super::problem::ApiError;
use crate::patterns::{SessionError, Sessions};
use crate::plugin::RequestFacts;

/// The routes this module serves; the OpenAPI test checks them against the document.
pub(super) const ROUTES: &[&str] = &[
    "/v1/sessions/{app}/{rule}",
    "/v1/sessions/{app}/{rule}/{sid}",
    "/v1/sessions/{app}/{rule}/{sid}/rotate",
    "/v1/sessions/{app}/{rule}/users/{user}",
];

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/sessions/{app}/{rule}", post(create))
        .route(
            "/v1/sessions/{app}/{rule}/{sid}",
            get(read).patch(patch).delete(destroy),
        )
        .route("/v1/sessions/{app}/{rule}/{sid}/rotate", post(rotate))
        // A static segment wins over `{sid}`; session ids always contain a dot, so no id is
        // ever `users`.
        .route(
            "/v1/sessions/{app}/{rule}/users/{user}",
            get(list).delete(logout),
        )
}

fn lookup(state: &AppState, app: &str, rule: &str) -> Result<Arc<Sessions>, ApiError> {
    let snap = state.runtime.snapshot();
    match snap.sessions(app, rule) {
        Some(s) => Ok(s.clone()),
        None if !snap.has_app(app) => Err(ApiError::UnknownApp(app.to_string())),
        None => Err(ApiError::UnknownRule {
            app: app.to_string(),
            pattern: "session",
            rule: rule.to_string(),
        }),
    }
}

fn error(e: SessionError) -> ApiError {
    match e {
        SessionError::Input(e) => e.into(),
        SessionError::BadData(m) => ApiError::BadRequest(m),
        e @ SessionError::NotFound => ApiError::NotFound(e.to_string()),
        e @ SessionError::Rejected(_) => ApiError::Rejected(e.to_string()),
        SessionError::Plugin(e) => ApiError::PluginFailed(e.to_string()),
        SessionError::Random(m) => ApiError::Internal(m),
        SessionError::Store(e) => e.into(),
    }
}

/// A JSON object body, or a 400 that shows what to send.
fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    example: &str,
) -> Result<T, ApiError> {
    let body = super::body_bytes(body)?;
    // serde reads a struct from a JSON array too; the API takes objects only.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::BadRequest(format!(
            "the body must be a JSON object such as {example}"
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body ({e}); send {example}")))
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

/// `POST /v1/sessions/{app}/{rule}` with `{"user": "...", "data": {...}}` → 201.
async fn create(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((app, rule)) = path.map_err(super::bad_path)?;
    let sessions = lookup(&state, &app, &rule)?;
    let req: CreateBody = parse_body(body, r#"{"user": "alice", "data": {"cart": 3}}"#)?;
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
    let created = sessions
        .create(&state.runtime.store, &user, &data)
        .await
        .map_err(error)?;
    let mut resp = (
        StatusCode::CREATED,
        Json(json!({ "id": created.id, "expires_in_ms": created.expires_in_ms })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/sessions/{app}/{rule}/{}", created.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `GET /v1/sessions/{app}/{rule}/{sid}`: the session, and its idle expiry slides.
async fn read(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((app, rule, sid)) = path.map_err(super::bad_path)?;
    let sessions = lookup(&state, &app, &rule)?;
    let facts = RequestFacts {
        method: "GET".into(),
        path: uri.path().to_string(),
        id: sid.clone(),
        cost: 0,
        headers: if sessions.has_plugin() {
            headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect()
        } else {
            Vec::new()
        },
        client_addr: connect.map(|c| c.0.0.ip().to_string()),
        fields: Vec::new(),
    };
    let view = sessions
        .get(&state.runtime.store, &sid, facts)
        .await
        .map_err(error)?;
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

/// `PATCH /v1/sessions/{app}/{rule}/{sid}` with `{"data": {"field": value or null}}`.
async fn patch(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((app, rule, sid)) = path.map_err(super::bad_path)?;
    let sessions = lookup(&state, &app, &rule)?;
    let req: PatchBody = parse_body(body, r#"{"data": {"cart": 4, "coupon": null}}"#)?;
    let data: Vec<(String, Option<String>)> = req
        .data
        .into_iter()
        .map(|(k, v)| {
            let v = (!v.is_null()).then(|| v.to_string());
            (k, v)
        })
        .collect();
    let ttl = sessions
        .patch(&state.runtime.store, &sid, &data)
        .await
        .map_err(error)?;
    Ok(Json(json!({ "expires_in_ms": ttl })).into_response())
}

/// `DELETE /v1/sessions/{app}/{rule}/{sid}`: idempotent.
async fn destroy(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((app, rule, sid)) = path.map_err(super::bad_path)?;
    let sessions = lookup(&state, &app, &rule)?;
    let destroyed = sessions
        .destroy(&state.runtime.store, &sid)
        .await
        .map_err(error)?;
    Ok(Json(json!({ "destroyed": destroyed })).into_response())
}

/// `POST /v1/sessions/{app}/{rule}/{sid}/rotate` → a new id; the old one is dead.
async fn rotate(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((app, rule, sid)) = path.map_err(super::bad_path)?;
    let sessions = lookup(&state, &app, &rule)?;
    let rotated = sessions
        .rotate(&state.runtime.store, &sid)
        .await
        .map_err(error)?;
    let mut resp =
        Json(json!({ "id": rotated.id, "expires_in_ms": rotated.expires_in_ms })).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/sessions/{app}/{rule}/{}", rotated.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `GET /v1/sessions/{app}/{rule}/users/{user}`: the user's live sessions, oldest first.
async fn list(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((app, rule, user)) = path.map_err(super::bad_path)?;
    let sessions = lookup(&state, &app, &rule)?;
    let list = sessions
        .list(&state.runtime.store, &user)
        .await
        .map_err(error)?;
    let items: Vec<Value> = list
        .into_iter()
        .map(
            |s| json!({ "id": s.id, "created_ms": s.created_ms, "last_seen_ms": s.last_seen_ms, "expires_in_ms": s.expires_in_ms }),
        )
        .collect();
    Ok(Json(json!({ "user": user, "sessions": items })).into_response())
}

/// `DELETE /v1/sessions/{app}/{rule}/users/{user}`: logout everywhere, in one atomic call.
async fn logout(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((app, rule, user)) = path.map_err(super::bad_path)?;
    let sessions = lookup(&state, &app, &rule)?;
    let n = sessions
        .logout(&state.runtime.store, &user)
        .await
        .map_err(error)?;
    Ok(Json(json!({ "destroyed": n })).into_response())
}

// ------------------------------------------------------------------------------------------
// OpenAPI
// ------------------------------------------------------------------------------------------

#[allow(dead_code)] // schema types exist for the generated document only
mod doc {
    use super::*;

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

    #[utoipa::path(post, path = "/v1/sessions/{app}/{rule}", tag = "sessions",
        description = "Creates a session. With `max_per_user`, the user's oldest sessions beyond it are destroyed.",
        params(("app" = String, Path), ("rule" = String, Path)),
        request_body = SessionCreate,
        responses(
            (status = 201, body = SessionCreated, headers(("Location" = String))),
            (status = 400, body = Problem, content_type = "application/problem+json"),
            (status = 404, description = "Unknown app or rule", body = Problem, content_type = "application/problem+json")))]
    pub fn create() {}

    #[utoipa::path(get, path = "/v1/sessions/{app}/{rule}/{sid}", tag = "sessions",
        description = "Reads a session and slides its idle expiry (never past its absolute lifetime). A rule's plugin may reject the session (403).",
        params(("app" = String, Path), ("rule" = String, Path), ("sid" = String, Path)),
        responses(
            (status = 200, body = SessionRead),
            (status = 403, description = "Rejected by the rule's plugin", body = Problem, content_type = "application/problem+json"),
            (status = 404, description = "Unknown, expired or destroyed session (or a malformed id)", body = Problem, content_type = "application/problem+json")))]
    pub fn read() {}

    #[utoipa::path(patch, path = "/v1/sessions/{app}/{rule}/{sid}", tag = "sessions",
        description = "Merges fields into a live session; `null` deletes a field. A session that is gone stays gone: nothing is written.",
        params(("app" = String, Path), ("rule" = String, Path), ("sid" = String, Path)),
        request_body = SessionPatch,
        responses(
            (status = 200, body = SessionPatched),
            (status = 400, body = Problem, content_type = "application/problem+json"),
            (status = 404, body = Problem, content_type = "application/problem+json")))]
    pub fn patch() {}

    #[utoipa::path(delete, path = "/v1/sessions/{app}/{rule}/{sid}", tag = "sessions",
        params(("app" = String, Path), ("rule" = String, Path), ("sid" = String, Path)),
        responses((status = 200, body = SessionDestroyed)))]
    pub fn destroy() {}

    #[utoipa::path(post, path = "/v1/sessions/{app}/{rule}/{sid}/rotate", tag = "sessions",
        description = "Moves the session to a new id (same user, data and absolute lifetime); the old id is dead at once.",
        params(("app" = String, Path), ("rule" = String, Path), ("sid" = String, Path)),
        responses(
            (status = 200, body = SessionCreated),
            (status = 404, body = Problem, content_type = "application/problem+json")))]
    pub fn rotate() {}

    #[utoipa::path(get, path = "/v1/sessions/{app}/{rule}/users/{user}", tag = "sessions",
        params(("app" = String, Path), ("rule" = String, Path), ("user" = String, Path)),
        responses((status = 200, body = SessionList)))]
    pub fn list() {}

    #[utoipa::path(delete, path = "/v1/sessions/{app}/{rule}/users/{user}", tag = "sessions",
        description = "Logs the user out everywhere: every session of the user dies in one atomic call.",
        params(("app" = String, Path), ("rule" = String, Path), ("user" = String, Path)),
        responses((status = 200, body = SessionsLoggedOut)))]
    pub fn logout() {}

    #[derive(utoipa::OpenApi)]
    #[openapi(
        paths(create, read, patch, destroy, rotate, list, logout),
        components(schemas(
            SessionCreate,
            SessionCreated,
            SessionRead,
            SessionPatch,
            SessionPatched,
            SessionDestroyed,
            SessionListItem,
            SessionList,
            SessionsLoggedOut
        ))
    )]
    pub struct Doc;
}

/// This module's part of the OpenAPI document (merged into `/openapi.json`).
pub(super) fn api() -> OpenApi {
    doc::Doc::openapi()
}
