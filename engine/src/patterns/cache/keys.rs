//! The cache's key layout: which keys each cache script takes, in the order it takes them.
//! The read path, the writes, the flusher and the dead letters all get their keys here, and
//! every key is built by the one key builder (`compile::keys::KeySpace`); what each key holds
//! is the data contract in `compile::cache`.

use crate::compile::KeySpace;
use crate::compile::cache::{
    DEAD_SUB, FLUSH_LEASE_SUB, HELD_SUB, JOURNAL_SUB, LEASE_SUB, TAG_PREFIX_SUB, VALUE_SUB,
};
use crate::policy::cache::WriteMode;

/// The keys of one cache rule. The rule's own keys (tag prefix, journal, dead letters) are
/// built once per snapshot rather than per request.
#[derive(Debug, Clone)]
pub struct CacheKeys {
    space: KeySpace,
    write: WriteMode,
    /// `rule_key("tag:")`: a tag's version key is this plus the tag.
    tag_prefix: String,
    journal: String,
    dead: String,
}

impl CacheKeys {
    pub fn new(space: &KeySpace, write: WriteMode) -> Self {
        Self {
            space: space.clone(),
            write,
            tag_prefix: space.rule_key(TAG_PREFIX_SUB),
            journal: space.rule_key(JOURNAL_SUB),
            dead: space.rule_key(DEAD_SUB),
        }
    }

    /// The namespace every key of the rule starts with (the near cache registers under it).
    pub fn namespace(&self) -> &str {
        self.space.prefix()
    }

    /// The value HASH of `id`; the near cache keys its copies by it too.
    pub fn value(&self, id: &str) -> String {
        self.space.key(id, VALUE_SUB)
    }

    /// The read and fill scripts (and the release script, which takes the second): value,
    /// refresh lease, and for `behind` the journal (a value whose newest write is still
    /// journaled is never replaced by the origin's older copy).
    pub fn read(&self, id: &str) -> Vec<String> {
        let mut keys = self.space.keys(id, [VALUE_SUB, LEASE_SUB]);
        if self.write == WriteMode::Behind {
            keys.push(self.journal.clone());
        }
        keys
    }

    /// The release script's key, within a GET's read keys: the refresh lease.
    pub fn lease_of(read_keys: &[String]) -> Option<&[String]> {
        read_keys.get(1..2)
    }

    /// PUT, PATCH and the write-through begin/abort scripts: value, refresh lease, then the
    /// journal for `behind` or the held copy for `through`.
    pub fn write(&self, id: &str) -> Vec<String> {
        match self.write {
            WriteMode::Through => self.space.keys(id, [VALUE_SUB, LEASE_SUB, HELD_SUB]),
            _ => self.read(id),
        }
    }

    /// The delete script: value and refresh lease of each id, then the journal for `behind`.
    pub fn delete<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut keys: Vec<String> = ids
            .into_iter()
            .flat_map(|id| self.space.keys(id, [VALUE_SUB, LEASE_SUB]))
            .collect();
        if self.write == WriteMode::Behind {
            keys.push(self.journal.clone());
        }
        keys
    }

    /// The prefix of every tag version key (the scripts append the tag).
    pub fn tag_prefix(&self) -> &str {
        &self.tag_prefix
    }

    /// The version key of one tag (the invalidate script takes one per tag).
    pub fn tag(&self, tag: &str) -> String {
        self.space.rule_key(&format!("{TAG_PREFIX_SUB}{tag}"))
    }

    /// The flusher's fetch script: journal, dead letters.
    pub fn fetch(&self) -> [String; 2] {
        [self.journal.clone(), self.dead.clone()]
    }

    /// The flusher's begin script for the value `key_id`: journal, value, flush lease.
    pub fn flush_begin(&self, key_id: &str) -> [String; 3] {
        [
            self.journal.clone(),
            self.value(key_id),
            self.space.key(key_id, FLUSH_LEASE_SUB),
        ]
    }

    /// The flusher's ack script (also the release of a failed attempt): journal, flush lease.
    pub fn flush_ack(&self, key_id: &str) -> [String; 2] {
        [
            self.journal.clone(),
            self.space.key(key_id, FLUSH_LEASE_SUB),
        ]
    }

    /// The flusher's dead script: journal, dead letters, flush lease.
    pub fn flush_dead(&self, key_id: &str) -> [String; 3] {
        [
            self.journal.clone(),
            self.dead.clone(),
            self.space.key(key_id, FLUSH_LEASE_SUB),
        ]
    }

    /// The dead-letter list script: dead letters.
    pub fn dead_list(&self) -> [String; 1] {
        [self.dead.clone()]
    }

    /// The replay script: dead letters, journal, then (for its `move` step) the value HASH of
    /// each replayed entry's value id.
    pub fn replay<'a>(&self, value_ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut keys = vec![self.dead.clone(), self.journal.clone()];
        keys.extend(value_ids.into_iter().map(|id| self.value(id)));
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(write: WriteMode) -> CacheKeys {
        CacheKeys::new(&KeySpace::new("shop", "cache", "item"), write)
    }

    #[test]
    fn each_script_gets_its_keys() {
        let c = keys(WriteMode::Cache);
        assert_eq!(
            c.read("a"),
            ["shop:cache:item:{a}:v", "shop:cache:item:{a}:lease"]
        );
        assert_eq!(c.write("a"), c.read("a"));
        assert_eq!(
            CacheKeys::lease_of(&c.read("a")).unwrap(),
            ["shop:cache:item:{a}:lease"]
        );
        assert_eq!(
            c.delete(["a", "b"]),
            [
                "shop:cache:item:{a}:v",
                "shop:cache:item:{a}:lease",
                "shop:cache:item:{b}:v",
                "shop:cache:item:{b}:lease"
            ]
        );
        assert_eq!(c.tag_prefix(), "shop:cache:item:{%shop.item}:tag:");
        assert_eq!(c.tag("t1"), "shop:cache:item:{%shop.item}:tag:t1");

        let through = keys(WriteMode::Through);
        assert_eq!(through.read("a").len(), 2);
        assert_eq!(through.write("a")[2], "shop:cache:item:{a}:held");

        let behind = keys(WriteMode::Behind);
        let journal = "shop:cache:item:{%shop.item}:journal";
        let dead = "shop:cache:item:{%shop.item}:dead";
        assert_eq!(behind.read("a")[2], journal);
        assert_eq!(behind.write("a"), behind.read("a"));
        assert_eq!(behind.delete(["a"])[2], journal);
        assert_eq!(behind.fetch(), [journal, dead]);
        assert_eq!(
            behind.flush_begin("a"),
            [
                journal,
                "shop:cache:item:{a}:v",
                "shop:cache:item:{a}:flush"
            ]
        );
        assert_eq!(
            behind.flush_ack("a"),
            [journal, "shop:cache:item:{a}:flush"]
        );
        assert_eq!(
            behind.flush_dead("a"),
            [journal, dead, "shop:cache:item:{a}:flush"]
        );
        assert_eq!(behind.dead_list(), [dead]);
        assert_eq!(
            behind.replay(["a"]),
            [dead, journal, "shop:cache:item:{a}:v"]
        );
    }

    /// Every key one script takes for an id shares the id's hash tag (one cluster slot).
    #[test]
    fn an_ids_keys_share_its_slot() {
        let c = keys(WriteMode::Through);
        for k in c.write("x{y}%") {
            assert_eq!(crate::compile::keys::hash_tag(&k), Some("x%7By%7D%25"));
        }
    }
}
