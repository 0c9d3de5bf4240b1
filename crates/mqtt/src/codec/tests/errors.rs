//! Each rule of the decoder and the encoder, broken once.

use bytes::{Bytes, BytesMut};

use super::{decode_bytes, hex};
use crate::codec::{DecodeError, EncodeError, decode, encode, encode_to_bytes, encoded_len};
use crate::packet::*;
use crate::reason::ReasonCode;

use ProtocolVersion::{V5, V311};

/// What kind of error a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Malformed,
    Protocol,
    Unsupported(u8),
}

#[track_caller]
fn expect(version: ProtocolVersion, bytes: &str, kind: Kind, why: &str) {
    let result = decode_bytes(&hex(bytes), version);
    let ok = match (kind, &result) {
        (Kind::Malformed, Err(DecodeError::Malformed(_))) => true,
        (Kind::Protocol, Err(DecodeError::Protocol(_))) => true,
        (Kind::Unsupported(want), Err(DecodeError::UnsupportedProtocol { level })) => {
            want == *level
        }
        _ => false,
    };
    assert!(ok, "{why}: expected {kind:?}, got {result:?}");
}

#[test]
fn fixed_header() {
    use Kind::*;
    expect(V5, "00 00", Malformed, "packet type 0");
    expect(V311, "f0 00", Malformed, "AUTH in 3.1.1");
    expect(
        V5,
        "30 ff ff ff ff 01",
        Malformed,
        "Remaining Length of five bytes",
    );
    expect(V5, "30 ff ff ff ff", Malformed, "four bytes, all continued");
    expect(
        V5,
        "c0 80 00",
        Malformed,
        "Remaining Length not in its shortest form",
    );
    expect(V5, "63 02 00 01", Malformed, "PUBREL flags 0b0011");
    expect(V5, "60 02 00 01", Malformed, "PUBREL flags 0");
    expect(V5, "42 02 00 01", Malformed, "PUBACK flags not 0");
    expect(
        V5,
        "80 06 00 01 00 01 61 00",
        Malformed,
        "SUBSCRIBE flags 0",
    );
    expect(V5, "a0 05 00 01 00 01 61", Malformed, "UNSUBSCRIBE flags 0");
    expect(V5, "c1 00", Malformed, "PINGREQ flags");
    expect(V5, "e2 00", Malformed, "DISCONNECT flags");
    // Flags are judged from the first byte alone, before the rest arrives.
    expect(V5, "36", Malformed, "PUBLISH QoS 3, first byte only");
    expect(V5, "11", Malformed, "CONNECT flags, first byte only");
}

#[test]
fn too_large_is_refused_from_the_fixed_header() {
    // 16,383 bytes announced, none of them sent.
    let mut buf = BytesMut::from(&hex("30 ff 7f")[..]);
    assert_eq!(
        decode(&mut buf, V5, 100),
        Err(DecodeError::TooLarge {
            size: 16_386,
            max: 100
        })
    );
    assert_eq!(buf.len(), 3, "nothing consumed");
    // The limit counts the fixed header: a PINGREQ is two bytes.
    let mut buf = BytesMut::from(&hex("c0 00")[..]);
    assert!(matches!(
        decode(&mut buf, V5, 1),
        Err(DecodeError::TooLarge { size: 2, max: 1 })
    ));
    assert_eq!(decode(&mut buf, V5, 2), Ok(Some(Packet::PingReq)));
    assert_eq!(
        DecodeError::TooLarge { size: 2, max: 1 }.reason_code(),
        ReasonCode::PacketTooLarge
    );
}

