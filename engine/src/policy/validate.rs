//! Raw YAML nodes → IR, collecting every diagnostic.
//!
//! The file's top level is walked by hand (so unknown top-level keys and duplicate apps are
//! each reported with their place), and each rule is deserialized on its own: one broken rule
//! does not hide the problems of the next. Semantic checks then run on spanned values.
//!
//! This file holds the walk and what every pattern's checks share (names, positive numbers,
//! durations, plugin references, the diagnostics list). Each pattern block is checked by a
//! `Validator` method in its own file (`policy/<pattern>.rs`); `rule` dispatches to it.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use indexmap::IndexMap;
use marked_yaml::{LoaderOptions, Node, Spanned};

use super::Loaded;
use super::diagnostic::{Diagnostic, Diagnostics, Location};
use super::duration;
use super::ir::{App, PluginRef, Policy, Rule, RuleKind};
use super::raw::{RawPluginRef, RawRule};
use super::yaml_errors::{load_error, rule_error};
use super::yaml_json::node_to_json;

/// Limits above this are refused: Lua numbers are doubles, exact only up to 2^53, and no real
/// policy counts this high per window.
pub(super) const MAX_LIMIT: i64 = 1_000_000_000_000;
/// The longest window or lease: a year. Longer is almost certainly a typo.
const MAX_WINDOW: Duration = Duration::from_secs(366 * 86_400);
const PATTERN_KEYS: [&str; 10] = [
    "rate_limit",
    "cache",
    "session",
    "lock",
    "ops",
    "queue",
    "stream",
    "pubsub",
    "counter",
    "leaderboard",
];

#[derive(Default)]
pub(super) struct Validator {
    diags: Vec<Diagnostic>,
    policy: Policy,
    /// Where each app was first defined, to point at both places on a duplicate.
    app_sites: HashMap<String, Location>,
}

impl Validator {
    pub(super) fn file(&mut self, idx: usize, path: &Path, text: &str) {
        for (key, first, again) in super::dupkeys::find(text) {
            self.err(
                &Location::new(path, again.0, again.1),
                format!("duplicate key `{key}` (first defined at line {}, column {}); the later one would silently replace it", first.0, first.1),
            );
        }
        let opts = LoaderOptions::default().error_on_duplicate_keys(false);
        let root = match marked_yaml::parse_yaml_with_options(idx, text, opts) {
            Ok(node) => node,
            Err(e) => {
                self.diags.push(load_error(path, &e));
                return;
            }
        };
        let Some(map) = root.as_mapping() else {
            self.err(
                &loc(path, root.span()),
                "a policy file must be a mapping with `app` and `rules`",
            );
            return;
        };

        let mut app_name: Option<(String, Location)> = None;
        let mut rules_node: Option<&Node> = None;
        for (key, value) in map.iter() {
            match key.as_str() {
                "app" => match value.as_scalar() {
                    Some(s) => {
                        let l = loc(path, s.span());
                        if let Err(m) = check_name(s.as_str(), "app") {
                            self.err(&l, m);
                        } else {
                            app_name = Some((s.as_str().to_string(), l));
                        }
                    }
                    None => self.err(
                        &loc(path, value.span()),
                        "`app` must be a name such as `shop`",
                    ),
                },
                "rules" => rules_node = Some(value),
                other => self.err(
                    &loc(path, key.span()),
                    format!("unknown field `{other}` at the top level; expected `app` or `rules`"),
                ),
            }
        }

        let file_start = loc(path, root.span());
        let Some((app, app_loc)) = app_name else {
            if !map.contains_key("app") {
                self.err(
                    &file_start,
                    "missing `app` (the namespace every key of this file starts with)",
                );
            }
            return;
        };
        if let Some(first) = self.app_sites.get(&app) {
            let msg = format!("duplicate app `{app}`: already defined at {first}");
            self.err(&app_loc, msg);
            return;
        }
        self.app_sites.insert(app.clone(), app_loc.clone());

        let mut rules = IndexMap::new();
        match rules_node {
            None => self.err(
                &file_start,
                "missing `rules` (a mapping of rule name to pattern)",
            ),
            Some(node) => match node.as_mapping() {
                None => self.err(
                    &loc(path, node.span()),
                    "`rules` must be a mapping of rule name to pattern",
                ),
                Some(rmap) => {
                    if rmap.is_empty() {
                        self.warn(&loc(path, node.span()), format!("app `{app}` has no rules"));
                    }
                    for (name, body) in rmap.iter() {
                        let l = loc(path, name.span());
                        if let Err(m) = check_name(name.as_str(), "rule") {
                            self.err(&l, m);
                            continue;
                        }
                        if let Some(rule) = self.rule(path, &app, name.as_str(), l, body) {
                            rules.insert(name.as_str().to_string(), rule);
                        }
                    }
                }
            },
        }
        self.policy.apps.insert(
            app.clone(),
            App {
                name: app,
                location: app_loc,
                rules,
            },
        );
    }

