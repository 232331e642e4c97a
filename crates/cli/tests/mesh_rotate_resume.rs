//! Issue 17's interrupted rotation with real proxies: three meshed
//! workloads (web → api → data-store) under continuous load; `tessera
//! identity rotate` is SIGKILLed while it waits in step 4 for leaves from
//! the new issuer. What holds it there is real: web's agent is stopped
//! (SIGSTOP) right after step 2, so while web's proxy renews from the new
//! issuer as the others do, nobody reports it on the pod and the rotation
//! waits. After the kill `--status` names step 4, the new anchor and issuer
//! and the proxy holding it up; traffic still flows; the agent continues
//! (SIGCONT) and a rerun resumes at step 4 without redoing steps 1–3 (no
//! second anchor) and finishes: the bundle holds only the new anchor, every
//! proxy trusts only it and holds a leaf from the new issuer, and not one
//! request failed.

#[path = "support/rotate_load.rs"]
mod rotate_load;
mod support;

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rotate_load::{Load, Mesh, trust};
use rustix::process::{Pid, Signal, kill_process};

/// A stopped process, continued on drop (so a failing test still lets its agent stop its pod).
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Self {
        kill_process(Pid::from_raw(pid as i32).expect("a pid"), Signal::STOP).expect("SIGSTOP");
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(pid) = Pid::from_raw(self.0 as i32) {
            let _ = kill_process(pid, Signal::CONT);
        }
    }
}

/// `command` run by util-linux `script` on a pseudo-terminal: its stdout
/// and stderr both go to the pty, whose output is `script`'s stdout.
fn on_a_terminal(command: &std::process::Command) -> std::process::Command {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    let line: Vec<String> = std::iter::once(command.get_program()).chain(command.get_args()).map(quote).collect();
    let mut script = std::process::Command::new("script");
    script.args(["-q", "-e", "-c", &line.join(" "), "/dev/null"]).env("TESSERA_LOG", "warn").stdin(Stdio::null());
    script
}

