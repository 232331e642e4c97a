//! A policy change under load (issue 16 "Must show"): the api pod's app
//! loops requests to the data store (four threads, each one request after
//! another, through the api's outbound proxy and the data store's inbound
//! proxy, both real `tessera proxy` processes under `tessera agent run
//! --mesh`), recording for every request when it started and ended (wall
//! clock) and what came back. Meanwhile the test deletes the
//! AuthorizationPolicy that admits the api and applies it again, three
//! times, recording when each `kubectl` returned.
//!
//! From the client's own record:
//! - denials start within 1 s of the removal: the first denied request
//!   ended at most 1 s after `kubectl delete` returned (the latency is
//!   printed), and every request that started after it was denied until
//!   the restore;
//! - no denial after the restore: once a request is allowed again, every
//!   request that starts afterwards is allowed (and the restore too applied
//!   within 1 s of `kubectl apply` returning, as the issue asks of any
//!   change);
//! - nothing is dropped: every request got either the data store's 200 or
//!   the proxy's 403 with `l5d-proxy-error: unauthorized request on route`,
//!   never a connection error or another status, and the data store's
//!   proxy counted exactly as many allowed and denied requests as the
//!   client saw.

mod support;

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::mesh::{DATA_STORE_APP, api_and_data_store, curl, identity, meshed_as, moved, python, ready_ip_of, samples};
use support::policy::{API_ONLY_AUTHORIZATION, api_only_policy};
use support::{Server, json};

const API_ID: &str = "api.api.serviceaccount.identity.linkerd.cluster.local";
const DATA_STORE_URL: &str = "http://data-store.data-store.svc.cluster.local:8081/data";
const UNAUTHORIZED: &str = "unauthorized request on route";
/// Remove/restore cycles.
const CYCLES: usize = 3;
/// Requests seen in each state before the next change (all threads together).
const HOLD: usize = 40;
/// What the issue allows a change to take.
const WITHIN: f64 = 1.0;

/// The looping client. `GET /once`: one request, its record. `/start`:
/// THREADS loops of requests, each recorded as `[thread, start, end,
/// status, l5d-proxy-error or error]` (times in seconds since the epoch;
/// status 0 when no HTTP answer came). `/stop`: stops them and returns
/// once no request is in flight. `/log?from=N`: the records from the Nth.
const LOOP_APP: &str = r#"
import http.server, json, os, sys, threading, time, urllib.request, urllib.error
URL, THREADS = sys.argv[1], 4
log, cond, state = [], threading.Condition(), {"run": False, "busy": 0}
def call(thread):
    start = time.time()
    try:
        with urllib.request.urlopen(URL, timeout=10) as r: status, error = r.status, r.headers.get("l5d-proxy-error"); r.read()
    except urllib.error.HTTPError as e: status, error = e.code, e.headers.get("l5d-proxy-error"); e.read()
    except Exception as e: status, error = 0, repr(e)
    return [thread, start, time.time(), status, error]
def loop(thread):
    while True:
        with cond:
            cond.wait_for(lambda: state["run"])
            state["busy"] += 1
        entry = call(thread)
        with cond:
            log.append(entry); state["busy"] -= 1; cond.notify_all()
for t in range(THREADS): threading.Thread(target=loop, args=(t,), daemon=True).start()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/once": out = call(-1)
        elif self.path == "/start":
            with cond: state["run"] = True; cond.notify_all()
            out = True
        elif self.path == "/stop":
            with cond: state["run"] = False; cond.wait_for(lambda: state["busy"] == 0)
            out = True
        else:
            with cond: out = log[int(self.path.partition("from=")[2] or 0):]
        body = json.dumps(out).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// One request as the client recorded it.
#[derive(Debug, Clone)]
struct Call {
    thread: i64,
    start: f64,
    end: f64,
    status: u16,
    error: Option<String>,
}

impl Call {
    fn parse(v: &Value) -> Self {
        Self {
            thread: v[0].as_i64().unwrap_or(-2),
            start: v[1].as_f64().unwrap_or(0.0),
            end: v[2].as_f64().unwrap_or(0.0),
            status: v[3].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(0),
            error: v[4].as_str().map(str::to_owned),
        }
    }

