//! MQTT listeners: over TLS with client certificates, and plain TCP for development.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use thingd_broker::{Broker, ConnectionInfo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accept::{ListenerLimits, accept_loop};

/// Serves MQTT over TLS (port 8883). The TLS config must demand a client certificate; the
/// connection's principal is that certificate's id. TLS runs on rustls's unbuffered API
/// (see `tls`), which keeps an idle connection's buffers small.
pub async fn serve_mqtts(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    broker: Broker,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) {
    let timeout = limits.handshake_timeout;
    accept_loop(listener, &limits, shutdown, move |stream, peer| {
        let config = tls.clone();
        let broker = broker.clone();
        async move {
            // The handshake and the connection each run boxed, and each box is made in a
            // statement of its own: a temporary of the statement that awaits (even one moved
            // into a box) keeps its space in the task for the connection's whole life.
            let accepting = crate::tls::accept(stream, config);
            let handshaking = Box::pin(handshake(accepting, peer, timeout, "mqtts"));
            let Some(tls) = handshaking.await else {
                return;
            };
            let serving = serve_boxed(&broker, tls, peer);
            serving.await;
        }
    })
    .await;
}

/// The boxed serving future of an MQTT connection over TLS.
fn serve_boxed(
    broker: &Broker,
    tls: crate::tls::TlsStream,
    peer: SocketAddr,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let principal = tls
        .peer_certificates()
        .and_then(thingd_auth::leaf_certificate_id)
        .map(|id| id.as_str().to_owned());
    let info = ConnectionInfo {
        remote_addr: peer,
        principal,
        listener: "mqtts",
    };
    Box::pin(broker.serve_connection(tls, info))
}

/// Serves MQTT over plain TCP. For development only: connections have no principal.
pub async fn serve_mqtt_plain(
    listener: TcpListener,
    broker: Broker,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) {
    // No `async` block around the connection's future: it would keep a second copy of the
    // stream for the connection's life.
    accept_loop(listener, &limits, shutdown, move |stream, peer| {
        let info = ConnectionInfo {
            remote_addr: peer,
            principal: None,
            listener: "mqtt",
        };
        broker.serve_connection(stream, info)
    })
    .await;
}

/// Runs a TLS handshake (`accepting`) under a deadline, counting failures by reason.
pub(crate) async fn handshake<T>(
    accepting: impl Future<Output = std::io::Result<T>>,
    peer: SocketAddr,
    timeout: std::time::Duration,
    listener: &'static str,
) -> Option<T> {
    match tokio::time::timeout(timeout, accepting).await {
        Ok(Ok(tls)) => {
            metrics::counter!("thingd_tls_handshakes_total", "listener" => listener).increment(1);
            Some(tls)
        }
        Ok(Err(error)) => {
            let reason = handshake_failure_reason(&error);
            metrics::counter!("thingd_tls_handshake_failures_total", "listener" => listener, "reason" => reason)
                .increment(1);
            tracing::debug!(%peer, %error, reason, "TLS handshake refused");
            None
        }
        Err(_) => {
            metrics::counter!("thingd_tls_handshake_failures_total", "listener" => listener, "reason" => "timeout")
                .increment(1);
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// The principal of a TLS connection: the id of the client certificate it presented.
pub(crate) fn principal_of<S>(tls: &tokio_rustls::server::TlsStream<S>) -> Option<String> {
    let (_, conn) = tls.get_ref();
    thingd_auth::peer_certificate_id(conn).map(|id| id.as_str().to_owned())
}

/// A short, bounded label for a failed handshake, for the metric.
fn handshake_failure_reason(error: &std::io::Error) -> &'static str {
    let Some(tls_error) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return "io";
    };
    match tls_error {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked) => {
            "certificate_revoked"
        }
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            "unknown_issuer"
        }
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ) => "certificate_not_active",
        rustls::Error::InvalidCertificate(rustls::CertificateError::Expired) => {
            "certificate_expired"
        }
        rustls::Error::InvalidCertificate(_) => "invalid_certificate",
        rustls::Error::NoApplicationProtocol => "no_application_protocol",
        rustls::Error::PeerIncompatible(_) => "peer_incompatible",
        rustls::Error::AlertReceived(_) => "alert_received",
        _ => "tls_error",
    }
}
