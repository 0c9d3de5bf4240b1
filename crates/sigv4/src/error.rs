//! The authentication errors a verifier reports, named as AWS names them.

/// Why a request failed SigV4 verification.
///
/// Each variant is one AWS error type, so a restJson server can put
/// [`aws_error_code`](Self::aws_error_code) in `x-amzn-ErrorType`,
/// [`message`](Self::message) in the `{"message": …}` body and answer with
/// [`http_status`](Self::http_status). Names, statuses and wording follow
/// `aws-iot-controlplane.md` §9.6; where the spec gives no wording, the
/// message imitates AWS's general style.
///
/// `InvalidSignatureException` covers several causes (a mismatch, a scope
/// for the wrong service, region or date, a timestamp outside the allowed
/// window, an expired presigned URL); they differ only in the message, as
/// they do on AWS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigV4Error {
    /// No `Authorization` header and no presigned `X-Amz-*` query
    /// parameters: the request carries no credentials at all.
    #[error("MissingAuthenticationTokenException: Missing Authentication Token")]
    MissingAuthenticationToken,

    /// The signature information is present but malformed or incomplete
    /// (an unknown algorithm, a missing `Credential`/`SignedHeaders`/`Signature`
    /// part, an unparsable date, `host` not signed, …).
    #[error("IncompleteSignatureException: {0}")]
    IncompleteSignature(String),

    /// The signature does not verify, or the credential scope or the
    /// request time is not acceptable.
    #[error("InvalidSignatureException: {0}")]
    InvalidSignature(String),

    /// The access key is unknown, or the session token sent with it does not
    /// belong to it (or is missing for temporary credentials).
    #[error("UnrecognizedClientException: {UNRECOGNIZED_CLIENT}")]
    UnrecognizedClient,

    /// The temporary credentials (session token) have expired.
    #[error("ExpiredTokenException: {EXPIRED_TOKEN}")]
    ExpiredToken,

    /// The `x-amz-content-sha256` header is neither `UNSIGNED-PAYLOAD` nor
    /// the SHA-256 of the body that arrived.
    #[error("XAmzContentSHA256Mismatch: {0}")]
    ContentSha256Mismatch(String),
}

pub(crate) const MISSING_TOKEN: &str = "Missing Authentication Token";
pub(crate) const UNRECOGNIZED_CLIENT: &str =
    "The security token included in the request is invalid.";
pub(crate) const EXPIRED_TOKEN: &str = "The security token included in the request is expired";
pub(crate) const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match \
     the signature you provided. Check your AWS Secret Access Key and signing method. Consult \
     the service documentation for details.";

impl SigV4Error {
    /// The AWS error type, for the `x-amzn-ErrorType` response header.
    #[must_use]
    pub fn aws_error_code(&self) -> &'static str {
        match self {
            Self::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            Self::IncompleteSignature(_) => "IncompleteSignatureException",
            Self::InvalidSignature(_) => "InvalidSignatureException",
            Self::UnrecognizedClient => "UnrecognizedClientException",
            Self::ExpiredToken => "ExpiredTokenException",
            Self::ContentSha256Mismatch(_) => "XAmzContentSHA256Mismatch",
        }
    }

    /// The HTTP status code to answer with.
    ///
    /// Every authentication failure is 403 (spec §9.6); only a body that
    /// does not match its declared hash is a 400 client error.
    #[must_use]
    pub fn http_status(&self) -> u16 {
        match self {
            Self::ContentSha256Mismatch(_) => 400,
            _ => 403,
        }
    }

    /// The human-readable message, for the `message` member of the body.
    #[must_use]
    pub fn message(&self) -> &str {
        match self {
            Self::MissingAuthenticationToken => MISSING_TOKEN,
            Self::UnrecognizedClient => UNRECOGNIZED_CLIENT,
            Self::ExpiredToken => EXPIRED_TOKEN,
            Self::IncompleteSignature(m)
            | Self::InvalidSignature(m)
            | Self::ContentSha256Mismatch(m) => m,
        }
    }

    pub(crate) fn incomplete(msg: impl Into<String>) -> Self {
        Self::IncompleteSignature(msg.into())
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidSignature(msg.into())
    }

    pub(crate) fn mismatch() -> Self {
        Self::InvalidSignature(SIGNATURE_MISMATCH.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_statuses_and_messages() {
        let all = [
            SigV4Error::MissingAuthenticationToken,
            SigV4Error::incomplete("x"),
            SigV4Error::mismatch(),
            SigV4Error::UnrecognizedClient,
            SigV4Error::ExpiredToken,
            SigV4Error::ContentSha256Mismatch("y".to_owned()),
        ];
        let codes: Vec<_> = all.iter().map(SigV4Error::aws_error_code).collect();
        assert_eq!(
            codes,
            [
                "MissingAuthenticationTokenException",
                "IncompleteSignatureException",
                "InvalidSignatureException",
                "UnrecognizedClientException",
                "ExpiredTokenException",
                "XAmzContentSHA256Mismatch",
            ]
        );
        let statuses: Vec<_> = all.iter().map(SigV4Error::http_status).collect();
        assert_eq!(statuses, [403, 403, 403, 403, 403, 400]);
        assert_eq!(all[0].message(), "Missing Authentication Token");
        assert!(
            all[2]
                .message()
                .starts_with("The request signature we calculated")
        );
        assert_eq!(
            all[3].to_string(),
            "UnrecognizedClientException: The security token included in the request is invalid."
        );
    }
}
