//! The last denials (and audit would-be denials) this proxy decided, kept in
//! a bounded ring and served on the admin port as `GET /denials`:
//!
//! ```json
//! {"denials":[{"at":"2026-12-06T08:00:00.123Z","protocol":"HTTP",
//!   "client":{"identity":"other.other.serviceaccount.identity.linkerd.cluster.local","address":"127.1.0.4:40000"},
//!   "port":8081,"method":"GET","path":"/data","server":"data-store-http",
//!   "reason":"unauthorized request on route","verdict":"deny"}]}
//! ```
//!
//! Newest first. `server` is the Server's name, or `default:POLICY` when no
//! Server selects the port (Kubernetes names cannot hold a `:`). What is
//! recorded is what the proxy evaluated minus the query (the admin port is not
//! authenticated and a query may carry a credential; headers
//! are never kept, they may carry credentials), so the dashboard can ask
//! `tessera policy explain` the same question.
//!
//! Allowed traffic records nothing: the ring is only touched on a denial,
//! where the lock is held for one push (the entry is built before).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;

/// How many denials are kept (the oldest is dropped first).
pub const CAPACITY: usize = 128;
/// The longest path kept, in bytes; a longer one is cut at a character
/// boundary and marked with `…` (the ring's memory stays bounded).
pub const MAX_PATH: usize = 1024;

/// The client, as the proxy saw it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DenialClient {
    /// The verified mesh identity (mTLS), `null` without one.
    pub identity: Option<String>,
    /// The client's address.
    pub address: String,
}

/// `deny`, or `audit` (allowed by an audit policy that would have denied).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DenialVerdict {
    /// Refused.
    Deny,
    /// Let through by `audit`.
    Audit,
}

/// One recorded decision.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Denial {
    /// When, RFC 3339 in UTC with milliseconds.
    pub at: String,
    /// `HTTP` (a request) or `TCP` (an opaque connection).
    pub protocol: &'static str,
    /// Who asked.
    pub client: DenialClient,
    /// The pod port the client reached.
    pub port: u16,
    /// HTTP only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// HTTP only: the path evaluated (no query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The Server, or `default:POLICY`.
    pub server: String,
    /// `KIND/NAME` of the authorization that let an audit through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<String>,
    /// The HTTPRoute that matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Linkerd's wording (as sent in `l5d-proxy-error`).
    pub reason: String,
    /// What happened to the traffic.
    pub verdict: DenialVerdict,
}

impl Denial {
    /// A denial at `now` from `client`, to `port`.
    pub fn new(client: SocketAddr, identity: Option<&str>, port: u16, verdict: DenialVerdict) -> Self {
        Self {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            protocol: "TCP",
            client: DenialClient { identity: identity.map(str::to_owned), address: client.to_string() },
            port,
            method: None,
            path: None,
            server: String::new(),
            authorization: None,
            route: None,
            reason: String::new(),
            verdict,
        }
    }

    /// An HTTP request's method and path.
    pub fn http(mut self, method: &str, path: &str) -> Self {
        self.protocol = "HTTP";
        self.method = Some(method.to_owned());
        self.path = Some(bounded(path));
        self
    }
}

fn bounded(path: &str) -> String {
    if path.len() <= MAX_PATH {
        return path.to_owned();
    }
    let mut end = MAX_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

/// The ring (cheap to clone: one shared buffer).
#[derive(Debug, Clone)]
pub struct RecentDenials {
    ring: Arc<Mutex<VecDeque<Denial>>>,
    capacity: usize,
}

impl Default for RecentDenials {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl RecentDenials {
    /// A ring keeping the last `capacity` denials.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { ring: Arc::new(Mutex::new(VecDeque::with_capacity(capacity))), capacity }
    }

    /// Records one denial, dropping the oldest when full.
    pub fn record(&self, denial: Denial) {
        // A panic elsewhere while holding the lock cannot leave a half-pushed
        // deque, so a poisoned lock is still a good ring.
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() >= self.capacity {
            ring.pop_front();
        }
        ring.push_back(denial);
    }

    /// Every denial kept, newest first.
    pub fn snapshot(&self) -> Vec<Denial> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter().rev().cloned().collect()
    }
}

#[derive(Serialize)]
struct Answer {
    denials: Vec<Denial>,
}

/// The admin route `GET /denials`.
pub fn router(recent: RecentDenials) -> Router {
    Router::new().route("/denials", get(denials_handler)).with_state(recent)
}

async fn denials_handler(State(recent): State<RecentDenials>) -> impl IntoResponse {
    let body = serde_json::to_string(&Answer { denials: recent.snapshot() }).unwrap_or_else(|_| r#"{"denials":[]}"#.to_owned());
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body)
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    fn denial(n: u16) -> Denial {
        let mut d = Denial::new("127.1.0.4:40000".parse().unwrap(), None, n, DenialVerdict::Deny);
        d.server = "default:deny".into();
        d.reason = format!("unauthorized connection on default/deny ({n})");
        d
    }

    #[test]
    fn the_ring_keeps_the_newest_first_and_drops_the_oldest() {
        let recent = RecentDenials::with_capacity(3);
        for n in 1..=5 {
            recent.record(denial(n));
        }
        let ports: Vec<u16> = recent.snapshot().iter().map(|d| d.port).collect();
        assert_eq!(ports, [5, 4, 3]);
        assert_eq!(RecentDenials::default().capacity, 128);
    }

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        let long = format!("/{}", "é".repeat(MAX_PATH));
        let d = Denial::new("127.0.0.1:1".parse().unwrap(), None, 80, DenialVerdict::Deny).http("GET", &long);
        let path = d.path.unwrap();
        assert!(path.ends_with('…') && path.len() <= MAX_PATH + '…'.len_utf8(), "{}", path.len());
        assert_eq!(bounded("/data"), "/data");
    }

    #[tokio::test]
    async fn denials_are_served_as_json() {
        let recent = RecentDenials::default();
        let app = router(recent.clone());
        let get = || async {
            let response = app.clone().oneshot(http::Request::get("/denials").body(axum::body::Body::empty()).unwrap()).await.unwrap();
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
        };
        assert_eq!(get().await, r#"{"denials":[]}"#);
        let mut d = Denial::new("127.1.0.4:40000".parse().unwrap(), Some("other.other.serviceaccount.identity.linkerd.cluster.local"), 8081, DenialVerdict::Deny)
            .http("GET", "/data");
        d.at = "2026-12-06T08:00:00.123Z".into();
        d.server = "data-store-http".into();
        d.reason = "unauthorized request on route".into();
        recent.record(d);
        assert_eq!(
            get().await,
            r#"{"denials":[{"at":"2026-12-06T08:00:00.123Z","protocol":"HTTP","client":{"identity":"other.other.serviceaccount.identity.linkerd.cluster.local","address":"127.1.0.4:40000"},"port":8081,"method":"GET","path":"/data","server":"data-store-http","reason":"unauthorized request on route","verdict":"deny"}]}"#
        );
    }
}
