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

    /// A human-readable template of a key, for `patternd compile` and the admin API.
    pub fn template(&self, sub: &str) -> String {
        format!("{}{{<id>}}:{sub}", self.prefix)
    }
}

#[cfg(test)]
mod rule_key_tests {
    use super::*;

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
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
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

    #[test]
    fn keys_matches_key() {
        let ks = KeySpace::new("a", "ratelimit", "r");
        assert_eq!(
            ks.keys("i{d", ["0fw", "1sw"]),
            vec![ks.key("i{d", "0fw"), ks.key("i{d", "1sw")]
        );
    }
}
