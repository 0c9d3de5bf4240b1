//! Proptest strategies for packets, and helpers shared by the tests.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;

use crate::codec::properties::{PropertyContext, PropertyId};
use crate::codec::reader::VARINT_MAX;
use crate::codec::reason_codes;
use crate::packet::*;
use crate::reason::ReasonCode;

/// Clears every property that may not appear in `context`.
pub(crate) fn only_allowed(p: &mut Properties, context: PropertyContext) {
    use PropertyId::*;
    let allowed = |id: PropertyId| id.is_allowed_in(context);
    macro_rules! keep {
        ($($id:ident => $field:ident),* $(,)?) => {
            $(if !allowed($id) { p.$field = Default::default(); })*
        };
    }
    keep!(
        PayloadFormatIndicator => payload_format_indicator,
        MessageExpiryInterval => message_expiry_interval,
        ContentType => content_type,
        ResponseTopic => response_topic,
        CorrelationData => correlation_data,
        SubscriptionIdentifier => subscription_identifiers,
        SessionExpiryInterval => session_expiry_interval,
        AssignedClientIdentifier => assigned_client_identifier,
        ServerKeepAlive => server_keep_alive,
        AuthenticationMethod => authentication_method,
        AuthenticationData => authentication_data,
        RequestProblemInformation => request_problem_information,
        WillDelayInterval => will_delay_interval,
        RequestResponseInformation => request_response_information,
        ResponseInformation => response_information,
        ServerReference => server_reference,
        ReasonString => reason_string,
        ReceiveMaximum => receive_maximum,
        TopicAliasMaximum => topic_alias_maximum,
        TopicAlias => topic_alias,
        MaximumQos => maximum_qos,
        RetainAvailable => retain_available,
        UserProperty => user_properties,
        MaximumPacketSize => maximum_packet_size,
        WildcardSubscriptionAvailable => wildcard_subscription_available,
        SubscriptionIdentifierAvailable => subscription_identifier_available,
        SharedSubscriptionAvailable => shared_subscription_available,
    );
}

/// A UTF-8 string of up to `max` characters, without U+0000.
pub(crate) fn string(max: usize) -> impl Strategy<Value = ByteStr> {
    vec(any::<char>().prop_filter("U+0000", |&c| c != '\0'), 0..=max)
        .prop_map(|chars| ByteStr::from(chars.into_iter().collect::<String>()))
}

/// Up to `max` arbitrary bytes.
pub(crate) fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

/// A packet identifier, never 0.
fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// A byte property whose only values are 0 and 1.
fn flag() -> impl Strategy<Value = Option<u8>> {
    option::of(0u8..=1)
}

/// Properties that may appear in `context`, with values the spec allows.
pub(crate) fn properties(context: PropertyContext) -> impl Strategy<Value = Properties> {
    let message = (
        option::of(any::<u8>()),
        option::of(any::<u32>()),
        option::of(string(8)),
        option::of(string(8)),
        option::of(bytes(8)),
        vec(1..=VARINT_MAX, 0..3),
    );
    let session = (
        option::of(any::<u32>()),
        option::of(string(8)),
        option::of(any::<u16>()),
        option::of(string(8)),
        option::of(bytes(8)),
        flag(),
        option::of(any::<u32>()),
        flag(),
    );
    let server = (
        option::of(string(8)),
        option::of(string(8)),
        option::of(string(8)),
        option::of(1..=u16::MAX),
        option::of(any::<u16>()),
        option::of(1..=u16::MAX),
        flag(),
        flag(),
    );
    let rest = (
        vec((string(4), string(4)), 0..3),
        option::of(1..=u32::MAX),
        flag(),
        flag(),
        flag(),
    );
    (message, session, server, rest).prop_map(move |(message, session, server, rest)| {
        let mut p = Properties {
            payload_format_indicator: message.0,
            message_expiry_interval: message.1,
            content_type: message.2,
            response_topic: message.3,
            correlation_data: message.4,
            subscription_identifiers: message.5,
            session_expiry_interval: session.0,
            assigned_client_identifier: session.1,
            server_keep_alive: session.2,
            authentication_method: session.3,
            authentication_data: session.4,
            request_problem_information: session.5,
            will_delay_interval: session.6,
            request_response_information: session.7,
            response_information: server.0,
            server_reference: server.1,
            reason_string: server.2,
            receive_maximum: server.3,
            topic_alias_maximum: server.4,
            topic_alias: server.5,
            maximum_qos: server.6,
            retain_available: server.7,
            user_properties: rest.0,
            maximum_packet_size: rest.1,
            wildcard_subscription_available: rest.2,
            subscription_identifier_available: rest.3,
            shared_subscription_available: rest.4,
        };
        only_allowed(&mut p, context);
        if context == PropertyContext::Subscribe {
            p.subscription_identifiers.truncate(1);
        }
        if p.authentication_method.is_none() {
            p.authentication_data = None;
        }
        p
    })
}

