//! PUBACK, PUBREC, PUBREL and PUBCOMP (MQTT 3.1.1 §3.4–3.7, MQTT 5 §3.4–3.7).
//!
//! In MQTT 5 the reason code and the properties may be left out: a Remaining Length of 2
//! means Success with no properties, 3 means a reason code and no properties.

use super::error::{DecodeError, EncodeError};
use super::properties::{PropertyContext, decode_properties, write_properties};
use super::reader::Reader;
use super::reason_codes::{self, check_reason, decode_reason};
use super::writer::Sink;
use crate::packet::{Properties, ProtocolVersion, PubResp, PubRespKind};
use crate::reason::ReasonCode;

/// The reason codes allowed in each of the four.
fn allowed_reasons(kind: PubRespKind) -> &'static [ReasonCode] {
    match kind {
        PubRespKind::PubAck | PubRespKind::PubRec => reason_codes::PUBACK_PUBREC,
        PubRespKind::PubRel | PubRespKind::PubComp => reason_codes::PUBREL_PUBCOMP,
    }
}

/// Reads the body of a PUBACK, PUBREC, PUBREL or PUBCOMP.
pub(super) fn decode(
    mut r: Reader,
    kind: PubRespKind,
    version: ProtocolVersion,
) -> Result<PubResp, DecodeError> {
    let packet_id = r.read_u16()?;
    let mut reason = ReasonCode::Success;
    let mut properties = Properties::default();
    if version == ProtocolVersion::V5 && !r.is_empty() {
        reason = decode_reason(r.read_u8()?, allowed_reasons(kind))?;
        if !r.is_empty() {
            properties = decode_properties(&mut r, PropertyContext::PubResp)?;
        }
    }
    r.finish()?;
    Ok(PubResp {
        kind,
        packet_id,
        reason,
        properties,
    })
}

/// Writes the body of a PUBACK, PUBREC, PUBREL or PUBCOMP, in its shortest form.
pub(super) fn write(
    sink: &mut impl Sink,
    p: &PubResp,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    sink.write_u16(p.packet_id);
    if version == ProtocolVersion::V5 {
        check_reason(p.reason, allowed_reasons(p.kind))?;
        let no_properties = p.properties.is_empty();
        if p.reason != ReasonCode::Success || !no_properties {
            sink.write_u8(p.reason as u8);
        }
        if !no_properties {
            write_properties(sink, &p.properties, PropertyContext::PubResp)?;
        }
    }
    Ok(())
}
