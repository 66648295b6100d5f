//! `/admin/…`: policy listing and reload, behind a bearer token (or loopback-only without one).

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::problem::ApiError;
use crate::compile::CompiledKind;
use crate::policy::cache::WriteMode;
use crate::policy::{ForwardedFor, IdFrom, PluginRef, RuleKind};
use crate::snapshot::Snapshot;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(policies))
        .routes(routes!(reload))
}

/// The admin check, taken first by every `/admin` handler: the bearer token when one is set
/// (401 otherwise), else a loopback client (403 otherwise). An extractor rather than a
/// layer, so the route table needs no state and an admin handler says what it is in its
/// signature.
pub(super) struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match &state.admin_token {
            Some(token) => {
                let given = parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if !token.matches(given) {
                    return Err(ApiError::Unauthorized);
                }
            }
            None => {
                let loopback = parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .is_some_and(|ci| ci.0.ip().is_loopback());
                if !loopback {
                    return Err(ApiError::Forbidden);
                }
            }
        }
        Ok(Admin)
    }
}

/// The admin bearer token, kept only as its SHA-256 digest.
///
/// A candidate is hashed too and the two digests are compared with `subtle`'s constant-time
/// equality: both sides are always 32 bytes, so neither a differing length nor a matching
/// prefix changes the work done, and the response time says nothing about the token.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    pub fn matches(&self, candidate: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        bool::from(given.ct_eq(&self.digest))
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

#[utoipa::path(get, path = "/admin/policies", tag = "admin", operation_id = "admin_policies",
    description = "Loaded apps and rules with key layouts, script SHAs and each rule's validated settings (rate limits, cache, session, lock, leaderboard and counter settings in ms). Bearer token, or loopback only without one.",
    responses((status = 200, description = "The loaded policies", body = Object, content_type = "application/json")))]
async fn policies(_: Admin, State(state): State<AppState>) -> Response {
    axum::Json(describe(&state.runtime.snapshot())).into_response()
}

/// `POST /admin/reload`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // the document's schema
pub struct Reloaded {
    reloaded: bool,
    rules: u64,
    /// Every warning of the new policies as `file:line:column: message`.
    warnings: Vec<String>,
}

#[utoipa::path(post, path = "/admin/reload", tag = "admin", operation_id = "admin_reload",
    description = "Re-reads the policy directory; the running policies keep serving unless the new ones are valid.",
    responses((status = 200, description = "Reloaded", body = Reloaded),
        (status = 422, description = "Invalid policies, with every diagnostic", body = super::problem::Problem, content_type = "application/problem+json")))]
async fn reload(_: Admin, State(state): State<AppState>) -> Result<Response, ApiError> {
    match state.runtime.reload().await {
        Ok(snap) => Ok(axum::Json(json!({
            "reloaded": true,
            "rules": snap.rule_count(),
            "warnings": snap.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }))
        .into_response()),
        Err(e) => {
            metrics::counter!("patternd_reloads_total", "result" => "rejected").increment(1);
            Err(e.into())
        }
    }
}

/// A validated duration as whole milliseconds, the unit every `*_ms` field of the API uses.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A rule's plugin binding as configured: its name and `plugin.config`.
fn plugin(p: Option<&PluginRef>) -> Value {
    p.map_or(
        Value::Null,
        |p| json!({ "name": p.name, "config": p.config }),
    )
}

/// A rate-limit rule's `id_from` as configured (with the default `trusted_hops: 1` spelled out
/// for X-Forwarded-For).
fn id_from(f: &IdFrom) -> Value {
    let mut v = json!({ "header": f.header });
    match &f.forwarded_for {
        Some(ForwardedFor::TrustedHops(n)) => v["trusted_hops"] = json!(n),
        Some(ForwardedFor::TrustedProxies(nets)) => {
            v["trusted_proxies"] = json!(nets.iter().map(ToString::to_string).collect::<Vec<_>>());
        }
        None => {}
    }
    v
}

