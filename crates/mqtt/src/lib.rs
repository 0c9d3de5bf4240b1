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
//! - `codec`: `decode` and `encode`, and `DecodeError`.

mod codec;
mod packet;
mod reason;

pub use codec::{DecodeError, EncodeError, decode, encode, encoded_len};
pub use packet::*;
pub use reason::ReasonCode;
