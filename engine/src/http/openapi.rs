//! `GET /openapi.json`: the API description, generated with utoipa from the schema types
//! below. The operations are declared on stub functions next to each other here, so the
//! whole public surface reads as one list; `tests::every_route_is_documented` keeps it in
//! step with the router.

#![allow(dead_code)] // the stubs and schema types exist for the generated document only

use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

/// Body of a rate-limit check.
#[derive(Serialize, ToSchema)]
pub struct CheckRequest {
    /// The entity to limit (user, API key, IP…): a string or a number, 1 to 512 bytes.
    #[schema(example = "user-42")]
    id: String,
    /// Units this request takes from every limit of the rule (default 1; 0 only reports).
    #[schema(minimum = 0)]
    cost: Option<u64>,
}

/// A rate-limit decision.
#[derive(Serialize, ToSchema)]
pub struct CheckResponse {
    allowed: bool,
    /// The reported limit's quota per window: the denying limit, or the one with the least
    /// remaining.
    limit: u64,
    /// `token_bucket` and `gcra`: the most the bucket holds (`remaining` may exceed `limit`).
    burst: Option<u64>,
    remaining: u64,
    /// Until the reported limit's full capacity is back (a bucket: until it is full).
    reset_after_ms: u64,
    /// When denied: until a request of the same cost could pass.
    retry_after_ms: u64,
    /// Concurrency rules: release it with `DELETE …/leases/{lease}`.
    lease: Option<String>,
    /// Redis could not be asked in time; the rule's `on_redis_error` decided.
    degraded: bool,
    /// Shadow rules: the request would have been denied.
    shadow_denied: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct ReleaseResponse {
    /// False when the lease had already expired or been released.
    released: bool,
}

/// RFC 9457 problem details (`application/problem+json`).
#[derive(Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(example = "urn:patternd:problem:bad-request")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    /// Reload only: every diagnostic as `file:line:column: message`.
    errors: Option<Vec<String>>,
}

#[utoipa::path(post, path = "/v1/ratelimit/{app}/{rule}", tag = "ratelimit",
    params(("app" = String, Path), ("rule" = String, Path)),
    request_body = CheckRequest,
    responses(
        (status = 200, description = "Allowed", body = CheckResponse,
            headers(("RateLimit-Policy" = String), ("RateLimit" = String))),
        (status = 429, description = "Denied", body = CheckResponse,
            headers(("Retry-After" = u64, description = "seconds"))),
        (status = 400, description = "Bad input", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown app or rule", body = Problem, content_type = "application/problem+json"),
    ))]
fn check_post() {}

#[utoipa::path(get, path = "/v1/ratelimit/{app}/{rule}", tag = "ratelimit",
    description = "Forward-auth form for gateways: the id comes from the rule's `id_from` header.",
    params(("app" = String, Path), ("rule" = String, Path),
        ("cost" = Option<u64>, Query),
        ("deny_status" = Option<u16>, Query, description = "429 (default), 403 or 401, for nginx auth_request")),
    responses(
        (status = 200, body = CheckResponse), (status = 429, body = CheckResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    ))]
fn check_get() {}

#[utoipa::path(delete, path = "/v1/ratelimit/{app}/{rule}/leases/{lease}", tag = "ratelimit",
    params(("app" = String, Path), ("rule" = String, Path), ("lease" = String, Path)),
    responses((status = 200, body = ReleaseResponse),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
fn release() {}

/// Body of an operation call.
#[derive(Serialize, ToSchema)]
pub struct OpRequest {
    /// The entity whose keys the operation touches.
    id: String,
    /// ARGV of the operation's script (strings, numbers or booleans).
    args: Vec<serde_json::Value>,
}

#[utoipa::path(post, path = "/v1/ops/{app}/{rule}", tag = "ops",
    description = "Runs a Redis-side operation declared by a Lua plugin on the id's keys. The result is the script's reply (a JSON object when it returns cjson-encoded text); 429 when that object says `\"denied\": true`.",
    params(("app" = String, Path), ("rule" = String, Path)),
    request_body = OpRequest,
    responses((status = 200, description = "`{\"result\": ...}`"), (status = 429, description = "`{\"result\": ...}` with `denied`"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn ops_call() {}

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "The process answers")))]
fn healthz() {}

#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Redis reachable and every script loaded"),
    (status = 503, body = Problem, content_type = "application/problem+json")))]
fn readyz() {}

#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
fn metrics() {}

#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "This document")))]
fn openapi() {}

#[utoipa::path(get, path = "/admin/policies", tag = "admin",
    description = "Loaded apps and rules with key layouts, script SHAs and each rule's validated settings (rate limits, cache, session and lock settings in ms). Bearer token, or loopback only without one.",
    responses((status = 200, description = "The loaded policies"),
        (status = 401, body = Problem, content_type = "application/problem+json")))]
fn admin_policies() {}

#[utoipa::path(post, path = "/admin/reload", tag = "admin",
    description = "Re-reads the policy directory; the running policies keep serving unless the new ones are valid.",
    responses((status = 200, description = "Reloaded"),
        (status = 422, description = "Invalid policies, with every diagnostic", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json")))]
fn admin_reload() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "patternd",
        description = "Redis patterns done right, served over HTTP"
    ),
    paths(
        check_post,
        check_get,
        release,
        ops_call,
        healthz,
        readyz,
        metrics,
        openapi,
        admin_policies,
        admin_reload
    ),
    components(schemas(CheckRequest, CheckResponse, ReleaseResponse, OpRequest, Problem))
)]
struct ApiDoc;

/// The document, rendered once.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::cache::api());
    doc.merge(super::cache_write::api());
    doc.merge(super::sessions::api());
    doc.merge(super::locks::api());
    doc.to_pretty_json().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_documented() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).expect("valid JSON");
        let paths = doc["paths"].as_object().expect("paths");
        let routes = super::super::all_routes();
        for route in &routes {
            assert!(
                paths.contains_key(*route),
                "{route} is not in the OpenAPI document"
            );
        }
        assert_eq!(
            paths.len(),
            routes.len(),
            "documented routes that do not exist"
        );
    }
}
