//! Device certificates as the control plane sees them: creation with their origin and mode,
//! status changes with AWS's state rules, deletion guards, listings.

use rusqlite::{Connection, OptionalExtension as _, params};
use thingd_model::CertificateStatus;

use super::{codes, not_found, rejected};
use crate::{StoreError, bump_registry_revision};

/// How a certificate came to be trusted, which decides how the TLS check verifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Issued by the thingd root CA (CreateKeysAndCertificate, CreateCertificateFromCsr, the
    /// CLI): it must chain to that root.
    Issued,
    /// RegisterCertificate: it chains to the thingd root or to the registered CA in `ca_id`.
    Ca,
    /// RegisterCertificateWithoutCA: only its id and the proof of possession count.
    NoCa,
}

impl Origin {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Issued => "ISSUED",
            Origin::Ca => "CA",
            Origin::NoCa => "NO_CA",
        }
    }

    fn parse(s: &str) -> Origin {
        match s {
            "CA" => Origin::Ca,
            "NO_CA" => Origin::NoCa,
            _ => Origin::Issued,
        }
    }
}

/// A certificate row with its control-plane columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// SHA-256 of the DER, lowercase hex.
    pub id: String,
    /// PEM.
    pub pem: String,
    /// AWS status spelling.
    pub status: String,
    /// The registered CA it was registered under, if any.
    pub ca_id: Option<String>,
    /// How it is trusted.
    pub origin: Origin,
    /// `DEFAULT` or `SNI_ONLY`.
    pub mode: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Bumped on every change (`generationId`).
    pub generation: i64,
    /// Bumped on every change (`customerVersion`).
    pub customer_version: i64,
}

/// What is needed to insert a certificate.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    /// SHA-256 of the DER, lowercase hex.
    pub id: String,
    /// PEM.
    pub pem: String,
    /// Initial status.
    pub status: CertificateStatus,
    /// The registered CA, if any.
    pub ca_id: Option<String>,
    /// How it is trusted.
    pub origin: Origin,
    /// `DEFAULT` or `SNI_ONLY`.
    pub mode: String,
}

const COLUMNS: &str =
    "id, pem, status, ca_id, origin, mode, created_at, updated_at, generation, customer_version";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Certificate> {
    Ok(Certificate {
        id: row.get(0)?,
        pem: row.get(1)?,
        status: row.get(2)?,
        ca_id: row.get(3)?,
        origin: Origin::parse(&row.get::<_, String>(4)?),
        mode: row.get(5)?,
        created_at: row.get(6)?,
        updated_at: row.get(7)?,
        generation: row.get(8)?,
        customer_version: row.get(9)?,
    })
}

/// Inserts a certificate. A taken id is ResourceAlreadyExistsException with the id.
pub fn insert(conn: &Connection, new: &NewCertificate, now: i64) -> Result<(), StoreError> {
    if get(conn, &new.id)?.is_some() {
        return Err(StoreError::Rejected {
            code: codes::ALREADY_EXISTS,
            message: "The certificate is already provisioned or registered".to_owned(),
            resource_id: Some(new.id.clone()),
        });
    }
    conn.prepare_cached(
        "INSERT INTO certificates
             (id, pem, status, ca_id, origin, mode, created_at, updated_at, revision)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7,
                 (SELECT COALESCE(MAX(revision), 0) + 1 FROM certificates))",
    )?
    .execute(params![
        new.id,
        new.pem,
        new.status.as_str(),
        new.ca_id,
        new.origin.as_str(),
        new.mode,
        now
    ])?;
    bump_registry_revision(conn)?;
    Ok(())
}

/// One certificate.
pub fn get(conn: &Connection, id: &str) -> Result<Option<Certificate>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM certificates WHERE id = ?1"))?
        .query_row([id], from_row)
        .optional()?)
}

