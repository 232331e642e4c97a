//! The state machine against a fake cluster whose proxies follow the bundle
//! and the announced issuer one poll late (as real proxies lag their watch).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::*;
use crate::bootstrap::{BootstrapConfig, bootstrap};
use crate::pki;
use crate::review::IdentityNaming;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Write {
    State(Step),
    Bundle(Vec<String>),
    Issuer(String),
    Announce(String),
}

#[derive(Default)]
struct Inner {
    state: Option<RotationState>,
    bundle: String,
    announced: Option<String>,
    installed: Option<String>,
    /// What each proxy reports; `follow` decides whether it catches up.
    proxies: Vec<(ProxyState, Follow)>,
    writes: Vec<Write>,
    /// Interrupt right after recording this step (before its effect).
    crash_after_recording: Option<Step>,
    /// Interrupt instead of recording this step (after the previous step's effect).
    crash_before_recording: Option<Step>,
    /// When this step is recorded, a pod appears with this report.
    pod_appears_at: Option<(Step, ProxyState)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    All,
    /// Never picks up bundle changes.
    NotTrust,
    /// Never renews its leaf.
    NotRenew,
}

struct Fake {
    inner: Mutex<Inner>,
    anchor_dir: PathBuf,
}

fn interrupted() -> ClusterError {
    ClusterError("interrupted".to_owned())
}

impl Fake {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap())
    }
    fn writes(&self) -> Vec<Write> {
        self.with(|i| i.writes.clone())
    }
    fn bundle_fps(&self) -> Vec<String> {
        self.with(|i| Bundle::parse(&i.bundle).unwrap().fingerprints())
    }
}

#[async_trait]
impl Cluster for Fake {
    async fn load_state(&self) -> Result<Option<RotationState>, ClusterError> {
        Ok(self.with(|i| i.state.clone()))
    }
    async fn save_state(&self, state: &RotationState) -> Result<(), ClusterError> {
        self.with(|i| {
            if i.crash_before_recording == Some(state.step) {
                i.crash_before_recording = None;
                return Err(interrupted());
            }
            i.state = Some(state.clone());
            i.writes.push(Write::State(state.step));
            if let Some((step, proxy)) = i.pod_appears_at.clone()
                && step == state.step
            {
                i.proxies.push((proxy, Follow::NotRenew));
            }
            if i.crash_after_recording == Some(state.step) {
                i.crash_after_recording = None;
                return Err(interrupted());
            }
            Ok(())
        })
    }
    async fn bundle(&self) -> Result<String, ClusterError> {
        Ok(self.with(|i| i.bundle.clone()))
    }
    async fn set_bundle(&self, pem: &str) -> Result<(), ClusterError> {
        let fps = Bundle::parse(pem).unwrap().fingerprints();
        // Every anchor that enters the bundle is already on disk.
        for fp in &fps {
            assert!(material::find_anchor(&self.anchor_dir, fp).unwrap().is_some(), "{fp} not on disk");
        }
        self.with(|i| {
            i.bundle = pem.to_owned();
            i.writes.push(Write::Bundle(fps));
        });
        Ok(())
    }
    async fn announce_issuer(&self, fingerprint: &str) -> Result<(), ClusterError> {
        self.with(|i| {
            i.announced = Some(fingerprint.to_owned());
            i.writes.push(Write::Announce(fingerprint.to_owned()));
        });
        Ok(())
    }
    async fn install_issuer(&self, crt_pem: &str, _key_pem: &str) -> Result<(), ClusterError> {
        self.with(|i| {
            i.installed = Some(crt_pem.to_owned());
            i.writes.push(Write::Issuer(fingerprint_pem(crt_pem).unwrap()));
        });
        Ok(())
    }
    async fn installed_issuer(&self) -> Result<Option<String>, ClusterError> {
        Ok(self.with(|i| i.installed.clone()))
    }
    async fn proxies(&self) -> Result<Vec<ProxyState>, ClusterError> {
        Ok(self.with(|i| {
            let seen = i.proxies.iter().map(|(p, _)| p.clone()).collect();
            // One poll late: the next poll sees them caught up.
            let bundle = Bundle::parse(&i.bundle).unwrap().fingerprints();
            let issuer = i.installed.as_deref().map(|pem| fingerprint_pem(pem).unwrap());
            for (p, follow) in &mut i.proxies {
                if *follow != Follow::NotTrust {
                    let mut sorted = bundle.clone();
                    sorted.sort();
                    p.anchors = Some(sorted);
                }
                if *follow != Follow::NotRenew && i.announced.is_some() {
                    p.leaf_issuer = issuer.clone();
                }
            }
            seen
        }))
    }
}

