//! ServiceAccount tokens: issuing bound (TokenRequest) and legacy (Secret)
//! tokens, and authenticating them exactly as kube-apiserver does, with the
//! same error strings.
//!
//! Object state (does the ServiceAccount, Pod or Secret still exist, with the
//! same uid?) comes through [`ObjectLookup`], which the server feeds from
//! watches, so a review never queries the store.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::jwt::{self, Algorithm, Header};
use crate::keys::{KeyError, KeySet};
use crate::{AUTHENTICATED_GROUP, UserInfo};

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

/// A Secret as token validation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    /// metadata.uid
    pub uid: String,
    /// `data.token`, decoded (legacy token Secrets).
    pub token: Option<String>,
}

/// Current object state, as known to the server (possibly slightly stale).
pub trait ObjectLookup: Send + Sync {
    /// The uid of a ServiceAccount, if it exists.
    fn service_account_uid(&self, namespace: &str, name: &str) -> Option<String>;
    /// The uid of a Pod, if it exists.
    fn pod_uid(&self, namespace: &str, name: &str) -> Option<String>;
    /// A Secret, if it exists.
    fn secret(&self, namespace: &str, name: &str) -> Option<SecretInfo>;
    /// A number that changes whenever any answer above may have changed.
    fn epoch(&self) -> u64;
}

/// Issuer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    /// `iss` of bound tokens, e.g. `https://kubernetes.default.svc.cluster.local`.
    pub issuer: String,
    /// Audiences of the API itself (default audiences of TokenRequest and TokenReview).
    pub api_audiences: Vec<String>,
    /// Upper bound for `expirationSeconds` (longer requests are shortened to this).
    pub max_lifetime_seconds: i64,
}

/// The object a bound token is tied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundObject {
    /// A Pod: the token dies with it.
    Pod {
        /// Pod name.
        name: String,
        /// Pod uid.
        uid: String,
    },
    /// A Secret: the token dies with it.
    Secret {
        /// Secret name.
        name: String,
        /// Secret uid.
        uid: String,
    },
}

/// What a TokenRequest asks for, after validation by the API layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundTokenSpec {
    /// Namespace of the ServiceAccount.
    pub namespace: String,
    /// ServiceAccount name.
    pub service_account: String,
    /// ServiceAccount uid.
    pub service_account_uid: String,
    /// Audiences (empty: the API audiences).
    pub audiences: Vec<String>,
    /// Requested lifetime.
    pub expiration_seconds: i64,
    /// Optional bound object.
    pub bound: Option<BoundObject>,
}

/// An issued token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The JWT.
    pub token: String,
    /// `exp` (unix seconds).
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NameUid {
    name: String,
    uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KubernetesClaims {
    namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod: Option<NameUid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<NameUid>,
    serviceaccount: NameUid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BoundClaims {
    aud: Vec<String>,
    exp: i64,
    iat: i64,
    iss: String,
    jti: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
    nbf: i64,
    sub: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LegacyClaims {
    iss: String,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    namespace: String,
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    secret_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    service_account_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    service_account_uid: String,
    sub: String,
}

/// A successfully authenticated token. Only this module builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    user: UserInfo,
    audiences: Vec<String>,
}

impl Authenticated {
    /// The user the token stands for.
    pub fn user(&self) -> &UserInfo {
        &self.user
    }

    /// The audiences the token was accepted for (the intersection).
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }
}

/// The outcome of reviewing a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Review {
    /// The token is valid for the requested audiences.
    Authenticated(Authenticated),
    /// The token is not a ServiceAccount token of this issuer (TokenReview: `invalid bearer token`).
    NotOurs,
    /// A ServiceAccount token of this issuer that is not valid; the reason uses kube-apiserver's words.
    Rejected(String),
}

impl Review {
    /// The `status.error` of a TokenReview for a failed review.
    pub fn error_message(&self) -> Option<String> {
        match self {
            Review::Authenticated(_) => None,
            Review::NotOurs => Some("invalid bearer token".to_owned()),
            Review::Rejected(why) => Some(format!("[invalid bearer token, {why}]")),
        }
    }
}

