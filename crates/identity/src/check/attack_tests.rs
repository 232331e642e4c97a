//! `tessera check` from the attacker's side: whoever can write the issuer
//! (files or Secret) offers a chain the identity CA refuses. For each, the
//! check shows × on the line of the refused step with exactly the message the
//! CA's reload path gives (both run `Issuer::load`), and a good chain gets ✔.
//! Several of these (a non-CA or expired intermediate, a critical extension,
//! a code-signing EKU, name constraints) passed the check's former hand-written
//! validation while the CA refused them.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateParams, CustomExtension, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose,
    NameConstraints,
};
use tokio::sync::watch;

use super::{Category, ISSUER_LINES, Outcome, Report, identity_checks};
use crate::issuer::IssuerMaterial;
use crate::metrics::Metrics;
use crate::pki;
use crate::reload::{IssuerSource, IssuerUpdater, Offer};
use crate::review::IdentityNaming;
use crate::test_util::{FixedClock, Pki, ca_cert as ca, now};

const ISSUER_CN: &str = "identity.linkerd.cluster.local";
const CA_LINE: &str = "issuer cert is a CA certificate";
const ALGORITHM_LINE: &str = "issuer cert is using supported crypto algorithm";
const VALIDITY_LINE: &str = "issuer cert is within its validity period";
const ANCHOR_LINE: &str = "issuer cert is issued by the trust anchor";
const SERVER_AUTH: &str = "issuer chain fails X.509 path validation (webpki, verifying a leaf it signed as a TLS server (serverAuth) certificate): ";

/// A 2048-bit RSA key (ring cannot generate RSA keys), only ever used for this test.
const RSA_KEY_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQDgiVKdBWNt0E/9
JHKfWlZrYhE+AGMo6nuyqPJATamcE9S1/5NvX0AwEvTCQ09FEKn2gCukkXqegjeA
qXWC2gRfJF7qzjJWeD0mDMog6z6ShRTUu8DJ5oAJR3haV7i6WRwIhCKfC28YX9rz
SDEsy07ikoJbJu6bnoTa7wmx7oF7WV0cn+IRjvoxrzHDWCgLOyuvZ9DgTZU5Hxs8
DIvf+qFpdnqSTvwZ6Liwk8gauvv6hzSzLsiAlknIEer6xujGvIOQ9OuOs7QCUUva
A8sDma6/OhDcItxH3aAb+4qHk8xJgeOKqx/qoWPwcnRcsHPyYl0iM16HiorLRTM5
X76acEmHAgMBAAECggEAGGk1jxan4ad1GstcntB+drw5rajzHt6nRhwyAiWvW+WY
CZVYnRIY82EMNRaGRrbyE3eJxyF92D/F8vn5aZl0Qje9DgAO3vHBjCJ10zBgJCPN
yPcEla62msunXQMOdUv8zTw4W1wt3tOFBVAC8KDF2cId4/UOmeKZBQhZ4HtSnms7
gvpONLgsDLQizBjhHQBW71R6NKC1hjtnV8n5w4nOIsThMgeTAR4m4Ku62UlNbdln
jy612QwehlKAPIsXefLLR7KgmJ8OtWmCbtjU14um42oy7+4NLtQ5yaBFbFpNg0RV
InuSRJV9idacrgLJ1qA5kaPpon11Yl1NknCt7oyMgQKBgQD//jbOfqqBt691L1Fh
vy6DcgkDMIMceobH3RbyKoEln1XAjy7FAvtQ2HT/FozhTAEc9WkMCy0DLmcdrTJn
YpXzRVOlpCajVkI3yIE/d18KrN/on3G0MaqTdAm7xAnvj7Gt1Z0eX7sezxYaQf+v
JjXYoEeYZm1/Q8KvPpj0P/jRwQKBgQDgiuOgYcNHndB4jgB6tHst+38DZeLmAlx7
Wpm1P6Pkd+t62dCX7nb7KbHvY4hMXgLTj7Nf++XS7SGaEMZpR+Zrs4Gk8REYaoPb
G1hf6ljzOQJwmFlypTirE3HJthMedPoyhCD8ZibnRRHQnUdR83FjWV/2C5aQcKtx
ICuh0PtdRwKBgQDHm9PkhAQ0DaS0vWa5zzdXq223nPY/GJNL+OtRfS8ixPE6qusP
F9obGg1wcob7jiY4DGwSxgwdNOuWylxJHShLfr1QpYSzTClqEeAmOtBTJKWbX+hr
V2bof0yvqpcMw4EKSUywSHlB9rwHUXsreaH2/lOVVBkBaTa/KxJdMhy0gQKBgQCL
sHwJs6gr7pbZ2OWdcJhNM++Baqosk317VBLZuhy4ro31YHoveq/Ucsz6c35AnB/A
A98AsJH6lYFY+mSk7JEBoavetAYBnYooDiv9h6oMrgPBjlXfR8AoVbFtXnMoeHeK
Y76tptM+/y4lDSNobT22I8zaIb1qYF2Xw/7A7WTjUwKBgQCT1ylkV3nWofLMwfNm
a4l+eJoN/d83Ip3oKMwPJij+2G4J84sqdD9H6a2qbCA0cKzK0Qjr93ubpjRGpbz0
FqsG2lFlLYz/S1fKeaEdimjpJR8NMBFyjMiKLS8eo9KRZbu7gmYq9Vqcp3rYBJcB
i/QWvK32hwJSiLkGj25TWIoVzg==
-----END PRIVATE KEY-----
";

