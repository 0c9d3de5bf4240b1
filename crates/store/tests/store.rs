//! The store against real SQLite files in temporary directories.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thingd_model::{CertificateId, CertificateStatus};
use thingd_store::{CertificateRecord, LiveConnection, SessionRecord, Store, StoreError, WriteOp};

fn db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("thingd.db");
    (dir, path)
}

fn cert(n: u32) -> CertificateRecord {
    let der = format!("certificate {n}");
    CertificateRecord {
        id: CertificateId::from_der(der.as_bytes()),
        pem: format!("-----BEGIN CERTIFICATE-----\n{n}\n-----END CERTIFICATE-----\n"),
        status: CertificateStatus::Active,
        ca_id: None,
        created_at: 1_000 + i64::from(n),
        updated_at: 1_000 + i64::from(n),
    }
}

fn session(client_id: &str) -> SessionRecord {
    SessionRecord {
        client_id: client_id.to_owned(),
        protocol_level: 5,
        expiry_interval: 3600,
        disconnected_at: None,
        state: vec![1, 2, 3],
    }
}

fn push(client_id: &str, seq: u64) -> WriteOp {
    WriteOp::PushMessage {
        client_id: client_id.to_owned(),
        seq,
        blob: format!("{client_id}/{seq}").into_bytes(),
    }
}

/// A session's queued messages as (seq, blob), in order.
fn queued(store: &Store, client_id: &str) -> Vec<(u64, Vec<u8>)> {
    store
        .messages(client_id)
        .unwrap()
        .into_iter()
        .map(|m| (m.seq, m.blob))
        .collect()
}

fn retained(topic: &str, blob: &[u8]) -> WriteOp {
    WriteOp::PutRetained {
        topic: topic.to_owned(),
        blob: blob.to_vec(),
    }
}

fn open(path: &Path) -> Store {
    Store::open(path).expect("open store")
}

