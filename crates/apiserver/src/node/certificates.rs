//! Node client certificates: tessera's equivalent of kubelet TLS bootstrap,
//! in one request instead of a CertificateSigningRequest object, an
//! approver and a signer.
//!
//! `POST /tessera/v1/nodes/client-certificate` with `{"csr": "<PEM>"}`: a
//! PKCS#10 request whose subject is exactly `CN=system:node:NAME,
//! O=system:nodes`, with an ECDSA P-256 key, no requested extensions, and a
//! valid self-signature. The answer is a client certificate for that subject
//! signed by the cluster CA, valid for [`NodeCertificates::validity`]
//! (24 hours by default), which the x509 authenticator maps to the node user.
//!
//! Who may ask:
//! - a *bootstrapper*: whoever RBAC lets `post` this path, by default the
//!   ServiceAccount `kube-system/node-bootstrapper` (ClusterRole
//!   `tessera:node-bootstrapper`); an admin hands a node a short-lived token of
//!   it (`kubectl create token node-bootstrapper -n kube-system --duration 10m`).
//!   As with kube's bootstrap tokens, the holder may join under any node name;
//! - a *node renewing*: `system:node:NAME` (the node authorizer lets it post
//!   this path), for its own NAME only.
//!
//! Only the key comes from the request: subject, validity and extensions are
//! the server's, so no request can obtain a certificate for anything but a node.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use http::StatusCode;
use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};
use tessera_api::ApiError;
use tessera_authn::UserInfo;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_X509_COMMON_NAME, OID_X509_ORGANIZATION_NAME};
use x509_parser::prelude::FromDer as _;

use super::{NODE_USER_PREFIX, NODES_GROUP, NodeIdentity};
use crate::authz::Authorized;
use crate::http::AppState;
use crate::response::{HandlerResult, json_response};

/// The path of the endpoint.
pub const CLIENT_CERTIFICATE_PATH: &str = "/tessera/v1/nodes/client-certificate";

/// The default lifetime of a node client certificate.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Largest request body: a P-256 CSR in PEM is well under 1 KiB.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// Why a certificate signing request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Not one PEM `CERTIFICATE REQUEST` holding a PKCS#10 request.
    #[error("not a PEM certificate signing request: {0}")]
    Malformed(String),
    /// The subject is not exactly `CN=system:node:NAME, O=system:nodes`.
    #[error("the subject must be exactly CN=system:node:NAME, O=system:nodes")]
    Subject,
    /// NAME is not a DNS subdomain.
    #[error("invalid node name {name:?}: {why}")]
    NodeName {
        /// The name after `system:node:`.
        name: String,
        /// kube's validation message.
        why: String,
    },
    /// The request asks for extensions (SANs, usages…): the server sets them.
    #[error("the request may not ask for extensions")]
    Extensions,
    /// The key is not ECDSA P-256.
    #[error("the key must be ECDSA P-256")]
    Key,
    /// The self-signature does not verify.
    #[error("the request's signature does not verify")]
    Signature,
}

/// A request that passed every check: only [`ValidatedNodeCsr::parse`] builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedNodeCsr {
    node: String,
    public_key_der: Vec<u8>,
}

