//! The ServiceAccount token verifier: every rule about a token that does not
//! need the API's object state, in one place, for both the server's TokenReview
//! (`tessera-authn`) and the middleware's offline JWKS mode (`tessera-auth`).
//!
//! # Rules, in kube-apiserver's order
//! 1. The token is three base64url parts of JSON, at most
//!    [`MAX_TOKEN_BYTES`](crate::jws::MAX_TOKEN_BYTES); its `iss` is the
//!    verifier's issuer (or, on the server, the legacy issuer). Otherwise it is
//!    [`Rejection::NotOurs`]: TokenReview says only `invalid bearer token`.
//! 2. Signature: the keys with the header's `kid` (every key when there is
//!    none; `invalid signature, no keys found` when none has it). The *key*
//!    decides the algorithm: `alg` must be ES256 or RS256 and equal the key's,
//!    so `alg: none` and HMAC keyed with a public key ("algorithm confusion")
//!    have no code path that could accept them. Any `crit` header is refused.
//! 3. Audiences: the token's `aud` (none: the API audiences, as for legacy
//!    tokens) must meet the requested ones, with kube-apiserver's message.
//!    Unlike kube-apiserver, an empty intersection is refused even when the
//!    verifier has no API audiences (the middleware), never waved through.
//! 4. Times, bound tokens only, with go-jose's 60 s leeway and order: `nbf`,
//!    then `exp` (required: every bound token has one, a token without it is
//!    refused), then `iat` (optional, as in kube-apiserver, but not in the future).
//! 5. Claims: `sub` is `system:serviceaccount:NS:NAME` of the `kubernetes.io`
//!    claims, with a namespace and a name.
//!
//! Whether the ServiceAccount, Pod or Secret still exists is the caller's
//! business: the server checks it; offline verification cannot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::jws::{self, Algorithm};
use crate::key::PublicKeys;

/// The issuer of legacy Secret-based tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
/// Leeway for `exp`/`nbf`/`iat` checks (go-jose's default, which kube-apiserver uses).
pub const LEEWAY_SECONDS: i64 = 60;
/// Extra key: credential id.
pub const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";
/// Extra key: bound pod name.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// Extra key: bound pod uid.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// Why a token is refused. The messages are the text after
/// `invalid bearer token, ` in a TokenReview's `status.error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not a token of this issuer: malformed, too large, or another `iss`.
    #[error("invalid bearer token")]
    NotOurs,
    /// No trusted key has the token's key id (kube-apiserver's words).
    #[error("invalid signature, no keys found")]
    UnknownKey {
        /// The `kid` header, if any.
        kid: Option<String>,
    },
    /// `alg` is not one tessera verifies with (`none`, `HS256`, …).
    #[error("unexpected signature algorithm {0:?}; expected [\"ES256\" \"RS256\"]")]
    UnsupportedAlgorithm(String),
    /// The header has `crit`: no extension is understood, so none is accepted.
    #[error("unsupported critical header")]
    CriticalHeader,
    /// No candidate key verifies the signature (or `alg` is not the key's).
    #[error("invalid signature: no trusted key verifies this token")]
    BadSignature,
    /// The token is not for any requested audience.
    #[error("token audiences {} is invalid for the target audiences {}", go_quote_list(.token), go_quote_list(.requested))]
    WrongAudience {
        /// The token's audiences.
        token: Vec<String>,
        /// The audiences asked for.
        requested: Vec<String>,
    },
    /// `exp` (plus leeway) has passed.
    #[error("service account token has expired")]
    Expired,
    /// `nbf` (minus leeway) has not come yet.
    #[error("service account token is not valid yet")]
    NotYetValid,
    /// `iat` (minus leeway) lies in the future.
    #[error("service account token is issued in the future")]
    IssuedInTheFuture,
    /// The claims do not have the ServiceAccount token shape (kube-apiserver's opaque message).
    #[error("service account token claims could not be validated due to unexpected validation error")]
    Claims,
}

/// Formats strings like Go's `%q` on a `[]string`: `["a" "b"]`.
fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| serde_json::to_string(s).unwrap_or_default()).collect();
    format!("[{}]", quoted.join(" "))
}

/// A name and uid pair in the `kubernetes.io` claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameUid {
    /// Object name.
    pub name: String,
    /// Object uid.
    pub uid: String,
}

/// The `kubernetes.io` claim of a bound token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The Pod the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<NameUid>,
    /// The Secret the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<NameUid>,
    /// The ServiceAccount.
    pub serviceaccount: NameUid,
}

/// `aud` as JWTs allow it: one string or a list.
fn audiences<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(a)) => vec![a],
        Some(OneOrMany::Many(list)) => list,
    })
}

/// The claims of a bound (TokenRequest) token, as issued and as verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundClaims {
    /// Audiences.
    #[serde(default, deserialize_with = "audiences")]
    pub aud: Vec<String>,
    /// Expiry (unix seconds).
    pub exp: i64,
    /// Issued at (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Issuer.
    pub iss: String,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// ServiceAccount, Pod, Secret.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
    /// Not before (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// `system:serviceaccount:NS:NAME`.
    pub sub: String,
}

// === impl BoundClaims ===

impl BoundClaims {
    /// The user name the token stands for.
    pub fn username(&self) -> String {
        service_account_username(&self.kubernetes.namespace, &self.kubernetes.serviceaccount.name)
    }

    /// The groups of the ServiceAccount.
    pub fn groups(&self) -> Vec<String> {
        service_account_groups(&self.kubernetes.namespace)
    }

