//! The state machine: starts or resumes a rotation, records each step in
//! the rotation ConfigMap before doing it, does it, and moves on. Steps that
//! change something are idempotent (a redo after an interruption finds the
//! anchor already in the bundle, the issuer already made); wait steps poll
//! the proxies' reports until every proxy is done or the step times out,
//! which stops the rotation at that wait — a safe point to resume from.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::bundle::Bundle;
use super::cluster::{Cluster, ProxyState};
use super::material;
use super::progress::Reporter;
use super::state::{Mode, RotationState, Step};
use super::{Laggard, RotateError};
use crate::pki;
use crate::review::IdentityNaming;

/// What `tessera identity rotate` was asked to do.
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// Full or issuer-only.
    pub mode: Mode,
    /// Where anchors live (the current one as `ca.crt`/`ca.key`, rotations under `rotation-<id>/`).
    pub anchor_dir: PathBuf,
    /// Names the new certificates.
    pub naming: IdentityNaming,
    /// Lifetime of a new anchor.
    pub anchor_validity: Duration,
    /// Lifetime of a new issuer (never past its anchor's).
    pub issuer_validity: Duration,
    /// How long one step may take before the rotation stops.
    pub step_timeout: Duration,
    /// How often the proxies' reports are read.
    pub poll_interval: Duration,
}

/// Runs (or resumes) a rotation to the end. On a timeout the state stays at
/// the waiting step; rerunning resumes there.
pub async fn run(cluster: &dyn Cluster, options: &RotateOptions, reporter: &mut dyn Reporter) -> Result<RotationState, RotateError> {
    let mut state = match cluster.load_state().await? {
        Some(state) if state.step != Step::Done => {
            if state.mode != options.mode {
                return Err(RotateError::ModeConflict { id: state.id, mode: state.mode, step: state.step });
            }
            reporter.event(&format!("resuming rotation {} at {}: {}", state.id, state.step, state.step.describe()));
            state
        }
        _ => {
            let state = new_state(cluster, options, now()).await?;
            cluster.save_state(&state).await?;
            reporter.event(&format!("started {} rotation {}", mode_name(state.mode), state.id));
            state
        }
    };
    while state.step != Step::Done {
        reporter.event(&format!("{}: {}", state.step, state.step.describe()));
        let done = do_step(cluster, options, &mut state, reporter).await?;
        reporter.event(&format!("{} done: {done}", state.step));
        state.step = state.step.next(state.mode);
        let at = pki::rfc3339(now());
        state.step_started_at = at.clone();
        if state.step == Step::Done {
            state.finished_at = Some(at);
        }
        // Recorded before the next step's effect: an interruption from here
        // on resumes at that step.
        cluster.save_state(&state).await?;
    }
    reporter.event(&format!("rotation {} complete", state.id));
    Ok(state)
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub(super) fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Full => "full",
        Mode::IssuerOnly => "issuer-only",
    }
}

/// A fresh state for `options.mode`, from the current bundle.
async fn new_state(cluster: &dyn Cluster, options: &RotateOptions, at: OffsetDateTime) -> Result<RotationState, RotateError> {
    let bundle = read_bundle(cluster).await?;
    let id = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{:04x}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        rand::random::<u16>()
    );
    let signing_anchor = match options.mode {
        Mode::Full => None,
        Mode::IssuerOnly => Some(current_signer(&options.anchor_dir, &bundle)?.0),
    };
    let started = pki::rfc3339(at);
    Ok(RotationState {
        material_dir: material::material_dir(&options.anchor_dir, &id).display().to_string(),
        id,
        mode: options.mode,
        step: Step::first(options.mode),
        started_at: started.clone(),
        step_started_at: started,
        old_anchors: bundle.fingerprints(),
        signing_anchor,
        new_issuer: None,
        finished_at: None,
    })
}

/// The bundle anchor whose key is under `anchor_dir` (the last one in bundle
/// order, the newest by convention), with its directory.
pub(super) fn current_signer(anchor_dir: &Path, bundle: &Bundle) -> Result<(String, PathBuf), RotateError> {
    for fp in bundle.fingerprints().iter().rev() {
        if let Some(dir) = material::find_anchor(anchor_dir, fp)? {
            return Ok((fp.clone(), dir));
        }
    }
    Err(RotateError::NoSigner { anchor_dir: anchor_dir.to_owned(), bundle: bundle.fingerprints() })
}

