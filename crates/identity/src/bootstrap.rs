//! `tessera identity bootstrap`: creates a trust anchor (`ca.crt`/`ca.key`)
//! and an issuer signed by it (`crt.pem`/`key.pem`), all ECDSA P-256, for
//! users without cert-manager. With an existing anchor directory it only
//! issues a new issuer (issuer rotation).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use crate::error::{Error, Result};
use crate::issuer::random_serial;
use crate::pki;
use crate::review::IdentityNaming;

/// How far notBefore is set back, so a freshly made certificate is valid on
/// a machine whose clock is slightly behind.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// What to create.
#[derive(Debug, Clone)]
pub struct BootstrapConfig {
    /// Output directory (created if missing); existing files are never overwritten.
    pub out: PathBuf,
    /// Lifetime of a new trust anchor (default 10 years).
    pub anchor_validity: Duration,
    /// Lifetime of the issuer (default 1 year), never past the anchor's.
    pub issuer_validity: Duration,
    /// Names the certificates: `root.<ns>.<domain>` and `identity.<ns>.<domain>`.
    pub naming: IdentityNaming,
    /// Sign the issuer with the anchor in this directory (`ca.crt`/`ca.key`)
    /// instead of creating a new anchor.
    pub anchor_dir: Option<PathBuf>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Bootstrapped {
    /// Files written, in order.
    pub files: Vec<PathBuf>,
    /// The anchor's notAfter.
    pub anchor_not_after: OffsetDateTime,
    /// The issuer's notAfter.
    pub issuer_not_after: OffsetDateTime,
}

/// Creates the files described by `config`, as of `now`.
pub fn bootstrap(config: &BootstrapConfig, now: OffsetDateTime) -> Result<Bootstrapped> {
    let not_before = now - BACKDATE;
    let mut files = Vec::new();
    let outputs: &[&str] = if config.anchor_dir.is_some() { &["crt.pem", "key.pem"] } else { &["ca.crt", "ca.key", "crt.pem", "key.pem"] };
    for name in outputs {
        let path = config.out.join(name);
        if path.exists() {
            return Err(Error::Config(format!("{} already exists; refusing to overwrite it", path.display())));
        }
    }

    let (anchor, anchor_not_after) = match &config.anchor_dir {
        Some(dir) => load_anchor(dir)?,
        None => {
            if config.issuer_validity > config.anchor_validity {
                return Err(Error::Config(format!(
                    "the issuer validity ({}) must not exceed the anchor validity ({})",
                    humantime::format_duration(config.issuer_validity),
                    humantime::format_duration(config.anchor_validity)
                )));
            }
            let anchor = create_anchor(&config.out, config.anchor_validity, &config.naming, now)?;
            files.extend(anchor.files);
            (anchor.signer, anchor.not_after)
        }
    };

    let issuer_not_after = (now + config.issuer_validity).min(anchor_not_after);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| Error::Generate { what: "issuer key", source })?;
    let mut params =
        ca_params(format!("identity.{}.{}", config.naming.control_namespace, config.naming.trust_domain), not_before, issuer_not_after);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &anchor).map_err(|source| Error::Generate { what: "issuer", source })?;
    std::fs::create_dir_all(&config.out).map_err(|e| Error::io(&config.out, e))?;
    files.push(write(&config.out.join("crt.pem"), cert.pem().as_bytes(), false)?);
    files.push(write(&config.out.join("key.pem"), key.serialize_pem().as_bytes(), true)?);
    Ok(Bootstrapped { files, anchor_not_after, issuer_not_after })
}

/// A trust anchor just written by [`create_anchor`].
pub struct NewAnchor {
    /// `ca.crt` and `ca.key`, in that order.
    pub files: Vec<PathBuf>,
    /// The anchor as a signer of issuers.
    pub signer: rcgen::Issuer<'static, KeyPair>,
    /// Its notAfter.
    pub not_after: OffsetDateTime,
}

/// Creates a self-signed ECDSA P-256 trust anchor `root.<ns>.<domain>` and
/// writes it to `out` as `ca.crt`/`ca.key` (key mode 0600; existing files are
/// never overwritten). Used by `bootstrap` and by `identity rotate`.
pub fn create_anchor(out: &Path, validity: Duration, naming: &IdentityNaming, now: OffsetDateTime) -> Result<NewAnchor> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| Error::Generate { what: "trust anchor key", source })?;
    let not_after = now + validity;
    let mut params = ca_params(format!("root.{}.{}", naming.control_namespace, naming.trust_domain), now - BACKDATE, not_after);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).map_err(|source| Error::Generate { what: "trust anchor", source })?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let files =
        vec![write(&out.join("ca.crt"), cert.pem().as_bytes(), false)?, write(&out.join("ca.key"), key.serialize_pem().as_bytes(), true)?];
    Ok(NewAnchor { files, signer: rcgen::Issuer::new(params, key), not_after })
}