    fn rule(
        &mut self,
        path: &Path,
        app: &str,
        name: &str,
        at: Location,
        body: &Node,
    ) -> Option<Rule> {
        let mut nulls = Vec::new();
        find_nulls(body, "", &mut nulls);
        for (field, span) in &nulls {
            self.err(
                &loc(path, span),
                format!("rule `{name}`: `{field}` is null; give it a value or leave it out"),
            );
        }
        if !nulls.is_empty() {
            return None;
        }
        let raw: RawRule = match marked_yaml::from_node(body) {
            Ok(r) => r,
            Err(e) => {
                let (at, message) = rule_error(path, body, &e);
                self.err(&at, format!("rule `{name}`: {message}"));
                return None;
            }
        };
        // Exactly one pattern block per rule.
        let blocks = [
            raw.rate_limit.as_ref().map(|b| b.span()),
            raw.cache.as_ref().map(|b| b.span()),
            raw.session.as_ref().map(|b| b.span()),
            raw.lock.as_ref().map(|b| b.span()),
            raw.ops.as_ref().map(|b| b.span()),
            raw.queue.as_ref().map(|b| b.span()),
            raw.stream.as_ref().map(|b| b.span()),
            raw.pubsub.as_ref().map(|b| b.span()),
            raw.counter.as_ref().map(|b| b.span()),
            raw.leaderboard.as_ref().map(|b| b.span()),
        ];
        let mut present = blocks.into_iter().flatten();
        match (present.next(), present.next()) {
            (None, _) => {
                self.err(
                    &at,
                    format!(
                        "rule `{name}` has no pattern block; add one of: {}",
                        PATTERN_KEYS.join(", ")
                    ),
                );
                return None;
            }
            (Some(_), Some(second)) => {
                self.err(
                    &loc(path, second),
                    format!("rule `{name}` has two pattern blocks; a rule has exactly one"),
                );
                return None;
            }
            (Some(_), None) => {}
        }
        let kind = if let Some(rl) = &raw.rate_limit {
            RuleKind::RateLimit(self.rate_limit(path, name, rl, body)?)
        } else if let Some(c) = &raw.cache {
            RuleKind::Cache(self.cache(path, name, c, body)?)
        } else if let Some(s) = &raw.session {
            RuleKind::Session(self.session(path, name, s, body)?)
        } else if let Some(l) = &raw.lock {
            RuleKind::Lock(self.lock(path, name, l, body)?)
        } else if let Some(o) = &raw.ops {
            RuleKind::Ops(self.ops(path, name, o, body)?)
        } else if let Some(q) = &raw.queue {
            RuleKind::Queue(self.queue(path, name, q, body)?)
        } else if let Some(s) = &raw.stream {
            RuleKind::Stream(self.stream(path, name, s, body)?)
        } else if let Some(p) = &raw.pubsub {
            RuleKind::PubSub(self.pubsub(path, name, p, body)?)
        } else if let Some(c) = &raw.counter {
            RuleKind::Counter(self.counter(path, name, c, body)?)
        } else if let Some(l) = &raw.leaderboard {
            RuleKind::Leaderboard(self.leaderboard(path, name, l, body)?)
        } else {
            return None;
        };
        Some(Rule {
            app: app.to_string(),
            name: name.to_string(),
            description: raw.description,
            location: at,
            kind,
        })
    }

