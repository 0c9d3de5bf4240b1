//! The verifier: parse the signature carrier, check scope and time, rebuild
//! the canonical request, compare signatures in constant time.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{constant_time, hmac};

use crate::canonical::{
    EMPTY_SHA256, QueryParam, canonical_query, canonical_uri, parse_query, push_folded_value,
    sha256_hex,
};
use crate::credentials::{CredentialStore, Secret};
use crate::error::SigV4Error;
use crate::parse::{
    ALGORITHM, CredentialScope, TERMINATOR, clip, format_amz_date, parse_amz_date,
    parse_authorization, parse_credential, parse_http_date,
};
use crate::request::{Payload, VerifyRequest};

/// The literal payload hash of a request whose body is not signed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

const Q_ALGORITHM: &[u8] = b"X-Amz-Algorithm";
const Q_CREDENTIAL: &[u8] = b"X-Amz-Credential";
const Q_DATE: &[u8] = b"X-Amz-Date";
const Q_EXPIRES: &[u8] = b"X-Amz-Expires";
const Q_SIGNED_HEADERS: &[u8] = b"X-Amz-SignedHeaders";
const Q_SIGNATURE: &[u8] = b"X-Amz-Signature";
const Q_SECURITY_TOKEN: &[u8] = b"X-Amz-Security-Token";

/// How many derived signing keys the cache holds before it starts over.
const KEY_CACHE_CAPACITY: usize = 256;

/// Where the client put its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureLocation {
    /// `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
    Header,
    /// Presigned URL: `X-Amz-Algorithm`, `X-Amz-Credential`, … in the query
    /// string (MQTT over WebSocket).
    QueryString,
}

/// Who signed a request that verified, and under which scope.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedIdentity {
    /// The access key id from the credential scope.
    pub access_key_id: String,
    /// The region the client signed for (it decides the region in ARNs).
    pub region: String,
    /// The signing service name from the scope (`iot`, `execute-api`,
    /// `iotdata`, `iotdevicegateway`, …).
    pub service: String,
    /// The request timestamp (`X-Amz-Date`, or the `Date` header).
    pub date: SystemTime,
    /// Header or presigned form.
    pub location: SignatureLocation,
    /// The header names the signature covers, as the client listed them.
    /// Only these headers are authenticated.
    pub signed_headers: Vec<String>,
    /// `false` when the client sent `x-amz-content-sha256: UNSIGNED-PAYLOAD`
    /// with a non-empty body: the body is then not covered by the signature.
    pub payload_signed: bool,
}

/// Verifies AWS Signature Version 4 on incoming requests.
///
/// One verifier per endpoint: it knows which signing service names that
/// endpoint answers to, which regions it accepts and how much clock skew it
/// tolerates. It is `Sync`; share it between connections. It keeps a small
/// cache of derived signing keys.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// Signing service names accepted in the credential scope, e.g.
    /// `["iot", "execute-api"]` for the control plane or
    /// `["iotdata", "iotdevicegateway"]` for the data plane. Empty accepts
    /// any service. The first name is the one quoted in the error message.
    pub accepted_services: Vec<String>,
    /// Regions accepted in the credential scope; empty accepts any region.
    pub accepted_regions: Vec<String>,
    /// How far the request timestamp may be from the server clock, either
    /// way. The spec (§9.5) gives AWS's value, 15 minutes, the default.
    pub max_clock_skew: Duration,
    /// The largest `X-Amz-Expires` a presigned URL may ask for
    /// (default 7 days, as on AWS).
    pub max_presigned_expiry: Duration,
    keys: KeyCache,
}

