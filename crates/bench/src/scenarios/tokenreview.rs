//! `tokenreview`: a TokenReview of the same valid token every time, so the
//! server may answer from its review cache (kube-apiserver and tessera both
//! cache). The hot path of every service that authenticates its callers.

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode, Uri};

use super::{Outcome, Scenario, ScenarioInfo, Setup, Ticket};
use crate::client::{AUDIENCE, Api, parse_uri, token_review};
use crate::error::Result;

pub(crate) const INFO: ScenarioInfo = ScenarioInfo {
    name: "tokenreview",
    about: "TokenReview of one valid token, the same every request (cacheable)",
    new: || Box::<TokenReview>::default(),
};

/// Where TokenReviews are created.
pub(crate) const TOKENREVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// What an accepted review says.
pub(crate) const AUTHENTICATED: &[u8] = br#""authenticated":true"#;

#[derive(Default)]
struct TokenReview {
    uri: Uri,
    body: Bytes,
}

#[async_trait]
impl Scenario for TokenReview {
    async fn prepare(&mut self, setup: &Setup<'_>) -> Result<()> {
        let token = setup.token_for_bench_account().await?;
        self.uri = parse_uri(TOKENREVIEWS)?;
        self.body = token_review(&token, AUDIENCE);
        Ok(())
    }

    async fn request(&self, api: &Api, _ticket: Ticket) -> Outcome {
        Outcome::of(api.send(Method::POST, &self.uri, Some(&self.body)).await, StatusCode::CREATED, Some(AUTHENTICATED))
    }
}
