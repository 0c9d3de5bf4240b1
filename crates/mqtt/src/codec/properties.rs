//! MQTT 5 properties (§2.2.2): the Property Length, then identifier/value pairs.
//!
//! The rules are shared by both directions: [`check`] says whether a set of properties may
//! appear in a given packet, and both the decoder (as a Protocol Error) and the encoder (as
//! `EncodeError::Invalid`) apply it. Values are written in identifier order.

use bytes::Bytes;

use super::error::{DecodeError, EncodeError};
use super::reader::{Reader, VARINT_MAX};
use super::writer::{Sink, measure, write_binary, write_string, write_varint};
use crate::packet::{ByteStr, Properties};

/// The packets (and the Will) that carry properties; each allows its own subset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PropertyContext {
    Connect,
    /// The Will Properties in the CONNECT payload.
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    PubResp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// The property identifiers of MQTT 5 §2.2.2.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PropertyId {
    PayloadFormatIndicator = 0x01,
    MessageExpiryInterval = 0x02,
    ContentType = 0x03,
    ResponseTopic = 0x08,
    CorrelationData = 0x09,
    SubscriptionIdentifier = 0x0B,
    SessionExpiryInterval = 0x11,
    AssignedClientIdentifier = 0x12,
    ServerKeepAlive = 0x13,
    AuthenticationMethod = 0x15,
    AuthenticationData = 0x16,
    RequestProblemInformation = 0x17,
    WillDelayInterval = 0x18,
    RequestResponseInformation = 0x19,
    ResponseInformation = 0x1A,
    ServerReference = 0x1C,
    ReasonString = 0x1F,
    ReceiveMaximum = 0x21,
    TopicAliasMaximum = 0x22,
    TopicAlias = 0x23,
    MaximumQos = 0x24,
    RetainAvailable = 0x25,
    UserProperty = 0x26,
    MaximumPacketSize = 0x27,
    WildcardSubscriptionAvailable = 0x28,
    SubscriptionIdentifierAvailable = 0x29,
    SharedSubscriptionAvailable = 0x2A,
}

impl PropertyId {
    /// The property for an identifier, if the spec defines one.
    fn from_id(id: u32) -> Option<Self> {
        use PropertyId::*;
        Some(match id {
            0x01 => PayloadFormatIndicator,
            0x02 => MessageExpiryInterval,
            0x03 => ContentType,
            0x08 => ResponseTopic,
            0x09 => CorrelationData,
            0x0B => SubscriptionIdentifier,
            0x11 => SessionExpiryInterval,
            0x12 => AssignedClientIdentifier,
            0x13 => ServerKeepAlive,
            0x15 => AuthenticationMethod,
            0x16 => AuthenticationData,
            0x17 => RequestProblemInformation,
            0x18 => WillDelayInterval,
            0x19 => RequestResponseInformation,
            0x1A => ResponseInformation,
            0x1C => ServerReference,
            0x1F => ReasonString,
            0x21 => ReceiveMaximum,
            0x22 => TopicAliasMaximum,
            0x23 => TopicAlias,
            0x24 => MaximumQos,
            0x25 => RetainAvailable,
            0x26 => UserProperty,
            0x27 => MaximumPacketSize,
            0x28 => WildcardSubscriptionAvailable,
            0x29 => SubscriptionIdentifierAvailable,
            0x2A => SharedSubscriptionAvailable,
            _ => return None,
        })
    }

