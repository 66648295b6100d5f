//! `GET /openapi.json`: the API description, generated with utoipa from the schema types
//! below. The operations are declared on stub functions next to each other here, so the
//! whole public surface reads as one list; `tests::every_route_is_documented` keeps it in
//! step with the router.
//!
//! What every operation of a kind shares is added in one place, [`complete`], rather than
//! repeated in each declaration: the 404 of an unknown app or rule, 400 (a path segment that
//! is not UTF-8, a bad query), 413 (a body over 64 KiB), 500, 503 (Redis unavailable), the
//! admin token's 401/403 and security scheme, and the shapes of path parameters (names,
//! ids of 1 to 512 bytes). `tests/tests/standards.rs` validates the served document with
//! openapi-spec-validator and sends every documented operation one request.

#![allow(dead_code)] // the stubs and schema types exist for the generated document only

use serde::Serialize;
use serde_json::{Value, json};
use utoipa::{OpenApi, ToSchema};

/// Body of a rate-limit check.
#[derive(Serialize, ToSchema)]
pub struct CheckRequest {
    /// The entity to limit (user, API key, IP…): a string or a number, 1 to 512 bytes.
    #[schema(example = "user-42", min_length = 1, max_length = 512)]
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
    /// Why a plugin denied the request, when it said.
    reason: Option<String>,
    /// The rule's plugin failed and its `fallback` limit decided.
    fallback: Option<bool>,
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: String,
}

/// `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    ready: bool,
    /// Scripts of the current snapshot, all loaded in Redis.
    scripts: u64,
}

/// `POST /admin/reload`.
#[derive(Serialize, ToSchema)]
pub struct Reloaded {
    reloaded: bool,
    rules: u64,
    /// Every warning of the new policies as `file:line:column: message`.
    warnings: Vec<String>,
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
    /// Reload only: every diagnostic with its parts.
    diagnostics: Option<Vec<serde_json::Value>>,
    /// 409 of a held lock: when the next lease lapses (also in `Retry-After`, in seconds).
    retry_after_ms: Option<u64>,
}

#[utoipa::path(post, path = "/v1/ratelimit/{app}/{rule}", tag = "ratelimit", operation_id = "ratelimit_check",
    params(("app" = String, Path), ("rule" = String, Path)),
    request_body = CheckRequest,
    responses(
        (status = 200, description = "Allowed", body = CheckResponse,
            headers(("RateLimit-Policy" = String),
                ("RateLimit" = String),
                ("Patternd-Degraded" = String))),
        (status = 429, description = "Denied", body = CheckResponse,
            headers(("RateLimit-Policy" = String),
                ("RateLimit" = String),
                ("Retry-After" = u64),
                ("Patternd-Degraded" = String))),
        (status = 400, description = "Bad input", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown app or rule", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The rule's plugin failed and the rule has no fallback", body = Problem, content_type = "application/problem+json"),
    ))]
fn check_post() {}

#[utoipa::path(get, path = "/v1/ratelimit/{app}/{rule}", tag = "ratelimit", operation_id = "ratelimit_check_get",
    description = "Forward-auth form for gateways: the id comes from the rule's `id_from` header.",
    params(("app" = String, Path), ("rule" = String, Path),
        ("cost" = Option<u64>, Query),
        ("deny_status" = Option<u16>, Query, description = "The status of a denial: 429 (default), 403 or 401, for nginx auth_request")),
    responses(
        (status = 200, description = "Allowed", body = CheckResponse,
            headers(("RateLimit-Policy" = String),
                ("RateLimit" = String),
                ("Patternd-Degraded" = String))),
        (status = 429, description = "Denied", body = CheckResponse,
            headers(("RateLimit-Policy" = String),
                ("RateLimit" = String),
                ("Retry-After" = u64),
                ("Patternd-Degraded" = String))),
        (status = 403, description = "Denied, with `deny_status=403`", body = CheckResponse,
            headers(("RateLimit-Policy" = String),
                ("RateLimit" = String),
                ("Retry-After" = u64),
                ("Patternd-Degraded" = String))),
        (status = 401, description = "Denied, with `deny_status=401`", body = CheckResponse,
            headers(("RateLimit-Policy" = String),
                ("RateLimit" = String),
                ("Retry-After" = u64),
                ("Patternd-Degraded" = String))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The rule's plugin failed and the rule has no fallback", body = Problem, content_type = "application/problem+json"),
    ))]
fn check_get() {}