fn describe(snap: &Snapshot) -> Value {
    let loaded_at = humantime::format_rfc3339_seconds(snap.loaded_at).to_string();
    let apps: Vec<Value> = snap
        .compiled
        .apps
        .iter()
        .map(|(app, rules)| {
            let rules: Vec<Value> = rules
                .values()
                .map(|c| {
                    let mut r = json!({
                        "rule": c.rule.name,
                        "kind": c.rule.kind.pattern(),
                        "description": c.rule.description,
                        "source": c.rule.location.to_string(),
                        "scripts": c.scripts().iter().map(|s| json!({"name": s.name, "sha": s.sha})).collect::<Vec<_>>(),
                        "keys": c.key_layout().iter().map(|(k, what)| json!({"key": k, "holds": what})).collect::<Vec<_>>(),
                    });
                    match (&c.rule.kind, &c.kind) {
                        (RuleKind::RateLimit(rl), CompiledKind::RateLimit(_)) => {
                            r["limits"] = rl
                                .limits
                                .iter()
                                .map(|l| json!({
                                    "algorithm": l.algorithm,
                                    "limit": l.limit,
                                    "window_ms": l.window_ms(),
                                    "burst": l.burst,
                                }))
                                .collect();
                            r["on_redis_error"] = json!(rl.on_redis_error);
                            r["shadow"] = json!(rl.shadow);
                            r["id_from"] = json!(rl.id_from.as_ref().map(id_from));
                        }
                        (RuleKind::Cache(c), _) => {
                            r["origin"] = json!(c.origin.as_ref().map(|o| &o.text));
                            r["ttl_ms"] = json!(ms(c.ttl));
                            r["negative_ttl_ms"] = json!(c.negative_ttl.map(ms));
                            r["stale_while_revalidate_ms"] = json!(ms(c.stale_while_revalidate));
                            r["stale_if_error_ms"] = json!(ms(c.stale_if_error));
                            r["format"] = json!(c.format);
                            r["write"] = json!(c.write);
                            r["related"] = json!(c.related);
                            r["max_value_bytes"] = json!(c.max_value_bytes);
                            r["origin_timeout_ms"] = json!(ms(c.origin_timeout));
                            r["refresh_lease_ms"] = json!(ms(c.refresh_lease));
                            r["fill_wait_ms"] = json!(ms(c.fill_wait));
                            r["beta"] = json!(c.beta);
                            r["on_redis_error"] = json!(c.on_redis_error);
                            r["slot_groups"] = json!(c.slot_groups);
                            r["near_cache"] = json!(c.near_cache.as_ref().map(|n| json!({
                                "max_entries": n.max_entries,
                                "max_age_ms": u64::try_from(n.max_age.as_millis()).unwrap_or(u64::MAX),
                            })));
                            // The write-behind worker's settings mean nothing in other modes.
                            if c.write == WriteMode::Behind {
                                r["max_attempts"] = json!(c.max_attempts);
                                r["retry_backoff_ms"] = json!(ms(c.retry_backoff));
                                r["journal_max_len"] = json!(c.journal_max_len);
                            }
                            r["plugin"] = plugin(c.plugin.as_ref());
                        }
                        (RuleKind::Session(s), _) => {
                            r["idle_ttl_ms"] = json!(ms(s.idle_ttl));
                            r["absolute_ttl_ms"] = json!(ms(s.absolute_ttl));
                            r["max_per_user"] = json!(s.max_per_user);
                            r["user_cap"] = json!(s.user_cap);
                            r["plugin"] = plugin(s.plugin.as_ref());
                        }
                        (RuleKind::Lock(l), _) => {
                            r["ttl_ms"] = json!(ms(l.ttl));
                            r["permits"] = json!(l.permits);
                            r["max_ttl_ms"] = json!(ms(l.max_ttl));
                            r["max_wait_ms"] = json!(ms(l.max_wait));
                        }
                        (RuleKind::Queue(q), _) => {
                            r["visibility_ms"] = json!(ms(q.visibility));
                            r["max_visibility_ms"] = json!(ms(q.max_visibility));
                            r["max_attempts"] = json!(q.max_attempts);
                            r["retry_backoff_ms"] = json!(ms(q.retry_backoff));
                            r["max_len"] = json!(q.max_len);
                            r["dead_max_len"] = json!(q.dead_max_len);
                            r["dedup_window_ms"] = json!(ms(q.dedup_window));
                            r["max_delay_ms"] = json!(ms(q.max_delay));
                            r["max_pop"] = json!(q.max_pop);
                            r["max_wait_ms"] = json!(ms(q.max_wait));
                            r["push"] = json!(q.push.as_ref().map(|p| json!({
                                "url": p.url,
                                "timeout_ms": ms(p.timeout),
                                "concurrency": p.concurrency,
                            })));
                            r["plugin"] = plugin(q.plugin.as_ref());
                            if q.plugin.is_some() {
                                r["fallback"] = json!(match q.fallback {
                                    crate::policy::queue::QueueFallback::Fail => "fail",
                                    crate::policy::queue::QueueFallback::Accept => "accept",
                                });
                            }
                        }
                        (RuleKind::Counter(k), _) => {
                            use crate::policy::counter::CounterKind;
                            r["counter_kind"] = json!(k.kind.name());
                            r["period"] = json!(k.period.to_string());
                            r["keep"] = json!(k.keep);
                            if k.period == crate::policy::period::Period::None {
                                r["ttl_ms"] = json!(ms(k.ttl));
                            }
                            r["max_batch"] = json!(k.max_batch);
                            match &k.kind {
                                CounterKind::Unique { range_cache } => {
                                    r["range_cache_ms"] = json!(range_cache.map(ms));
                                }
                                CounterKind::Bloom { size, backend } => {
                                    r["capacity"] = json!(size.capacity);
                                    r["error_rate"] = json!(size.error_rate);
                                    r["bits"] = json!(size.bits);
                                    r["hashes"] = json!(size.hashes);
                                    r["backend"] = json!(backend.name());
                                }
                                CounterKind::Count => {}
                            }
                        }
                        (RuleKind::Ops(o), _) => {
                            r["plugin"] = json!(o.plugin);
                            r["op"] = json!(o.op);
                        }
                        (RuleKind::Stream(s), _) => {
                            r["max_len"] = json!(s.max_len);
                            r["retention_ms"] = json!(s.retention.map(ms));
                            r["max_batch"] = json!(s.max_batch);
                            r["max_count"] = json!(s.max_count);
                            r["max_wait_ms"] = json!(ms(s.max_wait));
                            r["groups"] = json!(s.groups);
                            r["claim_after_ms"] = json!(ms(s.claim_after));
                            r["max_deliveries"] = json!(s.max_deliveries);
                            r["dead_max_len"] = json!(s.dead_max_len);
                            r["heartbeat_ms"] = json!(ms(s.heartbeat));
                            r["tail_buffer"] = json!(s.tail_buffer);
                            r["plugin"] = plugin(s.plugin.as_ref());
                            if s.plugin.is_some() {
                                r["fallback"] = json!(match s.fallback {
                                    crate::policy::stream::StreamFallback::Fail => "fail",
                                    crate::policy::stream::StreamFallback::Accept => "accept",
                                });
                            }
                        }
                        (RuleKind::PubSub(p), _) => {
                            r["max_message_bytes"] = json!(p.max_message_bytes);
                            r["heartbeat_ms"] = json!(ms(p.heartbeat));
                            r["client_buffer"] = json!(p.client_buffer);
                            r["plugin"] = plugin(p.plugin.as_ref());
                            if p.plugin.is_some() {
                                r["fallback"] = json!(match p.fallback {
                                    crate::policy::pubsub::PubSubFallback::Fail => "fail",
                                    crate::policy::pubsub::PubSubFallback::Allow => "allow",
                                });
                            }
                        }
                        (RuleKind::Leaderboard(l), _) => {
                            use crate::policy::leaderboard::{Order, Ties, Update};
                            r["period"] = json!(l.period.to_string());
                            r["keep"] = json!(l.keep);
                            r["update"] = json!(match l.update {
                                Update::Best => "best",
                                Update::Latest => "latest",
                                Update::Sum => "sum",
                            });
                            r["order"] = json!(match l.order {
                                Order::Desc => "desc",
                                Order::Asc => "asc",
                            });
                            r["ties"] = json!(match l.ties {
                                Ties::Shared => "shared",
                                Ties::First => "first",
                            });
                            r["max_size"] = json!(l.max_size);
                            r["max_page"] = json!(l.max_page);
                            r["max_score"] = json!(l.max_score);
                            r["aggregate_cache_ms"] = json!(ms(l.aggregate_cache));
                            r["plugin"] = plugin(l.plugin.as_ref());
                            if l.plugin.is_some() {
                                r["fallback"] = json!(match l.fallback {
                                    crate::policy::leaderboard::LeaderboardFallback::Fail => "fail",
                                    crate::policy::leaderboard::LeaderboardFallback::Accept => {
                                        "accept"
                                    }
                                });
                            }
                            if l.ties == Ties::First {
                                use crate::compile::leaderboard::{split, time_unit_ms};
                                let (score_bits, time_bits) = split(l.max_score);
                                r["score_bits"] = json!(score_bits);
                                r["time_bits"] = json!(time_bits);
                                r["tie_time_unit_ms"] = json!(time_unit_ms(l.period, time_bits));
                            }
                        }
                        _ => {}
                    }
                    r
                })
                .collect();
            json!({ "app": app, "rules": rules })
        })
        .collect();
    json!({
        "loaded_at": loaded_at,
        "apps": apps,
        "warnings": snap.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::AdminToken;

    #[test]
    fn admin_token_matches_only_itself_whatever_the_length() {
        let token = AdminToken::new("s3cret-token");
        assert!(token.matches("s3cret-token"));
        for wrong in [
            "",
            "s",
            "s3cret-toke",
            "s3cret-tokem",
            "s3cret-token ",
            "s3cret-token-and-more",
            "S3CRET-TOKEN",
            &"x".repeat(4096),
        ] {
            assert!(!token.matches(wrong), "{wrong:?} must not match");
        }
        // Only the digest is kept: the token text is not in the value, nor in its Debug form.
        assert!(!format!("{token:?}").contains("s3cret"));
        assert_eq!(std::mem::size_of::<AdminToken>(), 32);
    }
}
