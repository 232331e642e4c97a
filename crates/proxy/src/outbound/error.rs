//! Errors the outbound proxy answers itself, with Linkerd's statuses and
//! its `l5d-proxy-error` header (the app sees why, not just that).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use super::Body;

/// `l5d-proxy-error`: the reason a proxy synthesised a response.
pub const L5D_PROXY_ERROR: &str = "l5d-proxy-error";

/// Why a request or connection could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request names no usable authority.
    #[error("request has no valid authority")]
    NoAuthority,
    /// The control plane does not know the authority, and it is not an
    /// address that can be reached directly.
    #[error("logical service {0}: discovery rejected")]
    DiscoveryRejected(String),
    /// No ready endpoint (or no answer from the control plane) within the
    /// fail-fast timeout: Linkerd's `service in fail-fast`.
    #[error("logical service {0}: service in fail-fast")]
    FailFast(String),
    /// This proxy has no certificate yet, so it cannot originate mTLS.
    #[error("endpoint {0}: no identity certificate yet")]
    NoIdentity(SocketAddr),
    /// The peer's certificate does not name the expected identity.
    #[error("endpoint {addr}: peer identity mismatch: expected {expected}{}", presented_suffix(.presented))]
    IdentityMismatch {
        /// Endpoint address.
        addr: SocketAddr,
        /// Identity from the destination answer.
        expected: String,
        /// Names in the peer's certificate, when rustls reported them.
        presented: Vec<String>,
    },
    /// `l5d-require-id` named another identity than the endpoint's (Linkerd's
    /// `IdentityRequired`, same text: `required id …; found …`).
    #[error("required id {required:?}; found {found:?}")]
    IdentityRequired {
        /// The header's value.
        required: String,
        /// The endpoint's identity from the control plane (`None`: not meshed).
        found: Option<String>,
    },
    /// Another TLS failure with the peer.
    #[error("endpoint {0}: TLS handshake failed: {1}")]
    Tls(SocketAddr, String),
    /// TCP connect failed or timed out.
    #[error("endpoint {0}: connect failed: {1}")]
    Connect(SocketAddr, String),
    /// The HTTP exchange with the endpoint failed.
    #[error("endpoint {0}: {1}")]
    Http(SocketAddr, String),
}

fn presented_suffix(p: &[String]) -> String {
    if p.is_empty() {
        String::new()
    } else {
        format!(", presented {}", p.join(","))
    }
}

impl ProxyError {
    /// Linkerd's status: no backend → 503; endpoint failures → 502.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoAuthority => StatusCode::BAD_REQUEST,
            Self::FailFast(_) | Self::NoIdentity(_) | Self::DiscoveryRejected(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // Linkerd's outbound answers IdentityRequired with 502 Bad Gateway.
            Self::IdentityRequired { .. } | Self::IdentityMismatch { .. } | Self::Tls(..) | Self::Connect(..) | Self::Http(..) => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// The synthesised answer: status, `l5d-proxy-error`, the same text as
    /// the body, and `connection: close` for HTTP/1 as Linkerd does.
    pub fn response(&self) -> Response<Body> {
        let message = self.to_string();
        let header = HeaderValue::from_str(&message)
            .unwrap_or_else(|_| HeaderValue::from_static("unexpected error"));
        let mut rsp = Response::new(super::full(Bytes::from(format!("{message}\n"))));
        *rsp.status_mut() = self.status();
        let h = rsp.headers_mut();
        h.insert(L5D_PROXY_ERROR, header);
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    }
}

/// Classifies a TLS handshake failure: a name mismatch is an identity
/// mismatch (the server name we check is the expected identity).
pub(crate) fn tls_error(addr: SocketAddr, expected: &str, e: &std::io::Error) -> ProxyError {
    use rustls::{CertificateError, Error as R};
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<R>());
    match inner {
        Some(R::InvalidCertificate(CertificateError::NotValidForName)) => {
            ProxyError::IdentityMismatch {
                addr,
                expected: expected.to_owned(),
                presented: vec![],
            }
        }
        Some(R::InvalidCertificate(CertificateError::NotValidForNameContext {
            presented, ..
        })) => {
            let presented = presented.iter().map(|p| bare_name(p)).collect();
            ProxyError::IdentityMismatch {
                addr,
                expected: expected.to_owned(),
                presented,
            }
        }
        Some(other) => ProxyError::Tls(addr, other.to_string()),
        None => ProxyError::Tls(addr, e.to_string()),
    }
}

/// rustls reports presented names in their Debug form (`DnsName("x")`);
/// the app is told the bare name.
fn bare_name(p: &str) -> String {
    p.strip_prefix("DnsName(\"")
        .and_then(|r| r.strip_suffix("\")"))
        .unwrap_or(p)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_texts() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let e = ProxyError::IdentityMismatch {
            addr: a,
            expected: "b.ns".into(),
            presented: vec!["c.ns".into()],
        };
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            e.to_string(),
            "endpoint 127.0.0.1:1: peer identity mismatch: expected b.ns, presented c.ns"
        );
        let e = ProxyError::FailFast("s.ns.svc.cluster.local:80".into());
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let rsp = e.response();
        assert_eq!(
            rsp.headers()[L5D_PROXY_ERROR],
            "logical service s.ns.svc.cluster.local:80: service in fail-fast"
        );
    }

    #[test]
    fn presented_names_are_bare() {
        assert_eq!(bare_name("DnsName(\"c.ns\")"), "c.ns");
        assert_eq!(bare_name("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn name_mismatch_is_identity_mismatch() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
        );
        assert!(matches!(
            tls_error(a, "b", &io),
            ProxyError::IdentityMismatch { .. }
        ));
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(matches!(tls_error(a, "b", &io), ProxyError::Tls(..)));
    }
}
