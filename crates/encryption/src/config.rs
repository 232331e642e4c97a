//! Parsing and checking an `EncryptionConfiguration` file.

use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;

use crate::provider::{Provider, ProviderKey};

/// Why an encryption configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid EncryptionConfiguration.
    #[error("invalid encryption configuration: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    api_version: String,
    kind: String,
    resources: Vec<ResourceConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceConfig {
    resources: Vec<String>,
    providers: Vec<ProviderConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderConfig {
    aesgcm: Option<KeysConfig>,
    secretbox: Option<KeysConfig>,
    identity: Option<serde_yaml::Value>,
    aescbc: Option<serde_yaml::Value>,
    kms: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysConfig {
    keys: Vec<KeyConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    name: String,
    secret: String,
}

/// Which stored resources a rule covers, as kube writes them: `secrets`
/// (core), `roles.rbac.authorization.k8s.io`, `*.` (every core resource),
/// `*.GROUP`, `*.*` (everything).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ResourcePattern {
    Exact { group: String, resource: String },
    Group(String),
    All,
}

impl ResourcePattern {
    fn parse(raw: &str) -> Result<Self, ConfigError> {
        let invalid = || ConfigError::Invalid(format!("resource {raw:?}: expected RESOURCE, RESOURCE.GROUP, *.GROUP, *. or *.*"));
        match raw.split_once('.') {
            _ if raw == "*.*" => Ok(Self::All),
            Some(("*", group)) => Ok(Self::Group(group.to_owned())),
            Some((resource, group)) if !resource.is_empty() && !resource.contains('*') && !group.contains('*') && !group.is_empty() => {
                Ok(Self::Exact { group: group.to_owned(), resource: resource.to_owned() })
            }
            None if !raw.is_empty() && !raw.contains('*') => Ok(Self::Exact { group: String::new(), resource: raw.to_owned() }),
            _ => Err(invalid()),
        }
    }

    fn matches(&self, group: &str, resource: &str) -> bool {
        match self {
            Self::Exact { group: g, resource: r } => g == group && r == resource,
            Self::Group(g) => g == group,
            Self::All => true,
        }
    }
}

/// A checked encryption configuration: per resource pattern, its providers
/// in order (the first one encrypts).
#[derive(Debug)]
pub struct EncryptionConfig {
    rules: Vec<(Vec<ResourcePattern>, Vec<Provider>)>,
}

fn decode_key(provider: &str, key: &KeyConfig, lengths: &[usize]) -> Result<ProviderKey, ConfigError> {
    if key.name.is_empty() {
        return Err(ConfigError::Invalid(format!("{provider}: a key has an empty name")));
    }
    if key.name.contains(':') {
        return Err(ConfigError::Invalid(format!("{provider}: key name {:?} may not contain ':'", key.name)));
    }
    let secret = base64::engine::general_purpose::STANDARD
        .decode(key.secret.trim())
        .map_err(|e| ConfigError::Invalid(format!("{provider}: key {:?}: secret is not base64: {e}", key.name)))?;
    if !lengths.contains(&secret.len()) {
        return Err(ConfigError::Invalid(format!(
            "{provider}: key {:?} is {} bytes; it must be {} bytes",
            key.name,
            secret.len(),
            lengths.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(ProviderKey { name: key.name.clone(), secret })
}

fn keys(provider: &str, config: &KeysConfig, lengths: &[usize]) -> Result<Vec<ProviderKey>, ConfigError> {
    if config.keys.is_empty() {
        return Err(ConfigError::Invalid(format!("{provider}: at least one key is required")));
    }
    let keys = config.keys.iter().map(|k| decode_key(provider, k, lengths)).collect::<Result<Vec<_>, _>>()?;
    for (i, key) in keys.iter().enumerate() {
        if keys[..i].iter().any(|k| k.name == key.name) {
            return Err(ConfigError::Invalid(format!("{provider}: key name {:?} is used twice", key.name)));
        }
    }
    Ok(keys)
}

impl EncryptionConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text)
    }

    /// Parses and checks a configuration (YAML or JSON).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let file: File = serde_yaml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if file.api_version != "apiserver.config.k8s.io/v1" || file.kind != "EncryptionConfiguration" {
            return Err(ConfigError::Invalid(format!(
                "expected apiVersion apiserver.config.k8s.io/v1, kind EncryptionConfiguration; got {}, {}",
                file.api_version, file.kind
            )));
        }
        let mut rules = Vec::new();
        for rule in &file.resources {
            if rule.resources.is_empty() || rule.providers.is_empty() {
                return Err(ConfigError::Invalid("each entry of resources needs resources and providers".into()));
            }
            let patterns = rule.resources.iter().map(|r| ResourcePattern::parse(r)).collect::<Result<Vec<_>, _>>()?;
            let mut providers = Vec::new();
            for p in &rule.providers {
                let given = [p.aesgcm.is_some(), p.secretbox.is_some(), p.identity.is_some(), p.aescbc.is_some(), p.kms.is_some()];
                if given.iter().filter(|g| **g).count() != 1 {
                    return Err(ConfigError::Invalid("each provider must name exactly one of aesgcm, secretbox, identity".into()));
                }
                let provider = match p {
                    ProviderConfig { aesgcm: Some(k), .. } => Provider::AesGcm(keys("aesgcm", k, &[16, 24, 32])?),
                    ProviderConfig { secretbox: Some(k), .. } => Provider::Secretbox(keys("secretbox", k, &[32])?),
                    ProviderConfig { identity: Some(_), .. } => Provider::Identity,
                    _ => return Err(ConfigError::Invalid("providers aescbc and kms are not supported; use aesgcm or secretbox".into())),
                };
                providers.push(provider);
            }
            rules.push((patterns, providers));
        }
        Ok(Self { rules })
    }

    /// The providers for the object stored at `key`, if any rule covers it
    /// (the first matching rule, as kube-apiserver applies them).
    pub(crate) fn providers_for(&self, key: &str) -> Option<&[Provider]> {
        let (group, resource) = group_resource(key)?;
        self.rules.iter().find(|(patterns, _)| patterns.iter().any(|p| p.matches(group, resource))).map(|(_, providers)| providers.as_slice())
    }
}

