//! Certificates (PEM, one or a bundle) to timeline items.

use jiff::Timestamp;
use x509_parser::prelude::FromDer as _;

use super::item::{Item, Kind};

/// Why a PEM text gave no certificate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    /// A PEM block is malformed.
    #[error("not PEM: {0}")]
    Pem(String),
    /// A block is not a parsable X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    X509(String),
    /// No CERTIFICATE block at all.
    #[error("no certificate in the PEM text")]
    Empty,
}

/// `sha256:` + lowercase hex of the certificate DER (the trust bundle's fingerprint format).
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// One item per certificate in `pem` (other blocks, e.g. keys, are skipped),
/// named by subject common name (or the whole subject), not yet judged.
pub fn items(kind: Kind, pem: &str, owner: &str) -> Result<Vec<Item>, CertError> {
    let mut items = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| CertError::Pem(e.to_string()))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&block.contents).map_err(|e| CertError::X509(e.to_string()))?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map_or_else(|| subject.to_string(), str::to_owned);
        let validity = cert.validity();
        items.push(Item {
            not_before: Timestamp::from_second(validity.not_before.timestamp()).ok(),
            not_after: Timestamp::from_second(validity.not_after.timestamp()).ok(),
            fingerprint: Some(fingerprint(&block.contents)),
            ..Item::new(kind, name, owner)
        });
    }
    if items.is_empty() {
        return Err(CertError::Empty);
    }
    Ok(items)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::expiry::item::Rules;

    /// A self-signed certificate valid from `not_before` to `not_after` (unix seconds).
    pub(crate) fn generated(cn: &str, not_before: i64, not_after: i64) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_bundle_gives_one_item_per_certificate() {
        let now = jiff::Timestamp::now().as_second();
        let bundle = format!(
            "{}{}",
            generated("old anchor", now - 86400, now + 20 * 86400),
            generated("new anchor", now - 60, now + 365 * 86400)
        );
        let items: Vec<Item> = items(Kind::TrustAnchor, &bundle, "trust bundle")
            .unwrap()
            .into_iter()
            .map(|i| i.judge(&Rules::default(), now))
            .collect();
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].name.as_str(), items[1].name.as_str()), ("old anchor", "new anchor"));
        assert_eq!(items[0].not_after.map(Timestamp::as_second), Some(now + 20 * 86400));
        assert_eq!(items[0].warning.as_deref(), Some("expires within 60d0h (20d0h left)"));
        assert_eq!(items[1].warning, None);
        let fp = items[0].fingerprint.as_deref().unwrap();
        assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64, "{fp}");
        assert_ne!(items[0].fingerprint, items[1].fingerprint);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(items(Kind::Issuer, "", "o"), Err(CertError::Empty));
        assert_eq!(items(Kind::Issuer, "hello", "o"), Err(CertError::Empty));
        let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(items(Kind::Issuer, bad, "o"), Err(CertError::X509(_))));
        let key_only = rcgen::KeyPair::generate().unwrap().serialize_pem();
        assert_eq!(items(Kind::Issuer, &key_only, "o"), Err(CertError::Empty));
    }
}
