//! The identity client: obtains and renews the proxy's certificate from
//! `tessera identity` over Linkerd's Certify protocol.
//!
//! The ECDSA P-256 key is generated in the process at start and never leaves
//! memory; the CSR names exactly the local identity (one DNS SAN, empty
//! subject). Every call reads the token file afresh, since the agent rotates
//! the token. A certificate is renewed at 70 % of its remaining lifetime
//! (Linkerd's rule); a failed call is retried with exponential backoff and
//! jitter, and the current certificate keeps serving until it expires, when
//! `None` is published (the proxy is then not ready and refuses mTLS). A new
//! trust bundle rebuilds the credentials with the same leaf.
//!
//! Early renewal: when the control plane announces an issuer (the trust
//! bundle ConfigMap's `tessera.io/issuer-fingerprint`) other than the one
//! that signed the current leaf, the proxy renews within [`EARLY_JITTER`]
//! (spread so that every proxy does not call at once), and keeps retrying
//! with backoff until the identity service hands out a leaf of that issuer
//! (it may pick the new issuer up a moment after the announcement); then the
//! normal 70 % schedule resumes.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use linkerd2_proxy_api::identity::CertifyRequest;
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use rand::Rng as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::tls::{Credentials, CredentialsTx, Identity};
use crate::trust::{LeafInfo, TrustRoots};

/// Renew when this fraction of the lifetime has passed (Linkerd's 70 %).
const REFRESH_FRACTION: f64 = 0.7;
/// An early renewal starts within this long of the issuer announcement.
pub const EARLY_JITTER: Duration = Duration::from_secs(2);
/// Retries of an early renewal that still got the old issuer back off up to this.
const EARLY_RETRY_MAX: Duration = Duration::from_secs(30);

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    /// The key or CSR could not be generated.
    #[error("generating the key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    /// The token file could not be read.
    #[error("reading token {path}: {source}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The identity service address is not a valid URI.
    #[error("identity service address {0:?} is not a valid host:port")]
    Address(String),
    /// The Certify call failed (transport error or refusal).
    #[error("Certify: {0}")]
    Rpc(#[from] tonic::Status),
    /// The call did not answer in time.
    #[error("Certify timed out after {0:?}")]
    Timeout(Duration),
    /// The response is unusable.
    #[error("Certify response: {0}")]
    Response(String),
    /// The leaf does not fit the key or trust anchors.
    #[error("credentials: {0}")]
    Credentials(#[from] crate::tls::TlsError),
}

/// A certificate from the identity service.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf first, then the intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's expiry.
    pub not_after: SystemTime,
}

/// Something that turns a CSR into a certificate (the gRPC client; a fake in tests).
pub trait Certifier: Send + Sync + 'static {
    /// One Certify call.
    fn certify(&self, csr: &[u8]) -> impl Future<Output = Result<Issued, CertifyError>> + Send;
}

/// The key and CSR of this process.
#[derive(Debug)]
pub struct LocalKey {
    key: PrivatePkcs8KeyDer<'static>,
    csr: Vec<u8>,
}

impl LocalKey {
    /// Generates a P-256 key and a CSR for `identity`.
    pub fn generate(identity: &Identity) -> Result<Self, CertifyError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(vec![identity.as_str().to_owned()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key)?.der().to_vec();
        Ok(Self { key: PrivatePkcs8KeyDer::from(key.serialize_der()), csr })
    }

