//! The trust bundle: PEM roots from a file (re-read every second) or from the
//! ConfigMap `tessera-identity-trust-roots` (watched, see [`configmap`]),
//! published when their content changes (a rotation adds a root, later
//! removes the old one). An unreadable, empty or invalid update is logged and
//! ignored: the proxy keeps the last good roots rather than trusting none.
//!
//! What is published is a [`TrustRoots`]: the rustls root store, the anchors'
//! DER and fingerprints (for `/trust` and the metrics), and the issuer the
//! control plane says is current (the ConfigMap annotation
//! [`ISSUER_FINGERPRINT_ANNOTATION`]), which makes the proxy renew early when
//! its leaf comes from another issuer.

pub mod configmap;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tokio::sync::watch;

/// How often the file is checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The trust bundle ConfigMap's name (in the control-plane namespace).
pub const CONFIGMAP_NAME: &str = "tessera-identity-trust-roots";
/// The key of the PEM bundle in the ConfigMap.
pub const CONFIGMAP_KEY: &str = "ca-bundle.crt";
/// The ConfigMap annotation naming the current issuer's fingerprint.
pub const ISSUER_FINGERPRINT_ANNOTATION: &str = "tessera.io/issuer-fingerprint";

/// Why a trust bundle could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The file could not be read.
    #[error("reading trust anchors {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The content is not a usable PEM bundle.
    #[error("trust anchors {origin}: {reason}")]
    Invalid {
        /// Where the bundle came from (a file, or `ConfigMap NS/NAME`).
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The API client for the ConfigMap could not be built.
    #[error("trust anchors ConfigMap: {0}")]
    Api(String),
}

/// Where the trust anchors come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustSource {
    /// A PEM file.
    File(PathBuf),
    /// The `ca-bundle.crt` key of a ConfigMap, watched through the API.
    ConfigMap {
        /// Its namespace (the control plane's).
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl TrustSource {
    /// Parses `NS/NAME` (the `--trust-anchors-configmap` flag).
    pub fn configmap(value: &str) -> Result<Self, String> {
        match value.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self::ConfigMap { namespace: namespace.to_owned(), name: name.to_owned() })
            }
            _ => Err(format!("{value:?} is not NAMESPACE/NAME (e.g. linkerd/{CONFIGMAP_NAME})")),
        }
    }
}

impl std::fmt::Display for TrustSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::ConfigMap { namespace, name } => write!(f, "ConfigMap {namespace}/{name}"),
        }
    }
}

/// A certificate's fingerprint as every tessera component writes it:
/// `sha256:` and the lowercase hex SHA-256 of its DER.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in digest.as_ref() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The current trust anchors, and the issuer the control plane names as current.
#[derive(Debug, Clone)]
pub struct TrustRoots {
    store: Arc<RootCertStore>,
    anchors: Vec<CertificateDer<'static>>,
    expected_issuer: Option<String>,
}

impl TrustRoots {
    /// No anchors yet (a ConfigMap source before its first good bundle).
    pub fn empty() -> Self {
        Self { store: Arc::new(RootCertStore::empty()), anchors: Vec::new(), expected_issuer: None }
    }

    /// The root store the TLS configurations verify against.
    pub fn store(&self) -> &Arc<RootCertStore> {
        &self.store
    }

    /// Whether there is no anchor.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// How many anchors.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// The anchors' DER, in bundle order.
    pub fn anchors(&self) -> &[CertificateDer<'static>] {
        &self.anchors
    }

    /// The anchors' fingerprints, sorted (the order `/trust` and the Pod annotation use).
    pub fn fingerprints(&self) -> Vec<String> {
        let mut out: Vec<String> = self.anchors.iter().map(|a| fingerprint(a)).collect();
        out.sort();
        out.dedup();
        out
    }

    /// The issuer fingerprint the control plane announced, if any.
    pub fn expected_issuer(&self) -> Option<&str> {
        self.expected_issuer.as_deref()
    }

    /// Whether both hold the same anchors (the TLS configurations need no rebuild otherwise).
    pub fn same_anchors(&self, other: &Self) -> bool {
        self.anchors == other.anchors
    }

