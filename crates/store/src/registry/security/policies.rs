//! Policies and their versions. Documents are validated by the caller (thingd-policy)
//! before they get here; this module keeps AWS's version rules: ids "1", "2", ... never
//! reused, at most [`MAX_VERSIONS`], the default version cannot be deleted, a policy with
//! targets or non-default versions cannot be deleted.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{codes, not_found, rejected};
use crate::{StoreError, bump_registry_revision};

/// Most versions one policy may have.
pub const MAX_VERSIONS: i64 = 5;

/// A policy with its default version's document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Name.
    pub name: String,
    /// The default version id.
    pub default_version: i64,
    /// The default version's document.
    pub document: String,
    /// Bumped on every change (`generationId`).
    pub generation: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// One version of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Version id.
    pub version: i64,
    /// The document.
    pub document: String,
    /// Whether it is the default version.
    pub is_default: bool,
    /// Unix seconds.
    pub created_at: i64,
}

/// CreatePolicy: the policy with version 1 as default. A taken name is
/// ResourceAlreadyExistsException (with the name as `resource_id`).
pub fn create(
    conn: &Connection,
    name: &str,
    document: &str,
    now: i64,
) -> Result<Policy, StoreError> {
    if get(conn, name)?.is_some() {
        return Err(StoreError::Rejected {
            code: codes::ALREADY_EXISTS,
            message: format!("Policy cannot be created - name already exists (name={name})"),
            resource_id: Some(name.to_owned()),
        });
    }
    conn.prepare_cached(
        "INSERT INTO policies (name, default_version, next_version, generation, created_at, updated_at)
         VALUES (?1, 1, 2, 1, ?2, ?2)",
    )?
    .execute(params![name, now])?;
    conn.prepare_cached(
        "INSERT INTO policy_versions (policy_name, version, document, created_at) VALUES (?1, 1, ?2, ?3)",
    )?
    .execute(params![name, document, now])?;
    bump_registry_revision(conn)?;
    get(conn, name)?.ok_or_else(|| StoreError::Corrupt(format!("policy {name} vanished")))
}

/// One policy, with its default document.
pub fn get(conn: &Connection, name: &str) -> Result<Option<Policy>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT p.name, p.default_version, v.document, p.generation, p.created_at, p.updated_at
             FROM policies p JOIN policy_versions v
               ON v.policy_name = p.name AND v.version = p.default_version
             WHERE p.name = ?1",
        )?
        .query_row([name], |r| {
            Ok(Policy {
                name: r.get(0)?,
                default_version: r.get(1)?,
                document: r.get(2)?,
                generation: r.get(3)?,
                created_at: r.get(4)?,
                updated_at: r.get(5)?,
            })
        })
        .optional()?)
}

fn require(conn: &Connection, name: &str) -> Result<Policy, StoreError> {
    get(conn, name)?.ok_or_else(|| not_found(format!("Policy not found (name={name})")))
}