    /// The DER CSR.
    pub fn csr(&self) -> &[u8] {
        &self.csr
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// The Certify client of `tessera identity` (h2c gRPC).
#[derive(Debug, Clone)]
pub struct GrpcCertifier {
    client: IdentityClient<tonic::transport::Channel>,
    identity: Identity,
    token_file: PathBuf,
    timeout: Duration,
}

impl GrpcCertifier {
    /// A client of `addr` (`host:port`, or a full `http://` URL); connects lazily.
    pub fn new(addr: &str, identity: Identity, token_file: PathBuf, timeout: Duration) -> Result<Self, CertifyError> {
        let url = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
        let endpoint = tonic::transport::Endpoint::from_shared(url)
            .map_err(|_| CertifyError::Address(addr.to_owned()))?
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .timeout(timeout);
        Ok(Self { client: IdentityClient::new(endpoint.connect_lazy()), identity, token_file, timeout })
    }
}

impl Certifier for GrpcCertifier {
    async fn certify(&self, csr: &[u8]) -> Result<Issued, CertifyError> {
        let token =
            tokio::fs::read(&self.token_file).await.map_err(|source| CertifyError::Token { path: self.token_file.clone(), source })?;
        let token = token.trim_ascii().to_vec();
        let request = CertifyRequest { identity: self.identity.as_str().to_owned(), token, certificate_signing_request: csr.to_vec() };
        let mut client = self.client.clone();
        let response = tokio::time::timeout(self.timeout, client.certify(request))
            .await
            .map_err(|_| CertifyError::Timeout(self.timeout))??
            .into_inner();
        if response.leaf_certificate.is_empty() {
            return Err(CertifyError::Response("no leaf certificate".to_owned()));
        }
        let mut chain = vec![CertificateDer::from(response.leaf_certificate)];
        chain.extend(response.intermediate_certificates.into_iter().map(CertificateDer::from));
        let not_after = leaf_not_after(&chain[0])?;
        match crate::tls::peer_identity(&chain) {
            Some(named) if named == self.identity => {}
            other => {
                return Err(CertifyError::Response(format!(
                    "leaf names {}, expected {}",
                    other.map_or_else(|| "no DNS identity".to_owned(), |i| i.to_string()),
                    self.identity
                )));
            }
        }
        Ok(Issued { chain, not_after })
    }
}

/// The leaf's notAfter.
fn leaf_not_after(leaf: &CertificateDer<'_>) -> Result<SystemTime, CertifyError> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| CertifyError::Response(format!("leaf: {e}")))?;
    let seconds =
        u64::try_from(cert.validity().not_after.timestamp()).map_err(|_| CertifyError::Response("leaf expires before 1970".to_owned()))?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// Exponential backoff with jitter: each delay is drawn from the upper half
/// of a window that doubles from `min` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), attempt: 0 }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let window = self.min.saturating_mul(1u32 << self.attempt.min(16)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter: f64 = rand::rng().random_range(0.5..=1.0);
        window.mul_f64(jitter)
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(5))
    }
}

/// The renewal loop.
pub struct Renewer<C> {
    certifier: C,
    identity: Identity,
    key: LocalKey,
    roots: watch::Receiver<Arc<TrustRoots>>,
    tx: CredentialsTx,
    leaf: watch::Sender<Option<LeafInfo>>,
    metrics: Metrics,
    backoff: Backoff,
}

impl<C: Certifier> Renewer<C> {
    /// A loop that publishes on `tx`.
    pub fn new(
        certifier: C,
        identity: Identity,
        key: LocalKey,
        roots: watch::Receiver<Arc<TrustRoots>>,
        tx: CredentialsTx,
        metrics: Metrics,
        backoff: Backoff,
    ) -> Self {
        Self { certifier, identity, key, roots, tx, leaf: watch::channel(None).0, metrics, backoff }
    }

    /// The current leaf as `/trust` reports it (`None` while there is none).
    pub fn leaf(&self) -> watch::Receiver<Option<LeafInfo>> {
        self.leaf.subscribe()
    }

    fn build(&self, issued: &Issued) -> Result<Arc<Credentials>, CertifyError> {
        let roots = self.roots.borrow().store().clone();
        Ok(Arc::new(Credentials::new(self.identity.clone(), issued.chain.clone(), self.key.key(), roots, issued.not_after)?))
    }

    fn issuer_of(&self, issued: &Issued) -> Option<String> {
        self.roots.borrow().issuer_of(&issued.chain)
    }

    /// Whether the control plane announced an issuer other than the leaf's.
    fn stale_issuer(&self, leaf_issuer: Option<&str>) -> bool {
        let roots = self.roots.borrow();
        roots.expected_issuer().is_some_and(|expected| Some(expected) != leaf_issuer)
    }

