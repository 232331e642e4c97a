//! [`EncryptedStore`]: the configuration applied under any store.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use tessera_store::{Error, KeyValue, ListOptions, ListResult, Result, Revision, Store, WatchEvent, WatchStream};

use crate::EncryptionConfig;
use crate::provider::decrypt;

/// What [`EncryptedStore::rewrite`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewriteReport {
    /// Values re-encrypted with the current key.
    pub rewritten: usize,
    /// Values already stored with the current key (or changed meanwhile).
    pub current: usize,
}

/// A store whose values, for the resources the configuration covers, are
/// encrypted before they reach `inner` and decrypted as they come back.
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    config: Arc<EncryptionConfig>,
}

impl EncryptedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, config: Arc<EncryptionConfig>) -> Self {
        Self { inner, config }
    }

    /// Re-encrypts, with the first provider's first key, every value under
    /// `prefixes` that is stored any other way (an older key, another
    /// provider, plain): the step after putting a new key first. A value
    /// written concurrently was written with the current key; it is left
    /// alone. Safe to repeat and to run on any replica.
    pub async fn rewrite(&self, prefixes: &[&str]) -> Result<RewriteReport> {
        let mut report = RewriteReport::default();
        for prefix in prefixes {
            let mut start_after = None;
            loop {
                let page = self.inner.list(prefix, ListOptions { limit: 500, start_after: start_after.clone(), ..ListOptions::default() }).await?;
                for kv in &page.items {
                    let Some(current) = self.config.providers_for(&kv.key).and_then(|p| p.first()) else { continue };
                    if current.wrote(&kv.value) {
                        report.current += 1;
                        continue;
                    }
                    let plain = Self::open(&self.config, kv.clone())?;
                    match self.update(&kv.key, plain.value, kv.mod_revision).await {
                        Ok(_) => report.rewritten += 1,
                        Err(Error::Conflict { .. } | Error::NotFound(_)) => report.current += 1,
                        Err(e) => return Err(e),
                    }
                }
                if !page.more {
                    break;
                }
                start_after = page.items.last().map(|kv| kv.key.clone());
            }
        }
        Ok(report)
    }

    fn seal(&self, key: &str, value: &Bytes) -> Result<Bytes> {
        match self.config.providers_for(key).and_then(|p| p.first()) {
            Some(provider) => provider.encrypt(key, value).map(Bytes::from).map_err(|e| Error::Backend(format!("encrypting {key}: {e}"))),
            None => Ok(value.clone()),
        }
    }

    fn open(config: &EncryptionConfig, mut kv: KeyValue) -> Result<KeyValue> {
        if let Some(providers) = config.providers_for(&kv.key) {
            let plain = decrypt(providers, &kv.key, &kv.value).map_err(|e| Error::Backend(format!("decrypting {}: {e}", kv.key)))?;
            kv.value = Bytes::from(plain);
        }
        Ok(kv)
    }
}

