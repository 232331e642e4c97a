//! An in-memory CA for the crate's tests: it issues a leaf for any identity.

use std::sync::Arc;
use std::time::SystemTime;

use crate::tls::{Credentials, Identity};

/// A self-signed root and its issuer.
pub(crate) struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The root, as a trust store.
    pub(crate) roots: Arc<rustls::RootCertStore>,
}

impl Ca {
    pub(crate) fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.der().clone()).unwrap();
        Self { issuer: rcgen::Issuer::new(params, key), roots: Arc::new(roots) }
    }

    /// Credentials for `name`.
    pub(crate) fn credentials(&self, name: &str) -> Credentials {
        self.credentials_and_leaf(name).0
    }

    /// Credentials for `name` and the leaf's DER (to tell renewals apart).
    pub(crate) fn credentials_and_leaf(&self, name: &str) -> (Credentials, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap().signed_by(&key, &self.issuer).unwrap();
        let der = leaf.der().to_vec();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let credentials =
            Credentials::new(Identity::parse(name).unwrap(), vec![leaf.der().clone()], key, self.roots.clone(), SystemTime::now()).unwrap();
        (credentials, der)
    }
}
