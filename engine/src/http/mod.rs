//! HTTP: the axum router, built apart from the listener so tests and `main` share it.
//! Handlers stay thin: take what they need through `extract`, call the pattern, render;
//! every error becomes a problem+json in `problem`.
//!
//! One route table, [`table`]: each pattern's file lists its routes (`routes()`), and every
//! route is registered with `utoipa_axum::routes!`, which takes the path and the methods from
//! the handler's own `#[utoipa::path]`. The router and the OpenAPI document are thus built
//! from the same list, and a route cannot be served undocumented or documented unserved
//! (`tests` below check both directions). utoipa-axum rather than a hand-written table: the
//! `#[utoipa::path]` on a handler already states its path and method, and a table beside it
//! would state them a second time, free to disagree.

mod admin;
mod cache;
mod counter;
mod dashboard;
mod doctor;
mod extract;
pub mod forwarded;
mod health;
mod leaderboard;
mod lock;
mod openapi;
mod ops;
pub mod parse_errors;
pub mod problem;
mod pubsub;
mod queue;
mod ratelimit;
pub mod server;
mod session;
pub mod sse;
mod stream;

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, Uri};
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa_axum::router::OpenApiRouter;

use crate::runtime::Runtime;
use crate::sampler::Samples;
pub use admin::AdminToken;
use problem::ApiError;

/// Request bodies on data routes are small JSON documents.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the handlers read. One `Arc` inside: axum clones the state for every request (the
/// handler's copy, then each `State` extractor's), and each clone is then one reference count
/// rather than one per field, on counters every worker thread touches.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state behind [`AppState`].
pub struct Shared {
    pub runtime: Arc<Runtime>,
    /// Bearer token for `/admin`; without one, admin answers loopback clients only.
    pub admin_token: Option<AdminToken>,
    pub metrics: Option<PrometheusHandle>,
    /// The dashboard's history, filled by `sampler::run` (empty when nothing samples).
    pub samples: Arc<Samples>,
}

/// Every route, with its part of the OpenAPI document.
fn table() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(ratelimit::routes())
        .merge(cache::routes())
        .merge(session::routes())
        .merge(lock::routes())
        .merge(ops::routes())
        .merge(queue::routes())
        .merge(stream::routes())
        .merge(pubsub::routes())
        .merge(counter::routes())
        .merge(leaderboard::routes())
        .merge(health::routes())
        .merge(admin::routes())
        .merge(doctor::routes())
        .merge(dashboard::routes())
        .merge(openapi::routes())
}

