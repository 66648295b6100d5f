//! `/healthz` (the process answers), `/readyz` (Redis reachable and scripts loaded),
//! `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::problem::{ApiError, Problem};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // the document's schema
pub struct Health {
    #[schema(example = "ok")]
    status: String,
}

/// `GET /readyz`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // the document's schema
pub struct Ready {
    ready: bool,
    /// Scripts of the current snapshot, all loaded in Redis.
    scripts: u64,
}

#[utoipa::path(get, path = "/healthz", tag = "ops", operation_id = "healthz",
    responses((status = 200, description = "The process answers", body = Health)))]
async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

#[utoipa::path(get, path = "/readyz", tag = "ops", operation_id = "readyz", responses(
    (status = 200, description = "Redis reachable and every script loaded", body = Ready),
    (status = 503, description = "Redis unreachable, or the scripts could not be loaded", body = Problem, content_type = "application/problem+json")))]
async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    let rt = &state.runtime;
    rt.store
        .ping()
        .await
        .map_err(|e| ApiError::NotReady(format!("Redis unreachable: {e}")))?;
    let snap = rt.snapshot();
    let loaded = rt
        .store
        .scripts_loaded(&snap.scripts)
        .await
        .map_err(|e| ApiError::NotReady(format!("Redis unreachable: {e}")))?;
    if !loaded {
        // A Redis restart or SCRIPT FLUSH lost them: load them now, then report.
        rt.store
            .load_scripts(&snap.scripts)
            .await
            .map_err(|e| ApiError::NotReady(format!("scripts not loaded: {e}")))?;
    }
    Ok(axum::Json(json!({ "ready": true, "scripts": snap.scripts.len() })).into_response())
}

#[utoipa::path(get, path = "/metrics", tag = "ops", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> Response {
    let text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}
