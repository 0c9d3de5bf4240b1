//! Things: create (idempotent), read, update with optimistic versions, delete, list with
//! attribute and type filters.
//!
//! Writing functions are meant to run inside [`crate::Store::transact`]: each reads, checks
//! and writes in one closure, and a refusal ([`StoreError::Rejected`]) rolls back whatever
//! it wrote. Every change to a thing's existence, attributes or type bumps the registry
//! revision, because authorization reads them.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension as _, params};

use super::page::Page;
use super::refusal::{codes, reject};
use crate::{StoreError, bump_registry_revision};

/// Attribute name → value.
pub type Attributes = BTreeMap<String, String>;

/// A thing as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thing {
    /// The thing name (primary key).
    pub name: String,
    /// Its UUID.
    pub id: String,
    /// Its thing type, if any.
    pub thing_type_name: Option<String>,
    /// Its attributes.
    pub attributes: Attributes,
    /// Its billing group, if any.
    pub billing_group_name: Option<String>,
    /// Starts at 1; every update adds one.
    pub version: i64,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

/// What CreateThing asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewThing {
    /// The thing name (already validated).
    pub name: String,
    /// The thing type; it must exist and not be deprecated.
    pub thing_type_name: Option<String>,
    /// Initial attributes.
    pub attributes: Attributes,
    /// Billing group (thingd has none, so any name is refused).
    pub billing_group_name: Option<String>,
}

/// What happens to a thing's type in an update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TypeChange {
    /// Leave it.
    #[default]
    Keep,
    /// Set it to this (existing, not deprecated) type.
    Set(String),
    /// Remove it.
    Remove,
}

/// What UpdateThing asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThingUpdate {
    /// The type change.
    pub thing_type: TypeChange,
    /// New attributes, and whether to merge them into the current ones (an empty value then
    /// removes that attribute) rather than replace them all.
    pub attributes: Option<(Attributes, bool)>,
    /// If set, the update applies only if the thing is at this version.
    pub expected_version: Option<i64>,
}

/// ListThings filters (all optional, combined with AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThingFilter {
    /// Things having this attribute...
    pub attribute_name: Option<String>,
    /// ...with this value (exact, or a prefix when `value_is_prefix`).
    pub attribute_value: Option<String>,
    /// Match `attribute_value` as a prefix.
    pub value_is_prefix: bool,
    /// Things of this type.
    pub thing_type_name: Option<String>,
}

const COLUMNS: &str =
    "thing_name, thing_id, thing_type_name, attributes, billing_group_name, version, created_at";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Thing, String)> {
    Ok((
        Thing {
            name: row.get(0)?,
            id: row.get(1)?,
            thing_type_name: row.get(2)?,
            attributes: Attributes::new(),
            billing_group_name: row.get(4)?,
            version: row.get(5)?,
            created_at: row.get(6)?,
        },
        row.get(3)?,
    ))
}

fn finish((mut thing, attributes): (Thing, String)) -> Result<Thing, StoreError> {
    thing.attributes = parse_attributes(&attributes)?;
    Ok(thing)
}

/// Parses an attribute map stored as JSON text.
pub(crate) fn parse_attributes(text: &str) -> Result<Attributes, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("attributes: {e}")))
}

/// Serializes an attribute map for storage.
pub(crate) fn attributes_json(attributes: &Attributes) -> String {
    serde_json::to_string(attributes).unwrap_or_else(|_| "{}".to_owned())
}

/// Applies an attribute payload to `current`: replace everything, or merge (an empty value
/// removes that attribute). Empty values are never stored.
pub(crate) fn apply_attributes(current: &mut Attributes, payload: Attributes, merge: bool) {
    if !merge {
        current.clear();
    }
    for (name, value) in payload {
        if value.is_empty() {
            current.remove(&name);
        } else {
            current.insert(name, value);
        }
    }
}

fn not_found(name: &str) -> StoreError {
    reject(codes::NOT_FOUND, format!("Thing {name} cannot be found."))
}

/// One thing by name.
pub fn get(conn: &Connection, name: &str) -> Result<Option<Thing>, StoreError> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM things WHERE thing_name = ?1"
        ))?
        .query_row([name], from_row)
        .optional()?;
    row.map(finish).transpose()
}

/// One thing by name, or `ResourceNotFoundException`.
pub fn require(conn: &Connection, name: &str) -> Result<Thing, StoreError> {
    get(conn, name)?.ok_or_else(|| not_found(name))
}

