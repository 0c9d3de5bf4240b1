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
    assert_eq!(
        run.stdout.matches("| steal % |").count(),
        2,
        "{}",
        run.stdout
    );
    // The pairs run as fast as possible, and the fixed rate derived from Mosquitto's result
    // there (besides the fixed 200 msg/s run), on both transports for both brokers.
    for transport in ["TCP", "mTLS"] {
        for broker in ["thingd", "mosquitto"] {
            let rows = |prefix: &str| {
                run.stdout
                    .lines()
                    .filter(|l| l.starts_with(prefix))
                    .filter(|l| l.contains(&format!("| {transport} | {broker} |")))
                    .count()
            };
            assert_eq!(rows("| 20:20 QoS 1 16 B |"), 1, "{}", run.stdout);
            assert_eq!(rows("| 20:20 at "), 2, "{}", run.stdout);
            // Durable shadow updates are thingd's own service: a row for thingd, none for
            // the peer, and the report says why.
            let shadow_rows = rows("| durable shadow updates, 4 things, 2 per connection |");
            assert_eq!(
                shadow_rows,
                usize::from(broker == "thingd"),
                "{}",
                run.stdout
            );
        }
    }
    assert!(
        run.stderr.contains(
            "durable shadow updates, 4 things, 2 per connection on thingd only: the Device \
             Shadow service has no counterpart in mosquitto"
        ),
        "{}",
        run.describe()
    );
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

/// Under an open-file limit too low for a scenario's connections, thingd runs it (the load
/// generator hands the idle connections past its own limit to a child process, thingd holds
/// what it cannot give a descriptor in io_uring tables), the other brokers do not, and the
/// tool says so; the rest still run on both.
#[test]
fn a_scenario_beyond_the_open_file_limit_runs_on_thingd_only_and_says_so() {
    // 1,050 descriptors leave the tool 50 connections: the smoke fixed-rate run that holds
    // 40 idle connections besides its 10 pairs (60 in all) needs a holder process.
    let run = bench(
        &[
            "compare",
            "--smoke",
            "--brokers",
            "thingd,mosquitto",
            "--transports",
            "tcp",
        ],
        &[],
        Some(1050),
    );
    assert!(run.ok, "{}", run.describe());
    let held = "10:10 at 100 msg/s QoS 1 16 B + 40 idle";
    assert!(
        run.stderr.contains(&format!(
            "{held} (60 connections) on thingd only: mosquitto would need more descriptors"
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.contains(&format!("| {held} | TCP | thingd |")),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout
            .contains(&format!("| {held} | TCP | mosquitto |")),
        "{}",
        run.stdout
    );
    for broker in ["thingd", "mosquitto"] {
        assert!(
            run.stdout
                .contains(&format!("| 50 idle connections | TCP | {broker} |")),
            "{}",
            run.stdout
        );
    }
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

/// A rumqttd the tool cannot find is installed with cargo into the tools directory when the
/// run asks for it (here a smoke run naming it), then used from there; when the install
/// fails, rumqttd is reported missing with the reason. `cargo` is a stand-in that records how
/// it was called, so the test compiles nothing.
#[test]
fn a_missing_rumqttd_is_installed_into_the_tools_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tools = dir.path().join("tools");
    let calls = dir.path().join("cargo-calls");
    let fake_cargo = dir.path().join("cargo");
    let report = dir.path().join("report.md");
    std::fs::write(
        &fake_cargo,
        format!(
            r#"#!/bin/sh
echo "$@" >> {calls}
[ -n "$FAIL_INSTALL" ] && exit 1
root=$(echo "$@" | sed 's/.*--root //')
mkdir -p "$root/bin"
printf '#!/bin/sh\necho "rumqttd 0.20.0"\n' > "$root/bin/rumqttd"
chmod +x "$root/bin/rumqttd"
"#,
            calls = calls.display()
        ),
    )
    .expect("write the stand-in cargo");
    let mut perms = std::fs::metadata(&fake_cargo)
        .expect("metadata")
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&fake_cargo, perms).expect("chmod");

    let args = [
        "compare",
        "--smoke",
        "--brokers",
        "thingd,rumqttd",
        "--transports",
        "tcp",
        "--only",
        "1→1 QoS 0",
        "--tools-dir",
        tools.to_str().expect("utf-8 path"),
        "--out",
        report.to_str().expect("utf-8 path"),
    ];
    let cargo = fake_cargo.to_str().expect("utf-8 path");
    // The PATH without any real rumqttd.
    let path = "/usr/bin:/bin";

    let failed = bench(
        &args,
        &[("CARGO", cargo), ("PATH", path), ("FAIL_INSTALL", "1")],
        None,
    );
    assert!(!failed.ok, "{}", failed.describe());
    assert!(
        failed
            .stderr
            .contains("installing it: cargo install rumqttd failed"),
        "{}",
        failed.stderr
    );

    let installed = bench(&args, &[("CARGO", cargo), ("PATH", path)], None);
    let recorded = std::fs::read_to_string(&calls).expect("cargo was called");
    let expected = format!(
        "install rumqttd --version 0.20.0 --features verify-client-cert --root {}",
        tools.display()
    );
    assert_eq!(
        recorded.lines().collect::<Vec<_>>(),
        vec![expected.as_str(), expected.as_str()]
    );
    // Found where it was installed (the report's versions table names the binary); the
    // stand-in is no broker, so its run itself fails.
    let at = format!(
        "| rumqttd | rumqttd 0.20.0 | `{}` |",
        tools.join("bin/rumqttd").display()
    );
    let written = std::fs::read_to_string(&report).expect("report written");
    assert!(
        written.contains(&at),
        "{}\n{}",
        written,
        installed.describe()
    );

    // Once there, it is not installed again.
    std::fs::remove_file(&report).expect("remove the report");
    let again = bench(&args, &[("CARGO", cargo), ("PATH", path)], None);
    let written = std::fs::read_to_string(&report).expect("report written");
    assert!(written.contains(&at), "{}\n{}", written, again.describe());
    assert_eq!(
        std::fs::read_to_string(&calls)
            .expect("calls")
            .lines()
            .count(),
        2
    );
}

#[test]
fn the_kernel_floor_prints_every_step_of_a_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_thingd-bench"))
        .args(["floor", "--smoke"])
        .output()
        .expect("run thingd-bench floor");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "thingd-bench floor --smoke failed\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("loopback TCP: 200 messages"), "{stdout}");
    for row in [
        "loopback mTLS (TLS 1.3, AES-128-GCM): 200 messages",
        "| publisher writes its PUBLISH |",
        "| broker reads the PUBLISH, writes the PUBACK |",
        "| **broker, fan-in**",
        "| **broker, one message per connection**",
    ] {
        assert!(stdout.contains(row), "{row} missing:\n{stdout}");
    }
}