impl Verifier {
    /// AWS's clock-skew window (spec §9.5).
    pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);
    /// AWS's longest presigned-URL lifetime.
    pub const DEFAULT_MAX_PRESIGNED_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

    /// A verifier for the given signing service names, any region and the
    /// default time limits.
    pub fn new<I, S>(accepted_services: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            accepted_services: accepted_services.into_iter().map(Into::into).collect(),
            accepted_regions: Vec::new(),
            max_clock_skew: Self::DEFAULT_MAX_CLOCK_SKEW,
            max_presigned_expiry: Self::DEFAULT_MAX_PRESIGNED_EXPIRY,
            keys: KeyCache::default(),
        }
    }

    /// The `iot` control plane: `iot`, and `execute-api` for clients older
    /// than mid-2023 (spec §1).
    #[must_use]
    pub fn control_plane() -> Self {
        Self::new(["iot", "execute-api"])
    }

    /// The `iot-data` plane (HTTPS and MQTT over WebSocket): `iotdata`, the
    /// model's signing name, and `iotdevicegateway`, the documented one.
    #[must_use]
    pub fn data_plane() -> Self {
        Self::new(["iotdata", "iotdevicegateway"])
    }

    /// The `iot-jobs-data` plane.
    #[must_use]
    pub fn jobs_data_plane() -> Self {
        Self::new(["iot-jobs-data"])
    }

    /// Sets [`accepted_regions`](Self::accepted_regions).
    #[must_use]
    pub fn with_accepted_regions<I, S>(mut self, regions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.accepted_regions = regions.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`max_clock_skew`](Self::max_clock_skew).
    #[must_use]
    pub fn with_max_clock_skew(mut self, skew: Duration) -> Self {
        self.max_clock_skew = skew;
        self
    }

    /// Verifies `req` as of `now`, looking the access key up in `creds`.
    ///
    /// Accepts the `Authorization` header form and the presigned query form.
    /// In the presigned form an `X-Amz-Security-Token` is accepted both
    /// inside the signed query and appended after signing (AWS IoT's
    /// WebSocket convention); a bodiless presigned request may have been
    /// signed with the empty-body hash or with `UNSIGNED-PAYLOAD`.
    ///
    /// # Errors
    /// The [`SigV4Error`] to send back to the client.
    pub fn verify(
        &self,
        req: &VerifyRequest<'_>,
        now: SystemTime,
        creds: &(impl CredentialStore + ?Sized),
    ) -> Result<VerifiedIdentity, SigV4Error> {
        let query = parse_query(req.raw_query);
        let auth = single(req.header_values("authorization"), "Authorization")?;
        let presigned = query
            .iter()
            .any(|p| [Q_ALGORITHM, Q_CREDENTIAL, Q_SIGNATURE].contains(&p.key.as_slice()));
        let claim = match (auth, presigned) {
            (None, false) => return Err(SigV4Error::MissingAuthenticationToken),
            (Some(_), true) => {
                return Err(SigV4Error::incomplete(
                    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter \
                     or the Authorization header should be specified.",
                ));
            }
            (Some(value), false) => header_claim(req, value)?,
            (None, true) => query_claim(&query)?,
        };
        self.check_claim(req, &query, &claim, now, creds)
    }

    fn check_claim(
        &self,
        req: &VerifyRequest<'_>,
        query: &[QueryParam],
        claim: &Claim<'_>,
        now: SystemTime,
        creds: &(impl CredentialStore + ?Sized),
    ) -> Result<VerifiedIdentity, SigV4Error> {
        let scope = parse_credential(&claim.credential)?;
        let signed_names = split_signed_headers(&claim.signed_headers)?;
        if !signed_names.iter().any(|n| n.eq_ignore_ascii_case("host")) {
            return Err(SigV4Error::incomplete(
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
            ));
        }
        if let Some(date_header) = claim.date_header
            && !signed_names
                .iter()
                .any(|n| n.eq_ignore_ascii_case(date_header))
        {
            let shown = if date_header == "date" {
                "Date"
            } else {
                "X-Amz-Date"
            };
            return Err(SigV4Error::incomplete(format!(
                "'{shown}' must be a 'SignedHeader' in the AWS Authorization."
            )));
        }
        self.check_scope(&scope, &claim.amz_date)?;
        let now_secs = unix_secs(now);
        self.check_time(claim, now_secs)?;

        let secret = creds
            .secret_for(scope.access_key_id)
            .ok_or(SigV4Error::UnrecognizedClient)?;
        check_session_token(&secret, claim.session_token.as_deref())?;

        let (payload_lines, payload_signed) = payload_lines(req, claim.location)?;
        let query_lines = query_lines(query, claim);
        let signature = hex::decode(claim.signature.as_bytes())
            .ok()
            .filter(|s| s.len() == 32)
            .ok_or_else(SigV4Error::mismatch)?;

        let (fixed, tail) = canonical_pieces(req, &signed_names, &claim.signed_headers);

        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.keys.signing_key(&secret, &scope));
        let scope_string = scope.scope_string();
        let mut matched = false;
        for query_line in &query_lines {
            for payload_line in &payload_lines {
                let creq = assemble(&fixed, query_line, &tail, payload_line);
                let string_to_sign = format!(
                    "{ALGORITHM}\n{}\n{scope_string}\n{}",
                    claim.amz_date,
                    sha256_hex(&creq)
                );
                // Every candidate is computed and compared, so the time taken
                // does not reveal which one matched.
                matched |= hmac::verify(&key, string_to_sign.as_bytes(), &signature).is_ok();
            }
        }
        if !matched {
            return Err(SigV4Error::mismatch());
        }
        if let Some(expires_at) = secret.expires_at()
            && now >= expires_at
        {
            return Err(SigV4Error::ExpiredToken);
        }
        Ok(VerifiedIdentity {
            access_key_id: scope.access_key_id.to_owned(),
            region: scope.region.to_owned(),
            service: scope.service.to_owned(),
            date: system_time(claim.date_secs),
            location: claim.location,
            signed_headers: signed_names.iter().map(|s| (*s).to_owned()).collect(),
            payload_signed,
        })
    }

    fn check_scope(&self, scope: &CredentialScope<'_>, amz_date: &str) -> Result<(), SigV4Error> {
        let day = amz_date.get(..8).unwrap_or(amz_date);
        if scope.date != day {
            return Err(SigV4Error::invalid(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date \
                 from HTTP: '{}' != '{day}', from '{amz_date}'.",
                clip(scope.date)
            )));
        }
        if !self.accepted_services.is_empty()
            && !self.accepted_services.iter().any(|s| s == scope.service)
        {
            let expected = self.accepted_services.first().map_or("", String::as_str);
            return Err(SigV4Error::invalid(format!(
                "Credential should be scoped to correct service: '{expected}'."
            )));
        }
        if !self.accepted_regions.is_empty()
            && !self.accepted_regions.iter().any(|r| r == scope.region)
        {
            return Err(SigV4Error::invalid(
                "Credential should be scoped to a valid region.",
            ));
        }
        Ok(())
    }

    fn check_time(&self, claim: &Claim<'_>, now: i64) -> Result<(), SigV4Error> {
        let skew = secs_i64(self.max_clock_skew);
        let late_limit = now.saturating_add(skew);
        if claim.date_secs > late_limit {
            return Err(SigV4Error::invalid(format!(
                "Signature not yet current: {} is still later than {} ({} + {}.)",
                claim.amz_date,
                format_amz_date(late_limit),
                format_amz_date(now),
                describe_window(self.max_clock_skew),
            )));
        }
        // A presigned URL lives for X-Amz-Expires; without it (and for the
        // header form) the skew window applies in the past as well.
        let window = match claim.expires {
            Some(expires) => {
                if expires > self.max_presigned_expiry {
                    return Err(SigV4Error::incomplete(format!(
                        "X-Amz-Expires must be less than {} seconds.",
                        self.max_presigned_expiry.as_secs()
                    )));
                }
                expires
            }
            None => self.max_clock_skew,
        };
        let early_limit = now.saturating_sub(secs_i64(window));
        if claim.date_secs < early_limit {
            return Err(SigV4Error::invalid(format!(
                "Signature expired: {} is now earlier than {} ({} - {}.)",
                claim.amz_date,
                format_amz_date(early_limit),
                format_amz_date(now),
                describe_window(window),
            )));
        }
        Ok(())
    }
}

