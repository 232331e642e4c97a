//! `watch-fanout`: `--watchers` clients watch the namespace's ServiceAccounts;
//! each request creates one and completes when every watcher has received its
//! `ADDED` event. The latency is create-sent to last-watcher-received, so it
//! includes the write and the slowest delivery; req/s × watchers is the event
//! delivery rate.
//!
//! With `--protobuf` the watches ask for `application/vnd.kubernetes.protobuf`
//! and read length-prefixed `WatchEvent` frames, as client-go does.
//!
//! The watches start at the resourceVersion of a list taken before them, so no
//! event is missed however slowly they connect. A watcher whose stream ends makes
//! later requests time out (counted as `timeout`), rather than stopping the run.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Uri};
use http_body_util::BodyExt as _;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{Cause, Outcome, Scenario, ScenarioInfo, Setup, Ticket};
use crate::client::{Api, PROTOBUF_ACCEPT, parse_uri, service_account, snippet};
use crate::error::{Error, Result};

pub(crate) const INFO: ScenarioInfo = ScenarioInfo {
    name: "watch-fanout",
    about: "create a ServiceAccount and wait until all --watchers watchers received it",
    new: || Box::<WatchFanout>::default(),
};

#[derive(Default)]
struct WatchFanout {
    uri: Uri,
    watchers: usize,
    timeout: Duration,
    pending: Arc<Pending>,
    tasks: Vec<JoinHandle<()>>,
}

/// Creates in flight, by object name.
#[derive(Default)]
struct Pending {
    by_name: Mutex<HashMap<String, Arc<Waiter>>>,
}

/// One create waiting for its events.
struct Waiter {
    remaining: AtomicUsize,
    done: Notify,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    object: Object<'a>,
}

#[derive(Deserialize, Default)]
struct Object<'a> {
    #[serde(borrow, default)]
    metadata: Metadata<'a>,
}

#[derive(Deserialize, Default)]
struct Metadata<'a> {
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(borrow, default, rename = "resourceVersion")]
    resource_version: Cow<'a, str>,
}

#[derive(Deserialize)]
struct List<'a> {
    #[serde(borrow)]
    metadata: Metadata<'a>,
}

// === impl WatchFanout ===

#[async_trait]
impl Scenario for WatchFanout {
    async fn prepare(&mut self, setup: &Setup<'_>) -> Result<()> {
        let ns = setup.namespace;
        let path = format!("/api/v1/namespaces/{ns}/serviceaccounts");
        let what = "listing serviceaccounts to start watching";
        let reply = setup.api().expect(what, Method::GET, &path, None, &[StatusCode::OK]).await?;
        let list: List<'_> = serde_json::from_slice(&reply.body)
            .map_err(|e| Error::Response { what: what.into(), detail: format!("not a list ({e}): {}", snippet(&reply.body)) })?;
        let rv = list.metadata.resource_version;
        let watch = parse_uri(&format!("{path}?watch=true&resourceVersion={rv}&timeoutSeconds=3600&allowWatchBookmarks=false"))?;
        // One pool for the watchers: each watch holds its own connection.
        let api = setup.connector.api()?;
        self.watchers = setup.options.watchers;
        self.timeout = setup.options.event_timeout;
        for i in 0..self.watchers {
            setup.progress.set_message(format!("starting watchers: {i}/{}", self.watchers));
            let what = format!("starting watcher {i}");
            let response = if setup.options.protobuf {
                api.stream_accepting(&watch, PROTOBUF_ACCEPT).await
            } else {
                api.stream(&watch).await
            };
            let response = response.map_err(|source| Error::Transport { what: what.clone(), source })?;
            if response.status() != StatusCode::OK {
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.map(|b| snippet(&b.to_bytes())).unwrap_or_default();
                return Err(Error::Status { what, status, body });
            }
            let pending = Arc::clone(&self.pending);
            let protobuf = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|t| t.as_bytes().starts_with(b"application/vnd.kubernetes.protobuf"));
            self.tasks.push(tokio::spawn(watcher(i, response.into_body(), pending, protobuf)));
        }
        self.uri = parse_uri(&path)?;
        Ok(())
    }

    async fn request(&self, api: &Api, ticket: Ticket) -> Outcome {
        let name = ticket.name("watched");
        let waiter = Arc::new(Waiter { remaining: AtomicUsize::new(self.watchers), done: Notify::new() });
        self.pending.insert(&name, Arc::clone(&waiter));
        let body = Bytes::from(service_account(&name).to_string());
        let created = Outcome::of(api.send(Method::POST, &self.uri, Some(&body)).await, StatusCode::CREATED, None);
        if created != Outcome::Ok {
            self.pending.remove(&name);
            return created;
        }
        match tokio::time::timeout(self.timeout, waiter.done.notified()).await {
            Ok(()) => Outcome::Ok,
            Err(_) => {
                self.pending.remove(&name);
                let missing = waiter.remaining.load(Ordering::Relaxed);
                let detail = format!("{missing} of {} watchers did not see {name} within {:?}", self.watchers, self.timeout);
                Outcome::failed(Cause::Timeout, detail)
            }
        }
    }

    async fn cleanup(&self, _api: &Api) -> Result<()> {
        for task in &self.tasks {
            task.abort();
        }
        Ok(())
    }
}

impl Drop for WatchFanout {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

// === impl Pending ===

impl Pending {
    fn insert(&self, name: &str, waiter: Arc<Waiter>) {
        self.by_name.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_owned(), waiter);
    }

