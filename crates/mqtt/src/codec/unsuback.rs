//! UNSUBACK (MQTT 3.1.1 §3.11, MQTT 5 §3.11). In 3.1.1 it is only a packet identifier.

use super::error::{DecodeError, EncodeError};
use super::properties::{PropertyContext, decode_properties, write_properties};
use super::reader::Reader;
use super::reason_codes::{self, check_reason, decode_reason};
use super::writer::Sink;
use crate::packet::{Properties, ProtocolVersion, UnsubAck};

/// Reads the body of an UNSUBACK.
pub(super) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.read_u16()?;
    let mut properties = Properties::default();
    let mut reasons = Vec::new();
    if version == ProtocolVersion::V5 {
        properties = decode_properties(&mut r, PropertyContext::UnsubAck)?;
        while !r.is_empty() {
            reasons.push(decode_reason(r.read_u8()?, reason_codes::UNSUBACK)?);
        }
        if reasons.is_empty() {
            return Err(DecodeError::Protocol("UNSUBACK with no reason codes"));
        }
    }
    r.finish()?;
    Ok(UnsubAck {
        packet_id,
        reasons,
        properties,
    })
}

/// Writes the body of an UNSUBACK; 3.1.1 leaves the reason codes out.
pub(super) fn write(
    sink: &mut impl Sink,
    u: &UnsubAck,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    sink.write_u16(u.packet_id);
    if version == ProtocolVersion::V5 {
        if u.reasons.is_empty() {
            return Err(EncodeError::Invalid("UNSUBACK with no reason codes"));
        }
        write_properties(sink, &u.properties, PropertyContext::UnsubAck)?;
        for &reason in &u.reasons {
            check_reason(reason, reason_codes::UNSUBACK)?;
            sink.write_u8(reason as u8);
        }
    }
    Ok(())
}
