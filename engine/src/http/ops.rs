//! `POST /v1/ops/{app}/{rule}`: Redis-side operations of Lua plugins.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::{Example, JsonObject, Rule};
use super::problem::{ApiError, Problem};
use crate::patterns::OpRunner;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(call))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpBody {
    id: serde_json::Value,
    #[serde(default)]
    args: Vec<serde_json::Value>,
}

impl Example for OpBody {
    const EXAMPLE: &'static str = r#"{"id": "...", "args": [...]}"#;
}

// `{"id": "...", "args": [...]}` → `{"result": ...}`; 429 when the result says
// `"denied": true`.
#[utoipa::path(post, path = "/v1/ops/{app}/{rule}", tag = "ops", operation_id = "ops_call",
    description = "Runs a Redis-side operation declared by a Lua plugin on the id's keys. The result is the script's reply (a JSON object when it returns cjson-encoded text); 429 when that object says `\"denied\": true`.",
    params(("app" = String, Path), ("rule" = String, Path)),
    request_body = OpRequest,
    responses((status = 200, description = "`{\"result\": ...}`", body = OpResult),
        (status = 429, description = "`{\"result\": ...}` with `denied`", body = OpResult),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn call(
    State(state): State<AppState>,
    op: Rule<OpRunner>,
    JsonObject(req): JsonObject<OpBody>,
) -> Result<Response, ApiError> {
    let id = match req.id {
        serde_json::Value::String(s) => s,
        serde_json::Value::Number(n) => n.to_string(),
        _ => {
            return Err(ApiError::BadRequest(
                "`id` must be a string or a number".into(),
            ));
        }
    };
    let mut args = Vec::with_capacity(req.args.len());
    for (i, a) in req.args.into_iter().enumerate() {
        args.push(match a {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => if b { "1" } else { "0" }.to_string(),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "argument {} must be a string, number or boolean",
                    i + 1
                )));
            }
        });
    }
    let out = op.call(&state.runtime.store, &id, &args).await?;
    let status = if out.denied {
        StatusCode::TOO_MANY_REQUESTS
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(json!({ "result": out.result }))).into_response())
}

// ---- OpenAPI -------------------------------------------------------------------------------

/// Body of an operation call.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // the document's schema; `OpBody` reads the body
pub struct OpRequest {
    /// The entity whose keys the operation touches.
    id: String,
    /// ARGV of the operation's script (strings, numbers or booleans).
    args: Vec<serde_json::Value>,
}

/// An operation's answer.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // the document's schema
pub struct OpResult {
    /// The script's reply: a JSON value when it returned cjson-encoded text, else as Redis
    /// replied (numbers, strings, arrays).
    result: serde_json::Value,
}