    /// The `plugin` and `fallback` of a messaging rule (`queue`, `stream`, `pubsub`), whose
    /// hook gets the body itself (`gets`), so `plugin.fields` does not apply. `fallback` is
    /// `fail` or `proceed` (the block's word for going ahead as if there were no plugin:
    /// `accept`, `allow`), and only with a `plugin`. Returns the plugin and whether a failing
    /// one lets the call proceed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn body_hook(
        &mut self,
        path: &Path,
        rule: &str,
        block: &str,
        gets: &str,
        proceed: &str,
        plugin: Option<&Spanned<RawPluginRef>>,
        fallback: Option<&Spanned<String>>,
        body: &Node,
    ) -> (Option<PluginRef>, bool) {
        let plugin = plugin.map(|p| {
            if let Some(f) = p.fields.as_ref().and_then(|f| f.first()) {
                self.err(
                    &loc(path, f.span()),
                    format!(
                        "`plugin.fields` does not apply to `{block}` rules: the hook gets {gets}"
                    ),
                );
            }
            self.plugin_ref(path, block, p, body)
        });
        let proceeds = match fallback {
            None => false,
            Some(v) if plugin.is_none() => {
                self.err(
                    &loc(path, v.span()),
                    format!("rule `{rule}`: `fallback` is only used with a `plugin`"),
                );
                false
            }
            Some(v) if v.as_str() == "fail" => false,
            Some(v) if v.as_str() == proceed => true,
            Some(v) => {
                self.err(
                    &loc(path, v.span()),
                    format!(
                        "unknown `fallback` `{}`; expected `fail` or `{proceed}`",
                        v.as_str()
                    ),
                );
                false
            }
        };
        (plugin, proceeds)
    }

    /// `block` is the rule's pattern key (`rate_limit`, `cache`, …) the `plugin` sits under.
    pub(super) fn plugin_ref(
        &mut self,
        path: &Path,
        block: &str,
        p: &Spanned<RawPluginRef>,
        body: &Node,
    ) -> PluginRef {
        let name = p.name.as_str().to_string();
        if name.is_empty() {
            self.err(&loc(path, p.name.span()), "`plugin.name` must not be empty");
        }
        // The config is arbitrary YAML: take it from the node tree, where scalars still know
        // whether they were quoted, and type it as YAML would (2 is a number, "2" a string).
        let config = body
            .as_mapping()
            .and_then(|m| m.get_mapping(block))
            .and_then(|m| m.get_mapping("plugin"))
            .and_then(|m| m.get_node("config"))
            .map(node_to_json)
            .unwrap_or(serde_json::Value::Null);
        let mut fields = Vec::new();
        for f in p.fields.iter().flatten() {
            if matches!(f.as_str(), "id" | "cost") || f.is_empty() {
                self.err(
                    &loc(path, f.span()),
                    format!("`{}` cannot be listed in `plugin.fields`", f.as_str()),
                );
            } else {
                fields.push(f.to_string());
            }
        }
        // Only the rate-limit handlers filter headers so far; elsewhere the list would be
        // silently ignored, so it is refused instead.
        if block != "rate_limit"
            && let Some(list) = &p.headers
        {
            let span = list.first().map_or(p.name.span(), |h| h.span());
            self.err(
                &loc(path, span),
                format!("`plugin.headers` applies to `rate_limit` rules only, not `{block}`"),
            );
        }
        let headers = p.headers.as_ref().map(|list| {
            let mut headers: Vec<String> = Vec::with_capacity(list.len());
            for h in list {
                let name = h.to_ascii_lowercase();
                if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    self.err(
                        &loc(path, h.span()),
                        format!(
                            "`{}` in `plugin.headers` is not a valid HTTP header name",
                            h.as_str()
                        ),
                    );
                } else if !headers.contains(&name) {
                    headers.push(name);
                }
            }
            headers
        });
        PluginRef {
            name,
            config,
            fields,
            headers,
            location: loc(path, p.name.span()),
        }
    }

    pub(super) fn positive(&mut self, path: &Path, field: &str, n: &Spanned<i64>) -> Option<u64> {
        let v = **n;
        if v <= 0 {
            self.err(
                &loc(path, n.span()),
                format!("`{field}` must be at least 1, not {v}"),
            );
            return None;
        }
        if v > MAX_LIMIT {
            self.err(
                &loc(path, n.span()),
                format!("`{field}` {v} is too large (at most {MAX_LIMIT})"),
            );
            return None;
        }
        u64::try_from(v).ok()
    }

    pub(super) fn duration(
        &mut self,
        path: &Path,
        field: &str,
        s: &Spanned<String>,
    ) -> Option<Duration> {
        let l = loc(path, s.span());
        match duration::parse(s.as_str()) {
            Err(m) => {
                self.err(&l, format!("`{field}`: {m}"));
                None
            }
            Ok(d) if d < Duration::from_millis(1) => {
                self.err(&l, format!("`{field}` must be at least 1ms"));
                None
            }
            Ok(d) if d > MAX_WINDOW => {
                self.err(&l, format!("`{field}` must be at most 366d"));
                None
            }
            Ok(d) => Some(d),
        }
    }

    pub(super) fn err(&mut self, at: &Location, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(at, msg));
    }

    pub(super) fn warn(&mut self, at: &Location, msg: impl Into<String>) {
        self.diags.push(Diagnostic::warning(at, msg));
    }

    pub(super) fn error_count(&self) -> usize {
        self.diags.iter().filter(|d| d.is_error()).count()
    }

    pub(super) fn finish(mut self) -> Result<Loaded, Diagnostics> {
        // Reading order: file by file, top to bottom (files were visited in order, so a
        // stable sort on the place keeps that).
        self.diags
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        if self.error_count() > 0 {
            return Err(Diagnostics(self.diags));
        }
        Ok(Loaded {
            policy: self.policy,
            warnings: self.diags,
        })
    }
}

