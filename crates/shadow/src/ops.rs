//! The three shadow operations as pure functions of (stored shadow, request, clock).

use serde_json::{Map, Value};

use serde::Serialize;

use crate::document::{ShadowLimits, StoredShadow};
use crate::error::ShadowError;
use crate::json;
use crate::name::ShadowId;
use crate::request::{SectionPatch, UpdateRequest};

/// What an accepted update produces: the shadow to persist and the payloads to publish.
///
/// Persist `shadow` (with `UPDATE ... WHERE version = <previous>` or equivalent) before
/// publishing anything; then publish `accepted`, `delta` (if any) and `documents` to
/// `update/accepted`, `update/delta` and `update/documents`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateOutcome {
    /// The new stored shadow.
    pub shadow: StoredShadow,
    /// `update/accepted`: the request's state as sent, metadata for the written leaves,
    /// `version`, `timestamp`, `clientToken` if sent. Also the HTTP UpdateThingShadow body.
    pub accepted: Vec<u8>,
    /// `update/delta`, when the delta is non-empty and this update concerned it (see
    /// [`handle_update`]).
    pub delta: Option<Vec<u8>>,
    /// `update/documents`: `previous` (absent when the shadow did not exist), `current`,
    /// `timestamp`, `clientToken` if sent.
    pub documents: Vec<u8>,
    /// The request's `clientToken`, if it sent one.
    pub client_token: Option<String>,
}

/// What an accepted delete produces.
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteOutcome {
    /// The tombstone to persist in place of the shadow: empty state, same version,
    /// `deleted_at` = now.
    pub tombstone: StoredShadow,
    /// `delete/accepted`: `{"version":..,"timestamp":..,"clientToken":..?}`. Without a token
    /// it is also the HTTP DeleteThingShadow body.
    pub accepted: Vec<u8>,
}

fn object(entries: Vec<(&str, Value)>) -> Map<String, Value> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn put_token(out: &mut Map<String, Value>, client_token: Option<&str>) {
    if let Some(token) = client_token {
        out.insert("clientToken".to_owned(), Value::from(token));
    }
}

fn live(current: Option<&StoredShadow>) -> Option<&StoredShadow> {
    current.filter(|s| !s.is_deleted())
}

fn apply_section(
    state: &mut Map<String, Value>,
    meta: &mut Map<String, Value>,
    patch: &SectionPatch,
    now: i64,
) {
    match patch {
        SectionPatch::Keep => {}
        SectionPatch::Clear => {
            state.clear();
            meta.clear();
        }
        SectionPatch::Merge(p) => json::merge(state, meta, p, now),
    }
}

fn section_touches(delta: &Map<String, Value>, patch: &SectionPatch) -> bool {
    match patch {
        SectionPatch::Keep => false,
        SectionPatch::Clear => true,
        SectionPatch::Merge(p) => json::touches(delta, p),
    }
}

/// Applies an update request (the raw payload of `<P>/update` or of HTTP UpdateThingShadow)
/// to `current` (the stored shadow or tombstone, `None` if there is none).
///
/// Validation, in order: request size (413), UTF-8 (415), JSON (400 `Invalid JSON`; also for
/// a non-object root and for `null` inside arrays), `clientToken` (400), `version` (400),
/// `state` presence and shape (400), nesting depth (400), then the version lock (409
/// `Version conflict`: a `version` must equal the current version, where a shadow that does
/// not exist has version 0, or the version of its tombstone within the retention window), and
/// the size of the resulting document (413). Unknown top-level fields are ignored.
///
/// Semantics: `null` removes a key and its metadata, objects merge recursively, arrays and
/// scalars replace whole (also across type changes), objects left empty disappear, a `null`
/// section clears it, `"state": null` clears both; every accepted update bumps the version,
/// even if nothing changed. Written leaves get `{"timestamp": now}`.
///
/// The delta is published when the resulting delta is non-empty and this update concerned
/// it: the delta changed, or the request wrote (in `desired` or `reported`) a path inside the
/// delta, or cleared a whole section. A `reported` write that leaves an unrelated pending
/// delta untouched does not re-publish it.
pub fn handle_update(
    current: Option<&StoredShadow>,
    request_payload: &[u8],
    now_epoch_secs: i64,
    limits: &ShadowLimits,
) -> Result<UpdateOutcome, ShadowError> {
    let mut document = current.cloned();
    let payloads = update_in_place(
        &mut document,
        request_payload,
        now_epoch_secs,
        limits,
        Documents::Build,
    )?;
    Ok(UpdateOutcome {
        shadow: document.unwrap_or_else(|| StoredShadow::empty(0)),
        accepted: payloads.accepted,
        delta: payloads.delta,
        documents: payloads.documents.unwrap_or_default(),
        client_token: payloads.client_token,
    })
}

