//! Property tests: the compiled evaluation agrees with the direct one on random policies,
//! connections and resources; parsing never panics.

use proptest::prelude::*;
use serde_json::{Value, json};
use thingd_policy::{
    Arns, ConnectionAuthorizer, IotAction, PolicyDocument, PolicySet, Request, ResourceKind,
    ThingContext, Variables,
};

const PREFIXES: [&str; 10] = [
    "arn:aws:iot:us-east-1:123456789012:topic/",
    "arn:aws:iot:us-east-1:123456789012:topicfilter/",
    "arn:aws:iot:us-east-1:123456789012:client/",
    "arn:aws:iot:us-east-1:123456789012:",
    "arn:aws:iot:*:*:topic/",
    "arn:aws:iot:us-east-?:*:",
    "arn:aws:iot:eu-west-1:123456789012:topic/",
    "arn:*",
    "arn:aws:iot:us-east-1:123456789012:t",
    "arn:aws:iot:us-east-1:123456789012:*/",
];

const PIECES: [&str; 14] = [
    "a",
    "b",
    "/",
    "*",
    "?",
    "+",
    "#",
    "é",
    "$",
    "${iot:ClientId}",
    "${*}",
    "${?}",
    "${iot:Connection.Thing.ThingName}",
    "${iot:Nope}",
];

const ACTIONS: [&str; 9] = [
    "iot:Publish",
    "iot:Subscribe",
    "iot:Receive",
    "iot:Connect",
    "iot:RetainPublish",
    "iot:*",
    "iot:Pub*",
    "iot:?eceive",
    "*",
];

const NAME_PIECES: [&str; 11] = [
    "a",
    "b",
    "/",
    "*",
    "?",
    "+",
    "#",
    "é",
    "$",
    "dev",
    "${iot:ClientId}",
];

fn resource() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("*".to_owned()),
        8 => (
            prop::sample::select(&PREFIXES[..]),
            prop::collection::vec(prop::sample::select(&PIECES[..]), 0..6)
        )
            .prop_map(|(p, body)| format!("{p}{}", body.concat())),
    ]
}

fn statement() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        prop::collection::vec(prop::sample::select(&ACTIONS[..]), 1..3),
        prop::collection::vec(resource(), 1..3),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(allow, actions, resources, not_action, not_resource)| {
            let mut st = serde_json::Map::new();
            st.insert(
                "Effect".to_owned(),
                json!(if allow { "Allow" } else { "Deny" }),
            );
            let ak = if not_action { "NotAction" } else { "Action" };
            let rk = if not_resource {
                "NotResource"
            } else {
                "Resource"
            };
            st.insert(ak.to_owned(), json!(actions));
            st.insert(rk.to_owned(), json!(resources));
            Value::Object(st)
        })
}

fn policy() -> impl Strategy<Value = PolicyDocument> {
    prop::collection::vec(statement(), 1..4).prop_map(|statements| {
        let text = json!({"Version": "2012-10-17", "Statement": statements}).to_string();
        PolicyDocument::parse(&text)
            .unwrap_or_else(|e| panic!("generated policy rejected: {e}\n{text}"))
    })
}

fn variables() -> impl Strategy<Value = Variables> {
    (
        prop::option::of(prop::sample::select(vec![
            "dev",
            "*",
            "a?",
            "é/a",
            "${iot:ClientId}",
        ])),
        prop::option::of(prop::sample::select(vec!["dev", "a*", "b"])),
    )
        .prop_map(|(client, thing)| Variables {
            client_id: client.map(str::to_owned),
            thing: thing.map(|name| ThingContext {
                name: name.to_owned(),
                ..ThingContext::default()
            }),
            ..Variables::default()
        })
}

fn action() -> impl Strategy<Value = IotAction> {
    prop::sample::select(vec![
        IotAction::Publish,
        IotAction::Subscribe,
        IotAction::Receive,
        IotAction::Connect,
        IotAction::RetainPublish,
        IotAction::ListRetainedMessages,
        IotAction::from_name("iot:Frobnicate"),
        IotAction::from_name("iot:PublishMore"),
    ])
}

