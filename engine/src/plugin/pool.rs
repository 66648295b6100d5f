//! The warm-instance pool both plugin hosts keep per binding.
//!
//! A call takes an instance out and puts it back only when the call succeeded, so an instance
//! that trapped, ran out of budget or returned garbage is dropped, never reused. The pool is
//! bounded: instances beyond `max` (created during a burst) are dropped when returned.

use std::sync::Mutex;

pub struct WarmPool<T> {
    idle: Mutex<Vec<T>>,
    max: usize,
}

impl<T> WarmPool<T> {
    pub fn new(max: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max,
        }
    }

    /// An idle instance, if any; the caller creates one otherwise.
    pub fn take(&self) -> Option<T> {
        self.lock().pop()
    }

    /// Returns an instance after a successful call.
    pub fn put(&self, inst: T) {
        let mut idle = self.lock();
        if idle.len() < self.max {
            idle.push(inst);
        }
    }

    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    /// A panic while holding the lock cannot leave the Vec inconsistent (push and pop are
    /// atomic with respect to it), so a poisoned lock is simply taken over.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}
