//! SUBSCRIBE (MQTT 3.1.1 §3.8, MQTT 5 §3.8).

use super::error::{DecodeError, EncodeError};
use super::properties::{PropertyContext, decode_properties, write_properties};
use super::reader::Reader;
use super::writer::{Sink, write_string};
use crate::packet::{
    Properties, ProtocolVersion, QoS, RetainHandling, Subscribe, SubscriptionOptions,
};

/// The bits of the Subscription Options byte (MQTT 5 §3.8.3.1).
const QOS_MASK: u8 = 0b0000_0011;
const NO_LOCAL: u8 = 0b0000_0100;
const RETAIN_AS_PUBLISHED: u8 = 0b0000_1000;
const RETAIN_HANDLING_SHIFT: u8 = 4;
const RETAIN_HANDLING_MASK: u8 = 0b0011_0000;
/// Bits that must be 0: the top two in MQTT 5, all but the QoS in 3.1.1.
const RESERVED_V5: u8 = 0b1100_0000;
const RESERVED_V311: u8 = 0b1111_1100;

/// Reads the body of a SUBSCRIBE.
pub(super) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let packet_id = r.read_u16()?;
    if packet_id == 0 {
        return Err(DecodeError::Malformed("SUBSCRIBE with packet identifier 0"));
    }
    let properties = match version {
        ProtocolVersion::V311 => Properties::default(),
        ProtocolVersion::V5 => decode_properties(&mut r, PropertyContext::Subscribe)?,
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.read_string()?;
        let options = decode_options(r.read_u8()?, version)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE with no topic filters"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

/// Reads a Subscription Options byte (in 3.1.1, the Requested QoS byte).
fn decode_options(byte: u8, version: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = match version {
        ProtocolVersion::V311 => RESERVED_V311,
        ProtocolVersion::V5 => RESERVED_V5,
    };
    if byte & reserved != 0 {
        return Err(DecodeError::Malformed(
            "reserved subscription option bit is set",
        ));
    }
    let qos =
        QoS::from_u8(byte & QOS_MASK).ok_or(DecodeError::Malformed("subscription with QoS 3"))?;
    let retain_handling = match (byte & RETAIN_HANDLING_MASK) >> RETAIN_HANDLING_SHIFT {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::Protocol("Retain Handling 3")),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & NO_LOCAL != 0,
        retain_as_published: byte & RETAIN_AS_PUBLISHED != 0,
        retain_handling,
    })
}

/// The Subscription Options byte; 3.1.1 carries only the QoS.
fn options_byte(options: &SubscriptionOptions, version: ProtocolVersion) -> u8 {
    let qos = options.qos as u8;
    match version {
        ProtocolVersion::V311 => qos,
        ProtocolVersion::V5 => {
            let mut byte = qos | ((options.retain_handling as u8) << RETAIN_HANDLING_SHIFT);
            if options.no_local {
                byte |= NO_LOCAL;
            }
            if options.retain_as_published {
                byte |= RETAIN_AS_PUBLISHED;
            }
            byte
        }
    }
}

/// Writes the body of a SUBSCRIBE.
pub(super) fn write(
    sink: &mut impl Sink,
    s: &Subscribe,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    if s.packet_id == 0 {
        return Err(EncodeError::Invalid("SUBSCRIBE with packet identifier 0"));
    }
    if s.filters.is_empty() {
        return Err(EncodeError::Invalid("SUBSCRIBE with no topic filters"));
    }
    sink.write_u16(s.packet_id);
    if version == ProtocolVersion::V5 {
        write_properties(sink, &s.properties, PropertyContext::Subscribe)?;
    }
    for (filter, options) in &s.filters {
        write_string(sink, filter)?;
        sink.write_u8(options_byte(options, version));
    }
    Ok(())
}
