//! Lists and watches with kube-apiserver's resourceVersion semantics.
//!
//! **Lists** read at one revision: the current one, the `resourceVersion`
//! of `resourceVersionMatch=Exact` (or of a paged legacy list), or the one a
//! `continue` token carries, so every page of a paged list shows the same
//! snapshot. A revision older than the compacted history is 410 Expired,
//! worded as kube-apiserver's etcd storage words it; an expired `continue`
//! token comes back with a fresh token (revision -1: "continue at the
//! latest") in the Status's `metadata.continue`.
//!
//! **Watches** turn store events into wire events as kube-apiserver's watch
//! cache does (`cacheWatcher.convertToWatchEvent`): with a selector, an
//! object that starts matching is ADDED, one that stops matching is DELETED
//! (its previous state, at the event's resourceVersion), and the previous
//! state comes with each store event, so this holds for a watch resumed from
//! any resourceVersion. With `allowWatchBookmarks`, a BOOKMARK is sent every
//! [`BOOKMARK_INTERVAL`] (kube: about a minute) carrying the last revision
//! this watch has seen (never one it has not: every store event up to it has
//! passed through), and `sendInitialEvents=true` ends its ADDED events with a
//! bookmark annotated `k8s.io/initial-events-end: "true"` (client-go's
//! watch-list).

use std::time::Duration;

use base64::Engine as _;
use futures::{Stream, StreamExt};
use serde_json::{Map, Value, json};
use tessera_store::{self as store, EventKind, ListOptions, Revision, WatchStream};

use super::{ListParams, Registry, WatchEvent, from_store, list_object, storage_error};
use crate::resource::ResourceInfo;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, Result};

/// How often a watch with `allowWatchBookmarks` gets a BOOKMARK.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

/// The annotation of the bookmark that ends a watch's initial events.
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

const EXPIRED_LIST: &str = "The resourceVersion for the provided list is too old.";
const INCONSISTENT_CONTINUE: &str = "The provided continue parameter is too old to display a consistent list result. \
You can start a new list without the continue parameter, or use the continue token in this response to retrieve the \
remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were \
created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

// === resourceVersion and continue tokens ===

/// Parses a `resourceVersion` query value as kube-apiserver's versioner does
/// (Go's `strconv.ParseUint`, base 10; `""` and `"0"` mean "any"). The
/// wording is kube's etcd storage's; kube-apiserver's watch cache returns the
/// same text as a 500, which kube treats as a bug (kubernetes#139485): a bad
/// value from the client is its error, so here it is a 400.
pub fn parse_resource_version(rv: &str) -> Result<u64> {
    if rv.is_empty() || rv == "0" {
        return Ok(0);
    }
    let reason = if !rv.bytes().all(|b| b.is_ascii_digit()) {
        "invalid syntax"
    } else if rv.parse::<u64>().is_err() {
        "value out of range"
    } else {
        return rv.parse::<u64>().map_err(|_| ApiError::bad_request("invalid resource version"));
    };
    let quoted = serde_json::to_string(rv).unwrap_or_default();
    Err(ApiError::bad_request(format!(
        "invalid resource version: resourceVersion: Invalid value: {quoted}: strconv.ParseUint: parsing {quoted}: {reason}"
    )))
}

/// A revision the store can be asked for (a u64 beyond i64 is in the future).
fn revision_of(rv: u64) -> Revision {
    Revision::try_from(rv).unwrap_or(Revision::MAX)
}

/// kube-apiserver's continue token: unpadded URL-safe base64 of
/// `{"v":"meta.k8s.io/v1","rv":N,"start":"<next key after the prefix>"}`.
/// Our start keys are the last key returned followed by `\0` (the smallest
/// key after it), exactly as kube's etcd storage writes them.
pub(super) fn encode_continue(revision: Revision, last_key: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": format!("{last_key}\u{0}")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

/// `token` made to read its next page at the latest revision (`"rv": -1`,
/// kube's "inconsistent continue"), not at its first page's: for a client that
/// needs no snapshot across pages. A page at an old revision costs the store a
/// read of the rest of the range plus every event since, whatever the limit.
pub fn continue_at_latest(token: &str) -> Result<String> {
    let next = decode_continue(token)?;
    Ok(encode_continue(-1, &next.after))
}

/// A decoded continue token: list after `after` (relative to the prefix) at
/// `revision` (-1: the latest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Continue {
    pub after: String,
    pub revision: Revision,
}

