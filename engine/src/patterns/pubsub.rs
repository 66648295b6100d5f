//! Pub/sub rules at request time: publish through a script, subscribe through the engine's
//! one subscriber connection (`store::pubsub`), fanned out to every SSE client.
//!
//! At-most-once: a message reaches the engines subscribed when it is published, and through
//! them the SSE clients connected then; nothing is stored. A client that falls more than
//! `client_buffer` messages behind is dropped with a final event; a dropped subscriber
//! connection is reported to every client as a gap.

use axum::body::Bytes;
use tokio::sync::{broadcast, mpsc};

use super::feed::{self, Feed, NotSent};
use super::{InputError, MAX_ID_BYTES, check_id};
use crate::compile::pubsub::{PubSubScripts, channel_key};
use crate::compile::{CompiledPubSub, KeySpace};
use crate::policy::Rule;
use crate::policy::pubsub::PubSub;
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
    pub fn new(rule: &Rule, spec: &PubSub, compiled: &CompiledPubSub, keys: &KeySpace) -> Self {
        Self {
            app: rule.app.clone(),
            rule: rule.name.clone(),
            keys: keys.clone(),
            scripts: compiled.scripts.clone(),
            spec: spec.clone(),
            published: metrics::counter!("patternd_pubsub_published_total", "app" => rule.app.clone(), "rule" => rule.name.clone()),
        }
    }

    /// Publishes `message`; returns the subscriber connections reached: engines (each holds
    /// one subscription per channel), not SSE clients.
    pub async fn publish(
        &self,
        store: &Store,
        channel: &str,
        message: &[u8],
    ) -> Result<u64, PubSubError> {
        check_channel(channel)?;
        if message.len() as u64 > self.spec.max_message_bytes {
            return Err(PubSubError::TooLarge(
                message.len(),
                self.spec.max_message_bytes,
            ));
        }
        let script = if store.is_cluster() {
            &self.scripts.spublish
        } else {
            &self.scripts.publish
        };
        let keys = [channel_key(&self.keys, channel)];
        let n: u64 = store.eval(script, &keys, &[message]).await?;
        self.published.increment(1);
        Ok(n)
    }

    /// Subscribes one SSE client to `channel`; the first event is `Subscribed`.
    pub async fn subscribe(
        &self,
        store: &Store,
        channel: &str,
    ) -> Result<mpsc::Receiver<SubEvent>, PubSubError> {
        check_channel(channel)?;
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
