//! Table-driven authorization tests: documents × requests × expected decision. Every case is
//! checked through the direct evaluator, the compiled form (both entry points), `explain`, and
//! (for the broker's actions) the per-connection authorizer.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use thingd_policy::{
    AltNames, Arns, CertificateContext, ConnectAttributes, ConnectionAuthorizer, Decision,
    DistinguishedName, IotAction, PolicyDocument, PolicySet, Request, ResourceKind, ThingContext,
    Variables,
};

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";

fn arns() -> Arns {
    Arns::new(REGION, ACCOUNT)
}

/// `arn:aws:iot:us-east-1:123456789012:<rest>`.
fn a(rest: &str) -> String {
    format!("arn:aws:iot:{REGION}:{ACCOUNT}:{rest}")
}

fn doc(statements: Value) -> Value {
    json!({"Version": "2012-10-17", "Statement": statements})
}

fn allow(actions: Value, resources: Value) -> Value {
    json!({"Effect": "Allow", "Action": actions, "Resource": resources})
}

fn deny(actions: Value, resources: Value) -> Value {
    json!({"Effect": "Deny", "Action": actions, "Resource": resources})
}

#[derive(Debug, Clone, Copy)]
enum Want {
    Allow(&'static str),
    Deny(&'static str),
    Implicit,
}

struct Case {
    name: &'static str,
    policies: Vec<(&'static str, Value)>,
    vars: Variables,
    action: IotAction,
    /// Resource kind and name (the ARN is built from them).
    kind: ResourceKind,
    resource: String,
    want: Want,
}

fn case(
    name: &'static str,
    policies: Vec<(&'static str, Value)>,
    vars: &Variables,
    action: IotAction,
    kind: ResourceKind,
    resource: &str,
    want: Want,
) -> Case {
    Case {
        name,
        policies,
        vars: vars.clone(),
        action,
        kind,
        resource: resource.to_owned(),
        want,
    }
}

fn client(id: &str) -> Variables {
    Variables {
        client_id: Some(id.to_owned()),
        ..Variables::default()
    }
}

fn with_thing(id: &str) -> Variables {
    let mut attributes = BTreeMap::new();
    attributes.insert("color".to_owned(), "red".to_owned());
    Variables {
        client_id: Some(id.to_owned()),
        thing: Some(ThingContext {
            name: id.to_owned(),
            type_name: Some("sensor".to_owned()),
            attributes,
        }),
        ..Variables::default()
    }
}

fn with_cert() -> Variables {
    Variables {
        client_id: Some("c1".to_owned()),
        certificate_id: Some("ab12".to_owned()),
        certificate: Some(CertificateContext {
            subject: DistinguishedName::new()
                .with("CommonName", "dev-1")
                .with("OrganizationalUnit", "ou-a")
                .with("OrganizationalUnit", "ou-b"),
            issuer: DistinguishedName::new().with("Organization", "Acme"),
            subject_alt_names: AltNames {
                dns_names: vec!["dev1.example.com".to_owned()],
                ..AltNames::default()
            },
            serial_number: Some("12345".to_owned()),
            ..CertificateContext::default()
        }),
        source_ip: Some("10.1.2.3".parse().expect("ip")),
        ..Variables::default()
    }
}

fn connect_with(persistent: bool, will: bool) -> Variables {
    Variables {
        client_id: Some("c1".to_owned()),
        connect_attributes: ConnectAttributes {
            persistent_connect: persistent,
            last_will: will,
        },
        ..Variables::default()
    }
}

fn seed_policy() -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": "arn:aws:iot:us-east-1:123456789012:client/MyJourneyIoTDevice"
            },
            {
                "Effect": "Allow",
                "Action": "iot:Publish",
                "Resource": "arn:aws:iot:us-east-1:123456789012:topic/$aws/things/MyJourneyIoTDevice/shadow/update"
            }
        ]
    })
}