/// Decodes a continue token as kube's `storage.DecodeContinue`, with its
/// messages (`invalid continue token: …`, 400).
/// Go's `base64.RawURLEncoding`, which (unlike the crate's default engines)
/// ignores set bits after the last full byte.
const GO_RAW_URL_ENCODING: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
);

pub(super) fn decode_continue(token: &str) -> Result<Continue> {
    let invalid = |why: String| ApiError::bad_request(format!("invalid continue token: {why}"));
    let generic = "continue key is not valid";
    // Go's RawURLEncoding refuses padding; tessera's own older tokens were
    // padded, so padding is stripped first (it carries no data).
    let raw = GO_RAW_URL_ENCODING
        .decode(token.trim_end_matches('='))
        .map_err(|e| invalid(format!("{generic}: {}", go_base64_error(&e))))?;
    let v: Value = serde_json::from_slice(&raw).map_err(|e| invalid(format!("{generic}: {e}")))?;
    let version = v.get("v").and_then(Value::as_str).unwrap_or_default();
    if version != "meta.k8s.io/v1" {
        return Err(invalid(format!(
            "{generic}: server does not recognize this encoded version {version}"
        )));
    }
    let revision = v.get("rv").and_then(Value::as_i64).unwrap_or(0);
    if revision == 0 {
        return Err(invalid(format!(
            "{generic}: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
        )));
    }
    let start = v.get("start").and_then(Value::as_str).unwrap_or_default();
    if start.is_empty() {
        return Err(invalid(format!("{generic}: encoded start key empty (version meta.k8s.io/v1)")));
    }
    // kube cleans "/"+start with path.Clean and refuses a key that changes:
    // a token can never reach above the listed prefix.
    let rooted = if start.starts_with('/') { start.to_owned() } else { format!("/{start}") };
    if rooted.contains("//") || rooted.split('/').any(|s| s == "." || s == "..") || (rooted.len() > 1 && rooted.ends_with('/')) {
        return Err(invalid(format!("{generic}: {start}")));
    }
    let next = &rooted[1..];
    // The next key is the last key returned plus `\0`; we page "strictly
    // after the last key".
    let after = next.strip_suffix('\u{0}').unwrap_or(next).to_owned();
    Ok(Continue { after, revision })
}

/// Go's `base64.CorruptInputError` text.
fn go_base64_error(err: &base64::DecodeError) -> String {
    let offset = match err {
        base64::DecodeError::InvalidByte(offset, _) | base64::DecodeError::InvalidLastSymbol(offset, _) => *offset,
        base64::DecodeError::InvalidLength(length) => *length,
        base64::DecodeError::InvalidPadding => 0,
    };
    format!("illegal base64 data at input byte {offset}")
}

/// The list revision kube-apiserver would serve a list at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadAt {
    /// The current revision.
    Latest,
    /// At least this one: the current revision, which must have reached it.
    NotOlderThan(Revision),
    /// Exactly this one (`Exact`, a paged legacy list, or a continue token).
    Exact(Revision),
}

/// 504 `Too large resource version`, as kube-apiserver answers when its
/// cache has not reached the revision asked for.
fn too_large(requested: Revision, current: Revision) -> ApiError {
    ApiError::too_large_resource_version(requested, current)
}

// === impl Registry ===

impl Registry {
    /// Lists objects as a `…List` object: from the watch cache when the
    /// parameters let it (`super::cached`), otherwise from the store.
    pub(super) async fn list_objects(&self, resource: &ResourceInfo, namespace: Option<&str>, params: &ListParams) -> Result<Value> {
        match self.list_from_cache(resource, namespace, params).await? {
            Some(list) => Ok(list.to_value(resource)),
            None => self.list_from_store(resource, namespace, params).await,
        }
    }

