//! `GET /admin/doctor`: the doctor's report (`crate::doctor`) as JSON, behind the admin check.
//! The dashboard renders it; `patternd doctor` prints the same report as text.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::admin::Admin;
use super::problem::ApiError;
use crate::doctor::{self, report::Report};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(doctor_report))
}

#[utoipa::path(get, path = "/admin/doctor", tag = "admin", operation_id = "admin_doctor",
    description = "Checks the live Redis against the rules in use: eviction policy, maxmemory and \
        fragmentation, persistence, replicas, slow scripts, latency, version and modules, and per \
        rule a bounded sample of its keys (count, memory, keys without TTL, biggest). `status` is \
        the worst check's. On a cluster every primary is checked (`node`). Bearer token, or \
        loopback only without one.",
    responses((status = 200, description = "The report", body = Report),
        (status = 503, description = "Redis could not be reached", body = super::problem::Problem, content_type = "application/problem+json")))]
async fn doctor_report(_: Admin, State(state): State<AppState>) -> Result<Response, ApiError> {
    let report = doctor::examine_runtime(&state.runtime).await?;
    Ok(axum::Json(report).into_response())
}
