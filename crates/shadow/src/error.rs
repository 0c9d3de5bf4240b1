//! Shadow errors: the MQTT `.../rejected` document and the `iot-data` HTTP error shape.

use serde_json::{Map, Value};

/// The exact error texts the shadow service answers with (spec section 6.9).
pub mod message {
    /// 400: the payload is not JSON, its root is not an object, or an array holds `null`.
    pub const INVALID_JSON: &str = "Invalid JSON";
    /// 400: an update without a `state` node.
    pub const MISSING_STATE: &str = "Missing required node: state";
    /// 400: `state` is neither an object nor `null`.
    pub const STATE_NOT_OBJECT: &str = "State node must be an object";
    /// 400: `state.desired` is neither an object nor `null`.
    pub const DESIRED_NOT_OBJECT: &str = "Desired node must be an object";
    /// 400: `state.reported` is neither an object nor `null`.
    pub const REPORTED_NOT_OBJECT: &str = "Reported node must be an object";
    /// 400: `version` is not a non-negative integer.
    pub const INVALID_VERSION: &str = "Invalid version";
    /// 400: `clientToken` is not a string or is longer than 64 bytes.
    pub const INVALID_CLIENT_TOKEN: &str = "Invalid clientToken";
    /// 400: `desired` or `reported` nests deeper than the limit (the text names 6).
    pub const TOO_DEEP: &str = "JSON contains too many levels of nesting; maximum is 6";
    /// 400: `state` holds a key other than `desired` and `reported`.
    pub const INVALID_STATE_NODE: &str = "State contains an invalid node";
    /// 401
    pub const UNAUTHORIZED: &str = "Unauthorized";
    /// 403
    pub const FORBIDDEN: &str = "Forbidden";
    /// 404, for paths that require a registry thing (none in this crate).
    pub const THING_NOT_FOUND: &str = "Thing not found";
    /// 404 prefix; the full text is `No shadow exists with name: '<name>'`.
    pub const NO_SHADOW_PREFIX: &str = "No shadow exists with name: ";
    /// 409: the request's `version` is not the current version.
    pub const VERSION_CONFLICT: &str = "Version conflict";
    /// 413: the document (or the request) is larger than allowed.
    pub const PAYLOAD_TOO_LARGE: &str = "The payload exceeds the maximum size allowed";
    /// 415: the payload is not UTF-8 (the "documented" typo is AWS's).
    pub const UNSUPPORTED_ENCODING: &str =
        "Unsupported documented encoding; supported encoding is UTF-8";
    /// 429: too many requests in flight. AWS's exact text is unconfirmed; this is our choice.
    pub const TOO_MANY_REQUESTS: &str = "Too many requests";
    /// 500
    pub const INTERNAL: &str = "Internal service failure";
}

/// A refused shadow request: an HTTP-style status code, AWS's message text, and the
/// `clientToken` of the request when it was read successfully (so the rejection can echo it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {message}")]
pub struct ShadowError {
    /// HTTP status code, also the `code` of the MQTT rejected document.
    pub code: u16,
    /// The exact message text.
    pub message: String,
    /// The request's `clientToken`, echoed in the rejected document.
    pub client_token: Option<String>,
}

