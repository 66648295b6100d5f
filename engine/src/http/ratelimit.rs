//! `/v1/ratelimit/{app}/{rule}`: thin handlers around `patterns::ratelimit`.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use std::borrow::Cow;
use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::problem::ApiError;
use crate::patterns::ratelimit::ReleaseError;
use crate::patterns::{CheckError, CheckRequest, Decision, RateLimiter};
use crate::plugin::RequestFacts;

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static DEGRADED: HeaderName = HeaderName::from_static("patternd-degraded");

/// The common decision body, borrowed from the request bytes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastBody<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default)]
    cost: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct CheckQuery {
    cost: Option<String>,
    /// Status for a denial instead of 429. nginx's `auth_request` only understands 2xx, 401 and
    /// 403 (anything else becomes a 500), so gateways ask for 403 and map it back to 429.
    deny_status: Option<String>,
}

#[derive(Serialize)]
struct CheckReply<'a> {
    allowed: bool,
    limit: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    burst: Option<u64>,
    remaining: u64,
    reset_after_ms: u64,
    retry_after_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<&'a str>,
    degraded: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    shadow_denied: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    fallback: bool,
}

fn lookup(state: &AppState, app: &str, rule: &str) -> Result<Arc<RateLimiter>, ApiError> {
    let snap = state.runtime.snapshot();
    match snap.ratelimiter(app, rule) {
        Some(rl) => Ok(rl.clone()),
        None if !snap.has_app(app) => Err(ApiError::UnknownApp(app.to_string())),
        None => Err(ApiError::UnknownRule {
            app: app.to_string(),
            pattern: "ratelimit",
            rule: rule.to_string(),
        }),
    }
}

/// `POST /v1/ratelimit/{app}/{rule}` with `{"id": "...", "cost": n}`.
pub(super) async fn check_post(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Path((app, rule)) = path.map_err(super::bad_path)?;
    let rl = lookup(&state, &app, &rule)?;
    // The request is taken whole (not as HeaderMap/Uri/Bytes extractors, which copy headers
    // and URI on every request): headers and URI are only needed when a plugin decides.
    let (parts, body) = request.into_parts();
    let body = super::read_body(body).await?;
    if body.is_empty() {
        return Err(ApiError::BadRequest(
            "empty body; send JSON such as {\"id\": \"user-42\", \"cost\": 1}".into(),
        ));
    }
    // serde's derived Deserialize also reads a struct from a JSON array (`["user-42", 1]`),
    // which would silently be taken as a decision request; the API is an object only.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object such as {\"id\": \"user-42\", \"cost\": 1}".into(),
        ));
    }
    // Fast path, the common case: `{"id": "...", "cost": n}` for a rule whose plugin (if any)
    // declares no body fields, parsed without building a JSON tree. Anything else (numeric
    // ids, plugin fields, mistakes) takes the general path below, which also words the errors.
    if rl.exposed_fields().is_empty()
        && let Ok(fast) = serde_json::from_slice::<FastBody<'_>>(&body)
    {
        let cost = fast.cost.unwrap_or(1);
        let facts = rl.wants_facts().then(|| RequestFacts {
            method: "POST".into(),
            path: parts.uri.path().to_string(),
            id: fast.id.to_string(),
            cost,
            headers: header_pairs(&parts.headers, rl.plugin_headers()),
            client_addr: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
            fields: Vec::new(),
        });
        let d = decide(
            &state,
            &rl,
            CheckRequest {
                id: &fast.id,
                cost,
                facts,
            },
        )
        .await?;
        return Ok(render(&rl, &d, StatusCode::TOO_MANY_REQUESTS));
    }
    let mut req: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    let id_value = req.remove("id");
    let cost_value = req.remove("cost");
    // Only fields the rule's plugin declared may come along; anything else is a typo.
    let exposed = rl.exposed_fields();
    if let Some(unknown) = req.keys().find(|k| !exposed.contains(k)) {
        let expected = if exposed.is_empty() {
            "`id` and `cost`".to_string()
        } else {
            format!(
                "`id`, `cost` and {}",
                exposed
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(ApiError::BadRequest(format!(
            "invalid JSON body: unknown field `{unknown}`, expected {expected}"
        )));
    }
    let id = match id_value {
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "`id` must be a string or a number".into(),
            ));
        }
        None => {
            return Err(ApiError::BadRequest(
                "missing `id` (the entity to limit, e.g. a user or API key)".into(),
            ));
        }
    };
    let cost = match cost_value {
        None | Some(serde_json::Value::Null) => 1,
        Some(v) => parse_cost(&v.to_string())?,
    };
    let facts = rl.wants_facts().then(|| RequestFacts {
        method: "POST".into(),
        path: parts.uri.path().to_string(),
        id: id.clone(),
        cost,
        headers: header_pairs(&parts.headers, rl.plugin_headers()),
        client_addr: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
        fields: req.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
    });
    let d = decide(
        &state,
        &rl,
        CheckRequest {
            id: &id,
            cost,
            facts,
        },
    )
    .await?;
    Ok(render(&rl, &d, StatusCode::TOO_MANY_REQUESTS))
}

