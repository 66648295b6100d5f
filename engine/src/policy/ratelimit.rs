//! `rate_limit:` rules: what the YAML may say, the validated model, and the checks between.
//!
//! A rule holds one limit written inline (`algorithm`, `limit`, `window`, …), several under
//! `limits` (checked together in one script, a denial charges none), or a `plugin` that picks
//! the limits per request (with an optional `fallback` for when it fails). `id_from` says where
//! forward-auth (`GET`) requests take the entity id from.

use std::path::Path;
use std::time::Duration;

use marked_yaml::{Node, Spanned};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::diagnostic::Location;
use super::ir::PluginRef;
use super::raw::{DurationText, RawPluginRef};
use super::validate::{Validator, loc};

/// sliding_log keeps one sorted-set entry per admitted unit; past this, warn about memory.
const SLIDING_LOG_WARN: u64 = 10_000;
/// More proxies than this in one chain is a typo.
const MAX_TRUSTED_HOPS: u32 = 32;

/// A rate-limiting rule: either one limit written inline (`algorithm`, `limit`, `window`, …)
/// or several under `limits`, checked together in one atomic script.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    #[serde(default)]
    #[schemars(with = "Option<AlgorithmName>")]
    pub algorithm: Option<Spanned<String>>,
    /// Requests (or cost units) per `window`; for `concurrency`, requests in flight.
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub limit: Option<Spanned<i64>>,
    /// Window length, e.g. `1s`, `1m`, `1h`, `1d`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub window: Option<Spanned<String>>,
    /// token_bucket and gcra: how many requests a fresh id may make at once (default `limit`).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub burst: Option<Spanned<i64>>,
    /// concurrency: how long a lease lives if never released (a crashed client frees its slot).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub lease: Option<Spanned<String>>,
    /// Several limits checked in one script; a denial charges none of them.
    #[serde(default)]
    #[schemars(with = "Option<Vec<RawLimit>>")]
    pub limits: Option<Spanned<Vec<Spanned<RawLimit>>>>,
    /// What to answer when Redis cannot be reached in time: `allow` (default) or `deny`.
    #[serde(default)]
    #[schemars(with = "Option<OnRedisErrorName>")]
    pub on_redis_error: Option<Spanned<String>>,
    /// Evaluate and count, but always allow (to try a limit on live traffic).
    #[serde(default)]
    pub shadow: Option<bool>,
    /// Answer an id Redis has just denied from this engine's memory until its retry time,
    /// without asking Redis (a rule with one `fixed_window`, `sliding_window` or `gcra` limit).
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub deny_cache: Option<Spanned<bool>>,
    /// Where `GET` (forward-auth) requests take the entity id from.
    #[serde(default)]
    #[schemars(with = "Option<RawIdFrom>")]
    pub id_from: Option<Spanned<RawIdFrom>>,
    /// A plugin whose `rate-limit` hook decides the limits per request.
    #[serde(default)]
    #[schemars(with = "Option<RawPluginRef>")]
    pub plugin: Option<Spanned<RawPluginRef>>,
    /// The limit used when the plugin fails (without one, a failing plugin answers 502).
    #[serde(default)]
    #[schemars(with = "Option<RawLimit>")]
    pub fallback: Option<Spanned<RawLimit>>,
}

/// One limit inside `limits`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    #[serde(default)]
    #[schemars(with = "Option<AlgorithmName>")]
    pub algorithm: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub limit: Option<Spanned<i64>>,
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub window: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub burst: Option<Spanned<i64>>,
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub lease: Option<Spanned<String>>,
}

/// The id source for forward-auth requests.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIdFrom {
    /// Request header holding the id. `X-Forwarded-For` is read as a list of addresses, right
    /// to left (see `trusted_hops` and `trusted_proxies`); any other header is the id as is.
    #[schemars(with = "String")]
    pub header: Spanned<String>,
    /// `X-Forwarded-For` only: how many proxies in front of patternd append to the header,
    /// counting the gateway that calls patternd. The id is the address that many entries from
    /// the right (default 1: the address the nearest proxy saw).
    #[serde(default)]
    #[schemars(with = "Option<u32>", range(min = 1, max = 32))]
    pub trusted_hops: Option<Spanned<i64>>,
    /// `X-Forwarded-For` only: addresses or CIDR ranges of trusted proxies. The id is the
    /// rightmost address not in them (the leftmost when all are).
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Schema-only: the algorithm names.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum AlgorithmName {
    FixedWindow,
    SlidingWindow,
    SlidingLog,
    TokenBucket,
    Gcra,
    Concurrency,
}

/// Schema-only: the `on_redis_error` values.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "OnRedisError")] // the schema's name, kept apart from the IR enum's
#[allow(dead_code)]
pub enum OnRedisErrorName {
    Allow,
    Deny,
}

/// A validated `rate_limit` rule.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// At least one, unless a plugin decides. Checked together in one script; a denial
    /// charges none.
    pub limits: Vec<Limit>,
    /// The plugin deciding the limits per request.
    pub plugin: Option<PluginRef>,
    /// Used when the plugin fails.
    pub fallback: Option<Limit>,
    pub on_redis_error: OnRedisError,
    pub shadow: bool,
    pub id_from: Option<IdFrom>,
    /// Denials answered locally until their retry time (`docs/ratelimit.md`, "Deny cache").
    pub deny_cache: bool,
}

impl RateLimit {
    /// The largest cost a single request can ever be allowed: anything above it is refused as
    /// bad input instead of being denied forever.
    pub fn max_cost(&self) -> u64 {
        self.limits.iter().map(Limit::capacity).min().unwrap_or(0)
    }

