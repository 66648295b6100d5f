//! `/v1/ratelimit/{app}/{rule}`: thin handlers around `patterns::ratelimit`.

use std::borrow::Cow;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, header};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::{self, Id, Query, Rule};
use super::problem::{ApiError, Problem};
use crate::patterns::{CheckRequest, Decision, RateLimiter};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(check_post, check_get))
        .routes(routes!(release))
}

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

/// A decision request, as its 400s show it.
const EXAMPLE: &str = r#"{"id": "user-42", "cost": 1}"#;

#[utoipa::path(post, path = "/v1/ratelimit/{app}/{rule}", tag = "ratelimit", operation_id = "ratelimit_check",
    params(("app" = String, Path), ("rule" = String, Path)),
    request_body = CheckRequestDoc,
    responses(
        (status = 200, description = "Allowed", body = CheckResponse),
        (status = 429, description = "Denied", body = CheckResponse),
        (status = 400, description = "Bad input", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown app or rule", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The rule's plugin failed and the rule has no fallback", body = Problem, content_type = "application/problem+json"),
    ))]
async fn check_post(
    State(state): State<AppState>,
    rl: Rule<RateLimiter>,
    request: Request,
) -> Result<Response, ApiError> {
    // The request is taken whole (not as HeaderMap/Uri/Bytes extractors, which copy headers
    // and URI on every request): headers and URI are only needed when a plugin decides.
    let (parts, body) = request.into_parts();
    let body = extract::read_body(body).await?;
    let text = extract::object_text(&body, EXAMPLE)?;
    // Fast path, the common case: `{"id": "...", "cost": n}` for a rule whose plugin (if any)
    // declares no body fields, parsed without building a JSON tree. Anything else (numeric
    // ids, plugin fields, mistakes) takes the general path below, which also words the errors.
    if rl.exposed_fields().is_empty()
        && let Ok(fast) = serde_json::from_slice::<FastBody<'_>>(text)
    {
        let cost = fast.cost.unwrap_or(1);
        let facts = rl
            .wants_facts()
            .then(|| extract::facts(&parts, "POST", &fast.id, cost, rl.plugin_headers().into()));
        let d = rl
            .check(
                &state.runtime.store,
                CheckRequest {
                    id: &fast.id,
                    cost,
                    facts,
                },
            )
            .await?;
        return Ok(render(&rl, &d, StatusCode::TOO_MANY_REQUESTS));
    }
    let mut req: serde_json::Map<String, serde_json::Value> = extract::object(text, EXAMPLE)?;
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
    let facts = rl.wants_facts().then(|| {
        let mut f = extract::facts(&parts, "POST", &id, cost, rl.plugin_headers().into());
        f.fields = req.into_iter().map(|(k, v)| (k, v.to_string())).collect();
        f
    });
    let d = rl
        .check(
            &state.runtime.store,
            CheckRequest {
                id: &id,
                cost,
                facts,
            },
        )
        .await?;
    Ok(render(&rl, &d, StatusCode::TOO_MANY_REQUESTS))
}

// `GET /v1/ratelimit/{app}/{rule}`: forward-auth form for gateways; the id comes from the
// header named by the rule's `id_from`.
#[utoipa::path(get, path = "/v1/ratelimit/{app}/{rule}", tag = "ratelimit", operation_id = "ratelimit_check_get",
    description = "Forward-auth form for gateways: the id comes from the rule's `id_from` header.",
    params(("app" = String, Path), ("rule" = String, Path),
        ("cost" = Option<u64>, Query),
        ("deny_status" = Option<u16>, Query, description = "The status of a denial: 429 (default), 403 or 401, for nginx auth_request")),
    responses(
        (status = 200, description = "Allowed", body = CheckResponse),
        (status = 429, description = "Denied", body = CheckResponse),
        (status = 403, description = "Denied, with `deny_status=403`", body = CheckResponse),
        (status = 401, description = "Denied, with `deny_status=401`", body = CheckResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The rule's plugin failed and the rule has no fallback", body = Problem, content_type = "application/problem+json"),
    ))]