/// The parts of the canonical request that do not vary between candidates:
/// method and URI lines (`fixed`), and the header block plus the
/// signed-headers line (`tail`).
fn canonical_pieces(
    req: &VerifyRequest<'_>,
    signed_names: &[&str],
    signed_headers: &str,
) -> (Vec<u8>, Vec<u8>) {
    let mut fixed = Vec::with_capacity(256);
    fixed.extend_from_slice(req.method.as_bytes());
    fixed.push(b'\n');
    fixed.extend_from_slice(canonical_uri(req.raw_path).as_bytes());
    fixed.push(b'\n');
    let mut tail = Vec::with_capacity(256);
    for name in signed_names {
        tail.extend_from_slice(name.as_bytes());
        tail.push(b':');
        for (i, value) in req.header_values(name).enumerate() {
            if i > 0 {
                tail.push(b',');
            }
            push_folded_value(&mut tail, value);
        }
        tail.push(b'\n');
    }
    tail.push(b'\n');
    tail.extend_from_slice(signed_headers.as_bytes());
    tail.push(b'\n');
    (fixed, tail)
}

/// The six-line canonical request of §9.2.
fn assemble(fixed: &[u8], query_line: &str, tail: &[u8], payload_line: &str) -> Vec<u8> {
    let mut creq =
        Vec::with_capacity(fixed.len() + query_line.len() + tail.len() + payload_line.len() + 1);
    creq.extend_from_slice(fixed);
    creq.extend_from_slice(query_line.as_bytes());
    creq.push(b'\n');
    creq.extend_from_slice(tail);
    creq.extend_from_slice(payload_line.as_bytes());
    creq
}

