//! patternd: declarative Redis patterns served over HTTP.
//!
//! Data flow: `policy` (YAML → validated IR) → `compile` (IR → Lua scripts and key layouts)
//! → `snapshot` (compiled rules ready to serve) → `runtime` (the current snapshot, reload)
//! → `http` (axum handlers) → `patterns` (one script call per request) → `store` (Redis).
//! `doctor` checks a live Redis against the rules in use (`patternd doctor`, `/admin/doctor`);
//! `sampler` keeps the last minutes of the metrics for the dashboard (`/admin/ui`).
//! See ARCHITECTURE.md for the invariants.

pub mod compile;
pub mod doctor;
pub mod http;
pub mod metrics;
pub mod patterns;
pub mod plugin;
pub mod policy;
pub mod runtime;
pub mod sampler;
pub mod snapshot;
pub mod store;

#[cfg(test)]
mod proptest_config;
