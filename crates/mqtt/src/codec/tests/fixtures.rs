//! Packets written out byte by byte from the spec, in both versions: each must decode to
//! the expected value, encode back to the same bytes, and read as incomplete when cut short.

use bytes::{Bytes, BytesMut};

use super::hex;
use crate::codec::{decode, encode_to_bytes, encoded_len};
use crate::packet::*;
use crate::reason::ReasonCode;

use ProtocolVersion::{V5, V311};

/// Checks `bytes` against `packet` both ways, and every proper prefix of `bytes` as
/// incomplete input.
#[track_caller]
fn check(version: ProtocolVersion, bytes: &str, packet: Packet) {
    let bytes = hex(bytes);

    // Decoding consumes exactly one packet, even with the next one behind it.
    let mut buf = BytesMut::from(&bytes[..]);
    buf.extend_from_slice(&[0xC0, 0x00]);
    let decoded = decode(&mut buf, version, bytes.len()).expect("decodes");
    assert_eq!(decoded.as_ref(), Some(&packet));
    assert_eq!(&buf[..], &[0xC0, 0x00], "only the packet is consumed");

    // Encoding gives back the same bytes, and encoded_len agrees.
    let encoded = encode_to_bytes(&packet, version).expect("encodes");
    assert_eq!(encoded.as_ref(), &bytes[..], "encoding of {packet:?}");
    assert_eq!(encoded_len(&packet, version), bytes.len());

    // Every cut is incomplete, and leaves the buffer as it was.
    for cut in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..cut]);
        assert_eq!(decode(&mut buf, version, 1024), Ok(None), "cut at {cut}");
        assert_eq!(&buf[..], &bytes[..cut], "cut at {cut} consumed bytes");
    }
}

/// Checks that `bytes` decodes to `packet` (a form the encoder does not choose itself).
#[track_caller]
fn check_decode_only(version: ProtocolVersion, bytes: &str, packet: Packet) {
    let bytes = hex(bytes);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(decode(&mut buf, version, 1024), Ok(Some(packet)));
    assert!(buf.is_empty());
}

fn s(text: &'static str) -> ByteStr {
    ByteStr::from_static(text)
}

fn b(bytes: &'static [u8]) -> Bytes {
    Bytes::from_static(bytes)
}

fn pub_resp(kind: PubRespKind, packet_id: u16, reason: ReasonCode) -> Packet {
    Packet::PubResp(PubResp {
        kind,
        packet_id,
        reason,
        properties: Properties::default(),
    })
}

#[test]
fn connect_v311() {
    // Clean Session, Keep Alive 60, client "test": what `mosquitto_pub -i test` sends.
    check(
        V311,
        "10 10 00 04 4d 51 54 54 04 02 00 3c 00 04 74 65 73 74",
        Packet::Connect(Box::new(Connect {
            protocol: V311,
            clean_start: true,
            keep_alive: 60,
            client_id: s("test"),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })),
    );
    // Every flag: user name, password, Will Retain, Will QoS 1, Will, Clean Session.
    check(
        V311,
        "10 1c 00 04 4d 51 54 54 04 ee 00 0a 00 02 63 31 00 01 77 00 03 62 79 65
         00 01 75 00 01 70",
        Packet::Connect(Box::new(Connect {
            protocol: V311,
            clean_start: true,
            keep_alive: 10,
            client_id: s("c1"),
            will: Some(LastWill {
                topic: s("w"),
                payload: b(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: Properties::default(),
            }),
            username: Some(s("u")),
            password: Some(b(b"p")),
            properties: Properties::default(),
        })),
    );
}

#[test]
fn connect_v5() {
    // Session Expiry Interval 3600 and Receive Maximum 20.
    check(
        V5,
        "10 19 00 04 4d 51 54 54 05 02 00 3c 08 11 00 00 0e 10 21 00 14 00 04 74 65 73 74",
        Packet::Connect(Box::new(Connect {
            protocol: V5,
            clean_start: true,
            keep_alive: 60,
            client_id: s("test"),
            will: None,
            username: None,
            password: None,
            properties: Properties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(20),
                ..Properties::default()
            },
        })),
    );
    // Empty client id, a Will with a Will Delay Interval, and a password without a user
    // name (allowed from MQTT 5 on).
    check(
        V5,
        "10 1c 00 04 4d 51 54 54 05 44 00 00 00 00 00 05 18 00 00 00 05 00 01 77 00 00
         00 02 70 77",
        Packet::Connect(Box::new(Connect {
            protocol: V5,
            clean_start: false,
            keep_alive: 0,
            client_id: s(""),
            will: Some(LastWill {
                topic: s("w"),
                payload: Bytes::new(),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Properties {
                    will_delay_interval: Some(5),
                    ..Properties::default()
                },
            }),
            username: None,
            password: Some(b(b"pw")),
            properties: Properties::default(),
        })),
    );
}

