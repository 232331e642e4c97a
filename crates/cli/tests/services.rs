//! Issue 15, the control-plane side of service discovery, end to end with the
//! real kubectl: Services are a real kind (kube's defaults, columns and 422s,
//! cluster IPs from the service range, the immutable cluster IP); the
//! endpointslice controller fills EndpointSlices from the pods a Service
//! selects; and the destination API answers where an authority leads, with
//! each endpoint's identity, streaming a new answer when a pod stops being
//! ready, for callers RBAC allows only.

#![cfg(unix)]

mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Server, json};

fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let (code, text) = server.curl_admin("POST", path, &["-H", "Content-Type: application/json", "-d", &body.to_string()]);
    (code, json(&text))
}

fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

#[test]
fn kubectl_creates_lists_and_describes_services() {
    let server = Server::start();
    server.kubectl_ok(&["create", "namespace", "data-store"]);
    let out = server.kubectl_ok(&["create", "service", "clusterip", "data-store", "--tcp=8081:8081", "-n", "data-store"]);
    assert_eq!(out, "service/data-store created\n");

    let svc = json(&server.kubectl_ok(&["get", "svc", "data-store", "-n", "data-store", "-o", "json"]));
    let ip = svc["spec"]["clusterIP"].as_str().expect("allocated").to_owned();
    assert!(ip.starts_with("10.") && ip != "10.96.0.1", "{ip}");
    assert_eq!(svc["spec"], json!({
        "clusterIP": ip, "clusterIPs": [ip], "internalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
        "ports": [{"name": "8081-8081", "port": 8081, "protocol": "TCP", "targetPort": 8081}],
        "selector": {"app": "data-store"}, "sessionAffinity": "None", "type": "ClusterIP",
    }));
    assert_eq!(svc["status"], json!({"loadBalancer": {}}));

    let table = server.kubectl_ok(&["get", "svc", "-A"]);
    let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]);
    assert_eq!(lines[1][..6], ["data-store", "data-store", "ClusterIP", ip.as_str(), "<none>", "8081/TCP"]);
    // kube's own Service, at the first address of the range, leading to this server.
    assert_eq!(lines[2][..6], ["default", "kubernetes", "ClusterIP", "10.96.0.1", "<none>", "443/TCP"]);
    let port = server.url.rsplit(':').next().expect("port");
    let slice = json(&server.kubectl_ok(&["get", "endpointslice", "kubernetes", "-n", "default", "-o", "json"]));
    assert_eq!((&slice["endpoints"][0]["addresses"], &slice["ports"][0]["port"]), (&json!(["127.0.0.1"]), &json!(port.parse::<i64>().expect("number"))));

    let wide = server.kubectl_ok(&["get", "svc", "data-store", "-n", "data-store", "-o", "wide"]);
    assert!(wide.lines().next().is_some_and(|h| h.ends_with("SELECTOR")), "{wide}");
    assert!(wide.contains("app=data-store"), "{wide}");
    // Services and EndpointSlices are deleted like any kind; the slice goes with its Service.
    server.eventually(10, "the Service's EndpointSlice", || {
        let slices = server.kubectl_ok(&["get", "endpointslices", "-n", "data-store", "-l", "kubernetes.io/service-name=data-store", "-o", "name"]);
        (!slices.is_empty()).then_some(())
    });
    server.kubectl_ok(&["delete", "svc", "data-store", "-n", "data-store"]);
    server.eventually(10, "the EndpointSlice to go", || {
        let slices = server.kubectl_ok(&["get", "endpointslices", "-n", "data-store", "-o", "name"]);
        slices.is_empty().then_some(())
    });
}

