//! Errors of the identity CA.
//!
//! [`CertifyError`] is why one Certify call was refused; it becomes a
//! [`tonic::Status`] in exactly one place (`impl From<CertifyError> for Status`).
//! [`CsrError`] details a refused certificate signing request, [`IssuerError`]
//! a refused issuer, [`AnchorError`] an unusable trust-anchor bundle, and
//! [`Error`] everything that stops `tessera identity`, `bootstrap` or `check`.

use std::path::PathBuf;

use tonic::{Code, Status};

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a Certify request was refused. The `Display` strings are the
/// Linkerd identity contract's messages; tests assert them verbatim.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    /// No valid issuer has been loaded yet (e.g. the issuer Secret does not exist).
    #[error("cert issuer not ready yet")]
    IssuerNotReady,
    /// The loaded issuer's certificate has expired: no leaf it signs would be valid.
    #[error("cert issuer has expired")]
    IssuerExpired,
    /// The request's `identity` is empty.
    #[error("missing identity")]
    MissingIdentity,
    /// The request's `token` is empty.
    #[error("missing token")]
    MissingToken,
    /// The request's `certificate_signing_request` is empty.
    #[error("missing certificate signing request")]
    MissingCsr,
    /// The CSR is malformed or does not match the requested identity.
    #[error(transparent)]
    InvalidCsr(#[from] CsrError),
    /// TokenReview said the token is not authenticated (expired, wrong audience,
    /// unknown signer, deleted ServiceAccount…); `reason` is the reviewer's error.
    #[error("authentication token could not be authenticated{}", reason_suffix(.reason))]
    Unauthenticated {
        /// The reviewer's explanation (`status.error`), possibly empty.
        reason: String,
    },
    /// The token authenticated a user that is not a ServiceAccount.
    #[error("authentication token is not a ServiceAccount token: username={username}")]
    NotServiceAccount {
        /// The reviewed username.
        username: String,
    },
    /// The token's ServiceAccount maps to another identity than the one requested.
    #[error("requested identity did not match provided token: requested={requested}; found={found}")]
    IdentityMismatch {
        /// The identity in the request.
        requested: String,
        /// The identity the token's ServiceAccount maps to.
        found: String,
    },
    /// The TokenReview API could not be reached or answered with an error.
    #[error("token review unavailable")]
    ReviewUnavailable(#[source] ReviewError),
    /// A bug or an unexpected signing failure; details are logged, never sent.
    #[error("internal error")]
    Internal(String),
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() { String::new() } else { format!(": {reason}") }
}

impl CertifyError {
    /// The gRPC status code of this refusal.
    pub fn code(&self) -> Code {
        match self {
            Self::IssuerNotReady | Self::IssuerExpired | Self::ReviewUnavailable(_) => Code::Unavailable,
            Self::MissingIdentity | Self::MissingToken | Self::MissingCsr => Code::InvalidArgument,
            Self::InvalidCsr(_) | Self::Unauthenticated { .. } | Self::NotServiceAccount { .. } | Self::IdentityMismatch { .. } => {
                Code::FailedPrecondition
            }
            Self::Internal(_) => Code::Internal,
        }
    }

    /// A short, bounded label for the rejections metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::IssuerNotReady => "issuer_not_ready",
            Self::IssuerExpired => "issuer_expired",
            Self::MissingIdentity => "missing_identity",
            Self::MissingToken => "missing_token",
            Self::MissingCsr => "missing_csr",
            Self::InvalidCsr(_) => "invalid_csr",
            Self::Unauthenticated { .. } => "unauthenticated",
            Self::NotServiceAccount { .. } => "not_service_account",
            Self::IdentityMismatch { .. } => "identity_mismatch",
            Self::ReviewUnavailable(_) => "review_unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

/// The one mapping from a refusal to a gRPC status. Details of internal and
/// upstream failures are logged here and never sent to the client.
impl From<CertifyError> for Status {
    fn from(e: CertifyError) -> Self {
        match &e {
            CertifyError::Internal(detail) => tracing::error!(%detail, "Certify failed"),
            CertifyError::ReviewUnavailable(source) => tracing::warn!(error = %source, "TokenReview failed"),
            _ => tracing::debug!(error = %e, "Certify refused"),
        }
        Status::new(e.code(), e.to_string())
    }
}

/// Why a certificate signing request was refused (all `FailedPrecondition`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// The bytes are not a DER PKCS#10 request (or have trailing data).
    #[error("invalid certificate signing request: {0}")]
    Malformed(String),
    /// The CSR asks for a URI, IP address, email or other non-DNS SAN.
    #[error("certificate signing request must not carry {kind} SANs")]
    ForbiddenSan {
        /// `URI`, `IP address`, `email` or `other`.
        kind: &'static str,
    },
    /// The CSR does not carry exactly one DNS SAN.
    #[error("certificate signing request must carry exactly one DNS SAN, found {0}")]
    DnsSanCount(usize),
    /// The CSR's DNS SAN is not the requested identity.
    #[error("certificate signing request DNS SAN does not match the requested identity: san={san}; identity={identity}")]
    DnsSanMismatch {
        /// The SAN in the CSR.
        san: String,
        /// The requested identity.
        identity: String,
    },
    /// The CSR's subject common name is set and is not the requested identity.
    #[error("certificate signing request common name does not match the requested identity: cn={cn}; identity={identity}")]
    CommonNameMismatch {
        /// The CN in the CSR.
        cn: String,
        /// The requested identity.
        identity: String,
    },
    /// The CSR's public key is not an ECDSA P-256 key.
    #[error("certificate signing request key must be ECDSA P-256")]
    UnsupportedKey,
    /// The CSR's self-signature does not verify with its own public key.
    #[error("certificate signing request signature is invalid")]
    BadSignature,
}

/// Why TokenReview could not give an answer (not a rejection of the token).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The request to the Kubernetes API failed (network, TLS, 4xx/5xx).
    #[error("TokenReview request failed: {0}")]
    Api(#[from] kube::Error),
    /// The API answered without a usable status.
    #[error("TokenReview answer is malformed: {0}")]
    Malformed(String),
}

/// Why an issuer certificate and key were refused (at start or on reload).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerError {
    /// The certificate PEM holds no certificate.
    #[error("issuer certificate: no PEM certificate found")]
    NoCertificate,
    /// The certificate does not parse.
    #[error("issuer certificate does not parse: {0}")]
    Certificate(String),
    /// The certificate is not a CA (basicConstraints CA:TRUE, keyCertSign).
    #[error("issuer certificate is not a CA certificate (needs basicConstraints CA:TRUE and keyCertSign)")]
    NotCa,
    /// The certificate's key is not ECDSA P-256.
    #[error("issuer certificate must use an ECDSA P-256 key")]
    UnsupportedAlgorithm,
    /// The private key does not parse (PKCS#8 or SEC1 PEM expected).
    #[error("issuer key does not parse: {0}")]
    Key(String),
    /// The private key is not ECDSA P-256.
    #[error("issuer key must be an ECDSA P-256 key")]
    KeyNotP256,
    /// The private key is not the certificate's key.
    #[error("issuer key does not match the issuer certificate")]
    KeyMismatch,
    /// The certificate's notBefore is in the future.
    #[error("issuer certificate is not valid before {not_before}")]
    NotYetValid {
        /// RFC 3339 notBefore.
        not_before: String,
    },
    /// The certificate's notAfter is in the past.
    #[error("issuer certificate expired at {not_after}")]
    Expired {
        /// RFC 3339 notAfter.
        not_after: String,
    },
    /// No trust anchor signed the issuer (or the end of its chain).
    #[error("issuer certificate ({subject}) is not signed by any trust anchor")]
    NotSignedByAnchor {
        /// The subject of the certificate that no anchor signed.
        subject: String,
    },
    /// A certificate in the issuer chain is not signed by the next one.
    #[error("issuer chain is broken: {subject} is not signed by the next certificate")]
    ChainBroken {
        /// The subject of the certificate whose signature failed.
        subject: String,
    },
    /// RFC 5280 path validation failed: a leaf signed by this issuer, verified
    /// as a proxy verifies one, did not reach a trust anchor. `reason` is webpki's.
    #[error("issuer chain fails X.509 path validation (webpki, verifying a leaf it signed as a {usage} certificate): {reason}")]
    PathValidation {
        /// The usage the leaf was being verified for.
        usage: crate::chain::Usage,
        /// webpki's reason.
        reason: webpki::Error,
    },
    /// A CA of the validated path has a keyUsage without keyCertSign (RFC 5280 §4.2.1.3).
    #[error("issuer chain: {subject} is a CA whose keyUsage lacks keyCertSign")]
    NoKeyCertSign {
        /// The CA certificate's subject.
        subject: String,
    },
    /// Signing or parsing the probe leaf failed (not the issuer's fault as far as is known).
    #[error("checking the issuer with a probe leaf: {0}")]
    Probe(String),
}

