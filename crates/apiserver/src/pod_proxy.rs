//! `GET /api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH`, kube's `pods/proxy`
//! subresource, narrowed to what the dashboard needs from a meshed pod: the
//! proxy admin port's `/metrics`, `/trust` and `/denials`, read with the
//! caller's own credentials.
//!
//! Authorization is kube's: RBAC `get` on `pods/proxy` (resource name
//! `NAME:PORT`, as kube's request info names it), decided before this runs.
//! Unlike kube-apiserver, which forwards any method to any port and path of
//! the pod, tessera forwards only a GET of those read-only paths on the
//! port the pod's `tessera.io/proxy-admin-port` annotation names, so a grant
//! of `pods/proxy` reaches no application port and nothing that writes.
//!
//! Each relay buffers up to 16 MiB, so at most [`MAX_IN_FLIGHT`] run at once
//! server-wide, and at most [`MAX_IN_FLIGHT_PER_USER`] for any one user, so
//! that one user (one dashboard, one slow pod's caller) cannot hold every
//! permit and starve the others, as kube's priority and fairness shares
//! seats among flows; a user's further relays wait in a bounded queue for
//! one of its own to finish. Beyond that, or with every server-wide permit
//! taken, the answer is kube-apiserver's refusal (429, `Retry-After: 1`, its
//! plain-text body), which clients such as the dashboard's poller retry on
//! their next round.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use serde_json::Value;
use tessera_api::{ApiError, Registry};
use tessera_api::resource::ResourceInfo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::request::Verb;

/// The admin paths that may be read through the API.
pub const PATHS: [&str; 3] = ["/metrics", "/trust", "/denials"];
const INJECT_ANNOTATION: &str = "linkerd.io/inject";
const ADMIN_PORT_ANNOTATION: &str = "tessera.io/proxy-admin-port";
/// How long the proxy may take to connect and to answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer relayed (a proxy's `/metrics` with many peers).
const MAX_ANSWER: u64 = 16 << 20;
/// Relays in flight at once, server-wide (bounds their buffers to 512 MiB).
pub const MAX_IN_FLIGHT: usize = 32;
/// Relays in flight at once for one user (a quarter of the server's).
pub const MAX_IN_FLIGHT_PER_USER: usize = 8;
/// Relays of one user that may wait for one of its running ones to finish.
const QUEUE_PER_USER: usize = 64;
/// The relays' permits.
static RELAYS: Semaphore = Semaphore::const_new(MAX_IN_FLIGHT);
/// Each user's share of them.
static USERS: UserSlots = UserSlots::new(MAX_IN_FLIGHT_PER_USER, QUEUE_PER_USER, TIMEOUT);
/// kube-apiserver's max-in-flight refusal (`staging/src/k8s.io/apiserver/pkg/server/filters/maxinflight.go`).
const TOO_MANY_REQUESTS: &str = "Too many requests, please try again later.\n";

/// Serves one `pods/proxy` request the authorizer allowed `user` to make.
pub async fn serve(
    registry: &Registry,
    user: &str,
    pods: &ResourceInfo,
    namespace: &str,
    id: &str,
    path: Option<&str>,
    verb: Verb,
) -> Result<Response, ApiError> {
    if verb != Verb::Get {
        return Err(ApiError::method_not_allowed());
    }
    // kube's `[scheme:]name[:port]`; tessera speaks plain HTTP to the admin port only.
    let (name, port) = match id.split(':').collect::<Vec<_>>()[..] {
        [name] => (name, None),
        [name, port] | ["http", name, port] => (name, Some(port)),
        _ => return Err(ApiError::bad_request(format!("invalid pod proxy name {id:?}: want NAME:PORT"))),
    };
    let pod = registry.get(pods, Some(namespace), name).await?;
    let admin = admin_address(&pod, name)?;
    if port.is_none_or(|p| p != admin.port().to_string()) {
        return Err(not_served(name, admin.port()));
    }
    let path = path.unwrap_or("/");
    if !PATHS.contains(&path) {
        return Err(not_served(name, admin.port()));
    }
    relay_for(&USERS, user, &RELAYS, admin, path).await
}

