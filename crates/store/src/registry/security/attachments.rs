//! Policy targets (AttachPolicy/DetachPolicy): a certificate ARN, a thing-group ARN or a
//! Cognito identity id, stored exactly as the caller normalised it.

use rusqlite::{Connection, params};

use super::{codes, not_found, rejected};
use crate::registry::thing_groups;
use crate::{StoreError, bump_registry_revision};

/// Most policies attached to one target (AWS's quota for a certificate or Cognito identity).
pub const MAX_POLICIES_PER_TARGET: i64 = 10;

fn require_policy(conn: &Connection, policy: &str) -> Result<(), StoreError> {
    let exists: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM policies WHERE name = ?1")?
        .query_row([policy], |r| r.get(0))?;
    if exists == 0 {
        return Err(not_found(format!("Policy not found (name={policy})")));
    }
    Ok(())
}

/// AttachPolicy. Attaching again changes nothing. The policy must exist (the caller checks
/// that the target exists).
pub fn attach(conn: &Connection, policy: &str, target: &str, now: i64) -> Result<(), StoreError> {
    require_policy(conn, policy)?;
    let (already, count): (i64, i64) = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(policy_name = ?1), 0), COUNT(*) FROM policy_targets WHERE target = ?2",
        )?
        .query_row(params![policy, target], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if already > 0 {
        return Ok(());
    }
    if count >= MAX_POLICIES_PER_TARGET {
        return Err(rejected(
            codes::LIMIT_EXCEEDED,
            format!(
                "The target {target} already has the maximum number of attached policies ({MAX_POLICIES_PER_TARGET})"
            ),
        ));
    }
    conn.prepare_cached(
        "INSERT INTO policy_targets (policy_name, target, created_at) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![policy, target, now])?;
    bump_registry_revision(conn)?;
    Ok(())
}

/// DetachPolicy. A missing policy is ResourceNotFoundException; detaching what is not
/// attached changes nothing.
pub fn detach(conn: &Connection, policy: &str, target: &str) -> Result<(), StoreError> {
    require_policy(conn, policy)?;
    let n = conn
        .prepare_cached("DELETE FROM policy_targets WHERE policy_name = ?1 AND target = ?2")?
        .execute(params![policy, target])?;
    if n > 0 {
        bump_registry_revision(conn)?;
    }
    Ok(())
}

/// The names of the policies attached to `target`, by name.
pub fn policies_of_target(conn: &Connection, target: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT policy_name FROM policy_targets WHERE target = ?1 ORDER BY policy_name",
    )?;
    let rows = stmt.query_map([target], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The targets of a policy, by attachment time; `None` if there is no such policy.
pub fn targets_of_policy(
    conn: &Connection,
    policy: &str,
) -> Result<Option<Vec<String>>, StoreError> {
    if require_policy(conn, policy).is_err() {
        return Ok(None);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT target FROM policy_targets WHERE policy_name = ?1 ORDER BY created_at, rowid",
    )?;
    let rows = stmt.query_map([policy], |r| r.get(0))?;
    Ok(Some(rows.collect::<Result<_, _>>()?))
}

/// For policy enforcement: the policies attached directly to `principal_arn` (a certificate
/// ARN `arn:aws:iot:<region>:<account>:cert/<id>` built with the installation's region and
/// account, or a Cognito identity id), each with its default version's document (JSON text),
/// by policy name.
pub fn policies_for_principal(
    conn: &Connection,
    principal_arn: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT p.name, v.document
         FROM policy_targets t
         JOIN policies p ON p.name = t.policy_name
         JOIN policy_versions v ON v.policy_name = p.name AND v.version = p.default_version
         WHERE t.target = ?1
         ORDER BY p.name",
    )?;
    let rows = stmt.query_map([principal_arn], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The thing groups `thing_name` belongs to, each followed by its ancestors (nearest first),
/// without repeats.
pub fn groups_of_thing(conn: &Connection, thing_name: &str) -> Result<Vec<String>, StoreError> {
    let direct: Vec<String> = conn
        .prepare_cached(
            "SELECT thing_group_name FROM thing_group_members WHERE thing_name = ?1
             ORDER BY thing_group_name",
        )?
        .query_map([thing_name], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for group in direct {
        for g in std::iter::once(group.clone()).chain(group_ancestors(conn, &group)?) {
            if !out.contains(&g) {
                out.push(g);
            }
        }
    }
    Ok(out)
}

/// The ancestors of a thing group, parent first.
pub fn group_ancestors(conn: &Connection, group: &str) -> Result<Vec<String>, StoreError> {
    let mut chain = thing_groups::ancestors(conn, group)?;
    chain.reverse();
    Ok(chain)
}

/// Whether a thing group exists.
pub fn thing_group_exists(conn: &Connection, group: &str) -> Result<bool, StoreError> {
    Ok(thing_groups::get(conn, group)?.is_some())
}

/// For policy enforcement and GetEffectivePolicies: the policies of `principal_arn` plus,
/// when `thing_name` is given, those attached to the thing groups it belongs to (and their
/// ancestors), each once with its default document, as (name, document).
/// `group_arn` builds a thing-group ARN from a group name.
pub fn effective_policies(
    conn: &Connection,
    principal_arn: Option<&str>,
    thing_name: Option<&str>,
    group_arn: impl Fn(&str) -> String,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut add = |list: Vec<(String, String)>| {
        for (name, doc) in list {
            if !out.iter().any(|(n, _)| *n == name) {
                out.push((name, doc));
            }
        }
    };
    if let Some(principal) = principal_arn {
        add(policies_for_principal(conn, principal)?);
    }
    if let Some(thing) = thing_name {
        for group in groups_of_thing(conn, thing)? {
            add(policies_for_principal(conn, &group_arn(&group))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{policies, test_db};
    use super::*;

    #[test]
    fn attach_detach_list_and_enforcement_reads() {
        let (_dir, conn) = test_db::open();
        assert!(matches!(
            attach(&conn, "nope", "t", 1),
            Err(StoreError::Rejected {
                code: codes::NOT_FOUND,
                ..
            })
        ));
        policies::create(&conn, "b", "doc-b", 1).unwrap();
        policies::create(&conn, "a", "doc-a1", 1).unwrap();
        policies::create_version(&conn, "a", "doc-a2", true, 2).unwrap();
        let rev = test_db::revision(&conn);
        attach(&conn, "b", "cert", 3).unwrap();
        attach(&conn, "a", "cert", 3).unwrap();
        attach(&conn, "a", "cert", 3).unwrap();
        attach(&conn, "a", "other", 3).unwrap();
        assert_eq!(test_db::revision(&conn), rev + 3);
        assert_eq!(policies_of_target(&conn, "cert").unwrap(), ["a", "b"]);
        assert_eq!(
            policies_for_principal(&conn, "cert").unwrap(),
            [
                ("a".to_owned(), "doc-a2".to_owned()),
                ("b".to_owned(), "doc-b".to_owned())
            ]
        );
        assert_eq!(
            targets_of_policy(&conn, "a").unwrap().unwrap(),
            ["cert", "other"]
        );
        assert_eq!(targets_of_policy(&conn, "zz").unwrap(), None);
        detach(&conn, "a", "cert").unwrap();
        detach(&conn, "a", "cert").unwrap();
        assert_eq!(policies_of_target(&conn, "cert").unwrap(), ["b"]);
        // A thing in no group has only its principal's policies.
        let eff = effective_policies(&conn, Some("cert"), Some("t"), |g| g.to_owned()).unwrap();
        assert_eq!(eff.len(), 1);
    }

    #[test]
    fn thing_group_policies_apply_recursively() {
        let (_dir, conn) = test_db::open();
        conn.execute_batch(
            "INSERT INTO thing_groups (thing_group_name, thing_group_id, parent_group_name, version, creation_date)
               VALUES ('root', 'g1', NULL, 1, 1), ('mid', 'g2', 'root', 1, 1), ('leaf', 'g3', 'mid', 1, 1);
             INSERT INTO things (thing_name, thing_id, attributes, version, created_at) VALUES ('t', 'i', '{}', 1, 1);
             INSERT INTO thing_group_members (thing_group_name, thing_name) VALUES ('leaf', 't');",
        )
        .unwrap();
        assert_eq!(
            groups_of_thing(&conn, "t").unwrap(),
            ["leaf", "mid", "root"]
        );
        assert_eq!(group_ancestors(&conn, "leaf").unwrap(), ["mid", "root"]);
        assert!(thing_group_exists(&conn, "mid").unwrap());
        assert!(!thing_group_exists(&conn, "nope").unwrap());
        policies::create(&conn, "on-root", "d-root", 1).unwrap();
        policies::create(&conn, "on-cert", "d-cert", 1).unwrap();
        attach(&conn, "on-root", "g:root", 1).unwrap();
        attach(&conn, "on-cert", "cert", 1).unwrap();
        let eff = effective_policies(&conn, Some("cert"), Some("t"), |g| format!("g:{g}")).unwrap();
        assert_eq!(
            eff,
            [
                ("on-cert".to_owned(), "d-cert".to_owned()),
                ("on-root".to_owned(), "d-root".to_owned())
            ]
        );
        let eff = effective_policies(&conn, None, Some("t"), |g| format!("g:{g}")).unwrap();
        assert_eq!(eff.len(), 1);
    }

    #[test]
    fn per_target_limit() {
        let (_dir, conn) = test_db::open();
        for i in 0..=MAX_POLICIES_PER_TARGET {
            policies::create(&conn, &format!("p{i}"), "d", 1).unwrap();
        }
        for i in 0..MAX_POLICIES_PER_TARGET {
            attach(&conn, &format!("p{i}"), "t", 1).unwrap();
        }
        assert!(matches!(
            attach(&conn, &format!("p{MAX_POLICIES_PER_TARGET}"), "t", 1),
            Err(StoreError::Rejected {
                code: codes::LIMIT_EXCEEDED,
                ..
            })
        ));
    }
}
