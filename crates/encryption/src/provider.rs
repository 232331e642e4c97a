//! The providers and the stored formats they share with kube-apiserver:
//! - aesgcm: `k8s:enc:aesgcm:v1:NAME:` + 12-byte random nonce + AES-GCM
//!   ciphertext and tag, the store key as additional authenticated data (a
//!   value copied to another key does not decrypt);
//! - secretbox: `k8s:enc:secretbox:v1:NAME:` + 24-byte random nonce +
//!   XSalsa20-Poly1305 box;
//! - identity: the value as it is.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes192;
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm};
use crypto_secretbox::XSalsa20Poly1305;
use rand::RngCore as _;

type Aes192Gcm = AesGcm<Aes192, aes_gcm::aead::consts::U12>;

const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";
const AESGCM_NONCE: usize = 12;
const SECRETBOX_NONCE: usize = 24;

/// Why a value could not be encrypted or decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// No configured provider and key matches the stored value's prefix.
    #[error("no matching encryption provider and key for the stored value (prefix {0:?})")]
    NoMatchingKey(String),
    /// The value names a key but does not authenticate under it.
    #[error("stored value does not decrypt with key {0:?}: tampered with, or moved from another key")]
    Corrupt(String),
    /// A cipher failure while encrypting (should not happen).
    #[error("encryption failed")]
    Encrypt,
}

/// One named key.
#[derive(Clone)]
pub(crate) struct ProviderKey {
    pub(crate) name: String,
    pub(crate) secret: Vec<u8>,
}

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderKey").field("name", &self.name).finish_non_exhaustive()
    }
}

/// One provider of a resource rule.
#[derive(Debug, Clone)]
pub(crate) enum Provider {
    AesGcm(Vec<ProviderKey>),
    Secretbox(Vec<ProviderKey>),
    Identity,
}

fn aes_seal(secret: &[u8], nonce: &[u8], plaintext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    let payload = Payload { msg: plaintext, aad };
    let nonce = aes_gcm::Nonce::from_slice(nonce);
    match secret.len() {
        16 => Aes128Gcm::new_from_slice(secret).ok()?.encrypt(nonce, payload).ok(),
        24 => Aes192Gcm::new_from_slice(secret).ok()?.encrypt(nonce, payload).ok(),
        _ => Aes256Gcm::new_from_slice(secret).ok()?.encrypt(nonce, payload).ok(),
    }
}

fn aes_open(secret: &[u8], nonce: &[u8], ciphertext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    let payload = Payload { msg: ciphertext, aad };
    let nonce = aes_gcm::Nonce::from_slice(nonce);
    match secret.len() {
        16 => Aes128Gcm::new_from_slice(secret).ok()?.decrypt(nonce, payload).ok(),
        24 => Aes192Gcm::new_from_slice(secret).ok()?.decrypt(nonce, payload).ok(),
        _ => Aes256Gcm::new_from_slice(secret).ok()?.decrypt(nonce, payload).ok(),
    }
}

impl Provider {
    fn prefix(kind: &str, key: &ProviderKey) -> Vec<u8> {
        format!("k8s:enc:{kind}:v1:{}:", key.name).into_bytes()
    }

    /// Whether `stored` is what this provider writes now (its format and
    /// first key), so that a rewrite can leave it alone.
    pub(crate) fn wrote(&self, stored: &[u8]) -> bool {
        match self {
            Self::Identity => !stored.starts_with(ENCRYPTED_PREFIX),
            Self::AesGcm(keys) => keys.first().is_some_and(|k| stored.starts_with(&Self::prefix("aesgcm", k))),
            Self::Secretbox(keys) => keys.first().is_some_and(|k| stored.starts_with(&Self::prefix("secretbox", k))),
        }
    }

    /// Encrypts with this provider's first key.
    pub(crate) fn encrypt(&self, store_key: &str, plaintext: &[u8]) -> Result<Vec<u8>, TransformError> {
        match self {
            Self::Identity => Ok(plaintext.to_vec()),
            Self::AesGcm(keys) => {
                let key = keys.first().ok_or(TransformError::Encrypt)?;
                let mut nonce = [0u8; AESGCM_NONCE];
                rand::rng().fill_bytes(&mut nonce);
                let sealed = aes_seal(&key.secret, &nonce, plaintext, store_key.as_bytes()).ok_or(TransformError::Encrypt)?;
                Ok([Self::prefix("aesgcm", key), nonce.to_vec(), sealed].concat())
            }
            Self::Secretbox(keys) => {
                let key = keys.first().ok_or(TransformError::Encrypt)?;
                let mut nonce = [0u8; SECRETBOX_NONCE];
                rand::rng().fill_bytes(&mut nonce);
                let cipher = XSalsa20Poly1305::new_from_slice(&key.secret).map_err(|_| TransformError::Encrypt)?;
                let sealed = cipher.encrypt(crypto_secretbox::Nonce::from_slice(&nonce), plaintext).map_err(|_| TransformError::Encrypt)?;
                Ok([Self::prefix("secretbox", key), nonce.to_vec(), sealed].concat())
            }
        }
    }

