//! `create-sa`: creates a ServiceAccount with a new name each request (the
//! write path: validation, defaulting, a durable store commit, watch fan-out).

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode, Uri};

use super::{Outcome, Scenario, ScenarioInfo, Setup, Ticket};
use crate::client::{Api, parse_uri, service_account};
use crate::error::Result;

pub(crate) const INFO: ScenarioInfo = ScenarioInfo {
    name: "create-sa",
    about: "create a ServiceAccount (the write path)",
    new: || Box::<CreateSa>::default(),
};

#[derive(Default)]
struct CreateSa {
    uri: Uri,
}

#[async_trait]
impl Scenario for CreateSa {
    async fn prepare(&mut self, setup: &Setup<'_>) -> Result<()> {
        self.uri = parse_uri(&format!("/api/v1/namespaces/{}/serviceaccounts", setup.namespace))?;
        Ok(())
    }

    async fn request(&self, api: &Api, ticket: Ticket) -> Outcome {
        let body = Bytes::from(service_account(&ticket.name("create")).to_string());
        Outcome::of(api.send(Method::POST, &self.uri, Some(&body)).await, StatusCode::CREATED, None)
    }
}
