//! Decoding and encoding of whole packets.
//!
//! PLACEHOLDER SIGNATURES: the implementation is being written; the API below is the contract.

use bytes::BytesMut;

use crate::packet::{Packet, ProtocolVersion};
use crate::reason::ReasonCode;

/// Why a packet could not be decoded. Each maps to the MQTT 5 reason code a server sends in
/// its DISCONNECT (or CONNACK, for a bad CONNECT); a 3.1.1 server just closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes break the packet grammar (bad lengths, bad UTF-8, reserved bits...).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet is well-formed but the spec forbids it here (e.g. a property that does not
    /// belong to this packet, QoS 3, a PUBLISH with QoS 0 and DUP).
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
    /// A field does not fit its wire type (a string over 65,535 bytes, a PUBLISH with QoS > 0
    /// and no packet id, an empty SUBSCRIBE...).
    #[error("invalid packet: {0}")]
    Invalid(&'static str),
}

/// Decodes the packet at the front of `buf`, if a whole one has arrived, and removes its
/// bytes from `buf`. Returns `Ok(None)` when more bytes are needed; a fixed header that
/// announces more than `max_packet_size` bytes is rejected as soon as it is read, before the
/// body arrives. `version` is the connection's protocol version; CONNECT carries its own and
/// is decoded whatever `version` says. Topic names, payloads and binary properties in the
/// result are slices of `buf`'s allocation.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let _ = (buf, version, max_packet_size);
    unimplemented!("codec in progress")
}

/// Appends the encoding of `packet` for `version` to `out`. Fields that `version` cannot
/// carry (properties and reason codes for 3.1.1) are left out.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let _ = (packet, version, out);
    unimplemented!("codec in progress")
}

/// The number of bytes `encode` would write for `packet`, fixed header included.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let _ = (packet, version);
    unimplemented!("codec in progress")
}
