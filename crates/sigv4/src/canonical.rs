//! Canonicalisation (spec §9.2): URI, query, header values, hashes.
//!
//! Everything here works on bytes and never fails: malformed input simply
//! produces a canonical form that will not match the client's signature.

use std::fmt::Write as _;

use aws_lc_rs::digest;

/// SHA-256 of the empty string, lowercase hex.
pub(crate) const EMPTY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Lowercase hex SHA-256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// Appends `bytes` percent-encoded with upper-case hex, leaving the
/// unreserved set (and `/` when `keep_slash`) alone.
fn encode_into(out: &mut String, bytes: &[u8], keep_slash: bool) {
    for &b in bytes {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `s`. A `%` not followed by two hex digits is kept as a
/// literal `%`; `+` stays `+` (SDKs encode a plus as `%2B` and a space as
/// `%20`, so no form decoding is needed).
pub(crate) fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex_val),
                bytes.get(i + 2).copied().and_then(hex_val),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    out
}

/// The canonical URI of a raw (still encoded) path, for every service but
/// S3: dot segments removed, empty segments collapsed, a trailing `/` kept
/// (as botocore's `remove_dot_segments` does), then encoded a second time so
/// that `%` becomes `%25`.
pub(crate) fn canonical_uri(raw_path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for seg in raw_path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(raw_path.len() + 8);
    out.push('/');
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        encode_into(&mut out, seg.as_bytes(), false);
    }
    if !segments.is_empty() && raw_path.ends_with('/') {
        out.push('/');
    }
    out
}

/// One `key=value` pair of a raw query string.
#[derive(Debug, Clone)]
pub(crate) struct QueryParam {
    /// Decoded key.
    pub(crate) key: Vec<u8>,
    /// Decoded value (empty for a bare key).
    pub(crate) value: Vec<u8>,
    /// Key re-encoded for the canonical query.
    enc_key: String,
    /// Value re-encoded for the canonical query.
    enc_value: String,
}

/// Splits a raw query string into decoded pairs. Empty pieces (`a=1&&b=2`)
/// are skipped, as `form_urlencoded` does.
pub(crate) fn parse_query(raw_query: &str) -> Vec<QueryParam> {
    raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k);
            let value = percent_decode(v);
            let mut enc_key = String::with_capacity(key.len());
            encode_into(&mut enc_key, &key, false);
            let mut enc_value = String::with_capacity(value.len());
            encode_into(&mut enc_value, &value, false);
            QueryParam {
                key,
                value,
                enc_key,
                enc_value,
            }
        })
        .collect()
}

/// The canonical query line: every pair not excluded by `skip`, re-encoded,
/// sorted by encoded key then encoded value, joined with `&`.
pub(crate) fn canonical_query(params: &[QueryParam], skip: impl Fn(&QueryParam) -> bool) -> String {
    let mut pairs: Vec<(&str, &str)> = params
        .iter()
        .filter(|p| !skip(p))
        .map(|p| (p.enc_key.as_str(), p.enc_value.as_str()))
        .collect();
    pairs.sort_unstable();
    let mut out = String::new();
    for (i, (k, v)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Appends one header value trimmed, with every inner whitespace run folded
/// to a single space (botocore: `' '.join(value.split())`).
pub(crate) fn push_folded_value(out: &mut Vec<u8>, value: &[u8]) {
    let mut first = true;
    for word in value
        .split(|b| b.is_ascii_whitespace() || *b == 0x0b)
        .filter(|w| !w.is_empty())
    {
        if !first {
            out.push(b' ');
        }
        out.extend_from_slice(word);
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_double_encodes() {
        assert_eq!(
            canonical_uri("/things/my%3Athing/principals"),
            "/things/my%253Athing/principals"
        );
        assert_eq!(canonical_uri("/a%2Fb"), "/a%252Fb");
        assert_eq!(canonical_uri("/a b:c"), "/a%20b%3Ac");
        assert_eq!(canonical_uri("/~x-_.y"), "/~x-_.y");
    }

    #[test]
    fn uri_dot_segments_and_slashes() {
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri("//"), "/");
        assert_eq!(canonical_uri("/a//b/"), "/a/b/");
        assert_eq!(canonical_uri("/a/./b/../c"), "/a/c");
        assert_eq!(canonical_uri("/../../a"), "/a");
        assert_eq!(canonical_uri("/a/b/.."), "/a");
        assert_eq!(canonical_uri("/a/%2E%2E/b"), "/a/%252E%252E/b");
        assert_eq!(canonical_uri("a/b"), "/a/b");
    }

    #[test]
    fn decode_tolerates_garbage() {
        assert_eq!(percent_decode("a%3Ab"), b"a:b");
        assert_eq!(percent_decode("%"), b"%");
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
        assert_eq!(percent_decode("a+b"), b"a+b");
        assert_eq!(percent_decode("%e2%82%ac"), "€".as_bytes());
    }

    #[test]
    fn query_sorted_and_reencoded() {
        let p =
            parse_query("b=2&a=z&a=y&endpointType=iot%3AData-ATS&flag&sp=a%20b&pl=a%2Bb&&x=%7e");
        assert_eq!(
            canonical_query(&p, |_| false),
            "a=y&a=z&b=2&endpointType=iot%3AData-ATS&flag=&pl=a%2Bb&sp=a%20b&x=~"
        );
        assert_eq!(
            canonical_query(&p, |q| q.key == b"a"),
            "b=2&endpointType=iot%3AData-ATS&flag=&pl=a%2Bb&sp=a%20b&x=~"
        );
        assert_eq!(canonical_query(&parse_query(""), |_| false), "");
        // Raw characters a client forgot to encode are encoded here.
        assert_eq!(
            canonical_query(&parse_query("k=a:b/c d"), |_| false),
            "k=a%3Ab%2Fc%20d"
        );
    }

    #[test]
    fn header_folding() {
        let mut out = Vec::new();
        push_folded_value(&mut out, b"  a   b \t c  ");
        assert_eq!(out, b"a b c");
        out.clear();
        push_folded_value(&mut out, b"");
        assert_eq!(out, b"");
    }

    #[test]
    fn empty_hash() {
        assert_eq!(sha256_hex(b""), EMPTY_SHA256);
    }
}