    /// The fingerprint of the certificate that signed `chain[0]`: the first
    /// intermediate the identity service sent, else the anchor whose subject
    /// is the leaf's issuer.
    pub fn issuer_of(&self, chain: &[CertificateDer<'_>]) -> Option<String> {
        if let Some(issuer) = chain.get(1) {
            return Some(fingerprint(issuer));
        }
        use x509_parser::prelude::{FromDer as _, X509Certificate};
        let (_, leaf) = X509Certificate::from_der(chain.first()?.as_ref()).ok()?;
        self.anchors.iter().find_map(|der| {
            let (_, anchor) = X509Certificate::from_der(der.as_ref()).ok()?;
            (anchor.subject().as_raw() == leaf.issuer().as_raw()).then(|| fingerprint(der))
        })
    }
}

/// Parses a PEM bundle: at least one certificate, every one a CA usable as a
/// trust anchor. `origin` names the source in errors.
pub fn parse_bundle(pem: &[u8], origin: &str) -> Result<TrustRoots, TrustError> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let invalid = |reason: String| TrustError::Invalid { origin: origin.to_owned(), reason };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no certificates".to_owned()));
    }
    let mut store = RootCertStore::empty();
    for (index, cert) in certs.iter().enumerate() {
        let number = index + 1;
        let (_, parsed) =
            X509Certificate::from_der(cert.as_ref()).map_err(|e| invalid(format!("unusable trust anchor (certificate {number}): {e}")))?;
        // A leaf pasted into the bundle would make every peer fail: refuse it here.
        if !parsed.is_ca() {
            return Err(invalid(format!("certificate {number} ({}) is not a CA", parsed.subject())));
        }
        store.add(cert.clone()).map_err(|e| invalid(format!("unusable trust anchor (certificate {number}): {e}")))?;
    }
    Ok(TrustRoots { store: Arc::new(store), anchors: certs, expected_issuer: None })
}

/// Parses a PEM bundle into a root store (see [`parse_bundle`]).
pub fn parse_roots(pem: &[u8], path: &Path) -> Result<RootCertStore, TrustError> {
    parse_bundle(pem, &path.display().to_string()).map(|roots| (*roots.store).clone())
}

/// What an offered bundle did.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// The same bytes as the last offer: nothing to do.
    Unchanged,
    /// New anchors published.
    Updated,
    /// Refused; the last good anchors stay.
    Refused,
}

/// The single writer of the roots channel: offers bundles and the expected
/// issuer, publishes what changed, keeps the last good anchors.
#[derive(Debug)]
pub struct TrustUpdater {
    origin: String,
    last: Option<Vec<u8>>,
    tx: watch::Sender<Arc<TrustRoots>>,
}

impl TrustUpdater {
    /// A writer starting from `initial`.
    pub fn new(origin: String, initial: TrustRoots) -> (Self, watch::Receiver<Arc<TrustRoots>>) {
        let (tx, rx) = watch::channel(Arc::new(initial));
        (Self { origin, last: None, tx }, rx)
    }

    /// Offers the bundle's bytes; new valid ones replace the anchors.
    pub fn offer(&mut self, pem: &[u8]) -> Offered {
        if self.last.as_deref() == Some(pem) {
            return Offered::Unchanged;
        }
        // Remember even bad content so it is reported once, not every second.
        self.last = Some(pem.to_vec());
        match parse_bundle(pem, &self.origin) {
            Ok(mut roots) => {
                let fingerprints = roots.fingerprints();
                self.tx.send_modify(|current| {
                    roots.expected_issuer = current.expected_issuer.clone();
                    *current = Arc::new(roots);
                });
                tracing::info!(origin = %self.origin, anchors = ?fingerprints, "trust anchors updated");
                Offered::Updated
            }
            Err(error) => {
                let keeping = if self.tx.borrow().is_empty() { "no trust anchors yet" } else { "keeping the current ones" };
                tracing::error!(%error, "refusing new trust anchors ({keeping})");
                Offered::Refused
            }
        }
    }