/// The payloads of an accepted update (see [`UpdateOutcome`], whose fields they are).
#[derive(Debug, Clone, PartialEq)]
pub struct UpdatePayloads {
    /// `update/accepted`.
    pub accepted: Vec<u8>,
    /// `update/delta`, when it is published.
    pub delta: Option<Vec<u8>>,
    /// `update/documents`, unless [`Documents::Skip`] was asked for.
    pub documents: Option<Vec<u8>>,
    /// The request's `clientToken`, if it sent one.
    pub client_token: Option<String>,
}

/// Whether [`update_in_place`] writes the `update/documents` payload. It holds the whole
/// document twice (before and after), so it is the largest answer to build, and devices
/// rarely subscribe to it: a caller that knows nobody listens asks to skip it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Documents {
    /// Build it (someone subscribes to it, or the caller returns it).
    Build,
    /// Leave it out: [`UpdatePayloads::documents`] is `None`.
    Skip,
}

/// [`handle_update`] without copying the document: an accepted update leaves the new shadow
/// in `current` (`Some`); a refused one leaves `current` as it was.
///
/// The merge runs in place when the result cannot exceed the size limit (the current size
/// plus twice the request's length stays within it); otherwise on a copy, which replaces
/// `current` only if it passes the size check.
pub fn update_in_place(
    current: &mut Option<StoredShadow>,
    request_payload: &[u8],
    now_epoch_secs: i64,
    limits: &ShadowLimits,
    documents: Documents,
) -> Result<UpdatePayloads, ShadowError> {
    let request = UpdateRequest::parse(request_payload, limits)?;
    let token = request.client_token.as_deref();
    let base_version = StoredShadow::base_version(current.as_ref(), now_epoch_secs, limits);
    if request.version.is_some_and(|v| v != base_version) {
        return Err(ShadowError::version_conflict().with_client_token(token));
    }
    let new_version = base_version
        .checked_add(1)
        .ok_or_else(|| ShadowError::internal().with_client_token(token))?;

    // What is needed of the previous document, taken before it changes.
    let previous = live(current.as_ref());
    let old_delta = previous.map(StoredShadow::delta).unwrap_or_default();
    // update/documents, begun: {"previous"?, ...
    let mut documents = (documents == Documents::Build).then(|| {
        let size = previous.map_or(0, StoredShadow::document_size);
        let mut out = Vec::with_capacity(256 + 4 * size + 2 * request_payload.len());
        out.push(b'{');
        if let Some(prev) = previous {
            out.extend_from_slice(b"\"previous\":");
            crate::write_json(&mut out, &prev.document_view());
            out.push(b',');
        }
        out
    });
    let old_size = previous.map_or(0, StoredShadow::document_size);
    let in_place = old_size + 2 * request_payload.len() <= limits.max_document_bytes;

    let mut copy: Option<StoredShadow> = None;
    let shadow: &mut StoredShadow = if in_place {
        if previous.is_none() {
            *current = Some(StoredShadow::empty(0));
        }
        current.get_or_insert_with(|| StoredShadow::empty(0))
    } else {
        copy.insert(previous.cloned().unwrap_or_else(|| StoredShadow::empty(0)))
    };
    apply_section(
        &mut shadow.state.desired,
        &mut shadow.metadata.desired,
        &request.desired,
        now_epoch_secs,
    );
    apply_section(
        &mut shadow.state.reported,
        &mut shadow.metadata.reported,
        &request.reported,
        now_epoch_secs,
    );
    shadow.version = new_version;
    if shadow.document_size() > limits.max_document_bytes {
        // Only reachable on the copy: `current` is untouched.
        return Err(ShadowError::payload_too_large().with_client_token(token));
    }

    // update/accepted
    let accepted = crate::to_json_vec(&AcceptedView {
        client_token: token,
        state: &request.state,
        metadata: request.state.is_object().then_some(json::MetadataView {
            value: &request.state,
            now: now_epoch_secs,
        }),
        timestamp: now_epoch_secs,
        version: new_version,
    });

    // update/delta
    let new_delta = shadow.delta();
    let concerned = new_delta != old_delta
        || section_touches(&new_delta, &request.desired)
        || section_touches(&new_delta, &request.reported);
    let delta = (!new_delta.is_empty() && concerned).then(|| {
        let metadata = json::delta_metadata(&new_delta, &shadow.metadata.desired);
        let mut out = object(vec![
            ("state", Value::Object(new_delta)),
            ("metadata", Value::Object(metadata)),
            ("timestamp", Value::from(now_epoch_secs)),
            ("version", Value::from(new_version)),
        ]);
        put_token(&mut out, token);
        crate::to_json_bytes(&Value::Object(out))
    });

    // update/documents, finished: ..., "current", "timestamp", "clientToken"?}
    if let Some(out) = &mut documents {
        out.extend_from_slice(b"\"current\":");
        crate::write_json(out, &shadow.document_view());
        out.extend_from_slice(b",\"timestamp\":");
        crate::write_json(out, &now_epoch_secs);
        if let Some(token) = token {
            out.extend_from_slice(b",\"clientToken\":");
            crate::write_json(out, &token);
        }
        out.push(b'}');
    }

    if let Some(copy) = copy {
        *current = Some(copy);
    }
    Ok(UpdatePayloads {
        accepted,
        delta,
        documents,
        client_token: request.client_token,
    })
}

