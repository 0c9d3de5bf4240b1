//! Every control-plane request must carry a valid SigV4 signature from a known access key.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use thingd_sigv4::{Payload, VerifyRequest};

use crate::{ApiError, ApiState};

/// Largest request body accepted (the biggest `iot` inputs are certificates and policies).
const MAX_BODY: usize = 1024 * 1024;

/// Verifies the request's signature, then passes it on with the `VerifiedIdentity` as an
/// extension. The body is read here (the signature covers its hash) and handed on intact.
pub(crate) async fn require_signature(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return ApiError::invalid_request(format!("request body larger than {MAX_BODY} bytes"))
                .into_response();
        }
    };
    let verified = verify(&state.verifier, &state.credentials, &parts, &bytes);
    match verified {
        Ok(identity) => {
            parts.extensions.insert(identity);
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(error) => {
            tracing::debug!(%error, path = %parts.uri.path(), "request refused: bad signature");
            ApiError::from_sigv4(&error).into_response()
        }
    }
}

/// Checks the signature of a request whose body has been read, against `credentials`.
pub(crate) fn verify(
    verifier: &thingd_sigv4::Verifier,
    credentials: &parking_lot::RwLock<std::collections::HashMap<String, thingd_sigv4::Secret>>,
    parts: &axum::http::request::Parts,
    body: &[u8],
) -> Result<thingd_sigv4::VerifiedIdentity, thingd_sigv4::SigV4Error> {
    let request = VerifyRequest::from_http_parts(parts, Payload::Bytes(body));
    let credentials = credentials.read();
    verifier.verify(&request, SystemTime::now(), &*credentials)
}

/// Adds `x-amzn-RequestId` and `Date` to every response (SDKs use `Date` to correct their
/// clock after a skew error).
pub(crate) async fn response_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        headers.insert("x-amzn-RequestId", id);
    }
    if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())) {
        headers.insert(axum::http::header::DATE, date);
    }
    response
}
