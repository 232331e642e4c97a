//! The attack suite: every way a token can be wrong, each with its exact outcome.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use super::*;
use tessera_token::jws::Algorithm;
use crate::jwt;
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
    assert_eq!(rejected(a.review(&t.token, Some(&auds(&["x"])), &o, NOW)), "invalid signature, no keys found");
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
    assert_eq!(rejected(a.review(&old.token, Some(&auds(&["x"])), &o, later)), "invalid signature, no keys found");
}

#[test]
fn cache_drops_results_when_objects_change() {
    let a = authority(Algorithm::ES256);
    let o = objects();
    let cache = ReviewCache::new(10, 1 << 20);
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
    let cache = ReviewCache::new(10, 1 << 20);
    let t = a.issue_bound(&spec(&["svc"]), NOW).expect("issue");
    // A garbage token shaped like "token NUL audience" must not poison the real (token, [svc]) entry.
    let forged = format!("{}\0svc", t.token);
    assert!(!matches!(*cache.review(&a, &forged, None, &o, NOW), Review::Authenticated(_)));
    assert!(matches!(*cache.review(&a, &t.token, Some(&auds(&["svc"])), &o, NOW), Review::Authenticated(_)));
}

/// The shared attack list (`tessera_token::attacks`), each with the exact
/// `status.error` of a TokenReview. The middleware runs the same list.
#[test]
fn every_verifier_attack_gets_kube_apiservers_answer() {
    for alg in [Algorithm::ES256, Algorithm::RS256] {
        let a = authority(alg);
        let keys = a.keys();
        let key = keys.signing_key().expect("key");
        let sign = |input: &[u8]| key.sign(input).expect("sign");
        let issuer = tessera_token::attacks::Issuer {
            issuer: ISSUER,
            kid: key.kid(),
            public_key: key.public_key(),
            sign: &sign,
            service_account_uid: SA_UID,
            now: NOW,
        };
        let o = objects();
        let audience = auds(&[tessera_token::attacks::AUDIENCE]);
        for attack in issuer.attacks() {
            let expected = match &attack.rejection {
                Rejection::NotOurs => "invalid bearer token".to_owned(),
                why => format!("[invalid bearer token, {why}]"),
            };
            let review = a.review(&attack.token, Some(&audience), &o, NOW);
            assert_eq!(review.error_message(), Some(expected), "{alg:?}: {}", attack.name);
        }
        for token in [issuer.good_token(), issuer.token_without_iat()] {
            assert!(matches!(a.review(&token, Some(&audience), &o, NOW), Review::Authenticated(_)), "{alg:?}");
        }
    }
}

