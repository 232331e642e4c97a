//! Identities and the TLS credentials built from them.
//!
//! Identity on the wire follows Linkerd: TLS 1.3 only, the identity is the
//! certificate's DNS SAN, and a client sends the identity it *expects* as the
//! SNI, so the server name check of webpki is the identity check.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::sync::watch;

/// A mesh identity: a DNS-like name such as
/// `web.emojivoto.serviceaccount.identity.linkerd.cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    name: String,
    server_name: ServerName<'static>,
}

impl Identity {
    /// Parses a name that is a valid DNS name (what a SAN and an SNI can carry).
    pub fn parse(name: &str) -> Result<Self, TlsError> {
        let name = name.to_ascii_lowercase();
        match ServerName::try_from(name.clone()) {
            Ok(server_name @ ServerName::DnsName(_)) => Ok(Self { name, server_name }),
            _ => Err(TlsError::InvalidIdentity(name)),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The name as the SNI / webpki reference name to check a peer against.
    pub fn server_name(&self) -> ServerName<'static> {
        self.server_name.clone()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Why credentials could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The name is not a DNS-like identity.
    #[error("invalid identity {0:?}: not a DNS name")]
    InvalidIdentity(String),
    /// The trust anchors are empty or unusable.
    #[error("trust anchors: {0}")]
    TrustAnchors(String),
    /// rustls refused the certificate, key or verifier.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// The proxy's current identity: leaf chain, key and trust anchors, built
/// once into the server configuration (inbound: presents the leaf, requires
/// and verifies a client certificate) and the client configuration
/// (outbound: presents the leaf, verifies the server against the anchors and
/// the SNI it is given).
#[derive(Debug)]
pub struct Credentials {
    identity: Identity,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    roots: Arc<RootCertStore>,
    not_after: SystemTime,
}

impl Credentials {
    /// Builds both configurations. `chain` is the leaf first, then any
    /// intermediates; `not_after` is the leaf's expiry.
    pub fn new(
        identity: Identity,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Arc<RootCertStore>,
        not_after: SystemTime,
    ) -> Result<Self, TlsError> {
        if roots.is_empty() {
            return Err(TlsError::TrustAnchors("no trust anchors".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // A TLS client must present a certificate chaining to the anchors:
        // meshed clients always do, and a TLS client without one (openssl
        // s_client, a misconfigured peer) is refused in the handshake rather
        // than let through as an anonymous "tls=true" peer. Plain text is a
        // separate path (inbound accepts it for now; policy decides later).
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::TrustAnchors(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        // Proxy-to-proxy HTTP negotiates h2; opaque TCP offers no ALPN at all.
        server.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::TrustAnchors(e.to_string()))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain, key)?;
        Ok(Self { identity, server: Arc::new(server), client: Arc::new(client), roots, not_after })
    }

    /// The identity the leaf names.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Inbound TLS server configuration.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// Outbound TLS client configuration; connect with the peer's expected
    /// identity as the server name.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// The trust anchors both configurations verify against.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// When the leaf expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

/// ALPN protocols the inbound server accepts, in preference order.
pub const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The identity a verified peer certificate names: its first DNS SAN (a
/// Linkerd leaf has exactly one). Call only on a chain rustls verified.
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Option<Identity> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let leaf = chain.first()?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::DNSName(dns) => Identity::parse(dns).ok(),
        _ => None,
    })
}

/// Where the current credentials are published; `None` until the first
/// certificate arrives (the proxy is not ready and refuses meshed traffic).
pub type CredentialsRx = watch::Receiver<Option<Arc<Credentials>>>;

/// The sending side of [`CredentialsRx`].
pub type CredentialsTx = watch::Sender<Option<Arc<Credentials>>>;

/// The ring provider every configuration is built with (one TLS stack).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
