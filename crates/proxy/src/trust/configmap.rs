//! The trust bundle from the ConfigMap `tessera-identity-trust-roots`
//! (`--trust-anchors-configmap NS/NAME`): a kube watcher pinned to that one
//! object (what the bootstrap Role lets every pod's token read), so a new
//! bundle or a new issuer annotation reaches the proxy within the watch
//! delay, without a restart.

use std::path::Path;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;

use super::{CONFIGMAP_KEY, ISSUER_FINGERPRINT_ANNOTATION, TrustError, TrustUpdater};

/// Where the pod's ServiceAccount token and CA are projected.
const SERVICEACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A kube client with the pod's ServiceAccount token (re-read by kube as it
/// rotates) against `--api-server` (default `$TESSERA_API_SERVER`).
pub fn client(api: &crate::config::ApiConfig) -> Result<kube::Client, TrustError> {
    let server = api
        .server
        .clone()
        .or_else(|| std::env::var("TESSERA_API_SERVER").ok())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| TrustError::Api("--trust-anchors-configmap needs --api-server (or TESSERA_API_SERVER)".to_owned()))?;
    let url: http::Uri = server.parse().map_err(|_| TrustError::Api(format!("API server URL {server:?} is not a URL")))?;
    let dir = Path::new(SERVICEACCOUNT_DIR);
    let token = api.token_file.clone().unwrap_or_else(|| dir.join("token"));
    let ca = api.ca.clone().or_else(|| Some(dir.join("ca.crt")).filter(|p| p.exists()));
    let mut config = kube::Config::new(url);
    config.auth_info.token_file = Some(token.display().to_string());
    if let Some(ca) = ca {
        let pem = std::fs::read(&ca).map_err(|e| TrustError::Api(format!("reading the API server CA {}: {e}", ca.display())))?;
        let ders: Vec<Vec<u8>> = rustls_pki_types::pem::PemObject::pem_slice_iter(&pem)
            .map(|c: Result<rustls_pki_types::CertificateDer<'static>, _>| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| TrustError::Api(format!("the API server CA {}: {e}", ca.display())))?;
        config.root_cert = Some(ders);
        config.root_cert_file = Some(ca);
    }
    kube::Client::try_from(config).map_err(|e| TrustError::Api(e.to_string()))
}

/// Offers one version of the ConfigMap: its bundle (a missing key is
/// refused like a bad bundle: the last good anchors stay) and its issuer
/// annotation.
pub fn apply(updater: &mut TrustUpdater, configmap: &ConfigMap) {
    let issuer = configmap.metadata.annotations.as_ref().and_then(|a| a.get(ISSUER_FINGERPRINT_ANNOTATION)).cloned();
    match configmap.data.as_ref().and_then(|d| d.get(CONFIGMAP_KEY)) {
        Some(pem) => {
            updater.offer(pem.as_bytes());
        }
        None => tracing::error!(
            origin = %updater.origin,
            "refusing new trust anchors: the ConfigMap has no key {CONFIGMAP_KEY}; keeping the current ones"
        ),
    }
    updater.set_expected_issuer(issuer);
}

/// Follows the ConfigMap until every receiver of the roots is gone.
pub async fn watch(client: kube::Client, namespace: String, name: String, mut updater: TrustUpdater) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            () = updater.tx.closed() => return,
        };
        match event {
            Some(Ok(watcher::Event::Apply(configmap) | watcher::Event::InitApply(configmap))) => apply(&mut updater, &configmap),
            Some(Ok(watcher::Event::Delete(_))) => {
                tracing::warn!(origin = %updater.origin, "the trust bundle ConfigMap was deleted; keeping the current anchors");
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
            Some(Err(error)) => tracing::warn!(origin = %updater.origin, %error, "watching the trust bundle ConfigMap (retrying)"),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::trust::TrustRoots;

    fn configmap(bundle: Option<&str>, issuer: Option<&str>) -> ConfigMap {
        let mut cm = ConfigMap { data: bundle.map(|b| BTreeMap::from([(CONFIGMAP_KEY.to_owned(), b.to_owned())])), ..Default::default() };
        cm.metadata.annotations = issuer.map(|i| BTreeMap::from([(ISSUER_FINGERPRINT_ANNOTATION.to_owned(), i.to_owned())]));
        cm
    }

    #[test]
    fn versions_of_the_configmap_update_anchors_and_issuer() {
        let (mut updater, rx) = TrustUpdater::new("ConfigMap linkerd/roots".into(), TrustRoots::empty());
        apply(&mut updater, &configmap(None, None));
        assert!(rx.borrow().is_empty());
        let pem = crate::trust::tests::root_pem();
        apply(&mut updater, &configmap(Some(&pem), Some("sha256:01")));
        assert_eq!(rx.borrow().len(), 1);
        assert_eq!(rx.borrow().expected_issuer(), Some("sha256:01"));
        apply(&mut updater, &configmap(Some("garbage"), None));
        assert_eq!(rx.borrow().len(), 1, "a bad bundle keeps the last good one");
        assert_eq!(rx.borrow().expected_issuer(), None);
        apply(&mut updater, &configmap(None, None));
        assert_eq!(rx.borrow().len(), 1, "a missing key keeps the last good one");
    }
}
