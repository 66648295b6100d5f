//! The cache's key layout: which keys each cache script takes, in the order it takes them.
//! The read path, the writes, the flusher and the dead letters all get their keys here, and
//! every key is built by the one key builder (`compile::keys::KeySpace`); what each key holds
//! is the data contract in `compile::cache`.
//!
//! Every call's keys share one cluster slot: an id's keys are tagged by its slot group, and
//! the per-group keys a call needs beside them (tag versions, journal, dead letters) are that
//! group's. A call that concerns several ids (DELETE with related ids, dead-letter replay) is
//! split by group by its caller.

use crate::compile::KeySpace;
use crate::compile::cache::{
    DEAD_SUB, FLUSH_LEASE_SUB, HELD_SUB, JOURNAL_SUB, LEASE_SUB, TAGS_SUB, VALUE_SUB,
};
use crate::policy::cache::WriteMode;

/// The keys of one cache rule.
#[derive(Debug, Clone)]
pub struct CacheKeys {
    space: KeySpace,
    write: WriteMode,
    groups: u32,
}

impl CacheKeys {
    pub fn new(space: &KeySpace, write: WriteMode, groups: u32) -> Self {
        Self {
            space: space.clone(),
            write,
            groups: groups.max(1),
        }
    }

    /// How many slot groups the rule has.
    pub fn groups(&self) -> u32 {
        self.groups
    }

    /// The slot group of `id`.
    pub fn group_of(&self, id: &str) -> u32 {
        KeySpace::group_of(id, self.groups)
    }

    /// The namespace every key of the rule starts with (the near cache registers under it).
    pub fn namespace(&self) -> &str {
        self.space.prefix()
    }

    /// The end of every tag-versions key and of no other key of the rule: a change to one may
    /// affect any value, so the near cache drops everything on it.
    pub fn tags_suffix() -> String {
        format!("}}:{TAGS_SUB}")
    }

    fn id_keys<const N: usize>(&self, id: &str, subs: [&str; N]) -> (u32, Vec<String>) {
        self.space.grouped_keys(self.groups, id, subs)
    }

    /// The value HASH of `id`; the near cache keys its copies by it too.
    pub fn value(&self, id: &str) -> String {
        let (_, mut k) = self.id_keys(id, [VALUE_SUB]);
        k.pop().unwrap_or_default()
    }

    /// The read and fill scripts (and the release script, which takes the second): value,
    /// refresh lease, the group's tag versions, and for `behind` the group's journal (a value
    /// whose newest write is still journaled is never replaced by the origin's older copy).
    pub fn read(&self, id: &str) -> Vec<String> {
        let (g, mut keys) = self.id_keys(id, [VALUE_SUB, LEASE_SUB]);
        keys.push(self.space.group_key(g, TAGS_SUB));
        if self.write == WriteMode::Behind {
            keys.push(self.space.group_key(g, JOURNAL_SUB));
        }
        keys
    }

    /// The release script's key, within a GET's read keys: the refresh lease.
    pub fn lease_of(read_keys: &[String]) -> Option<&[String]> {
        read_keys.get(1..2)
    }

    /// PUT, PATCH and the write-through begin/abort scripts: value, refresh lease, the group's
    /// tag versions, then the journal for `behind` or the held copy for `through`.
    pub fn write(&self, id: &str) -> Vec<String> {
        match self.write {
            WriteMode::Through => {
                let (g, mut keys) = self.id_keys(id, [VALUE_SUB, LEASE_SUB, HELD_SUB]);
                keys.insert(2, self.space.group_key(g, TAGS_SUB));
                keys
            }
            _ => self.read(id),
        }
    }

    /// The delete script, one call per slot group: value and refresh lease of each id of the
    /// group, then the group's journal for `behind`. Groups in ascending order, ids in the
    /// order given (duplicates dropped).
    pub fn delete<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<(u32, Vec<String>)> {
        let mut out: Vec<(u32, Vec<String>)> = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for id in ids {
            if seen.contains(&id) {
                continue;
            }
            seen.push(id);
            let (g, keys) = self.id_keys(id, [VALUE_SUB, LEASE_SUB]);
            match out.iter_mut().find(|(og, _)| *og == g) {
                Some((_, ks)) => ks.extend(keys),
                None => out.push((g, keys)),
            }
        }
        out.sort_by_key(|(g, _)| *g);
        if self.write == WriteMode::Behind {
            for (g, keys) in &mut out {
                keys.push(self.space.group_key(*g, JOURNAL_SUB));
            }
        }
        out
    }