fn pem_fp(path: &Path) -> String {
    fingerprint_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
}

struct Setup {
    dir: tempfile::TempDir,
    fake: Fake,
    old_anchor: String,
    old_issuer: String,
}

fn setup(pods: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = BootstrapConfig {
        out: dir.path().to_owned(),
        anchor_validity: Duration::from_secs(87600 * 3600),
        issuer_validity: Duration::from_secs(8760 * 3600),
        naming: IdentityNaming::default(),
        anchor_dir: None,
    };
    bootstrap(&config, time::OffsetDateTime::now_utc()).unwrap();
    let old_anchor = pem_fp(&dir.path().join("ca.crt"));
    let old_issuer = pem_fp(&dir.path().join("crt.pem"));
    let proxies = pods
        .iter()
        .map(|name| {
            let (namespace, pod) = name.split_once('/').unwrap();
            let p = ProxyState {
                namespace: namespace.into(),
                pod: pod.into(),
                anchors: Some(vec![old_anchor.clone()]),
                leaf_issuer: Some(old_issuer.clone()),
            };
            (p, Follow::All)
        })
        .collect();
    let inner = Inner {
        bundle: std::fs::read_to_string(dir.path().join("ca.crt")).unwrap(),
        installed: Some(std::fs::read_to_string(dir.path().join("crt.pem")).unwrap()),
        proxies,
        ..Inner::default()
    };
    let fake = Fake { inner: Mutex::new(inner), anchor_dir: dir.path().to_owned() };
    Setup { dir, fake, old_anchor, old_issuer }
}

fn options(dir: &Path, mode: Mode) -> RotateOptions {
    RotateOptions {
        mode,
        anchor_dir: dir.to_owned(),
        naming: IdentityNaming::default(),
        anchor_validity: Duration::from_secs(87600 * 3600),
        issuer_validity: Duration::from_secs(8760 * 3600),
        step_timeout: Duration::from_secs(10),
        poll_interval: Duration::from_millis(1),
    }
}

#[derive(Default)]
struct Recorder {
    events: Vec<String>,
    progress: Vec<(Step, usize, usize)>,
}

impl Reporter for Recorder {
    fn event(&mut self, line: &str) {
        self.events.push(line.to_owned());
    }
    fn progress(&mut self, step: Step, done: usize, total: usize, _: Duration) {
        self.progress.push((step, done, total));
    }
}

fn rotation_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("rotation-"))
        .collect();
    dirs.sort();
    dirs
}

/// The end state of a full rotation: one anchor (the new one, on disk),
/// an issuer it signed installed and announced, every proxy on both.
fn assert_rotated(s: &Setup, state: &RotationState) {
    assert_eq!(state.step, Step::Done);
    let dirs = rotation_dirs(s.dir.path());
    assert_eq!(dirs.len(), 1, "exactly one new anchor was made: {dirs:?}");
    let new_anchor = pem_fp(&dirs[0].join("ca.crt"));
    assert_ne!(new_anchor, s.old_anchor);
    assert_eq!(state.signing_anchor.as_deref(), Some(new_anchor.as_str()));
    assert_eq!(s.fake.bundle_fps(), vec![new_anchor.clone()]);
    let installed = s.fake.with(|i| i.installed.clone()).unwrap();
    let issuer_fp = fingerprint_pem(&installed).unwrap();
    assert_eq!(state.new_issuer.as_deref(), Some(issuer_fp.as_str()));
    assert_eq!(s.fake.with(|i| i.announced.clone()), Some(issuer_fp.clone()));
    assert_eq!(pem_fp(&dirs[0].join("issuer/crt.pem")), issuer_fp);
    // The new issuer is signed by the new anchor.
    let anchor_der = pki::certificates_from_pem(std::fs::read(dirs[0].join("ca.crt")).unwrap().as_slice()).unwrap();
    let issuer_der = pki::certificates_from_pem(installed.as_bytes()).unwrap();
    let (_, anchor) = X509Certificate::from_der(&anchor_der[0]).unwrap();
    let (_, issuer) = X509Certificate::from_der(&issuer_der[0]).unwrap();
    assert!(pki::signed_by(&issuer, &anchor));
    for (p, _) in s.fake.with(|i| i.proxies.clone()) {
        assert_eq!(p.leaf_issuer.as_deref(), Some(issuer_fp.as_str()), "{}", p.name());
    }
}