    /// Whether the property may appear in `context`: the table of MQTT 5 §2.2.2.2, read
    /// packet by packet.
    pub(super) fn is_allowed_in(self, context: PropertyContext) -> bool {
        use PropertyId::*;
        match context {
            PropertyContext::Connect => matches!(
                self,
                SessionExpiryInterval
                    | AuthenticationMethod
                    | AuthenticationData
                    | RequestProblemInformation
                    | RequestResponseInformation
                    | ReceiveMaximum
                    | TopicAliasMaximum
                    | UserProperty
                    | MaximumPacketSize
            ),
            PropertyContext::Will => matches!(
                self,
                PayloadFormatIndicator
                    | MessageExpiryInterval
                    | ContentType
                    | ResponseTopic
                    | CorrelationData
                    | WillDelayInterval
                    | UserProperty
            ),
            PropertyContext::ConnAck => matches!(
                self,
                SessionExpiryInterval
                    | AssignedClientIdentifier
                    | ServerKeepAlive
                    | AuthenticationMethod
                    | AuthenticationData
                    | ResponseInformation
                    | ServerReference
                    | ReasonString
                    | ReceiveMaximum
                    | TopicAliasMaximum
                    | MaximumQos
                    | RetainAvailable
                    | UserProperty
                    | MaximumPacketSize
                    | WildcardSubscriptionAvailable
                    | SubscriptionIdentifierAvailable
                    | SharedSubscriptionAvailable
            ),
            PropertyContext::Publish => matches!(
                self,
                PayloadFormatIndicator
                    | MessageExpiryInterval
                    | ContentType
                    | ResponseTopic
                    | CorrelationData
                    | SubscriptionIdentifier
                    | TopicAlias
                    | UserProperty
            ),
            PropertyContext::PubResp | PropertyContext::SubAck | PropertyContext::UnsubAck => {
                matches!(self, ReasonString | UserProperty)
            }
            PropertyContext::Subscribe => matches!(self, SubscriptionIdentifier | UserProperty),
            PropertyContext::Unsubscribe => matches!(self, UserProperty),
            PropertyContext::Disconnect => matches!(
                self,
                SessionExpiryInterval | ServerReference | ReasonString | UserProperty
            ),
            PropertyContext::Auth => matches!(
                self,
                AuthenticationMethod | AuthenticationData | ReasonString | UserProperty
            ),
        }
    }

    /// Whether the property may appear more than once in `context`.
    fn may_repeat(self, context: PropertyContext) -> bool {
        match self {
            PropertyId::UserProperty => true,
            PropertyId::SubscriptionIdentifier => context == PropertyContext::Publish,
            _ => false,
        }
    }
}

/// Which properties are set in `p`, one entry per identifier.
fn presence(p: &Properties) -> [(PropertyId, bool); 27] {
    use PropertyId::*;
    [
        (PayloadFormatIndicator, p.payload_format_indicator.is_some()),
        (MessageExpiryInterval, p.message_expiry_interval.is_some()),
        (ContentType, p.content_type.is_some()),
        (ResponseTopic, p.response_topic.is_some()),
        (CorrelationData, p.correlation_data.is_some()),
        (
            SubscriptionIdentifier,
            !p.subscription_identifiers.is_empty(),
        ),
        (SessionExpiryInterval, p.session_expiry_interval.is_some()),
        (
            AssignedClientIdentifier,
            p.assigned_client_identifier.is_some(),
        ),
        (ServerKeepAlive, p.server_keep_alive.is_some()),
        (AuthenticationMethod, p.authentication_method.is_some()),
        (AuthenticationData, p.authentication_data.is_some()),
        (
            RequestProblemInformation,
            p.request_problem_information.is_some(),
        ),
        (WillDelayInterval, p.will_delay_interval.is_some()),
        (
            RequestResponseInformation,
            p.request_response_information.is_some(),
        ),
        (ResponseInformation, p.response_information.is_some()),
        (ServerReference, p.server_reference.is_some()),
        (ReasonString, p.reason_string.is_some()),
        (ReceiveMaximum, p.receive_maximum.is_some()),
        (TopicAliasMaximum, p.topic_alias_maximum.is_some()),
        (TopicAlias, p.topic_alias.is_some()),
        (MaximumQos, p.maximum_qos.is_some()),
        (RetainAvailable, p.retain_available.is_some()),
        (UserProperty, !p.user_properties.is_empty()),
        (MaximumPacketSize, p.maximum_packet_size.is_some()),
        (
            WildcardSubscriptionAvailable,
            p.wildcard_subscription_available.is_some(),
        ),
        (
            SubscriptionIdentifierAvailable,
            p.subscription_identifier_available.is_some(),
        ),
        (
            SharedSubscriptionAvailable,
            p.shared_subscription_available.is_some(),
        ),
    ]
}

