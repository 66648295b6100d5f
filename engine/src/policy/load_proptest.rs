//! Property tests of the policy loader: whatever text a policy file holds (arbitrary text,
//! YAML-ish noise, the example policies with tokens deleted, duplicated or replaced, huge or
//! negative or fractional numbers, odd unicode, deep nesting), `load_sources` returns, never
//! panics, and every diagnostic it gives points at a real place in that text. A policy that
//! loads is also compiled (pure, no Redis), which must not panic either.
//!
//! Bounded (see `CASES`) so they run in `cargo test` in a few seconds.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;

use super::{Diagnostic, load_sources};

const CASES: u32 = 256;

/// The example policies (`policies/*.yaml`), the mutations' starting points.
const EXAMPLES: [&str; 5] = [
    include_str!("../../../policies/shop.yaml"),
    include_str!("../../../policies/api-tiers.yaml"),
    include_str!("../../../policies/cache.yaml"),
    include_str!("../../../policies/cache-writes.yaml"),
    include_str!("../../../policies/sessions.yaml"),
];

/// Tokens a mutation puts in: values out of every range, YAML features the loader refuses,
/// unicode, control characters.
const REPLACEMENTS: &[&str] = &[
    "0",
    "-1",
    "-9223372036854775809",
    "18446744073709551616",
    "99999999999999999999999999999999",
    "1.5",
    "1e308",
    "-0.0",
    ".nan",
    ".inf",
    "~",
    "null",
    "true",
    "\"\"",
    "''",
    "[]",
    "{}",
    "[1, [2, [3]]]",
    "{ a: { b: c } }",
    "&anchor x",
    "*anchor",
    "!!binary aGk=",
    "!custom",
    "? complex",
    "|",
    ">-",
    "---",
    "...",
    "#",
    "%YAML 1.2",
    "ü",
    "漢字",
    "🦀",
    "\u{0}",
    "\u{7}",
    "\u{feff}",
    "\u{202e}",
    "\t",
    "\r",
    "\r\n",
    "'unterminated",
    "\"unterminated",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "-",
    "1ms",
    "0s",
    "1y",
    "99999999999d",
    "sliding_window",
    "concurrency",
    "rate_limit",
    "cache",
    "session",
    "lock",
    "ops",
    "plugin",
];

