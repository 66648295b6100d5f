//! The doctor: the live Redis checked against the rules in use (issue 15). `patternd doctor`
//! prints it as text, `GET /admin/doctor` answers it as JSON; both call [`examine`].
//!
//! Gathering (here) is apart from judging (one file per concern, each pure and tested on INFO
//! text): `eviction.rs`, `memory.rs`, `persistence.rs`, `replication.rs`, `slowlog.rs` (and
//! the longest script against `busy-reply-threshold`), `latency.rs`, `version.rs` (and
//! modules), `keys.rs` (the bounded per-rule sample). `usage.rs` says what each rule kind asks
//! of Redis; `report.rs` is the answer's shape, `text.rs` its text.
//!
//! Every server check runs on every server: the one server, or each primary of a cluster
//! (`store::admin::nodes`), named in the check's `node`. The doctor opens its own short-lived
//! connections (`store::admin`), never the request pool's, and sends only read-only
//! commands; a rule's keys are sampled, never walked (`keys.rs`).

mod eviction;
pub mod info;
mod keys;
mod latency;
mod memory;
mod persistence;
mod replication;
pub mod report;
mod slowlog;
pub mod text;
pub mod usage;
mod version;

use std::collections::HashMap;
use std::time::Duration;

use crate::runtime::Runtime;
use crate::snapshot::Snapshot;
use crate::store::StoreError;
use crate::store::admin::{self, Node};
use crate::store::connect::RedisTarget;

use info::{Info, Server};
use report::{Check, NodeSummary, RedisSummary, Report};
use slowlog::ScriptUse;
use usage::Usage;

/// The bound on each of the doctor's commands (connections included).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Slow log entries read per server (Redis keeps 128 by default).
const SLOWLOG_ENTRIES: u32 = 128;
/// The settings INFO does not carry.
const CONFIG: [&str; 7] = [
    "maxmemory-policy",
    "appendfsync",
    "save",
    "busy-reply-threshold",
    "lua-time-limit",
    "latency-monitor-threshold",
    "slowlog-log-slower-than",
];

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// No server could be reached (on a cluster: no seed answered CLUSTER SLOTS).
    #[error("could not reach Redis at {target}: {source}")]
    Unreachable {
        target: String,
        #[source]
        source: StoreError,
    },
}

impl DoctorError {
    /// The store failure under it, for the HTTP answer (503 like any outage).
    pub fn into_store(self) -> StoreError {
        match self {
            DoctorError::Unreachable { source, .. } => source,
        }
    }
}

/// The doctor of the running engine: its snapshot, its Redis.
pub async fn examine_runtime(rt: &Runtime) -> Result<Report, DoctorError> {
    examine(&rt.snapshot(), rt.store.target(), COMMAND_TIMEOUT).await
}

/// Checks every server of `target` against the rules of `snapshot`.
pub async fn examine(
    snapshot: &Snapshot,
    target: &RedisTarget,
    timeout: Duration,
) -> Result<Report, DoctorError> {
    let mut nodes =
        admin::nodes(target, timeout)
            .await
            .map_err(|source| DoctorError::Unreachable {
                target: target.redacted().to_owned(),
                source,
            })?;
    let cluster = target.is_cluster();
    let rules: Vec<_> = snapshot.compiled.rules().cloned().collect();
    let usages: Vec<Usage> = rules.iter().map(|r| Usage::of(&r.rule, cluster)).collect();
    let mut scripts: HashMap<String, ScriptUse> = HashMap::new();
    for r in &rules {
        for s in r.scripts() {
            let u = scripts.entry(s.sha.to_ascii_lowercase()).or_default();
            u.name.clone_from(&s.name);
            let name = format!("{}/{}", r.rule.app, r.rule.name);
            if !u.rules.contains(&name) {
                u.rules.push(name);
            }
        }
    }

    let mut checks = Vec::new();
    let mut servers = Vec::new();
    for node in &mut nodes {
        let named = cluster.then(|| node.addr.clone());
        match gather(node).await {
            Ok(s) => {
                checks.extend(
                    server_checks(&s, &usages, &scripts)
                        .into_iter()
                        .map(|c| c.on_node(named.as_deref())),
                );
                servers.push(s);
            }
            Err(e) => checks.push(
                Check::fail(
                    "reach",
                    "The server answers the doctor",
                    format!("INFO failed: {e}"),
                    "check the server is up and the user may run INFO, CONFIG GET, SLOWLOG, \
                     LATENCY, MODULE LIST, SCAN and MEMORY USAGE",
                )
                .on_node(Some(&node.addr)),
            ),
        }
    }

    let mut figures = Vec::new();
    for (rule, usage) in rules.iter().zip(&usages) {
        if !keys::has_keys(usage) {
            continue;
        }
        let mut found = Vec::new();
        for node in &mut nodes {
            match keys::scan(node, rule.keys.prefix()).await {
                Ok(f) => found.push(f),
                Err(e) => checks.push(
                    Check::warn(
                        "sample",
                        "The rule's keys could be sampled",
                        format!("SCAN/MEMORY USAGE failed: {e}"),
                        "allow SCAN, TYPE, PTTL and MEMORY USAGE for the doctor's user",
                    )
                    .for_rule(&usage.rule)
                    .on_node(Some(&node.addr)),
                ),
            }
        }
        let (f, c) = keys::summarize(rule, usage, &found);
        figures.push(f);
        checks.extend(c);
    }
    Ok(Report::new(
        target.redacted().to_owned(),
        checks,
        figures,
        summary(&servers, cluster),
    ))
}

