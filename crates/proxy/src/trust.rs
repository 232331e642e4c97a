//! The trust bundle: PEM roots from a file, re-read every second and
//! published when their content changes (a rotation adds a root, later
//! removes the old one). An unreadable or empty update is logged and
//! ignored: the proxy keeps the last good roots rather than trusting none.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tokio::sync::watch;

/// How often the file is checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

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
    #[error("trust anchors {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Parses a PEM bundle into a root store; every certificate must be usable
/// as a trust anchor, and there must be at least one.
pub fn parse_roots(pem: &[u8], path: &Path) -> Result<RootCertStore, TrustError> {
    let invalid = |reason: String| TrustError::Invalid { path: path.to_owned(), reason };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no certificates".to_owned()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| invalid(format!("unusable trust anchor: {e}")))?;
    }
    Ok(roots)
}

/// Watches a trust-anchor file.
#[derive(Debug)]
pub struct TrustBundle {
    path: PathBuf,
    last: Vec<u8>,
    tx: watch::Sender<Arc<RootCertStore>>,
}

impl TrustBundle {
    /// Loads the file (it must be valid at start) and returns the watcher and
    /// the receiver of the roots.
    pub fn load(path: PathBuf) -> Result<(Self, watch::Receiver<Arc<RootCertStore>>), TrustError> {
        let pem = std::fs::read(&path).map_err(|source| TrustError::Read { path: path.clone(), source })?;
        let roots = parse_roots(&pem, &path)?;
        let (tx, rx) = watch::channel(Arc::new(roots));
        Ok((Self { path, last: pem, tx }, rx))
    }

    /// Checks the file once; publishes new roots when its content changed and
    /// parses. Returns whether it published.
    pub async fn poll_once(&mut self) -> bool {
        let pem = match tokio::fs::read(&self.path).await {
            Ok(pem) => pem,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "trust anchors unreadable; keeping the current ones");
                return false;
            }
        };
        if pem == self.last {
            return false;
        }
        match parse_roots(&pem, &self.path) {
            Ok(roots) => {
                tracing::info!(path = %self.path.display(), roots = roots.len(), "trust anchors updated");
                self.last = pem;
                self.tx.send_replace(Arc::new(roots));
                true
            }
            Err(error) => {
                // Remember the bad content so it is reported once, not every second.
                self.last = pem;
                tracing::warn!(%error, "refusing new trust anchors; keeping the current ones");
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
            if self.tx.is_closed() {
                return;
            }
            self.poll_once().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_pem() -> String {
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
    fn empty_and_invalid_bundles_are_refused() {
        let path = Path::new("ca.crt");
        assert_eq!(parse_roots(b"", path).unwrap_err().to_string(), "trust anchors ca.crt: no certificates");
        let bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(parse_roots(bad, path).unwrap_err().to_string().starts_with("trust anchors ca.crt: unusable trust anchor"));
    }
}
