//! Compact JWS (JWT) encoding and strict decoding. Only what ServiceAccount
//! tokens use: ES256 and RS256.
//!
//! # Design
//! Parsing is strict (three base64url parts without padding, JSON objects) and
//! bounded in size before any work is done. Nothing here trusts a token: the
//! signature and the claims are checked by [`crate::verify`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

/// Tokens longer than this are refused before decoding (real ones are ~1 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A signature algorithm tessera signs and verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256 (the default).
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (what kube-apiserver uses by default).
    RS256,
}

impl Algorithm {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::RS256 => "RS256",
        }
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ES256" => Ok(Algorithm::ES256),
            "RS256" => Ok(Algorithm::RS256),
            other => Err(format!("unsupported signing algorithm {other:?} (supported: ES256, RS256)")),
        }
    }
}

/// The JOSE header of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Algorithm name as written in the token (checked against the key later).
    pub alg: String,
    /// Key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Critical extensions: any is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crit: Option<serde_json::Value>,
}

/// A token split into its parts, not yet verified.
#[derive(Debug, Clone)]
pub struct Unverified<'a> {
    /// Decoded header.
    pub header: Header,
    /// Decoded claims as JSON (not to be trusted before verification).
    pub claims: serde_json::Value,
    /// `base64(header).base64(payload)`: the signed bytes.
    pub signing_input: &'a str,
    /// The raw signature.
    pub signature: Vec<u8>,
}

/// Why a token does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not three base64url parts of JSON, or too large.
    #[error("token is malformed")]
    Malformed,
}

/// Splits and decodes a compact JWS without verifying it.
pub fn decode(token: &str) -> Result<Unverified<'_>, ParseError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(ParseError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(ParseError::Malformed);
    };
    let header: Header =
        serde_json::from_slice(&B64.decode(h).map_err(|_| ParseError::Malformed)?).map_err(|_| ParseError::Malformed)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(p).map_err(|_| ParseError::Malformed)?).map_err(|_| ParseError::Malformed)?;
    if !claims.is_object() {
        return Err(ParseError::Malformed);
    }
    let signature = B64.decode(s).map_err(|_| ParseError::Malformed)?;
    Ok(Unverified { header, claims, signing_input: &token[..h.len() + 1 + p.len()], signature })
}

/// `base64(header).base64(claims)`: the bytes a signature covers.
pub fn signing_input(header: &Header, claims: &impl Serialize) -> Result<String, serde_json::Error> {
    let mut out = B64.encode(serde_json::to_vec(header)?);
    out.push('.');
    out.push_str(&B64.encode(serde_json::to_vec(claims)?));
    Ok(out)
}

/// The length of the compact token made of a signing input of `input_len`
/// bytes and a signature of `signature_len` bytes (known before signing).
pub fn encoded_len(input_len: usize, signature_len: usize) -> usize {
    // Unpadded base64: four characters per three bytes, rounded up.
    input_len + 1 + (signature_len * 4).div_ceil(3)
}

/// Appends the signature to a signing input, giving the compact token.
pub fn finish(mut signing_input: String, signature: &[u8]) -> String {
    signing_input.push('.');
    signing_input.push_str(&B64.encode(signature));
    signing_input
}

/// Encodes header and claims and signs them with `sign`.
pub fn encode<E>(header: &Header, claims: &impl Serialize, sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>) -> Result<String, E>
where
    E: From<serde_json::Error>,
{
    let input = signing_input(header, claims)?;
    let signature = sign(input.as_bytes())?;
    Ok(finish(input, &signature))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rejects_wrong_shapes() {
        for bad in ["", "a", "a.b", "a.b.c.d", "!!.e30.", "e30.!!.", "e30.e30.!!", "e30.W10.", &"a".repeat(MAX_TOKEN_BYTES + 1)] {
            assert_eq!(decode(bad).unwrap_err(), ParseError::Malformed, "{bad:.20}");
        }
    }

    #[test]
    fn decode_splits_signing_input() {
        let token = format!("{}.{}.{}", B64.encode(r#"{"alg":"ES256","kid":"k"}"#), B64.encode(r#"{"sub":"x"}"#), B64.encode([1, 2, 3]));
        let parsed = decode(&token).expect("parses");
        assert_eq!(parsed.header.kid.as_deref(), Some("k"));
        assert_eq!(parsed.claims["sub"], "x");
        assert_eq!(parsed.signature, vec![1, 2, 3]);
        assert_eq!(parsed.signing_input, token.rsplit_once('.').expect("dot").0);
    }

    #[test]
    fn encoded_len_is_exact() {
        let header = Header { alg: "ES256".into(), kid: Some("k".into()), crit: None };
        for sig_len in [0, 1, 2, 3, 64, 256, 257] {
            let input = signing_input(&header, &serde_json::json!({"sub": "x"})).unwrap();
            let len = encoded_len(input.len(), sig_len);
            assert_eq!(finish(input, &vec![7; sig_len]).len(), len, "signature of {sig_len} bytes");
        }
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    #[test]
    fn random_tokens_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";
        for _ in 0..20_000 {
            let len = (next() % 200) as usize;
            let token: String = (0..len).map(|_| alphabet[(next() as usize) % alphabet.len()] as char).collect();
            let _ = decode(&token);
        }
        // Structurally valid JSON of the wrong shapes.
        for (h, p) in [("null", "{}"), ("{}", "[]"), (r#"{"alg":5}"#, "{}"), (r#"{"alg":"ES256","kid":[1]}"#, r#"{"iss":1}"#)] {
            let token = format!("{}.{}.", B64.encode(h), B64.encode(p));
            let _ = decode(&token);
        }
    }
}
