//! `list-sa`: lists the ServiceAccounts of a namespace holding `--objects` of
//! them (plus any the server adds, like `default`); with `--protobuf`, in
//! Kubernetes protobuf.

use async_trait::async_trait;
use futures::TryStreamExt as _;
use http::{Method, StatusCode, Uri};

use super::{Outcome, Scenario, ScenarioInfo, Setup, Ticket};
use crate::client::{Api, PROTOBUF_ACCEPT, parse_uri};
use crate::error::Result;

pub(crate) const INFO: ScenarioInfo = ScenarioInfo {
    name: "list-sa",
    about: "list the ServiceAccounts of a namespace with --objects of them",
    new: || Box::<ListSa>::default(),
};

const LIST: &[u8] = br#""kind":"ServiceAccountList""#;
/// In protobuf the kind is a plain string in the envelope's type meta.
const PROTOBUF_LIST: &[u8] = b"\x12\x12ServiceAccountList";

#[derive(Default)]
struct ListSa {
    uri: Uri,
    protobuf: bool,
}

#[async_trait]
impl Scenario for ListSa {
    async fn prepare(&mut self, setup: &Setup<'_>) -> Result<()> {
        let namespace = setup.namespace;
        let objects = u64::try_from(setup.options.objects).unwrap_or(u64::MAX);
        setup
            .spread("creating serviceaccounts", objects, |api, i| async move {
                api.create_service_account(namespace, &format!("listed-{i}")).await
            })
            .try_collect::<Vec<()>>()
            .await?;
        self.uri = parse_uri(&format!("/api/v1/namespaces/{namespace}/serviceaccounts"))?;
        self.protobuf = setup.options.protobuf;
        Ok(())
    }

    async fn request(&self, api: &Api, _ticket: Ticket) -> Outcome {
        if self.protobuf {
            return Outcome::of(api.get_accepting(&self.uri, PROTOBUF_ACCEPT).await, StatusCode::OK, Some(PROTOBUF_LIST));
        }
        Outcome::of(api.send(Method::GET, &self.uri, None).await, StatusCode::OK, Some(LIST))
    }
}
