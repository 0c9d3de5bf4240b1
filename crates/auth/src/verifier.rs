//! The rustls client-certificate check: a valid chain *and* an ACTIVE registration.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use thingd_model::{CertificateId, CertificateStatus};

use crate::{AuthError, CertificateRegistry, Trust, provider};

/// Accepts a client certificate only if it chains to one of the trusted roots (checked by
/// rustls' webpki verifier: signatures, validity dates, client-auth usage) and the registry
/// says it is ACTIVE. Client authentication is mandatory.
///
/// A registered certificate that does not chain to those roots is also accepted when the
/// registry says it was registered without a CA (RegisterCertificateWithoutCA: the TLS
/// proof of possession of its key is then the only check besides its status), or under a
/// registered CA that is ACTIVE and that it chains to.
///
/// Rejections: a REVOKED certificate fails with `CertificateError::Revoked` (the client sees
/// a `certificate_revoked` alert); an unregistered or otherwise inactive one with
/// `CertificateError::ApplicationVerificationFailure`.
pub struct RegistryClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    registry: CertificateRegistry,
    /// Certificates (sent without intermediates) whose chain to the roots was verified, with
    /// their validity window in Unix seconds. That check is a signature verification whose
    /// outcome depends only on the certificate's bytes and the roots, which never change, so
    /// a device that reconnects skips it; the dates are checked on every connection, and the
    /// proof of possession of the key and the registry status always run.
    verified_chains: parking_lot::Mutex<HashMap<CertificateId, (i64, i64)>>,
}

/// Most entries of `verified_chains`; it starts over when full.
const MAX_VERIFIED_CHAINS: usize = 200_000;

impl std::fmt::Debug for RegistryClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClientVerifier")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl RegistryClientVerifier {
    /// A verifier trusting `roots` and checking statuses in `registry`.
    pub fn new(
        roots: Arc<rustls::RootCertStore>,
        registry: CertificateRegistry,
    ) -> Result<RegistryClientVerifier, AuthError> {
        let chain = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| AuthError::Invalid(format!("client verifier: {e}")))?;
        Ok(RegistryClientVerifier {
            chain,
            registry,
            verified_chains: parking_lot::Mutex::new(HashMap::new()),
        })
    }
}

impl RegistryClientVerifier {
    fn remember_chain(&self, id: &CertificateId, der: &CertificateDer<'_>) {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return;
        };
        let window = (
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        );
        let mut known = self.verified_chains.lock();
        if known.len() >= MAX_VERIFIED_CHAINS {
            known.clear();
        }
        known.insert(id.clone(), window);
    }
}

impl ClientCertVerifier for RegistryClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = CertificateId::from_der(end_entity);
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let chain_known_good = intermediates.is_empty()
            && self
                .verified_chains
                .lock()
                .get(&id)
                .is_some_and(|&(from, until)| from <= now_secs && now_secs <= until);
        let chain = if chain_known_good {
            Ok(())
        } else {
            let checked = self
                .chain
                .verify_client_cert(end_entity, intermediates, now)
                .map(drop);
            if checked.is_ok() && intermediates.is_empty() {
                self.remember_chain(&id, end_entity);
            }
            checked
        };
        if let Err(err) = chain {
            // Not from the thingd root: a certificate registered without a CA needs no chain;
            // one registered under a CA must chain to that CA while it is ACTIVE.
            let fallback = match self.registry.trust(&id) {
                Some(Trust::WithoutCa) => Ok(()),
                Some(Trust::Ca(Some(ca))) => match self.registry.ca_verifier(&ca) {
                    Some(verifier) => verifier
                        .verify_client_cert(end_entity, intermediates, now)
                        .map(drop),
                    None => Err(err),
                },
                _ => Err(err),
            };
            if let Err(err) = fallback {
                tracing::debug!(certificate = %id, error = %err, "client certificate rejected");
                return Err(err);
            }
        }
        match self.registry.status(&id) {
            Some(CertificateStatus::Active) => Ok(ClientCertVerified::assertion()),
            Some(CertificateStatus::Revoked) => {
                tracing::debug!(certificate = %id, "client certificate is revoked");
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
            other => {
                tracing::debug!(
                    certificate = %id,
                    status = other.map_or("UNREGISTERED", CertificateStatus::as_str),
                    "client certificate is not active"
                );
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