impl ValidatedNodeCsr {
    /// Checks a PEM request, in order: PEM and DER, subject, node name,
    /// extensions, key, signature.
    pub fn parse(pem: &str) -> Result<Self, CsrError> {
        let (rest, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !matches!(block.label.as_str(), "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST") {
            return Err(CsrError::Malformed(format!("PEM label {:?}", block.label)));
        }
        if !rest.iter().all(u8::is_ascii_whitespace) {
            return Err(CsrError::Malformed("data after the request".into()));
        }
        let (rest, csr) = X509CertificationRequest::from_der(&block.contents).map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed(format!("{} trailing bytes", rest.len())));
        }
        let info = &csr.certification_request_info;
        let mut common_names = Vec::new();
        let mut organizations = Vec::new();
        for attribute in info.subject.iter_attributes() {
            let value = attribute.as_str().map_err(|_| CsrError::Subject)?;
            if *attribute.attr_type() == OID_X509_COMMON_NAME {
                common_names.push(value);
            } else if *attribute.attr_type() == OID_X509_ORGANIZATION_NAME {
                organizations.push(value);
            } else {
                return Err(CsrError::Subject);
            }
        }
        let ([common_name], [NODES_GROUP]) = (common_names.as_slice(), organizations.as_slice()) else {
            return Err(CsrError::Subject);
        };
        let node = common_name.strip_prefix(NODE_USER_PREFIX).ok_or(CsrError::Subject)?;
        let invalid = tessera_api::validation::dns1123_subdomain(node);
        if !invalid.is_empty() {
            return Err(CsrError::NodeName { name: node.to_owned(), why: invalid.join("; ") });
        }
        if csr.requested_extensions().is_some_and(|mut e| e.next().is_some()) {
            return Err(CsrError::Extensions);
        }
        let spki = &info.subject_pki;
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve.as_ref() != Some(&OID_EC_P256) {
            return Err(CsrError::Key);
        }
        csr.verify_signature().map_err(|_| CsrError::Signature)?;
        Ok(Self { node: node.to_owned(), public_key_der: spki.raw.to_vec() })
    }

    /// The node the request is for.
    pub fn node(&self) -> &str {
        &self.node
    }
}

/// Signs node client certificates with the cluster CA.
pub struct NodeCertificates {
    issuer: Issuer<'static, KeyPair>,
    validity: Duration,
}

impl std::fmt::Debug for NodeCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCertificates").field("validity", &self.validity).finish_non_exhaustive()
    }
}

/// A signed certificate and when it expires.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM.
    pub certificate_pem: String,
    /// notAfter.
    pub not_after: time::OffsetDateTime,
}

impl NodeCertificates {
    /// A signer with the cluster CA's issuer.
    pub fn new(issuer: Issuer<'static, KeyPair>, validity: Duration) -> Self {
        Self { issuer, validity }
    }

    /// How long issued certificates are valid.
    pub fn validity(&self) -> Duration {
        self.validity
    }

    /// Signs a client certificate for the validated request's node.
    pub fn sign(&self, csr: &ValidatedNodeCsr) -> Result<Issued, ApiError> {
        let failed = |e: rcgen::Error| {
            tracing::error!(error = %e, node = %csr.node, "signing a node client certificate failed");
            ApiError::internal("failed to sign the certificate")
        };
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&csr.public_key_der).map_err(failed)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{NODE_USER_PREFIX}{}", csr.node));
        dn.push(DnType::OrganizationName, NODES_GROUP);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        // A little slack for clocks behind ours, as kube's signer backdates by 5 minutes.
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + self.validity;
        let certificate = params.signed_by(&public_key, &self.issuer).map_err(failed)?;
        Ok(Issued { certificate_pem: certificate.pem(), not_after: params.not_after })
    }
}

