//! Where the trust anchors come from, and how a new bundle replaces them
//! without a restart: a PEM file (`--trust-anchors`, re-read every second) or
//! the key `ca-bundle.crt` of the ConfigMap `tessera-identity-trust-roots`
//! in the control-plane namespace (`--trust-anchors-configmap NS/NAME`,
//! followed with a kube watcher). A bundle that does not parse is refused
//! with an error log and the last good anchors stay in use. New anchors let
//! the identity service accept an issuer signed by a new root (a rotation
//! adds the root to the bundle first, then installs the issuer).

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::pki::TrustAnchors;

/// The trust bundle ConfigMap's name.
pub const CONFIGMAP_NAME: &str = "tessera-identity-trust-roots";
/// The key of the PEM bundle in it.
pub const CONFIGMAP_KEY: &str = "ca-bundle.crt";
/// How often a bundle file is re-read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Where the trust anchors are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorsSource {
    /// A PEM file.
    File(PathBuf),
    /// The `ca-bundle.crt` key of a ConfigMap.
    ConfigMap {
        /// Its namespace (the control plane's).
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl AnchorsSource {
    /// Parses `NAMESPACE/NAME` (the `--trust-anchors-configmap` flag).
    pub fn configmap(value: &str) -> Result<Self> {
        match value.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self::ConfigMap { namespace: namespace.to_owned(), name: name.to_owned() })
            }
            _ => Err(Error::Config(format!("--trust-anchors-configmap must be NAMESPACE/NAME, got {value:?}"))),
        }
    }
}

impl std::fmt::Display for AnchorsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::ConfigMap { namespace, name } => write!(f, "ConfigMap {namespace}/{name}"),
        }
    }
}

/// The PEM bundle of a ConfigMap, or why there is none.
pub fn configmap_pem(configmap: &ConfigMap, source: &AnchorsSource) -> std::result::Result<Vec<u8>, String> {
    configmap
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIGMAP_KEY))
        .map(|pem| pem.as_bytes().to_vec())
        .ok_or_else(|| format!("{source} has no key {CONFIGMAP_KEY}"))
}

/// Reads the bundle's PEM once (the file, or the ConfigMap through `client`).
pub async fn read_pem(source: &AnchorsSource, client: Option<&kube::Client>) -> std::result::Result<Vec<u8>, String> {
    match source {
        AnchorsSource::File(path) => std::fs::read(path).map_err(|e| format!("{}: {e}", path.display())),
        AnchorsSource::ConfigMap { namespace, name } => {
            let client = client.ok_or_else(|| format!("{source}: no Kubernetes client"))?;
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
            let configmap = api.get(name).await.map_err(|e| format!("reading {source}: {e}"))?;
            configmap_pem(&configmap, source)
        }
    }
}

/// Reads and parses the anchors once (at start, when they must be good);
/// returns them with the PEM they came from.
pub async fn load(source: &AnchorsSource, client: Option<&kube::Client>) -> Result<(TrustAnchors, Vec<u8>)> {
    let pem = match source {
        AnchorsSource::File(path) => std::fs::read(path).map_err(|e| Error::io(path, e))?,
        AnchorsSource::ConfigMap { .. } => read_pem(source, client).await.map_err(Error::AnchorsUnavailable)?,
    };
    let anchors = TrustAnchors::from_pem(&pem).map_err(|e| Error::Anchors { path: PathBuf::from(source.to_string()), source: e })?;
    Ok((anchors, pem))
}

/// The single writer of the anchors channel: publishes new good bundles,
/// refuses bad ones (error log), ignores repeats.
#[derive(Debug)]
pub struct AnchorsUpdater {
    source: AnchorsSource,
    last: Option<Vec<u8>>,
    tx: watch::Sender<TrustAnchors>,
}

impl AnchorsUpdater {
    /// A writer starting from `initial` (read from `pem`).
    pub fn new(source: AnchorsSource, initial: TrustAnchors, pem: Option<Vec<u8>>) -> (Self, watch::Receiver<TrustAnchors>) {
        let (tx, rx) = watch::channel(initial);
        (Self { source, last: pem, tx }, rx)
    }

    /// Offers a version of the bundle; returns whether new anchors were published.
    pub fn offer(&mut self, pem: &[u8]) -> bool {
        if self.last.as_deref() == Some(pem) {
            return false;
        }
        self.last = Some(pem.to_vec());
        match TrustAnchors::from_pem(pem) {
            Ok(anchors) => {
                tracing::info!(source = %self.source, count = anchors.certificates().len(), "trust anchors updated");
                self.tx.send_replace(anchors);
                true
            }
            Err(error) => {
                tracing::error!(source = %self.source, %error, "refusing the new trust anchors; keeping the current ones");
                false
            }
        }
    }

    /// Follows the source until the task is dropped.
    pub async fn run(mut self, client: Option<kube::Client>) {
        match self.source.clone() {
            AnchorsSource::File(path) => {
                let mut tick = tokio::time::interval(POLL_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match tokio::fs::read(&path).await {
                        Ok(pem) => {
                            self.offer(&pem);
                        }
                        Err(e) => tracing::warn!(path = %path.display(), error = %e, "trust anchors unreadable; keeping the current ones"),
                    }
                }
            }
            AnchorsSource::ConfigMap { namespace, name } => {
                let Some(client) = client else { return };
                let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
                let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => match configmap_pem(&cm, &self.source) {
                            Ok(pem) => {
                                self.offer(&pem);
                            }
                            Err(e) => tracing::error!(error = %e, "refusing the new trust anchors; keeping the current ones"),
                        },
                        Ok(watcher::Event::Delete(_)) => {
                            tracing::warn!(source = %self.source, "the trust bundle ConfigMap was deleted; keeping the current anchors");
                        }
                        Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                        Err(e) => tracing::warn!(source = %self.source, error = %e, "watching the trust bundle ConfigMap (retrying)"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Pki;

    #[test]
    fn good_bundles_replace_the_anchors_and_bad_ones_are_refused() {
        let old = Pki::new();
        let new = Pki::new();
        let source = AnchorsSource::configmap("linkerd/tessera-identity-trust-roots").unwrap();
        let (mut updater, rx) = AnchorsUpdater::new(source, old.anchors(), Some(old.anchor_pem.clone().into_bytes()));
        assert!(!updater.offer(old.anchor_pem.as_bytes()), "the same bundle again");
        assert!(!updater.offer(b""));
        assert!(!updater.offer(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"));
        assert_eq!(rx.borrow().certificates().len(), 1, "the last good anchors stay");
        assert!(updater.offer(format!("{}{}", old.anchor_pem, new.anchor_pem).as_bytes()));
        assert_eq!(rx.borrow().certificates().len(), 2);
    }

    #[test]
    fn configmap_flags_parse() {
        assert_eq!(
            AnchorsSource::configmap("linkerd/x").unwrap(),
            AnchorsSource::ConfigMap { namespace: "linkerd".into(), name: "x".into() }
        );
        assert_eq!(
            AnchorsSource::configmap("x").unwrap_err().to_string(),
            r#"invalid configuration: --trust-anchors-configmap must be NAMESPACE/NAME, got "x""#
        );
        let cm = ConfigMap::default();
        assert_eq!(
            configmap_pem(&cm, &AnchorsSource::configmap("linkerd/x").unwrap()).unwrap_err(),
            "ConfigMap linkerd/x has no key ca-bundle.crt"
        );
    }
}