#[async_trait::async_trait]
impl Store for EncryptedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner.get(key).await?.map(|kv| Self::open(&self.config, kv)).transpose()
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult> {
        let mut result = self.inner.list(prefix, options).await?;
        result.items = result.items.into_iter().map(|kv| Self::open(&self.config, kv)).collect::<Result<_>>()?;
        Ok(result)
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let mut kv = self.inner.create(key, self.seal(key, &value)?).await?;
        kv.value = value;
        Ok(kv)
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        let mut kv = self.inner.update(key, self.seal(key, &value)?, expected).await?;
        kv.value = value;
        Ok(kv)
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        Self::open(&self.config, self.inner.delete(key, expected).await?)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let config = Arc::clone(&self.config);
        let events = self.inner.watch(prefix, after).await?;
        Ok(Box::pin(events.map(move |event| {
            let event = event?;
            Ok(WatchEvent { kind: event.kind, kv: Self::open(&config, event.kv)?, prev: event.prev.map(|prev| Self::open(&config, prev)).transpose()? })
        })))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }

    async fn revision(&self) -> Result<Revision> {
        self.inner.revision().await
    }

    fn local_revision(&self) -> Option<Revision> {
        self.inner.local_revision()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - name: key1\n        secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n  - identity: {}\n";

    fn open_sqlite(dir: &std::path::Path) -> Arc<dyn Store> {
        Arc::new(tessera_store::sqlite::SqliteStore::open(&dir.join("store.db")).unwrap())
    }

    // The wrapped store still behaves as a store: the shared suite runs through it.
    tessera_store::store_conformance_suite!(async {
        let dir = tempfile::tempdir().expect("create temp dir");
        let store = EncryptedStore::new(open_sqlite(dir.path()), Arc::new(EncryptionConfig::parse(CONFIG).expect("config")));
        (Arc::new(store) as Arc<dyn Store>, dir)
    });

    #[tokio::test]
    async fn secrets_reach_the_file_encrypted_and_come_back_plain() {
        let dir = tempfile::tempdir().unwrap();
        let raw = open_sqlite(dir.path());
        let store = EncryptedStore::new(Arc::clone(&raw), Arc::new(EncryptionConfig::parse(CONFIG).unwrap()));
        let secret = Bytes::from_static(br#"{"kind":"Secret","data":{"password":"aHVudGVyMg=="}}"#);
        let created = store.create("/registry/secrets/ns/db", secret.clone()).await.unwrap();
        assert_eq!(created.value, secret);
        assert_eq!(store.get("/registry/secrets/ns/db").await.unwrap().unwrap().value, secret);
        let stored = raw.get("/registry/secrets/ns/db").await.unwrap().unwrap().value;
        assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert!(!stored.windows(12).any(|w| w == b"aHVudGVyMg=="));
        // Other kinds are not covered by the rule and stay as they are.
        store.create("/registry/configmaps/ns/c", Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!(raw.get("/registry/configmaps/ns/c").await.unwrap().unwrap().value, Bytes::from_static(b"{}"));
        // Watches and deletes see plain values.
        let mut events = store.watch("/registry/secrets/", 0).await.unwrap();
        assert_eq!(events.next().await.unwrap().unwrap().kv.value, secret);
        assert_eq!(store.delete("/registry/secrets/ns/db", None).await.unwrap().value, secret);
        drop(dir);
    }

    #[tokio::test]
    async fn a_value_without_a_known_key_is_an_error_not_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let raw = open_sqlite(dir.path());
        raw.create("/registry/secrets/ns/x", Bytes::from_static(b"k8s:enc:aesgcm:v1:gone:0123456789abcdef")).await.unwrap();
        let store = EncryptedStore::new(raw, Arc::new(EncryptionConfig::parse(CONFIG).unwrap()));
        let err = store.get("/registry/secrets/ns/x").await.unwrap_err().to_string();
        assert!(err.contains("no matching encryption provider and key"), "{err}");
    }

    #[tokio::test]
    async fn rotation_then_rewrite_moves_every_value_to_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let raw = open_sqlite(dir.path());
        let old = EncryptedStore::new(Arc::clone(&raw), Arc::new(EncryptionConfig::parse(CONFIG).unwrap()));
        raw.create("/registry/secrets/ns/plain", Bytes::from_static(b"{\"p\":1}")).await.unwrap();
        for i in 0..3 {
            old.create(&format!("/registry/secrets/ns/s{i}"), Bytes::from(format!("{{\"v\":{i}}}"))).await.unwrap();
        }
        let rotated_config = CONFIG.replace("      - name: key1", "      - name: key2\n        secret: QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=\n      - name: key1");
        let rotated = EncryptedStore::new(Arc::clone(&raw), Arc::new(EncryptionConfig::parse(&rotated_config).unwrap()));
        assert_eq!(rotated.rewrite(&["/registry/secrets/"]).await.unwrap(), RewriteReport { rewritten: 4, current: 0 });
        assert_eq!(rotated.rewrite(&["/registry/secrets/"]).await.unwrap(), RewriteReport { rewritten: 0, current: 4 });
        for kv in raw.list("/registry/secrets/", ListOptions::default()).await.unwrap().items {
            assert!(kv.value.starts_with(b"k8s:enc:aesgcm:v1:key2:"), "{}", kv.key);
        }
        // Only the new key left: everything still reads.
        let new_only = rotated_config.replace("      - name: key1\n        secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n", "").replace("  - identity: {}\n", "");
        let store = EncryptedStore::new(raw, Arc::new(EncryptionConfig::parse(&new_only).unwrap()));
        assert_eq!(store.get("/registry/secrets/ns/s2").await.unwrap().unwrap().value, Bytes::from_static(b"{\"v\":2}"));
        assert_eq!(store.get("/registry/secrets/ns/plain").await.unwrap().unwrap().value, Bytes::from_static(b"{\"p\":1}"));
    }
}