async fn decide(
    state: &AppState,
    rl: &RateLimiter,
    req: CheckRequest<'_>,
) -> Result<Decision, ApiError> {
    match rl.check(&state.runtime.store, req).await {
        Ok(d) => Ok(d),
        Err(CheckError::Input(e)) => Err(e.into()),
        Err(CheckError::Plugin(e)) => Err(ApiError::PluginFailed(e.to_string())),
        Err(CheckError::Store(e)) => Err(e.into()),
        Err(CheckError::Random(m)) => Err(ApiError::Internal(m)),
    }
}

/// The headers a plugin sees: the rule's `plugin.headers` when listed (looked up by name, so
/// the other headers are never copied), else all of them. Values that are not visible ASCII
/// are left out either way.
fn header_pairs(headers: &HeaderMap, only: Option<&[String]>) -> Vec<(String, String)> {
    match only {
        Some(names) => {
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                for v in headers.get_all(name.as_str()) {
                    if let Ok(v) = v.to_str() {
                        out.push((name.clone(), v.to_string()));
                    }
                }
            }
            out
        }
        None => headers
            .iter()
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_string(), v.to_string()))
            })
            .collect(),
    }
}

/// `GET /v1/ratelimit/{app}/{rule}`: forward-auth form for gateways; the id comes from the
/// header named by the rule's `id_from`.
pub(super) async fn check_get(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<CheckQuery>, QueryRejection>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((app, rule)) = path.map_err(super::bad_path)?;
    let Query(q) = query.map_err(super::bad_query)?;
    let rl = lookup(&state, &app, &rule)?;
    let Some(from) = &rl.id_from else {
        return Err(ApiError::BadRequest(format!(
            "rule `{rule}` has no `id_from`; add `id_from: {{ header: NAME }}` to use GET, or POST a JSON body"
        )));
    };
    let raw = headers.get(from.header.as_str()).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "missing header `{}` (the rule's id_from)",
            from.header
        ))
    })?;
    let id: Cow<'_, str> = match &from.forwarded_for {
        // X-Forwarded-For: the address the rule's trusted proxies saw, never what the client
        // wrote to the left of it.
        Some(how) => Cow::Owned(
            super::forwarded::client_address(headers.get_all(from.header.as_str()).iter(), how)?
                .to_string(),
        ),
        None => Cow::Borrowed(
            raw.to_str()
                .map_err(|_| {
                    ApiError::BadRequest(format!("header `{}` is not valid text", from.header))
                })?
                .trim(),
        ),
    };
    let id = id.as_ref();
    let cost = match q.cost.as_deref() {
        None => 1,
        Some(c) => parse_cost(c)?,
    };
    let deny_status = match q.deny_status.as_deref() {
        None | Some("429") => StatusCode::TOO_MANY_REQUESTS,
        Some("403") => StatusCode::FORBIDDEN,
        Some("401") => StatusCode::UNAUTHORIZED,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "`deny_status` must be 429, 403 or 401, not {other}"
            )));
        }
    };
    let facts = rl.wants_facts().then(|| RequestFacts {
        method: "GET".into(),
        path: uri.path().to_string(),
        id: id.to_string(),
        cost,
        headers: header_pairs(&headers, rl.plugin_headers()),
        client_addr: connect.map(|c| c.0.0.ip().to_string()),
        fields: Vec::new(),
    });
    let d = decide(&state, &rl, CheckRequest { id, cost, facts }).await?;
    Ok(render(&rl, &d, deny_status))
}

