//! job-gate: a patternd plugin with a queue hook, which looks at each pushed job before it is
//! stored and rejects it, delays it, raises its priority or gives it a dedup id.
//!
//! Config (the rule's `plugin.config`, as JSON; every field optional):
//!
//! ```json
//! { "require": ["to"],
//!   "delays": { "digest": "1m" },
//!   "urgent_header": "X-Urgent",
//!   "dedup_field": "order" }
//! ```
//!
//! - a payload that is not a JSON object, or lacks a `require`d field, is rejected (422);
//! - a payload whose `kind` is a key of `delays` is delayed that long;
//! - a push whose `urgent_header` is `1` gets priority 9;
//! - a payload with a `dedup_field` gets the dedup id `<field>-<value>`, so the same order
//!   pushed twice within the rule's `dedup_window` is one job.
//!
//! What it does not choose (no delay, no priority, no dedup id) keeps what the push asked for.
//! Its other hooks are neutral: it targets the world `plugin-queue`, which has them all.

// wit-bindgen's generated glue lowers a request as 14 scalar arguments.
#![allow(clippy::too_many_arguments)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

wit_bindgen::generate!({ path: "../../wit", world: "plugin-queue" });

use patternd::plugin::types::QueueChoice;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    require: Vec<String>,
    #[serde(default)]
    delays: BTreeMap<String, String>,
    #[serde(default)]
    urgent_header: Option<String>,
    #[serde(default)]
    dedup_field: Option<String>,
}

struct Config {
    require: Vec<String>,
    delays: BTreeMap<String, u64>,
    /// Lowercase, because the host passes header names lowercase.
    urgent_header: Option<String>,
    dedup_field: Option<String>,
}

/// Set once by `init`: the host calls `init` on every new instance before any hook.
static CONFIG: OnceLock<Config> = OnceLock::new();

struct JobGate;

impl Guest for JobGate {
    fn init(config: String) -> Result<(), String> {
        let _ = CONFIG.set(parse_config(&config)?);
        Ok(())
    }

    fn queue(req: Request, payload: String) -> QueueDecision {
        let Some(cfg) = CONFIG.get() else {
            return QueueDecision::Reject("job-gate: not initialized".into());
        };
        let Ok(Value::Object(job)) = serde_json::from_str::<Value>(&payload) else {
            return QueueDecision::Reject("a job must be a JSON object".into());
        };
        if let Some(missing) = cfg.require.iter().find(|f| !job.contains_key(*f)) {
            return QueueDecision::Reject(format!("a job needs `{missing}`"));
        }
        let delay_ms = job
            .get("kind")
            .and_then(Value::as_str)
            .and_then(|k| cfg.delays.get(k))
            .copied();
        let urgent = cfg.urgent_header.as_ref().is_some_and(|name| {
            req.headers
                .iter()
                .any(|h| &h.name == name && h.value.trim() == "1")
        });
        let dedup_id = cfg.dedup_field.as_ref().and_then(|f| {
            let v = match job.get(f)? {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            // The host accepts only `A-Z a-z 0-9 . _ : -`, at most 256 bytes.
            let id = format!("{f}-{v}");
            let ok = id.len() <= 256
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
            ok.then_some(id)
        });
        QueueDecision::Accept(QueueChoice {
            delay_ms,
            priority: urgent.then_some(9),
            dedup_id,
        })
    }

    fn rate_limit(_req: Request) -> RateLimitDecision {
        RateLimitDecision::Skip
    }

    fn cache(_req: Request) -> CacheDecision {
        CacheDecision {
            key: None,
            ttl_ms: None,
            bypass: false,
            tags: Vec::new(),
        }
    }

    fn session(_req: Request, _s: Session) -> SessionDecision {
        SessionDecision::Allow
    }
}

export!(JobGate);

fn parse_config(text: &str) -> Result<Config, String> {
    let raw: RawConfig = match text.trim() {
        "null" => RawConfig::default(),
        _ => serde_json::from_str(text).map_err(|e| format!("job-gate config: {e}"))?,
    };
    let mut delays = BTreeMap::new();
    for (kind, d) in raw.delays {
        let ms = parse_duration(&d).ok_or_else(|| {
            format!("job-gate config: delay of `{kind}`: `{d}` is not a duration such as 30s or 5m")
        })?;
        delays.insert(kind, ms);
    }
    Ok(Config {
        require: raw.require,
        delays,
        urgent_header: raw.urgent_header.map(|h| h.to_ascii_lowercase()),
        dedup_field: raw.dedup_field,
    })
}

/// `250ms`, `30s`, `1m`, `1h`, `1d` → milliseconds.
fn parse_duration(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms)
}
