//! The node's life signs, as kubelet gives them: its Node object (Ready), a
//! Lease `kube-node-lease/NAME` renewed every quarter of its duration
//! (kubelet: 40 s, renewed every 10 s), and the Ready condition of the pods it
//! runs. When the renewals stop (the agent was killed), the server marks
//! the pods not ready and then deletes them, which revokes their tokens.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;

use crate::projector::{Agent, AgentError};

/// The namespace of node Leases.
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// A pod the agent runs: `(namespace, name)`.
pub type PodKey = (String, String);

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Api { what, source }
}

fn now() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string()
}

fn is_status(e: &kube::Error, codes: &[u16]) -> bool {
    matches!(e, kube::Error::Api(status) if codes.contains(&status.code))
}

/// What the node reports about itself (`kubectl get node -o wide`).
fn node_info() -> serde_json::Value {
    let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default();
    let os_image = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_default();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    json!({
        "architecture": arch,
        "operatingSystem": std::env::consts::OS,
        "osImage": os_image,
        "kernelVersion": read("/proc/sys/kernel/osrelease"),
        "machineID": read("/etc/machine-id"),
        "systemUUID": "",
        "bootID": read("/proc/sys/kernel/random/boot_id"),
        "kubeletVersion": concat!("v1.32.0-tessera.", env!("CARGO_PKG_VERSION")),
        "kubeProxyVersion": "",
        "containerRuntimeVersion": concat!("tessera-agent://", env!("CARGO_PKG_VERSION")),
    })
}

fn ready_status(object: &serde_json::Value) -> Option<&str> {
    object
        .pointer("/status/conditions")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("type").and_then(serde_json::Value::as_str) == Some("Ready"))
        .and_then(|c| c.get("status").and_then(serde_json::Value::as_str))
}

