//! Connection and subscription events, for services outside the broker (AWS lifecycle
//! events, the console). The broker only reports what happened; what the events look like on
//! the wire is the subscriber's business. In-process (internal) clients raise no events.

use std::net::SocketAddr;
use std::sync::Arc;

/// Why a connection ended, in the terms AWS IoT's lifecycle events use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectCause {
    /// The client sent DISCONNECT.
    ClientInitiated,
    /// The socket closed or failed without a DISCONNECT.
    ConnectionLost,
    /// Nothing arrived for 1.5 × the keep-alive.
    KeepAliveTimeout,
    /// Another connection with the same client id took over.
    DuplicateClientId,
    /// The client broke the protocol or a limit.
    ClientError,
    /// An operation was not authorized.
    AuthError,
    /// The server closed it (shutdown, certificate revoked, administrative action).
    ServerInitiated,
}

impl DisconnectCause {
    /// The AWS `disconnectReason` value.
    pub fn aws_reason(self) -> &'static str {
        match self {
            DisconnectCause::ClientInitiated => "CLIENT_INITIATED_DISCONNECT",
            DisconnectCause::ConnectionLost => "CONNECTION_LOST",
            DisconnectCause::KeepAliveTimeout => "MQTT_KEEP_ALIVE_TIMEOUT",
            DisconnectCause::DuplicateClientId => "DUPLICATE_CLIENTID",
            DisconnectCause::ClientError => "CLIENT_ERROR",
            DisconnectCause::AuthError => "AUTH_ERROR",
            DisconnectCause::ServerInitiated => "SERVER_INITIATED_DISCONNECT",
        }
    }
}

/// Something that happened to a client connection.
#[derive(Debug, Clone)]
pub enum BrokerEvent {
    /// CONNACK was sent with success.
    Connected {
        /// Client id.
        client_id: Arc<str>,
        /// Certificate id, if any.
        principal: Option<Arc<str>>,
        /// Peer address.
        remote_addr: SocketAddr,
        /// Identifies this connection (the same value appears on its `Disconnected`).
        connection_id: u64,
    },
    /// The connection closed.
    Disconnected {
        /// Client id.
        client_id: Arc<str>,
        /// Certificate id, if any.
        principal: Option<Arc<str>>,
        /// Identifies the connection.
        connection_id: u64,
        /// Why.
        cause: DisconnectCause,
    },
    /// Filters granted by a SUBSCRIBE.
    Subscribed {
        /// Client id.
        client_id: Arc<str>,
        /// Certificate id, if any.
        principal: Option<Arc<str>>,
        /// Identifies the connection.
        connection_id: u64,
        /// The filters granted, as sent.
        filters: Vec<String>,
    },
    /// Filters removed by an UNSUBSCRIBE.
    Unsubscribed {
        /// Client id.
        client_id: Arc<str>,
        /// Certificate id, if any.
        principal: Option<Arc<str>>,
        /// Identifies the connection.
        connection_id: u64,
        /// The filters removed, as sent.
        filters: Vec<String>,
    },
}
