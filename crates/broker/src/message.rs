//! Application messages as the broker routes them, the per-receiver `Delivery`, the clock
//! used for expiry, and building/encoding outbound packets.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use thingd_mqtt::{ByteStr, Packet, Properties, ProtocolVersion, Publish, QoS};

/// Wall-clock milliseconds derived from tokio's clock, so that `tokio::time::pause()` in
/// tests also moves message and session expiry.
#[derive(Clone, Debug)]
pub(crate) struct Clock {
    base_unix_ms: u64,
    base: tokio::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        let base_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clock {
            base_unix_ms,
            base: tokio::time::Instant::now(),
        }
    }

    /// Unix time in milliseconds.
    pub(crate) fn now_ms(&self) -> u64 {
        self.base_unix_ms + self.base.elapsed().as_millis() as u64
    }

    /// Unix time in seconds.
    pub(crate) fn now_secs(&self) -> i64 {
        (self.now_ms() / 1000) as i64
    }
}

/// One application message, shared by every receiver.
#[derive(Debug, Clone)]
pub(crate) struct AppMsg {
    pub(crate) topic: ByteStr,
    pub(crate) payload: Bytes,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    /// Only the properties forwarded to receivers (see `forwardable`); `None` when there are
    /// none, as for most messages (boxed: a `Properties` is 400 bytes, and a message waiting
    /// in a queue costs what this struct does).
    pub(crate) props: Option<Box<Properties>>,
    /// Absolute expiry, Unix milliseconds.
    pub(crate) expires_at: Option<u64>,
    /// The publishing client id, for No Local.
    pub(crate) origin: Option<Arc<str>>,
    /// Its encodings shared between receivers (see `SharedFrames`).
    pub(crate) frames: SharedFrames,
}

/// Which receivers can share one encoding of a message: protocol version, QoS, and the
/// Message Expiry Interval left (encoded in seconds, so equal for a second at a time).
pub(crate) type FrameKey = (ProtocolVersion, QoS, Option<u32>);

/// Encodings of one message that receivers share (QoS 1/2 ones with packet id 1, which each
/// receiver's copy overwrites as it is written out): made by the first receiver that needs
/// one, whether the message goes out at once or later from a session's queue. A clone of the
/// message starts with none.
#[derive(Default)]
pub(crate) struct SharedFrames(parking_lot::Mutex<Vec<(FrameKey, Option<Bytes>)>>);

/// Encodings kept per message at most (versions × QoS, and expiry seconds as they pass).
const SHARED_FRAMES_MAX: usize = 8;

impl SharedFrames {
    /// The encoding for `key`, made with `encode` if there is none yet (`None` if the codec
    /// refused the message).
    pub(crate) fn get_or_encode(
        &self,
        key: FrameKey,
        encode: impl FnOnce() -> Option<Bytes>,
    ) -> Option<Bytes> {
        if let Some((_, frame)) = self.0.lock().iter().find(|(k, _)| *k == key) {
            return frame.clone();
        }
        let frame = encode();
        let mut frames = self.0.lock();
        if !frames.iter().any(|(k, _)| *k == key) {
            if frames.len() >= SHARED_FRAMES_MAX {
                frames.remove(0);
            }
            frames.push((key, frame.clone()));
        }
        frame
    }
}

#[cfg(test)]
impl SharedFrames {
    /// Encodings kept.
    pub(crate) fn len(&self) -> usize {
        self.0.lock().len()
    }
}

impl Clone for SharedFrames {
    fn clone(&self) -> Self {
        SharedFrames::default()
    }
}

impl std::fmt::Debug for SharedFrames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedFrames({})", self.0.lock().len())
    }
}

impl AppMsg {
    pub(crate) fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|t| t <= now_ms)
    }

    /// Remaining expiry in whole seconds (rounded up), if the message has one.
    pub(crate) fn remaining_expiry(&self, now_ms: u64) -> Option<u32> {
        self.expires_at.map(|t| {
            let ms = t.saturating_sub(now_ms);
            ms.div_ceil(1000).min(u32::MAX as u64) as u32
        })
    }
}

/// The properties a receiver gets from the publisher, in order: Payload Format Indicator,
/// Content Type, Response Topic, Correlation Data, User Properties.
pub(crate) fn forwardable(p: &Properties) -> Option<Box<Properties>> {
    let none = p.payload_format_indicator.is_none()
        && p.content_type.is_none()
        && p.response_topic.is_none()
        && p.correlation_data.is_none()
        && p.user_properties.is_empty();
    (!none).then(|| {
        Box::new(Properties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            ..Properties::default()
        })
    })
}

