//! One TLS port for MQTT and HTTP, chosen by ALPN as AWS IoT does on port 443:
//! `x-amzn-mqtt-ca` selects MQTT; `http/1.1` (or no ALPN) selects HTTP, which serves the
//! given router plus MQTT over WebSocket at `/mqtt`.

use std::sync::Arc;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use thingd_broker::{Broker, ConnectionInfo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::accept::{ListenerLimits, accept_loop};
use crate::mqtt::{handshake, principal_of};
use crate::websocket::websocket_routes;

/// ALPN protocol id that AWS IoT devices send for MQTT with a client certificate on 443.
pub const ALPN_MQTT_CA: &[u8] = b"x-amzn-mqtt-ca";
/// ALPN protocol id for HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Serves MQTT and HTTP on one TLS port. `tls` should list [`ALPN_MQTT_CA`] and
/// [`ALPN_HTTP11`] in its ALPN protocols. `http` is merged with the WebSocket routes.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    broker: Broker,
    http: Router,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let timeout = limits.handshake_timeout;
    let app = http.merge(websocket_routes(broker.clone()));
    accept_loop(listener, &limits, shutdown, move |stream, peer| {
        let acceptor = acceptor.clone();
        let broker = broker.clone();
        let app = app.clone();
        async move {
            // Boxed in a statement of its own, as in `serve_mqtts`.
            let accepting = acceptor.accept(stream);
            let handshaking = Box::pin(handshake(accepting, peer, timeout, "https"));
            let Some(tls) = handshaking.await else {
                return;
            };
            let principal = principal_of(&tls);
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            if alpn.as_deref() == Some(ALPN_MQTT_CA) {
                // The certificate is optional on this port (for SigV4 HTTP); MQTT needs one.
                if principal.is_none() {
                    tracing::debug!(%peer, "MQTT over ALPN without a client certificate; closing");
                    metrics::counter!(
                        "thingd_tls_handshake_failures_total",
                        "listener" => "https",
                        "reason" => "no_client_certificate"
                    )
                    .increment(1);
                    return;
                }
                let info = ConnectionInfo {
                    remote_addr: peer,
                    principal,
                    listener: "mqtts-alpn",
                };
                // Boxed, so the task keeps only what the connection needs from now on.
                let serving = Box::pin(broker.serve_connection(tls, info));
                serving.await;
                return;
            }
            let info = ConnectionInfo {
                remote_addr: peer,
                principal,
                listener: "https",
            };
            let service = TowerToHyperService::new(app.layer(axum::Extension(info)));
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades()
                .await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "HTTP connection ended with an error");
            }
        }
    })
    .await;
}
