//! Thing types: create (idempotent), read, update properties, deprecate / undo, delete
//! (deprecated and unused only), list by name prefix.
//!
//! `properties` is the ThingTypeProperties JSON object as the API received it
//! (`thingTypeDescription`, `searchableAttributes`, `mqtt5Configuration`); the API validates
//! it, the store keeps and compares it.

use rusqlite::{Connection, OptionalExtension as _, params};
use serde_json::Value;

use super::page::Page;
use super::refusal::{codes, reject};
use crate::StoreError;

/// A thing type as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ThingType {
    /// The name (primary key).
    pub name: String,
    /// Its UUID.
    pub id: String,
    /// The ThingTypeProperties object (`{}` if none were given).
    pub properties: Value,
    /// Whether it is deprecated.
    pub deprecated: bool,
    /// When it was last deprecated, Unix seconds.
    pub deprecation_date: Option<i64>,
    /// When it was created, Unix seconds.
    pub creation_date: i64,
}

const COLUMNS: &str =
    "thing_type_name, thing_type_id, properties, deprecated, deprecation_date, creation_date";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(ThingType, String)> {
    Ok((
        ThingType {
            name: row.get(0)?,
            id: row.get(1)?,
            properties: Value::Null,
            deprecated: row.get(3)?,
            deprecation_date: row.get(4)?,
            creation_date: row.get(5)?,
        },
        row.get(2)?,
    ))
}

fn finish((mut thing_type, properties): (ThingType, String)) -> Result<ThingType, StoreError> {
    thing_type.properties = serde_json::from_str(&properties)
        .map_err(|e| StoreError::Corrupt(format!("thing type properties: {e}")))?;
    Ok(thing_type)
}

pub(crate) fn not_found(name: &str) -> StoreError {
    reject(
        codes::NOT_FOUND,
        format!("Thing Type {name} cannot be found."),
    )
}

/// One thing type by name.
pub fn get(conn: &Connection, name: &str) -> Result<Option<ThingType>, StoreError> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM thing_types WHERE thing_type_name = ?1"
        ))?
        .query_row([name], from_row)
        .optional()?;
    row.map(finish).transpose()
}

/// One thing type by name, or `ResourceNotFoundException`.
pub fn require(conn: &Connection, name: &str) -> Result<ThingType, StoreError> {
    get(conn, name)?.ok_or_else(|| not_found(name))
}

/// Whether two property objects describe the same type: `searchableAttributes` compare as
/// sets, absent and empty members are equal.
pub fn same_properties(a: &Value, b: &Value) -> bool {
    normalize(a) == normalize(b)
}

/// The properties with absent and empty members left out, and `searchableAttributes` sorted
/// (for comparing).
fn normalize(properties: &Value) -> Value {
    normalized(properties, true)
}

/// The properties with absent and empty members left out (for storing).
fn without_empty_members(properties: &Value) -> Value {
    normalized(properties, false)
}

fn normalized(properties: &Value, sort: bool) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(object) = properties.as_object() {
        for (key, value) in object {
            let value = match (key.as_str(), value) {
                ("searchableAttributes", Value::Array(items)) if sort => {
                    let mut items: Vec<String> = items
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect();
                    items.sort();
                    items.dedup();
                    Value::from(items)
                }
                _ => value.clone(),
            };
            let empty = match &value {
                Value::Null => true,
                Value::String(s) => s.is_empty(),
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                _ => false,
            };
            if !empty {
                out.insert(key.clone(), value);
            }
        }
    }
    Value::Object(out)
}

/// CreateThingType. Returns the type and whether it was created now; an existing type with
/// the same properties is returned unchanged, one with different properties is
/// `ResourceAlreadyExistsException`.
pub fn create(
    conn: &Connection,
    name: &str,
    properties: Value,
    now: i64,
) -> Result<(ThingType, bool), StoreError> {
    if let Some(existing) = get(conn, name)? {
        if same_properties(&existing.properties, &properties) {
            return Ok((existing, false));
        }
        return Err(StoreError::Rejected {
            code: codes::ALREADY_EXISTS,
            message: format!("Thing Type {name} already exists with different properties"),
            resource_id: Some(existing.id),
        });
    }
    let thing_type = ThingType {
        name: name.to_owned(),
        id: super::things::uuid_v4(),
        properties: without_empty_members(&properties),
        deprecated: false,
        deprecation_date: None,
        creation_date: now,
    };
    conn.prepare_cached(&format!(
        "INSERT INTO thing_types ({COLUMNS}) VALUES (?1, ?2, ?3, 0, NULL, ?4)"
    ))?
    .execute(params![
        thing_type.name,
        thing_type.id,
        thing_type.properties.to_string(),
        thing_type.creation_date
    ])?;
    Ok((thing_type, true))
}

/// UpdateThingType: each member present in `properties` replaces the stored one.
pub fn update(conn: &Connection, name: &str, properties: Value) -> Result<ThingType, StoreError> {
    let mut thing_type = require(conn, name)?;
    let mut merged = thing_type
        .properties
        .as_object()
        .cloned()
        .unwrap_or_default();
    if let Some(changes) = properties.as_object() {
        for (key, value) in changes {
            merged.insert(key.clone(), value.clone());
        }
    }
    thing_type.properties = without_empty_members(&Value::Object(merged));
    conn.prepare_cached("UPDATE thing_types SET properties = ?2 WHERE thing_type_name = ?1")?
        .execute(params![name, thing_type.properties.to_string()])?;
    Ok(thing_type)
}

