//! The reconciler: every ConfigMap labelled `tessera.dev/mirror=true` gets a
//! `NAME-mirror` ConfigMap with the same data, owned by the source (so the
//! garbage collector removes it with its source), written by server-side apply
//! under the field manager `tessera-example`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, Resource as _, ResourceExt as _};
use serde_json::json;
use tracing::{info, warn};

/// The label that selects sources.
pub(crate) const SOURCE_LABEL: &str = "tessera.dev/mirror=true";
/// The field manager of every write.
pub(crate) const FIELD_MANAGER: &str = "tessera-example";
/// The annotation naming the controller instance that last applied a mirror.
pub(crate) const MIRRORED_BY: &str = "tessera.dev/mirrored-by";

/// Why a reconcile failed (the controller retries it).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReconcileError {
    /// The source has no name, namespace or uid (never from the API server).
    #[error("source ConfigMap lacks {0}")]
    Incomplete(&'static str),
    /// The API refused or failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

struct Context {
    client: Client,
    identity: String,
}

/// Runs the controller over `namespace` until its watch ends.
pub(crate) async fn run(client: Client, namespace: &str, identity: String) {
    let sources: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let context = Arc::new(Context { client, identity });
    Controller::new(sources, watcher::Config::default().labels(SOURCE_LABEL))
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((source, _)) => info!(source = %source.name, "mirrored"),
                Err(e) => warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

async fn reconcile(source: Arc<ConfigMap>, context: Arc<Context>) -> Result<Action, ReconcileError> {
    let namespace = source.namespace().ok_or(ReconcileError::Incomplete("a namespace"))?;
    let owner = source.controller_owner_ref(&()).ok_or(ReconcileError::Incomplete("a name or uid"))?;
    let name = format!("{}-mirror", source.name_any());
    let mirror = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {MIRRORED_BY: context.identity},
            "ownerReferences": [owner],
        },
        "data": source.data.clone().unwrap_or_default(),
    });
    let mirrors: Api<ConfigMap> = Api::namespaced(context.client.clone(), &namespace);
    mirrors.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&mirror)).await?;
    // Changes to the source trigger the next reconcile; nothing to poll.
    Ok(Action::await_change())
}

fn error_policy(_source: Arc<ConfigMap>, _error: &ReconcileError, _context: Arc<Context>) -> Action {
    Action::requeue(Duration::from_secs(1))
}