/// Every certificate (or those registered under `ca_id`), by creation date.
pub fn list(
    conn: &Connection,
    ascending: bool,
    ca_id: Option<&str>,
) -> Result<Vec<Certificate>, StoreError> {
    let order = if ascending { "ASC" } else { "DESC" };
    let sql = format!(
        "SELECT {COLUMNS} FROM certificates WHERE (?1 IS NULL OR ca_id = ?1)
         ORDER BY created_at {order}, rowid {order}"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([ca_id], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// UpdateCertificate: sets the status. REVOKED is terminal (CertificateStateException);
/// PENDING_TRANSFER and PENDING_ACTIVATION cannot be set (InvalidRequestException). Setting
/// the current status again changes nothing. Returns whether the status changed.
pub fn update_status(
    conn: &Connection,
    id: &str,
    status: CertificateStatus,
    now: i64,
) -> Result<bool, StoreError> {
    if matches!(
        status,
        CertificateStatus::PendingTransfer | CertificateStatus::PendingActivation
    ) {
        return Err(rejected(
            codes::INVALID_REQUEST,
            format!("The status {status} cannot be set with UpdateCertificate"),
        ));
    }
    let cert = get(conn, id)?.ok_or_else(|| not_found(format!("Certificate {id} not found")))?;
    if cert.status == status.as_str() {
        return Ok(false);
    }
    if cert.status == CertificateStatus::Revoked.as_str() {
        return Err(rejected(
            codes::CERTIFICATE_STATE,
            format!("Certificate {id} is revoked; its status cannot be changed"),
        ));
    }
    conn.prepare_cached(
        "UPDATE certificates
         SET status = ?2, updated_at = ?3, generation = generation + 1,
             customer_version = customer_version + 1,
             revision = (SELECT COALESCE(MAX(revision), 0) + 1 FROM certificates)
         WHERE id = ?1",
    )?
    .execute(params![id, status.as_str(), now])?;
    bump_registry_revision(conn)?;
    Ok(true)
}

/// DeleteCertificate with AWS's guards: an ACTIVE certificate is CertificateStateException;
/// one attached to a thing is DeleteConflictException; one with attached policies is
/// DeleteConflictException unless `force` (then the attachments go with it). `arn` is the
/// certificate's ARN as stored in attachments.
pub fn delete(conn: &Connection, id: &str, arn: &str, force: bool) -> Result<(), StoreError> {
    let cert = get(conn, id)?.ok_or_else(|| not_found(format!("Certificate {id} not found")))?;
    if cert.status == CertificateStatus::Active.as_str() {
        return Err(rejected(
            codes::CERTIFICATE_STATE,
            format!("Certificate must be deactivated (not ACTIVE) before deletion. Id: {id}"),
        ));
    }
    let things: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM thing_principals WHERE principal = ?1")?
        .query_row([arn], |r| r.get(0))?;
    if things > 0 {
        return Err(rejected(
            codes::DELETE_CONFLICT,
            format!("Things must be detached before deletion (arn: {arn})"),
        ));
    }
    let policies: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM policy_targets WHERE target = ?1")?
        .query_row([arn], |r| r.get(0))?;
    if policies > 0 && !force {
        return Err(rejected(
            codes::DELETE_CONFLICT,
            format!("Certificate policies must be detached before deletion (arn: {arn})"),
        ));
    }
    conn.prepare_cached("DELETE FROM policy_targets WHERE target = ?1")?
        .execute([arn])?;
    conn.prepare_cached("DELETE FROM certificates WHERE id = ?1")?
        .execute([id])?;
    bump_registry_revision(conn)?;
    Ok(())
}

/// How one certificate is trusted, for the TLS check (see [`trust_since`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// The certificate id.
    pub id: String,
    /// Its origin.
    pub origin: Origin,
    /// The registered CA it was registered under, if any.
    pub ca_id: Option<String>,
    /// The certificate revision of its last write.
    pub revision: i64,
}

/// The origin of every certificate written after certificate revision `after` that is not
/// [`Origin::Issued`] (those need nothing beyond the thingd root chain).
pub fn trust_since(conn: &Connection, after: i64) -> Result<Vec<Trust>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, origin, ca_id, revision FROM certificates
         WHERE revision > ?1 AND origin <> 'ISSUED' ORDER BY revision",
    )?;
    let rows = stmt.query_map([after], |row| {
        Ok(Trust {
            id: row.get(0)?,
            origin: Origin::parse(&row.get::<_, String>(1)?),
            ca_id: row.get(2)?,
            revision: row.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::super::test_db;
    use super::*;

    fn new(id: &str) -> NewCertificate {
        NewCertificate {
            id: id.to_owned(),
            pem: "pem".to_owned(),
            status: CertificateStatus::Inactive,
            ca_id: None,
            origin: Origin::NoCa,
            mode: "DEFAULT".to_owned(),
        }
    }

    fn code(err: StoreError) -> &'static str {
        match err {
            StoreError::Rejected { code, .. } => code,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn status_rules_and_delete_guards() {
        let (_dir, conn) = test_db::open();
        let id = "a".repeat(64);
        let arn = format!("arn:aws:iot:r:1:cert/{id}");
        insert(&conn, &new(&id), 10).unwrap();
        assert_eq!(
            code(insert(&conn, &new(&id), 11).unwrap_err()),
            codes::ALREADY_EXISTS
        );
        let rev = test_db::revision(&conn);
        assert!(update_status(&conn, &id, CertificateStatus::Active, 12).unwrap());
        assert!(!update_status(&conn, &id, CertificateStatus::Active, 12).unwrap());
        assert!(test_db::revision(&conn) > rev);
        assert_eq!(
            code(delete(&conn, &id, &arn, false).unwrap_err()),
            codes::CERTIFICATE_STATE
        );
        update_status(&conn, &id, CertificateStatus::Inactive, 13).unwrap();
        conn.execute(
            "INSERT INTO thing_principals VALUES ('t', ?1, 'NON_EXCLUSIVE_THING', 1)",
            [&arn],
        )
        .unwrap();
        assert_eq!(
            code(delete(&conn, &id, &arn, true).unwrap_err()),
            codes::DELETE_CONFLICT
        );
        conn.execute("DELETE FROM thing_principals", []).unwrap();
        conn.execute("INSERT INTO policies VALUES ('p', 1, 2, 1, 1, 1)", [])
            .unwrap();
        conn.execute("INSERT INTO policy_targets VALUES ('p', ?1, 1)", [&arn])
            .unwrap();
        assert_eq!(
            code(delete(&conn, &id, &arn, false).unwrap_err()),
            codes::DELETE_CONFLICT
        );
        update_status(&conn, &id, CertificateStatus::Revoked, 14).unwrap();
        assert_eq!(
            code(update_status(&conn, &id, CertificateStatus::Active, 15).unwrap_err()),
            codes::CERTIFICATE_STATE
        );
        delete(&conn, &id, &arn, true).unwrap();
        assert!(get(&conn, &id).unwrap().is_none());
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM policy_targets", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
        assert_eq!(
            code(delete(&conn, &id, &arn, true).unwrap_err()),
            codes::NOT_FOUND
        );
    }

    #[test]
    fn listing_order_ca_filter_and_trust() {
        let (_dir, conn) = test_db::open();
        for (i, c) in ["1", "2", "3"].iter().enumerate() {
            let mut n = new(&c.repeat(64));
            n.ca_id = (i == 1).then(|| "ca".to_owned());
            n.origin = if i == 0 { Origin::Issued } else { Origin::Ca };
            insert(&conn, &n, i as i64).unwrap();
        }
        let asc: Vec<String> = list(&conn, true, None)
            .unwrap()
            .into_iter()
            .map(|c| c.id[..1].to_owned())
            .collect();
        assert_eq!(asc, ["1", "2", "3"]);
        let desc = list(&conn, false, None).unwrap();
        assert_eq!(desc[0].id, "3".repeat(64));
        let by_ca = list(&conn, true, Some("ca")).unwrap();
        assert_eq!(by_ca.len(), 1);
        let trust = trust_since(&conn, 0).unwrap();
        assert_eq!(trust.len(), 2);
        assert_eq!(trust[0].ca_id.as_deref(), Some("ca"));
        assert!(trust_since(&conn, trust[1].revision).unwrap().is_empty());
    }
}
