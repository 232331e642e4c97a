//! [`EtcdStore`]: the [`Store`] trait on the `etcd-client` crate. The design
//! is described in the parent module.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions,
    EventType, GetOptions, Identity, KvClient, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
    TxnResponse, WatchClient, WatchOptions,
};
use tokio::time::{Instant, sleep, timeout};
use tracing::{debug, info, trace, warn};

use super::{EtcdConfig, EtcdTls, KeyMap};
use crate::{
    Error, EventKind, KeyValue, ListOptions, ListResult, Result, Revision, Store, WatchEvent,
    WatchStream,
};

/// The largest response accepted from etcd (a list of many large objects).
const MAX_RESPONSE_BYTES: usize = 512 * 1024 * 1024;
/// First pause between retries; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(20);
/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// HTTP/2 keep-alive ping interval and the time a ping may go unanswered
/// before the connection counts as dead.
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(5));
/// How long establishing one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a watch on a compacted revision may take to report the compacted
/// revision (etcd checks unsynced watchers every 100 ms).
const COMPACTION_NOTICE_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`Store`] kept in an etcd v3 cluster. Cheap to share behind an `Arc`;
/// every method may be called concurrently.
pub struct EtcdStore {
    pub(super) client: Client,
    keys: KeyMap,
    request_timeout: Duration,
    endpoints: Vec<String>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Whether a failed request may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// The request certainly did not reach the state machine (no leader, no
    /// connection): any request may be retried.
    Safe,
    /// The request may or may not have been applied: only reads are retried.
    ReadsOnly,
    /// A definite answer (bad request, compacted revision, …).
    Never,
}

/// What kind of request is being retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

/// A failed attempt: etcd's error or our own per-attempt timeout.
#[derive(Debug)]
enum Failure {
    Etcd(etcd_client::Error),
    TimedOut(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Etcd(err) => write!(f, "{err}"),
            Failure::TimedOut(after) => write!(f, "no answer within {after:?}"),
        }
    }
}

impl Failure {
    fn retry(&self) -> Retry {
        match self {
            Failure::TimedOut(_) => Retry::ReadsOnly,
            Failure::Etcd(etcd_client::Error::TransportError(_)) => Retry::Safe,
            Failure::Etcd(etcd_client::Error::GRpcStatus(status)) => {
                let message = status.message();
                match status.code() {
                    tonic::Code::Unavailable
                        if message.contains("no leader")
                            || message.contains("connect")
                            || message.contains("too many requests") =>
                    {
                        Retry::Safe
                    }
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown => Retry::ReadsOnly,
                    _ => Retry::Never,
                }
            }
            Failure::Etcd(_) => Retry::Never,
        }
    }

    /// True for etcd's "required revision has been compacted".
    fn is_compacted(&self) -> bool {
        self.status_contains("required revision has been compacted")
    }

    /// True for etcd's "required revision is a future revision".
    fn is_future_revision(&self) -> bool {
        self.status_contains("required revision is a future revision")
    }

    fn status_contains(&self, text: &str) -> bool {
        matches!(self, Failure::Etcd(etcd_client::Error::GRpcStatus(status)) if status.message().contains(text))
    }

    fn into_error(self, what: &str) -> Error {
        Error::Backend(format!("etcd {what}: {self}"))
    }
}

impl EtcdStore {
    /// Connects to the cluster in `config` and checks that it answers (with
    /// retries, within the request timeout). TLS files are read here.
    pub async fn connect(config: &EtcdConfig) -> Result<Self> {
        if config.endpoints.is_empty() {
            return Err(Error::Backend("no etcd endpoints given".to_owned()));
        }
        let mut options = ConnectOptions::new()
            .with_keep_alive(KEEP_ALIVE.0, KEEP_ALIVE.1)
            .with_keep_alive_while_idle(true)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(config.request_timeout)
            .with_require_leader(true);
        let endpoints = match &config.tls {
            Some(tls) => {
                options = options.with_tls(tls_options(tls).await?);
                with_scheme(&config.endpoints, "https://")?
            }
            None => with_scheme(&config.endpoints, "http://")?,
        };
        let client = Client::connect(&endpoints, Some(options))
            .await
            .map_err(|err| Error::Backend(format!("etcd at {endpoints:?}: {err}")))?;
        let store = EtcdStore {
            client,
            keys: KeyMap::new(&config.root, &config.prefix),
            request_timeout: config.request_timeout,
            endpoints,
        };
        let revision = store.revision().await.map_err(|err| {
            Error::Backend(format!(
                "etcd at {:?} does not answer: {err}",
                store.endpoints
            ))
        })?;
        info!(endpoints = ?store.endpoints, prefix = %config.prefix, revision, "connected to etcd");
        Ok(store)
    }

