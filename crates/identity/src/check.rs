//! `tessera check`: health checks of an identity setup, grouped and printed
//! like `linkerd check` (✔ success, ‼ warning, × error), also as JSON.
//!
//! Categories: `kubernetes-api` (client, `GET /version`), `tessera-identity`
//! (trust anchors: algorithm, validity, expiry within 60 days; the issuer:
//! validated by the identity CA's own [`Issuer::load`], then expiry within 60
//! days) and `tessera-identity-service` (a Certify
//! call with an empty request must answer `InvalidArgument`); with `--proxy`
//! also `tessera-data-plane` and `tessera-identity-data-plane` (see [`proxy`]).

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use linkerd2_proxy_api::identity::CertifyRequest;
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use crate::KubeSource;
use crate::error::IssuerError;
use crate::issuer::{Issuer, IssuerMaterial};
use crate::pki::{self, KeyAlgorithm, TrustAnchors};
use crate::reload::{self, IssuerSource};
use crate::review::IdentityNaming;

/// How long before expiry a certificate is warned about.
pub const WARN_WITHIN: Duration = Duration::from_secs(60 * 86400);
/// How long the API and service checks wait.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// The trust anchors: a PEM file or the bundle ConfigMap.
    pub trust_anchors: crate::bundle::AnchorsSource,
    /// Where the issuer is.
    pub issuer: IssuerSource,
    /// How to reach the Kubernetes API.
    pub kube: KubeSource,
    /// `host:port` of the identity service's gRPC listener.
    pub identity_addr: String,
    /// The identities' naming, for the probe leaf the issuer is validated with (as the CA does).
    pub naming: IdentityNaming,
    /// Also check every meshed proxy (`--proxy`, see [`proxy`]).
    pub proxy: bool,
}

/// A check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// ✔
    Success,
    /// ‼ with why.
    Warning(String),
    /// × with why.
    Error(String),
}

/// One checked line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    /// What was checked, e.g. `issuer cert is within its validity period`.
    pub description: String,
    /// The outcome.
    pub outcome: Outcome,
}

/// A group of checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Category {
    /// e.g. `tessera-identity`.
    pub name: &'static str,
    /// Its checks, in order.
    pub checks: Vec<CheckLine>,
}

impl Category {
    fn new(name: &'static str) -> Self {
        Self { name, checks: Vec::new() }
    }

    fn push(&mut self, description: impl Into<String>, outcome: Outcome) -> bool {
        let ok = !matches!(outcome, Outcome::Error(_));
        self.checks.push(CheckLine { description: description.into(), outcome });
        ok
    }

    fn result(&mut self, description: &str, result: Result<(), String>) -> bool {
        self.push(description, result.map_or_else(Outcome::Error, |()| Outcome::Success))
    }
}

/// All results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The categories, in order.
    pub categories: Vec<Category>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonReport<'a> {
    success: bool,
    categories: Vec<JsonCategory<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonCategory<'a> {
    category_name: &'a str,
    checks: Vec<JsonCheck<'a>>,
}

#[derive(Serialize)]
struct JsonCheck<'a> {
    description: &'a str,
    result: &'static str,
    error: &'a str,
}

impl Report {
    /// How many checks failed (×).
    pub fn failures(&self) -> usize {
        self.lines().filter(|l| matches!(l.outcome, Outcome::Error(_))).count()
    }

    /// How many checks warned (‼).
    pub fn warnings(&self) -> usize {
        self.lines().filter(|l| matches!(l.outcome, Outcome::Warning(_))).count()
    }

    fn lines(&self) -> impl Iterator<Item = &CheckLine> {
        self.categories.iter().flat_map(|c| c.checks.iter())
    }

