//! The one key builder. No other code formats Redis keys.
//!
//! Layout: `{app}:{pattern}:{rule}:{<id>}:<sub>`. App and rule names are validated to a safe
//! alphabet; the id is user input, so it is escaped: `%`, `{` and `}` become `%25`, `%7B`,
//! `%7D`. That keeps the map id → key injective (two ids never share a key) and keeps the hash
//! tag intact: the tag is exactly the escaped id, so every key one script touches for an id
//! hashes to the same cluster slot, and no id can move its keys into another id's slot or
//! outside the rule's namespace.

use std::fmt::Write as _;

/// The key space of one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    /// `{app}:{pattern}:{rule}:`
    prefix: String,
    /// `%<app>.<rule>`: the hash tag of the rule's own keys (see `rule_key`).
    rule_tag: String,
}

impl KeySpace {
    pub fn new(app: &str, pattern: &str, rule: &str) -> Self {
        // An escaped id's `%` is always followed by `25`, `7B` or `7D`, so `%<app>.<rule>` is
        // out of every id's reach, except for an app named `25…`: `%25x.r` is what the id
        // `%x.r` escapes to. Such apps get `%.` (no name holds a `.`); every other app keeps
        // the tag it always had, so no existing journal or tag version moves.
        let rule_tag = if app.starts_with("25") {
            format!("%.{app}.{rule}")
        } else {
            format!("%{app}.{rule}")
        };
        Self {
            prefix: format!("{app}:{pattern}:{rule}:"),
            rule_tag,
        }
    }

    /// The namespace every key of the rule starts with, for SCAN on admin paths.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of `sub` for entity `id`.
    pub fn key(&self, id: &str, sub: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + id.len() + sub.len() + 4);
        k.push_str(&self.prefix);
        k.push('{');
        escape_into(id, &mut k);
        k.push_str("}:");
        k.push_str(sub);
        k
    }

    /// The keys of several subs for one id, escaping the id once.
    pub fn keys<'a>(&self, id: &str, subs: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut base = String::with_capacity(self.prefix.len() + id.len() + 4);
        base.push_str(&self.prefix);
        base.push('{');
        escape_into(id, &mut base);
        base.push_str("}:");
        subs.into_iter()
            .map(|s| {
                let mut k = String::with_capacity(base.len() + s.len());
                k.push_str(&base);
                k.push_str(s);
                k
            })
            .collect()
    }

    /// A key of the rule itself rather than of one id: a journal, a tag's version.
    /// `{app}:{pattern}:{rule}:{%<app>.<rule>}:<sub>` (`%.<app>.<rule>` for apps named `25…`).
    /// No id can reach it: escaping turns every `%` of an id into `%25`, so in an escaped id a
    /// `%` is only ever followed by `25`, `7B` or `7D`.
    pub fn rule_key(&self, sub: &str) -> String {
        format!("{}{{{}}}:{sub}", self.prefix, self.rule_tag)
    }

    /// The slot group of `id` among `groups`: FNV-1a (fixed forever: keys depend on it) of the
    /// escaped id, modulo `groups` (at least 1). Used by rules whose ids share per-rule state
    /// with their values (the cache: tag versions, the write-behind journal), so that state is
    /// split into `groups` slots, each beside the values of its ids.
    pub fn group_of(id: &str, groups: u32) -> u32 {
        // The hash of the escaped id, fed byte by byte without building it (this runs for
        // every cache request).
        let mut h: u32 = 0x811c_9dc5;
        let mut feed = |b: u8| {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        };
        for b in id.bytes() {
            match escaped(b) {
                Some(e) => e.bytes().for_each(&mut feed),
                None => feed(b),
            }
        }
        h % groups.max(1)
    }

    /// A key of slot group `group` of the rule itself (a journal, the tag versions):
    /// `{app}:{pattern}:{rule}:{%<app>.<rule>.<group>}:<sub>`. `sub` holds no `:`, so it never
    /// equals a grouped id key (`…}:<escaped id>:<sub>` has two segments).
    pub fn group_key(&self, group: u32, sub: &str) -> String {
        let mut k = self.group_base(group, sub.len());
        k.push_str(sub);
        k
    }

    /// `{app}:{pattern}:{rule}:{%<app>.<rule>.<group>}:` with room for `more` bytes after it.
    fn group_base(&self, group: u32, more: usize) -> String {
        let mut n = itoa::Buffer::new();
        let g = n.format(group);
        let mut k =
            String::with_capacity(self.prefix.len() + self.rule_tag.len() + g.len() + 4 + more);
        k.push_str(&self.prefix);
        k.push('{');
        k.push_str(&self.rule_tag);
        k.push('.');
        k.push_str(g);
        k.push_str("}:");
        k
    }

    /// The keys of several subs of `id`, tagged by the id's slot group rather than by the id:
    /// `{app}:{pattern}:{rule}:{%<app>.<rule>.<group>}:<escaped id>:<sub>`. Injective like
    /// [`KeySpace::key`]: the escaped id holds no brace, and subs hold no `:`, so the last
    /// segment is the sub and the rest is the id. Returns the group too.
    pub fn grouped_keys<'a>(
        &self,
        groups: u32,
        id: &str,
        subs: impl IntoIterator<Item = &'a str>,
    ) -> (u32, Vec<String>) {
        let group = Self::group_of(id, groups);
        // Room for the id (escaping may take more) and the longest sub.
        let mut base = self.group_base(group, id.len() + 8);
        escape_into(id, &mut base);
        base.push(':');
        let keys = subs
            .into_iter()
            .map(|s| {
                let mut k = String::with_capacity(base.len() + s.len());
                k.push_str(&base);
                k.push_str(s);
                k
            })
            .collect();
        (group, keys)
    }

    /// The template of a grouped key, for `patternd compile` and the admin API.
    pub fn grouped_template(&self, sub: &str) -> String {
        format!("{}{{{}.<g>}}:<id>:{sub}", self.prefix, self.rule_tag)
    }

    /// The template of a group's own key.
    pub fn group_template(&self, sub: &str) -> String {
        format!("{}{{{}.<g>}}:{sub}", self.prefix, self.rule_tag)
    }

    /// A human-readable template of a key, for `patternd compile` and the admin API.
    pub fn template(&self, sub: &str) -> String {
        format!("{}{{<id>}}:{sub}", self.prefix)
    }
}