/// A thread sending each line of `from` to the receiver.
fn forward_lines(from: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line (within the deadline) for which `check` holds; panics naming `what`.
fn wait_line(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>, deadline: Instant, what: &str, check: impl Fn(&str) -> bool) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let hit = check(&line);
                seen.push(line);
                if hit {
                    return;
                }
            }
            Err(_) => panic!("rotate did not print {what}; it printed:\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn rotate_killed_in_step_4_shows_its_status_and_resumes_to_the_end() {
    let mesh = Mesh::start();
    let old_anchor = mesh.old_anchor.clone();
    let old_issuer = mesh.annotation("web", "tessera.io/leaf-issuer");
    let load = Load::start(mesh.targets());
    load.wait_for_more(&mesh.server, 20, "requests before the rotation");

    let started = Instant::now();
    let mut rotate =
        mesh.rotate_cmd(&["--step-timeout", "60s"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("identity rotate");
    // Step lines on stdout; the progress bar on stderr (a line per change off a terminal).
    let lines = forward_lines(rotate.stdout.take().expect("stdout"));
    let bars = forward_lines(rotate.stderr.take().expect("stderr"));
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    wait_line(&lines, &mut printed, deadline, "step 2's end", |l| l.starts_with("step 2/6 done: 3/3 proxies"));
    // Every proxy trusts both anchors; from here on web's reports stop.
    let web_agent = Stopped::stop(mesh.agents[2].0.id());
    wait_line(&lines, &mut printed, deadline, "step 4's start", |l| {
        assert!(!l.starts_with("step 4/6 done"), "web's agent reported the new leaf before it was stopped: {l}");
        l.starts_with("step 4/6: wait until every meshed proxy holds a leaf from the new issuer")
    });
    let state = mesh.rotation_state();
    let id = state["id"].as_str().unwrap().to_owned();
    let new_anchor = state["signingAnchor"].as_str().unwrap().to_owned();
    let new_issuer = state["newIssuer"].as_str().unwrap().to_owned();
    let laggard = format!("  web/web-0: holds a leaf from issuer {old_issuer}, not the new issuer {new_issuer}\n");
    // In step 4 with the other two proxies done: only web's report holds it,
    // though web's proxy itself renewed.
    mesh.server.eventually(30, "the rotation in step 4 with 2/3 proxies done", || {
        let status = mesh.status();
        (status.contains("in progress at step 4/6") && status.contains(&format!("proxies done: 2/3\n{laggard}"))).then_some(())
    });
    let mut drawn = Vec::new();
    wait_line(&bars, &mut drawn, Instant::now() + Duration::from_secs(30), "the bar at 2/3 in step 4", |l| {
        l.starts_with("[#############-------] 2/3 proxies  step 4/6  ")
    });
    mesh.server.eventually(30, "web's proxy holding a leaf from the new issuer", || {
        (trust(&mesh.ips[2])["leaf"]["issuer"] == new_issuer.as_str()).then_some(())
    });

    rotate.kill().expect("SIGKILL rotate");
    let killed = rotate.wait().expect("rotate exit");
    let killed_after = started.elapsed();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&killed), Some(9), "{killed:?}");
    assert!(printed.iter().all(|l| !l.contains("step 4/6 done")), "{printed:#?}");

    let status = mesh.status();
    for expected in [
        format!("full rotation {id} in progress at step 4/6: wait until every meshed proxy holds a leaf from the new issuer\n"),
        format!("old anchors: {old_anchor}\n"),
        format!("signing anchor: {new_anchor}\n"),
        format!("new issuer: {new_issuer}\n"),
        format!("proxies done: 2/3\n{laggard}"),
        "run `tessera identity rotate` again with the same flags to resume\n".to_owned(),
    ] {
        assert!(status.contains(&expected), "--status lacks {expected:?}:\n{status}");
    }
    assert_eq!(mesh.rotation_state()["step"], "wait-new-leaves");
    assert_eq!(mesh.bundle_fingerprints(), [old_anchor.clone(), new_anchor.clone()], "both anchors stay");
    // Traffic still flows with rotate dead and web's agent stopped.
    load.wait_for_more(&mesh.server, 30, "requests after the kill");
    assert!(load.counts().failures.is_empty(), "{:#?}", load.counts().failures);

    drop(web_agent);
    let resumed_at = Instant::now();
    // The rerun on a terminal (util-linux `script` gives it a pty), where the
    // bar is one line redrawn in place and cleared before each step line.
    let out = on_a_terminal(&mesh.rotate_cmd(&["--step-timeout", "40s"])).output().expect("identity rotate");
    let resume_took = resumed_at.elapsed();
    let (tty, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "resume failed:\n{tty}\n{stderr}");
    assert!(tty.contains("\r\x1b[2K[") && tty.contains("/3 proxies  step 4/6  0m"), "no bar drawn in place: {tty:?}");
    // What a reader of the terminal is left with: the step lines.
    let resumed: String =
        tty.replace("\r\n", "\n").split('\n').map(|l| l.rsplit("\x1b[2K").next().unwrap_or(l)).collect::<Vec<_>>().join("\n");
    assert!(resumed.starts_with(&format!("resuming rotation {id} at step 4/6: ")), "{resumed}");
    for redone in ["step 1/6", "step 2/6", "step 3/6", "new anchor", "started "] {
        assert!(!resumed.contains(redone), "the resume redid {redone:?}:\n{resumed}");
    }
    for expected in [
        "step 4/6 done: 3/3 proxies".to_owned(),
        format!("step 5/6 done: removed {old_anchor}; the bundle holds {new_anchor}"),
        "step 6/6 done: 3/3 proxies".to_owned(),
        format!("rotation {id} complete"),
    ] {
        assert!(resumed.contains(&expected), "the resume lacks {expected:?}:\n{resumed}");
    }
    // The same rotation: no new anchor or issuer was made.
    let state = mesh.rotation_state();
    assert_eq!((state["id"].as_str(), state["step"].as_str()), (Some(id.as_str()), Some("done")));
    assert_eq!(state["signingAnchor"], new_anchor.as_str());
    assert_eq!(state["newIssuer"], new_issuer.as_str());
    assert_eq!(mesh.rotation_dirs(), [format!("rotation-{id}")], "one rotation's material");
    assert_eq!(mesh.bundle_fingerprints(), [new_anchor.clone()], "only the new anchor");

    load.wait_for_more(&mesh.server, 40, "requests after the resume");
    let counts = load.finish();
    println!(
        "interrupted rotation under load: {} requests, {} failed; killed in step 4 after {killed_after:?}, the resume took {resume_took:?}",
        counts.sent,
        counts.failures.len()
    );
    assert!(counts.failures.is_empty(), "{} of {} requests failed: {:#?}", counts.failures.len(), counts.sent, counts.failures);
    mesh.assert_all_on(&new_anchor, &new_issuer, &mesh.pki.join(format!("rotation-{id}/ca.crt")));
}
