//! Parsing of the signature carriers (spec §9.1, §9.7) and of timestamps.
//!
//! All input here is attacker-controlled: nothing indexes, nothing panics,
//! and text echoed into error messages is clipped.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use crate::error::SigV4Error;

/// The only algorithm supported.
pub(crate) const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The fixed last element of a credential scope.
pub(crate) const TERMINATOR: &str = "aws4_request";

/// Echoes at most this many characters of client input in a message.
const CLIP: usize = 128;

/// `s` shortened to a sane length for an error message.
pub(crate) fn clip(s: &str) -> &str {
    match s.char_indices().nth(CLIP) {
        Some((i, _)) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

/// The three parts of an `Authorization: AWS4-HMAC-SHA256 …` header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AuthorizationHeader<'a> {
    pub(crate) credential: &'a str,
    pub(crate) signed_headers: &'a str,
    pub(crate) signature: &'a str,
}

/// Parses the `Authorization` header value. The algorithm comes first, then
/// whitespace, then comma-separated `key=value` parts with optional spaces.
pub(crate) fn parse_authorization(value: &[u8]) -> Result<AuthorizationHeader<'_>, SigV4Error> {
    let value = std::str::from_utf8(value)
        .map_err(|_| SigV4Error::incomplete("Authorization header is not valid UTF-8."))?
        .trim();
    let (algorithm, rest) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    if algorithm != ALGORITHM {
        return Err(SigV4Error::incomplete(format!(
            "Unsupported AWS 'algorithm': '{}'. Only '{ALGORITHM}' is supported.",
            clip(algorithm)
        )));
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, val)) = part.split_once('=') else {
            return Err(SigV4Error::incomplete(format!(
                "'{}' not a valid key=value pair (missing equal-sign) in Authorization header.",
                clip(part)
            )));
        };
        let slot = match key.trim() {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => continue,
        };
        if slot.replace(val.trim()).is_some() {
            return Err(SigV4Error::incomplete(format!(
                "Authorization header has more than one '{}' parameter.",
                key.trim()
            )));
        }
    }
    match (credential, signed_headers, signature) {
        (Some(credential), Some(signed_headers), Some(signature)) => Ok(AuthorizationHeader {
            credential,
            signed_headers,
            signature,
        }),
        (c, h, s) => {
            let mut msg = String::new();
            for (missing, name) in [(c, "Credential"), (s, "Signature"), (h, "SignedHeaders")] {
                if missing.is_none() {
                    if !msg.is_empty() {
                        msg.push(' ');
                    }
                    msg.push_str("Authorization header requires '");
                    msg.push_str(name);
                    msg.push_str("' parameter.");
                }
            }
            Err(SigV4Error::incomplete(msg))
        }
    }
}

/// `<access key>/<yyyymmdd>/<region>/<service>/aws4_request`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CredentialScope<'a> {
    pub(crate) access_key_id: &'a str,
    pub(crate) date: &'a str,
    pub(crate) region: &'a str,
    pub(crate) service: &'a str,
}

impl CredentialScope<'_> {
    /// `<yyyymmdd>/<region>/<service>/aws4_request`, for the string to sign.
    pub(crate) fn scope_string(&self) -> String {
        format!(
            "{}/{}/{}/{TERMINATOR}",
            self.date, self.region, self.service
        )
    }
}

/// Parses the `Credential` value.
pub(crate) fn parse_credential(value: &str) -> Result<CredentialScope<'_>, SigV4Error> {
    let mut parts = value.split('/');
    let (Some(access_key_id), Some(date), Some(region), Some(service), Some(term), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(SigV4Error::incomplete(format!(
            "Credential must have exactly 5 slash-delimited elements, e.g. \
             keyid/date/region/service/term, got '{}'",
            clip(value)
        )));
    };
    if term != TERMINATOR {
        return Err(SigV4Error::invalid(format!(
            "Credential should be scoped with a valid terminator: '{TERMINATOR}', not '{}'.",
            clip(term)
        )));
    }
    if [access_key_id, date, region, service]
        .iter()
        .any(|p| p.is_empty())
    {
        return Err(SigV4Error::incomplete(format!(
            "Credential has an empty element, got '{}'",
            clip(value)
        )));
    }
    Ok(CredentialScope {
        access_key_id,
        date,
        region,
        service,
    })
}

fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u32, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

fn unix_seconds(
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
) -> Option<i64> {
    let month = Month::try_from(u8::try_from(month).ok()?).ok()?;
    let date =
        Date::from_calendar_date(i32::try_from(year).ok()?, month, u8::try_from(day).ok()?).ok()?;
    let time = Time::from_hms(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
    )
    .ok()?;
    Some(
        PrimitiveDateTime::new(date, time)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// Parses an ISO-8601 basic timestamp `yyyymmddThhmmssZ` into Unix seconds.
pub(crate) fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b.get(8) != Some(&b'T') || b.get(15) != Some(&b'Z') {
        return None;
    }
    unix_seconds(
        digits(b.get(0..4)?)?,
        digits(b.get(4..6)?)?,
        digits(b.get(6..8)?)?,
        digits(b.get(9..11)?)?,
        digits(b.get(11..13)?)?,
        digits(b.get(13..15)?)?,
    )
}

/// Parses an HTTP `Date` header in IMF-fixdate form
/// (`Thu, 02 Jan 2025 03:04:05 GMT`) into Unix seconds.
pub(crate) fn parse_http_date(s: &str) -> Option<i64> {
    let (_weekday, rest) = s.trim().split_once(',')?;
    let mut words = rest.split_ascii_whitespace();
    let (Some(day), Some(mon), Some(year), Some(hms), Some("GMT"), None) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == mon)?;
    let mut t = hms.split(':');
    let (Some(h), Some(m), Some(sec), None) = (t.next(), t.next(), t.next(), t.next()) else {
        return None;
    };
    if year.len() != 4 || [h, m, sec].iter().any(|p| p.len() != 2) || day.len() > 2 {
        return None;
    }
    unix_seconds(
        digits(year.as_bytes())?,
        u32::try_from(month).ok()? + 1,
        digits(day.as_bytes())?,
        digits(h.as_bytes())?,
        digits(m.as_bytes())?,
        digits(sec.as_bytes())?,
    )
}

