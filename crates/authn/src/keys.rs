//! ServiceAccount token signing keys: generation, storage in the data dir,
//! rotation, and the public JWKS.
//!
//! Keys live in one directory as PKCS#8 PEM files named
//! `sa-<unix-seconds>-<alg>.pem`. The newest key signs; every key verifies. A key
//! is retired when a newer one appears, and dropped from the set (and the
//! JWKS) once `max_token_lifetime` has passed since its retirement, because no
//! bound token it signed can still be valid then.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::Value;
use tessera_token::key::{PublicKey, PublicKeys};

use crate::jwt::Algorithm;

/// Key handling failures.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file does not hold a usable key.
    #[error("{path}: not a usable {alg} PKCS#8 key: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The algorithm its name says.
        alg: &'static str,
        /// Why.
        why: String,
    },
    /// Key generation or signing failed inside the crypto library.
    #[error("crypto failure: {0}")]
    Crypto(String),
    /// Claims could not be encoded.
    #[error("encoding claims: {0}")]
    Encode(#[from] serde_json::Error),
    /// No key is present to sign with.
    #[error("no signing key in {0}")]
    Empty(PathBuf),
}

enum Pair {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// One key: private half for signing, public half for verifying and the JWKS.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    pair: Pair,
    /// The public half, as verifiers (and the JWKS) see it.
    public: PublicKey,
    /// When the key was created (unix seconds).
    pub created: i64,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("alg", &self.alg).field("created", &self.created).finish()
    }
}

// DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte uncompressed point.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

fn der_len(len: usize) -> Vec<u8> {
    match len {
        0..=0x7f => vec![len as u8],
        0x80..=0xff => vec![0x81, len as u8],
        _ => vec![0x82, (len >> 8) as u8, len as u8],
    }
}

fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(body.len()));
    out.extend_from_slice(body);
    out
}

/// SubjectPublicKeyInfo DER of an RSA PKCS#1 public key.
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    let algorithm = [0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    let mut bit_string = vec![0x00];
    bit_string.extend_from_slice(pkcs1);
    let mut body = algorithm.to_vec();
    body.extend(der(0x03, &bit_string));
    der(0x30, &body)
}

// === impl SigningKey ===

impl SigningKey {
    /// Generates a new key.
    pub fn generate(alg: Algorithm, created: i64) -> Result<(Self, Vec<u8>), KeyError> {
        let pkcs8 = match alg {
            Algorithm::ES256 => EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|e| KeyError::Crypto(e.to_string()))?
                .as_ref()
                .to_vec(),
            Algorithm::RS256 => {
                use rsa::pkcs8::EncodePrivateKey as _;
                let key = rsa::RsaPrivateKey::new(&mut rand08::rngs::OsRng, 2048).map_err(|e| KeyError::Crypto(e.to_string()))?;
                key.to_pkcs8_der().map_err(|e| KeyError::Crypto(e.to_string()))?.as_bytes().to_vec()
            }
        };
        let key = Self::from_pkcs8(alg, &pkcs8, created).map_err(KeyError::Crypto)?;
        Ok((key, pkcs8))
    }

    /// Loads a key from PKCS#8 DER.
    pub fn from_pkcs8(alg: Algorithm, pkcs8: &[u8], created: i64) -> Result<Self, String> {
        let (pair, public) = match alg {
            Algorithm::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &SystemRandom::new())
                    .map_err(|e| e.to_string())?;
                let public = pair.public_key().as_ref().to_vec();
                (Pair::Ecdsa(pair), public)
            }
            Algorithm::RS256 => {
                let pair = RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| e.to_string())?;
                let public = pair.public().as_ref().to_vec();
                (Pair::Rsa(pair), public)
            }
        };
        let spki = match alg {
            Algorithm::ES256 => [P256_SPKI_PREFIX, &public].concat(),
            Algorithm::RS256 => rsa_spki(&public),
        };
        // Like kube-apiserver: the key id is the SHA-256 of the PKIX public key.
        let kid = B64.encode(ring::digest::digest(&ring::digest::SHA256, &spki));
        let public = match &pair {
            Pair::Ecdsa(_) => PublicKey::Es256 { point: public },
            Pair::Rsa(pair) => {
                let c: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
                PublicKey::Rs256 { n: c.n, e: c.e }
            }
        };
        Ok(Self { kid, alg, pair, public, created })
    }

    /// The key id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key's algorithm.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// Signs `message`, returning the JWS signature bytes.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Ecdsa(pair) => pair.sign(&rng, message).map(|s| s.as_ref().to_vec()).map_err(|e| KeyError::Crypto(e.to_string())),
            Pair::Rsa(pair) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig).map_err(|e| KeyError::Crypto(e.to_string()))?;
                Ok(sig)
            }
        }
    }

    /// The length of this key's signatures (ES256: 64 bytes; RS256: the modulus length).
    pub fn signature_len(&self) -> usize {
        match &self.pair {
            Pair::Ecdsa(_) => 64,
            Pair::Rsa(pair) => pair.public().modulus_len(),
        }
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Verifies a signature made with this key.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        self.public.verify(message, sig)
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        self.public.to_jwk(&self.kid)
    }
}