/// The group and resource of a store key: `/registry/RESOURCE/…` (core) or
/// `/registry/GROUP/RESOURCE/…` (a group name always has a dot).
fn group_resource(key: &str) -> Option<(&str, &str)> {
    let mut parts = key.strip_prefix("/registry/")?.split('/');
    let first = parts.next()?;
    if first.contains('.') { Some((first, parts.next()?)) } else { Some(("", first)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY32: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn config(providers: &str) -> Result<EncryptionConfig, ConfigError> {
        EncryptionConfig::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        ))
    }

    #[test]
    fn kube_documented_example_parses() {
        let c = config(&format!("  - aesgcm:\n      keys:\n      - name: key1\n        secret: {KEY32}\n  - identity: {{}}\n")).unwrap();
        assert!(c.providers_for("/registry/secrets/ns/x").is_some());
        assert!(c.providers_for("/registry/configmaps/ns/x").is_none());
    }

    #[test]
    fn bad_configurations_are_refused_with_reasons() {
        let short = config("  - aesgcm:\n      keys:\n      - name: k\n        secret: c2hvcnQ=\n").unwrap_err().to_string();
        assert_eq!(short, "invalid encryption configuration: aesgcm: key \"k\" is 5 bytes; it must be 16, 24, 32 bytes");
        let box16 = config("  - secretbox:\n      keys:\n      - name: k\n        secret: MDEyMzQ1Njc4OWFiY2RlZg==\n").unwrap_err().to_string();
        assert_eq!(box16, "invalid encryption configuration: secretbox: key \"k\" is 16 bytes; it must be 32 bytes");
        let two = config(&format!("  - aesgcm:\n      keys:\n      - name: k\n        secret: {KEY32}\n    identity: {{}}\n")).unwrap_err().to_string();
        assert!(two.contains("exactly one of"), "{two}");
        let cbc = config("  - aescbc:\n      keys: []\n").unwrap_err().to_string();
        assert!(cbc.contains("not supported"), "{cbc}");
        let dup = config(&format!("  - aesgcm:\n      keys:\n      - name: k\n        secret: {KEY32}\n      - name: k\n        secret: {KEY32}\n"))
            .unwrap_err()
            .to_string();
        assert!(dup.contains("used twice"), "{dup}");
        assert!(EncryptionConfig::parse("apiVersion: v1\nkind: Secret\nresources: []\n").is_err());
    }

    #[test]
    fn resource_patterns() {
        let c = EncryptionConfig::parse(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: ['roles.rbac.authorization.k8s.io', '*.']\n  providers: [{identity: {}}]\n",
        )
        .unwrap();
        assert!(c.providers_for("/registry/rbac.authorization.k8s.io/roles/ns/x").is_some());
        assert!(c.providers_for("/registry/rbac.authorization.k8s.io/rolebindings/ns/x").is_none());
        assert!(c.providers_for("/registry/configmaps/ns/x").is_some());
    }
}
