//! Property-based tests: every packet a version can carry survives encode then decode, its
//! encoded length is exact, and no input makes the decoder panic.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;

use super::strategies::{publish, versioned_packet};
use crate::codec::{
    DecodeError, PlainPublish, decode, decode_short_ack, encode, encode_to_bytes, encoded_len,
};
use crate::packet::{Packet, Properties, ProtocolVersion, PubResp, Publish};
use crate::reason::ReasonCode;

/// `decode_short_ack` on `bytes` agrees with `decode`: what it takes is what `decode` reads
/// (a PUBACK or PUBCOMP with Success and no properties, the same bytes consumed), and what it
/// leaves, it leaves untouched.
fn short_ack_agrees_with_decode(bytes: &[u8], version: ProtocolVersion) {
    let mut fast = BytesMut::from(bytes);
    let mut full = BytesMut::from(bytes);
    match decode_short_ack(&mut fast) {
        Some((kind, packet_id)) => {
            let expected = Packet::PubResp(PubResp {
                kind,
                packet_id,
                reason: ReasonCode::Success,
                properties: Default::default(),
            });
            assert_eq!(decode(&mut full, version, usize::MAX), Ok(Some(expected)));
            assert_eq!(fast, full, "the same bytes consumed");
        }
        None => assert_eq!(&fast[..], bytes, "left as it was"),
    }
}

/// The parts of `p`, which has no properties, as a `PlainPublish`.
fn plain(p: &Publish) -> PlainPublish<'_> {
    PlainPublish {
        dup: p.dup,
        qos: p.qos,
        retain: p.retain,
        topic: &p.topic,
        packet_id: p.packet_id,
        payload: &p.payload,
    }
}

/// `PlainPublish` writes what `encode` writes for the same PUBLISH, after what `out` held,
/// and says so in `encoded_len`.
fn plain_matches_encode(p: &Publish, version: ProtocolVersion) {
    let mut expected = BytesMut::from(&b"before"[..]);
    encode(&Packet::Publish(p.clone()), version, &mut expected).unwrap();
    let mut got = BytesMut::from(&b"before"[..]);
    let parts = plain(p);
    parts.check().unwrap();
    parts.encode(version, &mut got).unwrap();
    assert_eq!(got, expected, "{version:?}");
    assert_eq!(parts.encoded_len(version), got.len() - 6, "{version:?}");
}

/// Decodes every packet in `bytes`, stopping at the first incomplete or bad one; for each
/// packet decoded, checks that encoding it and decoding the result gives it back.
fn decode_all(bytes: &[u8], version: ProtocolVersion, max: usize) {
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(packet)) = decode(&mut buf, version, max) {
        let encoded = encode_to_bytes(&packet, version).expect("a decoded packet encodes");
        assert_eq!(encoded_len(&packet, version), encoded.len());
        let again = decode(&mut BytesMut::from(&encoded[..]), version, usize::MAX);
        assert_eq!(again, Ok(Some(packet)));
    }
}

