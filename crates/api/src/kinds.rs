//! What each stored kind does beyond generic object handling: defaulting,
//! validation, selectable fields and `kubectl get` columns.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::resource::ResourceInfo;
use crate::status::{StatusCause, field};
use crate::validation;

/// Sets defaults on a new or updated object, the way kube-apiserver's defaulters do.
pub fn default_object(resource: &ResourceInfo, obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else { return };
    match resource.plural {
        "namespaces" => {
            let name = map.pointer_str("/metadata/name").unwrap_or_default();
            let meta = object_at(map, "metadata");
            let labels = object_at(meta, "labels");
            labels.insert("kubernetes.io/metadata.name".into(), Value::String(name));
            let spec = object_at(map, "spec");
            spec.entry("finalizers").or_insert_with(|| json!(["kubernetes"]));
            let status = object_at(map, "status");
            status.entry("phase").or_insert_with(|| json!("Active"));
        }
        "secrets" => {
            map.entry("type").or_insert_with(|| json!("Opaque"));
            // `stringData` is write-only: merged into `data` (base64) and dropped.
            if let Some(Value::Object(string_data)) = map.remove("stringData") {
                let data = object_at(map, "data");
                for (k, v) in string_data {
                    let raw = v.as_str().unwrap_or_default();
                    data.insert(k, Value::String(base64::engine::general_purpose::STANDARD.encode(raw)));
                }
            }
        }
        "rolebindings" | "clusterrolebindings" => {
            if let Some(Value::Array(subjects)) = map.get_mut("subjects") {
                for s in subjects.iter_mut().filter_map(Value::as_object_mut) {
                    let group = match s.get("kind").and_then(Value::as_str) {
                        Some("User" | "Group") => "rbac.authorization.k8s.io",
                        _ => "",
                    };
                    if s.get("apiGroup").and_then(Value::as_str).is_none_or(str::is_empty) && !group.is_empty() {
                        s.insert("apiGroup".into(), json!(group));
                    }
                }
            }
        }
        "pods" => {
            let spec = object_at(map, "spec");
            let sa = spec.get("serviceAccountName").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
            let sa = sa.or_else(|| spec.get("serviceAccount").and_then(Value::as_str).map(str::to_owned));
            let sa = sa.unwrap_or_else(|| "default".to_owned());
            spec.insert("serviceAccountName".into(), json!(sa));
            spec.insert("serviceAccount".into(), json!(sa));
            spec.entry("restartPolicy").or_insert_with(|| json!("Always"));
            spec.entry("dnsPolicy").or_insert_with(|| json!("ClusterFirst"));
            spec.entry("schedulerName").or_insert_with(|| json!("default-scheduler"));
            spec.entry("terminationGracePeriodSeconds").or_insert_with(|| json!(30));
            spec.entry("enableServiceLinks").or_insert_with(|| json!(true));
            if let Some(Value::Array(containers)) = spec.get_mut("containers") {
                for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                    c.entry("terminationMessagePath").or_insert_with(|| json!("/dev/termination-log"));
                    c.entry("terminationMessagePolicy").or_insert_with(|| json!("File"));
                    let latest = c.get("image").and_then(Value::as_str).is_some_and(|i| !i.contains(':') || i.ends_with(":latest"));
                    c.entry("imagePullPolicy").or_insert_with(|| json!(if latest { "Always" } else { "IfNotPresent" }));
                }
            }
            // kube's v1 volume defaults: file modes 0644, projected tokens for an hour.
            if let Some(Value::Array(volumes)) = spec.get_mut("volumes") {
                for volume in volumes.iter_mut().filter_map(Value::as_object_mut) {
                    for kind in ["projected", "configMap", "secret", "downwardAPI"] {
                        if let Some(Value::Object(source)) = volume.get_mut(kind) {
                            source.entry("defaultMode").or_insert_with(|| json!(420));
                        }
                    }
                    let sources = volume.get_mut("projected").and_then(|p| p.get_mut("sources")).and_then(Value::as_array_mut);
                    for token in sources.into_iter().flatten().filter_map(|s| s.get_mut("serviceAccountToken")).filter_map(Value::as_object_mut) {
                        token.entry("expirationSeconds").or_insert_with(|| json!(3600));
                    }
                }
            }
            let status = object_at(map, "status");
            status.entry("phase").or_insert_with(|| json!("Pending"));
        }
        "services" => crate::service::default_service(map),
        "endpointslices" => crate::endpointslice::default_slice(map),
        _ if crate::policy::is_policy(resource) => crate::policy::default_object(resource, obj),
        _ => {}
    }
}

