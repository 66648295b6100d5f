//! `POST /v1/ops/{app}/{rule}`: Redis-side operations of Lua plugins.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::problem::ApiError;
use crate::patterns::OpError;
use crate::store::StoreError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpBody {
    id: serde_json::Value,
    #[serde(default)]
    args: Vec<serde_json::Value>,
}

/// `{"id": "...", "args": [...]}` → `{"result": ...}`; 429 when the result says
/// `"denied": true`.
pub(super) async fn call(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((app, rule)) = path.map_err(super::bad_path)?;
    let snap = state.runtime.snapshot();
    let op = match snap.op(&app, &rule) {
        Some(op) => op.clone(),
        None if !snap.has_app(&app) => return Err(ApiError::UnknownApp(app)),
        None => {
            return Err(ApiError::UnknownRule {
                app,
                pattern: "ops",
                rule,
            });
        }
    };
    let body = super::body_bytes(body)?;
    let req: OpBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid JSON body ({e}); send {{\"id\": \"...\", \"args\": [...]}}"
        ))
    })?;
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
    match op.call(&state.runtime.store, &id, &args).await {
        Ok(out) => {
            let status = if out.denied {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::OK
            };
            Ok((status, axum::Json(json!({ "result": out.result }))).into_response())
        }
        Err(OpError::Input(e)) => Err(e.into()),
        Err(e @ (OpError::TooManyArgs(_) | OpError::ArgTooLong(_))) => {
            Err(ApiError::BadRequest(e.to_string()))
        }
        // The op's documented way to refuse its input: `redis.error_reply('BADARG why')`.
        Err(OpError::Store(StoreError::Redis(e))) if e.code() == Some("BADARG") => {
            Err(ApiError::BadRequest(format!(
                "op `{}`: {}",
                op.op,
                e.detail().unwrap_or("bad arguments")
            )))
        }
        Err(OpError::Store(e))
            if e.is_unavailable() || matches!(e, StoreError::WrongType { .. }) =>
        {
            Err(e.into())
        }
        Err(OpError::Store(e)) => Err(ApiError::Internal(format!(
            "op `{}` of plugin `{}` ({app}/{rule}) failed: {e}",
            op.op, op.plugin
        ))),
    }
}
