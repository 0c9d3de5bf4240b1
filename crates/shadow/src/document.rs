//! The stored shadow document, its persistence encoding, and the service limits.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::json;

/// The `desired` and `reported` halves of a state or metadata tree. An empty map means the
/// section is absent (AWS removes a section that becomes empty or `null`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Sections {
    /// `desired`: what the application wants.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub desired: Map<String, Value>,
    /// `reported`: what the device last said.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub reported: Map<String, Value>,
}

impl Sections {
    /// True when both sections are absent.
    pub fn is_empty(&self) -> bool {
        self.desired.is_empty() && self.reported.is_empty()
    }

    /// As a JSON object holding only the present sections (`{}` when both are absent).
    pub fn to_value(&self) -> Value {
        let mut out = Map::new();
        if !self.desired.is_empty() {
            out.insert("desired".to_owned(), Value::Object(self.desired.clone()));
        }
        if !self.reported.is_empty() {
            out.insert("reported".to_owned(), Value::Object(self.reported.clone()));
        }
        Value::Object(out)
    }
}

/// One shadow as the store keeps it.
///
/// A deleted shadow is kept as a tombstone (`deleted_at` set, both sections empty) so that a
/// shadow re-created within [`ShadowLimits::version_retention_secs`] continues from the
/// deleted version, as AWS does for 48 hours. A tombstone answers GET and DELETE with 404.
///
/// Invariant kept by every operation here: `metadata` mirrors `state` exactly, with
/// `{"timestamp": <epoch seconds>}` in place of every leaf (arrays mirror element by element);
/// no object in `state` is empty; arrays hold no `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredShadow {
    /// The `desired` and `reported` state.
    pub state: Sections,
    /// Per-leaf timestamps mirroring `state`.
    pub metadata: Sections,
    /// Starts at 1 on first creation, +1 per accepted update; kept (not bumped) by a delete.
    pub version: u64,
    /// Epoch seconds of the delete when this is a tombstone; `None` for a live shadow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<i64>,
}

impl StoredShadow {
    /// A live shadow with no state, at `version`.
    pub fn empty(version: u64) -> Self {
        StoredShadow {
            state: Sections::default(),
            metadata: Sections::default(),
            version,
            deleted_at: None,
        }
    }

    /// True when this is a tombstone left by a delete.
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    /// The delta: every `desired` entry that `reported` lacks or holds with a different value,
    /// recursing into objects on both sides; arrays compare whole; numbers by value (`1` equals
    /// `1.0`). Empty when `desired` is absent or fully in sync.
    pub fn delta(&self) -> Map<String, Value> {
        json::delta(&self.state.desired, &self.state.reported)
    }

    /// The size the document limit is measured on: the compact JSON of `desired` plus that of
    /// `reported` (absent sections count 0); metadata excluded.
    pub fn document_size(&self) -> usize {
        json::compact_len(&self.state.desired) + json::compact_len(&self.state.reported)
    }

    /// The version the next update must name (if it names one) and builds on: the current
    /// version of a live shadow or of a tombstone still within the retention window, else 0.
    pub fn base_version(
        current: Option<&StoredShadow>,
        now_epoch_secs: i64,
        limits: &ShadowLimits,
    ) -> u64 {
        match current {
            None => 0,
            Some(s) => match s.deleted_at {
                None => s.version,
                Some(at) if now_epoch_secs.saturating_sub(at) < limits.version_retention_secs => {
                    s.version
                }
                Some(_) => 0,
            },
        }
    }

    /// True when this tombstone has outlived the retention window and the store may drop it.
    pub fn tombstone_expired(&self, now_epoch_secs: i64, limits: &ShadowLimits) -> bool {
        self.deleted_at
            .is_some_and(|at| now_epoch_secs.saturating_sub(at) >= limits.version_retention_secs)
    }

    /// The persistence encoding (compact JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing string-keyed maps of JSON values cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes what [`StoredShadow::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The `{"state":..,"metadata":..,"version":..}` object used in `update/documents`
    /// (never holds `delta`), serialized straight from the shadow.
    pub(crate) fn document_view(&self) -> DocumentView<'_> {
        DocumentView {
            state: &self.state,
            metadata: &self.metadata,
            version: self.version,
        }
    }
}

/// See [`StoredShadow::document_view`].
#[derive(Serialize)]
pub(crate) struct DocumentView<'a> {
    state: &'a Sections,
    metadata: &'a Sections,
    version: u64,
}

/// Limits applied by the shadow operations; [`ShadowLimits::default`] gives AWS's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowLimits {
    /// Largest document after an update ([`StoredShadow::document_size`]); 8 KiB.
    pub max_document_bytes: usize,
    /// Largest raw update request accepted before parsing; 128 KiB (the MQTT payload limit).
    pub max_request_bytes: usize,
    /// Deepest nesting of `desired`/`reported`, counting the section itself as level 1 and
    /// every object or array below it as one more level; 6. (The error text always says 6.)
    pub max_depth: usize,
    /// Longest `clientToken`, in bytes; 64.
    pub max_client_token_bytes: usize,
    /// How long a tombstone keeps the version of a deleted shadow; 48 hours.
    pub version_retention_secs: i64,
}

impl Default for ShadowLimits {
    fn default() -> Self {
        Self {
            max_document_bytes: 8 * 1024,
            max_request_bytes: 128 * 1024,
            max_depth: 6,
            max_client_token_bytes: 64,
            version_retention_secs: 48 * 3600,
        }
    }
}
