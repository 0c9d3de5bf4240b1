//! PUBLISH (MQTT 3.1.1 §3.3, MQTT 5 §3.3).
//!
//! The DUP, QoS and RETAIN flags live in the fixed header and are checked there.

use super::error::{DecodeError, EncodeError};
use super::fixed_header::PublishFlags;
use super::properties::{PropertyContext, decode_properties, write_properties};
use super::reader::Reader;
use super::writer::{Sink, write_string};
use crate::packet::{Properties, ProtocolVersion, Publish, QoS};

/// Reads the body of a PUBLISH whose fixed header carried `flags`. The topic and payload
/// are slices of the packet's bytes.
pub(super) fn decode(
    mut r: Reader,
    flags: PublishFlags,
    version: ProtocolVersion,
) -> Result<Publish, DecodeError> {
    let topic = r.read_string()?;
    let packet_id = if flags.qos == QoS::AtMostOnce {
        None
    } else {
        match r.read_u16()? {
            0 => return Err(DecodeError::Malformed("PUBLISH with packet identifier 0")),
            id => Some(id),
        }
    };
    let properties = match version {
        ProtocolVersion::V311 => Properties::default(),
        ProtocolVersion::V5 => decode_properties(&mut r, PropertyContext::Publish)?,
    };
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::Protocol(
            "PUBLISH with an empty topic name and no Topic Alias",
        ));
    }
    Ok(Publish {
        dup: flags.dup,
        qos: flags.qos,
        retain: flags.retain,
        topic,
        packet_id,
        properties,
        payload: r.take_rest(),
    })
}

/// The fixed-header flags of `p`.
pub(super) fn flags(p: &Publish) -> PublishFlags {
    PublishFlags {
        dup: p.dup,
        qos: p.qos,
        retain: p.retain,
    }
}

/// Writes the body of a PUBLISH, after the checks the decoder would make.
pub(super) fn write(
    sink: &mut impl Sink,
    p: &Publish,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, Some(_)) => {
            return Err(EncodeError::Invalid(
                "PUBLISH with QoS 0 and a packet identifier",
            ));
        }
        (QoS::AtLeastOnce | QoS::ExactlyOnce, None) => {
            return Err(EncodeError::Invalid(
                "PUBLISH with QoS > 0 and no packet identifier",
            ));
        }
        (_, Some(0)) => return Err(EncodeError::Invalid("PUBLISH with packet identifier 0")),
        _ => {}
    }
    if p.dup && p.qos == QoS::AtMostOnce {
        return Err(EncodeError::Invalid("PUBLISH with QoS 0 and DUP set"));
    }
    let has_alias = version == ProtocolVersion::V5 && p.properties.topic_alias.is_some();
    if p.topic.is_empty() && !has_alias {
        return Err(EncodeError::Invalid(
            "PUBLISH with an empty topic name and no Topic Alias",
        ));
    }

    write_string(sink, &p.topic)?;
    if let Some(id) = p.packet_id {
        sink.write_u16(id);
    }
    if version == ProtocolVersion::V5 {
        write_properties(sink, &p.properties, PropertyContext::Publish)?;
    }
    sink.write_slice(&p.payload);
    Ok(())
}