    /// Lists objects from the store as a `…List` object (see the module doc for revisions).
    pub(super) async fn list_from_store(&self, resource: &ResourceInfo, namespace: Option<&str>, params: &ListParams) -> Result<Value> {
        let ns = Self::namespace_of(resource, namespace);
        let prefix = resource.key_prefix(ns);
        let rv = parse_resource_version(params.resource_version.as_deref().unwrap_or_default())?;
        let exact = params.resource_version_match.as_deref() == Some("Exact");
        let (read_at, mut start_after, token_revision) = match &params.continue_token {
            Some(token) => {
                let token = decode_continue(token)?;
                if rv != 0 {
                    return Err(ApiError::bad_request("specifying resource version is not allowed when using continue"));
                }
                let at = if token.revision > 0 { ReadAt::Exact(token.revision) } else { ReadAt::Latest };
                (at, Some(format!("{prefix}{}", token.after)), Some(token.after))
            }
            None if rv == 0 => (ReadAt::Latest, None, None),
            None if exact || params.limit > 0 && params.resource_version_match.is_none() => (ReadAt::Exact(revision_of(rv)), None, None),
            None => (ReadAt::NotOlderThan(revision_of(rv)), None, None),
        };
        let expired = |e: store::Error| match e {
            store::Error::Compacted { .. } => match &token_revision {
                Some(after) => {
                    let mut err = ApiError::gone(INCONSISTENT_CONTINUE);
                    err.list_continue = Some(encode_continue(-1, after));
                    err
                }
                None => ApiError::gone(EXPIRED_LIST),
            },
            store::Error::FutureRevision { requested, current } => too_large(requested, current),
            other => storage_error(other),
        };
        let mut revision = match read_at {
            ReadAt::Exact(at) => at,
            ReadAt::Latest => 0,
            ReadAt::NotOlderThan(at) => {
                let current = self.store.revision().await.map_err(storage_error)?;
                if at > current {
                    return Err(too_large(at, current));
                }
                0
            }
        };
        // A name pinned by the field selector is one key: no scan.
        if let Some(name) = params.fields.required_name()
            && ns.is_some() == resource.namespaced
            && start_after.is_none()
            && revision == 0
        {
            let key = resource.key(ns, name);
            let revision = self.store.revision().await.map_err(storage_error)?;
            let mut items = Vec::new();
            if let Some(kv) = self.store.get(&key).await.map_err(storage_error)? {
                let obj = super::from_store_as(resource, &kv.value, kv.mod_revision)?;
                if params.labels.matches(&obj) && params.fields.matches(&obj) {
                    items.push(obj);
                }
            }
            return Ok(list_object(resource, items, revision, None));
        }
        let mut items = Vec::new();
        let mut next_token = None;
        let mut remaining: Option<u64>;
        loop {
            let want = if params.limit == 0 { 0 } else { params.limit - items.len() };
            let options = ListOptions { limit: want, start_after: start_after.clone(), revision };
            let page = self.store.list(&prefix, options).await.map_err(expired)?;
            // Later pages read at the first page's revision.
            revision = page.revision;
            remaining = page.remaining;
            let last_key = page.items.last().map(|kv| kv.key.clone());
            for kv in &page.items {
                let obj = super::from_store_as(resource, &kv.value, kv.mod_revision)?;
                if params.labels.matches(&obj) && params.fields.matches(&obj) {
                    items.push(obj);
                }
            }
            if !page.more {
                break;
            }
            let Some(last) = last_key else { break };
            if params.limit != 0 && items.len() >= params.limit {
                next_token = Some(encode_continue(revision, last.strip_prefix(&prefix).unwrap_or(&last)));
                break;
            }
            start_after = Some(last);
        }
        let cut = next_token.is_some();
        let mut list = list_object(resource, items, revision, next_token);
        // kube counts what follows only without selectors (the store's count
        // includes objects a selector would drop).
        if cut
            && params.labels.is_empty()
            && params.fields.is_empty()
            && let Some(count) = remaining
        {
            list["metadata"]["remainingItemCount"] = json!(count);
        }
        Ok(list)
    }