/// Why a trust-anchor bundle is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    /// The bundle holds no PEM certificate.
    #[error("trust anchors: no PEM certificate found")]
    Empty,
    /// A PEM block is not a parseable certificate.
    #[error("trust anchor #{index} does not parse: {reason}")]
    Certificate {
        /// 1-based position in the bundle.
        index: usize,
        /// Parser message.
        reason: String,
    },
}

/// Everything that stops `tessera identity`, `bootstrap` or `check`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The trust anchors are unusable.
    #[error("{}: {source}", path.display())]
    Anchors {
        /// The bundle file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: AnchorError,
    },
    /// The trust bundle ConfigMap could not be read.
    #[error("trust anchors: {0}")]
    AnchorsUnavailable(String),
    /// The initial issuer is unusable.
    #[error("issuer from {from}: {source}")]
    Issuer {
        /// Where it was read from (directory or Secret).
        from: String,
        /// What is wrong.
        #[source]
        source: IssuerError,
    },
    /// The configuration is invalid (a flag value, a conflicting choice).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// No Kubernetes client could be built from the kubeconfig or in-cluster config.
    #[error("kubernetes client: {0}")]
    Kube(String),
    /// Generating a certificate failed.
    #[error("generating {what}: {source}")]
    Generate {
        /// Which certificate.
        what: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// `identity rotate` stopped (timeout, safety rule, cluster error).
    #[error("rotation: {0}")]
    Rotate(Box<crate::rotate::RotateError>),
    /// A listener could not be bound or served.
    #[error("{what} on {addr}: {source}")]
    Serve {
        /// Which listener.
        what: &'static str,
        /// Its address.
        addr: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
