//! Pod status as a kubelet reports it, written through the `pods/status`
//! subresource: `Running` with the five conditions True while the pod runs,
//! then `Succeeded` or `Failed` with each container's terminated state when
//! its process exits. The agent restarts nothing (its pods say
//! `restartPolicy: Never`), so restart counts stay 0.
//!
//! Addresses: a workload runs in the agent's own network namespace (there is
//! no pod sandbox), as a `hostNetwork` pod does, so kube's rule for those
//! applies: the pod's IP is the host's. The only address the agent can vouch
//! for is loopback, where `agent run` workloads listen (`--listen
//! 127.0.0.1:…`), so `podIP` and `hostIP` are both `127.0.0.1`. A meshed pod
//! (`agent run --mesh`) has its own loopback address as `podIP` ([`Mesh`]), where
//! its proxy listens; its `linkerd-proxy` container has the proxy's process
//! and is ready once the proxy's `/ready` says so.

use serde_json::{Value, json};

/// The address reported as the pod's and the host's.
pub const POD_IP: &str = "127.0.0.1";

/// What runs a pod's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// `tessera-agent://PID`: the workload's process (`agent run`), or the
    /// agent's own for pods it only projects files for.
    pub container_id: String,
    /// What the process runs (`file:///usr/bin/…`), or empty.
    pub image_id: String,
    /// RFC 3339, to the second.
    pub started_at: String,
}

/// A meshed pod: its own address and its proxy container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    /// The pod's loopback address.
    pub pod_ip: String,
    /// The proxy's process (the `linkerd-proxy` container).
    pub proxy: Process,
    /// Whether the proxy answered `/ready` (the pod is not Ready before).
    pub proxy_ready: bool,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code (128 + the signal for a killed process, as kubelet reports it).
    pub code: i32,
}

impl Exit {
    fn reason(self) -> &'static str {
        if self.code == 0 { "Completed" } else { "Error" }
    }
}

fn condition(type_: &str, status: bool, at: &str, reason: Option<(&str, Option<String>)>) -> Value {
    let mut c = json!({"type": type_, "status": if status { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": at});
    if let Some((reason, message)) = reason {
        c["reason"] = json!(reason);
        if let Some(message) = message {
            c["message"] = json!(message);
        }
    }
    c
}

fn container_names(pod: &Value) -> Vec<(String, String)> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let field = |f: &str| c.get(f).and_then(Value::as_str).unwrap_or_default().to_owned();
            (field("name"), field("image"))
        })
        .collect()
}

fn addresses(mesh: Option<&Mesh>) -> Value {
    let pod_ip = mesh.map_or(POD_IP, |m| m.pod_ip.as_str());
    json!({"hostIP": POD_IP, "hostIPs": [{"ip": POD_IP}], "podIP": pod_ip, "podIPs": [{"ip": pod_ip}]})
}

/// The process of container `name`: the proxy's for a meshed pod's proxy container.
fn process_of<'a>(name: &str, process: &'a Process, mesh: Option<&'a Mesh>) -> &'a Process {
    match mesh {
        Some(mesh) if name == crate::pod::PROXY_CONTAINER => &mesh.proxy,
        _ => process,
    }
}

/// The status of `pod` while `process` runs it.
pub fn running(pod: &Value, process: &Process) -> Value {
    running_meshed(pod, process, None)
}

