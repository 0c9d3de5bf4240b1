//! Device shadow rows: one per (thing, shadow name), `''` naming the classic shadow.
//!
//! The store does not read the documents; it keys them, remembers their version for
//! conditional writes, and lists named shadows. Run these inside [`Store::transact`]
//! (writes, read-modify-write) or [`Store::read`] (lookups, listings).
//!
//! [`Store::transact`]: crate::Store::transact
//! [`Store::read`]: crate::Store::read

use rusqlite::{Connection, OptionalExtension, params};

use crate::StoreError;

/// One stored shadow (or tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowRow {
    /// The shadow service's encoding of the document.
    pub document: Vec<u8>,
    /// The version the document holds.
    pub version: u64,
    /// When the row was last written, epoch seconds.
    pub updated_at: i64,
    /// When the shadow was deleted, for a tombstone.
    pub deleted_at: Option<i64>,
}

fn version_param(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(|_| StoreError::Corrupt(format!("shadow version {version}")))
}

/// The row of `thing`/`shadow` (`""` for the classic shadow), tombstones included.
pub fn get(conn: &Connection, thing: &str, shadow: &str) -> Result<Option<ShadowRow>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT document, version, updated_at, deleted_at FROM shadows
             WHERE thing_name = ?1 AND shadow_name = ?2",
        )?
        .query_row(params![thing, shadow], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })
        .optional()?;
    row.map(|(document, version, updated_at, deleted_at)| {
        let version = u64::try_from(version).map_err(|_| {
            StoreError::Corrupt(format!("shadow {thing:?}/{shadow:?} has version {version}"))
        })?;
        Ok(ShadowRow {
            document,
            version,
            updated_at,
            deleted_at,
        })
    })
    .transpose()
}

/// Writes the row of `thing`/`shadow`, but only if the stored row is still the one the
/// caller read: `expected` is the version it read, or `None` if it found no row. Anything
/// else fails with `StoreError::Rejected { code: "ConflictException", .. }` and writes nothing.
pub fn put(
    conn: &Connection,
    thing: &str,
    shadow: &str,
    expected: Option<u64>,
    row: &ShadowRow,
) -> Result<(), StoreError> {
    let version = version_param(row.version)?;
    let changed = match expected {
        None => conn
            .prepare_cached(
                "INSERT INTO shadows
                   (thing_name, shadow_name, document, version, updated_at, deleted_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (thing_name, shadow_name) DO NOTHING",
            )?
            .execute(params![
                thing,
                shadow,
                row.document,
                version,
                row.updated_at,
                row.deleted_at
            ])?,
        Some(old) => conn
            .prepare_cached(
                "UPDATE shadows SET document = ?3, version = ?4, updated_at = ?5, deleted_at = ?6
                 WHERE thing_name = ?1 AND shadow_name = ?2 AND version = ?7",
            )?
            .execute(params![
                thing,
                shadow,
                row.document,
                version,
                row.updated_at,
                row.deleted_at,
                version_param(old)?
            ])?,
    };
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::Rejected {
            code: "ConflictException",
            message: format!("shadow {thing:?}/{shadow:?} changed since it was read"),
            resource_id: None,
        })
    }
}

/// Removes the row of `thing`/`shadow` (a tombstone that has outlived its purpose). Returns
/// whether there was one.
pub fn remove(conn: &Connection, thing: &str, shadow: &str) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached("DELETE FROM shadows WHERE thing_name = ?1 AND shadow_name = ?2")?
        .execute(params![thing, shadow])?;
    Ok(n > 0)
}

/// Names of the live named shadows of `thing` that sort after `after` (all of them when
/// `None`), in name order, at most `limit`.
pub fn list_named(
    conn: &Connection,
    thing: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT shadow_name FROM shadows
         WHERE thing_name = ?1 AND shadow_name > ?2 AND deleted_at IS NULL
         ORDER BY shadow_name LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![thing, after.unwrap_or(""), limit], |r| r.get(0))?;
    Ok(rows.collect::<Result<Vec<String>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    fn row(version: u64, deleted_at: Option<i64>) -> ShadowRow {
        ShadowRow {
            document: format!("doc{version}").into_bytes(),
            version,
            updated_at: 10,
            deleted_at,
        }
    }

    #[tokio::test]
    async fn conditional_writes_listing_and_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        store
            .transact(|c| {
                put(c, "t", "", None, &row(1, None))?;
                put(c, "t", "b", None, &row(1, None))?;
                put(c, "t", "a", None, &row(1, None))?;
                put(c, "t", "gone", None, &row(3, Some(5)))?;
                put(c, "u", "x", None, &row(1, None))?;
                put(c, "t", "", Some(1), &row(2, None))
            })
            .await
            .unwrap();
        // A write based on a stale read, or creating what exists, is refused.
        for expected in [None, Some(1)] {
            let refused = store
                .transact(move |c| put(c, "t", "", expected, &row(9, None)))
                .await;
            assert!(
                matches!(
                    refused,
                    Err(StoreError::Rejected {
                        code: "ConflictException",
                        ..
                    })
                ),
                "{refused:?}"
            );
        }
        store
            .read(|c| {
                assert_eq!(get(c, "t", "")?, Some(row(2, None)));
                assert_eq!(get(c, "t", "gone")?, Some(row(3, Some(5))));
                assert_eq!(get(c, "t", "nope")?, None);
                assert_eq!(list_named(c, "t", None, 10)?, ["a", "b"]);
                assert_eq!(list_named(c, "t", None, 1)?, ["a"]);
                assert_eq!(list_named(c, "t", Some("a"), 10)?, ["b"]);
                assert!(list_named(c, "nobody", None, 10)?.is_empty());
                Ok(())
            })
            .unwrap();
        assert!(store.transact(|c| remove(c, "t", "gone")).await.unwrap());
        assert_eq!(store.read(|c| get(c, "t", "gone")).unwrap(), None);
    }
}
