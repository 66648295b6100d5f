//! How long an origin's answer may be stored, from its own header fields (RFC 9111), for rules
//! with `ttl_from_origin: true`. Pure: no clock but the origin's own `Date`.
//!
//! - `no-store`, `private` (qualified or not) and `no-cache` (qualified or not): not stored.
//!   patternd never revalidates with the origin (no conditional origin requests), so an answer
//!   that may only be reused after revalidation is an answer it cannot reuse.
//! - Freshness lifetime (§4.2.1): `s-maxage` (a shared cache's), else `max-age`, else
//!   `Expires` − `Date`; minus the answer's `Age` (§4.2.3; only the origin's `Age`, no
//!   apparent-age estimate, which would need the engine's clock). Without any of them, the
//!   rule's `ttl` (the heuristic). The result is capped at the rule's `ttl` (or the plugin's):
//!   the rule's `ttl` is the default and the ceiling.
//! - Stale windows: `stale-while-revalidate` and `stale-if-error` (RFC 5861), each capped at
//!   the rule's setting; without them the rule's apply, except when the answer requires
//!   revalidation once stale (`must-revalidate`, `proxy-revalidate`, or `s-maxage`, which
//!   carries proxy-revalidate for shared caches, §5.2.2.10): then no stale serving that the
//!   origin did not grant explicitly.
//! - Invalid freshness information is stale (§4.2.1: "caches are encouraged to consider
//!   responses that have invalid freshness information to be stale"): a malformed
//!   `max-age`/`s-maxage`/`Age`, an `Expires` that is not an HTTP-date (§5.3: a time in the
//!   past), or an `Expires` without a valid `Date`. A `Cache-Control` that does not parse at
//!   all is not stored. Of a directive given twice, the first counts (§4.2.1).
//! - An answer with no freshness and no stale window left is not stored.
//!
//! The parser is a strict reading of §5.2's `#cache-directive` (`token [ "=" ( token /
//! quoted-string ) ]`, comma-separated, quoted strings may hold commas): the crates on offer
//! either split on commas naively or fold `private`/`no-cache` into one enum and lack the
//! RFC 5861 directives; `http-cache-semantics` brings serde and a clock-driven policy object
//! for a dozen lines of arithmetic.

/// delta-seconds larger than this are taken as this (RFC 9111 §1.2.2).
const DELTA_MAX: u64 = 2_147_483_648;

/// The answer's fields that decide its freshness (each as received, several lines of
/// `Cache-Control` joined with ", ").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginFreshness {
    pub cache_control: Option<String>,
    pub age: Option<String>,
    pub expires: Option<String>,
    pub date: Option<String>,
}

/// The rule's settings (ms), which are defaults and ceilings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub ttl_ms: u64,
    pub swr_ms: u64,
    pub sie_ms: u64,
}

/// How long a value is fresh and then servable stale (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub ttl_ms: u64,
    pub swr_ms: u64,
    pub sie_ms: u64,
}

/// Why an answer is not stored (the `Cache-Status` detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncacheable {
    NoStore,
    Private,
    NoCache,
    /// No freshness and no stale window left (e.g. `max-age=0`).
    Stale,
    /// `Cache-Control` that does not parse.
    Invalid,
}

impl Uncacheable {
    /// An RFC 9211 `detail` token.
    pub fn detail(self) -> &'static str {
        match self {
            Uncacheable::NoStore => "no-store",
            Uncacheable::Private => "private",
            Uncacheable::NoCache => "no-cache",
            Uncacheable::Stale => "stale",
            Uncacheable::Invalid => "invalid-cache-control",
        }
    }
}

/// A delta-seconds argument: its value, or invalid (not 1*DIGIT, or no argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delta {
    Secs(u64),
    Invalid,
}

#[derive(Debug, Default)]
struct Directives {
    no_store: bool,
    private: bool,
    no_cache: bool,
    revalidate: bool,
    max_age: Option<Delta>,
    s_maxage: Option<Delta>,
    swr: Option<Delta>,
    sie: Option<Delta>,
}

