//! AUTH (MQTT 5 §3.15); it does not exist in 3.1.1.
//!
//! A Remaining Length of 0 means Success with no properties. A lone reason code (Remaining
//! Length 1) is accepted too, as for DISCONNECT, but never written.

use super::error::{DecodeError, EncodeError};
use super::properties::{PropertyContext, decode_properties, write_properties};
use super::reader::Reader;
use super::reason_codes::{self, check_reason, decode_reason};
use super::writer::Sink;
use crate::packet::{Auth, Properties};
use crate::reason::ReasonCode;

/// Reads the body of an AUTH.
pub(super) fn decode(mut r: Reader) -> Result<Auth, DecodeError> {
    let mut reason = ReasonCode::Success;
    let mut properties = Properties::default();
    if !r.is_empty() {
        reason = decode_reason(r.read_u8()?, reason_codes::AUTH)?;
        if !r.is_empty() {
            properties = decode_properties(&mut r, PropertyContext::Auth)?;
        }
    }
    r.finish()?;
    Ok(Auth { reason, properties })
}

/// Writes the body of an AUTH: nothing for Success without properties, otherwise the
/// reason code and the properties.
pub(super) fn write(sink: &mut impl Sink, a: &Auth) -> Result<(), EncodeError> {
    check_reason(a.reason, reason_codes::AUTH)?;
    if a.reason != ReasonCode::Success || !a.properties.is_empty() {
        sink.write_u8(a.reason as u8);
        write_properties(sink, &a.properties, PropertyContext::Auth)?;
    }
    Ok(())
}
