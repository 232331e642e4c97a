//! Test fixtures: a trust anchor and issuer made on the fly, CSRs, a fake
//! token reviewer and a fixed clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose, SignatureAlgorithm};
use time::OffsetDateTime;

use crate::error::ReviewError;
use crate::issuer::IssuerMaterial;
use crate::pki::TrustAnchors;
use crate::review::{Review, TokenReviewer};
use crate::service::Clock;

/// The identity of ServiceAccount `web` in `emojivoto`.
pub(crate) const WEB: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";

/// Now, whole seconds (certificates carry seconds).
pub(crate) fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap_or(t)
}

/// A fixed clock.
pub(crate) struct FixedClock(pub(crate) OffsetDateTime);

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        self.0
    }
}

/// A trust anchor with its key, able to sign issuers.
pub(crate) struct Pki {
    pub(crate) anchor_pem: String,
    anchor: rcgen::Issuer<'static, KeyPair>,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            ca_params("root.linkerd.cluster.local", now() - Duration::from_secs(60), now() + Duration::from_secs(86400 * 3650));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self { anchor_pem: cert.pem(), anchor: rcgen::Issuer::new(params, key) }
    }

    pub(crate) fn anchors(&self) -> TrustAnchors {
        TrustAnchors::from_pem(self.anchor_pem.as_bytes()).unwrap()
    }

    /// A good issuer valid for a year.
    pub(crate) fn issuer_material(&self) -> IssuerMaterial {
        self.issuer_valid(now() - Duration::from_secs(60), now() + Duration::from_secs(86400 * 365))
    }

    pub(crate) fn issuer_valid(&self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> IssuerMaterial {
        self.issuer_from(&rcgen::PKCS_ECDSA_P256_SHA256, ca_params("identity.linkerd.cluster.local", not_before, not_after))
    }

    pub(crate) fn issuer_with_alg(&self, alg: &'static SignatureAlgorithm) -> IssuerMaterial {
        self.issuer_from(
            alg,
            ca_params("identity.linkerd.cluster.local", now() - Duration::from_secs(60), now() + Duration::from_secs(86400)),
        )
    }

    /// A certificate for a fresh P-256 key signed by the anchor.
    pub(crate) fn sign(&self, params: CertificateParams) -> Signed {
        Signed::new(params, &self.anchor)
    }

    pub(crate) fn non_ca_issuer(&self) -> IssuerMaterial {
        let mut params = ca_params("leaf.example", now() - Duration::from_secs(60), now() + Duration::from_secs(86400));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issuer_from(&rcgen::PKCS_ECDSA_P256_SHA256, params)
    }

    fn issuer_from(&self, alg: &'static SignatureAlgorithm, params: CertificateParams) -> IssuerMaterial {
        self.issuer_with_key(params, KeyPair::generate_for(alg).unwrap())
    }

    /// An issuer for `key` (any algorithm, e.g. an RSA key ring cannot generate) signed by the anchor.
    pub(crate) fn issuer_with_key(&self, params: CertificateParams, key: KeyPair) -> IssuerMaterial {
        let cert = params.signed_by(&key, &self.anchor).unwrap();
        IssuerMaterial { cert_pem: cert.pem().into_bytes(), key_pem: key.serialize_pem().into_bytes() }
    }
}

/// A certificate with its key, able to sign more below it (whether or not it is a CA:
/// an attacker's signature does not ask).
pub(crate) struct Signed {
    pub(crate) der: Vec<u8>,
    pub(crate) pem: String,
    pub(crate) key_pem: String,
    pub(crate) signer: rcgen::Issuer<'static, KeyPair>,
}

impl Signed {
    fn new(params: CertificateParams, by: &rcgen::Issuer<'_, KeyPair>) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, by).unwrap();
        Self { der: cert.der().to_vec(), pem: cert.pem(), key_pem: key.serialize_pem(), signer: rcgen::Issuer::new(params, key) }
    }

    /// A certificate for a fresh P-256 key signed by this one.
    pub(crate) fn sign(&self, params: CertificateParams) -> Signed {
        Signed::new(params, &self.signer)
    }

    /// Issuer material: this certificate and key, then `rest` of the chain.
    pub(crate) fn material(&self, rest: &[&Signed]) -> IssuerMaterial {
        let mut cert_pem = self.pem.clone();
        for cert in rest {
            cert_pem.push_str(&cert.pem);
        }
        IssuerMaterial { cert_pem: cert_pem.into_bytes(), key_pem: self.key_pem.clone().into_bytes() }
    }
}

/// CA parameters (CA:TRUE pathlen:0, keyCertSign and cRLSign) valid in [not_before, not_after].
pub(crate) fn ca_params(cn: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(crate::issuer::random_serial());
    params
}

/// CA parameters valid for a year around now with pathLenConstraint `pathlen` (None: unconstrained).
pub(crate) fn ca_cert(cn: &str, pathlen: Option<u8>) -> CertificateParams {
    let mut params = ca_params(cn, now() - Duration::from_secs(60), now() + Duration::from_secs(86400 * 365));
    params.is_ca = IsCa::Ca(pathlen.map_or(BasicConstraints::Unconstrained, BasicConstraints::Constrained));
    params
}

/// CSR parameters for `identity`: one DNS SAN, empty subject.
pub(crate) fn csr_params(identity: &str) -> CertificateParams {
    let mut params = CertificateParams::new(vec![identity.to_owned()]).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
}

/// A good CSR (P-256) for `identity`.
pub(crate) fn csr_der(identity: &str) -> Vec<u8> {
    csr_with_key(identity, |_| {}).0
}

/// A CSR for [`WEB`] with changed parameters.
pub(crate) fn csr_with(change: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
    csr_with_key(WEB, change).0
}

/// A CSR and its key.
pub(crate) fn csr_with_key(identity: &str, change: impl FnOnce(&mut CertificateParams)) -> (Vec<u8>, KeyPair) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = csr_params(identity);
    change(&mut params);
    (params.serialize_request(&key).unwrap().der().to_vec(), key)
}

/// A reviewer that answers from a table of tokens; unknown tokens are
/// rejected like kube-apiserver rejects a bad signature. Records the
/// audiences it was asked for.
#[derive(Default)]
pub(crate) struct FakeReviewer {
    pub(crate) answers: HashMap<String, Review>,
    pub(crate) asked: Mutex<Vec<Vec<String>>>,
    pub(crate) unavailable: bool,
}

impl FakeReviewer {
    pub(crate) fn with(mut self, token: &str, review: Review) -> Self {
        self.answers.insert(token.to_owned(), review);
        self
    }

    pub(crate) fn service_account(self, token: &str, namespace: &str, name: &str) -> Self {
        self.with(
            token,
            Review::Authenticated {
                username: format!("system:serviceaccount:{namespace}:{name}"),
                audiences: vec!["identity.l5d.io".to_owned()],
            },
        )
    }
}

#[async_trait]
impl TokenReviewer for FakeReviewer {
    async fn review(&self, token: &str, audiences: &[String]) -> Result<Review, ReviewError> {
        self.asked.lock().unwrap().push(audiences.to_vec());
        if self.unavailable {
            return Err(ReviewError::Malformed("fake outage".to_owned()));
        }
        Ok(self
            .answers
            .get(token)
            .cloned()
            .unwrap_or(Review::Rejected { error: "[invalid bearer token, square/go-jose: error in cryptographic primitive]".to_owned() }))
    }
}