trait PointerStr {
    fn pointer_str(&self, pointer: &str) -> Option<String>;
}

impl PointerStr for Map<String, Value> {
    fn pointer_str(&self, pointer: &str) -> Option<String> {
        let mut parts = pointer.trim_start_matches('/').split('/');
        let first = parts.next()?;
        let mut cur = self.get(first)?;
        for p in parts {
            cur = cur.get(p)?;
        }
        cur.as_str().map(str::to_owned)
    }
}

/// The object under `key`, created (or replaced, if not an object) as needed.
fn object_at<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map.entry(key.to_owned()).or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        // The slot was made an object just above.
        _ => unreachable!("slot is an object"),
    }
}

/// Validates an object (with its previous version on update). Returns field errors.
pub fn validate(resource: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<StatusCause> {
    let mut causes = Vec::new();
    let meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        causes.push(field::required("metadata.name", "name or generateName is required"));
    } else if resource.plural == "namespaces" {
        validation::push_invalid(&mut causes, "metadata.name", name, validation::dns1123_label(name));
    } else if resource.plural == "services" {
        // DNS-1035 label: checked with the rest of the Service.
    } else if resource.group == "rbac.authorization.k8s.io" {
        // RBAC names are path segments (`system:auth-delegator`), not DNS names.
        validation::push_invalid(&mut causes, "metadata.name", name, validation::path_segment(name));
    } else {
        validation::push_invalid(&mut causes, "metadata.name", name, validation::dns1123_subdomain(name));
    }
    if let Some(old_meta) = old.and_then(|o| o.get("metadata")) {
        validation::no_new_finalizers(&meta, old_meta, &mut causes);
    }
    validation::labels_and_annotations(&meta, &mut causes);
    validation::owners_and_finalizers(&meta, &mut causes);

    match resource.plural {
        "configmaps" => {
            if let Some(old) = old {
                validation::immutable_data(obj, old, &["data", "binaryData"], &mut causes);
            }
            for section in ["data", "binaryData"] {
                if let Some(data) = obj.get(section).and_then(Value::as_object) {
                    for k in data.keys() {
                        validation::push_invalid(&mut causes, &format!("{section}[{k}]"), k, validation::config_key(k));
                    }
                }
            }
        }
        "secrets" => {
            if let Some(data) = obj.get("data").and_then(Value::as_object) {
                for k in data.keys() {
                    validation::push_invalid(&mut causes, &format!("data[{k}]"), k, validation::config_key(k));
                }
            }
            let ty = obj.get("type").and_then(Value::as_str).unwrap_or_default();
            if let Some(old_ty) = old.and_then(|o| o.get("type")).and_then(Value::as_str)
                && old_ty != ty
            {
                causes.push(field::invalid("type", &json!(ty), "field is immutable"));
            }
            if let Some(old) = old {
                validation::immutable_data(obj, old, &["data"], &mut causes);
            }
            if ty == "kubernetes.io/service-account-token"
                && meta.pointer("/annotations/kubernetes.io~1service-account.name").and_then(Value::as_str).is_none_or(str::is_empty)
            {
                causes.push(field::required("metadata.annotations[kubernetes.io/service-account.name]", ""));
            }
        }
        "rolebindings" | "clusterrolebindings" => {
            let role_ref = obj.get("roleRef");
            let kind = role_ref.and_then(|r| r.get("kind")).and_then(Value::as_str).unwrap_or_default();
            let allowed: &[&str] = if resource.plural == "rolebindings" { &["Role", "ClusterRole"] } else { &["ClusterRole"] };
            if !allowed.contains(&kind) {
                causes.push(field::not_supported("roleRef.kind", &json!(kind), allowed));
            }
            if role_ref.and_then(|r| r.get("name")).and_then(Value::as_str).is_none_or(str::is_empty) {
                causes.push(field::required("roleRef.name", ""));
            }
            if role_ref.and_then(|r| r.get("apiGroup")).and_then(Value::as_str) != Some("rbac.authorization.k8s.io") {
                causes.push(field::not_supported("roleRef.apiGroup", role_ref.and_then(|r| r.get("apiGroup")).unwrap_or(&Value::Null), &["rbac.authorization.k8s.io"]));
            }
            if let Some(old) = old
                && old.get("roleRef") != obj.get("roleRef")
            {
                causes.push(field::invalid("roleRef", obj.get("roleRef").unwrap_or(&Value::Null), "cannot change roleRef"));
            }
            for (i, s) in obj.get("subjects").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let kind = s.get("kind").and_then(Value::as_str).unwrap_or_default();
                if !["User", "Group", "ServiceAccount"].contains(&kind) {
                    causes.push(field::not_supported(&format!("subjects[{i}].kind"), &json!(kind), &["ServiceAccount", "User", "Group"]));
                }
                if s.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                    causes.push(field::required(&format!("subjects[{i}].name"), ""));
                }
                if kind == "ServiceAccount"
                    && resource.plural == "clusterrolebindings"
                    && s.get("namespace").and_then(Value::as_str).is_none_or(str::is_empty)
                {
                    causes.push(field::required(&format!("subjects[{i}].namespace"), ""));
                }
            }
        }
        "pods" => {
            let containers = obj.pointer("/spec/containers").and_then(Value::as_array);
            match containers {
                None => causes.push(field::required("spec.containers", "")),
                Some(list) if list.is_empty() => causes.push(field::required("spec.containers", "")),
                Some(list) => {
                    for (i, c) in list.iter().enumerate() {
                        let cname = c.get("name").and_then(Value::as_str).unwrap_or_default();
                        if cname.is_empty() {
                            causes.push(field::required(&format!("spec.containers[{i}].name"), ""));
                        } else {
                            validation::push_invalid(&mut causes, &format!("spec.containers[{i}].name"), cname, validation::dns1123_label(cname));
                        }
                        if c.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
                            causes.push(field::required(&format!("spec.containers[{i}].image"), ""));
                        }
                    }
                }
            }
            if let Some(old) = old {
                // Compared as defaulted today: a pod stored before a default was added still updates.
                let mut defaulted = old.clone();
                default_object(resource, &mut defaulted);
                let old = &defaulted;
                // The injected token volume and its mounts stay as admission made them.
                for path in ["/spec/serviceAccountName", "/spec/nodeName", "/spec/volumes", "/spec/automountServiceAccountToken"] {
                    let (now, before) = (obj.pointer(path), old.pointer(path));
                    // nodeName may be set once (binding); otherwise the pod spec is immutable here.
                    if now != before && !(path == "/spec/nodeName" && before.is_none()) {
                        causes.push(field::forbidden(
                            "spec",
                            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                        ));
                        break;
                    }
                }
            }
        }
        "services" => crate::service::validate(obj, old, &mut causes),
        "endpointslices" => crate::endpointslice::validate(obj, old, &mut causes),
        _ if crate::policy::is_policy(resource) => crate::policy::validate(resource, obj, &mut causes),
        "leases" => {
            // kube's ValidateLeaseSpec.
            if let Some(d) = obj.pointer("/spec/leaseDurationSeconds").and_then(Value::as_i64)
                && d <= 0
            {
                causes.push(field::invalid("spec.leaseDurationSeconds", &json!(d), "must be greater than 0"));
            }
            if let Some(t) = obj.pointer("/spec/leaseTransitions").and_then(Value::as_i64)
                && t < 0
            {
                causes.push(field::invalid("spec.leaseTransitions", &json!(t), "must be greater than or equal to 0"));
            }
        }
        _ => {}
    }
    causes
}