#[cfg(test)]
mod rule_key_tests {
    use super::*;

    /// The key builder's fast paths (escaping by byte runs, the group hash without building
    /// the escaped id, group keys without `format!`) give what the plain definitions give:
    /// keys are stored data, so they may never change.
    #[test]
    fn escaping_groups_and_group_keys_are_the_plain_definitions() {
        fn plain_escape(id: &str) -> String {
            id.chars()
                .map(|c| match c {
                    '%' => "%25".to_string(),
                    '{' => "%7B".to_string(),
                    '}' => "%7D".to_string(),
                    c => c.to_string(),
                })
                .collect()
        }
        fn plain_group(id: &str, groups: u32) -> u32 {
            let mut h: u32 = 0x811c_9dc5;
            for b in plain_escape(id).bytes() {
                h ^= u32::from(b);
                h = h.wrapping_mul(0x0100_0193);
            }
            h % groups.max(1)
        }
        let ks = KeySpace::new("shop", "cache", "product");
        for id in [
            "",
            "a",
            "%",
            "{",
            "}",
            "{}",
            "a{b}c%d",
            "é{ü}%€",
            "%%{{}}",
            "plain-id-42",
            "🙂}x{",
            "%25",
            "ends with %",
        ] {
            let mut e = String::new();
            escape_into(id, &mut e);
            assert_eq!(e, plain_escape(id), "{id:?}");
            for groups in [1, 7, 16, 1024] {
                let g = KeySpace::group_of(id, groups);
                assert_eq!(g, plain_group(id, groups), "{id:?} {groups}");
                assert_eq!(
                    ks.group_key(g, "tags"),
                    format!("{}{{{}.{g}}}:tags", ks.prefix, ks.rule_tag)
                );
                let (g2, keys) = ks.grouped_keys(groups, id, ["v", "lease"]);
                assert_eq!(g2, g);
                assert_eq!(
                    keys,
                    ["v", "lease"].map(|sub| format!(
                        "{}{{{}.{g}}}:{}:{sub}",
                        ks.prefix,
                        ks.rule_tag,
                        plain_escape(id)
                    ))
                );
            }
        }
    }

