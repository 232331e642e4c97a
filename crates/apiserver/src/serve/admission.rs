//! Which connections the server holds: a global cap, a per-client cap, and
//! the activity of each held connection (work in hand, idle since when).
//!
//! When the global cap is reached, the connection that has been idle longest
//! is evicted to make room; only when no held connection is idle is the
//! newcomer refused. Clients that send nothing (an unfinished
//! TLS handshake, a keep-alive connection between requests) therefore cannot
//! keep others out, however many addresses they come from. A client past its
//! own cap is refused: it has no claim on more of the server.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;

/// The unit the per-client cap counts: an IPv4 address, or an IPv6 /64 (a
/// single host is routinely handed a whole /64, so counting IPv6 addresses one
/// by one would cap nobody). IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Client {
    V4(Ipv4Addr),
    V6Prefix([u8; 8]),
}

impl From<IpAddr> for Client {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4),
                None => {
                    let mut prefix = [0; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Self::V6Prefix(prefix)
                }
            },
        }
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(v4) => write!(f, "{v4}"),
            Self::V6Prefix(prefix) => {
                let mut octets = [0; 16];
                octets[..8].copy_from_slice(prefix);
                write!(f, "{}/64", std::net::Ipv6Addr::from(octets))
            }
        }
    }
}

/// Why a new connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The client already holds its share of connections.
    ClientLimit,
    /// The server holds its maximum and no connection is idle.
    Full,
}

/// The connections held, and the caps they are held to.
#[derive(Debug)]
pub(crate) struct Admission {
    max_connections: usize,
    max_per_client: usize,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<Connection>>,
    per_client: HashMap<Client, usize>,
}

impl Table {
    /// Forgets a connection; false if it was already gone (evicted).
    fn remove(&mut self, id: u64) -> bool {
        let Some(conn) = self.open.remove(&id) else { return false };
        if let Some(held) = self.per_client.get_mut(&conn.client) {
            *held -= 1;
            if *held == 0 {
                self.per_client.remove(&conn.client);
            }
        }
        true
    }

    /// The connection idle longest, if any is idle. A linear scan: it runs only
    /// at the cap, and 10,000 entries take microseconds.
    fn longest_idle(&self) -> Option<u64> {
        self.open.iter().filter_map(|(id, conn)| conn.idle_since().map(|since| (since, *id))).min().map(|(_, id)| id)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state stays consistent across a panic (plain counters), so a
    // poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Admission {
    pub(crate) fn new(max_connections: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(Self { max_connections, max_per_client, table: Mutex::new(Table::default()) })
    }

    /// Takes a slot for a connection from `ip`, evicting the longest-idle
    /// connection if the server is full.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let client = Client::from(ip);
        let mut table = lock(&self.table);
        if table.per_client.get(&client).copied().unwrap_or(0) >= self.max_per_client {
            return Err(Refusal::ClientLimit);
        }
        if table.open.len() >= self.max_connections {
            let victim = table.longest_idle().ok_or(Refusal::Full)?;
            if let Some(conn) = table.open.get(&victim).cloned() {
                table.remove(victim);
                tracing::debug!(client = %conn.client, "connection limit reached: closing the longest-idle connection");
                conn.evicted.notify_one();
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let conn = Arc::new(Connection::new(client));
        table.open.insert(id, conn.clone());
        *table.per_client.entry(client).or_default() += 1;
        Ok(Admitted { admission: self.clone(), id, conn })
    }

    /// Connections held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        lock(&self.table).open.len()
    }
}

/// A held slot: released when dropped (when the connection task ends).
#[derive(Debug)]
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    id: u64,
    conn: Arc<Connection>,
}

impl Admitted {
    pub(crate) fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        lock(&self.admission.table).remove(self.id);
    }
}

/// One held connection, shared by its task, its requests and the table.
#[derive(Debug)]
pub(crate) struct Connection {
    client: Client,
    activity: Mutex<Activity>,
    /// Signalled when the server's last work in hand for the connection ends.
    became_idle: Notify,
    /// Signalled (once, with a stored permit) when the table evicts this connection.
    evicted: Notify,
}

/// Requests whose turn it is on the server: being read, handled, or producing
/// their next response frame. A response handed to the connection and not yet
/// taken by the client is the client's turn, so a client that stops reading
/// (an HTTP/2 window of zero, unread pipelined answers) leaves its connection idle.
#[derive(Debug, Clone, Copy)]
struct Activity {
    working: u32,
    idle_since: Instant,
}

impl Connection {
    fn new(client: Client) -> Self {
        Self {
            client,
            activity: Mutex::new(Activity { working: 0, idle_since: Instant::now() }),
            became_idle: Notify::new(),
            evicted: Notify::new(),
        }
    }

