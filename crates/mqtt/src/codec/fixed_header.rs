//! The fixed header (MQTT 5 §2.1): packet type, flags and Remaining Length.
//!
//! The flags are checked here, as soon as the first byte is read, so a packet with bad
//! flags is refused before its body arrives.

use super::error::DecodeError;
use super::reader::parse_varint;
use crate::packet::{ProtocolVersion, QoS};

/// The MQTT Control Packet types, by their wire value (the high nibble of the first byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    /// The type for the high nibble of the first byte. 0 is reserved in both versions, and
    /// 15 (AUTH) exists only in MQTT 5.
    fn from_nibble(nibble: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        use PacketType::*;
        Ok(match nibble {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 if version == ProtocolVersion::V5 => Auth,
            _ => return Err(DecodeError::Malformed("reserved packet type")),
        })
    }

    /// The flags the spec fixes for this type; `None` for PUBLISH, whose flags vary.
    fn required_flags(self) -> Option<u8> {
        match self {
            PacketType::Publish => None,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }

    /// The first byte of a packet of this type with the given flags.
    pub(super) fn first_byte(self, flags: u8) -> u8 {
        ((self as u8) << 4) | (flags & 0x0F)
    }

    /// The first byte of a packet of this type, for every type but PUBLISH.
    pub(super) fn first_byte_with_fixed_flags(self) -> u8 {
        self.first_byte(self.required_flags().unwrap_or(0))
    }
}

/// The flags of a PUBLISH fixed header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct PublishFlags {
    pub(super) dup: bool,
    pub(super) qos: QoS,
    pub(super) retain: bool,
}

impl PublishFlags {
    /// Checks the low nibble of a PUBLISH first byte: QoS 3, and DUP on QoS 0, are malformed.
    fn parse(flags: u8) -> Result<Self, DecodeError> {
        let dup = flags & 0b1000 != 0;
        let qos = QoS::from_u8((flags >> 1) & 0b11)
            .ok_or(DecodeError::Malformed("PUBLISH with QoS 3"))?;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::Malformed("PUBLISH with QoS 0 and DUP set"));
        }
        Ok(Self {
            dup,
            qos,
            retain: flags & 0b0001 != 0,
        })
    }

    /// The low nibble of the first byte.
    pub(super) fn to_bits(self) -> u8 {
        (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }
}

/// A parsed fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FixedHeader {
    /// The packet type.
    pub(super) packet_type: PacketType,
    /// The PUBLISH flags; all clear (QoS 0) for the other types, whose flags are fixed.
    pub(super) publish: PublishFlags,
    /// Length of the fixed header itself: 2 to 5 bytes.
    pub(super) header_len: usize,
    /// The Remaining Length: bytes after the fixed header.
    pub(super) remaining_len: usize,
}

impl FixedHeader {
    /// The size of the whole packet.
    pub(super) fn packet_len(&self) -> usize {
        self.header_len + self.remaining_len
    }

    /// Parses the fixed header at the start of `bytes`; `None` if it is not all there yet.
    pub(super) fn parse(
        bytes: &[u8],
        version: ProtocolVersion,
    ) -> Result<Option<Self>, DecodeError> {
        let Some((&first, rest)) = bytes.split_first() else {
            return Ok(None);
        };
        let packet_type = PacketType::from_nibble(first >> 4, version)?;
        let flags = first & 0x0F;
        let publish = match packet_type.required_flags() {
            None => PublishFlags::parse(flags)?,
            Some(required) if required == flags => PublishFlags::default(),
            Some(_) => return Err(DecodeError::Malformed("wrong fixed header flags")),
        };
        let Some((remaining, varint_len)) = parse_varint(rest)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            packet_type,
            publish,
            header_len: 1 + varint_len,
            remaining_len: remaining as usize,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_type_flags_and_length() {
        let header = FixedHeader::parse(&[0x3D, 0x80, 0x01], ProtocolVersion::V5)
            .unwrap()
            .unwrap();
        assert_eq!(header.packet_type, PacketType::Publish);
        assert_eq!(
            header.publish,
            PublishFlags {
                dup: true,
                qos: QoS::ExactlyOnce,
                retain: true
            }
        );
        assert_eq!((header.header_len, header.remaining_len), (3, 128));
        assert_eq!(header.publish.to_bits(), 0x0D);
    }

    #[test]
    fn refuses_bad_first_bytes() {
        for first in [0x00, 0x36, 0x38, 0x60, 0x63, 0x80, 0xA0, 0xC1, 0xE8, 0x11] {
            assert!(
                matches!(
                    FixedHeader::parse(&[first, 0], ProtocolVersion::V5),
                    Err(DecodeError::Malformed(_))
                ),
                "first byte {first:#04x}"
            );
        }
        assert!(FixedHeader::parse(&[0xF0, 0], ProtocolVersion::V311).is_err());
        assert!(FixedHeader::parse(&[0xF0, 0], ProtocolVersion::V5).is_ok());
    }

    #[test]
    fn incomplete() {
        assert_eq!(FixedHeader::parse(&[], ProtocolVersion::V5), Ok(None));
        assert_eq!(FixedHeader::parse(&[0x30], ProtocolVersion::V5), Ok(None));
        assert_eq!(
            FixedHeader::parse(&[0x30, 0xFF], ProtocolVersion::V5),
            Ok(None)
        );
    }
}
