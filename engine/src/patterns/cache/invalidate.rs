//! DELETE of a cached id (with its related ids) and invalidation by tag.

use super::CacheRule;
use super::read::ReadError;
use crate::patterns::check_id;
use crate::plugin::RequestFacts;
use crate::policy::cache::WriteMode;
use crate::store::Store;

/// At most this many tags per invalidation.
pub const MAX_INVALIDATE_TAGS: usize = 100;

impl CacheRule {
    /// DELETE of one id: its value, its related ids' values, and their leases, in one script.
    /// Returns (values dropped, values kept because their write-behind write is still
    /// pending: see `lua/cache/delete.lua`).
    pub async fn delete(
        &self,
        store: &Store,
        id: &str,
        facts: Option<RequestFacts>,
    ) -> Result<(i64, i64), ReadError> {
        check_id(id)?;
        let decision = self.plugin_decision(|| {
            facts.unwrap_or_else(|| RequestFacts {
                method: "DELETE".into(),
                id: id.to_string(),
                ..RequestFacts::default()
            })
        })?;
        let key_id = match decision.and_then(|d| d.key) {
            Some(k) => self.plugin_key(k)?,
            None => id.to_string(),
        };
        let related: Vec<String> = self.related_ids(id).collect();
        for rid in &related {
            self.forget(rid);
        }
        self.forget(&key_id);
        let keys = self
            .keys
            .delete(std::iter::once(key_id.as_str()).chain(related.iter().map(String::as_str)));
        let behind = self.spec.write == WriteMode::Behind;
        let flag: &[u8] = if behind { b"1" } else { b"0" };
        let marker = self.marker_ms().to_string();
        let reply: Vec<i64> = store
            .eval(&self.scripts.delete, &keys, &[flag, marker.as_bytes()])
            .await?;
        Ok((
            reply.first().copied().unwrap_or(0),
            reply.get(1).copied().unwrap_or(0),
        ))
    }

    /// Invalidates every value carrying any of `tags`: bumps their versions. Returns how many
    /// tags were referenced by some value (the others had no version key to bump).
    pub async fn invalidate(&self, store: &Store, tags: &[String]) -> Result<i64, ReadError> {
        if tags.is_empty() || tags.len() > MAX_INVALIDATE_TAGS {
            return Err(ReadError::BadRequest(format!(
                "`tags` must hold 1 to {MAX_INVALIDATE_TAGS} tags"
            )));
        }
        if let Some(t) = tags.iter().find(|t| !super::valid_tag(t)) {
            return Err(ReadError::BadRequest(format!(
                "tag `{t}` must be 1 to 128 bytes without commas or whitespace"
            )));
        }
        let mut unique: Vec<&String> = tags.iter().collect();
        unique.sort();
        unique.dedup();
        let keys: Vec<String> = unique.iter().map(|t| self.keys.tag(t)).collect();
        let created_ms = self.marker_ms().to_string();
        let n = store
            .eval(&self.scripts.invalidate, &keys, &[created_ms.as_bytes()])
            .await?;
        self.forget_all();
        Ok(n)
    }
}