/// The status of `pod` while `process` runs it, beside its proxy if meshed:
/// not Ready (kubelet's `ContainersNotReady`) until the proxy is ready.
pub fn running_meshed(pod: &Value, process: &Process, mesh: Option<&Mesh>) -> Value {
    let at = process.started_at.as_str();
    let names = container_names(pod);
    let ready_of = |name: &str| mesh.is_none_or(|m| m.proxy_ready || name != crate::pod::PROXY_CONTAINER);
    let statuses: Vec<Value> = names
        .iter()
        .map(|(name, image)| {
            let process = process_of(name, process, mesh);
            json!({"name": name, "ready": ready_of(name), "started": true, "restartCount": 0, "image": image, "imageID": process.image_id,
                "containerID": process.container_id, "state": {"running": {"startedAt": process.started_at}}})
        })
        .collect();
    let unready: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).filter(|n| !ready_of(n)).collect();
    let ready = unready.is_empty();
    let not_ready = (!ready).then(|| ("ContainersNotReady", Some(format!("containers with unready status: [{}]", unready.join(" ")))));
    let mut status = json!({
        "phase": "Running",
        "conditions": [
            condition("PodReadyToStartContainers", true, at, None),
            condition("Initialized", true, at, None),
            condition("Ready", ready, at, not_ready.clone()),
            condition("ContainersReady", ready, at, not_ready),
            condition("PodScheduled", true, at, None),
        ],
        "startTime": at,
        "containerStatuses": statuses,
    });
    merge(&mut status, addresses(mesh));
    status
}

/// The status of `pod` after `process` ended with `exit` at `finished_at`:
/// `Succeeded` for exit code 0, else `Failed` (kubelet's phases for
/// `restartPolicy: Never`), and kubelet's conditions for a finished pod.
pub fn terminated(pod: &Value, process: &Process, exit: Exit, finished_at: &str) -> Value {
    terminated_meshed(pod, process, None, exit, finished_at)
}

