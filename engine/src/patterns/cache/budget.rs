//! The Redis allowance of one GET.

use std::time::{Duration, Instant};

use crate::store::StoreError;

/// The Redis part of one GET: every call it makes (the read, each poll while waiting, the
/// fill's store, a release) draws from one allowance, so a Redis that is slow but answers
/// each call just within the command timeout cannot stretch a GET to several timeouts.
/// Time spent on the origin or sleeping between polls is not drawn.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    pub(super) total: Duration,
    left: Duration,
}

impl Budget {
    pub(super) fn new(total: Duration) -> Self {
        Self { total, left: total }
    }

    /// Runs one Redis call within what is left; past it, `StoreError::Timeout`, which the
    /// rule's `on_redis_error` then decides like any unavailable Redis.
    pub(super) async fn run<T>(
        &mut self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if self.left.is_zero() {
            return Err(StoreError::Timeout(self.total));
        }
        let started = Instant::now();
        // With the whole allowance left (the first call), the store's own bound (the same
        // command timeout) is the deadline: a hit costs no second timer.
        let res = if self.left >= self.total {
            call.await
        } else {
            tokio::time::timeout(self.left, call)
                .await
                .unwrap_or(Err(StoreError::Timeout(self.total)))
        };
        self.left = self.left.saturating_sub(started.elapsed());
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls that each finish within the command timeout still end the GET once they add up
    /// to it; a call after that is not even started.
    #[tokio::test]
    async fn the_budget_bounds_the_sum_of_calls() {
        let total = Duration::from_secs(1);
        let mut b = Budget::new(total);
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok::<_, StoreError>(1)
        };
        assert_eq!(b.run(slow()).await.ok(), Some(1));
        assert_eq!(b.run(slow()).await.ok(), Some(1));
        // About 200 ms left: the third is cut there.
        assert!(matches!(b.run(slow()).await, Err(StoreError::Timeout(t)) if t == total));
        let mut called = false;
        let r = b
            .run(async {
                called = true;
                Ok::<_, StoreError>(1)
            })
            .await;
        assert!(matches!(r, Err(StoreError::Timeout(_))));
        assert!(!called);
    }
}