#[test]
fn connect() {
    use Kind::*;
    expect(
        V311,
        "10 0e 00 06 4d 51 49 73 64 70 03 02 00 3c 00 00",
        Unsupported(3),
        "MQTT 3.1 (MQIsdp, level 3)",
    );
    expect(
        V5,
        "10 0c 00 04 4d 51 54 54 06 02 00 3c 00 00",
        Unsupported(6),
        "level 6",
    );
    expect(
        V5,
        "10 0c 00 04 4d 51 54 54 03 02 00 3c 00 00",
        Unsupported(3),
        "MQTT name with level 3",
    );
    expect(
        V5,
        "10 0c 00 04 4d 51 54 58 04 02 00 3c 00 00",
        Unsupported(4),
        "protocol name MQTX",
    );
    expect(
        V311,
        "10 0c 00 04 4d 51 54 54 04 03 00 3c 00 00",
        Malformed,
        "reserved flag",
    );
    expect(
        V311,
        "10 13 00 04 4d 51 54 54 04 1e 00 3c 00 00 00 01 77 00 02 68 69",
        Malformed,
        "Will QoS 3",
    );
    expect(
        V311,
        "10 0c 00 04 4d 51 54 54 04 0a 00 3c 00 00",
        Malformed,
        "Will QoS without Will Flag",
    );
    expect(
        V311,
        "10 0c 00 04 4d 51 54 54 04 22 00 3c 00 00",
        Malformed,
        "Will Retain without Will Flag",
    );
    expect(
        V311,
        "10 0f 00 04 4d 51 54 54 04 42 00 3c 00 00 00 01 70",
        Malformed,
        "3.1.1 password without user name",
    );
    expect(
        V311,
        "10 0d 00 04 4d 51 54 54 04 02 00 3c 00 00 ff",
        Malformed,
        "bytes after the payload",
    );
    expect(
        V311,
        "10 0c 00 04 4d 51 54 54 04 82 00 3c 00 00",
        Malformed,
        "user name flag without a user name",
    );
    expect(
        V311,
        "10 0d 00 04 4d 51 54 54 04 02 00 3c 00 01 00",
        Malformed,
        "client id with U+0000",
    );
    expect(
        V311,
        "10 0d 00 04 4d 51 54 54 04 02 00 3c 00 01 ff",
        Malformed,
        "client id not UTF-8",
    );
    expect(
        V5,
        "10 17 00 04 4d 51 54 54 05 02 00 3c 0a 11 00 00 00 01 11 00 00 00 02 00 00",
        Protocol,
        "Session Expiry Interval twice",
    );
    expect(
        V5,
        "10 10 00 04 4d 51 54 54 05 02 00 3c 03 23 00 01 00 00",
        Protocol,
        "Topic Alias in CONNECT",
    );
    expect(
        V5,
        "10 0f 00 04 4d 51 54 54 05 02 00 3c 02 05 00 00 00",
        Malformed,
        "unknown property 0x05",
    );
    expect(
        V5,
        "10 0d 00 04 4d 51 54 54 05 02 00 3c 05 00 00",
        Malformed,
        "Property Length past the end",
    );
    expect(
        V5,
        "10 18 00 04 4d 51 54 54 05 06 00 3c 00 00 00 05 11 00 00 00 01 00 01 77 00 00",
        Protocol,
        "Session Expiry Interval in the Will Properties",
    );
}

#[test]
fn connack() {
    use Kind::*;
    expect(V311, "20 02 02 00", Malformed, "reserved acknowledge flag");
    expect(V311, "20 02 00 06", Malformed, "return code 6");
    expect(
        V311,
        "20 03 00 00 00",
        Malformed,
        "3.1.1 CONNACK with properties",
    );
    expect(
        V5,
        "20 02 00 00",
        Malformed,
        "MQTT 5 CONNACK without properties",
    );
    expect(V5, "20 03 00 03 00", Malformed, "undefined reason code");
    expect(
        V5,
        "20 03 00 10 00",
        Protocol,
        "reason code of another packet",
    );
}

