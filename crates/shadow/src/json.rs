//! JSON tree operations behind the shadow semantics: merge with metadata, delta, value
//! equality, nesting depth. All recursion is bounded by the depth of the input, which
//! `serde_json` caps at 128 when parsing.

use serde_json::{Map, Value};

/// `{"timestamp": now}`.
pub(crate) fn timestamp(now: i64) -> Value {
    let mut m = Map::new();
    m.insert("timestamp".to_owned(), Value::from(now));
    Value::Object(m)
}

/// The metadata mirror of `value`: objects map key by key, arrays element by element, every
/// other value (including `null`) becomes `{"timestamp": now}`.
pub(crate) fn metadata_for(value: &Value, now: i64) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), metadata_for(v, now)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| metadata_for(v, now)).collect()),
        _ => timestamp(now),
    }
}

/// [`metadata_for`] serialized straight from `value`, without building the tree.
pub(crate) struct MetadataView<'a> {
    pub(crate) value: &'a Value,
    pub(crate) now: i64,
}

impl serde::Serialize for MetadataView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.value {
            Value::Object(map) => {
                let mut out = serializer.serialize_map(Some(map.len()))?;
                for (key, value) in map {
                    out.serialize_entry(
                        key,
                        &MetadataView {
                            value,
                            now: self.now,
                        },
                    )?;
                }
                out.end()
            }
            Value::Array(items) => {
                let mut out = serializer.serialize_seq(Some(items.len()))?;
                for value in items {
                    out.serialize_element(&MetadataView {
                        value,
                        now: self.now,
                    })?;
                }
                out.end()
            }
            _ => {
                let mut out = serializer.serialize_map(Some(1))?;
                out.serialize_entry("timestamp", &self.now)?;
                out.end()
            }
        }
    }
}

/// Merges `patch` into `state`, keeping `meta` (the metadata mirror of `state`) in step.
///
/// `null` removes a key and its metadata; an object merges recursively into an object, and
/// replaces a value of another type with its non-null content; anything else (scalars,
/// arrays) replaces the value whole. Objects left empty are removed, so an object of only
/// `null`s (or `{}`) creates nothing and replaces nothing.
pub(crate) fn merge(
    state: &mut Map<String, Value>,
    meta: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    now: i64,
) {
    for (key, new) in patch {
        match new {
            Value::Null => {
                state.shift_remove(key);
                meta.shift_remove(key);
            }
            Value::Object(sub_patch) => match (state.get_mut(key), meta.get_mut(key)) {
                (Some(Value::Object(s)), Some(Value::Object(m))) => {
                    merge(s, m, sub_patch, now);
                    if s.is_empty() {
                        state.shift_remove(key);
                        meta.shift_remove(key);
                    }
                }
                _ => {
                    // Absent, or another type (or metadata that lost its shape, which this
                    // crate never produces): the patch without its nulls replaces the value,
                    // unless nothing is left of it, in which case the value stays.
                    let mut fresh = Map::new();
                    let mut fresh_meta = Map::new();
                    merge(&mut fresh, &mut fresh_meta, sub_patch, now);
                    if !fresh.is_empty() {
                        state.insert(key.clone(), Value::Object(fresh));
                        meta.insert(key.clone(), Value::Object(fresh_meta));
                    }
                }
            },
            other => {
                state.insert(key.clone(), other.clone());
                meta.insert(key.clone(), metadata_for(other, now));
            }
        }
    }
}

/// Desired entries that reported lacks or holds differently (see `StoredShadow::delta`).
pub(crate) fn delta(
    desired: &Map<String, Value>,
    reported: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, want) in desired {
        match (want, reported.get(key)) {
            (_, None) => {
                out.insert(key.clone(), want.clone());
            }
            (Value::Object(want_obj), Some(Value::Object(have_obj))) => {
                let sub = delta(want_obj, have_obj);
                if !sub.is_empty() {
                    out.insert(key.clone(), Value::Object(sub));
                }
            }
            (_, Some(have)) => {
                if !values_equal(want, have) {
                    out.insert(key.clone(), want.clone());
                }
            }
        }
    }
    out
}

/// The desired metadata at the paths of `delta`.
pub(crate) fn delta_metadata(
    delta: &Map<String, Value>,
    desired_meta: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in delta {
        match (value, desired_meta.get(key)) {
            (Value::Object(sub), Some(Value::Object(sub_meta))) => {
                out.insert(key.clone(), Value::Object(delta_metadata(sub, sub_meta)));
            }
            (_, Some(meta)) => {
                out.insert(key.clone(), meta.clone());
            }
            (_, None) => {}
        }
    }
    out
}

