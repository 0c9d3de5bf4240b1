//! Where the verifier finds the secret behind an access key id.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::SystemTime;

/// The secret half of a credential pair, plus the session token and expiry
/// of temporary credentials.
///
/// `Debug` never prints the secret or the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    secret_access_key: String,
    session_token: Option<String>,
    expires_at: Option<SystemTime>,
}

impl Secret {
    /// Long-term credentials: a secret access key with no session token.
    pub fn new(secret_access_key: impl Into<String>) -> Self {
        Self {
            secret_access_key: secret_access_key.into(),
            session_token: None,
            expires_at: None,
        }
    }

    /// Temporary credentials: requests must carry exactly this
    /// `X-Amz-Security-Token`.
    #[must_use]
    pub fn with_session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(token.into());
        self
    }

    /// After this instant the credentials are rejected with
    /// [`SigV4Error::ExpiredToken`](crate::SigV4Error::ExpiredToken).
    #[must_use]
    pub fn with_expiry(mut self, expires_at: SystemTime) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// The secret access key.
    #[must_use]
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// The session token of temporary credentials.
    #[must_use]
    pub fn session_token(&self) -> Option<&str> {
        self.session_token.as_deref()
    }

    /// When temporary credentials stop being valid.
    #[must_use]
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("secret_access_key", &"** redacted **")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "** redacted **"),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Looks up the secret for an access key id.
///
/// Implemented for `HashMap<String, Secret>`, for `Arc<T>` and for any
/// `Fn(&str) -> Option<Secret>` closure, so a store backed by a database can
/// be plugged in without a wrapper type.
pub trait CredentialStore {
    /// The secret for `access_key_id`, or `None` when the key is unknown.
    fn secret_for(&self, access_key_id: &str) -> Option<Secret>;
}

impl<S: BuildHasher> CredentialStore for HashMap<String, Secret, S> {
    fn secret_for(&self, access_key_id: &str) -> Option<Secret> {
        self.get(access_key_id).cloned()
    }
}

impl<T: CredentialStore + ?Sized> CredentialStore for Arc<T> {
    fn secret_for(&self, access_key_id: &str) -> Option<Secret> {
        (**self).secret_for(access_key_id)
    }
}

impl<F: Fn(&str) -> Option<Secret>> CredentialStore for F {
    fn secret_for(&self, access_key_id: &str) -> Option<Secret> {
        self(access_key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts() {
        let s = Secret::new("topsecret").with_session_token("tok");
        let d = format!("{s:?}");
        assert!(!d.contains("topsecret"));
        assert!(!d.contains("tok\""));
    }

    #[test]
    fn stores() {
        let mut m = HashMap::new();
        m.insert("AK".to_owned(), Secret::new("s"));
        assert_eq!(m.secret_for("AK").unwrap().secret_access_key(), "s");
        assert!(m.secret_for("BK").is_none());
        let f = |k: &str| (k == "AK").then(|| Secret::new("t"));
        assert_eq!(f.secret_for("AK").unwrap().secret_access_key(), "t");
        let a = Arc::new(m);
        assert!(a.secret_for("AK").is_some());
    }
}
