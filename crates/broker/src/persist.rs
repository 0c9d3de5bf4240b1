//! Blob encodings for the store: queued/retained messages and session state.
//!
//! Message blob: `[1: format = 1][8: absolute expiry, Unix ms, big-endian, 0 = none]` followed
//! by the message as an MQTT 5 PUBLISH (encoded by the codec, packet id 1 when QoS > 0, no
//! Message Expiry property: the header holds the absolute time). For a queued message the
//! PUBLISH carries the delivery QoS, RETAIN flag and subscription identifiers of that session.
//!
//! Session state blob: `[1: format = 1][2: n]` then n subscriptions
//! `[2: len][filter][1: options byte as on the wire][4: subscription id, 0 = none]`, then
//! `[2: m]` and m inbound QoS 2 packet ids awaiting PUBREL, then tagged sections:
//! `[1: 2][8: sent through]`, the highest queued message position sent (always written
//! now; state without it was written before it was kept), and optionally the session's
//! Will: `[1: 1][4: Will Delay Interval][1: has expiry][4: Message Expiry Interval]` and
//! `[4: n]` n bytes of a message blob (its expiry header absolute once the connection has
//! closed). State written before Wills were kept ends after the packet ids.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use thingd_mqtt::{Packet, ProtocolVersion, QoS, RetainHandling, SubscriptionOptions};

use crate::message::{AppMsg, Delivery, encode_frame, forwardable, publish_packet};
use crate::session::{SubRecord, Will};

const FORMAT: u8 = 1;

/// Encodes a delivery (as it will be sent to its session) for `PushMessage`.
pub(crate) fn encode_delivery(d: &Delivery) -> Vec<u8> {
    let mut p = publish_packet(d, Some(1), false, 0, ProtocolVersion::V5);
    p.properties.message_expiry_interval = None;
    encode_with_header(&Packet::Publish(p), d.msg.expires_at)
}

/// Encodes a retained message for `PutRetained`.
pub(crate) fn encode_message(m: &Arc<AppMsg>) -> Vec<u8> {
    let d = Delivery {
        msg: m.clone(),
        qos: m.qos,
        retain: m.retain,
        sub_ids: Vec::new(),
        seq: None,
        dup: false,
    };
    encode_delivery(&d)
}

fn encode_with_header(p: &Packet, expires_at: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT);
    out.extend_from_slice(&expires_at.unwrap_or(0).to_be_bytes());
    if let Some(frame) = encode_frame(p, ProtocolVersion::V5) {
        out.extend_from_slice(&frame);
    }
    out
}

/// Decodes a blob written by `encode_delivery`/`encode_message`.
pub(crate) fn decode_delivery(blob: &[u8]) -> Option<Delivery> {
    if blob.len() < 9 || blob[0] != FORMAT {
        return None;
    }
    let mut exp = [0u8; 8];
    exp.copy_from_slice(&blob[1..9]);
    let exp = u64::from_be_bytes(exp);
    let mut buf = BytesMut::from(&blob[9..]);
    let p = match thingd_mqtt::decode(&mut buf, ProtocolVersion::V5, usize::MAX) {
        Ok(Some(Packet::Publish(p))) => p,
        _ => return None,
    };
    let sub_ids = p.properties.subscription_identifiers.clone();
    let props = forwardable(&p.properties);
    let msg = AppMsg {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        props,
        expires_at: (exp != 0).then_some(exp),
        origin: None,
        frames: Default::default(),
    };
    Some(Delivery {
        msg: Arc::new(msg),
        qos: p.qos,
        retain: p.retain,
        sub_ids,
        seq: None,
        dup: false,
    })
}

/// The persisted part of a session.
#[derive(Debug, Default, Clone)]
pub(crate) struct SessionState {
    pub(crate) subs: Vec<(String, SubRecord)>,
    pub(crate) inbound_qos2: Vec<u16>,
    /// `Session::sent_through`; `None` in state written before it was kept.
    pub(crate) sent_through: Option<u64>,
    pub(crate) will: Option<StoredWill>,
}

/// Tags of the sections after the packet ids.
const WILL_SECTION: u8 = 1;
const SENT_THROUGH_SECTION: u8 = 2;

/// A Will as stored with its session (its policy is not: only a Will its connection may
/// publish is stored).
#[derive(Debug, Clone)]
pub(crate) struct StoredWill {
    pub(crate) msg: AppMsg,
    pub(crate) expiry_interval: Option<u32>,
    pub(crate) delay: u32,
}

fn options_byte(o: &SubscriptionOptions) -> u8 {
    (o.qos as u8)
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

fn options_from(b: u8) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::from_u8(b & 3).unwrap_or(QoS::AtMostOnce),
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: match (b >> 4) & 3 {
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => RetainHandling::SendAtSubscribe,
        },
    }
}