fn ca_params(cn: String, not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    params
}

/// An existing anchor as a signer, with its notAfter.
fn load_anchor(dir: &Path) -> Result<(rcgen::Issuer<'static, KeyPair>, OffsetDateTime)> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read(&path).map_err(|e| Error::io(path, e))
    };
    let (cert_pem, key_pem) = (read("ca.crt")?, read("ca.key")?);
    let bad = |reason: String| Error::Config(format!("trust anchor in {}: {reason}", dir.display()));
    let ders = pki::certificates_from_pem(&cert_pem).map_err(bad)?;
    let der = ders.first().ok_or_else(|| bad("ca.crt holds no certificate".to_owned()))?;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
    let key = match pki::p256_key_from_pem(&key_pem) {
        Ok(key) => key,
        Err(_) => {
            let text = String::from_utf8(key_pem).map_err(|_| bad("ca.key is not PEM".to_owned()))?;
            KeyPair::from_pem(&text).map_err(|e| bad(format!("ca.key: {e}")))?
        }
    };
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        return Err(bad("ca.key does not match ca.crt".to_owned()));
    }
    let not_after = pki::not_after(&cert);
    let signer = rcgen::Issuer::from_ca_cert_der(der, key).map_err(|e| bad(e.to_string()))?;
    Ok((signer, not_after))
}

fn write(path: &Path, contents: &[u8], secret: bool) -> Result<PathBuf> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(|e| Error::io(path, e))?;
    file.write_all(contents).map_err(|e| Error::io(path, e))?;
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::Issuer;
    use crate::pki::TrustAnchors;
    use crate::reload::read_issuer_dir;
    use crate::test_util::now;

    fn config(out: &Path) -> BootstrapConfig {
        BootstrapConfig {
            out: out.to_owned(),
            anchor_validity: Duration::from_secs(87600 * 3600),
            issuer_validity: Duration::from_secs(8760 * 3600),
            naming: IdentityNaming::default(),
            anchor_dir: None,
        }
    }

    #[test]
    fn bootstrap_makes_an_anchor_and_an_issuer_that_loads() {
        let dir = tempfile::tempdir().unwrap();
        let done = bootstrap(&config(dir.path()), now()).unwrap();
        assert_eq!(done.files.len(), 4);
        assert_eq!((done.anchor_not_after - now()).whole_hours(), 87600);
        assert_eq!((done.issuer_not_after - now()).whole_hours(), 8760);
        let anchors = TrustAnchors::from_pem(&std::fs::read(dir.path().join("ca.crt")).unwrap()).unwrap();
        let issuer = Issuer::load(&read_issuer_dir(dir.path()).unwrap(), &anchors, &IdentityNaming::default(), now()).unwrap();
        assert_eq!(issuer.subject(), "CN=identity.linkerd.cluster.local");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("key.pem")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn bootstrap_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        bootstrap(&config(dir.path()), now()).unwrap();
        let err = bootstrap(&config(dir.path()), now()).unwrap_err();
        assert!(err.to_string().ends_with("ca.crt already exists; refusing to overwrite it"), "{err}");
    }

    #[test]
    fn an_issuer_outliving_its_anchor_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.issuer_validity = cfg.anchor_validity + Duration::from_secs(1);
        assert!(bootstrap(&cfg, now()).unwrap_err().to_string().contains("must not exceed the anchor validity"));
    }

    #[test]
    fn a_new_issuer_can_be_signed_by_an_existing_anchor() {
        let root = tempfile::tempdir().unwrap();
        bootstrap(&config(root.path()), now()).unwrap();
        let next = tempfile::tempdir().unwrap();
        let mut cfg = config(next.path());
        cfg.anchor_dir = Some(root.path().to_owned());
        cfg.issuer_validity = Duration::from_secs(30 * 86400);
        let done = bootstrap(&cfg, now()).unwrap();
        assert_eq!(done.files, vec![next.path().join("crt.pem"), next.path().join("key.pem")]);
        let anchors = TrustAnchors::from_pem(&std::fs::read(root.path().join("ca.crt")).unwrap()).unwrap();
        let first = read_issuer_dir(root.path()).unwrap();
        let second = read_issuer_dir(next.path()).unwrap();
        assert_ne!(first, second);
        Issuer::load(&second, &anchors, &IdentityNaming::default(), now()).unwrap();
    }
}
