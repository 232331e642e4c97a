//! `get-sa`: reads one ServiceAccount by name, cycling through `--objects` of
//! them created beforehand (so the server cannot answer every request from
//! one hot entry).

use async_trait::async_trait;
use futures::TryStreamExt as _;
use http::{Method, StatusCode, Uri};

use super::{Outcome, Scenario, ScenarioInfo, Setup, Ticket};
use crate::client::{Api, parse_uri};
use crate::error::Result;

pub(crate) const INFO: ScenarioInfo = ScenarioInfo {
    name: "get-sa",
    about: "get one of --objects ServiceAccounts by name, a different one each request",
    new: || Box::<GetSa>::default(),
};

const KIND: &[u8] = br#""kind":"ServiceAccount""#;

#[derive(Default)]
struct GetSa {
    /// One URI per object, requested round-robin.
    uris: Vec<Uri>,
}

#[async_trait]
impl Scenario for GetSa {
    async fn prepare(&mut self, setup: &Setup<'_>) -> Result<()> {
        let namespace = setup.namespace;
        let objects = setup.options.objects.max(1);
        setup
            .spread("creating serviceaccounts", objects as u64, |api, i| async move {
                api.create_service_account(namespace, &format!("got-{i}")).await
            })
            .try_collect::<Vec<()>>()
            .await?;
        self.uris = (0..objects)
            .map(|i| parse_uri(&format!("/api/v1/namespaces/{namespace}/serviceaccounts/got-{i}")))
            .collect::<Result<_>>()?;
        Ok(())
    }

    async fn request(&self, api: &Api, ticket: Ticket) -> Outcome {
        let index = usize::try_from(ticket.seq % self.uris.len().max(1) as u64).unwrap_or(0);
        let Some(uri) = self.uris.get(index) else {
            return Outcome::failed(super::Cause::Exhausted, "not prepared");
        };
        Outcome::of(api.send(Method::GET, uri, None).await, StatusCode::OK, Some(KIND))
    }
}
