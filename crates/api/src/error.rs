//! AWS error shapes. Every failure leaves as a JSON body `{"message": ...}` (plus
//! `resourceId`/`resourceArn` where the model has them) with the shape name in
//! `x-amzn-ErrorType` and the status code the `iot` model gives that shape.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use thingd_store::StoreError;

/// An error as an AWS client sees it.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The error shape name, e.g. `ResourceNotFoundException`.
    pub code: &'static str,
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// `resourceId` member (ResourceAlreadyExistsException, ConflictException).
    pub resource_id: Option<String>,
    /// `resourceArn` member (ResourceAlreadyExistsException).
    pub resource_arn: Option<String>,
}

impl ApiError {
    fn new(code: &'static str, status: u16, message: impl Into<String>) -> Self {
        ApiError {
            code,
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: message.into(),
            resource_id: None,
            resource_arn: None,
        }
    }

    /// 400 InvalidRequestException (also used for validation failures).
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new("InvalidRequestException", 400, message)
    }
    /// 404 ResourceNotFoundException.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new("ResourceNotFoundException", 404, message)
    }
    /// 409 ResourceAlreadyExistsException with the existing resource's id and ARN.
    pub fn already_exists(
        message: impl Into<String>,
        id: impl Into<String>,
        arn: impl Into<String>,
    ) -> Self {
        let mut e = Self::new("ResourceAlreadyExistsException", 409, message);
        e.resource_id = Some(id.into());
        e.resource_arn = Some(arn.into());
        e
    }
    /// 409 DeleteConflictException.
    pub fn delete_conflict(message: impl Into<String>) -> Self {
        Self::new("DeleteConflictException", 409, message)
    }
    /// 406 CertificateStateException.
    pub fn certificate_state(message: impl Into<String>) -> Self {
        Self::new("CertificateStateException", 406, message)
    }
    /// 400 CertificateValidationException.
    pub fn certificate_validation(message: impl Into<String>) -> Self {
        Self::new("CertificateValidationException", 400, message)
    }
    /// 409 VersionConflictException.
    pub fn version_conflict(message: impl Into<String>) -> Self {
        Self::new("VersionConflictException", 409, message)
    }
    /// 409 VersionsLimitExceededException.
    pub fn versions_limit_exceeded(message: impl Into<String>) -> Self {
        Self::new("VersionsLimitExceededException", 409, message)
    }
    /// 410 LimitExceededException (SDKs retry it as throttling: use only for real limits).
    pub fn limit_exceeded(message: impl Into<String>) -> Self {
        Self::new("LimitExceededException", 410, message)
    }
    /// 400 MalformedPolicyException.
    pub fn malformed_policy(message: impl Into<String>) -> Self {
        Self::new("MalformedPolicyException", 400, message)
    }
    /// 400 RegistrationCodeValidationException.
    pub fn registration_code_validation(message: impl Into<String>) -> Self {
        Self::new("RegistrationCodeValidationException", 400, message)
    }
    /// 400 ResourceRegistrationFailureException.
    pub fn registration_failure(message: impl Into<String>) -> Self {
        Self::new("ResourceRegistrationFailureException", 400, message)
    }
    /// 401 UnauthorizedException.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new("UnauthorizedException", 401, message)
    }
    /// 500 InternalFailureException; the cause is logged, not sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal failure in the API");
        Self::new("InternalFailureException", 500, "Internal failure")
    }
    /// An authentication failure from the SigV4 verifier.
    pub fn from_sigv4(error: &thingd_sigv4::SigV4Error) -> Self {
        Self::new(error.aws_error_code(), error.http_status(), error.message())
    }
    /// Any other shape, by name and status.
    pub fn other(code: &'static str, status: u16, message: impl Into<String>) -> Self {
        Self::new(code, status, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::AlreadyExists(what) => {
                ApiError::other("ResourceAlreadyExistsException", 409, what)
            }
            StoreError::Rejected {
                code,
                message,
                resource_id,
            } => {
                let mut e = ApiError::other(code, status_of(code), message);
                e.resource_id = resource_id;
                e
            }
            other => ApiError::internal(other),
        }
    }
}

/// The HTTP status the `iot` model gives an error shape (400 for shapes not listed).
pub(crate) fn status_of(code: &str) -> u16 {
    match code {
        "ResourceNotFoundException" | "NotConfiguredException" => 404,
        "UnauthorizedException" => 401,
        "CertificateStateException" => 406,
        "ResourceAlreadyExistsException"
        | "DeleteConflictException"
        | "VersionConflictException"
        | "VersionsLimitExceededException"
        | "ConflictingResourceUpdateException"
        | "CertificateConflictException"
        | "ConflictException" => 409,
        "LimitExceededException" => 410,
        "InternalFailureException" => 500,
        "ServiceUnavailableException" => 503,
        _ => 400,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("message".to_owned(), self.message.into());
        if let Some(id) = self.resource_id {
            body.insert("resourceId".to_owned(), id.into());
        }
        if let Some(arn) = self.resource_arn {
            body.insert("resourceArn".to_owned(), arn.into());
        }
        let mut response =
            (self.status, axum::Json(serde_json::Value::Object(body))).into_response();
        response
            .headers_mut()
            .insert("x-amzn-ErrorType", HeaderValue::from_static(self.code));
        response
    }
}
