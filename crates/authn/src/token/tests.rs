//! The attack suite: every way a token can be wrong, each with its exact outcome.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use super::*;
use crate::keys::SigningKey;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const NOW: i64 = 1_800_000_000;
const SA_UID: &str = "c5fab91f-bb4b-4027-b414-547cfea1cea2";

#[derive(Default)]
struct Objects {
    service_accounts: Mutex<HashMap<(String, String), String>>,
    pods: Mutex<HashMap<(String, String), String>>,
    secrets: Mutex<HashMap<(String, String), SecretInfo>>,
    epoch: Mutex<u64>,
}

fn k(ns: &str, name: &str) -> (String, String) {
    (ns.to_owned(), name.to_owned())
}

impl Objects {
    fn bump(&self) {
        *self.epoch.lock().expect("lock") += 1;
    }
}

impl ObjectLookup for Objects {
    fn service_account_uid(&self, ns: &str, name: &str) -> Option<String> {
        self.service_accounts.lock().expect("lock").get(&k(ns, name)).cloned()
    }
    fn pod_uid(&self, ns: &str, name: &str) -> Option<String> {
        self.pods.lock().expect("lock").get(&k(ns, name)).cloned()
    }
    fn secret(&self, ns: &str, name: &str) -> Option<SecretInfo> {
        self.secrets.lock().expect("lock").get(&k(ns, name)).cloned()
    }
    fn epoch(&self) -> u64 {
        *self.epoch.lock().expect("lock")
    }
}

fn authority(alg: Algorithm) -> TokenAuthority {
    let (key, _) = SigningKey::generate(alg, 1).expect("key");
    TokenAuthority::new(
        TokenConfig { issuer: ISSUER.into(), api_audiences: vec![ISSUER.into()], max_lifetime_seconds: 86400 * 365 },
        KeySet::new(vec![key]),
    )
}

fn objects() -> Objects {
    let o = Objects::default();
    o.service_accounts.lock().expect("lock").insert(k("api", "api"), SA_UID.into());
    o
}

fn spec(audiences: &[&str]) -> BoundTokenSpec {
    BoundTokenSpec {
        namespace: "api".into(),
        service_account: "api".into(),
        service_account_uid: SA_UID.into(),
        audiences: audiences.iter().map(|s| (*s).to_owned()).collect(),
        expiration_seconds: 600,
        bound: None,
    }
}

