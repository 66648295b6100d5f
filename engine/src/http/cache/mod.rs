//! `/v1/cache/{app}/{rule}/…` and the write-behind dead letters: the cache's routes, one file
//! per concept as in `patterns::cache` (reads and invalidation, writes, dead letters).
//!
//! Every route refuses the ids `.` and `..` (400, see `extract::CacheId`): an id is one path
//! segment of the origin URL, and those two would name another path of the origin.

mod dead;
mod read;
mod write;

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;

use super::AppState;
use super::problem::ApiError;
use crate::patterns::cache::conditional::{Preconditions, etag};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    read::routes().merge(write::routes()).merge(dead::routes())
}

/// `If-Match` / `If-None-Match` of a request (RFC 9110 §13.1); a malformed one is a 400.
fn preconditions(headers: &HeaderMap) -> Result<Preconditions, ApiError> {
    Preconditions::parse(
        headers
            .get_all(header::IF_MATCH)
            .iter()
            .map(|v| v.as_bytes()),
        headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .map(|v| v.as_bytes()),
    )
    .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// `ETag: "<version>"`, when the answer is a stored value with a version.
fn set_etag(resp: &mut Response, version: Option<&str>) {
    if let Some(v) = version.and_then(|v| HeaderValue::try_from(etag(v)).ok()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
}
