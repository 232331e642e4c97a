//! ServiceAccount tokens: issuing bound (TokenRequest) and legacy (Secret)
//! tokens, and authenticating them exactly as kube-apiserver does, with the
//! same error strings.
//!
//! Object state (does the ServiceAccount, Pod or Secret still exist, with the
//! same uid?) comes through [`ObjectLookup`], which the server feeds from
//! watches, so a review never queries the store.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde_json::Value;
use tessera_token::cache::{BoundedCache, CacheKey, cache_key, heap_bytes};
use tessera_token::jws::{self, Header, MAX_TOKEN_BYTES};
use tessera_token::verify::{
    BoundClaims, KubernetesClaims, LegacyClaims, NameUid, Rejection, Verified, Verifier, service_account_groups, service_account_username,
};
pub use tessera_token::verify::{EXTRA_CREDENTIAL_ID, EXTRA_POD_NAME, EXTRA_POD_UID, LEEWAY_SECONDS, LEGACY_ISSUER};

use crate::keys::{KeyError, KeySet};
use crate::UserInfo;

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

/// Why a token cannot be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The token would be larger than TokenReview (and bearer authentication) accepts.
    #[error("the token would be {bytes} bytes, but tokens must have at most {limit} bytes")]
    TooLarge {
        /// The size of the token that was not signed.
        bytes: usize,
        /// [`MAX_TOKEN_BYTES`].
        limit: usize,
    },
    /// Signing failed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Issues and authenticates ServiceAccount tokens. Cheap to share.
#[derive(Debug)]
pub struct TokenAuthority {
    config: TokenConfig,
    /// The shared verification rules, for this issuer (legacy tokens included).
    verifier: Verifier,
    keys: RwLock<KeySet>,
}

// === impl TokenAuthority ===

impl TokenAuthority {
    /// An authority with a key set.
    pub fn new(config: TokenConfig, keys: KeySet) -> Self {
        let verifier = Verifier { issuer: config.issuer.clone(), accept_legacy: true, api_audiences: config.api_audiences.clone() };
        Self { config, verifier, keys: RwLock::new(keys) }
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

    /// Re-reads the key directory (new keys from `tessera server keys rotate`,
    /// expired ones dropped). Never creates a key: when the directory holds no
    /// usable key the current set stays and the error is returned, for the
    /// caller to log. Returns whether the set changed. Blocking file I/O: call
    /// it off the async threads.
    pub fn reload_keys(&self, dir: &std::path::Path, now: i64) -> Result<bool, KeyError> {
        let fresh = KeySet::load(dir, now, self.config.max_lifetime_seconds)?;
        if fresh.same_keys(&self.keys()) {
            return Ok(false);
        }
        self.set_keys(fresh);
        Ok(true)
    }

    /// Signs `claims` with the newest key, refusing (before signing) a token
    /// that TokenReview would refuse for its size.
    fn sign(&self, claims: &impl Serialize) -> Result<String, IssueError> {
        let keys = self.keys();
        let key = keys.signing_key().ok_or_else(|| KeyError::Crypto("no signing key".into()))?;
        let header = Header { alg: key.alg().as_str().to_owned(), kid: Some(key.kid().to_owned()), crit: None };
        let input = jws::signing_input(&header, claims).map_err(KeyError::from)?;
        let bytes = jws::encoded_len(input.len(), key.signature_len());
        if bytes > MAX_TOKEN_BYTES {
            return Err(IssueError::TooLarge { bytes, limit: MAX_TOKEN_BYTES });
        }
        let signature = key.sign(input.as_bytes())?;
        Ok(jws::finish(input, &signature))
    }

    /// Issues a bound token (TokenRequest).
    pub fn issue_bound(&self, spec: &BoundTokenSpec, now: i64) -> Result<IssuedToken, IssueError> {
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
            iat: Some(now),
            iss: self.config.issuer.clone(),
            jti: Some(uuid::Uuid::new_v4().to_string()),
            kubernetes: KubernetesClaims {
                namespace: spec.namespace.clone(),
                pod,
                secret,
                serviceaccount: NameUid { name: spec.service_account.clone(), uid: spec.service_account_uid.clone() },
            },
            nbf: Some(now),
            sub: format!("system:serviceaccount:{}:{}", spec.namespace, spec.service_account),
        };
        Ok(IssuedToken { token: self.sign(&claims)?, expires_at: now + lifetime })
    }

    /// Issues a legacy token for a `kubernetes.io/service-account-token` Secret.
    pub fn issue_legacy(&self, namespace: &str, service_account: &str, uid: &str, secret: &str) -> Result<String, IssueError> {
        self.sign(&LegacyClaims {
            iss: LEGACY_ISSUER.to_owned(),
            namespace: namespace.to_owned(),
            secret_name: secret.to_owned(),
            service_account_name: service_account.to_owned(),
            service_account_uid: uid.to_owned(),
            sub: format!("system:serviceaccount:{namespace}:{service_account}"),
        })
    }

