//! Issue 19, finding 2, written as the attack: whoever can write the issuer
//! (files or Secret) offers a chain that fails RFC 5280 path validation. Each
//! is refused with webpki's reason; the issuer in use stays in use and keeps
//! issuing leaves that verify to the trust anchor.

use std::sync::Arc;
use std::time::Duration;

use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse};
use rcgen::{
    CustomExtension, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose,
    NameConstraints,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::watch;

use super::Usage;
use crate::error::IssuerError;
use crate::issuer::{IssuancePolicy, Issuer, IssuerMaterial};
use crate::metrics::Metrics;
use crate::reload::{IssuerSource, IssuerUpdater, Offer};
use crate::review::IdentityNaming;
use crate::service::CertifyService;
use crate::test_util::{FakeReviewer, FixedClock, Pki, Signed, WEB, ca_cert, csr_with_key, now};

const WEB_TOKEN: &str = "web-token";
const ISSUER_CN: &str = "identity.linkerd.cluster.local";

/// An identity CA with a good issuer in use: the updater a reload (files or
/// Secret) feeds, and a Certify service reading the same channel.
struct Ca {
    pki: Pki,
    real: Signed,
    updater: IssuerUpdater,
    rx: watch::Receiver<Option<Arc<Issuer>>>,
    service: CertifyService,
    in_use: Arc<Issuer>,
}

fn identity_ca() -> Ca {
    let pki = Pki::new();
    let real = pki.sign(ca_cert(ISSUER_CN, Some(0)));
    let (tx, rx) = watch::channel(None);
    let clock = Arc::new(FixedClock(now()));
    let metrics = Metrics::default();
    let mut updater = IssuerUpdater::new(tx, pki.anchors(), IdentityNaming::default(), clock.clone(), metrics.clone());
    let Offer::Updated(in_use) = updater.offer(real.material(&[]), &source()) else { panic!("the good issuer was refused") };
    let reviewer = Arc::new(FakeReviewer::default().service_account(WEB_TOKEN, "emojivoto", "web"));
    let service = CertifyService::new(rx.clone(), reviewer, IdentityNaming::default(), IssuancePolicy::default(), clock, metrics);
    Ca { pki, real, updater, rx, service, in_use }
}

fn source() -> IssuerSource {
    IssuerSource::Secret { namespace: "linkerd".to_owned(), name: "linkerd-identity-issuer".to_owned() }
}

impl Ca {
    /// Certify for `web` with a fresh key; the leaf and its key.
    async fn certify(&self) -> (CertifyResponse, KeyPair) {
        let (csr, key) = csr_with_key(WEB, |_| {});
        let request = CertifyRequest { identity: WEB.to_owned(), token: WEB_TOKEN.as_bytes().to_vec(), certificate_signing_request: csr };
        let response = self.service.certify(request).await.expect("Certify with the issuer in use");
        (response, key)
    }

    /// Offers `bad` as a reload would; asserts it is refused, that the issuer in
    /// use stays in use and still issues leaves a proxy accepts. Returns the reason.
    async fn refuses(&mut self, bad: IssuerMaterial) -> IssuerError {
        let reason = match self.updater.offer(bad, &source()) {
            Offer::Rejected(reason) => reason,
            other => panic!("a bad issuer chain was accepted: {other:?}"),
        };
        assert!(Arc::ptr_eq(&self.in_use, self.rx.borrow().as_ref().expect("an issuer")), "the issuer in use was replaced");
        let (response, _) = self.certify().await;
        assert_eq!(response.intermediate_certificates, std::slice::from_ref(&self.real.der), "signed by the issuer in use");
        verify_as_a_proxy(&self.pki, &response);
        reason
    }
}

/// webpki verification of a Certify answer to the anchor, for both usages and `web`'s name.
fn verify_as_a_proxy(pki: &Pki, response: &CertifyResponse) {
    let anchors = pki.anchors();
    let anchors: Vec<_> = anchors.certificates().iter().map(|c| webpki::anchor_from_trusted_cert(c).unwrap()).collect();
    let leaf = CertificateDer::from(response.leaf_certificate.clone());
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    let intermediates: Vec<CertificateDer<'_>> = response.intermediate_certificates.iter().map(|d| CertificateDer::from(d.clone())).collect();
    let time = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now().unix_timestamp()).unwrap()));
    for usage in [webpki::KeyUsage::server_auth(), webpki::KeyUsage::client_auth()] {
        ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &anchors, &intermediates, time, usage, None, None).unwrap();
    }
    ee.verify_is_valid_for_subject_name(&ServerName::try_from(WEB).unwrap()).unwrap();
}

