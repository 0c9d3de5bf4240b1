//! The botocore-signed vectors of `aws-iot-controlplane.md` §9.4, and the
//! error paths exercised by tampering with them.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thingd_sigv4::{Payload, Secret, SigV4Error, SignatureLocation, Verifier, VerifyRequest};

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const AMZ_DATE: &str = "20250102T030405Z";
/// 2025-01-02T03:04:05Z.
const T0: u64 = 1_735_787_045;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn creds() -> HashMap<String, Secret> {
    HashMap::from([(AKID.to_owned(), Secret::new(SECRET))])
}

fn authorization(signed_headers: &str, signature: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={AKID}/20250102/us-east-1/iot/aws4_request, \
         SignedHeaders={signed_headers}, Signature={signature}"
    )
}

/// One §9.4 request: everything needed to rebuild it.
struct Vector {
    method: &'static str,
    path: String,
    query: &'static str,
    extra: Vec<(&'static str, String)>,
    body: &'static [u8],
    signed: &'static str,
    signature: &'static str,
}

impl Vector {
    fn request<'a>(&'a self, auth: &'a str) -> VerifyRequest<'a> {
        let mut req = VerifyRequest::new(
            self.method,
            &self.path,
            self.query,
            Payload::Bytes(self.body),
        )
        .header("Host", "localhost:8080")
        .header("X-Amz-Date", AMZ_DATE)
        // botocore adds these unsigned.
        .header("User-Agent", "Boto3/1.40 md/Botocore#1.43.11")
        .header(
            "amz-sdk-invocation-id",
            "6f1c5d9e-0000-4000-8000-000000000000",
        )
        .header("amz-sdk-request", "attempt=1")
        .header("Authorization", auth);
        for (k, v) in &self.extra {
            req.push_header(k, v);
        }
        req
    }

    fn auth(&self) -> String {
        authorization(self.signed, self.signature)
    }
}

fn vectors() -> Vec<Vector> {
    vec![
        Vector {
            method: "GET",
            path: "/endpoint".to_owned(),
            query: "endpointType=iot%3AData-ATS",
            extra: vec![],
            body: b"",
            signed: "host;x-amz-date",
            signature: "b184634f78795432ae8c9223a9b174e79b34efd34a7079c89635498cb0cb3437",
        },
        Vector {
            method: "POST",
            path: format!(
                "/attached-policies/arn%3Aaws%3Aiot%3Aus-east-1%3A123456789012%3Acert%2F{}",
                "a".repeat(64)
            ),
            query: "pageSize=10",
            extra: vec![("Content-Length", "0".to_owned())],
            body: b"",
            signed: "host;x-amz-date",
            signature: "389a66cb14a2dbefd37b571f0aad8b283659cdf091fe5eaa84b88f0d3ad10dc4",
        },
        Vector {
            method: "PUT",
            path: "/things/my%3Athing/principals".to_owned(),
            query: "",
            extra: vec![(
                "x-amzn-principal",
                format!("arn:aws:iot:us-east-1:123456789012:cert/{}", "b".repeat(64)),
            )],
            body: b"",
            signed: "host;x-amz-date;x-amzn-principal",
            signature: "ae41a779585f4b141297030b472258fbdcf892c4e6e810137f0073c61a84e5a9",
        },
        Vector {
            method: "POST",
            path: "/things/dev-1".to_owned(),
            query: "",
            extra: vec![("Content-Type", "application/json".to_owned())],
            body: br#"{"attributePayload": {"attributes": {"color": "red"}}}"#,
            signed: "content-type;host;x-amz-date",
            signature: "0be6b94c0c206aeb96695b799de5fc34e64997d8f662f597c9cc3cf284708774",
        },
        Vector {
            method: "POST",
            path: "/keys-and-certificate".to_owned(),
            query: "setAsActive=true",
            extra: vec![],
            body: b"",
            signed: "host;x-amz-date",
            signature: "be1ba7d69b5d9c5c2f50acc80086c5304f9c7fc9ed6d86bfd30a2fb603061ffa",
        },
    ]
}

fn verify(req: &VerifyRequest<'_>) -> Result<thingd_sigv4::VerifiedIdentity, SigV4Error> {
    Verifier::control_plane().verify(req, at(T0), &creds())
}

fn assert_mismatch(r: Result<thingd_sigv4::VerifiedIdentity, SigV4Error>) {
    let e = r.expect_err("tampered request verified");
    assert_eq!(e.aws_error_code(), "InvalidSignatureException", "{e}");
    assert_eq!(e.http_status(), 403);
    assert!(
        e.message()
            .starts_with("The request signature we calculated does not match"),
        "{e}"
    );
}

#[test]
fn every_botocore_vector_verifies() {
    for v in vectors() {
        let auth = v.auth();
        let id =
            verify(&v.request(&auth)).unwrap_or_else(|e| panic!("{} {}: {e}", v.method, v.path));
        assert_eq!(id.access_key_id, AKID);
        assert_eq!(id.region, "us-east-1");
        assert_eq!(id.service, "iot");
        assert_eq!(id.date, at(T0));
        assert_eq!(id.location, SignatureLocation::Header);
        assert!(id.payload_signed);
        assert_eq!(id.signed_headers.join(";"), v.signed);
    }
}

#[test]
fn vectors_verify_with_precomputed_body_hash() {
    for v in vectors() {
        let auth = v.auth();
        let hash = hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            v.body,
        ));
        let mut req = v.request(&auth);
        req = VerifyRequest::new(
            req.method(),
            req.raw_path(),
            req.raw_query(),
            Payload::Sha256Hex(&hash),
        )
        .header("Host", "localhost:8080")
        .header("X-Amz-Date", AMZ_DATE)
        .header("Authorization", &auth);
        for (k, val) in &v.extra {
            req.push_header(k, val);
        }
        verify(&req).unwrap();
    }
}