/// The issuer under an intermediate made from `mid` (signed by the anchor): the chain [issuer, intermediate].
fn under(pki: &Pki, mid: CertificateParams) -> IssuerMaterial {
    let mid = pki.sign(mid);
    mid.sign(ca(ISSUER_CN, Some(0))).material(&[&mid])
}

/// The identity CA's verdict: `material` offered as a reload offers it.
fn ca_refusal(pki: &Pki, material: &IssuerMaterial, naming: &IdentityNaming) -> Option<String> {
    let (tx, _rx) = watch::channel(None);
    let mut updater = IssuerUpdater::new(tx, pki.anchors(), naming.clone(), Arc::new(FixedClock(now())), Metrics::default());
    let source = IssuerSource::Secret { namespace: "linkerd".to_owned(), name: "linkerd-identity-issuer".to_owned() };
    match updater.offer(material.clone(), &source) {
        Offer::Updated(_) => None,
        Offer::Rejected(e) => Some(e.to_string()),
        Offer::Unchanged => panic!("a first offer cannot be unchanged"),
    }
}

fn check(pki: &Pki, material: &IssuerMaterial, naming: &IdentityNaming) -> Category {
    identity_checks(Ok(pki.anchor_pem.clone().into_bytes()), Ok(material.clone()), naming, now())
}

