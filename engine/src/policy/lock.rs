//! `lock:` rules: what the YAML may say, the validated model, and the checks between.

use std::path::Path;
use std::time::Duration;

use marked_yaml::{Node, Spanned};
use schemars::JsonSchema;
use serde::Deserialize;

use super::diagnostic::Location;
use super::durability::{Durability, RawDurability};
use super::raw::DurationText;
use super::validate::{Validator, loc};

/// A `lock` block, served at `/v1/locks/{app}/{rule}/{resource}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLock {
    /// Lease of a holder that neither extends nor releases (a request may ask for another).
    #[schemars(with = "DurationText")]
    pub ttl: Spanned<String>,
    /// Holders at once: 1 (default) is a mutex, more a counting semaphore.
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub permits: Option<Spanned<i64>>,
    /// The longest lease a request may ask for (default: 10 × `ttl`).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub max_ttl: Option<Spanned<String>>,
    /// The longest a request may wait for the lock (default `30s`).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub max_wait: Option<Spanned<String>>,
    /// Replicas that must hold a grant before it is answered (`WAIT`); without it a grant is
    /// answered as soon as the primary has it, and a failover can lose it.
    #[serde(default)]
    #[schemars(with = "Option<RawDurability>")]
    pub durability: Option<Spanned<RawDurability>>,
}

/// A validated `lock` rule.
#[derive(Debug, Clone)]
pub struct Lock {
    pub ttl: Duration,
    pub permits: u64,
    pub max_ttl: Duration,
    pub max_wait: Duration,
    pub durability: Option<Durability>,
    pub location: Location,
}

/// Semaphores keep one sorted-set member per permit; more than this is a counter's job.
pub(super) const MAX_PERMITS: u64 = 10_000;

impl Validator {
    pub(super) fn lock(
        &mut self,
        path: &Path,
        _rule: &str,
        raw: &Spanned<RawLock>,
        _body: &Node,
    ) -> Option<Lock> {
        let before = self.error_count();
        let at = loc(path, raw.span());
        let ttl = self.duration(path, "ttl", &raw.ttl);
        let permits = match &raw.permits {
            None => 1,
            Some(p) => match self.positive(path, "permits", p) {
                Some(n) if n > MAX_PERMITS => {
                    self.err(
                        &loc(path, p.span()),
                        format!("`permits` {n} is above {MAX_PERMITS}"),
                    );
                    1
                }
                Some(n) => n,
                None => 1,
            },
        };
        let max_ttl = raw
            .max_ttl
            .as_ref()
            .and_then(|d| self.duration(path, "max_ttl", d));
        if let (Some(t), Some(m)) = (ttl, max_ttl)
            && m < t
        {
            self.err(
                &loc(
                    path,
                    raw.max_ttl.as_ref().map(|d| d.span()).unwrap_or(raw.span()),
                ),
                "`max_ttl` is shorter than `ttl`",
            );
        }
        let max_wait = raw
            .max_wait
            .as_ref()
            .and_then(|d| self.duration(path, "max_wait", d))
            .unwrap_or(Duration::from_secs(30));
        let durability = self.durability(path, &raw.durability);
        if self.error_count() > before {
            return None;
        }
        let ttl = ttl?;
        Some(Lock {
            ttl,
            permits,
            max_ttl: max_ttl.unwrap_or(ttl * 10),
            max_wait,
            durability,
            location: at,
        })
    }
}
