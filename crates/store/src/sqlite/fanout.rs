//! Live event delivery for the SQLite backend: every committed event goes to
//! each watch whose prefix it matches, through that watch's own queue.
//!
//! Why not one shared broadcast ring: a ring keeps the last N events for its
//! slowest reader, so one watcher that stops reading pins N whole values
//! (4096 events of up to 3 MiB each is 12 GiB) however small the values of
//! everyone else. Here each queue is bounded in events *and* bytes; a
//! subscription whose queue would overflow is ended and its queue freed at
//! once (the watch then subscribes again and replays what it missed from the
//! history table: `sqlite.rs`). Values are [`Bytes`], so an
//! event queued for many watches is stored once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::lock;
use crate::WatchEvent;

/// How much one watch may have queued before its subscription is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueLimits {
    /// Events queued.
    pub(crate) events: usize,
    /// Bytes of keys and values queued. One event larger than this is still
    /// accepted into an empty queue (a value may be as large as a request body).
    pub(crate) bytes: usize,
}

impl QueueLimits {
    /// The limits of every watch in production.
    pub(crate) const DEFAULT: QueueLimits = QueueLimits {
        events: 4096,
        bytes: 16 * 1024 * 1024,
    };
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Its queue would have exceeded its limits; what it held was dropped.
    Overflowed,
    /// The store was dropped (queued events are still delivered first).
    Closed,
}

/// The subscriptions of one store.
#[derive(Debug)]
pub(crate) struct Fanout {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limits: QueueLimits,
    state: Mutex<Subscribers>,
}

#[derive(Debug, Default)]
struct Subscribers {
    next_id: u64,
    by_id: HashMap<u64, Arc<Subscription>>,
    closed: bool,
}

#[derive(Debug)]
struct Subscription {
    prefix: String,
    queue: Mutex<Queue>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<WatchEvent>,
    bytes: usize,
    end: Option<End>,
}

/// The receiving end of one subscription; unsubscribes when dropped.
#[derive(Debug)]
pub(crate) struct Receiver {
    id: u64,
    subscription: Arc<Subscription>,
    fanout: Arc<Inner>,
}

/// What an event costs a queue: its key and value plus a fixed overhead.
fn cost(event: &WatchEvent) -> usize {
    event.kv.key.len()
        + event.kv.value.len()
        + event.prev.as_ref().map_or(0, |prev| prev.value.len())
        + std::mem::size_of::<WatchEvent>()
}

impl Fanout {
    pub(crate) fn new(limits: QueueLimits) -> Self {
        Fanout {
            inner: Arc::new(Inner {
                limits,
                state: Mutex::new(Subscribers::default()),
            }),
        }
    }

    /// A new subscription to every event published from now on whose key
    /// starts with `prefix`.
    pub(crate) fn subscribe(&self, prefix: &str) -> Receiver {
        let subscription = Arc::new(Subscription {
            prefix: prefix.to_owned(),
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
        });
        let mut state = lock(&self.inner.state);
        if state.closed {
            lock(&subscription.queue).end = Some(End::Closed);
        }
        let id = state.next_id;
        state.next_id += 1;
        state.by_id.insert(id, Arc::clone(&subscription));
        Receiver {
            id,
            subscription,
            fanout: Arc::clone(&self.inner),
        }
    }

    /// Queues `event` for every matching subscription, cutting off those
    /// whose queue would overflow. Callers publish in revision order.
    pub(crate) fn publish(&self, event: &WatchEvent) {
        let limits = self.inner.limits;
        let size = cost(event);
        let mut state = lock(&self.inner.state);
        state.by_id.retain(|_, subscription| {
            if !event.kv.key.starts_with(&subscription.prefix) {
                return true;
            }
            let mut queue = lock(&subscription.queue);
            let full = queue.events.len() >= limits.events
                || (!queue.events.is_empty() && queue.bytes + size > limits.bytes);
            if full {
                *queue = Queue {
                    end: Some(End::Overflowed),
                    ..Queue::default()
                };
            } else {
                queue.events.push_back(event.clone());
                queue.bytes += size;
            }
            drop(queue);
            subscription.ready.notify_one();
            !full
        });
    }

    /// Ends every subscription (after the events already queued).
    pub(crate) fn close(&self) {
        let mut state = lock(&self.inner.state);
        state.closed = true;
        for (_, subscription) in state.by_id.drain() {
            lock(&subscription.queue).end.get_or_insert(End::Closed);
            subscription.ready.notify_one();
        }
    }

    /// Subscriptions open now (for tests).
    #[cfg(test)]
    pub(crate) fn subscribers(&self) -> usize {
        lock(&self.inner.state).by_id.len()
    }
}

