//! Opening connections, pragmas, migrations, and the read queries.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use thingd_model::{CertificateId, CertificateStatus};

use crate::{
    CertificateRecord, CertificateStatusChanges, CertificateStatusEntry, LiveConnection,
    QueuedMessage, SessionRecord, StoreError,
};

/// How long a connection waits for another connection's (or process's) write lock before
/// giving up with `SQLITE_BUSY`. The `thingd cert` CLI writes to the same file while the
/// server runs; its transactions are short.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many prepared statements each connection keeps.
const STATEMENT_CACHE: usize = 32;

/// The migrations, in order. A migration is applied when its number is greater than the
/// highest one recorded in `schema_version`. Never edit a released migration; add a new one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_access_keys.sql")),
    (3, include_str!("migrations/0003_registry_things.sql")),
    (4, include_str!("migrations/0004_registry_security.sql")),
    (5, include_str!("migrations/0005_shadows.sql")),
    (6, include_str!("migrations/0006_released_messages.sql")),
    (7, include_str!("migrations/0007_live_connections.sql")),
];

/// Pragmas every connection gets.
fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// Opens the connection the writer thread will own: creates the file if needed, switches it
/// to WAL and runs the migrations.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    configure(&conn)?;
    // WAL is a property of the file (it persists), so setting it again is a no-op.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            path = %path.display(),
            mode,
            "SQLite refused WAL journal mode; writes will be slower"
        );
    }
    migrate(&mut conn)?;
    Ok(conn)
}

/// Opens a connection that only reads (`query_only`), for queries and `data_version`.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    configure(&conn)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// Brings the schema up to date. Runs in one `BEGIN IMMEDIATE` transaction, so two processes
/// opening a fresh file at the same moment cannot both apply a migration.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |row| row.get(0),
    )?;
    let latest = MIGRATIONS.last().map_or(0, |(version, _)| *version);
    if current > latest {
        return Err(StoreError::Corrupt(format!(
            "the database has schema version {current}, newer than this build knows ({latest})"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tracing::info!(version, "applying store migration");
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [version],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// `PRAGMA data_version` of this connection.
pub(crate) fn data_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.pragma_query_value(None, "data_version", |row| row.get(0))?)
}

fn certificate_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawCertificate> {
    Ok(RawCertificate {
        id: row.get(0)?,
        pem: row.get(1)?,
        status: row.get(2)?,
        ca_id: row.get(3)?,
        created_at: row.get(4)?,
        updated_at: row.get(5)?,
    })
}

/// A certificate row before its id and status are validated.
struct RawCertificate {
    id: String,
    pem: String,
    status: String,
    ca_id: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl RawCertificate {
    fn into_record(self) -> Result<CertificateRecord, StoreError> {
        let id = CertificateId::parse(&self.id)
            .ok_or_else(|| StoreError::Corrupt(format!("certificate id {:?}", self.id)))?;
        let status = self.status.parse::<CertificateStatus>().map_err(|_| {
            StoreError::Corrupt(format!("certificate {id} has status {:?}", self.status))
        })?;
        Ok(CertificateRecord {
            id,
            pem: self.pem,
            status,
            ca_id: self.ca_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

pub(crate) fn certificate(
    conn: &Connection,
    id: &CertificateId,
) -> Result<Option<CertificateRecord>, StoreError> {
    let raw = conn
        .prepare_cached(
            "SELECT id, pem, status, ca_id, created_at, updated_at
             FROM certificates WHERE id = ?1",
        )?
        .query_row([id.as_str()], certificate_from_row)
        .optional()?;
    raw.map(RawCertificate::into_record).transpose()
}

pub(crate) fn certificates(conn: &Connection) -> Result<Vec<CertificateRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, pem, status, ca_id, created_at, updated_at
         FROM certificates ORDER BY created_at, rowid",
    )?;
    let rows = stmt.query_map([], certificate_from_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row?.into_record()?);
    }
    Ok(out)
}

pub(crate) fn certificate_statuses(
    conn: &Connection,
    after_revision: i64,
) -> Result<CertificateStatusChanges, StoreError> {
    // One read transaction, so the count and the changes describe the same snapshot.
    let tx = conn.unchecked_transaction()?;
    let mut changed = Vec::new();
    {
        let mut stmt = tx.prepare_cached(
            "SELECT id, status, revision FROM certificates
             WHERE revision > ?1 ORDER BY revision",
        )?;
        let rows = stmt.query_map([after_revision], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (id, status, revision) = row?;
            let id = CertificateId::parse(&id)
                .ok_or_else(|| StoreError::Corrupt(format!("certificate id {id:?}")))?;
            let status = status.parse::<CertificateStatus>().map_err(|_| {
                StoreError::Corrupt(format!("certificate {id} has status {status:?}"))
            })?;
            changed.push(CertificateStatusEntry {
                id,
                status,
                revision,
            });
        }
    }
    let total: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM certificates")?
        .query_row([], |row| row.get(0))?;
    tx.commit()?;
    Ok(CertificateStatusChanges {
        changed,
        total: u64::try_from(total).unwrap_or(0),
    })
}

pub(crate) fn sessions(conn: &Connection) -> Result<Vec<SessionRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT client_id, protocol_level, expiry_interval, disconnected_at, state
         FROM sessions ORDER BY client_id",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(SessionRecord {
            client_id: row.get(0)?,
            protocol_level: row.get(1)?,
            expiry_interval: row.get(2)?,
            disconnected_at: row.get(3)?,
            state: row.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(crate) fn live_connections(conn: &Connection) -> Result<Vec<LiveConnection>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT session_identifier, client_id, principal, version_number
         FROM live_connections ORDER BY client_id, version_number",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(LiveConnection {
            session_identifier: row.get(0)?,
            client_id: row.get(1)?,
            principal: row.get(2)?,
            version_number: row.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(crate) fn messages(
    conn: &Connection,
    client_id: &str,
) -> Result<Vec<QueuedMessage>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, blob, released FROM session_messages WHERE client_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([client_id], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, Vec<u8>>(1)?,
            row.get::<_, bool>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, blob, released) = row?;
        let seq = u64::try_from(seq)
            .map_err(|_| StoreError::Corrupt(format!("message {seq} of session {client_id:?}")))?;
        out.push(QueuedMessage {
            seq,
            blob,
            released,
        });
    }
    Ok(out)
}

pub(crate) fn retained(conn: &Connection) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT topic, blob FROM retained ORDER BY topic")?;
    let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
