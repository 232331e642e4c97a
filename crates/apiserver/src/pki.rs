//! The server's own PKI in the data dir: a self-signed cluster CA, a serving
//! certificate for localhost, an admin client certificate and `admin.kubeconfig`.
//! Created on first start, reused afterwards.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// PKI failures (files unreadable or unparsable, generation failed).
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key or certificate could not be generated or parsed.
    #[error("{what}: {source}")]
    Cert {
        /// What was being done.
        what: &'static str,
        /// The rcgen error.
        source: rcgen::Error,
    },
}

/// The cluster CA and the server's credentials, as PEM.
#[derive(Debug, Clone)]
pub struct ServerPki {
    /// Cluster CA certificate (trust anchor for clients and for client certs).
    pub ca_cert_pem: String,
    /// Serving certificate.
    pub serving_cert_pem: String,
    /// Serving key.
    pub serving_key_pem: String,
    /// Where the admin kubeconfig was written.
    pub admin_kubeconfig: PathBuf,
    ca_key_pem: String,
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.to_owned(), source })
}

/// Writes `contents` to `path` atomically with mode 0600. Certificates are
/// public, but nothing in the data dir is for other local users, and one mode
/// for every file leaves nothing to get wrong.
fn write(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write as _;
    let io = |source| PkiError::Io { path: path.to_owned(), source };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    // Never readable by others, not even for a moment.
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Cert { what, source }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

// === impl ServerPki ===

impl ServerPki {
    /// Loads the PKI from `dir`, creating whatever is missing. `server_url` goes
    /// into the admin kubeconfig.
    pub fn load_or_create(dir: &Path, server_url: &str) -> Result<Self, PkiError> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(|source| PkiError::Io { path: dir.to_owned(), source })?;
        let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if !ca_crt.exists() || !ca_key.exists() {
            let key = KeyPair::generate().map_err(cert_err("generating the CA key"))?;
            let mut params = CertificateParams::default();
            params.distinguished_name = dn("tessera-ca", None);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
            validity(&mut params, 3650);
            let cert = params.self_signed(&key).map_err(cert_err("self-signing the CA"))?;
            write(&ca_key, &key.serialize_pem())?;
            write(&ca_crt, &cert.pem())?;
        }
        let ca_cert_pem = read(&ca_crt)?;
        let ca_key_pem = read(&ca_key)?;
        let (srv_crt, srv_key) = (dir.join("serving.crt"), dir.join("serving.key"));
        let mut pki = Self {
            ca_cert_pem,
            ca_key_pem,
            serving_cert_pem: String::new(),
            serving_key_pem: String::new(),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
        };
        if !srv_crt.exists() || !srv_key.exists() {
            let (cert, key) = pki.issue_serving()?;
            write(&srv_key, &key)?;
            write(&srv_crt, &cert)?;
        }
        pki.serving_cert_pem = read(&srv_crt)?;
        pki.serving_key_pem = read(&srv_key)?;
        let (adm_crt, adm_key) = (dir.join("admin.crt"), dir.join("admin.key"));
        if !adm_crt.exists() || !adm_key.exists() {
            let (cert, key) = pki.issue_client("admin", Some("system:masters"))?;
            write(&adm_key, &key)?;
            write(&adm_crt, &cert)?;
        }
        let kubeconfig = kubeconfig(server_url, &pki.ca_cert_pem, &read(&adm_crt)?, &read(&adm_key)?, "admin");
        write(&pki.admin_kubeconfig, &kubeconfig)?;
        Ok(pki)
    }

    /// The cluster CA as an rcgen issuer (signs serving, admin and node certificates).
    pub fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.ca_key_pem).map_err(cert_err("parsing the CA key"))?;
        Issuer::from_ca_cert_pem(&self.ca_cert_pem, key).map_err(cert_err("parsing the CA certificate"))
    }

    fn issue_serving(&self) -> Result<(String, String), PkiError> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "kubernetes.default.svc".to_owned()])
            .map_err(cert_err("serving certificate names"))?;
        for ip in ["127.0.0.1", "::1"] {
            if let Ok(ip) = ip.parse::<IpAddr>() {
                params.subject_alt_names.push(SanType::IpAddress(ip));
            }
        }
        params.distinguished_name = dn("tessera-apiserver", None);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        validity(&mut params, 365);
        let key = KeyPair::generate().map_err(cert_err("generating the serving key"))?;
        let cert = params.signed_by(&key, &self.issuer()?).map_err(cert_err("signing the serving certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues a client certificate (CN = user, O = group) signed by the cluster CA.
    pub fn issue_client(&self, user: &str, group: Option<&str>) -> Result<(String, String), PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(user, group);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        validity(&mut params, 365);
        let key = KeyPair::generate().map_err(cert_err("generating a client key"))?;
        let cert = params.signed_by(&key, &self.issuer()?).map_err(cert_err("signing a client certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A kubeconfig with embedded credentials.
pub fn kubeconfig(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str, user: &str) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: tessera\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: {user}@tessera\n  context:\n    cluster: tessera\n    user: {user}\n    namespace: default\ncurrent-context: {user}@tessera\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\npreferences: {{}}\n",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    )
}