#[test]
fn certificate_ops() {
    let (_dir, path) = db();
    let store = open(&path);
    let a = cert(1);
    let mut b = cert(2);
    b.ca_id = Some("ca-1".to_owned());
    b.status = CertificateStatus::PendingActivation;
    store
        .write_blocking(vec![
            WriteOp::InsertCertificate(b.clone()),
            WriteOp::InsertCertificate(a.clone()),
        ])
        .unwrap();
    assert_eq!(store.certificate(&a.id).unwrap(), Some(a.clone()));
    assert_eq!(store.certificate(&b.id).unwrap(), Some(b.clone()));
    assert_eq!(
        store.certificate(&cert(3).id).unwrap(),
        None,
        "unknown id reads as None"
    );
    // Oldest first, by created_at.
    assert_eq!(store.certificates().unwrap(), vec![a.clone(), b.clone()]);

    // Duplicate insert.
    let err = store
        .write_blocking(vec![WriteOp::InsertCertificate(a.clone())])
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");

    // Status change; updated_at moves to now.
    store
        .write_blocking(vec![WriteOp::SetCertificateStatus {
            id: a.id.clone(),
            status: CertificateStatus::Revoked,
        }])
        .unwrap();
    let got = store.certificate(&a.id).unwrap().unwrap();
    assert_eq!(got.status, CertificateStatus::Revoked);
    assert_eq!(got.created_at, a.created_at);
    assert!(
        got.updated_at > 1_000_000_000,
        "updated_at is the commit time"
    );

    // Status change of a missing certificate.
    let err = store
        .write_blocking(vec![WriteOp::SetCertificateStatus {
            id: cert(9).id,
            status: CertificateStatus::Inactive,
        }])
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

#[test]
fn session_and_message_ops() {
    let (_dir, path) = db();
    let store = open(&path);

    // PutSession before PushMessage in the same request: the row exists by then.
    store
        .write_blocking(vec![
            WriteOp::PutSession(session("c1")),
            push("c1", 2),
            push("c1", 1),
            push("c1", 3),
        ])
        .unwrap();
    // ... and across requests of one group commit.
    store.write_detached(vec![WriteOp::PutSession(session("c2"))]);
    store.write_blocking(vec![push("c2", 10)]).unwrap();

    assert_eq!(
        queued(&store, "c1"),
        vec![
            (1, b"c1/1".to_vec()),
            (2, b"c1/2".to_vec()),
            (3, b"c1/3".to_vec())
        ]
    );
    assert_eq!(queued(&store, "c2"), vec![(10, b"c2/10".to_vec())]);
    assert_eq!(queued(&store, "nobody"), vec![]);

    // Replacing the session keeps its messages.
    let mut updated = session("c1");
    updated.disconnected_at = Some(1_700_000_000);
    updated.expiry_interval = u32::MAX;
    updated.protocol_level = 4;
    updated.state = vec![9; 1000];
    store
        .write_blocking(vec![WriteOp::PutSession(updated.clone())])
        .unwrap();
    assert_eq!(queued(&store, "c1").len(), 3);
    assert_eq!(store.sessions().unwrap(), vec![updated, session("c2")]);

    // DeleteMessage, including a missing one (no error).
    store
        .write_blocking(vec![
            WriteOp::DeleteMessage {
                client_id: "c1".to_owned(),
                seq: 2,
            },
            WriteOp::DeleteMessage {
                client_id: "c1".to_owned(),
                seq: 99,
            },
        ])
        .unwrap();
    let seqs: Vec<u64> = queued(&store, "c1").into_iter().map(|(s, _)| s).collect();
    assert_eq!(seqs, vec![1, 3]);

    // A message for a session that does not exist.
    let err = store.write_blocking(vec![push("ghost", 1)]).unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    // A duplicate seq.
    let err = store.write_blocking(vec![push("c1", 1)]).unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    // A seq SQLite cannot hold.
    let err = store
        .write_blocking(vec![push("c1", u64::MAX)])
        .unwrap_err();
    assert!(matches!(err, StoreError::Sqlite(_)), "{err:?}");
    // Large but valid seq.
    store
        .write_blocking(vec![push("c1", i64::MAX as u64)])
        .unwrap();
    assert_eq!(
        queued(&store, "c1").last().map(|(s, _)| *s),
        Some(i64::MAX as u64)
    );
}

/// A QoS 2 message answered with PUBREC is marked released; the mark survives reopening the
/// file, marking a message already deleted is no error, and a mark that arrives before its
/// message (the receiver answered before the broker handed the message to the store) holds.
#[test]
fn a_released_message_stays_marked_across_a_reopen() {
    let (_dir, path) = db();
    let store = open(&path);
    let release = |seq| WriteOp::ReleaseMessage {
        client_id: "c1".to_owned(),
        seq,
    };
    store
        .write_blocking(vec![
            WriteOp::PutSession(session("c1")),
            push("c1", 1),
            push("c1", 2),
            release(2),
            release(5),
        ])
        .unwrap();
    drop(store);
    let store = open(&path);
    let marks = |store: &Store| -> Vec<(u64, bool)> {
        store
            .messages("c1")
            .unwrap()
            .into_iter()
            .map(|m| (m.seq, m.released))
            .collect()
    };
    assert_eq!(marks(&store), vec![(1, false), (2, true)]);
    // A release that reaches the store before its message is applied when the message comes;
    // a release after a delete does not bring the message back.
    store
        .write_blocking(vec![release(7), push("c1", 7)])
        .unwrap();
    let delete = WriteOp::DeleteMessage {
        client_id: "c1".to_owned(),
        seq: 8,
    };
    store
        .write_blocking(vec![delete, release(8), push("c1", 8)])
        .unwrap();
    assert_eq!(marks(&store), vec![(1, false), (2, true), (7, true)]);
}

/// A receiver can acknowledge a message (its `DeleteMessage`, submitted by one thread) before
/// the broker has handed the message's `PushMessage` to the store (another thread). The late
/// push must not store it: after a restart the acknowledged message would be delivered again.
#[test]
fn a_message_deleted_before_it_was_stored_stays_deleted() {
    let (_dir, path) = db();
    let store = open(&path);
    store
        .write_blocking(vec![WriteOp::PutSession(session("c1"))])
        .unwrap();
    let delete = |seq| WriteOp::DeleteMessage {
        client_id: "c1".to_owned(),
        seq,
    };
    store.write_detached(vec![delete(7)]);
    store
        .write_blocking(vec![push("c1", 7), push("c1", 8)])
        .unwrap();
    let seqs =
        |store: &Store| -> Vec<u64> { queued(store, "c1").into_iter().map(|(s, _)| s).collect() };
    assert_eq!(seqs(&store), vec![8]);
    // Only once: the same seq pushed again is stored (and is a duplicate of nothing).
    store.write_blocking(vec![push("c1", 7)]).unwrap();
    assert_eq!(seqs(&store), vec![7, 8]);
    // A session started afresh numbers its messages from the start again: a delete that
    // matched nothing in the old session does not swallow the new session's message.
    store.write_blocking(vec![delete(9)]).unwrap();
    store
        .write_blocking(vec![
            WriteOp::DeleteSession {
                client_id: "c1".to_owned(),
            },
            WriteOp::PutSession(session("c1")),
            push("c1", 9),
        ])
        .unwrap();
    assert_eq!(seqs(&store), vec![9]);
    // Still there after a restart.
    drop(store);
    let store = open(&path);
    assert_eq!(seqs(&store), vec![9]);
}

#[test]
fn delete_session_cascades_to_messages() {
    let (_dir, path) = db();
    let store = open(&path);
    store
        .write_blocking(vec![
            WriteOp::PutSession(session("a")),
            WriteOp::PutSession(session("b")),
            push("a", 1),
            push("a", 2),
            push("b", 1),
        ])
        .unwrap();
    store
        .write_blocking(vec![WriteOp::DeleteSession {
            client_id: "a".to_owned(),
        }])
        .unwrap();
    assert_eq!(queued(&store, "a"), vec![]);
    assert_eq!(queued(&store, "b").len(), 1);
    assert_eq!(store.sessions().unwrap(), vec![session("b")]);
    // Deleting a missing session is fine; a re-created session starts empty.
    store
        .write_blocking(vec![
            WriteOp::DeleteSession {
                client_id: "a".to_owned(),
            },
            WriteOp::PutSession(session("a")),
        ])
        .unwrap();
    assert_eq!(queued(&store, "a"), vec![]);

    // Delete then push in one request: the push fails, so the delete is undone too.
    let err = store
        .write_blocking(vec![
            WriteOp::DeleteSession {
                client_id: "b".to_owned(),
            },
            push("b", 5),
        ])
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(queued(&store, "b").len(), 1);
}

#[test]
fn retained_ops() {
    let (_dir, path) = db();
    let store = open(&path);
    store
        .write_blocking(vec![
            retained("b/1", b"one"),
            retained("a/1", b"first"),
            retained("a/1", b"second"),
        ])
        .unwrap();
    assert_eq!(
        store.retained().unwrap(),
        vec![
            ("a/1".to_owned(), b"second".to_vec()),
            ("b/1".to_owned(), b"one".to_vec())
        ]
    );
    store
        .write_blocking(vec![
            WriteOp::DeleteRetained {
                topic: "a/1".to_owned(),
            },
            WriteOp::DeleteRetained {
                topic: "never/set".to_owned(),
            },
        ])
        .unwrap();
    assert_eq!(
        store.retained().unwrap(),
        vec![("b/1".to_owned(), b"one".to_vec())]
    );
}

#[test]
fn live_connections_are_recorded_replaced_and_forgotten_across_a_reopen() {
    let (_dir, path) = db();
    let live = |session: &str, client: &str, version| {
        WriteOp::PutLiveConnection(LiveConnection {
            session_identifier: session.to_owned(),
            client_id: client.to_owned(),
            principal: "cert-1".to_owned(),
            version_number: version,
        })
    };
    {
        let store = open(&path);
        store
            .write_blocking(vec![
                live("s2", "dev-b", 0),
                live("s1", "dev-a", 3),
                live("s3", "dev-a", 4),
                live("s1", "dev-a", 3),
                WriteOp::DeleteLiveConnection {
                    session_identifier: "s3".to_owned(),
                },
                WriteOp::DeleteLiveConnection {
                    session_identifier: "never".to_owned(),
                },
            ])
            .unwrap();
        store.close();
    }
    let store = open(&path);
    let found: Vec<(String, String, i64)> = store
        .live_connections()
        .unwrap()
        .into_iter()
        .map(|l| (l.session_identifier, l.client_id, l.version_number))
        .collect();
    assert_eq!(
        found,
        [
            ("s1".to_owned(), "dev-a".to_owned(), 3),
            ("s2".to_owned(), "dev-b".to_owned(), 0)
        ]
    );
}

#[test]
fn many_threads_group_commit() {
    const THREADS: usize = 8;
    const WRITES: usize = 500;
    let (_dir, path) = db();
    let store = open(&path);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..WRITES {
                    store
                        .write_blocking(vec![retained(&format!("t{t}/{i}"), b"x")])
                        .expect("write");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let topics: HashSet<String> = store
        .retained()
        .unwrap()
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(topics.len(), THREADS * WRITES);
    for t in 0..THREADS {
        for i in 0..WRITES {
            assert!(topics.contains(&format!("t{t}/{i}")));
        }
    }
    let stats = store.stats();
    assert_eq!(stats.requests, (THREADS * WRITES) as u64);
    assert_eq!(stats.failed_requests, 0);
    assert!(stats.transactions <= stats.requests);
    eprintln!(
        "{} requests in {} transactions",
        stats.requests, stats.transactions
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_group_commit() {
    const TASKS: usize = 16;
    const WRITES: usize = 100;
    let (_dir, path) = db();
    let store = tokio::task::spawn_blocking(move || open(&path))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let client = format!("client-{t}");
                store
                    .write(vec![WriteOp::PutSession(session(&client))])
                    .await
                    .expect("put session");
                for i in 0..WRITES {
                    store
                        .write(vec![push(&client, i as u64)])
                        .await
                        .expect("push");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let reader = store.clone();
    let counts = tokio::task::spawn_blocking(move || {
        (0..TASKS)
            .map(|t| reader.messages(&format!("client-{t}")).unwrap().len())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(counts, vec![WRITES; TASKS]);
    // Grouping happened: fewer transactions than requests.
    let stats = store.stats();
    assert_eq!(stats.requests, (TASKS * (WRITES + 1)) as u64);
    assert!(stats.transactions < stats.requests, "{stats:?}");
}

/// Holds SQLite's write lock from a separate connection, so the store's writer blocks in
/// `BEGIN IMMEDIATE` while requests pile up behind it.
fn hold_write_lock(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

#[test]
fn failing_request_does_not_affect_its_batch() {
    let (_dir, path) = db();
    let store = open(&path);
    store
        .write_blocking(vec![WriteOp::InsertCertificate(cert(1))])
        .unwrap();

    let lock = hold_write_lock(&path);
    // A plug: the writer takes it and waits for the lock.
    let plug = {
        let store = store.clone();
        std::thread::spawn(move || store.write_blocking(vec![retained("plug", b"")]))
    };
    std::thread::sleep(Duration::from_millis(200));
    let before = store.stats();

    // These queue up behind the plug and are committed together afterwards.
    let good_a = {
        let store = store.clone();
        std::thread::spawn(move || store.write_blocking(vec![retained("a", b"1")]))
    };
    let bad = {
        let store = store.clone();
        std::thread::spawn(move || {
            store.write_blocking(vec![
                retained("bad", b"applied before the failure, must be rolled back"),
                WriteOp::InsertCertificate(cert(1)),
            ])
        })
    };
    let good_b = {
        let store = store.clone();
        std::thread::spawn(move || {
            store.write_blocking(vec![
                WriteOp::InsertCertificate(cert(2)),
                retained("b", b"2"),
            ])
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    lock.execute_batch("COMMIT").unwrap();

    plug.join().unwrap().unwrap();
    good_a.join().unwrap().unwrap();
    good_b.join().unwrap().unwrap();
    let err = bad.join().unwrap().unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");

    let after = store.stats();
    assert_eq!(after.requests - before.requests, 4);
    // The plug, then the three others in one transaction (or all four together, had the
    // writer not yet taken the plug when the others arrived).
    assert!(
        after.transactions - before.transactions <= 2,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.failed_requests - before.failed_requests, 1);

    let topics: Vec<String> = store
        .retained()
        .unwrap()
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(topics, vec!["a", "b", "plug"]);
    assert!(store.certificate(&cert(2).id).unwrap().is_some());
}

#[test]
fn data_survives_reopen() {
    let (_dir, path) = db();
    {
        let store = open(&path);
        store
            .write_blocking(vec![
                WriteOp::InsertCertificate(cert(1)),
                WriteOp::PutSession(session("s")),
                push("s", 7),
                retained("r", b"kept"),
            ])
            .unwrap();
        // Detached writes are committed before close returns.
        store.write_detached(vec![retained("detached", b"too")]);
        store.close();
        let err = store
            .write_blocking(vec![retained("late", b"")])
            .unwrap_err();
        assert!(matches!(err, StoreError::Closed), "{err:?}");
        store.close(); // idempotent
    }
    {
        // Dropping the last handle also commits what was queued.
        let store = open(&path);
        store.write_detached(vec![retained("on-drop", b"yes")]);
    }
    let store = open(&path);
    assert_eq!(store.certificates().unwrap(), vec![cert(1)]);
    assert_eq!(store.sessions().unwrap(), vec![session("s")]);
    assert_eq!(queued(&store, "s"), vec![(7, b"s/7".to_vec())]);
    let topics: Vec<String> = store
        .retained()
        .unwrap()
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(topics, vec!["detached", "on-drop", "r"]);
}

#[test]
fn second_open_in_same_process_is_seen_through_data_version() {
    let (_dir, path) = db();
    let server = open(&path);
    let c = cert(1);
    server
        .write_blocking(vec![WriteOp::InsertCertificate(c.clone())])
        .unwrap();

    let v0 = server.data_version().unwrap();
    assert_eq!(
        server.data_version().unwrap(),
        v0,
        "stable while nothing changes"
    );

    // The "CLI": another Store on the same file.
    let cli = open(&path);
    cli.write_blocking(vec![WriteOp::SetCertificateStatus {
        id: c.id.clone(),
        status: CertificateStatus::Inactive,
    }])
    .unwrap();
    cli.close();

    let v1 = server.data_version().unwrap();
    assert_ne!(v1, v0, "another connection's commit changes data_version");
    assert_eq!(
        server.certificate(&c.id).unwrap().unwrap().status,
        CertificateStatus::Inactive
    );

    // The store's own writer counts as "another connection" for the read connection.
    server.write_blocking(vec![retained("t", b"")]).unwrap();
    assert_ne!(server.data_version().unwrap(), v1);
}

#[test]
fn concurrent_writers_from_two_stores() {
    let (_dir, path) = db();
    let a = Arc::new(open(&path));
    let b = Arc::new(open(&path));
    let handles: Vec<_> = [Arc::clone(&a), Arc::clone(&b)]
        .into_iter()
        .enumerate()
        .map(|(n, store)| {
            std::thread::spawn(move || {
                for i in 0..200 {
                    store
                        .write_blocking(vec![retained(&format!("{n}/{i}"), b"")])
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(a.retained().unwrap().len(), 400);
}

#[test]
fn open_fails_cleanly_on_a_missing_directory() {
    let (dir, _) = db();
    let err = Store::open(&dir.path().join("no/such/dir/db")).unwrap_err();
    assert!(matches!(err, StoreError::Sqlite(_)), "{err:?}");
}

#[test]
fn certificate_statuses_are_incremental() {
    let (_dir, path) = db();
    let store = open(&path);
    let empty = store.certificate_statuses(0).unwrap();
    assert_eq!(empty.changed, vec![]);
    assert_eq!(empty.total, 0);

    store
        .write_blocking(vec![
            WriteOp::InsertCertificate(cert(1)),
            WriteOp::InsertCertificate(cert(2)),
        ])
        .unwrap();
    let all = store.certificate_statuses(0).unwrap();
    assert_eq!(all.total, 2);
    let ids: Vec<_> = all.changed.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, vec![cert(1).id, cert(2).id]);
    let last = all.changed.last().unwrap().revision;

    // Other writes do not show up as certificate changes.
    store.write_blocking(vec![retained("x", b"")]).unwrap();
    assert_eq!(store.certificate_statuses(last).unwrap().changed, vec![]);

    store
        .write_blocking(vec![WriteOp::SetCertificateStatus {
            id: cert(1).id,
            status: CertificateStatus::Inactive,
        }])
        .unwrap();
    let changes = store.certificate_statuses(last).unwrap();
    assert_eq!(changes.total, 2);
    assert_eq!(changes.changed.len(), 1);
    assert_eq!(changes.changed[0].id, cert(1).id);
    assert_eq!(changes.changed[0].status, CertificateStatus::Inactive);
    assert!(changes.changed[0].revision > last);
}