    pub fn is_concurrency(&self) -> bool {
        self.limits
            .iter()
            .any(|l| l.algorithm == Algorithm::Concurrency)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub algorithm: Algorithm,
    /// Requests (cost units) per window, or in flight for `concurrency`.
    pub limit: u64,
    /// The window; for `concurrency`, the lease duration.
    pub window: Duration,
    /// Capacity of token_bucket and gcra; equal to `limit` elsewhere.
    pub burst: u64,
}

impl Limit {
    /// How much one request could take at most from an empty state.
    pub fn capacity(&self) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket | Algorithm::Gcra => self.burst,
            _ => self.limit,
        }
    }

    pub fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    FixedWindow,
    SlidingWindow,
    SlidingLog,
    TokenBucket,
    Gcra,
    Concurrency,
}

impl Algorithm {
    pub const ALL: [Algorithm; 6] = [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::SlidingLog,
        Algorithm::TokenBucket,
        Algorithm::Gcra,
        Algorithm::Concurrency,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::Gcra => "gcra",
            Algorithm::Concurrency => "concurrency",
        }
    }

    /// A short code used in key suffixes, so that changing a limit's algorithm on reload
    /// starts a fresh key instead of hitting a key of another Redis type (WRONGTYPE). A
    /// code changes with the meaning of its key's contents, so an upgrade never misreads a
    /// key written by an older release: `sl` (one member per unit of cost) became `wl`
    /// (weighted log, one member per request), `cc` became `cl` (one member per lease).
    pub fn key_code(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fw",
            Algorithm::SlidingWindow => "sw",
            Algorithm::SlidingLog => "wl",
            Algorithm::TokenBucket => "tb",
            Algorithm::Gcra => "gc",
            Algorithm::Concurrency => "cl",
        }
    }

    pub fn parse(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdFrom {
    /// Lowercased header name.
    pub header: String,
    /// Set exactly when the header is `x-forwarded-for`: which of its addresses is the client.
    pub forwarded_for: Option<ForwardedFor>,
}

/// How the client's entry of `X-Forwarded-For` is found. Entries are read from the right:
/// each proxy appends the address it saw, so only the rightmost entries were written by
/// proxies we trust; everything to their left came from the client and may be forged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardedFor {
    /// The entry this many places from the right (1 = the rightmost, the address the
    /// nearest proxy saw); the leftmost when the header has fewer entries.
    TrustedHops(u32),
    /// The rightmost entry that is not one of these proxies; the leftmost when all are.
    TrustedProxies(Vec<ipnet::IpNet>),
}

impl Validator {
    pub(super) fn rate_limit(
        &mut self,
        path: &Path,
        rule: &str,
        rl: &Spanned<RawRateLimit>,
        body: &Node,
    ) -> Option<RateLimit> {
        let before = self.error_count();
        let block_loc = loc(path, rl.span());
        let inline = RawLimitRef::inline(rl);
        let inline_given = !inline.is_empty();

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
                    if let Some(l) = self.limit(path, rule, &loc(path, item.span()), item.into()) {
                        limits.push(l);
                    }
                }
            }
            (None, _) => {
                if let Some(l) = self.limit(path, rule, &block_loc, inline) {
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
                let l = self.limit(path, rule, &loc(path, f.span()), f.into());
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

        let deny_cache = match &rl.deny_cache {
            Some(d) if **d => {
                // Exact only where no capacity returns before the retry time Redis named:
                // see `patterns::ratelimit::DenyCache`.
                let exact = matches!(
                    limits.as_slice(),
                    [l] if matches!(
                        l.algorithm,
                        Algorithm::FixedWindow | Algorithm::SlidingWindow | Algorithm::Gcra
                    )
                );
                if plugin.is_some() || !exact {
                    self.err(
                        &loc(path, d.span()),
                        format!("rule `{rule}`: `deny_cache` needs exactly one `fixed_window`, `sliding_window` or `gcra` limit and no plugin (elsewhere capacity can come back before the retry time, so a cached denial could be wrong)"),
                    );
                }
                if shadow {
                    self.err(
                        &loc(path, d.span()),
                        format!("rule `{rule}`: a shadow rule never denies, so `deny_cache` has nothing to cache"),
                    );
                }
                true
            }
            _ => false,
        };

        (self.error_count() == before).then_some(RateLimit {
            limits,
            plugin,
            fallback,
            on_redis_error,
            shadow,
            id_from,
            deny_cache,
        })
    }

    /// `id_from`: the header, and for `X-Forwarded-For` which of its entries is the client.
    fn id_from(&mut self, path: &Path, f: &RawIdFrom) -> Option<IdFrom> {
        let before = self.error_count();
        let h = f.header.as_str();
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

    /// One limit, inline or from a list: `at` is where a missing field is reported.
    fn limit(
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

impl<'a> RawLimitRef<'a> {
    /// The limit written inline in the `rate_limit` block (all fields absent if none is).
    fn inline(rl: &'a RawRateLimit) -> Self {
        Self {
            algorithm: rl.algorithm.as_ref(),
            limit: rl.limit.as_ref(),
            window: rl.window.as_ref(),
            burst: rl.burst.as_ref(),
            lease: rl.lease.as_ref(),
        }
    }

    fn is_empty(&self) -> bool {
        self.algorithm.is_none()
            && self.limit.is_none()
            && self.window.is_none()
            && self.burst.is_none()
            && self.lease.is_none()
    }
}

impl<'a> From<&'a Spanned<RawLimit>> for RawLimitRef<'a> {
    fn from(raw: &'a Spanned<RawLimit>) -> Self {
        Self {
            algorithm: raw.algorithm.as_ref(),
            limit: raw.limit.as_ref(),
            window: raw.window.as_ref(),
            burst: raw.burst.as_ref(),
            lease: raw.lease.as_ref(),
        }
    }
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
