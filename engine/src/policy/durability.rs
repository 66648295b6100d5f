//! `durability:`: how many replicas must hold a write before patternd acknowledges it.
//!
//! Redis replication is asynchronous: a primary answers a write before any replica has it,
//! so a primary that dies right after can take an acknowledged lock grant or cache write with
//! it, and the replica promoted in its place never saw it. With `durability`, the write's
//! script is followed by `WAIT <replicas> <timeout>` on the same connection, and the answer
//! waits for it; too few acknowledgements in time answer 503 `not-replicated` (a lock grant is
//! then taken back). It narrows the window, it does not close it: `WAIT` does not make Redis
//! strongly consistent (a failover can still pick a replica that missed it, and nothing is
//! fsynced unless the replicas' AOF says so).

use std::path::Path;
use std::time::Duration;

use marked_yaml::Spanned;
use schemars::JsonSchema;
use serde::Deserialize;

use super::raw::DurationText;
use super::validate::{Validator, loc};

/// Replicas a write must reach before it is acknowledged.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDurability {
    /// Replicas that must acknowledge the write (`WAIT`), 1 to 16.
    #[schemars(with = "u32", range(min = 1, max = 16))]
    pub replicas: Spanned<i64>,
    /// How long to wait for them (default `100ms`, at most `5s`); past it the request answers
    /// 503 `not-replicated`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<Spanned<String>>,
}

/// A validated `durability` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    pub replicas: u32,
    pub timeout: Duration,
}

pub(super) const MAX_REPLICAS: u64 = 16;
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
/// A request holds its connection of the durable pool while it waits: seconds would make a
/// replica outage hold every durable request that long.
const MAX_TIMEOUT: Duration = Duration::from_secs(5);

impl Validator {
    pub(super) fn durability(
        &mut self,
        path: &Path,
        raw: &Option<Spanned<RawDurability>>,
    ) -> Option<Durability> {
        let raw = raw.as_ref()?;
        let replicas = match self.positive(path, "durability.replicas", &raw.replicas) {
            Some(n) if n > MAX_REPLICAS => {
                self.err(
                    &loc(path, raw.replicas.span()),
                    format!("`durability.replicas` {n} is above {MAX_REPLICAS}"),
                );
                return None;
            }
            Some(n) => u32::try_from(n).ok()?,
            None => return None,
        };
        let timeout = match &raw.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => {
                let d = self.duration(path, "durability.timeout", t)?;
                if d > MAX_TIMEOUT {
                    self.err(
                        &loc(path, t.span()),
                        "`durability.timeout` is above 5s: a request holds a connection while it waits",
                    );
                    return None;
                }
                d
            }
        };
        Some(Durability { replicas, timeout })
    }
}
