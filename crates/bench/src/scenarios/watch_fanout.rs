//! `watch-fanout`: `--watchers` clients watch the namespace's ServiceAccounts;
//! each request creates one and completes when every watcher has received its
//! `ADDED` event. The latency is create-sent to last-watcher-received, so it
//! includes the write and the slowest delivery; req/s × watchers is the event
//! delivery rate.
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
use crate::client::{Api, parse_uri, service_account, snippet};
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
            let response = api.stream(&watch).await.map_err(|source| Error::Transport { what: what.clone(), source })?;
            if response.status() != StatusCode::OK {
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.map(|b| snippet(&b.to_bytes())).unwrap_or_default();
                return Err(Error::Status { what, status, body });
            }
            let pending = Arc::clone(&self.pending);
            self.tasks.push(tokio::spawn(watcher(i, response.into_body(), pending)));
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

/// Reads one watch stream, newline-delimited JSON events, until it ends.
async fn watcher(index: usize, mut body: kube::client::Body, pending: Arc<Pending>) {
    let mut buffer = BytesMut::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                buffer.extend_from_slice(&data);
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
}