/// True when `patch` wrote (set or removed) a path at or inside, or above, some entry of
/// `delta`.
pub(crate) fn touches(delta: &Map<String, Value>, patch: &Map<String, Value>) -> bool {
    patch.iter().any(|(key, new)| match delta.get(key) {
        None => false,
        Some(Value::Object(sub_delta)) => match new {
            Value::Object(sub_patch) => touches(sub_delta, sub_patch),
            _ => true,
        },
        Some(_) => true,
    })
}

/// JSON equality where numbers compare by value (`1 == 1.0`) and object key order is ignored.
pub(crate) fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                match (x.as_f64(), y.as_f64()) {
                    (Some(x), Some(y)) => x == y,
                    _ => false,
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| values_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w)))
        }
        _ => a == b,
    }
}

/// Container depth of `value`: 0 for a scalar, 1 + the deepest child for an object or array.
pub(crate) fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// True when some array inside `value` (at any depth) holds a `null`, directly or inside an
/// object or array element.
pub(crate) fn has_null_in_array(value: &Value, inside_array: bool) -> bool {
    match value {
        Value::Null => inside_array,
        Value::Object(map) => map.values().any(|v| has_null_in_array(v, inside_array)),
        Value::Array(items) => items.iter().any(|v| has_null_in_array(v, true)),
        _ => false,
    }
}

/// Length of the compact JSON of `map`, or 0 when it is empty (an absent section).
pub(crate) fn compact_len(map: &Map<String, Value>) -> usize {
    if map.is_empty() {
        return 0;
    }
    let mut counter = ByteCounter(0);
    // Writing to a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, map);
    counter.0
}

struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(values_equal(&json!(1), &json!(1.0)));
        assert!(values_equal(
            &json!([1, {"a": 2}]),
            &json!([1.0, {"a": 2.0}])
        ));
        assert!(!values_equal(&json!(1), &json!("1")));
        assert!(!values_equal(&json!(-1), &json!(u64::MAX)));
        assert!(values_equal(&json!({"a":1,"b":2}), &json!({"b":2,"a":1})));
        assert!(!values_equal(&json!([1, 2]), &json!([2, 1])));
    }

    #[test]
    fn depth_counts_containers() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a": [1]})), 2);
        assert_eq!(depth(&json!({"a": {"b": {"c": 1}}})), 3);
    }

    #[test]
    fn nulls_in_arrays() {
        assert!(has_null_in_array(&json!({"a": [1, null]}), false));
        assert!(has_null_in_array(&json!({"a": [{"b": null}]}), false));
        assert!(has_null_in_array(&json!({"a": [[null]]}), false));
        assert!(!has_null_in_array(&json!({"a": null, "b": [1]}), false));
    }

    #[test]
    fn touch_detection() {
        let d = obj(json!({"lights": {"r": 1}, "mode": "on"}));
        assert!(touches(&d, &obj(json!({"mode": "off"}))));
        assert!(touches(&d, &obj(json!({"lights": {"r": 2}}))));
        assert!(touches(&d, &obj(json!({"lights": 5}))));
        assert!(!touches(&d, &obj(json!({"lights": {"g": 2}}))));
        assert!(!touches(&d, &obj(json!({"temp": 30}))));
        let scalar = obj(json!({"lights": "off"}));
        assert!(touches(&scalar, &obj(json!({"lights": {"g": 1}}))));
    }

    #[test]
    fn metadata_view_serializes_like_the_tree() {
        let value = json!({"a": 1, "b": {"c": [1, {"d": null}], "e": "x"}, "f": null});
        let view = serde_json::to_value(MetadataView {
            value: &value,
            now: 7,
        })
        .unwrap();
        assert_eq!(view, metadata_for(&value, 7));
        assert_eq!(
            serde_json::to_string(&MetadataView {
                value: &json!(3),
                now: 7
            })
            .unwrap(),
            r#"{"timestamp":7}"#
        );
    }

    #[test]
    fn compact_length() {
        assert_eq!(compact_len(&Map::new()), 0);
        assert_eq!(compact_len(&obj(json!({"a": 1}))), r#"{"a":1}"#.len());
    }
}