    /// Runs until every receiver of the credentials is gone.
    pub async fn run(mut self) {
        // A ConfigMap source has no anchors until its first good bundle:
        // a leaf could not be checked or used before then.
        if self.roots.wait_for(|r| !r.is_empty()).await.is_err() {
            return;
        }
        let mut current: Option<(Issued, Instant)> = None;
        let mut next_attempt = Instant::now();
        let mut roots_open = true;
        let mut anchors = self.roots.borrow_and_update().clone();
        let mut early = Backoff::new(Duration::from_secs(1), EARLY_RETRY_MAX);
        loop {
            let expires_at = current.as_ref().map(|(_, at)| *at);
            tokio::select! {
                () = tokio::time::sleep_until(next_attempt) => {
                    match self.attempt().await {
                        Ok((issued, credentials)) => {
                            let now = Instant::now();
                            let lifetime = issued.not_after.duration_since(SystemTime::now()).unwrap_or_default();
                            let issuer = self.issuer_of(&issued);
                            next_attempt = if self.stale_issuer(issuer.as_deref()) {
                                // The identity service has not switched yet: ask again soon.
                                let delay = early.next_delay();
                                tracing::info!(issuer = ?issuer, retry_in = ?delay, "the leaf is still from the previous issuer");
                                now + delay.min(lifetime.mul_f64(REFRESH_FRACTION))
                            } else {
                                early.reset();
                                now + lifetime.mul_f64(REFRESH_FRACTION)
                            };
                            tracing::info!(
                                identity = %self.identity,
                                issuer = ?issuer,
                                expires_in = ?lifetime,
                                refresh_in = ?next_attempt.saturating_duration_since(now),
                                "identity certificate issued"
                            );
                            self.metrics.cert_refreshed(issued.not_after);
                            self.backoff.reset();
                            self.tx.send_replace(Some(credentials));
                            self.leaf.send_replace(Some(LeafInfo {
                                identity: self.identity.to_string(),
                                issuer,
                                not_after: crate::trust::rfc3339(issued.not_after),
                            }));
                            current = Some((issued, now + lifetime));
                        }
                        Err(error) => {
                            self.metrics.cert_refresh_failed();
                            let delay = self.backoff.next_delay();
                            tracing::warn!(%error, retry_in = ?delay, serving = current.is_some(), "failed to obtain an identity certificate");
                            next_attempt = Instant::now() + delay;
                        }
                    }
                }
                () = sleep_until_opt(expires_at) => {
                    tracing::warn!(identity = %self.identity, "identity certificate expired; refusing mTLS until a new one arrives");
                    current = None;
                    self.metrics.set_cert_expiry(None);
                    self.tx.send_replace(None);
                    self.leaf.send_replace(None);
                }
                changed = self.roots.changed(), if roots_open => {
                    if changed.is_err() {
                        roots_open = false;
                        continue;
                    }
                    let roots = self.roots.borrow_and_update().clone();
                    let Some((issued, _)) = &current else { continue };
                    if !roots.same_anchors(&anchors) {
                        match self.build(issued) {
                            Ok(credentials) => {
                                tracing::info!("trust anchors changed; credentials rebuilt");
                                self.tx.send_replace(Some(credentials));
                            }
                            Err(error) => tracing::warn!(%error, "rebuilding credentials with the new trust anchors"),
                        }
                    }
                    anchors = roots;
                    let leaf_issuer = self.issuer_of(issued);
                    if self.stale_issuer(leaf_issuer.as_deref()) {
                        let jitter = EARLY_JITTER.mul_f64(rand::rng().random_range(0.0..=1.0));
                        let at = Instant::now() + jitter;
                        if at < next_attempt {
                            tracing::info!(
                                leaf_issuer = ?leaf_issuer,
                                expected = ?anchors.expected_issuer(),
                                renew_in = ?jitter,
                                "the control plane announced another issuer; renewing early"
                            );
                            next_attempt = at;
                        }
                    }
                }
                () = self.tx.closed() => return,
            }
        }
    }

