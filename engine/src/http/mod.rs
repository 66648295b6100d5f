//! HTTP: the axum router, built apart from the listener so tests and `main` share it.
//! Handlers stay thin: parse, call the pattern runtime, render.

mod admin;
mod cache;
mod cache_write;
pub mod forwarded;
mod health;
mod locks;
mod openapi;
mod ops;
pub mod parse_errors;
pub mod problem;
mod ratelimit;
pub mod server;
mod sessions;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{Method, Uri};
use axum::routing::{delete, get, post};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::runtime::Runtime;
pub use admin::AdminToken;
use problem::ApiError;

/// Request bodies on data routes are small JSON documents.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub runtime: Arc<Runtime>,
    /// Bearer token for `/admin`; without one, admin answers loopback clients only.
    pub admin_token: Option<AdminToken>,
    pub metrics: Option<PrometheusHandle>,
}

/// Every route of this file's router; each pattern module lists its own (see `all_routes`).
pub const ROUTES: &[&str] = &[
    "/v1/ratelimit/{app}/{rule}",
    "/v1/ratelimit/{app}/{rule}/leases/{lease}",
    "/v1/ops/{app}/{rule}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/admin/policies",
    "/admin/reload",
];

/// Every route the router serves; the OpenAPI test checks the document against it.
pub fn all_routes() -> Vec<&'static str> {
    [
        ROUTES,
        cache::ROUTES,
        cache_write::ROUTES,
        sessions::ROUTES,
        locks::ROUTES,
    ]
    .concat()
    .into_iter()
    // Cache reads and writes share `/v1/cache/{app}/{rule}/{id}` (GET/DELETE vs PUT/PATCH);
    // both modules list it.
    .fold(Vec::new(), |mut v, r| {
        if !v.contains(&r) {
            v.push(r);
        }
        v
    })
}

pub fn router(state: AppState) -> Router {
    let doc: Arc<str> = Arc::from(openapi::document());
    let admin = Router::new()
        .route("/admin/policies", get(admin::policies))
        .route("/admin/reload", post(admin::reload))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_admin,
        ));
    Router::new()
        .route(
            "/v1/ratelimit/{app}/{rule}",
            post(ratelimit::check_post).get(ratelimit::check_get),
        )
        .route(
            "/v1/ratelimit/{app}/{rule}/leases/{lease}",
            delete(ratelimit::release),
        )
        .route("/v1/ops/{app}/{rule}", post(ops::call))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc.to_string(),
                    )
                }
            }),
        )
        .merge(cache::routes())
        // Takes the state: its admin routes sit behind the admin check.
        .merge(cache_write::routes(state.clone()))
        .merge(sessions::routes())
        .merge(locks::routes())
        .merge(admin)
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Outermost: whatever answered an error without a problem body (an extractor's
        // rejection in any handler) is rewritten into one.
        .layer(axum::middleware::map_response(
            problem::plain_errors_as_problems,
        ))
        .with_state(state)
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_string())
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}

/// The body, or a problem+json for a too-large, too-slow or unreadable one.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_)
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::TooLarge(MAX_BODY_BYTES)
        }
        other if is_body_timeout(&other) => body_timeout(&other),
        other => ApiError::BadRequest(format!("could not read the request body: {other}")),
    })
}

/// Whether reading a body failed because it did not arrive within the body read timeout
/// (`server::BodyTimeout`, somewhere in the error's chain).
pub(crate) fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<server::BodyTimeout>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn body_timeout(e: &(dyn std::error::Error + 'static)) -> ApiError {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<server::BodyTimeout>() {
            return ApiError::Problem {
                status: axum::http::StatusCode::REQUEST_TIMEOUT,
                slug: "body-timeout",
                detail: t.to_string(),
            };
        }
        cur = err.source();
    }
    ApiError::BadRequest(format!("could not read the request body: {e}"))
}

/// Reads a body up to `MAX_BODY_BYTES`, as the `Bytes` extractor would under the router's
/// body limit.
async fn read_body(body: axum::body::Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::TooLarge(MAX_BODY_BYTES)
            } else if is_body_timeout(&e) {
                body_timeout(&e)
            } else {
                ApiError::BadRequest(format!("could not read the request body: {e}"))
            }
        })
}

/// Path segments that are not valid UTF-8 after percent-decoding.
fn bad_path(e: PathRejection) -> ApiError {
    ApiError::BadRequest(format!("invalid path: {}", e.body_text()))
}

/// A query string that does not fit the route's parameters (an unknown or repeated one, a
/// value of the wrong type).
fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::BadRequest(format!("invalid query string: {}", e.body_text()))
}

#[cfg(test)]
mod tests {
    /// ARCHITECTURE.md: handlers never build keys or scripts. Keys, script calls and the
    /// decoding of script replies live in `patterns`; a handler passes the store handle
    /// (`&state.runtime.store`) to a pattern method and renders what comes back. The one
    /// direct use of the store is `/readyz` (`health.rs`: PING and SCRIPT EXISTS/LOAD of the
    /// compiled scripts), which touches no key. The needles are built with `concat!` so this
    /// file does not match itself.
    #[test]
    fn handlers_never_touch_keys_or_scripts() {
        let needles = [
            concat!(".ev", "al("),
            concat!(".ev", "alsha("),
            concat!("red", "is::"),
            concat!("Key", "Space"),
            concat!("rule", "_key("),
            concat!(".keys", "."),
            concat!("_S", "UB"),
            concat!("compile::", "cache"),
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("engine/src/http is readable")
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .collect();
        files.sort();
        assert!(files.len() > 5, "found the handler files: {files:?}");
        let mut violations = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).expect("a readable source file");
            for (n, line) in text.lines().enumerate() {
                for needle in needles {
                    if line.contains(needle) {
                        violations.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            violations.is_empty(),
            "handlers must leave keys, scripts and replies to patterns:\n{}",
            violations.join("\n")
        );
    }
}