#[test]
fn publish() {
    use Kind::*;
    expect(V5, "36 05 00 01 74 00 01", Malformed, "QoS 3");
    expect(V5, "38 03 00 01 74", Malformed, "QoS 0 with DUP");
    expect(
        V5,
        "32 06 00 01 74 00 00 00",
        Malformed,
        "packet id 0 with QoS 1",
    );
    expect(
        V311,
        "34 05 00 01 74 00 00",
        Malformed,
        "packet id 0 with QoS 2",
    );
    expect(V311, "32 04 00 01 74 00", Malformed, "packet id cut short");
    expect(V311, "30 02 00 00", Protocol, "empty topic name in 3.1.1");
    expect(
        V5,
        "30 03 00 00 00",
        Protocol,
        "empty topic name, no Topic Alias",
    );
    expect(V311, "30 04 00 02 61 00", Malformed, "U+0000 in the topic");
    expect(V311, "30 04 00 02 c3 28", Malformed, "topic not UTF-8");
    expect(V311, "30 04 00 03 61 62", Malformed, "topic past the end");
    expect(
        V5,
        "30 06 00 01 74 02 23 00",
        Malformed,
        "property cut by its length",
    );
    expect(
        V5,
        "30 07 00 01 74 03 11 00 00",
        Protocol,
        "Session Expiry in PUBLISH",
    );
    expect(V5, "30 07 00 01 74 03 23 00 00", Protocol, "Topic Alias 0");
    expect(
        V5,
        "30 06 00 01 74 02 0b 00",
        Protocol,
        "Subscription Identifier 0",
    );
    // Wildcards in a topic name are for the broker to refuse, not the codec.
    assert!(matches!(
        decode_bytes(&hex("30 05 00 03 61 2f 23"), V311),
        Ok(Some(Packet::Publish(_)))
    ));
}

#[test]
fn publish_acknowledgements() {
    use Kind::*;
    expect(
        V311,
        "40 03 00 01 00",
        Malformed,
        "3.1.1 PUBACK with a reason code",
    );
    expect(V311, "40 01 00", Malformed, "PUBACK cut short");
    expect(V5, "40 01 00", Malformed, "MQTT 5 PUBACK cut short");
    expect(
        V5,
        "40 03 00 01 92",
        Protocol,
        "PUBREL reason code in PUBACK",
    );
    expect(
        V5,
        "62 03 00 01 10",
        Protocol,
        "PUBACK reason code in PUBREL",
    );
    expect(V5, "70 03 00 01 03", Malformed, "undefined reason code");
    expect(
        V5,
        "50 07 00 01 00 03 23 00 01",
        Protocol,
        "Topic Alias in PUBREC",
    );
    expect(
        V5,
        "50 05 00 01 00 00 00",
        Malformed,
        "bytes after the properties",
    );
}

#[test]
fn subscribe() {
    use Kind::*;
    expect(
        V311,
        "82 02 00 01",
        Protocol,
        "3.1.1 SUBSCRIBE without filters",
    );
    expect(
        V5,
        "82 03 00 01 00",
        Protocol,
        "MQTT 5 SUBSCRIBE without filters",
    );
    expect(V311, "82 06 00 00 00 01 61 00", Malformed, "packet id 0");
    expect(
        V311,
        "82 05 00 01 00 01 61",
        Malformed,
        "filter without options",
    );
    expect(V311, "82 06 00 01 00 01 61 03", Malformed, "3.1.1 QoS 3");
    expect(
        V311,
        "82 06 00 01 00 01 61 04",
        Malformed,
        "3.1.1 No Local bit",
    );
    expect(
        V311,
        "82 06 00 01 00 01 61 20",
        Malformed,
        "3.1.1 Retain Handling bits",
    );
    expect(V5, "82 07 00 01 00 00 01 61 03", Malformed, "MQTT 5 QoS 3");
    expect(
        V5,
        "82 07 00 01 00 00 01 61 40",
        Malformed,
        "reserved option bit 6",
    );
    expect(
        V5,
        "82 07 00 01 00 00 01 61 80",
        Malformed,
        "reserved option bit 7",
    );
    expect(
        V5,
        "82 07 00 01 00 00 01 61 30",
        Protocol,
        "Retain Handling 3",
    );
    expect(
        V5,
        "82 09 00 01 02 0b 00 00 01 61 00",
        Protocol,
        "Subscription Identifier 0",
    );
    expect(
        V5,
        "82 0b 00 01 04 0b 01 0b 02 00 01 61 00",
        Protocol,
        "two Subscription Identifiers",
    );
    expect(
        V5,
        "82 0a 00 01 03 23 00 01 00 01 61 00",
        Protocol,
        "Topic Alias in SUBSCRIBE",
    );
}

