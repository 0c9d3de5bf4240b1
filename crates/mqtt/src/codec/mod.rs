//! Decoding and encoding of whole packets.
//!
//! # Layout
//! - `reader` / `writer`: the data types of §1.5 (integers, Variable Byte Integers,
//!   strings, binary data) in each direction; `writer::Sink` lets the same code write a
//!   packet or count its bytes.
//! - `fixed_header`: packet type, flags and Remaining Length.
//! - `properties`: MQTT 5 properties and the table of which packet may carry which.
//! - `reason_codes`: which reason codes each packet may carry.
//! - one module per packet body: `connect`, `connack`, `publish`, `pubresp` (the four
//!   publish acknowledgements), `subscribe`, `suback`, `unsubscribe`, `unsuback`,
//!   `disconnect`, `auth`. PINGREQ and PINGRESP have no body.
//!
//! Every rule the decoder enforces on a single packet, the encoder enforces too (as
//! `EncodeError::Invalid`), so whatever `encode` accepts, `decode` reads back unchanged.

mod auth;
mod connack;
mod connect;
mod disconnect;
mod error;
mod fixed_header;
mod properties;
mod publish;
mod pubresp;
mod reader;
mod reason_codes;
mod suback;
mod subscribe;
mod unsuback;
mod unsubscribe;
mod writer;

#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};

pub use error::{DecodeError, EncodeError};
pub use publish::PlainPublish;

use fixed_header::{FixedHeader, PacketType};
use reader::{Reader, VARINT_MAX};
use writer::{Sink, measure, varint_len, write_varint};

use crate::packet::{Packet, ProtocolVersion, PubRespKind};

/// Decodes the packet at the front of `buf`, if a whole one has arrived, and removes its
/// bytes from `buf`. Returns `Ok(None)` when more bytes are needed; a fixed header that
/// announces more than `max_packet_size` bytes is rejected as soon as it is read, before the
/// body arrives. `version` is the connection's protocol version; CONNECT carries its own and
/// is decoded whatever `version` says. Topic names, payloads and binary properties in the
/// result are slices of `buf`'s allocation.
///
/// On `Ok(None)` and on `TooLarge`, `buf` is left untouched. On other errors the bytes of
/// the bad packet may have been removed; the connection is to be closed in any case.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = FixedHeader::parse(buf, version)? else {
        return Ok(None);
    };
    let size = header.packet_len();
    if size > max_packet_size {
        return Err(DecodeError::TooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let packet = buf.split_to(size).freeze();
    let body = packet.slice(header.header_len..);
    decode_body(&header, body, version).map(Some)
}

/// Takes a PUBACK or PUBCOMP in its shortest form off the front of `buf`: a packet id, Success
/// and no properties, four bytes in both protocol versions. Any other packet, or too few bytes
/// yet, gives `None` and leaves `buf` as it was, for [`decode`].
///
/// A receiver acknowledges every QoS 1 and 2 message it gets, nearly always like this; the
/// broker reads these without building a `Packet` (which carries a full `Properties`) for each.
/// The result is the one `decode` would give, as a `PubResp` with Success and no properties.
pub fn decode_short_ack(buf: &mut BytesMut) -> Option<(PubRespKind, u16)> {
    let kind = match buf.first()? {
        0x40 => PubRespKind::PubAck,
        0x70 => PubRespKind::PubComp,
        _ => return None,
    };
    let [_, 2, hi, lo, ..] = buf[..] else {
        return None;
    };
    bytes::Buf::advance(buf, 4);
    Some((kind, u16::from_be_bytes([hi, lo])))
}

/// Decodes the body of a packet whose fixed header is `header`.
fn decode_body(
    header: &FixedHeader,
    body: Bytes,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let r = Reader::new(body);
    let pub_resp = |r, kind| pubresp::decode(r, kind, version).map(Packet::PubResp);
    match header.packet_type {
        PacketType::Connect => Ok(Packet::Connect(Box::new(connect::decode(r)?))),
        PacketType::ConnAck => connack::decode(r, version).map(Packet::ConnAck),
        PacketType::Publish => publish::decode(r, header.publish, version).map(Packet::Publish),
        PacketType::PubAck => pub_resp(r, PubRespKind::PubAck),
        PacketType::PubRec => pub_resp(r, PubRespKind::PubRec),
        PacketType::PubRel => pub_resp(r, PubRespKind::PubRel),
        PacketType::PubComp => pub_resp(r, PubRespKind::PubComp),
        PacketType::Subscribe => subscribe::decode(r, version).map(Packet::Subscribe),
        PacketType::SubAck => suback::decode(r, version).map(Packet::SubAck),
        PacketType::Unsubscribe => unsubscribe::decode(r, version).map(Packet::Unsubscribe),
        PacketType::UnsubAck => unsuback::decode(r, version).map(Packet::UnsubAck),
        PacketType::PingReq => r.finish().map(|()| Packet::PingReq),
        PacketType::PingResp => r.finish().map(|()| Packet::PingResp),
        PacketType::Disconnect => disconnect::decode(r, version).map(Packet::Disconnect),
        PacketType::Auth => auth::decode(r).map(Packet::Auth),
    }
}

/// Appends the encoding of `packet` for `version` to `out`. Fields that `version` cannot
/// carry (properties and reason codes for 3.1.1) are left out. CONNECT is written for the
/// version it names in `Connect::protocol`.
///
/// On error nothing is appended.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let remaining_len = body_len(packet, version)?;
    out.reserve(1 + varint_len(remaining_len) + remaining_len);
    let start = out.len();
    let result = write_packet(out, packet, version, remaining_len);
    if result.is_err() {
        // Measuring makes the same checks as writing, so this is not expected to happen.
        out.truncate(start);
    }
    result
}