pub(super) async fn read_bundle(cluster: &dyn Cluster) -> Result<Bundle, RotateError> {
    Bundle::parse(&cluster.bundle().await?).map_err(RotateError::Bundle)
}

/// Does one step; returns a line saying what it did.
async fn do_step(
    cluster: &dyn Cluster,
    options: &RotateOptions,
    state: &mut RotationState,
    reporter: &mut dyn Reporter,
) -> Result<String, RotateError> {
    let material_dir = PathBuf::from(&state.material_dir);
    match state.step {
        Step::AddAnchor => {
            let anchor = material::ensure_anchor(&material_dir, options.anchor_validity, &options.naming, now())?;
            let bundle = read_bundle(cluster).await?;
            if !bundle.contains(&anchor.fingerprint) {
                cluster.set_bundle(&bundle.with(&anchor.fingerprint, &anchor.pem).to_pem()).await?;
            }
            state.signing_anchor = Some(anchor.fingerprint.clone());
            let count = bundle.fingerprints().len() + usize::from(!bundle.contains(&anchor.fingerprint));
            Ok(format!("new anchor {} (in {}) added; the bundle holds {count} anchors", anchor.fingerprint, material_dir.display()))
        }
        Step::InstallIssuer => {
            let signer = state.signing_anchor.clone().ok_or_else(|| RotateError::Corrupt("no signing anchor recorded".to_owned()))?;
            let bundle = read_bundle(cluster).await?;
            if !bundle.contains(&signer) {
                return Err(RotateError::Unsafe {
                    what: "installing the new issuer".to_owned(),
                    why: format!("its anchor {signer} is not in the trust bundle"),
                });
            }
            let signer_dir = match state.mode {
                Mode::Full => material_dir.clone(),
                Mode::IssuerOnly => material::find_anchor(&options.anchor_dir, &signer)?
                    .ok_or_else(|| RotateError::NoSigner { anchor_dir: options.anchor_dir.clone(), bundle: vec![signer.clone()] })?,
            };
            let issuer = material::ensure_issuer(&material_dir, &signer_dir, options.issuer_validity, &options.naming, now())?;
            cluster.install_issuer(&issuer.crt.pem, &issuer.key_pem).await?;
            cluster.announce_issuer(&issuer.crt.fingerprint).await?;
            state.new_issuer = Some(issuer.crt.fingerprint.clone());
            Ok(format!("issuer {} signed by {signer} installed and announced", issuer.crt.fingerprint))
        }
        Step::RemoveOldAnchors => {
            // The same guard as the wait before it, checked again now: a pod
            // started since (or a proxy that fell back) still depends on the old anchor.
            wait(cluster, options, state, reporter).await?;
            let new_issuer = state.new_issuer.clone().ok_or_else(|| RotateError::Corrupt("no new issuer recorded".to_owned()))?;
            let installed = cluster.installed_issuer().await?;
            let installed_fp = installed.as_deref().map(super::bundle::fingerprint_pem).transpose().map_err(RotateError::Bundle)?;
            if installed_fp.as_deref() != Some(new_issuer.as_str()) {
                return Err(RotateError::Unsafe {
                    what: "removing the old anchor".to_owned(),
                    why: format!(
                        "the installed issuer is {}, not the rotation's issuer {new_issuer}",
                        installed_fp.unwrap_or_else(|| "missing".to_owned())
                    ),
                });
            }
            let bundle = read_bundle(cluster).await?;
            let remove: Vec<String> = state.old_anchors.iter().filter(|f| Some(*f) != state.signing_anchor.as_ref()).cloned().collect();
            let kept = bundle.without(&remove);
            if kept.is_empty() || !state.signing_anchor.as_ref().is_some_and(|s| kept.contains(s)) {
                return Err(RotateError::Unsafe {
                    what: "removing the old anchor".to_owned(),
                    why: "the new anchor is not in the bundle".to_owned(),
                });
            }
            if kept != bundle {
                cluster.set_bundle(&kept.to_pem()).await?;
            }
            Ok(format!("removed {}; the bundle holds {}", remove.join(", "), kept.fingerprints().join(", ")))
        }
        Step::WaitBundleTrusted | Step::WaitNewLeaves | Step::WaitOldDropped => {
            let total = wait(cluster, options, state, reporter).await?;
            Ok(format!("{total}/{total} proxies"))
        }
        Step::Done => Ok(String::new()),
    }
}