/// Asserts the CA refuses `material` and `tessera check` says ×, on `line`,
/// with the CA's message, in the text and the JSON output, every issuer line
/// before it ✔ and none after it. Returns the message.
fn refused_on(pki: &Pki, material: &IssuerMaterial, naming: &IdentityNaming, line: &str) -> String {
    let refusal = ca_refusal(pki, material, naming).expect("the CA accepted the chain");
    let category = check(pki, material, naming);
    let issuer: Vec<_> = category.checks.iter().filter(|l| l.description.starts_with("issuer ")).collect();
    let (last, before) = issuer.split_last().expect("issuer lines");
    assert_eq!((last.description.as_str(), &last.outcome), (line, &Outcome::Error(refusal.clone())), "{category:?}");
    let expected: Vec<&str> = ISSUER_LINES.iter().copied().take_while(|l| *l != line).collect();
    assert_eq!(before.iter().map(|l| l.description.as_str()).collect::<Vec<_>>(), expected);
    assert!(before.iter().all(|l| l.outcome == Outcome::Success), "{category:?}");

    let report = Report { categories: vec![category] };
    assert_eq!(report.failures(), 1);
    let text = report.render_text();
    assert!(text.contains(&format!("× {line}\n    {refusal}\n")), "{text}");
    assert!(text.ends_with("Status check results are ×\n"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&report.render_json()).unwrap();
    assert_eq!(json["success"], false);
    let checks = json["categories"][0]["checks"].as_array().unwrap();
    let failed = checks.iter().find(|c| c["result"] == "error").unwrap();
    assert_eq!((failed["description"].as_str(), failed["error"].as_str()), (Some(line), Some(refusal.as_str())));
    refusal
}

fn default_refused_on(pki: &Pki, material: &IssuerMaterial, line: &str) -> String {
    refused_on(pki, material, &IdentityNaming::default(), line)
}

/// Asserts the CA accepts `material` and every check is ✔.
fn accepted(pki: &Pki, material: &IssuerMaterial, naming: &IdentityNaming) {
    assert_eq!(ca_refusal(pki, material, naming), None);
    let category = check(pki, material, naming);
    assert!(category.checks.iter().all(|l| l.outcome == Outcome::Success), "{category:?}");
    assert_eq!(category.checks.len(), 4 + ISSUER_LINES.len() + 1, "{category:?}");
}

#[test]
fn a_good_chain_through_an_intermediate_passes() {
    let pki = Pki::new();
    accepted(&pki, &under(&pki, ca("intermediate.example", Some(1))), &IdentityNaming::default());
    accepted(&pki, &pki.issuer_material(), &IdentityNaming::default());
}

#[test]
fn an_issuer_with_ca_false_or_no_basic_constraints_is_not_a_ca() {
    let pki = Pki::new();
    let not_ca = "issuer certificate is not a CA certificate (needs basicConstraints CA:TRUE and keyCertSign)";
    assert_eq!(default_refused_on(&pki, &pki.non_ca_issuer(), CA_LINE), not_ca);
    let mut params = ca(ISSUER_CN, None);
    params.is_ca = IsCa::NoCa;
    assert_eq!(default_refused_on(&pki, &pki.sign(params).material(&[]), CA_LINE), not_ca);
}

#[test]
fn an_issuer_without_key_cert_sign_is_not_a_ca() {
    let pki = Pki::new();
    let mut params = ca(ISSUER_CN, Some(0));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    assert_eq!(
        default_refused_on(&pki, &pki.sign(params).material(&[]), CA_LINE),
        "issuer certificate is not a CA certificate (needs basicConstraints CA:TRUE and keyCertSign)"
    );
}

#[test]
fn an_intermediate_without_key_cert_sign_is_refused() {
    let pki = Pki::new();
    let mut params = ca("no-keycertsign.example", Some(1));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    assert_eq!(
        default_refused_on(&pki, &under(&pki, params), ANCHOR_LINE),
        "issuer chain: CN=no-keycertsign.example is a CA whose keyUsage lacks keyCertSign"
    );
}

#[test]
fn an_intermediate_with_ca_false_is_refused() {
    let pki = Pki::new();
    let mut params = ca("not-a-ca.example", None);
    params.is_ca = IsCa::ExplicitNoCa;
    assert_eq!(default_refused_on(&pki, &under(&pki, params), ANCHOR_LINE), format!("{SERVER_AUTH}EndEntityUsedAsCa"));
}

#[test]
fn a_violated_path_len_is_refused() {
    let pki = Pki::new();
    let material = under(&pki, ca("pathlen-0.example", Some(0)));
    assert_eq!(default_refused_on(&pki, &material, ANCHOR_LINE), format!("{SERVER_AUTH}PathLenConstraintViolated"));
}

#[test]
fn an_issuer_of_another_anchor_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    assert_eq!(
        default_refused_on(&pki, &other.issuer_material(), ANCHOR_LINE),
        "issuer certificate (CN=identity.linkerd.cluster.local) is not signed by any trust anchor"
    );
    // Through an intermediate of the other anchor, too.
    assert_eq!(
        default_refused_on(&pki, &under(&other, ca("intermediate.example", Some(1))), ANCHOR_LINE),
        "issuer certificate (CN=intermediate.example) is not signed by any trust anchor"
    );
}

#[test]
fn expired_and_not_yet_valid_issuers_are_refused() {
    let pki = Pki::new();
    let day = Duration::from_secs(86400);
    let (past, past_end) = (now() - 10 * day, now() - day);
    let expired = pki.issuer_valid(past, past_end);
    assert_eq!(default_refused_on(&pki, &expired, VALIDITY_LINE), format!("issuer certificate expired at {}", pki::rfc3339(past_end)));
    let (future, future_end) = (now() + day, now() + 10 * day);
    let future_issuer = pki.issuer_valid(future, future_end);
    assert_eq!(
        default_refused_on(&pki, &future_issuer, VALIDITY_LINE),
        format!("issuer certificate is not valid before {}", pki::rfc3339(future))
    );
}