/// A policy text split into tokens: runs of word characters, runs of spaces, and single other
/// characters, so a mutation can act on one token without splitting a multibyte character.
fn tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let class = |c: char| {
        if c.is_alphanumeric() || "_-.".contains(c) {
            0
        } else if c == ' ' {
            1
        } else {
            2
        }
    };
    let mut prev: Option<u8> = None;
    for (i, c) in text.char_indices() {
        let k = class(c);
        if prev.is_some_and(|p| p != k || k == 2) {
            out.push(&text[start..i]);
            start = i;
        }
        prev = Some(k);
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(Index),
    Duplicate(Index),
    Replace(Index, &'static str),
    Insert(Index, &'static str),
    /// Moves a line's start by `0..8` spaces (negative: removes indentation).
    Indent(Index, i8),
    SwapLines(Index, Index),
    DeleteLine(Index),
    DuplicateLine(Index),
    /// Puts a value nested this deep (flow sequences and mappings) in place of a token.
    Nest(Index, usize, bool),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let repl = proptest::sample::select(REPLACEMENTS);
    prop_oneof![
        any::<Index>().prop_map(Mutation::Delete),
        any::<Index>().prop_map(Mutation::Duplicate),
        (any::<Index>(), repl.clone()).prop_map(|(i, r)| Mutation::Replace(i, r)),
        (any::<Index>(), repl).prop_map(|(i, r)| Mutation::Insert(i, r)),
        (any::<Index>(), -8i8..8).prop_map(|(i, n)| Mutation::Indent(i, n)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        any::<Index>().prop_map(Mutation::DeleteLine),
        any::<Index>().prop_map(Mutation::DuplicateLine),
        (
            any::<Index>(),
            prop_oneof![1usize..64, 64usize..2048],
            any::<bool>()
        )
            .prop_map(|(i, d, map)| Mutation::Nest(i, d, map)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let toks = tokens(text);
    let with_token = |i: &Index, f: &dyn Fn(&str) -> String| -> String {
        if toks.is_empty() {
            return f("");
        }
        let at = i.index(toks.len());
        let mut out = String::with_capacity(text.len() + 16);
        for (j, t) in toks.iter().enumerate() {
            if j == at {
                out.push_str(&f(t));
            } else {
                out.push_str(t);
            }
        }
        out
    };
    let lines: Vec<&str> = text.split('\n').collect();
    let with_lines = |f: &dyn Fn(&mut Vec<String>)| -> String {
        let mut ls: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        f(&mut ls);
        ls.join("\n")
    };
    match m {
        Mutation::Delete(i) => with_token(i, &|_| String::new()),
        Mutation::Duplicate(i) => with_token(i, &|t| format!("{t}{t}")),
        Mutation::Replace(i, r) => with_token(i, &|_| (*r).to_string()),
        Mutation::Insert(i, r) => with_token(i, &|t| format!("{r}{t}")),
        Mutation::Indent(i, n) => with_lines(&|ls| {
            let at = i.index(ls.len());
            if *n >= 0 {
                ls[at].insert_str(0, &" ".repeat(*n as usize));
            } else {
                let strip = ls[at]
                    .bytes()
                    .take(n.unsigned_abs() as usize)
                    .take_while(|b| *b == b' ')
                    .count();
                ls[at].drain(..strip);
            }
        }),
        Mutation::SwapLines(a, b) => with_lines(&|ls| {
            let (a, b) = (a.index(ls.len()), b.index(ls.len()));
            ls.swap(a, b);
        }),
        Mutation::DeleteLine(i) => with_lines(&|ls| {
            ls.remove(i.index(ls.len()));
        }),
        Mutation::DuplicateLine(i) => with_lines(&|ls| {
            let at = i.index(ls.len());
            let dup = ls[at].clone();
            ls.insert(at, dup);
        }),
        Mutation::Nest(i, depth, map) => with_token(i, &|_| {
            let (open, close) = if *map { ("{a: ", "}") } else { ("[", "]") };
            format!("{}x{}", open.repeat(*depth), close.repeat(*depth))
        }),
    }
}

/// An example policy with one to eight mutations applied in turn.
fn mutated_example() -> impl Strategy<Value = String> {
    (
        proptest::sample::select(EXAMPLES.to_vec()),
        proptest::collection::vec(mutation(), 1..8),
    )
        .prop_map(|(text, ms)| ms.iter().fold(text.to_string(), |t, m| apply(&t, m)))
}

/// Text that looks a little like YAML: the characters that steer its grammar, some words.
fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[ \n:\\-{}\\[\\],#&*!|>'\"?%@`\t]",
        "[a-z_]{1,12}",
        "[0-9]{1,25}",
        proptest::sample::select(REPLACEMENTS).prop_map(str::to_string),
    ];
    proptest::collection::vec(piece, 0..80).prop_map(|v| v.concat())
}

/// The lines of `text` as YAML counts them: `\r\n`, `\r` and `\n` each end a line.
fn yaml_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                lines.push(&text[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&text[start..i]);
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    lines.push(&text[start..]);
    lines
}

/// Whether `d` names a place inside `text`: its file, a line of the text, and a column
/// within that line (one past its end for "expected more here" errors). The end of the input
/// counts as a place too: the YAML scanner reports an unterminated last line as the start of
/// the line after it, as if the file ended with a line break.
fn located_in(d: &Diagnostic, path: &Path, text: &str) -> Result<(), String> {
    if d.file != path {
        return Err(format!("names file {}", d.file.display()));
    }
    let lines = yaml_lines(text);
    if d.line == lines.len() + 1 && d.column == 1 {
        return Ok(());
    }
    if d.line == 0 || d.line > lines.len() {
        return Err(format!("line {} of {}", d.line, lines.len()));
    }
    let width = lines[d.line - 1].chars().count();
    if d.column == 0 || d.column > width + 1 {
        return Err(format!(
            "column {} of a {width}-character line {}",
            d.column, d.line
        ));
    }
    Ok(())
}

/// Loads `text` as one policy file and checks every diagnostic; compiles what loads.
fn check_load(text: &str) -> Result<(), TestCaseError> {
    let path = PathBuf::from("fuzz.yaml");
    let sources = [(path.clone(), text.to_string())];
    let (diags, policy) = match load_sources(&sources) {
        Ok(l) => (l.warnings, Some(l.policy)),
        Err(e) => {
            prop_assert!(e.error_count() > 0, "a failed load without an error: {e}");
            (e.0, None)
        }
    };
    for d in &diags {
        if let Err(why) = located_in(d, &path, text) {
            return Err(TestCaseError::fail(format!(
                "diagnostic `{d}` is not in the text ({why})"
            )));
        }
        prop_assert!(!d.message.is_empty(), "a diagnostic without a message");
    }
    if let Some(policy) = policy {
        let plugins = crate::plugin::PluginSet::empty();
        if let Err(e) = crate::compile::compile(&policy, &plugins) {
            for d in &e.0 {
                if let Err(why) = located_in(d, &path, text) {
                    return Err(TestCaseError::fail(format!(
                        "compile diagnostic `{d}` is not in the text ({why})"
                    )));
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::proptest_config::config(CASES))]

    #[test]
    fn arbitrary_text_loads_or_is_located(text in any::<String>()) {
        check_load(&text)?;
    }

    #[test]
    fn yamlish_text_loads_or_is_located(text in yamlish()) {
        check_load(&text)?;
    }

    #[test]
    fn mutated_examples_load_or_are_located(text in mutated_example()) {
        check_load(&text)?;
    }
}

/// The unmutated examples load (the mutations start from valid files).
#[test]
fn examples_load() {
    for text in EXAMPLES {
        let sources = [(PathBuf::from("example.yaml"), text.to_string())];
        if let Err(e) = load_sources(&sources) {
            panic!("{e}");
        }
    }
}