impl Receiver {
    /// The next event, or why there will be none.
    pub(crate) async fn recv(&mut self) -> Result<WatchEvent, End> {
        loop {
            {
                let mut queue = lock(&self.subscription.queue);
                if let Some(event) = queue.events.pop_front() {
                    queue.bytes -= cost(&event);
                    return Ok(event);
                }
                if let Some(end) = queue.end {
                    return Err(end);
                }
            }
            // `notify_one` stores a permit when nobody waits, so an event
            // published between the check above and this await is not missed.
            self.subscription.ready.notified().await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        lock(&self.fanout.state).by_id.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::{EventKind, KeyValue};

    fn event(key: &str, revision: i64, value_len: usize) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Create,
            kv: KeyValue {
                key: key.to_owned(),
                value: Bytes::from(vec![b'x'; value_len]),
                create_revision: revision,
                mod_revision: revision,
            },
            prev: None,
        }
    }

    async fn recv(receiver: &mut Receiver) -> Result<WatchEvent, End> {
        tokio::time::timeout(Duration::from_secs(5), receiver.recv())
            .await
            .expect("receiver stalled")
    }

    #[tokio::test]
    async fn delivers_matching_events_in_order() {
        let fanout = Fanout::new(QueueLimits::DEFAULT);
        let mut a = fanout.subscribe("/a/");
        let mut all = fanout.subscribe("");
        fanout.publish(&event("/a/1", 1, 1));
        fanout.publish(&event("/b/1", 2, 1));
        fanout.publish(&event("/a/2", 3, 1));
        assert_eq!(recv(&mut a).await.expect("event").revision(), 1);
        assert_eq!(recv(&mut a).await.expect("event").revision(), 3);
        for revision in 1..=3 {
            assert_eq!(recv(&mut all).await.expect("event").revision(), revision);
        }
    }

    #[tokio::test]
    async fn a_queue_over_its_event_limit_is_cut_off_and_freed() {
        let fanout = Fanout::new(QueueLimits {
            events: 3,
            bytes: usize::MAX,
        });
        let mut slow = fanout.subscribe("");
        let mut other = fanout.subscribe("/other/");
        for revision in 1..=4 {
            fanout.publish(&event("/k", revision, 1));
        }
        // Cut off at the fourth event: nothing queued is kept.
        assert_eq!(lock(&slow.subscription.queue).events.len(), 0);
        assert_eq!(recv(&mut slow).await, Err(End::Overflowed));
        assert_eq!(recv(&mut slow).await, Err(End::Overflowed));
        // Others are unaffected, and the cut-off one no longer receives.
        assert_eq!(fanout.subscribers(), 1);
        fanout.publish(&event("/other/1", 5, 1));
        assert_eq!(recv(&mut other).await.expect("event").revision(), 5);
    }

    #[tokio::test]
    async fn a_queue_over_its_byte_limit_is_cut_off() {
        let fanout = Fanout::new(QueueLimits {
            events: usize::MAX,
            bytes: 10_000,
        });
        let mut slow = fanout.subscribe("");
        // One event larger than the limit fits into an empty queue.
        fanout.publish(&event("/big", 1, 50_000));
        assert_eq!(recv(&mut slow).await.expect("event").revision(), 1);
        fanout.publish(&event("/k", 2, 4_000));
        fanout.publish(&event("/k", 3, 4_000));
        fanout.publish(&event("/k", 4, 4_000));
        assert_eq!(recv(&mut slow).await, Err(End::Overflowed));
    }

    #[tokio::test]
    async fn dropping_a_receiver_unsubscribes() {
        let fanout = Fanout::new(QueueLimits::DEFAULT);
        let a = fanout.subscribe("");
        let _b = fanout.subscribe("");
        assert_eq!(fanout.subscribers(), 2);
        drop(a);
        assert_eq!(fanout.subscribers(), 1);
    }

    #[tokio::test]
    async fn close_delivers_what_is_queued_then_ends() {
        let fanout = Fanout::new(QueueLimits::DEFAULT);
        let mut a = fanout.subscribe("");
        fanout.publish(&event("/k", 1, 1));
        fanout.close();
        assert_eq!(recv(&mut a).await.expect("event").revision(), 1);
        assert_eq!(recv(&mut a).await, Err(End::Closed));
        let mut late = fanout.subscribe("");
        assert_eq!(recv(&mut late).await, Err(End::Closed));
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_new_event() {
        let fanout = Arc::new(Fanout::new(QueueLimits::DEFAULT));
        let mut a = fanout.subscribe("");
        let publisher = Arc::clone(&fanout);
        let waiter = tokio::spawn(async move { recv(&mut a).await.map(|e| e.revision()) });
        tokio::task::yield_now().await;
        publisher.publish(&event("/k", 7, 1));
        assert_eq!(waiter.await.expect("join"), Ok(7));
    }
}