#[tokio::test]
async fn a_full_rotation_runs_linkerds_six_steps_in_order() {
    let s = setup(&["emojivoto/web", "emojivoto/voting"]);
    let mut rec = Recorder::default();
    let state = run(&s.fake, &options(s.dir.path(), Mode::Full), &mut rec).await.unwrap();
    assert_rotated(&s, &state);
    let new_anchor = state.signing_anchor.clone().unwrap();
    let issuer = state.new_issuer.clone().unwrap();
    assert_eq!(
        s.fake.writes(),
        vec![
            Write::State(Step::AddAnchor),
            Write::Bundle(vec![s.old_anchor.clone(), new_anchor.clone()]),
            Write::State(Step::WaitBundleTrusted),
            Write::State(Step::InstallIssuer),
            Write::Issuer(issuer.clone()),
            Write::Announce(issuer.clone()),
            Write::State(Step::WaitNewLeaves),
            Write::State(Step::RemoveOldAnchors),
            Write::Bundle(vec![new_anchor]),
            Write::State(Step::WaitOldDropped),
            Write::State(Step::Done),
        ]
    );
    assert_eq!(state.old_anchors, vec![s.old_anchor.clone()]);
    assert!(state.finished_at.is_some());
    // Each wait saw the proxies lag, then catch up.
    for step in [Step::WaitBundleTrusted, Step::WaitNewLeaves, Step::WaitOldDropped] {
        let seen: Vec<_> = rec.progress.iter().filter(|p| p.0 == step).map(|p| (p.1, p.2)).collect();
        assert_eq!(seen, vec![(0, 2), (2, 2)], "{step:?}");
    }
    assert!(rec.events.iter().any(|e| e.starts_with("step 1/6 done: new anchor sha256:")), "{:?}", rec.events);
    assert_eq!(rec.events.last().unwrap(), &format!("rotation {} complete", state.id));
}

#[tokio::test]
async fn issuer_only_installs_an_issuer_of_the_current_anchor_and_waits_for_leaves() {
    let s = setup(&["ns/a"]);
    let state = run(&s.fake, &options(s.dir.path(), Mode::IssuerOnly), &mut Silent).await.unwrap();
    assert_eq!(state.step, Step::Done);
    assert_eq!(state.signing_anchor.as_deref(), Some(s.old_anchor.as_str()));
    let issuer = state.new_issuer.clone().unwrap();
    assert_ne!(issuer, s.old_issuer);
    assert_eq!(
        s.fake.writes(),
        vec![
            Write::State(Step::InstallIssuer),
            Write::Issuer(issuer.clone()),
            Write::Announce(issuer.clone()),
            Write::State(Step::WaitNewLeaves),
            Write::State(Step::Done),
        ]
    );
    assert_eq!(s.fake.bundle_fps(), vec![s.old_anchor.clone()]);
    let dirs = rotation_dirs(s.dir.path());
    assert_eq!(dirs.len(), 1);
    assert!(!dirs[0].join("ca.crt").exists(), "no anchor is made");
    assert_eq!(pem_fp(&dirs[0].join("issuer/crt.pem")), issuer);
}

#[tokio::test]
async fn an_interrupted_rotation_resumes_at_every_step() {
    for step in Step::all(Mode::Full) {
        for before in [false, true] {
            let s = setup(&["a/one", "b/two"]);
            let opts = options(s.dir.path(), Mode::Full);
            s.fake.with(|i| {
                if before {
                    // Interrupted after the previous step's effect, before `step` was recorded.
                    i.crash_before_recording = Some(step);
                } else {
                    i.crash_after_recording = Some(step);
                }
            });
            let err = run(&s.fake, &opts, &mut Silent).await.unwrap_err();
            assert_eq!(err.to_string(), "interrupted", "{step:?} before={before}");
            let recorded = s.fake.with(|i| i.state.clone()).map(|st| st.step);
            if before && step == Step::AddAnchor {
                assert_eq!(recorded, None);
            } else if before {
                assert!(recorded < Some(step), "{step:?}: {recorded:?}");
            } else {
                assert_eq!(recorded, Some(step));
                assert!(status(&s.fake).await.unwrap().contains(&format!("in progress at {step}")));
            }
            let mut rec = Recorder::default();
            let state = run(&s.fake, &opts, &mut rec).await.unwrap();
            assert_rotated(&s, &state);
            if recorded.is_some() {
                assert!(rec.events[0].starts_with("resuming rotation"), "{:?}", rec.events);
            }
        }
    }
}

