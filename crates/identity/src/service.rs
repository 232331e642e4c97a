//! The `io.linkerd.proxy.identity.Identity` gRPC service: [`CertifyService`]
//! runs the contract's checks in order and signs with the current issuer.

use std::sync::Arc;

use linkerd2_proxy_api::identity::identity_server::{Identity, IdentityServer};
use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse};
use time::OffsetDateTime;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::csr::ValidatedCsr;
use crate::error::CertifyError;
use crate::issuer::{IssuancePolicy, Issuer};
use crate::metrics::Metrics;
use crate::review::{self, IdentityNaming, TokenReviewer};

/// The current issuer, if any; replaced whole on reload.
pub type IssuerWatch = watch::Receiver<Option<Arc<Issuer>>>;

/// Wall-clock time for certificate validity (injectable for tests).
pub trait Clock: Send + Sync + 'static {
    /// Now, in UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// The Certify service. Cheap to clone.
#[derive(Clone)]
pub struct CertifyService {
    issuer: IssuerWatch,
    reviewer: Arc<dyn TokenReviewer>,
    naming: IdentityNaming,
    policy: IssuancePolicy,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
}

impl std::fmt::Debug for CertifyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifyService").field("naming", &self.naming).field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl CertifyService {
    /// A service signing with whatever issuer `issuer` holds at each call.
    pub fn new(
        issuer: IssuerWatch,
        reviewer: Arc<dyn TokenReviewer>,
        naming: IdentityNaming,
        policy: IssuancePolicy,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
    ) -> Self {
        Self { issuer, reviewer, naming, policy, clock, metrics }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> IdentityServer<Self> {
        IdentityServer::new(self)
    }

    /// Runs the contract's checks in order, then signs:
    /// issuer loaded → identity, token, CSR present → CSR valid for the
    /// identity → token authenticated for `identity.l5d.io` and mapping to the
    /// identity → leaf.
    pub async fn certify(&self, request: CertifyRequest) -> Result<CertifyResponse, CertifyError> {
        // Take the issuer once: a reload during this call does not affect it.
        let issuer = self.issuer.borrow().clone().ok_or(CertifyError::IssuerNotReady)?;
        if request.identity.is_empty() {
            return Err(CertifyError::MissingIdentity);
        }
        if request.token.is_empty() {
            return Err(CertifyError::MissingToken);
        }
        if request.certificate_signing_request.is_empty() {
            return Err(CertifyError::MissingCsr);
        }
        let csr = ValidatedCsr::validate(&request.identity, &request.certificate_signing_request)?;
        let who = review::authenticate(self.reviewer.as_ref(), &self.naming, &request.token, &csr).await?;
        let leaf = issuer.issue(&csr, &who, &self.policy, self.clock.now())?;
        tracing::debug!(identity = %csr.identity(), valid_until = %leaf.valid_until, "issued certificate");
        Ok(CertifyResponse {
            leaf_certificate: leaf.der,
            intermediate_certificates: leaf.intermediates,
            valid_until: Some(prost_types::Timestamp {
                seconds: leaf.valid_until.unix_timestamp(),
                nanos: leaf.valid_until.nanosecond() as i32,
            }),
        })
    }
}

#[tonic::async_trait]
impl Identity for CertifyService {
    async fn certify(&self, request: Request<CertifyRequest>) -> Result<Response<CertifyResponse>, Status> {
        let started = tokio::time::Instant::now();
        let request = request.into_inner();
        let identity = request.identity.clone();
        let result = CertifyService::certify(self, request).await;
        self.metrics.observe_latency(started.elapsed().as_secs_f64());
        match result {
            Ok(response) => {
                self.metrics.issued(&identity);
                Ok(Response::new(response))
            }
            Err(e) => {
                self.metrics.rejected(e.reason());
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests;
