//! The issuer: a validated intermediate CA certificate (chain) and its key,
//! able to sign leaf certificates. [`Issuer::load`] is the only constructor and
//! refuses anything the CA must not use: beyond quick checks with precise
//! messages, the issuer signs a probe leaf that must pass RFC 5280 path
//! validation by webpki as a proxy would verify it ([`crate::chain`]).
//! [`Issuer::issue`] signs only for a [`ValidatedCsr`] together with a
//! matching [`Authenticated`] proof.

use std::time::Duration;

use rand::RngCore as _;
use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
    SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use crate::chain;
use crate::csr::ValidatedCsr;
use crate::error::{CertifyError, IssuerError};
use crate::pki::{self, KeyAlgorithm, TrustAnchors};
use crate::review::{Authenticated, IdentityNaming};

/// The ServiceAccount (namespace, name) whose identity the probe leaf of a
/// new issuer carries: a name of the trust domain like every real leaf's.
pub const PROBE_SERVICE_ACCOUNT: (&str, &str) = ("tessera-issuer-probe", "tessera-issuer-probe");

/// How long the probe leaf is valid around `now`.
const PROBE_VALIDITY: Duration = Duration::from_secs(60);

/// The issuer's PEM text as read from files or a Secret, not yet checked.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuerMaterial {
    /// Certificate PEM: the issuer first, then any further intermediates.
    pub cert_pem: Vec<u8>,
    /// Private key PEM (PKCS#8 or SEC1), ECDSA P-256.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for IssuerMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerMaterial").field("cert_pem_len", &self.cert_pem.len()).finish_non_exhaustive()
    }
}

/// How long leaves live: `notBefore = now − clock_skew`,
/// `notAfter = now + lifetime + clock_skew`, never past the issuer's notAfter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuancePolicy {
    /// Leaf lifetime (Linkerd: 24 h).
    pub lifetime: Duration,
    /// Allowance for clocks that disagree (Linkerd: 20 s).
    pub clock_skew: Duration,
}

impl Default for IssuancePolicy {
    fn default() -> Self {
        Self { lifetime: Duration::from_secs(24 * 3600), clock_skew: Duration::from_secs(20) }
    }
}

/// A signed leaf and what the Certify response carries with it.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The leaf certificate, DER.
    pub der: Vec<u8>,
    /// The issuer chain, DER, issuer first (never the trust anchor).
    pub intermediates: Vec<Vec<u8>>,
    /// The leaf's notAfter.
    pub valid_until: OffsetDateTime,
}

/// A complete, validated issuer. Immutable: a reload builds a new one and
/// swaps it in whole, so a Certify call never sees half an issuer.
pub struct Issuer {
    signer: rcgen::Issuer<'static, KeyPair>,
    chain: Vec<Vec<u8>>,
    subject: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("subject", &self.subject).field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

impl Issuer {
    /// Checks `material` and builds an issuer: the certificate parses, is a CA
    /// with an ECDSA P-256 key, is valid at `now`, chains to one of `anchors`,
    /// and the key is P-256 and matches the certificate. Then it signs a probe
    /// leaf for an identity of `naming`'s trust domain, which must pass RFC
    /// 5280 path validation to `anchors` (webpki, as a proxy verifies leaves);
    /// the chain handed out with leaves is that verified path.
    ///
    /// `tessera check` runs this same function and shows its refusal on the
    /// line of the step that refused (`check::failed_line`), so the steps keep this order.
    pub fn load(material: &IssuerMaterial, anchors: &TrustAnchors, naming: &IdentityNaming, now: OffsetDateTime) -> Result<Self, IssuerError> {
        let ders = pki::certificates_from_pem(&material.cert_pem).map_err(IssuerError::Certificate)?;
        // A bundle that ends with the root itself (as some tools write it) is fine: drop it.
        let chain: Vec<CertificateDer<'static>> = ders.into_iter().filter(|d| !anchors.contains(d)).collect();
        let Some(first) = chain.first() else {
            return Err(IssuerError::NoCertificate);
        };
        let mut parsed = Vec::with_capacity(chain.len());
        for der in &chain {
            let (_, cert) = X509Certificate::from_der(der).map_err(|e| IssuerError::Certificate(e.to_string()))?;
            parsed.push(cert);
        }
        let cert = &parsed[0];
        if !pki::is_signing_ca(cert) {
            return Err(IssuerError::NotCa);
        }
        if KeyAlgorithm::of(cert.public_key()) != KeyAlgorithm::EcdsaP256 {
            return Err(IssuerError::UnsupportedAlgorithm);
        }
        let key = pki::p256_key_from_pem(&material.key_pem)?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(IssuerError::KeyMismatch);
        }
        let (not_before, not_after) = (pki::not_before(cert), pki::not_after(cert));
        if now < not_before {
            return Err(IssuerError::NotYetValid { not_before: pki::rfc3339(not_before) });
        }
        if now >= not_after {
            return Err(IssuerError::Expired { not_after: pki::rfc3339(not_after) });
        }
        // Quick check for a precise message when the bundle is unrelated to the anchors.
        pki::verify_chain(&parsed, anchors)?;
        let subject = cert.subject().to_string();
        let signer = rcgen::Issuer::from_ca_cert_der(first, key).map_err(|e| IssuerError::Certificate(e.to_string()))?;