/// Checks that a thing type exists and is not deprecated (for a thing to take it).
fn check_assignable_type(
    conn: &Connection,
    type_name: &str,
    creating: bool,
) -> Result<(), StoreError> {
    let deprecated: Option<bool> = conn
        .prepare_cached("SELECT deprecated FROM thing_types WHERE thing_type_name = ?1")?
        .query_row([type_name], |r| r.get(0))
        .optional()?;
    match deprecated {
        None => Err(super::thing_types::not_found(type_name)),
        // AWS's wording, typo included.
        Some(true) if creating => Err(reject(
            codes::INVALID_REQUEST,
            format!("Can not create new thing with depreated thing type:{type_name}"),
        )),
        Some(true) => Err(reject(
            codes::INVALID_REQUEST,
            format!("Can not update thing with deprecated thing type:{type_name}"),
        )),
        Some(false) => Ok(()),
    }
}

/// CreateThing. Returns the thing and whether it was created now (`false`: an identical
/// thing already existed and is returned unchanged). A thing with the same name but a
/// different type, attributes or billing group is `ResourceAlreadyExistsException` carrying
/// the existing thing's id.
pub fn create(conn: &Connection, new: NewThing, now: i64) -> Result<(Thing, bool), StoreError> {
    let wanted_type = new.thing_type_name.clone().filter(|t| !t.is_empty());
    let wanted_billing = new.billing_group_name.clone().filter(|b| !b.is_empty());
    if let Some(existing) = get(conn, &new.name)? {
        let same = existing.thing_type_name == wanted_type
            && existing.attributes == new.attributes
            && existing.billing_group_name == wanted_billing;
        if same {
            return Ok((existing, false));
        }
        return Err(StoreError::Rejected {
            code: codes::ALREADY_EXISTS,
            message: format!(
                "Thing {} already exists with different attributes",
                new.name
            ),
            resource_id: Some(existing.id),
        });
    }
    if let Some(type_name) = &wanted_type {
        check_assignable_type(conn, type_name, true)?;
    }
    if let Some(billing) = &wanted_billing {
        return Err(reject(
            codes::NOT_FOUND,
            format!("Billing group {billing} cannot be found."),
        ));
    }
    let mut attributes = Attributes::new();
    apply_attributes(&mut attributes, new.attributes, true);
    let thing = Thing {
        name: new.name,
        id: uuid_v4(),
        thing_type_name: wanted_type,
        attributes,
        billing_group_name: wanted_billing,
        version: 1,
        created_at: now,
    };
    conn.prepare_cached(&format!(
        "INSERT INTO things ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?
    .execute(params![
        thing.name,
        thing.id,
        thing.thing_type_name,
        attributes_json(&thing.attributes),
        thing.billing_group_name,
        thing.version,
        thing.created_at
    ])?;
    bump_registry_revision(conn)?;
    Ok((thing, true))
}

fn version_conflict(name: &str) -> StoreError {
    reject(
        codes::VERSION_CONFLICT,
        format!("The version for thing {name} does not match the expected version."),
    )
}

/// UpdateThing: applies `update` and adds one to the version. Returns the updated thing.
pub fn update(conn: &Connection, name: &str, update: ThingUpdate) -> Result<Thing, StoreError> {
    let mut thing = require(conn, name)?;
    if let Some(expected) = update.expected_version
        && expected != thing.version
    {
        return Err(version_conflict(name));
    }
    match update.thing_type {
        TypeChange::Keep => {}
        TypeChange::Remove => thing.thing_type_name = None,
        TypeChange::Set(type_name) => {
            if thing.thing_type_name.as_deref() != Some(type_name.as_str()) {
                check_assignable_type(conn, &type_name, false)?;
            }
            thing.thing_type_name = Some(type_name);
        }
    }
    if let Some((attributes, merge)) = update.attributes {
        apply_attributes(&mut thing.attributes, attributes, merge);
    }
    thing.version += 1;
    conn.prepare_cached(
        "UPDATE things SET thing_type_name = ?2, attributes = ?3, version = ?4 WHERE thing_name = ?1",
    )?
    .execute(params![
        thing.name,
        thing.thing_type_name,
        attributes_json(&thing.attributes),
        thing.version
    ])?;
    bump_registry_revision(conn)?;
    Ok(thing)
}

/// The number of principals attached to a thing (the `thing_principals` table).
fn attached_principals(conn: &Connection, name: &str) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FROM thing_principals WHERE thing_name = ?1")?
        .query_row([name], |r| r.get(0))?)
}

/// DeleteThing. Deleting a thing that does not exist succeeds (returns `false`). Refused
/// while principals are attached, or if `expected_version` does not match. The thing's group
/// memberships go with it.
pub fn delete(
    conn: &Connection,
    name: &str,
    expected_version: Option<i64>,
) -> Result<bool, StoreError> {
    let Some(thing) = get(conn, name)? else {
        return Ok(false);
    };
    if let Some(expected) = expected_version
        && expected != thing.version
    {
        return Err(version_conflict(name));
    }
    if attached_principals(conn, name)? > 0 {
        return Err(reject(
            codes::INVALID_REQUEST,
            format!("Cannot delete. Thing {name} is still attached to one or more principals"),
        ));
    }
    conn.prepare_cached("DELETE FROM thing_group_members WHERE thing_name = ?1")?
        .execute([name])?;
    conn.prepare_cached("DELETE FROM things WHERE thing_name = ?1")?
        .execute([name])?;
    bump_registry_revision(conn)?;
    Ok(true)
}