    /// The etcd key of a store key (for tests and tools that look at etcd
    /// directly).
    pub fn etcd_key(&self, key: &str) -> Result<Vec<u8>> {
        self.keys.etcd_key_of(key)
    }

    /// A key to read when only the response header matters (etcd refuses
    /// an empty key).
    fn any_key(&self) -> Vec<u8> {
        if self.keys.prefix.is_empty() {
            vec![0]
        } else {
            self.keys.prefix.clone().into_bytes()
        }
    }

    /// A KV client on the store's one `Client`: every clone shares its tonic
    /// channel, so concurrent requests are pipelined as HTTP/2 streams over
    /// one connection per endpoint (no lock, no connection per request), and
    /// etcd groups the writes that arrive together into one raft batch and
    /// one fsync: the grouped commits the SQLite backend does itself.
    fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    fn watch_client(&self) -> WatchClient {
        self.client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// Runs `attempt` until it succeeds, fails for good, or the request
    /// timeout runs out, pausing with exponential back-off between attempts.
    async fn call<T, F, Fut>(&self, op: Op, mut attempt: F) -> std::result::Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        let mut backoff = MIN_BACKOFF;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let failure = match timeout(remaining, attempt()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(err)) => Failure::Etcd(err),
                Err(_) => Failure::TimedOut(self.request_timeout),
            };
            let retry = match (failure.retry(), op) {
                (Retry::Safe, _) | (Retry::ReadsOnly, Op::Read) => true,
                (Retry::ReadsOnly, Op::Write) | (Retry::Never, _) => false,
            };
            if !retry || Instant::now() + backoff >= deadline {
                return Err(failure);
            }
            debug!(error = %failure, ?backoff, "etcd request failed; retrying");
            sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Runs a write transaction.
    async fn txn(&self, txn: Txn, what: &str) -> Result<TxnResponse> {
        self.call(Op::Write, || {
            let mut kv = self.kv();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|failure| failure.into_error(what))
    }

    fn convert(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        Ok(KeyValue {
            key: self.keys.store_key_of(kv.key())?,
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }

    /// The answer to a failed conditional write: the key is gone, or it has
    /// another modification revision.
    fn precondition_failed(&self, key: &str, expected: Revision, response: &TxnResponse) -> Error {
        let current = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get.kvs().first().map(|kv| kv.mod_revision())),
            _ => None,
        });
        match current.flatten() {
            Some(current) => Error::Conflict {
                key: key.to_owned(),
                expected,
                current,
            },
            None => Error::NotFound(key.to_owned()),
        }
    }

    /// Reads at revision `at` (no data, just the revision check): `Ok` when
    /// that revision is readable, else the failure.
    async fn probe(&self, at: Revision) -> std::result::Result<(), Failure> {
        let key = self.any_key();
        self.call(Op::Read, || {
            let mut kv = self.kv();
            let key = key.clone();
            async move {
                kv.get(
                    key,
                    Some(
                        GetOptions::new()
                            .with_revision(at)
                            .with_keys_only()
                            .with_limit(1),
                    ),
                )
                .await
            }
        })
        .await
        .map(|_| ())
    }

    /// The compacted revision, learnt from a watch from `at` (which etcd
    /// cancels with it); `at` itself when etcd does not say.
    async fn compacted_before(&self, at: Revision) -> Revision {
        let Some((start, end)) = self.keys.range(&self.keys.root) else {
            return at;
        };
        match self.open_watch(start, end, at.max(1)).await {
            Ok(mut stream) => self.compacted_revision(&mut stream).await.unwrap_or(at),
            Err(_) => at,
        }
    }

    /// Opens an etcd watch on `[start, end)` from revision `from` (inclusive).
    async fn open_watch(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        from: Revision,
    ) -> Result<etcd_client::WatchStream> {
        let options = WatchOptions::new()
            .with_range(end)
            .with_start_revision(from)
            .with_prev_key()
            .with_progress_notify();
        self.call(Op::Read, || {
            let mut client = self.watch_client();
            let (start, options) = (start.clone(), options.clone());
            async move { client.watch(start, Some(options)).await }
        })
        .await
        .map_err(|failure| failure.into_error("watch"))
    }

