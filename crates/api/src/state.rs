//! What every handler can reach.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use thingd_auth::{CertificateAuthority, CertificateRegistry};
use thingd_sigv4::{Secret, Verifier};
use thingd_store::Store;

use crate::wire::Arns;

/// Shared state of the API.
pub struct ApiState {
    /// The store (registry tables, certificates).
    pub store: Store,
    /// The platform CA (CreateKeysAndCertificate, CreateCertificateFromCsr).
    pub ca: Arc<CertificateAuthority>,
    /// Certificate statuses; update it after committing a status change so the TLS check
    /// sees it at once.
    pub registry: CertificateRegistry,
    /// Region and account used in ARNs.
    pub arns: Arns,
    /// The host name devices connect to (DescribeEndpoint), with its port if not 8883.
    pub data_endpoint: String,
    /// The SigV4 verifier for the control plane (`iot`, `execute-api`).
    pub verifier: Verifier,
    /// Access keys accepted by the verifier.
    pub credentials: Arc<RwLock<HashMap<String, Secret>>>,
}

impl ApiState {
    /// Runs blocking store work off the async workers.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, crate::ApiError>
    where
        T: Send + 'static,
        F: FnOnce(Store) -> Result<T, crate::ApiError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(|e| crate::ApiError::internal(format!("task failed: {e}")))?
    }
}