fn cases() -> Vec<Case> {
    use IotAction::*;
    use ResourceKind::{Client, Thing, Topic, TopicFilter};
    use Want::{Allow, Deny, Implicit};
    let none = Variables::default();
    let pub_ab = || vec![("p", doc(allow(json!("iot:Publish"), json!(a("topic/a/b")))))];
    let star = || vec![("p", doc(allow(json!("iot:*"), json!(a("topic/a/*")))))];
    let qmark = || vec![("p", doc(allow(json!("iot:Publish"), json!(a("topic/a/?")))))];
    let filters = |f: &str| vec![("p", doc(allow(json!("iot:Subscribe"), json!(a(f)))))];
    let two = || {
        vec![
            ("open", doc(allow(json!("iot:*"), json!("*")))),
            (
                "closed",
                doc(deny(json!("iot:Publish"), json!(a("topic/secret/*")))),
            ),
        ]
    };
    let not_action = || {
        vec![(
            "p",
            doc(json!({"Effect": "Allow", "NotAction": "iot:Publish", "Resource": "*"})),
        )]
    };
    let not_resource = || {
        vec![(
            "p",
            doc(json!([
                {"Effect": "Allow", "Action": "iot:*", "Resource": "*"},
                {"Effect": "Deny", "Action": "iot:Publish", "NotResource": a("topic/open/*")}
            ])),
        )]
    };
    let by_var = |resource: &str| {
        vec![(
            "p",
            doc(allow(
                json!(["iot:Publish", "iot:Connect"]),
                json!(a(resource)),
            )),
        )]
    };
    let cond = |c: Value| {
        vec![(
            "p",
            doc(json!({"Effect": "Allow", "Action": "iot:*", "Resource": "*", "Condition": c})),
        )]
    };
    let attached = || cond(json!({"Bool": {"iot:Connection.Thing.IsAttached": "true"}}));
    let any_persistent = || {
        cond(json!({"ForAnyValue:StringEquals": {"iot:ConnectAttributes": ["PersistentConnect"]}}))
    };
    let all_persistent = || {
        cond(json!({"ForAllValues:StringEquals": {"iot:ConnectAttributes": ["PersistentConnect"]}}))
    };
    let no_will =
        || cond(json!({"ForAnyValue:StringEquals": {"iot:ConnectAttributes": "LastWill"}}));
    let ip = || cond(json!({"IpAddress": {"aws:SourceIp": ["192.168.0.0/16", "10.0.0.0/8"]}}));
    let not_ip = || cond(json!({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}));
    let like = || cond(json!({"StringLike": {"iot:ClientId": "sensor-*"}}));
    let seed = || vec![("seed", seed_policy())];

    let v2008 = || {
        vec![(
            "old",
            json!({"Version": "2008-10-17", "Statement": allow(json!("iot:Publish"), json!(a("topic/${iot:ClientId}")))}),
        )]
    };

    vec![
        // Basics.
        case(
            "exact allow",
            pub_ab(),
            &none,
            Publish,
            Topic,
            "a/b",
            Allow("p"),
        ),
        case(
            "default deny other topic",
            pub_ab(),
            &none,
            Publish,
            Topic,
            "a/c",
            Implicit,
        ),
        case(
            "default deny other action",
            pub_ab(),
            &none,
            Subscribe,
            TopicFilter,
            "a/b",
            Implicit,
        ),
        case(
            "no policies",
            vec![],
            &none,
            Publish,
            Topic,
            "a/b",
            Implicit,
        ),
        case(
            "deny in same policy wins",
            vec![(
                "p",
                doc(json!([
                    allow(json!("iot:*"), json!("*")),
                    deny(json!("iot:Publish"), json!(a("topic/a/b")))
                ])),
            )],
            &none,
            Publish,
            Topic,
            "a/b",
            Deny("p"),
        ),
        case(
            "explicit deny across policies",
            two(),
            &none,
            Publish,
            Topic,
            "secret/x",
            Deny("closed"),
        ),
        case(
            "other policy still allows",
            two(),
            &none,
            Publish,
            Topic,
            "public/x",
            Allow("open"),
        ),
        case(
            "deny only covers publish",
            two(),
            &none,
            Receive,
            Topic,
            "secret/x",
            Allow("open"),
        ),
        // Wildcards.
        case(
            "star spans slashes",
            star(),
            &none,
            Receive,
            Topic,
            "a/b/c/d",
            Allow("p"),
        ),
        case(
            "star matches empty",
            star(),
            &none,
            Receive,
            Topic,
            "a/",
            Allow("p"),
        ),
        case(
            "star needs prefix",
            star(),
            &none,
            Receive,
            Topic,
            "b/a",
            Implicit,
        ),
        case(
            "question one char",
            qmark(),
            &none,
            Publish,
            Topic,
            "a/b",
            Allow("p"),
        ),
        case(
            "question not two",
            qmark(),
            &none,
            Publish,
            Topic,
            "a/bc",
            Implicit,
        ),
        case(
            "question not zero",
            qmark(),
            &none,
            Publish,
            Topic,
            "a/",
            Implicit,
        ),
        case(
            "question one multibyte char",
            qmark(),
            &none,
            Publish,
            Topic,
            "a/é",
            Allow("p"),
        ),
        case(
            "filter a/# by a/*",
            filters("topicfilter/a/*"),
            &none,
            Subscribe,
            TopicFilter,
            "a/#",
            Allow("p"),
        ),
        case(
            "filter a/# by a/#",
            filters("topicfilter/a/#"),
            &none,
            Subscribe,
            TopicFilter,
            "a/#",
            Allow("p"),
        ),
        case(
            "a/# is literal",
            filters("topicfilter/a/#"),
            &none,
            Subscribe,
            TopicFilter,
            "a/b",
            Implicit,
        ),
        case(
            "a/+ does not allow a/b",
            filters("topicfilter/a/+"),
            &none,
            Subscribe,
            TopicFilter,
            "a/b",
            Implicit,
        ),
        case(
            "a/+ allows the filter a/+",
            filters("topicfilter/a/+"),
            &none,
            Subscribe,
            TopicFilter,
            "a/+",
            Allow("p"),
        ),
        case(
            "topicfilter is not topic",
            filters("topicfilter/a/*"),
            &none,
            Publish,
            Topic,
            "a/b",
            Implicit,
        ),
        case(
            "fixed-value escape",
            vec![(
                "p",
                doc(allow(json!("iot:Publish"), json!(a("topic/a${*}${?}${$}")))),
            )],
            &none,
            Publish,
            Topic,
            "a*?$",
            Allow("p"),
        ),
        case(
            "fixed-value escape is not a wildcard",
            vec![(
                "p",
                doc(allow(json!("iot:Publish"), json!(a("topic/a${*}")))),
            )],
            &none,
            Publish,
            Topic,
            "ab",
            Implicit,
        ),
        case(
            "region and account wildcards",
            vec![(
                "p",
                doc(allow(
                    json!("iot:Publish"),
                    json!("arn:aws:iot:*:*:topic/x"),
                )),
            )],
            &none,
            Publish,
            Topic,
            "x",
            Allow("p"),
        ),
        case(
            "other region does not match",
            vec![(
                "p",
                doc(allow(
                    json!("iot:Publish"),
                    json!("arn:aws:iot:eu-west-1:123456789012:topic/x"),
                )),
            )],
            &none,
            Publish,
            Topic,
            "x",
            Implicit,
        ),
        // Actions.
        case(
            "iot:* covers receive",
            star(),
            &none,
            Receive,
            Topic,
            "a/x",
            Allow("p"),
        ),
        case(
            "iot:Pub* covers publish",
            vec![("p", doc(allow(json!("iot:Pub*"), json!("*"))))],
            &none,
            Publish,
            Topic,
            "z",
            Allow("p"),
        ),
        case(
            "iot:Pub* not subscribe",
            vec![("p", doc(allow(json!("iot:Pub*"), json!("*"))))],
            &none,
            Subscribe,
            TopicFilter,
            "z",
            Implicit,
        ),
        case(
            "action names ignore case",
            vec![("p", doc(allow(json!("IOT:publish"), json!("*"))))],
            &none,
            Publish,
            Topic,
            "z",
            Allow("p"),
        ),
        case(
            "bare star action",
            vec![("p", doc(allow(json!("*"), json!("*"))))],
            &none,
            Connect,
            Client,
            "z",
            Allow("p"),
        ),
        case(
            "other action by iot:*",
            vec![("p", doc(allow(json!("iot:*"), json!(a("thing/t1")))))],
            &none,
            IotAction::from_name("iot:DescribeJobExecution"),
            Thing,
            "t1",
            Allow("p"),
        ),
        case(
            "shadow action on named shadow",
            vec![(
                "p",
                doc(allow(json!("iot:GetThingShadow"), json!(a("thing/t1/*")))),
            )],
            &none,
            GetThingShadow,
            Thing,
            "t1/config",
            Allow("p"),
        ),
        case(
            "NotAction allows the rest",
            not_action(),
            &none,
            Subscribe,
            TopicFilter,
            "x",
            Allow("p"),
        ),
        case(
            "NotAction excludes",
            not_action(),
            &none,
            Publish,
            Topic,
            "x",
            Implicit,
        ),
        case(
            "NotResource denies outside",
            not_resource(),
            &none,
            Publish,
            Topic,
            "closed/x",
            Deny("p"),
        ),
        case(
            "NotResource inside",
            not_resource(),
            &none,
            Publish,
            Topic,
            "open/x",
            Allow("p"),
        ),
        case(
            "NotResource other action",
            not_resource(),
            &none,
            Receive,
            Topic,
            "closed/x",
            Allow("p"),
        ),
        // Variables.
        case(
            "ClientId",
            by_var("topic/dev/${iot:ClientId}/*"),
            &client("c1"),
            Publish,
            Topic,
            "dev/c1/t",
            Allow("p"),
        ),
        case(
            "ClientId other",
            by_var("topic/dev/${iot:ClientId}/*"),
            &client("c1"),
            Publish,
            Topic,
            "dev/c2/t",
            Implicit,
        ),
        case(
            "ClientId connect",
            by_var("client/${iot:ClientId}"),
            &client("c1"),
            Connect,
            Client,
            "c1",
            Allow("p"),
        ),
        case(
            "ClientId star is literal",
            by_var("topic/dev/${iot:ClientId}/x"),
            &client("*"),
            Publish,
            Topic,
            "dev/other/x",
            Implicit,
        ),
        case(
            "ClientId star matches itself",
            by_var("topic/dev/${iot:ClientId}/x"),
            &client("*"),
            Publish,
            Topic,
            "dev/*/x",
            Allow("p"),
        ),
        case(
            "ClientId question is literal",
            by_var("topic/${iot:ClientId}"),
            &client("?"),
            Publish,
            Topic,
            "a",
            Implicit,
        ),
        case(
            "ClientId star connect",
            by_var("client/${iot:ClientId}"),
            &client("*"),
            Connect,
            Client,
            "someone",
            Implicit,
        ),
        case(
            "ClientId unresolved",
            by_var("topic/dev/${iot:ClientId}"),
            &none,
            Publish,
            Topic,
            "dev/",
            Implicit,
        ),
        case(
            "unresolved stays literal text",
            by_var("topic/dev/${iot:ClientId}"),
            &none,
            Publish,
            Topic,
            "dev/${iot:ClientId}",
            Allow("p"),
        ),
        case(
            "ThingName",
            by_var("topic/t/${iot:Connection.Thing.ThingName}"),
            &with_thing("t1"),
            Publish,
            Topic,
            "t/t1",
            Allow("p"),
        ),
        case(
            "legacy Thing.ThingName",
            by_var("topic/t/${iot:Thing.ThingName}"),
            &with_thing("t1"),
            Publish,
            Topic,
            "t/t1",
            Allow("p"),
        ),
        case(
            "ThingName not attached",
            by_var("topic/t/${iot:Connection.Thing.ThingName}"),
            &client("t1"),
            Publish,
            Topic,
            "t/t1",
            Implicit,
        ),
        case(
            "ThingTypeName",
            by_var("topic/${iot:Connection.Thing.ThingTypeName}/*"),
            &with_thing("t1"),
            Publish,
            Topic,
            "sensor/x",
            Allow("p"),
        ),
        case(
            "Attributes",
            by_var("topic/${iot:Connection.Thing.Attributes[color]}"),
            &with_thing("t1"),
            Publish,
            Topic,
            "red",
            Allow("p"),
        ),
        case(
            "Attributes missing",
            by_var("topic/${iot:Connection.Thing.Attributes[size]}"),
            &with_thing("t1"),
            Publish,
            Topic,
            "red",
            Implicit,
        ),
        case(
            "IsAttached var",
            by_var("topic/${iot:Connection.Thing.IsAttached}"),
            &client("c"),
            Publish,
            Topic,
            "false",
            Allow("p"),
        ),
        case(
            "IsAttached true",
            attached(),
            &with_thing("t1"),
            Connect,
            Client,
            "t1",
            Allow("p"),
        ),
        case(
            "IsAttached false",
            attached(),
            &client("t1"),
            Connect,
            Client,
            "t1",
            Implicit,
        ),
        case(
            "Subject CommonName",
            by_var("topic/${iot:Certificate.Subject.CommonName}"),
            &with_cert(),
            Publish,
            Topic,
            "dev-1",
            Allow("p"),
        ),
        case(
            "Subject OU first",
            by_var("topic/${iot:Certificate.Subject.OrganizationalUnit}"),
            &with_cert(),
            Publish,
            Topic,
            "ou-a",
            Allow("p"),
        ),
        case(
            "Subject OU .1",
            by_var("topic/${iot:Certificate.Subject.OrganizationalUnit.1}"),
            &with_cert(),
            Publish,
            Topic,
            "ou-b",
            Allow("p"),
        ),
        case(
            "Subject OU .2 out of range",
            by_var("topic/x${iot:Certificate.Subject.OrganizationalUnit.2}"),
            &with_cert(),
            Publish,
            Topic,
            "x",
            Implicit,
        ),
        case(
            "Issuer Organization",
            by_var("topic/${iot:Certificate.Issuer.Organization}"),
            &with_cert(),
            Publish,
            Topic,
            "Acme",
            Allow("p"),
        ),
        case(
            "SAN DNSName",
            by_var("topic/${iot:Certificate.Subject.AlternativeName.DNSName}"),
            &with_cert(),
            Publish,
            Topic,
            "dev1.example.com",
            Allow("p"),
        ),
        case(
            "SerialNumber",
            by_var("topic/${iot:Certificate.SerialNumber}"),
            &with_cert(),
            Publish,
            Topic,
            "12345",
            Allow("p"),
        ),
        case(
            "CertificateId",
            by_var("topic/${iot:CertificateId}"),
            &with_cert(),
            Publish,
            Topic,
            "ab12",
            Allow("p"),
        ),
        case(
            "2008 version has no variables",
            v2008(),
            &client("c1"),
            Publish,
            Topic,
            "c1",
            Implicit,
        ),
        case(
            "2008 version literal text",
            v2008(),
            &client("c1"),
            Publish,
            Topic,
            "${iot:ClientId}",
            Allow("old"),
        ),
        // Conditions.
        case(
            "ForAnyValue persistent yes",
            any_persistent(),
            &connect_with(true, false),
            Connect,
            Client,
            "c1",
            Allow("p"),
        ),
        case(
            "ForAnyValue persistent no",
            any_persistent(),
            &connect_with(false, false),
            Connect,
            Client,
            "c1",
            Implicit,
        ),
        case(
            "ForAnyValue LastWill",
            no_will(),
            &connect_with(false, true),
            Connect,
            Client,
            "c1",
            Allow("p"),
        ),
        case(
            "ForAnyValue LastWill absent",
            no_will(),
            &connect_with(true, false),
            Connect,
            Client,
            "c1",
            Implicit,
        ),
        case(
            "ForAllValues clean",
            all_persistent(),
            &connect_with(false, false),
            Connect,
            Client,
            "c1",
            Allow("p"),
        ),
        case(
            "ForAllValues persistent",
            all_persistent(),
            &connect_with(true, false),
            Connect,
            Client,
            "c1",
            Allow("p"),
        ),
        case(
            "ForAllValues will refused",
            all_persistent(),
            &connect_with(true, true),
            Connect,
            Client,
            "c1",
            Implicit,
        ),
        case(
            "IpAddress in",
            ip(),
            &with_cert(),
            Publish,
            Topic,
            "x",
            Allow("p"),
        ),
        case(
            "IpAddress unknown ip",
            ip(),
            &none,
            Publish,
            Topic,
            "x",
            Implicit,
        ),
        case(
            "NotIpAddress in",
            not_ip(),
            &with_cert(),
            Publish,
            Topic,
            "x",
            Implicit,
        ),
        case(
            "NotIpAddress out",
            not_ip(),
            &Variables {
                source_ip: Some("2001:db8::1".parse().expect("ip")),
                ..Variables::default()
            },
            Publish,
            Topic,
            "x",
            Allow("p"),
        ),
        case(
            "StringLike yes",
            like(),
            &client("sensor-7"),
            Connect,
            Client,
            "sensor-7",
            Allow("p"),
        ),
        case(
            "StringLike no",
            like(),
            &client("actuator-7"),
            Connect,
            Client,
            "actuator-7",
            Implicit,
        ),
        case(
            "StringEquals with variable value",
            cond(json!({"StringEquals": {"iot:Connection.Thing.ThingName": "${iot:ClientId}"}})),
            &with_thing("t1"),
            Connect,
            Client,
            "t1",
            Allow("p"),
        ),
        case(
            "condition on a deny",
            vec![(
                "p",
                doc(json!([
                    allow(json!("iot:*"), json!("*")),
                    {"Effect": "Deny", "Action": "iot:Connect", "Resource": "*",
                     "Condition": {"StringNotLike": {"iot:ClientId": "good-*"}}}
                ])),
            )],
            &client("bad-1"),
            Connect,
            Client,
            "bad-1",
            Deny("p"),
        ),
        case(
            "condition on a deny not met",
            vec![(
                "p",
                doc(json!([
                    allow(json!("iot:*"), json!("*")),
                    {"Effect": "Deny", "Action": "iot:Connect", "Resource": "*",
                     "Condition": {"StringNotLike": {"iot:ClientId": "good-*"}}}
                ])),
            )],
            &client("good-1"),
            Connect,
            Client,
            "good-1",
            Allow("p"),
        ),
        // The seed's policy.
        case(
            "seed connect",
            seed(),
            &client("MyJourneyIoTDevice"),
            Connect,
            Client,
            "MyJourneyIoTDevice",
            Allow("seed"),
        ),
        case(
            "seed publish shadow update",
            seed(),
            &client("MyJourneyIoTDevice"),
            Publish,
            Topic,
            "$aws/things/MyJourneyIoTDevice/shadow/update",
            Allow("seed"),
        ),
        case(
            "seed publish other shadow",
            seed(),
            &client("MyJourneyIoTDevice"),
            Publish,
            Topic,
            "$aws/things/Other/shadow/update",
            Implicit,
        ),
        case(
            "seed no subscribe",
            seed(),
            &client("MyJourneyIoTDevice"),
            Subscribe,
            TopicFilter,
            "$aws/things/MyJourneyIoTDevice/shadow/update",
            Implicit,
        ),
        case(
            "seed other client",
            seed(),
            &client("Intruder"),
            Connect,
            Client,
            "Intruder",
            Implicit,
        ),
    ]
}