#[test]
fn suback() {
    use Kind::*;
    expect(V311, "90 03 00 01 03", Malformed, "3.1.1 return code 3");
    expect(
        V311,
        "90 03 00 01 87",
        Malformed,
        "MQTT 5 reason code in 3.1.1",
    );
    expect(V311, "90 02 00 01", Protocol, "no return codes");
    expect(
        V5,
        "90 04 00 01 00 10",
        Protocol,
        "PUBACK reason code in SUBACK",
    );
    expect(
        V5,
        "90 03 00 01 00",
        Protocol,
        "MQTT 5 SUBACK with no reason codes",
    );
}

#[test]
fn unsubscribe_and_unsuback() {
    use Kind::*;
    expect(
        V311,
        "a2 02 00 01",
        Protocol,
        "3.1.1 UNSUBSCRIBE without filters",
    );
    expect(
        V5,
        "a2 03 00 01 00",
        Protocol,
        "MQTT 5 UNSUBSCRIBE without filters",
    );
    expect(V311, "a2 05 00 00 00 01 61", Malformed, "packet id 0");
    expect(
        V5,
        "a2 07 00 01 02 0b 01 00 00",
        Protocol,
        "Subscription Identifier",
    );
    expect(
        V311,
        "b0 03 00 01 00",
        Malformed,
        "3.1.1 UNSUBACK with a reason code",
    );
    expect(
        V5,
        "b0 03 00 01 00",
        Protocol,
        "MQTT 5 UNSUBACK with no reason codes",
    );
    expect(
        V5,
        "b0 04 00 01 00 02",
        Protocol,
        "SUBACK reason code in UNSUBACK",
    );
}

#[test]
fn ping_disconnect_auth() {
    use Kind::*;
    expect(V5, "c0 01 00", Malformed, "PINGREQ with a body");
    expect(V311, "d0 01 00", Malformed, "PINGRESP with a body");
    expect(V311, "e0 01 00", Malformed, "3.1.1 DISCONNECT with a body");
    expect(V5, "e0 01 01", Protocol, "Granted QoS 1 in DISCONNECT");
    expect(V5, "e0 02 00 05", Malformed, "Property Length past the end");
    expect(
        V5,
        "e0 05 00 03 23 00 01",
        Protocol,
        "Topic Alias in DISCONNECT",
    );
    expect(V5, "f0 01 04", Protocol, "DISCONNECT reason code in AUTH");
    expect(
        V5,
        "f0 03 18 01 11",
        Protocol,
        "Session Expiry Interval in AUTH",
    );
    expect(V5, "f0 03 18 01 2b", Malformed, "unknown property 0x2B");
}

fn sample_publish(qos: QoS, packet_id: Option<u16>) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: "t".into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::new(),
    }
}

#[track_caller]
fn expect_invalid(packet: Packet, version: ProtocolVersion, why: &str) {
    let mut out = BytesMut::from(&b"before"[..]);
    let result = encode(&packet, version, &mut out);
    assert!(
        matches!(result, Err(EncodeError::Invalid(_))),
        "{why}: got {result:?}"
    );
    assert_eq!(&out[..], b"before", "{why}: nothing written on error");
    assert_eq!(encoded_len(&packet, version), usize::MAX, "{why}");
}