    /// The human output, like `linkerd check`.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for category in &self.categories {
            out.push_str(category.name);
            out.push('\n');
            out.push_str(&"-".repeat(category.name.chars().count()));
            out.push('\n');
            for line in &category.checks {
                let (mark, detail) = match &line.outcome {
                    Outcome::Success => ("✔", None),
                    Outcome::Warning(w) => ("‼", Some(w)),
                    Outcome::Error(e) => ("×", Some(e)),
                };
                out.push_str(&format!("{mark} {}\n", line.description));
                if let Some(detail) = detail {
                    for l in detail.lines() {
                        out.push_str(&format!("    {l}\n"));
                    }
                }
            }
            out.push('\n');
        }
        let status = if self.failures() > 0 {
            "×"
        } else if self.warnings() > 0 {
            "‼"
        } else {
            "✔"
        };
        out.push_str(&format!("Status check results are {status}\n"));
        out
    }

    /// The JSON output (`--output json`), in `linkerd check -o json`'s shape.
    pub fn render_json(&self) -> String {
        let report = JsonReport {
            success: self.failures() == 0,
            categories: self
                .categories
                .iter()
                .map(|c| JsonCategory {
                    category_name: c.name,
                    checks: c
                        .checks
                        .iter()
                        .map(|l| {
                            let (result, error) = match &l.outcome {
                                Outcome::Success => ("success", ""),
                                Outcome::Warning(w) => ("warning", w.as_str()),
                                Outcome::Error(e) => ("error", e.as_str()),
                            };
                            JsonCheck { description: &l.description, result, error }
                        })
                        .collect(),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&report).unwrap_or_else(|e| format!("{{\"success\":false,\"error\":\"{e}\"}}"))
    }
}

/// Runs every check as of `now`.
pub async fn run_checks(config: &CheckConfig, now: OffsetDateTime) -> Report {
    let (api, client) = kubernetes_checks(&config.kube).await;
    let anchors_pem = crate::bundle::read_pem(&config.trust_anchors, client.as_ref()).await;
    let issuer = read_issuer(&config.issuer, client.clone()).await;
    let expected = proxy::Expected::new(anchors_pem.as_deref().ok(), issuer.as_ref().ok().map(|m| m.cert_pem.as_slice()));
    let identity = identity_checks(anchors_pem, issuer, &config.naming, now);
    let service = service_checks(&config.identity_addr).await;
    let mut categories = vec![api, identity, service];
    if config.proxy {
        let (reports, rotation) = match &client {
            Some(client) => (proxy::gather(client).await, proxy::rotation(client, &config.naming.control_namespace).await),
            None => (Err("no Kubernetes client".to_owned()), Err("no Kubernetes client".to_owned())),
        };
        categories.extend(proxy::checks(reports, rotation, &expected, now));
    }
    Report { categories }
}

async fn kubernetes_checks(kube: &KubeSource) -> (Category, Option<kube::Client>) {
    let mut category = Category::new("kubernetes-api");
    let client = match kube.client().await {
        Ok(client) => client,
        Err(e) => {
            category.push("can initialize the client", Outcome::Error(e.to_string()));
            return (category, None);
        }
    };
    category.push("can initialize the client", Outcome::Success);
    let version = match tokio::time::timeout(TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("GET /version: {e}")),
        Err(_) => Err(format!("GET /version: no answer within {}", humantime::format_duration(TIMEOUT))),
    };
    category.result("can query the Kubernetes API", version);
    (category, Some(client))
}

async fn read_issuer(source: &IssuerSource, client: Option<kube::Client>) -> Result<IssuerMaterial, String> {
    match source {
        IssuerSource::Dir(dir) => reload::read_issuer_dir(dir).map_err(|e| e.to_string()),
        IssuerSource::Secret { namespace, name } => {
            let client = client.ok_or_else(|| format!("cannot read Secret {namespace}/{name}: no Kubernetes client"))?;
            let secrets: Api<Secret> = Api::namespaced(client, namespace);
            let secret = tokio::time::timeout(TIMEOUT, secrets.get(name))
                .await
                .map_err(|_| format!("reading Secret {namespace}/{name}: timed out"))?
                .map_err(|e| format!("reading Secret {namespace}/{name}: {e}"))?;
            reload::secret_material(&secret).map_err(|e| format!("Secret {namespace}/{name}: {e}"))
        }
    }
}

