//! Polls a client connection and the app connection serving it in one task.
//!
//! Handing a request to a connection driven by another task, and the
//! response back, costs a cross-task wake-up each way (often a futex across
//! the runtime's worker threads). Here both futures share the client
//! connection's task, and a wake-up that one of them causes while the task
//! is already running (the request handed to the app connection, the
//! response handed back, each body chunk) does not reschedule the task: it
//! only marks the woken future, and the same `poll` goes round again. Only
//! wake-ups from outside (socket readiness, timers) wake the task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// The task is inside `Drive::poll`: wake-ups are noted, not forwarded.
const POLLING: u8 = 1;
/// The main future (the client connection) is to be polled.
const MAIN: u8 = 2;
/// The side future (the app connections) is to be polled.
const SIDE: u8 = 4;

/// Rounds in one poll before yielding to the runtime: a future that keeps
/// waking itself (out of coop budget, or hyper's own yield) must not starve
/// the other tasks of this worker.
const MAX_ROUNDS: usize = 16;

struct Shared {
    state: AtomicU8,
    task: AtomicWaker,
}

/// The waker handed to one of the two futures.
struct Part {
    shared: Arc<Shared>,
    bit: u8,
}

impl Wake for Part {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let before = self.shared.state.fetch_or(self.bit, Ordering::AcqRel);
        // While polling, the round loop sees the bit. Outside a poll, a bit
        // already set means the task was already woken for it.
        if before & (POLLING | MAIN | SIDE) == 0 {
            self.shared.task.wake();
        }
    }
}

/// Runs `main` to completion, polling `side` (which never completes: it
/// drives whatever `main` gave it) in the same task whenever either was
/// woken. `side` is polled first in a round, so an app connection's close
/// is seen before the next request is handed to it.
///
/// A named future rather than an `async fn`: rustc could not prove an
/// `async fn`'s future `Send` for hyper's connection (rust-lang/rust#64552).
pub(super) struct Drive<M, S> {
    /// Boxed so that `Drive` is `Unpin` (one allocation per client connection).
    main: Pin<Box<M>>,
    side: S,
    shared: Arc<Shared>,
    main_waker: Waker,
    side_waker: Waker,
}

impl<M: Future, S: FnMut(&mut Context<'_>) + Unpin> Drive<M, S> {
    pub(super) fn new(main: M, side: S) -> Self {
        let shared = Arc::new(Shared { state: AtomicU8::new(MAIN | SIDE), task: AtomicWaker::new() });
        let main_waker = Waker::from(Arc::new(Part { shared: shared.clone(), bit: MAIN }));
        let side_waker = Waker::from(Arc::new(Part { shared: shared.clone(), bit: SIDE }));
        Self { main: Box::pin(main), side, shared, main_waker, side_waker }
    }
}

impl<M: Future, S: FnMut(&mut Context<'_>) + Unpin> Future for Drive<M, S> {
    type Output = M::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<M::Output> {
        let this = self.get_mut();
        let shared = &this.shared;
        shared.task.register(cx.waker());
        for _ in 0..MAX_ROUNDS {
            // Take the pending bits, stay in POLLING.
            let due = shared.state.swap(POLLING, Ordering::AcqRel);
            if due & SIDE != 0 {
                (this.side)(&mut Context::from_waker(&this.side_waker));
            }
            if due & MAIN != 0
                && let Poll::Ready(output) = this.main.as_mut().poll(&mut Context::from_waker(&this.main_waker))
            {
                return Poll::Ready(output);
            }
            // Nothing woke during the round: wait for the outside.
            if shared.state.compare_exchange(POLLING, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Poll::Pending;
            }
        }
        // Still busy: leave the bits set, let the worker run others, come back.
        shared.state.fetch_and(!POLLING, Ordering::AcqRel);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::{mpsc, oneshot};

    use super::*;

    /// Counts the times the task itself was woken.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn hand_offs_between_main_and_side_do_not_wake_the_task() {
        // main sends three requests to side one after another, each answered
        // before the next: six hand-offs, all within one poll.
        let (to_side, mut requests) = mpsc::unbounded_channel::<(u32, oneshot::Sender<u32>)>();
        let main = async move {
            let mut sum = 0;
            for n in 0..3 {
                let (tx, rx) = oneshot::channel();
                to_side.send((n, tx)).map_err(|_| ()).expect("side alive");
                sum += rx.await.expect("answered");
            }
            sum
        };
        let side = move |cx: &mut Context<'_>| {
            while let Poll::Ready(Some((n, answer))) = requests.poll_recv(cx) {
                let _ = answer.send(n * 10);
            }
        };
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut driven = Drive::new(main, side);
        assert_eq!(Pin::new(&mut driven).poll(&mut Context::from_waker(&waker)), Poll::Ready(30));
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn an_outside_wake_wakes_the_task_once_and_polls_only_the_woken_future() {
        let (tx, rx) = oneshot::channel::<u32>();
        let side_polls = Arc::new(AtomicUsize::new(0));
        let counted = side_polls.clone();
        let side = move |_: &mut Context<'_>| {
            counted.fetch_add(1, Ordering::SeqCst);
        };
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut driven = Drive::new(async move { rx.await.expect("sent") }, side);
        assert_eq!(Pin::new(&mut driven).poll(&mut Context::from_waker(&waker)), Poll::Pending);
        assert_eq!(side_polls.load(Ordering::SeqCst), 1);
        tx.send(7).expect("receiver alive");
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert_eq!(Pin::new(&mut driven).poll(&mut Context::from_waker(&waker)), Poll::Ready(7));
        assert_eq!(side_polls.load(Ordering::SeqCst), 1, "side was not woken");
    }

    #[test]
    fn a_future_that_keeps_waking_itself_yields_to_the_runtime() {
        let spins = Arc::new(AtomicUsize::new(0));
        let counted = spins.clone();
        let main = std::future::poll_fn(move |cx: &mut Context<'_>| {
            counted.fetch_add(1, Ordering::SeqCst);
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut driven = Drive::new(main, |_: &mut Context<'_>| {});
        assert_eq!(Pin::new(&mut driven).poll(&mut Context::from_waker(&waker)), Poll::Pending);
        assert_eq!(spins.load(Ordering::SeqCst), MAX_ROUNDS);
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "rescheduled itself");
        assert_eq!(Pin::new(&mut driven).poll(&mut Context::from_waker(&waker)), Poll::Pending);
        assert_eq!(spins.load(Ordering::SeqCst), 2 * MAX_ROUNDS, "the pending bit survived the yield");
    }
}