        let (namespace, name) = PROBE_SERVICE_ACCOUNT;
        let identity = naming.identity_for(namespace, name);
        let dns_name = Ia5String::try_from(identity.as_str()).map_err(|e| IssuerError::Probe(format!("{identity}: {e}")))?;
        let probe_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| IssuerError::Probe(e.to_string()))?;
        let probe = leaf_params(&identity, dns_name, now - PROBE_VALIDITY, (now + PROBE_VALIDITY).min(not_after))
            .signed_by(&probe_key, &signer)
            .map_err(|e| IssuerError::Probe(format!("signing the probe leaf: {e}")))?;
        let chain = chain::verify_probe(probe.der(), &identity, first, &chain[1..], anchors, now)?;
        Ok(Self { signer, chain, subject, not_before, not_after })
    }

    /// The issuer certificate's subject (for logs and events).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The issuer certificate's notBefore.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// The issuer certificate's notAfter.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The issuer chain, DER, issuer first.
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// Signs a leaf for `csr`'s key and identity. `who` proves the token was
    /// reviewed and matched that identity.
    pub fn issue(
        &self,
        csr: &ValidatedCsr,
        who: &Authenticated,
        policy: &IssuancePolicy,
        now: OffsetDateTime,
    ) -> Result<Leaf, CertifyError> {
        if who.identity() != csr.identity() {
            return Err(CertifyError::Internal(format!(
                "authenticated identity {} differs from the CSR's {}",
                who.identity(),
                csr.identity()
            )));
        }
        if now >= self.not_after {
            return Err(CertifyError::IssuerExpired);
        }
        let not_before = now - policy.clock_skew;
        let not_after = (now + policy.lifetime + policy.clock_skew).min(self.not_after);
        let cert = leaf_params(csr.identity(), csr.dns_name().clone(), not_before, not_after)
            .signed_by(csr.public_key(), &self.signer)
            .map_err(|e| CertifyError::Internal(format!("signing leaf for {}: {e}", csr.identity())))?;
        Ok(Leaf { der: cert.der().to_vec(), intermediates: self.chain.clone(), valid_until: not_after })
    }
}

/// A leaf for `identity`: CN and the one DNS SAN, serverAuth and clientAuth,
/// not a CA. Every leaf and the probe of a new issuer are built here.
fn leaf_params(identity: &str, dns_name: Ia5String, not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, identity);
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::DnsName(dns_name)];
    params.serial_number = Some(random_serial());
    params.not_before = not_before;
    params.not_after = not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params
}