/// The absolute expiry for a Message Expiry Interval, clamped to `max_secs`.
pub(crate) fn expiry_from(interval: Option<u32>, max_secs: u32, now_ms: u64) -> Option<u64> {
    interval.map(|s| now_ms + u64::from(s.min(max_secs)) * 1000)
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) msg: Arc<AppMsg>,
    /// min(publish QoS, subscription QoS).
    pub(crate) qos: QoS,
    /// The RETAIN flag to send.
    pub(crate) retain: bool,
    /// Subscription identifiers of the matching subscriptions.
    pub(crate) sub_ids: Vec<u32>,
    /// Position in the store when the session is persistent and QoS > 0.
    pub(crate) seq: Option<u64>,
    /// Restored after a restart and perhaps sent before it: goes out with DUP=1.
    pub(crate) dup: bool,
}

/// Builds the PUBLISH for `d` (topic alias handling is done by the caller).
pub(crate) fn publish_packet(
    d: &Delivery,
    packet_id: Option<u16>,
    dup: bool,
    now_ms: u64,
    version: ProtocolVersion,
) -> Publish {
    let mut props = Properties::default();
    if version == ProtocolVersion::V5 {
        if let Some(forwarded) = &d.msg.props {
            props = Properties::clone(forwarded);
        }
        props.message_expiry_interval = d.msg.remaining_expiry(now_ms);
        props.subscription_identifiers = d.sub_ids.clone();
    }
    Publish {
        dup: dup && d.qos != QoS::AtMostOnce,
        qos: d.qos,
        retain: d.retain,
        topic: d.msg.topic.clone(),
        packet_id: if d.qos == QoS::AtMostOnce {
            None
        } else {
            packet_id
        },
        properties: props,
        payload: d.msg.payload.clone(),
    }
}

/// Encodes one packet into its own `Bytes`; `None` (logged) if the codec refuses it.
pub(crate) fn encode_frame(packet: &Packet, version: ProtocolVersion) -> Option<Bytes> {
    let mut buf = BytesMut::new();
    match thingd_mqtt::encode(packet, version, &mut buf) {
        Ok(()) => Some(buf.freeze()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode packet");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queued message costs what its `AppMsg` does: 536 bytes when the properties were
    /// inline, for the few messages that have any.
    #[test]
    fn a_message_without_properties_is_small() {
        assert!(size_of::<AppMsg>() <= 160, "{}", size_of::<AppMsg>());
        let none = Properties {
            message_expiry_interval: Some(5),
            topic_alias: Some(3),
            ..Properties::default()
        };
        assert!(forwardable(&none).is_none(), "nothing there is forwarded");
        let some = Properties {
            correlation_data: Some(Bytes::from_static(b"id")),
            ..none
        };
        let kept = forwardable(&some).expect("correlation data is forwarded");
        assert_eq!(kept.correlation_data, some.correlation_data);
        assert_eq!(kept.message_expiry_interval, None);
    }

    #[test]
    fn shared_frames_encode_once_per_key_and_are_not_cloned() {
        let frames = SharedFrames::default();
        let encodes = std::cell::Cell::new(0);
        let get = |key: FrameKey| {
            frames.get_or_encode(key, || {
                encodes.set(encodes.get() + 1);
                Some(Bytes::from(format!("{key:?}")))
            })
        };
        let v5 = (ProtocolVersion::V5, QoS::AtLeastOnce, None);
        let v3 = (ProtocolVersion::V311, QoS::AtLeastOnce, None);
        let expiring = (ProtocolVersion::V5, QoS::AtLeastOnce, Some(9));
        let a = get(v5);
        assert_eq!(get(v5), a);
        assert_ne!(get(v3), a);
        assert_ne!(get(expiring), a);
        assert_eq!(get(v3), get(v3));
        assert_eq!(encodes.get(), 3);
        // Bounded: old keys make room for new ones.
        for secs in 0..20 {
            get((ProtocolVersion::V5, QoS::ExactlyOnce, Some(secs)));
        }
        assert!(frames.0.lock().len() <= SHARED_FRAMES_MAX);
        assert_eq!(frames.clone().0.lock().len(), 0, "a clone starts empty");
    }

    #[test]
    fn remaining_expiry_rounds_up() {
        let m = AppMsg {
            topic: ByteStr::from("a"),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            props: None,
            expires_at: Some(10_500),
            origin: None,
            frames: Default::default(),
        };
        assert_eq!(m.remaining_expiry(10_000), Some(1));
        assert_eq!(m.remaining_expiry(9_000), Some(2));
        assert!(!m.is_expired(10_499));
        assert!(m.is_expired(10_500));
        assert_eq!(expiry_from(Some(10), 5, 1000), Some(6000));
        assert_eq!(expiry_from(None, 5, 1000), None);
    }
}