/// Properties for `context` in MQTT 5, none in 3.1.1.
fn properties_for(version: ProtocolVersion, context: PropertyContext) -> BoxedStrategy<Properties> {
    match version {
        ProtocolVersion::V5 => properties(context).boxed(),
        ProtocolVersion::V311 => Just(Properties::default()).boxed(),
    }
}

/// A reason code from `table` in MQTT 5; in 3.1.1, one of `v311` (the codes that survive
/// the trip through a 3.1.1 return code).
fn reason(
    version: ProtocolVersion,
    table: &'static [ReasonCode],
    v311: &'static [ReasonCode],
) -> BoxedStrategy<ReasonCode> {
    match version {
        ProtocolVersion::V5 => select(table).boxed(),
        ProtocolVersion::V311 => select(v311).boxed(),
    }
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(ProtocolVersion::V311), Just(ProtocolVersion::V5)]
}

fn connect() -> impl Strategy<Value = Connect> {
    version().prop_flat_map(|protocol| {
        let will = (
            string(8),
            bytes(8),
            qos(),
            any::<bool>(),
            properties_for(protocol, PropertyContext::Will),
        )
            .prop_map(|(topic, payload, qos, retain, properties)| LastWill {
                topic,
                payload,
                qos,
                retain,
                properties,
            });
        (
            any::<bool>(),
            any::<u16>(),
            string(12),
            option::of(will),
            option::of(string(8)),
            option::of(bytes(8)),
            properties_for(protocol, PropertyContext::Connect),
        )
            .prop_map(
                move |(
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                )| {
                    let mut c = Connect {
                        protocol,
                        clean_start,
                        keep_alive,
                        client_id,
                        will,
                        username,
                        password,
                        properties,
                    };
                    if protocol == ProtocolVersion::V311 && c.username.is_none() {
                        c.password = None;
                    }
                    c
                },
            )
    })
}

fn connack(version: ProtocolVersion) -> impl Strategy<Value = ConnAck> {
    use ReasonCode::*;
    const V311: &[ReasonCode] = &[
        Success,
        UnsupportedProtocolVersion,
        ClientIdentifierNotValid,
        ServerUnavailable,
        BadUserNameOrPassword,
        NotAuthorized,
    ];
    (
        any::<bool>(),
        reason(version, reason_codes::CONNACK, V311),
        properties_for(version, PropertyContext::ConnAck),
    )
        .prop_map(|(session_present, reason, properties)| ConnAck {
            session_present,
            reason,
            properties,
        })
}

pub(crate) fn publish(version: ProtocolVersion) -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        string(16),
        packet_id(),
        properties_for(version, PropertyContext::Publish),
        bytes(64),
    )
        .prop_map(|(qos, dup, retain, topic, id, properties, payload)| {
            let mut p = Publish {
                dup: dup && qos != QoS::AtMostOnce,
                qos,
                retain,
                topic,
                packet_id: (qos != QoS::AtMostOnce).then_some(id),
                properties,
                payload,
            };
            if p.topic.is_empty() && p.properties.topic_alias.is_none() {
                p.topic = ByteStr::from_static("t");
            }
            p
        })
}

fn pub_resp(version: ProtocolVersion) -> impl Strategy<Value = PubResp> {
    let kind = prop_oneof![
        Just(PubRespKind::PubAck),
        Just(PubRespKind::PubRec),
        Just(PubRespKind::PubRel),
        Just(PubRespKind::PubComp),
    ];
    (kind, any::<u16>()).prop_flat_map(move |(kind, packet_id)| {
        let table = match kind {
            PubRespKind::PubAck | PubRespKind::PubRec => reason_codes::PUBACK_PUBREC,
            PubRespKind::PubRel | PubRespKind::PubComp => reason_codes::PUBREL_PUBCOMP,
        };
        (
            reason(version, table, &[ReasonCode::Success]),
            properties_for(version, PropertyContext::PubResp),
        )
            .prop_map(move |(reason, properties)| PubResp {
                kind,
                packet_id,
                reason,
                properties,
            })
    })
}