    /// Watches objects (see the module doc).
    pub(super) async fn watch_objects(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        params: &ListParams,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<impl Stream<Item = WatchEvent> + Send + 'static> {
        let ns = Self::namespace_of(resource, namespace);
        let prefix = resource.key_prefix(ns);
        let rv = parse_resource_version(params.resource_version.as_deref().unwrap_or_default())?;
        let bookmarks = params.allow_watch_bookmarks;
        // Without a resourceVersion (or with 0) a watch starts with the
        // current objects, unless the client says `sendInitialEvents=false`;
        // with one, only if it says `sendInitialEvents=true`.
        let initial = params.send_initial_events.unwrap_or(rv == 0);
        let kind = resource.kind.to_owned();
        let api_version = resource.api_version();
        let (mut first, after) = if initial {
            let all = ListParams { limit: 0, continue_token: None, resource_version: None, resource_version_match: None, ..params.clone() };
            match self.list_body(resource, namespace, &all).await? {
                super::cached::ListBody::Cached(list) => {
                    let rev = list.revision();
                    (list.items().iter().map(|o| WatchEvent { shared: Some(o.clone()), type_: "ADDED", object: Value::Null }).collect(), rev)
                }
                super::cached::ListBody::Value(list) => {
                    let rev = list
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .and_then(|rv| rv.parse::<Revision>().ok())
                        .unwrap_or(0);
                    let items = match list {
                        Value::Object(mut m) => match m.remove("items") {
                            Some(Value::Array(items)) => items,
                            _ => Vec::new(),
                        },
                        _ => Vec::new(),
                    };
                    (items.into_iter().map(|object| WatchEvent { shared: None, type_: "ADDED", object }).collect::<Vec<_>>(), rev)
                }
            }
        } else if rv == 0 {
            match self.cache.as_ref().filter(|c| c.is_ready()) {
                Some(cache) => (Vec::new(), cache.revision()),
                None => (Vec::new(), self.store.revision().await.map_err(storage_error)?),
            }
        } else {
            (Vec::new(), revision_of(rv))
        };
        if params.send_initial_events == Some(true) && bookmarks {
            first.push(WatchEvent { shared: None, type_: "BOOKMARK", object: bookmark(&kind, &api_version, after, true) });
        }
        let filter = Filter { labels: params.labels.clone(), fields: params.fields.clone() };
        // The ring may still hold events the store has compacted away; a
        // client's resourceVersion older than the store's history gets the
        // store's 410, so a deleted object is never replayed from memory.
        let resumed = rv > 0 && !initial;
        let served = if resumed { self.store_has_history(&prefix, after).await } else { true };
        if let Some(sub) = self.watch_from_cache(&prefix, after).filter(|_| served) {
            let live = super::cached::CachedWatch {
                backlog: sub.backlog,
                live: sub.live,
                prefix,
                after,
                filter,
                progress: after,
                bookmarks: bookmarks.then(|| Bookmarks::new(self.bookmark_interval, deadline)),
                kind,
                api_version,
            };
            return Ok(futures::stream::iter(first).chain(live.into_stream().boxed()).right_stream());
        }
        let live = match self.store.watch(&prefix, after).await {
            Ok(stream) => stream,
            Err(e @ (store::Error::Compacted { .. } | store::Error::FutureRevision { .. })) => {
                let err = match e {
                    store::Error::Compacted { requested, compacted } => {
                        ApiError::gone(format!("too old resource version: {requested} ({compacted})"))
                    }
                    other => ApiError::gone(format!("too large resource version: {other}")),
                };
                let event = WatchEvent { shared: None, type_: "ERROR", object: err.to_status() };
                return Ok(futures::stream::iter(vec![event]).left_stream());
            }
            Err(e) => return Err(storage_error(e)),
        };
        let live = LiveWatch {
            live,
            filter,
            progress: after,
            bookmarks: bookmarks.then(|| Bookmarks::new(self.bookmark_interval, deadline)),
            kind,
            api_version,
            ended: false,
        };
        let live = futures::stream::unfold(live, |mut live| async move {
            let event = live.next().await?;
            Some((event, live))
        });
        Ok(futures::stream::iter(first).chain(live.boxed()).right_stream())
    }
}

/// A watch's selectors.
#[derive(Debug, Clone)]
pub(super) struct Filter {
    pub(super) labels: LabelSelector,
    pub(super) fields: FieldSelector,
}

impl Filter {
    pub(super) fn is_everything(&self) -> bool {
        self.labels.is_empty() && self.fields == FieldSelector::default()
    }