async fn check_get(
    State(state): State<AppState>,
    rl: Rule<RateLimiter>,
    Query(q): Query<CheckQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let headers = &parts.headers;
    let Some(from) = &rl.id_from else {
        return Err(ApiError::BadRequest(format!(
            "rule `{}` has no `id_from`; add `id_from: {{ header: NAME }}` to use GET, or POST a JSON body",
            rl.name
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
    let facts = rl
        .wants_facts()
        .then(|| extract::facts(&parts, "GET", id, cost, rl.plugin_headers().into()));
    let d = rl
        .check(&state.runtime.store, CheckRequest { id, cost, facts })
        .await?;
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
    let status = if d.allowed {
        StatusCode::OK
    } else {
        deny_status
    };
    let mut resp = Response::new(Body::from(reply_json(d)));
    *resp.status_mut() = status;
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
        let name = d
            .item_name
            .as_deref()
            .unwrap_or(rl.item_name(d.limit_index));
        let mut n = itoa::Buffer::new();
        let mut v = Vec::with_capacity(name.len() + 32);
        v.push(b'"');
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(b"\";r=");
        v.extend_from_slice(n.format(d.policy_remaining).as_bytes());
        v.extend_from_slice(b";t=");
        v.extend_from_slice(n.format(d.policy_reset_s).as_bytes());
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(v)) {
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

/// The decision's JSON body (the `CheckResponse` schema): the fields in a fixed order, numbers
/// through itoa, and serde_json only for the two strings that may need escaping. Written by
/// hand because it is every decision's body: serde_json's serializer and a growing buffer
/// were 1.5k of the 4.8k instructions `render` took per decision (bench/engine-instructions.sh,
/// docs/performance.md). `the_reply_body_is_what_serde_json_writes` holds it to serde_json's
/// output for every combination of the optional fields.
fn reply_json(d: &Decision) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(if d.allowed {
        b"{\"allowed\":true,\"limit\":"
    } else {
        b"{\"allowed\":false,\"limit\":"
    });
    out.extend_from_slice(n.format(d.limit).as_bytes());
    if let Some(burst) = d.burst {
        out.extend_from_slice(b",\"burst\":");
        out.extend_from_slice(n.format(burst).as_bytes());
    }
    out.extend_from_slice(b",\"remaining\":");
    out.extend_from_slice(n.format(d.remaining).as_bytes());
    out.extend_from_slice(b",\"reset_after_ms\":");
    out.extend_from_slice(n.format(d.reset_after_ms).as_bytes());
    out.extend_from_slice(b",\"retry_after_ms\":");
    out.extend_from_slice(n.format(d.retry_after_ms).as_bytes());
    if let Some(lease) = &d.lease {
        out.extend_from_slice(b",\"lease\":");
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, lease);
    }
    out.extend_from_slice(if d.degraded {
        b",\"degraded\":true"
    } else {
        b",\"degraded\":false"
    });
    if d.shadow_denied {
        out.extend_from_slice(b",\"shadow_denied\":true");
    }
    if let Some(reason) = &d.reason {
        out.extend_from_slice(b",\"reason\":");
        let _ = serde_json::to_writer(&mut out, reason);
    }
    if d.fallback {
        out.extend_from_slice(b",\"fallback\":true");
    }
    out.push(b'}');
    out
}

// `DELETE /v1/ratelimit/{app}/{rule}/leases/{lease}`: releases a concurrency lease.
#[utoipa::path(delete, path = "/v1/ratelimit/{app}/{rule}/leases/{lease}", tag = "ratelimit",
    operation_id = "ratelimit_release_lease",
    description = "Releases a concurrency lease (the `lease` of an allowed decision).",
    params(("app" = String, Path), ("rule" = String, Path), ("lease" = String, Path)),
    responses((status = 200, body = ReleaseResponse),
        (status = 400, description = "Not a concurrency rule, or a malformed lease", body = Problem, content_type = "application/problem+json")))]
async fn release(
    State(state): State<AppState>,
    rl: Rule<RateLimiter>,
    Id(lease): Id,
) -> Result<Response, ApiError> {
    let released = rl.release(&state.runtime.store, &lease).await?;
    Ok(axum::Json(serde_json::json!({ "released": released })).into_response())
}

// ---- OpenAPI -------------------------------------------------------------------------------

/// Body of a rate-limit check.
#[derive(Serialize, ToSchema)]
#[schema(as = CheckRequest)]
#[allow(dead_code)] // the document's schema; `FastBody` and the general path read the body
pub struct CheckRequestDoc {
    /// The entity to limit (user, API key, IP…): a string or a number, 1 to 512 bytes.
    #[schema(example = "user-42", min_length = 1, max_length = 512)]
    id: String,
    /// Units this request takes from every limit of the rule (default 1; 0 only reports).
    #[schema(minimum = 0)]
    cost: Option<u64>,
}

/// A rate-limit decision.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // the document's schema; `reply_json` writes what is sent
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

#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // the document's schema
pub struct ReleaseResponse {
    /// False when the lease had already expired or been released.
    released: bool,
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::reply_json;
    use crate::patterns::Decision;

    /// The body as serde_json writes it (what `render` sent before `reply_json`).
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

    #[test]
    fn the_reply_body_is_what_serde_json_writes() {
        for bits in 0u32..64 {
            let on = |i: u32| bits & (1 << i) != 0;
            let d = Decision {
                allowed: on(0),
                limit: u64::MAX,
                burst: on(1).then_some(7),
                limit_index: 0,
                remaining: 0,
                reset_after_ms: 1234,
                retry_after_ms: 999_999_999_999,
                policy_remaining: 0,
                policy_reset_s: 0,
                lease: on(2).then(|| "AbC-_09xyzAbC-_09xyz12".to_string()),
                degraded: on(3),
                shadow_denied: on(4),
                quota_known: true,
                policy_header: None,
                item_name: None,
                reason: on(5).then(|| "a \"quoted\" reason\\ with \u{1} and é".to_string()),
                fallback: on(4) && on(0),
            };
            let want = serde_json::to_vec(&CheckReply {
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
            })
            .expect("serializes");
            assert_eq!(
                String::from_utf8_lossy(&reply_json(&d)),
                String::from_utf8_lossy(&want),
                "{bits:06b}"
            );
        }
    }
}
