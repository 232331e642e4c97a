//! x509 client-certificate authentication: the TLS layer has already verified
//! the chain against the cluster CA; this maps the leaf to a user the way
//! kube-apiserver does (CN = username, each O = a group).

use x509_parser::prelude::*;

use crate::{AUTHENTICATED_GROUP, UserInfo};

/// Why a verified client certificate still does not authenticate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509Error {
    /// The DER did not parse (cannot happen for a chain rustls verified, but never trust that).
    #[error("client certificate does not parse: {0}")]
    Malformed(String),
    /// The subject has no common name.
    #[error("client certificate has no common name")]
    NoCommonName,
}

/// Maps a verified client certificate (DER) to a user.
pub fn user_from_certificate(der: &[u8]) -> Result<UserInfo, X509Error> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| X509Error::Malformed(e.to_string()))?;
    let subject = cert.subject();
    let username = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or(X509Error::NoCommonName)?
        .to_owned();
    let mut groups: Vec<String> =
        subject.iter_organization().filter_map(|o| o.as_str().ok()).map(str::to_owned).collect();
    if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
        groups.push(AUTHENTICATED_GROUP.to_owned());
    }
    // kube-apiserver 1.32 names the credential by the certificate's SHA-256.
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let extra = [(crate::token::EXTRA_CREDENTIAL_ID.to_owned(), vec![format!("X509SHA256={hex}")])].into();
    Ok(UserInfo { username, groups, extra, ..UserInfo::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert(cn: Option<&str>, orgs: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        // rcgen keeps one value per attribute type, so one O per test certificate.
        for o in orgs.iter().take(1) {
            dn.push(DnType::OrganizationName, *o);
        }
        params.distinguished_name = dn;
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn the_credential_id_is_the_certificates_sha256() {
        let der = cert(Some("jane"), &[]);
        let user = user_from_certificate(&der).expect("user");
        let want = ring::digest::digest(&ring::digest::SHA256, &der);
        let hex: String = want.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(user.extra["authentication.kubernetes.io/credential-id"], vec![format!("X509SHA256={hex}")]);
    }

    #[test]
    fn common_name_and_organisations() {
        let user = user_from_certificate(&cert(Some("admin"), &["system:masters"])).expect("user");
        assert_eq!(user.username, "admin");
        assert_eq!(user.groups, vec!["system:masters", "system:authenticated"]);
    }

    #[test]
    fn no_common_name_is_refused() {
        assert_eq!(user_from_certificate(&cert(None, &["x"])), Err(X509Error::NoCommonName));
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(user_from_certificate(b"not a cert"), Err(X509Error::Malformed(_))));
    }
}