/// Whether a PUT without `metadata.resourceVersion` may overwrite the stored
/// object (kube's `AllowUnconditionalUpdate`). Leases refuse it so that no
/// candidate in a leader election can clobber another's renewal.
pub fn allows_unconditional_update(resource: &ResourceInfo) -> bool {
    !matches!((resource.group, resource.plural), ("coordination.k8s.io", "leases"))
}

/// Whether a PUT to a missing object creates it: kube's
/// `AllowCreateOnUpdate()`, true for Leases, core Events and the RBAC kinds,
/// false for the other kinds tessera stores.
pub fn allows_create_on_update(resource: &ResourceInfo) -> bool {
    matches!(
        (resource.group, resource.plural),
        ("coordination.k8s.io", "leases")
            | ("", "events")
            | ("rbac.authorization.k8s.io", "roles" | "rolebindings" | "clusterroles" | "clusterrolebindings")
    )
}

/// kube's refusal of an update without a resourceVersion where
/// [`allows_unconditional_update`] is false (the value is Go's `%#v` of 0).
pub fn unconditional_update_refused() -> StatusCause {
    StatusCause {
        reason: "FieldValueInvalid".into(),
        message: "Invalid value: 0x0: must be specified for an update".into(),
        field: "metadata.resourceVersion".into(),
    }
}

