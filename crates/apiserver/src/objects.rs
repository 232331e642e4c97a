//! A watch-fed cache of the objects token validation depends on:
//! ServiceAccount, Pod and Secret uids (and legacy token Secrets' tokens), on a
//! [`Reflector`]. Every applied change moves the epoch, which drops cached
//! review results at once.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use serde::Deserialize;
use tessera_api::resource::{CORE_PODS, CORE_SECRETS, CORE_SERVICEACCOUNTS};
use tessera_authn::token::{ObjectLookup, SecretInfo};

use crate::reflector::Reflector;

/// What the cache holds. It mirrors every ServiceAccount, Pod and Secret, so
/// its size follows the store's: each entry is kept small (BENCHMARKS.md,
/// "The token objects' cache, one codegen unit").
#[derive(Default)]
pub struct State {
    service_accounts: ByName<Uid>,
    pods: ByName<Uid>,
    secrets: ByName<SecretInfo>,
}

/// The cache: cheap to clone, reads may be slightly stale (by one watch event).
pub type ObjectCache = Reflector<State>;

/// A cache following ServiceAccounts, Pods and Secrets.
pub fn object_cache() -> ObjectCache {
    let prefixes = [&CORE_SERVICEACCOUNTS, &CORE_PODS, &CORE_SECRETS].iter().map(|r| r.key_prefix(None)).collect();
    Reflector::new(prefixes, State::apply)
}

/// Entries by namespace, then name. A lookup borrows its names (nothing is
/// allocated to ask), and a table that most of its entries have left is
/// shrunk, so a burst of objects (a namespace of 100,000 ServiceAccounts,
/// deleted again) does not leave its peak's table behind.
struct ByName<V>(HashMap<Box<str>, HashMap<Box<str>, V>>);

impl<V> Default for ByName<V> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

/// Tables at most this large are left as they are.
const SHRINK_ABOVE: usize = 64;

impl<V> ByName<V> {
    fn get(&self, namespace: &str, name: &str) -> Option<&V> {
        self.0.get(namespace)?.get(name)
    }

    fn insert(&mut self, namespace: &str, name: &str, value: V) {
        let names = match self.0.get_mut(namespace) {
            Some(names) => names,
            None => self.0.entry(namespace.into()).or_default(),
        };
        match names.get_mut(name) {
            Some(slot) => *slot = value,
            None => {
                names.insert(name.into(), value);
            }
        }
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        let Some(names) = self.0.get_mut(namespace) else { return };
        names.remove(name);
        if names.is_empty() {
            self.0.remove(namespace);
        } else if names.capacity() > SHRINK_ABOVE && names.len() < names.capacity() / 4 {
            // Halving at a quarter full keeps the cost of shrinking amortized
            // over the removals that made room for it.
            names.shrink_to(names.len() * 2);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.values().map(HashMap::len).sum()
    }
}

/// A uid as the cache holds it: the 16 bytes of the UUID the server assigns,
/// or, for any other text (an object restored from another store), that
/// text. Either way [`Uid`]'s `Display` gives back exactly the stored text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Uid {
    Uuid(uuid::Uuid),
    Text(Box<str>),
}

impl From<&str> for Uid {
    fn from(text: &str) -> Self {
        match uuid::Uuid::try_parse(text) {
            // Only the canonical form: an uppercase or braced uid must compare
            // as the text it is.
            Ok(uuid) if uuid.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()) == text => Self::Uuid(uuid),
            _ => Self::Text(text.into()),
        }
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uuid(uuid) => uuid.hyphenated().fmt(f),
            Self::Text(text) => f.write_str(text),
        }
    }
}

enum Kind {
    ServiceAccount,
    Pod,
    Secret,
}

/// The kind, namespace and name of a key under `/registry/`.
fn classify(key: &str) -> Option<(Kind, &str, &str)> {
    let rest = key.strip_prefix("/registry/")?;
    let mut parts = rest.splitn(3, '/');
    let kind = match parts.next()? {
        "serviceaccounts" => Kind::ServiceAccount,
        "pods" => Kind::Pod,
        "secrets" => Kind::Secret,
        _ => return None,
    };
    Some((kind, parts.next()?, parts.next()?))
}

/// The part of a stored object the cache reads: only these fields are
/// decoded, the rest of the object is skipped.
#[derive(Deserialize)]
struct Stored<'a> {
    #[serde(default, borrow)]
    metadata: Metadata<'a>,
}

#[derive(Deserialize, Default)]
struct Metadata<'a> {
    #[serde(default, borrow)]
    uid: Option<Cow<'a, str>>,
}

impl Metadata<'_> {
    fn uid(&self) -> &str {
        self.uid.as_deref().unwrap_or_default()
    }
}

/// A stored Secret: its uid and its `data.token`.
#[derive(Deserialize)]
struct StoredSecret<'a> {
    #[serde(default, borrow)]
    metadata: Metadata<'a>,
    #[serde(default, borrow)]
    data: Option<SecretData<'a>>,
}

#[derive(Deserialize)]
struct SecretData<'a> {
    #[serde(default, borrow)]
    token: Option<Cow<'a, str>>,
}

impl StoredSecret<'_> {
    fn info(&self) -> SecretInfo {
        let token = self
            .data
            .as_ref()
            .and_then(|d| d.token.as_deref())
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok());
        SecretInfo { uid: self.metadata.uid().to_owned(), token }
    }
}