#[test]
fn connect_is_read_by_its_own_version() {
    // A 3.1.1 CONNECT on a connection whose version is not known yet.
    let bytes = hex("10 0c 00 04 4d 51 54 54 04 00 00 00 00 00");
    let mut buf = BytesMut::from(&bytes[..]);
    let Ok(Some(Packet::Connect(connect))) = decode(&mut buf, V5, 64) else {
        panic!("CONNECT expected");
    };
    assert_eq!(connect.protocol, V311);
}

#[test]
fn connack() {
    let ok = |session_present, reason| {
        Packet::ConnAck(ConnAck {
            session_present,
            reason,
            properties: Properties::default(),
        })
    };
    check(V311, "20 02 00 00", ok(false, ReasonCode::Success));
    check(V311, "20 02 01 00", ok(true, ReasonCode::Success));
    check(V311, "20 02 00 05", ok(false, ReasonCode::NotAuthorized));
    check(
        V311,
        "20 02 00 04",
        ok(false, ReasonCode::BadUserNameOrPassword),
    );
    check(V5, "20 03 00 87 00", ok(false, ReasonCode::NotAuthorized));
    check(
        V5,
        "20 0c 01 00 09 12 00 03 61 62 63 22 00 0a",
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: ReasonCode::Success,
            properties: Properties {
                assigned_client_identifier: Some(s("abc")),
                topic_alias_maximum: Some(10),
                ..Properties::default()
            },
        }),
    );
}

#[test]
fn publish() {
    check(
        V311,
        "30 07 00 03 61 2f 62 68 69",
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s("a/b"),
            packet_id: None,
            properties: Properties::default(),
            payload: b(b"hi"),
        }),
    );
    check(
        V311,
        "3b 09 00 03 61 2f 62 00 0a 68 69",
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: s("a/b"),
            packet_id: Some(10),
            properties: Properties::default(),
            payload: b(b"hi"),
        }),
    );
    // QoS 2 with a Topic Alias and a User Property.
    check(
        V5,
        "34 11 00 01 74 00 05 0a 23 00 01 26 00 01 6b 00 01 76 78",
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: s("t"),
            packet_id: Some(5),
            properties: Properties {
                topic_alias: Some(1),
                user_properties: vec![(s("k"), s("v"))],
                ..Properties::default()
            },
            payload: b(b"x"),
        }),
    );
    // An empty topic name standing for Topic Alias 3, and an empty payload.
    check(
        V5,
        "30 06 00 00 03 23 00 03",
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s(""),
            packet_id: None,
            properties: Properties {
                topic_alias: Some(3),
                ..Properties::default()
            },
            payload: Bytes::new(),
        }),
    );
}

