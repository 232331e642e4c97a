//! The verifier's own rules; the same attacks run against the server and the
//! middleware in their crates.

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

use super::*;
use crate::attacks::{AUDIENCE, Issuer};
use crate::key::PublicKey;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const NOW: i64 = 1_800_000_000;

struct Key {
    pair: EcdsaKeyPair,
    public: PublicKey,
}

fn key() -> Key {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = PublicKey::Es256 { point: pair.public_key().as_ref().to_vec() };
    Key { pair, public }
}

fn sign(pair: &EcdsaKeyPair) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
    |input| pair.sign(&SystemRandom::new(), input).unwrap().as_ref().to_vec()
}

fn server() -> Verifier {
    Verifier { issuer: ISSUER.into(), accept_legacy: true, api_audiences: vec![ISSUER.into()] }
}

fn aud() -> Vec<String> {
    vec![AUDIENCE.to_owned()]
}

#[test]
fn every_attack_gets_its_rejection() {
    let k = key();
    let signer = sign(&k.pair);
    let issuer = Issuer { issuer: ISSUER, kid: "k1", public_key: &k.public, sign: &signer, service_account_uid: "uid-1", now: NOW };
    let keys = PublicKeys::new(vec![("k1".into(), k.public.clone())]);
    for verifier in [server(), Verifier { issuer: ISSUER.into(), accept_legacy: false, api_audiences: vec![] }] {
        for attack in issuer.attacks() {
            assert_eq!(verifier.verify(&attack.token, &keys, &aud(), NOW), Err(attack.rejection), "{}", attack.name);
        }
        for token in [issuer.good_token(), issuer.token_without_iat()] {
            let Ok(Verified::Bound { claims, audiences }) = verifier.verify(&token, &keys, &aud(), NOW) else { panic!("refused") };
            assert_eq!(audiences, aud());
            assert_eq!(claims.username(), "system:serviceaccount:api:api");
            assert_eq!(claims.extra()[EXTRA_CREDENTIAL_ID], ["JTI=5a3b1c2d-0000-4000-8000-000000000001"]);
        }
    }
}

#[test]
fn messages_are_kube_apiservers() {
    let wrong = Rejection::WrongAudience { token: vec!["data-store".into()], requested: vec!["other".into(), "x\"y".into()] };
    assert_eq!(wrong.to_string(), r#"token audiences ["data-store"] is invalid for the target audiences ["other" "x\"y"]"#);
    assert_eq!(Rejection::UnknownKey { kid: None }.to_string(), "invalid signature, no keys found");
    assert_eq!(Rejection::UnsupportedAlgorithm("none".into()).to_string(), r#"unexpected signature algorithm "none"; expected ["ES256" "RS256"]"#);
    assert_eq!(Rejection::IssuedInTheFuture.to_string(), "service account token is issued in the future");
}

#[test]
fn leeway_is_sixty_seconds_each_way() {
    let k = key();
    let signer = sign(&k.pair);
    let issuer = Issuer { issuer: ISSUER, kid: "k1", public_key: &k.public, sign: &signer, service_account_uid: "uid-1", now: NOW };
    let keys = PublicKeys::new(vec![("k1".into(), k.public.clone())]);
    let token = issuer.token(|c| {
        c["exp"] = (NOW + 10).into();
        c["nbf"] = (NOW + 60).into();
        c["iat"] = (NOW + 60).into();
    });
    assert!(server().verify(&token, &keys, &aud(), NOW).is_ok());
    assert!(server().verify(&token, &keys, &aud(), NOW + 70).is_ok());
    assert_eq!(server().verify(&token, &keys, &aud(), NOW + 71), Err(Rejection::Expired));
    assert_eq!(server().verify(&token, &keys, &aud(), NOW - 1), Err(Rejection::NotYetValid));
}

#[test]
fn kid_selection() {
    let (a, b) = (key(), key());
    let signer = sign(&b.pair);
    let issuer = Issuer { issuer: ISSUER, kid: "b", public_key: &b.public, sign: &signer, service_account_uid: "u", now: NOW };
    let keys = PublicKeys::new(vec![("a".into(), a.public.clone()), ("b".into(), b.public.clone())]);
    // Without a kid every key is tried, as kube-apiserver does.
    let no_kid = issuer.sign_with(&serde_json::json!({"alg": "ES256"}), &issuer.claims());
    assert!(server().verify(&no_kid, &keys, &aud(), NOW).is_ok());
    // With a kid only that key: b's token under a's kid fails.
    let wrong_kid = issuer.sign_with(&serde_json::json!({"alg": "ES256", "kid": "a"}), &issuer.claims());
    assert_eq!(server().verify(&wrong_kid, &keys, &aud(), NOW), Err(Rejection::BadSignature));
    assert_eq!(server().verify(&no_kid, &PublicKeys::default(), &aud(), NOW), Err(Rejection::UnknownKey { kid: None }));
}

#[test]
fn audiences() {
    let k = key();
    let signer = sign(&k.pair);
    let issuer = Issuer { issuer: ISSUER, kid: "k1", public_key: &k.public, sign: &signer, service_account_uid: "u", now: NOW };
    let keys = PublicKeys::new(vec![("k1".into(), k.public.clone())]);
    // `aud` as a single string; nothing requested means the API audiences.
    let api = issuer.token(|c| c["aud"] = ISSUER.into());
    let Ok(Verified::Bound { audiences, .. }) = server().verify(&api, &keys, &[], NOW) else { panic!("refused") };
    assert_eq!(audiences, [ISSUER]);
    // No `aud`: for the API audiences only, and never for the middleware, which has none.
    let none = issuer.token(|c| drop(c.as_object_mut().map(|c| c.remove("aud"))));
    assert!(server().verify(&none, &keys, &[], NOW).is_ok());
    let offline = Verifier { issuer: ISSUER.into(), accept_legacy: false, api_audiences: vec![] };
    assert_eq!(offline.verify(&none, &keys, &aud(), NOW), Err(Rejection::WrongAudience { token: vec![], requested: aud() }));
}

#[test]
fn legacy_tokens_only_where_accepted() {
    let k = key();
    let signer = sign(&k.pair);
    let issuer = Issuer { issuer: ISSUER, kid: "k1", public_key: &k.public, sign: &signer, service_account_uid: "u", now: NOW };
    let keys = PublicKeys::new(vec![("k1".into(), k.public.clone())]);
    let claims = serde_json::json!({
        "iss": LEGACY_ISSUER, "kubernetes.io/serviceaccount/namespace": "api", "kubernetes.io/serviceaccount/secret.name": "s",
        "kubernetes.io/serviceaccount/service-account.name": "api", "kubernetes.io/serviceaccount/service-account.uid": "u",
        "sub": "system:serviceaccount:api:api",
    });
    let token = issuer.sign_with(&serde_json::json!({"alg": "ES256", "kid": "k1"}), &claims);
    let Ok(Verified::Legacy { audiences, .. }) = server().verify(&token, &keys, &[], NOW) else { panic!("refused") };
    assert_eq!(audiences, [ISSUER]);
    assert_eq!(server().verify(&token, &keys, &aud(), NOW), Err(Rejection::WrongAudience { token: vec![ISSUER.into()], requested: aud() }));
    let offline = Verifier { issuer: ISSUER.into(), accept_legacy: false, api_audiences: vec![] };
    assert_eq!(offline.verify(&token, &keys, &aud(), NOW), Err(Rejection::NotOurs));
}