/// The routes and their fallbacks. What every request passes through besides (the body's
/// deadline, plain errors rewritten as problems) is added by the listener, `server::serve`.
pub fn router(state: AppState) -> Router {
    // Rendered now rather than on the first request, and a document that cannot be rendered
    // shows at start.
    openapi::document();
    let (routes, _) = table().split_for_parts();
    routes
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_string())
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use tower_service::Service as _;

    use super::{AppState, router};
    use crate::plugin::PluginSet;
    use crate::runtime::Runtime;
    use crate::snapshot::{Snapshot, Sources};
    use crate::store::{Store, StoreConfig};

    /// Every `.rs` file under `engine/src/http`, with its text.
    fn sources() -> Vec<(PathBuf, String)> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let entries = std::fs::read_dir(dir).expect("engine/src/http is readable");
            for e in entries {
                let p = e.expect("a directory entry").path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http"),
            &mut files,
        );
        files.sort();
        assert!(files.len() > 5, "found the handler files: {files:?}");
        files
            .into_iter()
            .map(|f| {
                let text = std::fs::read_to_string(&f).expect("a readable source file");
                (f, text)
            })
            .collect()
    }

    /// `file:line: text` of every line of `engine/src/http` (but `allowed` files) where
    /// `hit` finds something.
    fn lines_where(allowed: &[&str], hit: impl Fn(&str) -> bool) -> Vec<String> {
        let mut found = Vec::new();
        for (f, text) in sources() {
            if allowed.iter().any(|a| f.ends_with(a)) {
                continue;
            }
            for (n, line) in text.lines().enumerate() {
                if hit(line) {
                    found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                }
            }
        }
        found
    }

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
            concat!("store", "."),
        ];
        let violations = lines_where(&["http/health.rs"], |line| {
            needles.iter().any(|n| line.contains(n))
        });
        assert!(
            violations.is_empty(),
            "handlers must leave keys, scripts and replies to patterns:\n{}",
            violations.join("\n")
        );
    }

    /// The other direction of the route table: a route can reach the router only through
    /// `OpenApiRouter::routes(routes!(…))`, which documents it. A plain axum router, a method
    /// router (`get(…)`, `post(…)`) or a path added on its own would serve a route the
    /// document does not show, so none is built in `engine/src/http` (`router` only adds the
    /// fallbacks to what the table built).
    #[test]
    fn routes_are_added_only_with_their_documentation() {
        let needles = [
            concat!(".route", "("),
            concat!(".route_", "service("),
            concat!(".nest", "("),
            concat!(".nest_", "service("),
            concat!("routing", "::"),
        ];
        let plain_router = concat!("Router", "::");
        let violations = lines_where(&[], |line| {
            needles.iter().any(|n| line.contains(n))
                || line
                    .match_indices(plain_router)
                    .any(|(at, _)| !line[..at].ends_with("OpenApi"))
        });
        assert!(
            violations.is_empty(),
            "routes are registered with `.routes(routes!(handler))` only, so the OpenAPI \
             document shows them:\n{}",
            violations.join("\n")
        );
    }

    fn state() -> AppState {
        let snapshot = Snapshot::from_compiled(Default::default(), PluginSet::empty(), Vec::new())
            .expect("an empty snapshot");
        // Nothing listens there: the one route that asks Redis (`/readyz`) answers 503 at once.
        let store = Store::new(&StoreConfig {
            target: crate::store::connect::RedisTarget::plain("redis://127.0.0.1:1")
                .expect("a plain URL"),
            pool_size: 1,
            command_timeout: Duration::from_millis(200),
            batch_max: 0,
        })
        .expect("a lazy pool");
        let sources = Sources {
            policies: Vec::new(),
            plugins: None,
            plugin_limits: Default::default(),
        };
        AppState::new(super::Shared {
            runtime: Arc::new(Runtime::new(snapshot, store, sources)),
            admin_token: None,
            metrics: None,
            samples: Default::default(),
        })
    }

    /// Every operation of the document is served: none answers `no-route` (no such path) or
    /// `method-not-allowed` (no such method on it). With no policies loaded, pattern routes
    /// answer `unknown-app` and admin routes `forbidden`, which proves the route exists.
    #[tokio::test]
    async fn the_router_serves_every_documented_operation() {
        let doc: serde_json::Value =
            serde_json::from_str(super::openapi::document()).expect("valid JSON");
        let mut app = router(state());
        let mut served = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let uri: String = path
                .split('/')
                .map(|seg| match seg {
                    "{app}" | "{rule}" => "nope",
                    s if s.starts_with('{') => "x1",
                    s => s,
                })
                .collect::<Vec<_>>()
                .join("/");
            for method in item.as_object().expect("a path item").keys() {
                let req = Request::builder()
                    .method(method.to_ascii_uppercase().as_str())
                    .uri(&uri)
                    .body(Body::empty())
                    .expect("a request");
                let resp = app.call(req).await.expect("infallible");
                let status = resp.status();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                    .await
                    .expect("a body");
                let text = String::from_utf8_lossy(&body);
                assert!(
                    !text.contains("problem:no-route")
                        && !text.contains("problem:method-not-allowed"),
                    "{method} {path} is documented but not served: {status} {text}"
                );
                served += 1;
            }
        }
        assert!(served > 20, "only {served} operations");
    }
}
