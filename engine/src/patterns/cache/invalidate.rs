//! DELETE of a cached id (with its related ids) and invalidation by tag.

use super::CacheRule;
use super::read::ReadError;
use crate::patterns::check_id;
use crate::plugin::RequestFacts;
use crate::policy::cache::WriteMode;
use crate::store::Store;
use tokio::task::JoinSet;

/// At most this many tags per invalidation.
pub const MAX_INVALIDATE_TAGS: usize = 100;

impl CacheRule {
    /// DELETE of one id: its value, its related ids' values, and their leases: one script per
    /// slot group among them.
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
        let groups = self
            .keys
            .delete(std::iter::once(key_id.as_str()).chain(related.iter().map(String::as_str)));
        let behind = self.spec.write == WriteMode::Behind;
        let flag: &'static [u8] = if behind { b"1" } else { b"0" };
        let marker = self.marker_ms().to_string();
        // One call per slot group, concurrently: each is atomic for its ids, and every id it
        // drops keeps the `W` marker, so no fill resurrects any of them whichever call lands
        // first. The DELETE as a whole is not atomic across groups.
        let mut tasks = JoinSet::new();
        for (_, keys) in groups {
            let (store, script, marker) =
                (store.clone(), self.scripts.delete.clone(), marker.clone());
            tasks.spawn(async move {
                store
                    .eval::<Vec<i64>>(&script, &keys, &[flag, marker.as_bytes()])
                    .await
            });
        }
        let (mut dropped, mut kept) = (0, 0);
        while let Some(done) = tasks.join_next().await {
            let reply =
                done.map_err(|e| ReadError::Internal(format!("a cache call task failed: {e}")))??;
            dropped += reply.first().copied().unwrap_or(0);
            kept += reply.get(1).copied().unwrap_or(0);
        }
        Ok((dropped, kept))
    }

    /// Invalidates every value carrying any of `tags`: bumps their versions in every slot
    /// group. Returns how many tags some group knew (a value recorded it, or it was
    /// invalidated before).
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
        // One call per slot group (each group's values are checked against its own tag
        // versions), concurrently. Atomic within a group, not across groups: a read in one
        // group may see the bump a moment before a read in another. On an error some groups
        // may be bumped and others not; invalidating again is harmless.
        let keep_ms = self.marker_ms().to_string();
        let memory_ms = self.tag_memory_ms().to_string();
        let mut args: Vec<Vec<u8>> = vec![keep_ms.into_bytes(), memory_ms.into_bytes()];
        args.extend(unique.iter().map(|t| t.as_bytes().to_vec()));
        let args = std::sync::Arc::new(args);
        let mut tasks = JoinSet::new();
        for g in 0..self.keys.groups() {
            let (store, script, keys, args) = (
                store.clone(),
                self.scripts.invalidate.clone(),
                self.keys.tags(g),
                args.clone(),
            );
            tasks.spawn(async move {
                let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                store.eval::<Vec<i64>>(&script, &keys, &args).await
            });
        }
        let mut known = vec![false; unique.len()];
        while let Some(done) = tasks.join_next().await {
            let reply =
                done.map_err(|e| ReadError::Internal(format!("a cache call task failed: {e}")))??;
            for (k, r) in known.iter_mut().zip(reply) {
                *k |= r == 1;
            }
        }
        let n = known.iter().filter(|k| **k).count() as i64;
        self.forget_all();
        Ok(n)
    }
}
