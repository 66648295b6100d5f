//! `/v1/pubsub/{app}/{rule}/{channel}`: publish, and subscribe as Server-Sent Events. Thin
//! handlers around `patterns::pubsub`.

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::{self, Headers, Id, Rule};
use super::problem::{ApiError, Problem};
use super::sse::{self, Rendered, SseBody};
use crate::patterns::PubSubRule;
use crate::patterns::pubsub::SubEvent;
use doc::PubSubPublished;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(publish, subscribe))
}

// `POST /v1/pubsub/{app}/{rule}/{channel}` with the message as the body.
#[utoipa::path(post, path = "/v1/pubsub/{app}/{rule}/{channel}", tag = "pubsub", operation_id = "pubsub_publish",
    description = "Publishes the body (any bytes, at most the rule's `max_message_bytes`) to the channel. `engines` is what Redis answers: the subscriber connections reached, that is the engines with at least one subscriber of the channel, not the SSE clients. At-most-once: nothing is kept for a subscriber that is not connected.",
    params(("app" = String, Path), ("rule" = String, Path), ("channel" = String, Path)),
    request_body(content = String, description = "The message", content_type = "application/octet-stream"),
    responses((status = 200, body = PubSubPublished),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The rule's plugin rejected the publish (`rejected`); nothing was published", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The rule's plugin failed and the rule has no `fallback: allow`", body = Problem, content_type = "application/problem+json")))]
async fn publish(
    State(state): State<AppState>,
    rule: Rule<PubSubRule>,
    Id(channel): Id,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = extract::read_body(body).await?;
    let facts = rule
        .wants_facts()
        .then(|| extract::facts(&parts, "POST", &channel, 0, Headers::All));
    let (n, fallback) = rule
        .publish(&state.runtime.store, &channel, &body, facts)
        .await?;
    Ok(Json(if fallback {
        json!({ "engines": n, "fallback": true })
    } else {
        json!({ "engines": n })
    })
    .into_response())
}

fn render(ev: SubEvent) -> Rendered {
    let (kind, data, last) = match ev {
        SubEvent::Subscribed => (Some("subscribed"), bytes_of("{}"), false),
        SubEvent::Message(b) => (None, b, false),
        SubEvent::Gap => (
            Some("gap"),
            bytes_of(
                r#"{"reason":"the engine's Redis subscription was interrupted; messages may have been lost"}"#,
            ),
            false,
        ),
        SubEvent::Dropped(reason) => (
            Some("dropped"),
            json!({ "reason": reason }).to_string().into(),
            true,
        ),
    };
    Rendered {
        bytes: sse::event(None, kind, &data),
        last,
    }
}

fn bytes_of(s: &'static str) -> axum::body::Bytes {
    axum::body::Bytes::from_static(s.as_bytes())
}

// `GET /v1/pubsub/{app}/{rule}/{channel}`: Server-Sent Events.
#[utoipa::path(get, path = "/v1/pubsub/{app}/{rule}/{channel}", tag = "pubsub", operation_id = "pubsub_subscribe",
    description = "Subscribes as Server-Sent Events: first `event: subscribed` (messages published from then on arrive), then one event per message (`data`: the message, one `data:` line per line). `event: gap` when the engine's subscription to Redis was interrupted (messages may be lost); `event: dropped` ends the stream of a client more than the rule's `client_buffer` behind. Heartbeat comments keep idle proxies open.",
    params(("app" = String, Path), ("rule" = String, Path), ("channel" = String, Path)),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 403, description = "The rule's plugin rejected the subscription (`rejected`); no stream starts", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The rule's plugin failed and the rule has no `fallback: allow`", body = Problem, content_type = "application/problem+json")))]
async fn subscribe(
    State(state): State<AppState>,
    rule: Rule<PubSubRule>,
    Id(channel): Id,
    request: Request,
) -> Result<Response, ApiError> {
    let facts = rule.wants_facts().then(|| {
        let (parts, _) = request.into_parts();
        extract::facts(&parts, "GET", &channel, 0, Headers::All)
    });
    let events = rule
        .subscribe(&state.runtime.store, &channel, facts)
        .await?;
    let body = SseBody::new(events, render, rule.spec.heartbeat, "pubsub");
    Ok(sse::response(body))
}

#[allow(dead_code)] // schema types exist for the generated document only
mod doc {
    use utoipa::ToSchema;

    #[derive(ToSchema)]
    pub struct PubSubPublished {
        /// Subscriber connections reached: engines with a subscriber of the channel (each
        /// holds one subscription per channel), not SSE clients.
        engines: u64,
        /// Present (true) when the rule's plugin failed and its `fallback: allow` published
        /// the message.
        fallback: Option<bool>,
    }
}
