//! Leadership: which replica runs the work that must run once (controllers).
//!
//! A [`Leadership`] is a read-only view of one campaign's state. With one
//! server on SQLite it is [`Leadership::always`]; with etcd it comes from
//! [`etcd::campaign`](crate::etcd::campaign), which holds a lease-bound key
//! while this replica leads. Readers must stop leader-only work as soon as
//! [`lost`](Leadership::lost) resolves: the campaign gives leadership up
//! before its lease can expire at etcd, so two replicas never lead at once as
//! long as their clocks run at the same rate.

use tokio::sync::watch;

/// This replica's view of a leader election; cheap to clone.
#[derive(Debug, Clone)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
}

impl Leadership {
    /// Leadership that is always held (a single server).
    pub fn always() -> Self {
        let (tx, leading) = watch::channel(true);
        // Nothing will ever change it; keeping no sender is fine for readers.
        drop(tx);
        Leadership { leading }
    }

    /// A view of the state published on `leading` (true while leading).
    #[cfg_attr(not(any(test, feature = "etcd")), allow(dead_code))]
    pub(crate) fn from_receiver(leading: watch::Receiver<bool>) -> Self {
        Leadership { leading }
    }

    /// Whether this replica leads right now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Resolves once this replica leads (at once if it does). Never resolves
    /// when the campaign has ended without leading.
    pub async fn acquired(&mut self) {
        if self.leading.wait_for(|leading| *leading).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once this replica does not lead (at once if it does not), or
    /// when its campaign has ended. Never resolves for [`Leadership::always`].
    pub async fn lost(&mut self) {
        if !*self.leading.borrow_and_update() {
            return;
        }
        loop {
            if self.leading.changed().await.is_err() {
                // The campaign ended: an `always` leadership keeps leading,
                // a real campaign has given up leadership before ending.
                if *self.leading.borrow() {
                    std::future::pending::<()>().await;
                }
                return;
            }
            if !*self.leading.borrow_and_update() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn always_leads_and_never_loses() {
        let mut leadership = Leadership::always();
        assert!(leadership.is_leader());
        leadership.acquired().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), leadership.lost())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn follows_the_campaign() {
        let (tx, rx) = watch::channel(false);
        let mut leadership = Leadership::from_receiver(rx);
        assert!(!leadership.is_leader());
        leadership.lost().await;
        tx.send_replace(true);
        leadership.acquired().await;
        assert!(leadership.is_leader());
        let mut watcher = leadership.clone();
        let lost = tokio::spawn(async move { watcher.lost().await });
        tx.send_replace(false);
        lost.await.expect("lost resolves");
        // A campaign that ends without leading never grants leadership.
        drop(tx);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), leadership.acquired())
                .await
                .is_err()
        );
    }
}