/// What the request claims, from either signature carrier.
struct Claim<'r> {
    location: SignatureLocation,
    credential: Cow<'r, str>,
    signed_headers: Cow<'r, str>,
    signature: Cow<'r, str>,
    /// The timestamp as it goes into the string to sign.
    amz_date: Cow<'r, str>,
    date_secs: i64,
    /// The header carrying the date (header form only), which must be signed.
    date_header: Option<&'static str>,
    /// `X-Amz-Expires` (presigned form only).
    expires: Option<Duration>,
    session_token: Option<Cow<'r, [u8]>>,
}

/// At most one value of a header.
fn single<'a>(
    mut values: impl Iterator<Item = &'a [u8]>,
    name: &str,
) -> Result<Option<&'a [u8]>, SigV4Error> {
    let first = values.next();
    if first.is_some() && values.next().is_some() {
        return Err(SigV4Error::incomplete(format!(
            "Request has more than one '{name}' header."
        )));
    }
    Ok(first)
}

fn header_claim<'r>(req: &VerifyRequest<'r>, auth: &'r [u8]) -> Result<Claim<'r>, SigV4Error> {
    let parsed = parse_authorization(auth)?;
    let (amz_date, date_secs, date_header) =
        if let Some(v) = single(req.header_values("x-amz-date"), "X-Amz-Date")? {
            let v = std::str::from_utf8(v).unwrap_or("");
            let secs = parse_amz_date(v).ok_or_else(|| bad_amz_date(v))?;
            (Cow::Borrowed(v), secs, "x-amz-date")
        } else if let Some(v) = single(req.header_values("date"), "Date")? {
            let v = std::str::from_utf8(v).unwrap_or("");
            let secs = parse_http_date(v).ok_or_else(|| {
                SigV4Error::incomplete(format!(
                    "Date header must be in RFC 1123 format, e.g. 'Thu, 02 Jan 2025 03:04:05 \
                     GMT'. Got '{}'.",
                    clip(v)
                ))
            })?;
            (Cow::Owned(format_amz_date(secs)), secs, "date")
        } else {
            return Err(SigV4Error::incomplete(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' \
                 header.",
            ));
        };
    let session_token = single(
        req.header_values("x-amz-security-token"),
        "X-Amz-Security-Token",
    )?;
    Ok(Claim {
        location: SignatureLocation::Header,
        credential: Cow::Borrowed(parsed.credential),
        signed_headers: Cow::Borrowed(parsed.signed_headers),
        signature: Cow::Borrowed(parsed.signature),
        amz_date,
        date_secs,
        date_header: Some(date_header),
        expires: None,
        session_token: session_token.map(Cow::Borrowed),
    })
}

