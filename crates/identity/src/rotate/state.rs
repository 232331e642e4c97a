//! The rotation's persisted state: which procedure, which step, and what the
//! earlier steps produced. Serialized as JSON under key `state` of the
//! ConfigMap `tessera-identity-rotation`; a step is recorded *before* its
//! effect, so a rerun redoes (idempotently) the step that was interrupted.

use serde::{Deserialize, Serialize};

/// Which procedure runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// New trust anchor and new issuer: Linkerd's six steps.
    Full,
    /// New issuer from the current anchor (steps 3 and 4).
    IssuerOnly,
}

/// The steps of Linkerd's documented procedure, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// 1. Create a new anchor (written to the anchor directory first) and add it to the bundle, keeping the old ones.
    AddAnchor,
    /// 2. Wait until every meshed proxy trusts the whole bundle.
    WaitBundleTrusted,
    /// 3. Create an issuer signed by the rotation's anchor, install it, announce its fingerprint.
    InstallIssuer,
    /// 4. Wait until every proxy's leaf comes from the new issuer.
    WaitNewLeaves,
    /// 5. Remove the old anchors from the bundle.
    RemoveOldAnchors,
    /// 6. Wait until no proxy trusts an old anchor.
    WaitOldDropped,
    /// Finished.
    Done,
}

impl Step {
    /// The first step of `mode`.
    pub fn first(mode: Mode) -> Self {
        match mode {
            Mode::Full => Self::AddAnchor,
            Mode::IssuerOnly => Self::InstallIssuer,
        }
    }

    /// The step after this one in `mode`.
    pub fn next(self, mode: Mode) -> Self {
        match (self, mode) {
            (Self::AddAnchor, _) => Self::WaitBundleTrusted,
            (Self::WaitBundleTrusted, _) => Self::InstallIssuer,
            (Self::InstallIssuer, _) => Self::WaitNewLeaves,
            (Self::WaitNewLeaves, Mode::Full) => Self::RemoveOldAnchors,
            (Self::WaitNewLeaves, Mode::IssuerOnly) => Self::Done,
            (Self::RemoveOldAnchors, _) => Self::WaitOldDropped,
            (Self::WaitOldDropped | Self::Done, _) => Self::Done,
        }
    }

    /// The steps of `mode`, in order (without `Done`).
    pub fn all(mode: Mode) -> Vec<Self> {
        let mut steps = vec![Self::first(mode)];
        while let Some(&last) = steps.last() {
            let next = last.next(mode);
            if next == Self::Done {
                break;
            }
            steps.push(next);
        }
        steps
    }

    /// Linkerd's step number (1–6); 7 for `Done`.
    pub fn number(self) -> u8 {
        match self {
            Self::AddAnchor => 1,
            Self::WaitBundleTrusted => 2,
            Self::InstallIssuer => 3,
            Self::WaitNewLeaves => 4,
            Self::RemoveOldAnchors => 5,
            Self::WaitOldDropped => 6,
            Self::Done => 7,
        }
    }

    /// Whether the step waits on the proxies (rather than changing something).
    pub fn is_wait(self) -> bool {
        matches!(self, Self::WaitBundleTrusted | Self::WaitNewLeaves | Self::WaitOldDropped)
    }

    /// One line saying what the step does.
    pub fn describe(self) -> &'static str {
        match self {
            Self::AddAnchor => "create a new trust anchor and add it to the bundle, keeping the old one",
            Self::WaitBundleTrusted => "wait until every meshed proxy trusts every anchor of the bundle",
            Self::InstallIssuer => "create an issuer signed by the anchor, install it and announce its fingerprint",
            Self::WaitNewLeaves => "wait until every meshed proxy holds a leaf from the new issuer",
            Self::RemoveOldAnchors => "remove the old trust anchor from the bundle",
            Self::WaitOldDropped => "wait until no meshed proxy trusts the old anchor",
            Self::Done => "done",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Done => f.write_str("done"),
            step => write!(f, "step {}/6", step.number()),
        }
    }
}

/// Everything a rerun needs to resume; JSON in the rotation ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotationState {
    /// Names this rotation (UTC start time, `YYYYMMDDTHHMMSSZ`) and its material directory.
    pub id: String,
    /// Full or issuer-only.
    pub mode: Mode,
    /// The step to do (recorded before its effect).
    pub step: Step,
    /// When the rotation started (RFC 3339).
    pub started_at: String,
    /// When the current step was entered (RFC 3339).
    pub step_started_at: String,
    /// Fingerprints of the bundle's anchors when the rotation started: the
    /// ones a full rotation removes in step 5.
    pub old_anchors: Vec<String>,
    /// Fingerprint of the anchor that signs the new issuer (the new anchor
    /// once step 1 is done; the current one for an issuer-only rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_anchor: Option<String>,
    /// Fingerprint of the new issuer, once step 3 is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_issuer: Option<String>,
    /// Directory holding this rotation's anchor (`ca.crt`, `ca.key`) and issuer (`issuer/`).
    pub material_dir: String,
    /// When the rotation finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_has_six_steps_and_issuer_only_two() {
        assert_eq!(Step::all(Mode::Full).iter().map(|s| s.number()).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(Step::all(Mode::IssuerOnly), [Step::InstallIssuer, Step::WaitNewLeaves]);
        assert_eq!(Step::WaitOldDropped.next(Mode::Full), Step::Done);
    }

    #[test]
    fn state_is_camel_case_json_with_kebab_steps() {
        let state = RotationState {
            id: "20261206T050000Z".into(),
            mode: Mode::IssuerOnly,
            step: Step::WaitNewLeaves,
            started_at: "2026-12-06T05:00:00Z".into(),
            step_started_at: "2026-12-06T05:00:01Z".into(),
            old_anchors: vec!["sha256:aa".into()],
            signing_anchor: Some("sha256:aa".into()),
            new_issuer: None,
            material_dir: "/x".into(),
            finished_at: None,
        };
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["step"], "wait-new-leaves");
        assert_eq!(json["mode"], "issuer-only");
        assert_eq!(json["oldAnchors"][0], "sha256:aa");
        assert!(json.get("newIssuer").is_none());
        assert_eq!(serde_json::from_value::<RotationState>(json).unwrap(), state);
    }
}