/// ListThings: things in name order, filtered, from `offset`, at most `limit`.
pub fn list(
    conn: &Connection,
    filter: &ThingFilter,
    offset: usize,
    limit: usize,
) -> Result<Page<Thing>, StoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM things WHERE 1 = 1");
    let mut args: Vec<String> = Vec::new();
    if let Some(type_name) = &filter.thing_type_name {
        args.push(type_name.clone());
        sql.push_str(&format!(" AND thing_type_name = ?{}", args.len()));
    }
    if let Some(attribute) = &filter.attribute_name {
        args.push(attribute.clone());
        let key = args.len();
        let value_test = match &filter.attribute_value {
            None => String::new(),
            Some(value) => {
                args.push(value.clone());
                let v = args.len();
                if filter.value_is_prefix {
                    format!(" AND substr(a.value, 1, length(?{v})) = ?{v}")
                } else {
                    format!(" AND a.value = ?{v}")
                }
            }
        };
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM json_each(things.attributes) AS a WHERE a.key = ?{key}{value_test})"
        ));
    }
    sql.push_str(&format!(
        " ORDER BY thing_name LIMIT {} OFFSET {}",
        limit.saturating_add(1),
        offset
    ));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args.iter()), from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let items = rows
        .into_iter()
        .map(finish)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::cut(items, limit))
}