fn parse_cost(text: &str) -> Result<u64, ApiError> {
    match text.parse::<i64>() {
        Ok(n) if n < 0 => Err(ApiError::BadRequest(format!(
            "`cost` must be 0 or more, not {n}"
        ))),
        Ok(n) => Ok(n.unsigned_abs()),
        Err(_) => Err(ApiError::BadRequest(format!(
            "`cost` must be a whole number, not {text}"
        ))),
    }
}

fn render(rl: &RateLimiter, d: &Decision, deny_status: StatusCode) -> Response {
    let reply = CheckReply {
        allowed: d.allowed,
        limit: d.limit,
        burst: d.burst,
        remaining: d.remaining,
        reset_after_ms: d.reset_after_ms,
        retry_after_ms: d.retry_after_ms,
        lease: d.lease.as_deref(),
        degraded: d.degraded,
        shadow_denied: d.shadow_denied,
        reason: d.reason.as_deref(),
        fallback: d.fallback,
    };
    let body = serde_json::to_vec(&reply).unwrap_or_default();
    let status = if d.allowed {
        StatusCode::OK
    } else {
        deny_status
    };
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Shadow rules have neither field (`policy_header` is None and `quota_known` false):
    // their limits are not enforced, and a client honouring them would throttle itself.
    let policy = d.policy_header.as_deref().or(rl.policy_header());
    if let Some(Ok(v)) = policy.map(HeaderValue::from_str) {
        h.insert(RATELIMIT_POLICY.clone(), v);
    }
    // A decision without quota (degraded, or a plugin's skip or deny) knows nothing about
    // the quota: claiming `r=0` would make well-behaved clients back off for no reason, so
    // the header is left out. `r` and `t` are measured against the policy item (see
    // `Decision::policy_remaining`).
    if d.quota_known {
        let rl_value = format!(
            "\"{}\";r={};t={}",
            d.item_name
                .as_deref()
                .unwrap_or(rl.item_name(d.limit_index)),
            d.policy_remaining,
            d.policy_reset_s
        );
        if let Ok(v) = HeaderValue::from_str(&rl_value) {
            h.insert(RATELIMIT.clone(), v);
        }
    }
    if !d.allowed {
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from(crate::patterns::ratelimit::retry_after_s(d.retry_after_ms)),
        );
    }
    if d.degraded {
        h.insert(
            DEGRADED.clone(),
            HeaderValue::from_static(if d.allowed {
                "allowed-without-redis"
            } else {
                "denied-without-redis"
            }),
        );
    }
    resp
}

/// `DELETE /v1/ratelimit/{app}/{rule}/leases/{lease}`: releases a concurrency lease.
pub(super) async fn release(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((app, rule, lease)) = path.map_err(super::bad_path)?;
    let rl = lookup(&state, &app, &rule)?;
    match rl.release(&state.runtime.store, &lease).await {
        Ok(released) => Ok(axum::Json(serde_json::json!({ "released": released })).into_response()),
        Err(ReleaseError::NotConcurrency) => Err(ApiError::BadRequest(
            ReleaseError::NotConcurrency.to_string(),
        )),
        Err(ReleaseError::Input(e)) => Err(e.into()),
        Err(ReleaseError::Store(e)) => Err(e.into()),
    }
}
