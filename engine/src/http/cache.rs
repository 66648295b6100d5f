//! `/v1/cache/{app}/{rule}/{id}` and below.
//!
//! STUB (scaffolding): the pattern's owner adds the handlers, the routes and their OpenAPI.

use axum::Router;

use super::AppState;

/// The routes this module serves; the OpenAPI test checks them against the document.
pub(super) const ROUTES: &[&str] = &[];

pub(super) fn routes() -> Router<AppState> {
    Router::new()
}

/// This module's part of the OpenAPI document (merged into `/openapi.json`).
pub(super) fn api() -> utoipa::openapi::OpenApi {
    utoipa::openapi::OpenApiBuilder::new().build()
}
