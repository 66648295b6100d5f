//! Policy files → validated IR.
//!
//! Pure: no Redis, no network. `load_paths` reads files; `load_sources` does the real work on
//! in-memory text, which is what the golden tests drive. Every problem of a load is collected
//! (across files and rules) before the load fails, each as `file:line:column: message`.

pub mod cache;
pub mod counter;
pub mod diagnostic;
mod dupkeys;
pub mod durability;
pub mod duration;
pub mod ir;
pub mod leaderboard;
mod lint;
pub mod lock;
pub mod ops;
pub mod period;
pub mod pubsub;
pub mod queue;
pub mod ratelimit;
mod raw;
pub mod schema;
pub mod session;
pub mod stream;
mod suggest;
mod validate;
mod yaml_errors;
mod yaml_json;

use std::path::{Path, PathBuf};

pub use diagnostic::{Diagnostic, Diagnostics, Location, Severity};
pub use ir::{App, PluginRef, Policy, Rule, RuleKind};
pub use ops::Ops;
pub use ratelimit::{Algorithm, ForwardedFor, IdFrom, Limit, OnRedisError, RateLimit};

/// A successful load: the policy, and the warnings a user should still read.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
}

/// Reads every path (a `.yaml`/`.yml` file, or a directory of them, not recursive) and
/// validates the lot as one policy.
pub fn load_paths(paths: &[PathBuf]) -> Result<Loaded, Diagnostics> {
    let mut sources = Vec::new();
    let mut diags = Vec::new();
    for path in paths {
        collect_files(path, &mut sources, &mut diags);
    }
    if !diags.is_empty() {
        return Err(Diagnostics(diags));
    }
    load_sources(&sources)
}

fn collect_files(path: &Path, out: &mut Vec<(PathBuf, String)>, diags: &mut Vec<Diagnostic>) {
    let unreadable = |e: std::io::Error, diags: &mut Vec<Diagnostic>| {
        diags.push(Diagnostic::error(
            &Location::file_start(path),
            format!("cannot read: {e}"),
        ));
    };
    if path.is_dir() {
        let entries = match std::fs::read_dir(path) {
            Ok(e) => e,
            Err(e) => return unreadable(e, diags),
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && is_yaml(p))
            .collect();
        files.sort();
        for f in files {
            collect_files(&f, out, diags);
        }
    } else {
        match std::fs::read_to_string(path) {
            Ok(text) => out.push((path.to_path_buf(), text)),
            Err(e) => unreadable(e, diags),
        }
    }
}

fn is_yaml(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Validates in-memory policy files as one policy. Fails with every error found (and the
/// warnings, so a failed `check` prints the whole picture).
pub fn load_sources(sources: &[(PathBuf, String)]) -> Result<Loaded, Diagnostics> {
    let mut v = validate::Validator::default();
    for (idx, (path, text)) in sources.iter().enumerate() {
        v.file(idx, path, text);
    }
    let mut loaded = v.finish()?;
    // Anti-pattern lints need the whole validated policy (defaults applied).
    loaded.warnings.extend(lint::lint(&loaded.policy));
    loaded
        .warnings
        .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    Ok(loaded)
}

/// The JSON Schema of a policy file, for editors (`patternd schema`).
pub fn json_schema() -> serde_json::Value {
    schema::json_schema()
}

#[cfg(test)]
mod duration_proptest;
#[cfg(test)]
mod load_proptest;
#[cfg(test)]
mod tests;