/// The trust-anchor and issuer checks, on material already read.
pub fn identity_checks(
    anchors_pem: Result<Vec<u8>, String>,
    issuer: Result<IssuerMaterial, String>,
    naming: &IdentityNaming,
    now: OffsetDateTime,
) -> Category {
    let mut category = Category::new("tessera-identity");
    let anchors = anchors_pem.and_then(|pem| TrustAnchors::from_pem(&pem).map_err(|e| e.to_string()));
    let anchors = match anchors {
        Ok(a) => {
            category.push("trust anchors are readable and well-formed", Outcome::Success);
            Some(a)
        }
        Err(e) => {
            category.push("trust anchors are readable and well-formed", Outcome::Error(e));
            None
        }
    };
    if let Some(anchors) = &anchors {
        let parsed: Vec<X509Certificate<'_>> =
            anchors.certificates().iter().filter_map(|d| X509Certificate::from_der(d).ok().map(|(_, c)| c)).collect();
        let unsupported: Vec<String> = parsed
            .iter()
            .filter_map(|c| {
                let alg = KeyAlgorithm::of(c.public_key());
                let ok = matches!(alg, KeyAlgorithm::EcdsaP256 | KeyAlgorithm::Rsa(2048) | KeyAlgorithm::Rsa(4096));
                (!ok).then(|| format!("trust anchor {} uses {alg}; want ECDSA P-256 or RSA 2048/4096", c.subject()))
            })
            .collect();
        category.result("trust anchors are using supported crypto algorithm", joined(unsupported));
        category.result(
            "trust anchors are within their validity period",
            joined(parsed.iter().filter_map(|c| validity_problem("trust anchor", c, now)).collect()),
        );
        let expiring: Vec<String> =
            parsed.iter().filter_map(|c| expiry_warning("trust anchor", &c.subject().to_string(), pki::not_after(c), now)).collect();
        category.push("trust anchors are valid for at least 60 days", warn_if_any(expiring));
    }

    let material = match issuer {
        Ok(m) => m,
        Err(e) => {
            category.push(ISSUER_LINES[0], Outcome::Error(e));
            return category;
        }
    };
    // Without anchors the CA would not start; there is nothing to validate against.
    if let Some(anchors) = &anchors {
        issuer_lines(&mut category, &material, anchors, naming, now);
    }
    category
}

/// The issuer lines, in the order [`Issuer::load`] decides them.
const ISSUER_LINES: [&str; 6] = [
    "issuer cert is readable and well-formed",
    "issuer cert is a CA certificate",
    "issuer cert is using supported crypto algorithm",
    "issuer key matches the issuer cert",
    "issuer cert is within its validity period",
    "issuer cert is issued by the trust anchor",
];

/// Which of [`ISSUER_LINES`] a refusal of [`Issuer::load`] belongs to.
fn failed_line(e: &IssuerError) -> usize {
    match e {
        IssuerError::NoCertificate | IssuerError::Certificate(_) => 0,
        IssuerError::NotCa => 1,
        IssuerError::UnsupportedAlgorithm => 2,
        IssuerError::Key(_) | IssuerError::KeyNotP256 | IssuerError::KeyMismatch => 3,
        IssuerError::NotYetValid { .. } | IssuerError::Expired { .. } => 4,
        IssuerError::NotSignedByAnchor { .. }
        | IssuerError::ChainBroken { .. }
        | IssuerError::PathValidation { .. }
        | IssuerError::NoKeyCertSign { .. }
        | IssuerError::Probe(_) => 5,
    }
}

