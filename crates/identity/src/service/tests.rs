//! Every rejection of the Linkerd identity contract, through the tonic trait,
//! with the exact code and message; and what a good request gets.

use std::sync::Arc;
use std::time::Duration;

use linkerd2_proxy_api::identity::CertifyRequest;
use linkerd2_proxy_api::identity::identity_server::Identity;
use rcgen::{DnType, SanType};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;
use tokio::sync::watch;
use tonic::{Code, Request};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

use super::*;
use crate::issuer::{Issuer, IssuerMaterial};
use crate::review::Review;
use crate::test_util::{FakeReviewer, FixedClock, Pki, WEB, csr_der, csr_with, now};

const WEB_TOKEN: &str = "web-token";
const VOTING_TOKEN: &str = "voting-token";

struct Fixture {
    pki: Pki,
    service: CertifyService,
    reviewer: Arc<FakeReviewer>,
    metrics: Metrics,
    now: OffsetDateTime,
    _issuer: watch::Sender<Option<Arc<Issuer>>>,
}

fn reviewer() -> FakeReviewer {
    FakeReviewer::default()
        .service_account(WEB_TOKEN, "emojivoto", "web")
        .service_account(VOTING_TOKEN, "emojivoto", "voting")
        .with(
            "wrong-audience",
            Review::Rejected {
                error: r#"[invalid bearer token, token audiences ["https://kubernetes.default.svc.cluster.local"] is invalid for the target audiences ["identity.l5d.io"]]"#
                    .to_owned(),
            },
        )
        .with("expired", Review::Rejected { error: "[invalid bearer token, service account token has expired]".to_owned() })
        .with("admin", Review::Authenticated { username: "admin".to_owned(), audiences: vec![] })
        .with(
            "other-audience-confirmed",
            Review::Authenticated { username: "system:serviceaccount:emojivoto:web".to_owned(), audiences: vec!["vault".to_owned()] },
        )
}

fn fixture_with(reviewer: FakeReviewer, issuer: impl FnOnce(&Pki) -> IssuerMaterial) -> Fixture {
    let pki = Pki::new();
    let now = now();
    let material = issuer(&pki);
    let loaded = Issuer::load(&material, &pki.anchors(), &IdentityNaming::default(), now).ok().map(Arc::new);
    let (tx, rx) = watch::channel(loaded);
    let reviewer = Arc::new(reviewer);
    let metrics = Metrics::default();
    let service = CertifyService::new(
        rx,
        reviewer.clone(),
        IdentityNaming::default(),
        IssuancePolicy::default(),
        Arc::new(FixedClock(now)),
        metrics.clone(),
    );
    Fixture { pki, service, reviewer, metrics, now, _issuer: tx }
}

fn fixture() -> Fixture {
    fixture_with(reviewer(), Pki::issuer_material)
}

fn request(identity: &str, token: &str, csr: Vec<u8>) -> CertifyRequest {
    CertifyRequest { identity: identity.to_owned(), token: token.as_bytes().to_vec(), certificate_signing_request: csr }
}

async fn refused(f: &Fixture, req: CertifyRequest) -> (Code, String) {
    let status = Identity::certify(&f.service, Request::new(req)).await.expect_err("request must be refused");
    (status.code(), status.message().to_owned())
}

