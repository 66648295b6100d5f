//! Runtime per pattern: turns a request's facts into keys and one script call, and the reply
//! into a decision. Knows Redis (through `store`) but not HTTP.

pub mod cache;
pub mod counter;
pub mod feed;
pub mod leaderboard;
pub mod lock;
mod lost_grant;
pub mod ops;
pub mod pubsub;
pub mod queue;
pub mod random;
pub mod ratelimit;
pub mod reply;
pub mod session;
pub mod stream;

pub use counter::{CounterError, CounterRule};
pub use leaderboard::{LeaderboardError, LeaderboardRule};
pub use lock::{Lease, LockError, Locker};
pub use ops::{OpError, OpOutcome, OpRunner};
pub use pubsub::{PubSubError, PubSubRule};
pub use queue::{QueueError, QueueRule};
pub use ratelimit::{CheckError, CheckRequest, Decision, RateLimiter};
pub use session::{SessionError, Sessions};
pub use stream::{StreamError, StreamRule};

/// Entity ids longer than this are refused: they would only bloat keys.
pub const MAX_ID_BYTES: usize = 512;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("`id` must not be empty")]
    EmptyId,
    #[error("`id` is {0} bytes; at most {MAX_ID_BYTES} are allowed")]
    IdTooLong(usize),
    #[error("`cost` {cost} exceeds {max}, the most this rule can ever allow at once")]
    CostTooHigh { cost: u64, max: u64 },
    #[error("malformed lease `{0}`")]
    BadLease(String),
    /// A cache id is one path segment of its origin URL; `.` and `..` are path navigation,
    /// which every URL parser resolves (also spelled `%2e`), so they would name another path.
    #[error("`{0}` cannot be a cache id: `.` and `..` are not path segments but path navigation")]
    DotSegment(String),
}

pub fn check_id(id: &str) -> Result<(), InputError> {
    if id.is_empty() {
        Err(InputError::EmptyId)
    } else if id.len() > MAX_ID_BYTES {
        Err(InputError::IdTooLong(id.len()))
    } else {
        Ok(())
    }
}