    /// Values `CLUSTER KEYSLOT` answers (the cluster harness checks its own copy of this
    /// function against a real cluster, tests/tests/cluster_harness.rs), and the spec's
    /// hash-tag examples.
    #[test]
    fn key_slots_are_redis_cluster_s() {
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("bar"), 5061);
        assert_eq!(key_slot("hello"), 866);
        assert_eq!(key_slot("123456789"), 0x31C3 % SLOTS);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("foo{}{bar}"), key_slot("foo{}{bar}"));
        assert_ne!(key_slot("foo{}{bar}"), key_slot("bar"));
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
        assert_eq!(key_slot("foo{bar}{zap}"), key_slot("bar"));
        let ks = KeySpace::new("shop", "lock", "order");
        assert_eq!(key_slot(&ks.key("o-1", "l")), key_slot(&ks.key("o-1", "f")));
    }

    #[test]
    fn grouped_keys_share_their_groups_slot() {
        let ks = KeySpace::new("shop", "cache", "product");
        let (g, keys) = ks.grouped_keys(16, "a}{b%:v", ["v", "lease"]);
        assert!(g < 16);
        assert_eq!(
            keys[0],
            format!("shop:cache:product:{{%shop.product.{g}}}:a%7D%7Bb%25:v:v")
        );
        assert_eq!(key_slot(&keys[1]), key_slot(&ks.group_key(g, "journal")));
        assert_eq!(
            ks.group_key(3, "tags"),
            "shop:cache:product:{%shop.product.3}:tags"
        );
        // Fixed forever: stored keys depend on these values.
        assert_eq!(KeySpace::group_of("", 16), 0x811c_9dc5 % 16);
        assert_eq!(KeySpace::group_of("42", 1), 0);
        let spread: std::collections::BTreeSet<u32> = (0..1000)
            .map(|i| KeySpace::group_of(&i.to_string(), 16))
            .collect();
        assert_eq!(spread.len(), 16);
        // Ids never reach a group's own keys, nor another id's keys.
        assert_ne!(
            ks.grouped_keys(1, "journal", ["v"]).1[0],
            ks.group_key(0, "journal")
        );
    }

    #[test]
    fn rule_keys_are_unreachable_from_ids() {
        let ks = KeySpace::new("shop", "cache", "product");
        let rk = ks.rule_key("journal");
        assert_eq!(rk, "shop:cache:product:{%shop.product}:journal");
        for id in ["%shop.product", "%25shop.product", "{%shop.product}"] {
            assert_ne!(ks.key(id, "journal"), rk);
        }
        assert_eq!(hash_tag(&rk), Some("%shop.product"));
    }
}

fn escape_into(id: &str, out: &mut String) {
    // Byte by byte: the three escaped characters are ASCII, so every cut is at a character
    // boundary, and the runs between them are copied whole.
    let mut rest = id;
    while let Some(i) = rest.bytes().position(|b| escaped(b).is_some()) {
        out.push_str(&rest[..i]);
        out.push_str(escaped(rest.as_bytes()[i]).unwrap_or_default());
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// What an id's byte `b` becomes in a key, when it is not itself.
fn escaped(b: u8) -> Option<&'static str> {
    match b {
        b'%' => Some("%25"),
        b'{' => Some("%7B"),
        b'}' => Some("%7D"),
        _ => None,
    }
}

/// The rule namespace a key lives under (`{app}:{pattern}:{rule}:`), or the whole key if it
/// has no hash tag. App, pattern and rule names never contain `{`, so this is exactly the
/// `KeySpace::prefix`; used to name a rule in errors without showing an id.
pub fn namespace(key: &str) -> &str {
    key.find('{').map_or(key, |open| &key[..open])
}

/// The hash tag Redis Cluster would use for `key`: the text between the first `{` and the
/// next `}`, if non-empty. Used by tests and the admin API to prove slot locality.
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')? + open + 1;
    (close > open + 1).then(|| &key[open + 1..close])
}

/// Redis Cluster's hash slots.
pub const SLOTS: u16 = 16384;

/// The cluster hash slot of `key`, as the cluster spec defines it: CRC16 (XMODEM) of its hash
/// tag (see [`hash_tag`]), or of the whole key when it has none, modulo 16384. The engine uses
/// it to check that every key of one script call shares a slot (`store::slots`).
pub fn key_slot(key: &str) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    let crc = hashed.bytes().fold(0u16, |crc, b| {
        (0..8).fold(crc ^ (u16::from(b) << 8), |c, _| {
            if c & 0x8000 != 0 {
                (c << 1) ^ 0x1021
            } else {
                c << 1
            }
        })
    });
    crc % SLOTS
}

