//! YAML and serde errors, reworded and placed for a policy author.
//!
//! marked-yaml and serde describe failures for programmers: the scanner's wording, "invalid
//! digit found in string", an unknown field placed at the mapping that holds it. A policy author
//! should read each as `file:line:column: message` in the terms of the policy file, pointing at
//! the offending key, with a "did you mean" for a misspelt field (see `suggest`).

use std::path::Path;

use marked_yaml::Node;

use super::diagnostic::{Diagnostic, Location};
use super::suggest::suggest;
use super::validate::loc;

pub(super) fn load_error(path: &Path, e: &marked_yaml::LoadError) -> Diagnostic {
    use marked_yaml::LoadError as E;
    let (mark, msg) = match e {
        E::TopLevelMustBeMapping(m) => (
            Some(*m),
            "a policy file must be a mapping with `app` and `rules`".to_string(),
        ),
        E::TopLevelMustBeSequence(m) => {
            (Some(*m), "unexpected sequence at the top level".to_string())
        }
        E::UnexpectedAnchor(m) => (
            Some(*m),
            "YAML anchors and aliases are not supported in policy files".to_string(),
        ),
        E::MappingKeyMustBeScalar(m) => (Some(*m), "mapping keys must be plain names".to_string()),
        E::UnexpectedTag(m) => (
            Some(*m),
            "YAML tags are not supported in policy files".to_string(),
        ),
        E::ScanError(m, se) => (Some(*m), format!("YAML syntax error: {se}")),
        E::DuplicateKey(d) => {
            let first = d
                .prev_key
                .span()
                .start()
                .map(|m| format!("{}:{}", m.line(), m.column()))
                .unwrap_or_default();
            (
                d.key.span().start().copied(),
                format!(
                    "duplicate key `{}` (first defined at line {first})",
                    d.key.as_str()
                ),
            )
        }
    };
    let l = match mark {
        Some(m) => Location::new(path, m.line(), m.column()),
        None => Location::file_start(path),
    };
    Diagnostic::error(&l, msg)
}

/// A rule that does not deserialize: where to point, and what to say.
pub(super) fn rule_error(
    path: &Path,
    body: &Node,
    e: &marked_yaml::FromNodeError,
) -> (Location, String) {
    // marked-yaml places an unknown field at its enclosing mapping; the key itself is a
    // better place to point at.
    let key_span = match &**e {
        marked_yaml::Error::UnknownFieldError(field, _, _) => find_key(body, field),
        _ => None,
    };
    let at = key_span
        .map(|s| loc(path, s))
        .or_else(|| {
            e.start_mark()
                .map(|m| Location::new(path, m.line(), m.column()))
        })
        .unwrap_or_else(|| loc(path, body.span()));
    (at, serde_message(e))
}

/// serde's messages, reworded where they would confuse a policy author.
fn serde_message(e: &marked_yaml::FromNodeError) -> String {
    use marked_yaml::Error as E;
    match &**e {
        E::IntegerParseFailure(..) => "expected a whole number".to_string(),
        E::FloatParseFailure(..) => "expected a number".to_string(),
        E::NotBoolean(..) => "expected `true` or `false`".to_string(),
        E::UnknownFieldError(field, expected, _) => match suggest(field, expected) {
            Some(s) => format!("unknown field `{field}`; did you mean `{s}`?"),
            None => format!(
                "unknown field `{field}`; expected one of: {}",
                expected.join(", ")
            ),
        },
        E::Other(m, _) => m.clone(),
    }
}

/// The span of the first mapping key named `field` under `node` (depth first).
fn find_key<'a>(node: &'a Node, field: &str) -> Option<&'a marked_yaml::Span> {
    match node {
        Node::Mapping(m) => m.iter().find_map(|(k, v)| {
            if k.as_str() == field {
                Some(k.span())
            } else {
                find_key(v, field)
            }
        }),
        Node::Sequence(s) => s.iter().find_map(|v| find_key(v, field)),
        Node::Scalar(_) => None,
    }
}