#[test]
fn publish_is_zero_copy() {
    let bytes = hex("30 0a 00 03 61 2f 62 70 61 79 6c 64");
    let mut buf = BytesMut::from(&bytes[..]);
    let range = buf.as_ptr_range();
    let Ok(Some(Packet::Publish(publish))) = decode(&mut buf, V311, 64) else {
        panic!("PUBLISH expected");
    };
    assert_eq!(publish.payload.as_ref(), b"payld");
    assert!(range.contains(&publish.payload.as_ptr()));
    assert!(range.contains(&publish.topic.as_bytes().as_ptr()));
}

#[test]
fn publish_acknowledgements() {
    use PubRespKind::*;
    for version in [V311, V5] {
        check(
            version,
            "40 02 00 0a",
            pub_resp(PubAck, 10, ReasonCode::Success),
        );
        check(
            version,
            "50 02 00 0a",
            pub_resp(PubRec, 10, ReasonCode::Success),
        );
        check(
            version,
            "62 02 00 0a",
            pub_resp(PubRel, 10, ReasonCode::Success),
        );
        check(
            version,
            "70 02 01 00",
            pub_resp(PubComp, 256, ReasonCode::Success),
        );
    }
    check(
        V5,
        "40 03 00 0a 10",
        pub_resp(PubAck, 10, ReasonCode::NoMatchingSubscribers),
    );
    check(
        V5,
        "62 03 00 0a 92",
        pub_resp(PubRel, 10, ReasonCode::PacketIdentifierNotFound),
    );
    check(
        V5,
        "50 09 00 0a 80 05 1f 00 02 6e 6f",
        Packet::PubResp(PubResp {
            kind: PubRec,
            packet_id: 10,
            reason: ReasonCode::UnspecifiedError,
            properties: Properties {
                reason_string: Some(s("no")),
                ..Properties::default()
            },
        }),
    );
    // The long forms of Success with no properties read the same as the short one.
    check_decode_only(
        V5,
        "40 03 00 0a 00",
        pub_resp(PubAck, 10, ReasonCode::Success),
    );
    check_decode_only(
        V5,
        "70 04 00 0a 00 00",
        pub_resp(PubComp, 10, ReasonCode::Success),
    );
}

#[test]
fn subscribe() {
    check(
        V311,
        "82 0c 00 01 00 03 61 2f 23 01 00 01 62 00",
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![
                (
                    s("a/#"),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..SubscriptionOptions::default()
                    },
                ),
                (s("b"), SubscriptionOptions::default()),
            ],
            properties: Properties::default(),
        }),
    );
    // Subscription Identifier 5; QoS 2, No Local, Retain As Published, Retain Handling 2.
    check(
        V5,
        "82 0b 00 01 02 0b 05 00 03 61 2f 2b 2e",
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                s("a/+"),
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            )],
            properties: Properties {
                subscription_identifiers: vec![5],
                ..Properties::default()
            },
        }),
    );
}

#[test]
fn suback() {
    check(
        V311,
        "90 04 00 01 01 80",
        Packet::SubAck(SubAck {
            packet_id: 1,
            reasons: vec![ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError],
            properties: Properties::default(),
        }),
    );
    check(
        V5,
        "90 05 00 01 00 02 a2",
        Packet::SubAck(SubAck {
            packet_id: 1,
            reasons: vec![
                ReasonCode::GrantedQoS2,
                ReasonCode::WildcardSubscriptionsNotSupported,
            ],
            properties: Properties::default(),
        }),
    );
}

#[test]
fn unsubscribe() {
    check(
        V311,
        "a2 07 00 02 00 03 61 2f 23",
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec![s("a/#")],
            properties: Properties::default(),
        }),
    );
    check(
        V5,
        "a2 06 00 02 00 00 01 62",
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec![s("b")],
            properties: Properties::default(),
        }),
    );
}

#[test]
fn unsuback() {
    check(
        V311,
        "b0 02 00 02",
        Packet::UnsubAck(UnsubAck {
            packet_id: 2,
            reasons: Vec::new(),
            properties: Properties::default(),
        }),
    );
    check(
        V5,
        "b0 05 00 02 00 00 11",
        Packet::UnsubAck(UnsubAck {
            packet_id: 2,
            reasons: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
            properties: Properties::default(),
        }),
    );
}

