//! Property tests of the one key builder (`keys.rs`): for any id a client can send, the key
//! stays in its rule's namespace, its hash tag is exactly the escaped id (the same for every
//! sub-key of the id), and no two ids, and no id and a rule key, share a key; grouped keys
//! (the cache) likewise, and an id's keys share its group's slot.
//!
//! Bounded (see `CASES`) so they run in `cargo test` in well under a second.

use proptest::prelude::*;

use super::keys::{KeySpace, hash_tag};

const CASES: u32 = 512;

/// The escaping as the module doc states it, written independently of `escape_into`.
fn escaped(id: &str) -> String {
    id.replace('%', "%25")
        .replace('{', "%7B")
        .replace('}', "%7D")
}

/// The inverse of the escaping: a tag that decodes back to the id proves the map id → tag is
/// injective.
fn unescape(tag: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = tag;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "25" => '%',
            "7B" => '{',
            "7D" => '}',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// Ids a client can send (`check_id`: 1 to 512 bytes, anything else): mostly made of the
/// characters that matter to the layout, so collisions and escapes are actually tried, plus
/// arbitrary unicode.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::collection::vec(
            proptest::sample::select(vec!['%', '{', '}', ':', '2', '5', '7', 'B', 'D', 'a', '.']),
            1..16,
        )
        .prop_map(|v| v.into_iter().collect::<String>()),
        1 => "\\PC{1,24}",
        1 => any::<String>().prop_filter("ids are non-empty", |s| !s.is_empty()),
    ]
}

/// App and rule names as `check_name` admits them.
fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9_-]{0,8}"
}

fn pattern() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(vec!["ratelimit", "cache", "session", "lock", "ops"])
}

/// Subs the engine uses, plus arbitrary text (session subs carry base64 user names).
fn sub() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![
            "0fw", "1sw", "v", "lease", "flush", "h", "fence", "", "s:x"
        ])
        .prop_map(str::to_string),
        "[a-z0-9:._-]{0,12}",
    ]
}

proptest! {
    #![proptest_config(crate::proptest_config::config(CASES))]

    #[test]
    fn key_is_namespace_then_tag_of_the_escaped_id(
        app in name(), pat in pattern(), rule in name(), id in id(), sub in sub(),
    ) {
        let ks = KeySpace::new(&app, pat, &rule);
        let k = ks.key(&id, &sub);
        let ns = format!("{app}:{pat}:{rule}:");
        prop_assert_eq!(ks.prefix(), ns.as_str());
        prop_assert!(k.starts_with(&format!("{ns}{{")), "{k}");
        let tag = hash_tag(&k);
        let esc = escaped(&id);
        prop_assert_eq!(tag, Some(esc.as_str()), "key {}", k);
        prop_assert_eq!(unescape(tag.unwrap_or_default()), Some(id.clone()));
        // Nothing of the id is left outside the tag.
        prop_assert_eq!(k, format!("{ns}{{{}}}:{sub}", escaped(&id)));
    }

    #[test]
    fn every_sub_key_of_an_id_shares_its_tag(
        id in id(), subs in proptest::collection::vec(sub(), 1..6),
    ) {
        let ks = KeySpace::new("shop", "ratelimit", "api");
        let keys = ks.keys(&id, subs.iter().map(String::as_str));
        prop_assert_eq!(keys.len(), subs.len());
        let expected_tag = escaped(&id);
        for (k, s) in keys.iter().zip(&subs) {
            prop_assert_eq!(k, &ks.key(&id, s));
            prop_assert_eq!(hash_tag(k), Some(expected_tag.as_str()), "{}", k);
        }
    }

    #[test]
    fn different_ids_never_share_a_key(
        a in id(), b in id(), sa in sub(), sb in sub(),
    ) {
        let ks = KeySpace::new("shop", "cache", "product");
        if (&a, &sa) != (&b, &sb) {
            prop_assert_ne!(ks.key(&a, &sa), ks.key(&b, &sb));
        }
        if a != b {
            let (ka, kb) = (ks.key(&a, &sa), ks.key(&b, &sb));
            prop_assert_ne!(hash_tag(&ka), hash_tag(&kb));
        }
    }

    #[test]
    fn keys_of_different_rules_never_meet(
        app1 in name(), rule1 in name(), app2 in name(), rule2 in name(),
        pat1 in pattern(), pat2 in pattern(), a in id(), b in id(), s in sub(),
    ) {
        let k1 = KeySpace::new(&app1, pat1, &rule1).key(&a, &s);
        let k2 = KeySpace::new(&app2, pat2, &rule2).key(&b, &s);
        if (&app1, pat1, &rule1) != (&app2, pat2, &rule2) {
            prop_assert_ne!(k1, k2);
        }
    }

    /// A rule's own keys (journal, dead letters, tag versions) are out of every id's reach,
    /// whatever the app and rule are called.
    #[test]
    fn no_id_reaches_a_rule_key(
        app in name(), rule in name(), id in id(), sub in sub(),
    ) {
        let ks = KeySpace::new(&app, "cache", &rule);
        let rk = ks.rule_key(&sub);
        prop_assert!(rk.starts_with(ks.prefix()));
        let id_tag = escaped(&id);
        prop_assert_ne!(hash_tag(&rk), Some(id_tag.as_str()), "{}", rk);
        prop_assert_ne!(&ks.key(&id, &sub), &rk);
        // The id that would escape to the rule's tag, if there were one: the tag minus its
        // escapes. It must not give the rule key either.
        if let Some(forged) = hash_tag(&rk).and_then(unescape) {
            prop_assert_ne!(ks.key(&forged, &sub), rk);
        }
    }
}