fn webpki_reason(err: &IssuerError) -> &webpki::Error {
    match err {
        IssuerError::PathValidation { usage: Usage::ServerAuth, reason } => reason,
        other => panic!("not refused by path validation for serverAuth: {other}"),
    }
}

#[tokio::test]
async fn an_anchor_signed_intermediate_with_ca_false_is_refused() {
    let mut ca = identity_ca();
    let mut params = ca_cert("not-a-ca.example", None);
    params.is_ca = IsCa::ExplicitNoCa;
    let mid = ca.pki.sign(params);
    let issuer = mid.sign(ca_cert(ISSUER_CN, Some(0)));
    let err = ca.refuses(issuer.material(&[&mid])).await;
    assert_eq!(webpki_reason(&err), &webpki::Error::EndEntityUsedAsCa);
    assert_eq!(
        err.to_string(),
        "issuer chain fails X.509 path validation (webpki, verifying a leaf it signed as a TLS server (serverAuth) certificate): EndEntityUsedAsCa"
    );
}

#[tokio::test]
async fn an_expired_intermediate_is_refused() {
    let mut ca = identity_ca();
    let mut params = ca_cert("expired.example", Some(1));
    params.not_before = now() - Duration::from_secs(2 * 86400);
    params.not_after = now() - Duration::from_secs(86400);
    let mid = ca.pki.sign(params);
    let issuer = mid.sign(ca_cert(ISSUER_CN, Some(0)));
    let err = ca.refuses(issuer.material(&[&mid])).await;
    assert!(matches!(webpki_reason(&err), webpki::Error::CertExpired { .. }), "{err}");
}

#[tokio::test]
async fn a_violated_pathlen_0_is_refused() {
    let mut ca = identity_ca();
    let mid = ca.pki.sign(ca_cert("pathlen-0.example", Some(0)));
    let issuer = mid.sign(ca_cert(ISSUER_CN, Some(0)));
    let err = ca.refuses(issuer.material(&[&mid])).await;
    assert_eq!(webpki_reason(&err), &webpki::Error::PathLenConstraintViolated);
}

#[tokio::test]
async fn a_code_signing_only_eku_is_refused() {
    let mut ca = identity_ca();
    let mut params = ca_cert(ISSUER_CN, Some(0));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let issuer = ca.pki.sign(params);
    let err = ca.refuses(issuer.material(&[])).await;
    assert!(matches!(webpki_reason(&err), webpki::Error::RequiredEkuNotFoundContext(_)), "{err}");
}

#[tokio::test]
async fn an_unknown_critical_extension_is_refused() {
    let mut ca = identity_ca();
    let mut params = ca_cert(ISSUER_CN, Some(0));
    let mut unknown = CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 55555, 1], vec![0x05, 0x00]);
    unknown.set_criticality(true);
    params.custom_extensions.push(unknown);
    let issuer = ca.pki.sign(params);
    let err = ca.refuses(issuer.material(&[])).await;
    assert_eq!(webpki_reason(&err), &webpki::Error::UnsupportedCriticalExtension);
}

