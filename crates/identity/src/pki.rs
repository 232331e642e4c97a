//! PEM and key handling shared by the issuer, bootstrap and checks: trust-anchor
//! bundles, certificate chains, ECDSA P-256 keys (PKCS#8 or SEC1), and a few
//! facts about certificates (key algorithm, validity, who signed whom).

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::{AnchorError, IssuerError};

/// The trust anchors (root certificates) leaves must chain to; a bundle may
/// hold several roots while one is rotated out. Immutable once loaded.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    anchors: Vec<CertificateDer<'static>>,
}

impl TrustAnchors {
    /// Parses a PEM bundle; every block must be a certificate that parses.
    pub fn from_pem(pem: &[u8]) -> Result<Self, AnchorError> {
        let anchors = certificates_from_pem(pem).map_err(|reason| AnchorError::Certificate { index: 0, reason })?;
        if anchors.is_empty() {
            return Err(AnchorError::Empty);
        }
        for (i, der) in anchors.iter().enumerate() {
            X509Certificate::from_der(der).map_err(|e| AnchorError::Certificate { index: i + 1, reason: e.to_string() })?;
        }
        Ok(Self { anchors })
    }

    /// The anchors' DER certificates, in bundle order.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.anchors
    }

    /// Whether `der` is byte-for-byte one of the anchors.
    pub fn contains(&self, der: &[u8]) -> bool {
        self.anchors.iter().any(|a| a.as_ref() == der)
    }

    /// The subject of the first anchor whose name and signature match as the
    /// issuer of `cert`, if any.
    pub fn signer_of(&self, cert: &X509Certificate<'_>) -> Option<String> {
        self.anchors.iter().find_map(|der| {
            let (_, anchor) = X509Certificate::from_der(der).ok()?;
            signed_by(cert, &anchor).then(|| anchor.subject().to_string())
        })
    }
}

/// Checks that each certificate of `chain` (issuer first) is signed by the
/// next, and the last by one of `anchors`.
pub fn verify_chain(chain: &[X509Certificate<'_>], anchors: &TrustAnchors) -> Result<(), IssuerError> {
    for pair in chain.windows(2) {
        if !signed_by(&pair[0], &pair[1]) {
            return Err(IssuerError::ChainBroken { subject: pair[0].subject().to_string() });
        }
    }
    let Some(last) = chain.last() else {
        return Err(IssuerError::NoCertificate);
    };
    if anchors.signer_of(last).is_none() {
        return Err(IssuerError::NotSignedByAnchor { subject: last.subject().to_string() });
    }
    Ok(())
}

/// Whether `cert` names `by` as its issuer and `by`'s key verifies its signature.
pub fn signed_by(cert: &X509Certificate<'_>, by: &X509Certificate<'_>) -> bool {
    cert.issuer() == by.subject() && cert.verify_signature(Some(by.public_key())).is_ok()
}

/// All certificates in a PEM text (other block types are skipped).
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| format!("PEM: {e}"))
}

/// The key algorithm of a certificate or CSR public key, as `check` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// RSA with this modulus size in bits.
    Rsa(usize),
    /// Anything else (another curve, Ed25519, DSA…).
    Other,
}

impl KeyAlgorithm {
    /// Classifies a SubjectPublicKeyInfo.
    pub fn of(spki: &SubjectPublicKeyInfo<'_>) -> Self {
        if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            let uncompressed = spki.subject_public_key.data.len() == 65 && spki.subject_public_key.data.first() == Some(&4);
            if curve.as_ref() == Some(&OID_EC_P256) && uncompressed {
                return Self::EcdsaP256;
            }
            return Self::Other;
        }
        if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION
            && let Ok(PublicKey::RSA(rsa)) = spki.parsed()
        {
            return Self::Rsa(rsa.key_size());
        }
        Self::Other
    }
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::Rsa(bits) => write!(f, "RSA {bits}"),
            Self::Other => f.write_str("an unsupported algorithm"),
        }
    }
}

/// Loads an ECDSA P-256 private key from PEM (PKCS#8 `PRIVATE KEY` or SEC1
/// `EC PRIVATE KEY`, as cert-manager and step write it).
pub fn p256_key_from_pem(pem: &[u8]) -> Result<KeyPair, IssuerError> {
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| IssuerError::Key(e.to_string()))?;
    let pkcs8 = match key {
        PrivateKeyDer::Pkcs8(k) => k,
        PrivateKeyDer::Sec1(k) => PrivatePkcs8KeyDer::from(sec1_p256_to_pkcs8(k.secret_sec1_der())),
        PrivateKeyDer::Pkcs1(_) => return Err(IssuerError::KeyNotP256),
        _ => return Err(IssuerError::Key("unsupported private key format".to_owned())),
    };
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &PKCS_ECDSA_P256_SHA256).map_err(|_| IssuerError::KeyNotP256)
}

/// Wraps a SEC1 `ECPrivateKey` in a PKCS#8 `PrivateKeyInfo` for P-256
/// (ring reads only PKCS#8). A non-P-256 key then fails to load as P-256.
fn sec1_p256_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { id-ecPublicKey, prime256v1 }
    const ALG: &[u8] =
        &[0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let mut body = vec![0x02, 0x01, 0x00]; // version 0
    body.extend_from_slice(ALG);
    body.push(0x04);
    der_len(&mut body, sec1.len());
    body.extend_from_slice(sec1);
    let mut out = vec![0x30];
    der_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

/// A certificate's notBefore as a time.
pub fn not_before(cert: &X509Certificate<'_>) -> OffsetDateTime {
    cert.validity().not_before.to_datetime()
}

/// A certificate's notAfter as a time.
pub fn not_after(cert: &X509Certificate<'_>) -> OffsetDateTime {
    cert.validity().not_after.to_datetime()
}

/// RFC 3339 text for messages, in whole seconds (what certificates carry).
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Whether a certificate is a CA: basicConstraints CA:TRUE and, when a
/// keyUsage extension is present, keyCertSign.
pub fn is_signing_ca(cert: &X509Certificate<'_>) -> bool {
    let ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let cert_sign = match cert.key_usage() {
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Ok(None) => true,
        Err(_) => false,
    };
    ca && cert_sign
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec1_keys_load_like_pkcs8() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let pkcs8 = key.serialize_der();
        // Extract the SEC1 ECPrivateKey: the OCTET STRING at the end of PKCS#8.
        let (_, info) = x509_parser::der_parser::der::parse_der(&pkcs8).unwrap();
        let items = info.as_sequence().unwrap();
        let sec1 = items[2].as_slice().unwrap();
        use base64::Engine as _;
        let text = format!(
            "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(sec1)
        );
        let loaded = p256_key_from_pem(text.as_bytes()).unwrap();
        assert_eq!(loaded.public_key_raw(), key.public_key_raw());
    }

    #[test]
    fn rsa_keys_are_not_p256() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert_eq!(p256_key_from_pem(key.serialize_pem().as_bytes()).unwrap_err(), IssuerError::KeyNotP256);
    }

    #[test]
    fn empty_and_garbage_bundles_are_refused() {
        assert_eq!(TrustAnchors::from_pem(b"").unwrap_err(), AnchorError::Empty);
        let bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(TrustAnchors::from_pem(bad).unwrap_err(), AnchorError::Certificate { index: 1, .. }));
    }
}
