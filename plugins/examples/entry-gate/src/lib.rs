//! entry-gate: a patternd plugin with a stream hook, which checks each entry appended to a
//! `stream` rule before anything is stored.
//!
//! Config (the rule's `plugin.config`, as JSON; every field optional):
//!
//! ```json
//! { "require": ["type"], "types": ["click", "view"], "source_header": "X-Source" }
//! ```
//!
//! - an entry that is not a JSON object, lacks a `require`d field, or has a `type` not among
//!   `types` (when given) is rejected, and with it the whole append (422);
//! - with `source_header`, an append without that header is rejected.
//!
//! Its other hooks are neutral: it targets the world `plugin-stream`, which has them all.

// wit-bindgen's generated glue lowers a request as 14 scalar arguments.
#![allow(clippy::too_many_arguments)]

use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

wit_bindgen::generate!({ path: "../../wit", world: "plugin-stream" });

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    require: Vec<String>,
    #[serde(default)]
    types: Option<Vec<String>>,
    #[serde(default)]
    source_header: Option<String>,
}

/// Set once by `init`: the host calls `init` on every new instance before any hook.
static CONFIG: OnceLock<Config> = OnceLock::new();

struct EntryGate;

impl Guest for EntryGate {
    fn init(config: String) -> Result<(), String> {
        let mut cfg: Config = match config.trim() {
            "null" => Config::default(),
            text => serde_json::from_str(text).map_err(|e| format!("entry-gate config: {e}"))?,
        };
        // The host passes header names lowercase.
        cfg.source_header = cfg.source_header.map(|h| h.to_ascii_lowercase());
        let _ = CONFIG.set(cfg);
        Ok(())
    }

    fn stream(req: Request, entry: String) -> StreamDecision {
        let Some(cfg) = CONFIG.get() else {
            return StreamDecision::Reject("entry-gate: not initialized".into());
        };
        if let Some(h) = &cfg.source_header
            && !req.headers.iter().any(|x| &x.name == h)
        {
            return StreamDecision::Reject(format!("an append needs the `{h}` header"));
        }
        let Ok(Value::Object(entry)) = serde_json::from_str::<Value>(&entry) else {
            return StreamDecision::Reject("an entry must be a JSON object".into());
        };
        if let Some(missing) = cfg.require.iter().find(|f| !entry.contains_key(*f)) {
            return StreamDecision::Reject(format!("an entry needs `{missing}`"));
        }
        if let Some(types) = &cfg.types {
            let t = entry.get("type").and_then(Value::as_str).unwrap_or("");
            if !types.iter().any(|x| x == t) {
                return StreamDecision::Reject(format!("unknown type `{t}`"));
            }
        }
        StreamDecision::Accept
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

export!(EntryGate);
