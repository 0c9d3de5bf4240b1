//! `docs/quickstart.md` runs: every command of its ```sh blocks, in order, against a thingd
//! the test starts, so the page cannot rot.
//!
//! Substitutions (and only these): `cargo build` lines are skipped (the harness built the
//! binaries), `export PATH=...` puts this build's `target/<profile>` and the test venv first,
//! `export THINGD_DATA_DIR=` and `export THINGD_MQTT_PORT=` get the test's data directory and
//! the server's port, `thingd serve &` is started by the test (on free ports) and the final
//! `kill %1` is the test stopping it.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use thingd_tests::{ProcessServer, repo_root, run_with_timeout, thingd_binary};

/// The commands of the ```sh blocks, continuation lines joined, comments and blanks dropped.
fn sh_commands(markdown: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        let trimmed = line.trim();
        if !in_sh {
            in_sh = trimmed == "```sh";
            continue;
        }
        if trimmed == "```" {
            in_sh = false;
            continue;
        }
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head.trim_end());
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        commands.push(std::mem::take(&mut pending));
    }
    commands
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_runs_as_written() {
    let root = repo_root();
    let markdown = std::fs::read_to_string(root.join("docs/quickstart.md")).expect("the doc");
    let commands = sh_commands(&markdown);
    assert!(commands.len() >= 8, "{commands:#?}");

    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("thingd-data");
    let work = temp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let bin_dir = thingd_binary()
        .unwrap()
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap();
    let venv_bin = root.join(".venv/bin");

    let mut script = String::from("set -euo pipefail\n");
    let mut serve_seen = false;
    let mut defined = Vec::new();
    let mut server = None;
    for command in &commands {
        if command.starts_with("cargo build") || command.starts_with("kill %1") {
            continue;
        }
        if command.starts_with("export PATH=") {
            script.push_str(&format!(
                "export PATH=\"{}:{}:$PATH\"\n",
                bin_dir.display(),
                venv_bin.display()
            ));
            continue;
        }
        if let Some(rest) = command.strip_prefix("export THINGD_DATA_DIR=") {
            let _ = rest;
            defined.push("THINGD_DATA_DIR");
            script.push_str(&format!(
                "export THINGD_DATA_DIR=\"{}\"\n",
                data_dir.display()
            ));
            continue;
        }
        if command.starts_with("export THINGD_MQTT_PORT=") {
            defined.push("THINGD_MQTT_PORT");
            // Filled in once the server runs (below).
            script.push_str("export THINGD_MQTT_PORT=@MQTT_PORT@\n");
            continue;
        }
        if command.starts_with("thingd serve") {
            assert!(
                command.ends_with('&'),
                "the doc runs serve in the background: {command}"
            );
            serve_seen = true;
            let started = ProcessServer::start(&data_dir, &["--api", "127.0.0.1:0"])
                .expect("thingd serve starts");
            server = Some(started);
            continue;
        }
        script.push_str(command);
        script.push('\n');
    }
    assert!(serve_seen, "the doc starts `thingd serve &`");
    assert_eq!(
        defined,
        ["THINGD_DATA_DIR", "THINGD_MQTT_PORT"],
        "the doc defines its variables at the top"
    );
    let server = server.expect("started");
    let script = script.replace("@MQTT_PORT@", &server.mqtts.port().to_string());

    let mut bash = Command::new("bash");
    bash.arg("-c")
        .arg(&script)
        .current_dir(&work)
        .env("RUST_LOG", "warn")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_REGION")
        .env_remove("AWS_ENDPOINT_URL");
    let finished = tokio::task::block_in_place(|| {
        run_with_timeout(
            &mut bash,
            "the quickstart's commands",
            Duration::from_secs(100),
        )
    })
    .and_then(|f| f.ok())
    .unwrap_or_else(|e| panic!("{e:#}\n--- script:\n{script}"));
    assert!(finished.stdout.contains("reported temp="), "{finished}");
    assert!(finished.stdout.contains("led switched on"), "{finished}");

    let shadow: Value =
        serde_json::from_slice(&std::fs::read(work.join("shadow.json")).expect("shadow.json"))
            .expect("JSON");
    let reported = &shadow["state"]["reported"];
    let temp = reported["temp"].as_u64().expect("a temperature");
    assert!((10..=40).contains(&temp), "{shadow}");
    assert_eq!(reported["led"], "on", "{shadow}");
    assert!(shadow["state"].get("delta").is_none(), "{shadow}");
    drop(server);
}

#[test]
fn continuation_lines_are_joined_and_comments_dropped() {
    let md = "text\n```sh\n# comment\na \\\n  b\n\nc\n```\n```toml\nx\n```\n";
    assert_eq!(sh_commands(md), ["a b", "c"]);
}