/// The pair the property above found: an app whose name starts with `25` had the rule tag
/// `%25x.r`, which is what the id `%x.r` escapes to.
#[test]
fn an_app_named_25_keeps_its_rule_keys_apart() {
    let ks = KeySpace::new("25x", "cache", "r");
    assert_ne!(ks.key("%x.r", "journal"), ks.rule_key("journal"));
    assert_ne!(hash_tag(&ks.key("%x.r", "v")), hash_tag(&ks.rule_key("v")));
}

/// The cache's per-id subs and per-group subs (no `:` in either).
fn cache_sub() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(vec!["v", "lease", "held", "flush"])
}

fn group_sub() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(vec!["journal", "dead", "tags"])
}

proptest! {
    #![proptest_config(crate::proptest_config::config(CASES))]

    /// Grouped keys (the cache): two different (id, sub) pairs never share a key, no id's key
    /// is a group's own key, and every key of an id and its group's own keys share a slot.
    #[test]
    fn grouped_keys_are_injective_and_one_slot_per_group(
        app in name(), rule in name(), id1 in id(), id2 in id(),
        s1 in cache_sub(), s2 in cache_sub(), gs in group_sub(), groups in 1u32..=1024,
    ) {
        let ks = KeySpace::new(&app, "cache", &rule);
        let (g1, k1) = ks.grouped_keys(groups, &id1, [s1]);
        let (_, k2) = ks.grouped_keys(groups, &id2, [s2]);
        prop_assert!(g1 < groups);
        prop_assert!(k1[0].starts_with(ks.prefix()));
        if (&id1, s1) != (&id2, s2) {
            prop_assert_ne!(&k1[0], &k2[0]);
        }
        for g in [0, g1, groups - 1] {
            prop_assert_ne!(&k1[0], &ks.group_key(g, gs));
        }
        let own = ks.group_key(g1, gs);
        prop_assert_eq!(hash_tag(&k1[0]), hash_tag(&own));
        prop_assert_eq!(super::keys::key_slot(&k1[0]), super::keys::key_slot(&own));
    }
}