/// Each user's relays: at most `cap` in flight and at most `queue` more
/// waiting (each for at most `wait`) for one of those to finish, as kube's
/// priority and fairness queues one flow's requests; beyond either, kube's
/// 429. Waiting holds no relay buffer, and a client that sends more at once
/// than its share (the dashboard polls 16 proxies at a time, `tessera check
/// --proxy` every proxy at once) is slowed down, not refused.
struct UserSlots {
    cap: usize,
    queue: usize,
    wait: Duration,
    users: Mutex<BTreeMap<String, UserEntry>>,
}

/// One user's share. The entry goes when its last request does, so the map
/// holds at most one per request admitted.
struct UserEntry {
    running: Arc<Semaphore>,
    admitted: usize,
}

/// A request counted against its user's share (running or waiting).
struct Admission<'a> {
    slots: &'a UserSlots,
    user: String,
}

/// A running relay's place in its user's share. The permit is a field before
/// the admission so it goes back first: when an entry is removed no permit
/// of its semaphore is out.
struct UserSlot<'a> {
    _running: OwnedSemaphorePermit,
    _admission: Admission<'a>,
}

impl UserSlots {
    const fn new(cap: usize, queue: usize, wait: Duration) -> Self {
        Self { cap, queue, wait, users: Mutex::new(BTreeMap::new()) }
    }

    /// The users' counts. The lock is never held across an await (nor can a
    /// holder panic), so a poisoned lock still holds consistent counts.
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, UserEntry>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a request of `user`, unless its share and queue are full.
    fn admit(&self, user: &str) -> Option<(Admission<'_>, Arc<Semaphore>)> {
        let mut users = self.lock();
        if users.get(user).is_some_and(|entry| entry.admitted >= self.cap + self.queue) {
            return None;
        }
        let entry = users.entry(user.to_owned()).or_insert_with(|| UserEntry { running: Arc::new(Semaphore::new(self.cap)), admitted: 0 });
        entry.admitted += 1;
        Some((Admission { slots: self, user: user.to_owned() }, Arc::clone(&entry.running)))
    }

    /// A place among `user`'s running relays, waiting for one if need be;
    /// None when the queue is full or the wait ran out.
    async fn enter(&self, user: &str) -> Option<UserSlot<'_>> {
        let (admission, running) = self.admit(user)?;
        let permit = tokio::time::timeout(self.wait, running.acquire_owned()).await.ok()?.ok()?;
        Some(UserSlot { _running: permit, _admission: admission })
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let mut users = self.slots.lock();
        if let Some(entry) = users.get_mut(&self.user) {
            entry.admitted = entry.admitted.saturating_sub(1);
            if entry.admitted == 0 {
                users.remove(&self.user);
            }
        }
    }
}

/// [`relay`] within `user`'s share of the permits, or kube's 429 when the
/// user has its share running and its queue full, or waited too long.
async fn relay_for(users: &UserSlots, user: &str, relays: &Semaphore, admin: SocketAddr, path: &str) -> Result<Response, ApiError> {
    let Some(_slot) = users.enter(user).await else {
        tracing::debug!(%admin, path, user, "pods/proxy: {} relays of this user in flight and no room to wait; answering 429", users.cap);
        return Ok(too_many_requests());
    };
    relay(relays, admin, path).await
}

/// [`fetch`] under one of `relays`' permits, or kube's 429 when none is free.
async fn relay(relays: &Semaphore, admin: SocketAddr, path: &str) -> Result<Response, ApiError> {
    let Ok(_permit) = relays.try_acquire() else {
        tracing::debug!(%admin, path, "pods/proxy: {MAX_IN_FLIGHT} relays in flight; answering 429");
        return Ok(too_many_requests());
    };
    fetch(admin, path).await.map_err(|e| ApiError::unavailable(format!("error trying to reach service: {e}")))
}

