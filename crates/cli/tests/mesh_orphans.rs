//! An agent killed outright (SIGKILL: no chance to clean up) takes its
//! meshed pod's processes with it: the kernel's parent-death signal kills
//! both the proxy (`tessera proxy --parent-pid`) and the app (started
//! through `tessera agent exec`), so neither keeps the pod's address, ports
//! or certificate unsupervised.

mod support;

use support::mesh::{api_and_data_store, identity, meshed, python};
use support::{Server, json};

/// A python app that serves nothing and waits forever.
const IDLE_APP: &str = "import time\nwhile True: time.sleep(60)\n";

/// Whether `pid` still runs (a zombie waiting for its reaper does not).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

#[test]
fn sigkilling_the_agent_kills_its_proxy_and_its_app() {
    let server = Server::start();
    api_and_data_store(&server);
    let pki = server.path("identity");
    let (_identity, identity_addr) = identity(&server, &pki);
    let python = python();
    let mut agent = meshed(&server, "data-store", "8081", &identity_addr, &pki.join("ca.crt"), &[&python, "-c", IDLE_APP]);

    // Both containers run: their pids are in the Pod status.
    let pids: Vec<u32> = server.eventually(30, "the app and the proxy running", || {
        let out = server.kubectl(&["get", "pod", "data-store-0", "-n", "data-store", "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        let pod = json(&String::from_utf8_lossy(&out.stdout));
        let pids: Vec<u32> = pod["status"]["containerStatuses"]
            .as_array()?
            .iter()
            .filter(|c| c["state"]["running"].is_object())
            .filter_map(|c| c["containerID"].as_str()?.strip_prefix("tessera-agent://")?.parse().ok())
            .collect();
        (pids.len() == 2).then_some(pids)
    });
    for pid in &pids {
        assert!(running(*pid), "pid {pid} should run");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(cmdline.contains("--parent-pid") || cmdline.contains("time.sleep"), "{pid}: {cmdline}");
    }

    // SIGKILL: the agent stops nothing itself.
    agent.0.kill().expect("SIGKILL the agent");
    let _ = agent.0.wait();
    server.eventually(10, "the proxy and the app gone with their agent", || pids.iter().all(|pid| !running(*pid)).then_some(()));
}
