//! Reused connections to endpoints.
//!
//! Meshed endpoints: one HTTP/2 connection per (endpoint, expected
//! identity, credentials), multiplexing every request to it; a renewal of
//! our certificate starts a fresh connection. Plain-text endpoints get a
//! small pool of HTTP/1.1 connections, each reused once its previous
//! response has been read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tracing::debug;

use super::connect::connect;
use super::error::ProxyError;
use crate::destination::Endpoint;
use crate::metrics::{Metrics, PeerLabels};
use crate::tls::CredentialsRx;

/// Idle HTTP/1.1 connections kept per plain-text endpoint.
const MAX_IDLE_H1: usize = 32;
/// Endpoint slots kept before closed ones are forgotten.
const MAX_H2_SLOTS: usize = 1024;

#[derive(Clone, PartialEq, Eq, Hash)]
struct H2Key {
    addr: SocketAddr,
    identity: String,
}

struct H2Conn {
    sender: http2::SendRequest<Incoming>,
    /// Which credentials the connection authenticated with.
    creds: usize,
    /// When a request last used the connection (shared with its idle reaper).
    last_used: Arc<LastUsed>,
}

/// The time of a connection's last request, in milliseconds since the
/// connection opened (an atomic: taken on every request without a lock).
struct LastUsed {
    opened: tokio::time::Instant,
    millis: AtomicU64,
}

impl LastUsed {
    fn new() -> Self {
        Self { opened: tokio::time::Instant::now(), millis: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis.fetch_max(millis, Ordering::Relaxed);
    }

    fn idle_until(&self, timeout: Duration) -> tokio::time::Instant {
        self.opened + Duration::from_millis(self.millis.load(Ordering::Relaxed)) + timeout
    }
}

/// Closes a pooled HTTP/2 connection once no request used it for `timeout`:
/// it takes the pool's handle; hyper then ends the connection (GOAWAY) as
/// soon as no stream is open, so a response still streaming finishes.
fn reap_when_idle(slot: Arc<tokio::sync::Mutex<Option<H2Conn>>>, last_used: Arc<LastUsed>, timeout: Duration, addr: SocketAddr) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep_until(last_used.idle_until(timeout)).await;
            let mut guard = slot.lock().await;
            match guard.as_ref() {
                // Replaced (renewal, reconnect) or closed: nothing left to reap.
                Some(c) if Arc::ptr_eq(&c.last_used, &last_used) && !c.sender.is_closed() => {}
                _ => return,
            }
            if tokio::time::Instant::now() >= last_used.idle_until(timeout) {
                debug!(%addr, ?timeout, "closing an idle HTTP/2 connection");
                guard.take();
                return;
            }
        }
    });
}

/// The connection pools of one outbound proxy.
#[derive(Default)]
pub(crate) struct Pool {
    h2: Mutex<HashMap<H2Key, Arc<tokio::sync::Mutex<Option<H2Conn>>>>>,
    h1: Mutex<HashMap<SocketAddr, Vec<http1::SendRequest<Incoming>>>>,
}

pub(crate) struct Ctx<'a> {
    pub creds: &'a CredentialsRx,
    pub metrics: &'a Metrics,
    pub labels: &'a PeerLabels,
    pub timeout: Duration,
    /// Pooled HTTP/2 connections unused this long are closed.
    pub idle_timeout: Duration,
    /// The pod's IP, the source of connections to endpoints.
    pub source: Option<std::net::IpAddr>,
}

fn creds_id(creds: &CredentialsRx) -> usize {
    creds
        .borrow()
        .as_ref()
        .map_or(0, |c| Arc::as_ptr(c) as usize)
}