#[test]
fn invalid_services_get_kubes_422s() {
    let server = Server::start();
    let path = "/api/v1/namespaces/default/services";
    let cases = [
        (service("web", json!({"ports": [{"port": 0}]})), "Service \"web\" is invalid: [spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive, spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive]"),
        (service("web", json!({"ports": [{"port": 80}, {"port": 81}]})), "Service \"web\" is invalid: [spec.ports[0].name: Required value, spec.ports[1].name: Required value]"),
        (service("web", json!({"ports": [{"name": "a", "port": 80, "protocol": "ICMP"}]})), "Service \"web\" is invalid: spec.ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\""),
        (service("web", json!({"ports": [{"port": 80, "targetPort": "no_such"}]})), "Service \"web\" is invalid: spec.ports[0].targetPort: Invalid value: \"no_such\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"),
        (service("web", json!({})), "Service \"web\" is invalid: spec.ports: Required value"),
        (service("web", json!({"clusterIP": "10.96.0.300", "ports": [{"port": 80}]})), "Service \"web\" is invalid: spec.clusterIPs[0]: Invalid value: \"10.96.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"),
    ];
    for (body, message) in cases {
        let (code, status) = post(&server, path, &body);
        assert_eq!((code, status["message"].as_str()), (422, Some(message)), "{body}");
        assert_eq!(status["reason"], "Invalid");
    }
    // Through kubectl: the same message, as kube-apiserver's.
    let out = server.kubectl_stdin(&["create", "-f", "-"], "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 70000\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "The Service \"web\" is invalid: \n* spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive\n* spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive\n"
    );
}

#[test]
fn cluster_ips_are_exclusive_and_immutable() {
    let server = Server::start();
    let path = "/api/v1/namespaces/default/services";
    let (code, first) = post(&server, path, &service("first", json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]})));
    assert_eq!((code, &first["spec"]["clusterIPs"]), (201, &json!(["10.96.0.50"])), "{first}");
    let (code, taken) = post(&server, path, &service("second", json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]})));
    assert_eq!(code, 422);
    assert_eq!(taken["message"], "Service \"second\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.50\"}: failed to allocate IP 10.96.0.50: provided IP is already allocated");
    let (code, outside) = post(&server, path, &service("third", json!({"clusterIP": "192.168.0.1", "ports": [{"port": 80}]})));
    assert_eq!(code, 422);
    assert_eq!(outside["message"], "Service \"third\" is invalid: spec.clusterIPs: Invalid value: []string{\"192.168.0.1\"}: failed to allocate IP 192.168.0.1: the provided IP (192.168.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/12");
    // A refused create claims nothing: the name is free. An existing name is 409, whatever the IP.
    server.kubectl_err(&["get", "svc", "second"]);
    let (code, exists) = post(&server, path, &service("first", json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]})));
    assert_eq!((code, exists["message"].as_str()), (409, Some("services \"first\" already exists")));

    let err = server.kubectl_err(&["patch", "svc", "first", "--type=merge", "-p", r#"{"spec":{"clusterIP":"10.96.0.51"}}"#]);
    assert_eq!(err, "The Service \"first\" is invalid: spec.clusterIPs[0]: Invalid value: []string{\"10.96.0.51\"}: may not change once set\n");
    // Patching other fields (an old client that sends no clusterIPs) keeps it.
    server.kubectl_ok(&["patch", "svc", "first", "--type=merge", "-p", r#"{"spec":{"selector":{"app":"web"}}}"#]);
    let svc = json(&server.kubectl_ok(&["get", "svc", "first", "-o", "json"]));
    assert_eq!((&svc["spec"]["clusterIP"], &svc["spec"]["selector"]), (&json!("10.96.0.50"), &json!({"app": "web"})));

    let (code, headless) = post(&server, path, &service("headless", json!({"clusterIP": "None", "selector": {"app": "web"}})));
    assert_eq!((code, &headless["spec"]["clusterIPs"], &headless["spec"]["ipFamilyPolicy"]), (201, &json!(["None"]), &json!("SingleStack")), "{headless}");

    // A Service that stops being ExternalName gets a cluster IP.
    let (code, _) = post(&server, path, &service("external", json!({"type": "ExternalName", "externalName": "example.com"})));
    assert_eq!(code, 201);
    server.kubectl_ok(&["patch", "svc", "external", "--type=merge", "-p", r#"{"spec":{"type":"ClusterIP","externalName":null,"ports":[{"port":80}]}}"#]);
    let svc = json(&server.kubectl_ok(&["get", "svc", "external", "-o", "json"]));
    assert!(svc["spec"]["clusterIP"].as_str().is_some_and(|ip| ip.starts_with("10.")), "{svc}");
    assert_eq!(svc["spec"]["clusterIPs"], json!([svc["spec"]["clusterIP"].clone()]));

    // Deleting a Service gives its IP back (the leader releases it).
    server.kubectl_ok(&["delete", "svc", "first"]);
    server.eventually(10, "the IP to be released", || {
        let (code, _) = post(&server, path, &service("again", json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]})));
        (code == 201).then_some(())
    });
}

/// A pod with a named port, created through the API, then given an IP and a Ready condition.
fn running_pod(server: &Server, ns: &str, name: &str, ip: &str, meshed: bool) {
    let annotations = if meshed { json!({"linkerd.io/inject": "enabled"}) } else { json!({}) };
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "data-store"}, "annotations": annotations},
        "spec": {"serviceAccountName": "data-store", "containers": [{"name": "app", "image": "data-store", "ports": [{"name": "http", "containerPort": 9000}]}]}});
    let (code, body) = post(server, &format!("/api/v1/namespaces/{ns}/pods"), &pod);
    assert_eq!(code, 201, "{body}");
    set_ready(server, ns, name, ip, true);
}

