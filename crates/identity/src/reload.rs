//! Where the issuer comes from and how it is replaced without a restart.
//!
//! One writer task per process feeds a `tokio::sync::watch` channel of
//! `Option<Arc<Issuer>>`: [`poll_dir`] re-reads `crt.pem`/`key.pem` every
//! second, [`watch_secret`] follows a `kubernetes.io/tls` Secret with a kube
//! watcher. Each new version goes through [`IssuerUpdater::offer`]: a good
//! issuer is swapped in whole (`IssuerUpdated`), a bad one is refused and the
//! current one kept, with an error log (and, for a Secret, a Warning Event).
//! Readers may see the previous issuer for up to one poll or watch delay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::error::{Error, IssuerError};
use crate::issuer::{Issuer, IssuerMaterial};
use crate::metrics::Metrics;
use crate::pki::{self, TrustAnchors};
use crate::review::IdentityNaming;
use crate::service::Clock;

/// Reason of the Event and log line for a new issuer in use.
pub const ISSUER_UPDATED: &str = "IssuerUpdated";
/// Reason of the Warning Event for a refused issuer.
pub const ISSUER_REJECTED: &str = "IssuerRejected";
/// How often an issuer directory is re-read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The component name on Events.
pub const COMPONENT: &str = "tessera-identity";

/// Where the issuer certificate and key are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerSource {
    /// A directory with `crt.pem` and `key.pem` (Linkerd's layout).
    Dir(PathBuf),
    /// A Secret with `tls.crt`/`tls.key` (cert-manager's `kubernetes.io/tls`)
    /// or `crt.pem`/`key.pem`.
    Secret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl std::fmt::Display for IssuerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "directory {}", dir.display()),
            Self::Secret { namespace, name } => write!(f, "Secret {namespace}/{name}"),
        }
    }
}

/// Reads `crt.pem` and `key.pem` from an issuer directory.
pub fn read_issuer_dir(dir: &Path) -> Result<IssuerMaterial, Error> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read(&path).map_err(|e| Error::io(path, e))
    };
    Ok(IssuerMaterial { cert_pem: read("crt.pem")?, key_pem: read("key.pem")? })
}

/// The issuer material in a Secret: `tls.crt`/`tls.key`, else `crt.pem`/`key.pem`.
pub fn secret_material(secret: &Secret) -> Result<IssuerMaterial, IssuerError> {
    let data = secret.data.as_ref();
    let get = |key: &str| data.and_then(|d| d.get(key)).map(|b| b.0.clone());
    let cert_pem = get("tls.crt").or_else(|| get("crt.pem")).ok_or(IssuerError::NoCertificate)?;
    let key_pem = get("tls.key")
        .or_else(|| get("key.pem"))
        .ok_or_else(|| IssuerError::Key("the Secret has neither tls.key nor key.pem".to_owned()))?;
    Ok(IssuerMaterial { cert_pem, key_pem })
}

/// What happened to an offered issuer version.
#[derive(Debug)]
pub enum Offer {
    /// Same bytes as the last version offered: nothing to do.
    Unchanged,
    /// Now in use.
    Updated(Arc<Issuer>),
    /// Refused; the previous issuer (if any) stays in use.
    Rejected(IssuerError),
}

/// The single writer of the issuer watch channel.
pub struct IssuerUpdater {
    tx: watch::Sender<Option<Arc<Issuer>>>,
    anchors: TrustAnchors,
    naming: IdentityNaming,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    last_offered: Option<IssuerMaterial>,
    anchor_updates: Option<watch::Receiver<TrustAnchors>>,
}

impl std::fmt::Debug for IssuerUpdater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerUpdater").finish_non_exhaustive()
    }
}

impl IssuerUpdater {
    /// An updater writing to `tx`, checking issuers against `anchors` with a
    /// probe leaf for an identity of `naming`'s trust domain.
    pub fn new(tx: watch::Sender<Option<Arc<Issuer>>>, anchors: TrustAnchors, naming: IdentityNaming, clock: Arc<dyn Clock>, metrics: Metrics) -> Self {
        Self { tx, anchors, naming, clock, metrics, last_offered: None, anchor_updates: None }
    }

    /// Checks issuers against the anchors `rx` publishes from now on (the
    /// watched bundle): an issuer of a root added later is then accepted.
    pub fn follow_anchors(mut self, rx: watch::Receiver<TrustAnchors>) -> Self {
        self.anchors = rx.borrow().clone();
        self.anchor_updates = Some(rx);
        self
    }

