//! Writing the data types of MQTT §1.5.
//!
//! Every packet is written through a [`Sink`], which is either the output buffer or a
//! [`Counter`]. Measuring a packet runs the very code that writes it, so `encoded_len`
//! cannot drift from `encode`.

use bytes::BytesMut;

use super::error::EncodeError;
use super::reader::VARINT_MAX;
use crate::packet::ByteStr;

/// Where encoded bytes go.
pub(super) trait Sink {
    /// Appends `bytes`.
    fn write_slice(&mut self, bytes: &[u8]);

    /// Appends a byte.
    fn write_u8(&mut self, value: u8) {
        self.write_slice(&[value]);
    }

    /// Appends a Two Byte Integer (big-endian).
    fn write_u16(&mut self, value: u16) {
        self.write_slice(&value.to_be_bytes());
    }

    /// Appends a Four Byte Integer (big-endian).
    fn write_u32(&mut self, value: u32) {
        self.write_slice(&value.to_be_bytes());
    }
}

impl Sink for BytesMut {
    fn write_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A sink that only counts the bytes written to it.
#[derive(Debug, Default)]
pub(super) struct Counter {
    /// Bytes written so far.
    pub(super) len: usize,
}

impl Sink for Counter {
    fn write_slice(&mut self, bytes: &[u8]) {
        self.len = self.len.saturating_add(bytes.len());
    }
}

/// The number of bytes `write` produces, or the first error it returns.
pub(super) fn measure(
    write: impl FnOnce(&mut Counter) -> Result<(), EncodeError>,
) -> Result<usize, EncodeError> {
    let mut counter = Counter::default();
    write(&mut counter)?;
    Ok(counter.len)
}

/// Appends a Variable Byte Integer; values past 268,435,455 do not fit (`TooLarge`).
pub(super) fn write_varint(sink: &mut impl Sink, value: usize) -> Result<(), EncodeError> {
    let mut rest = u32::try_from(value)
        .ok()
        .filter(|&v| v <= VARINT_MAX)
        .ok_or(EncodeError::TooLarge)?;
    loop {
        // Seven bits per byte, least significant first; the top bit says "more follows".
        let low = (rest & 0x7F) as u8;
        rest >>= 7;
        if rest == 0 {
            sink.write_u8(low);
            return Ok(());
        }
        sink.write_u8(low | 0x80);
    }
}

/// The length in bytes of the Variable Byte Integer for `value` (at most 268,435,455).
pub(super) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends Binary Data: a two-byte length, then the bytes.
pub(super) fn write_binary(sink: &mut impl Sink, bytes: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| EncodeError::Invalid("binary data longer than 65,535 bytes"))?;
    sink.write_u16(len);
    sink.write_slice(bytes);
    Ok(())
}

/// Appends a UTF-8 Encoded String; U+0000 is refused, as the decoder would refuse it.
pub(super) fn write_string(sink: &mut impl Sink, string: &ByteStr) -> Result<(), EncodeError> {
    let bytes = string.as_bytes();
    if bytes.contains(&0) {
        return Err(EncodeError::Invalid("UTF-8 string contains U+0000"));
    }
    let len = u16::try_from(bytes.len())
        .map_err(|_| EncodeError::Invalid("string longer than 65,535 bytes"))?;
    sink.write_u16(len);
    sink.write_slice(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::reader::parse_varint;

    #[test]
    fn varint_round_trip_and_length() {
        for value in [
            0usize,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut out = BytesMut::new();
            write_varint(&mut out, value).unwrap();
            assert_eq!(out.len(), varint_len(value), "length of {value}");
            assert_eq!(
                parse_varint(&out),
                Ok(Some((value as u32, out.len()))),
                "value {value}"
            );
        }
        assert_eq!(
            write_varint(&mut BytesMut::new(), 268_435_456),
            Err(EncodeError::TooLarge)
        );
    }

    #[test]
    fn length_limits() {
        let long = vec![b'a'; 65_536];
        assert!(write_binary(&mut Counter::default(), &long).is_err());
        assert!(write_binary(&mut Counter::default(), &long[1..]).is_ok());
        let long = ByteStr::from(String::from_utf8(long).unwrap());
        assert!(write_string(&mut Counter::default(), &long).is_err());
        assert!(write_string(&mut Counter::default(), &ByteStr::from("a\0b")).is_err());
    }
}
