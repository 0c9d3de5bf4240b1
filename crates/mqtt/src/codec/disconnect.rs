//! DISCONNECT (MQTT 3.1.1 §3.14, MQTT 5 §3.14).
//!
//! In 3.1.1 it has no body. In MQTT 5 a Remaining Length of 0 means Normal disconnection
//! with no properties, and 1 means a reason code with no properties.

use super::error::{DecodeError, EncodeError};
use super::properties::{PropertyContext, decode_properties, write_properties};
use super::reader::Reader;
use super::reason_codes::{self, check_reason, decode_reason};
use super::writer::Sink;
use crate::packet::{Disconnect, Properties, ProtocolVersion};
use crate::reason::ReasonCode;

/// Reads the body of a DISCONNECT.
pub(super) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Disconnect, DecodeError> {
    let mut reason = ReasonCode::NORMAL_DISCONNECTION;
    let mut properties = Properties::default();
    if version == ProtocolVersion::V5 && !r.is_empty() {
        reason = decode_reason(r.read_u8()?, reason_codes::DISCONNECT)?;
        if !r.is_empty() {
            properties = decode_properties(&mut r, PropertyContext::Disconnect)?;
        }
    }
    r.finish()?;
    Ok(Disconnect { reason, properties })
}

/// Writes the body of a DISCONNECT: nothing for a normal disconnection without properties,
/// otherwise the reason code and the property length (even when it is 0). The one-byte form
/// (reason code only) is valid MQTT 5, but some widely used clients (rumqttc 0.25) cannot
/// parse it and would never see the reason, so it is decoded but never written.
pub(super) fn write(
    sink: &mut impl Sink,
    d: &Disconnect,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    if version == ProtocolVersion::V5 {
        check_reason(d.reason, reason_codes::DISCONNECT)?;
        if d.reason != ReasonCode::NORMAL_DISCONNECTION || !d.properties.is_empty() {
            sink.write_u8(d.reason as u8);
            write_properties(sink, &d.properties, PropertyContext::Disconnect)?;
        }
    }
    Ok(())
}