fn subscription_options(version: ProtocolVersion) -> BoxedStrategy<SubscriptionOptions> {
    let retain_handling = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend),
    ];
    match version {
        ProtocolVersion::V311 => qos()
            .prop_map(|qos| SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            })
            .boxed(),
        ProtocolVersion::V5 => (qos(), any::<bool>(), any::<bool>(), retain_handling)
            .prop_map(
                |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                },
            )
            .boxed(),
    }
}

fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Subscribe> {
    (
        packet_id(),
        vec((string(12), subscription_options(version)), 1..4),
        properties_for(version, PropertyContext::Subscribe),
    )
        .prop_map(|(packet_id, filters, properties)| Subscribe {
            packet_id,
            filters,
            properties,
        })
}

fn suback(version: ProtocolVersion) -> impl Strategy<Value = SubAck> {
    use ReasonCode::*;
    const V311: &[ReasonCode] = &[Success, GrantedQoS1, GrantedQoS2, UnspecifiedError];
    (
        any::<u16>(),
        vec(reason(version, reason_codes::SUBACK, V311), 1..4),
        properties_for(version, PropertyContext::SubAck),
    )
        .prop_map(|(packet_id, reasons, properties)| SubAck {
            packet_id,
            reasons,
            properties,
        })
}

fn unsubscribe(version: ProtocolVersion) -> impl Strategy<Value = Unsubscribe> {
    (
        packet_id(),
        vec(string(12), 1..4),
        properties_for(version, PropertyContext::Unsubscribe),
    )
        .prop_map(|(packet_id, filters, properties)| Unsubscribe {
            packet_id,
            filters,
            properties,
        })
}

fn unsuback(version: ProtocolVersion) -> BoxedStrategy<UnsubAck> {
    match version {
        ProtocolVersion::V311 => any::<u16>()
            .prop_map(|packet_id| UnsubAck {
                packet_id,
                reasons: Vec::new(),
                properties: Properties::default(),
            })
            .boxed(),
        ProtocolVersion::V5 => (
            any::<u16>(),
            vec(select(reason_codes::UNSUBACK), 1..4),
            properties(PropertyContext::UnsubAck),
        )
            .prop_map(|(packet_id, reasons, properties)| UnsubAck {
                packet_id,
                reasons,
                properties,
            })
            .boxed(),
    }
}

fn disconnect(version: ProtocolVersion) -> impl Strategy<Value = Disconnect> {
    (
        reason(version, reason_codes::DISCONNECT, &[ReasonCode::Success]),
        properties_for(version, PropertyContext::Disconnect),
    )
        .prop_map(|(reason, properties)| Disconnect { reason, properties })
}

fn auth() -> impl Strategy<Value = Auth> {
    (
        select(reason_codes::AUTH),
        properties(PropertyContext::Auth),
    )
        .prop_map(|(reason, properties)| Auth { reason, properties })
}

/// Any packet that `version` can carry, with only the fields it can carry set.
pub(crate) fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect().prop_map(|c| Packet::Connect(Box::new(c))),
        connack(version).prop_map(Packet::ConnAck),
        publish(version).prop_map(Packet::Publish),
        pub_resp(version).prop_map(Packet::PubResp),
        subscribe(version).prop_map(Packet::Subscribe),
        suback(version).prop_map(Packet::SubAck),
        unsubscribe(version).prop_map(Packet::Unsubscribe),
        unsuback(version).prop_map(Packet::UnsubAck),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(version).prop_map(Packet::Disconnect),
    ];
    match version {
        ProtocolVersion::V311 => common.boxed(),
        ProtocolVersion::V5 => {
            prop_oneof![10 => common, 1 => auth().prop_map(Packet::Auth)].boxed()
        }
    }
}

/// A version and a packet it can carry.
pub(crate) fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|version| (Just(version), packet(version)))
}
