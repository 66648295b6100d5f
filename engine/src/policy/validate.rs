//! Raw YAML nodes → IR, collecting every diagnostic.
//!
//! The file's top level is walked by hand (so unknown top-level keys and duplicate apps are
//! each reported with their place), and each rule is deserialized on its own: one broken rule
//! does not hide the problems of the next. Semantic checks then run on spanned values.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use indexmap::IndexMap;
use marked_yaml::{LoaderOptions, Node, Spanned};

use super::Loaded;
use super::diagnostic::{Diagnostic, Diagnostics, Location};
use super::duration;
use super::ir::{
    Algorithm, App, ForwardedFor, IdFrom, Limit, OnRedisError, Ops, PluginRef, Policy, RateLimit,
    Rule, RuleKind,
};
use super::raw::{RawLimit, RawRateLimit, RawRule};

/// Limits above this are refused: Lua numbers are doubles, exact only up to 2^53, and no real
/// policy counts this high per window.
const MAX_LIMIT: i64 = 1_000_000_000_000;
/// The longest window or lease: a year. Longer is almost certainly a typo.
const MAX_WINDOW: Duration = Duration::from_secs(366 * 86_400);
/// sliding_log keeps one sorted-set entry per admitted unit; past this, warn about memory.
const SLIDING_LOG_WARN: u64 = 10_000;
/// More proxies than this in one chain is a typo.
const MAX_TRUSTED_HOPS: u32 = 32;
const PATTERN_KEYS: [&str; 5] = ["rate_limit", "cache", "session", "lock", "ops"];

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
        let raw: RawRule = match marked_yaml::from_node(body) {
            Ok(r) => r,
            Err(e) => {
                // marked-yaml places an unknown field at its enclosing mapping; the key
                // itself is a better place to point at.
                let key_span = match &*e {
                    marked_yaml::Error::UnknownFieldError(field, _, _) => find_key(body, field),
                    _ => None,
                };
                let l = key_span
                    .map(|s| loc(path, s))
                    .or_else(|| {
                        e.start_mark()
                            .map(|m| Location::new(path, m.line(), m.column()))
                    })
                    .unwrap_or_else(|| loc(path, body.span()));
                self.err(&l, format!("rule `{name}`: {}", serde_message(&e)));
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
        } else if let Some(ops) = &raw.ops {
            let (plugin, op) = (ops.plugin.trim(), ops.op.trim());
            if plugin.is_empty() || op.is_empty() {
                self.err(&loc(path, ops.span()), "`ops` needs `plugin` and `op`");
                return None;
            }
            RuleKind::Ops(Ops {
                plugin: plugin.to_string(),
                op: op.to_string(),
                location: loc(path, ops.plugin.span()),
            })
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

    fn rate_limit(
        &mut self,
        path: &Path,
        rule: &str,
        rl: &Spanned<RawRateLimit>,
        body: &Node,
    ) -> Option<RateLimit> {
        let before = self.error_count();
        let block_loc = loc(path, rl.span());
        let inline_given = rl.algorithm.is_some()
            || rl.limit.is_some()
            || rl.window.is_some()
            || rl.burst.is_some()
            || rl.lease.is_some();

        let mut limits = Vec::new();
        let plugin = rl
            .plugin
            .as_ref()
            .map(|p| self.plugin_ref(path, "rate_limit", p, body));
        match (&rl.limits, inline_given) {
            _ if plugin.is_some() => {
                if inline_given || rl.limits.is_some() {
                    self.err(
                        &block_loc,
                        format!("rule `{rule}`: with a `plugin`, the plugin decides the limits; move the rule's own limit to `fallback`"),
                    );
                }
            }
            (Some(list), true) => {
                self.err(
                    &loc(path, list.span()),
                    format!("rule `{rule}`: write either one inline limit (`algorithm`, `limit`, `window`…) or a `limits` list, not both"),
                );
            }
            (Some(list), false) => {
                if list.is_empty() {
                    self.err(
                        &loc(path, list.span()),
                        format!("rule `{rule}`: `limits` is empty"),
                    );
                }
                for item in list.iter() {
                    let raw = &**item;
                    if let Some(l) = self.limit(path, rule, &loc(path, item.span()), raw) {
                        limits.push(l);
                    }
                }
            }
            (None, _) => {
                let raw = RawLimitRef {
                    algorithm: rl.algorithm.as_ref(),
                    limit: rl.limit.as_ref(),
                    window: rl.window.as_ref(),
                    burst: rl.burst.as_ref(),
                    lease: rl.lease.as_ref(),
                };
                if let Some(l) = self.limit_ref(path, rule, &block_loc, raw) {
                    limits.push(l);
                }
            }
        }

        if limits.len() > 1 && limits.iter().any(|l| l.algorithm == Algorithm::Concurrency) {
            self.err(
                &block_loc,
                format!("rule `{rule}`: a `concurrency` limit must be the rule's only limit (a lease is released by itself, not together with window limits)"),
            );
        }
        if limits.len() > 16 {
            self.err(
                &block_loc,
                format!("rule `{rule}`: at most 16 limits per rule"),
            );
        }

        let fallback = match (&rl.fallback, &plugin) {
            (None, _) => None,
            (Some(f), None) => {
                self.err(
                    &loc(path, f.span()),
                    format!("rule `{rule}`: `fallback` is only used with a `plugin`"),
                );
                None
            }
            (Some(f), Some(_)) => {
                let l = self.limit(path, rule, &loc(path, f.span()), f);
                if l.as_ref()
                    .is_some_and(|l| l.algorithm == Algorithm::Concurrency)
                {
                    self.err(
                        &loc(path, f.span()),
                        "a `fallback` cannot be a `concurrency` limit",
                    );
                }
                l
            }
        };

        let on_redis_error = match &rl.on_redis_error {
            None => OnRedisError::Allow,
            Some(s) => match s.as_str() {
                "allow" => OnRedisError::Allow,
                "deny" => OnRedisError::Deny,
                other => {
                    self.err(
                        &loc(path, s.span()),
                        format!("`on_redis_error` must be `allow` or `deny`, not `{other}`"),
                    );
                    OnRedisError::Allow
                }
            },
        };

        let id_from = rl.id_from.as_ref().and_then(|f| self.id_from(path, f));

        let shadow = rl.shadow.unwrap_or(false);
        if shadow {
            self.warn(
                &block_loc,
                format!("rule `{rule}` is in shadow mode: it counts but never denies"),
            );
        }

        (self.error_count() == before).then_some(RateLimit {
            limits,
            plugin,
            fallback,
            on_redis_error,
            shadow,
            id_from,
        })
    }

    /// `id_from`: the header, and for `X-Forwarded-For` which of its entries is the client.
    fn id_from(&mut self, path: &Path, f: &super::raw::RawIdFrom) -> Option<IdFrom> {
        let before = self.error_count();
        let h = f.header.trim();
        if h.is_empty() || !h.bytes().all(is_header_char) {
            self.err(
                &loc(path, f.header.span()),
                format!("`id_from.header` must be an HTTP header name, not `{h}`"),
            );
        }
        let header = h.to_ascii_lowercase();
        let xff = header == "x-forwarded-for";
        for (field, span) in [
            ("trusted_hops", f.trusted_hops.as_ref().map(Spanned::span)),
            (
                "trusted_proxies",
                f.trusted_proxies.as_ref().map(Spanned::span),
            ),
        ] {
            if let Some(span) = span
                && !xff
            {
                self.err(
                    &loc(path, span),
                    format!("`id_from.{field}` applies to `header: X-Forwarded-For` only"),
                );
            }
        }
        let forwarded_for = match (&f.trusted_hops, &f.trusted_proxies) {
            _ if !xff => None,
            (Some(_), Some(p)) => {
                self.err(
                    &loc(path, p.span()),
                    "`id_from` takes `trusted_hops` or `trusted_proxies`, not both",
                );
                None
            }
            (Some(n), None) => match u32::try_from(**n) {
                Ok(n @ 1..=MAX_TRUSTED_HOPS) => Some(ForwardedFor::TrustedHops(n)),
                _ => {
                    self.err(
                        &loc(path, n.span()),
                        format!(
                            "`id_from.trusted_hops` must be 1 to {MAX_TRUSTED_HOPS} (the proxies that append to X-Forwarded-For, the one calling patternd included), not {}",
                            **n
                        ),
                    );
                    None
                }
            },
            (None, Some(list)) => {
                let mut nets = Vec::with_capacity(list.len());
                for entry in list.iter() {
                    match parse_net(entry.trim()) {
                        Some(net) => nets.push(net),
                        None => self.err(
                            &loc(path, entry.span()),
                            format!(
                                "`{}` in `id_from.trusted_proxies` is not an IP address or CIDR range (such as 10.0.0.0/8 or 2001:db8::/32)",
                                entry.trim()
                            ),
                        ),
                    }
                }
                if list.is_empty() {
                    self.err(
                        &loc(path, list.span()),
                        "`id_from.trusted_proxies` is empty; list the proxies' addresses or leave it out",
                    );
                }
                Some(ForwardedFor::TrustedProxies(nets))
            }
            // The default: the address the nearest proxy (the gateway) saw.
            (None, None) => Some(ForwardedFor::TrustedHops(1)),
        };
        (self.error_count() == before).then_some(IdFrom {
            header,
            forwarded_for,
        })
    }

    /// `block` is the rule's pattern key (`rate_limit`, `cache`, …) the `plugin` sits under.
    pub(super) fn plugin_ref(
        &mut self,
        path: &Path,
        block: &str,
        p: &Spanned<super::raw::RawPluginRef>,
        body: &Node,
    ) -> PluginRef {
        let name = p.name.trim().to_string();
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
                let name = h.trim().to_ascii_lowercase();
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

    fn limit(&mut self, path: &Path, rule: &str, at: &Location, raw: &RawLimit) -> Option<Limit> {
        let r = RawLimitRef {
            algorithm: raw.algorithm.as_ref(),
            limit: raw.limit.as_ref(),
            window: raw.window.as_ref(),
            burst: raw.burst.as_ref(),
            lease: raw.lease.as_ref(),
        };
        self.limit_ref(path, rule, at, r)
    }

    fn limit_ref(
        &mut self,
        path: &Path,
        rule: &str,
        at: &Location,
        raw: RawLimitRef<'_>,
    ) -> Option<Limit> {
        let before = self.error_count();
        let algorithm = match raw.algorithm {
            None => {
                self.err(
                    at,
                    format!(
                        "rule `{rule}`: missing `algorithm` (one of {})",
                        algorithm_list()
                    ),
                );
                None
            }
            Some(a) => match Algorithm::parse(a.as_str()) {
                Some(alg) => Some(alg),
                None => {
                    self.err(
                        &loc(path, a.span()),
                        format!(
                            "unknown algorithm `{}`; expected one of {}",
                            a.as_str(),
                            algorithm_list()
                        ),
                    );
                    None
                }
            },
        };
        let limit = match raw.limit {
            None => {
                self.err(at, format!("rule `{rule}`: missing `limit`"));
                None
            }
            Some(n) => self.positive(path, "limit", n),
        };
        let burst = raw.burst.and_then(|b| self.positive(path, "burst", b));
        let alg = algorithm?;

        let is_conc = alg == Algorithm::Concurrency;
        let window = if is_conc {
            if let Some(w) = raw.window {
                self.err(
                    &loc(path, w.span()),
                    "`concurrency` takes `lease` (how long a slot is held at most), not `window`",
                );
            }
            match raw.lease {
                None => {
                    self.err(at, format!("rule `{rule}`: `concurrency` needs `lease`, e.g. `lease: 30s`, so a crashed client frees its slot"));
                    None
                }
                Some(l) => self.duration(path, "lease", l),
            }
        } else {
            if let Some(l) = raw.lease {
                self.err(
                    &loc(path, l.span()),
                    format!(
                        "`lease` applies only to `concurrency`, not `{}`",
                        alg.name()
                    ),
                );
            }
            match raw.window {
                None => {
                    self.err(
                        at,
                        format!("rule `{rule}`: missing `window`, e.g. `window: 1m`"),
                    );
                    None
                }
                Some(w) => self.duration(path, "window", w),
            }
        };
        if let Some(b) = raw.burst
            && !matches!(alg, Algorithm::TokenBucket | Algorithm::Gcra)
        {
            self.err(
                &loc(path, b.span()),
                format!(
                    "`burst` applies only to `token_bucket` and `gcra`, not `{}`",
                    alg.name()
                ),
            );
        }
        if self.error_count() != before {
            return None;
        }
        let (limit, window) = (limit?, window?);
        if alg == Algorithm::SlidingLog && limit > SLIDING_LOG_WARN {
            self.warn(at, format!(
                "rule `{rule}`: sliding_log keeps one entry per admitted request, so up to {limit} entries per id; consider sliding_window, which keeps two counters"
            ));
        }
        Some(Limit {
            algorithm: alg,
            limit,
            window,
            burst: burst.unwrap_or(limit),
        })
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
            Ok(d) if d.subsec_nanos() % 1_000_000 != 0 => {
                self.err(
                    &l,
                    format!("`{field}` must be a whole number of milliseconds"),
                );
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

/// Borrowed view of one limit, whether written inline or in a `limits` list.
#[derive(Clone, Copy)]
struct RawLimitRef<'a> {
    algorithm: Option<&'a Spanned<String>>,
    limit: Option<&'a Spanned<i64>>,
    window: Option<&'a Spanned<String>>,
    burst: Option<&'a Spanned<i64>>,
    lease: Option<&'a Spanned<String>>,
}

pub(super) fn loc(path: &Path, span: &marked_yaml::Span) -> Location {
    Location::from_span(path, span)
}

fn algorithm_list() -> String {
    Algorithm::ALL
        .iter()
        .map(|a| a.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_header_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An address (a range of one) or a CIDR range.
fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
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

fn load_error(path: &Path, e: &marked_yaml::LoadError) -> Diagnostic {
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

/// The closest expected name within two edits, for "did you mean" hints on typos.
fn suggest<'a>(given: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|e| (edit_distance(given, e), *e))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A YAML node as JSON. Plain scalars are typed like YAML 1.2's core schema (null, booleans,
/// integers, floats); quoted scalars stay strings.
fn node_to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match node {
        Node::Scalar(s) => {
            let text = s.as_str();
            if !s.may_coerce() {
                return J::String(text.to_string());
            }
            match text {
                "~" | "null" | "Null" | "NULL" | "" => J::Null,
                "true" | "True" | "TRUE" => J::Bool(true),
                "false" | "False" | "FALSE" => J::Bool(false),
                _ => {
                    if let Ok(i) = text.parse::<i64>() {
                        J::from(i)
                    } else if let Some(f) = text
                        .parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .and_then(serde_json::Number::from_f64)
                    {
                        J::Number(f)
                    } else {
                        J::String(text.to_string())
                    }
                }
            }
        }
        Node::Sequence(seq) => J::Array(seq.iter().map(node_to_json).collect()),
        Node::Mapping(map) => J::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_string(), node_to_json(v)))
                .collect(),
        ),
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
