//! Requests signed in-test by AWS's own signer (`aws-sigv4`), an oracle
//! independent of this crate's canonicalisation, plus presigned WebSocket
//! URLs built the way the AWS IoT Device SDKs build them.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    SessionTokenMode, SignableBody, SignableRequest, SignatureLocation as SdkLocation,
    SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use thingd_sigv4::{
    CredentialStore, Payload, Secret, SigV4Error, SignatureLocation, VerifiedIdentity, Verifier,
    VerifyRequest,
};

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const TEMP_AKID: &str = "ASIATEMPORARY";
const TEMP_SECRET: &str = "tEmPsEcReT/0123456789+abcdefghijklmnopqr";
/// Base64-like, with `+`, `/` and `=` that need encoding in a URL.
const TOKEN: &str = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD+x/y=";
/// 2025-01-02T03:04:05Z.
const T0: u64 = 1_735_787_045;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn store() -> HashMap<String, Secret> {
    HashMap::from([
        (AKID.to_owned(), Secret::new(SECRET)),
        (
            TEMP_AKID.to_owned(),
            Secret::new(TEMP_SECRET)
                .with_session_token(TOKEN)
                .with_expiry(at(T0 + 3600)),
        ),
    ])
}

/// How to sign one request.
#[derive(Clone)]
struct Sig {
    akid: &'static str,
    secret: &'static str,
    token: Option<&'static str>,
    region: &'static str,
    service: &'static str,
    time: SystemTime,
    presign: Option<Duration>,
    token_mode: SessionTokenMode,
}

impl Sig {
    fn iot() -> Self {
        Self {
            akid: AKID,
            secret: SECRET,
            token: None,
            region: "us-east-1",
            service: "iot",
            time: at(T0),
            presign: None,
            token_mode: SessionTokenMode::Include,
        }
    }

    fn service(mut self, service: &'static str) -> Self {
        self.service = service;
        self
    }

    fn temporary(mut self) -> Self {
        self.akid = TEMP_AKID;
        self.secret = TEMP_SECRET;
        self.token = Some(TOKEN);
        self
    }

