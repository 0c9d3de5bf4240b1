//! Thing principals (AttachThingPrincipal and friends) and the thing facts policy
//! enforcement needs.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{codes, not_found, rejected};
use crate::{StoreError, bump_registry_revision};

/// `EXCLUSIVE_THING`: the principal may be attached to this thing only.
pub const EXCLUSIVE: &str = "EXCLUSIVE_THING";
/// `NON_EXCLUSIVE_THING`: the default.
pub const NON_EXCLUSIVE: &str = "NON_EXCLUSIVE_THING";

/// Whether a thing exists (in the `things` table of the things part of the registry).
pub fn thing_exists(conn: &Connection, thing_name: &str) -> Result<bool, StoreError> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM things WHERE thing_name = ?1")?
        .query_row([thing_name], |r| r.get(0))?;
    Ok(n > 0)
}

fn require_thing(conn: &Connection, thing_name: &str) -> Result<(), StoreError> {
    if !thing_exists(conn, thing_name)? {
        return Err(not_found(format!("Thing {thing_name} cannot be found.")));
    }
    Ok(())
}

/// AttachThingPrincipal. The thing must exist (the caller checks the principal). Attaching
/// again only updates the type. A principal attached exclusively to another thing, or an
/// exclusive attachment of a principal that has other things, is InvalidRequestException.
pub fn attach(
    conn: &Connection,
    thing_name: &str,
    principal: &str,
    principal_type: &str,
    now: i64,
) -> Result<(), StoreError> {
    require_thing(conn, thing_name)?;
    let others: Vec<(String, Option<String>)> = {
        let mut stmt = conn.prepare_cached(
            "SELECT thing_name, principal_type FROM thing_principals
             WHERE principal = ?1 AND thing_name <> ?2",
        )?;
        stmt.query_map(params![principal, thing_name], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?
    };
    if let Some((other, _)) = others.iter().find(|(_, t)| t.as_deref() == Some(EXCLUSIVE)) {
        return Err(rejected(
            codes::INVALID_REQUEST,
            format!("Principal {principal} is exclusively attached to thing {other}"),
        ));
    }
    if principal_type == EXCLUSIVE && !others.is_empty() {
        return Err(rejected(
            codes::INVALID_REQUEST,
            format!(
                "Principal {principal} is attached to other things and cannot be attached exclusively to {thing_name}"
            ),
        ));
    }
    conn.prepare_cached(
        "INSERT INTO thing_principals (thing_name, principal, principal_type, created_at)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (thing_name, principal) DO UPDATE SET principal_type = excluded.principal_type",
    )?
    .execute(params![thing_name, principal, principal_type, now])?;
    bump_registry_revision(conn)?;
    Ok(())
}

/// DetachThingPrincipal. The thing must exist; detaching what is not attached changes
/// nothing.
pub fn detach(conn: &Connection, thing_name: &str, principal: &str) -> Result<(), StoreError> {
    require_thing(conn, thing_name)?;
    let n = conn
        .prepare_cached("DELETE FROM thing_principals WHERE thing_name = ?1 AND principal = ?2")?
        .execute(params![thing_name, principal])?;
    if n > 0 {
        bump_registry_revision(conn)?;
    }
    Ok(())
}

/// The principals of a thing with their types, by attachment time; `None` if there is no
/// such thing.
pub fn principals_of_thing(
    conn: &Connection,
    thing_name: &str,
) -> Result<Option<Vec<(String, String)>>, StoreError> {
    if !thing_exists(conn, thing_name)? {
        return Ok(None);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT principal, COALESCE(principal_type, 'NON_EXCLUSIVE_THING') FROM thing_principals
         WHERE thing_name = ?1 ORDER BY created_at, rowid",
    )?;
    let rows = stmt.query_map([thing_name], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(Some(rows.collect::<Result<_, _>>()?))
}

/// The things of a principal with the attachment types, by thing name.
pub fn things_of_principal(
    conn: &Connection,
    principal: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT thing_name, COALESCE(principal_type, 'NON_EXCLUSIVE_THING') FROM thing_principals
         WHERE principal = ?1 ORDER BY thing_name",
    )?;
    let rows = stmt.query_map([principal], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// For policy enforcement: the names of the things `principal_arn` is attached to, by name.
pub fn things_for_principal(
    conn: &Connection,
    principal_arn: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(things_of_principal(conn, principal_arn)?
        .into_iter()
        .map(|(thing, _)| thing)
        .collect())
}

/// A thing's type name (if it has one) and attributes.
pub type ThingFacts = (Option<String>, BTreeMap<String, String>);

/// For policy enforcement: a thing's type name and attributes, `None` if there is no such
/// thing. Reads `things.thing_type_name` and `things.attributes` (a JSON object of strings).
pub fn thing_for_name(
    conn: &Connection,
    thing_name: &str,
) -> Result<Option<ThingFacts>, StoreError> {
    let row: Option<(Option<String>, Option<String>)> = conn
        .prepare_cached("SELECT thing_type_name, attributes FROM things WHERE thing_name = ?1")?
        .query_row([thing_name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((type_name, attributes)) = row else {
        return Ok(None);
    };
    let mut map = BTreeMap::new();
    if let Some(text) = attributes.filter(|t| !t.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("attributes of thing {thing_name}: {e}")))?;
        if let serde_json::Value::Object(object) = value {
            for (k, v) in object {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                map.insert(k, v);
            }
        }
    }
    Ok(Some((type_name, map)))
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
    fn attach_detach_exclusive_and_reads() {
        let (_dir, conn) = test_db::open();
        conn.execute_batch(
            "INSERT INTO thing_types (thing_type_name, thing_type_id, creation_date) VALUES ('sensor', 'ty', 1);
             INSERT INTO things (thing_name, thing_id, thing_type_name, attributes, version, created_at) VALUES
               ('t1', 'i1', 'sensor', '{\"room\":\"k\"}', 1, 1), ('t2', 'i2', NULL, '{}', 1, 1),
               ('t3', 'i3', NULL, '{}', 1, 1);",
        )
        .unwrap();
        assert_eq!(
            code(attach(&conn, "nope", "p", NON_EXCLUSIVE, 1).unwrap_err()),
            codes::NOT_FOUND
        );
        attach(&conn, "t1", "p", NON_EXCLUSIVE, 1).unwrap();
        attach(&conn, "t2", "p", NON_EXCLUSIVE, 2).unwrap();
        attach(&conn, "t2", "p", NON_EXCLUSIVE, 2).unwrap();
        assert_eq!(things_for_principal(&conn, "p").unwrap(), ["t1", "t2"]);
        assert_eq!(
            code(attach(&conn, "t3", "p", EXCLUSIVE, 3).unwrap_err()),
            codes::INVALID_REQUEST
        );
        attach(&conn, "t3", "q", EXCLUSIVE, 3).unwrap();
        assert_eq!(
            code(attach(&conn, "t1", "q", NON_EXCLUSIVE, 3).unwrap_err()),
            codes::INVALID_REQUEST
        );
        assert_eq!(
            principals_of_thing(&conn, "t3").unwrap().unwrap(),
            [("q".to_owned(), EXCLUSIVE.to_owned())]
        );
        assert_eq!(principals_of_thing(&conn, "zz").unwrap(), None);
        let rev = test_db::revision(&conn);
        detach(&conn, "t1", "p").unwrap();
        detach(&conn, "t1", "p").unwrap();
        assert_eq!(test_db::revision(&conn), rev + 1);
        assert_eq!(things_for_principal(&conn, "p").unwrap(), ["t2"]);
        let (ty, attrs) = thing_for_name(&conn, "t1").unwrap().unwrap();
        assert_eq!(ty.as_deref(), Some("sensor"));
        assert_eq!(attrs.get("room").map(String::as_str), Some("k"));
        assert_eq!(
            thing_for_name(&conn, "t2").unwrap(),
            Some((None, BTreeMap::new()))
        );
        assert_eq!(thing_for_name(&conn, "zz").unwrap(), None);
    }
}
