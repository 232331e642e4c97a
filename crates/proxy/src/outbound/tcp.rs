//! Opaque TCP to an authority: TCP forward ports and `CONNECT` tunnels.

use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::debug;

use super::connect::{Conn, connect};
use super::error::ProxyError;
use super::{Outbound, Picked};
use crate::balance::InFlight;

/// Opens a connection to one endpoint of `authority`: mTLS without ALPN
/// for a meshed endpoint (the inbound proxy detects the protocol on the
/// decrypted bytes), plain TCP otherwise. The in-flight slot lasts as long
/// as the caller keeps it.
pub(super) async fn open(out: &Outbound, authority: &str) -> Result<(Conn, InFlight), ProxyError> {
    let picked: Picked = out.pick(authority).await?;
    let (conn, _) = connect(picked.endpoint(), &out.creds, &[], out.config.connect_timeout, out.config.source_ip, || {
        out.metrics.tcp_open(picked.labels())
    })
    .await?;
    Ok((conn, picked.in_flight))
}

/// One accepted connection of a TCP forward port. Any failure (unknown
/// authority, identity mismatch, ...) closes the client connection.
pub(super) async fn forward(out: Arc<Outbound>, mut client: TcpStream, authority: &str) {
    match open(&out, authority).await {
        Ok((mut conn, _in_flight)) => {
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut conn).await {
                debug!(%authority, error = %e, "TCP forward ended");
            }
        }
        Err(e) => debug!(%authority, error = %e, "TCP forward refused; closing"),
    }
}