/// Everything the server checks read, from one server. INFO must answer; the rest is best
/// effort (managed services refuse some commands), and a check that lacks its input says so.
async fn gather(node: &mut Node) -> Result<Server, StoreError> {
    let info = Info::parse(&node.info().await?);
    let mut s = Server {
        addr: node.addr.clone(),
        info,
        ..Server::default()
    };
    for name in CONFIG {
        match node.config(name).await {
            Ok(Some(v)) => {
                s.config.insert(name.to_owned(), v);
            }
            Ok(None) => {}
            Err(e) => {
                s.config_error = Some(e.to_string());
                break;
            }
        }
    }
    s.slowlog = node.slowlog(SLOWLOG_ENTRIES).await.unwrap_or_default();
    s.latency = node.latency_latest().await.unwrap_or_default();
    if !s.latency.is_empty() {
        s.latency_doctor = node.latency_doctor().await.unwrap_or_default();
    }
    s.modules = node.modules().await.ok();
    Ok(s)
}

/// The server checks, in the order the report lists them.
fn server_checks(s: &Server, usages: &[Usage], scripts: &HashMap<String, ScriptUse>) -> Vec<Check> {
    let mut out = vec![eviction::check(s.policy(), s.maxmemory(), usages)];
    out.extend(memory::checks(s));
    out.push(persistence::check(s, usages));
    out.push(replication::check(s, usages));
    out.extend(slowlog::checks(s, scripts));
    out.push(latency::check(s));
    out.push(version::check(s, usages));
    out.push(version::modules(s, usages));
    if let Some(e) = &s.config_error {
        out.push(Check::warn(
            "config",
            "Server settings readable (CONFIG GET)",
            format!("CONFIG GET refused ({e}): the persistence, slow log and busy-script checks could not read their settings"),
            "let the doctor's user run CONFIG GET (ACL +config|get), or check those settings by hand",
        ));
    }
    out
}

fn summary(servers: &[Server], cluster: bool) -> RedisSummary {
    let nodes: Vec<NodeSummary> = servers
        .iter()
        .map(|s| NodeSummary {
            addr: s.addr.clone(),
            version: s.info.get("redis_version").unwrap_or("unknown").to_owned(),
            role: s.info.get("role").unwrap_or("unknown").to_owned(),
            used_memory: s.info.u64("used_memory").unwrap_or(0),
            maxmemory: s.maxmemory(),
            maxmemory_policy: s.policy().to_owned(),
            mem_fragmentation_ratio: s.info.f64("mem_fragmentation_ratio").unwrap_or(0.0),
            connected_replicas: s.info.u64("connected_slaves").unwrap_or(0),
            aof_enabled: s.info.get("aof_enabled") == Some("1"),
            keys: s.info.keys(),
        })
        .collect();
    let version = servers
        .iter()
        .filter_map(|s| s.info.version())
        .min()
        .map_or_else(|| "unknown".to_owned(), |v| v.to_string());
    let mut policies: Vec<&str> = nodes.iter().map(|n| n.maxmemory_policy.as_str()).collect();
    policies.dedup();
    RedisSummary {
        version,
        mode: if cluster { "cluster" } else { "standalone" }.to_owned(),
        used_memory: nodes.iter().map(|n| n.used_memory).sum(),
        maxmemory: if nodes.iter().any(|n| n.maxmemory == 0) {
            0
        } else {
            nodes.iter().map(|n| n.maxmemory).sum()
        },
        maxmemory_policy: policies.join(","),
        nodes,
    }
}