/// The issuer is validated by [`Issuer::load`], the very function the CA runs
/// at start and on every reload (probe leaf, webpki path validation), so the
/// verdict and the message are the CA's. Its refusal is shown on the line it
/// belongs to; the lines before it passed, those after it were not reached
/// (the CA stops at the first refusal too).
fn issuer_lines(category: &mut Category, material: &IssuerMaterial, anchors: &TrustAnchors, naming: &IdentityNaming, now: OffsetDateTime) {
    match Issuer::load(material, anchors, naming, now) {
        Ok(issuer) => {
            for line in ISSUER_LINES {
                category.push(line, Outcome::Success);
            }
            let warning = expiry_warning("issuer certificate", issuer.subject(), issuer.not_after(), now);
            category.push("issuer cert is valid for at least 60 days", warn_if_any(warning.into_iter().collect()));
        }
        Err(e) => {
            let failed = failed_line(&e);
            for line in &ISSUER_LINES[..failed] {
                category.push(*line, Outcome::Success);
            }
            category.push(ISSUER_LINES[failed], Outcome::Error(e.to_string()));
        }
    }
}

async fn service_checks(addr: &str) -> Category {
    let mut category = Category::new("tessera-identity-service");
    let result = tokio::time::timeout(TIMEOUT, probe_certify(addr))
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {addr} within {}", humantime::format_duration(TIMEOUT))));
    category.result("identity service is serving Certify", result);
    category
}

/// An empty Certify request must be answered `InvalidArgument` ("missing
/// identity"): the service is up and has an issuer.
async fn probe_certify(addr: &str) -> Result<(), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).map_err(|e| format!("{addr}: {e}"))?;
    let channel = endpoint.connect().await.map_err(|e| format!("connecting to {addr}: {}", with_sources(&e)))?;
    match IdentityClient::new(channel).certify(CertifyRequest::default()).await {
        Err(status) if status.code() == tonic::Code::InvalidArgument => Ok(()),
        Err(status) if status.code() == tonic::Code::Unavailable => {
            Err(format!("the identity service at {addr} is not ready: {}", status.message()))
        }
        Err(status) => Err(format!("unexpected answer from {addr}: {:?}: {}", status.code(), status.message())),
        Ok(_) => Err(format!("{addr} issued a certificate for an empty request")),
    }
}

/// An error and its causes, `a: b: c`.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn validity_problem(what: &str, cert: &X509Certificate<'_>, now: OffsetDateTime) -> Option<String> {
    let (nb, na) = (pki::not_before(cert), pki::not_after(cert));
    if now < nb {
        Some(format!("{what} {} is not valid before {}", cert.subject(), pki::rfc3339(nb)))
    } else if now >= na {
        Some(format!("{what} {} expired at {}", cert.subject(), pki::rfc3339(na)))
    } else {
        None
    }
}

fn expiry_warning(what: &str, subject: &str, na: OffsetDateTime, now: OffsetDateTime) -> Option<String> {
    let left = na - now;
    (now < na && left < WARN_WITHIN).then(|| format!("{what} {subject} expires in {} days, at {}", left.whole_days(), pki::rfc3339(na)))
}

