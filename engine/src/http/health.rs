//! `/healthz` (the process answers), `/readyz` (Redis reachable and scripts loaded),
//! `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::problem::ApiError;

pub(super) async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

pub(super) async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
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

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
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
