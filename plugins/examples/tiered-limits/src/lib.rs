//! tiered-limits: a patternd plugin that picks a request's rate limit from a tier header.
//!
//! Config (the rule's `plugin.config`, as JSON):
//!
//! ```json
//! { "header": "X-Tier",
//!   "tiers": { "free": { "limit": 2, "window": "1m" }, "pro": { "limit": 5, "window": "1m" } },
//!   "default": "free" }
//! ```
//!
//! A request whose header names a known tier is counted against that tier's limit; a missing
//! or unknown tier gets `default`. The tier is the limit's key suffix, so each tier has its own
//! counter and moving an id to another tier starts it afresh.

// wit-bindgen's generated glue lowers a request as 14 scalar arguments.
#![allow(clippy::too_many_arguments)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use patternd::plugin::host::{Level, log};
// The world `use`s request, session and the decision types, so they are in scope already.
use patternd::plugin::types::{Algorithm, Limit};

/// The config as written in the policy.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    header: String,
    tiers: BTreeMap<String, RawTier>,
    default: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    limit: u64,
    window: String,
}

/// The config, checked and ready for requests.
struct Config {
    /// Lowercase, because the host passes header names lowercase.
    header: String,
    tiers: BTreeMap<String, Tier>,
    default: String,
}

struct Tier {
    limit: u64,
    window_ms: u64,
}

/// Set once by `init`: the host calls `init` on every new instance before any hook.
static CONFIG: OnceLock<Config> = OnceLock::new();

struct TieredLimits;

impl Guest for TieredLimits {
    fn init(config: String) -> Result<(), String> {
        let cfg = parse_config(&config)?;
        log(
            Level::Debug,
            &format!(
                "tiers: {}",
                cfg.tiers.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
        // A second `init` on the same instance would be a host bug; keep the first config.
        let _ = CONFIG.set(cfg);
        Ok(())
    }

    fn rate_limit(req: Request) -> RateLimitDecision {
        let Some(cfg) = CONFIG.get() else {
            return RateLimitDecision::Deny("tiered-limits: not initialized".into());
        };
        let asked = req
            .headers
            .iter()
            .find(|h| h.name == cfg.header)
            .map(|h| h.value.trim());
        let (name, tier) = match asked.and_then(|t| cfg.tiers.get_key_value(t)) {
            Some(found) => found,
            None => match cfg.tiers.get_key_value(&cfg.default) {
                Some(found) => found,
                // parse_config guarantees the default exists.
                None => return RateLimitDecision::Deny("tiered-limits: no default tier".into()),
            },
        };
        RateLimitDecision::Check(vec![Limit {
            key_suffix: name.clone(),
            cost: req.cost,
            limit: tier.limit,
            window_ms: tier.window_ms,
            burst: None,
            algorithm: Algorithm::FixedWindow,
        }])
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

export!(TieredLimits);

fn parse_config(text: &str) -> Result<Config, String> {
    let raw: RawConfig =
        serde_json::from_str(text).map_err(|e| format!("tiered-limits config: {e}"))?;
    if raw.header.is_empty() {
        return Err("tiered-limits config: `header` is empty".into());
    }
    if raw.tiers.is_empty() {
        return Err("tiered-limits config: `tiers` needs at least one tier".into());
    }
    let mut tiers = BTreeMap::new();
    for (name, t) in raw.tiers {
        // The tier becomes the key suffix, which the host only accepts in this shape.
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "tiered-limits config: tier `{name}`: use 1 to 64 letters, digits, `-`, `_` or `.`"
            ));
        }
        if t.limit == 0 {
            return Err(format!(
                "tiered-limits config: tier `{name}`: `limit` must be at least 1"
            ));
        }
        let window_ms = parse_window(&t.window).ok_or_else(|| {
            format!(
                "tiered-limits config: tier `{name}`: window `{}` is not a duration such as 500ms, 30s, 1m, 1h or 1d",
                t.window
            )
        })?;
        tiers.insert(
            name,
            Tier {
                limit: t.limit,
                window_ms,
            },
        );
    }
    if !tiers.contains_key(&raw.default) {
        return Err(format!(
            "tiered-limits config: `default` is `{}`, which is not one of the tiers",
            raw.default
        ));
    }
    Ok(Config {
        header: raw.header.to_ascii_lowercase(),
        tiers,
        default: raw.default,
    })
}

/// `250ms`, `30s`, `1m`, `1h`, `1d` → milliseconds (positive, at most a year).
fn parse_window(s: &str) -> Option<u64> {
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
    let ms = n.checked_mul(unit_ms)?;
    (ms > 0 && ms <= 366 * 86_400_000).then_some(ms)
}