/// Formats Unix seconds as `yyyymmddThhmmssZ` (or `@<secs>` when out of
/// the representable range, which only happens for absurd clocks).
pub(crate) fn format_amz_date(secs: i64) -> String {
    match OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) if (0..=9999).contains(&t.year()) => format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        _ => format!("@{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_botocore_style() {
        let h = b"AWS4-HMAC-SHA256 Credential=AKID/20250102/us-east-1/iot/aws4_request, \
                  SignedHeaders=host;x-amz-date, Signature=abcd";
        let a = parse_authorization(h).unwrap();
        assert_eq!(a.credential, "AKID/20250102/us-east-1/iot/aws4_request");
        assert_eq!(a.signed_headers, "host;x-amz-date");
        assert_eq!(a.signature, "abcd");
    }

    #[test]
    fn authorization_spacing_tolerated() {
        let a = parse_authorization(
            b"  AWS4-HMAC-SHA256   Credential=A/1/r/s/aws4_request,SignedHeaders=host ,  Signature=ff ,",
        )
        .unwrap();
        assert_eq!(a.signed_headers, "host");
        assert_eq!(a.signature, "ff");
    }

    #[test]
    fn authorization_errors() {
        let e =
            parse_authorization(b"AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request").unwrap_err();
        assert_eq!(
            e.message(),
            "Authorization header requires 'Signature' parameter. \
             Authorization header requires 'SignedHeaders' parameter."
        );
        let e = parse_authorization(b"Bearer xyz").unwrap_err();
        assert!(
            e.message()
                .starts_with("Unsupported AWS 'algorithm': 'Bearer'")
        );
        let e = parse_authorization(b"AWS4-HMAC-SHA256").unwrap_err();
        assert!(e.message().contains("'Credential'"));
        let e = parse_authorization(b"AWS4-HMAC-SHA256 Credential=a, x").unwrap_err();
        assert!(e.message().contains("missing equal-sign"), "{e}");
        let e = parse_authorization(
            b"AWS4-HMAC-SHA256 Credential=a, Credential=b, SignedHeaders=host, Signature=00",
        )
        .unwrap_err();
        assert!(e.message().contains("more than one 'Credential'"));
        assert!(parse_authorization(&[0xff, 0xfe]).is_err());
        assert!(parse_authorization(b"").is_err());
    }

    #[test]
    fn credential_scope() {
        let c = parse_credential("AKID/20250102/us-east-1/iot/aws4_request").unwrap();
        assert_eq!(c.access_key_id, "AKID");
        assert_eq!(c.scope_string(), "20250102/us-east-1/iot/aws4_request");
        let e = parse_credential("AKID/20250102/us-east-1/iot").unwrap_err();
        assert_eq!(e.aws_error_code(), "IncompleteSignatureException");
        let e = parse_credential("AKID/20250102/us-east-1/iot/aws4_request/x").unwrap_err();
        assert_eq!(e.aws_error_code(), "IncompleteSignatureException");
        let e = parse_credential("AKID/20250102/us-east-1/iot/aws5_request").unwrap_err();
        assert_eq!(e.aws_error_code(), "InvalidSignatureException");
        assert!(parse_credential("/20250102/us-east-1/iot/aws4_request").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(parse_amz_date("20250102T030405Z"), Some(1_735_787_045));
        assert_eq!(parse_amz_date("20250102T030405"), None);
        assert_eq!(parse_amz_date("20251302T030405Z"), None);
        assert_eq!(parse_amz_date("20250230T030405Z"), None);
        assert_eq!(parse_amz_date("2025010+T030405Z"), None);
        assert_eq!(parse_amz_date("20250102T246000Z"), None);
        assert_eq!(parse_amz_date("２０25010T030405Z"), None);
        assert_eq!(
            parse_http_date("Thu, 02 Jan 2025 03:04:05 GMT"),
            Some(1_735_787_045)
        );
        assert_eq!(parse_http_date("Thu, 02 Foo 2025 03:04:05 GMT"), None);
        assert_eq!(parse_http_date("Thu, 02 Jan 2025 03:04:05 PST"), None);
        assert_eq!(parse_http_date("garbage"), None);
        assert_eq!(format_amz_date(1_735_787_045), "20250102T030405Z");
        assert_eq!(format_amz_date(i64::MAX), format!("@{}", i64::MAX));
    }

    #[test]
    fn clipping() {
        let long = "é".repeat(500);
        assert_eq!(clip(&long).chars().count(), CLIP);
        assert_eq!(clip("short"), "short");
    }
}