/// The rules on a set of properties that hold whichever side sent them: every property
/// belongs to `context`, and the values are in range. Returns the rule broken.
pub(super) fn check(p: &Properties, context: PropertyContext) -> Result<(), &'static str> {
    if presence(p)
        .iter()
        .any(|&(id, present)| present && !id.is_allowed_in(context))
    {
        return Err("property not allowed in this packet");
    }
    let flags = [
        p.request_problem_information,
        p.request_response_information,
        p.maximum_qos,
        p.retain_available,
        p.wildcard_subscription_available,
        p.subscription_identifier_available,
        p.shared_subscription_available,
    ];
    if flags.iter().flatten().any(|&flag| flag > 1) {
        return Err("property value other than 0 or 1");
    }
    if p.receive_maximum == Some(0) {
        return Err("Receive Maximum of 0");
    }
    if p.maximum_packet_size == Some(0) {
        return Err("Maximum Packet Size of 0");
    }
    if p.topic_alias == Some(0) {
        return Err("Topic Alias of 0");
    }
    if p.subscription_identifiers.contains(&0) {
        return Err("Subscription Identifier of 0");
    }
    if p.subscription_identifiers.iter().any(|&id| id > VARINT_MAX) {
        return Err("Subscription Identifier over 268,435,455");
    }
    if context == PropertyContext::Subscribe && p.subscription_identifiers.len() > 1 {
        return Err("more than one Subscription Identifier in SUBSCRIBE");
    }
    if context == PropertyContext::Connect
        && p.authentication_data.is_some()
        && p.authentication_method.is_none()
    {
        return Err("Authentication Data without Authentication Method");
    }
    Ok(())
}

/// Reads a Property Length and the properties it covers, for a packet of kind `context`.
pub(super) fn decode_properties(
    reader: &mut Reader,
    context: PropertyContext,
) -> Result<Properties, DecodeError> {
    let len = reader.read_varint()?;
    let mut r = Reader::new(reader.take(len as usize)?);
    let mut p = Properties::default();
    // One bit per identifier already seen; all identifiers are below 64.
    let mut seen: u64 = 0;
    while !r.is_empty() {
        let id = PropertyId::from_id(r.read_varint()?)
            .ok_or(DecodeError::Malformed("unknown property identifier"))?;
        if !id.is_allowed_in(context) {
            return Err(DecodeError::Protocol("property not allowed in this packet"));
        }
        let bit = 1u64 << (id as u8);
        if seen & bit != 0 && !id.may_repeat(context) {
            return Err(DecodeError::Protocol("property appears more than once"));
        }
        seen |= bit;
        read_value(&mut r, id, &mut p)?;
    }
    check(&p, context).map_err(DecodeError::Protocol)?;
    Ok(p)
}

