//! Plugins: user code that decides where YAML is not enough.
//!
//! A plugin is a WebAssembly component (`NAME.wasm`, see `plugins/wit/plugin.wit`) or a Lua
//! file (`NAME.lua`) that returns a table of hook functions with the same names and shapes.
//! Hooks get the facts of one request and return a decision; the engine turns the decision
//! into one atomic script call. Plugins never hold a Redis connection (ARCHITECTURE.md,
//! invariant 9).
//!
//! Containment: every call is bounded (instruction budget or fuel, memory cap); a plugin that
//! loops, allocates without bound, traps or returns garbage fails that one call with a
//! `PluginError`, and the rule's `fallback` (or a 5xx) decides. The instance that failed is
//! thrown away, so the next call starts from a clean state.

pub mod decision;
#[cfg(test)]
mod decision_proptest;
pub mod lua;
mod pool;
pub mod registry;
mod wasi;
pub mod wasm;

pub use decision::{
    CacheDecision, DynLimit, LeaderboardDecision, PubSubDecision, QueueChoice, QueueDecision,
    RateLimitDecision, RequestFacts, SessionDecision, SessionFacts, StreamDecision, Submission,
};
pub use registry::{PluginBinding, PluginSet};

use std::time::Duration;

/// Limits applied to every plugin call.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Lua: VM instructions per call. WASM: fuel units per call (about one per wasm
    /// operator); `init` gets ten times as much.
    pub instructions: u64,
    /// Memory one instance may use (WASM: each linear memory).
    pub memory_bytes: usize,
    /// Wall-clock bound per call, where the host can enforce one (WASM epochs, 10 ms ticks).
    pub call_timeout: Duration,
    /// Largest decision accepted (limits, tags, strings), against garbage or floods.
    pub max_output_items: usize,
    pub max_string_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            instructions: 1_000_000,
            memory_bytes: 16 * 1024 * 1024,
            call_timeout: Duration::from_millis(50),
            max_output_items: 16,
            max_string_bytes: 1024,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PluginError {
    #[error("plugin `{plugin}` could not be loaded: {message}")]
    Load { plugin: String, message: String },
    #[error("plugin `{plugin}` refused its config: {message}")]
    Init { plugin: String, message: String },
    #[error("plugin `{plugin}` exceeded its time or instruction budget")]
    Budget { plugin: String },
    #[error("plugin `{plugin}` exceeded its memory limit")]
    Memory { plugin: String },
    #[error("plugin `{plugin}` failed: {message}")]
    Trap { plugin: String, message: String },
    #[error("plugin `{plugin}` returned an invalid decision: {message}")]
    BadOutput { plugin: String, message: String },
    #[error("plugin `{plugin}` does not implement `{hook}`")]
    MissingHook { plugin: String, hook: &'static str },
}

impl PluginError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Load { .. } => "load",
            PluginError::Init { .. } => "init",
            PluginError::Budget { .. } => "budget",
            PluginError::Memory { .. } => "memory",
            PluginError::Trap { .. } => "trap",
            PluginError::BadOutput { .. } => "bad_output",
            PluginError::MissingHook { .. } => "missing_hook",
        }
    }
}