    /// Waits for etcd to cancel a watch on a compacted revision and returns
    /// the compacted revision it reports.
    async fn compacted_revision(&self, stream: &mut etcd_client::WatchStream) -> Result<Revision> {
        let wait = async {
            loop {
                match stream.message().await {
                    Ok(Some(response))
                        if response.canceled() && response.compact_revision() > 0 =>
                    {
                        return Ok(response.compact_revision());
                    }
                    Ok(Some(response)) if response.canceled() => {
                        return Err(Error::Backend(format!(
                            "etcd cancelled the watch: {}",
                            response.cancel_reason()
                        )));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(Error::Backend("etcd closed the watch stream".to_owned()));
                    }
                    Err(err) => return Err(Error::Backend(format!("etcd watch: {err}"))),
                }
            }
        };
        timeout(COMPACTION_NOTICE_TIMEOUT, wait)
            .await
            .map_err(|_| {
                Error::Backend(
                    "etcd reported a compacted revision for reads but not for the watch".to_owned(),
                )
            })?
    }
}

/// Puts `scheme` on endpoints given as `host:port`; refuses the other scheme.
fn with_scheme(endpoints: &[String], scheme: &str) -> Result<Vec<String>> {
    endpoints
        .iter()
        .map(|endpoint| {
            if endpoint.starts_with(scheme) {
                Ok(endpoint.clone())
            } else if endpoint.contains("://") {
                Err(Error::Backend(format!(
                    "etcd endpoint {endpoint:?} must use {scheme} (TLS is {})",
                    if scheme == "https://" {
                        "configured"
                    } else {
                        "not configured"
                    }
                )))
            } else {
                Ok(format!("{scheme}{endpoint}"))
            }
        })
        .collect()
}

async fn tls_options(tls: &EtcdTls) -> Result<TlsOptions> {
    let read = |path: std::path::PathBuf| async move {
        tokio::fs::read(&path)
            .await
            .map_err(|err| Error::Backend(format!("reading {}: {err}", path.display())))
    };
    let ca = read(tls.ca_file.clone()).await?;
    let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(client) = &tls.client {
        let cert = read(client.cert_file.clone()).await?;
        let key = read(client.key_file.clone()).await?;
        options = options.identity(Identity::from_pem(cert, key));
    }
    Ok(options)
}