    /// Takes new anchors if the bundle changed; the same issuer material is
    /// then checked again (it may chain to a root only now trusted).
    fn refresh_anchors(&mut self) {
        if let Some(rx) = &mut self.anchor_updates
            && rx.has_changed().unwrap_or(false)
        {
            self.anchors = rx.borrow_and_update().clone();
            self.last_offered = None;
        }
    }

    /// Resolves when the bundle changed (never without a watched bundle);
    /// the new anchors are then in use.
    pub async fn anchors_changed(&mut self) {
        let Some(rx) = &mut self.anchor_updates else { return std::future::pending().await };
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        self.anchors = rx.borrow_and_update().clone();
        self.last_offered = None;
    }

    /// Checks `material` and, when it is new and good, swaps it in.
    pub fn offer(&mut self, material: IssuerMaterial, from: &IssuerSource) -> Offer {
        self.refresh_anchors();
        if self.last_offered.as_ref() == Some(&material) {
            return Offer::Unchanged;
        }
        let result = Issuer::load(&material, &self.anchors, &self.naming, self.clock.now());
        self.last_offered = Some(material);
        match result {
            Ok(issuer) => {
                let issuer = Arc::new(issuer);
                self.tx.send_replace(Some(issuer.clone()));
                self.metrics.issuer_updated(issuer.not_after().unix_timestamp());
                tracing::info!(
                    reason = ISSUER_UPDATED,
                    %from,
                    subject = %issuer.subject(),
                    not_after = %pki::rfc3339(issuer.not_after()),
                    "IssuerUpdated: the identity issuer was updated"
                );
                Offer::Updated(issuer)
            }
            Err(e) => {
                self.metrics.issuer_rejected();
                let keeping = if self.tx.borrow().is_some() { "keeping the current issuer" } else { "no issuer loaded yet" };
                tracing::error!(reason = ISSUER_REJECTED, %from, error = %e, "refusing the new issuer ({keeping})");
                Offer::Rejected(e)
            }
        }
    }

    /// Records `material` as already offered (the initial load done by the caller).
    pub fn seen(&mut self, material: IssuerMaterial) {
        self.last_offered = Some(material);
    }
}

/// Re-reads an issuer directory every [`POLL_INTERVAL`] and offers changes.
/// Runs until the task is dropped.
pub async fn poll_dir(dir: PathBuf, mut updater: IssuerUpdater) {
    let source = IssuerSource::Dir(dir.clone());
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match read_issuer_dir(&dir) {
            Ok(material) => {
                updater.offer(material, &source);
            }
            Err(e) => tracing::warn!(error = %e, "reading the issuer directory; keeping the current issuer"),
        }
    }
}

/// Follows the issuer Secret and offers every version; records an Event on
/// the Secret for each update or refusal. Runs until the task is dropped.
pub async fn watch_secret(client: kube::Client, namespace: String, name: String, mut updater: IssuerUpdater) {
    let source = IssuerSource::Secret { namespace: namespace.clone(), name: name.clone() };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let events = EventRecorder::new(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher(secrets, config).default_backoff());
    let mut latest: Option<Secret> = None;
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            // A new bundle: the Secret's issuer may chain to it only now.
            () = updater.anchors_changed() => match latest.clone() {
                Some(secret) => Some(Ok(watcher::Event::Apply(secret))),
                None => continue,
            },
        };
        let Some(event) = event else { break };
        match event {
            Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) => {
                latest = Some(secret.clone());
                let offer = match secret_material(&secret) {
                    Ok(material) => updater.offer(material, &source),
                    Err(e) => {
                        updater.metrics.issuer_rejected();
                        tracing::error!(reason = ISSUER_REJECTED, from = %source, error = %e, "refusing the new issuer");
                        Offer::Rejected(e)
                    }
                };
                match offer {
                    Offer::Unchanged => {}
                    Offer::Updated(issuer) => {
                        let message =
                            format!("Updated identity issuer: {} (valid until {})", issuer.subject(), pki::rfc3339(issuer.not_after()));
                        events.record(&secret, "Normal", ISSUER_UPDATED, message).await;
                    }
                    Offer::Rejected(e) => {
                        events.record(&secret, "Warning", ISSUER_REJECTED, format!("Refused new identity issuer: {e}")).await;
                    }
                }
            }
            Ok(watcher::Event::Delete(_)) => {
                tracing::warn!(from = %source, "the issuer Secret was deleted; keeping the current issuer");
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(e) => tracing::warn!(from = %source, error = %e, "watching the issuer Secret (retrying)"),
        }
    }
}

/// Writes core/v1 Events about an object (what `kubectl get events` lists).
pub(crate) struct EventRecorder {
    api: Api<Event>,
    namespace: String,
}