/// Reads the value of property `id` into its field of `p`.
fn read_value(r: &mut Reader, id: PropertyId, p: &mut Properties) -> Result<(), DecodeError> {
    use PropertyId::*;
    match id {
        PayloadFormatIndicator => p.payload_format_indicator = Some(r.read_u8()?),
        MessageExpiryInterval => p.message_expiry_interval = Some(r.read_u32()?),
        ContentType => p.content_type = Some(r.read_string()?),
        ResponseTopic => p.response_topic = Some(r.read_string()?),
        CorrelationData => p.correlation_data = Some(r.read_binary()?),
        SubscriptionIdentifier => p.subscription_identifiers.push(r.read_varint()?),
        SessionExpiryInterval => p.session_expiry_interval = Some(r.read_u32()?),
        AssignedClientIdentifier => p.assigned_client_identifier = Some(r.read_string()?),
        ServerKeepAlive => p.server_keep_alive = Some(r.read_u16()?),
        AuthenticationMethod => p.authentication_method = Some(r.read_string()?),
        AuthenticationData => p.authentication_data = Some(r.read_binary()?),
        RequestProblemInformation => p.request_problem_information = Some(r.read_u8()?),
        WillDelayInterval => p.will_delay_interval = Some(r.read_u32()?),
        RequestResponseInformation => p.request_response_information = Some(r.read_u8()?),
        ResponseInformation => p.response_information = Some(r.read_string()?),
        ServerReference => p.server_reference = Some(r.read_string()?),
        ReasonString => p.reason_string = Some(r.read_string()?),
        ReceiveMaximum => p.receive_maximum = Some(r.read_u16()?),
        TopicAliasMaximum => p.topic_alias_maximum = Some(r.read_u16()?),
        TopicAlias => p.topic_alias = Some(r.read_u16()?),
        MaximumQos => p.maximum_qos = Some(r.read_u8()?),
        RetainAvailable => p.retain_available = Some(r.read_u8()?),
        UserProperty => {
            let name = r.read_string()?;
            let value = r.read_string()?;
            p.user_properties.push((name, value));
        }
        MaximumPacketSize => p.maximum_packet_size = Some(r.read_u32()?),
        WildcardSubscriptionAvailable => p.wildcard_subscription_available = Some(r.read_u8()?),
        SubscriptionIdentifierAvailable => p.subscription_identifier_available = Some(r.read_u8()?),
        SharedSubscriptionAvailable => p.shared_subscription_available = Some(r.read_u8()?),
    }
    Ok(())
}

/// Writes the Property Length and the properties set in `p`, after checking that they may
/// appear in a packet of kind `context`.
pub(super) fn write_properties(
    sink: &mut impl Sink,
    p: &Properties,
    context: PropertyContext,
) -> Result<(), EncodeError> {
    check(p, context).map_err(EncodeError::Invalid)?;
    let len = measure(|counter| write_values(counter, p))?;
    write_varint(sink, len)?;
    write_values(sink, p)
}

/// Writes each property set in `p`, identifier first, in identifier order.
fn write_values(sink: &mut impl Sink, p: &Properties) -> Result<(), EncodeError> {
    use PropertyId::*;
    let mut w = ValueWriter { sink };
    w.byte(PayloadFormatIndicator, p.payload_format_indicator);
    w.four(MessageExpiryInterval, p.message_expiry_interval);
    w.string(ContentType, &p.content_type)?;
    w.string(ResponseTopic, &p.response_topic)?;
    w.binary(CorrelationData, &p.correlation_data)?;
    for &id in &p.subscription_identifiers {
        w.id(SubscriptionIdentifier);
        write_varint(w.sink, id as usize)?;
    }
    w.four(SessionExpiryInterval, p.session_expiry_interval);
    w.string(AssignedClientIdentifier, &p.assigned_client_identifier)?;
    w.two(ServerKeepAlive, p.server_keep_alive);
    w.string(AuthenticationMethod, &p.authentication_method)?;
    w.binary(AuthenticationData, &p.authentication_data)?;
    w.byte(RequestProblemInformation, p.request_problem_information);
    w.four(WillDelayInterval, p.will_delay_interval);
    w.byte(RequestResponseInformation, p.request_response_information);
    w.string(ResponseInformation, &p.response_information)?;
    w.string(ServerReference, &p.server_reference)?;
    w.string(ReasonString, &p.reason_string)?;
    w.two(ReceiveMaximum, p.receive_maximum);
    w.two(TopicAliasMaximum, p.topic_alias_maximum);
    w.two(TopicAlias, p.topic_alias);
    w.byte(MaximumQos, p.maximum_qos);
    w.byte(RetainAvailable, p.retain_available);
    for (name, value) in &p.user_properties {
        w.id(UserProperty);
        write_string(w.sink, name)?;
        write_string(w.sink, value)?;
    }
    w.four(MaximumPacketSize, p.maximum_packet_size);
    w.byte(
        WildcardSubscriptionAvailable,
        p.wildcard_subscription_available,
    );
    w.byte(
        SubscriptionIdentifierAvailable,
        p.subscription_identifier_available,
    );
    w.byte(SharedSubscriptionAvailable, p.shared_subscription_available);
    Ok(())
}

/// Writes one property, identifier then value, if the value is set.
struct ValueWriter<'a, S> {
    sink: &'a mut S,
}