proptest! {
    #[test]
    fn encode_then_decode_gives_the_packet_back((version, packet) in versioned_packet()) {
        let mut out = BytesMut::new();
        encode(&packet, version, &mut out).unwrap();
        prop_assert_eq!(encoded_len(&packet, version), out.len());
        let len = out.len();

        // Exactly the right size passes the limit; one byte less does not.
        let mut buf = out.clone();
        prop_assert!(
            matches!(decode(&mut buf, version, len - 1), Err(DecodeError::TooLarge { .. })),
            "limit one byte short"
        );
        prop_assert_eq!(decode(&mut buf, version, len), Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn a_plain_publish_is_written_as_encode_writes_it(
        mut p in publish(ProtocolVersion::V5),
        v5 in any::<bool>(),
    ) {
        let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
        p.properties = Properties::default();
        if p.topic.is_empty() {
            p.topic = "t".into();
        }
        plain_matches_encode(&p, version);
    }

    #[test]
    fn the_short_ack_reader_agrees_with_decode((version, packet) in versioned_packet()) {
        let encoded = encode_to_bytes(&packet, version).unwrap();
        short_ack_agrees_with_decode(&encoded, version);
        for cut in 0..encoded.len() {
            short_ack_agrees_with_decode(&encoded[..cut], version);
        }
    }

    #[test]
    fn the_short_ack_reader_agrees_with_decode_on_any_bytes(
        bytes in vec(any::<u8>(), 0..8),
        v5 in any::<bool>(),
    ) {
        let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
        short_ack_agrees_with_decode(&bytes, version);
    }

    #[test]
    fn every_prefix_is_incomplete((version, packet) in versioned_packet()) {
        let encoded = encode_to_bytes(&packet, version).unwrap();
        for cut in 0..encoded.len() {
            let mut buf = BytesMut::from(&encoded[..cut]);
            prop_assert_eq!(decode(&mut buf, version, usize::MAX), Ok(None));
            prop_assert_eq!(&buf[..], &encoded[..cut]);
        }
    }

    #[test]
    fn packets_back_to_back(
        packets in vec(versioned_packet(), 1..5),
        v5 in any::<bool>(),
    ) {
        let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
        let packets: Vec<Packet> = packets
            .into_iter()
            .filter(|(v, _)| *v == version)
            .map(|(_, p)| p)
            .collect();
        let mut buf = BytesMut::new();
        for packet in &packets {
            encode(packet, version, &mut buf).unwrap();
        }
        for packet in packets {
            prop_assert_eq!(decode(&mut buf, version, usize::MAX), Ok(Some(packet)));
        }
        prop_assert_eq!(decode(&mut buf, version, usize::MAX), Ok(None));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256), max in 0usize..512) {
        decode_all(&bytes, ProtocolVersion::V311, max);
        decode_all(&bytes, ProtocolVersion::V5, max);
    }

    #[test]
    fn damaged_packets_never_panic(
        (version, packet) in versioned_packet(),
        damage in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = encode_to_bytes(&packet, version).unwrap().to_vec();
        for (index, value) in damage {
            let at = index.index(bytes.len());
            if let Some(byte) = bytes.get_mut(at) {
                *byte = value;
            }
        }
        decode_all(&bytes, ProtocolVersion::V311, usize::MAX);
        decode_all(&bytes, ProtocolVersion::V5, usize::MAX);
    }
}

/// Remaining lengths on each side of where the length field grows a byte.
#[test]
fn a_plain_publish_has_the_right_length_field_at_every_boundary() {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for boundary in [127usize, 16_383, 2_097_151] {
            for remaining in boundary - 1..=boundary + 1 {
                // Topic "a/b" (2 + 3 bytes), a packet id (2), v5's property length (1).
                let overhead = 7 + usize::from(version == ProtocolVersion::V5);
                let p = Publish {
                    dup: true,
                    qos: crate::QoS::AtLeastOnce,
                    retain: true,
                    topic: "a/b".into(),
                    packet_id: Some(0xABCD),
                    properties: Properties::default(),
                    payload: vec![7u8; remaining - overhead].into(),
                };
                plain_matches_encode(&p, version);
            }
        }
    }
}

/// What `encode` refuses, `PlainPublish` refuses with the same error and appends nothing.
#[test]
fn a_plain_publish_refuses_what_encode_refuses() {
    let good = Publish {
        dup: false,
        qos: crate::QoS::AtLeastOnce,
        retain: false,
        topic: "t".into(),
        packet_id: Some(1),
        properties: Properties::default(),
        payload: bytes::Bytes::from_static(b"x"),
    };
    let bad = [
        Publish {
            packet_id: None,
            ..good.clone()
        },
        Publish {
            qos: crate::QoS::AtMostOnce,
            ..good.clone()
        },
        Publish {
            qos: crate::QoS::AtMostOnce,
            packet_id: None,
            dup: true,
            ..good.clone()
        },
        Publish {
            packet_id: Some(0),
            ..good.clone()
        },
        Publish {
            topic: "".into(),
            ..good.clone()
        },
        Publish {
            topic: "a\0b".into(),
            ..good.clone()
        },
        Publish {
            topic: "t".repeat(65_536).as_str().into(),
            ..good.clone()
        },
    ];
    for p in &bad {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let expected = encode(&Packet::Publish(p.clone()), version, &mut BytesMut::new())
                .expect_err("encode refuses it");
            let parts = plain(p);
            assert_eq!(parts.check(), Err(expected.clone()), "{p:?}");
            let mut out = BytesMut::from(&b"kept"[..]);
            assert_eq!(parts.encode(version, &mut out), Err(expected));
            assert_eq!(&out[..], b"kept");
        }
    }
}