    /// Authenticates a token for `audiences` (None: the API audiences) at time
    /// `now`: the shared verifier's rules, then the objects the token names.
    pub fn review(&self, token: &str, audiences: Option<&[String]>, objects: &dyn ObjectLookup, now: i64) -> Review {
        let token = token.trim();
        let keys = self.keys();
        let result = match self.verifier.verify(token, keys.public_keys(), audiences.unwrap_or_default(), now) {
            Err(Rejection::NotOurs) => return Review::NotOurs,
            Err(why) => Err(why.to_string()),
            Ok(Verified::Bound { claims, audiences }) => Self::check_bound(claims, audiences, objects),
            Ok(Verified::Legacy { claims, audiences }) => Self::check_legacy(token, claims, audiences, objects),
        };
        match result {
            Ok(ok) => Review::Authenticated(ok),
            Err(why) => Review::Rejected(why),
        }
    }

    /// The bound token's ServiceAccount, and its Pod or Secret, must still exist with the same uid.
    fn check_bound(claims: BoundClaims, audiences: Vec<String>, objects: &dyn ObjectLookup) -> Result<Authenticated, String> {
        let ns = &claims.kubernetes.namespace;
        let sa = &claims.kubernetes.serviceaccount;
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
        if let Some(pod) = &claims.kubernetes.pod {
            let uid = objects.pod_uid(ns, &pod.name).ok_or_else(|| "service account token has been invalidated".to_owned())?;
            if uid != pod.uid {
                return Err(format!("pod UID ({uid}) does not match service account pod ref claim ({})", pod.uid));
            }
        }
        Ok(Authenticated { user: service_account_user(ns, &sa.name, &sa.uid, claims.extra()), audiences })
    }

    /// A legacy token lives exactly as long as its Secret (holding this very token) and its ServiceAccount.
    fn check_legacy(token: &str, claims: LegacyClaims, audiences: Vec<String>, objects: &dyn ObjectLookup) -> Result<Authenticated, String> {
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
    UserInfo { username: service_account_username(namespace, name), uid: uid.to_owned(), groups: service_account_groups(namespace), extra }
}

/// Heap bytes held by a review result (what the review cache charges for it).
fn review_bytes(review: &Review) -> usize {
    let string = |s: &String| heap_bytes(s.len());
    let list = |l: &[String]| heap_bytes(size_of_val(l)) + l.iter().map(string).sum::<usize>();
    // The Arc's block: the review and two counts.
    heap_bytes(size_of::<Review>() + 16)
        + match review {
            Review::NotOurs => 0,
            Review::Rejected(why) => string(why),
            Review::Authenticated(ok) => {
                let user = &ok.user;
                // A B-tree node per few extras: count one per entry, generously.
                let extra = user.extra.iter().map(|(k, v)| string(k) + list(v) + 4 * size_of::<String>()).sum::<usize>();
                string(&user.username) + string(&user.uid) + list(&user.groups) + extra + list(&ok.audiences)
            }
        }
}

/// A short-lived cache of review results, keyed by the SHA-256 of the token and
/// the audiences asked for (tokens themselves are never stored) and bounded in
/// bytes, so that garbage tokens from unauthenticated clients cannot fill
/// memory: when full, expired entries go first, then those closest to expiry.
/// Entries die after `ttl_seconds`, at the token's expiry, or as soon as the
/// object lookup's epoch moves (any ServiceAccount/Pod/Secret change).
#[derive(Debug)]
pub struct ReviewCache {
    entries: BoundedCache<CacheEntry, i64>,
    ttl_seconds: i64,
}

#[derive(Debug, Clone)]
struct CacheEntry {
    review: Arc<Review>,
    epoch: u64,
}

// === impl ReviewCache ===

impl ReviewCache {
    /// A cache holding results for `ttl_seconds`, in at most `max_bytes`.
    pub fn new(ttl_seconds: i64, max_bytes: usize) -> Self {
        Self { entries: BoundedCache::new(max_bytes), ttl_seconds }
    }

    fn key(token: &str, audiences: Option<&[String]>) -> CacheKey {
        // Length-prefixed parts: no (token, audiences) pair produces the key of another.
        let count = audiences.map(|list| (list.len() as u64).to_be_bytes());
        let head: [&[u8]; 2] = match (audiences, &count) {
            (Some(_), Some(count)) => [token.as_bytes(), count],
            _ => [token.as_bytes(), b"default"],
        };
        cache_key(head.into_iter().chain(audiences.into_iter().flatten().map(String::as_bytes)))
    }

    /// Reviews through the cache.
    pub fn review(&self, authority: &TokenAuthority, token: &str, audiences: Option<&[String]>, objects: &dyn ObjectLookup, now: i64) -> Arc<Review> {
        let key = Self::key(token, audiences);
        let epoch = objects.epoch();
        if let Some(hit) = self.entries.get(&key, now)
            && hit.epoch == epoch
        {
            return hit.review;
        }
        let review = Arc::new(authority.review(token, audiences, objects, now));
        // Never cache past the token's own expiry.
        let token_exp = jws::decode(token.trim()).ok().and_then(|t| t.claims.get("exp").and_then(Value::as_i64)).unwrap_or(i64::MAX);
        let expires_at = (now + self.ttl_seconds).min(token_exp.saturating_add(LEEWAY_SECONDS));
        self.entries.insert(key, CacheEntry { review: review.clone(), epoch }, review_bytes(&review), expires_at, now);
        review
    }

    /// Drops the results expired at `now`; see [`BoundedCache::purge_expired`].
    pub fn purge_expired(&self, now: i64) -> usize {
        self.entries.purge_expired(now)
    }

    /// Bytes the cached results take (never more than the budget).
    pub fn bytes(&self) -> usize {
        self.entries.bytes()
    }

    /// Number of cached results.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests;
