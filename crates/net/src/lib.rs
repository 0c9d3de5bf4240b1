//! Listeners: where bytes from the network become broker connections.
//!
//! Owns: the accept loops (with a cap on concurrent connections and back-off on accept
//! errors), the TLS handshake with mandatory client certificates and its deadline, mapping
//! the verified client certificate to the connection's principal, ALPN dispatch on the HTTPS
//! port (`x-amzn-mqtt-ca` → MQTT, anything else → HTTP), MQTT over WebSocket at `/mqtt`, the
//! development-only plain TCP listener, and handshake metrics. Does not own: certificates and
//! their status (`thingd-auth`), MQTT itself (`thingd-broker`), or the HTTP API (the caller
//! passes an axum `Router`).
//!
//! # Layout
//! - `accept`: the shared accept loop and `ListenerLimits`; a connection whose descriptor
//!   lands near the open-file limit moves into an io_uring file table (`thingd-uring`).
//! - `socket`: `Socket`, a connection's TCP stream either way.
//! - `mqtt`: `serve_mqtts` (TLS, port 8883) and `serve_mqtt_plain` (TCP, development).
//! - `https`: `serve_https`, ALPN dispatch between MQTT and HTTP on one TLS port.
//! - `websocket`: `websocket_routes`, MQTT carried in WebSocket binary frames.
//! - `optional_client_auth`: the HTTPS port's verifier (certificate optional, checked if sent).

mod accept;
mod https;
mod mqtt;
mod optional_client_auth;
mod socket;
mod tls;
mod websocket;

pub use accept::{BeyondFileLimit, ListenerLimits};
pub use https::{ALPN_HTTP11, ALPN_MQTT_CA, serve_https};
pub use mqtt::{serve_mqtt_plain, serve_mqtts};
pub use optional_client_auth::OptionalClientAuth;
pub use socket::Socket;
pub use thingd_uring::Rings;
pub use websocket::websocket_routes;
