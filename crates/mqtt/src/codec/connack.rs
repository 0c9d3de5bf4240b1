//! CONNACK (MQTT 3.1.1 §3.2, MQTT 5 §3.2).

use super::error::{DecodeError, EncodeError};
use super::properties::{PropertyContext, decode_properties, write_properties};
use super::reader::Reader;
use super::reason_codes::{self, check_reason, decode_reason};
use super::writer::Sink;
use crate::packet::{ConnAck, Properties, ProtocolVersion};
use crate::reason::ReasonCode;

/// The only defined bit of the Connect Acknowledge Flags; the other seven are reserved.
const SESSION_PRESENT: u8 = 0x01;

/// Reads the body of a CONNACK.
pub(super) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.read_u8()?;
    if flags & !SESSION_PRESENT != 0 {
        return Err(DecodeError::Malformed("reserved CONNACK flag is set"));
    }
    let code = r.read_u8()?;
    let (reason, properties) = match version {
        ProtocolVersion::V311 => {
            let reason = ReasonCode::from_v311_connack(code)
                .ok_or(DecodeError::Malformed("unknown CONNACK return code"))?;
            (reason, Properties::default())
        }
        ProtocolVersion::V5 => {
            let reason = decode_reason(code, reason_codes::CONNACK)?;
            (reason, decode_properties(&mut r, PropertyContext::ConnAck)?)
        }
    };
    r.finish()?;
    Ok(ConnAck {
        session_present: flags & SESSION_PRESENT != 0,
        reason,
        properties,
    })
}

/// Writes the body of a CONNACK. For 3.1.1 the reason becomes the nearest return code.
pub(super) fn write(
    sink: &mut impl Sink,
    c: &ConnAck,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    sink.write_u8(if c.session_present {
        SESSION_PRESENT
    } else {
        0
    });
    match version {
        ProtocolVersion::V311 => sink.write_u8(c.reason.to_v311_connack()),
        ProtocolVersion::V5 => {
            check_reason(c.reason, reason_codes::CONNACK)?;
            sink.write_u8(c.reason as u8);
            write_properties(sink, &c.properties, PropertyContext::ConnAck)?;
        }
    }
    Ok(())
}