    fn remove(&self, name: &str) {
        self.by_name.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
    }

    /// A watcher saw `name` added: the last of them wakes the request.
    fn seen(&self, name: &str) {
        let mut by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(waiter) = by_name.get(name) else { return };
        if waiter.remaining.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(waiter) = by_name.remove(name)
        {
            waiter.done.notify_one();
        }
    }
}

/// Reads one watch stream until it ends: newline-delimited JSON events, or
/// length-prefixed protobuf `WatchEvent` frames.
async fn watcher(index: usize, mut body: kube::client::Body, pending: Arc<Pending>, protobuf: bool) {
    let mut buffer = BytesMut::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                buffer.extend_from_slice(&data);
                if protobuf {
                    while buffer.len() >= 4 {
                        let len = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize;
                        if buffer.len() < 4 + len {
                            break;
                        }
                        let event = buffer.split_to(4 + len);
                        if let Some(name) = added_name(&event[4..]) {
                            pending.seen(name);
                        }
                    }
                    continue;
                }
                while let Some(end) = memchr::memchr(b'\n', &buffer) {
                    let line = buffer.split_to(end + 1);
                    dispatch(index, &line[..end], &pending);
                }
            }
            Some(Err(e)) => {
                tracing::warn!(watcher = index, error = %e, "watch stream failed");
                return;
            }
            None => {
                tracing::warn!(watcher = index, "watch stream ended");
                return;
            }
        }
    }
}

fn dispatch(index: usize, line: &[u8], pending: &Pending) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match serde_json::from_slice::<Event<'_>>(line) {
        Ok(event) if event.kind == "ADDED" => pending.seen(&event.object.metadata.name),
        Ok(event) if event.kind == "ERROR" => tracing::warn!(watcher = index, event = %snippet(line), "watch error event"),
        Ok(_) => {}
        Err(e) => tracing::warn!(watcher = index, error = %e, line = %snippet(line), "unreadable watch event"),
    }
}

/// The object name of an `ADDED` protobuf `WatchEvent{type = 1, object = 2}`,
/// whose object is `RawExtension{raw = 1}` = `k8s\0` + `Unknown{raw = 2}` =
/// the object, whose field 1 is its ObjectMeta, whose field 1 is the name.
/// Walks only those fields, as a client that needs only the name would.
fn added_name(event: &[u8]) -> Option<&str> {
    if field(event, 1)? != b"ADDED" {
        return None;
    }
    let unknown = field(field(event, 2)?, 1)?.strip_prefix(b"k8s\0")?;
    let name = field(field(field(unknown, 2)?, 1)?, 1)?;
    std::str::from_utf8(name).ok()
}

/// The first length-delimited field `tag` of a protobuf message.
fn field(message: &[u8], tag: u64) -> Option<&[u8]> {
    let mut rest = message;
    while !rest.is_empty() {
        let key = varint(&mut rest)?;
        match key & 7 {
            0 => {
                varint(&mut rest)?;
            }
            1 => rest = rest.get(8..)?,
            2 => {
                let len = usize::try_from(varint(&mut rest)?).ok()?;
                let (value, after) = (rest.get(..len)?, rest.get(len..)?);
                if key >> 3 == tag {
                    return Some(value);
                }
                rest = after;
            }
            5 => rest = rest.get(4..)?,
            _ => return None,
        }
    }
    None
}

fn varint(rest: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, tail) = rest.split_first()?;
        *rest = tail;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn last_watcher_wakes_the_request() {
        let pending = Pending::default();
        let waiter = Arc::new(Waiter { remaining: AtomicUsize::new(2), done: Notify::new() });
        pending.insert("a", Arc::clone(&waiter));
        let added = br#"{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"7"}}}"#;
        dispatch(0, added, &pending);
        assert_eq!(waiter.remaining.load(Ordering::Relaxed), 1);
        dispatch(0, br#"{"type":"MODIFIED","object":{"metadata":{"name":"a"}}}"#, &pending);
        dispatch(0, br#"{"type":"ADDED","object":{"metadata":{"name":"other"}}}"#, &pending);
        dispatch(0, b"not json", &pending);
        dispatch(1, added, &pending);
        tokio::time::timeout(Duration::from_secs(1), waiter.done.notified()).await.unwrap();
        assert!(pending.by_name.lock().unwrap().is_empty());
    }

    #[test]
    fn reads_the_name_of_an_added_protobuf_event() {
        // ObjectMeta{name: "sa-1"} in a ServiceAccount in an Unknown in a RawExtension in a WatchEvent.
        let meta = [&[0x0a, 0x04][..], b"sa-1"].concat();
        let object = [&[0x0a, meta.len() as u8][..], &meta].concat();
        let unknown = [&b"k8s\0"[..], &[0x0a, 0x00, 0x12, object.len() as u8], &object, &[0x1a, 0x00, 0x22, 0x00]].concat();
        let ext = [&[0x0a, unknown.len() as u8][..], &unknown].concat();
        let event = |t: &[u8]| [&[0x0a, t.len() as u8][..], t, &[0x12, ext.len() as u8], &ext].concat();
        assert_eq!(added_name(&event(b"ADDED")), Some("sa-1"));
        assert_eq!(added_name(&event(b"MODIFIED")), None);
        let added = event(b"ADDED");
        for n in 0..added.len() {
            let _ = added_name(&added[..n]);
        }
    }
}