/// What Go's `http.Error` writes for kube's `tooManyRequests`.
fn too_many_requests() -> Response {
    let mut response = Response::new(Body::from(TOO_MANY_REQUESTS));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn not_served(name: &str, port: u16) -> ApiError {
    ApiError::not_found_because(format!(
        "pods/proxy of {name}: tessera serves only GET {} and {} on the proxy admin port {name}:{port}",
        PATHS[..PATHS.len() - 1].join(", "),
        PATHS[PATHS.len() - 1]
    ))
}

/// The meshed pod's proxy admin address: running, annotated, with an IP.
fn admin_address(pod: &Value, name: &str) -> Result<SocketAddr, ApiError> {
    let annotations = &pod["metadata"]["annotations"];
    let unavailable = |why: &str| ApiError::unavailable(format!("pod {name} has no reachable tessera proxy: {why}"));
    if annotations[INJECT_ANNOTATION] != "enabled" {
        return Err(unavailable(&format!("it is not meshed ({INJECT_ANNOTATION} is not enabled)")));
    }
    let port: u16 = annotations[ADMIN_PORT_ANNOTATION]
        .as_str()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| unavailable(&format!("no valid {ADMIN_PORT_ANNOTATION} annotation")))?;
    if pod["status"]["phase"] != "Running" {
        return Err(unavailable("it is not Running"));
    }
    let ip: IpAddr = pod["status"]["podIP"].as_str().and_then(|ip| ip.parse().ok()).ok_or_else(|| unavailable("it has no pod IP"))?;
    Ok(SocketAddr::new(ip, port))
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("dial tcp {0}: {1}")]
    Dial(SocketAddr, std::io::Error),
    #[error("{0}: timed out")]
    Timeout(SocketAddr),
    #[error("{0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("{0}: not an HTTP answer")]
    NotHttp(SocketAddr),
    #[error("{0}: the answer is larger than {MAX_ANSWER} bytes")]
    TooLarge(SocketAddr),
}

/// An HTTP/1.0 GET (so the answer is a plain body ended by the close), relayed
/// with its status. The content type is the path's, never the pod's: the
/// answer is served on the API server's origin (where the dashboard keeps its
/// token), so a pod must not be able to have it rendered as HTML or script.
async fn fetch(addr: SocketAddr, path: &str) -> Result<Response, FetchError> {
    let mut stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| FetchError::Timeout(addr))?
        .map_err(|e| FetchError::Dial(addr, e))?;
    let exchange = async {
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut raw = Vec::new();
        (&mut stream).take(MAX_ANSWER + 1).read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| FetchError::Timeout(addr))?.map_err(|e| FetchError::Io(addr, e))?;
    if raw.len() as u64 > MAX_ANSWER {
        return Err(FetchError::TooLarge(addr));
    }
    let (code, body) = split_answer(&raw).ok_or(FetchError::NotHttp(addr))?;
    let mut response = Response::new(Body::from(body.to_vec()));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type_of(path)));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// What a relayed path holds, whatever the proxy's answer claims.
fn content_type_of(path: &str) -> &'static str {
    match path {
        "/trust" | "/denials" => "application/json",
        _ => "text/plain; version=0.0.4; charset=utf-8",
    }
}