impl Agent {
    /// Creates this node's Node object if missing and reports it Ready.
    pub async fn register_node(&self) -> Result<(), AgentError> {
        let nodes: Api<Node> = Api::all(self.client());
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node(), "labels": {
                "kubernetes.io/hostname": self.node(),
                "kubernetes.io/os": std::env::consts::OS,
                "kubernetes.io/arch": node_info()["architecture"],
            }},
        });
        let node: Node = serde_json::from_value(node).map_err(|e| AgentError::Config(e.to_string()))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => tracing::info!(node = %self.node(), "node registered"),
            Err(e) if is_status(&e, &[409]) => {}
            Err(e) => return Err(api_err(format!("registering Node {}", self.node()))(e)),
        }
        self.report_node_ready().await
    }

    async fn report_node_ready(&self) -> Result<(), AgentError> {
        let nodes: Api<Node> = Api::all(self.client());
        let now = now();
        let status = json!({"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
                "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "nodeInfo": node_info(),
        }});
        nodes
            .patch_status(self.node(), &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(api_err(format!("reporting Node {} ready", self.node())))?;
        Ok(())
    }

    /// Reports `status` for a pod the agent runs (through `pods/status`) and
    /// remembers it, so heartbeats can report it again.
    pub async fn report_status(&self, namespace: &str, name: &str, status: serde_json::Value) -> Result<(), AgentError> {
        let mut reports = self.reports.lock().await;
        reports.insert((namespace.to_owned(), name.to_owned()), status.clone());
        self.patch_status(namespace, name, &status).await
    }

    /// Stops reporting a pod (it is being deleted).
    pub(crate) async fn forget_status(&self, namespace: &str, name: &str) {
        self.reports.lock().await.remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Sets (`Some`) or removes (`None`) annotations of a pod the agent runs,
    /// through `pods/status` as a kubelet does.
    pub async fn annotate_pod(&self, namespace: &str, name: &str, annotations: &[(&str, Option<&str>)]) -> Result<(), AgentError> {
        let pods: Api<Pod> = Api::namespaced(self.client(), namespace);
        let map: serde_json::Map<String, serde_json::Value> = annotations.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"annotations": map}})))
            .await
            .map_err(api_err(format!("annotating Pod {namespace}/{name}")))?;
        Ok(())
    }

    async fn patch_status(&self, namespace: &str, name: &str, status: &serde_json::Value) -> Result<(), AgentError> {
        let pods: Api<Pod> = Api::namespaced(self.client(), namespace);
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
            .await
            .map_err(api_err(format!("reporting the status of Pod {namespace}/{name}")))?;
        Ok(())
    }

    /// Reports again what the agent last reported for a pod, if the server's
    /// copy says otherwise (the node lifecycle controller marked it not
    /// ready while heartbeats were missing).
    async fn report_again(&self, namespace: &str, name: &str, server: &serde_json::Value) -> Result<(), AgentError> {
        let reports = self.reports.lock().await;
        let Some(reported) = reports.get(&(namespace.to_owned(), name.to_owned())) else { return Ok(()) };
        let on_server = server.get("status").cloned().unwrap_or_default();
        if crate::status::agrees(&on_server, reported) {
            return Ok(());
        }
        tracing::info!(namespace, pod = name, "reporting the pod's status again");
        self.patch_status(namespace, name, reported).await
    }

    /// The pods bound to this node (listed as kubelet does, with the
    /// `spec.nodeName` field selector: the only list a node may make).
    pub(crate) async fn own_pods(&self) -> Result<Vec<Pod>, AgentError> {
        let pods: Api<Pod> = Api::all(self.client());
        let params = ListParams::default().fields(&format!("spec.nodeName={}", self.node()));
        Ok(pods.list(&params).await.map_err(api_err(format!("listing the pods of node {}", self.node())))?.items)
    }

    /// Deletes the pods bound to this node that it does not run: left by a
    /// previous run of this node that was killed. Their tokens die with them.
    pub async fn collect_orphans(&self, keep: &BTreeSet<PodKey>) -> Result<(), AgentError> {
        for pod in self.own_pods().await? {
            let (namespace, name, uid) = (pod.metadata.namespace.unwrap_or_default(), pod.metadata.name.unwrap_or_default(), pod.metadata.uid);
            if keep.contains(&(namespace.clone(), name.clone())) {
                continue;
            }
            let pods: Api<Pod> = Api::namespaced(self.client(), &namespace);
            let params = DeleteParams { preconditions: Some(Preconditions { uid, resource_version: None }), ..DeleteParams::default() };
            match pods.delete(&name, &params).await {
                Ok(_) => tracing::info!(namespace = %namespace, pod = %name, "deleted a pod this node no longer runs"),
                Err(e) if is_status(&e, &[404, 409]) => {}
                Err(e) => return Err(api_err(format!("deleting Pod {namespace}/{name}"))(e)),
            }
        }
        Ok(())
    }

    /// Renews the Lease (creating it if missing); `cached` is the last version written.
    async fn renew_lease(&self, cached: &mut Option<Lease>, duration: Duration) -> Result<(), AgentError> {
        let leases: Api<Lease> = Api::namespaced(self.client(), NODE_LEASE_NAMESPACE);
        let what = || format!("renewing Lease {NODE_LEASE_NAMESPACE}/{}", self.node());
        let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX).max(1);
        for _attempt in 0..3 {
            let current = match cached.take() {
                Some(lease) => Some(lease),
                None => leases.get_opt(self.node()).await.map_err(api_err(what()))?,
            };
            let renewed = LeaseSpec {
                holder_identity: Some(self.node().to_owned()),
                lease_duration_seconds: Some(seconds),
                renew_time: Some(MicroTime(jiff::Timestamp::now())),
                ..LeaseSpec::default()
            };
            let result = match current {
                Some(mut lease) => {
                    lease.spec = Some(renewed);
                    leases.replace(self.node(), &PostParams::default(), &lease).await
                }
                None => {
                    let lease = Lease {
                        metadata: ObjectMeta { name: Some(self.node().to_owned()), ..ObjectMeta::default() },
                        spec: Some(renewed),
                    };
                    leases.create(&PostParams::default(), &lease).await
                }
            };
            match result {
                Ok(lease) => {
                    *cached = Some(lease);
                    return Ok(());
                }
                // Someone else wrote it, or it went away: read it again.
                Err(e) if is_status(&e, &[404, 409]) => continue,
                Err(e) => return Err(api_err(what())(e)),
            }
        }
        Err(AgentError::Config(format!("{}: kept conflicting", what())))
    }

    /// One heartbeat: renew the Lease, then make sure the Node and the pods
    /// the agent runs are reported ready (the server marks them otherwise
    /// when a heartbeat was missed).
    async fn beat(&self, cached: &mut Option<Lease>, duration: Duration, running: &BTreeSet<PodKey>) -> Result<(), AgentError> {
        self.renew_lease(cached, duration).await?;
        let nodes: Api<Node> = Api::all(self.client());
        let node = nodes.get(self.node()).await.map_err(api_err(format!("reading Node {}", self.node())))?;
        let node = serde_json::to_value(&node).map_err(|e| AgentError::Config(e.to_string()))?;
        if ready_status(&node) != Some("True") {
            tracing::info!(node = %self.node(), "reporting the node ready again");
            self.report_node_ready().await?;
        }
        if running.is_empty() {
            return Ok(());
        }
        let pods = self.own_pods().await?;
        for (namespace, name) in running {
            let found = pods.iter().find(|p| p.metadata.namespace.as_deref() == Some(namespace) && p.metadata.name.as_deref() == Some(name));
            match found.map(|p| serde_json::to_value(p).unwrap_or_default()) {
                None => tracing::error!(namespace = %namespace, pod = %name, "the pod this agent runs was deleted by the control plane: its tokens no longer work"),
                Some(pod) => self.report_again(namespace, name, &pod).await?,
            }
        }
        Ok(())
    }

    /// Heartbeats every quarter of `lease_duration` until `stop`; `running`
    /// names the pods the agent runs.
    pub async fn heartbeat(
        &self,
        lease_duration: Duration,
        running: tokio::sync::watch::Receiver<BTreeSet<PodKey>>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let interval = (lease_duration / 4).max(Duration::from_millis(250));
        let mut cached = None;
        loop {
            let pods = running.borrow().clone();
            if let Err(e) = self.beat(&mut cached, lease_duration, &pods).await {
                tracing::warn!(error = %e, node = %self.node(), "heartbeat failed; retrying at the next one");
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_info_has_every_field_kube_requires() {
        let info: k8s_openapi::api::core::v1::NodeSystemInfo = serde_json::from_value(node_info()).expect("a valid NodeSystemInfo");
        assert!(info.kubelet_version.starts_with("v1.32.0-tessera."));
        assert_eq!(info.operating_system, std::env::consts::OS);
    }

    #[test]
    fn ready_is_read_from_conditions() {
        let pod = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}]}});
        assert_eq!(ready_status(&pod), Some("False"));
        assert_eq!(ready_status(&json!({})), None);
    }
}