    /// The invalidate script's key in group `group`: its tag versions.
    pub fn tags(&self, group: u32) -> [String; 1] {
        [self.space.group_key(group, TAGS_SUB)]
    }

    /// The flusher's fetch script in group `group`: journal, dead letters.
    pub fn fetch(&self, group: u32) -> [String; 2] {
        [
            self.space.group_key(group, JOURNAL_SUB),
            self.space.group_key(group, DEAD_SUB),
        ]
    }

    /// The flusher's begin script for the value `key_id`: its group's journal, value, flush
    /// lease.
    pub fn flush_begin(&self, key_id: &str) -> [String; 3] {
        let (g, [v, f]) = self.pair(key_id, VALUE_SUB, FLUSH_LEASE_SUB);
        [self.space.group_key(g, JOURNAL_SUB), v, f]
    }

    /// The flusher's ack script (also the release of a failed attempt): journal, flush lease.
    pub fn flush_ack(&self, key_id: &str) -> [String; 2] {
        let (g, mut k) = self.id_keys(key_id, [FLUSH_LEASE_SUB]);
        [
            self.space.group_key(g, JOURNAL_SUB),
            k.pop().unwrap_or_default(),
        ]
    }

    /// The flusher's dead script: journal, dead letters, flush lease.
    pub fn flush_dead(&self, key_id: &str) -> [String; 3] {
        let (g, mut k) = self.id_keys(key_id, [FLUSH_LEASE_SUB]);
        [
            self.space.group_key(g, JOURNAL_SUB),
            self.space.group_key(g, DEAD_SUB),
            k.pop().unwrap_or_default(),
        ]
    }

    fn pair(&self, id: &str, a: &str, b: &str) -> (u32, [String; 2]) {
        let (g, mut k) = self.id_keys(id, [a, b]);
        let second = k.pop().unwrap_or_default();
        let first = k.pop().unwrap_or_default();
        (g, [first, second])
    }

    /// The dead-letter list script in group `group`: its dead letters.
    pub fn dead_list(&self, group: u32) -> [String; 1] {
        [self.space.group_key(group, DEAD_SUB)]
    }