fn bad_amz_date(v: &str) -> SigV4Error {
    SigV4Error::incomplete(format!(
        "Date must be in ISO-8601 'basic format'. Got '{}'. See \
         http://en.wikipedia.org/wiki/ISO_8601",
        clip(v)
    ))
}

fn query_claim(query: &[QueryParam]) -> Result<Claim<'_>, SigV4Error> {
    let algorithm = query_value(query, Q_ALGORITHM)?;
    let credential = query_value(query, Q_CREDENTIAL)?;
    let signature = query_value(query, Q_SIGNATURE)?;
    let date = query_value(query, Q_DATE)?;
    let signed_headers = query_value(query, Q_SIGNED_HEADERS)?;
    let expires = query_value(query, Q_EXPIRES)?;
    let token = query_bytes(query, Q_SECURITY_TOKEN)?;
    let (Some(algorithm), Some(credential), Some(signature), Some(date), Some(signed_headers)) =
        (algorithm, credential, signature, date, signed_headers)
    else {
        return Err(SigV4Error::incomplete(
            "AWS query-string parameters must include 'X-Amz-Algorithm', 'X-Amz-Credential', \
             'X-Amz-Signature', 'X-Amz-Date', 'X-Amz-SignedHeaders'. Re-examine the \
             query-string parameters.",
        ));
    };
    if algorithm != ALGORITHM {
        return Err(SigV4Error::incomplete(format!(
            "X-Amz-Algorithm only supports '{ALGORITHM}', got '{}'.",
            clip(algorithm)
        )));
    }
    let date_secs = parse_amz_date(date).ok_or_else(|| bad_amz_date(date))?;
    let expires = match expires {
        None => None,
        Some(e) => Some(
            e.parse::<u64>()
                .ok()
                .filter(|_| e.bytes().all(|b| b.is_ascii_digit()))
                .map(Duration::from_secs)
                .ok_or_else(|| {
                    SigV4Error::incomplete(format!(
                        "X-Amz-Expires should be a number of seconds, got '{}'.",
                        clip(e)
                    ))
                })?,
        ),
    };
    Ok(Claim {
        location: SignatureLocation::QueryString,
        credential: Cow::Borrowed(credential),
        signed_headers: Cow::Borrowed(signed_headers),
        signature: Cow::Borrowed(signature),
        amz_date: Cow::Borrowed(date),
        date_secs,
        date_header: None,
        expires,
        session_token: token.map(Cow::Borrowed),
    })
}