pub(super) fn loc(path: &Path, span: &marked_yaml::Span) -> Location {
    Location::from_span(path, span)
}

/// App and rule names end up in keys and URLs, so they are kept to a safe alphabet.
fn check_name(name: &str, what: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} name `{name}`: use 1 to 63 lowercase letters, digits, `-` or `_`, starting with a letter or digit"
        ))
    }
}

/// Fields written as `null`, `~` or nothing. A policy field is given or left out: serde would
/// read `null` as the text "null" in a string field and fail with "invalid type" elsewhere,
/// and the JSON Schema refuses null everywhere. `config` (a plugin's free YAML) may hold any.
fn find_nulls<'a>(node: &'a Node, key: &'a str, out: &mut Vec<(&'a str, &'a marked_yaml::Span)>) {
    let is_null = |n: &Node| {
        matches!(n, Node::Scalar(s) if s.may_coerce()
            && matches!(s.as_str(), "~" | "null" | "Null" | "NULL" | ""))
    };
    match node {
        Node::Mapping(m) => {
            for (k, v) in m.iter() {
                if k.as_str() == "config" {
                    continue;
                }
                if is_null(v) {
                    out.push((k.as_str(), v.span()));
                } else {
                    find_nulls(v, k.as_str(), out);
                }
            }
        }
        Node::Sequence(seq) => {
            for v in seq.iter() {
                if is_null(v) {
                    out.push((key, v.span()));
                } else {
                    find_nulls(v, key, out);
                }
            }
        }
        Node::Scalar(_) => {}
    }
}