/// The answer's lifetimes within `bounds`, or why it is not stored.
pub fn lifetimes(h: &OriginFreshness, bounds: Bounds) -> Result<Lifetimes, Uncacheable> {
    let d = match &h.cache_control {
        Some(cc) => directives(cc).ok_or(Uncacheable::Invalid)?,
        None => Directives::default(),
    };
    if d.no_store {
        return Err(Uncacheable::NoStore);
    }
    if d.private {
        return Err(Uncacheable::Private);
    }
    if d.no_cache {
        return Err(Uncacheable::NoCache);
    }
    let secs = |x: Delta| match x {
        Delta::Secs(s) => s,
        Delta::Invalid => 0,
    };
    let lifetime_s = if let Some(x) = d.s_maxage {
        Some(secs(x))
    } else if let Some(x) = d.max_age {
        Some(secs(x))
    } else if let Some(exp) = &h.expires {
        let date = h
            .date
            .as_deref()
            .and_then(|t| httpdate::parse_http_date(t.trim()).ok());
        match (httpdate::parse_http_date(exp.trim()), date) {
            (Ok(e), Some(d)) => Some(e.duration_since(d).map_or(0, |x| x.as_secs())),
            _ => Some(0),
        }
    } else {
        None
    };
    let age_s = match &h.age {
        None => 0,
        Some(a) => match delta(Some(a.trim())) {
            Delta::Secs(s) => s,
            Delta::Invalid => DELTA_MAX,
        },
    };
    let lifetime_ms = lifetime_s.map_or(bounds.ttl_ms, |s| s.saturating_mul(1000));
    let ttl_ms = lifetime_ms
        .saturating_sub(age_s.saturating_mul(1000))
        .min(bounds.ttl_ms);
    let revalidate = d.revalidate || d.s_maxage.is_some();
    let window = |given: Option<Delta>, rule: u64| match given {
        Some(x) => secs(x).saturating_mul(1000).min(rule),
        None if revalidate => 0,
        None => rule,
    };
    let l = Lifetimes {
        ttl_ms,
        swr_ms: window(d.swr, bounds.swr_ms),
        sie_ms: window(d.sie, bounds.sie_ms),
    };
    if l.ttl_ms == 0 && l.swr_ms == 0 && l.sie_ms == 0 {
        return Err(Uncacheable::Stale);
    }
    Ok(l)
}

fn delta(arg: Option<&str>) -> Delta {
    match arg {
        Some(a) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) => {
            // Digits only: a parse failure can only be an overflow.
            Delta::Secs(a.parse::<u64>().map_or(DELTA_MAX, |s| s.min(DELTA_MAX)))
        }
        _ => Delta::Invalid,
    }
}

/// The directives of a `Cache-Control` field value, or `None` when it does not parse.
fn directives(value: &str) -> Option<Directives> {
    let mut d = Directives::default();
    for (name, arg) in parse_list(value)? {
        let first = |slot: &mut Option<Delta>| {
            if slot.is_none() {
                *slot = Some(delta(arg.as_deref()));
            }
        };
        match name.as_str() {
            "no-store" => d.no_store = true,
            "private" => d.private = true,
            "no-cache" => d.no_cache = true,
            "must-revalidate" | "proxy-revalidate" => d.revalidate = true,
            "max-age" => first(&mut d.max_age),
            "s-maxage" => first(&mut d.s_maxage),
            "stale-while-revalidate" => first(&mut d.swr),
            "stale-if-error" => first(&mut d.sie),
            // Extensions a cache does not understand are ignored (§5.2.3).
            _ => {}
        }
    }
    Some(d)
}

