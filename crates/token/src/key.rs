//! Public keys that verify tokens, and their JWK/JWKS form.
//!
//! The server builds a [`PublicKeys`] from its signing keys and publishes it
//! as `/openid/v1/jwks`; the middleware parses that same document back with
//! [`PublicKeys::from_jwks`]. One codec both ways, so the two can not drift.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

use crate::jws::Algorithm;

/// A public key, which also fixes the one algorithm it verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// P-256, as the 65-byte uncompressed point.
    Es256 {
        /// `04 || x || y`.
        point: Vec<u8>,
    },
    /// RSA, as big-endian modulus and exponent.
    Rs256 {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
}

// === impl PublicKey ===

impl PublicKey {
    /// The algorithm this key verifies (the only one).
    pub fn alg(&self) -> Algorithm {
        match self {
            PublicKey::Es256 { .. } => Algorithm::ES256,
            PublicKey::Rs256 { .. } => Algorithm::RS256,
        }
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature;
        match self {
            PublicKey::Es256 { point } => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(message, signature).is_ok()
            }
            PublicKey::Rs256 { n, e } => {
                signature::RsaPublicKeyComponents { n, e }.verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature).is_ok()
            }
        }
    }

    /// The key as a JWK with key id `kid` (the shape kube-apiserver publishes).
    pub fn to_jwk(&self, kid: &str) -> Value {
        match self {
            PublicKey::Es256 { point } => {
                let (x, y) = point.get(1..).unwrap_or_default().split_at(point.len().saturating_sub(1) / 2);
                json!({"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "x": B64.encode(x), "y": B64.encode(y)})
            }
            PublicKey::Rs256 { n, e } => json!({"use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256", "n": B64.encode(n), "e": B64.encode(e)}),
        }
    }

    /// Reads one JWK: `(kid, key)`, or None for a key that is not a signing
    /// key of a type tessera verifies (such keys are skipped, not fatal).
    pub fn from_jwk(jwk: &Value) -> Option<(String, PublicKey)> {
        let field = |k: &str| jwk.get(k).and_then(Value::as_str);
        let bytes = |k: &str| field(k).and_then(|v| B64.decode(v).ok());
        let kid = field("kid")?.to_owned();
        if field("use").is_some_and(|u| u != "sig") {
            return None;
        }
        let key = match (field("kty")?, field("crv")) {
            ("EC", Some("P-256")) => {
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return None;
                }
                PublicKey::Es256 { point: [&[4u8][..], &x, &y].concat() }
            }
            ("RSA", _) => PublicKey::Rs256 { n: bytes("n")?, e: bytes("e")? },
            _ => return None,
        };
        // A JWK naming another algorithm than its key type means is refused whole.
        if field("alg").is_some_and(|alg| alg != key.alg().as_str()) {
            return None;
        }
        Some((kid, key))
    }
}

/// The keys a verifier trusts, in order (oldest first), found by key id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicKeys {
    keys: Vec<(String, PublicKey)>,
    by_kid: HashMap<String, Vec<usize>>,
}

// === impl PublicKeys ===

impl PublicKeys {
    /// A set from `(kid, key)` pairs, oldest first.
    pub fn new(keys: Vec<(String, PublicKey)>) -> Self {
        let mut by_kid: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, (kid, _)) in keys.iter().enumerate() {
            by_kid.entry(kid.clone()).or_default().push(i);
        }
        Self { keys, by_kid }
    }

    /// Parses a JWKS document; keys tessera cannot use are skipped.
    pub fn from_jwks(doc: &Value) -> Self {
        let keys = doc.get("keys").and_then(Value::as_array).into_iter().flatten().filter_map(PublicKey::from_jwk).collect();
        Self::new(keys)
    }

    /// The JWKS document (`/openid/v1/jwks`).
    pub fn to_jwks(&self) -> Value {
        json!({"keys": self.keys.iter().map(|(kid, key)| key.to_jwk(kid)).collect::<Vec<_>>()})
    }

    /// The keys a token with this `kid` header may be verified with: those
    /// with that id, or every key when the token names none (as kube-apiserver).
    pub fn candidates<'a>(&'a self, kid: Option<&str>) -> Box<dyn Iterator<Item = &'a PublicKey> + 'a> {
        match kid {
            None => Box::new(self.keys.iter().map(|(_, key)| key)),
            Some(kid) => Box::new(self.by_kid.get(kid).into_iter().flatten().filter_map(|&i| self.keys.get(i)).map(|(_, key)| key)),
        }
    }

    /// Whether a key has this id.
    pub fn contains(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// All `(kid, key)` pairs, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &PublicKey)> {
        self.keys.iter().map(|(kid, key)| (kid.as_str(), key))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwk_round_trips() {
        let es = PublicKey::Es256 { point: [&[4u8][..], &[1; 32], &[2; 32]].concat() };
        let rs = PublicKey::Rs256 { n: vec![0xc0; 256], e: vec![1, 0, 1] };
        let set = PublicKeys::new(vec![("a".into(), es.clone()), ("b".into(), rs.clone())]);
        let doc = set.to_jwks();
        assert_eq!(doc["keys"][0]["crv"], "P-256");
        assert_eq!(doc["keys"][1]["e"], "AQAB");
        assert_eq!(PublicKeys::from_jwks(&doc), set);
        assert_eq!(set.candidates(Some("b")).collect::<Vec<_>>(), [&rs]);
        assert_eq!(set.candidates(None).count(), 2);
        assert_eq!(set.candidates(Some("c")).count(), 0);
    }

    #[test]
    fn unusable_jwks_are_skipped() {
        let doc = json!({"keys": [
            {"kid": "enc", "use": "enc", "kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kid": "short", "kty": "EC", "crv": "P-256", "x": "AQAB", "y": "AQAB"},
            {"kid": "hmac", "kty": "oct", "k": "c2VjcmV0"},
            {"kid": "mislabelled", "kty": "RSA", "alg": "HS256", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            "not an object",
        ]});
        assert!(PublicKeys::from_jwks(&doc).is_empty());
        assert!(PublicKeys::from_jwks(&json!({"keys": 5})).is_empty());
        assert!(PublicKeys::from_jwks(&json!(null)).is_empty());
    }
}
