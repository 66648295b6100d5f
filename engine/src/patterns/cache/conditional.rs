//! Conditional requests on cache values (RFC 9110 §8.8.3 entity-tags, §13.1.1 `If-Match`,
//! §13.1.2 `If-None-Match`, §13.2.2 the order of evaluation).
//!
//! A value's ETag is `"<ver>"`, `ver` being the version every store gives it (digits; see the
//! data contract in `compile::cache`). GETs evaluate the conditions here against the version
//! they serve; PUT and PATCH pass them to their script (`preconditions_hold` in
//! `lua/cache/common.lua`), which compares them with the stored version in the same step that
//! writes, so no other write can come between the check and the write.
//!
//! Hand-written rather than the `headers` crate: that crate answers "does this ETag pass"
//! but does not give the list of entity-tags, which the write scripts need to compare in
//! Redis; the grammar is small (`"*"` or a list of `[W/]"opaque"`), and this parser is strict:
//! a malformed field is a 400, never silently treated as absent (an ignored `If-Match` would
//! turn a conditional write into an unconditional one).

/// At most this many entity-tags per field (a 400 beyond): the list reaches a script.
pub const MAX_ENTITY_TAGS: usize = 64;
/// A version is at most this many digits (u64).
const MAX_VERSION_DIGITS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("`{field}` is not `*` or a list of entity-tags such as \"abc\", W/\"abc\": {why}")]
    Syntax { field: &'static str, why: String },
    #[error("`{field}` lists more than {MAX_ENTITY_TAGS} entity-tags")]
    TooMany { field: &'static str },
}

/// One entity-tag: its opaque tag (between the quotes) and whether it is weak (`W/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityTag {
    pub weak: bool,
    pub opaque: String,
}

/// A parsed `If-Match` or `If-None-Match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `*`: any current representation.
    Any,
    Tags(Vec<EntityTag>),
}

/// The conditions of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    pub if_match: Option<Condition>,
    pub if_none_match: Option<Condition>,
}

/// What a GET does after evaluating its conditions (RFC 9110 §13.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetOutcome {
    /// Serve the value.
    Serve,
    /// 304: `If-None-Match` matched.
    NotModified,
    /// 412: `If-Match` did not match.
    Failed,
}

/// The ETag of a version: `"<ver>"`.
pub fn etag(version: &str) -> String {
    let mut e = String::with_capacity(version.len() + 2);
    e.push('"');
    e.push_str(version);
    e.push('"');
    e
}

/// A version as this server writes them (so an opaque tag of any other form matches nothing).
fn is_version(opaque: &str) -> bool {
    !opaque.is_empty()
        && opaque.len() <= MAX_VERSION_DIGITS
        && opaque.bytes().all(|b| b.is_ascii_digit())
}

