//! A queue's dead letters: jobs that had `max_attempts` deliveries (their visibility lapsed,
//! or they were nacked, each time). Listed oldest first with their payloads, and replayed
//! back to ready with their attempts reset, each in one script call (the admin handlers in
//! `http/queue.rs` only parse, call and render).

use serde_json::Value;

use super::{QueueError, QueueRule};
use crate::patterns::reply::{Items, ReplyError};
use crate::store::Store;

/// One dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub id: String,
    /// When it was dead-lettered, epoch ms (Redis time).
    pub failed_at_ms: u64,
    pub attempts: u64,
    pub priority: u64,
    /// `lapsed` (its last visibility ran out) or `nacked`.
    pub reason: String,
    pub payload: Value,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub replayed: u64,
    pub not_found: u64,
    /// The queue reached `max_len` before all were moved.
    pub queue_full: bool,
}

impl QueueRule {
    /// Up to `count` dead letters after the one named `after` (none: from the oldest), and
    /// how many are kept. `count` is the admin route's to bound.
    pub async fn dead_letters(
        &self,
        store: &Store,
        after: Option<&str>,
        count: u64,
    ) -> Result<(u64, Vec<DeadLetter>), QueueError> {
        let after_arg = after.unwrap_or("");
        let count_arg = count.to_string();
        let reply: Vec<redis::Value> = store
            .eval(
                &self.scripts.dead_list,
                &self.keys.dead_list,
                &[after_arg.as_bytes(), count_arg.as_bytes()],
            )
            .await?;
        let mut it = Items::new(reply);
        let err = Self::reply_err("dead-list");
        let total = it.next_int().map_err(&err)?;
        let Ok(total) = u64::try_from(total) else {
            return Err(QueueError::UnknownDeadLetter(after_arg.to_string()));
        };
        let letters = decode_letters(it).map_err(&err)?;
        Ok((total, letters))
    }

    /// Moves the given dead letters (none: the oldest `count`) back to ready, attempts reset.
    /// `ids` must be distinct and at most the admin route's bound.
    pub async fn replay(
        &self,
        store: &Store,
        ids: &[String],
        count: u64,
    ) -> Result<Replayed, QueueError> {
        let count_arg = count.to_string();
        let mut args: Vec<&[u8]> = vec![self.max_len_arg.as_bytes(), count_arg.as_bytes()];
        args.extend(ids.iter().map(|i| i.as_bytes()));
        let reply: Vec<i64> = store
            .eval(&self.scripts.replay, &self.keys.replay, &args)
            .await?;
        let at = |i: usize| u64::try_from(reply.get(i).copied().unwrap_or(0)).unwrap_or(0);
        let done = Replayed {
            replayed: at(0),
            not_found: at(1),
            queue_full: at(2) == 1,
        };
        self.metrics.replayed.increment(done.replayed);
        if done.replayed > 0 {
            self.wake.notify_waiters();
        }
        Ok(done)
    }
}

fn decode_letters(mut it: Items) -> Result<Vec<DeadLetter>, ReplyError> {
    let mut out = Vec::with_capacity(it.len() / 6);
    let n = |it: &mut Items| -> Result<u64, ReplyError> {
        Ok(u64::try_from(it.next_int()?).unwrap_or(0))
    };
    while !it.is_empty() {
        let id = it.next_text()?;
        let failed_at_ms = n(&mut it)?;
        let attempts = n(&mut it)?;
        let priority = n(&mut it)?;
        let reason = it.next_text()?;
        let payload = it.next_text()?;
        let payload = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
        out.push(DeadLetter {
            id,
            failed_at_ms,
            attempts,
            priority,
            reason,
            payload,
        });
    }
    Ok(out)
}
