//! Tags of any taggable resource (thing types, thing groups, policies, CA certificates, ...),
//! keyed by the resource's ARN string. The resource's own module deletes its tags with
//! [`delete_all_for`] in the transaction that deletes the resource.

use rusqlite::{Connection, params};

use super::refusal::{codes, reject};
use crate::StoreError;

/// AWS's limit on tags per resource.
pub const MAX_TAGS: usize = 50;

/// One tag: key and value.
pub type Tag = (String, String);

/// Adds or overwrites tags on `arn`. More than [`MAX_TAGS`] in all is
/// `LimitExceededException` (and nothing is written).
pub fn put(conn: &Connection, arn: &str, tags: &[Tag]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO resource_tags (resource_arn, tag_key, tag_value) VALUES (?1, ?2, ?3)
         ON CONFLICT (resource_arn, tag_key) DO UPDATE SET tag_value = excluded.tag_value",
    )?;
    for (key, value) in tags {
        stmt.execute(params![arn, key, value])?;
    }
    let count: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM resource_tags WHERE resource_arn = ?1")?
        .query_row([arn], |r| r.get(0))?;
    if count > MAX_TAGS as i64 {
        // The caller's transaction rolls these inserts back.
        return Err(reject(
            codes::LIMIT_EXCEEDED,
            format!("A resource can have at most {MAX_TAGS} tags"),
        ));
    }
    Ok(())
}

/// Removes the tags with these keys from `arn` (absent keys are ignored).
pub fn remove(conn: &Connection, arn: &str, keys: &[String]) -> Result<(), StoreError> {
    let mut stmt =
        conn.prepare_cached("DELETE FROM resource_tags WHERE resource_arn = ?1 AND tag_key = ?2")?;
    for key in keys {
        stmt.execute(params![arn, key])?;
    }
    Ok(())
}

/// The tags of `arn`, in key order.
pub fn list(conn: &Connection, arn: &str) -> Result<Vec<Tag>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT tag_key, tag_value FROM resource_tags WHERE resource_arn = ?1 ORDER BY tag_key",
    )?;
    let tags = stmt
        .query_map([arn], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<Tag>, _>>()?;
    Ok(tags)
}

/// Deletes every tag of `arn`.
pub fn delete_all_for(conn: &Connection, arn: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM resource_tags WHERE resource_arn = ?1")?
        .execute([arn])?;
    Ok(())
}

/// Whether the resource named by the resource part of an ARN (`thingtype/<name>`,
/// `thinggroup/<name>`, `policy/<name>`, `cacert/<id>`, `cert/<id>`, `thing/<name>`) exists;
/// `None` for a kind this function does not know.
pub fn resource_exists(conn: &Connection, resource: &str) -> Result<Option<bool>, StoreError> {
    let Some((kind, name)) = resource.split_once('/') else {
        return Ok(None);
    };
    let sql = match kind {
        "thing" => "SELECT EXISTS (SELECT 1 FROM things WHERE thing_name = ?1)",
        "thingtype" => "SELECT EXISTS (SELECT 1 FROM thing_types WHERE thing_type_name = ?1)",
        "thinggroup" => "SELECT EXISTS (SELECT 1 FROM thing_groups WHERE thing_group_name = ?1)",
        "policy" => "SELECT EXISTS (SELECT 1 FROM policies WHERE name = ?1)",
        "cacert" => "SELECT EXISTS (SELECT 1 FROM ca_certificates WHERE id = ?1)",
        "cert" => "SELECT EXISTS (SELECT 1 FROM certificates WHERE id = ?1)",
        _ => return Ok(None),
    };
    match conn.prepare_cached(sql) {
        Ok(mut stmt) => Ok(Some(stmt.query_row([name], |r| r.get(0))?)),
        // A table another part of the registry has not created yet: an unknown kind.
        Err(rusqlite::Error::SqliteFailure(_, Some(message)))
            if message.contains("no such table") =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::refusal::{code_of, test_store};

    fn tag(k: &str, v: &str) -> Tag {
        (k.to_owned(), v.to_owned())
    }

    #[tokio::test]
    async fn put_overwrites_remove_ignores_absent_keys_and_the_limit_holds() {
        let (_dir, store) = test_store();
        let arn = "arn:aws:iot:us-east-1:123456789012:thinggroup/g";
        store
            .transact(move |c| {
                put(c, arn, &[tag("b", "1"), tag("a", "2")])?;
                put(c, arn, &[tag("b", "3")])?;
                remove(c, arn, &["zz".to_owned()])
            })
            .await
            .unwrap();
        assert_eq!(
            store.read(|c| list(c, arn)).unwrap(),
            [tag("a", "2"), tag("b", "3")]
        );
        let many: Vec<Tag> = (0..MAX_TAGS).map(|i| tag(&format!("k{i}"), "v")).collect();
        let over = store.transact(move |c| put(c, arn, &many)).await;
        assert_eq!(code_of(over), "LimitExceededException");
        assert_eq!(
            store.read(|c| list(c, arn)).unwrap().len(),
            2,
            "nothing written"
        );
        store
            .transact(move |c| {
                remove(c, arn, &["a".to_owned()])?;
                put(c, "other", &[tag("x", "y")])?;
                delete_all_for(c, arn)
            })
            .await
            .unwrap();
        assert!(store.read(|c| list(c, arn)).unwrap().is_empty());
        assert_eq!(store.read(|c| list(c, "other")).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn resource_existence_by_kind() {
        let (_dir, store) = test_store();
        store
            .transact(|c| {
                crate::registry::thing_types::create(c, "tt", serde_json::json!({}), 1)?;
                Ok(())
            })
            .await
            .unwrap();
        let exists = |r: &str| store.read(|c| resource_exists(c, r)).unwrap();
        assert_eq!(exists("thingtype/tt"), Some(true));
        assert_eq!(exists("thingtype/nope"), Some(false));
        assert_eq!(exists("thinggroup/nope"), Some(false));
        assert_eq!(exists("policy/nope"), Some(false));
        assert_eq!(exists("rule/r"), None);
    }
}