/// Status and body of a raw HTTP/1.x answer.
fn split_answer(raw: &[u8]) -> Option<(StatusCode, &[u8])> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status = head.split("\r\n").next()?;
    if !status.starts_with("HTTP/1.") {
        return None;
    }
    let code = StatusCode::from_bytes(status.split_whitespace().nth(1)?.as_bytes()).ok()?;
    Some((code, &raw[end + 4..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_split_into_status_and_body() {
        let (code, body) = split_answer(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX: y\r\n\r\nrequest_total 1\n").unwrap();
        assert_eq!((code, body), (StatusCode::OK, &b"request_total 1\n"[..]));
        assert!(split_answer(b"SSH-2.0-OpenSSH\r\n\r\n").is_none());
        assert!(split_answer(b"HTTP/1.1 200 OK\r\n").is_none());
    }

    /// A pod that answers its admin port with HTML and script: relayed as
    /// the path's own type, sandboxed, so the API server's origin never runs it.
    #[tokio::test]
    async fn a_pod_cannot_choose_how_its_answer_is_rendered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 256];
            let _ = conn.read(&mut request).await;
            let evil = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<script>steal(sessionStorage)</script>";
            conn.write_all(evil.as_bytes()).await.unwrap();
        });
        let answer = fetch(addr, "/metrics").await.unwrap();
        let header = |name: header::HeaderName| answer.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(header(header::CONTENT_TYPE).as_deref(), Some("text/plain; version=0.0.4; charset=utf-8"));
        assert_eq!(header(header::CONTENT_SECURITY_POLICY).as_deref(), Some("sandbox; default-src 'none'"));
        assert_eq!(header(header::X_CONTENT_TYPE_OPTIONS).as_deref(), Some("nosniff"));
        assert_eq!(content_type_of("/trust"), "application/json");
        assert_eq!(content_type_of("/denials"), "application/json");
    }

    /// A proxy's `/denials` is relayed as JSON, sandboxed like the others.
    #[tokio::test]
    async fn denials_are_relayed_as_json() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 256];
            let n = conn.read(&mut request).await.unwrap();
            assert!(request[..n].starts_with(b"GET /denials HTTP/1.0\r\n"));
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n{\"denials\":[]}").await.unwrap();
        });
        let answer = relay(&Semaphore::new(1), addr, "/denials").await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(answer.headers()[header::CONTENT_SECURITY_POLICY], "sandbox; default-src 'none'");
        let body = axum::body::to_bytes(answer.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], br#"{"denials":[]}"#);
        assert!(PATHS.contains(&"/denials"));
        assert_eq!(not_served("p", 4191).message, "pods/proxy of p: tessera serves only GET /metrics, /trust and /denials on the proxy admin port p:4191");
    }

    /// kube's plain-text 429 of an overloaded server, exactly.
    async fn assert_kubes_429(refused: Response) {
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        assert_eq!(refused.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(refused.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let body = axum::body::to_bytes(refused.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"Too many requests, please try again later.\n");
    }

    /// With every permit held by relays in flight, the next one gets kube's
    /// max-in-flight 429 at once; a freed permit serves again.
    #[tokio::test]
    async fn relays_beyond_the_cap_get_kubes_429() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let (accepted_tx, accepted_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            // The first relay: held until released.
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 256];
            let _ = conn.read(&mut request).await;
            accepted_tx.send(()).unwrap();
            let _ = release_rx.await;
            conn.write_all(b"HTTP/1.1 200 OK\r\n\r\nslow").await.unwrap();
            drop(conn);
            // The one after the permit came back.
            let (mut conn, _) = listener.accept().await.unwrap();
            let _ = conn.read(&mut request).await;
            conn.write_all(b"HTTP/1.1 200 OK\r\n\r\nagain").await.unwrap();
        });
        let relays = std::sync::Arc::new(Semaphore::new(1));
        let first = tokio::spawn({
            let relays = relays.clone();
            async move { relay(&relays, addr, "/metrics").await.unwrap().status() }
        });
        accepted_rx.await.unwrap();
        assert_kubes_429(relay(&relays, addr, "/metrics").await.unwrap()).await;
        release_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap(), StatusCode::OK);
        assert_eq!(relay(&relays, addr, "/metrics").await.unwrap().status(), StatusCode::OK);
    }

    /// One user with its share of relays in flight gets kube's 429 for the
    /// next, while another user is still served from the permits left; the
    /// share comes back when the relays end, and nothing stays counted.
    #[tokio::test]
    async fn one_user_cannot_hold_every_relay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            // The first two connections (alice's) answer only when released; the rest at once.
            for n in 0.. {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut release = release_rx.clone();
                let held = held_tx.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 256];
                    let _ = conn.read(&mut request).await;
                    if n < 2 {
                        held.send(()).unwrap();
                        let _ = release.wait_for(|go| *go).await;
                    }
                    conn.write_all(b"HTTP/1.1 200 OK\r\n\r\nok").await.unwrap();
                });
            }
        });
        // No queue: alice's third relay is refused at once.
        let users = std::sync::Arc::new(UserSlots::new(2, 0, Duration::from_secs(5)));
        let relays = std::sync::Arc::new(Semaphore::new(3));
        let alice: Vec<_> = (0..2)
            .map(|_| {
                let (users, relays) = (users.clone(), relays.clone());
                tokio::spawn(async move { relay_for(&users, "alice", &relays, addr, "/metrics").await.unwrap().status() })
            })
            .collect();
        for _ in 0..2 {
            held_rx.recv().await.unwrap();
        }
        assert_kubes_429(relay_for(&users, "alice", &relays, addr, "/metrics").await.unwrap()).await;
        assert_eq!(relays.available_permits(), 1, "the refused relay took no server permit");
        // Another user still gets the permit alice could not take.
        assert_eq!(relay_for(&users, "bob", &relays, addr, "/metrics").await.unwrap().status(), StatusCode::OK);
        release_tx.send(true).unwrap();
        for relay in alice {
            assert_eq!(relay.await.unwrap(), StatusCode::OK);
        }
        assert_eq!(relay_for(&users, "alice", &relays, addr, "/metrics").await.unwrap().status(), StatusCode::OK);
        assert!(users.lock().is_empty(), "every slot was given back");
        assert_eq!(relays.available_permits(), 3);
    }

    /// Beyond its share a user's relay waits for one of its own to finish;
    /// beyond its queue, or past the wait, kube's 429. Slots are given back
    /// also when the server-wide cap refuses a user within its share.
    #[tokio::test]
    async fn a_users_excess_waits_in_a_bounded_queue() {
        let users = UserSlots::new(1, 1, Duration::from_secs(5));
        let first = users.enter("alice").await.unwrap();
        let queued = users.enter("alice");
        tokio::pin!(queued);
        assert!(futures::poll!(queued.as_mut()).is_pending(), "the second waits for the first");
        assert!(users.enter("alice").await.is_none(), "the queue holds one");
        assert!(users.enter("bob").await.is_some(), "another user has its own share");
        drop(first);
        let second = queued.await.expect("served once the first is done");
        drop(second);
        assert!(users.lock().is_empty());
        // A wait that runs out is refused.
        let users = UserSlots::new(1, 1, Duration::from_millis(50));
        let _first = users.enter("alice").await.unwrap();
        let refused = relay_for(&users, "alice", &Semaphore::new(1), "127.0.0.1:9".parse().unwrap(), "/metrics").await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        // No server permit free: 429 before any connection, and bob's slot is back.
        let refused = relay_for(&users, "bob", &Semaphore::new(0), "127.0.0.1:9".parse().unwrap(), "/metrics").await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(users.lock().keys().collect::<Vec<_>>(), ["alice"], "only alice's running relay is counted");
        assert_eq!(MAX_IN_FLIGHT / MAX_IN_FLIGHT_PER_USER, 4, "it takes four users at their share to fill the server");
    }

    #[test]
    fn only_running_meshed_pods_with_an_ip_have_an_admin_address() {
        let pod = |inject: &str, phase: &str, ip: &str| {
            serde_json::json!({"metadata": {"annotations": {INJECT_ANNOTATION: inject, ADMIN_PORT_ANNOTATION: "4191"}}, "status": {"phase": phase, "podIP": ip}})
        };
        assert_eq!(admin_address(&pod("enabled", "Running", "127.1.0.2"), "p").unwrap(), "127.1.0.2:4191".parse().unwrap());
        for bad in [pod("disabled", "Running", "127.1.0.2"), pod("enabled", "Pending", "127.1.0.2"), pod("enabled", "Running", "")] {
            assert_eq!(admin_address(&bad, "p").unwrap_err().code, 503);
        }
    }
}
