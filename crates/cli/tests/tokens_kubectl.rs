//! ServiceAccount tokens end to end: `kubectl create token`, TokenReview, bearer
//! authentication, legacy token Secrets, pod-bound tokens, key rotation, and a
//! standard JWT library verifying against our JWKS.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::{Server, json};

fn token_review(server: &Server, token: &str, audiences: &[&str]) -> Value {
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": audiences}});
    let out = server.kubectl_stdin(&["create", "-f", "-", "-o", "json"], &review.to_string());
    assert!(out.status.success(), "TokenReview failed: {}", String::from_utf8_lossy(&out.stderr));
    json(&String::from_utf8_lossy(&out.stdout))
}

fn setup(server: &Server) -> (String, String) {
    server.kubectl_ok(&["create", "ns", "api"]);
    server.kubectl_ok(&["create", "sa", "api", "-n", "api"]);
    let uid = server.kubectl_ok(&["get", "sa", "api", "-n", "api", "-o", "jsonpath={.metadata.uid}"]);
    let token = server.kubectl_ok(&["create", "token", "api", "-n", "api", "--audience", "data-store", "--duration", "10m"]);
    (token.trim().to_owned(), uid)
}

#[test]
fn create_token_then_token_review() {
    let server = Server::start();
    let (token, uid) = setup(&server);
    let review = token_review(&server, &token, &["data-store"]);
    let status = &review["status"];
    assert_eq!(status["authenticated"], true);
    assert_eq!(status["audiences"], json!(["data-store"]));
    assert_eq!(status["user"]["username"], "system:serviceaccount:api:api");
    assert_eq!(status["user"]["uid"], uid.as_str());
    assert_eq!(status["user"]["groups"], json!(["system:serviceaccounts", "system:serviceaccounts:api", "system:authenticated"]));
    let jti = status["user"]["extra"]["authentication.kubernetes.io/credential-id"][0].as_str().expect("credential id");
    assert!(jti.starts_with("JTI=") && jti.len() == 40, "{jti}");

    let review = token_review(&server, &token, &["other"]);
    assert_eq!(review["status"], json!({
        "user": {},
        "error": "[invalid bearer token, token audiences [\"data-store\"] is invalid for the target audiences [\"other\"]]"
    }));

    let review = token_review(&server, "garbage.token.here", &["data-store"]);
    assert_eq!(review["status"], json!({"user": {}, "error": "invalid bearer token"}));

    let err = server.kubectl_err(&["create", "token", "api", "-n", "api", "--duration", "5m"]);
    assert_eq!(err.trim(), "error: failed to create token: TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 minutes");
    let err = server.kubectl_err(&["create", "token", "nobody", "-n", "api"]);
    assert_eq!(err.trim(), "error: failed to create token: serviceaccounts \"nobody\" not found");
}

#[test]
fn deleted_or_recreated_service_account_token_is_refused_at_once() {
    let server = Server::start();
    let (token, _) = setup(&server);
    server.kubectl_ok(&["delete", "sa", "api", "-n", "api"]);
    let review = token_review(&server, &token, &["data-store"]);
    assert_eq!(review["status"]["error"], "[invalid bearer token, serviceaccounts \"api\" not found]");
    server.kubectl_ok(&["create", "sa", "api", "-n", "api"]);
    let new_uid = server.kubectl_ok(&["get", "sa", "api", "-n", "api", "-o", "jsonpath={.metadata.uid}"]);
    let review = token_review(&server, &token, &["data-store"]);
    let error = review["status"]["error"].as_str().expect("error");
    assert!(error.starts_with(&format!("[invalid bearer token, service account UID ({new_uid}) does not match claim (")), "{error}");
    assert!(review["status"].get("authenticated").is_none());
}

#[test]
fn bearer_tokens_authenticate_api_requests() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "api"]);
    server.kubectl_ok(&["create", "sa", "api", "-n", "api"]);
    let token = server.kubectl_ok(&["create", "token", "api", "-n", "api"]);
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let (code, body) = server.curl("GET", "/api/v1/namespaces/kube-system/secrets", &["-H", &bearer]);
    assert_eq!(code, 403);
    assert_eq!(json(&body)["message"], "secrets is forbidden: User \"system:serviceaccount:api:api\" cannot list resource \"secrets\" in API group \"\" in the namespace \"kube-system\"");
    let (code, body) = server.curl("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", &["-H", &bearer, "-H", "Content-Type: application/json", "-d", r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#]);
    assert_eq!(code, 201);
    assert_eq!(json(&body)["status"]["userInfo"]["username"], "system:serviceaccount:api:api");
    // A token for another audience does not authenticate to the API.
    let other = server.kubectl_ok(&["create", "token", "api", "-n", "api", "--audience", "data-store"]);
    let (code, body) = server.curl("GET", "/api", &["-H", &format!("Authorization: Bearer {}", other.trim())]);
    assert_eq!((code, json(&body)["message"].as_str()), (401, Some("Unauthorized")));
}

#[test]
fn legacy_token_secret_lives_with_its_secret() {
    let server = Server::start();
    let (_, uid) = setup(&server);
    let secret = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"api-legacy","namespace":"api","annotations":{"kubernetes.io/service-account.name":"api"}},"type":"kubernetes.io/service-account-token"}"#;
    let out = server.kubectl_stdin(&["apply", "-f", "-"], secret);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    server.kubectl_ok(&["wait", "--for=jsonpath={.data.token}", "secret/api-legacy", "-n", "api", "--timeout=20s"]);
    let secret = json(&server.kubectl_ok(&["get", "secret", "api-legacy", "-n", "api", "-o", "json"]));
    assert_eq!(secret["metadata"]["annotations"]["kubernetes.io/service-account.uid"], uid.as_str());
    use base64::Engine as _;
    let decode = |k: &str| String::from_utf8(base64::engine::general_purpose::STANDARD.decode(secret["data"][k].as_str().expect(k)).expect("b64")).expect("utf8");
    assert_eq!(decode("namespace"), "api");
    assert!(decode("ca.crt").starts_with("-----BEGIN CERTIFICATE-----"));
    let token = decode("token");
    let review = token_review(&server, &token, &[]);
    assert_eq!(review["status"]["authenticated"], true);
    assert_eq!(review["status"]["audiences"], json!(["https://kubernetes.default.svc.cluster.local"]));
    assert!(review["status"]["user"].get("extra").is_none());
    server.kubectl_ok(&["delete", "secret", "api-legacy", "-n", "api"]);
    let review = token_review(&server, &token, &[]);
    assert_eq!(review["status"]["error"], "[invalid bearer token, token has been invalidated]");
}

