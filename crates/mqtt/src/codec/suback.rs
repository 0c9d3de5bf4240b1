//! SUBACK (MQTT 3.1.1 §3.9, MQTT 5 §3.9).

use super::error::{DecodeError, EncodeError};
use super::properties::{PropertyContext, decode_properties, write_properties};
use super::reader::Reader;
use super::reason_codes::{self, check_reason, decode_reason, from_v311_suback, to_v311_suback};
use super::writer::Sink;
use crate::packet::{Properties, ProtocolVersion, SubAck};

/// Reads the body of a SUBACK.
pub(super) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = r.read_u16()?;
    let properties = match version {
        ProtocolVersion::V311 => Properties::default(),
        ProtocolVersion::V5 => decode_properties(&mut r, PropertyContext::SubAck)?,
    };
    let mut reasons = Vec::new();
    while !r.is_empty() {
        let code = r.read_u8()?;
        reasons.push(match version {
            ProtocolVersion::V311 => from_v311_suback(code)?,
            ProtocolVersion::V5 => decode_reason(code, reason_codes::SUBACK)?,
        });
    }
    if reasons.is_empty() {
        return Err(DecodeError::Protocol("SUBACK with no reason codes"));
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

/// Writes the body of a SUBACK. For 3.1.1 every failure, whatever its reason code,
/// becomes return code 0x80.
pub(super) fn write(
    sink: &mut impl Sink,
    s: &SubAck,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    if s.reasons.is_empty() {
        return Err(EncodeError::Invalid("SUBACK with no reason codes"));
    }
    sink.write_u16(s.packet_id);
    if version == ProtocolVersion::V5 {
        write_properties(sink, &s.properties, PropertyContext::SubAck)?;
    }
    for &reason in &s.reasons {
        let code = match version {
            ProtocolVersion::V311 => to_v311_suback(reason)?,
            ProtocolVersion::V5 => {
                check_reason(reason, reason_codes::SUBACK)?;
                reason as u8
            }
        };
        sink.write_u8(code);
    }
    Ok(())
}
