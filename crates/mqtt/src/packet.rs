//! The MQTT control packets as typed values, one type per packet, named after the spec.
//!
//! One family of types serves both protocol versions: fields that exist only in MQTT 5
//! (properties, reason codes on acknowledgements) are ignored when encoding for 3.1.1 and
//! take their defaults when decoding 3.1.1. Topic names, payloads and binary properties are
//! `Bytes`/`ByteStr` slices of the read buffer, so decoding a PUBLISH copies nothing.

use bytes::Bytes;
use bytestring::ByteString;

use crate::reason::ReasonCode;

/// A UTF-8 string that shares its bytes with the buffer it was decoded from.
///
/// Constructed only from validated UTF-8, so reading it as a `&str` checks nothing again
/// (`bytestring::ByteString` keeps that promise; topics are read as strings several times
/// per delivery).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ByteStr(ByteString);

impl ByteStr {
    /// Wraps bytes that are valid UTF-8; returns `None` if they are not.
    pub fn from_utf8(bytes: Bytes) -> Option<Self> {
        ByteString::try_from(bytes).ok().map(Self)
    }

    /// A `ByteStr` from a static string.
    pub const fn from_static(s: &'static str) -> Self {
        Self(ByteString::from_static(s))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for ByteStr {
    fn from(s: &str) -> Self {
        Self(ByteString::from(s))
    }
}

impl From<String> for ByteStr {
    fn from(s: String) -> Self {
        Self(ByteString::from(s))
    }
}

impl std::ops::Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for ByteStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The protocol version a connection speaks, fixed by its CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }
}

/// Quality of service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a wire value 0..=2.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// One user property (MQTT 5), a name/value pair; order and duplicates are kept.
pub type UserProperty = (ByteStr, ByteStr);

/// Every MQTT 5 property, as one flat struct. Which ones are legal depends on the packet;
/// the decoder rejects a property that does not belong to the packet it appears in
/// (Protocol Error), and the encoder writes only the fields that are set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01 Payload Format Indicator.
    pub payload_format_indicator: Option<u8>,
    /// 0x02 Message Expiry Interval, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03 Content Type.
    pub content_type: Option<ByteStr>,
    /// 0x08 Response Topic.
    pub response_topic: Option<ByteStr>,
    /// 0x09 Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// 0x0B Subscription Identifier(s). PUBLISH may carry several; SUBSCRIBE at most one.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11 Session Expiry Interval, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12 Assigned Client Identifier.
    pub assigned_client_identifier: Option<ByteStr>,
    /// 0x13 Server Keep Alive, seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15 Authentication Method.
    pub authentication_method: Option<ByteStr>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
    /// 0x17 Request Problem Information.
    pub request_problem_information: Option<u8>,
    /// 0x18 Will Delay Interval, seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19 Request Response Information.
    pub request_response_information: Option<u8>,
    /// 0x1A Response Information.
    pub response_information: Option<ByteStr>,
    /// 0x1C Server Reference.
    pub server_reference: Option<ByteStr>,
    /// 0x1F Reason String.
    pub reason_string: Option<ByteStr>,
    /// 0x21 Receive Maximum.
    pub receive_maximum: Option<u16>,
    /// 0x22 Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23 Topic Alias.
    pub topic_alias: Option<u16>,
    /// 0x24 Maximum QoS.
    pub maximum_qos: Option<u8>,
    /// 0x25 Retain Available.
    pub retain_available: Option<u8>,
    /// 0x26 User Property, in order.
    pub user_properties: Vec<UserProperty>,
    /// 0x27 Maximum Packet Size.
    pub maximum_packet_size: Option<u32>,
    /// 0x28 Wildcard Subscription Available.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29 Subscription Identifier Available.
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A Shared Subscription Available.
    pub shared_subscription_available: Option<u8>,
}

impl Properties {
    /// True when no property is set, as after `Properties::default()`.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }
}

/// The Will carried by CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastWill {
    /// Will Topic.
    pub topic: ByteStr,
    /// Will Payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// Will Properties (MQTT 5): Will Delay Interval, Message Expiry, Content Type, ...
    pub properties: Properties,
}

/// CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level 4 or 5.
    pub protocol: ProtocolVersion,
    /// Clean Session (3.1.1) or Clean Start (5).
    pub clean_start: bool,
    /// Keep Alive, seconds; 0 disables.
    pub keep_alive: u16,
    /// Client Identifier; may be empty.
    pub client_id: ByteStr,
    /// The Will, if the Will Flag is set.
    pub will: Option<LastWill>,
    /// User Name.
    pub username: Option<ByteStr>,
    /// Password.
    pub password: Option<Bytes>,
    /// CONNECT properties (MQTT 5).
    pub properties: Properties,
}

/// CONNACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present.
    pub session_present: bool,
    /// The reason code; for 3.1.1 it is mapped onto the nearest return code when encoded.
    pub reason: ReasonCode,
    /// CONNACK properties (MQTT 5).
    pub properties: Properties,
}

/// PUBLISH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic Name. Empty when an MQTT 5 sender uses a Topic Alias alone.
    pub topic: ByteStr,
    /// Packet Identifier; present exactly when QoS > 0.
    pub packet_id: Option<u16>,
    /// PUBLISH properties (MQTT 5).
    pub properties: Properties,
    /// Application Message.
    pub payload: Bytes,
}

/// Which of the four acknowledgements of the publish flows a [`PubResp`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PubRespKind {
    /// PUBACK (QoS 1).
    PubAck,
    /// PUBREC (QoS 2, step 1).
    PubRec,
    /// PUBREL (QoS 2, step 2).
    PubRel,
    /// PUBCOMP (QoS 2, step 3).
    PubComp,
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: the four share one shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubResp {
    /// Which acknowledgement this is.
    pub kind: PubRespKind,
    /// Packet Identifier.
    pub packet_id: u16,
    /// Reason code (MQTT 5; `Success` for 3.1.1).
    pub reason: ReasonCode,
    /// Properties (MQTT 5): Reason String, User Property.
    pub properties: Properties,
}

/// Retain Handling subscription option (MQTT 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send retained messages only if the subscription did not exist.
    SendIfNew = 1,
    /// Do not send retained messages.
    DoNotSend = 2,
}

/// Subscription options (the byte after each filter in SUBSCRIBE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local (MQTT 5).
    pub no_local: bool,
    /// Retain As Published (MQTT 5).
    pub retain_as_published: bool,
    /// Retain Handling (MQTT 5).
    pub retain_handling: RetainHandling,
}

/// SUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet Identifier.
    pub packet_id: u16,
    /// The filters and their options, in order; never empty on the wire.
    pub filters: Vec<(ByteStr, SubscriptionOptions)>,
    /// Properties (MQTT 5): Subscription Identifier, User Property.
    pub properties: Properties,
}

/// SUBACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// Packet Identifier.
    pub packet_id: u16,
    /// One code per filter: `GrantedQoS0..2` or a failure.
    pub reasons: Vec<ReasonCode>,
    /// Properties (MQTT 5).
    pub properties: Properties,
}

/// UNSUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet Identifier.
    pub packet_id: u16,
    /// The filters, in order.
    pub filters: Vec<ByteStr>,
    /// Properties (MQTT 5).
    pub properties: Properties,
}

/// UNSUBACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet Identifier.
    pub packet_id: u16,
    /// One code per filter (MQTT 5; empty for 3.1.1).
    pub reasons: Vec<ReasonCode>,
    /// Properties (MQTT 5).
    pub properties: Properties,
}

/// DISCONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason code (MQTT 5).
    pub reason: ReasonCode,
    /// Properties (MQTT 5): Session Expiry Interval, Reason String, Server Reference, User Property.
    pub properties: Properties,
}

/// AUTH (MQTT 5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    /// Reason code.
    pub reason: ReasonCode,
    /// Properties: Authentication Method/Data, Reason String, User Property.
    pub properties: Properties,
}

/// Any MQTT control packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT
    Connect(Box<Connect>),
    /// CONNACK
    ConnAck(ConnAck),
    /// PUBLISH
    Publish(Publish),
    /// PUBACK, PUBREC, PUBREL, PUBCOMP
    PubResp(PubResp),
    /// SUBSCRIBE
    Subscribe(Subscribe),
    /// SUBACK
    SubAck(SubAck),
    /// UNSUBSCRIBE
    Unsubscribe(Unsubscribe),
    /// UNSUBACK
    UnsubAck(UnsubAck),
    /// PINGREQ
    PingReq,
    /// PINGRESP
    PingResp,
    /// DISCONNECT
    Disconnect(Disconnect),
    /// AUTH
    Auth(Auth),
}
