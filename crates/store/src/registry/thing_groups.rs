//! Static thing groups: a forest of groups (a child names its parent at creation), and the
//! direct membership of things in groups.
//!
//! Membership changes bump the registry revision: policies attached to a thing group apply
//! to the principals of its things.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::page::Page;
use super::refusal::{codes, reject};
use super::things::{Attributes, apply_attributes, attributes_json, parse_attributes};
use crate::{StoreError, bump_registry_revision};

/// AWS's limit on the depth of a group hierarchy.
pub const MAX_DEPTH: usize = 7;

/// AWS's limit on the number of groups a thing belongs to directly.
pub const MAX_GROUPS_PER_THING: usize = 10;

/// A thing group as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThingGroup {
    /// The name (primary key).
    pub name: String,
    /// Its UUID.
    pub id: String,
    /// Its parent, if it is not a root group.
    pub parent: Option<String>,
    /// `thingGroupDescription`.
    pub description: Option<String>,
    /// `attributePayload.attributes`.
    pub attributes: Attributes,
    /// Starts at 1; every update adds one.
    pub version: i64,
    /// Creation time, Unix seconds.
    pub creation_date: i64,
}

/// What CreateThingGroup asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewThingGroup {
    /// The group name (already validated).
    pub name: String,
    /// The parent group, which must exist.
    pub parent: Option<String>,
    /// The description.
    pub description: Option<String>,
    /// The attributes.
    pub attributes: Attributes,
}

/// What UpdateThingGroup asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThingGroupUpdate {
    /// A new description (`Some("")` clears it), or keep the current one.
    pub description: Option<String>,
    /// New attributes, and whether to merge (an empty value removes) rather than replace.
    pub attributes: Option<(Attributes, bool)>,
    /// If set, the update applies only if the group is at this version.
    pub expected_version: Option<i64>,
}

const COLUMNS: &str = "thing_group_name, thing_group_id, parent_group_name, description, attributes, version, creation_date";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(ThingGroup, String)> {
    Ok((
        ThingGroup {
            name: row.get(0)?,
            id: row.get(1)?,
            parent: row.get(2)?,
            description: row.get(3)?,
            attributes: Attributes::new(),
            version: row.get(5)?,
            creation_date: row.get(6)?,
        },
        row.get(4)?,
    ))
}

fn finish((mut group, attributes): (ThingGroup, String)) -> Result<ThingGroup, StoreError> {
    group.attributes = parse_attributes(&attributes)?;
    Ok(group)
}

fn not_found(name: &str) -> StoreError {
    reject(
        codes::NOT_FOUND,
        format!("Thing Group {name} cannot be found."),
    )
}

/// One group by name.
pub fn get(conn: &Connection, name: &str) -> Result<Option<ThingGroup>, StoreError> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM thing_groups WHERE thing_group_name = ?1"
        ))?
        .query_row([name], from_row)
        .optional()?;
    row.map(finish).transpose()
}

/// One group by name, or `ResourceNotFoundException`.
pub fn require(conn: &Connection, name: &str) -> Result<ThingGroup, StoreError> {
    get(conn, name)?.ok_or_else(|| not_found(name))
}

/// The ancestors of a group, from the root down to its parent.
pub fn ancestors(conn: &Connection, name: &str) -> Result<Vec<String>, StoreError> {
    let mut chain = Vec::new();
    let mut current = name.to_owned();
    let mut stmt = conn
        .prepare_cached("SELECT parent_group_name FROM thing_groups WHERE thing_group_name = ?1")?;
    loop {
        let parent: Option<String> = stmt
            .query_row([&current], |r| r.get(0))
            .optional()?
            .flatten();
        let Some(parent) = parent else { break };
        if chain.contains(&parent) || chain.len() > 64 {
            return Err(StoreError::Corrupt(format!(
                "thing group hierarchy loops at {parent}"
            )));
        }
        chain.push(parent.clone());
        current = parent;
    }
    chain.reverse();
    Ok(chain)
}

