//! A streaming GET to the API server with the pod's ServiceAccount token,
//! read as newline-delimited JSON: the transport both the destination client
//! (`/tessera/v1/destinations?watch=true`) and the policy client
//! (`/tessera/v1/policy/inbound?watch=true`) watch their answers over.
//!
//! One request per stream, HTTP/1.1 over TLS (the cluster CA) or plain text;
//! the token is re-read for every stream because the agent rotates it.
//! Reconnecting and backoff stay with the callers: they know which failures
//! are worth keeping the last answer for.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Buf as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tracing::debug;

/// The longest line accepted (a compiled policy of a pod with many Servers fits easily).
const MAX_LINE: usize = 4 << 20;

/// Why a stream could not be set up or broke.
#[derive(Debug, thiserror::Error)]
pub enum ApiStreamError {
    /// The server URL is unusable.
    #[error("API server URL {0:?}: {1}")]
    Url(String, &'static str),
    /// A file could not be read.
    #[error("{0}: {1}")]
    File(PathBuf, std::io::Error),
    /// The CA bundle holds no usable certificate.
    #[error("cluster CA {0}: {1}")]
    Ca(PathBuf, String),
    /// Connecting or talking to the server failed.
    #[error("{0}")]
    Transport(String),
    /// The server answered with an unexpected status (or ended the stream
    /// with a kube Status line carrying it).
    #[error("answered {0}")]
    Status(http::StatusCode),
}

/// The API server and how to authenticate to it.
pub struct ApiStream {
    server: http::Uri,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    token_file: PathBuf,
}

impl std::fmt::Debug for ApiStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiStream").field("server", &self.server).finish_non_exhaustive()
    }
}

impl ApiStream {
    /// Reads the CA bundle now (the token on every stream).
    pub fn new(server: http::Uri, token_file: PathBuf, ca_file: Option<&PathBuf>) -> Result<Self, ApiStreamError> {
        let url = server.to_string();
        let https = match server.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(ApiStreamError::Url(url, "scheme must be http or https")),
        };
        let host = server.host().ok_or_else(|| ApiStreamError::Url(url.clone(), "no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = server.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https { Some(Arc::new(api_tls(ca_file)?)) } else { None };
        Ok(Self { server, host, port, tls, token_file })
    }

    /// The server's URL.
    pub fn server(&self) -> &http::Uri {
        &self.server
    }

    /// GETs `path_and_query` and hands every non-blank line of the answer to
    /// `on_line` until the server ends the stream; returns whether any line
    /// came. A kube Status line (the server ending a watch with an error)
    /// becomes [`ApiStreamError::Status`].
    pub async fn lines<E: From<ApiStreamError>>(
        &self,
        path_and_query: &str,
        mut on_line: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<bool, E> {
        let transport = |e: &dyn std::fmt::Display| ApiStreamError::Transport(e.to_string());
        let token = tokio::fs::read_to_string(&self.token_file).await.map_err(|e| ApiStreamError::File(self.token_file.clone(), e))?;
        let host_header =
            if self.host.contains(':') { format!("[{}]:{}", self.host, self.port) } else { format!("{}:{}", self.host, self.port) };
        let request = http::Request::get(path_and_query)
            .header(http::header::HOST, host_header)
            .header(http::header::AUTHORIZATION, format!("Bearer {}", token.trim()))
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| transport(&e))?;

        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| transport(&e))?;
        let _ = tcp.set_nodelay(true);
        let response = match &self.tls {
            Some(config) => {
                let name = rustls_pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|_| ApiStreamError::Url(self.server.to_string(), "bad host"))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await.map_err(|e| transport(&e))?;
                send(TokioIo::new(tls), request).await?
            }
            None => send(TokioIo::new(tcp), request).await?,
        };
        if response.status() != http::StatusCode::OK {
            return Err(ApiStreamError::Status(response.status()).into());
        }
        let mut body = response.into_body();
        let mut buf = BytesMut::new();
        let mut answered = false;
        let mut line = |line: &[u8], answered: &mut bool| -> Result<(), E> {
            if line.iter().all(u8::is_ascii_whitespace) {
                return Ok(());
            }
            if let Some(status) = status_line(line) {
                return Err(ApiStreamError::Status(status).into());
            }
            *answered = true;
            on_line(line)
        };
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| transport(&e))?;
            let Ok(data) = frame.into_data() else { continue };
            buf.extend_from_slice(&data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let chunk = buf.split_to(pos + 1);
                line(&chunk[..pos], &mut answered)?;
            }
            if buf.len() > MAX_LINE {
                return Err(ApiStreamError::Transport("answer line longer than 4 MiB".into()).into());
            }
        }
        if buf.has_remaining() {
            line(&buf, &mut answered)?;
        }
        Ok(answered)
    }
}

/// The code of a kube `Status` line, which a server sends before ending a
/// watch whose answer stopped existing (e.g. a deleted Service or pod).
pub fn status_line(line: &[u8]) -> Option<http::StatusCode> {
    #[derive(Deserialize)]
    struct Status {
        kind: String,
        #[serde(default)]
        code: u16,
    }
    let status = serde_json::from_slice::<Status>(line).ok().filter(|s| s.kind == "Status")?;
    Some(http::StatusCode::from_u16(status.code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR))
}

fn api_tls(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig, ApiStreamError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| ApiStreamError::File(path.clone(), e))?;
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let cert: rustls_pki_types::CertificateDer<'static> = cert.map_err(|e| ApiStreamError::Ca(path.clone(), e.to_string()))?;
            roots.add(cert).map_err(|e| ApiStreamError::Ca(path.clone(), e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ApiStreamError::Ca(path.clone(), "no certificate".into()));
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiStreamError::Transport(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

async fn send<T>(io: TokioIo<T>, request: http::Request<Empty<Bytes>>) -> Result<http::Response<hyper::body::Incoming>, ApiStreamError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| ApiStreamError::Transport(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "API stream connection ended");
        }
    });
    sender.send_request(request).await.map_err(|e| ApiStreamError::Transport(e.to_string()))
}

/// Query-component encoding (RFC 3986 unreserved characters kept).
pub fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_recognised() {
        assert_eq!(status_line(br#"{"kind":"Status","code":404}"#), Some(http::StatusCode::NOT_FOUND));
        assert_eq!(status_line(br#"{"kind":"Status"}"#), Some(http::StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(status_line(br#"{"namespace":"ns"}"#), None);
        assert_eq!(status_line(b"not json"), None);
    }

    #[test]
    fn urls_must_be_http_or_https() {
        let err = ApiStream::new("ftp://x".parse().unwrap(), "t".into(), None).unwrap_err();
        assert_eq!(err.to_string(), r#"API server URL "ftp://x/": scheme must be http or https"#);
    }
}
