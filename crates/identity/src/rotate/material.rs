//! The rotation's key material on disk, under `--anchor-dir`. Each rotation
//! gets `rotation-<id>/` holding its new anchor (`ca.crt`, `ca.key`, full
//! rotation only) and its issuer (`issuer/crt.pem`, `issuer/key.pem`). Each
//! is created once, in a temporary directory renamed into place, so an
//! interrupted step that is redone reuses what was already made instead of
//! minting a second anchor or issuer. Creation is `bootstrap`'s code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

use super::bundle::fingerprint_pem;
use crate::bootstrap::{self, BootstrapConfig};
use crate::error::{Error, Result};
use crate::review::IdentityNaming;

/// A certificate read back from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cert {
    /// Its PEM text.
    pub pem: String,
    /// `sha256:<hex>` of its DER.
    pub fingerprint: String,
}

/// The issuer made for a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IssuerFiles {
    /// The certificate.
    pub crt: Cert,
    /// The private key (PEM).
    pub key_pem: String,
}

/// `<anchor_dir>/rotation-<id>`.
pub(super) fn material_dir(anchor_dir: &Path, id: &str) -> PathBuf {
    anchor_dir.join(format!("rotation-{id}"))
}

fn read_cert(path: &Path) -> Result<Cert> {
    let pem = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let fingerprint = fingerprint_pem(&pem).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    Ok(Cert { pem, fingerprint })
}

/// A fresh temporary directory next to `target` (a leftover from an
/// interrupted run is discarded: nothing in it was ever used).
fn scratch(target: &Path) -> Result<PathBuf> {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = target.with_file_name(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    Ok(tmp)
}

/// The rotation's new anchor in `dir`, created (ECDSA P-256) if missing.
pub(super) fn ensure_anchor(dir: &Path, validity: Duration, naming: &IdentityNaming, now: OffsetDateTime) -> Result<Cert> {
    let crt = dir.join("ca.crt");
    if crt.exists() && dir.join("ca.key").exists() {
        return read_cert(&crt);
    }
    if dir.exists() {
        return Err(Error::Config(format!("{} exists without a complete ca.crt/ca.key; move it away to start over", dir.display())));
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = scratch(dir)?;
    bootstrap::create_anchor(&tmp, validity, naming, now)?;
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    read_cert(&crt)
}

/// The rotation's issuer in `dir/issuer`, created if missing and signed by
/// the anchor (`ca.crt`/`ca.key`) in `signer_dir`.
pub(super) fn ensure_issuer(
    dir: &Path,
    signer_dir: &Path,
    validity: Duration,
    naming: &IdentityNaming,
    now: OffsetDateTime,
) -> Result<IssuerFiles> {
    let out = dir.join("issuer");
    if !(out.join("crt.pem").exists() && out.join("key.pem").exists()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tmp = scratch(&out)?;
        let config = BootstrapConfig {
            out: tmp.clone(),
            anchor_validity: validity,
            issuer_validity: validity,
            naming: naming.clone(),
            anchor_dir: Some(signer_dir.to_owned()),
        };
        bootstrap::bootstrap(&config, now)?;
        if out.exists() {
            std::fs::remove_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        }
        std::fs::rename(&tmp, &out).map_err(|e| Error::io(&out, e))?;
    }
    let key_path = out.join("key.pem");
    let key_pem = std::fs::read_to_string(&key_path).map_err(|e| Error::io(&key_path, e))?;
    Ok(IssuerFiles { crt: read_cert(&out.join("crt.pem"))?, key_pem })
}

/// The directory under `anchor_dir` (itself, or a direct subdirectory such
/// as an earlier rotation's) whose `ca.crt` has `fingerprint` and a `ca.key`.
pub(crate) fn find_anchor(anchor_dir: &Path, fingerprint: &str) -> Result<Option<PathBuf>> {
    let mut candidates = vec![anchor_dir.to_owned()];
    let entries = std::fs::read_dir(anchor_dir).map_err(|e| Error::io(anchor_dir, e))?;
    let mut subdirs: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    subdirs.sort();
    candidates.extend(subdirs);
    for dir in candidates {
        let crt = dir.join("ca.crt");
        if crt.exists() && dir.join("ca.key").exists() && read_cert(&crt)?.fingerprint == fingerprint {
            return Ok(Some(dir));
        }
    }
    Ok(None)
}