/// Every group below `name` (children, their children, ...), in name order.
pub fn descendants(conn: &Connection, name: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "WITH RECURSIVE below(name) AS (
             SELECT thing_group_name FROM thing_groups WHERE parent_group_name = ?1
             UNION
             SELECT g.thing_group_name FROM thing_groups g JOIN below b ON g.parent_group_name = b.name
         )
         SELECT name FROM below ORDER BY name",
    )?;
    let names = stmt
        .query_map([name], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(names)
}

/// CreateThingGroup. Returns the group and whether it was created now; an existing group
/// with the same parent, description and attributes is returned unchanged, a different one
/// is `ResourceAlreadyExistsException`. The parent must exist (InvalidRequestException, as
/// CreateThingGroup models no 404), and the hierarchy may not get deeper than [`MAX_DEPTH`].
pub fn create(
    conn: &Connection,
    new: NewThingGroup,
    now: i64,
) -> Result<(ThingGroup, bool), StoreError> {
    let description = new.description.filter(|d| !d.is_empty());
    let mut attributes = Attributes::new();
    apply_attributes(&mut attributes, new.attributes, true);
    if let Some(existing) = get(conn, &new.name)? {
        if existing.parent == new.parent
            && existing.description == description
            && existing.attributes == attributes
        {
            return Ok((existing, false));
        }
        return Err(StoreError::Rejected {
            code: codes::ALREADY_EXISTS,
            message: format!(
                "Thing Group {} already exists with different properties",
                new.name
            ),
            resource_id: Some(existing.id),
        });
    }
    if let Some(parent) = &new.parent {
        if get(conn, parent)?.is_none() {
            return Err(reject(
                codes::INVALID_REQUEST,
                format!("Parent thing group {parent} does not exist"),
            ));
        }
        // The parent's depth (1 for a root) plus this group.
        let depth = ancestors(conn, parent)?.len() + 2;
        if depth > MAX_DEPTH {
            return Err(reject(
                codes::INVALID_REQUEST,
                format!(
                    "Thing group {} would be at depth {depth}; a hierarchy is at most {MAX_DEPTH} deep",
                    new.name
                ),
            ));
        }
    }
    let group = ThingGroup {
        name: new.name,
        id: super::things::uuid_v4(),
        parent: new.parent,
        description,
        attributes,
        version: 1,
        creation_date: now,
    };
    conn.prepare_cached(&format!(
        "INSERT INTO thing_groups ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?
    .execute(params![
        group.name,
        group.id,
        group.parent,
        group.description,
        attributes_json(&group.attributes),
        group.version,
        group.creation_date
    ])?;
    Ok((group, true))
}

fn version_conflict(name: &str) -> StoreError {
    reject(
        codes::VERSION_CONFLICT,
        format!("The version for thing group {name} does not match the expected version."),
    )
}

/// UpdateThingGroup: returns the updated group (its new version).
pub fn update(
    conn: &Connection,
    name: &str,
    update: ThingGroupUpdate,
) -> Result<ThingGroup, StoreError> {
    let mut group = require(conn, name)?;
    if let Some(expected) = update.expected_version
        && expected != group.version
    {
        return Err(version_conflict(name));
    }
    if let Some(description) = update.description {
        group.description = Some(description).filter(|d| !d.is_empty());
    }
    if let Some((attributes, merge)) = update.attributes {
        apply_attributes(&mut group.attributes, attributes, merge);
    }
    group.version += 1;
    conn.prepare_cached(
        "UPDATE thing_groups SET description = ?2, attributes = ?3, version = ?4 WHERE thing_group_name = ?1",
    )?
    .execute(params![
        name,
        group.description,
        attributes_json(&group.attributes),
        group.version
    ])?;
    Ok(group)
}

/// DeleteThingGroup. A group that does not exist is a success (`None`); one with child
/// groups is refused. Its memberships go with it. Returns the deleted group.
pub fn delete(
    conn: &Connection,
    name: &str,
    expected_version: Option<i64>,
) -> Result<Option<ThingGroup>, StoreError> {
    let Some(group) = get(conn, name)? else {
        return Ok(None);
    };
    if let Some(expected) = expected_version
        && expected != group.version
    {
        return Err(version_conflict(name));
    }
    let children: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM thing_groups WHERE parent_group_name = ?1")?
        .query_row([name], |r| r.get(0))?;
    if children > 0 {
        return Err(reject(
            codes::INVALID_REQUEST,
            format!("Cannot delete thing group : {name} when it has child groups"),
        ));
    }
    conn.prepare_cached("DELETE FROM thing_group_members WHERE thing_group_name = ?1")?
        .execute([name])?;
    conn.prepare_cached("DELETE FROM thing_groups WHERE thing_group_name = ?1")?
        .execute([name])?;
    bump_registry_revision(conn)?;
    Ok(Some(group))
}

/// Which groups ListThingGroups returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupFilter {
    /// Only groups below this one (which must exist).
    pub parent: Option<String>,
    /// Only groups whose name starts with this.
    pub name_prefix: Option<String>,
    /// All levels below `parent` (or every group when there is no parent), rather than
    /// only its direct children (or only root groups).
    pub recursive: bool,
}

/// ListThingGroups: group names in name order.
pub fn list(
    conn: &Connection,
    filter: &GroupFilter,
    offset: usize,
    limit: usize,
) -> Result<Page<String>, StoreError> {
    let names: Vec<String> = match (&filter.parent, filter.recursive) {
        (Some(parent), true) => {
            require(conn, parent)?;
            descendants(conn, parent)?
        }
        (Some(parent), false) => {
            require(conn, parent)?;
            let mut stmt = conn.prepare_cached(
                "SELECT thing_group_name FROM thing_groups WHERE parent_group_name = ?1 ORDER BY thing_group_name",
            )?;
            stmt.query_map([parent], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        }
        (None, recursive) => {
            let sql = if recursive {
                "SELECT thing_group_name FROM thing_groups ORDER BY thing_group_name"
            } else {
                "SELECT thing_group_name FROM thing_groups WHERE parent_group_name IS NULL ORDER BY thing_group_name"
            };
            let mut stmt = conn.prepare_cached(sql)?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        }
    };
    let names = match &filter.name_prefix {
        Some(prefix) => names
            .into_iter()
            .filter(|n| n.starts_with(prefix.as_str()))
            .collect(),
        None => names,
    };
    Ok(Page::slice(names, offset, limit))
}

fn require_thing(conn: &Connection, thing: &str) -> Result<(), StoreError> {
    super::things::require(conn, thing).map(|_| ())
}

fn groups_of(conn: &Connection, thing: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT thing_group_name FROM thing_group_members WHERE thing_name = ?1 ORDER BY thing_group_name",
    )?;
    let names = stmt
        .query_map([thing], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(names)
}

/// AddThingToThingGroup: both must exist; adding a member again changes nothing.
pub fn add_thing(conn: &Connection, group: &str, thing: &str) -> Result<(), StoreError> {
    require(conn, group)?;
    require_thing(conn, thing)?;
    let current = groups_of(conn, thing)?;
    if current.iter().any(|g| g == group) {
        return Ok(());
    }
    if current.len() >= MAX_GROUPS_PER_THING {
        return Err(reject(
            codes::INVALID_REQUEST,
            format!(
                "Thing {thing} is already in {MAX_GROUPS_PER_THING} thing groups, the most a thing can be in"
            ),
        ));
    }
    conn.prepare_cached(
        "INSERT INTO thing_group_members (thing_group_name, thing_name) VALUES (?1, ?2)",
    )?
    .execute(params![group, thing])?;
    bump_registry_revision(conn)?;
    Ok(())
}

/// RemoveThingFromThingGroup: both must exist; removing a non-member changes nothing.
pub fn remove_thing(conn: &Connection, group: &str, thing: &str) -> Result<(), StoreError> {
    require(conn, group)?;
    require_thing(conn, thing)?;
    let removed = conn
        .prepare_cached(
            "DELETE FROM thing_group_members WHERE thing_group_name = ?1 AND thing_name = ?2",
        )?
        .execute(params![group, thing])?;
    if removed > 0 {
        bump_registry_revision(conn)?;
    }
    Ok(())
}

/// UpdateThingGroupsForThing: adds then removes, all or nothing.
pub fn update_groups_for_thing(
    conn: &Connection,
    thing: &str,
    add: &[String],
    remove: &[String],
) -> Result<(), StoreError> {
    require_thing(conn, thing)?;
    for group in add {
        add_thing(conn, group, thing)?;
    }
    for group in remove {
        remove_thing(conn, group, thing)?;
    }
    Ok(())
}

/// ListThingsInThingGroup: thing names in name order; with `recursive`, the things of every
/// group below it too (each once).
pub fn things_in_group(
    conn: &Connection,
    group: &str,
    recursive: bool,
    offset: usize,
    limit: usize,
) -> Result<Page<String>, StoreError> {
    require(conn, group)?;
    if !recursive {
        let mut stmt = conn.prepare_cached(
            "SELECT thing_name FROM thing_group_members WHERE thing_group_name = ?1
             ORDER BY thing_name LIMIT ?2 OFFSET ?3",
        )?;
        let names = stmt
            .query_map(
                params![group, limit.saturating_add(1) as i64, offset as i64],
                |r| r.get(0),
            )?
            .collect::<Result<Vec<String>, _>>()?;
        return Ok(Page::cut(names, limit));
    }
    let mut stmt = conn.prepare_cached(
        "WITH RECURSIVE below(name) AS (
             SELECT ?1
             UNION
             SELECT g.thing_group_name FROM thing_groups g JOIN below b ON g.parent_group_name = b.name
         )
         SELECT DISTINCT m.thing_name FROM thing_group_members m JOIN below b ON m.thing_group_name = b.name
         ORDER BY m.thing_name LIMIT ?2 OFFSET ?3",
    )?;
    let names = stmt
        .query_map(
            params![group, limit.saturating_add(1) as i64, offset as i64],
            |r| r.get(0),
        )?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(Page::cut(names, limit))
}

/// ListThingGroupsForThing: the groups a thing is directly in, in name order.
pub fn groups_for_thing(
    conn: &Connection,
    thing: &str,
    offset: usize,
    limit: usize,
) -> Result<Page<String>, StoreError> {
    require_thing(conn, thing)?;
    Ok(Page::slice(groups_of(conn, thing)?, offset, limit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::refusal::{code_of, test_store};
    use crate::registry::things::{self, NewThing};

    fn group(name: &str, parent: Option<&str>) -> NewThingGroup {
        NewThingGroup {
            name: name.to_owned(),
            parent: parent.map(str::to_owned),
            ..NewThingGroup::default()
        }
    }

    async fn tree(store: &crate::Store) {
        store
            .transact(|c| {
                create(c, group("root", None), 1)?;
                create(c, group("mid", Some("root")), 1)?;
                create(c, group("leaf", Some("mid")), 1)?;
                create(c, group("other", None), 1)?;
                for name in ["t1", "t2", "t3"] {
                    things::create(
                        c,
                        NewThing {
                            name: name.to_owned(),
                            ..NewThing::default()
                        },
                        1,
                    )?;
                }
                add_thing(c, "root", "t1")?;
                add_thing(c, "mid", "t2")?;
                add_thing(c, "leaf", "t3")?;
                add_thing(c, "leaf", "t1")?;
                Ok(())
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn create_is_idempotent_and_needs_an_existing_parent() {
        let (_dir, store) = test_store();
        tree(&store).await;
        let (again, created) = store
            .transact(|c| create(c, group("mid", Some("root")), 9))
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(again.creation_date, 1);
        let moved = store
            .transact(|c| create(c, group("mid", Some("other")), 9))
            .await;
        assert_eq!(code_of(moved), "ResourceAlreadyExistsException");
        let orphan = store
            .transact(|c| create(c, group("x", Some("nope")), 9))
            .await;
        assert_eq!(code_of(orphan), "InvalidRequestException");
        assert_eq!(
            store.read(|c| ancestors(c, "leaf")).unwrap(),
            ["root", "mid"]
        );
        assert_eq!(
            store.read(|c| descendants(c, "root")).unwrap(),
            ["leaf", "mid"]
        );
    }

    #[tokio::test]
    async fn the_hierarchy_is_at_most_seven_deep() {
        let (_dir, store) = test_store();
        store
            .transact(|c| {
                create(c, group("g1", None), 1)?;
                for i in 2..=7 {
                    create(c, group(&format!("g{i}"), Some(&format!("g{}", i - 1))), 1)?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let too_deep = store
            .transact(|c| create(c, group("g8", Some("g7")), 1))
            .await;
        assert_eq!(code_of(too_deep), "InvalidRequestException");
    }

    #[tokio::test]
    async fn lists_and_memberships() {
        let (_dir, store) = test_store();
        tree(&store).await;
        let names = |filter: GroupFilter| store.read(|c| list(c, &filter, 0, 100)).unwrap().items;
        assert_eq!(
            names(GroupFilter {
                recursive: true,
                ..GroupFilter::default()
            }),
            ["leaf", "mid", "other", "root"]
        );
        assert_eq!(names(GroupFilter::default()), ["other", "root"]);
        assert_eq!(
            names(GroupFilter {
                parent: Some("root".to_owned()),
                ..GroupFilter::default()
            }),
            ["mid"]
        );
        assert_eq!(
            names(GroupFilter {
                parent: Some("root".to_owned()),
                recursive: true,
                name_prefix: Some("l".to_owned()),
            }),
            ["leaf"]
        );
        let in_root = |recursive| {
            store
                .read(|c| things_in_group(c, "root", recursive, 0, 100))
                .unwrap()
                .items
        };
        assert_eq!(in_root(false), ["t1"]);
        assert_eq!(in_root(true), ["t1", "t2", "t3"]);
        let page = store
            .read(|c| things_in_group(c, "root", true, 1, 1))
            .unwrap();
        assert_eq!((page.items, page.more), (vec!["t2".to_owned()], true));
        assert_eq!(
            store
                .read(|c| groups_for_thing(c, "t1", 0, 10))
                .unwrap()
                .items,
            ["leaf", "root"]
        );
        // Idempotent add and remove.
        store
            .transact(|c| {
                add_thing(c, "root", "t1")?;
                remove_thing(c, "other", "t1")?;
                update_groups_for_thing(c, "t2", &["other".to_owned()], &["mid".to_owned()])
            })
            .await
            .unwrap();
        assert_eq!(
            store
                .read(|c| groups_for_thing(c, "t2", 0, 10))
                .unwrap()
                .items,
            ["other"]
        );
        let missing = store.transact(|c| add_thing(c, "nope", "t1")).await;
        assert_eq!(code_of(missing), "ResourceNotFoundException");
        // All or nothing: the second add fails, so the first is not kept.
        let partial = store
            .transact(|c| {
                update_groups_for_thing(c, "t3", &["root".to_owned(), "nope".to_owned()], &[])
            })
            .await;
        assert_eq!(code_of(partial), "ResourceNotFoundException");
        assert_eq!(
            store
                .read(|c| groups_for_thing(c, "t3", 0, 10))
                .unwrap()
                .items,
            ["leaf"]
        );
    }

    #[tokio::test]
    async fn update_versions_and_delete_rules() {
        let (_dir, store) = test_store();
        tree(&store).await;
        let stale = store
            .transact(|c| {
                update(
                    c,
                    "root",
                    ThingGroupUpdate {
                        expected_version: Some(3),
                        ..ThingGroupUpdate::default()
                    },
                )
            })
            .await;
        assert_eq!(code_of(stale), "VersionConflictException");
        let updated = store
            .transact(|c| {
                update(
                    c,
                    "root",
                    ThingGroupUpdate {
                        description: Some("top".to_owned()),
                        attributes: Some(([("k".to_owned(), "v".to_owned())].into(), true)),
                        expected_version: Some(1),
                    },
                )
            })
            .await
            .unwrap();
        assert_eq!(updated.version, 2);
        assert_eq!(updated.description.as_deref(), Some("top"));
        let has_children = store.transact(|c| delete(c, "mid", None)).await;
        assert_eq!(code_of(has_children), "InvalidRequestException");
        assert!(
            store
                .transact(|c| delete(c, "ghost", None))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .transact(|c| delete(c, "leaf", Some(1)))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            store
                .read(|c| groups_for_thing(c, "t1", 0, 10))
                .unwrap()
                .items,
            ["root"]
        );
        // Deleting a thing removes its memberships.
        store
            .transact(|c| things::delete(c, "t1", None))
            .await
            .unwrap();
        assert!(
            store
                .read(|c| things_in_group(c, "root", false, 0, 10))
                .unwrap()
                .items
                .is_empty()
        );
    }
}
