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

/// A cache value's meta, the member `m` of its HASH as the scripts pack it
/// (`engine/src/compile/lua/cache/meta.lua`, layout 1: struct `<BddI4c0I4c0I4c0I4c0I4c0dd`).
/// A copy of the layout on purpose, like the keys above.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// Epoch ms (Redis TIME) until which the value is fresh.
    pub fresh: f64,
    /// Ms the origin fill took (XFetch's recompute time).
    pub delta: f64,
    /// The value's own stale_while_revalidate / stale_if_error in ms; None: the rule's.
    pub sw: Option<f64>,
    pub se: Option<f64>,
    pub st: String,
    pub ct: String,
    /// Joined by ','.
    pub tags: String,
    /// µs, as text.
    pub tv: String,
    pub ver: String,
}

impl Meta {
    pub fn parse(m: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(m.first() == Some(&1), "not layout 1: {m:?}");
        let mut r = Reader { m, at: 1 };
        let (fresh, delta) = (r.num()?, r.num()?);
        let (st, ct, tags, ver, tv) = (r.text()?, r.text()?, r.text()?, r.text()?, r.text()?);
        let (sw, se) = (r.num()?, r.num()?);
        let at = r.at;
        anyhow::ensure!(at == m.len(), "{} bytes after the meta", m.len() - at);
        let own = |v: f64| (v >= 0.0).then_some(v);
        Ok(Self {
            fresh,
            delta,
            sw: own(sw),
            se: own(se),
            st,
            ct,
            tags,
            tv,
            ver,
        })
    }

    pub fn pack(&self) -> Vec<u8> {
        let mut out = vec![1u8];
        out.extend(self.fresh.to_le_bytes());
        out.extend(self.delta.to_le_bytes());
        for s in [&self.st, &self.ct, &self.tags, &self.ver, &self.tv] {
            out.extend((s.len() as u32).to_le_bytes());
            out.extend(s.as_bytes());
        }
        out.extend(self.sw.unwrap_or(-1.0).to_le_bytes());
        out.extend(self.se.unwrap_or(-1.0).to_le_bytes());
        out
    }
}

/// Reads a packed meta front to back.
struct Reader<'a> {
    m: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> anyhow::Result<&[u8]> {
        let b = self
            .m
            .get(self.at..self.at + n)
            .ok_or_else(|| anyhow::anyhow!("short meta"))?;
        self.at += n;
        Ok(b)
    }

    fn num(&mut self) -> anyhow::Result<f64> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into()?))
    }

    fn text(&mut self) -> anyhow::Result<String> {
        let n = u32::from_le_bytes(self.take(4)?.try_into()?) as usize;
        Ok(String::from_utf8(self.take(n)?.to_vec())?)
    }
}