#[utoipa::path(delete, path = "/v1/ratelimit/{app}/{rule}/leases/{lease}", tag = "ratelimit",
    operation_id = "ratelimit_release_lease",
    description = "Releases a concurrency lease (the `lease` of an allowed decision).",
    params(("app" = String, Path), ("rule" = String, Path), ("lease" = String, Path)),
    responses((status = 200, body = ReleaseResponse),
        (status = 400, description = "Not a concurrency rule, or a malformed lease", body = Problem, content_type = "application/problem+json")))]
fn release() {}

/// Body of an operation call.
#[derive(Serialize, ToSchema)]
pub struct OpRequest {
    /// The entity whose keys the operation touches.
    id: String,
    /// ARGV of the operation's script (strings, numbers or booleans).
    args: Vec<serde_json::Value>,
}

#[utoipa::path(post, path = "/v1/ops/{app}/{rule}", tag = "ops", operation_id = "ops_call",
    description = "Runs a Redis-side operation declared by a Lua plugin on the id's keys. The result is the script's reply (a JSON object when it returns cjson-encoded text); 429 when that object says `\"denied\": true`.",
    params(("app" = String, Path), ("rule" = String, Path)),
    request_body = OpRequest,
    responses((status = 200, description = "`{\"result\": ...}`", body = OpResult),
        (status = 429, description = "`{\"result\": ...}` with `denied`", body = OpResult),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn ops_call() {}

/// An operation's answer.
#[derive(Serialize, ToSchema)]
pub struct OpResult {
    /// The script's reply: a JSON value when it returned cjson-encoded text, else as Redis
    /// replied (numbers, strings, arrays).
    result: serde_json::Value,
}

#[utoipa::path(get, path = "/healthz", tag = "ops", operation_id = "healthz",
    responses((status = 200, description = "The process answers", body = Health)))]
fn healthz() {}

#[utoipa::path(get, path = "/readyz", tag = "ops", operation_id = "readyz", responses(
    (status = 200, description = "Redis reachable and every script loaded", body = Ready),
    (status = 503, description = "Redis unreachable, or the scripts could not be loaded", body = Problem, content_type = "application/problem+json")))]
fn readyz() {}

#[utoipa::path(get, path = "/metrics", tag = "ops", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain")))]
fn metrics() {}

#[utoipa::path(get, path = "/openapi.json", tag = "ops", operation_id = "openapi",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object, content_type = "application/json")))]
fn openapi() {}

#[utoipa::path(get, path = "/admin/policies", tag = "admin", operation_id = "admin_policies",
    description = "Loaded apps and rules with key layouts, script SHAs and each rule's validated settings (rate limits, cache, session and lock settings in ms). Bearer token, or loopback only without one.",
    responses((status = 200, description = "The loaded policies", body = Object, content_type = "application/json")))]
fn admin_policies() {}

#[utoipa::path(post, path = "/admin/reload", tag = "admin", operation_id = "admin_reload",
    description = "Re-reads the policy directory; the running policies keep serving unless the new ones are valid.",
    responses((status = 200, description = "Reloaded", body = Reloaded),
        (status = 422, description = "Invalid policies, with every diagnostic", body = Problem, content_type = "application/problem+json")))]
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
    components(schemas(
        CheckRequest,
        CheckResponse,
        ReleaseResponse,
        OpRequest,
        OpResult,
        Problem,
        Health,
        Ready,
        Reloaded
    ))
)]
struct ApiDoc;

/// The document, rendered once.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::cache::api());
    doc.merge(super::cache_write::api());
    doc.merge(super::sessions::api());
    doc.merge(super::locks::api());
    let mut doc = serde_json::to_value(&doc).unwrap_or_default();
    complete(&mut doc);
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// A shared response, referenced as `#/components/responses/<name>`.
fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