/// [`terminated`] for a pod that may be meshed (its proxy stopped with it).
pub fn terminated_meshed(pod: &Value, process: &Process, mesh: Option<&Mesh>, exit: Exit, finished_at: &str) -> Value {
    let names = container_names(pod);
    let succeeded = exit.code == 0;
    let unready = || {
        let list: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        Some(format!("containers with unready status: [{}]", list.join(" ")))
    };
    let not_ready = if succeeded { ("PodCompleted", None) } else { ("ContainersNotReady", unready()) };
    let statuses: Vec<Value> = names
        .iter()
        .map(|(name, image)| {
            let process = process_of(name, process, mesh);
            json!({"name": name, "ready": false, "started": false, "restartCount": 0, "image": image, "imageID": process.image_id,
                "containerID": process.container_id, "state": {"terminated": {"exitCode": exit.code, "reason": exit.reason(),
                "startedAt": process.started_at, "finishedAt": finished_at, "containerID": process.container_id}}})
        })
        .collect();
    let started = process.started_at.as_str();
    let initialized = if succeeded { Some(("PodCompleted", None)) } else { None };
    let mut status = json!({
        "phase": if succeeded { "Succeeded" } else { "Failed" },
        "conditions": [
            condition("PodReadyToStartContainers", false, finished_at, None),
            condition("Initialized", true, started, initialized),
            condition("Ready", false, finished_at, Some(not_ready.clone())),
            condition("ContainersReady", false, finished_at, Some(not_ready)),
            condition("PodScheduled", true, started, None),
        ],
        "startTime": started,
        "containerStatuses": statuses,
    });
    merge(&mut status, addresses(mesh));
    status
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

/// Whether the server's copy says what the agent reported: same phase and
/// the same Ready condition (the node lifecycle controller flips Ready when
/// heartbeats were missed; the agent then reports again).
pub fn agrees(server: &Value, reported: &Value) -> bool {
    let ready = |s: &Value| {
        s.get("conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
            .and_then(|c| c.get("status").cloned())
    };
    server.get("phase") == reported.get("phase") && ready(server) == ready(reported)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({"spec": {"containers": [{"name": "workload", "image": "tessera.local/workload"}]}})
    }

    fn process() -> Process {
        Process { container_id: "tessera-agent://42".into(), image_id: "file:///usr/bin/sleep".into(), started_at: "2026-12-05T23:00:00Z".into() }
    }

    #[test]
    fn running_is_ready_with_addresses_and_a_running_container() {
        let status = running(&pod(), &process());
        let typed: k8s_openapi::api::core::v1::PodStatus = serde_json::from_value(status.clone()).expect("a valid PodStatus");
        assert_eq!(typed.phase.as_deref(), Some("Running"));
        assert_eq!(status["podIP"], "127.0.0.1");
        assert_eq!(status["podIPs"], json!([{"ip": "127.0.0.1"}]));
        assert_eq!(status["hostIPs"], json!([{"ip": "127.0.0.1"}]));
        let types: Vec<_> = typed.conditions.unwrap_or_default().into_iter().map(|c| (c.type_, c.status)).collect();
        let true_ = |t: &str| (t.to_owned(), "True".to_owned());
        assert_eq!(types, [true_("PodReadyToStartContainers"), true_("Initialized"), true_("Ready"), true_("ContainersReady"), true_("PodScheduled")]);
        assert_eq!(status["containerStatuses"][0], json!({"name": "workload", "ready": true, "started": true, "restartCount": 0,
            "image": "tessera.local/workload", "imageID": "file:///usr/bin/sleep", "containerID": "tessera-agent://42",
            "state": {"running": {"startedAt": "2026-12-05T23:00:00Z"}}}));
    }

    #[test]
    fn an_exit_is_the_containers_terminated_state_and_the_pods_phase() {
        let failed = terminated(&pod(), &process(), Exit { code: 3 }, "2026-12-05T23:01:00Z");
        assert_eq!(failed["phase"], "Failed");
        assert_eq!(failed["containerStatuses"][0]["state"]["terminated"], json!({"exitCode": 3, "reason": "Error",
            "startedAt": "2026-12-05T23:00:00Z", "finishedAt": "2026-12-05T23:01:00Z", "containerID": "tessera-agent://42"}));
        assert_eq!(failed["conditions"][2]["message"], "containers with unready status: [workload]");
        let done = terminated(&pod(), &process(), Exit { code: 0 }, "2026-12-05T23:01:00Z");
        assert_eq!((&done["phase"], &done["containerStatuses"][0]["state"]["terminated"]["reason"]), (&json!("Succeeded"), &json!("Completed")));
        assert_eq!(done["conditions"][2]["reason"], "PodCompleted");
        assert!(!agrees(&done, &running(&pod(), &process())));
        assert!(agrees(&running(&pod(), &process()), &running(&pod(), &process())));
    }

    #[test]
    fn a_meshed_pod_has_its_own_address_and_is_ready_once_its_proxy_is() {
        let pod = json!({"spec": {"containers": [{"name": "workload", "image": "tessera.local/workload"}, {"name": "linkerd-proxy", "image": "tessera.local/proxy"}]}});
        let proxy = Process { container_id: "tessera-agent://43".into(), image_id: "file:///bin/tessera".into(), started_at: "2026-12-05T23:00:00Z".into() };
        let mut mesh = Mesh { pod_ip: "127.9.8.7".into(), proxy, proxy_ready: false };
        let status = running_meshed(&pod, &process(), Some(&mesh));
        assert_eq!((&status["podIP"], &status["hostIP"]), (&json!("127.9.8.7"), &json!("127.0.0.1")));
        assert_eq!(status["conditions"][2], json!({"type": "Ready", "status": "False", "lastProbeTime": null, "lastTransitionTime": "2026-12-05T23:00:00Z",
            "reason": "ContainersNotReady", "message": "containers with unready status: [linkerd-proxy]"}));
        assert_eq!((&status["containerStatuses"][0]["ready"], &status["containerStatuses"][1]["ready"]), (&json!(true), &json!(false)));
        assert_eq!(status["containerStatuses"][1]["containerID"], "tessera-agent://43");
        mesh.proxy_ready = true;
        let status = running_meshed(&pod, &process(), Some(&mesh));
        assert_eq!(status["conditions"][2]["status"], "True");
        assert!(status["conditions"][2].get("reason").is_none());
        let done = terminated_meshed(&pod, &process(), Some(&mesh), Exit { code: 0 }, "2026-12-05T23:01:00Z");
        assert_eq!((&done["podIP"], &done["containerStatuses"][1]["containerID"]), (&json!("127.9.8.7"), &json!("tessera-agent://43")));
    }
}
