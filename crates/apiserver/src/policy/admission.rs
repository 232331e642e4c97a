//! Linkerd's cross-object admission of policy resources (what its
//! `linkerd-policy-validator.linkerd.io` webhook adds to the CRD schemas):
//! a Server may not select the port and pods another Server of its
//! namespace selects ([`conflicting_server`]). It reads the policy cache,
//! which every policy write waits for before it is answered
//! (`http::Shared::caught_up`), so the Servers of one `kubectl apply -f`, written
//! one after the other, are checked against each other as Linkerd checks them.

use std::sync::Arc;

use serde_json::Value;
use tessera_api::ApiError;
use tessera_api::registry::Admit;
use tessera_api::resource::ResourceInfo;
use tessera_policy::resources::{GROUP, ServerSpec};
use tessera_policy::validate::{IDENTICAL_SERVER, POLICY_WEBHOOK, conflicting_server};

use super::PolicyCache;

/// Whether writes of `resource` go through [`admission`].
pub fn applies_to(resource: &ResourceInfo) -> bool {
    resource.group == GROUP && resource.plural == "servers"
}

/// The check, run after validation and before the write is stored.
pub fn admission(cache: PolicyCache) -> Admit {
    Arc::new(move |resource: &ResourceInfo, _old: Option<&Value>, new: &Value| {
        if !applies_to(resource) {
            return Ok(());
        }
        // Validation has already refused a spec that does not decode.
        let Some(spec) = new.get("spec").and_then(|s| serde_json::from_value::<ServerSpec>(s.clone()).ok()) else {
            return Ok(());
        };
        let text = |pointer| new.pointer(pointer).and_then(Value::as_str).unwrap_or_default();
        let (namespace, name) = (text("/metadata/namespace"), text("/metadata/name"));
        let conflict = cache.read(|state| {
            let servers = state.resources.servers.range((namespace.to_owned(), String::new())..).take_while(|((ns, _), _)| ns == namespace);
            conflicting_server(name, &spec, servers.map(|((_, other), server)| (other.as_str(), &server.spec))).map(str::to_owned)
        });
        match conflict {
            Some(other) => {
                tracing::debug!(namespace, name, other, "Server refused: it selects what another Server selects");
                Err(ApiError::webhook_denied(POLICY_WEBHOOK, IDENTICAL_SERVER))
            }
            None => Ok(()),
        }
    })
}
