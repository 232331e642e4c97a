//! Automatic issuer renewal: what cert-manager's CA Issuer and Certificate
//! (`duration`, `renewBefore`) do for Linkerd, done by `tessera identity`
//! itself when it holds the trust anchor's key (`--anchor-dir`).
//!
//! One task watches the issuer in use. Once less than `renew_before` of its
//! life is left it signs a new issuer with the anchor that signed the
//! current one (so proxies already trust it: a renewal never changes the
//! anchor, that is `identity rotate`'s job), installs it where identity
//! reads it (files or Secret, as `rotate --issuer-only` does), announces its
//! fingerprint on the bundle ConfigMap so proxies renew their leaves at
//! once, and records a Normal `IssuerRenewed` Event. A failure records a
//! Warning `IssuerRenewalFailed` Event, keeps the current issuer and is
//! retried with exponential backoff. The new issuer reaches the Certify
//! service through the ordinary hot reload ([`crate::reload`]), which checks
//! it like any other.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use time::OffsetDateTime;
use tokio::sync::watch;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use crate::bundle::AnchorsSource;
use crate::error::{Error, Result};
use crate::issuer::{Issuer, IssuerMaterial};
use crate::pki::{self, TrustAnchors};
use crate::reload::{EventRecorder, IssuerSource};
use crate::review::IdentityNaming;
use crate::rotate::{Cluster as _, IssuerTarget, KubeCluster, fingerprint, fingerprint_pem};

/// Reason of the Event for a renewed issuer.
pub const ISSUER_RENEWED: &str = "IssuerRenewed";
/// Reason of the Warning Event for a renewal that failed (retried).
pub const ISSUER_RENEWAL_FAILED: &str = "IssuerRenewalFailed";
/// First retry delay after a failed renewal; doubled per failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why one renewal attempt failed (the Warning Event's text).
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// Reading the installed issuer, finding the anchor, installing or announcing failed.
    #[error("{0}")]
    Failed(String),
    /// Making or checking the new issuer failed.
    #[error(transparent)]
    Material(#[from] Error),
}

/// How the issuer is renewed (`--anchor-dir`, `--issuer-validity`, `--issuer-renew-before`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewConfig {
    /// Where the anchors' `ca.crt`/`ca.key` are (itself or a subdirectory, as `rotate` keeps them).
    pub anchor_dir: PathBuf,
    /// Lifetime of each new issuer (cert-manager's `duration`).
    pub validity: Duration,
    /// Renew once less than this is left (cert-manager's `renewBefore`).
    pub renew_before: Duration,
}

impl RenewConfig {
    /// Refuses settings that would renew at once, forever.
    pub fn validate(&self) -> Result<()> {
        if self.validity.is_zero() || self.renew_before.is_zero() {
            return Err(Error::Config("--issuer-validity and --issuer-renew-before must be positive".to_owned()));
        }
        if self.renew_before >= self.validity {
            return Err(Error::Config(format!(
                "--issuer-renew-before ({}) must be shorter than --issuer-validity ({})",
                humantime::format_duration(self.renew_before),
                humantime::format_duration(self.validity)
            )));
        }
        Ok(())
    }
}

/// When an issuer valid until `not_after` is due for renewal.
pub fn renew_at(not_after: OffsetDateTime, renew_before: Duration) -> OffsetDateTime {
    not_after - renew_before
}

/// How long to wait before renewing an issuer valid until `not_after`
/// (zero when already due).
pub fn delay_until_renewal(not_after: OffsetDateTime, renew_before: Duration, now: OffsetDateTime) -> Duration {
    let left = renew_at(not_after, renew_before) - now;
    if left.is_positive() { Duration::try_from(left).unwrap_or(Duration::ZERO) } else { Duration::ZERO }
}

/// The wait before retry number `failures` (1 after the first failure).
pub fn backoff(failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1));
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}

