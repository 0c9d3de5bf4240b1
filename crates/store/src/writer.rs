//! The writer thread and group commit.
//!
//! One thread owns the write connection. It blocks for the first request, then takes every
//! request already queued behind it (up to [`MAX_BATCH`]) and applies them all in a single
//! `BEGIN IMMEDIATE … COMMIT`, so many callers share one fsync. Each request runs inside its
//! own SAVEPOINT: if one of its ops fails, only that request is rolled back and told so; the
//! others in the batch still commit. Replies are sent only after the COMMIT has returned.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, ffi};
use tokio::sync::oneshot;

use crate::{StoreError, WriteOp};

/// Most requests applied in one transaction.
const MAX_BATCH: usize = 1024;

/// Where a request's outcome goes.
pub(crate) type Reply = oneshot::Sender<Result<(), StoreError>>;

/// A message to the writer thread.
pub(crate) enum Command {
    /// Apply these ops as one unit and report the outcome (if anyone is listening).
    Write { ops: Work, reply: Option<Reply> },
    /// Commit what was submitted before this and stop.
    Close,
}

/// Counters the writer keeps, readable from any handle.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) transactions: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) failed_requests: AtomicU64,
}

/// What a request asks the writer to do inside its savepoint.
pub(crate) enum Work {
    /// A list of typed writes.
    Ops(Vec<WriteOp>),
    /// Arbitrary SQL run by the caller's closure (see `Store::transact`). It runs at most
    /// once; a second attempt (there is none today) would see `None` and fail.
    Func(std::sync::Mutex<Option<TransactFn>>),
}

/// A closure run on the writer connection inside a request's savepoint.
pub(crate) type TransactFn = Box<dyn FnOnce(&Connection) -> Result<(), StoreError> + Send>;

struct Request {
    ops: Work,
    reply: Option<Reply>,
}

/// Queued messages deleted or released before they were stored, by session and `seq`, with
/// when (Unix seconds). A broker hands a message's `PushMessage` to the store once it has
/// offered the message to every receiver, while a receiver quick to answer it submits the
/// `DeleteMessage` (PUBACK, PUBCOMP) or `ReleaseMessage` (PUBREC) from another thread, so
/// that can arrive first. The push that follows is then skipped after a delete (storing it
/// would bring an acknowledged message back after a restart) and stored released after a
/// release. A push comes within moments, so entries older than [`TOMBSTONE_SECS`] are
/// dropped; deleting a session drops its entries (a new session numbers its messages afresh).
#[derive(Default)]
struct Tombstones(HashMap<(String, u64), (i64, Early)>);

/// What happened to a message before its push arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Early {
    Deleted,
    Released,
}

const TOMBSTONE_SECS: i64 = 60;

impl Tombstones {
    fn prune(&mut self, now: i64) {
        if !self.0.is_empty() {
            self.0.retain(|_, (at, _)| now - *at < TOMBSTONE_SECS);
        }
    }

    /// A delete of `seq` matched no row (yet).
    fn bury(&mut self, client_id: &str, seq: u64, now: i64) {
        self.0
            .insert((client_id.to_owned(), seq), (now, Early::Deleted));
    }

    /// A release of `seq` matched no row (yet); a delete already noted stands.
    fn release(&mut self, client_id: &str, seq: u64, now: i64) {
        self.0
            .entry((client_id.to_owned(), seq))
            .or_insert((now, Early::Released));
    }

    /// What happened to `seq` before its push, if anything; the entry is used up.
    fn take(&mut self, client_id: &str, seq: u64) -> Option<Early> {
        if self.0.is_empty() {
            return None;
        }
        self.0
            .remove(&(client_id.to_owned(), seq))
            .map(|(_, early)| early)
    }

    fn forget_session(&mut self, client_id: &str) {
        if !self.0.is_empty() {
            self.0.retain(|(client, _), _| client != client_id);
        }
    }
}