/// Fields usable in a `fieldSelector` besides `metadata.name`/`metadata.namespace`.
pub fn selectable_fields(resource: &ResourceInfo) -> &'static [&'static str] {
    match resource.plural {
        "pods" => &["spec.nodeName", "spec.serviceAccountName", "status.phase", "spec.restartPolicy", "spec.schedulerName", "status.podIP"],
        "secrets" => &["type"],
        "namespaces" => &["status.phase"],
        "nodes" => &["spec.unschedulable"],
        "services" => &["spec.clusterIP", "spec.type"],
        "events" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        _ => &[],
    }
}

/// A `kubectl get` column.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Header.
    pub name: &'static str,
    /// `string`, `integer` or `date`.
    pub type_: &'static str,
    /// `name` for the first column, else empty.
    pub format: &'static str,
    /// Help text.
    pub description: &'static str,
    /// Shown only with `-o wide`.
    pub priority: i32,
}

const NAME: Column = Column { name: "Name", type_: "string", format: "name", description: "Name must be unique within a namespace.", priority: 0 };
const AGE: Column = Column { name: "Age", type_: "string", format: "", description: "CreationTimestamp is a timestamp representing the server time when this object was created.", priority: 0 };

/// Table columns for `kubectl get`.
pub fn columns(resource: &ResourceInfo) -> Vec<Column> {
    if crate::policy::is_policy(resource) {
        return crate::policy::columns(resource);
    }
    let c = |name, type_, description| Column { name, type_, format: "", description, priority: 0 };
    match resource.plural {
        "namespaces" => vec![NAME, c("Status", "string", "The status of the namespace"), AGE],
        "serviceaccounts" => vec![NAME, c("Secrets", "string", "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."), AGE],
        "secrets" => vec![NAME, c("Type", "string", "The type of the secret"), c("Data", "string", "The number of entries in the secret"), AGE],
        "configmaps" => vec![NAME, c("Data", "string", "Data contains the configuration data."), AGE],
        "pods" => vec![
            NAME,
            c("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
            c("Status", "string", "The aggregate status of the containers in this pod."),
            c("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            AGE,
            Column { name: "IP", type_: "string", format: "", description: "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.", priority: 1 },
            Column { name: "Node", type_: "string", format: "", description: "Specifies the node that the pod is scheduled on.", priority: 1 },
            Column { name: "Nominated Node", type_: "string", format: "", description: "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot schedule right away as preemption victims receive their graceful termination periods.", priority: 1 },
            Column { name: "Readiness Gates", type_: "string", format: "", description: "If specified, all readiness gates will be evaluated for pod readiness. A pod is ready when all its containers are ready AND all conditions specified in the readiness gates have status equal to \"True\"", priority: 1 },
        ],
        "clusterrolebindings" | "rolebindings" => vec![
            NAME,
            c("Role", "string", "The role this binding grants"),
            AGE,
            Column { name: "Users", type_: "string", format: "", description: "Users in the binding", priority: 1 },
            Column { name: "Groups", type_: "string", format: "", description: "Groups in the binding", priority: 1 },
            Column { name: "ServiceAccounts", type_: "string", format: "", description: "ServiceAccounts in the binding", priority: 1 },
        ],
        "clusterroles" | "roles" => vec![NAME, c("Created At", "date", "Time when the role was created")],
        "nodes" => {
            let wide = |name, description| Column { name, type_: "string", format: "", description, priority: 1 };
            vec![
                NAME,
                c("Status", "string", "The status of the node"),
                c("Roles", "string", "The roles of the node"),
                AGE,
                c("Version", "string", "Kubelet Version reported by the node."),
                wide("Internal-IP", "List of addresses reachable to the node. Queried from cloud provider, if available."),
                wide("External-IP", "List of addresses reachable to the node. Queried from cloud provider, if available."),
                wide("OS-Image", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
                wide("Kernel-Version", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
                wide("Container-Runtime", "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
            ]
        }
        "services" => vec![
            NAME,
            c("Type", "string", "The type of service."),
            c("Cluster-IP", "string", "The cluster IP of the service."),
            c("External-IP", "string", "The external IP of the service."),
            c("Port(s)", "string", "The ports of the service."),
            AGE,
            Column { name: "Selector", type_: "string", format: "", description: "Route service traffic to pods with label keys and values matching this selector.", priority: 1 },
        ],
        "endpointslices" => vec![
            NAME,
            c("AddressType", "string", "The IP protocol for this slice."),
            c("Ports", "string", "The ports in this slice."),
            c("Endpoints", "string", "Endpoints in this slice."),
            AGE,
        ],
        "leases" => vec![NAME, c("Holder", "string", "holderIdentity contains the identity of the holder of a current lease."), AGE],
        "events" => vec![
            c("Last Seen", "string", "Time when last event occurred"),
            c("Type", "string", "Type of this event (Normal, Warning), new types could be added in the future."),
            c("Reason", "string", "Reason is why the action was taken."),
            c("Object", "string", "The object this Event is about"),
            c("Message", "string", "A human-readable description of the status of this operation."),
        ],
        _ => vec![NAME, AGE],
    }
}

/// Formats an age the way kubectl does (`5s`, `3m2s`, `4h`, `2d3h`).
pub fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{}m{}s", s / 60, s % 60),
        600..10800 => format!("{}m", s / 60),
        10800..28800 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        28800..172800 => format!("{}h", s / 3600),
        172800..2592000 => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn age_of(obj: &Value, field: &str, now: jiff::Timestamp) -> String {
    obj.pointer(field)
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| human_age(now.as_second() - t.as_second()))
        .unwrap_or_else(|| "<unknown>".to_owned())
}

/// kubectl's node STATUS: `Ready`, `NotReady` (the Ready condition is False
/// or Unknown) or `Unknown` (no Ready condition), plus `SchedulingDisabled`.
fn node_status(obj: &Value) -> String {
    let ready = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        .map(|c| c.get("status").and_then(Value::as_str) == Some("True"));
    let mut status = vec![match ready {
        Some(true) => "Ready",
        Some(false) => "NotReady",
        None => "Unknown",
    }];
    if obj.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled");
    }
    status.join(",")
}

/// kubectl's node ROLES: `node-role.kubernetes.io/ROLE` labels and the
/// `kubernetes.io/role` label, sorted, or `<none>`.
fn node_roles(obj: &Value) -> String {
    let mut roles = std::collections::BTreeSet::new();
    for (key, value) in obj.pointer("/metadata/labels").and_then(Value::as_object).into_iter().flatten() {
        if let Some(role) = key.strip_prefix("node-role.kubernetes.io/").filter(|r| !r.is_empty()) {
            roles.insert(role.to_owned());
        } else if key == "kubernetes.io/role"
            && let Some(role) = value.as_str().filter(|r| !r.is_empty())
        {
            roles.insert(role.to_owned());
        }
    }
    if roles.is_empty() { "<none>".to_owned() } else { roles.into_iter().collect::<Vec<_>>().join(",") }
}

/// A pod's READY, STATUS and RESTARTS cells.
struct PodSummary {
    ready: String,
    status: String,
    restarts: String,
}

/// kubectl's pod columns (kube's `printPod`, without init containers'
/// `Init:` states): STATUS is the phase (or `status.reason`), overridden by a
/// container's waiting or terminated reason (`ExitCode:N` / `Signal:N` when
/// it has none); RESTARTS adds up restart counts, with the age of the last
/// restart when known.
fn pod_summary(obj: &Value, now: jiff::Timestamp) -> PodSummary {
    let str_at = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    let total = obj.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
    let mut reason = str_at(obj, "/status/reason").or_else(|| str_at(obj, "/status/phase")).unwrap_or_else(|| "Pending".to_owned());
    let (mut ready, mut restarts, mut has_running) = (0, 0, false);
    let mut last_restart: Option<jiff::Timestamp> = None;
    let statuses = obj.pointer("/status/containerStatuses").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for c in statuses.iter().rev() {
        restarts += c.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
        if let Some(finished) = str_at(c, "/lastState/terminated/finishedAt").and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
            last_restart = Some(last_restart.map_or(finished, |l| l.max(finished)));
        }
        if let Some(waiting) = str_at(c, "/state/waiting/reason") {
            reason = waiting;
        } else if let Some(terminated) = str_at(c, "/state/terminated/reason") {
            reason = terminated;
        } else if let Some(terminated) = c.pointer("/state/terminated").filter(|t| t.is_object()) {
            let signal = terminated.get("signal").and_then(Value::as_i64).unwrap_or(0);
            let code = terminated.get("exitCode").and_then(Value::as_i64).unwrap_or(0);
            reason = if signal != 0 { format!("Signal:{signal}") } else { format!("ExitCode:{code}") };
        } else if c.get("ready").and_then(Value::as_bool) == Some(true) && c.pointer("/state/running").is_some_and(Value::is_object) {
            has_running = true;
            ready += 1;
        }
    }
    if reason == "Completed" && has_running {
        let pod_ready = obj.pointer("/status/conditions").and_then(Value::as_array).into_iter().flatten().any(|c| {
            c.get("type").and_then(Value::as_str) == Some("Ready") && c.get("status").and_then(Value::as_str) == Some("True")
        });
        reason = if pod_ready { "Running" } else { "NotReady" }.to_owned();
    }
    if obj.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
        reason = if str_at(obj, "/status/reason").as_deref() == Some("NodeLost") { "Unknown" } else { "Terminating" }.to_owned();
    }
    let restarts = match last_restart {
        Some(at) => format!("{restarts} ({} ago)", human_age(now.as_second() - at.as_second())),
        None => restarts.to_string(),
    };
    PodSummary { ready: format!("{ready}/{total}"), status: reason, restarts }
}

/// The cells of one table row.
pub fn row_cells(resource: &ResourceInfo, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    if crate::policy::is_policy(resource) {
        return crate::policy::row_cells(resource, obj, now);
    }
    let name = json!(obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default());
    let age = json!(age_of(obj, "/metadata/creationTimestamp", now));
    let count = |p: &str| obj.pointer(p).and_then(Value::as_object).map_or(0, Map::len);
    match resource.plural {
        "namespaces" => vec![name, obj.pointer("/status/phase").cloned().unwrap_or(json!("")), age],
        "serviceaccounts" => vec![name, json!(obj.get("secrets").and_then(Value::as_array).map_or(0, Vec::len)), age],
        "secrets" => vec![name, obj.get("type").cloned().unwrap_or(json!("")), json!(count("/data")), age],
        "configmaps" => vec![name, json!(count("/data") + count("/binaryData")), age],
        "pods" => {
            let summary = pod_summary(obj, now);
            let text = |p: &str| json!(obj.pointer(p).and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("<none>"));
            let gates = obj.pointer("/spec/readinessGates").and_then(Value::as_array).map_or(0, Vec::len);
            let gates = if gates == 0 {
                "<none>".to_owned()
            } else {
                let conditions = obj.pointer("/status/conditions").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
                let met = obj.pointer("/spec/readinessGates").and_then(Value::as_array).into_iter().flatten().filter(|g| {
                    conditions.iter().any(|c| c.get("type") == g.get("conditionType") && c.get("status").and_then(Value::as_str) == Some("True"))
                });
                format!("{}/{gates}", met.count())
            };
            vec![
                name,
                json!(summary.ready),
                json!(summary.status),
                json!(summary.restarts),
                age,
                text("/status/podIP"),
                text("/spec/nodeName"),
                text("/status/nominatedNodeName"),
                json!(gates),
            ]
        }
        "clusterrolebindings" | "rolebindings" => {
            let role = format!(
                "{}/{}",
                obj.pointer("/roleRef/kind").and_then(Value::as_str).unwrap_or_default(),
                obj.pointer("/roleRef/name").and_then(Value::as_str).unwrap_or_default()
            );
            let of_kind = |k: &str| {
                let names: Vec<String> = obj
                    .get("subjects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|s| s.get("kind").and_then(Value::as_str) == Some(k))
                    .map(|s| {
                        let name = s.get("name").and_then(Value::as_str).unwrap_or_default();
                        match s.get("namespace").and_then(Value::as_str) {
                            Some(ns) if k == "ServiceAccount" => format!("{ns}/{name}"),
                            _ => name.to_owned(),
                        }
                    })
                    .collect();
                json!(names.join(", "))
            };
            vec![name, json!(role), age, of_kind("User"), of_kind("Group"), of_kind("ServiceAccount")]
        }
        "clusterroles" | "roles" => vec![name, obj.pointer("/metadata/creationTimestamp").cloned().unwrap_or(json!(""))],
        "nodes" => {
            let text = |p: &str, missing: &str| json!(obj.pointer(p).and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or(missing));
            let address = |kind: &str| {
                let found = obj
                    .pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|a| a.get("type").and_then(Value::as_str) == Some(kind))
                    .and_then(|a| a.get("address").and_then(Value::as_str));
                json!(found.unwrap_or("<none>"))
            };
            vec![
                name,
                json!(node_status(obj)),
                json!(node_roles(obj)),
                age,
                text("/status/nodeInfo/kubeletVersion", ""),
                address("InternalIP"),
                address("ExternalIP"),
                text("/status/nodeInfo/osImage", "<unknown>"),
                text("/status/nodeInfo/kernelVersion", "<unknown>"),
                text("/status/nodeInfo/containerRuntimeVersion", "<unknown>"),
            ]
        }
        "services" => {
            let (ty, cluster_ip, external, ports, selector) = crate::service::row(obj);
            vec![name, ty, cluster_ip, external, ports, age, selector]
        }
        "endpointslices" => {
            let (address_type, ports, endpoints) = crate::endpointslice::row(obj);
            vec![name, address_type, ports, endpoints, age]
        }
        "leases" => vec![name, json!(obj.pointer("/spec/holderIdentity").and_then(Value::as_str).unwrap_or_default()), age],
        "events" => {
            let last = if obj.pointer("/lastTimestamp").is_some_and(|v| !v.is_null()) { "/lastTimestamp" } else { "/metadata/creationTimestamp" };
            let kind = obj.pointer("/involvedObject/kind").and_then(Value::as_str).unwrap_or_default().to_lowercase();
            let oname = obj.pointer("/involvedObject/name").and_then(Value::as_str).unwrap_or_default();
            vec![
                json!(age_of(obj, last, now)),
                obj.get("type").cloned().unwrap_or(json!("")),
                obj.get("reason").cloned().unwrap_or(json!("")),
                json!(format!("{kind}/{oname}")),
                obj.get("message").cloned().unwrap_or(json!("")),
            ]
        }
        _ => vec![name, age],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{CORE_PODS, CORE_SECRETS};

    #[test]
    fn secret_string_data_becomes_base64_data() {
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"a": "hello"}});
        default_object(&CORE_SECRETS, &mut s);
        assert_eq!(s["data"]["a"], "aGVsbG8=");
        assert_eq!(s["type"], "Opaque");
        assert!(s.get("stringData").is_none());
    }

    #[test]
    fn pod_rows_like_kubectl() {
        let now = jiff::Timestamp::now();
        let running = json!({
            "metadata": {"name": "web"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1", "containerStatuses": [{"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}}]},
        });
        let cells = row_cells(&CORE_PODS, &running, now);
        assert_eq!(cells.len(), columns(&CORE_PODS).len());
        assert_eq!(cells[1..4], [json!("1/1"), json!("Running"), json!("0")]);
        assert_eq!(cells[5..], [json!("127.0.0.1"), json!("n1"), json!("<none>"), json!("<none>")]);
        let finished = (now - jiff::SignedDuration::from_secs(30)).to_string();
        let failed = json!({
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "a", "ready": false, "restartCount": 2,
                "lastState": {"terminated": {"exitCode": 1, "finishedAt": finished}}, "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]},
        });
        let cells = row_cells(&CORE_PODS, &failed, now);
        assert_eq!(cells[1..4], [json!("0/1"), json!("Error"), json!("2 (30s ago)")]);
        assert_eq!(cells[5..7], [json!("<none>"), json!("<none>")]);
        let mut no_reason = failed.clone();
        no_reason["status"]["containerStatuses"][0]["state"] = json!({"terminated": {"exitCode": 3}});
        assert_eq!(row_cells(&CORE_PODS, &no_reason, now)[2], json!("ExitCode:3"));
    }

    #[test]
    fn pod_volumes_get_kubes_defaults() {
        let mut pod = json!({"spec": {"volumes": [
            {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}, {"configMap": {"name": "c"}}]}},
            {"name": "c", "configMap": {"name": "c", "defaultMode": 256}},
            {"name": "e", "emptyDir": {}},
        ]}});
        default_object(&CORE_PODS, &mut pod);
        assert_eq!(pod["spec"]["volumes"], json!([
            {"name": "t", "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {"path": "t", "expirationSeconds": 3600}}, {"configMap": {"name": "c"}}]}},
            {"name": "c", "configMap": {"name": "c", "defaultMode": 256}},
            {"name": "e", "emptyDir": {}},
        ]));
    }

    #[test]
    fn pod_updates_may_not_change_volumes() {
        // As stored before volume defaults existed; updates are validated after defaulting.
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x"}], "volumes": [{"name": "kube-api-access-abcde", "projected": {"sources": []}}]}});
        let mut same = pod.clone();
        default_object(&CORE_PODS, &mut same);
        assert!(validate(&CORE_PODS, &same, Some(&pod)).is_empty(), "{:?}", validate(&CORE_PODS, &same, Some(&pod)));
        let mut changed = same.clone();
        changed["spec"]["volumes"] = json!([]);
        let causes = validate(&CORE_PODS, &changed, Some(&pod));
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec");
    }

    #[test]
    fn pods_need_containers() {
        let causes = validate(&CORE_PODS, &json!({"metadata": {"name": "p"}, "spec": {}}), None);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.containers");
        assert_eq!(causes[0].message, "Required value");
    }

    #[test]
    fn lease_durations_are_positive() {
        use crate::resource::COORDINATION_LEASES;
        let lease = json!({"metadata": {"name": "n1"}, "spec": {"leaseDurationSeconds": 0, "leaseTransitions": -1}});
        let causes = validate(&COORDINATION_LEASES, &lease, None);
        let messages: Vec<_> = causes.iter().map(|c| (c.field.as_str(), c.message.as_str())).collect();
        assert_eq!(messages, [
            ("spec.leaseDurationSeconds", "Invalid value: 0: must be greater than 0"),
            ("spec.leaseTransitions", "Invalid value: -1: must be greater than or equal to 0"),
        ]);
    }

    #[test]
    fn node_rows_like_kubectl() {
        use crate::resource::CORE_NODES;
        let node = json!({
            "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/worker": "", "kubernetes.io/role": "edge"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}], "nodeInfo": {"kubeletVersion": "v1.32.0"}},
        });
        let cells = row_cells(&CORE_NODES, &node, jiff::Timestamp::now());
        assert_eq!(cells[..3], [json!("n1"), json!("NotReady,SchedulingDisabled"), json!("edge,worker")]);
        assert_eq!(cells[4], json!("v1.32.0"));
        assert_eq!(cells[5], json!("<none>"));
        assert_eq!(cells[7], json!("<unknown>"));
        assert_eq!(columns(&CORE_NODES).len(), cells.len());
        let bare = json!({"metadata": {"name": "n2"}});
        assert_eq!(row_cells(&CORE_NODES, &bare, jiff::Timestamp::now())[1..3], [json!("Unknown"), json!("<none>")]);
    }

    #[test]
    fn ages_format_like_kubectl() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(185), "3m5s");
        assert_eq!(human_age(3600), "60m");
        assert_eq!(human_age(4 * 3600 + 120), "4h2m");
        assert_eq!(human_age(3 * 86400), "3d0h");
    }
}
