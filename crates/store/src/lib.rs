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
//! # Layout
//! - `sqlite`: opening, pragmas (WAL, `synchronous=FULL`), migrations.
//! - `writer`: the writer thread and group commit.
//! - `records`: the row types.
//!
//! PLACEHOLDER SIGNATURES: the implementation is being written; the API below is the contract.

mod records;

pub use records::*;

use std::path::Path;

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
}

/// A handle to the store; cheap to clone, usable from any thread or task.
#[derive(Clone)]
pub struct Store {
    _private: (),
}

impl Store {
    /// Opens (creating if needed) the database at `path`, runs migrations and starts the
    /// writer thread. Blocking; call it before the runtime starts or in `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let _ = path;
        unimplemented!()
    }

    /// Submits writes and waits until the transaction holding them has committed (fsync'd).
    /// If any op fails, none of this call's ops are applied and the error is returned;
    /// other callers' ops in the same group commit are not affected.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let _ = ops;
        unimplemented!()
    }

    /// Submits writes without waiting for the commit (for work whose loss on a crash is
    /// harmless, such as deleting an acknowledged message). Order with later writes is kept.
    pub fn write_detached(&self, ops: Vec<WriteOp>) {
        let _ = ops;
        unimplemented!()
    }

    /// Blocking variant of `write`, for command-line tools and startup code.
    pub fn write_blocking(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let _ = ops;
        unimplemented!()
    }

    /// One certificate by id (blocking read on a read connection).
    pub fn certificate(
        &self,
        id: &thingd_model::CertificateId,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        let _ = id;
        unimplemented!()
    }

    /// All certificates, oldest first.
    pub fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        unimplemented!()
    }

    /// All persistent sessions.
    pub fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        unimplemented!()
    }

    /// The queued messages of one session, in `seq` order.
    pub fn messages(&self, client_id: &str) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let _ = client_id;
        unimplemented!()
    }

    /// All retained messages.
    pub fn retained(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        unimplemented!()
    }

    /// A counter that changes whenever any connection (this process or another, e.g. the
    /// CLI) has committed a write to the database since the last call; used to notice
    /// certificate status changes made by other processes. Cheap (`PRAGMA data_version`).
    pub fn data_version(&self) -> Result<i64, StoreError> {
        unimplemented!()
    }

    /// Stops the writer after it has committed everything submitted so far.
    pub fn close(&self) {
        unimplemented!()
    }
}