/// The number of bytes `encode` would write for `packet`, fixed header included; or
/// `usize::MAX` if `encode` would fail, so that the packet fails any size check.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    match body_len(packet, version) {
        Ok(remaining_len) => 1 + varint_len(remaining_len) + remaining_len,
        Err(_) => usize::MAX,
    }
}

/// Encodes `packet` for `version` into a buffer of its own.
pub fn encode_to_bytes(packet: &Packet, version: ProtocolVersion) -> Result<Bytes, EncodeError> {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out)?;
    Ok(out.freeze())
}

/// The Remaining Length of `packet`, checked against the largest a fixed header can carry.
fn body_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let len = measure(|counter| write_body(counter, packet, version))?;
    if len > VARINT_MAX as usize {
        return Err(EncodeError::TooLarge);
    }
    Ok(len)
}

/// Writes the fixed header and the body of `packet`.
fn write_packet(
    sink: &mut impl Sink,
    packet: &Packet,
    version: ProtocolVersion,
    remaining_len: usize,
) -> Result<(), EncodeError> {
    sink.write_u8(first_byte(packet));
    write_varint(sink, remaining_len)?;
    write_body(sink, packet, version)
}

/// The first byte of the fixed header: packet type and flags.
fn first_byte(packet: &Packet) -> u8 {
    let packet_type = match packet {
        Packet::Publish(p) => {
            return PacketType::Publish.first_byte(publish::flags(p).to_bits());
        }
        Packet::Connect(_) => PacketType::Connect,
        Packet::ConnAck(_) => PacketType::ConnAck,
        Packet::PubResp(p) => match p.kind {
            PubRespKind::PubAck => PacketType::PubAck,
            PubRespKind::PubRec => PacketType::PubRec,
            PubRespKind::PubRel => PacketType::PubRel,
            PubRespKind::PubComp => PacketType::PubComp,
        },
        Packet::Subscribe(_) => PacketType::Subscribe,
        Packet::SubAck(_) => PacketType::SubAck,
        Packet::Unsubscribe(_) => PacketType::Unsubscribe,
        Packet::UnsubAck(_) => PacketType::UnsubAck,
        Packet::PingReq => PacketType::PingReq,
        Packet::PingResp => PacketType::PingResp,
        Packet::Disconnect(_) => PacketType::Disconnect,
        Packet::Auth(_) => PacketType::Auth,
    };
    packet_type.first_byte_with_fixed_flags()
}

/// Writes the body of `packet`, everything after the fixed header.
fn write_body(
    sink: &mut impl Sink,
    packet: &Packet,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(c) => connect::write(sink, c),
        Packet::ConnAck(c) => connack::write(sink, c, version),
        Packet::Publish(p) => publish::write(sink, p, version),
        Packet::PubResp(p) => pubresp::write(sink, p, version),
        Packet::Subscribe(s) => subscribe::write(sink, s, version),
        Packet::SubAck(s) => suback::write(sink, s, version),
        Packet::Unsubscribe(u) => unsubscribe::write(sink, u, version),
        Packet::UnsubAck(u) => unsuback::write(sink, u, version),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(d) => disconnect::write(sink, d, version),
        Packet::Auth(a) => match version {
            ProtocolVersion::V5 => auth::write(sink, a),
            ProtocolVersion::V311 => Err(EncodeError::Invalid("AUTH does not exist in MQTT 3.1.1")),
        },
    }
}