    /// Decrypts `stored` if it carries this provider's format and one of its
    /// keys; None when the value is not this provider's.
    fn decrypt(&self, store_key: &str, stored: &[u8]) -> Option<Result<Vec<u8>, TransformError>> {
        match self {
            Self::Identity => (!stored.starts_with(ENCRYPTED_PREFIX)).then(|| Ok(stored.to_vec())),
            Self::AesGcm(keys) => keys.iter().find_map(|key| {
                let body = stored.strip_prefix(Self::prefix("aesgcm", key).as_slice())?;
                let corrupt = || TransformError::Corrupt(key.name.clone());
                Some(if body.len() < AESGCM_NONCE {
                    Err(corrupt())
                } else {
                    let (nonce, ciphertext) = body.split_at(AESGCM_NONCE);
                    aes_open(&key.secret, nonce, ciphertext, store_key.as_bytes()).ok_or_else(corrupt)
                })
            }),
            Self::Secretbox(keys) => keys.iter().find_map(|key| {
                let body = stored.strip_prefix(Self::prefix("secretbox", key).as_slice())?;
                let corrupt = || TransformError::Corrupt(key.name.clone());
                Some(if body.len() < SECRETBOX_NONCE {
                    Err(corrupt())
                } else {
                    let (nonce, ciphertext) = body.split_at(SECRETBOX_NONCE);
                    XSalsa20Poly1305::new_from_slice(&key.secret)
                        .ok()
                        .and_then(|c| c.decrypt(crypto_secretbox::Nonce::from_slice(nonce), ciphertext).ok())
                        .ok_or_else(corrupt)
                })
            }),
        }
    }
}

/// Decrypts a stored value with whichever of `providers` it names.
pub(crate) fn decrypt(providers: &[Provider], store_key: &str, stored: &[u8]) -> Result<Vec<u8>, TransformError> {
    providers.iter().find_map(|p| p.decrypt(store_key, stored)).unwrap_or_else(|| {
        let shown = stored.iter().take(40).take_while(|b| b.is_ascii_graphic()).map(|b| char::from(*b)).collect();
        Err(TransformError::NoMatchingKey(shown))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, len: usize) -> ProviderKey {
        ProviderKey { name: name.into(), secret: (0..len).map(|i| u8::try_from(i).unwrap()).collect() }
    }

    #[test]
    fn every_provider_round_trips_and_hides_the_plaintext() {
        for provider in [
            Provider::AesGcm(vec![key("a", 16)]),
            Provider::AesGcm(vec![key("a", 24)]),
            Provider::AesGcm(vec![key("a", 32)]),
            Provider::Secretbox(vec![key("b", 32)]),
        ] {
            let sealed = provider.encrypt("/registry/secrets/ns/x", b"top-secret-value").unwrap();
            assert!(sealed.starts_with(b"k8s:enc:"));
            assert!(!sealed.windows(16).any(|w| w == b"top-secret-value"));
            assert_eq!(decrypt(std::slice::from_ref(&provider), "/registry/secrets/ns/x", &sealed).unwrap(), b"top-secret-value");
        }
    }

    #[test]
    fn aesgcm_binds_the_value_to_its_key() {
        let provider = Provider::AesGcm(vec![key("a", 32)]);
        let sealed = provider.encrypt("/registry/secrets/ns/x", b"v").unwrap();
        assert_eq!(decrypt(&[provider], "/registry/secrets/ns/y", &sealed), Err(TransformError::Corrupt("a".into())));
    }

    #[test]
    fn rotation_reads_old_keys_and_writes_the_first() {
        let old = Provider::AesGcm(vec![key("old", 32)]);
        let sealed_old = old.encrypt("/k", b"v").unwrap();
        let rotated = [Provider::AesGcm(vec![key("new", 32), key("old", 32)])];
        assert_eq!(decrypt(&rotated, "/k", &sealed_old).unwrap(), b"v");
        assert!(rotated[0].encrypt("/k", b"v").unwrap().starts_with(b"k8s:enc:aesgcm:v1:new:"));
        // Without the old key the value is unreadable, and says which key it needs.
        let only_new = [Provider::AesGcm(vec![key("new", 32)])];
        assert!(matches!(decrypt(&only_new, "/k", &sealed_old), Err(TransformError::NoMatchingKey(p)) if p.starts_with("k8s:enc:aesgcm:v1:old:")));
    }

    #[test]
    fn identity_reads_plain_values_only_when_listed() {
        let plain = br#"{"kind":"Secret"}"#;
        assert_eq!(decrypt(&[Provider::AesGcm(vec![key("a", 32)]), Provider::Identity], "/k", plain).unwrap(), plain);
        assert!(decrypt(&[Provider::AesGcm(vec![key("a", 32)])], "/k", plain).is_err());
        // Identity never passes encrypted bytes through as if they were plain.
        let sealed = Provider::AesGcm(vec![key("a", 32)]).encrypt("/k", b"v").unwrap();
        assert!(decrypt(&[Provider::Identity], "/k", &sealed).is_err());
    }

    #[test]
    fn truncated_values_are_corrupt_not_a_panic() {
        let p = [Provider::AesGcm(vec![key("a", 32)]), Provider::Secretbox(vec![key("b", 32)])];
        assert!(decrypt(&p, "/k", b"k8s:enc:aesgcm:v1:a:").is_err());
        assert!(decrypt(&p, "/k", b"k8s:enc:secretbox:v1:b:123").is_err());
    }
}
