//! `lease-renew`: `--objects` holders each renew their own Lease the way
//! client-go's leader election and kubelet's heartbeat do: GET the Lease, set
//! `spec.renewTime`, PUT it back with the resourceVersion just read. One
//! request is one renewal (both round trips). A holder renews one at a time,
//! so a 409 Conflict counts as a failure, never as expected contention.

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt as _;
use http::{Method, StatusCode, Uri};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{Cause, Outcome, Scenario, ScenarioInfo, Setup, Ticket};
use crate::client::{Api, parse_uri, snippet};
use crate::error::{Error, Result};

pub(crate) const INFO: ScenarioInfo = ScenarioInfo {
    name: "lease-renew",
    about: "renew one of --objects Leases by GET + PUT (leader election, node heartbeats)",
    new: || Box::<LeaseRenew>::default(),
};

#[derive(Default)]
struct LeaseRenew {
    /// One per holder: its Lease's URI, held while it renews.
    holders: Vec<Mutex<Uri>>,
}

fn now() -> Value {
    json!(MicroTime(k8s_openapi::jiff::Timestamp::now()))
}

#[async_trait]
impl Scenario for LeaseRenew {
    async fn prepare(&mut self, setup: &Setup<'_>) -> Result<()> {
        let namespace = setup.namespace;
        if setup.options.objects == 0 {
            return Err(Error::Config("lease-renew needs at least one holder (--objects)".into()));
        }
        let holders = u64::try_from(setup.options.objects).unwrap_or(u64::MAX);
        let path = format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases");
        let created = setup
            .spread("creating leases", holders, |api, i| {
                let path = path.clone();
                async move {
                    let name = format!("holder-{i}");
                    let lease = json!({
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": name},
                        "spec": {"holderIdentity": name, "leaseDurationSeconds": 15, "acquireTime": now(), "renewTime": now(), "leaseTransitions": 0},
                    });
                    api.expect(&format!("creating lease {name}"), Method::POST, &path, Some(lease), &[StatusCode::CREATED]).await?;
                    parse_uri(&format!("{path}/{name}"))
                }
            })
            .try_collect::<Vec<Uri>>()
            .await?;
        self.holders = created.into_iter().map(Mutex::new).collect();
        Ok(())
    }

    async fn request(&self, api: &Api, ticket: Ticket) -> Outcome {
        let index = usize::try_from(ticket.seq % self.holders.len().max(1) as u64).unwrap_or(0);
        let Some(holder) = self.holders.get(index) else {
            return Outcome::failed(Cause::Exhausted, "no holders");
        };
        let uri = holder.lock().await;
        let reply = match api.send(Method::GET, &uri, None).await {
            Ok(reply) if reply.status == StatusCode::OK => reply,
            other => return Outcome::of(other, StatusCode::OK, None),
        };
        let mut lease: Value = match serde_json::from_slice(&reply.body) {
            Ok(lease) => lease,
            Err(e) => return Outcome::failed(Cause::UnexpectedBody(200), format!("not JSON ({e}): {}", snippet(&reply.body))),
        };
        match lease.get_mut("spec").and_then(Value::as_object_mut) {
            Some(spec) => spec.insert("renewTime".to_owned(), now()),
            None => return Outcome::failed(Cause::UnexpectedBody(200), format!("no spec: {}", snippet(&reply.body))),
        };
        let body = Bytes::from(lease.to_string());
        Outcome::of(api.send(Method::PUT, &uri, Some(&body)).await, StatusCode::OK, Some(b"\"renewTime\""))
    }
}
