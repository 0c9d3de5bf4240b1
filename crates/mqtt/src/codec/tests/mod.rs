//! Tests of whole packets: byte fixtures from the spec, incomplete input, the error rules,
//! and property-based round trips.

mod errors;
mod fixtures;
mod roundtrip;
pub(crate) mod strategies;

use bytes::BytesMut;

use crate::codec::{DecodeError, decode};
use crate::packet::{Packet, ProtocolVersion};

/// The bytes written as hex pairs, spaces ignored: `"10 0c 00"`.
pub(crate) fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("hex is ASCII");
            u8::from_str_radix(pair, 16).expect("hex digits")
        })
        .collect()
}

/// Decodes `bytes` as one packet with no size limit to speak of.
pub(crate) fn decode_bytes(
    bytes: &[u8],
    version: ProtocolVersion,
) -> Result<Option<Packet>, DecodeError> {
    decode(&mut BytesMut::from(bytes), version, usize::MAX)
}