/// Encodes session state.
pub(crate) fn encode_state(
    subs: &HashMap<String, SubRecord>,
    inbound_qos2: &[u16],
    sent_through: u64,
    will: Option<&Will>,
) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(FORMAT);
    let mut list: Vec<_> = subs.iter().collect();
    list.sort_by(|a, b| a.0.cmp(b.0));
    out.put_u16(list.len().min(u16::MAX as usize) as u16);
    for (filter, rec) in list.into_iter().take(u16::MAX as usize) {
        let f = filter.as_bytes();
        let f = &f[..f.len().min(u16::MAX as usize)];
        out.put_u16(f.len() as u16);
        out.put_slice(f);
        out.put_u8(options_byte(&rec.opts));
        out.put_u32(rec.id.unwrap_or(0));
    }
    out.put_u16(inbound_qos2.len().min(u16::MAX as usize) as u16);
    for id in inbound_qos2.iter().take(u16::MAX as usize) {
        out.put_u16(*id);
    }
    out.put_u8(SENT_THROUGH_SECTION);
    out.put_u64(sent_through);
    if let Some(w) = will {
        out.put_u8(WILL_SECTION);
        out.put_u32(w.delay);
        out.put_u8(u8::from(w.expiry_interval.is_some()));
        out.put_u32(w.expiry_interval.unwrap_or(0));
        let blob = encode_message(&Arc::new(w.msg.clone()));
        out.put_u32(u32::try_from(blob.len()).unwrap_or(u32::MAX));
        out.put_slice(&blob);
    }
    out.to_vec()
}

/// Decodes session state; `None` if the blob is corrupt.
pub(crate) fn decode_state(mut b: &[u8]) -> Option<SessionState> {
    if b.remaining() < 3 || b.get_u8() != FORMAT {
        return None;
    }
    let n = b.get_u16();
    let mut st = SessionState::default();
    for _ in 0..n {
        if b.remaining() < 2 {
            return None;
        }
        let len = b.get_u16() as usize;
        if b.remaining() < len + 5 {
            return None;
        }
        let filter = std::str::from_utf8(&b[..len]).ok()?.to_owned();
        b.advance(len);
        let opts = options_from(b.get_u8());
        let id = b.get_u32();
        st.subs.push((
            filter,
            SubRecord {
                opts,
                id: (id != 0).then_some(id),
            },
        ));
    }
    if b.remaining() < 2 {
        return None;
    }
    let m = b.get_u16();
    for _ in 0..m {
        if b.remaining() < 2 {
            return None;
        }
        st.inbound_qos2.push(b.get_u16());
    }
    while b.has_remaining() {
        match b.get_u8() {
            SENT_THROUGH_SECTION if b.remaining() >= 8 => st.sent_through = Some(b.get_u64()),
            WILL_SECTION if b.remaining() >= 13 => st.will = Some(decode_will(&mut b)?),
            _ => return None,
        }
    }
    Some(st)
}

