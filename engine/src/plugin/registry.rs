//! The plugin set: every plugin of the plugins directory, loaded and checked together, and
//! bindings of a plugin to a rule's config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::decision::{
    CacheDecision, LeaderboardDecision, PubSubDecision, QueueDecision, RateLimitDecision,
    RequestFacts, SessionDecision, SessionFacts, StreamDecision, Submission,
};
use super::lua::{LuaBinding, LuaOpDecl, LuaPlugin};
use super::wasm::{WasmBinding, WasmPlugin};
use super::{Limits, PluginError};
use crate::policy::{Diagnostic, Diagnostics, Location};

/// One loaded plugin.
#[derive(Debug, Clone)]
pub enum Plugin {
    Lua(Arc<LuaPlugin>),
    Wasm(Arc<WasmPlugin>),
}

impl Plugin {
    pub fn kind(&self) -> &'static str {
        match self {
            Plugin::Lua(_) => "lua",
            Plugin::Wasm(_) => "wasm",
        }
    }

    pub fn hooks(&self) -> Vec<&'static str> {
        match self {
            Plugin::Lua(p) => p.hooks.clone(),
            // A component that type-checks against the world exports all of them, and `queue`
            // (`pubsub`, `stream`, `leaderboard`) when it targets `plugin-queue`
            // (`plugin-pubsub`, `plugin-stream`, `plugin-leaderboard`).
            Plugin::Wasm(p) => p.hooks(),
        }
    }

    /// Redis-side operations the plugin declares (Lua plugins only).
    pub fn ops(&self) -> &[LuaOpDecl] {
        match self {
            Plugin::Lua(p) => &p.ops,
            Plugin::Wasm(_) => &[],
        }
    }

    /// Binds the plugin to one rule's config (calls `init`).
    pub fn bind(&self, config: serde_json::Value) -> Result<PluginBinding, PluginError> {
        match self {
            Plugin::Lua(p) => p.bind(config).map(PluginBinding::Lua),
            Plugin::Wasm(p) => p.bind(config).map(PluginBinding::Wasm),
        }
    }
}

/// A plugin bound to a rule: warm instances initialized with the rule's config.
pub enum PluginBinding {
    Lua(LuaBinding),
    Wasm(WasmBinding),
}

impl PluginBinding {
    pub fn rate_limit(&self, req: &RequestFacts) -> Result<RateLimitDecision, PluginError> {
        match self {
            PluginBinding::Lua(b) => b.rate_limit(req),
            PluginBinding::Wasm(b) => b.rate_limit(req),
        }
    }

    /// `rate_limit` for a caller done with the facts (the request path): the WASM host moves
    /// them into the guest call instead of copying every string.
    pub fn rate_limit_owned(&self, req: RequestFacts) -> Result<RateLimitDecision, PluginError> {
        match self {
            PluginBinding::Lua(b) => b.rate_limit(&req),
            PluginBinding::Wasm(b) => b.rate_limit_owned(req),
        }
    }

    pub fn cache(&self, req: &RequestFacts) -> Result<CacheDecision, PluginError> {
        match self {
            PluginBinding::Lua(b) => b.cache(req),
            PluginBinding::Wasm(b) => b.cache(req),
        }
    }

    /// The session hook, with the session as read: its user, data, creation time and the
    /// time of its previous touch (both Redis clock, ms since the epoch).
    pub fn session(
        &self,
        req: &RequestFacts,
        s: &SessionFacts<'_>,
    ) -> Result<SessionDecision, PluginError> {
        match self {
            PluginBinding::Lua(b) => b.session(req, s),
            PluginBinding::Wasm(b) => b.session(req, s),
        }
    }

    /// The queue hook, with the job's payload as JSON text; a chosen delay above
    /// `max_delay_ms` (the rule's `max_delay`) is a bad decision.
    pub fn queue(
        &self,
        req: &RequestFacts,
        payload: &str,
        max_delay_ms: u64,
    ) -> Result<QueueDecision, PluginError> {
        match self {
            PluginBinding::Lua(b) => b.queue(req, payload, max_delay_ms),
            PluginBinding::Wasm(b) => b.queue(req, payload, max_delay_ms),
        }
    }