impl<S: Sink> ValueWriter<'_, S> {
    fn id(&mut self, id: PropertyId) {
        // Every identifier is below 128, so its Variable Byte Integer is the byte itself.
        self.sink.write_u8(id as u8);
    }

    fn byte(&mut self, id: PropertyId, value: Option<u8>) {
        if let Some(value) = value {
            self.id(id);
            self.sink.write_u8(value);
        }
    }

    fn two(&mut self, id: PropertyId, value: Option<u16>) {
        if let Some(value) = value {
            self.id(id);
            self.sink.write_u16(value);
        }
    }

    fn four(&mut self, id: PropertyId, value: Option<u32>) {
        if let Some(value) = value {
            self.id(id);
            self.sink.write_u32(value);
        }
    }

    fn string(&mut self, id: PropertyId, value: &Option<ByteStr>) -> Result<(), EncodeError> {
        if let Some(value) = value {
            self.id(id);
            write_string(self.sink, value)?;
        }
        Ok(())
    }

    fn binary(&mut self, id: PropertyId, value: &Option<Bytes>) -> Result<(), EncodeError> {
        if let Some(value) = value {
            self.id(id);
            write_binary(self.sink, value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::strategies::only_allowed;
    use bytes::BytesMut;

    fn decode(bytes: &'static [u8], context: PropertyContext) -> Result<Properties, DecodeError> {
        let mut r = Reader::new(Bytes::from_static(bytes));
        let p = decode_properties(&mut r, context)?;
        r.finish()?;
        Ok(p)
    }

    #[test]
    fn decodes_each_type() {
        let p = decode(
            &[
                24, // Property Length
                0x01, 0x01, // Payload Format Indicator: byte
                0x02, 0x00, 0x00, 0x01, 0x00, // Message Expiry Interval: four bytes
                0x23, 0x00, 0x05, // Topic Alias: two bytes
                0x0B, 0x80, 0x01, // Subscription Identifier: varint 128
                0x09, 0x00, 0x01, 0xAB, // Correlation Data: binary
                0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // User Property: string pair
            ],
            PropertyContext::Publish,
        )
        .unwrap();
        assert_eq!(p.payload_format_indicator, Some(1));
        assert_eq!(p.message_expiry_interval, Some(256));
        assert_eq!(p.topic_alias, Some(5));
        assert_eq!(p.subscription_identifiers, vec![128]);
        assert_eq!(p.correlation_data.as_deref(), Some(&[0xAB][..]));
        assert_eq!(p.user_properties, vec![("k".into(), "v".into())]);
    }

    #[test]
    fn repeats() {
        // User Property may repeat anywhere, Subscription Identifier only in PUBLISH.
        let two_users: &[u8] = &[11, 0x26, 0, 1, b'a', 0, 0, 0x26, 0, 0, 0, 0];
        assert_eq!(
            decode(two_users, PropertyContext::Unsubscribe)
                .unwrap()
                .user_properties
                .len(),
            2
        );
        let two_ids: &[u8] = &[4, 0x0B, 1, 0x0B, 2];
        assert_eq!(
            decode(two_ids, PropertyContext::Publish)
                .unwrap()
                .subscription_identifiers,
            vec![1, 2]
        );
        assert!(matches!(
            decode(two_ids, PropertyContext::Subscribe),
            Err(DecodeError::Protocol(_))
        ));
        assert!(matches!(
            decode(&[4, 0x23, 0, 1, 0x23], PropertyContext::Publish),
            Err(DecodeError::Protocol(_))
        ));
        assert!(matches!(
            decode(&[6, 0x23, 0, 1, 0x23, 0, 2], PropertyContext::Publish),
            Err(DecodeError::Protocol(_))
        ));
    }

    #[test]
    fn errors() {
        use PropertyContext::*;
        let cases: &[(&'static [u8], PropertyContext, &str)] = &[
            (&[2, 0x05, 0], Connect, "malformed"),   // unknown identifier
            (&[2, 0x00, 0], Connect, "malformed"),   // identifier 0
            (&[2, 0x01], Connect, "malformed"),      // length past the end
            (&[1, 0x21], Connect, "malformed"),      // value cut short
            (&[2, 0x0B, 0], Publish, "protocol"),    // Subscription Identifier 0
            (&[2, 0x23, 1], Publish, "malformed"),   // value cut by the length
            (&[3, 0x23, 0, 1], Connect, "protocol"), // Topic Alias in CONNECT
            (&[3, 0x23, 0, 0], Publish, "protocol"), // Topic Alias 0
            (&[3, 0x21, 0, 0], Connect, "protocol"), // Receive Maximum 0
            (&[5, 0x27, 0, 0, 0, 0], ConnAck, "protocol"), // Maximum Packet Size 0
            (&[2, 0x24, 2], ConnAck, "protocol"),    // Maximum QoS 2
            (&[2, 0x17, 2], Connect, "protocol"),    // Request Problem Information 2
            (&[3, 0x16, 0, 0], Connect, "protocol"), // Authentication Data alone
            (&[3, 0x1F, 0, 0], Connect, "protocol"), // Reason String in CONNECT
            (&[3, 0x1F, 0, 0], Unsubscribe, "protocol"),
            (&[3, 0x1F, 0, 0], Publish, "protocol"),
            (&[5, 0x18, 0, 0, 0, 1], Connect, "protocol"), // Will Delay outside the Will
            (&[5, 0x11, 0, 0, 0, 1], Will, "protocol"),
            (&[4, 0x03, 0, 1, 0xFF], Publish, "malformed"), // Content Type not UTF-8
            (&[4, 0x03, 0, 1, 0x00], Publish, "malformed"), // Content Type with U+0000
        ];
        for &(bytes, context, kind) in cases {
            let result = decode(bytes, context);
            let ok = match kind {
                "malformed" => matches!(result, Err(DecodeError::Malformed(_))),
                _ => matches!(result, Err(DecodeError::Protocol(_))),
            };
            assert!(ok, "{bytes:02x?} in {context:?}: {result:?}");
        }
    }

    #[test]
    fn every_property_round_trips_where_allowed() {
        let all = Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(u32::MAX),
            content_type: Some("text/plain".into()),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            subscription_identifiers: vec![VARINT_MAX],
            session_expiry_interval: Some(7),
            assigned_client_identifier: Some("id".into()),
            server_keep_alive: Some(30),
            authentication_method: Some("SCRAM".into()),
            authentication_data: Some(Bytes::from_static(b"data")),
            request_problem_information: Some(0),
            will_delay_interval: Some(9),
            request_response_information: Some(1),
            response_information: Some("ri".into()),
            server_reference: Some("other".into()),
            reason_string: Some("because".into()),
            receive_maximum: Some(10),
            topic_alias_maximum: Some(11),
            topic_alias: Some(12),
            maximum_qos: Some(1),
            retain_available: Some(0),
            user_properties: vec![("a".into(), "b".into()), ("a".into(), "c".into())],
            maximum_packet_size: Some(1024),
            wildcard_subscription_available: Some(1),
            subscription_identifier_available: Some(0),
            shared_subscription_available: Some(1),
        };
        let contexts = [
            PropertyContext::Connect,
            PropertyContext::Will,
            PropertyContext::ConnAck,
            PropertyContext::Publish,
            PropertyContext::PubResp,
            PropertyContext::Subscribe,
            PropertyContext::SubAck,
            PropertyContext::Unsubscribe,
            PropertyContext::UnsubAck,
            PropertyContext::Disconnect,
            PropertyContext::Auth,
        ];
        for context in contexts {
            assert!(check(&all, context).is_err());
            let mut subset = all.clone();
            only_allowed(&mut subset, context);
            let mut out = BytesMut::new();
            write_properties(&mut out, &subset, context).unwrap();
            let len = measure(|c| write_properties(c, &subset, context)).unwrap();
            assert_eq!(out.len(), len);
            let mut r = Reader::new(out.freeze());
            assert_eq!(decode_properties(&mut r, context), Ok(subset));
            assert!(r.is_empty());
        }
    }
}