    /// `UserInfo.extra`: the credential id and the bound pod, as kube-apiserver reports them.
    pub fn extra(&self) -> BTreeMap<String, Vec<String>> {
        let mut extra = BTreeMap::new();
        if let Some(jti) = self.jti.as_deref().filter(|j| !j.is_empty()) {
            extra.insert(EXTRA_CREDENTIAL_ID.to_owned(), vec![format!("JTI={jti}")]);
        }
        if let Some(pod) = &self.kubernetes.pod {
            extra.insert(EXTRA_POD_NAME.to_owned(), vec![pod.name.clone()]);
            extra.insert(EXTRA_POD_UID.to_owned(), vec![pod.uid.clone()]);
        }
        extra
    }
}

/// The claims of a legacy (Secret) token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyClaims {
    /// Always [`LEGACY_ISSUER`].
    pub iss: String,
    /// Namespace.
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    pub namespace: String,
    /// The token Secret.
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    pub secret_name: String,
    /// ServiceAccount name.
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    pub service_account_name: String,
    /// ServiceAccount uid.
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    pub service_account_uid: String,
    /// `system:serviceaccount:NS:NAME`.
    pub sub: String,
}

/// `system:serviceaccount:NS:NAME`.
pub fn service_account_username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The groups every ServiceAccount of `namespace` is in.
pub fn service_account_groups(namespace: &str) -> Vec<String> {
    vec!["system:serviceaccounts".to_owned(), format!("system:serviceaccounts:{namespace}"), "system:authenticated".to_owned()]
}

/// A token whose signature, issuer, audience and times are good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// A bound (TokenRequest) token.
    Bound {
        /// Its claims.
        claims: BoundClaims,
        /// The requested audiences it is valid for.
        audiences: Vec<String>,
    },
    /// A legacy Secret token (only when the verifier accepts them).
    Legacy {
        /// Its claims.
        claims: LegacyClaims,
        /// The requested audiences it is valid for.
        audiences: Vec<String>,
    },
}

/// Who verifies: the issuer and audiences of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    /// `iss` of bound tokens.
    pub issuer: String,
    /// Whether legacy Secret tokens are verified (the server) or not ours (offline: they need the Secret).
    pub accept_legacy: bool,
    /// The API's own audiences: what tokens without `aud` are for, and what is
    /// asked for when the caller asks for nothing. Empty for the middleware.
    pub api_audiences: Vec<String>,
}

// === impl Verifier ===

impl Verifier {
    /// Verifies `token` with `keys` for `requested` audiences (empty: the API
    /// audiences) at `now` (unix seconds). See the module docs for the rules.
    pub fn verify(&self, token: &str, keys: &PublicKeys, requested: &[String], now: i64) -> Result<Verified, Rejection> {
        let parsed = jws::decode(token).map_err(|_| Rejection::NotOurs)?;
        let issuer = parsed.claims.get("iss").and_then(Value::as_str).unwrap_or_default();
        let legacy = issuer == LEGACY_ISSUER && self.accept_legacy;
        if !legacy && issuer != self.issuer {
            return Err(Rejection::NotOurs);
        }
        verify_signature(&parsed, keys)?;
        let requested = if requested.is_empty() { &self.api_audiences } else { requested };
        if legacy {
            let claims: LegacyClaims = serde_json::from_value(parsed.claims).map_err(|_| Rejection::Claims)?;
            let audiences = self.intersect(&[], requested)?;
            return Ok(Verified::Legacy { claims, audiences });
        }
        let claims: BoundClaims = serde_json::from_value(parsed.claims).map_err(|_| Rejection::Claims)?;
        // kube-apiserver checks audiences before times, so the first error reported is the same.
        let audiences = self.intersect(&claims.aud, requested)?;
        check_times(&claims, now)?;
        let k8s = &claims.kubernetes;
        if k8s.namespace.is_empty() || k8s.serviceaccount.name.is_empty() || claims.sub != claims.username() {
            return Err(Rejection::Claims);
        }
        Ok(Verified::Bound { claims, audiences })
    }

    fn intersect(&self, token_audiences: &[String], requested: &[String]) -> Result<Vec<String>, Rejection> {
        let token_audiences = if token_audiences.is_empty() { &self.api_audiences } else { token_audiences };
        let audiences: Vec<String> = requested.iter().filter(|a| token_audiences.contains(a)).cloned().collect();
        if audiences.is_empty() {
            return Err(Rejection::WrongAudience { token: token_audiences.to_vec(), requested: requested.to_vec() });
        }
        Ok(audiences)
    }
}

fn verify_signature(parsed: &jws::Unverified<'_>, keys: &PublicKeys) -> Result<(), Rejection> {
    let kid = parsed.header.kid.as_deref();
    let mut candidates = keys.candidates(kid).peekable();
    if candidates.peek().is_none() {
        return Err(Rejection::UnknownKey { kid: kid.map(str::to_owned) });
    }
    let alg: Algorithm = parsed.header.alg.parse().map_err(|_| Rejection::UnsupportedAlgorithm(parsed.header.alg.clone()))?;
    if parsed.header.crit.is_some() {
        return Err(Rejection::CriticalHeader);
    }
    // The key decides the algorithm; a header naming another one never verifies.
    let verified = candidates.filter(|key| key.alg() == alg).any(|key| key.verify(parsed.signing_input.as_bytes(), &parsed.signature));
    if verified { Ok(()) } else { Err(Rejection::BadSignature) }
}

fn check_times(claims: &BoundClaims, now: i64) -> Result<(), Rejection> {
    if claims.nbf.is_some_and(|nbf| now.saturating_add(LEEWAY_SECONDS) < nbf) {
        return Err(Rejection::NotYetValid);
    }
    if now > claims.exp.saturating_add(LEEWAY_SECONDS) {
        return Err(Rejection::Expired);
    }
    if claims.iat.is_some_and(|iat| now.saturating_add(LEEWAY_SECONDS) < iat) {
        return Err(Rejection::IssuedInTheFuture);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
