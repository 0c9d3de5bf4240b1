//! The errors of decoding and encoding.

use crate::reason::ReasonCode;

/// Why a packet could not be decoded. Each maps to the MQTT 5 reason code a server sends in
/// its DISCONNECT (or CONNACK, for a bad CONNECT); a 3.1.1 server just closes the connection.
///
/// When `decode` returns an error other than `TooLarge`, the bytes of the offending packet
/// may already have been removed from the buffer: the connection is to be closed anyway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes break the packet grammar (bad lengths, bad UTF-8, reserved bits, QoS 3, a
    /// PUBLISH with QoS 0 and DUP, an unknown property...).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet is well-formed but the spec forbids it here (e.g. a property that does not
    /// belong to this packet or appears twice, a SUBSCRIBE without filters, Retain Handling 3).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The whole packet would exceed the maximum packet size.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The size announced by the fixed header, in bytes, header included.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// CONNECT named a protocol name or level other than MQTT 3.1.1 or 5.
    #[error("unsupported protocol name or level {level}")]
    UnsupportedProtocol {
        /// The protocol level byte as sent.
        level: u8,
    },
}

impl DecodeError {
    /// The MQTT 5 reason code for this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MalformedPacket,
            DecodeError::Protocol(_) => ReasonCode::ProtocolError,
            DecodeError::TooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocol { .. } => ReasonCode::UnsupportedProtocolVersion,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The packet is larger than the 268,435,455-byte limit of the remaining length.
    #[error("packet too large to encode")]
    TooLarge,
    /// A field does not fit its wire type or breaks a rule the decoder enforces (a string
    /// over 65,535 bytes, a PUBLISH with QoS > 0 and no packet id, an empty SUBSCRIBE...).
    #[error("invalid packet: {0}")]
    Invalid(&'static str),
}