#[test]
fn flipped_signature_fails() {
    for v in vectors() {
        let mut sig = v.signature.to_owned();
        sig.replace_range(0..1, if sig.starts_with('0') { "1" } else { "0" });
        let auth = authorization(v.signed, &sig);
        assert_mismatch(verify(&v.request(&auth)));
    }
}

#[test]
fn malformed_signature_fails_as_mismatch() {
    let v = &vectors()[0];
    for sig in ["", "zz", "abcd", &"f".repeat(66)] {
        let auth = authorization(v.signed, sig);
        assert_mismatch(verify(&v.request(&auth)));
    }
}

#[test]
fn tampered_method_path_query_header_body() {
    let vs = vectors();
    let get = &vs[0];
    let auth = get.auth();

    let mut t = VerifyRequest::new("HEAD", &get.path, get.query, Payload::Bytes(b""));
    t = copy_headers(t, &get.request(&auth));
    assert_mismatch(verify(&t));

    let t = copy_headers(
        VerifyRequest::new("GET", "/endpoints", get.query, Payload::Bytes(b"")),
        &get.request(&auth),
    );
    assert_mismatch(verify(&t));

    let t = copy_headers(
        VerifyRequest::new(
            "GET",
            "/endpoint",
            "endpointType=iot%3AData",
            Payload::Bytes(b""),
        ),
        &get.request(&auth),
    );
    assert_mismatch(verify(&t));

    let t = copy_headers(
        VerifyRequest::new(
            "GET",
            "/endpoint",
            "endpointType=iot%3AData-ATS&extra=1",
            Payload::Bytes(b""),
        ),
        &get.request(&auth),
    );
    assert_mismatch(verify(&t));

    // A different Host than the one signed (e.g. a proxy rewrote it).
    let t = VerifyRequest::new("GET", "/endpoint", get.query, Payload::Bytes(b""))
        .header("Host", "localhost:8443")
        .header("X-Amz-Date", AMZ_DATE)
        .header("Authorization", &auth);
    assert_mismatch(verify(&t));

    // A signed input header changed.
    let principal = &vs[2];
    let pauth = principal.auth();
    let t = VerifyRequest::new("PUT", &principal.path, "", Payload::Bytes(b""))
        .header("Host", "localhost:8080")
        .header("X-Amz-Date", AMZ_DATE)
        .header(
            "x-amzn-principal",
            "arn:aws:iot:us-east-1:123456789012:cert/evil",
        )
        .header("Authorization", &pauth);
    assert_mismatch(verify(&t));

    // Body changed.
    let create = &vs[3];
    let cauth = create.auth();
    let body = br#"{"attributePayload": {"attributes": {"color": "blue"}}}"#;
    let t = VerifyRequest::new("POST", "/things/dev-1", "", Payload::Bytes(body))
        .header("Host", "localhost:8080")
        .header("X-Amz-Date", AMZ_DATE)
        .header("Content-Type", "application/json")
        .header("Authorization", &cauth);
    assert_mismatch(verify(&t));
}