/// The decoded value of a query parameter that may appear at most once.
fn query_bytes<'q>(query: &'q [QueryParam], name: &[u8]) -> Result<Option<&'q [u8]>, SigV4Error> {
    let mut found = query.iter().filter(|p| p.key == name);
    let first = found.next();
    if first.is_some() && found.next().is_some() {
        return Err(SigV4Error::incomplete(format!(
            "Query-string parameter '{}' appears more than once.",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(first.map(|p| p.value.as_slice()))
}

fn query_value<'q>(query: &'q [QueryParam], name: &[u8]) -> Result<Option<&'q str>, SigV4Error> {
    query_bytes(query, name)?
        .map(|v| {
            std::str::from_utf8(v).map_err(|_| {
                SigV4Error::incomplete(format!(
                    "Query-string parameter '{}' is not valid UTF-8.",
                    String::from_utf8_lossy(name)
                ))
            })
        })
        .transpose()
}

fn split_signed_headers(list: &str) -> Result<Vec<&str>, SigV4Error> {
    let names: Vec<&str> = list.split(';').collect();
    if names
        .iter()
        .any(|n| n.is_empty() || n.bytes().any(|b| b <= b' ' || b == b':'))
    {
        return Err(SigV4Error::incomplete(format!(
            "SignedHeaders must be a ';'-separated list of header names, got '{}'.",
            clip(list)
        )));
    }
    Ok(names)
}

/// Temporary credentials need their token; long-term ones must not get one.
fn check_session_token(secret: &Secret, sent: Option<&[u8]>) -> Result<(), SigV4Error> {
    match (secret.session_token(), sent) {
        (None, None) => Ok(()),
        (Some(expected), Some(sent)) => {
            constant_time::verify_slices_are_equal(expected.as_bytes(), sent)
                .map_err(|_| SigV4Error::UnrecognizedClient)
        }
        _ => Err(SigV4Error::UnrecognizedClient),
    }
}

/// The payload-hash lines to try, and whether the body is covered.
fn payload_lines(
    req: &VerifyRequest<'_>,
    location: SignatureLocation,
) -> Result<(Vec<String>, bool), SigV4Error> {
    let actual = match req.payload {
        Payload::Bytes(body) => sha256_hex(body),
        Payload::Sha256Hex(hash) => hash.to_ascii_lowercase(),
    };
    match single(
        req.header_values("x-amz-content-sha256"),
        "X-Amz-Content-SHA256",
    )? {
        Some(declared) => {
            let declared = std::str::from_utf8(declared).unwrap_or("").trim();
            if declared == UNSIGNED_PAYLOAD {
                Ok((vec![declared.to_owned()], actual == EMPTY_SHA256))
            } else if declared.len() == 64 && declared.bytes().all(|b| b.is_ascii_hexdigit()) {
                if declared.eq_ignore_ascii_case(&actual) {
                    Ok((vec![declared.to_owned()], true))
                } else {
                    Err(SigV4Error::ContentSha256Mismatch(
                        "The provided 'x-amz-content-sha256' header does not match what was \
                         computed."
                            .to_owned(),
                    ))
                }
            } else {
                Err(SigV4Error::ContentSha256Mismatch(
                    "x-amz-content-sha256 must be UNSIGNED-PAYLOAD or a valid sha256 value."
                        .to_owned(),
                ))
            }
        }
        None if location == SignatureLocation::QueryString && actual == EMPTY_SHA256 => {
            Ok((vec![actual, UNSIGNED_PAYLOAD.to_owned()], true))
        }
        None => Ok((vec![actual], true)),
    }
}

/// The canonical query lines to try: in the presigned form without
/// `X-Amz-Signature`, and, when a token is present, also without it.
fn query_lines(query: &[QueryParam], claim: &Claim<'_>) -> Vec<String> {
    match claim.location {
        SignatureLocation::Header => vec![canonical_query(query, |_| false)],
        SignatureLocation::QueryString => {
            let mut lines = vec![canonical_query(query, |p| p.key == Q_SIGNATURE)];
            if claim.session_token.is_some() {
                lines.push(canonical_query(query, |p| {
                    p.key == Q_SIGNATURE || p.key == Q_SECURITY_TOKEN
                }));
            }
            lines
        }
    }
}

fn secs_i64(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn describe_window(d: Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} sec")
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => secs_i64(d),
        Err(e) => secs_i64(e.duration()).saturating_neg(),
    }
}

fn system_time(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
    .unwrap_or(UNIX_EPOCH)
}

/// (secret, date, region, service).
type CacheKey = (String, String, String, String);

/// Derived signing keys by (secret, date, region, service). Bounded: when
/// full it is emptied and refilled, which is cheap and keeps memory flat.
#[derive(Default)]
struct KeyCache {
    map: Mutex<HashMap<CacheKey, [u8; 32]>>,
}