/// The first response of a txn whose success branch ran one operation.
fn first_response(response: &TxnResponse) -> Option<TxnOpResponse> {
    response.op_responses().into_iter().next()
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| Error::Backend("etcd response without a header".to_owned()))
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let etcd_key = self.keys.etcd_key_of(key)?;
        let response = self
            .call(Op::Read, || {
                let mut kv = self.kv();
                let key = etcd_key.clone();
                async move { kv.get(key, None).await }
            })
            .await
            .map_err(|failure| failure.into_error("get"))?;
        response
            .kvs()
            .first()
            .map(|kv| self.convert(kv))
            .transpose()
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult> {
        let empty = |revision| ListResult {
            items: Vec::new(),
            revision: if options.revision != 0 { options.revision } else { revision },
            more: false,
            remaining: None,
        };
        let Some((mut start, end)) = self.keys.range(prefix) else {
            return Ok(empty(self.revision().await?));
        };
        if let Some(after) = &options.start_after {
            match self.keys.start_after(after) {
                None => return Ok(empty(self.revision().await?)),
                Some(Some(after)) if after > start => start = after,
                Some(_) => {}
            }
        }
        if end != [0] && start >= end {
            return Ok(empty(self.revision().await?));
        }
        let limit = i64::try_from(options.limit).unwrap_or(i64::MAX);
        let at = options.revision;
        let response = self
            .call(Op::Read, || {
                let mut kv = self.kv();
                let (start, end) = (start.clone(), end.clone());
                async move {
                    kv.get(
                        start,
                        Some(
                            GetOptions::new()
                                .with_range(end)
                                .with_limit(limit)
                                .with_revision(at),
                        ),
                    )
                    .await
                }
            })
            .await;
        let response = match response {
            Ok(response) => response,
            Err(failure) if failure.is_compacted() => {
                return Err(Error::Compacted {
                    requested: at,
                    compacted: self.compacted_before(at).await,
                });
            }
            Err(failure) if failure.is_future_revision() => {
                return Err(Error::FutureRevision {
                    requested: at,
                    current: self.revision().await?,
                });
            }
            Err(failure) => return Err(failure.into_error("list")),
        };
        let items = response
            .kvs()
            .iter()
            .map(|kv| self.convert(kv))
            .collect::<Result<Vec<_>>>()?;
        let more = options.limit != 0 && response.more();
        // `count` is every key in the range at that revision, not just this page.
        let remaining = more.then(|| u64::try_from(response.count()).unwrap_or(0).saturating_sub(items.len() as u64));
        Ok(ListResult {
            items,
            revision: if at != 0 { at } else { header_revision(response.header())? },
            more,
            remaining,
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let etcd_key = self.keys.etcd_key_of(key)?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(etcd_key, value.to_vec(), None)]);
        let response = self.txn(txn, "create").await?;
        if !response.succeeded() {
            return Err(Error::AlreadyExists(key.to_owned()));
        }
        let revision = header_revision(response.header())?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        let etcd_key = self.keys.etcd_key_of(key)?;
        let txn = Txn::new()
            .when([
                Compare::version(etcd_key.clone(), CompareOp::Greater, 0),
                Compare::mod_revision(etcd_key.clone(), CompareOp::Equal, expected),
            ])
            .and_then([TxnOp::put(
                etcd_key.clone(),
                value.to_vec(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(etcd_key, None)]);
        let response = self.txn(txn, "update").await?;
        if !response.succeeded() {
            return Err(self.precondition_failed(key, expected, &response));
        }
        let create_revision = match first_response(&response) {
            Some(TxnOpResponse::Put(put)) => put.prev_key().map(|prev| prev.create_revision()),
            _ => None,
        }
        .ok_or_else(|| {
            Error::Backend(format!(
                "etcd update of {key:?}: no previous value returned"
            ))
        })?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: header_revision(response.header())?,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let etcd_key = self.keys.etcd_key_of(key)?;
        let mut compares = vec![Compare::version(etcd_key.clone(), CompareOp::Greater, 0)];
        if let Some(expected) = expected {
            compares.push(Compare::mod_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                expected,
            ));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(
                etcd_key.clone(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(etcd_key, None)]);
        let response = self.txn(txn, "delete").await?;
        if !response.succeeded() {
            return Err(match expected {
                Some(expected) => self.precondition_failed(key, expected, &response),
                None => Error::NotFound(key.to_owned()),
            });
        }
        let previous = match first_response(&response) {
            Some(TxnOpResponse::Delete(delete)) => delete.prev_kvs().first().cloned(),
            _ => None,
        }
        .ok_or_else(|| {
            Error::Backend(format!(
                "etcd delete of {key:?}: no previous value returned"
            ))
        })?;
        Ok(KeyValue {
            mod_revision: header_revision(response.header())?,
            ..self.convert(&previous)?
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let after = after.max(0);
        // etcd's revision 0 means "now"; its history starts at revision 1.
        let from = after.max(1);
        let compacted = match self.probe(from).await {
            Ok(()) => false,
            Err(failure) if failure.is_compacted() => true,
            Err(failure) if failure.is_future_revision() => {
                return Err(Error::FutureRevision {
                    requested: after,
                    current: self.revision().await?,
                });
            }
            Err(failure) => return Err(failure.into_error("watch")),
        };
        let Some((start, end)) = self.keys.range(prefix) else {
            if compacted {
                // No etcd watch to learn the compacted revision from: ask one
                // on the store's whole prefix.
                let (start, end) = self.keys.range(&self.keys.root).unwrap_or_default();
                let mut stream = self.open_watch(start, end, from).await?;
                let compacted = self.compacted_revision(&mut stream).await?;
                return Err(Error::Compacted {
                    requested: after,
                    compacted,
                });
            }
            // Nothing can ever match: a stream that never yields.
            return Ok(Box::pin(futures::stream::pending()));
        };
        let mut stream = self.open_watch(start, end, from).await?;
        if compacted {
            let compacted = self.compacted_revision(&mut stream).await?;
            return Err(Error::Compacted {
                requested: after,
                compacted,
            });
        }
        debug!(prefix, after, "etcd watch started");
        let watch = Watch {
            stream,
            keys: self.keys.clone(),
            cursor: after,
            pending: VecDeque::new(),
            prefix: prefix.to_owned(),
        };
        Ok(Box::pin(futures::stream::unfold(
            Some(watch),
            |state| async move {
                let mut watch = state?;
                match watch.next().await {
                    Ok(event) => Some((Ok(event), Some(watch))),
                    Err(err) => {
                        warn!(prefix = %watch.prefix, cursor = watch.cursor, error = %err, "etcd watch ended");
                        Some((Err(err), None))
                    }
                }
            },
        )))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        if revision <= 0 {
            return Ok(());
        }
        let result = self
            .call(Op::Write, || {
                let mut kv = self.kv();
                async move {
                    kv.compact(revision, Some(CompactionOptions::new().with_physical()))
                        .await
                }
            })
            .await;
        match result {
            Ok(_) => {
                info!(revision, "compacted etcd history");
                Ok(())
            }
            // Already compacted at or past it: nothing to do.
            Err(failure) if failure.is_compacted() => Ok(()),
            Err(failure) if failure.is_future_revision() => Err(Error::FutureRevision {
                requested: revision,
                current: self.revision().await?,
            }),
            Err(failure) => Err(failure.into_error("compact")),
        }
    }

    async fn revision(&self) -> Result<Revision> {
        let key = self.any_key();
        let response = self
            .call(Op::Read, || {
                let mut kv = self.kv();
                let key = key.clone();
                async move {
                    kv.get(key, Some(GetOptions::new().with_keys_only().with_limit(1)))
                        .await
                }
            })
            .await
            .map_err(|failure| failure.into_error("read revision"))?;
        header_revision(response.header())
    }
}

/// The state of one watch stream.
struct Watch {
    stream: etcd_client::WatchStream,
    keys: KeyMap,
    /// Every event at or before this revision has been delivered (or queued).
    cursor: Revision,
    /// Events received but not yet delivered.
    pending: VecDeque<WatchEvent>,
    /// The store prefix watched (for logs).
    prefix: String,
}

impl Watch {
    /// The next event, or the error that ends the stream.
    async fn next(&mut self) -> Result<WatchEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            let response = match self.stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return Err(Error::Backend("etcd closed the watch stream".to_owned())),
                Err(err) => return Err(Error::Backend(format!("etcd watch failed: {err}"))),
            };
            if response.canceled() {
                if response.compact_revision() > 0 {
                    return Err(Error::Compacted {
                        requested: self.cursor,
                        compacted: response.compact_revision(),
                    });
                }
                return Err(Error::Backend(format!(
                    "etcd cancelled the watch: {}",
                    response.cancel_reason()
                )));
            }
            if response.events().is_empty() {
                trace!(
                    prefix = %self.prefix,
                    revision = response.header().map(|h| h.revision()),
                    created = response.created(),
                    "etcd watch progress"
                );
                continue;
            }
            for event in response.events() {
                let event = self.convert(event)?;
                if event.revision() > self.cursor {
                    self.cursor = event.revision();
                    self.pending.push_back(event);
                }
            }
        }
    }

    fn convert(&self, event: &etcd_client::Event) -> Result<WatchEvent> {
        let kv = event
            .kv()
            .ok_or_else(|| Error::Backend("etcd watch event without a key".to_owned()))?;
        let key = self.keys.store_key_of(kv.key())?;
        let prev = event.prev_kv().map(|prev| KeyValue {
            key: key.clone(),
            value: Bytes::copy_from_slice(prev.value()),
            create_revision: prev.create_revision(),
            mod_revision: prev.mod_revision(),
        });
        Ok(match event.event_type() {
            EventType::Put => WatchEvent {
                kind: if kv.create_revision() == kv.mod_revision() {
                    EventKind::Create
                } else {
                    EventKind::Update
                },
                kv: KeyValue {
                    key,
                    value: Bytes::copy_from_slice(kv.value()),
                    create_revision: kv.create_revision(),
                    mod_revision: kv.mod_revision(),
                },
                prev,
            },
            EventType::Delete => {
                let (value, create_revision) = match event.prev_kv() {
                    Some(prev) => (Bytes::copy_from_slice(prev.value()), prev.create_revision()),
                    None => {
                        // etcd omits prev_kv when that revision was compacted
                        // while the watch was behind.
                        warn!(
                            key,
                            revision = kv.mod_revision(),
                            "etcd delete event without its last value"
                        );
                        (Bytes::new(), 0)
                    }
                };
                WatchEvent {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key,
                        value,
                        create_revision,
                        mod_revision: kv.mod_revision(),
                    },
                    prev,
                }
            }
        })
    }
}
