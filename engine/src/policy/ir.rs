//! The validated policy model (IR): typed, defaults applied, nothing left to check.
//!
//! Everything downstream (compiler, runtime, admin API) reads only this. If a value is here,
//! it is valid: limits are positive, durations are whole milliseconds within range, names
//! are safe to use in keys and URLs.

use std::time::Duration;

use indexmap::IndexMap;
use serde::Serialize;

use super::diagnostic::Location;

/// All loaded apps, in load order.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub apps: IndexMap<String, App>,
}

impl Policy {
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.apps.values().flat_map(|a| a.rules.values())
    }
}

#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub location: Location,
    pub rules: IndexMap<String, Rule>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub app: String,
    pub name: String,
    pub description: Option<String>,
    pub location: Location,
    pub kind: RuleKind,
}

#[derive(Debug, Clone)]
pub enum RuleKind {
    RateLimit(RateLimit),
    Cache(super::cache::Cache),
    Session(super::session::Session),
    Lock(super::lock::Lock),
    Ops(Ops),
}

impl RuleKind {
    /// The pattern name used in URLs, keys and metrics.
    pub fn pattern(&self) -> &'static str {
        match self {
            RuleKind::RateLimit(_) => "ratelimit",
            RuleKind::Cache(_) => "cache",
            RuleKind::Session(_) => "session",
            RuleKind::Lock(_) => "lock",
            RuleKind::Ops(_) => "ops",
        }
    }
}

/// A plugin named by a rule.
#[derive(Debug, Clone)]
pub struct PluginRef {
    pub name: String,
    /// The rule's `plugin.config`, as JSON (YAML scalars typed as YAML would type them).
    pub config: serde_json::Value,
    /// JSON body fields exposed to the plugin.
    pub fields: Vec<String>,
    /// Request headers the plugin sees, lowercase; `None`: all of them.
    pub headers: Option<Vec<String>>,
    pub location: Location,
}

/// A Redis-side operation of a Lua plugin, as a rule.
#[derive(Debug, Clone)]
pub struct Ops {
    pub plugin: String,
    pub op: String,
    pub location: Location,
}

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