#[tokio::test]
async fn a_step_timeout_stops_at_the_wait_and_names_the_laggards() {
    let s = setup(&["ns/good", "ns/stale"]);
    s.fake.with(|i| i.proxies[1].1 = Follow::NotTrust);
    let mut opts = options(s.dir.path(), Mode::Full);
    opts.step_timeout = Duration::from_millis(50);
    let err = run(&s.fake, &opts, &mut Silent).await.unwrap_err();
    let new_anchor = s.fake.with(|i| i.state.clone()).unwrap().signing_anchor.unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "step 2/6 did not finish within 50ms; the rotation stopped there (rerun to resume). 1 proxies holding it up:\n  ns/stale: does not trust {new_anchor} yet"
        )
    );
    let state = s.fake.with(|i| i.state.clone()).unwrap();
    assert_eq!(state.step, Step::WaitBundleTrusted);
    assert!(s.fake.with(|i| i.announced.is_none()), "no issuer before every proxy trusts the new anchor");
    let text = status(&s.fake).await.unwrap();
    assert!(text.contains("proxies done: 1/2\n  ns/stale: does not trust"), "{text}");

    // The proxy catches up; the rerun resumes and finishes.
    s.fake.with(|i| i.proxies[1].1 = Follow::All);
    let state = run(&s.fake, &options(s.dir.path(), Mode::Full), &mut Silent).await.unwrap();
    assert_rotated(&s, &state);
}

#[tokio::test]
async fn the_old_anchor_stays_while_a_proxy_cannot_renew() {
    let s = setup(&["ns/ok", "ns/no-token"]);
    s.fake.with(|i| i.proxies[1].1 = Follow::NotRenew);
    let mut opts = options(s.dir.path(), Mode::Full);
    opts.step_timeout = Duration::from_millis(50);
    let err = run(&s.fake, &opts, &mut Silent).await.unwrap_err();
    let state = s.fake.with(|i| i.state.clone()).unwrap();
    assert_eq!(state.step, Step::WaitNewLeaves);
    let RotateError::Timeout { step, laggards, .. } = err else { panic!("{err}") };
    assert_eq!(step, Step::WaitNewLeaves);
    assert_eq!(
        laggards,
        vec![Laggard {
            proxy: "ns/no-token".into(),
            why: format!("holds a leaf from issuer {}, not the new issuer {}", s.old_issuer, state.new_issuer.clone().unwrap()),
        }]
    );
    assert_eq!(s.fake.bundle_fps().len(), 2, "both anchors stay");
    // Rerunning does not get past it either.
    assert!(matches!(run(&s.fake, &opts, &mut Silent).await, Err(RotateError::Timeout { step: Step::WaitNewLeaves, .. })));
    assert_eq!(s.fake.bundle_fps().len(), 2);
}

#[tokio::test]
async fn a_pod_with_an_old_leaf_appearing_before_step_5_blocks_the_removal() {
    let s = setup(&["ns/a"]);
    let late = ProxyState {
        namespace: "ns".into(),
        pod: "late".into(),
        anchors: Some(vec![s.old_anchor.clone()]),
        leaf_issuer: Some(s.old_issuer.clone()),
    };
    s.fake.with(|i| i.pod_appears_at = Some((Step::RemoveOldAnchors, late)));
    let mut opts = options(s.dir.path(), Mode::Full);
    opts.step_timeout = Duration::from_millis(50);
    let err = run(&s.fake, &opts, &mut Silent).await.unwrap_err();
    assert!(matches!(&err, RotateError::Timeout { step: Step::RemoveOldAnchors, laggards, .. } if laggards[0].proxy == "ns/late"), "{err}");
    assert_eq!(s.fake.bundle_fps().len(), 2, "the old anchor stays");
    assert_eq!(s.fake.with(|i| i.state.clone()).unwrap().step, Step::RemoveOldAnchors);
}

#[tokio::test]
async fn the_old_anchor_stays_when_the_installed_issuer_is_not_the_new_one() {
    let s = setup(&["ns/a"]);
    let opts = options(s.dir.path(), Mode::Full);
    s.fake.with(|i| i.crash_after_recording = Some(Step::RemoveOldAnchors));
    run(&s.fake, &opts, &mut Silent).await.unwrap_err();
    // Someone puts the old issuer back; every proxy still reports the new one.
    let old = std::fs::read_to_string(s.dir.path().join("crt.pem")).unwrap();
    s.fake.with(|i| i.installed = Some(old));
    let err = run(&s.fake, &opts, &mut Silent).await.unwrap_err();
    assert!(err.to_string().starts_with(&format!("refusing removing the old anchor: the installed issuer is {}", s.old_issuer)), "{err}");
    assert_eq!(s.fake.bundle_fps().len(), 2);
}

