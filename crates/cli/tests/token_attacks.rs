//! ServiceAccount token attacks against the real server, over HTTP: every
//! forged or mis-issued token of the shared verifier's list (TokenReview and
//! bearer authentication), TokenRequests for tokens larger than a review
//! accepts, and signing-key reloads that find no key.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Server, json};
use tessera_token::attacks::{AUDIENCE, Issuer};
use tessera_token::verify::Rejection;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn setup(server: &Server) -> String {
    server.kubectl_ok(&["create", "ns", "api"]);
    server.kubectl_ok(&["create", "sa", "api", "-n", "api"]);
    server.kubectl_ok(&["get", "sa", "api", "-n", "api", "-o", "jsonpath={.metadata.uid}"])
}

fn post_admin(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let (code, text) = server.curl_admin("POST", path, &["-H", "Content-Type: application/json", "--data-binary", &body.to_string()]);
    (code, json(&text))
}

fn token_review(server: &Server, token: &str, audiences: &[&str]) -> Value {
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": audiences}});
    let (code, body) = post_admin(server, "/apis/authentication.k8s.io/v1/tokenreviews", &review);
    assert_eq!(code, 201, "{body}");
    body["status"].clone()
}

fn token_request(server: &Server, audiences: &[String]) -> (u16, Value) {
    let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": audiences}});
    post_admin(server, "/api/v1/namespaces/api/serviceaccounts/api/token", &request)
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// The shared attack list, signed (where the attack needs it) with the
/// server's own key read from its data dir, each with the exact TokenReview
/// error and a 401 on the bearer path.
#[test]
fn every_forged_token_is_refused_over_http() {
    let server = Server::start();
    let uid = setup(&server);
    let keys = tessera_authn::keys::KeySet::load(&server.path("keys"), now(), 48 * 3600).expect("the server's keys");
    let key = keys.signing_key().expect("signing key");
    let sign = |input: &[u8]| key.sign(input).expect("sign");
    let issuer = Issuer { issuer: ISSUER, kid: key.kid(), public_key: key.public_key(), sign: &sign, service_account_uid: &uid, now: now() };
    for attack in issuer.attacks() {
        let expected = match &attack.rejection {
            Rejection::NotOurs => "invalid bearer token".to_owned(),
            why => format!("[invalid bearer token, {why}]"),
        };
        assert_eq!(token_review(&server, &attack.token, &[AUDIENCE]), json!({"user": {}, "error": expected}), "{}", attack.name);
        // The same token as a credential for the API itself.
        let bearer = format!("Authorization: Bearer {}", attack.token);
        let (code, body) = server.curl("GET", "/api", &["-H", &bearer]);
        assert_eq!((code, json(&body)["message"].as_str()), (401, Some("Unauthorized")), "{}", attack.name);
    }
    for token in [issuer.good_token(), issuer.token_without_iat()] {
        let status = token_review(&server, &token, &[AUDIENCE]);
        assert_eq!((status["authenticated"].as_bool(), status["user"]["username"].as_str()), (Some(true), Some("system:serviceaccount:api:api")));
    }
}

/// The review's attack: 200 audiences made a 29 KB token that TokenReview then
/// refused. Now the request is refused (422, naming `spec.audiences`) and no
/// token is issued; the largest token issued is one a review accepts.
#[test]
fn token_requests_beyond_what_a_review_accepts_are_invalid() {
    let server = Server::start();
    setup(&server);
    let audiences: Vec<String> = (0..200).map(|i| format!("https://audience-{i:03}.services.example.com/a/rather/long/path/for/this/audience")).collect();
    let (code, body) = token_request(&server, &audiences);
    let detail = "Too long: the token would be 22190 bytes, but tokens must have at most 16384 bytes";
    assert_eq!((code, &body), (422, &json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("TokenRequest.authentication.k8s.io \"\" is invalid: spec.audiences: {detail}"),
        "reason": "Invalid",
        "details": {"group": "authentication.k8s.io", "kind": "TokenRequest", "causes": [{"reason": "FieldValueTooLong", "message": detail, "field": "spec.audiences"}]},
        "code": 422,
    })));
    // kubectl says it the way it says every field error.
    let mut args = vec!["create", "token", "api", "-n", "api"];
    for audience in &audiences {
        args.extend(["--audience", audience]);
    }
    let err = server.kubectl_err(&args);
    assert_eq!(err.trim(), format!("error: failed to create token: TokenRequest.authentication.k8s.io \"\" is invalid: spec.audiences: {detail}"));

    // The longest second audience (beside the API's) that still fits: its
    // token passes TokenReview and bearer authentication; one byte more is refused.
    let with = |len: usize| vec![ISSUER.to_owned(), "a".repeat(len)];
    let (mut fits, mut too_long) = (1, 16_384);
    while too_long - fits > 1 {
        let mid = (fits + too_long) / 2;
        match token_request(&server, &with(mid)) {
            (201, _) => fits = mid,
            (422, body) => {
                assert_eq!(body["details"]["causes"][0]["field"], "spec.audiences");
                too_long = mid;
            }
            (code, body) => panic!("{code}: {body}"),
        }
    }
    let (_, body) = token_request(&server, &with(fits));
    let token = body["status"]["token"].as_str().expect("token").to_owned();
    assert!(token.len() <= 16_384 && token.len() > 16_380, "{}", token.len());
    let status = token_review(&server, &token, &[&"a".repeat(fits)]);
    assert_eq!(status["authenticated"], true, "{status}");
    // As a bearer token, over HTTP/2 (where a 16 KiB header list was the limit) and HTTP/1.1.
    let bearer = format!("Authorization: Bearer {token}");
    let self_review = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
    for version in ["--http2", "--http1.1"] {
        let args = [version, "-H", &bearer, "-H", "Content-Type: application/json", "-d", self_review];
        let (code, body) = server.curl("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", &args);
        assert_eq!((code, json(&body)["status"]["userInfo"]["username"].as_str()), (201, Some("system:serviceaccount:api:api")), "{version}: {body}");
    }
    // And through kubectl.
    let kubeconfig = server.kubeconfig_for_token("largest", &token);
    let out = server.kubectl_as(&kubeconfig, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "system:serviceaccount:api:api", "{}", String::from_utf8_lossy(&out.stderr));
}

