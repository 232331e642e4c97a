//! `tessera identity rotate`: Linkerd's documented trust rotation
//! ("Manually Rotating Control Plane TLS Credentials") as a resumable state
//! machine over the trust bundle ConfigMap and the proxies' reports.
//!
//! Steps ([`Step`]): 1 a new ECDSA P-256 anchor, written under
//! `--anchor-dir` first, joins the bundle next to the old one; 2 wait until
//! every meshed proxy trusts both; 3 an issuer signed by the new anchor is
//! installed (files or Secret) and announced with the bundle ConfigMap's
//! `tessera.io/issuer-fingerprint` annotation, so proxies renew at once;
//! 4 wait until every proxy's leaf is from it; 5 the old anchor leaves the
//! bundle; 6 wait until every proxy dropped it. `--issuer-only` runs 3–4
//! with the current anchor.
//!
//! The state ([`RotationState`]) is written to the ConfigMap
//! `tessera-identity-rotation` before each step's effect; a rerun resumes.
//! The cluster is behind the [`Cluster`] trait ([`KubeCluster`] for real).
//! Safety rules: an issuer is installed only when its anchor is in the
//! bundle; an anchor is removed only when every proxy's leaf comes from the
//! new issuer and the installed issuer is the new one; a wait that times
//! out stops the rotation there, naming the proxies that lag.

mod bundle;
mod cluster;
mod kube;
mod machine;
mod material;
mod progress;
mod report;
mod state;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use bundle::{Bundle, fingerprint, fingerprint_pem};
pub(crate) use material::find_anchor;
pub use cluster::{Cluster, ClusterError, ProxyState};
pub use kube::{IssuerTarget, KubeCluster};
pub use machine::{RotateOptions, laggard_reason, laggards, run};
pub use progress::{Console, Reporter, Silent, bar};
pub use report::{plan, status};
pub use state::{Mode, RotationState, Step};

/// The trust bundle ConfigMap (control namespace).
pub const BUNDLE_CONFIGMAP: &str = crate::bundle::CONFIGMAP_NAME;
/// Its PEM key.
pub const BUNDLE_KEY: &str = crate::bundle::CONFIGMAP_KEY;
/// Its annotation naming the current issuer.
pub const ANNOTATION_ISSUER_FINGERPRINT: &str = "tessera.io/issuer-fingerprint";
/// The rotation state ConfigMap (control namespace).
pub const STATE_CONFIGMAP: &str = "tessera-identity-rotation";
/// Its JSON key.
pub const STATE_KEY: &str = "state";
/// Pod annotation: the anchors its proxy trusts (sorted, comma-separated fingerprints).
pub const ANNOTATION_TRUST_ANCHORS: &str = "tessera.io/trust-anchors";
/// Pod annotation: the issuer of its proxy's leaf.
pub const ANNOTATION_LEAF_ISSUER: &str = "tessera.io/leaf-issuer";

/// A proxy holding up a step, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Laggard {
    /// `namespace/pod`.
    pub proxy: String,
    /// What it lacks.
    pub why: String,
}

/// Why a rotation stopped.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// Reading or writing the cluster (or the issuer files) failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Creating or reading anchor/issuer files failed.
    #[error(transparent)]
    Material(#[from] crate::Error),
    /// The trust bundle could not be read.
    #[error("trust bundle: {0}")]
    Bundle(String),
    /// A rotation of the other mode is in progress.
    #[error("{} rotation {id} is in progress at {step}; rerun {} to resume it (see --status)", if *mode == Mode::Full { "a full" } else { "an issuer-only" }, if *mode == Mode::Full { "without --issuer-only" } else { "with --issuer-only" })]
    ModeConflict {
        /// The rotation in progress.
        id: String,
        /// Its mode.
        mode: Mode,
        /// Its step.
        step: Step,
    },
    /// No anchor of the bundle has its key under `--anchor-dir`.
    #[error("none of the bundle's anchors ({}) has its ca.crt and ca.key under {}", bundle.join(", "), anchor_dir.display())]
    NoSigner {
        /// The directory searched.
        anchor_dir: PathBuf,
        /// The bundle's fingerprints.
        bundle: Vec<String>,
    },
    /// A wait did not finish in time; the rotation stays at that step.
    #[error("{step} did not finish within {}; the rotation stopped there (rerun to resume). {} proxies holding it up:{}", humantime::format_duration(*timeout), laggards.len(), laggards.iter().map(|l| format!("\n  {}: {}", l.proxy, l.why)).collect::<String>())]
    Timeout {
        /// The step waited on.
        step: Step,
        /// The step timeout.
        timeout: Duration,
        /// The proxies not done.
        laggards: Vec<Laggard>,
    },
    /// A safety rule refused a step.
    #[error("refusing {what}: {why}")]
    Unsafe {
        /// The refused effect.
        what: String,
        /// The rule it would break.
        why: String,
    },
    /// The stored state is inconsistent.
    #[error("rotation state: {0}")]
    Corrupt(String),
}