fn copy_headers<'a>(mut to: VerifyRequest<'a>, from: &VerifyRequest<'a>) -> VerifyRequest<'a> {
    for name in [
        "host",
        "x-amz-date",
        "authorization",
        "x-amzn-principal",
        "content-type",
    ] {
        for v in from.header_values(name) {
            to.push_header(name, v);
        }
    }
    to
}

#[test]
fn wrong_secret_and_unknown_key() {
    let v = &vectors()[0];
    let auth = v.auth();
    let req = v.request(&auth);
    let wrong = HashMap::from([(AKID.to_owned(), Secret::new("not-the-secret"))]);
    assert_mismatch(Verifier::control_plane().verify(&req, at(T0), &wrong));

    let other = HashMap::from([("AKIDOTHER".to_owned(), Secret::new(SECRET))]);
    let e = Verifier::control_plane()
        .verify(&req, at(T0), &other)
        .unwrap_err();
    assert_eq!(e, SigV4Error::UnrecognizedClient);
    assert_eq!(e.aws_error_code(), "UnrecognizedClientException");
    assert_eq!(e.http_status(), 403);
    assert_eq!(
        e.message(),
        "The security token included in the request is invalid."
    );
}

#[test]
fn clock_skew_window() {
    let v = &vectors()[0];
    let auth = v.auth();
    let req = v.request(&auth);
    let verifier = Verifier::control_plane();
    // Exactly at the edge of the 15-minute window, both ways: accepted.
    verifier.verify(&req, at(T0 + 900), &creds()).unwrap();
    verifier.verify(&req, at(T0 - 900), &creds()).unwrap();

    let e = verifier.verify(&req, at(T0 + 901), &creds()).unwrap_err();
    assert_eq!(e.aws_error_code(), "InvalidSignatureException");
    assert_eq!(
        e.message(),
        "Signature expired: 20250102T030405Z is now earlier than 20250102T030406Z \
         (20250102T031906Z - 15 min.)"
    );
    let e = verifier.verify(&req, at(T0 - 901), &creds()).unwrap_err();
    assert_eq!(
        e.message(),
        "Signature not yet current: 20250102T030405Z is still later than 20250102T030404Z \
         (20250102T024904Z + 15 min.)"
    );

    // A tighter window, as the brief's 5 minutes.
    let strict = Verifier::control_plane().with_max_clock_skew(Duration::from_secs(300));
    strict.verify(&req, at(T0 + 300), &creds()).unwrap();
    let e = strict.verify(&req, at(T0 + 301), &creds()).unwrap_err();
    assert!(e.message().ends_with("- 5 min.)"), "{e}");
}

#[test]
fn no_credentials_at_all() {
    let req = VerifyRequest::new("GET", "/things", "", Payload::Bytes(b""))
        .header("Host", "localhost:8080")
        .header("X-Amz-Date", AMZ_DATE);
    let e = verify(&req).unwrap_err();
    assert_eq!(e, SigV4Error::MissingAuthenticationToken);
    assert_eq!(e.aws_error_code(), "MissingAuthenticationTokenException");
    assert_eq!(e.http_status(), 403);
    assert_eq!(e.message(), "Missing Authentication Token");
}

#[test]
fn scope_date_must_match_x_amz_date() {
    let v = &vectors()[0];
    let auth = v.auth();
    let req = VerifyRequest::new("GET", "/endpoint", v.query, Payload::Bytes(b""))
        .header("Host", "localhost:8080")
        .header("X-Amz-Date", "20250103T000100Z")
        .header("Authorization", &auth);
    let e = Verifier::control_plane()
        .verify(&req, at(T0), &creds())
        .unwrap_err();
    assert_eq!(e.aws_error_code(), "InvalidSignatureException");
    assert_eq!(
        e.message(),
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from \
         HTTP: '20250102' != '20250103', from '20250103T000100Z'."
    );
}

