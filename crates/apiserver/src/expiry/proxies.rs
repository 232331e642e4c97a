//! Meshed proxies' leaf certificates, read from each proxy's admin port:
//! `/trust` (expiry and issuer fingerprint) where the proxy serves it, else
//! `/metrics` (`identity_cert_expiration_timestamp_seconds`, Linkerd's name).
//! The admin port is unauthenticated and serves only public data; the
//! server reaches it at the pod's IP, as `tessera edges` does.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long one proxy may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The largest admin page read.
const MAX_BODY: u64 = 8 << 20;
/// The metric holding the leaf's expiry (unix seconds).
pub const EXPIRY_METRIC: &str = "identity_cert_expiration_timestamp_seconds";

/// What a proxy said about its leaf.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    /// Expiry, unix seconds.
    pub not_after: i64,
    /// The issuer's fingerprint, when `/trust` gave it.
    pub issuer: Option<String>,
}

/// Why a proxy's leaf is unknown.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScrapeError {
    /// Connecting, sending or reading failed or timed out.
    #[error("{0}")]
    Io(String),
    /// The proxy answered, but not with a leaf.
    #[error("{0}")]
    NoLeaf(String),
}

/// A plain HTTP/1.0 GET (never chunked); returns the status and body.
async fn get(admin: SocketAddr, path: &str) -> Result<(u16, String), ScrapeError> {
    let io = |e: std::io::Error| ScrapeError::Io(format!("{admin}{path}: {e}"));
    let run = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await.map_err(io)?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes())
            .await
            .map_err(io)?;
        let mut raw = Vec::new();
        stream.take(MAX_BODY).read_to_end(&mut raw).await.map_err(io)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| ScrapeError::Io(format!("{admin}{path}: not an HTTP response")))?;
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok((status, body.to_owned()))
    };
    tokio::time::timeout(TIMEOUT, run)
        .await
        .map_err(|_| ScrapeError::Io(format!("{admin}{path}: no answer within {TIMEOUT:?}")))?
}

/// `sha256:` + 64 lowercase hex digits.
fn is_fingerprint(value: &str) -> bool {
    value.strip_prefix("sha256:").is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// The leaf in a `/trust` document (`leaf.notAfter` RFC 3339, `leaf.issuer`).
pub fn leaf_from_trust(body: &str) -> Option<Result<Leaf, ScrapeError>> {
    let doc: Value = serde_json::from_str(body).ok()?;
    let leaf = doc.get("leaf")?;
    if leaf.is_null() {
        return Some(Err(ScrapeError::NoLeaf("the proxy has no certificate yet".into())));
    }
    let not_after: jiff::Timestamp = leaf.get("notAfter")?.as_str()?.parse().ok()?;
    // Only a well-formed fingerprint is repeated (the proxy's answer is not trusted text).
    let issuer = leaf.get("issuer").and_then(Value::as_str).filter(|f| is_fingerprint(f)).map(str::to_owned);
    Some(Ok(Leaf {
        not_after: not_after.as_second(),
        issuer,
    }))
}

/// The leaf's expiry from a metrics page (0 or absent: no certificate yet).
pub fn leaf_from_metrics(body: &str) -> Result<Leaf, ScrapeError> {
    let value = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let rest = l.strip_prefix(EXPIRY_METRIC)?;
            // The name must end here (labels or the value follow).
            let rest = if let Some(labelled) = rest.strip_prefix('{') {
                labelled.split_once('}')?.1
            } else {
                rest
            };
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .ok_or_else(|| ScrapeError::NoLeaf(format!("no {EXPIRY_METRIC} in the proxy's metrics")))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(ScrapeError::NoLeaf("the proxy has no certificate yet".into()));
    }
    Ok(Leaf {
        not_after: value as i64,
        issuer: None,
    })
}

/// Reads one proxy's leaf.
pub async fn scrape(admin: SocketAddr) -> Result<Leaf, ScrapeError> {
    if let Ok((200, body)) = get(admin, "/trust").await
        && let Some(leaf) = leaf_from_trust(&body)
    {
        return leaf;
    }
    match get(admin, "/metrics").await? {
        (200, body) => leaf_from_metrics(&body),
        (status, _) => Err(ScrapeError::NoLeaf(format!("{admin}/metrics answered {status}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_give_the_expiry() {
        let page = "# HELP identity_cert_expiration_timestamp_seconds Time when the this proxy's current mTLS identity certificate will expire (in seconds since the UNIX epoch)\n\
                    # TYPE identity_cert_expiration_timestamp_seconds gauge\n\
                    identity_cert_expiration_timestamp_seconds_other 7\n\
                    identity_cert_expiration_timestamp_seconds 1800000000\n";
        assert_eq!(
            leaf_from_metrics(page),
            Ok(Leaf {
                not_after: 1_800_000_000,
                issuer: None
            })
        );
        assert_eq!(
            leaf_from_metrics("identity_cert_expiration_timestamp_seconds{a=\"b\"} 1.8e9\n").map(|l| l.not_after),
            Ok(1_800_000_000)
        );
        assert!(matches!(
            leaf_from_metrics("identity_cert_expiration_timestamp_seconds 0\n"),
            Err(ScrapeError::NoLeaf(_))
        ));
        assert!(matches!(leaf_from_metrics("garbage"), Err(ScrapeError::NoLeaf(_))));
    }

    #[test]
    fn trust_gives_expiry_and_issuer() {
        let fp = format!("sha256:{}", "ab".repeat(32));
        let doc = format!(
            r#"{{"anchors":["{fp}"],"leaf":{{"identity":"a.b.serviceaccount.identity.linkerd.cluster.local","issuer":"{fp}","notAfter":"2027-01-15T08:00:00Z"}}}}"#
        );
        assert_eq!(leaf_from_trust(&doc), Some(Ok(Leaf { not_after: 1_800_000_000, issuer: Some(fp.clone()) })));
        // Only a well-formed fingerprint is repeated.
        let odd = doc.replace(&format!(r#""issuer":"{fp}""#), r#""issuer":"<script>""#);
        assert_eq!(leaf_from_trust(&odd), Some(Ok(Leaf { not_after: 1_800_000_000, issuer: None })));
        assert!(matches!(leaf_from_trust(r#"{"anchors":[],"leaf":null}"#), Some(Err(ScrapeError::NoLeaf(_)))));
        assert_eq!(leaf_from_trust("not json"), None);
    }

    #[tokio::test]
    async fn falls_back_to_metrics_when_trust_is_missing() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { return };
                let mut buf = vec![0; 1024];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                let answer = if request.starts_with("GET /metrics ") {
                    "HTTP/1.0 200 OK\r\n\r\nidentity_cert_expiration_timestamp_seconds 1800000000\n"
                } else {
                    "HTTP/1.0 404 Not Found\r\n\r\nnot found"
                };
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        assert_eq!(
            scrape(admin).await,
            Ok(Leaf {
                not_after: 1_800_000_000,
                issuer: None
            })
        );
        // Nothing listening: an I/O error, quickly.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        assert!(matches!(scrape(closed).await, Err(ScrapeError::Io(_))));
    }
}
