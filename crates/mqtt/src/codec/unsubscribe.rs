//! UNSUBSCRIBE (MQTT 3.1.1 §3.10, MQTT 5 §3.10).

use super::error::{DecodeError, EncodeError};
use super::properties::{PropertyContext, decode_properties, write_properties};
use super::reader::Reader;
use super::writer::{Sink, write_string};
use crate::packet::{Properties, ProtocolVersion, Unsubscribe};

/// Reads the body of an UNSUBSCRIBE.
pub(super) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.read_u16()?;
    if packet_id == 0 {
        return Err(DecodeError::Malformed(
            "UNSUBSCRIBE with packet identifier 0",
        ));
    }
    let properties = match version {
        ProtocolVersion::V311 => Properties::default(),
        ProtocolVersion::V5 => decode_properties(&mut r, PropertyContext::Unsubscribe)?,
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.read_string()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE with no topic filters"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

/// Writes the body of an UNSUBSCRIBE.
pub(super) fn write(
    sink: &mut impl Sink,
    u: &Unsubscribe,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    if u.packet_id == 0 {
        return Err(EncodeError::Invalid("UNSUBSCRIBE with packet identifier 0"));
    }
    if u.filters.is_empty() {
        return Err(EncodeError::Invalid("UNSUBSCRIBE with no topic filters"));
    }
    sink.write_u16(u.packet_id);
    if version == ProtocolVersion::V5 {
        write_properties(sink, &u.properties, PropertyContext::Unsubscribe)?;
    }
    for filter in &u.filters {
        write_string(sink, filter)?;
    }
    Ok(())
}