#[test]
fn unaccepted_service_and_region() {
    let v = &vectors()[0];
    let auth = v.auth();
    let req = v.request(&auth);
    let e = Verifier::data_plane()
        .verify(&req, at(T0), &creds())
        .unwrap_err();
    assert_eq!(e.aws_error_code(), "InvalidSignatureException");
    assert_eq!(
        e.message(),
        "Credential should be scoped to correct service: 'iotdata'."
    );

    let eu = Verifier::control_plane().with_accepted_regions(["eu-west-1"]);
    let e = eu.verify(&req, at(T0), &creds()).unwrap_err();
    assert_eq!(
        e.message(),
        "Credential should be scoped to a valid region."
    );
    let us = Verifier::control_plane().with_accepted_regions(["eu-west-1", "us-east-1"]);
    us.verify(&req, at(T0), &creds()).unwrap();

    // An empty service list accepts any service.
    Verifier::new(Vec::<String>::new())
        .verify(&req, at(T0), &creds())
        .unwrap();
}

#[test]
fn host_must_be_signed() {
    let auth = authorization(
        "x-amz-date",
        "b184634f78795432ae8c9223a9b174e79b34efd34a7079c89635498cb0cb3437",
    );
    let req = VerifyRequest::new(
        "GET",
        "/endpoint",
        "endpointType=iot%3AData-ATS",
        Payload::Bytes(b""),
    )
    .header("Host", "localhost:8080")
    .header("X-Amz-Date", AMZ_DATE)
    .header("Authorization", &auth);
    let e = verify(&req).unwrap_err();
    assert_eq!(e.aws_error_code(), "IncompleteSignatureException");
    assert_eq!(e.http_status(), 403);
    assert_eq!(
        e.message(),
        "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
    );
}

#[test]
fn x_amz_date_must_be_signed_when_used() {
    let auth = authorization("host", &"0".repeat(64));
    let req = VerifyRequest::new("GET", "/endpoint", "", Payload::Bytes(b""))
        .header("Host", "localhost:8080")
        .header("X-Amz-Date", AMZ_DATE)
        .header("Authorization", &auth);
    let e = verify(&req).unwrap_err();
    assert_eq!(e.aws_error_code(), "IncompleteSignatureException");
    assert!(
        e.message()
            .starts_with("'X-Amz-Date' must be a 'SignedHeader'"),
        "{e}"
    );
}

#[test]
fn malformed_authorization_and_dates() {
    let v = &vectors()[0];
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        (
            format!("AWS4-HMAC-SHA256 Credential={AKID}/20250102/us-east-1/iot/aws4_request"),
            Some(AMZ_DATE),
            "Authorization header requires 'Signature' parameter.",
        ),
        (
            "AWS AKIDEXAMPLE:abc".to_owned(),
            Some(AMZ_DATE),
            "Unsupported AWS 'algorithm'",
        ),
        (
            format!(
                "AWS4-HMAC-SHA256 Credential={AKID}/20250102/us-east-1/iot, \
                 SignedHeaders=host;x-amz-date, Signature={}",
                v.signature
            ),
            Some(AMZ_DATE),
            "Credential must have exactly 5 slash-delimited elements",
        ),
        (
            v.auth(),
            Some("2025-01-02T03:04:05Z"),
            "Date must be in ISO-8601 'basic format'",
        ),
        (
            v.auth(),
            None,
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ),
        (
            format!(
                "AWS4-HMAC-SHA256 Credential={AKID}/20250102/us-east-1/iot/aws4_request, \
                 SignedHeaders=host;;x-amz-date, Signature={}",
                v.signature
            ),
            Some(AMZ_DATE),
            "SignedHeaders must be a ';'-separated list",
        ),
    ];
    for (auth, date, want) in &cases {
        let mut req = VerifyRequest::new("GET", "/endpoint", v.query, Payload::Bytes(b""))
            .header("Host", "localhost:8080")
            .header("Authorization", auth);
        if let Some(d) = date {
            req.push_header("X-Amz-Date", *d);
        }
        let e = verify(&req).unwrap_err();
        assert_eq!(
            e.aws_error_code(),
            "IncompleteSignatureException",
            "{auth}: {e}"
        );
        assert!(e.message().contains(want), "{auth}: {e}");
    }

    // Two Authorization headers.
    let auth = v.auth();
    let req = v.request(&auth).header("Authorization", &auth);
    assert_eq!(
        verify(&req).unwrap_err().aws_error_code(),
        "IncompleteSignatureException"
    );

    // A wrong terminator is an InvalidSignatureException on AWS.
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={AKID}/20250102/us-east-1/iot/aws4_reqest, \
         SignedHeaders=host;x-amz-date, Signature={}",
        v.signature
    );
    let e = verify(&v.request(&auth)).unwrap_err();
    assert_eq!(e.aws_error_code(), "InvalidSignatureException");
    assert!(e.message().contains("valid terminator"), "{e}");
}

