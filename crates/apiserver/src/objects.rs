//! A watch-fed cache of the objects token validation depends on:
//! ServiceAccount, Pod and Secret uids (and legacy token Secrets' tokens).
//!
//! One writer task follows the store: a full list, then a watch from the list's
//! revision; on a watch failure it re-lists and swaps the new state in whole.
//! Readers never touch the store. Every applied change bumps an epoch, which
//! drops cached review results at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use futures::StreamExt;
use serde_json::Value;
use tessera_api::resource::{CORE_PODS, CORE_SECRETS, CORE_SERVICEACCOUNTS};
use tessera_authn::token::{ObjectLookup, SecretInfo};
use tessera_store::{EventKind, ListOptions, Revision, Store};

type Key = (String, String);

#[derive(Default)]
struct State {
    service_accounts: HashMap<Key, String>,
    pods: HashMap<Key, String>,
    secrets: HashMap<Key, SecretInfo>,
}

/// The cache: cheap to clone, reads may be slightly stale (by one watch event).
#[derive(Clone)]
pub struct ObjectCache {
    state: Arc<RwLock<State>>,
    epoch: Arc<AtomicU64>,
    ready: Arc<tokio::sync::watch::Sender<bool>>,
    applied: Arc<tokio::sync::watch::Sender<Revision>>,
}

impl Default for ObjectCache {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            epoch: Arc::default(),
            ready: Arc::new(tokio::sync::watch::channel(false).0),
            applied: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

enum Kind {
    ServiceAccount,
    Pod,
    Secret,
}

fn classify(key: &str) -> Option<(Kind, Key)> {
    let rest = key.strip_prefix("/registry/")?;
    let mut parts = rest.splitn(3, '/');
    let kind = match parts.next()? {
        "serviceaccounts" => Kind::ServiceAccount,
        "pods" => Kind::Pod,
        "secrets" => Kind::Secret,
        _ => return None,
    };
    let ns = parts.next()?.to_owned();
    let name = parts.next()?.to_owned();
    Some((kind, (ns, name)))
}

fn uid_of(obj: &Value) -> String {
    obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn secret_info(obj: &Value) -> SecretInfo {
    let token = obj
        .pointer("/data/token")
        .and_then(Value::as_str)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    SecretInfo { uid: uid_of(obj), token }
}

impl State {
    fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        let Some((kind, k)) = classify(key) else { return };
        let obj: Option<Value> = value.and_then(|v| serde_json::from_slice(v).ok());
        match (kind, obj) {
            (Kind::ServiceAccount, Some(o)) => {
                self.service_accounts.insert(k, uid_of(&o));
            }
            (Kind::ServiceAccount, None) => {
                self.service_accounts.remove(&k);
            }
            (Kind::Pod, Some(o)) => {
                self.pods.insert(k, uid_of(&o));
            }
            (Kind::Pod, None) => {
                self.pods.remove(&k);
            }
            (Kind::Secret, Some(o)) => {
                self.secrets.insert(k, secret_info(&o));
            }
            (Kind::Secret, None) => {
                self.secrets.remove(&k);
            }
        }
    }
}

// === impl ObjectCache ===

impl ObjectCache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // The state is only ever replaced or changed entry by entry; a panic
        // elsewhere cannot leave it half-written.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves once the initial list has been loaded.
    pub async fn wait_until_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Waits (briefly) until every change up to `revision` is applied, so a
    /// client that deleted a ServiceAccount sees its tokens refused at once.
    pub async fn caught_up(&self, revision: Revision) {
        let mut rx = self.applied.subscribe();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), rx.wait_for(|r| *r >= revision)).await;
    }

    /// Loads the current state and returns the revision to watch from.
    async fn relist(&self, store: &Arc<dyn Store>) -> Result<Revision, tessera_store::Error> {
        let mut fresh = State::default();
        let mut revision = None;
        for prefix in [CORE_SERVICEACCOUNTS.key_prefix(None), CORE_PODS.key_prefix(None), CORE_SECRETS.key_prefix(None)] {
            let list = store.list(&prefix, ListOptions::default()).await?;
            // Lists of different prefixes may see different revisions; watching
            // from the smallest replays anything in between (applying is idempotent).
            revision = Some(revision.map_or(list.revision, |r: Revision| r.min(list.revision)));
            for kv in &list.items {
                fresh.apply(&kv.key, Some(&kv.value));
            }
        }
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.ready.send_replace(true);
        let revision = revision.unwrap_or(0);
        self.applied.send_if_modified(|r| (*r < revision).then(|| *r = revision).is_some());
        Ok(revision)
    }

    /// Follows the store until `shutdown`; call once.
    pub async fn run(self, store: Arc<dyn Store>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let after = match self.relist(&store).await {
                Ok(rev) => rev,
                Err(e) => {
                    tracing::warn!(error = %e, "object cache list failed; retrying");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => continue,
                    }
                }
            };
            let streams = futures::future::try_join3(
                store.watch(&CORE_SERVICEACCOUNTS.key_prefix(None), after),
                store.watch(&CORE_PODS.key_prefix(None), after),
                store.watch(&CORE_SECRETS.key_prefix(None), after),
            )
            .await;
            let mut events = match streams {
                Ok((a, b, c)) => futures::stream::select(a, futures::stream::select(b, c)),
                Err(e) => {
                    tracing::warn!(error = %e, "object cache watch failed; re-listing");
                    continue;
                }
            };
            loop {
                let event = tokio::select! {
                    _ = &mut shutdown => return,
                    event = events.next() => event,
                };
                match event {
                    Some(Ok(event)) => {
                        let value = (event.kind != EventKind::Delete).then_some(&event.kv.value[..]);
                        self.state.write().unwrap_or_else(|p| p.into_inner()).apply(&event.kv.key, value);
                        self.epoch.fetch_add(1, Ordering::AcqRel);
                        self.applied.send_replace(event.revision());
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "object cache watch ended; re-listing");
                        break;
                    }
                    None => return,
                }
            }
        }
    }
}

impl ObjectLookup for ObjectCache {
    fn service_account_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.read().service_accounts.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    fn pod_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.read().pods.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<SecretInfo> {
        self.read().secrets.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_puts_and_deletes() {
        let mut s = State::default();
        s.apply("/registry/serviceaccounts/ns/a", Some(br#"{"metadata":{"uid":"u1"}}"#));
        s.apply("/registry/secrets/ns/t", Some(br#"{"metadata":{"uid":"s1"},"data":{"token":"YWJj"}}"#));
        s.apply("/registry/configmaps/ns/c", Some(b"{}"));
        assert_eq!(s.service_accounts.get(&("ns".into(), "a".into())).map(String::as_str), Some("u1"));
        assert_eq!(s.secrets.get(&("ns".into(), "t".into())).and_then(|i| i.token.as_deref()), Some("abc"));
        s.apply("/registry/serviceaccounts/ns/a", None);
        assert!(s.service_accounts.is_empty());
    }
}