#[test]
fn pod_bound_token_dies_with_its_pod() {
    let server = Server::start();
    setup(&server);
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p1","namespace":"api"},"spec":{"serviceAccountName":"api","containers":[{"name":"c","image":"busybox"}]}}"#;
    assert!(server.kubectl_stdin(&["apply", "-f", "-"], pod).status.success());
    let pod_uid = server.kubectl_ok(&["get", "pod", "p1", "-n", "api", "-o", "jsonpath={.metadata.uid}"]);
    let token = server.kubectl_ok(&["create", "token", "api", "-n", "api", "--audience", "a", "--bound-object-kind", "Pod", "--bound-object-name", "p1"]);
    let review = token_review(&server, token.trim(), &["a"]);
    let extra = &review["status"]["user"]["extra"];
    assert_eq!(extra["authentication.kubernetes.io/pod-name"], json!(["p1"]));
    assert_eq!(extra["authentication.kubernetes.io/pod-uid"], json!([pod_uid]));
    server.kubectl_ok(&["delete", "pod", "p1", "-n", "api"]);
    let review = token_review(&server, token.trim(), &["a"]);
    assert_eq!(review["status"]["error"], "[invalid bearer token, service account token has been invalidated]");
    let err = server.kubectl_err(&["create", "token", "api", "-n", "api", "--bound-object-kind", "Pod", "--bound-object-name", "p1"]);
    assert_eq!(err.trim(), "error: failed to create token: pods \"p1\" not found");
}

#[test]
fn key_rotation_keeps_old_tokens_valid() {
    let server = Server::start();
    let (before, _) = setup(&server);
    let jwks = json(&server.kubectl_ok(&["get", "--raw", "/openid/v1/jwks"]));
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1));
    let out = server.tessera(&["server", "keys", "rotate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new_kid = String::from_utf8_lossy(&out.stdout).trim().strip_prefix("added signing key ").expect("kid printed").to_owned();
    // The running server re-reads its key directory every 2 s.
    server.eventually(20, "the JWKS to list the new key", || {
        let jwks = json(&server.kubectl_ok(&["get", "--raw", "/openid/v1/jwks"]));
        (jwks["keys"].as_array().map(Vec::len) == Some(2)).then_some(())
    });
    let after = server.kubectl_ok(&["create", "token", "api", "-n", "api", "--audience", "data-store"]);
    use base64::Engine as _;
    let header: Value = serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(after.split('.').next().expect("header")).expect("b64")).expect("json");
    assert_eq!(header["kid"], new_kid.as_str());
    for token in [before.as_str(), after.trim()] {
        assert_eq!(token_review(&server, token, &["data-store"])["status"]["authenticated"], true);
    }
}

#[test]
fn pyjwt_verifies_tokens_from_the_jwks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir, &["--anonymous-oidc-discovery"]);
    let (token, _) = setup(&server);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/verify_with_jwks.py");
    let out = Command::new("python3")
        .args([script, &server.url, &server.ca_file().display().to_string(), &token, "data-store"])
        .output()
        .expect("python3 (the README's test command installs PyJWT)");
    assert!(out.status.success(), "PyJWT refused the token: {}", String::from_utf8_lossy(&out.stderr));
    let claims = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(claims["sub"], "system:serviceaccount:api:api");
    // And refuses it for another audience.
    let out = Command::new("python3")
        .args([script, &server.url, &server.ca_file().display().to_string(), &token, "other"])
        .output()
        .expect("python3");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidAudienceError"));
}

#[test]
fn tokens_bind_only_to_pods_of_their_service_account() {
    let server = Server::start();
    setup(&server);
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"other","namespace":"api"},"spec":{"serviceAccountName":"default","containers":[{"name":"c","image":"busybox"}]}}"#;
    assert!(server.kubectl_stdin(&["apply", "-f", "-"], pod).status.success());
    let err = server.kubectl_err(&["create", "token", "api", "-n", "api", "--bound-object-kind", "Pod", "--bound-object-name", "other"]);
    assert_eq!(err.trim(), "error: failed to create token: cannot bind token for serviceaccount \"api\" to pod running with different serviceaccount name.");
}