/// Why `proxy` is not done with `step` (None when it is). `bundle` is the
/// current bundle's fingerprints (step 2 needs every one of them).
pub fn laggard_reason(step: Step, state: &RotationState, bundle: &[String], proxy: &ProxyState) -> Option<String> {
    match step {
        Step::WaitBundleTrusted => {
            let Some(anchors) = &proxy.anchors else {
                return Some("has not reported its trust anchors".to_owned());
            };
            let missing: Vec<&str> = bundle.iter().filter(|f| !anchors.contains(f)).map(String::as_str).collect();
            (!missing.is_empty()).then(|| format!("does not trust {} yet", missing.join(", ")))
        }
        // Step 5 is guarded by step 4's condition: an old anchor is never
        // removed while a proxy's leaf may still chain to it.
        Step::WaitNewLeaves | Step::RemoveOldAnchors => {
            let want = state.new_issuer.as_deref().unwrap_or("?");
            match proxy.leaf_issuer.as_deref() {
                Some(issuer) if issuer == want => None,
                Some(issuer) => Some(format!("holds a leaf from issuer {issuer}, not the new issuer {want}")),
                None => Some("has no leaf certificate yet".to_owned()),
            }
        }
        Step::WaitOldDropped => {
            let Some(anchors) = &proxy.anchors else {
                return Some("has not reported its trust anchors".to_owned());
            };
            let old: Vec<&str> = state
                .old_anchors
                .iter()
                .filter(|f| Some(*f) != state.signing_anchor.as_ref() && anchors.contains(f))
                .map(String::as_str)
                .collect();
            (!old.is_empty()).then(|| format!("still trusts the old anchor {}", old.join(", ")))
        }
        Step::AddAnchor | Step::InstallIssuer | Step::Done => None,
    }
}

/// Every proxy not done with `step`, sorted by name.
pub fn laggards(step: Step, state: &RotationState, bundle: &[String], proxies: &[ProxyState]) -> Vec<Laggard> {
    let mut out: Vec<Laggard> =
        proxies.iter().filter_map(|p| laggard_reason(step, state, bundle, p).map(|why| Laggard { proxy: p.name(), why })).collect();
    out.sort_by(|a, b| a.proxy.cmp(&b.proxy));
    out
}

/// Time spent in the current step so far (from the recorded entry time).
pub(super) fn time_in_step(state: &RotationState, at: OffsetDateTime) -> Duration {
    OffsetDateTime::parse(&state.step_started_at, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| Duration::try_from(at - t).ok())
        .unwrap_or_default()
}

/// Polls the proxies until none lags for the current step; returns how
/// many there were. Times out after `options.step_timeout` of this run.
async fn wait(
    cluster: &dyn Cluster,
    options: &RotateOptions,
    state: &RotationState,
    reporter: &mut dyn Reporter,
) -> Result<usize, RotateError> {
    let started = Instant::now();
    let before = time_in_step(state, now());
    loop {
        let bundle = if state.step == Step::WaitBundleTrusted { read_bundle(cluster).await?.fingerprints() } else { Vec::new() };
        let proxies = cluster.proxies().await?;
        let lagging = laggards(state.step, state, &bundle, &proxies);
        reporter.progress(state.step, proxies.len() - lagging.len(), proxies.len(), before + started.elapsed());
        if lagging.is_empty() {
            reporter.clear();
            return Ok(proxies.len());
        }
        let elapsed = started.elapsed();
        if elapsed >= options.step_timeout {
            reporter.clear();
            return Err(RotateError::Timeout { step: state.step, timeout: options.step_timeout, laggards: lagging });
        }
        tokio::time::sleep(options.poll_interval.min(options.step_timeout - elapsed)).await;
    }
}
