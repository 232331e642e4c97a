//! Forged and mis-issued tokens, one per rejection rule of [`crate::verify`],
//! each with the exact rejection it must get. Every user of the verifier (the
//! server's TokenReview, the middleware's JWKS mode) runs this same list, so
//! each rule is attacked once, the same way, against both.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};

use crate::jws::{Algorithm, MAX_TOKEN_BYTES};
use crate::key::PublicKey;
use crate::verify::{LEEWAY_SECONDS, Rejection};

/// The audience every attack asks for.
pub const AUDIENCE: &str = "data-store";
/// Namespace of the attacked ServiceAccount.
pub const NAMESPACE: &str = "api";
/// Name of the attacked ServiceAccount.
pub const SERVICE_ACCOUNT: &str = "api";

/// How far beyond the leeway the time attacks are, so that they hold however
/// long an end-to-end test takes to send them (the leeway's exact edges are
/// the verifier's unit tests).
const MARGIN: i64 = 600;

/// One attack: a token and what the verifier must say about it.
#[derive(Debug, Clone)]
pub struct Attack {
    /// What the attacker tries.
    pub name: &'static str,
    /// The token sent.
    pub token: String,
    /// The refusal it must get.
    pub rejection: Rejection,
}

/// The trusted signer, through which tests mint what only the issuer could
/// (so that each claim rule is tested on its own, with a good signature).
pub struct Issuer<'a> {
    /// `iss` of the deployment.
    pub issuer: &'a str,
    /// The trusted key's id.
    pub kid: &'a str,
    /// The trusted key's public half.
    pub public_key: &'a PublicKey,
    /// Signs with the trusted key.
    pub sign: &'a dyn Fn(&[u8]) -> Vec<u8>,
    /// uid of the ServiceAccount `api/api`.
    pub service_account_uid: &'a str,
    /// The time of the review (unix seconds).
    pub now: i64,
}

fn encode(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!("{}.{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()), B64.encode(signature))
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()))
}

// === impl Issuer ===

impl Issuer<'_> {
    /// Claims of a good token for [`AUDIENCE`], valid for ten minutes from now.
    pub fn claims(&self) -> Value {
        json!({
            "aud": [AUDIENCE], "exp": self.now + 600, "iat": self.now, "nbf": self.now, "iss": self.issuer,
            "jti": "5a3b1c2d-0000-4000-8000-000000000001",
            "kubernetes.io": {"namespace": NAMESPACE, "serviceaccount": {"name": SERVICE_ACCOUNT, "uid": self.service_account_uid}},
            "sub": format!("system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"),
        })
    }

    fn header(&self) -> Value {
        json!({"alg": self.public_key.alg().as_str(), "kid": self.kid})
    }

    /// `header` and `claims` signed with the trusted key.
    pub fn sign_with(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        format!("{input}.{}", B64.encode((self.sign)(input.as_bytes())))
    }

    /// A good token with `edit` applied to its claims, signed with the trusted key.
    pub fn token(&self, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = self.claims();
        edit(&mut claims);
        self.sign_with(&self.header(), &claims)
    }

    /// A token the verifier must accept.
    pub fn good_token(&self) -> String {
        self.token(|_| {})
    }

    /// A good token without `iat`, which kube-apiserver (go-jose) accepts: the
    /// claim is optional and only checked when present.
    pub fn token_without_iat(&self) -> String {
        self.token(|c| drop(c.as_object_mut().map(|c| c.remove("iat"))))
    }

    /// Every attack, each with its exact rejection.
    pub fn attacks(&self) -> Vec<Attack> {
        let now = self.now;
        let attack = |name, token, rejection| Attack { name, token, rejection };
        let good = self.claims();
        let other_alg = match self.public_key.alg() {
            Algorithm::ES256 => "RS256",
            Algorithm::RS256 => "ES256",
        };
        let good_signature = |header: &Value| (self.sign)(signing_input(header, &good).as_bytes());
        let hmac_header = json!({"alg": "HS256", "kid": self.kid});
        let public_jwk = self.public_key.to_jwk(self.kid).to_string();
        let mac = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, public_jwk.as_bytes()), signing_input(&hmac_header, &good).as_bytes());
        let stranger = {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key generation");
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("generated key")
        };
        let stranger_header = json!({"alg": "ES256", "kid": self.kid});
        let stranger_signature =
            stranger.sign(&SystemRandom::new(), signing_input(&stranger_header, &good).as_bytes()).expect("signing").as_ref().to_vec();
        let tampered = {
            let token = self.good_token();
            let mut parts: Vec<&str> = token.split('.').collect();
            let mut claims = good.clone();
            claims["kubernetes.io"]["serviceaccount"]["name"] = "admin".into();
            claims["sub"] = format!("system:serviceaccount:{NAMESPACE}:admin").into();
            let payload = B64.encode(claims.to_string());
            parts[1] = &payload;
            parts.join(".")
        };
        vec![
            attack("expired", self.token(|c| c["exp"] = (now - LEEWAY_SECONDS - MARGIN).into()), Rejection::Expired),
            attack("not yet valid", self.token(|c| c["nbf"] = (now + LEEWAY_SECONDS + MARGIN).into()), Rejection::NotYetValid),
            attack("issued in the future", self.token(|c| c["iat"] = (now + LEEWAY_SECONDS + MARGIN).into()), Rejection::IssuedInTheFuture),
            attack("no expiry", self.token(|c| drop(c.as_object_mut().map(|c| c.remove("exp")))), Rejection::Claims),
            attack(
                "wrong audience",
                self.token(|c| c["aud"] = json!(["other"])),
                Rejection::WrongAudience { token: vec!["other".into()], requested: vec![AUDIENCE.into()] },
            ),
            attack("wrong issuer", self.token(|c| c["iss"] = "https://evil.example".into()), Rejection::NotOurs),
            attack("alg none", encode(&json!({"alg": "none", "kid": self.kid}), &good, b""), Rejection::UnsupportedAlgorithm("none".into())),
            attack("HMAC keyed with the public key", encode(&hmac_header, &good, mac.as_ref()), Rejection::UnsupportedAlgorithm("HS256".into())),
            attack(
                "the other asymmetric algorithm on our key",
                encode(&json!({"alg": other_alg, "kid": self.kid}), &good, &good_signature(&self.header())),
                Rejection::BadSignature,
            ),
            attack(
                "unknown kid",
                self.sign_with(&json!({"alg": self.public_key.alg().as_str(), "kid": "no-such-key"}), &good),
                Rejection::UnknownKey { kid: Some("no-such-key".into()) },
            ),
            attack(
                "critical header",
                self.sign_with(&json!({"alg": self.public_key.alg().as_str(), "kid": self.kid, "crit": ["exp"]}), &good),
                Rejection::CriticalHeader,
            ),
            attack("signed by a stranger under our kid", encode(&stranger_header, &good, &stranger_signature), Rejection::BadSignature),
            attack("claims changed after signing", tampered, Rejection::BadSignature),
            attack(
                "subject of another ServiceAccount",
                self.token(|c| c["sub"] = "system:serviceaccount:kube-system:admin".into()),
                Rejection::Claims,
            ),
            attack("garbage", "garbage.token.here".into(), Rejection::NotOurs),
            attack("larger than a token may be", self.token(|c| c["pad"] = "x".repeat(MAX_TOKEN_BYTES).into()), Rejection::NotOurs),
        ]
    }
}