#[test]
fn content_sha256_header() {
    let create = &vectors()[3];
    let auth = create.auth();
    // A correct x-amz-content-sha256 that is not signed changes nothing.
    let hash = hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        create.body,
    ));
    let req = create.request(&auth).header("x-amz-content-sha256", &hash);
    verify(&req).unwrap();

    // One that does not match the body is a 400.
    let req = create
        .request(&auth)
        .header("x-amz-content-sha256", canonical_empty());
    let e = verify(&req).unwrap_err();
    assert_eq!(e.aws_error_code(), "XAmzContentSHA256Mismatch");
    assert_eq!(e.http_status(), 400);

    let req = create
        .request(&auth)
        .header("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD");
    assert_eq!(verify(&req).unwrap_err().http_status(), 400);
}

fn canonical_empty() -> &'static str {
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
}

#[test]
fn presigned_and_header_together_rejected() {
    let v = &vectors()[0];
    let auth = v.auth();
    let req = VerifyRequest::new(
        "GET",
        "/endpoint",
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        Payload::Bytes(b""),
    )
    .header("Host", "localhost:8080")
    .header("X-Amz-Date", AMZ_DATE)
    .header("Authorization", &auth);
    let e = verify(&req).unwrap_err();
    assert_eq!(e.aws_error_code(), "IncompleteSignatureException");
    assert!(
        e.message().starts_with("Only one auth mechanism allowed"),
        "{e}"
    );
}

#[test]
fn garbage_never_panics() {
    let verifier = Verifier::control_plane();
    let store = creds();
    let nasty: &[&[u8]] = &[
        b"",
        b"AWS4-HMAC-SHA256",
        b"AWS4-HMAC-SHA256 ",
        b"AWS4-HMAC-SHA256 ,,,,",
        b"AWS4-HMAC-SHA256 =,=,=",
        b"AWS4-HMAC-SHA256 Credential=////, SignedHeaders=;, Signature=",
        b"AWS4-HMAC-SHA256 Credential=\xff\xfe/20250102/us-east-1/iot/aws4_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=é/2025010é/ü/iot/aws4_request, SignedHeaders=host, Signature=00"
            .as_bytes(),
        b"\xff",
    ];
    let dates: &[&[u8]] = &[
        b"",
        b"20250102T030405Z",
        b"99999999T999999Z",
        b"\xff\xff",
        "２０２５".as_bytes(),
    ];
    let paths = ["", "/", "//..//../%", "/%zz/%%/%2", "/\u{e9}/a b", "*"];
    let queries = [
        "",
        "&&&",
        "=&=",
        "%",
        "X-Amz-Signature",
        "X-Amz-Credential=%ZZ&X-Amz-Credential=x",
        "a=%FF%FE",
    ];
    for auth in nasty {
        for date in dates {
            for path in paths {
                for query in queries {
                    let req = VerifyRequest::new("GET", path, query, Payload::Bytes(b"\xff"))
                        .header("Host", b"\xff\x00")
                        .header("X-Amz-Date", *date)
                        .header("Authorization", *auth);
                    assert!(verifier.verify(&req, at(T0), &store).is_err());
                }
            }
        }
    }
    // Extreme clocks.
    let v = &vectors()[0];
    let auth = v.auth();
    let req = v.request(&auth);
    for now in [
        UNIX_EPOCH,
        at(u64::from(u32::MAX) * 1000),
        UNIX_EPOCH - Duration::from_secs(1 << 40),
    ] {
        let e = verifier.verify(&req, now, &store).unwrap_err();
        assert_eq!(e.aws_error_code(), "InvalidSignatureException");
    }
}
