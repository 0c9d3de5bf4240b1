//! Server-side verification of AWS Signature Version 4.
//!
//! This crate lets thingd accept requests signed by the AWS CLI, boto3 and
//! the AWS SDKs: the `iot` control plane and the `iot-data` plane (the
//! `Authorization` header form), and presigned MQTT-over-WebSocket URLs (the
//! query-string form, service `iotdevicegateway`). It follows
//! `aws-iot-controlplane.md` §9 and is built on aws-lc-rs HMAC-SHA256 with
//! constant-time comparison.
//!
//! It **owns**: parsing the `Authorization` header and the presigned
//! `X-Amz-*` parameters; canonicalisation (double-encoded path with dot
//! segments removed, decoded/re-encoded/sorted query, trimmed and folded
//! header values, payload hash); the credential-scope, clock-skew,
//! presigned-expiry and session-token checks; the derived-key cache; and the
//! AWS error names, statuses and messages for every failure.
//!
//! It does **not**: do I/O or read bodies (the caller passes the body bytes
//! or their hash); store credentials (the caller implements
//! [`CredentialStore`]); decide what a verified caller may do (policy
//! evaluation is elsewhere); render HTTP error responses (the caller uses
//! [`SigV4Error::aws_error_code`], [`SigV4Error::http_status`] and
//! [`SigV4Error::message`]); sign requests; or support SigV4a, S3's
//! single-encoded paths or S3 chunked (`STREAMING-…`) payloads.
//!
//! ```
//! use std::collections::HashMap;
//! use std::time::{Duration, UNIX_EPOCH};
//! use thingd_sigv4::{Payload, Secret, Verifier, VerifyRequest};
//!
//! let mut creds = HashMap::new();
//! creds.insert(
//!     "AKIDEXAMPLE".to_owned(),
//!     Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
//! );
//! // botocore's describe_endpoint(endpointType='iot:Data-ATS') at 2025-01-02T03:04:05Z.
//! let req = VerifyRequest::new("GET", "/endpoint", "endpointType=iot%3AData-ATS", Payload::Bytes(b""))
//!     .header("Host", "localhost:8080")
//!     .header("X-Amz-Date", "20250102T030405Z")
//!     .header(
//!         "Authorization",
//!         "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250102/us-east-1/iot/aws4_request, \
//!          SignedHeaders=host;x-amz-date, \
//!          Signature=b184634f78795432ae8c9223a9b174e79b34efd34a7079c89635498cb0cb3437",
//!     );
//! let now = UNIX_EPOCH + Duration::from_secs(1_735_787_045);
//! let who = Verifier::control_plane().verify(&req, now, &creds).unwrap();
//! assert_eq!(who.access_key_id, "AKIDEXAMPLE");
//! assert_eq!(who.region, "us-east-1");
//! ```
//!
//! # Layout
//! - [`error`](SigV4Error): the error enum, one variant per AWS error type.
//! - `credentials`: [`Secret`] and the [`CredentialStore`] lookup trait.
//! - `request`: [`VerifyRequest`] (the borrowed request view, also built
//!   from `http` request parts) and [`Payload`].
//! - `canonical`: path, query and header canonicalisation, SHA-256 hex.
//! - `parse`: the `Authorization` header, credential scope and timestamps.
//! - `verifier`: [`Verifier`], [`VerifiedIdentity`], the checks, the
//!   string to sign and the signing-key cache.

#![warn(missing_docs)]

mod canonical;
mod credentials;
mod error;
mod parse;
mod request;
mod verifier;

pub use credentials::{CredentialStore, Secret};
pub use error::SigV4Error;
pub use request::{Payload, VerifyRequest};
pub use verifier::{SignatureLocation, UNSIGNED_PAYLOAD, VerifiedIdentity, Verifier};
