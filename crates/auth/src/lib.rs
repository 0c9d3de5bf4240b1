//! Who may connect: the platform certificate authority and the registry of device certificates
//! that the TLS handshake checks.
//!
//! Owns: creating and loading the root CA and the server certificate in the data directory
//! (keys written with mode 0600), issuing device certificates, the in-memory certificate
//! registry (id → status, refreshed from the store) and the rustls `ClientCertVerifier` that
//! accepts a client certificate only if it chains to a trusted CA *and* is registered ACTIVE.
//! Does not own: IoT policies (a later layer), listeners, or the MQTT session.
//!
//! # Layout
//! - `ca`: `CertificateAuthority` — root CA, server certificate, device certificates.
//! - `registry`: `CertificateRegistry` — the status cache and its refresh from the store.
//! - `verifier`: `RegistryClientVerifier` — the rustls client-certificate check.
//!
//! PLACEHOLDER SIGNATURES: the implementation is being written; the API below is the contract.

use std::path::Path;
use std::sync::Arc;

use thingd_model::{CertificateId, CertificateStatus};
use thingd_store::Store;

/// Errors from the CA and registry.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Reading or writing key material failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Generating or signing a certificate failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A PEM or DER input could not be parsed.
    #[error("invalid certificate or key: {0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] thingd_store::StoreError),
    /// rustls rejected the configuration.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
}

/// A device certificate and key, as issued.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// Its id (lowercase hex SHA-256 of the DER).
    pub id: CertificateId,
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// The private key, PEM (PKCS#8).
    pub private_key_pem: String,
}

/// The platform CA, loaded from or created in the data directory.
pub struct CertificateAuthority {
    _p: (),
}

impl CertificateAuthority {
    /// Loads `root-ca.pem`/`root-ca.key` and `server.pem`/`server.key` from `dir`, creating any
    /// that are missing. The server certificate covers `localhost`, `127.0.0.1`, `::1`, the
    /// host name and `extra_names` (DNS names or IP addresses); if it exists but lacks one of
    /// those names it is re-issued. Keys are written with mode 0600.
    pub fn load_or_create(
        dir: &Path,
        extra_names: &[String],
    ) -> Result<CertificateAuthority, AuthError> {
        let _ = (dir, extra_names);
        unimplemented!()
    }

    /// The root CA certificate, PEM (what devices trust).
    pub fn root_pem(&self) -> &str {
        unimplemented!()
    }

    /// Issues a device certificate (ECDSA P-256 key by default, or RSA-2048 when `rsa` is
    /// set, as AWS's CreateKeysAndCertificate does) with subject CN `common_name`.
    pub fn issue_device_certificate(
        &self,
        common_name: &str,
        rsa: bool,
    ) -> Result<IssuedCertificate, AuthError> {
        let _ = (common_name, rsa);
        unimplemented!()
    }

    /// A rustls server config: the server certificate, TLS 1.2 and 1.3, the aws-lc-rs provider,
    /// client certificates mandatory and checked by `verifier`, and the given ALPN protocols.
    pub fn server_config(
        &self,
        verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Arc<rustls::ServerConfig>, AuthError> {
        let _ = (verifier, alpn);
        unimplemented!()
    }
}

/// Live view of certificate statuses, shared by the TLS verifier and the broker.
#[derive(Clone)]
pub struct CertificateRegistry {
    _p: (),
}

impl CertificateRegistry {
    /// Loads every certificate from `store`.
    pub fn load(store: &Store) -> Result<CertificateRegistry, AuthError> {
        let _ = store;
        unimplemented!()
    }

    /// The status of a certificate, if registered.
    pub fn status(&self, id: &CertificateId) -> Option<CertificateStatus> {
        let _ = id;
        unimplemented!()
    }

    /// Re-reads the store if it changed (`Store::data_version`) and returns the ids whose
    /// status changed away from ACTIVE (or that were deleted), so their connections can be
    /// closed. Cheap when nothing changed; call it every few hundred milliseconds.
    pub fn refresh(&self, store: &Store) -> Result<Vec<CertificateId>, AuthError> {
        let _ = store;
        unimplemented!()
    }

    /// A rustls client-certificate verifier: the chain must verify against `roots` (the
    /// platform root CA plus any registered CA) and the leaf must be registered and ACTIVE.
    pub fn client_verifier(
        &self,
        roots: Arc<rustls::RootCertStore>,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, AuthError> {
        let _ = roots;
        unimplemented!()
    }
}