#[test]
fn encode_refuses_what_decode_would() {
    let long = ByteStr::from("x".repeat(65_536));
    let mut p = sample_publish(QoS::AtMostOnce, None);
    p.topic = long.clone();
    expect_invalid(Packet::Publish(p), V311, "topic over 65,535 bytes");

    let mut p = sample_publish(QoS::AtMostOnce, None);
    p.topic = "a\0b".into();
    expect_invalid(Packet::Publish(p), V311, "topic with U+0000");

    let mut p = sample_publish(QoS::AtMostOnce, None);
    p.topic = "".into();
    expect_invalid(Packet::Publish(p.clone()), V5, "empty topic, no alias");
    p.properties.topic_alias = Some(1);
    expect_invalid(Packet::Publish(p.clone()), V311, "empty topic in 3.1.1");
    assert!(encode_to_bytes(&Packet::Publish(p), V5).is_ok());

    expect_invalid(
        Packet::Publish(sample_publish(QoS::AtLeastOnce, None)),
        V5,
        "QoS 1 without packet id",
    );
    expect_invalid(
        Packet::Publish(sample_publish(QoS::ExactlyOnce, Some(0))),
        V5,
        "packet id 0",
    );
    expect_invalid(
        Packet::Publish(sample_publish(QoS::AtMostOnce, Some(1))),
        V5,
        "QoS 0 with packet id",
    );
    let mut p = sample_publish(QoS::AtMostOnce, None);
    p.dup = true;
    expect_invalid(Packet::Publish(p), V5, "QoS 0 with DUP");

    let mut p = sample_publish(QoS::AtMostOnce, None);
    p.properties.session_expiry_interval = Some(1);
    expect_invalid(Packet::Publish(p), V5, "property not allowed in PUBLISH");

    let mut p = sample_publish(QoS::AtMostOnce, None);
    p.properties.subscription_identifiers = vec![0];
    expect_invalid(Packet::Publish(p), V5, "Subscription Identifier 0");

    let subscribe = |filters, properties| {
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters,
            properties,
        })
    };
    expect_invalid(
        subscribe(vec![], Properties::default()),
        V311,
        "empty SUBSCRIBE",
    );
    expect_invalid(
        subscribe(
            vec![("a".into(), SubscriptionOptions::default())],
            Properties {
                subscription_identifiers: vec![1, 2],
                ..Properties::default()
            },
        ),
        V5,
        "two Subscription Identifiers in SUBSCRIBE",
    );
    expect_invalid(
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 1,
            filters: vec![],
            properties: Properties::default(),
        }),
        V5,
        "empty UNSUBSCRIBE",
    );
    expect_invalid(
        Packet::SubAck(SubAck {
            packet_id: 1,
            reasons: vec![ReasonCode::NoMatchingSubscribers],
            properties: Properties::default(),
        }),
        V311,
        "reason code not of SUBACK",
    );
    expect_invalid(
        Packet::UnsubAck(UnsubAck {
            packet_id: 1,
            reasons: vec![],
            properties: Properties::default(),
        }),
        V5,
        "MQTT 5 UNSUBACK without reason codes",
    );
    expect_invalid(
        Packet::Auth(Auth {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }),
        V311,
        "AUTH in 3.1.1",
    );
    expect_invalid(
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::GrantedQoS1,
            properties: Properties::default(),
        }),
        V5,
        "reason code not of DISCONNECT",
    );
    expect_invalid(
        Packet::Connect(Box::new(Connect {
            protocol: V311,
            clean_start: true,
            keep_alive: 0,
            client_id: "c".into(),
            will: None,
            username: None,
            password: Some(Bytes::from_static(b"p")),
            properties: Properties::default(),
        })),
        V311,
        "3.1.1 password without user name",
    );
    expect_invalid(
        Packet::Connect(Box::new(Connect {
            protocol: V5,
            clean_start: true,
            keep_alive: 0,
            client_id: "c".into(),
            will: Some(LastWill {
                topic: "w".into(),
                payload: Bytes::from(vec![0; 65_536]),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Properties::default(),
            }),
            username: None,
            password: None,
            properties: Properties::default(),
        })),
        V5,
        "Will Payload over 65,535 bytes",
    );
}

#[test]
fn encode_refuses_a_packet_over_the_remaining_length_limit() {
    let mut p = sample_publish(QoS::AtMostOnce, None);
    // 268,435,455 is the largest Remaining Length; the topic's three bytes push it over.
    p.payload = Bytes::from(vec![0u8; 268_435_455 - 2]);
    let packet = Packet::Publish(p);
    let mut out = BytesMut::new();
    assert_eq!(encode(&packet, V311, &mut out), Err(EncodeError::TooLarge));
    assert!(out.is_empty());
    assert_eq!(encoded_len(&packet, V311), usize::MAX);
}
