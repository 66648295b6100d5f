//! Write-behind dead letters: listing them and replaying them into the journal. The keys,
//! the scripts and the decoding of their replies live here, so the admin handlers
//! (`http/cache/dead.rs`) only parse, call and render.

use super::CacheRule;
use super::write::{WriteError, int, text};
use crate::compile::cache::{DEAD_SUB, JOURNAL_SUB, VALUE_SUB};
use crate::store::Store;

/// One dead letter, without its payload (the `dead_list` script's fields, in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub entry: String,
    pub id: String,
    pub attempts: u64,
    pub error: String,
    pub failed_at_ms: u64,
    pub payload_bytes: u64,
    pub content_type: String,
    pub journal_id: String,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub replayed: u64,
    pub not_found: u64,
    pub journal_full: bool,
}

impl CacheRule {
    /// Up to `count` dead letters after `start` (`-` for the first, `(<entry>` after one),
    /// with the total kept.
    pub async fn dead_letters(
        &self,
        store: &Store,
        start: &str,
        count: u64,
    ) -> Result<(u64, Vec<DeadLetter>), WriteError> {
        let count_s = count.to_string();
        let reply: Vec<redis::Value> = store
            .eval(
                &self.scripts.write.dead_list,
                &[self.keys.rule_key(DEAD_SUB)],
                &[start.as_bytes(), count_s.as_bytes()],
            )
            .await
            .map_err(WriteError::Store)?;
        Ok(decode_dead_list(&reply))
    }

    /// Moves the given dead letters (or, with no `ids`, the oldest `count`) back into the
    /// journal. `ids` must be distinct entry ids (a duplicate would be moved twice).
    pub async fn replay(
        &self,
        store: &Store,
        ids: &[String],
        count: u64,
    ) -> Result<Replayed, WriteError> {
        let max_len = self.spec.journal_max_len.to_string();
        let count_s = count.to_string();
        let streams = [
            self.keys.rule_key(DEAD_SUB),
            self.keys.rule_key(JOURNAL_SUB),
        ];
        // First which entries, and whose values they are (their keys come from KeySpace, so the
        // move gets them as KEYS); the move re-reads every entry atomically.
        let mut args: Vec<&[u8]> = vec![b"peek", max_len.as_bytes(), count_s.as_bytes()];
        args.extend(ids.iter().map(|i| i.as_bytes()));
        let peeked: Vec<(String, String)> = store
            .eval(&self.scripts.write.replay, &streams, &args)
            .await
            .map_err(WriteError::Store)?;
        let found = peeked.len() as u64;
        let mut keys = streams.to_vec();
        keys.extend(peeked.iter().map(|(_, vid)| self.keys.key(vid, VALUE_SUB)));
        let mut args: Vec<&[u8]> = vec![b"move", max_len.as_bytes(), count_s.as_bytes()];
        args.extend(peeked.iter().map(|(eid, _)| eid.as_bytes()));
        let mut reply: Vec<i64> = if peeked.is_empty() {
            vec![0, 0, 0]
        } else {
            store
                .eval(&self.scripts.write.replay, &keys, &args)
                .await
                .map_err(WriteError::Store)?
        };
        // Given ids that the peek did not find are not dead letters either.
        if let Some(missing) = reply.get_mut(1) {
            *missing += (ids.len() as u64).saturating_sub(found) as i64;
        }
        let at = |i: usize| reply.get(i).copied().unwrap_or(0).max(0) as u64;
        Ok(Replayed {
            replayed: at(0),
            not_found: at(1),
            journal_full: at(2) == 1,
        })
    }
}

/// The `dead_list` reply: the total, then one array of fields per dead letter.
fn decode_dead_list(reply: &[redis::Value]) -> (u64, Vec<DeadLetter>) {
    let total = reply.first().and_then(as_u64).unwrap_or(0);
    let letters = reply
        .iter()
        .skip(1)
        .filter_map(|v| {
            let redis::Value::Array(f) = v else {
                return None;
            };
            let s = |i: usize| f.get(i).and_then(text).unwrap_or_default();
            let n = |i: usize| f.get(i).and_then(as_u64).unwrap_or(0);
            Some(DeadLetter {
                entry: s(0),
                id: s(1),
                attempts: n(2),
                error: s(3),
                failed_at_ms: n(4),
                payload_bytes: n(5),
                content_type: s(6),
                journal_id: s(7),
            })
        })
        .collect();
    (total, letters)
}

fn as_u64(v: &redis::Value) -> Option<u64> {
    int(v).and_then(|i| u64::try_from(i).ok())
}
