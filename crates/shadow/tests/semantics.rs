//! Document semantics: merge, metadata, delta, versions, clientToken, documents, get, delete.

mod common;

use common::{build, check_invariants, parse, update};
use serde_json::{Value, json};
use thingd_shadow::{
    Documents, RequestOptions, ShadowId, ShadowLimits, StoredShadow, handle_delete, handle_get,
    handle_update, update_in_place,
};

const T0: i64 = 100;
const T1: i64 = 200;

fn ts(t: i64) -> Value {
    json!({ "timestamp": t })
}

struct Case {
    name: &'static str,
    /// Updates applied at `T0`, starting from no shadow.
    setup: &'static [&'static str],
    /// The update under test, applied at `T1`.
    request: &'static str,
    /// Expected stored state (`{"desired"?, "reported"?}`).
    state: Value,
    /// Expected stored metadata.
    metadata: Value,
    /// Expected `update/delta` payload's `state` and `metadata`, or `None` for no delta.
    delta: Option<(Value, Value)>,
}

#[test]
fn update_semantics_table() {
    let cases = [
        Case {
            name: "first update creates desired; delta is the whole desired",
            setup: &[],
            request: r#"{"state":{"desired":{"color":"red"}}}"#,
            state: json!({"desired": {"color": "red"}}),
            metadata: json!({"desired": {"color": ts(T1)}}),
            delta: Some((json!({"color": "red"}), json!({"color": ts(T1)}))),
        },
        Case {
            name: "nested objects merge; untouched siblings keep their timestamps",
            setup: &[r#"{"state":{"reported":{"lights":{"r":1,"g":2},"engine":"ON"}}}"#],
            request: r#"{"state":{"reported":{"lights":{"g":3}}}}"#,
            state: json!({"reported": {"lights": {"r": 1, "g": 3}, "engine": "ON"}}),
            metadata: json!({"reported": {"lights": {"r": ts(T0), "g": ts(T1)}, "engine": ts(T0)}}),
            delta: None,
        },
        Case {
            name: "null deletes a key and its metadata",
            setup: &[r#"{"state":{"reported":{"a":1,"b":2}}}"#],
            request: r#"{"state":{"reported":{"a":null}}}"#,
            state: json!({"reported": {"b": 2}}),
            metadata: json!({"reported": {"b": ts(T0)}}),
            delta: None,
        },
        Case {
            name: "null on a missing key has no effect, and nulls below a scalar leave it alone",
            setup: &[r#"{"state":{"reported":{"a":1}}}"#],
            request: r#"{"state":{"reported":{"zz":null,"a":{"deep":null}}}}"#,
            state: json!({"reported": {"a": 1}}),
            metadata: json!({"reported": {"a": ts(T0)}}),
            delta: None,
        },
        Case {
            name: "an object emptied by nulls disappears, and so does its section",
            setup: &[r#"{"state":{"reported":{"l":{"r":1}}}}"#],
            request: r#"{"state":{"reported":{"l":{"r":null}}}}"#,
            state: json!({}),
            metadata: json!({}),
            delta: None,
        },
        Case {
            name: "an object of only nulls creates nothing",
            setup: &[],
            request: r#"{"state":{"desired":{"x":{"y":null}}}}"#,
            state: json!({}),
            metadata: json!({}),
            delta: None,
        },
        Case {
            name: "choice (unconfirmed): an explicit empty object creates nothing",
            setup: &[r#"{"state":{"reported":{"a":1}}}"#],
            request: r#"{"state":{"reported":{"e":{}}}}"#,
            state: json!({"reported": {"a": 1}}),
            metadata: json!({"reported": {"a": ts(T0)}}),
            delta: None,
        },
        Case {
            name: "arrays replace whole; metadata is per element",
            setup: &[r#"{"state":{"reported":{"arr":[1,2,3]}}}"#],
            request: r#"{"state":{"reported":{"arr":[{"a":1},[2]]}}}"#,
            state: json!({"reported": {"arr": [{"a": 1}, [2]]}}),
            metadata: json!({"reported": {"arr": [{"a": ts(T1)}, [ts(T1)]]}}),
            delta: None,
        },
        Case {
            name: "type change object to scalar replaces",
            setup: &[r#"{"state":{"reported":{"l":{"r":1,"g":2}}}}"#],
            request: r#"{"state":{"reported":{"l":"off"}}}"#,
            state: json!({"reported": {"l": "off"}}),
            metadata: json!({"reported": {"l": ts(T1)}}),
            delta: None,
        },
        Case {
            name: "type change scalar to object replaces",
            setup: &[r#"{"state":{"reported":{"l":"off"}}}"#],
            request: r#"{"state":{"reported":{"l":{"r":1,"x":null}}}}"#,
            state: json!({"reported": {"l": {"r": 1}}}),
            metadata: json!({"reported": {"l": {"r": ts(T1)}}}),
            delta: None,
        },
        Case {
            name: "type change array to object replaces",
            setup: &[r#"{"state":{"reported":{"l":[1]}}}"#],
            request: r#"{"state":{"reported":{"l":{"r":1}}}}"#,
            state: json!({"reported": {"l": {"r": 1}}}),
            metadata: json!({"reported": {"l": {"r": ts(T1)}}}),
            delta: None,
        },
        Case {
            name: "desired null clears the section (and the delta)",
            setup: &[r#"{"state":{"desired":{"a":1},"reported":{"a":2}}}"#],
            request: r#"{"state":{"desired":null}}"#,
            state: json!({"reported": {"a": 2}}),
            metadata: json!({"reported": {"a": ts(T0)}}),
            delta: None,
        },
        Case {
            name: "state null clears both sections",
            setup: &[r#"{"state":{"desired":{"a":1},"reported":{"a":2}}}"#],
            request: r#"{"state":null}"#,
            state: json!({}),
            metadata: json!({}),
            delta: None,
        },
        Case {
            name: "delta keeps the full path down to the differing leaf",
            setup: &[r#"{"state":{"reported":{"lights":{"color":{"r":1,"g":0}},"engine":"ON"}}}"#],
            request: r#"{"state":{"desired":{"lights":{"color":{"r":1,"g":255}}}}}"#,
            state: json!({
                "desired": {"lights": {"color": {"r": 1, "g": 255}}},
                "reported": {"lights": {"color": {"r": 1, "g": 0}}, "engine": "ON"}
            }),
            metadata: json!({
                "desired": {"lights": {"color": {"r": ts(T1), "g": ts(T1)}}},
                "reported": {"lights": {"color": {"r": ts(T0), "g": ts(T0)}}, "engine": ts(T0)}
            }),
            delta: Some((
                json!({"lights": {"color": {"g": 255}}}),
                json!({"lights": {"color": {"g": ts(T1)}}}),
            )),
        },
        Case {
            name: "reported catching up with desired clears the delta: no delta published",
            setup: &[r#"{"state":{"desired":{"color":"red"}}}"#],
            request: r#"{"state":{"reported":{"color":"red"}}}"#,
            state: json!({"desired": {"color": "red"}, "reported": {"color": "red"}}),
            metadata: json!({"desired": {"color": ts(T0)}, "reported": {"color": ts(T1)}}),
            delta: None,
        },
        Case {
            name: "reported-only update creating a difference publishes it with the desired timestamp",
            setup: &[r#"{"state":{"desired":{"Status":"Great"},"reported":{"Status":"Great"}}}"#],
            request: r#"{"state":{"reported":{"Status":"Awful"}}}"#,
            state: json!({"desired": {"Status": "Great"}, "reported": {"Status": "Awful"}}),
            metadata: json!({"desired": {"Status": ts(T0)}, "reported": {"Status": ts(T1)}}),
            delta: Some((json!({"Status": "Great"}), json!({"Status": ts(T0)}))),
        },
        Case {
            name: "reported write inside an unchanged delta re-publishes it",
            setup: &[r#"{"state":{"desired":{"s":"G"},"reported":{"s":"B"}}}"#],
            request: r#"{"state":{"reported":{"s":"A"}}}"#,
            state: json!({"desired": {"s": "G"}, "reported": {"s": "A"}}),
            metadata: json!({"desired": {"s": ts(T0)}, "reported": {"s": ts(T1)}}),
            delta: Some((json!({"s": "G"}), json!({"s": ts(T0)}))),
        },
        Case {
            name: "choice (unconfirmed): a reported write that leaves an unrelated pending delta alone does not re-publish it",
            setup: &[r#"{"state":{"desired":{"led":"on"}}}"#],
            request: r#"{"state":{"reported":{"temp":"32"}}}"#,
            state: json!({"desired": {"led": "on"}, "reported": {"temp": "32"}}),
            metadata: json!({"desired": {"led": ts(T0)}, "reported": {"temp": ts(T1)}}),
            delta: None,
        },
        Case {
            name: "desired re-asserted with the same value re-publishes the whole delta",
            setup: &[r#"{"state":{"desired":{"led":"on","fan":1}}}"#],
            request: r#"{"state":{"desired":{"led":"on"}}}"#,
            state: json!({"desired": {"led": "on", "fan": 1}}),
            metadata: json!({"desired": {"led": ts(T1), "fan": ts(T0)}}),
            delta: Some((
                json!({"led": "on", "fan": 1}),
                json!({"led": ts(T1), "fan": ts(T0)}),
            )),
        },
        Case {
            name: "arrays are compared whole: the whole desired array goes into the delta",
            setup: &[r#"{"state":{"desired":{"a":[1,2]},"reported":{"a":[1,2]}}}"#],
            request: r#"{"state":{"reported":{"a":[1]}}}"#,
            state: json!({"desired": {"a": [1, 2]}, "reported": {"a": [1]}}),
            metadata: json!({"desired": {"a": [ts(T0), ts(T0)]}, "reported": {"a": [ts(T1)]}}),
            delta: Some((json!({"a": [1, 2]}), json!({"a": [ts(T0), ts(T0)]}))),
        },
        Case {
            name: "choice (unconfirmed): numbers compare by value, 1 equals 1.0",
            setup: &[r#"{"state":{"desired":{"n":1,"a":[2]}}}"#],
            request: r#"{"state":{"reported":{"n":1.0,"a":[2.0]}}}"#,
            state: json!({"desired": {"n": 1, "a": [2]}, "reported": {"n": 1.0, "a": [2.0]}}),
            metadata: json!({"desired": {"n": ts(T0), "a": [ts(T0)]}, "reported": {"n": ts(T1), "a": [ts(T1)]}}),
            delta: None,
        },
        Case {
            name: "keys only in reported never enter the delta",
            setup: &[],
            request: r#"{"state":{"desired":{"a":1},"reported":{"a":1,"b":2}}}"#,
            state: json!({"desired": {"a": 1}, "reported": {"a": 1, "b": 2}}),
            metadata: json!({"desired": {"a": ts(T1)}, "reported": {"a": ts(T1), "b": ts(T1)}}),
            delta: None,
        },
        Case {
            name: "reported null makes the delta equal desired",
            setup: &[r#"{"state":{"desired":{"a":1},"reported":{"a":1}}}"#],
            request: r#"{"state":{"reported":null}}"#,
            state: json!({"desired": {"a": 1}}),
            metadata: json!({"desired": {"a": ts(T0)}}),
            delta: Some((json!({"a": 1}), json!({"a": ts(T0)}))),
        },
        Case {
            name: "desired key deleted removes it from the delta",
            setup: &[r#"{"state":{"desired":{"a":1,"b":2}}}"#],
            request: r#"{"state":{"desired":{"a":null}}}"#,
            state: json!({"desired": {"b": 2}}),
            metadata: json!({"desired": {"b": ts(T0)}}),
            delta: Some((json!({"b": 2}), json!({"b": ts(T0)}))),
        },
        Case {
            name: "desired object vs reported scalar: the desired object is the delta",
            setup: &[r#"{"state":{"reported":{"l":"off"}}}"#],
            request: r#"{"state":{"desired":{"l":{"on":true}}}}"#,
            state: json!({"desired": {"l": {"on": true}}, "reported": {"l": "off"}}),
            metadata: json!({"desired": {"l": {"on": ts(T1)}}, "reported": {"l": ts(T0)}}),
            delta: Some((json!({"l": {"on": true}}), json!({"l": {"on": ts(T1)}}))),
        },
    ];

    for case in cases {
        let current = build(case.setup, T0);
        let out = update(current.as_ref(), case.request, T1);
        check_invariants(&out.shadow);
        assert_eq!(
            out.shadow.state.to_value(),
            case.state,
            "state: {}",
            case.name
        );
        assert_eq!(
            out.shadow.metadata.to_value(),
            case.metadata,
            "metadata: {}",
            case.name
        );
        let expected_version = case.setup.len() as u64 + 1;
        assert_eq!(
            out.shadow.version, expected_version,
            "version: {}",
            case.name
        );
        match (&out.delta, case.delta) {
            (None, None) => {}
            (Some(bytes), Some((state, metadata))) => {
                let d = parse(bytes);
                assert_eq!(d["state"], state, "delta state: {}", case.name);
                assert_eq!(d["metadata"], metadata, "delta metadata: {}", case.name);
                assert_eq!(d["version"], json!(expected_version), "{}", case.name);
                assert_eq!(d["timestamp"], json!(T1), "{}", case.name);
                assert!(d.get("clientToken").is_none(), "{}", case.name);
            }
            (got, want) => panic!(
                "delta for {}: got {:?}, want {want:?}",
                case.name,
                got.as_deref().map(parse)
            ),
        }
        // The stored delta agrees with a GET.
        let id = ShadowId::parse("t", None).unwrap();
        let get = parse(&handle_get(&id, Some(&out.shadow), None, T1).unwrap());
        let stored_delta = out.shadow.delta();
        assert_eq!(
            get["state"].get("delta"),
            (!stored_delta.is_empty())
                .then(|| Value::Object(stored_delta))
                .as_ref(),
            "{}",
            case.name
        );
    }
}

#[test]
fn accepted_echoes_request_state_and_metadata_of_written_leaves() {
    let current = build(&[r#"{"state":{"reported":{"a":1,"b":{"c":2}}}}"#], T0);
    let out = update(
        current.as_ref(),
        r#"{"state":{"reported":{"b":{"c":null,"d":[1,2]}},"desired":null},"clientToken":"tok-1","version":1}"#,
        T1,
    );
    let accepted = parse(&out.accepted);
    assert_eq!(
        accepted,
        json!({
            "clientToken": "tok-1",
            "state": {"reported": {"b": {"c": null, "d": [1, 2]}}, "desired": null},
            "metadata": {
                "reported": {"b": {"c": ts(T1), "d": [ts(T1), ts(T1)]}},
                "desired": ts(T1)
            },
            "timestamp": T1,
            "version": 2
        })
    );
    assert!(accepted["state"].get("delta").is_none());
    assert_eq!(out.client_token.as_deref(), Some("tok-1"));
}

#[test]
fn accepted_for_state_null_echoes_null_without_metadata() {
    let current = build(&[r#"{"state":{"reported":{"a":1}}}"#], T0);
    let out = update(current.as_ref(), r#"{"state":null}"#, T1);
    assert_eq!(
        parse(&out.accepted),
        json!({"state": null, "timestamp": T1, "version": 2})
    );
}

#[test]
fn client_token_is_echoed_in_accepted_delta_and_documents() {
    let out = update(
        None,
        r#"{"state":{"desired":{"x":1}},"clientToken":"abc"}"#,
        T1,
    );
    assert_eq!(parse(&out.accepted)["clientToken"], "abc");
    assert_eq!(parse(out.delta.as_deref().unwrap())["clientToken"], "abc");
    assert_eq!(parse(&out.documents)["clientToken"], "abc");
    let without = update(None, r#"{"state":{"desired":{"x":1}}}"#, T1);
    for payload in [
        &without.accepted,
        without.delta.as_ref().unwrap(),
        &without.documents,
    ] {
        assert!(parse(payload).get("clientToken").is_none());
    }
    let token64 = "t".repeat(64);
    let out = update(
        None,
        &format!(r#"{{"state":{{}},"clientToken":"{token64}"}}"#),
        T1,
    );
    assert_eq!(parse(&out.accepted)["clientToken"], json!(token64));
}

#[test]
fn first_documents_have_no_previous_later_ones_do() {
    let first = update(None, r#"{"state":{"reported":{"a":1}}}"#, T0);
    assert_eq!(
        parse(&first.documents),
        json!({
            "current": {
                "state": {"reported": {"a": 1}},
                "metadata": {"reported": {"a": ts(T0)}},
                "version": 1
            },
            "timestamp": T0
        })
    );
    let second = update(
        Some(&first.shadow),
        r#"{"state":{"desired":{"a":2}},"clientToken":"c"}"#,
        T1,
    );
    assert_eq!(
        parse(&second.documents),
        json!({
            "previous": {
                "state": {"reported": {"a": 1}},
                "metadata": {"reported": {"a": ts(T0)}},
                "version": 1
            },
            "current": {
                "state": {"desired": {"a": 2}, "reported": {"a": 1}},
                "metadata": {"desired": {"a": ts(T1)}, "reported": {"a": ts(T0)}},
                "version": 2
            },
            "timestamp": T1,
            "clientToken": "c"
        })
    );
}

#[test]
fn empty_shadow_documents_and_get() {
    let out = update(None, r#"{"state":{"desired":null}}"#, T0);
    assert_eq!(out.shadow.version, 1);
    assert_eq!(
        parse(&out.documents)["current"],
        json!({"state": {}, "metadata": {}, "version": 1})
    );
    let id = ShadowId::parse("t", None).unwrap();
    assert_eq!(
        parse(&handle_get(&id, Some(&out.shadow), None, T1).unwrap()),
        json!({"state": {}, "metadata": {}, "timestamp": T1, "version": 1})
    );
}

#[test]
fn versions_increment_per_update_even_for_no_ops() {
    let mut current: Option<StoredShadow> = None;
    for expected in 1..=5u64 {
        let out = update(current.as_ref(), r#"{"state":{}}"#, T0);
        assert_eq!(out.shadow.version, expected);
        assert_eq!(parse(&out.accepted)["version"], json!(expected));
        current = Some(out.shadow);
    }
    // The optimistic lock passes when the version matches.
    let out = update(current.as_ref(), r#"{"state":{},"version":5}"#, T1);
    assert_eq!(out.shadow.version, 6);
}

#[test]
fn choice_version_for_a_missing_shadow_must_be_zero() {
    // Unconfirmed in the spec: we treat a missing shadow as version 0 for the lock.
    let out = update(None, r#"{"state":{"reported":{"a":1}},"version":0}"#, T0);
    assert_eq!(out.shadow.version, 1);
    let err = handle_update(
        None,
        br#"{"state":{"reported":{"a":1}},"version":1}"#,
        T0,
        &ShadowLimits::default(),
    )
    .unwrap_err();
    assert_eq!((err.code, err.message.as_str()), (409, "Version conflict"));
}

#[test]
fn choice_unknown_top_level_fields_are_ignored() {
    // Clients that send back a whole GET document (metadata, timestamp) are not refused.
    let out = update(
        None,
        r#"{"state":{"reported":{"a":1}},"metadata":{"x":1},"timestamp":5,"other":true}"#,
        T0,
    );
    assert_eq!(out.shadow.state.to_value(), json!({"reported": {"a": 1}}));
}

#[test]
fn get_returns_document_with_delta_and_token() {
    let id = ShadowId::parse("MyThing", None).unwrap();
    let shadow = build(
        &[r#"{"state":{"desired":{"color":"red","l":{"r":1}},"reported":{"color":"green","engine":"ON","l":{"r":1}}}}"#],
        T0,
    )
    .unwrap();
    let got = parse(&handle_get(&id, Some(&shadow), Some("tok"), T1).unwrap());
    assert_eq!(
        got,
        json!({
            "clientToken": "tok",
            "state": {
                "desired": {"color": "red", "l": {"r": 1}},
                "reported": {"color": "green", "engine": "ON", "l": {"r": 1}},
                "delta": {"color": "red"}
            },
            "metadata": {
                "desired": {"color": ts(T0), "l": {"r": ts(T0)}},
                "reported": {"color": ts(T0), "engine": ts(T0), "l": {"r": ts(T0)}}
            },
            "timestamp": T1,
            "version": 1
        })
    );
    // Without a token (the HTTP GetThingShadow body) there is no clientToken.
    let http = parse(&handle_get(&id, Some(&shadow), None, T1).unwrap());
    assert!(http.get("clientToken").is_none());
}

#[test]
fn delete_keeps_version_and_recreate_continues_within_48h() {
    let id = ShadowId::parse("t", Some("cfg")).unwrap();
    let limits = ShadowLimits::default();
    let mut current = build(
        &[
            r#"{"state":{"reported":{"a":1}}}"#,
            r#"{"state":{"reported":{"a":2}}}"#,
            r#"{"state":{"reported":{"a":3}}}"#,
        ],
        T0,
    );
    let del = handle_delete(&id, current.as_ref(), Some("d1"), Some(3), T1).unwrap();
    assert_eq!(
        parse(&del.accepted),
        json!({"version": 3, "timestamp": T1, "clientToken": "d1"})
    );
    assert!(del.tombstone.is_deleted());
    assert_eq!(del.tombstone.version, 3);
    assert!(del.tombstone.state.is_empty() && del.tombstone.metadata.is_empty());
    current = Some(del.tombstone.clone());

    // The tombstone answers 404 to get and delete.
    assert_eq!(
        handle_get(&id, current.as_ref(), None, T1)
            .unwrap_err()
            .code,
        404
    );
    assert_eq!(
        handle_delete(&id, current.as_ref(), None, None, T1)
            .unwrap_err()
            .code,
        404
    );

    // Re-created within 48 h: the version continues, and there is no `previous` document.
    let within = T1 + 48 * 3600 - 1;
    assert!(!del.tombstone.tombstone_expired(within, &limits));
    let again = update(
        current.as_ref(),
        r#"{"state":{"reported":{"b":1}},"version":3}"#,
        within,
    );
    assert_eq!(again.shadow.version, 4);
    assert!(!again.shadow.is_deleted());
    assert_eq!(again.shadow.state.to_value(), json!({"reported": {"b": 1}}));
    assert!(parse(&again.documents).get("previous").is_none());

    // After 48 h it starts again from 1.
    let after = T1 + 48 * 3600;
    assert!(del.tombstone.tombstone_expired(after, &limits));
    let fresh = update(current.as_ref(), r#"{"state":{"reported":{"b":1}}}"#, after);
    assert_eq!(fresh.shadow.version, 1);
}

#[test]
fn delete_accepted_without_token_is_the_http_body() {
    let id = ShadowId::parse("t", None).unwrap();
    let current = build(&[r#"{"state":{"reported":{"a":1}}}"#], T0);
    let del = handle_delete(&id, current.as_ref(), None, None, T1).unwrap();
    assert_eq!(parse(&del.accepted), json!({"version": 1, "timestamp": T1}));
}

#[test]
fn request_options_for_get_and_delete() {
    let limits = ShadowLimits::default();
    let parse_opts = |p: &[u8]| RequestOptions::from_payload(p, &limits);
    assert_eq!(parse_opts(b"").unwrap(), RequestOptions::default());
    assert_eq!(parse_opts(b"not json").unwrap(), RequestOptions::default());
    assert_eq!(parse_opts(b"\xff\xfe").unwrap(), RequestOptions::default());
    assert_eq!(parse_opts(b"[1]").unwrap(), RequestOptions::default());
    assert_eq!(
        parse_opts(br#"{"clientToken":"x","version":4}"#).unwrap(),
        RequestOptions {
            client_token: Some("x".to_owned()),
            version: Some(4)
        }
    );
    let long = format!(r#"{{"clientToken":"{}"}}"#, "t".repeat(65));
    let err = parse_opts(long.as_bytes()).unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (400, "Invalid clientToken")
    );
    let err = parse_opts(br#"{"clientToken":"x","version":-1}"#).unwrap_err();
    assert_eq!((err.code, err.message.as_str()), (400, "Invalid version"));
    assert_eq!(err.client_token.as_deref(), Some("x"));
}

#[test]
fn persistence_round_trip_keeps_order_and_tombstones() {
    let live = build(
        &[r#"{"state":{"reported":{"z":1,"a":{"m":[1,{"k":true}]}},"desired":{"b":"x"}}}"#],
        T0,
    )
    .unwrap();
    let bytes = live.to_bytes();
    assert_eq!(StoredShadow::from_bytes(&bytes).unwrap(), live);
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.find("\"z\"").unwrap() < text.find("\"a\"").unwrap());
    assert!(!text.contains("deleted_at"));

    let id = ShadowId::parse("t", None).unwrap();
    let tomb = handle_delete(&id, Some(&live), None, None, T1)
        .unwrap()
        .tombstone;
    assert_eq!(StoredShadow::from_bytes(&tomb.to_bytes()).unwrap(), tomb);
    assert!(StoredShadow::from_bytes(b"{").is_err());
}

#[test]
fn document_size_counts_desired_and_reported_only() {
    let s = build(
        &[r#"{"state":{"desired":{"a":1},"reported":{"bb":"x"}}}"#],
        T0,
    )
    .unwrap();
    assert_eq!(
        s.document_size(),
        r#"{"a":1}"#.len() + r#"{"bb":"x"}"#.len()
    );
}

#[test]
fn key_order_of_the_request_is_kept() {
    let out = update(None, r#"{"state":{"reported":{"z":1,"y":2,"a":3}}}"#, T0);
    let keys: Vec<&String> = out.shadow.state.reported.keys().collect();
    assert_eq!(keys, ["z", "y", "a"]);
    // Deleting a key keeps the order of the others.
    let out = update(
        Some(&out.shadow),
        r#"{"state":{"reported":{"z":null}}}"#,
        T1,
    );
    let keys: Vec<&String> = out.shadow.state.reported.keys().collect();
    assert_eq!(keys, ["y", "a"]);
}

#[test]
fn updating_in_place_matches_the_pure_operation_and_a_refusal_changes_nothing() {
    let limits = ShadowLimits {
        max_document_bytes: 120,
        ..ShadowLimits::default()
    };
    let requests = [
        r#"{"state":{"desired":{"color":"red","n":[1,2]}},"clientToken":"a"}"#,
        r#"{"state":{"reported":{"color":"red"}}}"#,
        r#"{"state":{"desired":{"n":null},"reported":{"extra":{"x":1}}},"version":2}"#,
        // Refused: stale version, bad JSON, and (on the copy path) over the size limit.
        r#"{"state":{"reported":{"a":1}},"version":1}"#,
        r#"{"state":"#,
        r#"{"state":{"reported":{"big":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}}"#,
        r#"{"state":{"desired":null}}"#,
    ];
    let mut pure: Option<StoredShadow> = None;
    let mut in_place: Option<StoredShadow> = None;
    for (i, request) in requests.iter().enumerate() {
        let now = T0 + i as i64;
        let expected = handle_update(pure.as_ref(), request.as_bytes(), now, &limits);
        let before = in_place.clone();
        let documents = if i % 2 == 0 {
            Documents::Build
        } else {
            Documents::Skip
        };
        let got = update_in_place(&mut in_place, request.as_bytes(), now, &limits, documents);
        match (expected, got) {
            (Ok(outcome), Ok(payloads)) => {
                assert_eq!(payloads.accepted, outcome.accepted, "request {i}");
                assert_eq!(payloads.delta, outcome.delta, "request {i}");
                let built = (documents == Documents::Build).then_some(outcome.documents);
                assert_eq!(payloads.documents, built, "request {i}");
                assert_eq!(in_place.as_ref(), Some(&outcome.shadow), "request {i}");
                pure = Some(outcome.shadow);
            }
            (Err(e), Err(f)) => {
                assert_eq!(e, f, "request {i}");
                assert_eq!(
                    in_place, before,
                    "a refused update {i} left the document as it was"
                );
            }
            (e, f) => panic!("request {i}: {e:?} vs {f:?}"),
        }
    }
    assert_eq!(in_place.map(|s| s.version), Some(4));
}