    /// Signs with `aws-sigv4` and returns the request as it would arrive.
    fn sign(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> http::Request<Vec<u8>> {
        let identity = Credentials::new(
            self.akid,
            self.secret,
            self.token.map(str::to_owned),
            None,
            "thingd-sigv4-test",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.session_token_mode = self.token_mode;
        if let Some(expires) = self.presign {
            settings.signature_location = SdkLocation::QueryParams;
            settings.expires_in = Some(expires);
        }
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(self.region)
            .name(self.service)
            .time(self.time)
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let signable = SignableRequest::new(
            method,
            uri,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _signature) = sign(signable, &params).unwrap().into_parts();
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let mut req = builder.body(body.to_vec()).unwrap();
        instructions.apply_to_request_http1x(&mut req);
        req
    }
}

fn verify_with(
    verifier: &Verifier,
    req: &http::Request<Vec<u8>>,
    now: SystemTime,
    creds: &(impl CredentialStore + ?Sized),
) -> Result<VerifiedIdentity, SigV4Error> {
    verifier.verify(
        &VerifyRequest::from_http_request(req, Payload::Bytes(req.body())),
        now,
        creds,
    )
}

fn verify(req: &http::Request<Vec<u8>>) -> Result<VerifiedIdentity, SigV4Error> {
    verify_with(&Verifier::control_plane(), req, at(T0), &store())
}

fn assert_mismatch(r: Result<VerifiedIdentity, SigV4Error>) {
    let e = r.expect_err("tampered request verified");
    assert_eq!(e.aws_error_code(), "InvalidSignatureException", "{e}");
    assert!(
        e.message()
            .starts_with("The request signature we calculated"),
        "{e}"
    );
}

#[test]
fn get_with_query() {
    let req = Sig::iot().sign(
        "GET",
        "http://localhost:8080/things?maxResults=10&nextToken=abc%2Fdef%3D%3D&attributeName=color&attributeValue=a%20b",
        &[],
        b"",
    );
    let id = verify(&req).unwrap();
    assert_eq!(id.service, "iot");
    assert_eq!(id.location, SignatureLocation::Header);
    assert_eq!(id.signed_headers, ["host", "x-amz-date"]);
}

#[test]
fn post_json_body() {
    let body = br#"{"attributePayload":{"attributes":{"color":"red"},"merge":true}}"#;
    let req = Sig::iot().sign(
        "POST",
        "https://iot.example.test:8443/things/dev-1",
        &[("content-type", "application/json")],
        body,
    );
    let id = verify(&req).unwrap();
    assert!(id.payload_signed);
    assert_eq!(id.signed_headers, ["content-type", "host", "x-amz-date"]);
}

#[test]
fn arn_in_path_with_encoded_colon_and_slash() {
    let req = Sig::iot().sign(
        "POST",
        "http://localhost:8080/attached-policies/arn%3Aaws%3Aiot%3Aus-east-1%3A123456789012%3Acert%2F0123abcd?pageSize=10&marker=x%2By",
        &[],
        b"",
    );
    verify(&req).unwrap();
    // Decoding %2F before verification (a classic proxy bug) breaks it.
    let (mut parts, body) = req.into_parts();
    parts.uri = parts
        .uri
        .to_string()
        .replace("%2F0123", "/0123")
        .parse()
        .unwrap();
    assert_mismatch(verify(&http::Request::from_parts(parts, body)));
}

#[test]
fn iot_data_topic_path() {
    let req = Sig::iot().service("iotdata").sign(
        "POST",
        "https://data.iot.example.test/topics/dev%2Fa%2Btemp?qos=1&retain=false",
        &[("content-type", "application/octet-stream")],
        b"\x00\x01binary payload\xff",
    );
    let id = verify_with(&Verifier::data_plane(), &req, at(T0), &store()).unwrap();
    assert_eq!(id.service, "iotdata");
    let e = verify(&req).unwrap_err();
    assert_eq!(
        e.message(),
        "Credential should be scoped to correct service: 'iot'."
    );
}

#[test]
fn repeated_query_keys() {
    let req = Sig::iot().sign(
        "GET",
        "http://localhost:8080/things?tag=b&tag=a&tag=a%20c&a=1&empty=&bare",
        &[],
        b"",
    );
    verify(&req).unwrap();
}

#[test]
fn headers_with_extra_spaces_and_repeats() {
    let req = Sig::iot().sign(
        "PUT",
        "http://localhost:8080/things/my%3Athing/principals",
        &[
            (
                "x-amzn-principal",
                "  arn:aws:iot:us-east-1:123456789012:cert/abc   ",
            ),
            ("x-amzn-custom", "a   b    c"),
            ("x-amzn-multi", " one "),
            ("x-amzn-multi", "two  three"),
        ],
        b"",
    );
    let id = verify(&req).unwrap();
    assert!(id.signed_headers.iter().any(|h| h == "x-amzn-multi"));
    // The repeated header's order is part of the signature.
    let (mut parts, body) = req.into_parts();
    let values: Vec<_> = parts
        .headers
        .get_all("x-amzn-multi")
        .iter()
        .cloned()
        .collect();
    parts.headers.remove("x-amzn-multi");
    for v in values.into_iter().rev() {
        parts.headers.append("x-amzn-multi", v);
    }
    assert_mismatch(verify(&http::Request::from_parts(parts, body)));
}

#[test]
fn execute_api_scope_is_accepted_on_the_control_plane() {
    let req =
        Sig::iot()
            .service("execute-api")
            .sign("GET", "http://localhost:8080/things", &[], b"");
    let id = verify(&req).unwrap();
    assert_eq!(id.service, "execute-api");
    let e = verify_with(&Verifier::data_plane(), &req, at(T0), &store()).unwrap_err();
    assert_eq!(
        e.message(),
        "Credential should be scoped to correct service: 'iotdata'."
    );
}

#[test]
fn session_token_in_header() {
    let req = Sig::iot()
        .temporary()
        .sign("GET", "http://localhost:8080/things", &[], b"");
    assert!(req.headers().contains_key("x-amz-security-token"));
    let id = verify(&req).unwrap();
    assert_eq!(id.access_key_id, TEMP_AKID);
    assert!(
        id.signed_headers
            .iter()
            .any(|h| h == "x-amz-security-token")
    );

    // Token expired (the request itself is still within the skew window).
    let expiring = HashMap::from([(
        TEMP_AKID.to_owned(),
        Secret::new(TEMP_SECRET)
            .with_session_token(TOKEN)
            .with_expiry(at(T0 + 60)),
    )]);
    verify_with(&Verifier::control_plane(), &req, at(T0 + 59), &expiring).unwrap();
    let e = verify_with(&Verifier::control_plane(), &req, at(T0 + 60), &expiring).unwrap_err();
    assert_eq!(e, SigV4Error::ExpiredToken);
    assert_eq!(e.aws_error_code(), "ExpiredTokenException");
    assert_eq!(e.http_status(), 403);

    // The store knows a different token for this key.
    let other = HashMap::from([(
        TEMP_AKID.to_owned(),
        Secret::new(TEMP_SECRET).with_session_token("another-token"),
    )]);
    let e = verify_with(&Verifier::control_plane(), &req, at(T0), &other).unwrap_err();
    assert_eq!(e, SigV4Error::UnrecognizedClient);

    // Token stripped from the request.
    let (mut parts, body) = req.into_parts();
    parts.headers.remove("x-amz-security-token");
    let e = verify(&http::Request::from_parts(parts, body)).unwrap_err();
    assert_eq!(e, SigV4Error::UnrecognizedClient);

    // A token sent with long-term credentials.
    let req = Sig::iot().sign(
        "GET",
        "http://localhost:8080/things",
        &[("x-amz-security-token", "bogus")],
        b"",
    );
    assert_eq!(verify(&req).unwrap_err(), SigV4Error::UnrecognizedClient);
}

#[test]
fn tampering_a_signed_post() {
    let body = br#"{"thingTypeName":"sensor"}"#;
    let uri = "http://localhost:8080/things/dev-1?x=1";
    let req = Sig::iot().sign("POST", uri, &[("content-type", "application/json")], body);
    verify(&req).unwrap();

    let tamper = |f: &dyn Fn(&mut http::request::Parts, &mut Vec<u8>)| {
        let (mut parts, mut body) = Sig::iot()
            .sign("POST", uri, &[("content-type", "application/json")], body)
            .into_parts();
        f(&mut parts, &mut body);
        verify(&http::Request::from_parts(parts, body))
    };
    assert_mismatch(tamper(&|p, _| p.method = http::Method::PUT));
    assert_mismatch(tamper(&|p, _| {
        p.uri = "http://localhost:8080/things/dev-2?x=1".parse().unwrap();
    }));
    assert_mismatch(tamper(&|p, _| {
        p.uri = "http://localhost:8080/things/dev-1?x=2".parse().unwrap();
    }));
    assert_mismatch(tamper(&|p, _| {
        p.uri = "http://localhost:8080/things/dev-1".parse().unwrap();
    }));
    assert_mismatch(tamper(&|p, _| {
        p.headers
            .insert("content-type", "text/plain".parse().unwrap());
    }));
    assert_mismatch(tamper(&|_, b| b.push(b' ')));
    assert_mismatch(tamper(&|p, _| {
        p.headers.insert("host", "localhost:8081".parse().unwrap());
    }));
    // Unsigned headers may be added freely.
    tamper(&|p, _| {
        p.headers.insert("user-agent", "anything".parse().unwrap());
    })
    .unwrap();
    // Wrong secret.
    let mut wrong = Sig::iot();
    wrong.secret = "not-the-right-secret";
    assert_mismatch(verify(&wrong.sign("POST", uri, &[], body)));
    // Unknown key.
    let mut unknown = Sig::iot();
    unknown.akid = "AKIDUNKNOWN";
    assert_eq!(
        verify(&unknown.sign("POST", uri, &[], body)).unwrap_err(),
        SigV4Error::UnrecognizedClient
    );
}

#[test]
fn skewed_client_clock() {
    let mut sig = Sig::iot();
    sig.time = at(T0 - 16 * 60);
    let e = verify(&sig.sign("GET", "http://localhost:8080/things", &[], b"")).unwrap_err();
    assert!(e.message().starts_with("Signature expired:"), "{e}");
    sig.time = at(T0 + 16 * 60);
    let e = verify(&sig.sign("GET", "http://localhost:8080/things", &[], b"")).unwrap_err();
    assert!(e.message().starts_with("Signature not yet current:"), "{e}");
    sig.time = at(T0 + 14 * 60);
    verify(&sig.sign("GET", "http://localhost:8080/things", &[], b"")).unwrap();
}

#[test]
fn scope_date_differs_from_x_amz_date() {
    let req = Sig::iot().sign("GET", "http://localhost:8080/things", &[], b"");
    let (mut parts, body) = req.into_parts();
    let auth = parts.headers["authorization"]
        .to_str()
        .unwrap()
        .replace("/20250102/", "/20250101/");
    parts.headers.insert("authorization", auth.parse().unwrap());
    let e = verify(&http::Request::from_parts(parts, body)).unwrap_err();
    assert!(
        e.message()
            .starts_with("Date in Credential scope does not match"),
        "{e}"
    );
}

fn data_plane() -> Verifier {
    Verifier::data_plane()
}

#[test]
fn presigned_websocket_token_appended_after_signing() {
    // What aws-iot-device-sdk-python-v2 does: sign without the token, then
    // append it.
    let mut sig = Sig::iot().temporary().service("iotdevicegateway");
    sig.presign = Some(Duration::from_secs(3600));
    sig.token_mode = SessionTokenMode::Exclude;
    let req = sig.sign("GET", "wss://iot.example.test/mqtt", &[], b"");
    let query = req.uri().query().unwrap().to_owned();
    assert!(query.contains("X-Amz-Security-Token="), "{query}");
    let id = verify_with(&data_plane(), &req, at(T0 + 60), &store()).unwrap();
    assert_eq!(id.location, SignatureLocation::QueryString);
    assert_eq!(id.service, "iotdevicegateway");
    assert_eq!(id.signed_headers, ["host"]);

    // Expired URL.
    let e = verify_with(&data_plane(), &req, at(T0 + 3601), &store()).unwrap_err();
    assert_eq!(e.aws_error_code(), "InvalidSignatureException");
    assert_eq!(
        e.message(),
        "Signature expired: 20250102T030405Z is now earlier than 20250102T030406Z \
         (20250102T040406Z - 60 min.)"
    );

    // Replaced token.
    let (mut parts, body) = req.into_parts();
    let bad = parts
        .uri
        .to_string()
        .replace("X-Amz-Security-Token=", "X-Amz-Security-Token=x");
    parts.uri = bad.parse().unwrap();
    let e = verify_with(
        &data_plane(),
        &http::Request::from_parts(parts, body),
        at(T0),
        &store(),
    )
    .unwrap_err();
    assert_eq!(e, SigV4Error::UnrecognizedClient);
}

#[test]
fn presigned_websocket_token_signed() {
    let mut sig = Sig::iot().temporary().service("iotdevicegateway");
    sig.presign = Some(Duration::from_secs(300));
    sig.token_mode = SessionTokenMode::Include;
    let req = sig.sign("GET", "wss://iot.example.test:443/mqtt", &[], b"");
    verify_with(&data_plane(), &req, at(T0), &store()).unwrap();

    // Tampered signature.
    let (mut parts, body) = req.into_parts();
    let s = parts.uri.to_string();
    let pos = s.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let mut tampered = s.clone();
    let c = if &s[pos..=pos] == "0" { "1" } else { "0" };
    tampered.replace_range(pos..=pos, c);
    parts.uri = tampered.parse().unwrap();
    assert_mismatch(verify_with(
        &data_plane(),
        &http::Request::from_parts(parts, body),
        at(T0),
        &store(),
    ));
}

#[test]
fn presigned_long_term_credentials_and_tampering() {
    let mut sig = Sig::iot().service("iotdata");
    sig.presign = Some(Duration::from_secs(900));
    let req = sig.sign(
        "GET",
        "wss://iot.example.test/mqtt?x-amz-customauthorizer-name=none",
        &[],
        b"",
    );
    verify_with(&data_plane(), &req, at(T0), &store()).unwrap();

    // Another query parameter added after signing.
    let (mut parts, body) = req.into_parts();
    parts.uri = format!("{}&extra=1", parts.uri).parse().unwrap();
    assert_mismatch(verify_with(
        &data_plane(),
        &http::Request::from_parts(parts, body),
        at(T0),
        &store(),
    ));

    // A different path.
    let req = sig.sign("GET", "wss://iot.example.test/mqtt", &[], b"");
    let (mut parts, body) = req.into_parts();
    parts.uri = parts
        .uri
        .to_string()
        .replace("/mqtt", "/mqtt2")
        .parse()
        .unwrap();
    assert_mismatch(verify_with(
        &data_plane(),
        &http::Request::from_parts(parts, body),
        at(T0),
        &store(),
    ));

    // A session token appended where none belongs.
    let req = sig.sign("GET", "wss://iot.example.test/mqtt", &[], b"");
    let (mut parts, body) = req.into_parts();
    parts.uri = format!("{}&X-Amz-Security-Token=abc", parts.uri)
        .parse()
        .unwrap();
    assert_eq!(
        verify_with(
            &data_plane(),
            &http::Request::from_parts(parts, body),
            at(T0),
            &store()
        )
        .unwrap_err(),
        SigV4Error::UnrecognizedClient
    );

    // Wrong service for this endpoint.
    let mut iot = Sig::iot();
    iot.presign = Some(Duration::from_secs(900));
    let req = iot.sign("GET", "wss://iot.example.test/mqtt", &[], b"");
    let e = verify_with(&data_plane(), &req, at(T0), &store()).unwrap_err();
    assert_eq!(
        e.message(),
        "Credential should be scoped to correct service: 'iotdata'."
    );

    // Expiry above a week.
    let mut week = Sig::iot().service("iotdata");
    week.presign = Some(Duration::from_secs(604_801));
    let req = week.sign("GET", "wss://iot.example.test/mqtt", &[], b"");
    let e = verify_with(&data_plane(), &req, at(T0), &store()).unwrap_err();
    assert_eq!(e.aws_error_code(), "IncompleteSignatureException");
}

#[test]
fn presigned_missing_parameters() {
    let req = VerifyRequest::new(
        "GET",
        "/mqtt",
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20250102%2Fus-east-1%2Fiotdevicegateway%2Faws4_request",
        Payload::Bytes(b""),
    )
    .header("host", "iot.example.test");
    let e = data_plane().verify(&req, at(T0), &store()).unwrap_err();
    assert_eq!(e.aws_error_code(), "IncompleteSignatureException");
    assert!(
        e.message()
            .starts_with("AWS query-string parameters must include"),
        "{e}"
    );
}

/// Hex SHA-256, computed independently of the crate under test.
fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

/// Encodes like JavaScript's `encodeURIComponent` (which leaves `!'()*`
/// alone; a token never contains those).
fn uri_component(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Builds a WebSocket URL query the way the AWS IoT Device SDK for
/// JavaScript (v1) and the AWS docs' examples do: no X-Amz-Expires,
/// `SignedHeaders=host`, the empty-body hash, the token appended after the
/// signature. Returns the raw query string.
fn device_sdk_query(
    host: &str,
    time: SystemTime,
    akid: &str,
    secret: &str,
    token: Option<&str>,
) -> String {
    let amz_date = "20250102T030405Z";
    let scope = "20250102/us-east-1/iotdevicegateway/aws4_request";
    let mut query = format!(
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={}&X-Amz-Date={amz_date}&X-Amz-SignedHeaders=host",
        uri_component(&format!("{akid}/{scope}"))
    );
    let canonical = format!(
        "GET\n/mqtt\n{query}\nhost:{host}\n\nhost\n{}",
        sha256_hex(b"")
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let key = v4::generate_signing_key(secret, time, "us-east-1", "iotdevicegateway");
    let signature = v4::calculate_signature(key, string_to_sign.as_bytes());
    query.push_str("&X-Amz-Signature=");
    query.push_str(&signature);
    if let Some(t) = token {
        query.push_str("&X-Amz-Security-Token=");
        query.push_str(&uri_component(t));
    }
    query
}

#[test]
fn device_sdk_style_websocket_url() {
    let host = "abc123-ats.iot.us-east-1.example.test";
    let query = device_sdk_query(host, at(T0), TEMP_AKID, TEMP_SECRET, Some(TOKEN));
    let req = VerifyRequest::new("GET", "/mqtt", &query, Payload::Bytes(b""))
        .header("Host", host)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Protocol", "mqtt")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    let id = data_plane().verify(&req, at(T0 + 30), &store()).unwrap();
    assert_eq!(id.access_key_id, TEMP_AKID);
    assert_eq!(id.location, SignatureLocation::QueryString);

    // Without X-Amz-Expires the skew window bounds the URL's age.
    let e = data_plane()
        .verify(&req, at(T0 + 16 * 60), &store())
        .unwrap_err();
    assert!(e.message().starts_with("Signature expired:"), "{e}");

    // Long-term credentials, no token.
    let query = device_sdk_query(host, at(T0), AKID, SECRET, None);
    let req = VerifyRequest::new("GET", "/mqtt", &query, Payload::Bytes(b"")).header("Host", host);
    data_plane().verify(&req, at(T0), &store()).unwrap();

    // The same URL through an http::Request.
    let http_req = http::Request::builder()
        .uri(format!("/mqtt?{query}"))
        .header("host", host)
        .body(())
        .unwrap();
    data_plane()
        .verify(
            &VerifyRequest::from_http_request(&http_req, Payload::Bytes(b"")),
            at(T0),
            &store(),
        )
        .unwrap();
}

#[test]
fn presigned_unsigned_payload_variant() {
    // Some presigners (S3-style) put UNSIGNED-PAYLOAD as the payload hash.
    let host = "iot.example.test";
    let amz_date = "20250102T030405Z";
    let scope = "20250102/us-east-1/iotdata/aws4_request";
    let query = format!(
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={}&X-Amz-Date={amz_date}&X-Amz-Expires=60&X-Amz-SignedHeaders=host",
        uri_component(&format!("{AKID}/{scope}"))
    );
    let canonical = format!("GET\n/mqtt\n{query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD");
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let sig = v4::calculate_signature(
        v4::generate_signing_key(SECRET, at(T0), "us-east-1", "iotdata"),
        sts.as_bytes(),
    );
    let full = format!("{query}&X-Amz-Signature={sig}");
    let req = VerifyRequest::new("GET", "/mqtt", &full, Payload::Bytes(b"")).header("Host", host);
    data_plane().verify(&req, at(T0), &store()).unwrap();
}

#[test]
fn date_header_instead_of_x_amz_date() {
    // SigV4 allows the HTTP Date header; then `date` must be signed and the
    // string to sign uses its ISO-8601 basic form.
    let host = "localhost:8080";
    let scope = "20250102/us-east-1/iot/aws4_request";
    let canonical = format!(
        "GET\n/things\n\ndate:Thu, 02 Jan 2025 03:04:05 GMT\nhost:{host}\n\ndate;host\n{}",
        sha256_hex(b"")
    );
    let sts = format!(
        "AWS4-HMAC-SHA256\n20250102T030405Z\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let sig = v4::calculate_signature(
        v4::generate_signing_key(SECRET, at(T0), "us-east-1", "iot"),
        sts.as_bytes(),
    );
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={AKID}/{scope},SignedHeaders=date;host,Signature={sig}"
    );
    let req = VerifyRequest::new("GET", "/things", "", Payload::Bytes(b""))
        .header("Host", host)
        .header("Date", "Thu, 02 Jan 2025 03:04:05 GMT")
        .header("Authorization", &auth);
    let id = Verifier::control_plane()
        .verify(&req, at(T0), &store())
        .unwrap();
    assert_eq!(id.date, at(T0));
}

#[test]
fn unsigned_payload_header_form() {
    // x-amz-content-sha256: UNSIGNED-PAYLOAD is honoured, and reported.
    let identity = Credentials::new(AKID, SECRET, None, None, "t").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("iot")
        .time(at(T0))
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        "POST",
        "http://localhost:8080/topics/a",
        [("x-amz-content-sha256", "UNSIGNED-PAYLOAD")].into_iter(),
        SignableBody::UnsignedPayload,
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut req = http::Request::builder()
        .method("POST")
        .uri("http://localhost:8080/topics/a")
        .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
        .body(b"payload".to_vec())
        .unwrap();
    instructions.apply_to_request_http1x(&mut req);
    let id = verify(&req).unwrap();
    assert!(!id.payload_signed);
}