/// Everything the renewal task needs from the running service.
pub struct Renewer {
    /// The renewal settings.
    pub config: RenewConfig,
    /// Where identity reads the issuer; the new one is written there.
    pub source: IssuerSource,
    /// Where the anchors come from (a ConfigMap gets the issuer announcement).
    pub anchors_source: AnchorsSource,
    /// Names the new issuer.
    pub naming: IdentityNaming,
    /// The Kubernetes API.
    pub client: kube::Client,
    /// The issuer in use.
    pub issuer: watch::Receiver<Option<Arc<Issuer>>>,
    /// The current trust anchors.
    pub anchors: watch::Receiver<TrustAnchors>,
}

/// A renewal that was done.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Renewed {
    old_fingerprint: String,
    old_not_after: OffsetDateTime,
    new_fingerprint: String,
    new_not_after: OffsetDateTime,
}

impl Renewer {
    /// Renews whenever due, until the task is dropped.
    pub async fn run(mut self) {
        let (namespace, cm_name) = match &self.anchors_source {
            AnchorsSource::ConfigMap { namespace, name } => (namespace.clone(), name.clone()),
            AnchorsSource::File(_) => (self.naming.control_namespace.clone(), crate::bundle::CONFIGMAP_NAME.to_owned()),
        };
        let (target, event_object) = match &self.source {
            IssuerSource::Dir(dir) => (IssuerTarget::Dir(dir.clone()), reference("ConfigMap", &namespace, &cm_name)),
            IssuerSource::Secret { namespace, name } => {
                (IssuerTarget::Secret { namespace: namespace.clone(), name: name.clone() }, reference("Secret", namespace, name))
            }
        };
        let event_namespace = event_object.namespace.clone().unwrap_or_default();
        let events = EventRecorder::new(self.client.clone(), &event_namespace);
        let cluster = KubeCluster::new(self.client.clone(), namespace, Some(target));
        let announce = matches!(self.anchors_source, AnchorsSource::ConfigMap { .. });
        // The notAfter of the issuer last installed here: until the hot
        // reload has swapped it in, the one in use still looks due.
        let mut installed_until: Option<OffsetDateTime> = None;
        let mut failures = 0u32;
        loop {
            let Some(current) = self.current().await else { return };
            let not_after = installed_until.map_or(current.not_after(), |i| i.max(current.not_after()));
            let delay = delay_until_renewal(not_after, self.config.renew_before, OffsetDateTime::now_utc());
            if !delay.is_zero() {
                tracing::debug!(renew_at = %pki::rfc3339(renew_at(not_after, self.config.renew_before)), "next issuer renewal");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    // A new issuer from elsewhere (rotate, an operator): recompute.
                    changed = self.issuer.changed() => if changed.is_err() { return },
                }
                continue;
            }
            match self.renew_once(&cluster, announce).await {
                Ok(done) => {
                    failures = 0;
                    installed_until = Some(done.new_not_after);
                    let message = format!(
                        "Renewed identity issuer: {} valid until {} replaces {} valid until {}",
                        done.new_fingerprint,
                        pki::rfc3339(done.new_not_after),
                        done.old_fingerprint,
                        pki::rfc3339(done.old_not_after)
                    );
                    tracing::info!(reason = ISSUER_RENEWED, "{message}");
                    events.record_ref(event_object.clone(), "Normal", ISSUER_RENEWED, message).await;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let retry = backoff(failures);
                    let message = format!(
                        "Renewing the identity issuer failed (keeping the current one, retrying in {}): {e}",
                        humantime::format_duration(retry)
                    );
                    tracing::error!(reason = ISSUER_RENEWAL_FAILED, "{message}");
                    events.record_ref(event_object.clone(), "Warning", ISSUER_RENEWAL_FAILED, message).await;
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    /// The issuer in use, once there is one; None when the service stopped.
    async fn current(&mut self) -> Option<Arc<Issuer>> {
        self.issuer.wait_for(Option::is_some).await.ok().and_then(|i| i.clone())
    }

    /// Signs, installs and announces one new issuer.
    async fn renew_once(&self, cluster: &KubeCluster, announce: bool) -> std::result::Result<Renewed, RenewError> {
        let installed = cluster.installed_issuer().await.map_err(|e| RenewError::Failed(e.to_string()))?;
        let installed = installed.ok_or_else(|| RenewError::Failed("no issuer is installed".to_owned()))?;
        let old_fingerprint = fingerprint_pem(&installed).map_err(|e| RenewError::Failed(format!("the installed issuer: {e}")))?;
        let old_not_after = {
            let ders = pki::certificates_from_pem(installed.as_bytes()).map_err(Error::Config)?;
            let der = ders.first().ok_or_else(|| RenewError::Failed("the installed issuer has no certificate".to_owned()))?;
            let (_, cert) = X509Certificate::from_der(der).map_err(|e| RenewError::Failed(format!("the installed issuer: {e}")))?;
            pki::not_after(&cert)
        };
        let anchors = self.anchors.borrow().clone();
        let signer = signer_dir(&self.config.anchor_dir, &installed, &anchors)?;
        let material = new_issuer(&self.config.anchor_dir, &signer, self.config.validity, &self.naming)?;
        let crt = String::from_utf8_lossy(&material.cert_pem).into_owned();
        let key = String::from_utf8_lossy(&material.key_pem).into_owned();
        // Checked as the hot reload will check it, before anything is replaced.
        let issuer = Issuer::load(&material, &anchors, &self.naming, OffsetDateTime::now_utc())
            .map_err(|source| Error::Issuer { from: format!("the renewed issuer signed by {}", signer.display()), source })?;
        cluster.install_issuer(&crt, &key).await.map_err(|e| RenewError::Failed(e.to_string()))?;
        let new_fingerprint = fingerprint_pem(&crt).map_err(Error::Config)?;
        if announce {
            cluster.announce_issuer(&new_fingerprint).await.map_err(|e| RenewError::Failed(e.to_string()))?;
        }
        Ok(Renewed { old_fingerprint, old_not_after, new_fingerprint, new_not_after: issuer.not_after() })
    }
}

fn reference(kind: &str, namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some(kind.to_owned()),
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..ObjectReference::default()
    }
}

/// The directory (under `anchor_dir`) of the anchor that signed the
/// installed issuer `installed_pem`, among the bundle's anchors; when the
/// installed one can no longer tell (expired), the newest bundle anchor
/// with its key there.
fn signer_dir(anchor_dir: &Path, installed_pem: &str, anchors: &TrustAnchors) -> std::result::Result<PathBuf, RenewError> {
    let bundle: Vec<String> = anchors.certificates().iter().map(|c| fingerprint(c)).collect();
    let mut candidates = Vec::new();
    for fp in bundle.iter().rev() {
        if let Some(dir) = crate::rotate::find_anchor(anchor_dir, fp)? {
            candidates.push(dir);
        }
    }
    let installed = pki::certificates_from_pem(installed_pem.as_bytes()).unwrap_or_default();
    let installed = installed.first().and_then(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c));
    if let Some(installed) = &installed {
        for dir in &candidates {
            let ca = std::fs::read(dir.join("ca.crt")).map_err(|e| Error::io(dir.join("ca.crt"), e))?;
            let one = TrustAnchors::from_pem(&ca).map_err(|source| Error::Anchors { path: dir.join("ca.crt"), source })?;
            if one.signer_of(installed).is_some() {
                return Ok(dir.clone());
            }
        }
    }
    candidates.into_iter().next().ok_or_else(|| {
        RenewError::Failed(format!(
            "none of the trust anchors ({}) has its ca.crt and ca.key under {}",
            bundle.join(", "),
            anchor_dir.display()
        ))
    })
}

/// A new issuer signed by the anchor in `signer`, made in a scratch
/// directory under `anchor_dir` (removed again: the installed copy is the one kept).
fn new_issuer(anchor_dir: &Path, signer: &Path, validity: Duration, naming: &IdentityNaming) -> Result<IssuerMaterial> {
    let scratch = anchor_dir.join(".issuer-renewal.tmp");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
    }
    let config = crate::bootstrap::BootstrapConfig {
        out: scratch.clone(),
        anchor_validity: validity,
        issuer_validity: validity,
        naming: naming.clone(),
        anchor_dir: Some(signer.to_owned()),
    };
    let made = crate::bootstrap::bootstrap(&config, OffsetDateTime::now_utc()).and_then(|_| crate::reload::read_issuer_dir(&scratch));
    let _ = std::fs::remove_dir_all(&scratch);
    made
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::now;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn renewal_is_due_renew_before_the_end() {
        let not_after = now() + 2 * MIN;
        assert_eq!(renew_at(not_after, MIN), now() + MIN);
        assert_eq!(delay_until_renewal(not_after, MIN, now()), MIN);
        assert_eq!(delay_until_renewal(not_after, MIN, now() + Duration::from_secs(59)), Duration::from_secs(1));
        assert_eq!(delay_until_renewal(not_after, MIN, now() + MIN), Duration::ZERO);
        assert_eq!(delay_until_renewal(not_after, MIN, now() + 3 * MIN), Duration::ZERO, "an expired issuer is due at once");
    }

