//! Decodes arbitrary bytes as a stream of packets under both protocol versions, with a small
//! maximum packet size. Decoding must never panic, and every packet that decodes must encode
//! (to exactly `encoded_len` bytes) and decode back to itself.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use thingd_mqtt::{ProtocolVersion, decode, encode_to_bytes, encoded_len};

/// Small enough to reach the size check often, large enough for every packet type.
const MAX_PACKET_SIZE: usize = 1024;

fuzz_target!(|data: &[u8]| {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, version, MAX_PACKET_SIZE) {
            let encoded = match encode_to_bytes(&packet, version) {
                Ok(encoded) => encoded,
                Err(error) => panic!("decoded {packet:?} but cannot encode it: {error}"),
            };
            assert_eq!(encoded_len(&packet, version), encoded.len());
            let mut again = BytesMut::from(&encoded[..]);
            assert_eq!(
                decode(&mut again, version, usize::MAX),
                Ok(Some(packet)),
                "decode(encode(p)) != p"
            );
            assert!(again.is_empty());
        }
    }
});