    pub(super) fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

/// When a watch's next BOOKMARK is due, as kube's cacher schedules them
/// (`cacheWatcher.nextBookmarkTime`): every period, and once
/// [`PRE_TIMEOUT`] before the watch's deadline, so that a client resumes
/// from a fresh resourceVersion.
pub(super) struct Bookmarks {
    period: std::time::Duration,
    deadline: Option<tokio::time::Instant>,
    pub(super) next: Option<tokio::time::Instant>,
}

/// How long before a watch's deadline its last BOOKMARK goes out (kube: 2 s).
pub const PRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl Bookmarks {
    fn new(period: std::time::Duration, deadline: Option<tokio::time::Instant>) -> Self {
        let mut b = Self { period, deadline, next: None };
        b.schedule();
        b
    }

    /// The next bookmark: a period from now or just before the deadline,
    /// whichever is first; none when that moment has passed.
    pub(super) fn schedule(&mut self) {
        let now = tokio::time::Instant::now();
        let mut next = now + self.period;
        if let Some(pre) = self.deadline.and_then(|d| d.checked_sub(PRE_TIMEOUT)) {
            next = next.min(pre);
        }
        self.next = (next > now).then_some(next);
    }
}

/// The live part of a watch: store events in, wire events and bookmarks out.
struct LiveWatch {
    live: WatchStream,
    filter: Filter,
    /// Every store event up to this revision has been seen.
    progress: Revision,
    bookmarks: Option<Bookmarks>,
    kind: String,
    api_version: String,
    ended: bool,
}

impl LiveWatch {
    /// The next wire event, or `None` once the watch has ended.
    async fn next(&mut self) -> Option<WatchEvent> {
        if self.ended {
            return None;
        }
        loop {
            let due = self.bookmarks.as_ref().and_then(|b| b.next);
            let item = match due {
                Some(at) => tokio::select! {
                    item = self.live.next() => Some(item),
                    _ = tokio::time::sleep_until(at) => None,
                },
                None => Some(self.live.next().await),
            };
            match item {
                None => {
                    if let Some(b) = &mut self.bookmarks {
                        b.schedule();
                    }
                    return Some(WatchEvent { shared: None, type_: "BOOKMARK", object: bookmark(&self.kind, &self.api_version, self.progress, false) });
                }
                Some(None) => return None,
                Some(Some(Err(e))) => {
                    tracing::warn!(error = %e, "watch ended by the store");
                    self.ended = true;
                    let status = match e {
                        store::Error::Compacted { requested, compacted } => {
                            ApiError::gone(format!("too old resource version: {requested} ({compacted})"))
                        }
                        other => ApiError::gone(format!("watch closed: {other}")),
                    };
                    return Some(WatchEvent { shared: None, type_: "ERROR", object: status.to_status() });
                }
                Some(Some(Ok(event))) => {
                    self.progress = self.progress.max(event.revision());
                    if let Some(event) = convert_event(event, &self.filter) {
                        return Some(event);
                    }
                }
            }
        }
    }
}

/// A BOOKMARK's object: only kind, apiVersion and the resourceVersion (and
/// the initial-events-end annotation), as kube-apiserver sends it.
pub(super) fn bookmark(kind: &str, api_version: &str, revision: Revision, initial_events_end: bool) -> Value {
    let mut metadata = Map::new();
    metadata.insert("resourceVersion".into(), Value::String(revision.to_string()));
    metadata.insert("creationTimestamp".into(), Value::Null);
    if initial_events_end {
        metadata.insert("annotations".into(), json!({INITIAL_EVENTS_END: "true"}));
    }
    json!({"kind": kind, "apiVersion": api_version, "metadata": metadata})
}

/// Turns a store event into a wire event, or nothing when this watcher does
/// not care (kube's `convertToWatchEvent`): with selectors, the current and
/// the previous state decide ADDED, MODIFIED or DELETED; an object that stops
/// matching is DELETED as it was, at the event's resourceVersion.
fn convert_event(ev: store::WatchEvent, filter: &Filter) -> Option<WatchEvent> {
    let revision = ev.revision();
    let decode = |value: &[u8]| from_store(value, revision);
    let error = |e: ApiError| Some(WatchEvent { shared: None, type_: "ERROR", object: e.to_status() });
    if filter.is_everything() {
        let type_ = match ev.kind {
            EventKind::Create => "ADDED",
            EventKind::Update => "MODIFIED",
            EventKind::Delete => "DELETED",
        };
        return match decode(&ev.kv.value) {
            Ok(object) => Some(WatchEvent { shared: None, type_, object }),
            Err(e) => error(e),
        };
    }
    let current = match ev.kind {
        EventKind::Delete => None,
        _ => match decode(&ev.kv.value) {
            Ok(object) => Some(object),
            Err(e) => return error(e),
        },
    };
    // A delete's stored value is the last state; history written before the
    // store kept previous values has none for updates: take the current
    // state, which reports a MODIFIED (or nothing) instead of a transition.
    let previous_value = match (&ev.prev, ev.kind) {
        (Some(prev), _) => Some(prev.value.clone()),
        (None, EventKind::Delete) => Some(ev.kv.value.clone()),
        (None, EventKind::Update) => Some(ev.kv.value.clone()),
        (None, EventKind::Create) => None,
    };
    let previous = match previous_value.map(|v| decode(&v)).transpose() {
        Ok(previous) => previous,
        Err(e) => return error(e),
    };
    let now = current.as_ref().is_some_and(|o| filter.matches(o));
    let before = previous.as_ref().is_some_and(|o| filter.matches(o));
    match (now, before) {
        (true, false) => current.map(|object| WatchEvent { shared: None, type_: "ADDED", object }),
        (true, true) => current.map(|object| WatchEvent { shared: None, type_: "MODIFIED", object }),
        (false, true) => previous.map(|object| WatchEvent { shared: None, type_: "DELETED", object }),
        (false, false) => None,
    }
}

#[cfg(test)]
#[path = "read_tests.rs"]
mod registry_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_continue_token_moved_to_the_latest_revision_keeps_its_start() {
        let token = encode_continue(42, "big/cm-0049");
        let moved = continue_at_latest(&token).expect("ours");
        assert_eq!(decode_continue(&moved).expect("valid"), Continue { after: "big/cm-0049".into(), revision: -1 });
        assert_eq!(continue_at_latest("not a token").unwrap_err().code, 400);
    }