    async fn attempt(&self) -> Result<(Issued, Arc<Credentials>), CertifyError> {
        let issued = self.certifier.certify(self.key.csr()).await?;
        let credentials = self.build(&issued)?;
        Ok((issued, credentials))
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A CA in memory that signs CSRs with a fixed lifetime, and can be told to fail.
    struct FakeCa {
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        root: CertificateDer<'static>,
        root_pem: String,
        lifetime: Duration,
        calls: Mutex<Vec<Instant>>,
        fail: Mutex<u32>,
        fail_forever: std::sync::atomic::AtomicBool,
    }

    impl FakeCa {
        fn new(lifetime: Duration) -> Arc<Self> {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key).unwrap();
            let (root, root_pem) = (cert.der().clone(), cert.pem());
            let issuer = rcgen::Issuer::new(params, key);
            Arc::new(Self { issuer, root, root_pem, lifetime, calls: Mutex::default(), fail: Mutex::new(0), fail_forever: Default::default() })
        }

        fn roots(&self) -> Arc<TrustRoots> {
            Arc::new(crate::trust::parse_bundle(self.root_pem.as_bytes(), "test").unwrap())
        }

        fn calls(&self) -> Vec<Duration> {
            let calls = self.calls.lock().unwrap();
            calls.iter().map(|c| *c - calls[0]).collect()
        }
    }

    impl Certifier for Arc<FakeCa> {
        async fn certify(&self, csr: &[u8]) -> Result<Issued, CertifyError> {
            self.calls.lock().unwrap().push(Instant::now());
            {
                let mut fail = self.fail.lock().unwrap();
                if *fail > 0 || self.fail_forever.load(std::sync::atomic::Ordering::Relaxed) {
                    *fail = fail.saturating_sub(1);
                    return Err(CertifyError::Rpc(tonic::Status::unavailable("down")));
                }
            }
            let csr = rcgen::CertificateSigningRequestParams::from_der(&csr.to_vec().into()).unwrap();
            let leaf = csr.signed_by(&self.issuer).unwrap();
            Ok(Issued { chain: vec![leaf.der().clone()], not_after: SystemTime::now() + self.lifetime })
        }
    }

    /// Lifetimes come from the wall clock (the fake CA's and the renewer's
    /// `SystemTime::now()` differ by real microseconds) while the schedule
    /// runs on tokio's paused clock: compare within a few milliseconds.
    fn assert_near(actual: Duration, expected: Duration) {
        let diff = actual.abs_diff(expected);
        assert!(diff < Duration::from_millis(50), "{actual:?} is not {expected:?}");
    }

    fn start(ca: &Arc<FakeCa>, backoff: Backoff) -> (crate::tls::CredentialsRx, Metrics) {
        let (rx, metrics, _roots, _leaf) = start_with_roots(ca, backoff);
        (rx, metrics)
    }

    fn start_with_roots(
        ca: &Arc<FakeCa>,
        backoff: Backoff,
    ) -> (crate::tls::CredentialsRx, Metrics, watch::Sender<Arc<TrustRoots>>, watch::Receiver<Option<LeafInfo>>) {
        let identity = Identity::parse("web.ns.serviceaccount.identity.linkerd.cluster.local").unwrap();
        let key = LocalKey::generate(&identity).unwrap();
        let (roots_tx, roots) = watch::channel(ca.roots());
        let (tx, rx) = watch::channel(None);
        let metrics = Metrics::new();
        let renewer = Renewer::new(ca.clone(), identity, key, roots, tx, metrics.clone(), backoff);
        let leaf = renewer.leaf();
        tokio::spawn(renewer.run());
        (rx, metrics, roots_tx, leaf)
    }

    /// Announces `issuer` as the control plane's current issuer.
    fn announce(roots_tx: &watch::Sender<Arc<TrustRoots>>, issuer: &str) {
        let (mut updater, rx) = crate::trust::TrustUpdater::new("test".into(), (**roots_tx.borrow()).clone());
        updater.set_expected_issuer(Some(issuer.to_owned()));
        roots_tx.send_replace(rx.borrow().clone());
    }