/// A random 128-bit serial number (rcgen encodes it as a positive INTEGER,
/// adding a leading zero octet when the top bit is set).
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    if bytes == [0; 16] {
        bytes[15] = 1; // serials must be positive
    }
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{Pki, now};

    fn naming() -> IdentityNaming {
        IdentityNaming::default()
    }

    #[test]
    fn a_good_issuer_loads() {
        let pki = Pki::new();
        let issuer = Issuer::load(&pki.issuer_material(), &pki.anchors(), &naming(), now()).unwrap();
        assert!(issuer.subject().contains("identity.linkerd.cluster.local"), "{}", issuer.subject());
        assert_eq!(issuer.chain().len(), 1);
    }

    #[test]
    fn a_chain_ending_in_the_anchor_drops_the_anchor() {
        let pki = Pki::new();
        let mut material = pki.issuer_material();
        material.cert_pem.extend_from_slice(pki.anchor_pem.as_bytes());
        let issuer = Issuer::load(&material, &pki.anchors(), &naming(), now()).unwrap();
        assert_eq!(issuer.chain().len(), 1);
    }

    #[test]
    fn a_mismatched_key_is_refused() {
        let pki = Pki::new();
        let other = Pki::new();
        let material = IssuerMaterial { cert_pem: pki.issuer_material().cert_pem, key_pem: other.issuer_material().key_pem };
        assert_eq!(Issuer::load(&material, &pki.anchors(), &naming(), now()).unwrap_err(), IssuerError::KeyMismatch);
    }

    #[test]
    fn an_issuer_from_another_anchor_is_refused() {
        let pki = Pki::new();
        let other = Pki::new();
        let err = Issuer::load(&other.issuer_material(), &pki.anchors(), &naming(), now()).unwrap_err();
        assert!(matches!(err, IssuerError::NotSignedByAnchor { .. }), "{err}");
        assert!(err.to_string().ends_with("is not signed by any trust anchor"), "{err}");
    }

    #[test]
    fn any_anchor_of_a_bundle_will_do() {
        let old = Pki::new();
        let new = Pki::new();
        let bundle = TrustAnchors::from_pem(format!("{}{}", old.anchor_pem, new.anchor_pem).as_bytes()).unwrap();
        assert_eq!(bundle.certificates().len(), 2);
        Issuer::load(&old.issuer_material(), &bundle, &naming(), now()).unwrap();
        Issuer::load(&new.issuer_material(), &bundle, &naming(), now()).unwrap();
    }

    #[test]
    fn expired_and_future_issuers_are_refused() {
        let pki = Pki::new();
        let expired = pki.issuer_valid(now() - Duration::from_secs(7200), now() - Duration::from_secs(3600));
        assert!(matches!(Issuer::load(&expired, &pki.anchors(), &naming(), now()).unwrap_err(), IssuerError::Expired { .. }));
        let future = pki.issuer_valid(now() + Duration::from_secs(3600), now() + Duration::from_secs(7200));
        assert!(matches!(Issuer::load(&future, &pki.anchors(), &naming(), now()).unwrap_err(), IssuerError::NotYetValid { .. }));
    }

    #[test]
    fn a_p384_issuer_is_refused() {
        let pki = Pki::new();
        let material = pki.issuer_with_alg(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(Issuer::load(&material, &pki.anchors(), &naming(), now()).unwrap_err(), IssuerError::UnsupportedAlgorithm);
    }

    #[test]
    fn a_leaf_is_not_a_ca() {
        let pki = Pki::new();
        let material = pki.non_ca_issuer();
        assert_eq!(Issuer::load(&material, &pki.anchors(), &naming(), now()).unwrap_err(), IssuerError::NotCa);
    }

    #[test]
    fn garbage_is_refused() {
        let pki = Pki::new();
        let material = IssuerMaterial { cert_pem: b"nothing here".to_vec(), key_pem: Vec::new() };
        assert_eq!(Issuer::load(&material, &pki.anchors(), &naming(), now()).unwrap_err(), IssuerError::NoCertificate);
    }

    #[test]
    fn serials_are_random_128_bit_values() {
        let a = random_serial();
        let b = random_serial();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }
}
