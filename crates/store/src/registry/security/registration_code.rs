//! The registration code CA registration proves possession with.

use rusqlite::{Connection, OptionalExtension as _};

use crate::StoreError;

/// The current code, creating it with `generate` if there is none (so it stays the same until
/// [`delete`]).
pub fn get_or_create(
    conn: &Connection,
    generate: impl FnOnce() -> String,
) -> Result<String, StoreError> {
    if let Some(code) = get(conn)? {
        return Ok(code);
    }
    let code = generate();
    conn.prepare_cached("INSERT INTO registration_code (id, code) VALUES (1, ?1)")?
        .execute([&code])?;
    Ok(code)
}

/// The current code, if any.
pub fn get(conn: &Connection) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT code FROM registration_code WHERE id = 1")?
        .query_row([], |r| r.get(0))
        .optional()?)
}

/// Forgets the code; the next [`get_or_create`] makes a new one.
pub fn delete(conn: &Connection) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM registration_code")?
        .execute([])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_db;
    use super::*;

    #[test]
    fn stable_until_deleted() {
        let (_dir, conn) = test_db::open();
        assert_eq!(get(&conn).unwrap(), None);
        let a = get_or_create(&conn, || "a".repeat(64)).unwrap();
        let again = get_or_create(&conn, || "b".repeat(64)).unwrap();
        assert_eq!(a, again);
        delete(&conn).unwrap();
        assert_eq!(
            get_or_create(&conn, || "c".repeat(64)).unwrap(),
            "c".repeat(64)
        );
    }
}