impl ShadowError {
    /// An error with `code` and `message` and no client token.
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            client_token: None,
        }
    }

    /// The same error, echoing `client_token`.
    #[must_use]
    pub fn with_client_token(mut self, client_token: Option<&str>) -> Self {
        self.client_token = client_token.map(str::to_owned);
        self
    }

    /// 400 `Invalid JSON`.
    pub fn invalid_json() -> Self {
        Self::new(400, message::INVALID_JSON)
    }
    /// 400 `Missing required node: state`.
    pub fn missing_state() -> Self {
        Self::new(400, message::MISSING_STATE)
    }
    /// 400 `State node must be an object`.
    pub fn state_not_object() -> Self {
        Self::new(400, message::STATE_NOT_OBJECT)
    }
    /// 400 `Desired node must be an object`.
    pub fn desired_not_object() -> Self {
        Self::new(400, message::DESIRED_NOT_OBJECT)
    }
    /// 400 `Reported node must be an object`.
    pub fn reported_not_object() -> Self {
        Self::new(400, message::REPORTED_NOT_OBJECT)
    }
    /// 400 `Invalid version`.
    pub fn invalid_version() -> Self {
        Self::new(400, message::INVALID_VERSION)
    }
    /// 400 `Invalid clientToken`.
    pub fn invalid_client_token() -> Self {
        Self::new(400, message::INVALID_CLIENT_TOKEN)
    }
    /// 400 `JSON contains too many levels of nesting; maximum is 6`.
    pub fn too_deep() -> Self {
        Self::new(400, message::TOO_DEEP)
    }
    /// 400 `State contains an invalid node`.
    pub fn invalid_state_node() -> Self {
        Self::new(400, message::INVALID_STATE_NODE)
    }
    /// 401 `Unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(401, message::UNAUTHORIZED)
    }
    /// 403 `Forbidden`.
    pub fn forbidden() -> Self {
        Self::new(403, message::FORBIDDEN)
    }
    /// 404 `Thing not found`.
    pub fn thing_not_found() -> Self {
        Self::new(404, message::THING_NOT_FOUND)
    }
    /// 404 `No shadow exists with name: '<name>'`; see
    /// [`ShadowId::not_found_name`](crate::ShadowId::not_found_name) for which name.
    pub fn no_shadow(name: &str) -> Self {
        Self::new(404, format!("{}'{name}'", message::NO_SHADOW_PREFIX))
    }
    /// 409 `Version conflict`.
    pub fn version_conflict() -> Self {
        Self::new(409, message::VERSION_CONFLICT)
    }
    /// 413 `The payload exceeds the maximum size allowed`.
    pub fn payload_too_large() -> Self {
        Self::new(413, message::PAYLOAD_TOO_LARGE)
    }
    /// 415 `Unsupported documented encoding; supported encoding is UTF-8`.
    pub fn unsupported_encoding() -> Self {
        Self::new(415, message::UNSUPPORTED_ENCODING)
    }
    /// 429 `Too many requests`.
    pub fn too_many_requests() -> Self {
        Self::new(429, message::TOO_MANY_REQUESTS)
    }
    /// 500 `Internal service failure`.
    pub fn internal() -> Self {
        Self::new(500, message::INTERNAL)
    }

    /// The MQTT `.../rejected` payload:
    /// `{"code":..,"message":..,"clientToken":..?,"timestamp":..}`.
    ///
    /// `timestamp` is always sent (the SDKs read it as optional; AWS sometimes omits it).
    pub fn rejected_payload(&self, now_epoch_secs: i64) -> Vec<u8> {
        let mut body = Map::new();
        body.insert("code".to_owned(), Value::from(self.code));
        body.insert("message".to_owned(), Value::from(self.message.as_str()));
        if let Some(token) = &self.client_token {
            body.insert("clientToken".to_owned(), Value::from(token.as_str()));
        }
        body.insert("timestamp".to_owned(), Value::from(now_epoch_secs));
        crate::to_json_bytes(&Value::Object(body))
    }

    /// The HTTP status the `iot-data` API answers with (the same number as `code`).
    pub fn http_status(&self) -> u16 {
        self.code
    }

    /// The `iot-data` exception name for `x-amzn-ErrorType` (section 7.3).
    pub fn aws_error_type(&self) -> &'static str {
        match self.code {
            400 => "InvalidRequestException",
            401 => "UnauthorizedException",
            403 => "ForbiddenException",
            404 => "ResourceNotFoundException",
            405 => "MethodNotAllowedException",
            409 => "ConflictException",
            413 => "RequestEntityTooLargeException",
            415 => "UnsupportedDocumentEncodingException",
            429 => "ThrottlingException",
            503 => "ServiceUnavailableException",
            504 => "GatewayTimeoutException",
            _ => "InternalFailureException",
        }
    }

    /// The `iot-data` HTTP error body: `{"message":..,"traceId":..}` (the exception name goes
    /// in the `x-amzn-ErrorType` header, see [`ShadowError::aws_error_type`]).
    pub fn http_body(&self, trace_id: &str) -> Vec<u8> {
        let mut body = Map::new();
        body.insert("message".to_owned(), Value::from(self.message.as_str()));
        body.insert("traceId".to_owned(), Value::from(trace_id));
        crate::to_json_bytes(&Value::Object(body))
    }
}