/// The keys in use: the newest signs, all verify. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KeySet {
    keys: Arc<Vec<Arc<SigningKey>>>,
    /// Their public halves, by key id: what tokens are verified with and the JWKS shows.
    public: Arc<PublicKeys>,
}

fn pem_encode(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

fn pem_decode(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

fn parse_name(name: &str) -> Option<(i64, Algorithm)> {
    let rest = name.strip_prefix("sa-")?.strip_suffix(".pem")?;
    let (created, alg) = rest.split_once('-')?;
    Some((created.parse().ok()?, alg.parse().ok()?))
}

// === impl KeySet ===

impl KeySet {
    /// A key set from keys (any order).
    pub fn new(mut keys: Vec<SigningKey>) -> Self {
        keys.sort_by_key(|k| k.created);
        let public = PublicKeys::new(keys.iter().map(|k| (k.kid.clone(), k.public.clone())).collect());
        Self { keys: Arc::new(keys.into_iter().map(Arc::new).collect()), public: Arc::new(public) }
    }

    /// First start only: loads every key in `dir`, creating the directory and
    /// one key with `alg` when there is none. Reloads use [`KeySet::load`],
    /// which never creates a key.
    pub fn load_or_create(dir: &Path, alg: Algorithm, now: i64, max_token_lifetime: i64) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io { path: dir.to_owned(), source };
        fs::create_dir_all(dir).map_err(io)?;
        if Self::files(dir)?.is_empty() {
            Self::add(dir, alg, now)?;
        }
        Self::load(dir, now, max_token_lifetime)
    }

    /// Loads every key in `dir`; creates nothing. Keys retired more than
    /// `max_token_lifetime` seconds before `now` are left out. A directory
    /// without a usable key is an error ([`KeyError::Empty`]), never a reason
    /// to make a key: a reload must not replace the keys tokens are signed with.
    pub fn load(dir: &Path, now: i64, max_token_lifetime: i64) -> Result<Self, KeyError> {
        let files = Self::files(dir)?;
        let mut keys = Vec::new();
        for (i, (path, created, alg)) in files.iter().enumerate() {
            let retired_at = files.get(i + 1).map(|(_, next, _)| *next);
            if retired_at.is_some_and(|r| r + max_token_lifetime < now) {
                continue;
            }
            let pem = fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.clone(), source })?;
            let invalid = |why: String| KeyError::Invalid { path: path.clone(), alg: alg.as_str(), why };
            let der = pem_decode(&pem).ok_or_else(|| invalid("not PEM".into()))?;
            keys.push(SigningKey::from_pkcs8(*alg, &der, *created).map_err(invalid)?);
        }
        if keys.is_empty() {
            return Err(KeyError::Empty(dir.to_owned()));
        }
        Ok(Self::new(keys))
    }

    fn files(dir: &Path) -> Result<Vec<(PathBuf, i64, Algorithm)>, KeyError> {
        let entries = fs::read_dir(dir).map_err(|source| KeyError::Io { path: dir.to_owned(), source })?;
        let mut files: Vec<(PathBuf, i64, Algorithm)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (created, alg) = parse_name(&name)?;
                Some((e.path(), created, alg))
            })
            .collect();
        files.sort_by_key(|(_, created, _)| *created);
        Ok(files)
    }

    /// Generates a new key into `dir` (it becomes the signing key on next load).
    /// Returns its key id.
    pub fn add(dir: &Path, alg: Algorithm, now: i64) -> Result<String, KeyError> {
        fs::create_dir_all(dir).map_err(|source| KeyError::Io { path: dir.to_owned(), source })?;
        // Never reuse or go below an existing timestamp: order decides which key signs.
        let newest = Self::files(dir)?.last().map(|(_, c, _)| *c).unwrap_or(i64::MIN);
        let created = now.max(newest.saturating_add(1));
        let (key, pkcs8) = SigningKey::generate(alg, created)?;
        let path = dir.join(format!("sa-{created}-{}.pem", alg.as_str()));
        let tmp = path.with_extension("tmp");
        let io = |source| KeyError::Io { path: path.clone(), source };
        {
            use std::io::Write as _;
            let _ = fs::remove_file(&tmp);
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            // The key is never readable by others, not even for a moment.
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp).map_err(io)?;
            file.write_all(pem_encode(&pkcs8).as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        fs::rename(&tmp, &path).map_err(io)?;
        Ok(key.kid().to_owned())
    }

    /// The key that signs new tokens.
    pub fn signing_key(&self) -> Option<&Arc<SigningKey>> {
        self.keys.last()
    }

    /// The key with this id.
    pub fn by_kid(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// All keys, oldest first.
    pub fn keys(&self) -> &[Arc<SigningKey>] {
        &self.keys
    }

    /// The public keys, by key id.
    pub fn public_keys(&self) -> &PublicKeys {
        &self.public
    }

    /// Whether both sets hold the same keys.
    pub fn same_keys(&self, other: &KeySet) -> bool {
        self.keys.iter().map(|k| &k.kid).eq(other.keys.iter().map(|k| &k.kid))
    }

    /// `/openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        self.public.to_jwks()
    }

    /// The algorithms of the keys (for OIDC discovery).
    pub fn algorithms(&self) -> Vec<&'static str> {
        let mut algs: Vec<&'static str> = self.keys.iter().map(|k| k.alg.as_str()).collect();
        algs.sort_unstable();
        algs.dedup();
        algs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_both_algorithms() {
        for alg in [Algorithm::ES256, Algorithm::RS256] {
            let (key, _) = SigningKey::generate(alg, 1).expect("generate");
            let sig = key.sign(b"message").expect("sign");
            assert!(key.verify(b"message", &sig));
            assert!(!key.verify(b"messagE", &sig));
            assert_eq!(key.jwk()["alg"], alg.as_str());
            assert_eq!(key.kid().len(), 43);
        }
    }

    #[test]
    fn rotation_keeps_old_keys_until_their_tokens_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = KeySet::load_or_create(dir.path(), Algorithm::ES256, 1000, 3600).expect("load");
        let old_kid = first.signing_key().expect("key").kid().to_owned();
        let new_kid = KeySet::add(dir.path(), Algorithm::ES256, 2000).expect("rotate");
        let set = KeySet::load_or_create(dir.path(), Algorithm::ES256, 2001, 3600).expect("reload");
        assert_eq!(set.signing_key().expect("key").kid(), new_kid);
        assert!(set.by_kid(&old_kid).is_some());
        assert_eq!(set.jwks()["keys"].as_array().map(Vec::len), Some(2));
        // Retired at 2000; after 2000 + 3600 no token it signed can be valid.
        let later = KeySet::load_or_create(dir.path(), Algorithm::ES256, 5601, 3600).expect("reload");
        assert!(later.by_kid(&old_kid).is_none());
        assert_eq!(later.keys().len(), 1);
    }

    #[test]
    fn load_never_creates_a_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(KeySet::load(dir.path(), 10, 10), Err(KeyError::Empty(_))));
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 0);
        let gone = dir.path().join("gone");
        assert!(matches!(KeySet::load(&gone, 10, 10), Err(KeyError::Io { .. })));
        assert!(!gone.exists());
        // Only the first start creates one.
        let first = KeySet::load_or_create(&gone, Algorithm::ES256, 10, 10).expect("first start");
        assert_eq!(first.keys().len(), 1);
        assert_eq!(KeySet::load(&gone, 11, 10).expect("load").signing_key().map(|k| k.kid().to_owned()), first.signing_key().map(|k| k.kid().to_owned()));
    }

    #[test]
    fn corrupt_key_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("sa-5-ES256.pem"), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").expect("write");
        assert!(matches!(KeySet::load_or_create(dir.path(), Algorithm::ES256, 10, 10), Err(KeyError::Invalid { .. })));
    }
}
