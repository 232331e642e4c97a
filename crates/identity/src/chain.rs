//! RFC 5280 path validation of a new issuer, done by webpki rather than by hand.
//!
//! webpki validates paths upward from an end-entity certificate, which is
//! exactly what the mesh will do with every leaf the issuer signs. So the new
//! issuer signs a *probe* leaf the way it will sign real ones (same builder,
//! for an identity of the trust domain), and the probe is verified the way a
//! Linkerd proxy verifies a peer: webpki end-entity verification to the trust
//! anchors through the issuer and the intermediates given, once for
//! serverAuth and once for clientAuth, then for the identity as DNS name.
//!
//! That decides, for every certificate of the path: CA:TRUE on the CAs and
//! their pathLenConstraint, validity, extended key usages, no unknown critical
//! extension, name constraints (of the intermediates and the anchor), and every
//! signature, so the issuer key is the one its certificate names. webpki
//! deliberately ignores keyUsage; RFC 5280 §4.2.1.3 says a CA whose keyUsage is
//! present must assert keyCertSign to sign certificates, so that single rule is
//! checked on the path webpki verified.
//!
//! This runs once per issuer version (start and reload), never per Certify.

use std::time::Duration;

use rustls_pki_types::{CertificateDer, DnsName, ServerName, UnixTime};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use crate::error::IssuerError;
use crate::pki::{self, TrustAnchors};

/// The two ways a proxy uses a leaf.
const USAGES: [(Usage, fn() -> webpki::KeyUsage); 2] =
    [(Usage::ServerAuth, webpki::KeyUsage::server_auth), (Usage::ClientAuth, webpki::KeyUsage::client_auth)];

/// Which TLS role the probe was being verified for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// As a TLS server certificate (serverAuth).
    ServerAuth,
    /// As a TLS client certificate (clientAuth).
    ClientAuth,
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ServerAuth => "TLS server (serverAuth)",
            Self::ClientAuth => "TLS client (clientAuth)",
        })
    }
}

/// Verifies `probe` (a leaf for `identity` just signed by the issuer whose
/// certificate is `issuer`) to one of `anchors` through `issuer` and `others`,
/// at `now`. Returns the verified path's CA certificates, issuer first, anchor
/// excluded: the chain to hand out with every leaf.
pub(crate) fn verify_probe(
    probe: &CertificateDer<'_>,
    identity: &str,
    issuer: &CertificateDer<'static>,
    others: &[CertificateDer<'static>],
    anchors: &TrustAnchors,
    now: OffsetDateTime,
) -> Result<Vec<Vec<u8>>, IssuerError> {
    let webpki_err = |usage: Usage| move |reason: webpki::Error| IssuerError::PathValidation { usage, reason };
    let trust_anchors = anchors
        .certificates()
        .iter()
        .map(|der| webpki::anchor_from_trusted_cert(der).map_err(|e| IssuerError::Probe(format!("trust anchor: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let mut intermediates = Vec::with_capacity(1 + others.len());
    intermediates.push(issuer.clone());
    intermediates.extend(others.iter().cloned());
    let leaf = webpki::EndEntityCert::try_from(probe).map_err(|e| IssuerError::Probe(format!("parsing the probe leaf: {e}")))?;
    let time = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now.unix_timestamp()).unwrap_or(0)));

    let mut verified_chain = Vec::new();
    for (usage, key_usage) in USAGES {
        let path = leaf
            .verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &trust_anchors, &intermediates, time, key_usage(), None, None)
            .map_err(webpki_err(usage))?;
        let chain: Vec<Vec<u8>> = path.intermediate_certificates().map(|cert| cert.der().to_vec()).collect();
        if verified_chain.is_empty() {
            verified_chain = chain;
        } else if verified_chain != chain {
            // Both usages must stand on the one chain served with every leaf.
            return Err(IssuerError::Probe(format!("serverAuth and clientAuth verified through different chains for {identity}")));
        }
    }
    let name = DnsName::try_from(identity).map_err(|e| IssuerError::Probe(format!("{identity}: {e}")))?;
    leaf.verify_is_valid_for_subject_name(&ServerName::DnsName(name)).map_err(webpki_err(Usage::ServerAuth))?;

    // The probe was signed with the issuer's key, so the path starts at the issuer.
    if verified_chain.first().map(Vec::as_slice) != Some(issuer.as_ref()) {
        return Err(IssuerError::Probe("the verified path does not start at the issuer certificate".to_owned()));
    }
    for der in &verified_chain {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| IssuerError::Certificate(e.to_string()))?;
        if !pki::is_signing_ca(&cert) {
            return Err(IssuerError::NoKeyCertSign { subject: cert.subject().to_string() });
        }
    }
    Ok(verified_chain)
}

#[cfg(test)]
mod tests;
