//! The bounded channel from a pattern to one SSE client (stream tails, pub/sub), which always
//! keeps one slot free for the client's final event: a client too slow for its buffer is told
//! why its stream ends (`event: dropped`), however full its buffer is, and the engine never
//! waits on it.

use tokio::sync::mpsc;

/// The sending side; the HTTP body holds the receiver.
pub struct Feed<T> {
    out: mpsc::Sender<T>,
}

/// `buffer` events of slack, plus the slot of the final event.
pub fn channel<T>(buffer: usize) -> (Feed<T>, mpsc::Receiver<T>) {
    let (out, rx) = mpsc::channel(buffer.max(1) + 1);
    (Feed { out }, rx)
}

/// Why an event was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum NotSent {
    /// Only the final event's slot is left: the client is too slow.
    Full,
    /// The client is gone.
    Closed,
}

impl<T> Feed<T> {
    /// Queues `event` unless only the final slot is left.
    pub fn push(&self, event: T) -> Result<(), NotSent> {
        if self.out.is_closed() {
            return Err(NotSent::Closed);
        }
        if self.out.capacity() <= 1 {
            return Err(NotSent::Full);
        }
        self.out.try_send(event).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NotSent::Full,
            mpsc::error::TrySendError::Closed(_) => NotSent::Closed,
        })
    }

    /// Queues `event` once there is room besides the final slot (backpressure: replay reads
    /// Redis only as fast as the client takes it). Err when the client is gone.
    pub async fn send(&self, event: T) -> Result<(), NotSent> {
        // Two permits: one for the event, and one given back at once, so the final slot is
        // still free after it.
        let mut permits = self
            .out
            .reserve_many(2)
            .await
            .map_err(|_| NotSent::Closed)?;
        match permits.next() {
            Some(p) => {
                p.send(event);
                Ok(())
            }
            None => Err(NotSent::Closed),
        }
    }

    /// The final event, in the slot kept for it; the feed ends.
    pub fn finish(self, event: T) {
        let _ = self.out.try_send(event);
    }

    /// Resolves when the client is gone.
    pub async fn closed(&self) {
        self.out.closed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_final_slot_survives_a_full_buffer() {
        let (feed, mut rx) = channel::<u32>(2);
        assert_eq!(feed.push(1), Ok(()));
        feed.send(2).await.expect("room for a second");
        assert_eq!(feed.push(3), Err(NotSent::Full));
        feed.finish(99);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(99));
        assert_eq!(rx.recv().await, None);
    }
}
