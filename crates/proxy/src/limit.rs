//! The cap on concurrent client connections (`--max-connections`).
//!
//! Every listener (inbound ports, the outbound HTTP proxy and TCP forward
//! ports) takes a slot *before* it accepts, and the accepted connection
//! keeps it until it closes. At the cap the proxy simply stops accepting:
//! new connections wait in the kernel's listen backlog (and are accepted as
//! slots free up) instead of costing the proxy a file descriptor, memory or
//! a task. Nothing is refused half-way and nothing panics.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default of `--max-connections`: far above what one workload's sidecar
/// serves, well below the usual 1,048,576 file descriptor limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// A shared pool of connection slots (cheap to clone).
#[derive(Debug, Clone)]
pub struct ConnLimit {
    slots: Arc<Semaphore>,
    max: usize,
}

/// One connection's slot, returned when dropped.
#[derive(Debug)]
pub struct ConnSlot {
    _permit: Option<OwnedSemaphorePermit>,
}

impl ConnLimit {
    /// At most `max` connections at once (at least 1).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self { slots: Arc::new(Semaphore::new(max)), max }
    }

    /// Waits for a free slot.
    pub async fn acquire(&self) -> ConnSlot {
        // The semaphore is never closed (`None` would then mean: no limit).
        ConnSlot { _permit: self.slots.clone().acquire_owned().await.ok() }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Slots in use (for tests and logs).
    pub fn in_use(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

impl Default for ConnLimit {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CONNECTIONS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_returned_on_drop() {
        let limit = ConnLimit::new(1);
        let slot = limit.acquire().await;
        assert_eq!(limit.in_use(), 1);
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(slot);
        let _second = waiting.await.unwrap();
        assert_eq!(limit.in_use(), 1);
        assert_eq!(ConnLimit::new(0).max(), 1);
    }
}