/// The writer thread's body. Returns when it receives `Close` or every sender is gone.
pub(crate) fn run(mut conn: Connection, rx: Receiver<Command>, counters: Arc<Counters>) {
    let mut batch: Vec<Request> = Vec::new();
    let mut tombstones = Tombstones::default();
    loop {
        let mut closing = false;
        match rx.recv() {
            Ok(Command::Write { ops, reply }) => batch.push(Request { ops, reply }),
            Ok(Command::Close) | Err(_) => break,
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Command::Write { ops, reply }) => batch.push(Request { ops, reply }),
                Ok(Command::Close) => {
                    closing = true;
                    break;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        commit_batch(&mut conn, &mut batch, &counters, &mut tombstones);
        if closing {
            break;
        }
    }
    tracing::debug!("store writer stopped");
    // Requests still queued behind `Close` are dropped with the receiver; their callers
    // see `StoreError::Closed`.
}

/// Applies and commits one batch, then answers every request in it.
fn commit_batch(
    conn: &mut Connection,
    batch: &mut Vec<Request>,
    counters: &Counters,
    tombstones: &mut Tombstones,
) {
    let outcome = apply_batch(conn, batch, tombstones);
    counters.transactions.fetch_add(1, Ordering::Relaxed);
    counters
        .requests
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    match outcome {
        Ok(results) => {
            for (request, result) in batch.drain(..).zip(results) {
                if result.is_err() {
                    counters.failed_requests.fetch_add(1, Ordering::Relaxed);
                }
                answer(request.reply, result);
            }
        }
        Err(err) => {
            // The transaction as a whole failed (BEGIN, a SAVEPOINT, or COMMIT): nothing in
            // the batch is durable, so everyone gets the error.
            tracing::error!(error = %err, requests = batch.len(), "store transaction failed");
            if !conn.is_autocommit()
                && let Err(rollback) = conn.execute_batch("ROLLBACK")
            {
                tracing::error!(error = %rollback, "store rollback failed");
            }
            counters
                .failed_requests
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for request in batch.drain(..) {
                answer(request.reply, Err(duplicate(&err)));
            }
        }
    }
}

fn answer(reply: Option<Reply>, result: Result<(), StoreError>) {
    match reply {
        // The caller may have given up waiting; the write happened (or not) regardless.
        Some(reply) => {
            let _ = reply.send(result);
        }
        None => {
            if let Err(err) = result {
                tracing::warn!(error = %err, "detached store write failed");
            }
        }
    }
}

/// Runs the whole batch in one transaction. The outer `Err` means the transaction failed;
/// the inner results are per request and only meaningful if the commit succeeded.
fn apply_batch(
    conn: &Connection,
    batch: &[Request],
    tombstones: &mut Tombstones,
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let now = unix_now();
    tombstones.prune(now);
    exec(conn, "BEGIN IMMEDIATE")?;
    let mut results = Vec::with_capacity(batch.len());
    for request in batch {
        exec(conn, "SAVEPOINT request")?;
        let outcome = match &request.ops {
            Work::Ops(ops) => apply_ops(conn, ops, now, tombstones),
            Work::Func(f) => match f.lock().ok().and_then(|mut f| f.take()) {
                Some(f) => f(conn),
                None => Err(StoreError::Corrupt(
                    "transaction closure already ran".to_owned(),
                )),
            },
        };
        match outcome {
            Ok(()) => {
                exec(conn, "RELEASE request")?;
                results.push(Ok(()));
            }
            Err(err) => {
                // If SQLite already rolled back the whole transaction (it does for some I/O
                // errors), the savepoint is gone and this fails: the batch fails as a whole.
                exec(conn, "ROLLBACK TO request")?;
                exec(conn, "RELEASE request")?;
                results.push(Err(err));
            }
        }
    }
    exec(conn, "COMMIT")?;
    Ok(results)
}

fn exec(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

fn apply_ops(
    conn: &Connection,
    ops: &[WriteOp],
    now: i64,
    tombstones: &mut Tombstones,
) -> Result<(), StoreError> {
    ops.iter()
        .try_for_each(|op| apply(conn, op, now, tombstones))
}

fn apply(
    conn: &Connection,
    op: &WriteOp,
    now: i64,
    tombstones: &mut Tombstones,
) -> Result<(), StoreError> {
    match op {
        WriteOp::InsertCertificate(cert) => {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO certificates
                         (id, pem, status, ca_id, created_at, updated_at, revision)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6,
                             (SELECT COALESCE(MAX(revision), 0) + 1 FROM certificates))",
                )?
                .execute(rusqlite::params![
                    cert.id.as_str(),
                    cert.pem,
                    cert.status.as_str(),
                    cert.ca_id,
                    cert.created_at,
                    cert.updated_at,
                ]);
            match inserted {
                Err(err) if is_key_conflict(&err) => Err(StoreError::AlreadyExists(format!(
                    "certificate {}",
                    cert.id
                ))),
                other => other.map(drop).map_err(StoreError::from),
            }
        }
        WriteOp::SetCertificateStatus { id, status } => {
            let changed = conn
                .prepare_cached(
                    "UPDATE certificates
                     SET status = ?2, updated_at = ?3,
                         revision = (SELECT COALESCE(MAX(revision), 0) + 1 FROM certificates)
                     WHERE id = ?1",
                )?
                .execute(rusqlite::params![id.as_str(), status.as_str(), now])?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("certificate {id}")));
            }
            Ok(())
        }
        WriteOp::PutSession(session) => {
            // An upsert, not INSERT OR REPLACE: replacing would delete the row first and the
            // cascade would take the session's queued messages with it.
            conn.prepare_cached(
                "INSERT INTO sessions
                     (client_id, protocol_level, expiry_interval, disconnected_at, state)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (client_id) DO UPDATE SET
                     protocol_level = excluded.protocol_level,
                     expiry_interval = excluded.expiry_interval,
                     disconnected_at = excluded.disconnected_at,
                     state = excluded.state",
            )?
            .execute(rusqlite::params![
                session.client_id,
                session.protocol_level,
                session.expiry_interval,
                session.disconnected_at,
                session.state,
            ])?;
            Ok(())
        }
        WriteOp::PutLiveConnection(live) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO live_connections
                     (session_identifier, client_id, principal, version_number)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(rusqlite::params![
                live.session_identifier,
                live.client_id,
                live.principal,
                live.version_number,
            ])?;
            Ok(())
        }
        WriteOp::DeleteLiveConnection { session_identifier } => {
            conn.prepare_cached("DELETE FROM live_connections WHERE session_identifier = ?1")?
                .execute([session_identifier])?;
            Ok(())
        }
        WriteOp::DeleteSession { client_id } => {
            tombstones.forget_session(client_id);
            // The foreign key's ON DELETE CASCADE removes the queued messages.
            conn.prepare_cached("DELETE FROM sessions WHERE client_id = ?1")?
                .execute([client_id])?;
            Ok(())
        }
        WriteOp::PushMessage {
            client_id,
            seq,
            blob,
        } => {
            let released = match tombstones.take(client_id, *seq) {
                Some(Early::Deleted) => return Ok(()),
                Some(Early::Released) => true,
                None => false,
            };
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO session_messages (client_id, seq, blob, released)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(rusqlite::params![
                    client_id,
                    seq_to_sql(*seq)?,
                    blob,
                    released
                ]);
            match inserted {
                Err(err) if is_foreign_key_violation(&err) => {
                    Err(StoreError::NotFound(format!("session {client_id:?}")))
                }
                Err(err) if is_key_conflict(&err) => Err(StoreError::AlreadyExists(format!(
                    "message {seq} of session {client_id:?}"
                ))),
                other => other.map(drop).map_err(StoreError::from),
            }
        }
        WriteOp::DeleteMessage { client_id, seq } => {
            let deleted = conn
                .prepare_cached("DELETE FROM session_messages WHERE client_id = ?1 AND seq = ?2")?
                .execute(rusqlite::params![client_id, seq_to_sql(*seq)?])?;
            if deleted == 0 {
                tombstones.bury(client_id, *seq, now);
            }
            Ok(())
        }
        WriteOp::ReleaseMessage { client_id, seq } => {
            let updated = conn
                .prepare_cached(
                    "UPDATE session_messages SET released = 1 WHERE client_id = ?1 AND seq = ?2",
                )?
                .execute(rusqlite::params![client_id, seq_to_sql(*seq)?])?;
            if updated == 0 {
                tombstones.release(client_id, *seq, now);
            }
            Ok(())
        }
        WriteOp::PutRetained { topic, blob } => {
            conn.prepare_cached(
                "INSERT INTO retained (topic, blob) VALUES (?1, ?2)
                 ON CONFLICT (topic) DO UPDATE SET blob = excluded.blob",
            )?
            .execute(rusqlite::params![topic, blob])?;
            Ok(())
        }
        WriteOp::DeleteRetained { topic } => {
            conn.prepare_cached("DELETE FROM retained WHERE topic = ?1")?
                .execute([topic])?;
            Ok(())
        }
    }
}

