//! The HTTP surface of thingd: the AWS IoT control plane (`iot`, restJson1) that the AWS CLI,
//! boto3 and the AWS SDKs call when pointed at thingd with an endpoint URL.
//!
//! Owns: routing (on the raw, still percent-encoded path, so `%2F` inside an ARN stays inside
//! its path label), SigV4 verification of every request, the restJson1 wire rules (JSON
//! bodies, epoch-second timestamps, both pagination styles), request validation with AWS's
//! messages, and mapping errors to AWS error shapes (`x-amzn-ErrorType` + `{"message"}`).
//! Handlers are thin: they validate, call the store's registry operations, and shape the
//! response. Does not own: storage (`thingd-store`), certificate issuing (`thingd-auth`),
//! policy evaluation (`thingd-policy`), or listeners (`thingd-net`).
//!
//! # Layout
//! - `state`: `ApiState`, what every handler can reach.
//! - `error`: `ApiError`, the AWS error shapes and their HTTP status codes.
//! - `sigv4`: the middleware that verifies signatures; `access_keys`: the admin key and the
//!   credentials file written on first start.
//! - `wire`: JSON bodies, timestamps, pagination, name validation, ARNs.
//! - one module per resource family: `things`, `thing_types`, `thing_groups`, `tags`,
//!   `certificates`, `ca_certificates`, `policies`, `principals`, `endpoint`.

pub mod access_keys;
mod ca_certificates;
pub mod cert_auth;
mod certificates;
pub mod data_plane;
mod endpoint;
mod error;
mod policies;
mod principals;
mod sigv4;
mod state;
mod tags;
#[cfg(test)]
mod test_support;
mod thing_groups;
mod thing_types;
mod things;
pub mod wire;

pub use error::ApiError;
pub use state::ApiState;

use std::sync::Arc;

use axum::Router;

/// The control-plane router: every `iot` operation, behind SigV4 verification.
pub fn control_plane(state: Arc<ApiState>) -> Router {
    let routes: Router<Arc<ApiState>> = Router::new()
        .merge(things::routes())
        .merge(thing_types::routes())
        .merge(thing_groups::routes())
        .merge(tags::routes())
        .merge(endpoint::routes())
        .merge(certificates::routes())
        .merge(ca_certificates::routes())
        .merge(policies::routes())
        .merge(principals::routes());
    routes
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            sigv4::require_signature,
        ))
        .layer(axum::middleware::from_fn(sigv4::response_headers))
        .with_state(state)
}
