//! Kill -9 durability: every write acknowledged by `write_blocking` must be in the file after
//! the process is killed mid-stream.
//!
//! The test re-runs this test binary as a child, filtered to `crash_child`, with the database
//! path in an environment variable. The child writes from several threads and prints one line
//! per acknowledged write; the parent kills it with SIGKILL after a few hundred
//! acknowledgements, reopens the file and checks each acknowledged write is there.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use thingd_model::CertificateStatus;
use thingd_store::{QueuedMessage, SessionRecord, Store, WriteOp};

const ENV: &str = "THINGD_STORE_CRASH_CHILD_DB";
const CHILD_THREADS: u64 = 4;
/// How many acknowledgements the parent waits for before killing the child.
const KILL_AFTER: usize = 400;

fn session(client_id: &str) -> SessionRecord {
    SessionRecord {
        client_id: client_id.to_owned(),
        protocol_level: 4,
        expiry_interval: u32::MAX,
        disconnected_at: None,
        state: Vec::new(),
    }
}

/// The child's work. A no-op in a normal test run (the variable is not set).
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(ENV) else {
        return;
    };
    let store = Store::open(path.as_ref()).expect("child: open");
    let threads: Vec<_> = (0..CHILD_THREADS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let client = format!("c{t}");
                store
                    .write_blocking(vec![WriteOp::PutSession(session(&client))])
                    .expect("child: put session");
                // Runs until killed; the bound only matters if the parent dies first.
                for seq in 0..1_000_000u64 {
                    let blob = seq.to_be_bytes().to_vec();
                    store
                        .write_blocking(vec![
                            WriteOp::PushMessage {
                                client_id: client.clone(),
                                seq,
                                blob: blob.clone(),
                            },
                            WriteOp::PutRetained {
                                topic: format!("{client}/{seq}"),
                                blob,
                            },
                        ])
                        .expect("child: write");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {client} {seq}").expect("child: stdout");
                    out.flush().expect("child: flush");
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    if std::env::var_os(ENV).is_some() {
        return; // we are the child
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let lines = BufReader::new(stdout).lines();

    let mut acked: HashSet<(String, u64)> = HashSet::new();
    let mut killed = false;
    for line in lines {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("ACK ") else {
            continue; // libtest's own output
        };
        let (client, seq) = rest.split_once(' ').unwrap();
        acked.insert((client.to_owned(), seq.parse().unwrap()));
        if !killed && acked.len() >= KILL_AFTER {
            // std's Child::kill sends SIGKILL on Unix.
            child.kill().unwrap();
            killed = true;
            // Keep reading: lines already written to the pipe are acknowledged writes too.
        }
    }
    let status = child.wait().unwrap();
    assert!(killed, "the child exited on its own: {status:?}");
    assert!(!status.success());

    let store = Store::open(&path).unwrap();
    let retained: HashSet<String> = store
        .retained()
        .unwrap()
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let mut messages: HashSet<(String, u64)> = HashSet::new();
    for t in 0..CHILD_THREADS {
        let client = format!("c{t}");
        for QueuedMessage { seq, blob, .. } in store.messages(&client).unwrap() {
            assert_eq!(blob, seq.to_be_bytes());
            messages.insert((client.clone(), seq));
        }
    }
    for (client, seq) in &acked {
        assert!(
            messages.contains(&(client.clone(), *seq)),
            "acknowledged message {client}/{seq} lost"
        );
        assert!(
            retained.contains(&format!("{client}/{seq}")),
            "acknowledged retained {client}/{seq} lost"
        );
    }
    // Each request is all-or-nothing: the two tables agree.
    assert_eq!(messages.len(), retained.len());
    eprintln!(
        "{} acknowledged, {} present after SIGKILL",
        acked.len(),
        messages.len()
    );
    // The file is still a healthy, writable database.
    store
        .write_blocking(vec![WriteOp::SetCertificateStatus {
            id: thingd_model::CertificateId::from_der(b"none"),
            status: CertificateStatus::Active,
        }])
        .unwrap_err();
    store
        .write_blocking(vec![WriteOp::DeleteSession {
            client_id: "c0".to_owned(),
        }])
        .unwrap();
}