/// Adds what every operation of a kind shares (see the module doc).
fn complete(doc: &mut Value) {
    let max_body = super::MAX_BODY_BYTES / 1024;
    let mut unauthorized = problem_response("Missing or wrong bearer token (`--admin-token`)");
    unauthorized["headers"] = json!({
        "WWW-Authenticate": { "description": "`Bearer realm=\"patternd admin\"`", "schema": { "type": "string" } }
    });
    let responses = json!({
        "BadRequest": problem_response("Bad input: the detail says what to fix"),
        "NotFound": problem_response("Unknown app or rule"),
        "TooLarge": problem_response(&format!("The request body is over {max_body} KiB")),
        "Unauthorized": unauthorized,
        "Forbidden": problem_response("No admin token is set and the client is not on loopback"),
        "Internal": problem_response("Internal error (logged; the answer says nothing more)"),
        "Unavailable": problem_response("Redis could not answer in time (`--redis-timeout`)"),
    });
    doc["components"]["responses"] = responses;
    // Headers several answers carry, described once and referenced.
    let header = |description: &str, kind: &str| json!({ "description": description, "schema": { "type": kind } });
    let headers = json!({
        "RateLimit-Policy": header("Every limit of the rule (IETF httpapi RateLimit header draft): `\"name\";q=<quota>;w=<window seconds>`, comma-separated", "string"),
        "RateLimit": header("The limit that matters: `\"name\";r=<remaining>;t=<seconds until reset>`; absent when the quota is unknown (degraded, or a plugin's decision without quota)", "string"),
        "Retry-After": header("Seconds to wait before trying again (a denied check: until a request of the same cost could pass; a held lock: until the next lease lapses)", "integer"),
        "Patternd-Degraded": header("The answer was decided without Redis: `allowed-without-redis` or `denied-without-redis` (a rate-limit rule's `on_redis_error` decided), `cache-not-updated` (a write-through reached the origin, but Redis did not store the value)", "string"),
    });
    let shared_headers: Vec<String> = headers
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    doc["components"]["headers"] = headers;
    doc["components"]["securitySchemes"] = json!({
        "admin_token": {
            "type": "http",
            "scheme": "bearer",
            "description": "`--admin-token`; without one, /admin answers loopback clients only (403 otherwise)"
        }
    });
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            complete_operation(path, method, op);
            // `get_mut`, not `[]`: indexing a JSON object for writing inserts a null.
            let responses = op.get_mut("responses").and_then(Value::as_object_mut);
            for (_, resp) in responses.into_iter().flatten() {
                let headers = resp.get_mut("headers").and_then(Value::as_object_mut);
                for (name, h) in headers.into_iter().flatten() {
                    if shared_headers.contains(name) {
                        *h = json!({ "$ref": format!("#/components/headers/{name}") });
                    }
                }
            }
        }
    }
}

fn complete_operation(path: &str, method: &str, op: &mut Value) {
    let data = path.starts_with("/v1/");
    let admin = path.starts_with("/admin/");
    let has_body = op.get("requestBody").is_some_and(Value::is_object);
    let has_input = path.contains('{')
        || has_body
        || op
            .get("parameters")
            .and_then(Value::as_array)
            .is_some_and(|p| !p.is_empty());
    // Rate-limit checks answer from `on_redis_error` when Redis is unavailable.
    let redis_503 = data && path != "/v1/ratelimit/{app}/{rule}";
    let set = |op: &mut Value, status: &str, name: &str| {
        op["responses"][status] = json!({ "$ref": format!("#/components/responses/{name}") });
    };
    let add = |op: &mut Value, status: &str, name: &str| {
        if op["responses"].get(status).is_none() {
            set(op, status, name);
        }
    };
    if has_input {
        add(op, "400", "BadRequest");
    }
    if path.contains("{app}") {
        add(op, "404", "NotFound");
    }
    if has_body {
        add(op, "413", "TooLarge");
    }
    if data || admin {
        add(op, "500", "Internal");
    }
    if redis_503 {
        add(op, "503", "Unavailable");
    }
    if admin {
        // The admin check answers these, the same for every admin route.
        set(op, "401", "Unauthorized");
        set(op, "403", "Forbidden");
        op["security"] = json!([{ "admin_token": [] }]);
    }
    let params = op.get_mut("parameters").and_then(Value::as_array_mut);
    for param in params.into_iter().flatten() {
        let name = param["name"].as_str().unwrap_or_default().to_string();
        let schema = match (param["in"].as_str(), name.as_str()) {
            (Some("path"), "app" | "rule") => Some(json!({
                "type": "string",
                "pattern": crate::policy::schema::NAME_PATTERN
            })),
            (Some("path"), "id" | "resource" | "user") => Some(json!({
                "type": "string",
                "minLength": 1,
                "maxLength": crate::patterns::MAX_ID_BYTES,
                "description": "1 to 512 bytes (UTF-8)"
            })),
            (Some("query"), "deny_status") if method == "get" => Some(json!({
                "type": "integer",
                "enum": [429, 403, 401],
                "default": 429
            })),
            _ => None,
        };
        if let Some(s) = schema {
            param["schema"] = s;
        }
    }
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

    #[test]
    fn operation_ids_are_unique() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).expect("valid JSON");
        let mut seen = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("item") {
                let id = op["operationId"].as_str().unwrap_or_default();
                assert!(!id.is_empty(), "{method} {path} has no operationId");
                assert!(
                    seen.insert(id.to_string()),
                    "operationId `{id}` is used twice"
                );
            }
        }
    }
}
