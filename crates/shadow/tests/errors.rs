//! One test per error message of spec section 6.9, the rejected document, and the HTTP mapping.

mod common;

use common::{build, parse};
use serde_json::json;
use thingd_shadow::{
    ShadowError, ShadowId, ShadowLimits, StoredShadow, handle_delete, handle_get, handle_update,
    message,
};

const NOW: i64 = 1_730_482_794;

fn reject(current: Option<&StoredShadow>, payload: &[u8]) -> ShadowError {
    match handle_update(current, payload, NOW, &ShadowLimits::default()) {
        Ok(out) => panic!(
            "{} was accepted: {}",
            String::from_utf8_lossy(payload),
            String::from_utf8_lossy(&out.accepted)
        ),
        Err(e) => e,
    }
}

fn assert_rejects(payload: &[u8], code: u16, text: &str) {
    let e = reject(None, payload);
    assert_eq!(
        (e.code, e.message.as_str()),
        (code, text),
        "{}",
        String::from_utf8_lossy(payload)
    );
}

/// An update whose `reported` holds `levels` nested objects (counting `reported` itself):
/// `reported.1.2...(levels-1)` is an object whose key `"<levels>"` holds `value`.
fn nested(levels: usize, value: &str) -> String {
    let mut inner = value.to_owned();
    for i in (1..=levels).rev() {
        inner = format!(r#"{{"{i}":{inner}}}"#);
    }
    format!(r#"{{"state":{{"reported":{inner}}}}}"#)
}

#[test]
fn invalid_json() {
    for payload in [
        &b"{\"state\":"[..],
        b"",
        b"   ",
        b"{\"state\":{}} trailing",
        b"[1,2]",
        b"\"state\"",
        b"42",
        b"null",
    ] {
        assert_rejects(payload, 400, "Invalid JSON");
    }
}

#[test]
fn choice_null_inside_arrays_is_invalid_json() {
    // The doc says arrays cannot contain null but gives no text; we answer `Invalid JSON`.
    assert_rejects(
        br#"{"state":{"reported":{"a":[1,null]}}}"#,
        400,
        "Invalid JSON",
    );
    assert_rejects(
        br#"{"state":{"desired":{"a":[{"b":null}]}}}"#,
        400,
        "Invalid JSON",
    );
}

#[test]
fn missing_required_node_state() {
    assert_rejects(b"{}", 400, "Missing required node: state");
    let e = reject(None, br#"{"clientToken":"only-token"}"#);
    assert_eq!(
        (e.code, e.message.as_str(), e.client_token.as_deref()),
        (400, "Missing required node: state", Some("only-token"))
    );
    assert_rejects(
        br#"{"version":1,"desired":{"a":1}}"#,
        400,
        message::MISSING_STATE,
    );
}

#[test]
fn state_node_must_be_an_object() {
    for p in [
        &br#"{"state":1}"#[..],
        br#"{"state":"x"}"#,
        br#"{"state":[{}]}"#,
    ] {
        assert_rejects(p, 400, "State node must be an object");
    }
}

#[test]
fn desired_node_must_be_an_object() {
    for p in [
        &br#"{"state":{"desired":1}}"#[..],
        br#"{"state":{"desired":[1]}}"#,
    ] {
        assert_rejects(p, 400, "Desired node must be an object");
    }
}

#[test]
fn reported_node_must_be_an_object() {
    for p in [
        &br#"{"state":{"reported":true}}"#[..],
        br#"{"state":{"reported":"on"}}"#,
    ] {
        assert_rejects(p, 400, "Reported node must be an object");
    }
}

#[test]
fn invalid_version() {
    for p in [
        &br#"{"state":{},"version":-1}"#[..],
        br#"{"state":{},"version":1.5}"#,
        br#"{"state":{},"version":"3"}"#,
        br#"{"state":{},"version":[1]}"#,
        br#"{"state":{},"version":18446744073709551616}"#,
    ] {
        assert_rejects(p, 400, "Invalid version");
    }
}

#[test]
fn invalid_client_token() {
    let long = format!(r#"{{"state":{{}},"clientToken":"{}"}}"#, "t".repeat(65));
    let e = reject(None, long.as_bytes());
    assert_eq!((e.code, e.message.as_str()), (400, "Invalid clientToken"));
    // An invalid token is not echoed.
    assert_eq!(e.client_token, None);
    // 64 bytes of multi-byte characters is over the limit too: the limit is in bytes.
    let wide = format!(r#"{{"state":{{}},"clientToken":"{}"}}"#, "é".repeat(33));
    assert_rejects(wide.as_bytes(), 400, "Invalid clientToken");
    assert_rejects(
        br#"{"state":{},"clientToken":42}"#,
        400,
        "Invalid clientToken",
    );
}

#[test]
fn too_many_levels_of_nesting() {
    // Greengrass's rule: the section counts as level 1, leaves are not levels.
    // reported.1.2.3.4.5 holding a scalar passes; reported.1.2.3.4.5.6 fails.
    assert!(
        handle_update(
            None,
            nested(6, "1").as_bytes(),
            NOW,
            &ShadowLimits::default()
        )
        .is_ok()
    );
    assert_rejects(
        nested(7, "1").as_bytes(),
        400,
        "JSON contains too many levels of nesting; maximum is 6",
    );
    // Choice: an array is a level too.
    assert!(
        handle_update(
            None,
            nested(5, "[1]").as_bytes(),
            NOW,
            &ShadowLimits::default()
        )
        .is_ok()
    );
    assert_rejects(nested(6, "[1]").as_bytes(), 400, message::TOO_DEEP);
    // Deeper than serde_json's parser goes is still "too deep", not "Invalid JSON".
    let abyss = format!(
        r#"{{"state":{{"reported":{}1{}}}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    assert_rejects(abyss.as_bytes(), 400, message::TOO_DEEP);
    // A configured limit of 8 admits 8 levels.
    let eight = ShadowLimits {
        max_depth: 8,
        ..ShadowLimits::default()
    };
    assert!(handle_update(None, nested(8, "1").as_bytes(), NOW, &eight).is_ok());
    assert!(handle_update(None, nested(9, "1").as_bytes(), NOW, &eight).is_err());
}

#[test]
fn state_contains_an_invalid_node() {
    assert_rejects(
        br#"{"state":{"foo":{"a":1}}}"#,
        400,
        "State contains an invalid node",
    );
    // Choice (unconfirmed): a client-supplied delta is refused rather than dropped.
    assert_rejects(
        br#"{"state":{"reported":{"a":1},"delta":{"a":2}}}"#,
        400,
        "State contains an invalid node",
    );
}

#[test]
fn no_shadow_exists_with_name() {
    let classic = ShadowId::parse("MyThing", None).unwrap();
    let named = ShadowId::parse("MyThing", Some("Limits")).unwrap();
    let e = handle_get(&classic, None, Some("tok"), NOW).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (404, "No shadow exists with name: 'MyThing'")
    );
    assert_eq!(
        parse(&e.rejected_payload(NOW)),
        json!({
            "code": 404,
            "message": "No shadow exists with name: 'MyThing'",
            "clientToken": "tok",
            "timestamp": NOW
        })
    );
    let e = handle_get(&named, None, None, NOW).unwrap_err();
    assert_eq!(e.message, "No shadow exists with name: 'Limits'");
    let e = handle_delete(&named, None, None, None, NOW).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (404, "No shadow exists with name: 'Limits'")
    );
    assert_eq!(e.aws_error_type(), "ResourceNotFoundException");
}

#[test]
fn version_conflict() {
    let current = build(&[r#"{"state":{"reported":{"a":1}}}"#], NOW);
    let e = reject(
        current.as_ref(),
        br#"{"state":{"reported":{"a":2}},"version":7,"clientToken":"c"}"#,
    );
    assert_eq!(
        (e.code, e.message.as_str(), e.client_token.as_deref()),
        (409, "Version conflict", Some("c"))
    );
    assert_eq!(
        parse(&e.rejected_payload(NOW)),
        json!({"code": 409, "message": "Version conflict", "clientToken": "c", "timestamp": NOW})
    );
    let id = ShadowId::parse("t", None).unwrap();
    let e = handle_delete(&id, current.as_ref(), None, Some(2), NOW).unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (409, "Version conflict"));
    assert_eq!(e.aws_error_type(), "ConflictException");
}

#[test]
fn payload_exceeds_the_maximum_size() {
    // desired + reported together over 8 KiB.
    let half = "x".repeat(4100);
    let both = format!(r#"{{"state":{{"desired":{{"a":"{half}"}},"reported":{{"a":"{half}"}}}}}}"#);
    assert_rejects(
        both.as_bytes(),
        413,
        "The payload exceeds the maximum size allowed",
    );
    // Growth through a second update is caught too, and the token is echoed.
    let current = build(
        &[&format!(r#"{{"state":{{"desired":{{"a":"{half}"}}}}}}"#)],
        NOW,
    );
    let grow = format!(r#"{{"state":{{"reported":{{"b":"{half}"}}}},"clientToken":"g"}}"#);
    let e = reject(current.as_ref(), grow.as_bytes());
    assert_eq!((e.code, e.client_token.as_deref()), (413, Some("g")));
    // Exactly at the limit is fine: {"a":"<n>"} is n + 8 bytes.
    let exact = format!(
        r#"{{"state":{{"reported":{{"a":"{}"}}}}}}"#,
        "y".repeat(8192 - 8)
    );
    assert!(handle_update(None, exact.as_bytes(), NOW, &ShadowLimits::default()).is_ok());
    // A raw request over max_request_bytes is refused before parsing.
    let small = ShadowLimits {
        max_request_bytes: 16,
        ..ShadowLimits::default()
    };
    let e = handle_update(None, br#"{"state":{"reported":{}}}"#, NOW, &small).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (413, message::PAYLOAD_TOO_LARGE)
    );
    assert_eq!(e.aws_error_type(), "RequestEntityTooLargeException");
}

#[test]
fn unsupported_documented_encoding() {
    assert_rejects(
        b"{\"state\":{\"reported\":{\"a\":\"\xff\"}}}",
        415,
        "Unsupported documented encoding; supported encoding is UTF-8",
    );
}

#[test]
fn internal_service_failure_on_version_overflow() {
    let current = StoredShadow {
        version: u64::MAX,
        ..build(&[r#"{"state":{}}"#], NOW).unwrap()
    };
    let e = reject(Some(&current), br#"{"state":{}}"#);
    assert_eq!(
        (e.code, e.message.as_str()),
        (500, "Internal service failure")
    );
}

#[test]
fn fixed_texts_of_the_other_errors() {
    let cases = [
        (
            ShadowError::unauthorized(),
            401,
            "Unauthorized",
            "UnauthorizedException",
        ),
        (
            ShadowError::forbidden(),
            403,
            "Forbidden",
            "ForbiddenException",
        ),
        (
            ShadowError::thing_not_found(),
            404,
            "Thing not found",
            "ResourceNotFoundException",
        ),
        // Choice: AWS's 429 text is unconfirmed.
        (
            ShadowError::too_many_requests(),
            429,
            "Too many requests",
            "ThrottlingException",
        ),
        (
            ShadowError::internal(),
            500,
            "Internal service failure",
            "InternalFailureException",
        ),
        (
            ShadowError::invalid_json(),
            400,
            "Invalid JSON",
            "InvalidRequestException",
        ),
        (
            ShadowError::unsupported_encoding(),
            415,
            message::UNSUPPORTED_ENCODING,
            "UnsupportedDocumentEncodingException",
        ),
        (
            ShadowError::new(405, "x"),
            405,
            "x",
            "MethodNotAllowedException",
        ),
        (
            ShadowError::new(503, "x"),
            503,
            "x",
            "ServiceUnavailableException",
        ),
        (
            ShadowError::new(504, "x"),
            504,
            "x",
            "GatewayTimeoutException",
        ),
    ];
    for (e, code, text, aws) in cases {
        assert_eq!(e.code, code);
        assert_eq!(e.http_status(), code);
        assert_eq!(e.message, text);
        assert_eq!(e.aws_error_type(), aws);
    }
}

#[test]
fn rejected_payload_shape() {
    let e = ShadowError::missing_state();
    assert_eq!(
        String::from_utf8(e.rejected_payload(NOW)).unwrap(),
        format!(r#"{{"code":400,"message":"Missing required node: state","timestamp":{NOW}}}"#)
    );
    let e = e.with_client_token(Some("abc"));
    assert_eq!(
        String::from_utf8(e.rejected_payload(NOW)).unwrap(),
        format!(
            r#"{{"code":400,"message":"Missing required node: state","clientToken":"abc","timestamp":{NOW}}}"#
        )
    );
}

#[test]
fn http_error_body() {
    let e = ShadowError::no_shadow("t1");
    assert_eq!(
        parse(&e.http_body("trace-1")),
        json!({"message": "No shadow exists with name: 't1'", "traceId": "trace-1"})
    );
    assert_eq!(e.to_string(), "404 No shadow exists with name: 't1'");
}
