//! The security half of the registry: certificates (their control-plane columns), CA
//! certificates, the registration code, policies and their versions, policy targets and
//! thing principals.
//!
//! Every function takes a `&Connection`. The writing ones are meant to run inside
//! [`crate::Store::transact`] (they read, check and write in that one closure, so concurrent
//! requests cannot lose each other's updates, and a refusal — [`StoreError::Rejected`] —
//! rolls back whatever the closure wrote). Every write that can change an authorization
//! decision bumps the registry revision ([`crate::bump_registry_revision`]).
//!
//! The reading ones also work on the read connection (`Store::read`); the broker's policy
//! enforcement uses [`attachments::policies_for_principal`],
//! [`principals::things_for_principal`] and [`principals::thing_for_name`].

pub mod attachments;
pub mod ca_certificates;
pub mod certificates;
pub mod policies;
pub mod principals;
pub mod registration_code;

use crate::StoreError;

/// AWS error shape names used in [`StoreError::Rejected`].
pub mod codes {
    /// 404.
    pub const NOT_FOUND: &str = "ResourceNotFoundException";
    /// 409, carries `resourceId`.
    pub const ALREADY_EXISTS: &str = "ResourceAlreadyExistsException";
    /// 409.
    pub const DELETE_CONFLICT: &str = "DeleteConflictException";
    /// 406.
    pub const CERTIFICATE_STATE: &str = "CertificateStateException";
    /// 409.
    pub const VERSIONS_LIMIT: &str = "VersionsLimitExceededException";
    /// 410.
    pub const LIMIT_EXCEEDED: &str = "LimitExceededException";
    /// 400.
    pub const INVALID_REQUEST: &str = "InvalidRequestException";
}

/// A refusal with `code` and `message`.
pub(crate) fn rejected(code: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Rejected {
        code,
        message: message.into(),
        resource_id: None,
    }
}

/// ResourceNotFoundException.
pub(crate) fn not_found(message: impl Into<String>) -> StoreError {
    rejected(codes::NOT_FOUND, message)
}

#[cfg(test)]
pub(crate) mod test_db {
    use rusqlite::Connection;

    /// A fresh database with every migration applied, on one connection.
    pub(crate) fn open() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = crate::sqlite::open_writer(&path).unwrap();
        (dir, conn)
    }

    /// The registry revision.
    pub(crate) fn revision(conn: &Connection) -> i64 {
        conn.query_row("SELECT revision FROM registry_revision", [], |r| r.get(0))
            .unwrap()
    }
}