    /// Since when the server has had no work in hand for the connection; None while it has some.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        let activity = *lock(&self.activity);
        (activity.working == 0).then_some(activity.idle_since)
    }

    /// Restarts the idle clock (the TLS handshake just finished: the client
    /// gets the whole idle timeout for its first request).
    pub(crate) fn touch(&self) {
        let mut activity = lock(&self.activity);
        if activity.working == 0 {
            activity.idle_since = Instant::now();
        }
    }

    /// A request arrived: the server's turn until [`Request::client_turn`].
    pub(crate) fn begin_request(self: &Arc<Self>) -> Request {
        self.start_work();
        Request { conn: self.clone(), working: true }
    }

    fn start_work(&self) {
        lock(&self.activity).working += 1;
    }

    fn end_work(&self) {
        let mut activity = lock(&self.activity);
        activity.working -= 1;
        if activity.working == 0 {
            activity.idle_since = Instant::now();
            drop(activity);
            self.became_idle.notify_waiters();
        }
    }

    /// Resolves once the server has had no work in hand for the connection for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: std::time::Duration) {
        loop {
            let became_idle = self.became_idle.notified();
            tokio::pin!(became_idle);
            // Registered before the check, so work ending in between is not missed.
            became_idle.as_mut().enable();
            match self.idle_since() {
                None => became_idle.await,
                Some(since) => {
                    let deadline = since + timeout;
                    if Instant::now() >= deadline {
                        return;
                    }
                    // Requests may come and go meanwhile: look again when it expires.
                    tokio::time::sleep_until(deadline).await;
                }
            }
        }
    }

    /// Resolves when the table has evicted this connection to make room.
    pub(crate) async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

/// One request on a connection, from its headers until its response is sent
/// (or abandoned), alternating between the server's turn and the client's.
#[derive(Debug)]
pub(crate) struct Request {
    conn: Arc<Connection>,
    working: bool,
}

impl Request {
    /// The server is producing the response (or waiting for something to send, as a watch does).
    pub(crate) fn server_turn(&mut self) {
        if !std::mem::replace(&mut self.working, true) {
            self.conn.start_work();
        }
    }

    /// The response (or its latest frame) is with the connection, for the client to take.
    pub(crate) fn client_turn(&mut self) {
        if std::mem::replace(&mut self.working, false) {
            self.conn.end_work();
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        self.client_turn();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(Client::from(ip("2001:db8:1:2::1")), Client::from(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(Client::from(ip("2001:db8:1:2::1")), Client::from(ip("2001:db8:1:3::1")));
        assert_eq!(Client::from(ip("::ffff:10.0.0.1")), Client::from(ip("10.0.0.1")));
        assert_eq!(Client::from(ip("2001:db8:1:2::1")).to_string(), "2001:db8:1:2::/64");
    }

    #[tokio::test]
    async fn a_client_past_its_cap_is_refused_and_others_are_not() {
        let admission = Admission::new(10, 2);
        let held: Vec<_> = (0..2).map(|_| admission.admit(ip("10.0.0.2")).unwrap()).collect();
        assert_eq!(admission.admit(ip("10.0.0.2")).unwrap_err(), Refusal::ClientLimit);
        let other = admission.admit(ip("10.0.0.1")).unwrap();
        drop(held);
        // Slots come back when connections end.
        let again = admission.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(admission.held(), 2);
        drop((other, again));
        assert_eq!(admission.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_server_evicts_the_longest_idle_connection() {
        let admission = Admission::new(3, 10);
        let oldest = admission.admit(ip("10.0.0.2")).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let busy_older = admission.admit(ip("10.0.0.3")).unwrap();
        let _request = busy_older.connection().begin_request();
        tokio::time::advance(Duration::from_secs(1)).await;
        let newer = admission.admit(ip("10.0.0.4")).unwrap();

        let newcomer = admission.admit(ip("10.0.0.1")).unwrap();
        // The oldest idle one is told to go and no longer counts; the busy one stays.
        tokio::time::timeout(Duration::from_millis(1), oldest.connection().evicted()).await.expect("oldest evicted");
        assert_eq!(admission.held(), 3);
        drop(oldest);
        assert_eq!(admission.held(), 3, "dropping an evicted connection frees nothing twice");
        let evicted_next = tokio::time::timeout(Duration::from_millis(1), newer.connection().evicted()).await;
        assert!(evicted_next.is_err(), "only one connection is evicted per newcomer");
        drop(newcomer);
    }

    #[tokio::test]
    async fn a_full_server_with_every_connection_busy_refuses() {
        let admission = Admission::new(1, 10);
        let held = admission.admit(ip("10.0.0.2")).unwrap();
        let _request = held.connection().begin_request();
        assert_eq!(admission.admit(ip("10.0.0.1")).unwrap_err(), Refusal::Full);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_means_no_work_in_hand_for_the_whole_timeout() {
        let admission = Admission::new(1, 1);
        let held = admission.admit(ip("10.0.0.1")).unwrap();
        let conn = held.connection().clone();
        let mut request = conn.begin_request();
        let mut idle = tokio::spawn({
            let conn = conn.clone();
            async move { conn.idle_for(Duration::from_secs(30)).await }
        });
        // A long request (a watch) keeps the connection alive past the timeout.
        assert!(tokio::time::timeout(Duration::from_secs(120), &mut idle).await.is_err());
        // A response the client does not take is the client's turn: the clock runs.
        request.client_turn();
        assert!(tokio::time::timeout(Duration::from_secs(29), &mut idle).await.is_err());
        // The client took it and the server produces the next frame (a watch event).
        request.server_turn();
        assert!(tokio::time::timeout(Duration::from_secs(60), &mut idle).await.is_err());
        drop(request);
        assert!(tokio::time::timeout(Duration::from_secs(29), &mut idle).await.is_err());
        // A request that comes and goes restarts the clock.
        drop(conn.begin_request());
        assert!(tokio::time::timeout(Duration::from_secs(29), &mut idle).await.is_err());
        tokio::time::timeout(Duration::from_secs(2), &mut idle).await.expect("idle for 30 s").unwrap();
    }
}
