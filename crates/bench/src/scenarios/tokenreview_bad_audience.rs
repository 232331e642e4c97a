//! `tokenreview-bad-audience`: a TokenReview of a valid token for an audience
//! it was not issued for; the expected answer is a review that refuses it
//! (`status.error`), so this measures the rejection path.

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode, Uri};

use super::tokenreview::TOKENREVIEWS;
use super::{Outcome, Scenario, ScenarioInfo, Setup, Ticket};
use crate::client::{AUDIENCE, Api, parse_uri, token_review};
use crate::error::Result;

pub(crate) const INFO: ScenarioInfo = ScenarioInfo {
    name: "tokenreview-bad-audience",
    about: "TokenReview of a valid token for the wrong audience (expects a refusal)",
    new: || Box::<BadAudience>::default(),
};

/// What a refusing review says (and an accepting one does not).
const REFUSED: &[u8] = br#""error":"#;

#[derive(Default)]
struct BadAudience {
    uri: Uri,
    body: Bytes,
}

#[async_trait]
impl Scenario for BadAudience {
    async fn prepare(&mut self, setup: &Setup<'_>) -> Result<()> {
        let token = setup.token_for_bench_account().await?;
        self.uri = parse_uri(TOKENREVIEWS)?;
        self.body = token_review(&token, &format!("{AUDIENCE}-elsewhere"));
        Ok(())
    }

    async fn request(&self, api: &Api, _ticket: Ticket) -> Outcome {
        Outcome::of(api.send(Method::POST, &self.uri, Some(&self.body)).await, StatusCode::CREATED, Some(REFUSED))
    }
}