/// Every policy name, in name order (descending when not `ascending`).
pub fn list(conn: &Connection, ascending: bool) -> Result<Vec<String>, StoreError> {
    let order = if ascending { "ASC" } else { "DESC" };
    let mut stmt =
        conn.prepare_cached(&format!("SELECT name FROM policies ORDER BY name {order}"))?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// DeletePolicy: refused (DeleteConflictException) while the policy has targets or versions
/// other than the default.
pub fn delete(conn: &Connection, name: &str) -> Result<(), StoreError> {
    require(conn, name)?;
    let targets: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM policy_targets WHERE policy_name = ?1")?
        .query_row([name], |r| r.get(0))?;
    if targets > 0 {
        return Err(rejected(
            codes::DELETE_CONFLICT,
            format!(
                "The policy cannot be deleted as the policy is attached to one or more principals (name={name})"
            ),
        ));
    }
    let versions: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM policy_versions WHERE policy_name = ?1")?
        .query_row([name], |r| r.get(0))?;
    if versions > 1 {
        return Err(rejected(
            codes::DELETE_CONFLICT,
            format!("Cannot delete the policy because it has non-default versions (name={name})"),
        ));
    }
    conn.prepare_cached("DELETE FROM policy_versions WHERE policy_name = ?1")?
        .execute([name])?;
    conn.prepare_cached("DELETE FROM policies WHERE name = ?1")?
        .execute([name])?;
    bump_registry_revision(conn)?;
    Ok(())
}

/// CreatePolicyVersion: the next version id; the default if `set_default`. A policy that
/// already has [`MAX_VERSIONS`] is VersionsLimitExceededException.
pub fn create_version(
    conn: &Connection,
    name: &str,
    document: &str,
    set_default: bool,
    now: i64,
) -> Result<Version, StoreError> {
    require(conn, name)?;
    let (count, next): (i64, i64) = conn
        .prepare_cached(
            "SELECT (SELECT COUNT(*) FROM policy_versions WHERE policy_name = ?1), next_version
             FROM policies WHERE name = ?1",
        )?
        .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if count >= MAX_VERSIONS {
        return Err(rejected(
            codes::VERSIONS_LIMIT,
            format!(
                "The policy {name} already has the maximum number of versions ({MAX_VERSIONS})"
            ),
        ));
    }
    conn.prepare_cached(
        "INSERT INTO policy_versions (policy_name, version, document, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![name, next, document, now])?;
    conn.prepare_cached(
        "UPDATE policies
         SET next_version = ?2 + 1, updated_at = ?3, generation = generation + 1,
             default_version = CASE WHEN ?4 THEN ?2 ELSE default_version END
         WHERE name = ?1",
    )?
    .execute(params![name, next, now, set_default])?;
    bump_registry_revision(conn)?;
    Ok(Version {
        version: next,
        document: document.to_owned(),
        is_default: set_default,
        created_at: now,
    })
}

/// One version; `None` if the policy or the version does not exist.
pub fn get_version(
    conn: &Connection,
    name: &str,
    version: i64,
) -> Result<Option<(Policy, Version)>, StoreError> {
    let Some(policy) = get(conn, name)? else {
        return Ok(None);
    };
    let found = conn
        .prepare_cached(
            "SELECT version, document, created_at FROM policy_versions
             WHERE policy_name = ?1 AND version = ?2",
        )?
        .query_row(params![name, version], |r| {
            Ok(Version {
                version: r.get(0)?,
                document: r.get(1)?,
                is_default: false,
                created_at: r.get(2)?,
            })
        })
        .optional()?;
    Ok(found.map(|mut v| {
        v.is_default = v.version == policy.default_version;
        (policy, v)
    }))
}

/// Every version of a policy, newest first; `None` if there is no such policy.
pub fn list_versions(conn: &Connection, name: &str) -> Result<Option<Vec<Version>>, StoreError> {
    let Some(policy) = get(conn, name)? else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT version, document, created_at FROM policy_versions
         WHERE policy_name = ?1 ORDER BY version DESC",
    )?;
    let rows = stmt.query_map([name], |r| {
        let version: i64 = r.get(0)?;
        Ok(Version {
            version,
            document: r.get(1)?,
            is_default: version == policy.default_version,
            created_at: r.get(2)?,
        })
    })?;
    Ok(Some(rows.collect::<Result<_, _>>()?))
}

fn version_not_found(name: &str, version: i64) -> StoreError {
    not_found(format!(
        "Policy version not found (name={name}, versionId={version})"
    ))
}

/// SetDefaultPolicyVersion.
pub fn set_default(
    conn: &Connection,
    name: &str,
    version: i64,
    now: i64,
) -> Result<(), StoreError> {
    let (policy, _) =
        get_version(conn, name, version)?.ok_or_else(|| version_not_found(name, version))?;
    if policy.default_version == version {
        return Ok(());
    }
    conn.prepare_cached(
        "UPDATE policies SET default_version = ?2, updated_at = ?3, generation = generation + 1
         WHERE name = ?1",
    )?
    .execute(params![name, version, now])?;
    bump_registry_revision(conn)?;
    Ok(())
}

/// DeletePolicyVersion: the default version cannot be deleted (InvalidRequestException).
pub fn delete_version(conn: &Connection, name: &str, version: i64) -> Result<(), StoreError> {
    let (_, v) =
        get_version(conn, name, version)?.ok_or_else(|| version_not_found(name, version))?;
    if v.is_default {
        return Err(rejected(
            codes::INVALID_REQUEST,
            "Cannot delete the default version of a policy",
        ));
    }
    conn.prepare_cached("DELETE FROM policy_versions WHERE policy_name = ?1 AND version = ?2")?
        .execute(params![name, version])?;
    bump_registry_revision(conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_db;
    use super::*;

    fn code(err: StoreError) -> &'static str {
        match err {
            StoreError::Rejected { code, .. } => code,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn versions_default_limits_and_delete_guards() {
        let (_dir, conn) = test_db::open();
        let p = create(&conn, "p", "d1", 1).unwrap();
        assert_eq!((p.default_version, p.document.as_str()), (1, "d1"));
        assert_eq!(
            code(create(&conn, "p", "x", 1).unwrap_err()),
            codes::ALREADY_EXISTS
        );
        let v2 = create_version(&conn, "p", "d2", true, 2).unwrap();
        assert_eq!((v2.version, v2.is_default), (2, true));
        assert_eq!(get(&conn, "p").unwrap().unwrap().document, "d2");
        for n in 3..=5 {
            create_version(&conn, "p", &format!("d{n}"), false, 3).unwrap();
        }
        assert_eq!(
            code(create_version(&conn, "p", "d6", false, 4).unwrap_err()),
            codes::VERSIONS_LIMIT
        );
        assert_eq!(
            code(delete_version(&conn, "p", 2).unwrap_err()),
            codes::INVALID_REQUEST
        );
        delete_version(&conn, "p", 5).unwrap();
        // Ids are not reused.
        assert_eq!(
            create_version(&conn, "p", "d6", false, 5).unwrap().version,
            6
        );
        assert_eq!(
            code(delete(&conn, "p").unwrap_err()),
            codes::DELETE_CONFLICT
        );
        set_default(&conn, "p", 6, 6).unwrap();
        assert_eq!(
            code(set_default(&conn, "p", 5, 6).unwrap_err()),
            codes::NOT_FOUND
        );
        let versions = list_versions(&conn, "p").unwrap().unwrap();
        assert_eq!(
            versions
                .iter()
                .map(|v| (v.version, v.is_default))
                .collect::<Vec<_>>(),
            [(6, true), (4, false), (3, false), (2, false), (1, false)]
        );
        for v in [1, 2, 3, 4] {
            delete_version(&conn, "p", v).unwrap();
        }
        conn.execute("INSERT INTO policy_targets VALUES ('p', 't', 1)", [])
            .unwrap();
        assert_eq!(
            code(delete(&conn, "p").unwrap_err()),
            codes::DELETE_CONFLICT
        );
        conn.execute("DELETE FROM policy_targets", []).unwrap();
        delete(&conn, "p").unwrap();
        assert!(get(&conn, "p").unwrap().is_none());
        assert!(list_versions(&conn, "p").unwrap().is_none());
        assert_eq!(list(&conn, true).unwrap(), Vec::<String>::new());
    }
}
