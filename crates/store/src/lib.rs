//! The embedded store: one SQLite file in the data directory holding what must survive a
//! restart or a kill -9 — registered certificates, persistent MQTT sessions, the QoS 1/2
//! messages queued for them, and retained messages.
//!
//! Owns: the schema and its migrations, the single writer thread with group commit (every
//! write is a [`WriteOp`]; a batch of ops from many callers becomes one transaction and one
//! fsync; the caller's future resolves only after that commit), and the read queries.
//! Does not own: what the blobs mean. Sessions, messages and retained messages are opaque
//! bytes the broker encodes; the store only keys and orders them.
//!
//! Each call's ops run inside their own SAVEPOINT within the shared transaction: if one op
//! fails, that call's ops are rolled back and it gets the error, while the other calls in the
//! same group commit are unaffected.
//!
//! Reads go through a separate connection that never writes; they are blocking calls (use
//! `spawn_blocking` from async code, or call them at startup). Other processes (the
//! `thingd cert` CLI) may open the same file and write while the server runs: SQLite's file
//! locks and a busy timeout serialize the writers, and [`Store::data_version`] tells the server
//! that something changed.
//!
//! # Layout
//! - `sqlite`: opening, pragmas (WAL, `synchronous=FULL`, `foreign_keys`), migrations, reads.
//! - `writer`: the writer thread and group commit.
//! - `records`: the row types.

mod records;
pub mod registry;
pub mod shadows;
mod sqlite;
mod writer;

pub use records::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::writer::{Command, Counters};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The writer thread has stopped (the store was closed or the thread died).
    #[error("the store's writer has stopped")]
    Closed,
    /// A row that must exist does not.
    #[error("not found: {0}")]
    NotFound(String),
    /// A row with this key already exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A stored value could not be read back.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A registry operation refused the request (a guard, a limit, a state rule); nothing it
    /// wrote is kept. `code` is the AWS error shape (`DeleteConflictException`, ...), and
    /// `resource_id` the resource concerned where that shape carries one.
    #[error("{code}: {message}")]
    Rejected {
        /// The AWS error shape name.
        code: &'static str,
        /// The message for the caller.
        message: String,
        /// The id of the resource concerned (`resourceId`), if any.
        resource_id: Option<String>,
    },
}

/// One write. Writes submitted together are applied in order, in one transaction.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Insert a certificate; fails the batch with `AlreadyExists` if the id is taken.
    InsertCertificate(CertificateRecord),
    /// Change a certificate's status; `NotFound` if there is no such certificate.
    SetCertificateStatus {
        /// Which certificate.
        id: thingd_model::CertificateId,
        /// Its new status.
        status: thingd_model::CertificateStatus,
    },
    /// Create or replace a persistent session's row (its messages are kept).
    PutSession(SessionRecord),
    /// Delete a session and every message queued for it.
    DeleteSession {
        /// The session's client id.
        client_id: String,
    },
    /// Queue a message for a session, at position `seq` (unique per session, increasing).
    /// `NotFound` if the session row does not exist (an earlier `PutSession` in the same or an
    /// earlier call creates it); `AlreadyExists` if `seq` is taken; `seq` must be at most
    /// `i64::MAX`.
    PushMessage {
        /// The session's client id.
        client_id: String,
        /// Position in the session's queue.
        seq: u64,
        /// The broker's encoding of the message.
        blob: Vec<u8>,
    },
    /// Remove one queued message (delivered and acknowledged, expired, or dropped).
    DeleteMessage {
        /// The session's client id.
        client_id: String,
        /// Position in the session's queue.
        seq: u64,
    },
    /// Mark a queued QoS 2 message as answered by PUBREC, so that only its PUBREL is resent
    /// after a restart (no error if the message is gone).
    ReleaseMessage {
        /// The session's client id.
        client_id: String,
        /// Position in the session's queue.
        seq: u64,
    },
    /// Create or replace the retained message of a topic.
    PutRetained {
        /// The topic.
        topic: String,
        /// The broker's encoding of the message.
        blob: Vec<u8>,
    },
    /// Delete the retained message of a topic (no error if there is none).
    DeleteRetained {
        /// The topic.
        topic: String,
    },
    /// Record a live connection whose disconnect must be reported even if the process dies
    /// (replaces one with the same session identifier).
    PutLiveConnection(LiveConnection),
    /// Forget a live connection (no error if it is not recorded).
    DeleteLiveConnection {
        /// Its session identifier.
        session_identifier: String,
    },
}

/// Counters describing the writer's work since the store was opened (by this handle's
/// process; other processes writing the same file are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed or attempted (one per group commit).
    pub transactions: u64,
    /// Write requests processed (calls to `write`, `write_blocking`, `write_detached`).
    pub requests: u64,
    /// Requests that failed (their ops were not applied).
    pub failed_requests: u64,
}

/// A handle to the store; cheap to clone, usable from any thread or task.
///
/// The writer thread stops when [`Store::close`] is called or when the last handle is
/// dropped; either way everything submitted before is committed first.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    commands: mpsc::Sender<Command>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The read connection. It never writes, which is what makes `data_version` see the
    /// writer thread's commits as well as other processes'.
    reader: Mutex<Connection>,
    counters: Arc<Counters>,
}