    #[tokio::test(start_paused = true)]
    async fn another_announced_issuer_renews_early_until_the_leaf_matches() {
        let ca = FakeCa::new(Duration::from_secs(1000));
        let (mut rx, _metrics, roots_tx, leaf) = start_with_roots(&ca, Backoff::default());
        rx.wait_for(Option::is_some).await.unwrap();
        let root_fp = crate::trust::fingerprint(&ca.root);
        let info = leaf.borrow().clone().unwrap();
        assert_eq!(info.issuer.as_deref(), Some(root_fp.as_str()), "a leaf signed by an anchor names that anchor");
        assert_eq!(info.identity, "web.ns.serviceaccount.identity.linkerd.cluster.local");

        // The same issuer announced: nothing happens before the 70 % mark.
        announce(&roots_tx, &root_fp);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(ca.calls().len(), 1);

        // Another issuer: a renewal within the jitter, then retries while the leaf is still the old issuer's.
        let announced = Instant::now();
        announce(&roots_tx, "sha256:00");
        tokio::time::sleep(EARLY_JITTER + Duration::from_millis(10)).await;
        let early = ca.calls.lock().unwrap().get(1).copied().expect("an early renewal");
        assert!(early >= announced && early - announced <= EARLY_JITTER, "renewed {:?} after the announcement", early - announced);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(ca.calls().len() >= 4, "retries until the new issuer's leaf: {:?}", ca.calls());
        assert!(announced.elapsed() < Duration::from_secs(30));

        // The identity service now serves the announced issuer: back to the 70 % schedule.
        announce(&roots_tx, &root_fp);
        tokio::time::sleep(Duration::from_secs(40)).await;
        let settled = ca.calls().len();
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(ca.calls().len(), settled, "no more early renewals once the leaf matches");
    }

    #[tokio::test(start_paused = true)]
    async fn renews_at_seventy_percent_of_the_lifetime() {
        let ca = FakeCa::new(Duration::from_secs(100));
        let (mut rx, metrics) = start(&ca, Backoff::default());
        rx.wait_for(Option::is_some).await.unwrap();
        tokio::time::sleep(Duration::from_secs(150)).await;
        let calls = ca.calls();
        assert_eq!(calls.len(), 3, "{calls:?}");
        for (call, expected) in calls.into_iter().zip([0, 70, 140]) {
            assert_near(call, Duration::from_secs(expected));
        }
        assert_eq!(metrics.cert_refresh_count(), 3);
        assert!(rx.borrow().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_with_jitter() {
        let ca = FakeCa::new(Duration::from_secs(100));
        *ca.fail.lock().unwrap() = 5;
        let (mut rx, metrics) = start(&ca, Backoff::new(Duration::from_secs(1), Duration::from_secs(8)));
        rx.wait_for(Option::is_some).await.unwrap();
        let calls = ca.calls();
        assert_eq!(calls.len(), 6);
        let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
        for (gap, window) in gaps.iter().zip([1u64, 2, 4, 8, 8]) {
            let window = Duration::from_secs(window);
            assert!(*gap >= window / 2 && *gap <= window, "gap {gap:?} outside [{:?}, {window:?}]", window / 2);
        }
        assert!(metrics.encode().contains("identity_cert_refresh_failures_total 5"));
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_serving_until_expiry_then_publishes_none() {
        let ca = FakeCa::new(Duration::from_secs(100));
        let (mut rx, _metrics) = start(&ca, Backoff::new(Duration::from_secs(1), Duration::from_secs(8)));
        rx.wait_for(Option::is_some).await.unwrap();
        let issued_at = Instant::now();
        ca.fail_forever.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(99)).await;
        assert!(rx.borrow().is_some(), "the certificate serves while renewals fail");
        rx.wait_for(Option::is_none).await.unwrap();
        assert_near(Instant::now() - issued_at, Duration::from_secs(100));
        // The service comes back: a certificate is published again.
        ca.fail_forever.store(false, std::sync::atomic::Ordering::Relaxed);
        rx.wait_for(Option::is_some).await.unwrap();
    }

    #[test]
    fn the_csr_names_exactly_the_identity() {
        let identity = Identity::parse("web.ns.serviceaccount.identity.linkerd.cluster.local").unwrap();
        let key = LocalKey::generate(&identity).unwrap();
        let csr = rcgen::CertificateSigningRequestParams::from_der(&key.csr().to_vec().into()).unwrap();
        assert_eq!(csr.params.subject_alt_names, vec![rcgen::SanType::DnsName(identity.as_str().try_into().unwrap())]);
        assert_eq!(csr.params.distinguished_name.iter().count(), 0);
    }
}
