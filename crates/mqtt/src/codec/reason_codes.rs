//! Which MQTT 5 reason codes each packet may carry (the tables of §3.2.2.2, §3.4.2.1,
//! §3.5.2.1, §3.6.2.1, §3.7.2.1, §3.9.3, §3.11.3, §3.14.2.1 and §3.15.2.1), and the
//! 3.1.1 SUBACK return codes.

use super::error::{DecodeError, EncodeError};
use crate::reason::ReasonCode::{self, *};

/// CONNACK.
pub(super) const CONNACK: &[ReasonCode] = &[
    Success,
    UnspecifiedError,
    MalformedPacket,
    ProtocolError,
    ImplementationSpecificError,
    UnsupportedProtocolVersion,
    ClientIdentifierNotValid,
    BadUserNameOrPassword,
    NotAuthorized,
    ServerUnavailable,
    ServerBusy,
    Banned,
    BadAuthenticationMethod,
    TopicNameInvalid,
    PacketTooLarge,
    QuotaExceeded,
    PayloadFormatInvalid,
    RetainNotSupported,
    QoSNotSupported,
    UseAnotherServer,
    ServerMoved,
    ConnectionRateExceeded,
];

/// PUBACK and PUBREC.
pub(super) const PUBACK_PUBREC: &[ReasonCode] = &[
    Success,
    NoMatchingSubscribers,
    UnspecifiedError,
    ImplementationSpecificError,
    NotAuthorized,
    TopicNameInvalid,
    PacketIdentifierInUse,
    QuotaExceeded,
    PayloadFormatInvalid,
];

/// PUBREL and PUBCOMP.
pub(super) const PUBREL_PUBCOMP: &[ReasonCode] = &[Success, PacketIdentifierNotFound];

/// SUBACK.
pub(super) const SUBACK: &[ReasonCode] = &[
    Success,
    GrantedQoS1,
    GrantedQoS2,
    UnspecifiedError,
    ImplementationSpecificError,
    NotAuthorized,
    TopicFilterInvalid,
    PacketIdentifierInUse,
    QuotaExceeded,
    SharedSubscriptionsNotSupported,
    SubscriptionIdentifiersNotSupported,
    WildcardSubscriptionsNotSupported,
];

/// UNSUBACK.
pub(super) const UNSUBACK: &[ReasonCode] = &[
    Success,
    NoSubscriptionExisted,
    UnspecifiedError,
    ImplementationSpecificError,
    NotAuthorized,
    TopicFilterInvalid,
    PacketIdentifierInUse,
];

/// DISCONNECT.
pub(super) const DISCONNECT: &[ReasonCode] = &[
    Success,
    DisconnectWithWill,
    UnspecifiedError,
    MalformedPacket,
    ProtocolError,
    ImplementationSpecificError,
    NotAuthorized,
    ServerBusy,
    ServerShuttingDown,
    KeepAliveTimeout,
    SessionTakenOver,
    TopicFilterInvalid,
    TopicNameInvalid,
    ReceiveMaximumExceeded,
    TopicAliasInvalid,
    PacketTooLarge,
    MessageRateTooHigh,
    QuotaExceeded,
    AdministrativeAction,
    PayloadFormatInvalid,
    RetainNotSupported,
    QoSNotSupported,
    UseAnotherServer,
    ServerMoved,
    SharedSubscriptionsNotSupported,
    ConnectionRateExceeded,
    MaximumConnectTime,
    SubscriptionIdentifiersNotSupported,
    WildcardSubscriptionsNotSupported,
];

/// AUTH.
pub(super) const AUTH: &[ReasonCode] = &[Success, ContinueAuthentication, ReAuthenticate];

/// Reads a reason code byte: an undefined value is malformed, a defined one that is not in
/// `allowed` (the packet's table) is a protocol error.
pub(super) fn decode_reason(byte: u8, allowed: &[ReasonCode]) -> Result<ReasonCode, DecodeError> {
    let reason = ReasonCode::from_u8(byte).ok_or(DecodeError::Malformed("unknown reason code"))?;
    if allowed.contains(&reason) {
        Ok(reason)
    } else {
        Err(DecodeError::Protocol(
            "reason code not allowed in this packet",
        ))
    }
}

/// Checks that `reason` is in `allowed`, the table of the packet being encoded.
pub(super) fn check_reason(reason: ReasonCode, allowed: &[ReasonCode]) -> Result<(), EncodeError> {
    if allowed.contains(&reason) {
        Ok(())
    } else {
        Err(EncodeError::Invalid(
            "reason code not allowed in this packet",
        ))
    }
}

/// The reason for a 3.1.1 SUBACK return code: 0, 1 or 2 (the granted QoS) or 0x80.
pub(super) fn from_v311_suback(code: u8) -> Result<ReasonCode, DecodeError> {
    match code {
        0x00 => Ok(Success),
        0x01 => Ok(GrantedQoS1),
        0x02 => Ok(GrantedQoS2),
        0x80 => Ok(UnspecifiedError),
        _ => Err(DecodeError::Malformed("unknown SUBACK return code")),
    }
}

/// The 3.1.1 SUBACK return code for `reason`: the granted QoS, or 0x80 for any failure.
/// Other success codes (such as No matching subscribers) have no meaning in a SUBACK.
pub(super) fn to_v311_suback(reason: ReasonCode) -> Result<u8, EncodeError> {
    match reason {
        Success => Ok(0x00),
        GrantedQoS1 => Ok(0x01),
        GrantedQoS2 => Ok(0x02),
        _ if reason.is_error() => Ok(0x80),
        _ => Err(EncodeError::Invalid(
            "reason code not allowed in this packet",
        )),
    }
}