impl Shared {
    /// Asks the writer to finish and waits for it.
    fn stop_writer(&self) {
        let Some(handle) = self.writer.lock().take() else {
            return;
        };
        // If the thread is already gone the send fails; joining still reaps it.
        let _ = self.commands.send(Command::Close);
        if handle.join().is_err() {
            tracing::error!(path = %self.path.display(), "store writer thread panicked");
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`, runs migrations and starts the
    /// writer thread. Blocking; call it before the runtime starts or in `spawn_blocking`.
    ///
    /// The same file may be opened again, by this process or another: each `Store` has its
    /// own writer and SQLite serializes them (waiting up to a few seconds for a lock).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let write_conn = sqlite::open_writer(path)?;
        let reader = sqlite::open_reader(path)?;
        let counters = Arc::new(Counters::default());
        let (commands, rx) = mpsc::channel();
        let thread_counters = Arc::clone(&counters);
        let handle = std::thread::Builder::new()
            .name("thingd-store-writer".to_owned())
            .spawn(move || writer::run(write_conn, rx, thread_counters))
            .map_err(|err| {
                tracing::error!(error = %err, "cannot start the store writer thread");
                StoreError::Closed
            })?;
        tracing::debug!(path = %path.display(), "store opened");
        Ok(Store {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                commands,
                writer: Mutex::new(Some(handle)),
                reader: Mutex::new(reader),
                counters,
            }),
        })
    }

    /// The database file this store was opened on.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn submit(&self, ops: Vec<WriteOp>, reply: Option<writer::Reply>) -> Result<(), StoreError> {
        self.shared
            .commands
            .send(Command::Write {
                ops: writer::Work::Ops(ops),
                reply,
            })
            .map_err(|_| StoreError::Closed)
    }

    /// Submits writes and waits until the transaction holding them has committed (fsync'd).
    /// If any op fails, none of this call's ops are applied and the error is returned;
    /// other callers' ops in the same group commit are not affected.
    ///
    /// The ops are handed to the writer on the first poll; dropping the future after that
    /// does not cancel them. An empty `ops` is a barrier: it resolves once everything
    /// submitted before it (including detached writes) has been committed.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        self.submit(ops, Some(reply))?;
        done.await.map_err(|_| StoreError::Closed)?
    }

    /// Submits writes without waiting for the commit (for work whose loss on a crash is
    /// harmless, such as deleting an acknowledged message). Order with later writes is kept.
    /// A failure is only logged.
    pub fn write_detached(&self, ops: Vec<WriteOp>) {
        if self.submit(ops, None).is_err() {
            tracing::warn!("detached store write after the store was closed");
        }
    }

    /// Blocking variant of `write`, for command-line tools and startup code.
    ///
    /// It blocks the calling thread until the commit, so it must be called from a plain
    /// thread (or `spawn_blocking`), never directly inside an async task: tokio panics if a
    /// runtime worker thread blocks this way.
    pub fn write_blocking(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        self.submit(ops, Some(reply))?;
        done.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on the writer connection inside the group commit, in its own savepoint, and
    /// returns its value once the transaction holding it has committed. If `f` fails, its
    /// changes are rolled back and the error returned; other requests are not affected.
    /// For registry operations whose SQL lives next to their types (`crate::registry`).
    pub async fn transact<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // Called inside this async fn, so the closure still reaches the writer on first poll.
        self.transact_queued(f).await
    }

    /// [`Store::transact`], except that `f` is handed to the writer before this returns
    /// rather than on the first poll. Transactions queued one after another run and commit
    /// in that order, so a caller can queue the next one before awaiting the previous (a
    /// pipeline), and may await the futures anywhere.
    pub fn transact_queued<T, F>(
        &self,
        f: F,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let submitted = self.submit_transaction(f);
        async move {
            let (slot, done) = submitted?;
            done.await.map_err(|_| StoreError::Closed)??;
            take_value(&slot)
        }
    }

    /// Blocking variant of [`Store::transact`], for command-line tools and startup code.
    /// Like [`Store::write_blocking`], it must not be called inside an async task.
    pub fn transact_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (slot, done) = self.submit_transaction(f)?;
        done.blocking_recv().map_err(|_| StoreError::Closed)??;
        take_value(&slot)
    }

    /// Hands `f` to the writer; the receiver resolves after the commit, when the slot holds
    /// `f`'s value.
    #[allow(clippy::type_complexity)]
    fn submit_transaction<T, F>(
        &self,
        f: F,
    ) -> Result<
        (
            std::sync::Arc<Mutex<Option<T>>>,
            oneshot::Receiver<Result<(), StoreError>>,
        ),
        StoreError,
    >
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let slot = std::sync::Arc::new(Mutex::new(None));
        let out = slot.clone();
        let func: writer::TransactFn = Box::new(move |conn| {
            let value = f(conn)?;
            *out.lock() = Some(value);
            Ok(())
        });
        let (reply, done) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Write {
                ops: writer::Work::Func(std::sync::Mutex::new(Some(func))),
                reply: Some(reply),
            })
            .map_err(|_| StoreError::Closed)?;
        Ok((slot, done))
    }

    /// Runs `f` on the read connection (blocking; call from `spawn_blocking` in async code).
    /// Sees everything committed before the call.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&self.shared.reader.lock())
    }

    /// The registry revision: it moves whenever a committed change may alter an authorization
    /// decision (see [`bump_registry_revision`]). Blocking read.
    pub fn registry_revision(&self) -> Result<i64, StoreError> {
        self.read(|conn| {
            Ok(conn.query_row(
                "SELECT revision FROM registry_revision WHERE id = 1",
                [],
                |r| r.get(0),
            )?)
        })
    }

    /// One certificate by id (blocking read on a read connection).
    pub fn certificate(
        &self,
        id: &thingd_model::CertificateId,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        sqlite::certificate(&self.shared.reader.lock(), id)
    }

    /// All certificates, oldest first.
    pub fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        sqlite::certificates(&self.shared.reader.lock())
    }

    /// The id and status of every certificate inserted or changed after `after_revision`
    /// (pass 0 for all of them), plus the total count, from one snapshot. This is what a
    /// status cache polls: an index range scan that is empty when no certificate changed,
    /// however many other writes happened.
    pub fn certificate_statuses(
        &self,
        after_revision: i64,
    ) -> Result<CertificateStatusChanges, StoreError> {
        sqlite::certificate_statuses(&self.shared.reader.lock(), after_revision)
    }

    /// All persistent sessions, ordered by client id.
    pub fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        sqlite::sessions(&self.shared.reader.lock())
    }

    /// The queued messages of one session, in `seq` order.
    pub fn messages(&self, client_id: &str) -> Result<Vec<QueuedMessage>, StoreError> {
        sqlite::messages(&self.shared.reader.lock(), client_id)
    }

    /// The recorded live connections (`WriteOp::PutLiveConnection`), by client id and
    /// version.
    pub fn live_connections(&self) -> Result<Vec<LiveConnection>, StoreError> {
        sqlite::live_connections(&self.shared.reader.lock())
    }

    /// All retained messages, ordered by topic.
    pub fn retained(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        sqlite::retained(&self.shared.reader.lock())
    }

    /// A counter that changes whenever any connection (this process or another, e.g. the
    /// CLI) has committed a write to the database since the last call; used to notice
    /// certificate status changes made by other processes. Cheap (`PRAGMA data_version`).
    ///
    /// SQLite only changes a connection's `data_version` for commits made by *other*
    /// connections. It is asked on this store's read connection, which never writes, so
    /// commits by this store's own writer thread change it too. Values are only comparable
    /// between calls on the same `Store` (clones share the read connection).
    pub fn data_version(&self) -> Result<i64, StoreError> {
        sqlite::data_version(&self.shared.reader.lock())
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> StoreStats {
        let c = &self.shared.counters;
        StoreStats {
            transactions: c.transactions.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            failed_requests: c.failed_requests.load(Ordering::Relaxed),
        }
    }

    /// Stops the writer after it has committed everything submitted so far. Blocks until
    /// it has; later writes (from any clone) fail with [`StoreError::Closed`]. Reads keep
    /// working. Calling it again does nothing.
    pub fn close(&self) {
        self.shared.stop_writer();
    }
}

/// The value a committed transaction left in its slot.
fn take_value<T>(slot: &Mutex<Option<T>>) -> Result<T, StoreError> {
    slot.lock()
        .take()
        .ok_or_else(|| StoreError::Corrupt("transaction produced no value".to_owned()))
}

/// Records, inside a `Store::transact` closure, that this transaction changes something an
/// authorization decision depends on (a policy, an attachment, a thing principal, a thing's
/// attributes or type).
pub fn bump_registry_revision(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE registry_revision SET revision = revision + 1 WHERE id = 1",
        [],
    )?;
    Ok(())
}

#[cfg(test)]
mod transact_tests {
    use super::*;

    #[tokio::test]
    async fn transact_returns_the_closures_value_after_commit_and_rolls_back_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let n: i64 = store
            .transact(|conn| {
                conn.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)", [])?;
                conn.execute("INSERT INTO kv VALUES ('a', '1')", [])?;
                Ok(conn.query_row("SELECT COUNT(*) FROM kv", [], |r| r.get(0))?)
            })
            .await
            .unwrap();
        assert_eq!(n, 1);
        let failed: Result<(), StoreError> = store
            .transact(|conn| {
                conn.execute("INSERT INTO kv VALUES ('b', '2')", [])?;
                Err(StoreError::AlreadyExists("b".to_owned()))
            })
            .await;
        assert!(matches!(failed, Err(StoreError::AlreadyExists(_))));
        let keys: Vec<String> = store
            .read(|conn| {
                let mut stmt = conn.prepare("SELECT k FROM kv ORDER BY k")?;
                let rows = stmt
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                Ok(rows)
            })
            .unwrap();
        assert_eq!(
            keys,
            vec!["a".to_owned()],
            "the failed transaction left nothing behind"
        );
    }
}
