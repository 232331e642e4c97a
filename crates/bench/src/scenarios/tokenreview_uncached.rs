//! `tokenreview-uncached`: a TokenReview of a token never reviewed before, so
//! the server verifies the signature and looks the ServiceAccount up every
//! time. The tokens are minted during preparation (see
//! `ScenarioOptions::tokens`); the measured request is only the review. Warm-up
//! reviews one extra token, keeping the pool fresh for the measurement.

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt as _;
use http::{Method, StatusCode, Uri};

use super::tokenreview::{AUTHENTICATED, TOKENREVIEWS};
use super::{Cause, Outcome, Phase, Scenario, ScenarioInfo, Setup, Ticket};
use crate::client::{AUDIENCE, Api, parse_uri, token_review};
use crate::error::Result;

pub(crate) const INFO: ScenarioInfo = ScenarioInfo {
    name: "tokenreview-uncached",
    about: "TokenReview of a fresh token every request (minted before measuring)",
    new: || Box::<Uncached>::default(),
};

#[derive(Default)]
struct Uncached {
    uri: Uri,
    warmup: Bytes,
    bodies: Vec<Bytes>,
}

#[async_trait]
impl Scenario for Uncached {
    async fn prepare(&mut self, setup: &Setup<'_>) -> Result<()> {
        let warmup = setup.token_for_bench_account().await?;
        let pool = setup.options.token_pool(setup.limit);
        let namespace = setup.namespace;
        self.bodies = setup
            .spread("minting tokens", pool, |api, _| async move {
                let token = api.request_token(namespace, super::BENCH_ACCOUNT, AUDIENCE).await?;
                Ok(token_review(&token, AUDIENCE))
            })
            .try_collect()
            .await?;
        self.uri = parse_uri(TOKENREVIEWS)?;
        self.warmup = token_review(&warmup, AUDIENCE);
        Ok(())
    }

    async fn request(&self, api: &Api, ticket: Ticket) -> Outcome {
        let body = match ticket.phase {
            Phase::Warmup => &self.warmup,
            Phase::Measure => match usize::try_from(ticket.seq).ok().and_then(|i| self.bodies.get(i)) {
                Some(body) => body,
                None => {
                    return Outcome::failed(
                        Cause::Exhausted,
                        format!("all {} pre-minted tokens were reviewed (raise --tokens)", self.bodies.len()),
                    );
                }
            },
        };
        Outcome::of(api.send(Method::POST, &self.uri, Some(body)).await, StatusCode::CREATED, Some(AUTHENTICATED))
    }
}