fn joined(problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

fn warn_if_any(warnings: Vec<String>) -> Outcome {
    if warnings.is_empty() { Outcome::Success } else { Outcome::Warning(warnings.join("\n")) }
}

pub mod proxy;

#[cfg(test)]
mod attack_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{Pki, now};

    fn day(n: u64) -> Duration {
        Duration::from_secs(n * 86400)
    }

    fn outcome<'a>(c: &'a Category, description: &str) -> &'a Outcome {
        &c.checks.iter().find(|l| l.description == description).unwrap_or_else(|| panic!("no check {description:?}: {c:?}")).outcome
    }

    #[test]
    fn a_good_setup_passes_every_check() {
        let pki = Pki::new();
        let c = identity_checks(Ok(pki.anchor_pem.clone().into_bytes()), Ok(pki.issuer_material()), &IdentityNaming::default(), now());
        assert_eq!(c.checks.len(), 11, "{c:?}");
        assert!(c.checks.iter().all(|l| l.outcome == Outcome::Success), "{c:?}");
        let report = Report { categories: vec![c] };
        let text = report.render_text();
        assert!(text.starts_with("tessera-identity\n----------------\n✔ trust anchors are readable and well-formed\n"), "{text}");
        assert!(text.ends_with("Status check results are ✔\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&report.render_json()).unwrap();
        assert_eq!(json["success"], true);
        assert_eq!(json["categories"][0]["categoryName"], "tessera-identity");
        assert_eq!(json["categories"][0]["checks"][0]["result"], "success");
    }

    #[test]
    fn an_expired_issuer_fails() {
        let pki = Pki::new();
        let expired = pki.issuer_valid(now() - day(10), now() - day(1));
        let c = identity_checks(Ok(pki.anchor_pem.clone().into_bytes()), Ok(expired), &IdentityNaming::default(), now());
        let Outcome::Error(e) = outcome(&c, "issuer cert is within its validity period") else { panic!("{c:?}") };
        assert!(e.starts_with("issuer certificate expired at "), "{e}");
        let report = Report { categories: vec![c] };
        assert_eq!(report.failures(), 1);
        assert!(
            report.render_text().contains(
                "× issuer cert is within its validity period\n    issuer certificate expired at "
            )
        );
        assert!(report.render_text().ends_with("Status check results are ×\n"));
    }

    #[test]
    fn an_issuer_from_another_anchor_fails() {
        let pki = Pki::new();
        let other = Pki::new();
        let c = identity_checks(Ok(pki.anchor_pem.clone().into_bytes()), Ok(other.issuer_material()), &IdentityNaming::default(), now());
        assert_eq!(
            outcome(&c, "issuer cert is issued by the trust anchor"),
            &Outcome::Error("issuer certificate (CN=identity.linkerd.cluster.local) is not signed by any trust anchor".to_owned())
        );
    }

    #[test]
    fn a_mismatched_key_fails() {
        let pki = Pki::new();
        let material = IssuerMaterial { cert_pem: pki.issuer_material().cert_pem, key_pem: pki.issuer_material().key_pem };
        let c = identity_checks(Ok(pki.anchor_pem.clone().into_bytes()), Ok(material), &IdentityNaming::default(), now());
        assert_eq!(
            outcome(&c, "issuer key matches the issuer cert"),
            &Outcome::Error("issuer key does not match the issuer certificate".to_owned())
        );
    }

    #[test]
    fn an_issuer_expiring_within_60_days_warns() {
        let pki = Pki::new();
        let t = now();
        let soon = pki.issuer_valid(t - day(1), t + day(30));
        let c = identity_checks(Ok(pki.anchor_pem.clone().into_bytes()), Ok(soon), &IdentityNaming::default(), t);
        let Outcome::Warning(w) = outcome(&c, "issuer cert is valid for at least 60 days") else { panic!("{c:?}") };
        assert!(w.starts_with("issuer certificate CN=identity.linkerd.cluster.local expires in 30 days, at "), "{w}");
        let report = Report { categories: vec![c] };
        assert_eq!(report.failures(), 0);
        assert!(report.render_text().ends_with("Status check results are ‼\n"));
        let json: serde_json::Value = serde_json::from_str(&report.render_json()).unwrap();
        assert_eq!(json["success"], true);
    }

    #[test]
    fn unreadable_anchors_fail_and_skip_the_anchor_checks() {
        let pki = Pki::new();
        let c = identity_checks(Err("/nope: No such file or directory".to_owned()), Ok(pki.issuer_material()), &IdentityNaming::default(), now());
        assert_eq!(
            outcome(&c, "trust anchors are readable and well-formed"),
            &Outcome::Error("/nope: No such file or directory".to_owned())
        );
        assert!(c.checks.iter().all(|l| !l.description.contains("issued by the trust anchor")));
    }
}
