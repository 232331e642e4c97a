//! HTTP/1.1 `Upgrade` (WebSocket and friends) through the proxies.
//!
//! An upgrade cannot ride the pooled HTTP/2 connections between proxies
//! (HTTP/2 has no `Upgrade`), so, as Linkerd does, such a request gets a
//! connection of its own: the outbound proxy opens one to the endpoint
//! (mutual TLS without ALPN for a meshed endpoint, where the inbound proxy
//! detects HTTP/1 on the decrypted bytes), sends the request as HTTP/1.1
//! with `Connection: upgrade` and `Upgrade` kept, and when the answer is
//! `101 Switching Protocols` splices the client's upgraded connection to the
//! endpoint's. The inbound proxy does the same towards the app (and still
//! sets `l5d-client-id` on the request). Any other answer is an ordinary
//! response and the connection is not reused.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

/// The `Upgrade` header of a request that asks for one (`Connection`
/// names the `upgrade` token); `None` for ordinary requests.
pub(crate) fn requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

/// Puts back the two hop-by-hop headers an upgrade needs (after the other
/// hop-by-hop headers were removed).
pub(crate) fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::UPGRADE, protocol);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Sends `request` as HTTP/1.1 on `io` (a connection used for this request
/// only); on `101` splices `client` (the downstream connection's upgrade)
/// to the upstream one in a task of its own.
pub(crate) async fn send<I>(io: I, request: Request<Incoming>, client: OnUpgrade) -> Result<Response<Incoming>, hyper::Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            debug!(%error, "upgrade connection ended");
        }
    });
    let mut response = sender.send_request(request).await?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(client, upstream) {
                Ok((client, upstream)) => {
                    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                        debug!(%error, "upgraded connection ended");
                    }
                }
                Err(error) => debug!(%error, "upgrade failed"),
            }
        });
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_naming_the_upgrade_token_ask_for_one() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(requested(&headers), None, "Upgrade without Connection: upgrade is ignored");
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(requested(&headers), Some(HeaderValue::from_static("websocket")));
        headers.remove(header::UPGRADE);
        assert_eq!(requested(&headers), None);
    }
}
