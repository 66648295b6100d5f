//! The doctor's report: what `GET /admin/doctor` answers as JSON and `patternd doctor` prints
//! as text (`text.rs`). The dashboard (`/admin/ui`) renders this shape, so its field names
//! are an API: add fields, never rename them.

use serde::Serialize;
use utoipa::ToSchema;

/// A check's outcome, worst last (the order `max` relies on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One finding: what was looked at, what was seen, and what to do.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Check {
    /// Stable identifier: `eviction`, `maxmemory`, `memory-used`, `fragmentation`,
    /// `persistence`, `replication`, `slowlog`, `latency`, `busy-script`, `version`, `modules`,
    /// `reach`; per rule `keys-without-ttl`, `big-keys`, `sample`.
    pub id: String,
    pub status: Status,
    pub title: String,
    /// What was seen, with the numbers.
    pub evidence: String,
    /// What to do; absent when the check is ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// `app/rule`, for a per-rule check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// `host:port` of the server the check ran on, on a cluster (every primary is checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Check {
    pub fn ok(id: &str, title: &str, evidence: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            status: Status::Ok,
            title: title.into(),
            evidence: evidence.into(),
            fix: None,
            rule: None,
            node: None,
        }
    }

    pub fn warn(
        id: &str,
        title: &str,
        evidence: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Warn,
            fix: Some(fix.into()),
            ..Self::ok(id, title, evidence)
        }
    }

    pub fn fail(
        id: &str,
        title: &str,
        evidence: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Fail,
            fix: Some(fix.into()),
            ..Self::ok(id, title, evidence)
        }
    }

    pub fn for_rule(mut self, rule: &str) -> Self {
        self.rule = Some(rule.into());
        self
    }

    pub fn on_node(mut self, node: Option<&str>) -> Self {
        self.node = node.map(Into::into);
        self
    }
}

/// One rule's keys, as sampled (`keys.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RuleKeys {
    /// `app/rule`.
    pub rule: String,
    pub pattern: String,
    /// The namespace every key of the rule starts with (`app:pattern:rule:`).
    pub prefix: String,
    /// What eviction may do to the rule's keys (`usage.rs`): `evictable`, `tolerant`,
    /// `keep`, `keep-no-ttl`, `no-keys`, `unknown`.
    pub eviction: String,
    /// Keys in the namespace: counted when the bounded SCAN finished (`keys_exact`), else
    /// estimated from the share of the keyspace it covered.
    pub keys: u64,
    pub keys_exact: bool,
    /// Keys whose TYPE, PTTL and MEMORY USAGE were read.
    pub sampled: u64,
    /// Bytes: the sampled keys' mean times `keys`.
    pub memory_bytes: u64,
    /// Sampled keys without a TTL that the key layout does not declare TTL-less.
    pub no_ttl: Vec<String>,
    /// The largest sampled keys, largest first (at most 5).
    pub biggest: Vec<KeySize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct KeySize {
    pub key: String,
    pub bytes: u64,
    #[serde(rename = "type")]
    pub kind: String,
    /// Remaining TTL in ms; absent when the key has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// The servers, in sum (one server: its own figures).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RedisSummary {
    /// The lowest version among the servers.
    pub version: String,
    /// `standalone` or `cluster`.
    pub mode: String,
    /// Bytes, summed over the servers.
    pub used_memory: u64,
    /// Bytes, summed; 0 when any server has none (no limit).
    pub maxmemory: u64,
    pub maxmemory_policy: String,
    pub nodes: Vec<NodeSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct NodeSummary {
    pub addr: String,
    pub version: String,
    pub role: String,
    pub used_memory: u64,
    pub maxmemory: u64,
    pub maxmemory_policy: String,
    pub mem_fragmentation_ratio: f64,
    pub connected_replicas: u64,
    pub aof_enabled: bool,
    pub keys: u64,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Report {
    /// The worst status of any check.
    pub status: Status,
    /// The Redis URL without its password.
    pub target: String,
    pub checks: Vec<Check>,
    pub rules: Vec<RuleKeys>,
    pub redis: RedisSummary,
}

impl Report {
    pub fn new(
        target: String,
        checks: Vec<Check>,
        rules: Vec<RuleKeys>,
        redis: RedisSummary,
    ) -> Self {
        let status = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
        Self {
            status,
            target,
            checks,
            rules,
            redis,
        }
    }

    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }
}