/// A `tessera server` whose log this test reads (the reload's only witness).
struct LoggingServer {
    child: Child,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    log: mpsc::Receiver<String>,
}

impl LoggingServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["server", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("TESSERA_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tessera");
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let kubeconfig = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("kubeconfig: ").map(PathBuf::from))
            .expect("server printed its kubeconfig");
        std::thread::spawn(move || for _ in lines {});
        Self { child, dir, kubeconfig, log }
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl").args(args).env("KUBECONFIG", &self.kubeconfig).output().expect("kubectl");
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits (at most 20 s) for a log line containing every one of `parts`.
    fn logged(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if parts.iter().all(|p| line.contains(p)) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {parts:?}"),
            }
        }
    }
}

impl Drop for LoggingServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kid_of(token: &str) -> String {
    use base64::Engine as _;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.split('.').next().expect("header")).expect("b64");
    serde_json::from_slice::<Value>(&header).expect("json")["kid"].as_str().expect("kid").to_owned()
}

/// The key directory is emptied under a running server: reloads fail and say
/// so, never create a key, and the server keeps signing and verifying with
/// the keys it has.
#[test]
fn a_reload_that_finds_no_key_keeps_the_keys_and_creates_none() {
    let server = LoggingServer::start();
    server.kubectl(&["create", "ns", "api"]);
    server.kubectl(&["create", "sa", "api", "-n", "api"]);
    let before = server.kubectl(&["create", "token", "api", "-n", "api", "--audience", "data-store"]);
    let keys = server.dir.path().join("keys");
    let moved = server.dir.path().join("keys-moved");
    std::fs::rename(&keys, &moved).expect("move the key directory away");
    std::fs::create_dir(&keys).expect("an empty key directory");
    let line = server.logged(&["reloading signing keys failed; keeping the current ones", "no signing key in"]);
    assert!(line.contains("ERROR"), "{line}");
    // Two more reloads fail the same way; none created a key.
    server.logged(&["reloading signing keys failed"]);
    server.logged(&["reloading signing keys failed"]);
    assert_eq!(std::fs::read_dir(&keys).expect("keys").count(), 0, "a reload created a key");
    // The server still verifies old tokens and signs new ones with the same key.
    let after = server.kubectl(&["create", "token", "api", "-n", "api", "--audience", "data-store"]);
    assert_eq!(kid_of(&after), kid_of(&before));
    for token in [&before, &after] {
        let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": ["data-store"]}});
        let out = Command::new("kubectl")
            .args(["create", "--raw", "/apis/authentication.k8s.io/v1/tokenreviews", "-f", "-"])
            .env("KUBECONFIG", &server.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child.stdin.take().expect("stdin").write_all(review.to_string().as_bytes())?;
                child.wait_with_output()
            })
            .expect("kubectl");
        assert_eq!(json(&String::from_utf8_lossy(&out.stdout))["status"]["authenticated"], true);
    }
    let jwks = json(&server.kubectl(&["get", "--raw", "/openid/v1/jwks"]));
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1));
}