/// `#cache-directive`: (lowercased name, argument with quotes and escapes removed).
fn parse_list(value: &str) -> Option<Vec<(String, Option<String>)>> {
    let b = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b',') {
            i += 1;
        }
        if i >= b.len() {
            return Some(out);
        }
        let start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let name = value[start..i].to_ascii_lowercase();
        let mut arg = None;
        if b.get(i) == Some(&b'=') {
            i += 1;
            if b.get(i) == Some(&b'"') {
                i += 1;
                let mut v = Vec::new();
                loop {
                    match *b.get(i)? {
                        b'"' => {
                            i += 1;
                            break;
                        }
                        b'\\' => {
                            v.push(*b.get(i + 1)?);
                            i += 2;
                        }
                        c => {
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                arg = Some(String::from_utf8_lossy(&v).into_owned());
            } else {
                let s = i;
                while i < b.len() && is_tchar(b[i]) {
                    i += 1;
                }
                if i == s {
                    return None;
                }
                arg = Some(value[s..i].to_string());
            }
        }
        out.push((name, arg));
        while i < b.len() && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        if i < b.len() && b[i] != b',' {
            return None;
        }
    }
}

/// RFC 9110 §5.6.2 tchar.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Bounds = Bounds {
        ttl_ms: 3_600_000,
        swr_ms: 60_000,
        sie_ms: 600_000,
    };

    fn cc(v: &str) -> OriginFreshness {
        OriginFreshness {
            cache_control: Some(v.to_string()),
            ..OriginFreshness::default()
        }
    }

    fn life(ttl_s: u64, swr_s: u64, sie_s: u64) -> Result<Lifetimes, Uncacheable> {
        Ok(Lifetimes {
            ttl_ms: ttl_s * 1000,
            swr_ms: swr_s * 1000,
            sie_ms: sie_s * 1000,
        })
    }

    #[test]
    fn no_header_is_the_rule() {
        assert_eq!(
            lifetimes(&OriginFreshness::default(), RULE),
            life(3600, 60, 600)
        );
    }

    #[test]
    fn max_age_and_s_maxage_within_the_rule() {
        assert_eq!(lifetimes(&cc("max-age=30"), RULE), life(30, 60, 600));
        assert_eq!(
            lifetimes(&cc("public, MAX-AGE=\"30\""), RULE),
            life(30, 60, 600)
        );
        assert_eq!(
            lifetimes(&cc("max-age=99999999"), RULE),
            life(3600, 60, 600)
        );
        // s-maxage wins for a shared cache, and withdraws the rule's stale windows.
        assert_eq!(
            lifetimes(&cc("max-age=30, s-maxage=5"), RULE),
            life(5, 0, 0)
        );
        assert_eq!(
            lifetimes(&cc("s-maxage=5, stale-while-revalidate=10"), RULE),
            life(5, 10, 0)
        );
        // The first of a directive given twice.
        assert_eq!(
            lifetimes(&cc("max-age=30, max-age=90"), RULE),
            life(30, 60, 600)
        );
        // Huge values saturate instead of overflowing.
        assert_eq!(
            lifetimes(&cc("max-age=999999999999999999999999"), RULE),
            life(3600, 60, 600)
        );
    }

    #[test]
    fn stale_windows_are_capped_and_withdrawn_by_revalidation() {
        assert_eq!(
            lifetimes(
                &cc("max-age=30, stale-while-revalidate=5, stale-if-error=99999"),
                RULE
            ),
            life(30, 5, 600)
        );
        assert_eq!(
            lifetimes(&cc("max-age=30, must-revalidate"), RULE),
            life(30, 0, 0)
        );
        assert_eq!(
            lifetimes(&cc("max-age=30, proxy-revalidate, stale-if-error=20"), RULE),
            life(30, 0, 20)
        );
    }

    #[test]
    fn not_stored() {
        for (v, why) in [
            ("no-store", Uncacheable::NoStore),
            ("max-age=60, No-Store", Uncacheable::NoStore),
            ("private", Uncacheable::Private),
            (
                "private=\"set-cookie, x\", max-age=60",
                Uncacheable::Private,
            ),
            ("no-cache", Uncacheable::NoCache),
            ("no-cache=\"set-cookie\"", Uncacheable::NoCache),
            ("max-age=0, must-revalidate", Uncacheable::Stale),
            ("s-maxage=0", Uncacheable::Stale),
            ("max-age=\"1", Uncacheable::Invalid),
            ("max-age=1 2", Uncacheable::Invalid),
            ("=1", Uncacheable::Invalid),
        ] {
            assert_eq!(lifetimes(&cc(v), RULE), Err(why), "{v}");
        }
        // Stale on arrival (also when max-age is invalid) but servable stale, by the origin's
        // word or the rule's (the out-of-band contract, RFC 9111 §4.2.4): stored.
        assert_eq!(
            lifetimes(&cc("max-age=0, stale-while-revalidate=30"), RULE),
            life(0, 30, 600)
        );
        for v in ["max-age=0", "max-age=abc", "max-age"] {
            assert_eq!(lifetimes(&cc(v), RULE), life(0, 60, 600), "{v}");
            let no_windows = Bounds {
                swr_ms: 0,
                sie_ms: 0,
                ..RULE
            };
            assert_eq!(
                lifetimes(&cc(v), no_windows),
                Err(Uncacheable::Stale),
                "{v}"
            );
        }
        // Unknown extensions are ignored; a quoted comma does not split.
        assert_eq!(
            lifetimes(&cc("x-ext=\"a, no-store\", max-age=7"), RULE),
            life(7, 60, 600)
        );
    }

    #[test]
    fn age_and_expires() {
        let h = OriginFreshness {
            cache_control: Some("max-age=100".into()),
            age: Some("90".into()),
            ..OriginFreshness::default()
        };
        assert_eq!(lifetimes(&h, RULE), life(10, 60, 600));
        let h = OriginFreshness {
            age: Some("4000".into()),
            ..OriginFreshness::default()
        };
        assert_eq!(
            lifetimes(&h, RULE),
            life(0, 60, 600),
            "older than the rule's ttl"
        );
        let h = OriginFreshness {
            cache_control: Some("max-age=100".into()),
            age: Some("x".into()),
            ..OriginFreshness::default()
        };
        assert_eq!(
            lifetimes(&h, RULE),
            life(0, 60, 600),
            "an invalid Age is stale"
        );
        let h = OriginFreshness {
            expires: Some("Sun, 06 Nov 1994 08:49:37 GMT".into()),
            date: Some("Sun, 06 Nov 1994 08:48:37 GMT".into()),
            ..OriginFreshness::default()
        };
        assert_eq!(lifetimes(&h, RULE), life(60, 60, 600));
        let h = OriginFreshness {
            cache_control: Some("max-age=5".into()),
            expires: Some("Sun, 06 Nov 1994 08:49:37 GMT".into()),
            date: Some("Sun, 06 Nov 1994 08:48:37 GMT".into()),
            ..OriginFreshness::default()
        };
        assert_eq!(
            lifetimes(&h, RULE),
            life(5, 60, 600),
            "max-age wins over Expires"
        );
        for (exp, date) in [
            ("0", Some("Sun, 06 Nov 1994 08:48:37 GMT")),
            ("Sun, 06 Nov 1994 08:49:37 GMT", None),
        ] {
            let h = OriginFreshness {
                expires: Some(exp.into()),
                date: date.map(str::to_string),
                ..OriginFreshness::default()
            };
            assert_eq!(lifetimes(&h, RULE), life(0, 60, 600), "{exp} {date:?}");
        }
    }
}