impl Pool {
    /// Sends a request to a meshed endpoint over its shared HTTP/2 connection.
    pub(crate) async fn send_h2(
        &self,
        ep: &Endpoint,
        identity: &str,
        mut req: http::Request<Incoming>,
        ctx: Ctx<'_>,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        let key = H2Key {
            addr: ep.address,
            identity: identity.to_owned(),
        };
        let slot = {
            let mut map = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
            if map.len() > MAX_H2_SLOTS {
                // Forget endpoints whose connection is gone (bounded memory).
                map.retain(|_, slot| {
                    Arc::strong_count(slot) > 1
                        || slot
                            .try_lock()
                            .is_ok_and(|c| c.as_ref().is_some_and(|c| !c.sender.is_closed()))
                });
            }
            map.entry(key).or_default().clone()
        };
        // One retry: a pooled connection the peer just closed (GOAWAY,
        // restart) hands the unsent request back.
        for attempt in 0..2 {
            let mut sender = {
                let mut guard = slot.lock().await;
                let current = creds_id(ctx.creds);
                match guard.as_ref() {
                    Some(c) if !c.sender.is_closed() && c.creds == current => {
                        c.last_used.touch();
                        c.sender.clone()
                    }
                    _ => {
                        let (io, _) = connect(ep, ctx.creds, &[b"h2"], ctx.timeout, ctx.source, || {
                            ctx.metrics.tcp_open(ctx.labels.clone())
                        })
                        .await?;
                        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                            .handshake(TokioIo::new(io))
                            .await
                            .map_err(|e| {
                                ProxyError::Http(
                                    ep.address,
                                    format!("HTTP/2 handshake failed: {e}"),
                                )
                            })?;
                        let addr = ep.address;
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                debug!(%addr, error = %e, "HTTP/2 connection to endpoint ended");
                            }
                        });
                        let last_used = Arc::new(LastUsed::new());
                        *guard = Some(H2Conn {
                            sender: sender.clone(),
                            creds: current,
                            last_used: last_used.clone(),
                        });
                        reap_when_idle(slot.clone(), last_used, ctx.idle_timeout, addr);
                        sender
                    }
                }
            };
            if sender.ready().await.is_err() {
                slot.lock().await.take();
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(rsp) => return Ok(rsp),
                Err(mut e) => match e.take_message() {
                    Some(back) if attempt == 0 => {
                        slot.lock().await.take();
                        req = back;
                    }
                    _ => return Err(ProxyError::Http(ep.address, e.into_error().to_string())),
                },
            }
        }
        Err(ProxyError::Http(ep.address, "connection closed".into()))
    }

    /// Sends a request to a plain-text endpoint over a pooled HTTP/1.1 connection.
    pub(crate) async fn send_h1(
        &self,
        ep: &Endpoint,
        mut req: http::Request<Incoming>,
        ctx: Ctx<'_>,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        for attempt in 0..2 {
            let idle = {
                let mut map = self.h1.lock().unwrap_or_else(PoisonError::into_inner);
                let list = map.entry(ep.address).or_default();
                list.retain(|s| !s.is_closed());
                list.iter()
                    .position(http1::SendRequest::is_ready)
                    .map(|i| list.swap_remove(i))
            };
            let mut sender = match idle {
                Some(s) => s,
                None => {
                    let (io, _) = connect(ep, ctx.creds, &[], ctx.timeout, ctx.source, || {
                        ctx.metrics.tcp_open(ctx.labels.clone())
                    })
                    .await?;
                    let (sender, conn) = http1::Builder::new()
                        .handshake(TokioIo::new(io))
                        .await
                        .map_err(|e| {
                            ProxyError::Http(ep.address, format!("HTTP/1.1 handshake failed: {e}"))
                        })?;
                    let addr = ep.address;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            debug!(%addr, error = %e, "HTTP/1.1 connection to endpoint ended");
                        }
                    });
                    sender
                }
            };
            match sender.try_send_request(req).await {
                Ok(rsp) => {
                    // The connection is ready again once this response's
                    // body has been read; `is_ready` tells at reuse time.
                    let mut map = self.h1.lock().unwrap_or_else(PoisonError::into_inner);
                    let list = map.entry(ep.address).or_default();
                    if list.len() < MAX_IDLE_H1 {
                        list.push(sender);
                    }
                    return Ok(rsp);
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if attempt == 0 => req = back,
                    _ => return Err(ProxyError::Http(ep.address, e.into_error().to_string())),
                },
            }
        }
        Err(ProxyError::Http(ep.address, "connection closed".into()))
    }
}
