//! Who may connect, for now: a connection over TLS must present a registered certificate whose
//! status is ACTIVE (the TLS verifier already checked it; this re-checks at CONNECT to close
//! the window between handshake and CONNECT). Once admitted, everything is allowed; IoT
//! policies replace `AllowAll` here when they arrive.

use std::sync::Arc;

use thingd_auth::CertificateRegistry;
use thingd_broker::{AllowAll, Authorizer, ConnectRequest, ConnectionInfo, ConnectionPolicy};
use thingd_model::{CertificateId, CertificateStatus};
use thingd_mqtt::ReasonCode;

/// Admits connections whose certificate is ACTIVE, and plain (development) connections.
pub struct CertificateAuthorizer {
    registry: CertificateRegistry,
}

impl CertificateAuthorizer {
    /// An authorizer reading statuses from `registry`.
    pub fn new(registry: CertificateRegistry) -> Self {
        CertificateAuthorizer { registry }
    }
}

impl Authorizer for CertificateAuthorizer {
    fn connect(
        &self,
        info: &ConnectionInfo,
        request: &ConnectRequest<'_>,
    ) -> Result<Arc<dyn ConnectionPolicy>, ReasonCode> {
        let client_id = request.client_id;
        if let Some(principal) = &info.principal {
            let status = CertificateId::parse(principal).and_then(|id| self.registry.status(&id));
            if status != Some(CertificateStatus::Active) {
                tracing::debug!(
                    client_id,
                    principal,
                    ?status,
                    "connect refused: certificate not active"
                );
                return Err(ReasonCode::NotAuthorized);
            }
        }
        AllowAll.connect(info, request)
    }
}
