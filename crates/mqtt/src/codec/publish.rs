//! PUBLISH (MQTT 3.1.1 §3.3, MQTT 5 §3.3).
//!
//! The DUP, QoS and RETAIN flags live in the fixed header and are checked there.

use bytes::BytesMut;

use super::error::{DecodeError, EncodeError};
use super::fixed_header::{PacketType, PublishFlags};
use super::properties::{PropertyContext, decode_properties, write_properties};
use super::reader::{Reader, VARINT_MAX};
use super::writer::{Counter, Sink, varint_len, write_string, write_varint};
use crate::packet::{ByteStr, Properties, ProtocolVersion, Publish, QoS};

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
    check_flags(p.dup, p.qos, p.packet_id)?;
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

/// The checks on a PUBLISH's QoS, DUP flag and packet identifier that the decoder makes.
fn check_flags(dup: bool, qos: QoS, packet_id: Option<u16>) -> Result<(), EncodeError> {
    match (qos, packet_id) {
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
    if dup && qos == QoS::AtMostOnce {
        return Err(EncodeError::Invalid("PUBLISH with QoS 0 and DUP set"));
    }
    Ok(())
}

/// A PUBLISH without properties, given by its parts: the shape of most messages a broker
/// forwards, written straight from the message's topic and payload into the output instead
/// of through a [`Publish`] of its own. Its wire form is the one [`encode`](super::encode)
/// gives for the same `Publish` with no properties.
#[derive(Clone, Copy, Debug)]
pub struct PlainPublish<'a> {
    /// DUP: a resend of a packet sent before (QoS 1 and 2 only).
    pub dup: bool,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; not empty (there is no alias).
    pub topic: &'a ByteStr,
    /// `Some` exactly when `qos` is 1 or 2.
    pub packet_id: Option<u16>,
    /// Application message.
    pub payload: &'a [u8],
}

impl PlainPublish<'_> {
    /// Whether `encode` would write the packet, or why not: the checks `encode` makes for
    /// a [`Publish`], so that a caller can make them once and encode later.
    pub fn check(&self) -> Result<(), EncodeError> {
        check_flags(self.dup, self.qos, self.packet_id)?;
        if self.topic.is_empty() {
            return Err(EncodeError::Invalid(
                "PUBLISH with an empty topic name and no Topic Alias",
            ));
        }
        // The topic's length and characters, as writing it checks them.
        write_string(&mut Counter::default(), self.topic)?;
        if self.remaining_len(ProtocolVersion::V5) > VARINT_MAX as usize {
            return Err(EncodeError::TooLarge);
        }
        Ok(())
    }

    /// The bytes `encode` writes, fixed header included.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let remaining_len = self.remaining_len(version);
        1 + varint_len(remaining_len) + remaining_len
    }

    /// Appends the packet to `out`; on error nothing is appended.
    pub fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        self.check()?;
        let remaining_len = self.remaining_len(version);
        out.reserve(1 + varint_len(remaining_len) + remaining_len);
        let flags = PublishFlags {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
        };
        out.write_u8(PacketType::Publish.first_byte(flags.to_bits()));
        write_varint(out, remaining_len)?;
        write_string(out, self.topic)?;
        if let Some(id) = self.packet_id {
            out.write_u16(id);
        }
        if version == ProtocolVersion::V5 {
            out.write_u8(0); // Property Length: no properties.
        }
        out.write_slice(self.payload);
        Ok(())
    }

    /// Topic name, packet identifier, properties (v5: their length, 0) and payload.
    fn remaining_len(&self, version: ProtocolVersion) -> usize {
        let packet_id = if self.packet_id.is_some() { 2 } else { 0 };
        let properties = usize::from(version == ProtocolVersion::V5);
        (2 + self.topic.len() + packet_id + properties).saturating_add(self.payload.len())
    }
}