fn set_ready(server: &Server, ns: &str, name: &str, ip: &str, ready: bool) {
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
    server.kubectl_ok(&["patch", "pod", name, "-n", ns, "--subresource=status", "--type=merge", "-p", &status.to_string()]);
}

#[test]
fn endpoint_slices_follow_pods_and_the_destination_api_answers() {
    let server = Server::start();
    server.kubectl_ok(&["create", "namespace", "data-store"]);
    server.kubectl_ok(&["create", "serviceaccount", "data-store", "-n", "data-store"]);
    let (code, svc) = post(&server, "/api/v1/namespaces/data-store/services", &json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "data-store"}, "spec": {"selector": {"app": "data-store"}, "ports": [{"name": "http", "port": 8081, "targetPort": "http"}]}}));
    assert_eq!(code, 201, "{svc}");
    let cluster_ip = svc["spec"]["clusterIP"].as_str().expect("cluster IP").to_owned();
    running_pod(&server, "data-store", "ds-1", "127.1.0.2", true);
    running_pod(&server, "data-store", "ds-2", "127.1.0.3", false);

    let slice = server.eventually(10, "both pods in the EndpointSlice", || {
        let list = json(&server.kubectl_ok(&["get", "endpointslices", "-n", "data-store", "-l", "kubernetes.io/service-name=data-store", "-o", "json"]));
        let slice = list["items"][0].clone();
        (slice["endpoints"].as_array().map_or(0, Vec::len) == 2).then_some(slice)
    });
    let name = slice["metadata"]["name"].as_str().expect("name");
    assert!(name.starts_with("data-store-") && name.len() == "data-store-".len() + 5, "{name}");
    assert_eq!(slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"], "endpointslice-controller.k8s.io");
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert_eq!(slice["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["ports"], json!([{"name": "http", "port": 9000, "protocol": "TCP"}]));
    let ds1 = &slice["endpoints"][0];
    assert_eq!(ds1["addresses"], json!(["127.1.0.2"]));
    assert_eq!(ds1["conditions"], json!({"ready": true, "serving": true, "terminating": false}));
    assert_eq!((&ds1["targetRef"]["kind"], &ds1["targetRef"]["name"]), (&json!("Pod"), &json!("ds-1")));
    let table = server.kubectl_ok(&["get", "endpointslices", "-n", "data-store"]);
    let row: Vec<&str> = table.lines().nth(1).expect("row").split_whitespace().collect();
    assert_eq!(table.lines().next().map(|h| h.split_whitespace().collect::<Vec<_>>()), Some(vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]));
    assert_eq!(row[1..4], ["IPv4", "9000", "127.1.0.2,127.1.0.3"]);

    // The destination API, for a pod's own ServiceAccount token (system:serviceaccounts).
    let token = server.kubectl_ok(&["create", "token", "data-store", "-n", "data-store"]);
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let identity = "data-store.data-store.serviceaccount.identity.linkerd.cluster.local";
    let want = |authority: &str| json!({"authority": authority, "service": {"namespace": "data-store", "name": "data-store"}, "endpoints": [
        {"address": "127.1.0.2:9000", "namespace": "data-store", "pod": "ds-1", "serviceAccount": "data-store", "meshed": true, "identity": identity},
        {"address": "127.1.0.3:9000", "namespace": "data-store", "pod": "ds-2", "serviceAccount": "data-store", "meshed": false, "identity": null}]});
    for authority in ["data-store.data-store.svc.cluster.local:8081", "data-store.data-store.svc:8081", "data-store.data-store:8081", &format!("{cluster_ip}:8081")] {
        let (code, body) = server.curl("GET", &format!("/tessera/v1/destinations?authority={authority}"), &["-H", &bearer]);
        assert_eq!((code, json(&body)), (200, want(authority)), "{authority}");
    }
    let (code, body) = server.curl("GET", "/tessera/v1/destinations?authority=127.1.0.2:9000", &["-H", &bearer]);
    assert_eq!((code, json(&body)["service"].clone(), json(&body)["endpoints"][0]["identity"].clone()), (200, Value::Null, json!(identity)));
    let (code, body) = server.curl("GET", "/tessera/v1/destinations?authority=nope.data-store:8081", &["-H", &bearer]);
    assert_eq!((code, json(&body)["message"].clone(), json(&body)["reason"].clone()), (404, json!("services \"nope\" not found"), json!("NotFound")));
    let (code, body) = server.curl("GET", "/tessera/v1/destinations?authority=data-store", &["-H", &bearer]);
    assert_eq!((code, json(&body)["message"].clone()), (400, json!("invalid authority \"data-store\": expected HOST:PORT")));
    // Callers outside system:serviceaccounts and system:nodes get RBAC's 403.
    let (code, body) = server.curl("GET", "/tessera/v1/destinations?authority=data-store.data-store:8081", &[]);
    assert_eq!(code, 403, "{body}");
    assert_eq!(json(&body)["message"], "forbidden: User \"system:anonymous\" cannot get path \"/tessera/v1/destinations\"");

    // Watch: a snapshot at once, and a new one when ds-1 stops being ready.
    let mut child = Command::new("curl")
        .args(["-sS", "-N", "--cacert"])
        .arg(server.ca_file())
        .args(["-H", &bearer])
        .arg(format!("{}/tessera/v1/destinations?authority=data-store.data-store.svc.cluster.local:8081&watch=true", server.url))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || json(&rx.recv_timeout(Duration::from_secs(10)).expect("a snapshot"));
    assert_eq!(next(), want("data-store.data-store.svc.cluster.local:8081"));
    set_ready(&server, "data-store", "ds-1", "127.1.0.2", false);
    let changed = next();
    assert_eq!(changed["endpoints"].as_array().map(|e| e.iter().map(|e| e["pod"].clone()).collect::<Vec<_>>()), Some(vec![json!("ds-2")]));
    set_ready(&server, "data-store", "ds-1", "127.1.0.2", true);
    assert_eq!(next(), want("data-store.data-store.svc.cluster.local:8081"));
    // A pod joins and leaves by its labels; writes that change nothing in the
    // answer (the pod's status patch) send nothing; the Service going away ends
    // the stream with the Status.
    running_pod(&server, "data-store", "other", "127.1.0.9", true);
    let joined = next();
    assert_eq!(joined["endpoints"].as_array().map(Vec::len), Some(3), "{joined}");
    server.kubectl_ok(&["label", "pod", "other", "-n", "data-store", "app=other", "--overwrite"]);
    assert_eq!(next(), want("data-store.data-store.svc.cluster.local:8081"));
    server.kubectl_ok(&["delete", "svc", "data-store", "-n", "data-store"]);
    let last = next();
    assert_eq!((&last["kind"], &last["code"], &last["message"]), (&json!("Status"), &json!(404), &json!("services \"data-store\" not found")), "{last}");
    assert!(rx.recv_timeout(Duration::from_secs(10)).is_err(), "the stream ends");
    let _ = child.kill();
    let _ = child.wait();
}
