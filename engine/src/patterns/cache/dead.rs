//! Write-behind dead letters: listing them and replaying them into the journal, so the admin
//! handlers (`http/cache/dead.rs`) only parse, call and render (keys in `keys`, reply
//! decoding in `reply`).

use super::CacheRule;
use super::reply;
use super::write::WriteError;
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
        let raw: Vec<redis::Value> = store
            .eval(
                &self.scripts.write.dead_list,
                &self.keys.dead_list(),
                &[start.as_bytes(), count_s.as_bytes()],
            )
            .await
            .map_err(WriteError::Store)?;
        reply::dead_list(&raw).map_err(|e| WriteError::Reply(e.to_string()))
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
        let streams = self.keys.replay(std::iter::empty());
        // First which entries, and whose values they are (their keys come from `keys`, so the
        // move gets them as KEYS); the move re-reads every entry atomically.
        let mut args: Vec<&[u8]> = vec![b"peek", max_len.as_bytes(), count_s.as_bytes()];
        args.extend(ids.iter().map(|i| i.as_bytes()));
        let peeked: Vec<(String, String)> = store
            .eval(&self.scripts.write.replay, &streams, &args)
            .await
            .map_err(WriteError::Store)?;
        let found = peeked.len() as u64;
        let keys = self.keys.replay(peeked.iter().map(|(_, vid)| vid.as_str()));
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
