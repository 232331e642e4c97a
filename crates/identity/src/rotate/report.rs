//! `--dry-run` (the plan, from reads only) and `--status` (where a
//! rotation stands), as text. Neither writes anything.

use std::fmt::Write as _;

use time::OffsetDateTime;

use super::RotateError;
use super::cluster::Cluster;
use super::machine::{self, RotateOptions, laggards, mode_name, read_bundle, time_in_step};

use super::state::{Mode, RotationState, Step};

/// What a run with `options` would do, from where things stand now.
/// `issuer_target` describes where the issuer would be installed.
pub async fn plan(cluster: &dyn Cluster, options: &RotateOptions, issuer_target: &str) -> Result<String, RotateError> {
    let mut out = String::from("dry run: nothing will be changed\n");
    let bundle = read_bundle(cluster).await?;
    let proxies = cluster.proxies().await?;
    let _ = writeln!(out, "trust bundle: {} anchor(s): {}", bundle.fingerprints().len(), bundle.fingerprints().join(", "));
    let _ = writeln!(out, "meshed proxies: {}", proxies.len());
    let _ = writeln!(out, "issuer target: {issuer_target}");
    let (mode, steps) = match cluster.load_state().await? {
        Some(state) if state.step != Step::Done => {
            if state.mode != options.mode {
                return Err(RotateError::ModeConflict { id: state.id, mode: state.mode, step: state.step });
            }
            let _ = writeln!(out, "would resume {} rotation {} at {}", mode_name(state.mode), state.id, state.step);
            let steps: Vec<Step> = Step::all(state.mode).into_iter().filter(|s| *s >= state.step).collect();
            (state.mode, steps)
        }
        _ => {
            let _ =
                writeln!(out, "would start a {} rotation; new material under {}", mode_name(options.mode), options.anchor_dir.display());
            if options.mode == Mode::IssuerOnly {
                let (fp, dir) = machine::current_signer(&options.anchor_dir, &bundle)?;
                let _ = writeln!(out, "the new issuer would be signed by {fp} ({})", dir.display());
            }
            (options.mode, Step::all(options.mode))
        }
    };
    for step in steps {
        let _ = writeln!(out, "  {step}: {}", step.describe());
    }
    if mode == Mode::Full {
        let _ = writeln!(
            out,
            "each wait times out after {}; the old anchor is removed only once every proxy holds a leaf from the new issuer",
            humantime::format_duration(options.step_timeout)
        );
    }
    Ok(out)
}

/// Where the last (or current) rotation stands.
pub async fn status(cluster: &dyn Cluster) -> Result<String, RotateError> {
    let Some(state) = cluster.load_state().await? else {
        return Ok("no rotation has been started\n".to_owned());
    };
    render_status(cluster, &state).await
}

async fn render_status(cluster: &dyn Cluster, state: &RotationState) -> Result<String, RotateError> {
    let mut out = String::new();
    if state.step == Step::Done {
        let _ = writeln!(
            out,
            "{} rotation {} complete (started {}, finished {})",
            mode_name(state.mode),
            state.id,
            state.started_at,
            state.finished_at.as_deref().unwrap_or("?")
        );
    } else {
        let in_step = time_in_step(state, OffsetDateTime::now_utc());
        let _ = writeln!(out, "{} rotation {} in progress at {}: {}", mode_name(state.mode), state.id, state.step, state.step.describe());
        let _ = writeln!(
            out,
            "started {}; in this step since {} ({})",
            state.started_at,
            state.step_started_at,
            humantime::format_duration(std::time::Duration::from_secs(in_step.as_secs()))
        );
    }
    let _ = writeln!(out, "old anchors: {}", state.old_anchors.join(", "));
    if let Some(anchor) = &state.signing_anchor {
        let _ = writeln!(out, "signing anchor: {anchor}");
    }
    if let Some(issuer) = &state.new_issuer {
        let _ = writeln!(out, "new issuer: {issuer}");
    }
    let _ = writeln!(out, "material: {}", state.material_dir);
    if state.step.is_wait() || state.step == Step::RemoveOldAnchors {
        let bundle = if state.step == Step::WaitBundleTrusted { read_bundle(cluster).await?.fingerprints() } else { Vec::new() };
        let proxies = cluster.proxies().await?;
        let lagging = laggards(state.step, state, &bundle, &proxies);
        let _ = writeln!(out, "proxies done: {}/{}", proxies.len() - lagging.len(), proxies.len());
        for l in lagging {
            let _ = writeln!(out, "  {}: {}", l.proxy, l.why);
        }
    }
    if state.step != Step::Done {
        let flag = if state.mode == Mode::IssuerOnly { " --issuer-only" } else { "" };
        let _ = writeln!(out, "run `tessera identity rotate{flag}` again with the same flags to resume");
    }
    Ok(out)
}