    fn allowed(&self) -> bool {
        self.status == 200
    }
}

/// Seconds since the epoch (the clock the client's `time.time()` reads).
fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// When one removal or restore was asked for and when kubectl returned.
#[derive(Debug, Clone, Copy)]
struct Change {
    asked: f64,
    done: f64,
}

struct Client {
    url: String,
}

impl Client {
    fn get(&self, path: &str) -> Value {
        let (code, body) = curl(&format!("{}{path}", self.url));
        assert_eq!(code, 200, "the looping client's {path}: {body}");
        json(&body)
    }

    fn calls(&self) -> Vec<Call> {
        self.get("/log?from=0").as_array().map(|a| a.iter().map(Call::parse).collect()).unwrap_or_default()
    }

    /// Polls the record until `found` picks a request, for at most `seconds`.
    fn wait_for(&self, server: &Server, seconds: u64, what: &str, found: impl Fn(&[Call]) -> Option<Call>) -> Call {
        server.eventually(seconds, what, || found(&self.calls()))
    }

    /// Waits until `n` requests ended after `t`.
    fn hold(&self, server: &Server, t: f64, n: usize, what: &str) {
        self.wait_for(server, 30, what, |calls| {
            let mut after: Vec<&Call> = calls.iter().filter(|c| c.end > t).collect();
            after.sort_by(|a, b| a.end.total_cmp(&b.end));
            after.get(n - 1).map(|c| (*c).clone())
        });
    }
}

fn kubectl_timed(server: &Server, args: &[&str], stdin: Option<&str>) -> Change {
    let asked = now();
    let out = match stdin {
        Some(yaml) => server.kubectl_stdin(args, yaml),
        None => server.kubectl(args),
    };
    let done = now();
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Change { asked, done }
}

fn ms(seconds: f64) -> String {
    format!("{:.0} ms", seconds * 1000.0)
}

