//! Registered CA certificates.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{codes, not_found, rejected};
use crate::{StoreError, bump_registry_revision};

/// A registered CA certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertificate {
    /// SHA-256 of the DER, lowercase hex.
    pub id: String,
    /// PEM.
    pub pem: String,
    /// `ACTIVE` or `INACTIVE`.
    pub status: String,
    /// `ENABLE` or `DISABLE`.
    pub auto_registration: String,
    /// `DEFAULT` or `SNI_ONLY`.
    pub mode: String,
    /// The RegistrationConfig JSON object, if any.
    pub registration_config: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Bumped on every change.
    pub customer_version: i64,
    /// Bumped on every change.
    pub generation: i64,
}

const COLUMNS: &str = "id, pem, status, auto_registration, mode, registration_config, created_at, updated_at, customer_version, generation";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CaCertificate> {
    Ok(CaCertificate {
        id: row.get(0)?,
        pem: row.get(1)?,
        status: row.get(2)?,
        auto_registration: row.get(3)?,
        mode: row.get(4)?,
        registration_config: row.get(5)?,
        created_at: row.get(6)?,
        updated_at: row.get(7)?,
        customer_version: row.get(8)?,
        generation: row.get(9)?,
    })
}

/// Inserts a CA certificate (`created_at`/`updated_at` from `ca`); a taken id is
/// ResourceAlreadyExistsException with the id.
pub fn insert(conn: &Connection, ca: &CaCertificate) -> Result<(), StoreError> {
    if get(conn, &ca.id)?.is_some() {
        return Err(StoreError::Rejected {
            code: codes::ALREADY_EXISTS,
            message: "The CA certificate is already registered".to_owned(),
            resource_id: Some(ca.id.clone()),
        });
    }
    conn.prepare_cached(
        "INSERT INTO ca_certificates
             (id, pem, status, auto_registration, mode, registration_config, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
    )?
    .execute(params![
        ca.id,
        ca.pem,
        ca.status,
        ca.auto_registration,
        ca.mode,
        ca.registration_config,
        ca.created_at
    ])?;
    bump_registry_revision(conn)?;
    Ok(())
}

/// One CA certificate.
pub fn get(conn: &Connection, id: &str) -> Result<Option<CaCertificate>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM ca_certificates WHERE id = ?1"
        ))?
        .query_row([id], from_row)
        .optional()?)
}

/// Every CA certificate by creation date, optionally only those whose registration config
/// names `template_name`.
pub fn list(
    conn: &Connection,
    ascending: bool,
    template_name: Option<&str>,
) -> Result<Vec<CaCertificate>, StoreError> {
    let order = if ascending { "ASC" } else { "DESC" };
    let sql = format!(
        "SELECT {COLUMNS} FROM ca_certificates
         WHERE (?1 IS NULL OR json_extract(registration_config, '$.templateName') = ?1)
         ORDER BY created_at {order}, rowid {order}"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([template_name], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What UpdateCACertificate changes (`None` = leave as is).
#[derive(Debug, Clone, Default)]
pub struct CaUpdate {
    /// `ACTIVE` or `INACTIVE`.
    pub status: Option<String>,
    /// `ENABLE` or `DISABLE`.
    pub auto_registration: Option<String>,
    /// A new RegistrationConfig JSON object.
    pub registration_config: Option<String>,
    /// Remove the registration config.
    pub remove_registration_config: bool,
}

/// UpdateCACertificate.
pub fn update(conn: &Connection, id: &str, update: &CaUpdate, now: i64) -> Result<(), StoreError> {
    let mut ca =
        get(conn, id)?.ok_or_else(|| not_found(format!("CA certificate {id} not found")))?;
    if let Some(status) = &update.status {
        ca.status.clone_from(status);
    }
    if let Some(auto) = &update.auto_registration {
        ca.auto_registration.clone_from(auto);
    }
    if update.remove_registration_config {
        ca.registration_config = None;
    } else if let Some(config) = &update.registration_config {
        ca.registration_config = Some(config.clone());
    }
    conn.prepare_cached(
        "UPDATE ca_certificates
         SET status = ?2, auto_registration = ?3, registration_config = ?4, updated_at = ?5,
             customer_version = customer_version + 1, generation = generation + 1
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        ca.status,
        ca.auto_registration,
        ca.registration_config,
        now
    ])?;
    bump_registry_revision(conn)?;
    Ok(())
}

/// DeleteCACertificate: an ACTIVE CA is CertificateStateException.
pub fn delete(conn: &Connection, id: &str) -> Result<(), StoreError> {
    let ca = get(conn, id)?.ok_or_else(|| not_found(format!("CA certificate {id} not found")))?;
    if ca.status == "ACTIVE" {
        return Err(rejected(
            codes::CERTIFICATE_STATE,
            format!("CA certificate must be deactivated (not ACTIVE) before deletion. Id: {id}"),
        ));
    }
    conn.prepare_cached("DELETE FROM ca_certificates WHERE id = ?1")?
        .execute([id])?;
    bump_registry_revision(conn)?;
    Ok(())
}

/// The id and PEM of every ACTIVE CA certificate (what the TLS check trusts besides the
/// thingd root).
pub fn active(conn: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, pem FROM ca_certificates WHERE status = 'ACTIVE' ORDER BY created_at, rowid",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::super::test_db;
    use super::*;

    fn ca(id: &str, status: &str, template: Option<&str>) -> CaCertificate {
        CaCertificate {
            id: id.to_owned(),
            pem: format!("pem {id}"),
            status: status.to_owned(),
            auto_registration: "DISABLE".to_owned(),
            mode: "DEFAULT".to_owned(),
            registration_config: template.map(|t| format!("{{\"templateName\":\"{t}\"}}")),
            created_at: 5,
            updated_at: 5,
            customer_version: 1,
            generation: 1,
        }
    }

    #[test]
    fn register_update_list_delete() {
        let (_dir, conn) = test_db::open();
        insert(&conn, &ca("a", "ACTIVE", Some("tpl"))).unwrap();
        insert(&conn, &ca("b", "INACTIVE", None)).unwrap();
        assert!(matches!(
            insert(&conn, &ca("a", "ACTIVE", None)),
            Err(StoreError::Rejected {
                code: codes::ALREADY_EXISTS,
                resource_id: Some(_),
                ..
            })
        ));
        assert_eq!(
            active(&conn).unwrap(),
            vec![("a".to_owned(), "pem a".to_owned())]
        );
        assert_eq!(list(&conn, true, Some("tpl")).unwrap().len(), 1);
        assert_eq!(list(&conn, false, None).unwrap().len(), 2);
        assert!(matches!(
            delete(&conn, "a"),
            Err(StoreError::Rejected {
                code: codes::CERTIFICATE_STATE,
                ..
            })
        ));
        let up = CaUpdate {
            status: Some("INACTIVE".to_owned()),
            auto_registration: Some("ENABLE".to_owned()),
            remove_registration_config: true,
            ..CaUpdate::default()
        };
        update(&conn, "a", &up, 9).unwrap();
        let a = get(&conn, "a").unwrap().unwrap();
        assert_eq!(
            (
                a.status.as_str(),
                a.auto_registration.as_str(),
                a.registration_config,
                a.customer_version
            ),
            ("INACTIVE", "ENABLE", None, 2)
        );
        delete(&conn, "a").unwrap();
        assert!(get(&conn, "a").unwrap().is_none());
        assert!(matches!(
            update(&conn, "a", &up, 9),
            Err(StoreError::Rejected {
                code: codes::NOT_FOUND,
                ..
            })
        ));
    }
}
