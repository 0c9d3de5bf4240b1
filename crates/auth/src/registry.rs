//! The certificate status cache the TLS handshake consults.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use thingd_model::{CertificateId, CertificateStatus};
use thingd_store::Store;

use crate::AuthError;
use crate::verifier::RegistryClientVerifier;

/// Live view of certificate statuses, shared by the TLS verifier and the broker.
///
/// Cheap to clone (clones share the cache). Reads (`status`) take a read lock on a hash map;
/// `refresh` swaps in changes from the store.
#[derive(Clone)]
pub struct CertificateRegistry {
    statuses: Arc<RwLock<HashMap<CertificateId, CertificateStatus>>>,
    sync: Arc<Mutex<SyncPoint>>,
}

/// How far the cache has followed the store.
#[derive(Debug, Default)]
struct SyncPoint {
    /// `Store::data_version` when last checked.
    data_version: Option<i64>,
    /// Highest certificate revision applied.
    revision: i64,
}

impl std::fmt::Debug for CertificateRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateRegistry")
            .field("certificates", &self.statuses.read().len())
            .finish_non_exhaustive()
    }
}

impl CertificateRegistry {
    /// Loads every certificate from `store`.
    pub fn load(store: &Store) -> Result<CertificateRegistry, AuthError> {
        let registry = CertificateRegistry {
            statuses: Arc::new(RwLock::new(HashMap::new())),
            sync: Arc::new(Mutex::new(SyncPoint::default())),
        };
        registry.refresh(store)?;
        Ok(registry)
    }

    /// The status of a certificate, if registered.
    pub fn status(&self, id: &CertificateId) -> Option<CertificateStatus> {
        self.statuses.read().get(id).copied()
    }

    /// How many certificates are registered.
    pub fn len(&self) -> usize {
        self.statuses.read().len()
    }

    /// Whether no certificate is registered.
    pub fn is_empty(&self) -> bool {
        self.statuses.read().is_empty()
    }

    /// Sets a status in the cache right away, for a change this process has just committed
    /// to the store (so the device can connect without waiting for the next `refresh`).
    /// The store stays the source of truth: the next `refresh` that sees the change
    /// overwrites this with the stored value.
    pub fn set_status(&self, id: CertificateId, status: CertificateStatus) {
        self.statuses.write().insert(id, status);
    }

    /// Re-reads the store if it changed (`Store::data_version`) and returns the ids whose
    /// status changed away from ACTIVE (or that were deleted), so their connections can be
    /// closed. Cheap when nothing changed; call it every few hundred milliseconds.
    ///
    /// When the store changed, only certificates written since the last refresh are read
    /// (`Store::certificate_statuses`); the whole table is re-read only if rows were deleted.
    /// Pass the same `Store` (or a clone of it) every time: `data_version` values of
    /// different `Store`s are not comparable (a mismatch only costs an extra read).
    pub fn refresh(&self, store: &Store) -> Result<Vec<CertificateId>, AuthError> {
        let mut sync = self.sync.lock();
        let version = store.data_version()?;
        if sync.data_version == Some(version) {
            return Ok(Vec::new());
        }
        let changes = store.certificate_statuses(sync.revision)?;
        let mut lost = Vec::new();
        {
            let mut statuses = self.statuses.write();
            for entry in &changes.changed {
                let before = statuses.insert(entry.id.clone(), entry.status);
                if before == Some(CertificateStatus::Active)
                    && entry.status != CertificateStatus::Active
                {
                    lost.push(entry.id.clone());
                }
                sync.revision = sync.revision.max(entry.revision);
            }
            let total = usize::try_from(changes.total).unwrap_or(usize::MAX);
            if statuses.len() != total {
                // Rows vanished (or `set_status` cached one the store does not have): rebuild.
                drop(statuses);
                let all = store.certificate_statuses(0)?;
                let fresh: HashMap<CertificateId, CertificateStatus> = all
                    .changed
                    .iter()
                    .map(|e| (e.id.clone(), e.status))
                    .collect();
                let mut statuses = self.statuses.write();
                for (id, status) in statuses.iter() {
                    if *status == CertificateStatus::Active
                        && fresh.get(id) != Some(&CertificateStatus::Active)
                        && !lost.contains(id)
                    {
                        lost.push(id.clone());
                    }
                }
                sync.revision = all.changed.iter().map(|e| e.revision).max().unwrap_or(0);
                *statuses = fresh;
            }
        }
        sync.data_version = Some(version);
        if !lost.is_empty() {
            tracing::info!(count = lost.len(), "certificates are no longer active");
        }
        Ok(lost)
    }

    /// A rustls client-certificate verifier: the chain must verify against `roots` (the
    /// platform root CA plus any registered CA) and the leaf must be registered and ACTIVE.
    pub fn client_verifier(
        &self,
        roots: Arc<rustls::RootCertStore>,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, AuthError> {
        Ok(Arc::new(RegistryClientVerifier::new(roots, self.clone())?))
    }
}