impl Preconditions {
    /// Parses every line of `If-Match` and `If-None-Match` (each a list; several lines are
    /// one list). `None` values: the header is absent.
    pub fn parse<'a>(
        if_match: impl IntoIterator<Item = &'a [u8]>,
        if_none_match: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, ConditionError> {
        Ok(Self {
            if_match: parse_field("If-Match", if_match)?,
            if_none_match: parse_field("If-None-Match", if_none_match)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.if_match.is_none() && self.if_none_match.is_none()
    }

    /// RFC 9110 §13.2.2 for a GET that is about to serve a value whose version is `version`
    /// (`None`: the answer has no ETag, e.g. the origin's answer was not stored). Only called
    /// for an answer that would be 200: §13.2.1, preconditions are ignored otherwise.
    pub fn evaluate_get(&self, version: Option<&str>) -> GetOutcome {
        if let Some(c) = &self.if_match
            && !c.matches(version, true)
        {
            return GetOutcome::Failed;
        }
        if let Some(c) = &self.if_none_match
            && c.matches(version, false)
        {
            return GetOutcome::NotModified;
        }
        GetOutcome::Serve
    }

    /// The script arguments (If-Match, If-None-Match) that `preconditions_hold` in
    /// `lua/cache/common.lua` takes: '' (absent), '*', or ',v1,v2,' with only the versions that
    /// can match (If-Match compares strongly: weak tags are left out).
    pub fn script_args(&self) -> (String, String) {
        let arg = |c: &Option<Condition>, strong: bool| match c {
            None => String::new(),
            Some(Condition::Any) => "*".to_string(),
            Some(Condition::Tags(tags)) => {
                let mut s = String::from(",");
                for t in tags {
                    if (strong && t.weak) || !is_version(&t.opaque) {
                        continue;
                    }
                    s.push_str(&t.opaque);
                    s.push(',');
                }
                s
            }
        };
        (arg(&self.if_match, true), arg(&self.if_none_match, false))
    }
}

impl Condition {
    /// Whether the condition holds for a representation whose version is `version` (`None`:
    /// it has no ETag; `Any` still matches, the representation exists). Strong comparison:
    /// both tags strong and equal; weak: equal opaque tags.
    pub fn matches(&self, version: Option<&str>, strong: bool) -> bool {
        match (self, version) {
            (Condition::Any, _) => true,
            (Condition::Tags(_), None) => false,
            (Condition::Tags(tags), Some(v)) => {
                !v.is_empty() && tags.iter().any(|t| t.opaque == v && (!strong || !t.weak))
            }
        }
    }
}

/// `If-Match = "*" / #entity-tag` (the same grammar for `If-None-Match`).
fn parse_field<'a>(
    field: &'static str,
    lines: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<Condition>, ConditionError> {
    let syntax = |why: &str| ConditionError::Syntax {
        field,
        why: why.to_string(),
    };
    let mut any = false;
    let mut seen_line = false;
    let mut tags = Vec::new();
    for line in lines {
        seen_line = true;
        let trimmed = trim_ows(line);
        if trimmed == b"*" {
            any = true;
            continue;
        }
        let mut i = 0;
        let b = line;
        loop {
            // Empty list elements and the whitespace around them are allowed (§5.6.1).
            while i < b.len() && matches!(b[i], b' ' | b'\t' | b',') {
                i += 1;
            }
            if i >= b.len() {
                break;
            }
            let weak = b[i..].starts_with(b"W/");
            if weak {
                i += 2;
            }
            if b.get(i) != Some(&b'"') {
                return Err(syntax("an entity-tag starts with a double quote"));
            }
            i += 1;
            let start = i;
            // etagc = %x21 / %x23-7E / obs-text
            while i < b.len() && (b[i] == 0x21 || (0x23..=0x7e).contains(&b[i]) || b[i] >= 0x80) {
                i += 1;
            }
            if b.get(i) != Some(&b'"') {
                return Err(syntax("an entity-tag ends with a double quote"));
            }
            let opaque = String::from_utf8_lossy(&b[start..i]).into_owned();
            i += 1;
            tags.push(EntityTag { weak, opaque });
            if tags.len() > MAX_ENTITY_TAGS {
                return Err(ConditionError::TooMany { field });
            }
            while i < b.len() && matches!(b[i], b' ' | b'\t') {
                i += 1;
            }
            if i < b.len() && b[i] != b',' {
                return Err(syntax("entity-tags are separated by commas"));
            }
        }
    }
    if !seen_line {
        return Ok(None);
    }
    match (any, tags.is_empty()) {
        (true, true) => Ok(Some(Condition::Any)),
        (true, false) => Err(syntax("`*` stands alone")),
        (false, true) => Err(syntax("the field is empty")),
        (false, false) => Ok(Some(Condition::Tags(tags))),
    }
}

fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(im: &[&str], inm: &[&str]) -> Result<Preconditions, ConditionError> {
        Preconditions::parse(
            im.iter().map(|s| s.as_bytes()),
            inm.iter().map(|s| s.as_bytes()),
        )
    }

    #[test]
    fn parses_the_rfc_9110_grammar() {
        let p = parse(&[r#""1", W/"2""#, r#" "x,y" "#], &["*"]).unwrap();
        assert_eq!(
            p.if_match,
            Some(Condition::Tags(vec![
                EntityTag {
                    weak: false,
                    opaque: "1".into()
                },
                EntityTag {
                    weak: true,
                    opaque: "2".into()
                },
                EntityTag {
                    weak: false,
                    opaque: "x,y".into()
                },
            ]))
        );
        assert_eq!(p.if_none_match, Some(Condition::Any));
        assert!(parse(&[], &[]).unwrap().is_empty());
        assert!(
            parse(&[r#""1",,  ,"2""#], &[]).is_ok(),
            "empty list elements"
        );
        assert!(
            parse(&[r#""""#], &[]).is_ok(),
            "an empty opaque tag is valid"
        );
        for bad in [
            "1",
            r#""1"#,
            r#"w/"1""#,
            r#""1" "2""#,
            r#"*, "1""#,
            "",
            " , ",
        ] {
            assert!(
                matches!(parse(&[bad], &[]), Err(ConditionError::Syntax { .. })),
                "{bad:?}"
            );
        }
        assert!(
            parse(&["*", r#""1""#], &[]).is_err(),
            "`*` alone, even across lines"
        );
        let many = vec![r#""1""#; MAX_ENTITY_TAGS + 1].join(",");
        assert_eq!(
            parse(&[&many], &[]),
            Err(ConditionError::TooMany { field: "If-Match" })
        );
    }

    #[test]
    fn if_match_is_strong_if_none_match_weak() {
        let p = parse(&[r#"W/"5""#], &[r#"W/"5""#]).unwrap();
        assert_eq!(p.evaluate_get(Some("5")), GetOutcome::Failed);
        let p = parse(&[r#""5""#], &[r#"W/"5""#]).unwrap();
        assert_eq!(p.evaluate_get(Some("5")), GetOutcome::NotModified);
        assert_eq!(p.evaluate_get(Some("6")), GetOutcome::Failed);
        let p = parse(&[], &[r#""4", "5""#]).unwrap();
        assert_eq!(p.evaluate_get(Some("5")), GetOutcome::NotModified);
        assert_eq!(p.evaluate_get(Some("6")), GetOutcome::Serve);
        assert_eq!(p.evaluate_get(None), GetOutcome::Serve);
        let p = parse(&["*"], &[]).unwrap();
        assert_eq!(
            p.evaluate_get(None),
            GetOutcome::Serve,
            "any representation"
        );
        let p = parse(&[r#""5""#], &[]).unwrap();
        assert_eq!(p.evaluate_get(None), GetOutcome::Failed, "no ETag to match");
    }

    #[test]
    fn script_args_keep_only_versions_that_can_match() {
        let p = parse(&[r#""12", W/"13", "abc", "14""#], &[r#"W/"13", "x""#]).unwrap();
        assert_eq!(p.script_args(), (",12,14,".into(), ",13,".into()));
        let p = parse(&[r#""abc""#], &["*"]).unwrap();
        assert_eq!(p.script_args(), (",".into(), "*".into()));
        assert_eq!(
            Preconditions::default().script_args(),
            (String::new(), String::new())
        );
    }
}
