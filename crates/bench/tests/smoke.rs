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

/// What one run of the tool printed.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!("--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr)
    }
}

/// Runs `thingd-bench ARGS --thingd <binary>` with `env` set, under `ulimit -n` when given.
fn bench(args: &[&str], env: &[(&str, &str)], nofile: Option<u32>) -> Run {
    let tool = env!("CARGO_BIN_EXE_thingd-bench");
    let mut command = match nofile {
        Some(limit) => {
            let mut c = Command::new("bash");
            c.arg("-c")
                .arg(format!(r#"ulimit -n {limit} && exec "$0" "$@""#))
                .arg(tool);
            c
        }
        None => Command::new(tool),
    };
    let output = command
        .args(args)
        .arg("--thingd")
        .arg(thingd_binary())
        .envs(env.iter().copied())
        .output()
        .expect("run thingd-bench");
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn smoke_comparison_delivers_everything() {
    let run = bench(
        &["compare", "--smoke", "--brokers", "thingd,mosquitto"],
        &[],
        None,
    );
    assert!(
        run.ok,
        "thingd-bench compare --smoke failed\n{}",
        run.describe()
    );
    // Both brokers ran and appear in the table.
    for broker in ["| thingd |", "| mosquitto |"] {
        assert!(
            run.stdout.contains(broker),
            "{broker} missing:\n{}",
            run.stdout
        );
    }
    assert!(!run.stdout.contains("FAILED"), "{}", run.stdout);
    assert!(!run.stdout.contains("missing:"), "{}", run.stdout);
}

/// A broker named in `--brokers` that is not installed fails the smoke run before anything
/// runs, and says which one.
#[test]
fn smoke_fails_at_once_when_a_named_broker_is_missing() {
    let run = bench(
        &["compare", "--smoke", "--brokers", "thingd,rumqttd"],
        &[("RUMQTTD_BIN", "/nonexistent/rumqttd")],
        None,
    );
    assert!(!run.ok, "{}", run.describe());
    assert!(
        run.stderr.contains("required broker rumqttd is missing"),
        "{}",
        run.stderr
    );
    // Nothing ran: no table was printed.
    assert!(!run.stdout.contains("| thingd |"), "{}", run.stdout);
}

/// Without `--brokers`, a peer that is not installed is reported as missing, in the table
/// and on stderr, and the smoke run of the others still decides the outcome.
#[test]
fn smoke_reports_a_missing_peer_it_was_not_asked_for() {
    let run = bench(
        &["compare", "--smoke", "--transports", "tcp", "--only", "1→1"],
        &[("RUMQTTD_BIN", "/nonexistent/rumqttd")],
        None,
    );
    assert!(run.ok, "{}", run.describe());
    assert!(
        run.stderr.contains("rumqttd is missing and is not run"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.contains("| rumqttd | missing:"),
        "{}",
        run.stdout
    );
    for broker in ["| thingd |", "| mosquitto |"] {
        assert!(
            run.stdout.contains(broker),
            "{broker} missing:\n{}",
            run.stdout
        );
    }
}

/// Under an open-file limit too low for a scenario, the scenario is not run and the tool
/// says which one and why; the rest still run.
#[test]
fn a_scenario_beyond_the_open_file_limit_is_named_not_dropped_silently() {
    // 1,050 descriptors leave the tool 50 connections: the smoke fixed-rate run that holds
    // 40 idle connections besides its 10 pairs (60 in all) cannot run.
    let run = bench(
        &[
            "compare",
            "--smoke",
            "--brokers",
            "thingd",
            "--transports",
            "tcp",
        ],
        &[],
        Some(1050),
    );
    assert!(run.ok, "{}", run.describe());
    let held = "10:10 at 100 msg/s QoS 1 16 B + 40 idle";
    assert!(
        run.stderr
            .contains(&format!("not run: {held} (60 connections)")),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains(held), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("| 50 idle connections | TCP | thingd |"),
        "{}",
        run.stdout
    );
}

#[test]
fn smoke_shadow_updates_are_accepted() {
    let run = bench(&["shadows", "--smoke"], &[], None);
    assert!(
        run.ok,
        "thingd-bench shadows --smoke failed\n{}",
        run.describe()
    );
    let row = run
        .stdout
        .lines()
        .find(|l| l.starts_with("| 4 |"))
        .unwrap_or_else(|| panic!("no result row in:\n{}", run.stdout));
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