#[test]
fn ping() {
    for version in [V311, V5] {
        check(version, "c0 00", Packet::PingReq);
        check(version, "d0 00", Packet::PingResp);
    }
}

#[test]
fn disconnect() {
    let plain = |reason| {
        Packet::Disconnect(Disconnect {
            reason,
            properties: Properties::default(),
        })
    };
    check(V311, "e0 00", plain(ReasonCode::NORMAL_DISCONNECTION));
    check(V5, "e0 00", plain(ReasonCode::NORMAL_DISCONNECTION));
    // A reason without properties is written with a property length of 0 (rumqttc cannot
    // read the one-byte form), and the one-byte form is still read.
    check(V5, "e0 02 04 00", plain(ReasonCode::DisconnectWithWill));
    check_decode_only(V5, "e0 01 8e", plain(ReasonCode::SessionTakenOver));
    check(
        V5,
        "e0 06 8e 04 1f 00 01 78",
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::SessionTakenOver,
            properties: Properties {
                reason_string: Some(s("x")),
                ..Properties::default()
            },
        }),
    );
    check_decode_only(V5, "e0 02 00 00", plain(ReasonCode::NORMAL_DISCONNECTION));
}

#[test]
fn auth() {
    check(
        V5,
        "f0 00",
        Packet::Auth(Auth {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }),
    );
    check(
        V5,
        "f0 0a 18 08 15 00 01 6d 16 00 01 64",
        Packet::Auth(Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: Properties {
                authentication_method: Some(s("m")),
                authentication_data: Some(b(b"d")),
                ..Properties::default()
            },
        }),
    );
    check_decode_only(
        V5,
        "f0 01 19",
        Packet::Auth(Auth {
            reason: ReasonCode::ReAuthenticate,
            properties: Properties::default(),
        }),
    );
}

#[test]
fn fields_3_1_1_cannot_carry_are_left_out() {
    // MQTT 5-only fields are dropped, and failures are mapped onto the 3.1.1 codes.
    let cases = [
        (
            Packet::PubResp(PubResp {
                kind: PubRespKind::PubAck,
                packet_id: 7,
                reason: ReasonCode::QuotaExceeded,
                properties: Properties {
                    reason_string: Some(s("full")),
                    ..Properties::default()
                },
            }),
            "40 02 00 07",
        ),
        (
            Packet::SubAck(SubAck {
                packet_id: 7,
                reasons: vec![
                    ReasonCode::NotAuthorized,
                    ReasonCode::GrantedQoS2,
                    ReasonCode::ServerBusy,
                ],
                properties: Properties::default(),
            }),
            "90 05 00 07 80 02 80",
        ),
        (
            Packet::UnsubAck(UnsubAck {
                packet_id: 7,
                reasons: vec![ReasonCode::NoSubscriptionExisted],
                properties: Properties::default(),
            }),
            "b0 02 00 07",
        ),
        (
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ReasonCode::BadAuthenticationMethod,
                properties: Properties::default(),
            }),
            "20 02 00 04",
        ),
        (
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::ServerShuttingDown,
                properties: Properties::default(),
            }),
            "e0 00",
        ),
        (
            Packet::Subscribe(Subscribe {
                packet_id: 7,
                filters: vec![(
                    s("x"),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::SendIfNew,
                    },
                )],
                properties: Properties {
                    subscription_identifiers: vec![3],
                    ..Properties::default()
                },
            }),
            "82 06 00 07 00 01 78 01",
        ),
    ];
    for (packet, bytes) in cases {
        assert_eq!(
            encode_to_bytes(&packet, V311).as_deref(),
            Ok(&hex(bytes)[..]),
            "{packet:?}"
        );
        assert_eq!(encoded_len(&packet, V311), hex(bytes).len());
    }
}
