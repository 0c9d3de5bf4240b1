//! The AWS IoT Device Shadow service, sans IO.
//!
//! Owns: the shadow name rules (thing 1–128 `[a-zA-Z0-9:_-]`, shadow 1–64 `[$a-zA-Z0-9:_-]`),
//! the `$aws/things/<T>/shadow[/name/<S>]/...` topic grammar and its response-topic builders,
//! the stored document model (`desired`/`reported` state, per-leaf metadata timestamps,
//! version, delete tombstone), and the get/update/delete operations as pure functions of
//! (stored shadow, request payload, clock, limits): merge (`null` deletes, objects merge,
//! arrays replace), metadata, delta, optimistic locking, `clientToken` echo, the exact error
//! texts of the `.../rejected` documents, and their `iot-data` HTTP mapping (status,
//! `x-amzn-ErrorType`, body).
//!
//! Does not own: MQTT (subscribing to [`REQUEST_FILTERS`] and publishing the payloads is the
//! caller's job, through the broker's in-process client), storage (the caller persists the
//! [`StoredShadow`] bytes, with a version check, before publishing), authorization, rate
//! limits and in-flight counting (429), ListNamedShadowsForThing paging, HTTP routing. No
//! tokio, no I/O, no clock: time comes in as epoch seconds. No panics on any input.
//!
//! The one exception is [`service`]: the running service that attaches these functions to
//! the broker (in-process clients) and the store, and offers the same operations to the
//! `iot-data` HTTP API. It is the only module that touches tokio, the broker or the store.
//!
//! Choices where the spec is unconfirmed (each is named by a test in `tests/semantics.rs` or
//! `tests/errors.rs`):
//! an update with a `version` for a shadow that does not exist must name 0 (or the deleted
//! shadow's version within 48 h), else 409; `state.delta` and any other key under `state`
//! give 400 `State contains an invalid node`; unknown top-level fields are ignored; `null`
//! inside an array gives 400 `Invalid JSON`; arrays count as nesting levels; an explicit `{}`
//! creates nothing; a no-op update still bumps the version; `update/delta` is re-published
//! only when the update concerned the delta; rejected documents always carry `timestamp`; 429
//! says `Too many requests`.
//!
//! # Layout
//! - `name`: [`ThingName`], [`ShadowName`], [`ShadowId`], [`NameError`].
//! - `topic`: [`parse_shadow_topic`], [`ShadowTopic`], [`Operation`], [`Suffix`],
//!   [`shadow_topic`], [`REQUEST_FILTERS`].
//! - `document`: [`StoredShadow`] (with `to_bytes`/`from_bytes`), [`Sections`],
//!   [`ShadowLimits`].
//! - `request`: [`RequestOptions`] (token and version of get/delete); the update request
//!   parser (private).
//! - `ops`: [`handle_update`], [`update_in_place`] (with [`Documents`]), [`handle_get`],
//!   [`handle_delete`], [`UpdateOutcome`], [`DeleteOutcome`].
//! - `error`: [`ShadowError`] and the [`message`] texts.
//! - `json` (private): merge, metadata mirror, delta, numeric equality, depth.
//! - [`service`]: [`service::ShadowService`], per-shadow ordering, commit-then-publish,
//!   the per-thing in-flight limit.

mod document;
mod error;
mod json;
mod name;
mod ops;
mod request;
pub mod service;
mod topic;

pub use document::{Sections, ShadowLimits, StoredShadow};
pub use error::{ShadowError, message};
pub use name::{
    MAX_SHADOW_NAME_LEN, MAX_THING_NAME_LEN, NameError, ShadowId, ShadowName, ThingName,
};
pub use ops::{
    DeleteOutcome, Documents, UpdateOutcome, UpdatePayloads, handle_delete, handle_get,
    handle_update, update_in_place,
};
pub use request::RequestOptions;
pub use topic::{
    Operation, REQUEST_FILTERS, ShadowTopic, Suffix, parse_shadow_topic, shadow_topic,
};

/// Compact JSON bytes of a payload view (string-keyed maps of JSON values and numbers:
/// serializing cannot fail).
fn to_json_vec(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Appends the compact JSON of a payload part to `out` (cannot fail, as above).
fn write_json(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    let _ = serde_json::to_writer(out, value);
}

/// Compact JSON bytes of `value` (serializing a `Value` cannot fail).
fn to_json_bytes(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}
