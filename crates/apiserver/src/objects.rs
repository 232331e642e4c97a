//! A watch-fed cache of the objects token validation depends on:
//! ServiceAccount, Pod and Secret uids (and legacy token Secrets' tokens), on a
//! [`Reflector`]. Every applied change moves the epoch, which drops cached
//! review results at once.

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::Value;
use tessera_api::resource::{CORE_PODS, CORE_SECRETS, CORE_SERVICEACCOUNTS};
use tessera_authn::token::{ObjectLookup, SecretInfo};

use crate::reflector::Reflector;

type Key = (String, String);

/// What the cache holds.
#[derive(Default)]
pub struct State {
    service_accounts: HashMap<Key, String>,
    pods: HashMap<Key, String>,
    secrets: HashMap<Key, SecretInfo>,
}

/// The cache: cheap to clone, reads may be slightly stale (by one watch event).
pub type ObjectCache = Reflector<State>;

/// A cache following ServiceAccounts, Pods and Secrets.
pub fn object_cache() -> ObjectCache {
    let prefixes = [&CORE_SERVICEACCOUNTS, &CORE_PODS, &CORE_SECRETS].iter().map(|r| r.key_prefix(None)).collect();
    Reflector::new(prefixes, State::apply)
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

impl ObjectLookup for Reflector<State> {
    fn service_account_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.read(|s| s.service_accounts.get(&(namespace.to_owned(), name.to_owned())).cloned())
    }

    fn pod_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.read(|s| s.pods.get(&(namespace.to_owned(), name.to_owned())).cloned())
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<SecretInfo> {
        self.read(|s| s.secrets.get(&(namespace.to_owned(), name.to_owned())).cloned())
    }

    fn epoch(&self) -> u64 {
        Reflector::epoch(self)
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