fn expected(want: Want) -> Decision {
    match want {
        Want::Allow(by) => Decision::Allowed { by: by.to_owned() },
        Want::Deny(by) => Decision::ExplicitDeny { by: by.to_owned() },
        Want::Implicit => Decision::ImplicitDeny,
    }
}

#[test]
fn which_sets_depend_on_the_connection() {
    let parse = |v: Value| PolicyDocument::parse(&v.to_string()).expect("policy parses");
    let set = |v: Value| PolicySet::new().with("p", parse(v));
    let plain = set(doc(
        json!([{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]),
    ));
    assert!(!plain.depends_on_connection());
    let variable = set(doc(json!([{
        "Effect": "Allow",
        "Action": "iot:Connect",
        "Resource": "arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"
    }])));
    assert!(variable.depends_on_connection());
    let condition = set(doc(json!([{
        "Effect": "Allow",
        "Action": "iot:Connect",
        "Resource": "*",
        "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}
    }])));
    assert!(condition.depends_on_connection());
    let mixed = plain.with(
        "q",
        parse(doc(json!([{
            "Effect": "Deny",
            "Action": "iot:Publish",
            "Resource": "arn:aws:iot:us-east-1:123456789012:topic/${iot:ClientId}/secret"
        }]))),
    );
    assert!(mixed.depends_on_connection());
}

#[test]
fn decision_table() {
    let arns = arns();
    let mut failures = Vec::new();
    for c in cases() {
        let mut set = PolicySet::new();
        for (name, json) in &c.policies {
            let text = json.to_string();
            match PolicyDocument::parse(&text) {
                Ok(d) => set.push(*name, d.into()),
                Err(e) => panic!("{}: policy {name} does not parse: {e}", c.name),
            }
        }
        let want = expected(c.want);
        let arn = arns.resource(c.kind, &c.resource);
        let request = Request {
            action: &c.action,
            resource: &arn,
            variables: &c.vars,
        };
        let direct = set.authorize(&request);
        let explained = set.explain(&request).decision;
        let compiled = set.compile(&arns, &c.vars);
        let suffix = arns.suffix(&arn).unwrap_or_default();
        let by_suffix = compiled.decide(&c.action, suffix);
        let by_name = compiled.decide_resource(&c.action, c.kind, &c.resource);
        // A set that does not depend on the connection decides the same for anyone.
        let without_facts = if set.depends_on_connection() {
            want.clone()
        } else {
            set.compile(&arns, &Variables::default()).decide_resource(
                &c.action,
                c.kind,
                &c.resource,
            )
        };
        for (how, got) in [
            ("compiled without the connection's facts", &without_facts),
            ("authorize", &direct),
            ("explain", &explained),
            ("compiled decide", &by_suffix),
            ("compiled decide_resource", &by_name),
        ] {
            if *got != want {
                failures.push(format!("{}: {how} gave {got:?}, want {want:?}", c.name));
            }
        }
        let conn = ConnectionAuthorizer::new(compiled);
        for _ in 0..2 {
            let got = conn.allows(&c.action, c.kind, &c.resource);
            if got != want.is_allowed() {
                failures.push(format!("{}: ConnectionAuthorizer gave {got}", c.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn explain_lists_all_deciding_policies() {
    let set = PolicySet::new()
        .with("a", parse(doc(allow(json!("iot:*"), json!("*")))))
        .with("b", parse(doc(deny(json!("iot:Publish"), json!("*")))))
        .with(
            "c",
            parse(doc(allow(json!("iot:Publish"), json!(a("topic/x"))))),
        )
        .with("d", parse(doc(deny(json!("iot:*"), json!(a("topic/*"))))));
    let vars = Variables::default();
    let arn = a("topic/x");
    let e = set.explain(&Request {
        action: &IotAction::Publish,
        resource: &arn,
        variables: &vars,
    });
    assert_eq!(e.decision, Decision::ExplicitDeny { by: "b".to_owned() });
    assert_eq!(e.decision.auth_decision(), "EXPLICIT_DENY");
    assert_eq!(e.allowing, ["a", "c"]);
    assert_eq!(e.denying, ["b", "d"]);
}

fn parse(v: Value) -> PolicyDocument {
    PolicyDocument::parse(&v.to_string()).expect("policy parses")
}

#[test]
fn connection_authorizer_retain_and_cache() {
    let set = PolicySet::new().with(
        "p",
        parse(doc(json!([
            allow(json!(["iot:Publish", "iot:Receive"]), json!(a("topic/t/*"))),
            allow(json!("iot:RetainPublish"), json!(a("topic/t/retained/*"))),
            allow(json!("iot:Subscribe"), json!(a("topicfilter/t/*"))),
            allow(json!("iot:Connect"), json!(a("client/${iot:ClientId}"))),
        ]))),
    );
    let vars = client("c1");
    let conn = ConnectionAuthorizer::with_cache_capacity(set.compile(&arns(), &vars), 3);
    assert!(conn.can_connect("c1"));
    assert!(!conn.can_connect("c2"));
    assert!(conn.can_publish("t/x", false));
    assert!(!conn.can_publish("t/x", true));
    assert!(conn.can_publish("t/retained/x", true));
    assert!(!conn.can_publish("u/x", false));
    assert!(conn.cached_decisions() <= 3);
    for i in 0..20 {
        let topic = format!("t/{i}");
        assert!(conn.can_receive(&topic));
        assert!(conn.can_receive(&topic));
        assert!(conn.can_subscribe("t/#"));
        assert!(!conn.can_subscribe("#"));
        assert!(conn.cached_decisions() <= 3);
    }
    let uncached = ConnectionAuthorizer::with_cache_capacity(set.compile(&arns(), &vars), 0);
    assert!(uncached.can_receive("t/1"));
    assert_eq!(uncached.cached_decisions(), 0);
}

#[test]
fn compiled_specialises_to_the_account() {
    // A pattern for another account never matches; a NotResource for another account
    // matches everything in this one.
    let set = PolicySet::new().with(
        "p",
        parse(doc(json!([
            {"Effect": "Allow", "Action": "iot:Publish", "NotResource": "arn:aws:iot:us-east-1:999999999999:topic/*"},
            deny(json!("iot:Publish"), json!("arn:aws:iot:us-east-1:999999999999:topic/x")),
        ]))),
    );
    let compiled = set.compile(&arns(), &Variables::default());
    assert!(compiled.allows(&IotAction::Publish, "topic/x"));
    assert!(compiled.allows_resource(&IotAction::Publish, ResourceKind::Topic, "x"));
    // A mismatched kind takes the general path.
    assert!(compiled.allows_resource(&IotAction::Publish, ResourceKind::Client, "x"));
    assert_eq!(compiled.policy_names(), ["p"]);
}