    /// The pubsub hook: may this request publish `message` (text) to `channel`, or subscribe
    /// to it when `message` is `None`?
    pub fn pubsub(
        &self,
        req: &RequestFacts,
        channel: &str,
        message: Option<&str>,
    ) -> Result<PubSubDecision, PluginError> {
        match self {
            PluginBinding::Lua(b) => b.pubsub(req, channel, message),
            PluginBinding::Wasm(b) => b.pubsub(req, channel, message),
        }
    }

    /// The stream hook, for one appended entry (its JSON text).
    pub fn stream(&self, req: &RequestFacts, entry: &str) -> Result<StreamDecision, PluginError> {
        match self {
            PluginBinding::Lua(b) => b.stream(req, entry),
            PluginBinding::Wasm(b) => b.stream(req, entry),
        }
    }

    /// The leaderboard hook, for one submitted score.
    pub fn leaderboard(
        &self,
        req: &RequestFacts,
        s: &Submission,
    ) -> Result<LeaderboardDecision, PluginError> {
        match self {
            PluginBinding::Lua(b) => b.leaderboard(req, s),
            PluginBinding::Wasm(b) => b.leaderboard(req, s),
        }
    }
}

/// Every plugin of a directory, by name (the file name without extension).
#[derive(Debug, Clone, Default)]
pub struct PluginSet {
    pub dir: Option<PathBuf>,
    plugins: BTreeMap<String, (Plugin, PathBuf)>,
    pub limits: Limits,
}

impl PluginSet {
    pub fn empty() -> Self {
        Self::default()
    }

    /// Loads `DIR/NAME.lua` (and `DIR/NAME.wasm`) files. Every failing plugin is a diagnostic;
    /// the set is only returned when all load.
    pub fn load_dir(dir: &Path, limits: Limits) -> Result<Self, Diagnostics> {
        let mut set = PluginSet {
            dir: Some(dir.to_path_buf()),
            plugins: BTreeMap::new(),
            limits,
        };
        let mut diags = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                return Err(Diagnostics(vec![Diagnostic::error(
                    &Location::file_start(dir),
                    format!("cannot read the plugins directory: {e}"),
                )]));
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for path in files {
            let (Some(stem), Some(ext)) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            let at = Location::file_start(&path);
            if !matches!(ext, "lua" | "wasm") {
                continue;
            }
            if !valid_name(stem) {
                diags.push(Diagnostic::error(
                    &at,
                    format!("plugin name `{stem}`: use lowercase letters, digits, `-` or `_`"),
                ));
                continue;
            }
            if set.plugins.contains_key(stem) {
                diags.push(Diagnostic::error(
                    &at,
                    format!("two plugins are named `{stem}` (a .lua and a .wasm?)"),
                ));
                continue;
            }
            let loaded = match ext {
                "lua" => std::fs::read_to_string(&path)
                    .map_err(|e| PluginError::Load {
                        plugin: stem.to_string(),
                        message: e.to_string(),
                    })
                    .and_then(|src| LuaPlugin::load(stem, src, limits))
                    .map(|p| Plugin::Lua(Arc::new(p))),
                _ => WasmPlugin::load(stem, &path, limits).map(|p| Plugin::Wasm(Arc::new(p))),
            };
            match loaded {
                Ok(p) => {
                    set.plugins.insert(stem.to_string(), (p, path));
                }
                Err(e) => diags.push(Diagnostic::error(&at, e.to_string())),
            }
        }
        if diags.is_empty() {
            Ok(set)
        } else {
            Err(Diagnostics(diags))
        }
    }

    pub fn get(&self, name: &str) -> Option<&Plugin> {
        self.plugins.get(name).map(|(p, _)| p)
    }

    pub fn path(&self, name: &str) -> Option<&Path> {
        self.plugins.get(name).map(|(_, p)| p.as_path())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.plugins.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
