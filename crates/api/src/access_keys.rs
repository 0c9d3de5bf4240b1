//! Access keys for SigV4. On first start thingd creates one admin key and writes it, with the
//! region and the endpoint, to files in the data directory in the AWS CLI's formats, so
//! `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE` (or `--profile thingd`) just work.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension as _, params};
use thingd_sigv4::Secret;
use thingd_store::{Store, StoreError};

/// The AWS CLI profile name thingd writes.
pub const PROFILE: &str = "thingd";

/// An access key pair.
#[derive(Clone)]
pub struct AccessKey {
    /// The access key id (`AKIA` + 16 characters, as AWS's look).
    pub id: String,
    /// The secret access key (40 characters).
    pub secret: String,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Returns the admin key, creating it on first use. Blocking.
pub fn ensure_admin_key(store: &Store) -> Result<AccessKey, StoreError> {
    let existing = store.read(|conn| {
        Ok(conn
            .query_row(
                "SELECT id, secret FROM access_keys WHERE description = 'admin' ORDER BY created_at LIMIT 1",
                [],
                |row| Ok(AccessKey { id: row.get(0)?, secret: row.get(1)? }),
            )
            .optional()?)
    })?;
    if let Some(key) = existing {
        return Ok(key);
    }
    let key = AccessKey {
        id: format!("AKIA{}", random_chars(16, UPPER_DIGITS)),
        secret: random_chars(40, SECRET_CHARS),
    };
    let row = key.clone();
    store.transact_blocking(move |conn| {
        conn.execute(
            "INSERT INTO access_keys (id, secret, description, created_at) VALUES (?1, ?2, 'admin', ?3)",
            params![row.id, row.secret, crate::wire::now()],
        )?;
        Ok(())
    })?;
    Ok(key)
}

/// Every access key, for the verifier. Blocking.
pub fn load_secrets(store: &Store) -> Result<HashMap<String, Secret>, StoreError> {
    store.read(|conn| {
        let mut stmt = conn.prepare("SELECT id, secret FROM access_keys")?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut keys = HashMap::new();
        for row in rows {
            let (id, secret) = row?;
            keys.insert(id, Secret::new(secret));
        }
        Ok(keys)
    })
}

/// Writes `aws-credentials` and `aws-config` into `data_dir` (mode 0600) for profile
/// `thingd`, with `endpoint_url` pointing at this server. Returns their paths.
pub fn write_cli_files(
    data_dir: &Path,
    key: &AccessKey,
    region: &str,
    endpoint_url: &str,
) -> std::io::Result<(PathBuf, PathBuf)> {
    let credentials = data_dir.join("aws-credentials");
    let config = data_dir.join("aws-config");
    write_private(
        &credentials,
        &format!(
            "[{PROFILE}]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            key.id, key.secret, key.id, key.secret
        ),
    )?;
    write_private(
        &config,
        &format!(
            "[profile {PROFILE}]\nregion = {region}\nendpoint_url = {endpoint_url}\n\n[default]\nregion = {region}\nendpoint_url = {endpoint_url}\n"
        ),
    )?;
    Ok((credentials, config))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const SECRET_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Random characters from `alphabet`, from the operating system's generator (UUID v4 bytes).
fn random_chars(n: usize, alphabet: &[u8]) -> String {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for byte in uuid::Uuid::new_v4().into_bytes() {
            if out.len() == n {
                break;
            }
            out.push(alphabet[usize::from(byte) % alphabet.len()] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_key_is_created_once_and_the_cli_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let first = ensure_admin_key(&store).unwrap();
        let again = ensure_admin_key(&store).unwrap();
        assert_eq!(first.id, again.id);
        assert!(first.id.starts_with("AKIA") && first.id.len() == 20);
        assert_eq!(first.secret.len(), 40);
        assert!(load_secrets(&store).unwrap().contains_key(&first.id));
        let (creds, config) =
            write_cli_files(dir.path(), &first, "us-east-1", "http://127.0.0.1:1").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            std::fs::read_to_string(&config)
                .unwrap()
                .contains("endpoint_url = http://127.0.0.1:1")
        );
    }
}