impl KeyCache {
    fn signing_key(&self, secret: &Secret, scope: &CredentialScope<'_>) -> [u8; 32] {
        let cache_key = (
            secret.secret_access_key().to_owned(),
            scope.date.to_owned(),
            scope.region.to_owned(),
            scope.service.to_owned(),
        );
        if let Some(k) = self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&cache_key)
        {
            return *k;
        }
        let derived = derive_signing_key(secret.secret_access_key(), scope);
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= KEY_CACHE_CAPACITY {
            map.clear();
        }
        map.insert(cache_key, derived);
        derived
    }
}

impl Clone for KeyCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.map.lock().map_or(0, |m| m.len());
        f.debug_struct("KeyCache").field("entries", &len).finish()
    }
}

/// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").
fn derive_signing_key(secret: &str, scope: &CredentialScope<'_>) -> [u8; 32] {
    let mut key = Vec::with_capacity(4 + secret.len());
    key.extend_from_slice(b"AWS4");
    key.extend_from_slice(secret.as_bytes());
    for step in [scope.date, scope.region, scope.service, TERMINATOR] {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), step.as_bytes());
        key.clear();
        key.extend_from_slice(tag.as_ref());
    }
    let mut out = [0u8; 32];
    if let Some(src) = key.get(..32) {
        out.copy_from_slice(src);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_key_matches_aws_example() {
        // The key-derivation example from the AWS SigV4 documentation.
        let scope = CredentialScope {
            access_key_id: "AKIDEXAMPLE",
            date: "20150830",
            region: "us-east-1",
            service: "iam",
        };
        let key = derive_signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", &scope);
        assert_eq!(
            hex::encode(key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }

    #[test]
    fn spec_vector_2_canonical_request() {
        let id = "a".repeat(64);
        let path =
            format!("/attached-policies/arn%3Aaws%3Aiot%3Aus-east-1%3A123456789012%3Acert%2F{id}");
        let req = VerifyRequest::new("POST", &path, "pageSize=10", Payload::Bytes(b""))
            .header("Host", "localhost:8080")
            .header("X-Amz-Date", "20250102T030405Z");
        let (fixed, tail) = canonical_pieces(&req, &["host", "x-amz-date"], "host;x-amz-date");
        let query = canonical_query(&parse_query(req.raw_query), |_| false);
        let creq = assemble(&fixed, &query, &tail, EMPTY_SHA256);
        let expected = format!(
            "POST\n/attached-policies/arn%253Aaws%253Aiot%253Aus-east-1%253A123456789012%253Acert%252F{id}\n\
             pageSize=10\nhost:localhost:8080\nx-amz-date:20250102T030405Z\n\nhost;x-amz-date\n{EMPTY_SHA256}"
        );
        assert_eq!(String::from_utf8(creq.clone()).unwrap(), expected);
        assert_eq!(
            sha256_hex(&creq),
            "cbf57846dc59858130483f2cf81d778b1c445a1d83fdc68e000649968f9ccfcf"
        );
    }

    #[test]
    fn cache_is_bounded() {
        let cache = KeyCache::default();
        let secret = Secret::new("s");
        for i in 0..(KEY_CACHE_CAPACITY * 2 + 3) {
            let region = format!("r{i}");
            let scope = CredentialScope {
                access_key_id: "A",
                date: "20250102",
                region: &region,
                service: "iot",
            };
            assert_eq!(
                cache.signing_key(&secret, &scope),
                derive_signing_key("s", &scope)
            );
        }
        assert!(cache.map.lock().unwrap().len() <= KEY_CACHE_CAPACITY);
    }

    #[test]
    fn time_helpers() {
        assert_eq!(unix_secs(system_time(1_735_787_045)), 1_735_787_045);
        assert_eq!(unix_secs(system_time(-5)), -5);
        assert_eq!(describe_window(Duration::from_secs(900)), "15 min");
        assert_eq!(describe_window(Duration::from_secs(90)), "90 sec");
    }
}
