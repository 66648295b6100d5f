//! The cache's key layout as the engine builds it (`engine/src/compile/keys.rs`,
//! `KeySpace::grouped_keys` and `group_key`), so tests can look at what patternd wrote. A copy
//! on purpose: a change of the stored layout must break these tests, not follow silently.

/// The engine's default `slot_groups`.
pub const DEFAULT_GROUPS: u32 = 16;

/// An id as it appears in a key: `%`, `{`, `}` percent-encoded.
pub fn escape(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

/// The slot group of `id`: FNV-1a of the escaped id, modulo `groups`.
pub fn group_of(id: &str, groups: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in escape(id).bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % groups.max(1)
}

/// A key of slot group `g` of a cache rule: its journal, dead letters, tag versions.
pub fn group_key(app: &str, rule: &str, g: u32, sub: &str) -> String {
    format!("{app}:cache:{rule}:{{%{app}.{rule}.{g}}}:{sub}")
}

/// The key `sub` (`v`, `lease`, `held`, `flush`) of `id` in a rule with `groups` slot groups.
pub fn key_in(app: &str, rule: &str, groups: u32, id: &str, sub: &str) -> String {
    let g = group_of(id, groups);
    format!(
        "{app}:cache:{rule}:{{%{app}.{rule}.{g}}}:{}:{sub}",
        escape(id)
    )
}

/// The key `sub` of `id` in a rule with the default `slot_groups`.
pub fn key(app: &str, rule: &str, id: &str, sub: &str) -> String {
    key_in(app, rule, DEFAULT_GROUPS, id, sub)
}

/// The journal of `id`'s group (default `slot_groups`).
pub fn journal_of(app: &str, rule: &str, id: &str) -> String {
    group_key(app, rule, group_of(id, DEFAULT_GROUPS), "journal")
}
