//! `GET /openapi.json`: the API description, generated with utoipa from the
//! `#[utoipa::path]` of every handler, in its own file, through the route table
//! (`super::table`): the router and the document are the same list. A handler's own comment
//! is a `//` comment: utoipa would make a `///` one the operation's summary.
//!
//! What every operation of a kind shares is added in one place, [`complete`], rather than
//! repeated in each declaration: the 404 of an unknown app or rule, 400 (a path segment that
//! is not UTF-8, a bad query), 413 (a body over 64 KiB), 500, 503 (Redis unavailable), the
//! admin token's 401/403 and security scheme (every `/admin` route but the dashboard's static
//! shell, `/admin/ui`), and the shapes of path parameters (names,
//! ids of 1 to 512 bytes). `tests/tests/standards.rs` validates the served document with
//! openapi-spec-validator and sends every documented operation one request.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::problem::Problem;

/// What the document says of itself; the operations come from the route table.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "patternd",
        description = "Redis patterns done right, served over HTTP"
    ),
    components(schemas(Problem))
)]
struct ApiDoc;

/// The document the route table starts from.
pub(super) fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(openapi))
}

/// The document, rendered once.
pub(super) fn document() -> &'static str {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        let mut doc = serde_json::to_value(super::table().into_openapi()).unwrap_or_default();
        complete(&mut doc);
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    });
    &DOCUMENT
}

#[utoipa::path(get, path = "/openapi.json", tag = "ops", operation_id = "openapi",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object, content_type = "application/json")))]
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
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
    // The dashboard's page and files are a static shell, served without the token (its
    // script asks the admin routes with it; see http/dashboard.rs).
    let shell = path == "/admin/ui" || path.starts_with("/admin/ui/");
    let admin = path.starts_with("/admin/") && !shell;
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
    if path == "/v1/ratelimit/{app}/{rule}" {
        // Every decision carries the rule's RateLimit fields and, when `on_redis_error`
        // decided it, Patternd-Degraded; a denial (429, or the `deny_status` it asked for)
        // adds Retry-After. Said here once for both forms of the check.
        let responses = op.get_mut("responses").and_then(Value::as_object_mut);
        for (status, resp) in responses.into_iter().flatten() {
            let mut names = vec!["RateLimit-Policy", "RateLimit", "Patternd-Degraded"];
            match status.as_str() {
                "200" => {}
                "429" | "403" | "401" => names.insert(2, "Retry-After"),
                _ => continue,
            }
            resp["headers"] = names
                .into_iter()
                .map(|n| {
                    (
                        n.to_string(),
                        json!({ "$ref": format!("#/components/headers/{n}") }),
                    )
                })
                .collect();
        }
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
            (Some("path"), "app" | "rule" | "group") => Some(json!({
                "type": "string",
                "pattern": crate::policy::schema::NAME_PATTERN
            })),
            (Some("path"), "id" | "resource" | "user" | "channel") => Some(json!({
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
    fn operation_ids_are_unique() {
        let doc: serde_json::Value = serde_json::from_str(super::document()).expect("valid JSON");
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
