//! `tessera bench` smoke runs: every scenario against a real server, a few
//! hundred requests each, asserting zero unexpected errors, a sane summary and a
//! clean namespace list afterwards. Never timed: nothing here asserts on speed.

mod support;

use std::process::Command;

use serde_json::Value;
use support::{Server, json};

const REQUESTS: u64 = 300;

/// Runs `tessera bench SCENARIO` and returns its JSON summary.
fn bench(server: &Server, scenario: &str, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["bench", scenario, "--kubeconfig"])
        .arg(&server.kubeconfig)
        .args(["--requests", &REQUESTS.to_string(), "--concurrency", "4", "--warmup", "200ms", "--output", "json", "--no-progress"])
        .args(extra)
        .env("TESSERA_LOG", "warn")
        .output()
        .expect("run tessera bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tessera bench {scenario} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let summary = json(&stdout);
    assert_eq!(summary["scenario"], scenario);
    assert_eq!(summary["count"], REQUESTS, "{summary:#}");
    assert_eq!(summary["concurrency"], 4);
    assert!(summary["requests_per_second"].as_f64().is_some_and(|r| r > 0.0), "{summary:#}");
    assert!(summary.get("stopped_early").is_none(), "{summary:#}");
    no_bench_namespace_left(server);
    summary
}

/// The run deleted its namespace (tessera removes it at once once asked).
fn no_bench_namespace_left(server: &Server) {
    server.eventually(10, "the bench namespace to go", || {
        let names = server.kubectl_ok(&["get", "ns", "-o", "name"]);
        (!names.contains("tessera-bench-")).then_some(())
    });
}

/// All requests answered as expected, with ordered, positive percentiles.
fn assert_clean(summary: &Value) {
    assert_eq!(summary["ok"], REQUESTS, "{summary:#}");
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary:#}");
    let l = &summary["latency_ms"];
    let ms = |k: &str| l[k].as_f64().unwrap_or_else(|| panic!("latency_ms.{k} in {summary:#}"));
    assert!(0.0 < ms("min") && ms("min") <= ms("p50"), "{summary:#}");
    assert!(ms("p50") <= ms("p90") && ms("p90") <= ms("p99") && ms("p99") <= ms("p999") && ms("p999") <= ms("max"), "{summary:#}");
}

macro_rules! clean_scenarios {
    ($($test:ident => $scenario:literal $(, $extra:literal)*;)*) => {$(
        #[test]
        fn $test() {
            let server = Server::start();
            assert_clean(&bench(&server, $scenario, &[$($extra),*]));
        }
    )*};
}

clean_scenarios! {
    tokenreview => "tokenreview";
    tokenreview_uncached => "tokenreview-uncached";
    tokenreview_bad_audience => "tokenreview-bad-audience";
    tokenrequest => "tokenrequest";
    sar => "sar";
    create_sa => "create-sa";
    list_sa => "list-sa", "--objects", "50";
    get_sa => "get-sa", "--objects", "20";
    // Against tessera's own `GET /version`: the scenario scripts/bench.sh
    // points at nginx for the machine's HTTPS ceiling.
    https_ceiling => "https-ceiling";
    lease_renew => "lease-renew", "--objects", "20";
    watch_fanout => "watch-fanout", "--watchers", "5";
}

#[test]
fn table_output_and_bad_arguments() {
    let server = Server::start();
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["bench", "tokenreview", "--kubeconfig"])
        .arg(&server.kubeconfig)
        .args(["--requests", "50", "--concurrency", "2", "--warmup", "0s"])
        .output()
        .expect("run tessera bench");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.starts_with(&format!("tokenreview against {}", server.url)), "{table}");
    assert!(table.contains("requests    50 (50 ok, 0 errors)"), "{table}");
    assert!(table.contains("errors      none"), "{table}");

    let out = Command::new(env!("CARGO_BIN_EXE_tessera")).args(["bench", "nope", "--kubeconfig", "x"]).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'nope'"), "{}", String::from_utf8_lossy(&out.stderr));
    let missing = server.path("missing.kubeconfig");
    let out = Command::new(env!("CARGO_BIN_EXE_tessera")).args(["bench", "tokenreview", "--kubeconfig"]).arg(&missing).output().expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with(&format!("error: kubeconfig {}", missing.display())), "{stderr}");
}
