//! Reading the data types of MQTT §1.5 from the body of one packet.
//!
//! A `Reader` owns a `Bytes` view of the bytes not read yet; everything it hands out
//! (strings, binary data, the rest of the packet) is a slice of the same allocation.
//! Every read checks the length first, so running off the end is an error, never a panic.

use bytes::{Buf, Bytes};

use super::error::DecodeError;
use crate::packet::ByteStr;

/// The largest value a variable byte integer can hold (four bytes of seven bits).
pub(super) const VARINT_MAX: u32 = 268_435_455;

/// The error for a body that stops before a field it announced.
const ENDS_EARLY: DecodeError = DecodeError::Malformed("packet ends before its last field");

/// A cursor over the body of one packet.
#[derive(Debug)]
pub(super) struct Reader {
    rest: Bytes,
}

impl Reader {
    /// A reader over `body`.
    pub(super) fn new(body: Bytes) -> Self {
        Self { rest: body }
    }

    /// True when every byte has been read.
    pub(super) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Takes the next `n` bytes.
    pub(super) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.rest.split_to(n))
    }

    /// Takes every byte not read yet.
    pub(super) fn take_rest(&mut self) -> Bytes {
        std::mem::take(&mut self.rest)
    }

    /// Fails unless at least `n` bytes are left, so that the `Buf` getters cannot panic.
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.rest.remaining() < n {
            Err(ENDS_EARLY)
        } else {
            Ok(())
        }
    }

    /// Reads a byte.
    pub(super) fn read_u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.rest.get_u8())
    }

    /// Reads a Two Byte Integer (big-endian).
    pub(super) fn read_u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.rest.get_u16())
    }

    /// Reads a Four Byte Integer (big-endian).
    pub(super) fn read_u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.rest.get_u32())
    }

    /// Reads a Variable Byte Integer.
    pub(super) fn read_varint(&mut self) -> Result<u32, DecodeError> {
        match parse_varint(&self.rest)? {
            Some((value, len)) => {
                self.rest.advance(len);
                Ok(value)
            }
            None => Err(ENDS_EARLY),
        }
    }

    /// Reads Binary Data: a two-byte length and that many bytes.
    pub(super) fn read_binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.read_u16()?;
        self.take(usize::from(len))
    }

    /// Reads a UTF-8 Encoded String: well-formed UTF-8 without U+0000.
    pub(super) fn read_string(&mut self) -> Result<ByteStr, DecodeError> {
        let bytes = self.read_binary()?;
        if bytes.contains(&0) {
            return Err(DecodeError::Malformed("UTF-8 string contains U+0000"));
        }
        ByteStr::from_utf8(bytes).ok_or(DecodeError::Malformed("string is not valid UTF-8"))
    }

    /// Succeeds only if every byte has been read: a packet with bytes after its last field
    /// is malformed.
    pub(super) fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(
                "unexpected bytes after the last field",
            ))
        }
    }
}

/// Parses a Variable Byte Integer at the start of `bytes`: its value and its length in
/// bytes, or `None` if `bytes` ends before the integer does.
///
/// More than four bytes, or a longer encoding than the value needs, is malformed.
pub(super) fn parse_varint(bytes: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (index, &byte) in bytes.iter().enumerate().take(4) {
        if index > 0 && byte == 0 {
            // A final byte of zero adds nothing: the same value fits in fewer bytes.
            return Err(DecodeError::Malformed(
                "variable byte integer not in its shortest form",
            ));
        }
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((value, index + 1)));
        }
        if index == 3 {
            return Err(DecodeError::Malformed(
                "variable byte integer longer than four bytes",
            ));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries() {
        // The examples of MQTT 5 §1.5.5.
        let cases: &[(&[u8], u32)] = &[
            (&[0x00], 0),
            (&[0x7F], 127),
            (&[0x80, 0x01], 128),
            (&[0xFF, 0x7F], 16_383),
            (&[0x80, 0x80, 0x01], 16_384),
            (&[0xFF, 0xFF, 0x7F], 2_097_151),
            (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
            (&[0xFF, 0xFF, 0xFF, 0x7F], VARINT_MAX),
        ];
        for &(bytes, value) in cases {
            assert_eq!(parse_varint(bytes), Ok(Some((value, bytes.len()))));
        }
    }

    #[test]
    fn varint_incomplete_and_malformed() {
        assert_eq!(parse_varint(&[]), Ok(None));
        assert_eq!(parse_varint(&[0x80]), Ok(None));
        assert_eq!(parse_varint(&[0xFF, 0xFF, 0xFF]), Ok(None));
        assert!(matches!(
            parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            parse_varint(&[0x80, 0x00]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn strings_are_checked() {
        let mut r = Reader::new(Bytes::from_static(&[0, 2, b'a', 0]));
        assert!(matches!(r.read_string(), Err(DecodeError::Malformed(_))));
        let mut r = Reader::new(Bytes::from_static(&[0, 2, 0xC3, 0x28]));
        assert!(matches!(r.read_string(), Err(DecodeError::Malformed(_))));
        let mut r = Reader::new(Bytes::from_static(&[0, 3, b'a', b'b']));
        assert!(matches!(r.read_string(), Err(DecodeError::Malformed(_))));
        let mut r = Reader::new(Bytes::from_static(&[0, 2, 0xC3, 0xA9, 7]));
        assert_eq!(r.read_string().map(|s| s.to_string()), Ok("é".to_owned()));
        assert_eq!(r.read_u8(), Ok(7));
        assert!(r.finish().is_ok());
    }
}