#[test]
fn issued_tokens_are_never_larger_than_reviews_accept() {
    for alg in [Algorithm::ES256, Algorithm::RS256] {
        let a = authority(alg);
        let o = objects();
        // The longest audience that still gives a token within the limit (the
        // size grows with the audience): that token is reviewable, one more
        // character is refused, unsigned.
        let issue = |len: usize| a.issue_bound(&spec(&[&"a".repeat(len)]), NOW);
        let (mut fits, mut too_long) = (1, jws::MAX_TOKEN_BYTES);
        while too_long - fits > 1 {
            let mid = (fits + too_long) / 2;
            match issue(mid) {
                Ok(_) => fits = mid,
                Err(IssueError::TooLarge { bytes, limit }) => {
                    assert!(bytes > limit && limit == jws::MAX_TOKEN_BYTES);
                    too_long = mid;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let len = fits;
        let largest = issue(len).expect("issue");
        assert!(matches!(issue(len + 1), Err(IssueError::TooLarge { .. })));
        assert!(largest.token.len() <= jws::MAX_TOKEN_BYTES && largest.token.len() > jws::MAX_TOKEN_BYTES - 3, "{}", largest.token.len());
        let audience = auds(&[&"a".repeat(len)]);
        assert!(matches!(a.review(&largest.token, Some(&audience), &o, NOW), Review::Authenticated(_)), "{alg:?}");
        // The attack of the security review: 200 audiences made a 29 KB token.
        let many: Vec<String> = (0..200).map(|i| format!("https://audience-{i:03}.services.example.com/a/rather/long/path/for/this/audience")).collect();
        match a.issue_bound(&spec(&many.iter().map(String::as_str).collect::<Vec<_>>()), NOW) {
            Err(IssueError::TooLarge { bytes, limit: 16_384 }) => assert!(bytes > 20_000, "{bytes}"),
            Err(e) => panic!("{e}"),
            Ok(t) => panic!("issued a {}-byte token", t.token.len()),
        }
    }
}

#[test]
fn garbage_floods_stay_within_the_cache_budget() {
    let a = authority(Algorithm::ES256);
    let o = objects();
    let budget = 256 * 1024;
    let cache = ReviewCache::new(10, budget);
    let good = a.issue_bound(&spec(&["x"]), NOW).expect("issue");
    let aud = auds(&["x"]);
    assert!(matches!(*cache.review(&a, &good.token, Some(&aud), &o, NOW), Review::Authenticated(_)));
    // 20,000 distinct 8 KiB garbage tokens (160 MB if tokens were stored).
    let mut token = "A".repeat(8 * 1024);
    for i in 0..20_000u32 {
        token.replace_range(..8, &format!("{i:08}"));
        assert_eq!(*cache.review(&a, &token, Some(&aud), &o, NOW), Review::NotOurs);
        assert!(cache.bytes() <= budget, "{} > {budget}", cache.bytes());
    }
    assert!(cache.len() > 100, "the budget holds many results, not a few tokens: {}", cache.len());
    // Entries are hash-keyed: a full cache of 8 KiB tokens holds no 8 KiB anything.
    assert!(cache.bytes() / cache.len() < 512, "{} bytes per entry", cache.bytes() / cache.len());
}

#[test]
fn key_reloads_never_create_a_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TokenConfig { issuer: ISSUER.into(), api_audiences: vec![ISSUER.into()], max_lifetime_seconds: 3600 };
    let a = TokenAuthority::new(config, KeySet::load_or_create(dir.path(), Algorithm::ES256, NOW, 3600).expect("keys"));
    let kid = a.keys().signing_key().expect("key").kid().to_owned();
    let token = a.issue_bound(&spec(&["x"]), NOW).expect("issue");
    assert!(!a.reload_keys(dir.path(), NOW).expect("reload"), "nothing changed");
    // The directory is emptied (or replaced by an empty one): the reload fails,
    // the current key keeps signing and verifying, and no key appears.
    for file in std::fs::read_dir(dir.path()).expect("dir") {
        std::fs::remove_file(file.expect("entry").path()).expect("remove");
    }
    assert!(matches!(a.reload_keys(dir.path(), NOW + 2), Err(crate::keys::KeyError::Empty(_))));
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0, "a reload created a key");
    assert_eq!(a.keys().signing_key().expect("key").kid(), kid);
    assert!(matches!(a.review(&token.token, Some(&auds(&["x"])), &objects(), NOW + 2), Review::Authenticated(_)));
    // A directory that is gone, or holds only a corrupt key, changes nothing either.
    assert!(matches!(a.reload_keys(&dir.path().join("gone"), NOW + 4), Err(crate::keys::KeyError::Io { .. })));
    assert!(!dir.path().join("gone").exists());
    std::fs::write(dir.path().join("sa-5-ES256.pem"), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").expect("write");
    assert!(matches!(a.reload_keys(dir.path(), NOW + 6), Err(crate::keys::KeyError::Invalid { .. })));
    assert_eq!(a.keys().signing_key().expect("key").kid(), kid);
    // A rotation is picked up.
    std::fs::remove_file(dir.path().join("sa-5-ES256.pem")).expect("remove");
    let new_kid = KeySet::add(dir.path(), Algorithm::ES256, NOW + 8).expect("rotate");
    assert!(a.reload_keys(dir.path(), NOW + 8).expect("reload"));
    assert_eq!(a.keys().signing_key().expect("key").kid(), new_kid);
}
