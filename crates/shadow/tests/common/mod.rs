//! Helpers shared by the shadow test files.

#![allow(dead_code, unreachable_pub)]

use serde_json::Value;
use thingd_shadow::{ShadowLimits, StoredShadow, UpdateOutcome, handle_update};

/// Parses a JSON payload produced by the crate.
pub fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("payload is JSON")
}

/// Applies `payload` to `current` at `now` with default limits, expecting success.
pub fn update(current: Option<&StoredShadow>, payload: &str, now: i64) -> UpdateOutcome {
    handle_update(current, payload.as_bytes(), now, &ShadowLimits::default())
        .unwrap_or_else(|e| panic!("update {payload} refused: {e}"))
}

/// Applies each payload in turn, starting from no shadow, all at time `now`.
pub fn build(payloads: &[&str], now: i64) -> Option<StoredShadow> {
    let mut current: Option<StoredShadow> = None;
    for p in payloads {
        current = Some(update(current.as_ref(), p, now).shadow);
    }
    current
}

/// True when `meta` mirrors `state`: same keys, arrays of the same length, and
/// `{"timestamp": <integer>}` at every leaf.
pub fn mirrors(state: &Value, meta: &Value) -> bool {
    match (state, meta) {
        (Value::Object(s), Value::Object(m)) => {
            s.len() == m.len()
                && s.iter()
                    .all(|(k, v)| m.get(k).is_some_and(|mv| mirrors(v, mv)))
        }
        (Value::Array(s), Value::Array(m)) => {
            s.len() == m.len() && s.iter().zip(m).all(|(v, mv)| mirrors(v, mv))
        }
        (Value::Object(_) | Value::Array(_), _) => false,
        (_, Value::Object(m)) => m.len() == 1 && m.get("timestamp").is_some_and(Value::is_i64),
        _ => false,
    }
}

/// True when no object inside `value` (below the root) is empty.
pub fn no_empty_objects(value: &Value) -> bool {
    match value {
        Value::Object(m) => m.values().all(|v| match v {
            Value::Object(inner) => !inner.is_empty() && no_empty_objects(v),
            other => no_empty_objects(other),
        }),
        Value::Array(items) => items.iter().all(no_empty_objects),
        _ => true,
    }
}

/// Checks the invariants every stored shadow must keep.
pub fn check_invariants(shadow: &StoredShadow) {
    let state = shadow.state.to_value();
    let meta = shadow.metadata.to_value();
    assert!(
        mirrors(&state, &meta),
        "metadata {meta} does not mirror {state}"
    );
    assert!(no_empty_objects(&state), "empty object kept in {state}");
}
