//! CONNECT (MQTT 3.1.1 §3.1, MQTT 5 §3.1).
//!
//! CONNECT names its own protocol version, so it is read and written by the version it
//! carries rather than the connection's.

use bytes::Bytes;

use super::error::{DecodeError, EncodeError};
use super::properties::{PropertyContext, decode_properties, write_properties};
use super::reader::Reader;
use super::writer::{Sink, write_binary, write_string};
use crate::packet::{Connect, LastWill, Properties, ProtocolVersion, QoS};

/// The Protocol Name of both versions.
const PROTOCOL_NAME: &[u8] = b"MQTT";

/// The bits of the Connect Flags byte (§3.1.2.3).
const RESERVED: u8 = 0x01;
const CLEAN_START: u8 = 0x02;
const WILL_FLAG: u8 = 0x04;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_QOS_MASK: u8 = 0x18;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD_FLAG: u8 = 0x40;
const USER_NAME_FLAG: u8 = 0x80;

/// Reads the body of a CONNECT.
pub(super) fn decode(mut r: Reader) -> Result<Connect, DecodeError> {
    let name = r.read_binary()?;
    let level = r.read_u8()?;
    let protocol = match (name.as_ref(), level) {
        (PROTOCOL_NAME, 4) => ProtocolVersion::V311,
        (PROTOCOL_NAME, 5) => ProtocolVersion::V5,
        // "MQIsdp" level 3 (MQTT 3.1) and anything else.
        _ => return Err(DecodeError::UnsupportedProtocol { level }),
    };
    let is_v5 = protocol == ProtocolVersion::V5;

    let flags = r.read_u8()?;
    if flags & RESERVED != 0 {
        return Err(DecodeError::Malformed("reserved CONNECT flag is set"));
    }
    let will_flag = flags & WILL_FLAG != 0;
    let will_qos_bits = (flags & WILL_QOS_MASK) >> WILL_QOS_SHIFT;
    let will_retain = flags & WILL_RETAIN != 0;
    let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::Malformed("Will QoS 3"))?;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        return Err(DecodeError::Malformed(
            "Will QoS or Will Retain set without the Will Flag",
        ));
    }
    let has_username = flags & USER_NAME_FLAG != 0;
    let has_password = flags & PASSWORD_FLAG != 0;
    if !is_v5 && has_password && !has_username {
        return Err(DecodeError::Malformed(
            "Password Flag without User Name Flag in MQTT 3.1.1",
        ));
    }

    let keep_alive = r.read_u16()?;
    let properties = if is_v5 {
        decode_properties(&mut r, PropertyContext::Connect)?
    } else {
        Properties::default()
    };

    let client_id = r.read_string()?;
    let will = if will_flag {
        let properties = if is_v5 {
            decode_properties(&mut r, PropertyContext::Will)?
        } else {
            Properties::default()
        };
        let topic = r.read_string()?;
        let payload = r.read_binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.read_string()?)
    } else {
        None
    };
    let password: Option<Bytes> = if has_password {
        Some(r.read_binary()?)
    } else {
        None
    };
    r.finish()?;

    Ok(Connect {
        protocol,
        clean_start: flags & CLEAN_START != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Writes the body of a CONNECT, for the version it names.
pub(super) fn write(sink: &mut impl Sink, c: &Connect) -> Result<(), EncodeError> {
    let is_v5 = c.protocol == ProtocolVersion::V5;
    if !is_v5 && c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::Invalid(
            "password without user name in MQTT 3.1.1",
        ));
    }

    let mut flags = 0;
    if c.clean_start {
        flags |= CLEAN_START;
    }
    if let Some(will) = &c.will {
        flags |= WILL_FLAG | ((will.qos as u8) << WILL_QOS_SHIFT);
        if will.retain {
            flags |= WILL_RETAIN;
        }
    }
    if c.username.is_some() {
        flags |= USER_NAME_FLAG;
    }
    if c.password.is_some() {
        flags |= PASSWORD_FLAG;
    }

    write_binary(sink, PROTOCOL_NAME)?;
    sink.write_u8(c.protocol.level());
    sink.write_u8(flags);
    sink.write_u16(c.keep_alive);
    if is_v5 {
        write_properties(sink, &c.properties, PropertyContext::Connect)?;
    }

    write_string(sink, &c.client_id)?;
    if let Some(will) = &c.will {
        if is_v5 {
            write_properties(sink, &will.properties, PropertyContext::Will)?;
        }
        write_string(sink, &will.topic)?;
        write_binary(sink, &will.payload)?;
    }
    if let Some(username) = &c.username {
        write_string(sink, username)?;
    }
    if let Some(password) = &c.password {
        write_binary(sink, password)?;
    }
    Ok(())
}