/// Formats strings like Go's `%q` on a `[]string`: `["a" "b"]`.
fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| serde_json::to_string(s).unwrap_or_default()).collect();
    format!("[{}]", quoted.join(" "))
}

/// Issues and authenticates ServiceAccount tokens. Cheap to share.
#[derive(Debug)]
pub struct TokenAuthority {
    config: TokenConfig,
    keys: RwLock<KeySet>,
}

// === impl TokenAuthority ===

impl TokenAuthority {
    /// An authority with a key set.
    pub fn new(config: TokenConfig, keys: KeySet) -> Self {
        Self { config, keys: RwLock::new(keys) }
    }

    /// Settings.
    pub fn config(&self) -> &TokenConfig {
        &self.config
    }

    /// The current key set.
    pub fn keys(&self) -> KeySet {
        // A poisoned lock still holds a complete key set (replaced whole).
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the key set (after a rotation).
    pub fn set_keys(&self, keys: KeySet) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    fn sign(&self, claims: &impl Serialize) -> Result<String, KeyError> {
        let keys = self.keys();
        let key = keys.signing_key().ok_or_else(|| KeyError::Crypto("no signing key".into()))?;
        let header = Header { alg: key.alg().as_str().to_owned(), kid: Some(key.kid().to_owned()), crit: None };
        jwt::encode(&header, claims, |input| key.sign(input))
    }

    /// Issues a bound token (TokenRequest).
    pub fn issue_bound(&self, spec: &BoundTokenSpec, now: i64) -> Result<IssuedToken, KeyError> {
        let lifetime = spec.expiration_seconds.min(self.config.max_lifetime_seconds);
        let audiences = if spec.audiences.is_empty() { self.config.api_audiences.clone() } else { spec.audiences.clone() };
        let (pod, secret) = match &spec.bound {
            Some(BoundObject::Pod { name, uid }) => (Some(NameUid { name: name.clone(), uid: uid.clone() }), None),
            Some(BoundObject::Secret { name, uid }) => (None, Some(NameUid { name: name.clone(), uid: uid.clone() })),
            None => (None, None),
        };
        let claims = BoundClaims {
            aud: audiences,
            exp: now + lifetime,
            iat: now,
            iss: self.config.issuer.clone(),
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: KubernetesClaims {
                namespace: spec.namespace.clone(),
                pod,
                secret,
                serviceaccount: NameUid { name: spec.service_account.clone(), uid: spec.service_account_uid.clone() },
            },
            nbf: now,
            sub: format!("system:serviceaccount:{}:{}", spec.namespace, spec.service_account),
        };
        Ok(IssuedToken { token: self.sign(&claims)?, expires_at: now + lifetime })
    }

    /// Issues a legacy token for a `kubernetes.io/service-account-token` Secret.
    pub fn issue_legacy(&self, namespace: &str, service_account: &str, uid: &str, secret: &str) -> Result<String, KeyError> {
        self.sign(&LegacyClaims {
            iss: LEGACY_ISSUER.to_owned(),
            namespace: namespace.to_owned(),
            secret_name: secret.to_owned(),
            service_account_name: service_account.to_owned(),
            service_account_uid: uid.to_owned(),
            sub: format!("system:serviceaccount:{namespace}:{service_account}"),
        })
    }

    /// Authenticates a token for `audiences` (None: the API audiences) at time `now`.
    pub fn review(&self, token: &str, audiences: Option<&[String]>, objects: &dyn ObjectLookup, now: i64) -> Review {
        let token = token.trim();
        let Ok(parsed) = jwt::decode(token) else { return Review::NotOurs };
        let issuer = parsed.claims.get("iss").and_then(Value::as_str).unwrap_or_default();
        let legacy = issuer == LEGACY_ISSUER;
        if !legacy && issuer != self.config.issuer {
            return Review::NotOurs;
        }
        if let Err(why) = self.verify_signature(&parsed) {
            return Review::Rejected(why);
        }
        let requested: &[String] = audiences.filter(|a| !a.is_empty()).unwrap_or(&self.config.api_audiences);
        let result = if legacy {
            self.review_legacy(token, parsed.claims, requested, objects)
        } else {
            self.review_bound(parsed.claims, requested, objects, now)
        };
        match result {
            Ok(ok) => Review::Authenticated(ok),
            Err(why) => Review::Rejected(why),
        }
    }

    fn verify_signature(&self, parsed: &jwt::Unverified<'_>) -> Result<(), String> {
        let keys = self.keys();
        let alg: Algorithm = parsed
            .header
            .alg
            .parse()
            .map_err(|_| format!("unexpected signature algorithm {:?}; expected [\"ES256\" \"RS256\"]", parsed.header.alg))?;
        if parsed.header.crit.is_some() {
            return Err("unsupported critical header".to_owned());
        }
        let candidates: Vec<_> = match &parsed.header.kid {
            Some(kid) => keys.by_kid(kid).into_iter().collect(),
            None => keys.keys().iter().collect(),
        };
        // The key decides the algorithm; a header naming another one never verifies.
        let verified = candidates
            .iter()
            .filter(|k| k.alg() == alg)
            .any(|k| k.verify(parsed.signing_input.as_bytes(), &parsed.signature));
        if verified { Ok(()) } else { Err("invalid signature: no trusted key verifies this token".to_owned()) }
    }

    fn intersect(token_auds: &[String], requested: &[String]) -> Result<Vec<String>, String> {
        let auds: Vec<String> = requested.iter().filter(|a| token_auds.contains(a)).cloned().collect();
        if auds.is_empty() {
            return Err(format!(
                "token audiences {} is invalid for the target audiences {}",
                go_quote_list(token_auds),
                go_quote_list(requested)
            ));
        }
        Ok(auds)
    }

    fn review_bound(&self, claims: Value, requested: &[String], objects: &dyn ObjectLookup, now: i64) -> Result<Authenticated, String> {
        // `aud` may be a single string in JWTs; normalise before the typed decode.
        let mut claims = claims;
        if let Some(aud) = claims.get("aud").and_then(Value::as_str).map(str::to_owned) {
            claims["aud"] = Value::Array(vec![Value::String(aud)]);
        }
        let claims: BoundClaims = serde_json::from_value(claims)
            .map_err(|_| "service account token claims could not be validated due to unexpected validation error".to_owned())?;
        // kube-apiserver checks audiences before times and objects; so do we, so
        // that the first error reported is the same.
        let audiences = Self::intersect(&claims.aud, requested)?;
        if now > claims.exp + LEEWAY_SECONDS {
            return Err("service account token has expired".to_owned());
        }
        if now + LEEWAY_SECONDS < claims.nbf {
            return Err("service account token is not valid yet".to_owned());
        }
        if now + LEEWAY_SECONDS < claims.iat {
            return Err("service account token claims could not be validated due to unexpected validation error".to_owned());
        }
        let ns = &claims.kubernetes.namespace;
        let sa = &claims.kubernetes.serviceaccount;
        if claims.sub != format!("system:serviceaccount:{ns}:{}", sa.name) {
            return Err("service account token claims could not be validated due to unexpected validation error".to_owned());
        }
        let uid = objects.service_account_uid(ns, &sa.name).ok_or_else(|| format!("serviceaccounts \"{}\" not found", sa.name))?;
        if uid != sa.uid {
            return Err(format!("service account UID ({uid}) does not match claim ({})", sa.uid));
        }
        if let Some(secret) = &claims.kubernetes.secret {
            let found = objects.secret(ns, &secret.name).ok_or_else(|| "service account token has been invalidated".to_owned())?;
            if found.uid != secret.uid {
                return Err(format!("secret UID ({}) does not match service account secret ref claim ({})", found.uid, secret.uid));
            }
        }
        let mut extra = BTreeMap::new();
        extra.insert(EXTRA_CREDENTIAL_ID.to_owned(), vec![format!("JTI={}", claims.jti)]);
        if let Some(pod) = &claims.kubernetes.pod {
            let uid = objects.pod_uid(ns, &pod.name).ok_or_else(|| "service account token has been invalidated".to_owned())?;
            if uid != pod.uid {
                return Err(format!("pod UID ({uid}) does not match service account pod ref claim ({})", pod.uid));
            }
            extra.insert(EXTRA_POD_NAME.to_owned(), vec![pod.name.clone()]);
            extra.insert(EXTRA_POD_UID.to_owned(), vec![pod.uid.clone()]);
        }
        Ok(Authenticated { user: service_account_user(ns, &sa.name, &sa.uid, extra), audiences })
    }

    fn review_legacy(&self, token: &str, claims: Value, requested: &[String], objects: &dyn ObjectLookup) -> Result<Authenticated, String> {
        let claims: LegacyClaims = serde_json::from_value(claims)
            .map_err(|_| "service account token claims could not be validated due to unexpected validation error".to_owned())?;
        let audiences = Self::intersect(&self.config.api_audiences, requested)?;
        let ns = &claims.namespace;
        let secret = objects.secret(ns, &claims.secret_name).ok_or_else(|| "token has been invalidated".to_owned())?;
        if secret.token.as_deref() != Some(token) {
            return Err("token does not match secret".to_owned());
        }
        let name = &claims.service_account_name;
        let uid = objects.service_account_uid(ns, name).ok_or_else(|| format!("serviceaccounts \"{name}\" not found"))?;
        if uid != claims.service_account_uid {
            return Err(format!("service account UID ({uid}) does not match claim ({})", claims.service_account_uid));
        }
        Ok(Authenticated { user: service_account_user(ns, name, &uid, BTreeMap::new()), audiences })
    }
}

fn service_account_user(namespace: &str, name: &str, uid: &str, extra: BTreeMap<String, Vec<String>>) -> UserInfo {
    UserInfo {
        username: format!("system:serviceaccount:{namespace}:{name}"),
        uid: uid.to_owned(),
        groups: vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{namespace}"),
            AUTHENTICATED_GROUP.to_owned(),
        ],
        extra,
    }
}