#[test]
fn removing_and_restoring_an_authorization_under_load_applies_within_a_second_and_drops_nothing() {
    let started = Instant::now();
    let server = Server::start();
    api_and_data_store(&server);
    let pki = server.path("identity");
    let (_identity, identity_addr) = identity(&server, &pki);
    let anchors = pki.join("ca.crt");
    let python = python();
    let port = |p: &'static str| ["--port", p];
    let _data_store = meshed_as(&server, "data-store-l", "data-store", &port("8081"), &identity_addr, &anchors, &[&python, "-c", DATA_STORE_APP]);
    let _api = meshed_as(&server, "api-l", "api", &port("8080"), &identity_addr, &anchors, &[&python, "-c", LOOP_APP, DATA_STORE_URL]);
    let data_store_ip = ready_ip_of(&server, "data-store", "data-store-l");
    let api_ip = ready_ip_of(&server, "api", "api-l");
    let client = Client { url: format!("http://{api_ip}:8080") };

    let out = server.kubectl_stdin(&["apply", "-f", "-"], &api_only_policy());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    server.eventually(30, "the api admitted by the AuthorizationPolicy", || (Call::parse(&client.get("/once")).allowed()).then_some(()));

    let metrics_url = format!("http://{data_store_ip}:4191/metrics");
    let authz_metrics = || samples(&curl(&metrics_url).1, &["inbound_http_authz_"]);
    let before = authz_metrics();
    let load_start = now();
    client.get("/start");
    client.hold(&server, load_start, HOLD, "the loop running while allowed");

    let mut cycles = Vec::new();
    for cycle in 1..=CYCLES {
        let removed = kubectl_timed(&server, &["delete", "authorizationpolicy", "api-only", "-n", "data-store"], None);
        let denied = client.wait_for(&server, 30, "the first denial after the removal", |calls| {
            calls.iter().filter(|c| !c.allowed() && c.end > removed.asked).min_by(|a, b| a.end.total_cmp(&b.end)).cloned()
        });
        client.hold(&server, denied.end, HOLD, "the loop running while denied");
        let restored = kubectl_timed(&server, &["apply", "-f", "-"], Some(API_ONLY_AUTHORIZATION));
        let allowed = client.wait_for(&server, 30, "the first allowed request after the restore", |calls| {
            calls.iter().filter(|c| c.allowed() && c.end > restored.asked).min_by(|a, b| a.end.total_cmp(&b.end)).cloned()
        });
        client.hold(&server, allowed.end, HOLD, "the loop running while allowed again");
        eprintln!(
            "cycle {cycle}: first denial {} after kubectl delete returned ({} after it started); \
             first allowed {} after kubectl apply returned ({} after it started)",
            ms(denied.end - removed.done),
            ms(denied.end - removed.asked),
            ms(allowed.end - restored.done),
            ms(allowed.end - restored.asked),
        );
        cycles.push((removed, denied, restored, allowed));
    }
    client.get("/stop");
    let calls = client.calls();
    let load_end = now();

    // Nothing dropped: the data store's answer or the proxy's denial, nothing else.
    for c in &calls {
        let expected = if c.allowed() { None } else { Some(UNAUTHORIZED) };
        assert!(c.status == 200 || c.status == 403, "a request neither allowed nor denied: {c:?}");
        assert_eq!(c.error.as_deref(), expected, "{c:?}");
    }
    // Each state holds from its first observed request on, in every thread.
    let mut allowed_since = load_start;
    for (cycle, (removed, denied, restored, allowed)) in cycles.iter().enumerate() {
        let cycle = cycle + 1;
        for c in calls.iter().filter(|c| c.start > allowed_since && c.end < removed.asked) {
            assert!(c.allowed(), "cycle {cycle}: denied before the removal (or after the previous restore applied): {c:?}");
        }
        let latency = denied.end - removed.done;
        assert!(latency <= WITHIN, "cycle {cycle}: the first denial came {} after kubectl delete returned", ms(latency));
        for c in calls.iter().filter(|c| c.start > denied.end && c.end < restored.asked) {
            assert!(!c.allowed(), "cycle {cycle}: allowed after denials had started, before the restore: {c:?}");
        }
        let latency = allowed.end - restored.done;
        assert!(latency <= WITHIN, "cycle {cycle}: the first allowed request came {} after kubectl apply returned", ms(latency));
        allowed_since = allowed.end;
    }
    for c in calls.iter().filter(|c| c.start > allowed_since) {
        assert!(c.allowed(), "denied after the last restore applied: {c:?}");
    }

    // The data store's proxy counted exactly what the client saw.
    let (allowed, denied) = (calls.iter().filter(|c| c.allowed()).count(), calls.iter().filter(|c| !c.allowed()).count());
    let target = format!(r#"target_addr="{data_store_ip}:8081",target_ip="{data_store_ip}",target_port="8081""#);
    let srv =
        r#"srv_group="policy.linkerd.io",srv_kind="server",srv_name="data-store-http",route_group="",route_kind="default",route_name="default""#;
    let authz = r#"authz_group="policy.linkerd.io",authz_kind="authorizationpolicy",authz_name="api-only""#;
    let client_id = format!(r#"tls="true",client_id="{API_ID}""#);
    let expected = [
        (format!("inbound_http_authz_allow_total{{{target},{srv},{authz},{client_id}}}"), allowed as f64),
        (format!("inbound_http_authz_deny_total{{{target},{srv},{client_id}}}"), denied as f64),
    ];
    let expected: std::collections::BTreeMap<String, f64> = expected.into_iter().collect();
    assert_eq!(moved(&before, &authz_metrics()), expected, "the proxy's counts against the client's");

    let seconds = load_end - load_start;
    let threads = calls.iter().map(|c| c.thread).collect::<std::collections::BTreeSet<_>>().len();
    eprintln!(
        "{} requests ({allowed} allowed, {denied} denied) from {threads} threads in {seconds:.1} s ({:.0}/s); test {:?}",
        calls.len(),
        calls.len() as f64 / seconds,
        started.elapsed()
    );
    assert_eq!(threads, 4, "every loop ran");
}
