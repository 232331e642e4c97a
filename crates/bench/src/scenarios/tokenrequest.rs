//! `tokenrequest`: mints a ServiceAccount token (TokenRequest, the
//! `serviceaccounts/token` subresource): a ServiceAccount read plus a signature.

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode, Uri};

use super::{BENCH_ACCOUNT, Outcome, Scenario, ScenarioInfo, Setup, Ticket};
use crate::client::{AUDIENCE, Api, parse_uri, token_request};
use crate::error::Result;

pub(crate) const INFO: ScenarioInfo = ScenarioInfo {
    name: "tokenrequest",
    about: "TokenRequest: mint a bound ServiceAccount token",
    new: || Box::<TokenRequest>::default(),
};

const ISSUED: &[u8] = br#""token":""#;

#[derive(Default)]
struct TokenRequest {
    uri: Uri,
    body: Bytes,
}

#[async_trait]
impl Scenario for TokenRequest {
    async fn prepare(&mut self, setup: &Setup<'_>) -> Result<()> {
        setup.bench_account().await?;
        self.uri = parse_uri(&format!("/api/v1/namespaces/{}/serviceaccounts/{BENCH_ACCOUNT}/token", setup.namespace))?;
        self.body = Bytes::from(token_request(AUDIENCE).to_string());
        Ok(())
    }

    async fn request(&self, api: &Api, _ticket: Ticket) -> Outcome {
        Outcome::of(api.send(Method::POST, &self.uri, Some(&self.body)).await, StatusCode::CREATED, Some(ISSUED))
    }
}
