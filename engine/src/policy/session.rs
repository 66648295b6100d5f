//! `session:` rules: what the YAML may say, the validated model, and the checks between.

use std::path::Path;
use std::time::Duration;

use marked_yaml::{Node, Spanned};
use schemars::JsonSchema;
use serde::Deserialize;

use super::diagnostic::Location;
use super::ir::PluginRef;
use super::raw::{DurationText, RawPluginRef};
use super::validate::{Validator, loc};

/// Sessions a user may have when the rule sets no `user_cap`.
pub const DEFAULT_USER_CAP: u64 = 1000;
/// The largest `user_cap`: one logout-everywhere destroys at most this many sessions.
pub const MAX_USER_CAP: u64 = 100_000;

/// A `session` block, served at `/v1/sessions/{app}/{rule}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSession {
    /// A session not read or written for this long expires.
    #[schemars(with = "DurationText")]
    pub idle_ttl: Spanned<String>,
    /// A session expires this long after it was created, however active. Required, so that
    /// no session lives forever.
    #[schemars(with = "DurationText")]
    pub absolute_ttl: Spanned<String>,
    /// Live sessions per user; creating one more destroys the oldest.
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub max_per_user: Option<Spanned<i64>>,
    /// Hard bound on a user's live sessions even without `max_per_user` (default 1000):
    /// creating one more destroys the oldest, so logging a user out everywhere is bounded
    /// work. `max_per_user` may not exceed it.
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1, max = 100000))]
    pub user_cap: Option<Spanned<i64>>,
    /// A plugin whose `session` hook validates or rejects a session on read.
    #[serde(default)]
    #[schemars(with = "Option<RawPluginRef>")]
    pub plugin: Option<Spanned<RawPluginRef>>,
}

/// A validated `session` rule.
#[derive(Debug, Clone)]
pub struct Session {
    pub idle_ttl: Duration,
    pub absolute_ttl: Duration,
    pub max_per_user: Option<u64>,
    /// Effective hard bound on a user's sessions (`user_cap`, default [`DEFAULT_USER_CAP`]).
    pub user_cap: u64,
    pub plugin: Option<PluginRef>,
    pub location: Location,
}

impl Validator {
    pub(super) fn session(
        &mut self,
        path: &Path,
        rule: &str,
        raw: &Spanned<RawSession>,
        body: &Node,
    ) -> Option<Session> {
        let before = self.error_count();
        let at = loc(path, raw.span());
        let idle = self.duration(path, "idle_ttl", &raw.idle_ttl);
        let absolute = self.duration(path, "absolute_ttl", &raw.absolute_ttl);
        if let (Some(i), Some(a)) = (idle, absolute)
            && i > a
        {
            self.warn(
                &loc(path, raw.idle_ttl.span()),
                format!(
                    "rule `{rule}`: `idle_ttl` is longer than `absolute_ttl`, so sessions always end at `absolute_ttl`"
                ),
            );
        }
        let max_per_user = raw
            .max_per_user
            .as_ref()
            .and_then(|n| self.positive(path, "max_per_user", n));
        let user_cap = raw
            .user_cap
            .as_ref()
            .and_then(|n| {
                let v = self.positive(path, "user_cap", n)?;
                if v > MAX_USER_CAP {
                    self.err(
                        &loc(path, n.span()),
                        format!("rule `{rule}`: `user_cap` is at most {MAX_USER_CAP}"),
                    );
                    return None;
                }
                Some(v)
            })
            .unwrap_or(DEFAULT_USER_CAP);
        if let Some(m) = max_per_user
            && m > user_cap
        {
            let at_max = raw
                .max_per_user
                .as_ref()
                .map_or_else(|| at.clone(), |n| loc(path, n.span()));
            self.err(
                &at_max,
                format!(
                    "rule `{rule}`: `max_per_user` ({m}) exceeds `user_cap` ({user_cap}); raise `user_cap`"
                ),
            );
        }
        let plugin = raw
            .plugin
            .as_ref()
            .map(|p| self.plugin_ref(path, "session", p, body));
        if self.error_count() > before {
            return None;
        }
        Some(Session {
            idle_ttl: idle?,
            absolute_ttl: absolute?,
            max_per_user,
            user_cap,
            plugin,
            location: at,
        })
    }
}