fn auds(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn rejected(review: Review) -> String {
    match review {
        Review::Rejected(why) => why,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Re-signs modified claims with the authority's real key (an attacker cannot, but
/// it lets each claim check be tested on its own).
fn resign(authority: &TokenAuthority, token: &str, edit: impl FnOnce(&mut Value)) -> String {
    let parsed = jwt::decode(token).expect("decode");
    let mut claims = parsed.claims;
    edit(&mut claims);
    authority.sign(&claims).expect("sign")
}

fn forge(header: &str, claims: &Value, sig: &[u8]) -> String {
    format!("{}.{}.{}", B64.encode(header), B64.encode(claims.to_string()), B64.encode(sig))
}

#[test]
fn bound_token_reviews_with_exact_user() {
    for alg in [Algorithm::ES256, Algorithm::RS256] {
        let a = authority(alg);
        let t = a.issue_bound(&spec(&["data-store"]), NOW).expect("issue");
        assert_eq!(t.expires_at, NOW + 600);
        let Review::Authenticated(ok) = a.review(&t.token, Some(&auds(&["data-store"])), &objects(), NOW) else {
            panic!("not authenticated")
        };
        assert_eq!(ok.audiences(), ["data-store"]);
        let user = ok.user();
        assert_eq!(user.username, "system:serviceaccount:api:api");
        assert_eq!(user.uid, SA_UID);
        assert_eq!(user.groups, ["system:serviceaccounts", "system:serviceaccounts:api", "system:authenticated"]);
        let jti = jwt::decode(&t.token).expect("decode").claims["jti"].as_str().expect("jti").to_owned();
        assert_eq!(user.extra[EXTRA_CREDENTIAL_ID], vec![format!("JTI={jti}")]);
    }
}

#[test]
fn claims_have_kubernetes_shape() {
    let a = authority(Algorithm::ES256);
    let t = a.issue_bound(&spec(&["data-store"]), NOW).expect("issue");
    let parsed = jwt::decode(&t.token).expect("decode");
    assert_eq!(parsed.header.alg, "ES256");
    let c = parsed.claims;
    assert_eq!(c["aud"], serde_json::json!(["data-store"]));
    assert_eq!((c["iat"].as_i64(), c["nbf"].as_i64(), c["exp"].as_i64()), (Some(NOW), Some(NOW), Some(NOW + 600)));
    assert_eq!(c["iss"], ISSUER);
    assert_eq!(c["sub"], "system:serviceaccount:api:api");
    assert_eq!(c["kubernetes.io"], serde_json::json!({"namespace": "api", "serviceaccount": {"name": "api", "uid": SA_UID}}));
}

#[test]
fn wrong_audience_has_kube_apiserver_message() {
    let a = authority(Algorithm::ES256);
    let t = a.issue_bound(&spec(&["data-store"]), NOW).expect("issue");
    let review = a.review(&t.token, Some(&auds(&["other"])), &objects(), NOW);
    assert_eq!(review.error_message().as_deref(), Some(r#"[invalid bearer token, token audiences ["data-store"] is invalid for the target audiences ["other"]]"#));
    let review = a.review(&t.token, None, &objects(), NOW);
    assert_eq!(review.error_message().as_deref(), Some(r#"[invalid bearer token, token audiences ["data-store"] is invalid for the target audiences ["https://kubernetes.default.svc.cluster.local"]]"#));
}

#[test]
fn expired_and_not_yet_valid_tokens_are_rejected() {
    let a = authority(Algorithm::ES256);
    let t = a.issue_bound(&spec(&["x"]), NOW).expect("issue");
    let o = objects();
    // Within the 60 s leeway still valid; beyond it expired.
    assert!(matches!(a.review(&t.token, Some(&auds(&["x"])), &o, NOW + 600 + 60), Review::Authenticated(_)));
    assert_eq!(rejected(a.review(&t.token, Some(&auds(&["x"])), &o, NOW + 600 + 61)), "service account token has expired");
    let future = resign(&a, &t.token, |c| c["nbf"] = (NOW + 3600).into());
    assert_eq!(rejected(a.review(&future, Some(&auds(&["x"])), &o, NOW)), "service account token is not valid yet");
    let no_exp = resign(&a, &t.token, |c| {
        c.as_object_mut().expect("object").remove("exp");
    });
    assert_eq!(rejected(a.review(&no_exp, Some(&auds(&["x"])), &o, NOW)), "service account token claims could not be validated due to unexpected validation error");
}

#[test]
fn other_issuers_and_garbage_are_not_ours() {
    let a = authority(Algorithm::ES256);
    let t = a.issue_bound(&spec(&["x"]), NOW).expect("issue");
    let foreign = resign(&a, &t.token, |c| c["iss"] = "https://evil.example".into());
    let o = objects();
    for token in [foreign.as_str(), "garbage.token.here", "", "a.b", &t.token[..t.token.len() / 2], &"A".repeat(20_000)] {
        let review = a.review(token, Some(&auds(&["x"])), &o, NOW);
        assert_eq!(review, Review::NotOurs, "{token:.30}");
        assert_eq!(review.error_message().as_deref(), Some("invalid bearer token"));
    }
}

#[test]
fn alg_none_and_hmac_confusion_are_rejected() {
    let a = authority(Algorithm::ES256);
    let t = a.issue_bound(&spec(&["x"]), NOW).expect("issue");
    let claims = jwt::decode(&t.token).expect("decode").claims;
    let kid = a.keys().signing_key().expect("key").kid().to_owned();
    let o = objects();
    let none = forge(r#"{"alg":"none"}"#, &claims, b"");
    assert_eq!(rejected(a.review(&none, Some(&auds(&["x"])), &o, NOW)), r#"unexpected signature algorithm "none"; expected ["ES256" "RS256"]"#);
    // HS256 keyed with the public key (the classic confusion attack).
    let public_jwk = a.keys().signing_key().expect("key").jwk().to_string();
    let header = format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#);
    let input = format!("{}.{}", B64.encode(&header), B64.encode(claims.to_string()));
    let mac = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, public_jwk.as_bytes()), input.as_bytes());
    let hs = format!("{input}.{}", B64.encode(mac.as_ref()));
    assert_eq!(rejected(a.review(&hs, Some(&auds(&["x"])), &o, NOW)), r#"unexpected signature algorithm "HS256"; expected ["ES256" "RS256"]"#);
    // RS256 header on an ES256 key: the key decides the algorithm.
    let rs = forge(&format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#), &claims, &jwt::decode(&t.token).expect("decode").signature);
    assert_eq!(rejected(a.review(&rs, Some(&auds(&["x"])), &o, NOW)), "invalid signature: no trusted key verifies this token");
    let crit = forge(&format!(r#"{{"alg":"ES256","kid":"{kid}","crit":["exp"]}}"#), &claims, b"x");
    assert_eq!(rejected(a.review(&crit, Some(&auds(&["x"])), &o, NOW)), "unsupported critical header");
}

#[test]
fn unknown_keys_and_tampering_are_rejected() {
    let a = authority(Algorithm::ES256);
    let stranger = authority(Algorithm::ES256);
    let o = objects();
    let t = stranger.issue_bound(&spec(&["x"]), NOW).expect("issue");
    assert_eq!(rejected(a.review(&t.token, Some(&auds(&["x"])), &o, NOW)), "invalid signature: no trusted key verifies this token");
    // Same claims under our kid but the stranger's signature.
    let ours = a.issue_bound(&spec(&["x"]), NOW).expect("issue");
    let (ours_input, _) = ours.token.rsplit_once('.').expect("dot");
    let (_, their_sig) = t.token.rsplit_once('.').expect("dot");
    let spliced = format!("{ours_input}.{their_sig}");
    assert_eq!(rejected(a.review(&spliced, Some(&auds(&["x"])), &o, NOW)), "invalid signature: no trusted key verifies this token");
    // Changing a claim breaks the signature.
    let parsed = jwt::decode(&ours.token).expect("decode");
    let mut claims = parsed.claims.clone();
    claims["kubernetes.io"]["serviceaccount"]["name"] = "admin".into();
    let tampered = format!("{}.{}.{}", ours.token.split('.').next().expect("header"), B64.encode(claims.to_string()), B64.encode(&parsed.signature));
    assert_eq!(rejected(a.review(&tampered, Some(&auds(&["x"])), &o, NOW)), "invalid signature: no trusted key verifies this token");
}

#[test]
fn deleted_or_recreated_service_account_is_rejected() {
    let a = authority(Algorithm::ES256);
    let o = objects();
    let t = a.issue_bound(&spec(&["x"]), NOW).expect("issue");
    o.service_accounts.lock().expect("lock").remove(&k("api", "api"));
    let review = a.review(&t.token, Some(&auds(&["x"])), &o, NOW);
    assert_eq!(review.error_message().as_deref(), Some(r#"[invalid bearer token, serviceaccounts "api" not found]"#));
    o.service_accounts.lock().expect("lock").insert(k("api", "api"), "11111111-2222-3333-4444-555555555555".into());
    assert_eq!(
        rejected(a.review(&t.token, Some(&auds(&["x"])), &o, NOW)),
        format!("service account UID (11111111-2222-3333-4444-555555555555) does not match claim ({SA_UID})")
    );
}

#[test]
fn pod_bound_tokens_die_with_the_pod() {
    let a = authority(Algorithm::ES256);
    let o = objects();
    o.pods.lock().expect("lock").insert(k("api", "p1"), "pod-uid-1".into());
    let mut s = spec(&["x"]);
    s.bound = Some(BoundObject::Pod { name: "p1".into(), uid: "pod-uid-1".into() });
    let t = a.issue_bound(&s, NOW).expect("issue");
    let Review::Authenticated(ok) = a.review(&t.token, Some(&auds(&["x"])), &o, NOW) else { panic!("not authenticated") };
    assert_eq!(ok.user().extra[EXTRA_POD_NAME], ["p1"]);
    assert_eq!(ok.user().extra[EXTRA_POD_UID], ["pod-uid-1"]);
    assert_eq!(jwt::decode(&t.token).expect("decode").claims["kubernetes.io"]["pod"], serde_json::json!({"name": "p1", "uid": "pod-uid-1"}));
    o.pods.lock().expect("lock").insert(k("api", "p1"), "pod-uid-2".into());
    assert_eq!(rejected(a.review(&t.token, Some(&auds(&["x"])), &o, NOW)), "pod UID (pod-uid-2) does not match service account pod ref claim (pod-uid-1)");
    o.pods.lock().expect("lock").remove(&k("api", "p1"));
    assert_eq!(rejected(a.review(&t.token, Some(&auds(&["x"])), &o, NOW)), "service account token has been invalidated");
}

#[test]
fn secret_bound_tokens_die_with_the_secret() {
    let a = authority(Algorithm::ES256);
    let o = objects();
    o.secrets.lock().expect("lock").insert(k("api", "s"), SecretInfo { uid: "s-1".into(), token: None });
    let mut s = spec(&["x"]);
    s.bound = Some(BoundObject::Secret { name: "s".into(), uid: "s-1".into() });
    let t = a.issue_bound(&s, NOW).expect("issue");
    assert!(matches!(a.review(&t.token, Some(&auds(&["x"])), &o, NOW), Review::Authenticated(_)));
    o.secrets.lock().expect("lock").remove(&k("api", "s"));
    assert_eq!(rejected(a.review(&t.token, Some(&auds(&["x"])), &o, NOW)), "service account token has been invalidated");
}

#[test]
fn legacy_tokens_live_only_with_their_secret() {
    let a = authority(Algorithm::RS256);
    let o = objects();
    let token = a.issue_legacy("api", "api", SA_UID, "api-legacy").expect("issue");
    let claims = jwt::decode(&token).expect("decode").claims;
    assert_eq!(claims, serde_json::json!({
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": "api",
        "kubernetes.io/serviceaccount/secret.name": "api-legacy",
        "kubernetes.io/serviceaccount/service-account.name": "api",
        "kubernetes.io/serviceaccount/service-account.uid": SA_UID,
        "sub": "system:serviceaccount:api:api"
    }));
    assert_eq!(rejected(a.review(&token, None, &o, NOW)), "token has been invalidated");
    o.secrets.lock().expect("lock").insert(k("api", "api-legacy"), SecretInfo { uid: "x".into(), token: Some(token.clone()) });
    let Review::Authenticated(ok) = a.review(&token, None, &o, NOW) else { panic!("legacy token not authenticated") };
    assert_eq!(ok.audiences(), [ISSUER]);
    assert!(ok.user().extra.is_empty());
    // Legacy tokens are only for the API's own audiences.
    assert_eq!(rejected(a.review(&token, Some(&auds(&["data-store"])), &o, NOW)), format!(r#"token audiences ["{ISSUER}"] is invalid for the target audiences ["data-store"]"#));
    o.secrets.lock().expect("lock").insert(k("api", "api-legacy"), SecretInfo { uid: "x".into(), token: Some("other".into()) });
    assert_eq!(rejected(a.review(&token, None, &o, NOW)), "token does not match secret");
}

#[test]
fn rotated_out_key_stops_verifying_once_pruned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TokenConfig { issuer: ISSUER.into(), api_audiences: vec![ISSUER.into()], max_lifetime_seconds: 3600 };
    let a = TokenAuthority::new(config, KeySet::load_or_create(dir.path(), Algorithm::ES256, NOW, 3600).expect("keys"));
    let old = a.issue_bound(&spec(&["x"]), NOW).expect("issue");
    KeySet::add(dir.path(), Algorithm::ES256, NOW + 10).expect("rotate");
    a.set_keys(KeySet::load_or_create(dir.path(), Algorithm::ES256, NOW + 11, 3600).expect("reload"));
    let new = a.issue_bound(&spec(&["x"]), NOW + 11).expect("issue");
    let o = objects();
    assert!(matches!(a.review(&old.token, Some(&auds(&["x"])), &o, NOW + 11), Review::Authenticated(_)));
    assert!(matches!(a.review(&new.token, Some(&auds(&["x"])), &o, NOW + 11), Review::Authenticated(_)));
    assert_ne!(jwt::decode(&old.token).expect("d").header.kid, jwt::decode(&new.token).expect("d").header.kid);
    // After the old key's tokens can no longer be valid it is dropped; its token fails on both counts.
    let later = NOW + 10 + 3601;
    a.set_keys(KeySet::load_or_create(dir.path(), Algorithm::ES256, later, 3600).expect("reload"));
    assert_eq!(rejected(a.review(&old.token, Some(&auds(&["x"])), &o, later)), "invalid signature: no trusted key verifies this token");
}

#[test]
fn cache_drops_results_when_objects_change() {
    let a = authority(Algorithm::ES256);
    let o = objects();
    let cache = ReviewCache::new(10, 1000);
    let t = a.issue_bound(&spec(&["x"]), NOW).expect("issue");
    let aud = auds(&["x"]);
    assert!(matches!(*cache.review(&a, &t.token, Some(&aud), &o, NOW), Review::Authenticated(_)));
    o.service_accounts.lock().expect("lock").remove(&k("api", "api"));
    // Without an epoch change the cached result stands (this is what the epoch is for)…
    assert!(matches!(*cache.review(&a, &t.token, Some(&aud), &o, NOW), Review::Authenticated(_)));
    // …and once the object change is published it is dropped at once.
    o.bump();
    assert!(matches!(*cache.review(&a, &t.token, Some(&aud), &o, NOW), Review::Rejected(_)));
}

#[test]
fn lifetime_is_capped() {
    let a = authority(Algorithm::ES256);
    let mut s = spec(&["x"]);
    s.expiration_seconds = i64::from(u32::MAX);
    let t = a.issue_bound(&s, NOW).expect("issue");
    assert_eq!(t.expires_at, NOW + 86400 * 365);
}

#[test]
fn cache_keys_do_not_collide_across_audiences() {
    let a = authority(Algorithm::ES256);
    let o = objects();
    let cache = ReviewCache::new(10, 1000);
    let t = a.issue_bound(&spec(&["svc"]), NOW).expect("issue");
    // A garbage token shaped like "token NUL audience" must not poison the real (token, [svc]) entry.
    let forged = format!("{}\0svc", t.token);
    assert!(!matches!(*cache.review(&a, &forged, None, &o, NOW), Review::Authenticated(_)));
    assert!(matches!(*cache.review(&a, &t.token, Some(&auds(&["svc"])), &o, NOW), Review::Authenticated(_)));
}
