//! The dashboard: `GET /admin/ui` (one page, its script and its style, embedded in the
//! binary) and `GET /admin/samples` (the engine's metrics of the last minutes, from
//! [`crate::sampler`]). Design and threat model: `docs/dashboard.md`.
//!
//! The page is a static shell: it carries no data and no secret, so it is served without the
//! admin token (a browser cannot send a bearer header when it navigates). Everything it
//! shows comes from admin JSON routes (`/admin/policies`, `/admin/samples`, `/admin/doctor`),
//! which its script calls with `Authorization: Bearer <token>`, the token typed into the page
//! and kept in the tab's `sessionStorage`. The browser never attaches that header by itself,
//! so another site cannot make it call an admin route (no CSRF), and no server-side session
//! exists to steal or expire.
//!
//! Every file is sent with a strict Content-Security-Policy (scripts and styles from this
//! origin only, no inline code, no framing, fetches to this origin only) and rendered by the
//! script with `textContent` and SVG attributes, never as HTML.

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::admin::Admin;
use super::extract::Query;
use super::problem::ApiError;
use crate::sampler;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(page))
        .routes(routes!(asset))
        .routes(routes!(samples))
}

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const DASHBOARD_JS: &str = include_str!("../../ui/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../ui/dashboard.css");

/// The page's policy: nothing but this origin's script, style and JSON; no inline script or
/// style, no plugins, no `<base>`, no form posts, and no page may frame it (clickjacking).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// One embedded file with the headers every dashboard file carries.
fn file(content_type: &'static str, body: &'static str) -> Response {
    let h = |v: &'static str| HeaderValue::from_static(v);
    let mut resp = body.into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, h(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, h(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, h("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, h("DENY"));
    headers.insert(header::REFERRER_POLICY, h("no-referrer"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        h("same-origin"),
    );
    // The files change with the binary: revalidate rather than run an old script against a
    // new engine.
    headers.insert(header::CACHE_CONTROL, h("no-cache"));
    resp
}

// The shell: no data, no token needed (see the module doc).
#[utoipa::path(get, path = "/admin/ui", tag = "admin", operation_id = "admin_ui",
    description = "The dashboard page (a static shell, served without the token: its script asks the admin routes with the bearer token typed into the page). Strict Content-Security-Policy, no outside resources.",
    responses((status = 200, description = "The page", body = String, content_type = "text/html")))]
async fn page() -> Response {
    file("text/html; charset=utf-8", INDEX_HTML)
}

#[utoipa::path(get, path = "/admin/ui/{file}", tag = "admin", operation_id = "admin_ui_file",
    description = "The dashboard's script (`dashboard.js`) and style (`dashboard.css`), embedded in the binary.",
    params(("file" = String, Path, description = "`dashboard.js` or `dashboard.css`")),
    responses((status = 200, description = "The file", body = String, content_type = "text/javascript"),
        (status = 404, description = "No such file", body = super::problem::Problem, content_type = "application/problem+json")))]
async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match name.as_str() {
        "dashboard.js" => file("text/javascript; charset=utf-8", DASHBOARD_JS),
        "dashboard.css" => file("text/css; charset=utf-8", DASHBOARD_CSS),
        _ => ApiError::NotFound(format!("the dashboard has no file `{name}`")).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SamplesQuery {
    after: Option<String>,
}

#[utoipa::path(get, path = "/admin/samples", tag = "admin", operation_id = "admin_samples",
    description = "The engine's own metrics over the last minutes (what the dashboard plots): one sample a second, at most 300, each with per-second counter rates by outcome, gauges, histogram rate/mean/p50/p95 and each rule's activity. Bearer token, or loopback only without one.",
    params(("after" = Option<u64>, Query, description = "only samples whose `seq` is greater (the last `seq` seen)")),
    responses((status = 200, description = "`{interval_ms, capacity, latest, samples: [{seq, t_ms, interval_ms, rates, gauges, latency, rules}]}`", body = Object, content_type = "application/json")))]
async fn samples(
    _: Admin,
    State(state): State<AppState>,
    Query(query): Query<SamplesQuery>,
) -> Result<Response, ApiError> {
    let after = match query.after.as_deref() {
        None => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!("`after` must be a sample's `seq`, not `{s}`"))
        })?),
    };
    let samples = state.samples.after(after);
    let samples: Vec<&sampler::Sample> = samples.iter().map(|s| &**s).collect();
    Ok(axum::Json(json!({
        "interval_ms": u64::try_from(sampler::SAMPLE_EVERY.as_millis()).unwrap_or(u64::MAX),
        "capacity": sampler::CAPACITY,
        "latest": state.samples.latest(),
        "samples": samples,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    /// The page loads its script and style from this origin, and nothing inline runs: the
    /// CSP would block it, and the test in `tests/tests/dashboard.rs` reports any violation.
    #[test]
    fn the_page_has_no_inline_script_or_style_and_no_outside_url() {
        let html = super::INDEX_HTML;
        assert!(html.contains(r#"<script src="/admin/ui/dashboard.js""#));
        assert!(html.contains(r#"href="/admin/ui/dashboard.css""#));
        for needle in [
            "<script>",
            "<style",
            "style=",
            "onclick",
            "onload",
            "javascript:",
        ] {
            assert!(!html.contains(needle), "the page has `{needle}`");
        }
        for text in [super::INDEX_HTML, super::DASHBOARD_JS, super::DASHBOARD_CSS] {
            // The SVG namespace is a name, not a URL anything fetches.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("innerHTML") && !text.contains("eval("));
        }
    }
}
