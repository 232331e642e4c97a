//! `sar`: a SubjectAccessReview asking whether the bench ServiceAccount may get
//! ServiceAccounts in its namespace, which a Role and RoleBinding made during
//! preparation allow. Servers without RBAC (tessera before issue 5) answer 404:
//! the bindings are then skipped with a warning and every request counts as an
//! error in the summary.

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use serde_json::json;

use super::{BENCH_ACCOUNT, Outcome, Scenario, ScenarioInfo, Setup, Ticket};
use crate::client::{Api, parse_uri};
use crate::error::Result;

pub(crate) const INFO: ScenarioInfo = ScenarioInfo {
    name: "sar",
    about: "SubjectAccessReview of a ServiceAccount that a RoleBinding allows",
    new: || Box::<Sar>::default(),
};

const ALLOWED: &[u8] = br#""allowed":true"#;

#[derive(Default)]
struct Sar {
    uri: Uri,
    body: Bytes,
}

#[async_trait]
impl Scenario for Sar {
    async fn prepare(&mut self, setup: &Setup<'_>) -> Result<()> {
        let ns = setup.namespace;
        setup.bench_account().await?;
        let api = setup.api();
        let rbac = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}");
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "tessera-bench"},
            "rules": [{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "list"]}],
        });
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "tessera-bench"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tessera-bench"},
            "subjects": [{"kind": "ServiceAccount", "name": BENCH_ACCOUNT, "namespace": ns}],
        });
        let created = async {
            api.expect("creating the Role", Method::POST, &format!("{rbac}/roles"), Some(role), &[StatusCode::CREATED]).await?;
            api.expect("creating the RoleBinding", Method::POST, &format!("{rbac}/rolebindings"), Some(binding), &[StatusCode::CREATED])
                .await
        };
        if let Err(e) = created.await {
            tracing::warn!(error = %e, "no RBAC bindings: the reviews will not be allowed");
        }
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": format!("system:serviceaccount:{ns}:{BENCH_ACCOUNT}"),
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                "resourceAttributes": {"namespace": ns, "verb": "get", "resource": "serviceaccounts"},
            },
        });
        self.uri = parse_uri("/apis/authorization.k8s.io/v1/subjectaccessreviews")?;
        self.body = Bytes::from(review.to_string());
        Ok(())
    }

    async fn request(&self, api: &Api, _ticket: Ticket) -> Outcome {
        Outcome::of(api.send(Method::POST, &self.uri, Some(&self.body)).await, StatusCode::CREATED, Some(ALLOWED))
    }
}