/// A short-lived cache of review results keyed by token hash and audiences.
/// Entries die after `ttl_seconds`, at the token's expiry, or as soon as the
/// object lookup's epoch moves (any ServiceAccount/Pod/Secret change).
#[derive(Debug)]
pub struct ReviewCache {
    entries: RwLock<std::collections::HashMap<[u8; 32], CacheEntry>>,
    ttl_seconds: i64,
    capacity: usize,
}

#[derive(Debug, Clone)]
struct CacheEntry {
    review: Arc<Review>,
    epoch: u64,
    expires_at: i64,
}

// === impl ReviewCache ===

impl ReviewCache {
    /// A cache holding up to `capacity` results for `ttl_seconds`.
    pub fn new(ttl_seconds: i64, capacity: usize) -> Self {
        Self { entries: RwLock::new(Default::default()), ttl_seconds, capacity }
    }

    fn key(token: &str, audiences: Option<&[String]>) -> [u8; 32] {
        // Every part is length-prefixed, so no (token, audiences) pair can
        // produce the key of another.
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut part = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_be_bytes());
            ctx.update(bytes);
        };
        part(token.as_bytes());
        match audiences {
            None => part(b"default"),
            Some(list) => {
                part(&(list.len() as u64).to_be_bytes());
                for a in list {
                    part(a.as_bytes());
                }
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// Reviews through the cache.
    pub fn review(&self, authority: &TokenAuthority, token: &str, audiences: Option<&[String]>, objects: &dyn ObjectLookup, now: i64) -> Arc<Review> {
        let key = Self::key(token, audiences);
        let epoch = objects.epoch();
        if let Some(hit) = self.entries.read().unwrap_or_else(|p| p.into_inner()).get(&key)
            && hit.epoch == epoch
            && now < hit.expires_at
        {
            return hit.review.clone();
        }
        let review = Arc::new(authority.review(token, audiences, objects, now));
        // Never cache past the token's own expiry.
        let token_exp = jwt::decode(token).ok().and_then(|t| t.claims.get("exp").and_then(Value::as_i64)).unwrap_or(i64::MAX);
        let expires_at = (now + self.ttl_seconds).min(token_exp.saturating_add(LEEWAY_SECONDS));
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key, CacheEntry { review: review.clone(), epoch, expires_at });
        review
    }
}

#[cfg(test)]
mod tests;