/// DeprecateThingType, or undo it.
pub fn deprecate(conn: &Connection, name: &str, undo: bool, now: i64) -> Result<(), StoreError> {
    require(conn, name)?;
    if undo {
        conn.prepare_cached(
            "UPDATE thing_types SET deprecated = 0, deprecation_date = NULL WHERE thing_type_name = ?1",
        )?
        .execute([name])?;
    } else {
        conn.prepare_cached(
            "UPDATE thing_types SET deprecated = 1, deprecation_date = COALESCE(deprecation_date, ?2) WHERE thing_type_name = ?1",
        )?
        .execute(params![name, now])?;
    }
    Ok(())
}

/// DeleteThingType: the type must exist, be deprecated, and no thing may still have it
/// (AWS's lifecycle: deprecate, move the things off it, delete). thingd does not make the
/// caller wait five minutes after deprecating. Returns the deleted type.
pub fn delete(conn: &Connection, name: &str) -> Result<ThingType, StoreError> {
    let thing_type = require(conn, name)?;
    if !thing_type.deprecated {
        return Err(reject(
            codes::INVALID_REQUEST,
            format!("Cannot delete thing type : {name}. Deprecate the thing type first"),
        ));
    }
    let users: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM things WHERE thing_type_name = ?1")?
        .query_row([name], |r| r.get(0))?;
    if users > 0 {
        return Err(reject(
            codes::INVALID_REQUEST,
            format!(
                "Cannot delete thing type : {name}. It is still associated with {users} thing(s)"
            ),
        ));
    }
    conn.prepare_cached("DELETE FROM thing_types WHERE thing_type_name = ?1")?
        .execute([name])?;
    Ok(thing_type)
}

/// ListThingTypes: types in name order whose name starts with `prefix` (if given).
pub fn list(
    conn: &Connection,
    prefix: Option<&str>,
    offset: usize,
    limit: usize,
) -> Result<Page<ThingType>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM thing_types
         WHERE ?1 IS NULL OR substr(thing_type_name, 1, length(?1)) = ?1
         ORDER BY thing_type_name LIMIT ?2 OFFSET ?3"
    ))?;
    let rows = stmt
        .query_map(
            params![prefix, limit.saturating_add(1) as i64, offset as i64],
            from_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let items = rows
        .into_iter()
        .map(finish)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::cut(items, limit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::refusal::{code_of, test_store};
    use serde_json::json;

    #[tokio::test]
    async fn create_compares_properties_with_searchable_attributes_as_a_set() {
        let (_dir, store) = test_store();
        let props = json!({"thingTypeDescription": "d", "searchableAttributes": ["a", "b"]});
        let (first, created) = store
            .transact({
                let p = props.clone();
                move |c| create(c, "sensor", p, 1)
            })
            .await
            .unwrap();
        assert!(created);
        let (again, created) = store
            .transact(|c| {
                create(
                    c,
                    "sensor",
                    json!({"searchableAttributes": ["b", "a"], "thingTypeDescription": "d"}),
                    2,
                )
            })
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(again.id, first.id);
        let conflict = store
            .transact(|c| create(c, "sensor", json!({"thingTypeDescription": "x"}), 3))
            .await;
        assert_eq!(code_of(conflict), "ResourceAlreadyExistsException");
    }

    #[tokio::test]
    async fn delete_needs_deprecation_and_no_things() {
        let (_dir, store) = test_store();
        store
            .transact(|c| create(c, "sensor", json!({}), 1))
            .await
            .unwrap();
        let not_deprecated = store.transact(|c| delete(c, "sensor")).await;
        assert_eq!(code_of(not_deprecated), "InvalidRequestException");
        store
            .transact(|c| {
                deprecate(c, "sensor", false, 5)?;
                c.execute(
                    "INSERT INTO things (thing_name, thing_id, thing_type_name, attributes, version, created_at)
                     VALUES ('t', 'id', 'sensor', '{}', 1, 1)",
                    [],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let deprecated = store.read(|c| require(c, "sensor")).unwrap();
        assert!(deprecated.deprecated);
        assert_eq!(deprecated.deprecation_date, Some(5));
        let in_use = store.transact(|c| delete(c, "sensor")).await;
        assert_eq!(code_of(in_use), "InvalidRequestException");
        store
            .transact(|c| {
                c.execute("DELETE FROM things", [])?;
                delete(c, "sensor")
            })
            .await
            .unwrap();
        assert_eq!(
            code_of(store.transact(|c| delete(c, "sensor")).await),
            "ResourceNotFoundException"
        );
    }

    #[tokio::test]
    async fn update_replaces_given_members_and_list_filters_by_prefix() {
        let (_dir, store) = test_store();
        store
            .transact(|c| {
                create(c, "lamp-a", json!({"thingTypeDescription": "old"}), 1)?;
                create(c, "lamp-b", json!({}), 1)?;
                create(c, "switch", json!({}), 1)?;
                update(c, "lamp-a", json!({"searchableAttributes": ["x"]}))
            })
            .await
            .unwrap();
        let lamp = store.read(|c| require(c, "lamp-a")).unwrap();
        assert_eq!(
            lamp.properties,
            json!({"thingTypeDescription": "old", "searchableAttributes": ["x"]})
        );
        let page = store.read(|c| list(c, Some("lamp"), 0, 1)).unwrap();
        assert_eq!(page.items.len(), 1);
        assert!(page.more);
        let page = store.read(|c| list(c, Some("lamp"), 1, 1)).unwrap();
        assert_eq!(page.items[0].name, "lamp-b");
        assert!(!page.more);
        assert_eq!(store.read(|c| list(c, None, 0, 10)).unwrap().items.len(), 3);
    }
}