    /// Sets the issuer fingerprint the control plane announced; publishes when it changed.
    pub fn set_expected_issuer(&mut self, issuer: Option<String>) {
        let issuer = issuer.map(|i| i.trim().to_ascii_lowercase()).filter(|i| !i.is_empty());
        self.tx.send_if_modified(|current| {
            if current.expected_issuer == issuer {
                return false;
            }
            tracing::info!(issuer = ?issuer, "the control plane announced the current issuer");
            let mut next = (**current).clone();
            next.expected_issuer = issuer.clone();
            *current = Arc::new(next);
            true
        });
    }

    /// Whether every receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Watches a trust-anchor file.
#[derive(Debug)]
pub struct TrustBundle {
    path: PathBuf,
    updater: TrustUpdater,
}

impl TrustBundle {
    /// Loads the file (it must be valid at start) and returns the watcher and
    /// the receiver of the roots.
    pub fn load(path: PathBuf) -> Result<(Self, watch::Receiver<Arc<TrustRoots>>), TrustError> {
        let pem = std::fs::read(&path).map_err(|source| TrustError::Read { path: path.clone(), source })?;
        let origin = path.display().to_string();
        let roots = parse_bundle(&pem, &origin)?;
        let (mut updater, rx) = TrustUpdater::new(origin, roots);
        updater.last = Some(pem);
        Ok((Self { path, updater }, rx))
    }

    /// Checks the file once; publishes new roots when its content changed and
    /// parses. Returns whether it published.
    pub async fn poll_once(&mut self) -> bool {
        match tokio::fs::read(&self.path).await {
            Ok(pem) => self.updater.offer(&pem) == Offered::Updated,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "trust anchors unreadable; keeping the current ones");
                false
            }
        }
    }

    /// Polls until every receiver is gone.
    pub async fn run(mut self) {
        let mut interval = tokio::time::interval(POLL_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if self.updater.is_closed() {
                return;
            }
            self.poll_once().await;
        }
    }
}

/// The leaf the proxy holds now, as `/trust` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeafInfo {
    /// The identity the leaf names.
    pub identity: String,
    /// Fingerprint of the certificate that signed it.
    pub issuer: Option<String>,
    /// Its expiry (RFC 3339, UTC).
    pub not_after: String,
}

/// The body of `GET /trust`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TrustReport {
    /// The anchors trusted now (sorted fingerprints).
    pub anchors: Vec<String>,
    /// The current leaf, `null` before the first certificate.
    pub leaf: Option<LeafInfo>,
}

/// What the admin port reads: the roots and the current leaf.
#[derive(Debug, Clone)]
pub struct TrustView {
    /// The trust anchors.
    pub roots: watch::Receiver<Arc<TrustRoots>>,
    /// The current leaf (`None` before the first certificate or after it expired).
    pub leaf: watch::Receiver<Option<LeafInfo>>,
}

impl TrustView {
    /// The `/trust` body now.
    pub fn report(&self) -> TrustReport {
        TrustReport { anchors: self.roots.borrow().fingerprints(), leaf: self.leaf.borrow().clone() }
    }

    /// `identity_trust_anchor_info{fingerprint}` and
    /// `identity_cert_issuer_info{fingerprint}` in the OpenMetrics text format.
    pub fn encode_metrics(&self) -> String {
        let report = self.report();
        let mut out = String::new();
        out.push_str("# HELP identity_trust_anchor_info A trust anchor this proxy trusts (1 per anchor).\n");
        out.push_str("# TYPE identity_trust_anchor_info gauge\n");
        for anchor in &report.anchors {
            out.push_str(&format!("identity_trust_anchor_info{{fingerprint=\"{anchor}\"}} 1\n"));
        }
        out.push_str("# HELP identity_cert_issuer_info The issuer of this proxy's current identity certificate.\n");
        out.push_str("# TYPE identity_cert_issuer_info gauge\n");
        if let Some(issuer) = report.leaf.and_then(|l| l.issuer) {
            out.push_str(&format!("identity_cert_issuer_info{{fingerprint=\"{issuer}\"}} 1\n"));
        }
        out
    }
}