/// Debug helper for logs: a key with non-printable bytes shown escaped.
pub fn printable(key: &str) -> String {
    let mut s = String::with_capacity(key.len());
    for c in key.chars() {
        if c.is_control() {
            let _ = write!(s, "\\u{{{:x}}}", c as u32);
        } else {
            s.push(c);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_namespace_and_hash_tag() {
        let ks = KeySpace::new("shop", "ratelimit", "api");
        let k = ks.key("user42", "0fw");
        assert_eq!(k, "shop:ratelimit:api:{user42}:0fw");
        assert_eq!(hash_tag(&k), Some("user42"));
    }

    #[test]
    fn hostile_ids_cannot_escape() {
        let ks = KeySpace::new("shop", "ratelimit", "api");
        for id in ["a}:0fw", "{x}", "}", "%7D", "a:b:c", "\n", "ü{}%"] {
            let k = ks.key(id, "0fw");
            assert!(k.starts_with("shop:ratelimit:api:{"), "{k}");
            assert!(k.ends_with("}:0fw"), "{k}");
            let tag = hash_tag(&k).unwrap_or("");
            assert!(!tag.contains('{') && !tag.contains('}'));
            // The tag covers the whole escaped id: nothing of the id is left outside it.
            assert_eq!(
                k.len(),
                "shop:ratelimit:api:{".len() + tag.len() + "}:0fw".len(),
                "{k}"
            );
        }
        // Injective: ids that differ only by escaping still get different keys.
        assert_ne!(ks.key("%7D", "0fw"), ks.key("}", "0fw"));
        // The namespace of any id's key (and of a rule key) is the prefix, never the id.
        for k in [ks.key("a}:0fw{", "0fw"), ks.rule_key("journal")] {
            assert_eq!(namespace(&k), ks.prefix());
        }
    }

    /// The escaping to the letter: `%`, `{` and `}` are replaced by their percent codes and
    /// every other character (colons, slashes, unicode, control characters) is kept as it is,
    /// inside the braces of the hash tag.
    #[test]
    fn ids_are_escaped_exactly_at_percent_and_braces() {
        let ks = KeySpace::new("shop", "cache", "product");
        for (id, key) in [
            ("user42", "shop:cache:product:{user42}:v"),
            ("{x}", "shop:cache:product:{%7Bx%7D}:v"),
            ("a}:v", "shop:cache:product:{a%7D:v}:v"),
            ("%", "shop:cache:product:{%25}:v"),
            // Already escaped text is escaped again: `%7D` and `}` stay two ids.
            ("%7D", "shop:cache:product:{%257D}:v"),
            ("100%{done}", "shop:cache:product:{100%25%7Bdone%7D}:v"),
            ("a:b:c", "shop:cache:product:{a:b:c}:v"),
            ("orders/1001", "shop:cache:product:{orders/1001}:v"),
            ("ü{}%", "shop:cache:product:{ü%7B%7D%25}:v"),
            ("日本語", "shop:cache:product:{日本語}:v"),
            ("a\nb", "shop:cache:product:{a\nb}:v"),
            ("", "shop:cache:product:{}:v"),
        ] {
            assert_eq!(ks.key(id, "v"), key, "{id:?}");
            assert_eq!(ks.keys(id, ["v"]), vec![key.to_string()], "{id:?}");
        }
    }

    #[test]
    fn the_hash_tag_is_the_escaped_id() {
        let ks = KeySpace::new("shop", "cache", "product");
        assert_eq!(hash_tag(&ks.key("a:b", "v")), Some("a:b"));
        assert_eq!(hash_tag(&ks.key("{x}", "v")), Some("%7Bx%7D"));
        assert_eq!(hash_tag(&ks.key("ü%", "lease")), Some("ü%25"));
        // An empty id has an empty tag, which Redis Cluster ignores (it hashes the whole key):
        // the builder does not refuse it, the HTTP layer does (`check_id`).
        assert_eq!(hash_tag(&ks.key("", "v")), None);
        // Every sub-key of one id has the same tag, so one script may touch them all.
        let keys = ks.keys("x{1}", ["v", "lease", "tags"]);
        assert!(
            keys.iter().all(|k| hash_tag(k) == Some("x%7B1%7D")),
            "{keys:?}"
        );
    }

    #[test]
    fn hash_tag_and_namespace_of_any_key() {
        assert_eq!(hash_tag("a:{b}:c{d}"), Some("b"));
        assert_eq!(hash_tag("a:{}:{b}"), None, "the first `{{` decides");
        assert_eq!(hash_tag("a:{b"), None);
        assert_eq!(hash_tag("plain"), None);
        assert_eq!(namespace("shop:cache:product:{x}:v"), "shop:cache:product:");
        assert_eq!(namespace("plain"), "plain");
    }

    #[test]
    fn prefix_template_and_rule_key() {
        let ks = KeySpace::new("shop", "lock", "order");
        assert_eq!(ks.prefix(), "shop:lock:order:");
        assert_eq!(ks.template("h"), "shop:lock:order:{<id>}:h");
        assert_eq!(ks.rule_key("fence"), "shop:lock:order:{%shop.order}:fence");
        // An app named `25…` gets `%.`: `%25x.r` is what the id `%x.r` escapes to.
        let odd = KeySpace::new("25x", "cache", "r");
        assert_eq!(odd.rule_key("journal"), "25x:cache:r:{%.25x.r}:journal");
        assert_eq!(odd.key("%x.r", "journal"), "25x:cache:r:{%25x.r}:journal");
        assert_ne!(odd.key("%x.r", "journal"), odd.rule_key("journal"));
    }

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("a\nb\u{7f}c"), "a\\u{a}b\\u{7f}c");
        assert_eq!(printable("shop:{ü%7B}:v"), "shop:{ü%7B}:v");
    }

    #[test]
    fn keys_matches_key() {
        let ks = KeySpace::new("a", "ratelimit", "r");
        assert_eq!(
            ks.keys("i{d", ["0fw", "1sw"]),
            vec![ks.key("i{d", "0fw"), ks.key("i{d", "1sw")]
        );
    }
}
