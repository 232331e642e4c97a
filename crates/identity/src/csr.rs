//! Certificate signing request validation: the only way to build a
//! [`ValidatedCsr`], which the issuer requires to sign anything.

use rcgen::string::Ia5String;
use rcgen::{PKCS_ECDSA_P256_SHA256, PublicKeyData, SignatureAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;

use crate::error::CsrError;
use crate::pki::KeyAlgorithm;

/// A CSR that passed every check of the contract for `identity`: it parses,
/// carries exactly one DNS SAN equal to the identity and no URI, IP, email or
/// other SAN, its common name is empty or the identity, its key is ECDSA P-256,
/// and its self-signature verifies. Fields are private: only
/// [`ValidatedCsr::validate`] builds one.
#[derive(Debug, Clone)]
pub struct ValidatedCsr {
    identity: String,
    dns_name: Ia5String,
    public_key: P256PublicKey,
}

impl ValidatedCsr {
    /// Checks `der` against the requested `identity`, in this order: parse,
    /// forbidden SAN kinds, DNS SAN count, DNS SAN value, common name, key
    /// algorithm, signature.
    pub fn validate(identity: &str, der: &[u8]) -> Result<Self, CsrError> {
        let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed(format!("{} trailing bytes", rest.len())));
        }

        let mut dns = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            match ext {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(n) => dns.push(*n),
                            GeneralName::URI(_) => return Err(CsrError::ForbiddenSan { kind: "URI" }),
                            GeneralName::IPAddress(_) => return Err(CsrError::ForbiddenSan { kind: "IP address" }),
                            GeneralName::RFC822Name(_) => return Err(CsrError::ForbiddenSan { kind: "email" }),
                            _ => return Err(CsrError::ForbiddenSan { kind: "other" }),
                        }
                    }
                }
                ParsedExtension::UnsupportedExtension { .. } => {}
                ParsedExtension::ParseError { error } => {
                    return Err(CsrError::Malformed(format!("requested extension: {error}")));
                }
                _ => {}
            }
        }
        let [san] = dns.as_slice() else {
            return Err(CsrError::DnsSanCount(dns.len()));
        };
        if *san != identity {
            return Err(CsrError::DnsSanMismatch { san: (*san).to_owned(), identity: identity.to_owned() });
        }

        for cn in csr.certification_request_info.subject.iter_common_name() {
            let cn = cn.as_str().map_err(|e| CsrError::Malformed(format!("common name: {e}")))?;
            if !cn.is_empty() && cn != identity {
                return Err(CsrError::CommonNameMismatch { cn: cn.to_owned(), identity: identity.to_owned() });
            }
        }

        let spki = &csr.certification_request_info.subject_pki;
        if KeyAlgorithm::of(spki) != KeyAlgorithm::EcdsaP256 {
            return Err(CsrError::UnsupportedKey);
        }
        csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

        let dns_name = Ia5String::try_from(identity).map_err(|e| CsrError::Malformed(format!("identity: {e}")))?;
        Ok(Self { identity: identity.to_owned(), dns_name, public_key: P256PublicKey(spki.subject_public_key.data.to_vec()) })
    }

    /// The validated identity (the CSR's only DNS SAN).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub(crate) fn dns_name(&self) -> &Ia5String {
        &self.dns_name
    }

    pub(crate) fn public_key(&self) -> &P256PublicKey {
        &self.public_key
    }
}

/// An uncompressed P-256 point from a validated CSR.
#[derive(Debug, Clone)]
pub(crate) struct P256PublicKey(Vec<u8>);

impl PublicKeyData for P256PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{DnType, KeyPair, SanType};

    use super::*;
    use crate::test_util::{WEB, csr_der, csr_params, csr_with};

    #[test]
    fn a_good_csr_validates() {
        let csr = ValidatedCsr::validate(WEB, &csr_der(WEB)).unwrap();
        assert_eq!(csr.identity(), WEB);
    }

    #[test]
    fn a_csr_whose_cn_is_the_identity_validates() {
        let der = csr_with(|p| p.distinguished_name.push(DnType::CommonName, WEB));
        ValidatedCsr::validate(WEB, &der).unwrap();
    }

    #[test]
    fn garbage_is_malformed() {
        let err = ValidatedCsr::validate(WEB, b"not a csr").unwrap_err();
        assert!(err.to_string().starts_with("invalid certificate signing request: "), "{err}");
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut der = csr_der(WEB);
        der.push(0);
        assert_eq!(ValidatedCsr::validate(WEB, &der).unwrap_err().to_string(), "invalid certificate signing request: 1 trailing bytes");
    }

    #[test]
    fn two_dns_sans_are_refused() {
        let der = csr_with(|p| p.subject_alt_names.push(SanType::DnsName("other.example".try_into().unwrap())));
        let err = ValidatedCsr::validate(WEB, &der).unwrap_err();
        assert_eq!(err.to_string(), "certificate signing request must carry exactly one DNS SAN, found 2");
    }

    #[test]
    fn no_san_is_refused() {
        let der = csr_with(|p| p.subject_alt_names.clear());
        assert_eq!(
            ValidatedCsr::validate(WEB, &der).unwrap_err().to_string(),
            "certificate signing request must carry exactly one DNS SAN, found 0"
        );
    }

    #[test]
    fn uri_ip_and_email_sans_are_refused() {
        let uri = csr_with(|p| p.subject_alt_names.push(SanType::URI("spiffe://cluster.local/ns/x/sa/y".try_into().unwrap())));
        assert_eq!(ValidatedCsr::validate(WEB, &uri).unwrap_err().to_string(), "certificate signing request must not carry URI SANs");
        let ip = csr_with(|p| p.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into())));
        assert_eq!(ValidatedCsr::validate(WEB, &ip).unwrap_err().to_string(), "certificate signing request must not carry IP address SANs");
        let email = csr_with(|p| p.subject_alt_names.push(SanType::Rfc822Name("a@b.c".try_into().unwrap())));
        assert_eq!(ValidatedCsr::validate(WEB, &email).unwrap_err().to_string(), "certificate signing request must not carry email SANs");
    }

    #[test]
    fn a_san_for_another_identity_is_refused() {
        let other = "api.api.serviceaccount.identity.linkerd.cluster.local";
        let err = ValidatedCsr::validate(WEB, &csr_der(other)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("certificate signing request DNS SAN does not match the requested identity: san={other}; identity={WEB}")
        );
    }

    #[test]
    fn a_cn_mismatch_is_refused() {
        let der = csr_with(|p| p.distinguished_name.push(DnType::CommonName, "someone-else"));
        assert_eq!(
            ValidatedCsr::validate(WEB, &der).unwrap_err().to_string(),
            format!("certificate signing request common name does not match the requested identity: cn=someone-else; identity={WEB}")
        );
    }

    #[test]
    fn a_bad_signature_is_refused() {
        let mut der = csr_der(WEB);
        // The signature BIT STRING is last: flip a bit inside the ECDSA `r` value.
        let n = der.len();
        der[n - 10] ^= 0x01;
        assert_eq!(ValidatedCsr::validate(WEB, &der).unwrap_err(), CsrError::BadSignature);
        assert_eq!(CsrError::BadSignature.to_string(), "certificate signing request signature is invalid");
    }

    #[test]
    fn a_non_p256_key_is_refused() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let der = csr_params(WEB).serialize_request(&key).unwrap().der().to_vec();
        assert_eq!(ValidatedCsr::validate(WEB, &der).unwrap_err().to_string(), "certificate signing request key must be ECDSA P-256");
    }
}