#[tokio::test]
async fn no_issuer_is_unavailable_before_anything_else() {
    let (tx, rx) = watch::channel(None);
    let metrics = Metrics::default();
    let service = CertifyService::new(
        rx,
        Arc::new(reviewer()),
        IdentityNaming::default(),
        IssuancePolicy::default(),
        Arc::new(FixedClock(now())),
        metrics.clone(),
    );
    let status = Identity::certify(&service, Request::new(CertifyRequest::default())).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::Unavailable, "cert issuer not ready yet"));
    assert!(metrics.encode().contains(r#"identity_certify_rejections_total{reason="issuer_not_ready"} 1"#));
    drop(tx);
}

#[tokio::test]
async fn missing_fields_are_invalid_arguments_in_order() {
    let f = fixture();
    assert_eq!(refused(&f, CertifyRequest::default()).await, (Code::InvalidArgument, "missing identity".to_owned()));
    assert_eq!(refused(&f, request(WEB, "", Vec::new())).await, (Code::InvalidArgument, "missing token".to_owned()));
    assert_eq!(
        refused(&f, request(WEB, WEB_TOKEN, Vec::new())).await,
        (Code::InvalidArgument, "missing certificate signing request".to_owned())
    );
    // A missing identity wins over a missing token and CSR; no review happened.
    assert_eq!(refused(&f, request("", WEB_TOKEN, csr_der(WEB))).await.1, "missing identity");
    assert!(f.reviewer.asked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_csr_with_two_sans_is_refused() {
    let f = fixture();
    let csr = csr_with(|p| p.subject_alt_names.push(SanType::DnsName("evil.example".try_into().unwrap())));
    assert_eq!(
        refused(&f, request(WEB, WEB_TOKEN, csr)).await,
        (Code::FailedPrecondition, "certificate signing request must carry exactly one DNS SAN, found 2".to_owned())
    );
}

#[tokio::test]
async fn a_csr_with_a_uri_san_is_refused() {
    let f = fixture();
    let csr = csr_with(|p| p.subject_alt_names.push(SanType::URI("spiffe://cluster.local/ns/emojivoto/sa/web".try_into().unwrap())));
    assert_eq!(
        refused(&f, request(WEB, WEB_TOKEN, csr)).await,
        (Code::FailedPrecondition, "certificate signing request must not carry URI SANs".to_owned())
    );
}

#[tokio::test]
async fn a_csr_with_another_cn_is_refused() {
    let f = fixture();
    let csr = csr_with(|p| p.distinguished_name.push(DnType::CommonName, "admin"));
    assert_eq!(
        refused(&f, request(WEB, WEB_TOKEN, csr)).await,
        (
            Code::FailedPrecondition,
            format!("certificate signing request common name does not match the requested identity: cn=admin; identity={WEB}")
        )
    );
}

#[tokio::test]
async fn a_csr_for_another_identity_is_refused() {
    let f = fixture();
    let other = "voting.emojivoto.serviceaccount.identity.linkerd.cluster.local";
    assert_eq!(
        refused(&f, request(WEB, WEB_TOKEN, csr_der(other))).await,
        (
            Code::FailedPrecondition,
            format!("certificate signing request DNS SAN does not match the requested identity: san={other}; identity={WEB}")
        )
    );
}

#[tokio::test]
async fn a_csr_with_a_bad_signature_is_refused_before_review() {
    let f = fixture();
    let mut csr = csr_der(WEB);
    let n = csr.len();
    csr[n - 10] ^= 0x01;
    assert_eq!(
        refused(&f, request(WEB, WEB_TOKEN, csr)).await,
        (Code::FailedPrecondition, "certificate signing request signature is invalid".to_owned())
    );
    assert!(f.reviewer.asked.lock().unwrap().is_empty(), "no TokenReview for a bad CSR");
}

#[tokio::test]
async fn garbage_csr_is_refused() {
    let f = fixture();
    let (code, message) = refused(&f, request(WEB, WEB_TOKEN, b"garbage".to_vec())).await;
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.starts_with("invalid certificate signing request: "), "{message}");
}

#[tokio::test]
async fn a_token_for_another_service_account_is_refused() {
    let f = fixture();
    assert_eq!(
        refused(&f, request(WEB, VOTING_TOKEN, csr_der(WEB))).await,
        (
            Code::FailedPrecondition,
            format!(
                "requested identity did not match provided token: requested={WEB}; found=voting.emojivoto.serviceaccount.identity.linkerd.cluster.local"
            )
        )
    );
    assert!(f.metrics.encode().contains(r#"identity_certify_rejections_total{reason="identity_mismatch"} 1"#));
}

#[tokio::test]
async fn a_token_with_the_wrong_audience_is_refused() {
    let f = fixture();
    assert_eq!(
        refused(&f, request(WEB, "wrong-audience", csr_der(WEB))).await,
        (
            Code::FailedPrecondition,
            r#"authentication token could not be authenticated: [invalid bearer token, token audiences ["https://kubernetes.default.svc.cluster.local"] is invalid for the target audiences ["identity.l5d.io"]]"#
                .to_owned()
        )
    );
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let f = fixture();
    assert_eq!(
        refused(&f, request(WEB, "expired", csr_der(WEB))).await,
        (
            Code::FailedPrecondition,
            "authentication token could not be authenticated: [invalid bearer token, service account token has expired]".to_owned()
        )
    );
}

#[tokio::test]
async fn an_unknown_token_is_refused() {
    let f = fixture();
    let (code, message) = refused(&f, request(WEB, "forged", csr_der(WEB))).await;
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.starts_with("authentication token could not be authenticated: [invalid bearer token"), "{message}");
}

#[tokio::test]
async fn a_review_confirming_only_other_audiences_is_refused() {
    let f = fixture();
    assert_eq!(
        refused(&f, request(WEB, "other-audience-confirmed", csr_der(WEB))).await,
        (
            Code::FailedPrecondition,
            r#"authentication token could not be authenticated: token audiences ["vault"] do not include "identity.l5d.io""#.to_owned()
        )
    );
}

#[tokio::test]
async fn a_user_that_is_not_a_service_account_is_refused() {
    let f = fixture();
    assert_eq!(
        refused(&f, request(WEB, "admin", csr_der(WEB))).await,
        (Code::FailedPrecondition, "authentication token is not a ServiceAccount token: username=admin".to_owned())
    );
}

#[tokio::test]
async fn a_reviewer_outage_is_unavailable() {
    let f = fixture_with(FakeReviewer { unavailable: true, ..reviewer() }, Pki::issuer_material);
    assert_eq!(refused(&f, request(WEB, WEB_TOKEN, csr_der(WEB))).await, (Code::Unavailable, "token review unavailable".to_owned()));
}

#[tokio::test]
async fn tokens_are_reviewed_for_the_identity_audience_only() {
    let f = fixture();
    Identity::certify(&f.service, Request::new(request(WEB, WEB_TOKEN, csr_der(WEB)))).await.unwrap();
    assert_eq!(*f.reviewer.asked.lock().unwrap(), vec![vec!["identity.l5d.io".to_owned()]]);
}

#[tokio::test]
async fn a_good_request_gets_a_24h_leaf_that_verifies_to_the_anchor() {
    let f = fixture();
    let response = Identity::certify(&f.service, Request::new(request(WEB, WEB_TOKEN, csr_der(WEB)))).await.unwrap().into_inner();

    let issuer = f.service.issuer.borrow().clone().unwrap();
    assert_eq!(response.intermediate_certificates, issuer.chain());
    verify_chain(&f.pki, &response.leaf_certificate, &response.intermediate_certificates, f.now);

    let (_, leaf) = X509Certificate::from_der(&response.leaf_certificate).unwrap();
    let sans: Vec<_> = leaf.subject_alternative_name().unwrap().unwrap().value.general_names.clone();
    assert_eq!(sans, vec![GeneralName::DNSName(WEB)]);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!leaf.is_ca());
    assert_eq!(leaf.signature_algorithm.algorithm, x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256);
    assert_eq!(leaf.raw_serial().len(), 16 + usize::from(leaf.raw_serial()[0] == 0));
    assert_eq!(leaf.validity().not_before.timestamp(), (f.now - Duration::from_secs(20)).unix_timestamp());
    let expected_not_after = (f.now + Duration::from_secs(24 * 3600 + 20)).unix_timestamp();
    assert_eq!(leaf.validity().not_after.timestamp(), expected_not_after);
    assert_eq!(response.valid_until.unwrap().seconds, expected_not_after);
    assert!(f.metrics.encode().contains(&format!(r#"identity_certificates_issued_total{{identity="{WEB}"}} 1"#)));
}

#[tokio::test]
async fn a_leaf_never_outlives_its_issuer() {
    let issuer_end = now() + Duration::from_secs(3600);
    let f = fixture_with(reviewer(), |pki| pki.issuer_valid(now() - Duration::from_secs(60), issuer_end));
    let response = Identity::certify(&f.service, Request::new(request(WEB, WEB_TOKEN, csr_der(WEB)))).await.unwrap().into_inner();
    let (_, leaf) = X509Certificate::from_der(&response.leaf_certificate).unwrap();
    assert_eq!(leaf.validity().not_after.timestamp(), issuer_end.unix_timestamp());
    assert_eq!(response.valid_until.unwrap().seconds, issuer_end.unix_timestamp());
    verify_chain(&f.pki, &response.leaf_certificate, &response.intermediate_certificates, f.now);
}

#[tokio::test]
async fn every_leaf_has_its_own_serial() {
    let f = fixture();
    let mut serials = std::collections::HashSet::new();
    for _ in 0..20 {
        let response = Identity::certify(&f.service, Request::new(request(WEB, WEB_TOKEN, csr_der(WEB)))).await.unwrap().into_inner();
        let (_, leaf) = X509Certificate::from_der(&response.leaf_certificate).unwrap();
        assert!(serials.insert(leaf.raw_serial().to_vec()));
    }
}

/// Verifies leaf → intermediates → anchor with webpki, for both TLS usages
/// and the identity as DNS name, at `at`.
fn verify_chain(pki: &Pki, leaf: &[u8], intermediates: &[Vec<u8>], at: OffsetDateTime) {
    let anchors = pki.anchors();
    let anchors: Vec<_> = anchors.certificates().iter().map(|c| webpki::anchor_from_trusted_cert(c).unwrap().to_owned()).collect();
    let leaf = CertificateDer::from(leaf.to_vec());
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    let intermediates: Vec<CertificateDer<'_>> = intermediates.iter().map(|d| CertificateDer::from(d.clone())).collect();
    let time = UnixTime::since_unix_epoch(Duration::from_secs(at.unix_timestamp() as u64));
    for usage in [webpki::KeyUsage::server_auth(), webpki::KeyUsage::client_auth()] {
        ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &anchors, &intermediates, time, usage, None, None).unwrap();
    }
    ee.verify_is_valid_for_subject_name(&ServerName::try_from(WEB).unwrap()).unwrap();
}