/// Decodes the Will section after its tag.
fn decode_will(b: &mut &[u8]) -> Option<StoredWill> {
    let delay = b.get_u32();
    let has_expiry = b.get_u8() != 0;
    let expiry = b.get_u32();
    let len = b.get_u32() as usize;
    if b.remaining() < len {
        return None;
    }
    let d = decode_delivery(&b[..len])?;
    b.advance(len);
    Some(StoredWill {
        msg: Arc::unwrap_or_clone(d.msg),
        expiry_interval: has_expiry.then_some(expiry),
        delay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip() {
        let mut subs = HashMap::new();
        subs.insert(
            "a/+/c".to_owned(),
            SubRecord {
                opts: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
                id: Some(42),
            },
        );
        subs.insert(
            "$share/g/x/#".to_owned(),
            SubRecord {
                opts: SubscriptionOptions::default(),
                id: None,
            },
        );
        let blob = encode_state(&subs, &[7, 9], 42, None);
        let st = decode_state(&blob).expect("decodes");
        assert_eq!(st.inbound_qos2, vec![7, 9]);
        assert_eq!(st.sent_through, Some(42));
        assert!(st.will.is_none());
        let back: HashMap<_, _> = st.subs.into_iter().collect();
        assert_eq!(back, subs);
    }

    #[test]
    fn state_with_a_will_round_trip() {
        let will = Will {
            msg: AppMsg {
                topic: thingd_mqtt::ByteStr::from("status/dev1"),
                payload: bytes::Bytes::from_static(b"offline"),
                qos: QoS::AtLeastOnce,
                retain: true,
                props: None,
                expires_at: Some(1_700_000_060_000),
                origin: None,
                frames: Default::default(),
            },
            expiry_interval: Some(60),
            delay: 30,
            policy: Arc::new(crate::AllowAll),
        };
        let blob = encode_state(&HashMap::new(), &[3], 0, Some(&will));
        let st = decode_state(&blob).expect("decodes");
        assert_eq!(st.inbound_qos2, vec![3]);
        assert_eq!(st.sent_through, Some(0));
        let back = st.will.expect("the will");
        assert_eq!((back.delay, back.expiry_interval), (30, Some(60)));
        assert_eq!(back.msg.topic, will.msg.topic);
        assert_eq!(back.msg.payload, will.msg.payload);
        assert_eq!((back.msg.qos, back.msg.retain), (QoS::AtLeastOnce, true));
        assert_eq!(back.msg.expires_at, will.msg.expires_at);
        // Cut anywhere inside the will, the state is corrupt, not a state without it.
        for cut in blob.len() - 20..blob.len() {
            assert!(decode_state(&blob[..cut]).is_none(), "cut at {cut}");
        }
    }

    /// State written before the sent position was kept (the packet ids, then the Will or
    /// nothing) still decodes, without it.
    #[test]
    fn state_from_before_the_sent_position_decodes_without_it() {
        let will = Will {
            msg: AppMsg {
                topic: thingd_mqtt::ByteStr::from("status/dev1"),
                payload: bytes::Bytes::from_static(b"offline"),
                qos: QoS::AtLeastOnce,
                retain: false,
                props: None,
                expires_at: None,
                origin: None,
                frames: Default::default(),
            },
            expiry_interval: None,
            delay: 5,
            policy: Arc::new(crate::AllowAll),
        };
        // The old layout: the new one without its `[2][8 bytes]` section after the ids.
        let without = |blob: Vec<u8>| {
            let ids_end = 1 + 2 + 2 + 2;
            [&blob[..ids_end], &blob[ids_end + 9..]].concat()
        };
        let old = without(encode_state(&HashMap::new(), &[7], 9, None));
        let st = decode_state(&old).expect("decodes");
        assert_eq!((st.inbound_qos2, st.sent_through), (vec![7], None));
        let old = without(encode_state(&HashMap::new(), &[7], 9, Some(&will)));
        let st = decode_state(&old).expect("decodes");
        assert_eq!(st.sent_through, None);
        assert_eq!(st.will.expect("the will").delay, 5);
        // Cut inside the sent position, the state is corrupt.
        let blob = encode_state(&HashMap::new(), &[7], 9, None);
        for cut in blob.len() - 8..blob.len() {
            assert!(decode_state(&blob[..cut]).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn corrupt_state_is_rejected() {
        assert!(decode_state(&[]).is_none());
        assert!(decode_state(&[1, 0, 1, 0, 200]).is_none());
        assert!(decode_state(&[9, 0, 0, 0, 0]).is_none());
        // A section of an unknown kind.
        assert!(decode_state(&[1, 0, 0, 0, 0, 7, 0]).is_none());
        assert!(decode_delivery(&[1, 2, 3]).is_none());
    }
}

#[cfg(test)]
mod blob_tests {
    use super::*;
    use bytes::Bytes;
    use thingd_mqtt::{ByteStr, Properties};

    #[test]
    fn message_blob_round_trip() {
        let msg = Arc::new(AppMsg {
            topic: ByteStr::from("a/b"),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            props: Some(Box::new(Properties {
                content_type: Some(ByteStr::from("json")),
                user_properties: vec![(ByteStr::from("k"), ByteStr::from("v"))],
                ..Properties::default()
            })),
            expires_at: Some(1_700_000_000_123),
            origin: None,
            frames: Default::default(),
        });
        let d = Delivery {
            msg: msg.clone(),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: vec![3, 9],
            seq: Some(5),
            dup: false,
        };
        let back = decode_delivery(&encode_delivery(&d)).expect("decodes");
        assert_eq!(back.qos, QoS::AtLeastOnce);
        assert!(!back.retain);
        assert_eq!(back.sub_ids, vec![3, 9]);
        assert_eq!(back.msg.topic, msg.topic);
        assert_eq!(back.msg.payload, msg.payload);
        assert_eq!(back.msg.props, msg.props);
        assert_eq!(back.msg.expires_at, msg.expires_at);

        let r = decode_delivery(&encode_message(&msg)).expect("decodes");
        assert_eq!(r.msg.qos, QoS::ExactlyOnce);
        assert!(r.msg.retain);
        assert_eq!(r.msg.expires_at, msg.expires_at);

        let mut m0 = (*msg).clone();
        m0.qos = QoS::AtMostOnce;
        m0.expires_at = None;
        let r = decode_delivery(&encode_message(&Arc::new(m0))).expect("decodes");
        assert_eq!(r.msg.expires_at, None);
        assert_eq!(r.msg.qos, QoS::AtMostOnce);
    }
}
