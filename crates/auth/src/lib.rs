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
//! Every rustls object is built with the aws-lc-rs provider explicitly, never the process
//! default.

mod ca;
mod inspect;
mod registry;
mod subject;
mod verifier;

pub use ca::CertificateAuthority;
pub use inspect::{CertificateInfo, inspect_certificate_pem, is_signed_by};
pub use registry::{CertificateRegistry, Trust};
pub use subject::certificate_context;
pub use verifier::RegistryClientVerifier;

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use thingd_model::CertificateId;

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

/// A device certificate and key, as issued. Its `Debug` output leaves the key out.
#[derive(Clone)]
pub struct IssuedCertificate {
    /// Its id (lowercase hex SHA-256 of the DER).
    pub id: CertificateId,
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// The private key, PEM (PKCS#8).
    pub private_key_pem: String,
    /// The public key, PEM (SubjectPublicKeyInfo, `BEGIN PUBLIC KEY`).
    pub public_key_pem: String,
}

/// A certificate issued for a CSR (the requester keeps the key).
#[derive(Debug, Clone)]
pub struct SignedCertificate {
    /// Its id (lowercase hex SHA-256 of the DER).
    pub id: CertificateId,
    /// The certificate, PEM.
    pub certificate_pem: String,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("id", &self.id)
            .field("certificate_pem", &self.certificate_pem)
            .finish_non_exhaustive()
    }
}

/// The id of the certificate a TLS client authenticated with (the leaf of its chain), once
/// the handshake has got that far.
pub fn peer_certificate_id(conn: &rustls::ServerConnection) -> Option<CertificateId> {
    conn.peer_certificates().and_then(leaf_certificate_id)
}

/// The id of the first (leaf) certificate of a presented chain.
pub fn leaf_certificate_id(chain: &[CertificateDer<'_>]) -> Option<CertificateId> {
    chain.first().map(|leaf| CertificateId::from_der(leaf))
}

/// The crypto provider every config and verifier here uses.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The provider of the server configs: AES-128-GCM with SHA-256 first, as in AWS IoT Core's
/// security policies. The servers choose by their own order (`ignore_client_order`); most
/// clients, rustls among them, list AES-256-GCM with SHA-384 first, and SHA-384 has no CPU
/// instructions on x86, so its key schedule took a tenth of the broker's CPU per handshake.
pub(crate) fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite as S;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|s| match s.suite() {
        S::TLS13_AES_128_GCM_SHA256 => 0,
        S::TLS13_AES_256_GCM_SHA384 => 1,
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 2,
        _ => 3,
    });
    Arc::new(provider)
}
