//! Pub/sub rules at request time: publish through a script, subscribe through the engine's
//! one subscriber connection (`store::pubsub`), fanned out to every SSE client.
//!
//! At-most-once: a message reaches the engines subscribed when it is published, and through
//! them the SSE clients connected then; nothing is stored. A client that falls more than
//! `client_buffer` messages behind is dropped with a final event; a dropped subscriber
//! connection is reported to every client as a gap.
//!
//! With a plugin, its `pubsub` hook sees each publish (with the message) and each subscribe
//! first and may reject it; when it fails, the rule's `fallback` decides.

use axum::body::Bytes;
use tokio::sync::{broadcast, mpsc};

use super::feed::{self, Feed, NotSent};
use super::{InputError, MAX_ID_BYTES, check_id};
use crate::compile::pubsub::{PubSubScripts, channel_key};
use crate::compile::{CompiledPubSub, KeySpace};
use crate::plugin::{PluginBinding, PluginError, PubSubDecision, RequestFacts};
use crate::policy::Rule;
use crate::policy::pubsub::{PubSub, PubSubFallback};
use crate::store::pubsub::PubSubEvent;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PubSubError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{0}")]
    BadRequest(String),
    #[error("the message is {0} bytes; this rule takes at most {1}")]
    TooLarge(usize, u64),
    #[error("the rule's plugin rejected the {0}: {1}")]
    Rejected(&'static str, String),
    #[error(transparent)]
    Plugin(PluginError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an SSE subscriber is sent.
#[derive(Debug, Clone)]
pub enum SubEvent {
    /// Redis confirmed the subscription: messages published from now on arrive.
    Subscribed,
    Message(Bytes),
    /// The engine's subscriber connection dropped: messages may have been lost.
    Gap,
    /// The last event: the client fell behind by more than its buffer.
    Dropped(&'static str),
}

/// A pub/sub rule ready to serve.
pub struct PubSubRule {
    pub app: String,
    pub rule: String,
    keys: KeySpace,
    scripts: PubSubScripts,
    pub spec: PubSub,
    published: metrics::Counter,
    rejected: metrics::Counter,
    plugin_failed: metrics::Counter,
    /// The rule's plugin (its name, for the log) and its binding: the `pubsub` hook.
    plugin: Option<(String, PluginBinding)>,
}

fn check_channel(channel: &str) -> Result<(), PubSubError> {
    check_id(channel).map_err(|e| match e {
        InputError::EmptyId => PubSubError::BadRequest("the channel name must not be empty".into()),
        InputError::IdTooLong(n) => PubSubError::BadRequest(format!(
            "the channel name is {n} bytes; at most {MAX_ID_BYTES} are allowed"
        )),
        other => PubSubError::Input(other),
    })?;
    if channel.chars().any(char::is_control) {
        return Err(PubSubError::BadRequest(
            "the channel name must not hold control characters".into(),
        ));
    }
    Ok(())
}

impl PubSubRule {
    pub fn new(
        rule: &Rule,
        spec: &PubSub,
        compiled: &CompiledPubSub,
        keys: &KeySpace,
        plugin: Option<(String, PluginBinding)>,
    ) -> Self {
        Self {
            app: rule.app.clone(),
            rule: rule.name.clone(),
            keys: keys.clone(),
            scripts: compiled.scripts.clone(),
            spec: spec.clone(),
            published: metrics::counter!("patternd_pubsub_published_total", "app" => rule.app.clone(), "rule" => rule.name.clone()),
            rejected: metrics::counter!("patternd_pubsub_rejected_total", "app" => rule.app.clone(), "rule" => rule.name.clone()),
            plugin_failed: metrics::counter!("patternd_plugin_failures_total", "app" => rule.app.clone(), "rule" => rule.name.clone()),
            plugin,
        }
    }

    /// True when the rule's plugin wants the request facts (the handler builds them only then).
    pub fn wants_facts(&self) -> bool {
        self.plugin.is_some()
    }

    /// Asks the rule's plugin, if any, whether this publish (`message`) or subscribe (`None`)
    /// may go ahead. Returns true when it went ahead through `fallback: allow`.
    fn decide(
        &self,
        facts: Option<RequestFacts>,
        channel: &str,
        message: Option<&[u8]>,
    ) -> Result<bool, PubSubError> {
        let Some((name, binding)) = &self.plugin else {
            return Ok(false);
        };
        let facts = facts.unwrap_or_default();
        // WIT strings are UTF-8: bytes that are not become U+FFFD (documented in the WIT).
        let text = message.map(String::from_utf8_lossy);
        match binding.pubsub(&facts, channel, text.as_deref()) {
            Ok(PubSubDecision::Allow) => Ok(false),
            Ok(PubSubDecision::Reject(reason)) => {
                self.rejected.increment(1);
                let op = if message.is_some() {
                    "publish"
                } else {
                    "subscribe"
                };
                Err(PubSubError::Rejected(op, reason))
            }
            Err(e) => {
                self.plugin_failed.increment(1);
                tracing::warn!(app = %self.app, rule = %self.rule, plugin = %name, error = %e, "pubsub plugin failed");
                match self.spec.fallback {
                    PubSubFallback::Allow => Ok(true),
                    PubSubFallback::Fail => Err(PubSubError::Plugin(e)),
                }
            }
        }
    }

    /// Publishes `message`; returns the subscriber connections reached: engines (each holds
    /// one subscription per channel), not SSE clients, and whether the rule's plugin failed
    /// and its `fallback: allow` let the publish through.
    pub async fn publish(
        &self,
        store: &Store,
        channel: &str,
        message: &[u8],
        facts: Option<RequestFacts>,
    ) -> Result<(u64, bool), PubSubError> {
        check_channel(channel)?;
        if message.len() as u64 > self.spec.max_message_bytes {
            return Err(PubSubError::TooLarge(
                message.len(),
                self.spec.max_message_bytes,
            ));
        }
        let fallback = self.decide(facts, channel, Some(message))?;
        let script = if store.is_cluster() {
            &self.scripts.spublish
        } else {
            &self.scripts.publish
        };
        let keys = [channel_key(&self.keys, channel)];
        let n: u64 = store.eval(script, &keys, &[message]).await?;
        self.published.increment(1);
        Ok((n, fallback))
    }

    /// Subscribes one SSE client to `channel`; the first event is `Subscribed`. The rule's
    /// plugin decides first, so a rejection is an error answer, not a stream.
    pub async fn subscribe(
        &self,
        store: &Store,
        channel: &str,
        facts: Option<RequestFacts>,
    ) -> Result<mpsc::Receiver<SubEvent>, PubSubError> {
        check_channel(channel)?;
        self.decide(facts, channel, None)?;
        let buffer = usize::try_from(self.spec.client_buffer)
            .unwrap_or(256)
            .max(1);
        let key = channel_key(&self.keys, channel);
        let mut sub = store.subscriber().subscribe(&key, buffer).await?;
        let (out, events) = feed::channel(buffer + 1);
        tokio::spawn(async move {
            if out.send(SubEvent::Subscribed).await.is_err() {
                return;
            }
            loop {
                let got = tokio::select! {
                    () = out.closed() => return,
                    m = sub.rx.recv() => m,
                };
                let event = match got {
                    Ok(PubSubEvent::Message(b)) => SubEvent::Message(b),
                    Ok(PubSubEvent::Gap) => SubEvent::Gap,
                    Err(broadcast::error::RecvError::Lagged(_)) => return dropped(out),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                match out.push(event) {
                    Ok(()) => {}
                    Err(NotSent::Full) => return dropped(out),
                    Err(NotSent::Closed) => return,
                }
            }
        });
        Ok(events)
    }
}

/// The final event of a slow client, in the slot its feed keeps for it.
fn dropped(out: Feed<SubEvent>) {
    metrics::counter!("patternd_sse_dropped_total", "pattern" => "pubsub").increment(1);
    out.finish(SubEvent::Dropped("slow-client"));
}
