//! CI check of the benchmark tool: `thingd-bench compare --smoke` against thingd and
//! Mosquitto must deliver every message with no error. Mosquitto is required (`.ci/run`
//! installs it), so a machine without it fails here rather than skipping.
//!
//! Needs the thingd binary next to this test's profile directory: run
//! `cargo build --workspace --bins` first (`scripts/test` does).

use std::path::{Path, PathBuf};
use std::process::Command;

fn thingd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("THINGD_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/smoke-<hash> -> target/<profile>/thingd
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps")
        .join("thingd");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build --workspace --bins`",
        bin.display()
    );
    bin
}

#[test]
fn smoke_comparison_delivers_everything() {
    let output = Command::new(env!("CARGO_BIN_EXE_thingd-bench"))
        .args(["compare", "--smoke", "--brokers", "thingd,mosquitto"])
        .arg("--thingd")
        .arg(thingd_binary())
        .output()
        .expect("run thingd-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "thingd-bench compare --smoke failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    // Both brokers ran and appear in the table.
    for broker in ["| thingd |", "| mosquitto |"] {
        assert!(stdout.contains(broker), "{broker} missing from:\n{stdout}");
    }
    assert!(!stdout.contains("FAILED"), "{stdout}");
    assert!(!stdout.contains("missing:"), "{stdout}");
}

/// A broker named in `--brokers` that is not installed fails the smoke run before anything
/// runs, and says which one.
#[test]
fn smoke_fails_at_once_when_a_named_broker_is_missing() {
    let output = Command::new(env!("CARGO_BIN_EXE_thingd-bench"))
        .args(["compare", "--smoke", "--brokers", "thingd,rumqttd"])
        .arg("--thingd")
        .arg(thingd_binary())
        .env("RUMQTTD_BIN", "/nonexistent/rumqttd")
        .output()
        .expect("run thingd-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("required broker rumqttd is missing"),
        "{stderr}"
    );
    // Nothing ran: no table was printed.
    assert!(!stdout.contains("| thingd |"), "{stdout}");
}

/// Without `--brokers`, a peer that is not installed is reported as missing, in the table
/// and on stderr, and the smoke run of the others still decides the outcome.
#[test]
fn smoke_reports_a_missing_peer_it_was_not_asked_for() {
    let output = Command::new(env!("CARGO_BIN_EXE_thingd-bench"))
        .args(["compare", "--smoke", "--transports", "tcp", "--only", "1→1"])
        .arg("--thingd")
        .arg(thingd_binary())
        .env("RUMQTTD_BIN", "/nonexistent/rumqttd")
        .output()
        .expect("run thingd-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("rumqttd is missing and is not run"),
        "{stderr}"
    );
    assert!(stdout.contains("| rumqttd | missing:"), "{stdout}");
    for broker in ["| thingd |", "| mosquitto |"] {
        assert!(stdout.contains(broker), "{broker} missing from:\n{stdout}");
    }
}

/// Under an open-file limit too low for a scenario, the scenario is not run and the tool
/// says which one and why; the rest still run.
#[test]
fn a_scenario_beyond_the_open_file_limit_is_named_not_dropped_silently() {
    let bench = env!("CARGO_BIN_EXE_thingd-bench");
    // 1,050 descriptors leave the tool 50 connections: the smoke fixed-rate run that holds
    // 40 idle connections besides its 10 pairs (60 in all) cannot run.
    let output = Command::new("bash")
        .arg("-c")
        .arg(r#"ulimit -n 1050 && exec "$0" "$@""#)
        .arg(bench)
        .args([
            "compare",
            "--smoke",
            "--brokers",
            "thingd",
            "--transports",
            "tcp",
        ])
        .arg("--thingd")
        .arg(thingd_binary())
        .output()
        .expect("run thingd-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let held = "10:10 at 100 msg/s QoS 1 16 B + 40 idle";
    assert!(
        stderr.contains(&format!("not run: {held} (60 connections)")),
        "{stderr}"
    );
    assert!(!stdout.contains(held), "{stdout}");
    assert!(
        stdout.contains("| 50 idle connections | TCP | thingd |"),
        "{stdout}"
    );
}

#[test]
fn smoke_shadow_updates_are_accepted() {
    let output = Command::new(env!("CARGO_BIN_EXE_thingd-bench"))
        .args(["shadows", "--smoke"])
        .arg("--thingd")
        .arg(thingd_binary())
        .output()
        .expect("run thingd-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "thingd-bench shadows --smoke failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| 4 |"))
        .unwrap_or_else(|| panic!("no result row in:\n{stdout}"));
    // | things | things/connection | seconds | durable updates | ...
    let updates: u64 = row
        .split('|')
        .nth(4)
        .and_then(|c| c.trim().parse().ok())
        .expect("update count");
    assert!(
        updates >= 4,
        "every thing got at least one update accepted: {row}"
    );
}
