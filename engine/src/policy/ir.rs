//! The validated policy model (IR): typed, defaults applied, nothing left to check.
//!
//! Everything downstream (compiler, runtime, admin API) reads only this. If a value is here,
//! it is valid: limits are positive, durations are whole milliseconds within range, names
//! are safe to use in keys and URLs.
//!
//! This file holds what every pattern shares: the policy, its apps and rules, the rule kind
//! and the plugin reference. Each pattern's own model sits with its raw form and its checks in
//! `policy/<pattern>.rs` (`ratelimit.rs`, `cache.rs`, `session.rs`, `lock.rs`, `ops.rs`, `queue.rs`, `counter.rs`, …).

use indexmap::IndexMap;

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
    RateLimit(super::ratelimit::RateLimit),
    Cache(super::cache::Cache),
    Session(super::session::Session),
    Lock(super::lock::Lock),
    Ops(super::ops::Ops),
    Queue(super::queue::Queue),
    Stream(super::stream::Stream),
    PubSub(super::pubsub::PubSub),
    Counter(super::counter::Counter),
    Leaderboard(super::leaderboard::Leaderboard),
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
            RuleKind::Queue(_) => "queue",
            RuleKind::Stream(_) => "stream",
            RuleKind::PubSub(_) => "pubsub",
            RuleKind::Counter(_) => "counter",
            RuleKind::Leaderboard(_) => "leaderboard",
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