#[tokio::test]
async fn dry_run_changes_nothing() {
    let s = setup(&["ns/a", "ns/b"]);
    let before: Vec<_> = std::fs::read_dir(s.dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    let text = plan(&s.fake, &options(s.dir.path(), Mode::Full), "directory /x").await.unwrap();
    assert!(text.starts_with("dry run: nothing will be changed\n"), "{text}");
    assert!(text.contains(&format!("trust bundle: 1 anchor(s): {}\nmeshed proxies: 2\n", s.old_anchor)), "{text}");
    for step in Step::all(Mode::Full) {
        assert!(text.contains(&format!("  {step}: {}\n", step.describe())), "{text}");
    }
    let text = plan(&s.fake, &options(s.dir.path(), Mode::IssuerOnly), "directory /x").await.unwrap();
    assert!(text.contains(&format!("the new issuer would be signed by {}", s.old_anchor)), "{text}");
    assert!(!text.contains("step 1/6"), "{text}");
    assert_eq!(s.fake.writes(), vec![]);
    let after: Vec<_> = std::fs::read_dir(s.dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(before, after);

    // With a rotation stopped at step 4, the plan is the rest of it.
    s.fake.with(|i| i.crash_after_recording = Some(Step::WaitNewLeaves));
    run(&s.fake, &options(s.dir.path(), Mode::Full), &mut Silent).await.unwrap_err();
    let writes = s.fake.writes().len();
    let text = plan(&s.fake, &options(s.dir.path(), Mode::Full), "directory /x").await.unwrap();
    assert!(text.contains("would resume full rotation") && text.contains(" at step 4/6\n"), "{text}");
    assert!(!text.contains("step 3/6") && text.contains("step 6/6"), "{text}");
    assert_eq!(s.fake.writes().len(), writes);
}

#[tokio::test]
async fn another_mode_does_not_hijack_a_rotation_in_progress() {
    let s = setup(&["ns/a"]);
    s.fake.with(|i| i.crash_after_recording = Some(Step::WaitBundleTrusted));
    run(&s.fake, &options(s.dir.path(), Mode::Full), &mut Silent).await.unwrap_err();
    let err = run(&s.fake, &options(s.dir.path(), Mode::IssuerOnly), &mut Silent).await.unwrap_err();
    assert!(err.to_string().ends_with("is in progress at step 2/6; rerun without --issuer-only to resume it (see --status)"), "{err}");
}

#[tokio::test]
async fn status_without_a_rotation_and_after_one() {
    let s = setup(&[]);
    assert_eq!(status(&s.fake).await.unwrap(), "no rotation has been started\n");
    let state = run(&s.fake, &options(s.dir.path(), Mode::Full), &mut Silent).await.unwrap();
    let text = status(&s.fake).await.unwrap();
    assert!(text.starts_with(&format!("full rotation {} complete (started ", state.id)), "{text}");
    // A second rotation starts afresh, signing with the anchor the first made.
    let again = run(&s.fake, &options(s.dir.path(), Mode::IssuerOnly), &mut Silent).await.unwrap();
    assert_ne!(again.id, state.id);
    assert_eq!(again.signing_anchor, state.signing_anchor);
}

#[test]
fn bundle_edits_keep_order_and_drop_duplicates() {
    let s = setup(&[]);
    let old = std::fs::read_to_string(s.dir.path().join("ca.crt")).unwrap();
    let other = std::fs::read_to_string(s.dir.path().join("crt.pem")).unwrap();
    let other_fp = fingerprint_pem(&other).unwrap();
    let b = Bundle::parse(&format!("{old}{old}")).unwrap();
    assert_eq!(b.fingerprints(), vec![s.old_anchor.clone()]);
    let two = b.with(&other_fp, &other);
    assert_eq!(Bundle::parse(&two.to_pem()).unwrap(), two);
    assert_eq!(two.without(std::slice::from_ref(&s.old_anchor)).fingerprints(), vec![other_fp]);
    assert!(Bundle::parse("").is_err());
    assert_eq!(fingerprint(b"x").len(), 7 + 64);
}
