//! Watch responses: newline-delimited JSON events, streamed until the watch
//! times out, the store ends it, or the client goes away.
//!
//! **Memory per watch is bounded, whatever the client does.** A pump task
//! takes events from the registry as they come, encodes them and puts them in
//! the watch's [`Outbox`], which holds at most [`OUTBOX_BYTES`] (and always
//! room for one line); the response body takes lines out as fast as the
//! connection sends them. A client that stops reading fills its outbox, and
//! if no room frees up within [`STALL_TIMEOUT`] the watch is cut off, as
//! kube-apiserver's watch cache closes an unresponsive watcher: the outbox is
//! emptied, the store watch (with any initial list it still holds) is
//! dropped, `apiserver_terminated_watchers_total` counts it, and the
//! response ends once the client reads what the connection already holds.
//! The client then watches again from the last resourceVersion it saw.
//!
//! Because the pump always drains the store watch, a slow HTTP client never
//! backs up into the store: not into the SQLite fan-out queue, and not into
//! the one gRPC connection that every etcd watch shares.
//!
//! **Every watch ends.** After a random time between [`MIN_REQUEST_TIMEOUT`]
//! and twice that (kube-apiserver's `--min-request-timeout` jitter, so that
//! watches opened together do not all end together), or sooner when the
//! client asks for a shorter `timeoutSeconds`.
//!
//! Events, BOOKMARKs (`allowWatchBookmarks`, and the end of a watch-list's
//! initial events) and selector transitions come from the registry
//! (`tessera_api::registry::read`); this module only encodes and delivers
//! them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use futures::{Stream, StreamExt};
use http::header;
use serde_json::{Value, json};
use tessera_api::registry::{ListParams, WatchEvent};
use tessera_api::resource::ResourceInfo;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::http::AppState;
use crate::metrics::Metrics;
use crate::response::HandlerResult;
use crate::table;

/// kube-apiserver's `--min-request-timeout` default: a watch lasts between
/// this and twice this.
pub const MIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(1800);
/// Encoded events one watch may have waiting for its client. One event
/// larger than this is still sent, alone.
pub const OUTBOX_BYTES: usize = 256 * 1024;
/// How long a full outbox may wait for its client to read before the watch
/// is cut off.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How a watch's events are rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Format {
    /// Each object as JSON.
    Objects,
    /// Each object as a one-row Table (`kubectl get -w`), with the object
    /// included as `includeObject` says.
    Table { include_object: String },
    /// Length-prefixed protobuf `WatchEvent` frames (`;stream=watch`).
    Protobuf,
}

impl Format {
    /// The rendering the client asked for: a Table when `accept` wants one
    /// (with the object included as `include_object`, the query parameter of
    /// that name, says), else objects in the negotiated `encoding`.
    pub(crate) fn negotiate(accept: &str, encoding: crate::negotiate::Encoding, include_object: &str) -> Self {
        if table::wants_table(accept) {
            Format::Table { include_object: include_object.to_owned() }
        } else if encoding == crate::negotiate::Encoding::Protobuf {
            Format::Protobuf
        } else {
            Format::Objects
        }
    }
}

