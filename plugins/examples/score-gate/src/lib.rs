//! score-gate: a patternd plugin with a leaderboard hook (anti-cheat), which sees each score
//! submitted to a `leaderboard` rule before it is recorded.
//!
//! Config (the rule's `plugin.config`, as JSON; every field optional):
//!
//! ```json
//! { "cap": 5000, "banned": ["mallory"], "client_header": "X-Client", "boards": ["chess"] }
//! ```
//!
//! - with `client_header`, a submit without that header is rejected (422);
//! - a `banned` member, or a board not among `boards` (when given), is rejected;
//! - a score above `cap` is recorded as `cap` (the rule's `max_score` still applies).
//!
//! Its other hooks are neutral: it targets the world `plugin-leaderboard`, which has them all.

// wit-bindgen's generated glue lowers a request as 14 scalar arguments.
#![allow(clippy::too_many_arguments)]

use std::sync::OnceLock;

use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "plugin-leaderboard" });

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    cap: Option<f64>,
    #[serde(default)]
    banned: Vec<String>,
    #[serde(default)]
    client_header: Option<String>,
    #[serde(default)]
    boards: Option<Vec<String>>,
}

/// Set once by `init`: the host calls `init` on every new instance before any hook.
static CONFIG: OnceLock<Config> = OnceLock::new();

struct ScoreGate;

impl Guest for ScoreGate {
    fn init(config: String) -> Result<(), String> {
        let mut cfg: Config = match config.trim() {
            "null" => Config::default(),
            text => serde_json::from_str(text).map_err(|e| format!("score-gate config: {e}"))?,
        };
        // The host passes header names lowercase.
        cfg.client_header = cfg.client_header.map(|h| h.to_ascii_lowercase());
        let _ = CONFIG.set(cfg);
        Ok(())
    }

    fn leaderboard(req: Request, s: Submission) -> LeaderboardDecision {
        let Some(cfg) = CONFIG.get() else {
            return LeaderboardDecision::Reject("score-gate: not initialized".into());
        };
        if let Some(h) = &cfg.client_header
            && !req.headers.iter().any(|x| &x.name == h)
        {
            return LeaderboardDecision::Reject(format!("a submit needs the `{h}` header"));
        }
        if cfg.banned.contains(&s.member) {
            return LeaderboardDecision::Reject(format!("`{}` may not submit scores", s.member));
        }
        if let Some(boards) = &cfg.boards
            && !boards.contains(&s.board)
        {
            return LeaderboardDecision::Reject(format!("no board `{}` here", s.board));
        }
        match cfg.cap {
            Some(cap) if s.score > cap => LeaderboardDecision::Score(cap),
            _ => LeaderboardDecision::Accept,
        }
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

export!(ScoreGate);