impl State {
    /// Applies one stored key; a value that is not an object of its kind
    /// counts as absent, as a deletion does.
    fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        let Some((kind, namespace, name)) = classify(key) else { return };
        match kind {
            Kind::ServiceAccount | Kind::Pod => {
                let map = if matches!(kind, Kind::Pod) { &mut self.pods } else { &mut self.service_accounts };
                match value.and_then(|v| serde_json::from_slice::<Stored>(v).ok()) {
                    Some(object) => map.insert(namespace, name, Uid::from(object.metadata.uid())),
                    None => map.remove(namespace, name),
                }
            }
            Kind::Secret => match value.and_then(|v| serde_json::from_slice::<StoredSecret>(v).ok()) {
                Some(secret) => self.secrets.insert(namespace, name, secret.info()),
                None => self.secrets.remove(namespace, name),
            },
        }
    }
}

impl ObjectLookup for Reflector<State> {
    fn service_account_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.read(|s| s.service_accounts.get(namespace, name).map(Uid::to_string))
    }

    fn pod_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.read(|s| s.pods.get(namespace, name).map(Uid::to_string))
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<SecretInfo> {
        self.read(|s| s.secrets.get(namespace, name).cloned())
    }

    fn epoch(&self) -> u64 {
        Reflector::epoch(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "5a7b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d";

    fn lookup(state: State) -> ObjectCache {
        let cache = object_cache();
        cache.write(|s| *s = state);
        cache
    }

    #[test]
    fn applies_puts_and_deletes() {
        let mut s = State::default();
        s.apply("/registry/serviceaccounts/ns/a", Some(format!(r#"{{"metadata":{{"uid":"{UID}","name":"a"}},"secrets":[]}}"#).as_bytes()));
        s.apply("/registry/pods/ns/p", Some(br#"{"metadata":{"uid":"p1"},"spec":{"containers":[]}}"#));
        s.apply("/registry/secrets/ns/t", Some(br#"{"metadata":{"uid":"s1"},"data":{"token":"YWJj"}}"#));
        s.apply("/registry/configmaps/ns/c", Some(b"{}"));
        let cache = lookup(s);
        assert_eq!(cache.service_account_uid("ns", "a").as_deref(), Some(UID));
        assert_eq!(cache.pod_uid("ns", "p").as_deref(), Some("p1"));
        assert_eq!(cache.secret("ns", "t"), Some(SecretInfo { uid: "s1".into(), token: Some("abc".into()) }));
        assert_eq!(cache.service_account_uid("ns", "p"), None, "kinds do not mix");
        assert_eq!(cache.service_account_uid("other", "a"), None, "namespaces do not mix");
        cache.write(|s| {
            s.apply("/registry/serviceaccounts/ns/a", None);
            s.apply("/registry/secrets/ns/t", None);
        });
        assert_eq!(cache.service_account_uid("ns", "a"), None);
        assert_eq!(cache.secret("ns", "t"), None);
        assert_eq!(cache.pod_uid("ns", "p").as_deref(), Some("p1"));
    }

    #[test]
    fn a_stored_value_that_is_not_an_object_of_its_kind_counts_as_absent() {
        let mut s = State::default();
        s.apply("/registry/serviceaccounts/ns/a", Some(br#"{"metadata":{"uid":"u1"}}"#));
        for bad in [&b"not json"[..], b"\"x\"", br#"{"metadata":5}"#, br#"{"metadata":{"uid":7}}"#] {
            s.apply("/registry/serviceaccounts/ns/a", Some(br#"{"metadata":{"uid":"u1"}}"#));
            s.apply("/registry/serviceaccounts/ns/a", Some(bad));
            assert_eq!(s.service_accounts.get("ns", "a"), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_uid_is_given_back_exactly_as_stored() {
        for text in [UID, "5A7B1C2D-3E4F-4A5B-8C6D-7E8F9A0B1C2D", "5a7b1c2d3e4f4a5b8c6d7e8f9a0b1c2d", "{5a7b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d}", "u1", ""] {
            assert_eq!(Uid::from(text).to_string(), text);
        }
        assert!(matches!(Uid::from(UID), Uid::Uuid(_)), "the server's own uids are held as 16 bytes");
        assert_ne!(Uid::from(UID), Uid::from("5A7B1C2D-3E4F-4A5B-8C6D-7E8F9A0B1C2D"));
    }

    #[test]
    fn a_burst_of_objects_gives_its_table_back_when_it_is_deleted() {
        let mut s = State::default();
        let key = |i: usize| format!("/registry/serviceaccounts/burst/sa-{i}");
        for i in 0..20_000 {
            s.apply(&key(i), Some(format!(r#"{{"metadata":{{"uid":"{}"}}}}"#, uuid::Uuid::new_v4()).as_bytes()));
        }
        let peak = s.service_accounts.0["burst"].capacity();
        assert!(peak >= 20_000);
        for i in 10..20_000 {
            s.apply(&key(i), None);
        }
        assert_eq!(s.service_accounts.len(), 10);
        let after = s.service_accounts.0["burst"].capacity();
        assert!(after <= 4 * SHRINK_ABOVE, "capacity {after} after the burst (peak {peak})");
        for i in 0..10 {
            s.apply(&key(i), None);
        }
        assert!(s.service_accounts.0.is_empty(), "an emptied namespace is dropped");
    }
}