/// Serves a watch of `resource` (in `namespace`, if any) with `list`'s
/// selectors and resourceVersion, rendered as `format`; `timeout_seconds` is
/// the query parameter of that name.
pub(crate) async fn serve(
    state: &AppState,
    resource: &'static ResourceInfo,
    namespace: Option<&str>,
    list: &ListParams,
    format: Format,
    timeout_seconds: Option<Duration>,
) -> HandlerResult {
    let timeout = watch_timeout(
        client_timeout(timeout_seconds),
        rand::random_range(1.0..2.0),
    );
    let deadline = Instant::now() + timeout;
    let events = state.registry.watch_until(resource, namespace, list, deadline).await?;
    let content_type = if format == Format::Protobuf { crate::negotiate::PROTOBUF_WATCH } else { "application/json" };
    let outbox = Arc::new(Outbox::default());
    let pump = Pump {
        outbox: Arc::clone(&outbox),
        resource,
        namespace: namespace.map(str::to_owned),
        format,
        metrics: state.metrics.clone(),
    };
    tokio::spawn(pump.run(events, deadline));
    let mut response = Response::new(Body::from_stream(OutboxReader(outbox).into_stream()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache, private"),
    );
    Ok(response)
}

/// The client's `timeoutSeconds` (parsed with the request); 0 means none, as
/// in kube-apiserver.
fn client_timeout(timeout_seconds: Option<Duration>) -> Option<Duration> {
    timeout_seconds.filter(|t| !t.is_zero())
}

/// How long a watch lasts: [`MIN_REQUEST_TIMEOUT`] × `jitter` (in [1, 2)),
/// or the client's timeout when that is shorter.
fn watch_timeout(client: Option<Duration>, jitter: f64) -> Duration {
    let server = MIN_REQUEST_TIMEOUT.mul_f64(jitter.clamp(1.0, 2.0));
    client.map_or(server, |client| client.min(server))
}

/// One event as a line (or protobuf frame) of the response.
fn encode_event(resource: &ResourceInfo, event: WatchEvent, format: &Format) -> Bytes {
    if let Some(shared) = &event.shared {
        if let Some(line) = shared_line(event.type_, shared, format) {
            return line;
        }
        return encode_line(resource, event.type_, event.object(), format);
    }
    encode_line(resource, event.type_, event.object, format)
}

/// A watch-cache event composed around the object's shared encoding, the
/// same bytes serde_json would write (`object` sorts before `type`): no
/// watcher encodes the object again. `None` for Tables (and objects without
/// a protobuf form), which are encoded per watcher.
fn shared_line(type_: &str, object: &tessera_api::registry::cache::CachedObject, format: &Format) -> Option<Bytes> {
    match format {
        Format::Objects => {
            let json = object.json();
            let mut line = Vec::with_capacity(json.len() + type_.len() + 24);
            line.extend_from_slice(b"{\"object\":");
            line.extend_from_slice(&json);
            line.extend_from_slice(b",\"type\":\"");
            line.extend_from_slice(type_.as_bytes());
            line.extend_from_slice(b"\"}\n");
            Some(Bytes::from(line))
        }
        Format::Protobuf => {
            let body = object.protobuf()?;
            tessera_api::protobuf::watch_frame(type_, &body).ok().map(Bytes::from)
        }
        Format::Table { .. } => None,
    }
}

fn encode_line(resource: &ResourceInfo, type_: &str, object: Value, format: &Format) -> Bytes {
    if *format == Format::Protobuf {
        match tessera_api::protobuf::encode_watch_event(type_, &object) {
            Ok(frame) => return Bytes::from(frame),
            // Only an object the tables cannot carry whole gets here; the
            // stream cannot switch to JSON, so the event becomes an ERROR.
            Err(e) => {
                tracing::warn!(error = %e, "watch event not encodable as protobuf");
                let status = tessera_api::ApiError::internal("the object could not be encoded as protobuf").to_status();
                return Bytes::from(tessera_api::protobuf::encode_watch_event("ERROR", &status).unwrap_or_default());
            }
        }
    }
    let object = match format {
        Format::Table { include_object } if type_ != "ERROR" => table::table(
            resource,
            std::slice::from_ref(&object),
            json!({}),
            include_object,
        ),
        _ => object,
    };
    let mut line =
        serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// Moves events from the registry into the outbox.
struct Pump {
    outbox: Arc<Outbox>,
    resource: &'static ResourceInfo,
    namespace: Option<String>,
    format: Format,
    metrics: Metrics,
}

impl Pump {
    async fn run(self, events: impl Stream<Item = WatchEvent>, deadline: Instant) {
        let events = std::pin::pin!(events);
        let mut events = events.fuse();
        let deadline = tokio::time::sleep_until(deadline);
        tokio::pin!(deadline);
        loop {
            let event = tokio::select! {
                _ = &mut deadline => break,
                () = self.outbox.reader_gone() => return,
                event = events.next() => match event {
                    Some(event) => event,
                    None => break,
                },
            };
            let line = encode_event(self.resource, event, &self.format);
            match tokio::time::timeout(STALL_TIMEOUT, self.outbox.push(line)).await {
                Ok(Ok(())) => {}
                Ok(Err(ReaderGone)) => return,
                Err(_) => {
                    tracing::warn!(
                        resource = self.resource.plural,
                        namespace = self.namespace.as_deref().unwrap_or_default(),
                        stalled = ?STALL_TIMEOUT,
                        "watcher not reading: closing it"
                    );
                    self.metrics.watcher_terminated(self.resource);
                    self.outbox.cut_off();
                    return;
                }
            }
        }
        self.outbox.finish();
    }
}

/// The client went away (the response body was dropped).
#[derive(Debug)]
struct ReaderGone;

/// Encoded lines waiting for the client, shared by the pump (writer) and the
/// response body (reader).
#[derive(Debug, Default)]
struct Outbox {
    state: Mutex<OutboxState>,
    /// Wakes the reader: a line was added or the watch ended.
    to_reader: Notify,
    /// Wakes the pump: room was made or the reader went away.
    to_pump: Notify,
}

#[derive(Debug, Default)]
struct OutboxState {
    lines: VecDeque<Bytes>,
    bytes: usize,
    /// No more lines will be added (the reader ends after the queued ones).
    finished: bool,
    reader_gone: bool,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // The state is a queue and flags; a panic cannot leave it torn.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds `line` once there is room for it (an empty outbox always has).
    async fn push(&self, line: Bytes) -> Result<(), ReaderGone> {
        loop {
            {
                let mut state = self.lock();
                if state.reader_gone {
                    return Err(ReaderGone);
                }
                if state.lines.is_empty() || state.bytes + line.len() <= OUTBOX_BYTES {
                    state.bytes += line.len();
                    state.lines.push_back(line);
                    drop(state);
                    self.to_reader.notify_one();
                    return Ok(());
                }
            }
            // `notify_one` keeps a permit when nobody waits: a wake-up between
            // the check and this await is not lost.
            self.to_pump.notified().await;
        }
    }

    /// Resolves once the reader has gone away.
    async fn reader_gone(&self) {
        loop {
            if self.lock().reader_gone {
                return;
            }
            self.to_pump.notified().await;
        }
    }

    /// Ends the watch after the lines already queued.
    fn finish(&self) {
        self.lock().finished = true;
        self.to_reader.notify_one();
    }

    /// Ends the watch now, dropping what the client has not taken.
    fn cut_off(&self) {
        let mut state = self.lock();
        state.lines = VecDeque::new();
        state.bytes = 0;
        state.finished = true;
        drop(state);
        self.to_reader.notify_one();
    }

    /// The next line, or `None` once the watch has ended.
    async fn pop(&self) -> Option<Bytes> {
        loop {
            {
                let mut state = self.lock();
                if let Some(line) = state.lines.pop_front() {
                    state.bytes -= line.len();
                    drop(state);
                    self.to_pump.notify_one();
                    return Some(line);
                }
                if state.finished {
                    return None;
                }
            }
            self.to_reader.notified().await;
        }
    }
}

/// The response body's end of the outbox; tells the pump when dropped.
struct OutboxReader(Arc<Outbox>);

impl OutboxReader {
    fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        futures::stream::unfold(self, |reader| async move {
            let line = reader.0.pop().await?;
            Some((Ok(line), reader))
        })
    }
}

impl Drop for OutboxReader {
    fn drop(&mut self) {
        self.0.lock().reader_gone = true;
        self.0.to_pump.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .expect("stalled")
    }

    #[test]
    fn timeout_is_jittered_and_capped_by_the_client() {
        assert_eq!(watch_timeout(None, 1.0), Duration::from_secs(1800));
        assert_eq!(watch_timeout(None, 1.5), Duration::from_secs(2700));
        assert_eq!(watch_timeout(None, 7.0), Duration::from_secs(3600));
        assert_eq!(
            watch_timeout(Some(Duration::from_secs(30)), 1.5),
            Duration::from_secs(30)
        );
        assert_eq!(
            watch_timeout(Some(Duration::from_secs(10_000)), 1.5),
            Duration::from_secs(2700)
        );
        assert_eq!(client_timeout(Some(Duration::from_secs(45))), Some(Duration::from_secs(45)));
        for none in [None, Some(Duration::ZERO)] {
            assert_eq!(client_timeout(none), None, "{none:?}");
        }
        for _ in 0..100 {
            let t = watch_timeout(None, rand::random_range(1.0..2.0));
            assert!(
                (MIN_REQUEST_TIMEOUT..MIN_REQUEST_TIMEOUT * 2).contains(&t),
                "{t:?}"
            );
        }
    }

    #[tokio::test]
    async fn outbox_holds_at_most_its_budget_but_always_one_line() {
        let outbox = Outbox::default();
        within(outbox.push(line(OUTBOX_BYTES * 3)))
            .await
            .expect("a big line fits an empty outbox");
        // Full: the next line waits until the reader takes the big one.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), outbox.push(line(10)))
                .await
                .is_err()
        );
        assert_eq!(
            within(outbox.pop()).await.map(|l| l.len()),
            Some(OUTBOX_BYTES * 3)
        );
        within(outbox.push(line(OUTBOX_BYTES / 2)))
            .await
            .expect("room");
        within(outbox.push(line(OUTBOX_BYTES / 2)))
            .await
            .expect("room");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), outbox.push(line(1)))
                .await
                .is_err()
        );
        assert_eq!(outbox.lock().bytes, OUTBOX_BYTES);
    }

    #[tokio::test]
    async fn finish_delivers_the_rest_and_cut_off_drops_it() {
        let finished = Outbox::default();
        within(finished.push(line(1))).await.expect("push");
        finished.finish();
        assert!(within(finished.pop()).await.is_some());
        assert!(within(finished.pop()).await.is_none());

        let cut = Outbox::default();
        within(cut.push(line(100))).await.expect("push");
        cut.cut_off();
        assert_eq!(cut.lock().bytes, 0);
        assert!(within(cut.pop()).await.is_none());
    }

    #[tokio::test]
    async fn dropping_the_reader_stops_the_pump() {
        // The pump waits either for room or (between events) for the reader.
        let outbox = Arc::new(Outbox::default());
        within(outbox.push(line(OUTBOX_BYTES))).await.expect("push");
        let pusher = Arc::clone(&outbox);
        let blocked = tokio::spawn(async move { pusher.push(line(1)).await.is_err() });
        tokio::task::yield_now().await;
        let reader = OutboxReader(Arc::clone(&outbox));
        drop(reader);
        assert!(
            within(blocked).await.expect("join"),
            "a push after the reader left fails"
        );

        let outbox = Arc::new(Outbox::default());
        let gone = Arc::clone(&outbox);
        let waiting = tokio::spawn(async move { gone.reader_gone().await });
        tokio::task::yield_now().await;
        drop(OutboxReader(Arc::clone(&outbox)));
        within(waiting).await.expect("reader_gone resolves");
    }
}