#[tokio::test]
async fn name_constraints_that_exclude_the_identity_names_are_refused() {
    let mut ca = identity_ca();
    // Excluding the trust domain…
    let mut params = ca_cert(ISSUER_CN, Some(0));
    params.name_constraints =
        Some(NameConstraints { permitted_subtrees: vec![], excluded_subtrees: vec![GeneralSubtree::DnsName("cluster.local".to_owned())] });
    let issuer = ca.pki.sign(params);
    let err = ca.refuses(issuer.material(&[])).await;
    assert_eq!(webpki_reason(&err), &webpki::Error::NameConstraintViolation);
    // …or permitting only another domain, on an intermediate.
    let mut params = ca_cert("constrained.example", Some(1));
    params.name_constraints =
        Some(NameConstraints { permitted_subtrees: vec![GeneralSubtree::DnsName("example.com".to_owned())], excluded_subtrees: vec![] });
    let mid = ca.pki.sign(params);
    let issuer = mid.sign(ca_cert(ISSUER_CN, Some(0)));
    let err = ca.refuses(issuer.material(&[&mid])).await;
    assert_eq!(webpki_reason(&err), &webpki::Error::NameConstraintViolation);
}

#[tokio::test]
async fn an_evil_ca_signed_by_a_workloads_leaf_key_is_refused() {
    // The review's worst case: a meshed workload's leaf and key (any pod has
    // them) sign an "issuer" whose key the attacker holds, offered as
    // [evil CA, leaf, real issuer]. Accepted, every new leaf would be signed
    // with the attacker's key.
    let mut ca = identity_ca();
    let (response, leaf_key) = ca.certify().await;
    let leaf = CertificateDer::from(response.leaf_certificate.clone());
    let leaf_signer = rcgen::Issuer::from_ca_cert_der(&leaf, leaf_key).expect("the leaf as a signer");
    let evil_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let evil = ca_cert("evil.attacker.example", None).signed_by(&evil_key, &leaf_signer).unwrap();
    let chain = format!("{}{}{}", evil.pem(), pem(&leaf), ca.real.pem);
    let bad = IssuerMaterial { cert_pem: chain.into_bytes(), key_pem: evil_key.serialize_pem().into_bytes() };
    let err = ca.refuses(bad).await;
    assert_eq!(webpki_reason(&err), &webpki::Error::EndEntityUsedAsCa);
}

#[tokio::test]
async fn a_ca_whose_key_usage_lacks_key_cert_sign_is_refused() {
    // webpki ignores keyUsage on CAs; RFC 5280 §4.2.1.3 does not.
    let mut ca = identity_ca();
    let mut params = ca_cert("no-keycertsign.example", Some(1));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let mid = ca.pki.sign(params);
    let issuer = mid.sign(ca_cert(ISSUER_CN, Some(0)));
    let err = ca.refuses(issuer.material(&[&mid])).await;
    assert_eq!(err, IssuerError::NoKeyCertSign { subject: "CN=no-keycertsign.example".to_owned() });
}

#[tokio::test]
async fn a_good_chain_loads_and_the_verified_path_is_what_leaves_carry() {
    let mut ca = identity_ca();
    let mid = ca.pki.sign(ca_cert("intermediate.example", Some(1)));
    let issuer = mid.sign(ca_cert(ISSUER_CN, Some(0)));
    // A bundle must be one ordered chain: an unrelated certificate in it is refused.
    let stranger = Pki::new().sign(ca_cert("stranger.example", None));
    let err = ca.refuses(issuer.material(&[&mid, &stranger])).await;
    assert_eq!(err, IssuerError::ChainBroken { subject: "CN=intermediate.example".to_owned() });

    let Offer::Updated(loaded) = ca.updater.offer(issuer.material(&[&mid]), &source()) else { panic!("a good chain was refused") };
    assert_eq!(loaded.chain(), [issuer.der.clone(), mid.der.clone()]);
    let (response, _) = ca.certify().await;
    assert_eq!(response.intermediate_certificates, [issuer.der, mid.der]);
    verify_as_a_proxy(&ca.pki, &response);
}

fn pem(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
}