    #[test]
    fn resource_versions_parse_as_kube_parses_them() {
        assert_eq!(parse_resource_version("").ok(), Some(0));
        assert_eq!(parse_resource_version("0").ok(), Some(0));
        assert_eq!(parse_resource_version("42").ok(), Some(42));
        let err = parse_resource_version("abc").unwrap_err();
        assert_eq!(err.code, 400);
        assert_eq!(
            err.message,
            r#"invalid resource version: resourceVersion: Invalid value: "abc": strconv.ParseUint: parsing "abc": invalid syntax"#
        );
        for bad in ["-1", "+1", "1.5", " 1"] {
            assert!(parse_resource_version(bad).unwrap_err().message.ends_with("invalid syntax"), "{bad}");
        }
        assert!(parse_resource_version("99999999999999999999").unwrap_err().message.ends_with("value out of range"));
    }

    #[test]
    fn continue_tokens_round_trip_in_kubes_format() {
        let token = encode_continue(17, "ns/b");
        // kube's exact encoding: unpadded URL-safe base64 of its JSON.
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token).expect("base64");
        assert_eq!(String::from_utf8(raw).expect("utf8"), "{\"rv\":17,\"start\":\"ns/b\\u0000\",\"v\":\"meta.k8s.io/v1\"}");
        assert_eq!(decode_continue(&token), Ok(Continue { after: "ns/b".into(), revision: 17 }));
    }

    #[test]
    fn bad_continue_tokens_get_kubes_messages() {
        let enc = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let msg = |t: &str| decode_continue(t).unwrap_err().message;
        assert_eq!(msg("!!!"), "invalid continue token: continue key is not valid: illegal base64 data at input byte 0");
        // Go ignores set bits after the last full byte: "not-a-token" decodes,
        // and it is its JSON that is refused.
        assert!(msg("not-a-token").starts_with("invalid continue token: continue key is not valid: "));
        assert!(!msg("not-a-token").contains("base64"), "{}", msg("not-a-token"));
        assert_eq!(
            msg(&enc(json!({"v": "meta.k8s.io/v1", "rv": 0, "start": "a"}))),
            "invalid continue token: continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
        );
        assert_eq!(
            msg(&enc(json!({"v": "meta.k8s.io/v1", "rv": 3, "start": ""}))),
            "invalid continue token: continue key is not valid: encoded start key empty (version meta.k8s.io/v1)"
        );
        assert_eq!(
            msg(&enc(json!({"v": "x/v9", "rv": 3, "start": "a"}))),
            "invalid continue token: continue key is not valid: server does not recognize this encoded version x/v9"
        );
        assert_eq!(
            msg(&enc(json!({"v": "meta.k8s.io/v1", "rv": 3, "start": "../secrets/x"}))),
            "invalid continue token: continue key is not valid: ../secrets/x"
        );
    }

    #[test]
    fn bookmarks_carry_only_the_resource_version() {
        assert_eq!(
            bookmark("ConfigMap", "v1", 12, true),
            json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {
                "resourceVersion": "12", "creationTimestamp": null,
                "annotations": {"k8s.io/initial-events-end": "true"}}})
        );
        assert!(bookmark("Pod", "v1", 3, false)["metadata"].get("annotations").is_none());
    }
}