fn kind() -> impl Strategy<Value = ResourceKind> {
    prop::sample::select(vec![
        ResourceKind::Topic,
        ResourceKind::TopicFilter,
        ResourceKind::Client,
        ResourceKind::Thing,
    ])
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&NAME_PIECES[..]), 0..8).prop_map(|v| v.concat())
}

/// An ARN suffix: sometimes with a resource-type prefix, sometimes not.
fn suffix() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["", "topic/", "topicfilter/", "client/", "thing/", "t"]),
        name(),
    )
        .prop_map(|(p, n)| format!("{p}{n}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_equals_direct(
        docs in prop::collection::vec(policy(), 0..3),
        vars in variables(),
        requests in prop::collection::vec((action(), kind(), name(), suffix()), 1..8),
    ) {
        let arns = Arns::new("us-east-1", "123456789012");
        let mut set = PolicySet::new();
        for (i, d) in docs.into_iter().enumerate() {
            set = set.with(format!("p{i}"), d);
        }
        let compiled = set.compile(&arns, &vars);
        let conn = ConnectionAuthorizer::with_cache_capacity(set.compile(&arns, &vars), 4);
        for (action, kind, name, raw_suffix) in requests {
            // By kind and name (the broker's path).
            let arn = arns.resource(kind, &name);
            let direct = set.authorize(&Request { action: &action, resource: &arn, variables: &vars });
            prop_assert_eq!(&compiled.decide_resource(&action, kind, &name), &direct, "{} on {}", action, arn);
            prop_assert_eq!(compiled.allows_resource(&action, kind, &name), direct.is_allowed());
            prop_assert_eq!(conn.allows(&action, kind, &name), direct.is_allowed());
            prop_assert_eq!(&set.explain(&Request { action: &action, resource: &arn, variables: &vars }).decision, &direct);
            // By an arbitrary suffix.
            let arn = format!("{}{raw_suffix}", arns.prefix());
            let direct = set.authorize(&Request { action: &action, resource: &arn, variables: &vars });
            prop_assert_eq!(&compiled.decide(&action, &raw_suffix), &direct, "{} on {}", action, arn);
        }
    }

    #[test]
    fn parse_never_panics(text in ".{0,200}") {
        let _ = PolicyDocument::parse(&text);
    }

    #[test]
    fn parse_never_panics_on_policy_shaped_json(
        version in prop::sample::select(vec!["2012-10-17", "2008-10-17", "x"]),
        effect in prop::sample::select(vec!["Allow", "Deny", ""]),
        action in "[a-z:*?]{0,12}",
        res in "[a-z:*?${}/]{0,30}",
        op in prop::sample::select(vec![
            "StringEquals", "ForAnyValue:StringLike", "ForAllValues:StringNotEqualsIfExists",
            "Bool", "Null", "IpAddress", "NumericLessThan", "ArnLike", "Nope", "NullIfExists",
        ]),
        key in "[a-zA-Z:.\\[\\]]{0,30}",
        value in prop::sample::select(vec![json!("a*"), json!(1), json!(true), json!(["10.0.0.0/8", "x"]), json!(null), json!({})]),
    ) {
        let doc = json!({"Version": version, "Statement": [{
            "Effect": effect, "Action": action, "Resource": res,
            "Condition": {op: {key: value}}
        }]});
        if let Ok(d) = PolicyDocument::parse(&doc.to_string()) {
            let vars = Variables { client_id: Some("a*".to_owned()), ..Variables::default() };
            let set = PolicySet::new().with("p", d);
            let arns = Arns::new("r", "1");
            let compiled = set.compile(&arns, &vars);
            let _ = compiled.allows(&IotAction::Publish, "topic/a");
        }
    }
}
