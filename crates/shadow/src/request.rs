//! Reading request payloads: the update state document, and the `clientToken`/`version` of a
//! get or delete request.

use serde_json::{Map, Value};

use crate::document::ShadowLimits;
use crate::error::ShadowError;
use crate::json;

/// What a request asks of one section (`desired` or `reported`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SectionPatch {
    /// The section is not named: left as is.
    Keep,
    /// `null`: remove the whole section.
    Clear,
    /// An object: merge it in.
    Merge(Map<String, Value>),
}

/// A validated update request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UpdateRequest {
    /// `state` exactly as sent (an object or `null`), echoed in `update/accepted`.
    pub(crate) state: Value,
    pub(crate) desired: SectionPatch,
    pub(crate) reported: SectionPatch,
    pub(crate) client_token: Option<String>,
    pub(crate) version: Option<u64>,
}

/// Reads the payload as a UTF-8 JSON value; `None` for an empty payload.
fn parse_json(payload: &[u8]) -> Result<Option<Value>, ShadowError> {
    let text = std::str::from_utf8(payload).map_err(|_| ShadowError::unsupported_encoding())?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok(Some(v)),
        // serde_json stops at 128 levels; such a document is too deep rather than malformed.
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => {
            Err(ShadowError::too_deep())
        }
        Err(_) => Err(ShadowError::invalid_json()),
    }
}

fn read_client_token(
    root: &Map<String, Value>,
    limits: &ShadowLimits,
) -> Result<Option<String>, ShadowError> {
    match root.get("clientToken") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= limits.max_client_token_bytes => Ok(Some(s.clone())),
        Some(_) => Err(ShadowError::invalid_client_token()),
    }
}

fn read_version(root: &Map<String, Value>) -> Result<Option<u64>, ShadowError> {
    match root.get("version") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(ShadowError::invalid_version),
        Some(_) => Err(ShadowError::invalid_version()),
    }
}

fn read_section(
    value: Option<&Value>,
    not_object: fn() -> ShadowError,
    limits: &ShadowLimits,
) -> Result<SectionPatch, ShadowError> {
    match value {
        None => Ok(SectionPatch::Keep),
        Some(Value::Null) => Ok(SectionPatch::Clear),
        Some(v @ Value::Object(map)) => {
            if json::depth(v) > limits.max_depth {
                return Err(ShadowError::too_deep());
            }
            if json::has_null_in_array(v, false) {
                return Err(ShadowError::invalid_json());
            }
            Ok(SectionPatch::Merge(map.clone()))
        }
        Some(_) => Err(not_object()),
    }
}

impl UpdateRequest {
    /// Parses and validates an update request. Errors carry the client token once it has been
    /// read, so that the rejection echoes it.
    pub(crate) fn parse(payload: &[u8], limits: &ShadowLimits) -> Result<Self, ShadowError> {
        if payload.len() > limits.max_request_bytes {
            return Err(ShadowError::payload_too_large());
        }
        let Some(Value::Object(root)) = parse_json(payload)? else {
            return Err(ShadowError::invalid_json());
        };
        let client_token = read_client_token(&root, limits)?;
        let with_token = |e: ShadowError| e.with_client_token(client_token.as_deref());
        let version = read_version(&root).map_err(with_token)?;
        let (state, desired, reported) = match root.get("state") {
            None => return Err(with_token(ShadowError::missing_state())),
            Some(Value::Null) => (Value::Null, SectionPatch::Clear, SectionPatch::Clear),
            Some(state @ Value::Object(sections)) => {
                if sections.keys().any(|k| k != "desired" && k != "reported") {
                    return Err(with_token(ShadowError::invalid_state_node()));
                }
                let desired = read_section(
                    sections.get("desired"),
                    ShadowError::desired_not_object,
                    limits,
                )
                .map_err(with_token)?;
                let reported = read_section(
                    sections.get("reported"),
                    ShadowError::reported_not_object,
                    limits,
                )
                .map_err(with_token)?;
                (state.clone(), desired, reported)
            }
            Some(_) => return Err(with_token(ShadowError::state_not_object())),
        };
        Ok(Self {
            state,
            desired,
            reported,
            client_token,
            version,
        })
    }
}

/// The fields a get or delete request may carry. Their payload is otherwise ignored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestOptions {
    /// `clientToken`, echoed in the response.
    pub client_token: Option<String>,
    /// `version` (optimistic lock for delete; ignored by get).
    pub version: Option<u64>,
}

impl RequestOptions {
    /// Reads `clientToken` and `version` from a get or delete payload.
    ///
    /// AWS ignores these payloads apart from the token, so an empty, non-UTF-8, non-JSON or
    /// non-object payload gives no options rather than an error. A token that is not a string
    /// or is longer than the limit gives 400 `Invalid clientToken`; a `version` that is not a
    /// non-negative integer gives 400 `Invalid version` (echoing the token).
    pub fn from_payload(payload: &[u8], limits: &ShadowLimits) -> Result<Self, ShadowError> {
        let Ok(Some(Value::Object(root))) = parse_json(payload) else {
            return Ok(Self::default());
        };
        let client_token = read_client_token(&root, limits)?;
        let version =
            read_version(&root).map_err(|e| e.with_client_token(client_token.as_deref()))?;
        Ok(Self {
            client_token,
            version,
        })
    }
}