#[test]
fn an_expired_intermediate_is_refused() {
    let pki = Pki::new();
    let mut params = ca("expired.example", Some(1));
    params.not_before = now() - Duration::from_secs(2 * 86400);
    params.not_after = now() - Duration::from_secs(86400);
    let refusal = default_refused_on(&pki, &under(&pki, params), ANCHOR_LINE);
    assert!(refusal.starts_with(&format!("{SERVER_AUTH}CertExpired")), "{refusal}");
}

#[test]
fn name_constraints_excluding_the_trust_domain_are_refused() {
    let pki = Pki::new();
    let mut params = ca(ISSUER_CN, Some(0));
    params.name_constraints =
        Some(NameConstraints { permitted_subtrees: vec![], excluded_subtrees: vec![GeneralSubtree::DnsName("cluster.local".to_owned())] });
    let issuer = pki.sign(params).material(&[]);
    assert_eq!(default_refused_on(&pki, &issuer, ANCHOR_LINE), format!("{SERVER_AUTH}NameConstraintViolation"));
}

#[test]
fn name_constraints_are_judged_for_the_configured_trust_domain() {
    // An issuer permitted only example.org: refused for cluster.local, fine
    // for a CA (and a check) run with --trust-domain example.org.
    let pki = Pki::new();
    let mut params = ca(ISSUER_CN, Some(0));
    params.name_constraints =
        Some(NameConstraints { permitted_subtrees: vec![GeneralSubtree::DnsName("example.org".to_owned())], excluded_subtrees: vec![] });
    let issuer = pki.sign(params).material(&[]);
    assert_eq!(default_refused_on(&pki, &issuer, ANCHOR_LINE), format!("{SERVER_AUTH}NameConstraintViolation"));
    let example = IdentityNaming { control_namespace: "linkerd".to_owned(), trust_domain: "example.org".to_owned() };
    accepted(&pki, &issuer, &example);
}

#[test]
fn rsa_p384_and_ed25519_issuers_are_refused() {
    let pki = Pki::new();
    let unsupported = "issuer certificate must use an ECDSA P-256 key";
    let rsa = KeyPair::from_pkcs8_pem_and_sign_algo(RSA_KEY_PEM, &rcgen::PKCS_RSA_SHA256).unwrap();
    assert_eq!(default_refused_on(&pki, &pki.issuer_with_key(ca(ISSUER_CN, Some(0)), rsa), ALGORITHM_LINE), unsupported);
    assert_eq!(default_refused_on(&pki, &pki.issuer_with_alg(&rcgen::PKCS_ECDSA_P384_SHA384), ALGORITHM_LINE), unsupported);
    assert_eq!(default_refused_on(&pki, &pki.issuer_with_alg(&rcgen::PKCS_ED25519), ALGORITHM_LINE), unsupported);
}

#[test]
fn an_unknown_critical_extension_is_refused() {
    let pki = Pki::new();
    let mut params = ca(ISSUER_CN, Some(0));
    let mut unknown = CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 55555, 1], vec![0x05, 0x00]);
    unknown.set_criticality(true);
    params.custom_extensions.push(unknown);
    let issuer = pki.sign(params).material(&[]);
    assert_eq!(default_refused_on(&pki, &issuer, ANCHOR_LINE), format!("{SERVER_AUTH}UnsupportedCriticalExtension"));
}

#[test]
fn a_code_signing_only_eku_is_refused() {
    let pki = Pki::new();
    let mut params = ca(ISSUER_CN, Some(0));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let refusal = default_refused_on(&pki, &pki.sign(params).material(&[]), ANCHOR_LINE);
    assert!(refusal.starts_with(&format!("{SERVER_AUTH}RequiredEkuNotFoundContext")), "{refusal}");
}

#[test]
fn a_mismatched_key_is_refused() {
    let pki = Pki::new();
    let material = IssuerMaterial { cert_pem: pki.issuer_material().cert_pem, key_pem: pki.issuer_material().key_pem };
    assert_eq!(
        default_refused_on(&pki, &material, "issuer key matches the issuer cert"),
        "issuer key does not match the issuer certificate"
    );
}