/// The `update/accepted` payload, serialized from borrowed parts.
#[derive(Serialize)]
struct AcceptedView<'a> {
    #[serde(rename = "clientToken", skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
    state: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<json::MetadataView<'a>>,
    timestamp: i64,
    version: u64,
}

/// Answers a get request: the `get/accepted` payload (also the HTTP GetThingShadow body when
/// `client_token` is `None`), or 404 `No shadow exists with name: '<name>'` when there is no
/// shadow or only a tombstone.
///
/// The payload is `{"clientToken"?,"state":{"desired"?,"reported"?,"delta"?},
/// "metadata":{"desired"?,"reported"?},"version","timestamp"}`; `delta` appears only when
/// non-empty, and there is no `metadata.delta` (as Greengrass; the cloud is unconfirmed).
pub fn handle_get(
    id: &ShadowId,
    current: Option<&StoredShadow>,
    client_token: Option<&str>,
    now_epoch_secs: i64,
) -> Result<Vec<u8>, ShadowError> {
    let Some(shadow) = live(current) else {
        return Err(ShadowError::no_shadow(id.not_found_name()).with_client_token(client_token));
    };
    let mut state = match shadow.state.to_value() {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let delta = shadow.delta();
    if !delta.is_empty() {
        state.insert("delta".to_owned(), Value::Object(delta));
    }
    let mut out = Map::new();
    put_token(&mut out, client_token);
    out.insert("state".to_owned(), Value::Object(state));
    out.insert("metadata".to_owned(), shadow.metadata.to_value());
    out.insert("timestamp".to_owned(), Value::from(now_epoch_secs));
    out.insert("version".to_owned(), Value::from(shadow.version));
    Ok(crate::to_json_bytes(&Value::Object(out)))
}

/// Answers a delete request: 404 `No shadow exists with name: '<name>'` when there is no live
/// shadow, 409 `Version conflict` when `expected_version` is given and differs, otherwise the
/// tombstone to persist and the `delete/accepted` payload, which carries the deleted
/// document's version (a delete does not bump it). Nothing is published on `update/*`.
pub fn handle_delete(
    id: &ShadowId,
    current: Option<&StoredShadow>,
    client_token: Option<&str>,
    expected_version: Option<u64>,
    now_epoch_secs: i64,
) -> Result<DeleteOutcome, ShadowError> {
    let Some(shadow) = live(current) else {
        return Err(ShadowError::no_shadow(id.not_found_name()).with_client_token(client_token));
    };
    if expected_version.is_some_and(|v| v != shadow.version) {
        return Err(ShadowError::version_conflict().with_client_token(client_token));
    }
    let tombstone = StoredShadow {
        state: Default::default(),
        metadata: Default::default(),
        version: shadow.version,
        deleted_at: Some(now_epoch_secs),
    };
    let mut out = object(vec![
        ("version", Value::from(shadow.version)),
        ("timestamp", Value::from(now_epoch_secs)),
    ]);
    put_token(&mut out, client_token);
    Ok(DeleteOutcome {
        tombstone,
        accepted: crate::to_json_bytes(&Value::Object(out)),
    })
}