    #[test]
    fn cert_managers_example_renews_after_23_hours() {
        let hour = 60 * MIN;
        let not_after = now() + 48 * hour;
        assert_eq!(delay_until_renewal(not_after, 25 * hour, now()), 23 * hour);
    }

    #[test]
    fn failures_back_off_exponentially_to_a_cap() {
        let secs: Vec<u64> = (1..=7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn renew_before_must_be_shorter_than_the_validity() {
        let config = |validity, renew_before| RenewConfig { anchor_dir: PathBuf::from("a"), validity, renew_before };
        config(2 * MIN, MIN).validate().unwrap();
        assert_eq!(
            config(MIN, MIN).validate().unwrap_err().to_string(),
            "invalid configuration: --issuer-renew-before (1m) must be shorter than --issuer-validity (1m)"
        );
        assert_eq!(
            config(MIN, Duration::ZERO).validate().unwrap_err().to_string(),
            "invalid configuration: --issuer-validity and --issuer-renew-before must be positive"
        );
    }

    #[test]
    fn the_anchor_that_signed_the_installed_issuer_signs_its_successor() {
        let dir = tempfile::tempdir().unwrap();
        let naming = IdentityNaming::default();
        let old = dir.path().join("old");
        let new = dir.path().join("new");
        let config = |out: &Path, validity| crate::bootstrap::BootstrapConfig {
            out: out.to_owned(),
            anchor_validity: validity,
            issuer_validity: validity,
            naming: naming.clone(),
            anchor_dir: None,
        };
        crate::bootstrap::bootstrap(&config(&old, 10 * MIN), now()).unwrap();
        crate::bootstrap::bootstrap(&config(&new, 10 * MIN), now()).unwrap();
        // Both anchors in the bundle, the new one last (as in rotate's step 2).
        let bundle = [std::fs::read(old.join("ca.crt")).unwrap(), std::fs::read(new.join("ca.crt")).unwrap()].concat();
        let anchors = TrustAnchors::from_pem(&bundle).unwrap();
        let installed = std::fs::read_to_string(old.join("crt.pem")).unwrap();
        assert_eq!(signer_dir(dir.path(), &installed, &anchors).unwrap(), old);
        let made = new_issuer(dir.path(), &old, 5 * MIN, &naming).unwrap();
        let old_only = TrustAnchors::from_pem(&std::fs::read(old.join("ca.crt")).unwrap()).unwrap();
        Issuer::load(&made, &old_only, &naming, OffsetDateTime::now_utc()).unwrap();
        assert!(!dir.path().join(".issuer-renewal.tmp").exists());
        // An installed issuer no anchor signed: the newest anchor with a key.
        assert_eq!(signer_dir(dir.path(), "garbage", &anchors).unwrap(), new);
        let err = signer_dir(&dir.path().join("old/nothing-here"), &installed, &anchors).unwrap_err();
        assert!(err.to_string().contains("nothing-here"), "{err}");
    }
}
