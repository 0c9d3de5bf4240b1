//! The SDK's typed errors.

use thingd_mqtt::ReasonCode;

/// A `.../rejected` answer of the Device Shadow service: the HTTP-like `code` (400, 401, 403,
/// 404, 409 version conflict, 413, 429, 500) and its `message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shadow request rejected with {code}: {message}")]
pub struct ShadowError {
    /// The error code of the rejected document (409 is a version conflict).
    pub code: u16,
    /// The error message of the rejected document.
    pub message: String,
}

/// Everything that can go wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The options are unusable: unreadable files, PEM without a certificate or key, a bad
    /// server name.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A TCP-level failure (connection refused, reset, unreachable).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// TLS failed on this side (for example the server's certificate is not signed by the
    /// root CA given, or does not name the server name).
    #[error("TLS failed: {0}")]
    Tls(rustls::Error),
    /// The server refused the TLS session with an alert. A revoked device certificate gives
    /// `CertificateRevoked`; an unknown or inactive one `BadCertificate` or similar.
    #[error("the server refused TLS with alert {alert:?}")]
    TlsRefused {
        /// The alert the server sent.
        alert: rustls::AlertDescription,
    },
    /// The server answered CONNECT with a failure: for MQTT 5 the reason code as sent
    /// (0x87 Not authorized, 0x86, 0x85, ...), for 3.1.1 the return code mapped onto one.
    #[error("the server refused the connection: {reason:?}")]
    ConnectionRefused {
        /// The CONNACK reason code.
        reason: ReasonCode,
    },
    /// The server closed the connection during or right after the TLS handshake, before
    /// CONNACK: what AWS IoT Core and thingd do to a certificate they do not accept or a
    /// client id the policy does not allow (MQTT 3.1.1).
    #[error(
        "the server closed the connection before CONNACK (certificate or client id not accepted)"
    )]
    ClosedDuringConnect,
    /// A publish or subscribe was refused by the server's authorization: an MQTT 5 PUBACK or
    /// SUBACK with reason 0x87, or (MQTT 3.1.1, where the server just disconnects) the
    /// connection closed twice in a row while this message was unacknowledged.
    #[error("not authorized to use topic {topic}")]
    NotAuthorized {
        /// The topic name or filter.
        topic: String,
        /// The MQTT 5 reason code, `None` when inferred from disconnects (MQTT 3.1.1).
        reason: Option<ReasonCode>,
    },
    /// The server acknowledged with a failure other than Not authorized.
    #[error("the server refused {topic}: {reason:?}")]
    Refused {
        /// The topic name or filter.
        topic: String,
        /// The reason code.
        reason: ReasonCode,
    },
    /// A Device Shadow request was rejected.
    #[error(transparent)]
    ShadowRejected(#[from] ShadowError),
    /// No answer within the time allowed.
    #[error("timed out")]
    Timeout,
    /// The message waited in the offline queue and was dropped to make room for newer ones
    /// (the queue is bounded and drops its oldest entry).
    #[error("dropped from the full offline queue")]
    QueueOverflow,
    /// The server sent bytes that are not MQTT, or broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The client was closed (dropped or `disconnect` called) before this completed.
    #[error("the client is closed")]
    Closed,
}

impl Error {
    /// True for the errors that mean the server does not accept this device or action
    /// (a refused certificate, a CONNACK, PUBACK or SUBACK Not authorized).
    pub fn is_not_authorized(&self) -> bool {
        match self {
            Error::TlsRefused { .. } | Error::ClosedDuringConnect | Error::NotAuthorized { .. } => {
                true
            }
            Error::ConnectionRefused { reason } => matches!(
                reason,
                ReasonCode::NotAuthorized | ReasonCode::BadUserNameOrPassword | ReasonCode::Banned
            ),
            _ => false,
        }
    }
}

/// Classifies an I/O error from a TLS stream: an alert from the server becomes
/// [`Error::TlsRefused`], a local TLS failure [`Error::Tls`].
pub(crate) fn classify_io(error: std::io::Error) -> Error {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    match tls {
        Some(rustls::Error::AlertReceived(alert)) => Error::TlsRefused { alert },
        Some(other) => Error::Tls(other),
        None => Error::Io(error),
    }
}
