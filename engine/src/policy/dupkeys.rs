//! Finds every duplicate mapping key of a YAML text.
//!
//! YAML parsers either keep the last duplicate silently (a rule defined twice would quietly
//! replace the first) or stop at the first one (hiding every later problem of the file). This
//! walks the parser's event stream once and reports each duplicate with both places, so the
//! load can go on and report everything else too.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A key seen twice in one mapping: `(key, first (line, column), again (line, column))`,
/// 1-based.
pub type Duplicate = (String, (usize, usize), (usize, usize));

enum Frame {
    Mapping {
        keys: HashMap<String, (usize, usize)>,
        expecting_key: bool,
    },
    Sequence,
}

#[derive(Default)]
struct Scanner {
    stack: Vec<Frame>,
    found: Vec<Duplicate>,
}

impl Scanner {
    /// A value (scalar or whole collection) just finished inside the top frame.
    fn value_done(&mut self) {
        if let Some(Frame::Mapping { expecting_key, .. }) = self.stack.last_mut() {
            *expecting_key = !*expecting_key;
        }
    }
}

impl MarkedEventReceiver for Scanner {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let at = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Mapping {
                    keys,
                    expecting_key: true,
                }) = self.stack.last_mut()
                {
                    if let Some(first) = keys.get(&value) {
                        self.found.push((value, *first, at));
                    } else {
                        keys.insert(value, at);
                    }
                }
                self.value_done();
            }
            Event::Alias(_) => self.value_done(),
            Event::MappingStart(..) => self.stack.push(Frame::Mapping {
                keys: HashMap::new(),
                expecting_key: true,
            }),
            Event::SequenceStart(..) => self.stack.push(Frame::Sequence),
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}

/// Every duplicate key in `text`. A syntax error ends the scan early; the real parser reports
/// it with its place.
pub fn find(text: &str) -> Vec<Duplicate> {
    let mut s = Scanner::default();
    let mut parser = Parser::new_from_str(text);
    let _ = parser.load(&mut s, false);
    s.found
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_nested_and_top_level_duplicates() {
        let text =
            "app: a\nrules:\n  r:\n    x: 1\n    x: 2\n  r: {}\napp: b\nlist: [ {k: 1, k: 2} ]\n";
        let found = super::find(text);
        let keys: Vec<&str> = found.iter().map(|d| d.0.as_str()).collect();
        assert_eq!(keys, vec!["x", "r", "app", "k"]);
        assert_eq!(found[0].1, (4, 5));
        assert_eq!(found[0].2, (5, 5));
    }

    #[test]
    fn no_false_positives_across_mappings() {
        assert!(super::find("a: {x: 1}\nb: {x: 1}\nc: [x, x]\n").is_empty());
    }
}
