//! One current-thread runtime per thread (`--runtime per-thread`), the way
//! Envoy's workers and HAProxy's `nbthread` work: every thread has its own
//! listening socket on each proxied port (one `SO_REUSEPORT` group per
//! port), so the kernel hands a new connection to one thread, which accepts,
//! proxies and closes it without waking another thread. With tokio's
//! multi-thread scheduler a wake-up lands on whichever worker is parked and
//! costs a futex hand-off (BENCHMARKS.md, issue 15, "The TCP pair: profile").
//!
//! The caller's runtime is thread 0: it serves its share of the listeners
//! plus everything there is one of (admin port, certificate renewal, trust
//! and policy watches). [`Workers`] runs threads 1..N. What the threads share
//! is `Sync` and runtime-agnostic: the credentials and policy `watch`
//! channels, the metrics registry, the destination client, the connection
//! cap. A thread that fails (panics or stops serving before the proxy
//! stops) is reported by [`Workers::failed`] so the proxy stops as a whole
//! instead of running with a dead thread (its sockets close with its
//! runtime, so the kernel stops handing it connections, but the proxy would
//! go on with fewer threads than configured). `/ready` keeps its meaning (the
//! first certificate, and policy with `--policy on`): the admin port is only
//! served once every thread serves, and goes away with the failed proxy.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::thread::JoinHandle;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot};

/// The listen backlog of each socket: mio's, i.e. what `TcpListener::bind` uses.
const BACKLOG: u32 = 1024;

/// Binds `count` listening sockets on `addr`. One is a plain bind (exactly
/// `TcpListener::bind`); more share the port through `SO_REUSEPORT`, the
/// first resolving port 0 and the others joining its port. The kernel then
/// spreads new connections over the group by a hash of the 4-tuple.
pub async fn bind_group(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpListener>> {
    if count <= 1 {
        return Ok(vec![TcpListener::bind(addr).await?]);
    }
    let first = reuseport_listener(addr)?;
    let addr = first.local_addr()?;
    let mut group = Vec::with_capacity(count);
    group.push(first);
    for _ in 1..count {
        group.push(reuseport_listener(addr)?);
    }
    Ok(group)
}

#[cfg(unix)]
fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // As `TcpListener::bind` (mio sets SO_REUSEADDR on Unix).
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(not(unix))]
fn reuseport_listener(_addr: SocketAddr) -> io::Result<TcpListener> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "per-thread runtimes need SO_REUSEPORT (Unix)"))
}

/// A listener on its way to another thread's runtime: deregistered from
/// the runtime that bound it, registered again by [`Moved::into_tokio`]
/// inside the thread that serves it.
#[derive(Debug)]
pub struct Moved(std::net::TcpListener);

impl Moved {
    /// Takes the listener out of the current runtime.
    pub fn new(listener: TcpListener) -> io::Result<Self> {
        // `into_std` leaves the socket non-blocking, as `from_std` needs.
        listener.into_std().map(Self)
    }

    /// The listener in the runtime this is called in.
    pub fn into_tokio(self) -> io::Result<TcpListener> {
        TcpListener::from_std(self.0)
    }
}

/// How one thread ended.
#[derive(Debug)]
pub struct Exit {
    /// The thread (1.. ; 0 is the caller's).
    pub index: usize,
    /// `Err` with the reason when it failed (a panic's message included).
    pub outcome: Result<(), String>,
}

/// Tells the thread's starter that it is serving (its listeners are in its
/// runtime). Dropping it unsent means it failed to start.
#[derive(Debug)]
pub struct Serving(oneshot::Sender<()>);

impl Serving {
    /// The thread serves.
    pub fn serving(self) {
        let _ = self.0.send(());
    }
}

/// The threads beyond the caller's, each running one current-thread runtime.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
    serving: Vec<oneshot::Receiver<()>>,
    exits_tx: mpsc::UnboundedSender<Exit>,
    exits: mpsc::UnboundedReceiver<Exit>,
    running: usize,
}

impl Default for Workers {
    fn default() -> Self {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        Self { handles: Vec::new(), serving: Vec::new(), exits_tx, exits, running: 0 }
    }
}

impl Workers {
    /// Threads started.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// No thread started.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Starts thread `index` (named `tessera-proxy-INDEX`): it builds a
    /// current-thread runtime and runs `make(serving)` on it until that
    /// returns. The future must call [`Serving::serving`] once its
    /// listeners are registered, and return `Ok` only after the proxy was
    /// told to stop. A panic anywhere in it is caught and reported as the
    /// thread's failure; tasks it spawned end with its runtime.
    pub fn spawn<F, Fut>(&mut self, index: usize, make: F) -> io::Result<()>
    where
        F: FnOnce(Serving) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + 'static,
    {
        let (serving_tx, serving_rx) = oneshot::channel();
        let exits = self.exits_tx.clone();
        let handle = std::thread::Builder::new().name(format!("tessera-proxy-{index}")).spawn(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("starting its runtime: {e}"))?;
                runtime.block_on(make(Serving(serving_tx)))
            }))
            .unwrap_or_else(|panic| Err(format!("panicked: {}", panic_message(panic.as_ref()))));
            // The thread's last act: `join` relies on it.
            let _ = exits.send(Exit { index, outcome });
        })?;
        self.handles.push(handle);
        self.serving.push(serving_rx);
        self.running += 1;
        Ok(())
    }

    /// Waits until every thread serves; the first failure instead.
    pub async fn all_serving(&mut self) -> Result<(), Exit> {
        for rx in std::mem::take(&mut self.serving) {
            if rx.await.is_err() {
                return Err(self.failed().await);
            }
        }
        Ok(())
    }

    /// The next thread to end. Before the proxy stops, any end is a
    /// failure (an `Ok` outcome then means it stopped serving early).
    /// Pending forever when no thread runs.
    pub async fn failed(&mut self) -> Exit {
        if self.running == 0 {
            return std::future::pending().await;
        }
        match self.exits.recv().await {
            Some(mut exit) => {
                self.running -= 1;
                if exit.outcome.is_ok() {
                    exit.outcome = Err("stopped serving before the proxy stopped".into());
                }
                exit
            }
            // Unreachable: `self` holds a sender.
            None => std::future::pending().await,
        }
    }

    /// After the stop: waits for every thread still running to end and
    /// joins them all. Returns how the waited-for threads ended.
    pub async fn join(mut self) -> Vec<Exit> {
        let mut exits = Vec::new();
        while self.running > 0 {
            match self.exits.recv().await {
                Some(exit) => exits.push(exit),
                None => break,
            }
            self.running -= 1;
        }
        // Every thread has sent its exit, its last statement: these joins
        // only wait for the thread to unwind its stack, not for work.
        for handle in self.handles {
            let _ = handle.join();
        }
        exits
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// The number of CPUs this process may use (the default thread count).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