impl EventRecorder {
    pub(crate) fn new(client: kube::Client, namespace: &str) -> Self {
        Self { api: Api::namespaced(client, namespace), namespace: namespace.to_owned() }
    }

    async fn record(&self, secret: &Secret, type_: &str, reason: &str, message: String) {
        let object = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Secret".to_owned()),
            name: secret.metadata.name.clone(),
            namespace: Some(self.namespace.clone()),
            uid: secret.metadata.uid.clone(),
            resource_version: secret.metadata.resource_version.clone(),
            ..ObjectReference::default()
        };
        self.record_ref(object, type_, reason, message).await;
    }

    /// Records an Event about `object` (in this recorder's namespace).
    pub(crate) async fn record_ref(&self, object: ObjectReference, type_: &str, reason: &str, message: String) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let object_name = object.name.clone().unwrap_or_default();
        let suffix: u64 = rand::random();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{object_name}.{suffix:016x}")),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: object,
            reason: Some(reason.to_owned()),
            message: Some(message),
            type_: Some(type_.to_owned()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource { component: Some(COMPONENT.to_owned()), host: None }),
            reporting_component: Some(COMPONENT.to_owned()),
            reporting_instance: Some(COMPONENT.to_owned()),
            ..Event::default()
        };
        if let Err(e) = self.api.create(&PostParams::default(), &event).await {
            tracing::warn!(error = %e, reason, "recording an Event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;
    use crate::test_util::{FixedClock, Pki, now};

    fn updater(pki: &Pki) -> (IssuerUpdater, watch::Receiver<Option<Arc<Issuer>>>) {
        let (tx, rx) = watch::channel(None);
        (IssuerUpdater::new(tx, pki.anchors(), IdentityNaming::default(), Arc::new(FixedClock(now())), Metrics::default()), rx)
    }

    #[test]
    fn a_bad_issuer_is_refused_and_the_good_one_kept() {
        let pki = Pki::new();
        let (mut updater, rx) = updater(&pki);
        let source = IssuerSource::Dir(PathBuf::from("/x"));
        let good = pki.issuer_material();
        assert!(matches!(updater.offer(good.clone(), &source), Offer::Updated(_)));
        let first = rx.borrow().clone().unwrap();
        assert!(matches!(updater.offer(good, &source), Offer::Unchanged));

        let mismatched = IssuerMaterial { cert_pem: pki.issuer_material().cert_pem, key_pem: pki.issuer_material().key_pem };
        assert!(matches!(updater.offer(mismatched, &source), Offer::Rejected(IssuerError::KeyMismatch)));
        assert!(Arc::ptr_eq(&first, &rx.borrow().clone().unwrap()), "the old issuer stays in use");

        let rotated = pki.issuer_material();
        assert!(matches!(updater.offer(rotated, &source), Offer::Updated(_)));
        assert!(!Arc::ptr_eq(&first, &rx.borrow().clone().unwrap()));
    }

    #[test]
    fn secrets_give_tls_keys_first() {
        let pki = Pki::new();
        let m = pki.issuer_material();
        let mut data = BTreeMap::new();
        data.insert("tls.crt".to_owned(), ByteString(m.cert_pem.clone()));
        data.insert("tls.key".to_owned(), ByteString(m.key_pem.clone()));
        data.insert("crt.pem".to_owned(), ByteString(b"ignored".to_vec()));
        let secret = Secret { data: Some(data), ..Secret::default() };
        assert_eq!(secret_material(&secret).unwrap(), m);
        assert_eq!(secret_material(&Secret::default()).unwrap_err(), IssuerError::NoCertificate);
    }

    #[tokio::test]
    async fn a_changed_directory_is_picked_up() {
        let pki = Pki::new();
        let dir = tempfile::tempdir().unwrap();
        let write = |m: &IssuerMaterial| {
            std::fs::write(dir.path().join("crt.pem"), &m.cert_pem).unwrap();
            std::fs::write(dir.path().join("key.pem"), &m.key_pem).unwrap();
        };
        let first = pki.issuer_material();
        write(&first);
        let (updater, mut rx) = updater(&pki);
        let task = tokio::spawn(poll_dir(dir.path().to_owned(), updater));
        rx.changed().await.unwrap();
        let subject_serial = |rx: &watch::Receiver<Option<Arc<Issuer>>>| rx.borrow().as_ref().unwrap().chain()[0].clone();
        let before = subject_serial(&rx);
        write(&pki.issuer_material());
        tokio::time::timeout(Duration::from_secs(10), rx.changed()).await.unwrap().unwrap();
        assert_ne!(before, subject_serial(&rx));
        task.abort();
    }
}
