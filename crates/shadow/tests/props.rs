//! Property tests: no panics on any input, invariants after any accepted update, and an update
//! followed by its inverse restores the state.

mod common;

use common::{check_invariants, parse};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use thingd_shadow::{ShadowId, ShadowLimits, StoredShadow, handle_get, handle_update};

const KEYS: &[&str] = &["a", "b", "c", "d", "e"];

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(KEYS).prop_map(str::to_owned)
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        // Quarters are exact in binary, so text round trips cannot blur them.
        any::<i32>().prop_map(|i| Value::from(f64::from(i) / 4.0)),
        "[a-z]{0,4}".prop_map(Value::from),
    ]
}

/// Any JSON value, `null` included anywhere.
fn any_json() -> impl Strategy<Value = Value> {
    prop_oneof![Just(Value::Null), scalar()].prop_recursive(4, 48, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A value as it can be stored: no `null`, no empty object (arrays may be empty).
fn stored_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(2, 24, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 1..3)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn stored_section() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((key(), stored_value()), 0..4).prop_map(|kv| kv.into_iter().collect())
}

/// A patch value: objects may hold `null` (deletes) and be empty; arrays hold no `null`.
fn patch_value() -> impl Strategy<Value = Value> {
    // At most 2 patch levels over at most 2 stored levels: within the depth limit of 6.
    prop_oneof![1 => Just(Value::Null), 4 => stored_value()].prop_recursive(2, 24, 3, |inner| {
        prop::collection::vec((key(), inner), 0..3)
            .prop_map(|kv| Value::Object(kv.into_iter().collect()))
    })
}

fn patch_section() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((key(), patch_value()), 0..4).prop_map(|kv| kv.into_iter().collect())
}

/// The patch that undoes `patch` applied to `orig`.
fn inverse(orig: &Map<String, Value>, patch: &Map<String, Value>) -> Map<String, Value> {
    patch
        .iter()
        .map(|(k, p)| {
            let undo = match (orig.get(k), p) {
                (None, _) => Value::Null,
                (Some(Value::Object(o)), Value::Object(p)) => Value::Object(inverse(o, p)),
                (Some(o), _) => o.clone(),
            };
            (k.clone(), undo)
        })
        .collect()
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// Checks everything an accepted update promises about its outcome.
fn check_accepted(
    current: Option<&StoredShadow>,
    payload: &[u8],
    now: i64,
) -> Option<StoredShadow> {
    let limits = ShadowLimits::default();
    let out = handle_update(current, payload, now, &limits).ok()?;
    check_invariants(&out.shadow);
    assert_eq!(
        out.shadow.version,
        StoredShadow::base_version(current, now, &limits) + 1
    );
    assert!(out.shadow.document_size() <= limits.max_document_bytes);
    let accepted = parse(&out.accepted);
    assert_eq!(accepted["version"], json!(out.shadow.version));
    let documents = parse(&out.documents);
    assert_eq!(documents["current"]["version"], json!(out.shadow.version));
    assert_eq!(
        documents.get("previous").is_some(),
        current.is_some_and(|c| !c.is_deleted())
    );
    if out.shadow.delta().is_empty() {
        assert!(out.delta.is_none());
    }
    if let Some(delta) = &out.delta {
        let delta = parse(delta);
        assert_eq!(delta["state"], Value::Object(out.shadow.delta()));
    }
    let id = ShadowId::parse("t", None).unwrap();
    parse(&handle_get(&id, Some(&out.shadow), None, now).unwrap());
    assert_eq!(
        StoredShadow::from_bytes(&out.shadow.to_bytes()).unwrap(),
        out.shadow
    );
    Some(out.shadow)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(payload in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = handle_update(None, &payload, 1, &ShadowLimits::default());
    }

    #[test]
    fn arbitrary_json_never_panics_and_keeps_invariants(
        first in any_json(),
        desired in any_json(),
        reported in any_json(),
        version in prop::option::of(0u64..3),
        token in prop::option::of("[a-z]{0,70}"),
    ) {
        // A root of any shape, then a well-formed envelope with arbitrary sections.
        let start = check_accepted(None, &bytes(&json!({"state": first})), 10);
        let mut req = Map::new();
        let mut state = Map::new();
        state.insert("desired".to_owned(), desired);
        state.insert("reported".to_owned(), reported);
        req.insert("state".to_owned(), Value::Object(state));
        if let Some(v) = version { req.insert("version".to_owned(), json!(v)); }
        if let Some(t) = token { req.insert("clientToken".to_owned(), json!(t)); }
        let req = Value::Object(req);
        let _ = check_accepted(start.as_ref(), &bytes(&req), 20);
        let _ = check_accepted(None, &bytes(&req), 20);
        // The raw value as the whole payload must not panic either.
        let _ = handle_update(start.as_ref(), &bytes(&req["state"]), 20, &ShadowLimits::default());
    }

    #[test]
    fn update_then_inverse_restores_the_state(
        desired in stored_section(),
        reported in stored_section(),
        patch_desired in patch_section(),
        patch_reported in patch_section(),
    ) {
        let create = json!({"state": {"desired": desired, "reported": reported}});
        let original = check_accepted(None, &bytes(&create), 100).unwrap();

        let forward = json!({"state": {"desired": patch_desired, "reported": patch_reported}});
        let changed = check_accepted(Some(&original), &bytes(&forward), 200).unwrap();

        let undo = json!({"state": {
            "desired": inverse(&original.state.desired, &patch_desired),
            "reported": inverse(&original.state.reported, &patch_reported),
        }});
        let restored = check_accepted(Some(&changed), &bytes(&undo), 300).unwrap();

        prop_assert_eq!(&restored.state, &original.state);
        prop_assert_eq!(restored.version, original.version + 2);
        prop_assert_eq!(restored.delta(), original.delta());

        // Keys the patch did not name keep their original metadata throughout.
        for (section, meta, patch) in [
            (&original.metadata.desired, &restored.metadata.desired, &patch_desired),
            (&original.metadata.reported, &restored.metadata.reported, &patch_reported),
        ] {
            for (k, m) in section {
                if !patch.contains_key(k) {
                    prop_assert_eq!(meta.get(k), Some(m));
                }
            }
        }
    }

    #[test]
    fn merging_a_state_into_nothing_stores_it_verbatim(
        desired in stored_section(),
        reported in stored_section(),
    ) {
        let create = json!({"state": {"desired": desired.clone(), "reported": reported.clone()}});
        let s = check_accepted(None, &bytes(&create), 100).unwrap();
        prop_assert_eq!(s.state.desired, desired);
        prop_assert_eq!(s.state.reported, reported);
    }
}
