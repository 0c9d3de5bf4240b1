//! Refusals of the things half of the registry, as [`StoreError::Rejected`].

use crate::StoreError;

/// AWS error shape names.
pub(crate) mod codes {
    pub(crate) const NOT_FOUND: &str = "ResourceNotFoundException";
    pub(crate) const ALREADY_EXISTS: &str = "ResourceAlreadyExistsException";
    pub(crate) const INVALID_REQUEST: &str = "InvalidRequestException";
    pub(crate) const VERSION_CONFLICT: &str = "VersionConflictException";
    pub(crate) const LIMIT_EXCEEDED: &str = "LimitExceededException";
}

/// A refusal with `code` and `message`.
pub(crate) fn reject(code: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Rejected {
        code,
        message: message.into(),
        resource_id: None,
    }
}

/// A store on a fresh file, for the registry's tests (the directory lives as long as it).
#[cfg(test)]
pub(crate) fn test_store() -> (tempfile::TempDir, crate::Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = crate::Store::open(&dir.path().join("registry.db")).expect("store opens");
    (dir, store)
}

/// The code of a refusal, for assertions.
#[cfg(test)]
pub(crate) fn code_of<T: std::fmt::Debug>(result: Result<T, StoreError>) -> &'static str {
    match result {
        Err(StoreError::Rejected { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}
