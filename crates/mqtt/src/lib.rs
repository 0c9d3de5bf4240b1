//! Sans-IO MQTT 3.1.1 and 5.0: the control packets as types, and their decoding and encoding
//! over `bytes`.
//!
//! Owns: the wire format of both versions (fixed header, variable byte integers, properties,
//! reason codes) and the rules a single packet must satisfy on its own (reserved flags, QoS
//! values, property placement, UTF-8). Does not own: anything that needs state across packets
//! (sessions, packet-id bookkeeping, keep-alive), topic matching, I/O or time.
//!
//! # Layout
//! - `packet`: the packet types (`Connect`, `Publish`, `SubAck`, ...) and `Packet`.
//! - `reason`: `ReasonCode` and the 3.1.1 CONNACK mapping.
//! - `codec`: `decode`, `encode`, `encoded_len`, `encode_to_bytes`, and their errors.
//!
//! # Example
//! ```
//! use bytes::BytesMut;
//! use thingd_mqtt::{Packet, ProtocolVersion, decode, encode, encoded_len};
//!
//! let mut wire = BytesMut::new();
//! encode(&Packet::PingReq, ProtocolVersion::V5, &mut wire)?;
//! assert_eq!(wire.len(), encoded_len(&Packet::PingReq, ProtocolVersion::V5));
//!
//! // Half a packet is not a packet yet, and stays in the buffer.
//! let mut partial = wire.split_to(1);
//! assert_eq!(decode(&mut partial, ProtocolVersion::V5, 1024)?, None);
//! partial.unsplit(wire);
//! assert_eq!(decode(&mut partial, ProtocolVersion::V5, 1024)?, Some(Packet::PingReq));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]
// `decode` faces untrusted bytes: no panicking shortcuts outside the tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

mod codec;
mod packet;
mod reason;

pub use codec::{
    DecodeError, EncodeError, PlainPublish, decode, decode_short_ack, encode, encode_to_bytes,
    encoded_len,
};
pub use packet::*;
pub use reason::ReasonCode;