/// A random UUID (v4).
pub(crate) fn uuid_v4() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::refusal::{code_of, test_store};
    use crate::registry::thing_types;

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn new_thing(name: &str, pairs: &[(&str, &str)]) -> NewThing {
        NewThing {
            name: name.to_owned(),
            attributes: attrs(pairs),
            ..NewThing::default()
        }
    }

    #[tokio::test]
    async fn create_is_idempotent_and_conflicts_on_a_different_configuration() {
        let (_dir, store) = test_store();
        let (first, created) = store
            .transact(|c| create(c, new_thing("dev-1", &[("color", "red")]), 100))
            .await
            .unwrap();
        assert!(created);
        assert_eq!(first.version, 1);
        let (again, created) = store
            .transact(|c| create(c, new_thing("dev-1", &[("color", "red")]), 200))
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(again, first);
        let conflict = store
            .transact(|c| create(c, new_thing("dev-1", &[("color", "blue")]), 300))
            .await;
        match conflict {
            Err(StoreError::Rejected {
                code, resource_id, ..
            }) => {
                assert_eq!(code, "ResourceAlreadyExistsException");
                assert_eq!(resource_id.as_deref(), Some(first.id.as_str()));
            }
            other => panic!("{other:?}"),
        }
        let stored = store.read(|c| require(c, "dev-1")).unwrap();
        assert_eq!(stored, first, "the refused create changed nothing");
    }

    #[tokio::test]
    async fn types_must_exist_and_not_be_deprecated() {
        let (_dir, store) = test_store();
        let mut with_type = new_thing("dev-1", &[]);
        with_type.thing_type_name = Some("sensor".to_owned());
        let missing = store
            .transact({
                let t = with_type.clone();
                move |c| create(c, t, 1)
            })
            .await;
        assert_eq!(code_of(missing), "ResourceNotFoundException");
        store
            .transact(|c| {
                thing_types::create(c, "sensor", serde_json::json!({}), 1)?;
                thing_types::deprecate(c, "sensor", false, 2)
            })
            .await
            .unwrap();
        let deprecated = store
            .transact({
                let t = with_type.clone();
                move |c| create(c, t, 3)
            })
            .await;
        assert_eq!(code_of(deprecated), "InvalidRequestException");
        store
            .transact(|c| thing_types::deprecate(c, "sensor", true, 4))
            .await
            .unwrap();
        let (thing, _) = store
            .transact(move |c| create(c, with_type, 5))
            .await
            .unwrap();
        assert_eq!(thing.thing_type_name.as_deref(), Some("sensor"));
    }

    #[tokio::test]
    async fn updates_check_the_version_merge_and_remove_attributes() {
        let (_dir, store) = test_store();
        store
            .transact(|c| create(c, new_thing("t", &[("a", "1"), ("b", "2")]), 1))
            .await
            .unwrap();
        let stale = store
            .transact(|c| {
                update(
                    c,
                    "t",
                    ThingUpdate {
                        expected_version: Some(7),
                        ..ThingUpdate::default()
                    },
                )
            })
            .await;
        assert_eq!(code_of(stale), "VersionConflictException");
        let merged = store
            .transact(|c| {
                update(
                    c,
                    "t",
                    ThingUpdate {
                        attributes: Some((attrs(&[("a", ""), ("c", "3")]), true)),
                        expected_version: Some(1),
                        ..ThingUpdate::default()
                    },
                )
            })
            .await
            .unwrap();
        assert_eq!(merged.attributes, attrs(&[("b", "2"), ("c", "3")]));
        assert_eq!(merged.version, 2);
        let replaced = store
            .transact(|c| {
                update(
                    c,
                    "t",
                    ThingUpdate {
                        attributes: Some((attrs(&[("z", "9")]), false)),
                        ..ThingUpdate::default()
                    },
                )
            })
            .await
            .unwrap();
        assert_eq!(replaced.attributes, attrs(&[("z", "9")]));
        assert_eq!(replaced.version, 3);
        let missing = store
            .transact(|c| update(c, "nope", ThingUpdate::default()))
            .await;
        assert_eq!(code_of(missing), "ResourceNotFoundException");
    }

    #[tokio::test]
    async fn concurrent_updates_lose_nothing() {
        let (_dir, store) = test_store();
        store
            .transact(|c| create(c, new_thing("t", &[]), 1))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..20 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .transact(move |c| {
                        update(
                            c,
                            "t",
                            ThingUpdate {
                                attributes: Some((attrs(&[(&format!("k{i}"), "v")]), true)),
                                ..ThingUpdate::default()
                            },
                        )
                    })
                    .await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let thing = store.read(|c| require(c, "t")).unwrap();
        assert_eq!(thing.version, 21);
        assert_eq!(thing.attributes.len(), 20);
    }

    #[tokio::test]
    async fn delete_is_quiet_for_missing_things_and_refused_with_principals() {
        let (_dir, store) = test_store();
        assert!(!store.transact(|c| delete(c, "ghost", None)).await.unwrap());
        let before = store.registry_revision().unwrap();
        store
            .transact(|c| create(c, new_thing("t", &[]), 1))
            .await
            .unwrap();
        store
            .transact(|c| {
                c.execute(
                    "INSERT INTO thing_principals (thing_name, principal) VALUES ('t', 'arn:cert')",
                    [],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let refused = store.transact(|c| delete(c, "t", None)).await;
        assert_eq!(code_of(refused), "InvalidRequestException");
        store
            .transact(|c| {
                c.execute("DELETE FROM thing_principals", [])?;
                Ok(())
            })
            .await
            .unwrap();
        let stale = store.transact(|c| delete(c, "t", Some(9))).await;
        assert_eq!(code_of(stale), "VersionConflictException");
        assert!(store.transact(|c| delete(c, "t", Some(1))).await.unwrap());
        assert!(store.read(|c| get(c, "t")).unwrap().is_none());
        assert!(store.registry_revision().unwrap() > before);
    }

    #[tokio::test]
    async fn list_filters_by_attribute_prefix_and_type_and_pages() {
        let (_dir, store) = test_store();
        store
            .transact(|c| {
                thing_types::create(c, "lamp", serde_json::json!({}), 1)?;
                create(c, new_thing("a", &[("room", "kitchen")]), 1)?;
                create(c, new_thing("b", &[("room", "kitchen-2")]), 1)?;
                create(c, new_thing("c", &[("room", "hall")]), 1)?;
                let mut d = new_thing("d", &[("room", "kitchen")]);
                d.thing_type_name = Some("lamp".to_owned());
                create(c, d, 1)?;
                Ok(())
            })
            .await
            .unwrap();
        let names = |filter: ThingFilter, offset: usize, limit: usize| {
            let page = store.read(|c| list(c, &filter, offset, limit)).unwrap();
            (
                page.items.into_iter().map(|t| t.name).collect::<Vec<_>>(),
                page.more,
            )
        };
        let exact = ThingFilter {
            attribute_name: Some("room".to_owned()),
            attribute_value: Some("kitchen".to_owned()),
            ..ThingFilter::default()
        };
        assert_eq!(
            names(exact.clone(), 0, 10),
            (vec!["a".into(), "d".into()], false)
        );
        let prefix = ThingFilter {
            value_is_prefix: true,
            ..exact.clone()
        };
        assert_eq!(names(prefix, 0, 10).0, ["a", "b", "d"]);
        let typed = ThingFilter {
            thing_type_name: Some("lamp".to_owned()),
            ..exact
        };
        assert_eq!(names(typed, 0, 10).0, ["d"]);
        assert_eq!(
            names(ThingFilter::default(), 0, 3),
            (vec!["a".into(), "b".into(), "c".into()], true)
        );
        assert_eq!(
            names(ThingFilter::default(), 3, 3),
            (vec!["d".into()], false)
        );
    }
}
