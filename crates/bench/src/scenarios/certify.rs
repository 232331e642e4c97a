//! `certify`: one Linkerd identity `Certify` call against `tessera identity`
//! (or Linkerd's own identity controller): a CSR check, a TokenReview by the
//! CA against the API server, and a signature. Needs `--identity-addr`.

use async_trait::async_trait;
use linkerd2_proxy_api::identity::CertifyRequest;
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use tonic::transport::Channel;

use super::{BENCH_ACCOUNT, Cause, Outcome, Scenario, ScenarioInfo, Setup, Ticket};
use crate::client::Api;
use crate::error::{Error, Result};

pub(crate) const INFO: ScenarioInfo = ScenarioInfo {
    name: "certify",
    about: "Linkerd identity Certify: CSR + token → 24 h leaf (needs --identity-addr)",
    new: || Box::<Certify>::default(),
};

/// The audience the identity CA reviews tokens for.
const IDENTITY_AUDIENCE: &str = "identity.l5d.io";

#[derive(Default)]
struct Certify {
    client: Option<IdentityClient<Channel>>,
    request: CertifyRequest,
}

#[async_trait]
impl Scenario for Certify {
    async fn prepare(&mut self, setup: &Setup<'_>) -> Result<()> {
        let addr = setup
            .options
            .identity_addr
            .clone()
            .ok_or_else(|| Error::Config("certify needs --identity-addr (the identity service, e.g. http://127.0.0.1:8080)".into()))?;
        setup.bench_account().await?;
        let token = setup.api().request_token(setup.namespace, BENCH_ACCOUNT, IDENTITY_AUDIENCE).await?;
        let identity = format!("{BENCH_ACCOUNT}.{}.serviceaccount.identity.linkerd.{}", setup.namespace, setup.options.trust_domain);
        let key = rcgen::KeyPair::generate().map_err(|e| Error::Config(format!("generating a key: {e}")))?;
        let mut params = rcgen::CertificateParams::new(vec![identity.clone()]).map_err(|e| Error::Config(format!("CSR names: {e}")))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(|e| Error::Config(format!("building the CSR: {e}")))?;
        self.request = CertifyRequest { identity, token: token.into_bytes(), certificate_signing_request: csr.der().to_vec() };
        let channel = Channel::from_shared(addr.clone())
            .map_err(|e| Error::Config(format!("identity address {addr:?}: {e}")))?
            .connect()
            .await
            .map_err(|e| Error::Config(format!("connecting to the identity service at {addr}: {e}")))?;
        self.client = Some(IdentityClient::new(channel));
        Ok(())
    }

    async fn request(&self, _api: &Api, _ticket: Ticket) -> Outcome {
        let Some(client) = &self.client else {
            return Outcome::Failed { cause: Cause::Transport, detail: "not prepared".into() };
        };
        // Channels multiplex over HTTP/2; a clone per call is cheap.
        match client.clone().certify(self.request.clone()).await {
            Ok(response) if !response.get_ref().leaf_certificate.is_empty() => Outcome::Ok,
            Ok(_) => Outcome::Failed { cause: Cause::UnexpectedBody(200), detail: "no leaf certificate".into() },
            Err(status) => Outcome::Failed { cause: Cause::Status(grpc_as_http(status.code())), detail: status.message().chars().take(120).collect() },
        }
    }
}

/// gRPC codes in the summary's status column, as the HTTP statuses gRPC
/// gateways use for them (so a summary reads the same for every scenario).
fn grpc_as_http(code: tonic::Code) -> u16 {
    match code {
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::OutOfRange => 400,
        tonic::Code::Unauthenticated => 401,
        tonic::Code::PermissionDenied => 403,
        tonic::Code::NotFound => 404,
        tonic::Code::Unavailable => 503,
        tonic::Code::DeadlineExceeded => 504,
        _ => 500,
    }
}