    /// The replay script in group `group`: dead letters, journal, then (for its `move` step)
    /// the value HASH of each replayed entry's value id (the caller passes only ids of
    /// `group`: an entry is journaled in its value's group).
    pub fn replay<'a>(
        &self,
        group: u32,
        value_ids: impl IntoIterator<Item = &'a str>,
    ) -> Vec<String> {
        let mut keys = vec![
            self.space.group_key(group, DEAD_SUB),
            self.space.group_key(group, JOURNAL_SUB),
        ];
        keys.extend(value_ids.into_iter().map(|id| self.value(id)));
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::keys::key_slot;

    fn keys(write: WriteMode, groups: u32) -> CacheKeys {
        CacheKeys::new(&KeySpace::new("shop", "cache", "item"), write, groups)
    }

    #[test]
    fn each_script_gets_its_keys() {
        let c = keys(WriteMode::Cache, 1);
        assert_eq!(
            c.read("a"),
            [
                "shop:cache:item:{%shop.item.0}:a:v",
                "shop:cache:item:{%shop.item.0}:a:lease",
                "shop:cache:item:{%shop.item.0}:tags"
            ]
        );
        assert_eq!(c.write("a"), c.read("a"));
        assert_eq!(
            CacheKeys::lease_of(&c.read("a")).unwrap(),
            ["shop:cache:item:{%shop.item.0}:a:lease"]
        );
        assert_eq!(
            c.delete(["a", "b", "a"]),
            [(
                0,
                vec![
                    "shop:cache:item:{%shop.item.0}:a:v".to_string(),
                    "shop:cache:item:{%shop.item.0}:a:lease".to_string(),
                    "shop:cache:item:{%shop.item.0}:b:v".to_string(),
                    "shop:cache:item:{%shop.item.0}:b:lease".to_string(),
                ]
            )]
        );
        assert_eq!(c.tags(0), ["shop:cache:item:{%shop.item.0}:tags"]);

        let through = keys(WriteMode::Through, 1);
        assert_eq!(through.read("a").len(), 3);
        assert_eq!(through.write("a")[2], "shop:cache:item:{%shop.item.0}:tags");
        assert_eq!(
            through.write("a")[3],
            "shop:cache:item:{%shop.item.0}:a:held"
        );

        let behind = keys(WriteMode::Behind, 1);
        let journal = "shop:cache:item:{%shop.item.0}:journal";
        let dead = "shop:cache:item:{%shop.item.0}:dead";
        assert_eq!(behind.read("a")[3], journal);
        assert_eq!(behind.write("a"), behind.read("a"));
        assert_eq!(behind.delete(["a"])[0].1[2], journal);
        assert_eq!(behind.fetch(0), [journal, dead]);
        assert_eq!(
            behind.flush_begin("a"),
            [
                journal,
                "shop:cache:item:{%shop.item.0}:a:v",
                "shop:cache:item:{%shop.item.0}:a:flush"
            ]
        );
        assert_eq!(
            behind.flush_ack("a"),
            [journal, "shop:cache:item:{%shop.item.0}:a:flush"]
        );
        assert_eq!(
            behind.flush_dead("a"),
            [journal, dead, "shop:cache:item:{%shop.item.0}:a:flush"]
        );
        assert_eq!(behind.dead_list(0), [dead]);
        assert_eq!(
            behind.replay(0, ["a"]),
            [dead, journal, "shop:cache:item:{%shop.item.0}:a:v"]
        );
    }

    /// Every key one script takes shares one slot: the id's group's.
    #[test]
    fn an_ids_keys_share_its_groups_slot() {
        let c = keys(WriteMode::Through, 16);
        let g = c.group_of("x{y}%");
        for k in c.write("x{y}%") {
            assert_eq!(
                crate::compile::keys::hash_tag(&k),
                Some(format!("%shop.item.{g}").as_str())
            );
            assert_eq!(key_slot(&k), key_slot(&c.tags(g)[0]));
        }
    }

    fn one_slot(op: &str, keys: &[String]) {
        let first = key_slot(&keys[0]);
        for k in keys {
            assert_eq!(key_slot(k), first, "{op}: `{}` and `{k}`", keys[0]);
        }
    }

    /// Every cache operation's declared keys are in one cluster slot (what `store::slots`
    /// checks before every call), for ids spread over many groups, in every write mode; and
    /// the groups themselves spread over many slots.
    #[test]
    fn every_operation_is_one_slot() {
        let ids: Vec<String> = (0..400)
            .map(|i| match i % 5 {
                0 => format!("user-{i}"),
                1 => format!("{{{i}}}"),
                2 => format!("%7D{i}%"),
                3 => format!("a:b:{i}/ü"),
                _ => format!("{i}}}{{x"),
            })
            .collect();
        for groups in [1, 2, 16, 1024] {
            for write in [WriteMode::Cache, WriteMode::Through, WriteMode::Behind] {
                let c = keys(write, groups);
                let mut seen = std::collections::BTreeSet::new();
                for id in &ids {
                    let g = c.group_of(id);
                    assert!(g < groups);
                    seen.insert(g);
                    one_slot("read", &c.read(id));
                    one_slot("write", &c.write(id));
                    assert_eq!(key_slot(&c.read(id)[0]), key_slot(&c.tags(g)[0]));
                    one_slot("flush begin", &c.flush_begin(id));
                    one_slot("flush ack", &c.flush_ack(id));
                    one_slot("flush dead", &c.flush_dead(id));
                    assert_eq!(key_slot(&c.flush_begin(id)[0]), key_slot(&c.fetch(g)[0]));
                }
                // DELETE with related ids: one call per group, each in one slot, each id once.
                let calls = c.delete(ids.iter().map(String::as_str));
                let mut n = 0;
                for (g, keys) in &calls {
                    one_slot("delete", keys);
                    assert_eq!(key_slot(&keys[0]), key_slot(&c.tags(*g)[0]));
                    n += keys.len() - usize::from(write == WriteMode::Behind);
                }
                assert_eq!(n, 2 * ids.len());
                assert_eq!(calls.len(), seen.len());
                for g in 0..groups {
                    one_slot("fetch", &c.fetch(g));
                    one_slot("dead list", &c.dead_list(g));
                    let mine: Vec<&str> = ids
                        .iter()
                        .map(String::as_str)
                        .filter(|id| c.group_of(id) == g)
                        .collect();
                    one_slot("replay", &c.replay(g, mine));
                }
                if groups == 16 {
                    assert_eq!(seen.len(), 16, "400 ids reach every group");
                }
            }
            let c = keys(WriteMode::Behind, groups);
            let slots: std::collections::BTreeSet<u16> =
                (0..groups).map(|g| key_slot(&c.tags(g)[0])).collect();
            // Groups land in (nearly) as many slots: the rule spreads over the cluster.
            assert!(
                slots.len() * 100 >= groups as usize * 95,
                "{groups}: {}",
                slots.len()
            );
        }
    }
}
