//! `docs/alerts.yaml` is valid for Prometheus (`promtool check rules`), its
//! unit tests pass (`promtool test rules docs/alerts.test.yaml`), and it uses
//! only metric names the server exports. promtool comes from Debian's
//! `prometheus` (scripts/test.sh installs it and sets
//! TESSERA_REQUIRE_PROMTOOL=1, so CI never skips); elsewhere the promtool
//! runs are skipped when it is missing.

use std::path::PathBuf;
use std::process::Command;

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}

/// promtool, or None when it may be skipped.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    if found {
        return Some("promtool");
    }
    assert!(
        std::env::var_os("TESSERA_REQUIRE_PROMTOOL").is_none(),
        "TESSERA_REQUIRE_PROMTOOL is set but promtool is not on PATH (Debian package `prometheus`)"
    );
    eprintln!("skipping: promtool is not installed (scripts/test.sh installs Debian's `prometheus`)");
    None
}

fn run(args: &[&str]) -> String {
    let out = Command::new("promtool").args(args).current_dir(docs()).output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let Some(_) = promtool() else { return };
    let text = run(&["check", "rules", "alerts.yaml"]);
    assert!(text.contains("SUCCESS: 7 rules found"), "{text}");
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let Some(_) = promtool() else { return };
    let text = run(&["test", "rules", "alerts.test.yaml"]);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn the_alert_rules_use_only_metrics_the_server_exports() {
    let rules = std::fs::read_to_string(docs().join("alerts.yaml")).expect("docs/alerts.yaml");
    use tessera_apiserver::expiry::{Item, Kind, Timeline};
    // Families without series are not exported: give the gauges one item.
    let metrics = tessera_apiserver::metrics::Metrics::default();
    let at = |s| jiff::Timestamp::from_second(s).ok();
    let anchor = Item {
        not_before: at(1_700_000_000),
        not_after: at(1_800_000_000),
        ..Item::new(Kind::TrustAnchor, "root", "bundle")
    };
    metrics.expiry.update(
        &Timeline {
            now: at(1_750_000_000),
            items: vec![anchor],
            notes: vec![],
        },
        std::time::Duration::from_secs(86400),
    );
    let exported = metrics.encode();
    let mut used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("tessera_") && w.ends_with(|c: char| c.is_ascii_lowercase()))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert_eq!(used.len(), 4, "{used:?}");
    for name in used {
        assert!(
            exported.contains(&format!("# TYPE {name} gauge")),
            "{name} is not on the server's /metrics:\n{exported}"
        );
    }
}
