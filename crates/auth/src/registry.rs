//! The certificate status cache the TLS handshake consults.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use thingd_model::{CertificateId, CertificateStatus};
use thingd_store::Store;
use thingd_store::registry::security::{ca_certificates, certificates};

use crate::verifier::RegistryClientVerifier;
use crate::{AuthError, provider};

/// How a registered certificate that need not chain to the thingd root is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Registered without a CA (RegisterCertificateWithoutCA): its registration and the TLS
    /// proof of possession are enough.
    WithoutCa,
    /// Registered under a CA: it chains to the thingd root or, if the id is given, to that
    /// registered CA while it is ACTIVE.
    Ca(Option<String>),
}

/// Live view of certificate statuses, shared by the TLS verifier and the broker.
///
/// Cheap to clone (clones share the cache). Reads (`status`) take a read lock on a hash map;
/// `refresh` swaps in changes from the store.
#[derive(Clone)]
pub struct CertificateRegistry {
    statuses: Arc<RwLock<HashMap<CertificateId, CertificateStatus>>>,
    /// Certificates not issued by the thingd root, and how they are trusted.
    trust: Arc<RwLock<HashMap<CertificateId, Trust>>>,
    /// A chain verifier per ACTIVE registered CA, by CA certificate id.
    cas: Arc<RwLock<HashMap<String, Arc<dyn ClientCertVerifier>>>>,
    sync: Arc<Mutex<SyncPoint>>,
    /// Where statuses come from: read directly for a certificate the cache has not seen yet
    /// (registered a moment ago, by the CLI or another process), so a device can connect
    /// right after registration instead of after the next `refresh`.
    store: Store,
}

/// How far the cache has followed the store.
#[derive(Debug, Default)]
struct SyncPoint {
    /// `Store::data_version` when last checked.
    data_version: Option<i64>,
    /// Highest certificate revision applied.
    revision: i64,
    /// Highest certificate revision whose trust was read.
    trust_revision: i64,
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
            trust: Arc::new(RwLock::new(HashMap::new())),
            cas: Arc::new(RwLock::new(HashMap::new())),
            sync: Arc::new(Mutex::new(SyncPoint::default())),
            store: store.clone(),
        };
        registry.refresh(store)?;
        Ok(registry)
    }

    /// The status of a certificate, if registered.
    pub fn status(&self, id: &CertificateId) -> Option<CertificateStatus> {
        if let Some(status) = self.statuses.read().get(id).copied() {
            return Some(status);
        }
        // Not seen yet: one point read (this runs inside the TLS handshake, so only misses
        // pay for it; a certificate must already chain to a trusted CA to get here).
        let record = self.store.certificate(id).ok().flatten()?;
        self.statuses.write().insert(id.clone(), record.status);
        Some(record.status)
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

    /// How a certificate is trusted when it does not chain to the thingd root, if it was
    /// registered that way.
    pub fn trust(&self, id: &CertificateId) -> Option<Trust> {
        self.trust.read().get(id).cloned()
    }

    /// Records at once how a certificate this process has just registered is trusted (like
    /// [`Self::set_status`], the next `refresh` re-reads it from the store).
    pub fn set_trust(&self, id: CertificateId, trust: Trust) {
        self.trust.write().insert(id, trust);
    }

    /// The chain verifier of an ACTIVE registered CA.
    pub fn ca_verifier(&self, ca_id: &str) -> Option<Arc<dyn ClientCertVerifier>> {
        self.cas.read().get(ca_id).cloned()
    }

    /// Records at once that a registered CA is ACTIVE (`Some(pem)`) or not (`None`), for a
    /// change this process has just committed.
    pub fn set_ca(&self, ca_id: &str, active_pem: Option<&str>) {
        match active_pem.and_then(|pem| ca_chain_verifier(ca_id, pem)) {
            Some(verifier) => {
                self.cas.write().insert(ca_id.to_owned(), verifier);
            }
            None => {
                self.cas.write().remove(ca_id);
            }
        }
    }

    /// Re-reads the trust of certificates written since the last look (all of them when
    /// `rebuild`), and the ACTIVE registered CAs.
    fn refresh_trust(
        &self,
        store: &Store,
        sync: &mut SyncPoint,
        rebuild: bool,
    ) -> Result<(), AuthError> {
        let after = if rebuild { 0 } else { sync.trust_revision };
        let entries = store.read(|conn| certificates::trust_since(conn, after))?;
        {
            let mut trust = self.trust.write();
            if rebuild {
                trust.clear();
            }
            for entry in entries {
                sync.trust_revision = sync.trust_revision.max(entry.revision);
                let Some(id) = CertificateId::parse(&entry.id) else {
                    continue;
                };
                let how = match entry.origin {
                    certificates::Origin::NoCa => Trust::WithoutCa,
                    certificates::Origin::Ca => Trust::Ca(entry.ca_id),
                    certificates::Origin::Issued => continue,
                };
                trust.insert(id, how);
            }
        }
        let active = store.read(ca_certificates::active)?;
        let known: Vec<String> = self.cas.read().keys().cloned().collect();
        let mut cas = self.cas.write();
        for id in known {
            if !active.iter().any(|(a, _)| *a == id) {
                cas.remove(&id);
            }
        }
        for (id, pem) in active {
            if !cas.contains_key(&id)
                && let Some(verifier) = ca_chain_verifier(&id, &pem)
            {
                cas.insert(id, verifier);
            }
        }
        Ok(())
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
        let mut rebuilt = false;
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
                rebuilt = true;
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
        self.refresh_trust(store, &mut sync, rebuilt)?;
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

/// A webpki client verifier trusting one registered CA.
fn ca_chain_verifier(ca_id: &str, pem: &str) -> Option<Arc<dyn ClientCertVerifier>> {
    let built = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| e.to_string())
        .and_then(|der| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(der).map_err(|e| e.to_string())?;
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| e.to_string())
        });
    match built {
        Ok(verifier) => Some(verifier),
        Err(error) => {
            tracing::warn!(ca = ca_id, %error, "registered CA certificate cannot be a trust anchor");
            None
        }
    }
}