/// RFC 3339 (UTC, seconds) of a time.
pub fn rfc3339(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn root_pem() -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[tokio::test]
    async fn reloads_changed_bundles_and_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, root_pem()).unwrap();
        let (mut bundle, rx) = TrustBundle::load(path.clone()).unwrap();
        assert_eq!(rx.borrow().len(), 1);
        assert!(!bundle.poll_once().await, "unchanged content is not republished");

        std::fs::write(&path, format!("{}{}", root_pem(), root_pem())).unwrap();
        assert!(bundle.poll_once().await);
        assert_eq!(rx.borrow().len(), 2);

        std::fs::write(&path, "garbage").unwrap();
        assert!(!bundle.poll_once().await);
        std::fs::remove_file(&path).unwrap();
        assert!(!bundle.poll_once().await);
        assert_eq!(rx.borrow().len(), 2, "bad updates keep the last good roots");
    }

    #[test]
    fn empty_garbage_and_invalid_bundles_are_refused() {
        let path = Path::new("ca.crt");
        assert_eq!(parse_roots(b"", path).unwrap_err().to_string(), "trust anchors ca.crt: no certificates");
        assert_eq!(parse_roots(b"garbage", path).unwrap_err().to_string(), "trust anchors ca.crt: no certificates");
        let bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = parse_roots(bad, path).unwrap_err().to_string();
        assert!(err.starts_with("trust anchors ca.crt: unusable trust anchor (certificate 1)"), "{err}");
    }

    #[test]
    fn a_leaf_in_the_bundle_is_refused() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["web.example".to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "web");
        let leaf = params.self_signed(&key).unwrap().pem();
        let err = parse_bundle(format!("{}{leaf}", root_pem()).as_bytes(), "ConfigMap linkerd/x").unwrap_err().to_string();
        assert_eq!(err, "trust anchors ConfigMap linkerd/x: certificate 2 (CN=web) is not a CA");
    }

    #[test]
    fn fingerprints_are_sha256_of_the_der_in_lowercase_hex() {
        assert_eq!(fingerprint(b"abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let a = root_pem();
        let b = root_pem();
        let roots = parse_bundle(format!("{a}{b}").as_bytes(), "x").unwrap();
        let mut expected: Vec<String> = roots.anchors().iter().map(|d| fingerprint(d)).collect();
        expected.sort();
        assert_eq!(roots.fingerprints(), expected);
        assert!(roots.fingerprints().iter().all(|f| f.len() == 71 && f.starts_with("sha256:")));
    }

    #[test]
    fn the_updater_keeps_the_last_good_bundle_and_tracks_the_issuer() {
        let (mut updater, rx) = TrustUpdater::new("ConfigMap linkerd/roots".into(), TrustRoots::empty());
        assert_eq!(updater.offer(b""), Offered::Refused);
        assert!(rx.borrow().is_empty());
        let pem = root_pem();
        assert_eq!(updater.offer(pem.as_bytes()), Offered::Updated);
        assert_eq!(updater.offer(pem.as_bytes()), Offered::Unchanged);
        updater.set_expected_issuer(Some(" SHA256:AB ".into()));
        assert_eq!(rx.borrow().expected_issuer(), Some("sha256:ab"));
        assert_eq!(updater.offer(b"-----BEGIN CERTIFICATE-----\n"), Offered::Refused);
        let roots = rx.borrow().clone();
        assert_eq!(roots.len(), 1, "the last good anchors stay");
        assert_eq!(roots.expected_issuer(), Some("sha256:ab"), "the issuer survives bundle updates");
        assert_eq!(updater.offer(format!("{pem}{}", root_pem()).as_bytes()), Offered::Updated);
        assert_eq!(rx.borrow().len(), 2);
        assert_eq!(rx.borrow().expected_issuer(), Some("sha256:ab"));
    }

    #[test]
    fn configmap_flags_parse() {
        assert_eq!(
            TrustSource::configmap("linkerd/tessera-identity-trust-roots").unwrap(),
            TrustSource::ConfigMap { namespace: "linkerd".into(), name: CONFIGMAP_NAME.into() }
        );
        assert_eq!(
            TrustSource::configmap("nope").unwrap_err(),
            r#""nope" is not NAMESPACE/NAME (e.g. linkerd/tessera-identity-trust-roots)"#
        );
        assert!(TrustSource::configmap("a/b/c").is_err());
    }
}
