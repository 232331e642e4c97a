//! `https-ceiling`: `GET /version` of any HTTPS server, expecting a 200 with a
//! JSON object (any API server answers it from memory). Pointed at nginx answering a fixed JSON (`scripts/bench.sh` sets
//! one up), it measures what this machine's TLS, HTTP and the load generator
//! itself allow, so every other figure can be read as a fraction of it.
//!
//! The runner still creates and deletes its namespace: the nginx of
//! `scripts/bench.sh` answers those two requests like an API server would.

use async_trait::async_trait;
use http::{Method, StatusCode, Uri};

use super::{Outcome, Scenario, ScenarioInfo, Setup, Ticket};
use crate::client::{Api, parse_uri};
use crate::error::Result;

pub(crate) const INFO: ScenarioInfo = ScenarioInfo {
    name: "https-ceiling",
    about: "GET /version expecting 200 and a JSON object: the machine's HTTPS ceiling against nginx serving a fixed JSON",
    new: || Box::<HttpsCeiling>::default(),
};

#[derive(Default)]
struct HttpsCeiling {
    uri: Uri,
}

#[async_trait]
impl Scenario for HttpsCeiling {
    async fn prepare(&mut self, _setup: &Setup<'_>) -> Result<()> {
        self.uri = parse_uri("/version")?;
        Ok(())
    }

    async fn request(&self, api: &Api, _ticket: Ticket) -> Outcome {
        Outcome::of(api.send(Method::GET, &self.uri, None).await, StatusCode::OK, Some(b"{"))
    }
}