/// `POST /tessera/v1/nodes/client-certificate`.
pub async fn client_certificate(
    State(state): State<AppState>,
    Extension(user): Extension<Arc<UserInfo>>,
    _authorized: Authorized,
    body: Body,
) -> HandlerResult {
    let body = crate::http::read_body_limited(body, MAX_BODY_BYTES).await?;
    let request: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the body must be {{\"csr\": \"<PEM>\"}}: {e}")))?;
    let pem = request.get("csr").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("the body must be {\"csr\": \"<PEM>\"}"))?;
    let csr = ValidatedNodeCsr::parse(pem).map_err(|e| ApiError::bad_request(format!("invalid certificate signing request: {e}")))?;
    match super::identify(&user) {
        NodeIdentity::Named(node) if node != csr.node() => {
            return Err(ApiError::forbidden_plain(format!(
                "forbidden: node {node:?} may renew only its own client certificate, not one for node {:?}",
                csr.node()
            ))
            .into());
        }
        NodeIdentity::Unnamed(name) => {
            return Err(ApiError::forbidden_plain(format!("forbidden: could not determine node from user {name:?}")).into());
        }
        _ => {}
    }
    let issued = state.node_certificates.sign(&csr)?;
    tracing::info!(node = %csr.node(), requester = %user.username, not_after = %issued.not_after, "issued a node client certificate");
    let expires = jiff::Timestamp::from_second(issued.not_after.unix_timestamp()).map(|t| t.to_string()).unwrap_or_default();
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "NodeClientCertificate",
            "apiVersion": "tessera.dev/v1",
            "nodeName": csr.node(),
            "certificate": issued.certificate_pem,
            "expirationTimestamp": expires,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P384_SHA384};

    use super::*;

    fn csr_with(subject: &[(DnType, &str)], key: &KeyPair, sans: &[&str]) -> String {
        let mut params = CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
        let mut dn = DistinguishedName::new();
        for (t, v) in subject {
            dn.push(t.clone(), *v);
        }
        params.distinguished_name = dn;
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    fn node_csr(name: &str) -> String {
        csr_with(&[(DnType::CommonName, &format!("system:node:{name}")), (DnType::OrganizationName, "system:nodes")], &KeyPair::generate().unwrap(), &[])
    }

    #[test]
    fn a_node_request_passes_and_is_signed_for_that_node_only() {
        let csr = ValidatedNodeCsr::parse(&node_csr("n1")).expect("valid");
        assert_eq!(csr.node(), "n1");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).unwrap();
        let signer = NodeCertificates::new(issuer, Duration::from_secs(3600));
        let issued = signer.sign(&csr).expect("signed");
        let (_, block) = x509_parser::pem::parse_x509_pem(issued.certificate_pem.as_bytes()).unwrap();
        let user = tessera_authn::x509::user_from_certificate(&block.contents).expect("maps to a user");
        assert_eq!(user.username, "system:node:n1");
        assert_eq!(user.groups, ["system:nodes", "system:authenticated"]);
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&block.contents).unwrap();
        let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + 300);
        assert!(cert.extended_key_usage().unwrap().unwrap().value.client_auth);
        assert!(!cert.extended_key_usage().unwrap().unwrap().value.server_auth);
    }

    #[test]
    fn anything_but_a_node_subject_is_refused() {
        let key = KeyPair::generate().unwrap();
        let refused = |subject: &[(DnType, &str)]| ValidatedNodeCsr::parse(&csr_with(subject, &key, &[])).unwrap_err();
        assert_eq!(refused(&[(DnType::CommonName, "admin"), (DnType::OrganizationName, "system:masters")]), CsrError::Subject);
        assert_eq!(refused(&[(DnType::CommonName, "system:node:n1"), (DnType::OrganizationName, "system:masters")]), CsrError::Subject);
        assert_eq!(refused(&[(DnType::CommonName, "system:node:n1")]), CsrError::Subject);
        assert_eq!(
            refused(&[(DnType::CommonName, "system:node:n1"), (DnType::OrganizationName, "system:nodes"), (DnType::OrganizationalUnitName, "x")]),
            CsrError::Subject
        );
        assert!(matches!(refused(&[(DnType::CommonName, "system:node:N_1"), (DnType::OrganizationName, "system:nodes")]), CsrError::NodeName { .. }));
        assert!(matches!(refused(&[(DnType::CommonName, "system:node:"), (DnType::OrganizationName, "system:nodes")]), CsrError::NodeName { .. }));
        let node = [(DnType::CommonName, "system:node:n1"), (DnType::OrganizationName, "system:nodes")];
        assert_eq!(ValidatedNodeCsr::parse(&csr_with(&node, &key, &["n1.example"])).unwrap_err(), CsrError::Extensions);
        let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        assert_eq!(ValidatedNodeCsr::parse(&csr_with(&node, &p384, &[])).unwrap_err(), CsrError::Key);
    }

    #[test]
    fn garbage_and_forged_signatures_are_refused() {
        assert!(matches!(ValidatedNodeCsr::parse("hello"), Err(CsrError::Malformed(_))));
        let cert = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert!(matches!(ValidatedNodeCsr::parse(cert), Err(CsrError::Malformed(_))));
        // Flip a byte of the signature.
        let pem = node_csr("n1");
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let mut der = block.contents.clone();
        if let Some(last) = der.last_mut() {
            *last ^= 1;
        }
        use base64::Engine as _;
        let forged = format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", base64::engine::general_purpose::STANDARD.encode(&der));
        assert_eq!(ValidatedNodeCsr::parse(&forged).unwrap_err(), CsrError::Signature);
        let twice = format!("{pem}{pem}");
        assert!(matches!(ValidatedNodeCsr::parse(&twice), Err(CsrError::Malformed(_))));
    }
}
