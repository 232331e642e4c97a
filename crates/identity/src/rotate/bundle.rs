//! Certificate fingerprints (`sha256:` + lowercase hex of the DER's SHA-256,
//! the session-wide format) and the trust bundle as a list of PEM blocks
//! that can be added to and removed from without re-encoding.

use crate::pki;

/// `sha256:<hex>` of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in digest.as_ref() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The fingerprint of the first certificate of a PEM text.
pub fn fingerprint_pem(pem: &str) -> Result<String, String> {
    let ders = pki::certificates_from_pem(pem.as_bytes())?;
    ders.first().map(|d| fingerprint(d)).ok_or_else(|| "no certificate".to_owned())
}

/// A trust bundle: certificate PEM blocks with their fingerprints, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    entries: Vec<(String, String)>,
}

const END: &str = "-----END CERTIFICATE-----";

impl Bundle {
    /// Splits a PEM bundle into its certificates; anything that is not a
    /// certificate block is dropped.
    pub fn parse(pem: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        let mut rest = pem;
        while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
            let Some(end) = rest[start..].find(END) else {
                return Err("unterminated certificate block".to_owned());
            };
            let block = format!("{}\n", &rest[start..start + end + END.len()]);
            let fp = fingerprint_pem(&block)?;
            if !entries.iter().any(|(f, _)| *f == fp) {
                entries.push((fp, block));
            }
            rest = &rest[start + end + END.len()..];
        }
        if entries.is_empty() {
            return Err("the bundle holds no certificate".to_owned());
        }
        Ok(Self { entries })
    }

    /// The fingerprints, in bundle order.
    pub fn fingerprints(&self) -> Vec<String> {
        self.entries.iter().map(|(f, _)| f.clone()).collect()
    }

    /// Whether it holds `fingerprint`.
    pub fn contains(&self, fingerprint: &str) -> bool {
        self.entries.iter().any(|(f, _)| f == fingerprint)
    }

    /// The bundle with `pem` (one certificate) appended.
    pub fn with(&self, fingerprint: &str, pem: &str) -> Self {
        let mut entries = self.entries.clone();
        if !self.contains(fingerprint) {
            let block = if pem.ends_with('\n') { pem.to_owned() } else { format!("{pem}\n") };
            entries.push((fingerprint.to_owned(), block));
        }
        Self { entries }
    }

    /// The bundle without the anchors in `remove`.
    pub fn without(&self, remove: &[String]) -> Self {
        Self { entries: self.entries.iter().filter(|(f, _)| !remove.contains(f)).cloned().collect() }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The PEM text.
    pub fn to_pem(&self) -> String {
        self.entries.iter().map(|(_, b)| b.as_str()).collect()
    }
}