/// SQLite integers are signed 64-bit; a `seq` past `i64::MAX` cannot be stored.
fn seq_to_sql(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq)
        .map_err(|err| StoreError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(err))))
}

fn extended_code(err: &rusqlite::Error) -> Option<i32> {
    err.sqlite_error().map(|e| e.extended_code)
}

fn is_key_conflict(err: &rusqlite::Error) -> bool {
    matches!(
        extended_code(err),
        Some(ffi::SQLITE_CONSTRAINT_PRIMARYKEY | ffi::SQLITE_CONSTRAINT_UNIQUE)
    )
}

fn is_foreign_key_violation(err: &rusqlite::Error) -> bool {
    extended_code(err) == Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

/// A copy of `err` for each caller in a failed batch (`StoreError` is not `Clone` because
/// `rusqlite::Error` is not).
fn duplicate(err: &StoreError) -> StoreError {
    match err {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(code, message)) => {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(*code, message.clone()))
        }
        StoreError::Sqlite(other) => StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            ffi::Error {
                code: ErrorCode::Unknown,
                extended_code: ffi::SQLITE_ERROR,
            },
            Some(other.to_string()),
        )),
        StoreError::Closed => StoreError::Closed,
        StoreError::NotFound(s) => StoreError::NotFound(s.clone()),
        StoreError::AlreadyExists(s) => StoreError::AlreadyExists(s.clone()),
        StoreError::Corrupt(s) => StoreError::Corrupt(s.clone()),
        StoreError::Rejected {
            code,
            message,
            resource_id,
        } => StoreError::Rejected {
            code,
            message: message.clone(),
            resource_id: resource_id.clone(),
        },
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
