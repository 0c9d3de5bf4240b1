//! Policy document validation: what is rejected, and that the message says what and where.

use thingd_policy::{
    Effect, MAX_POLICY_NON_WHITESPACE_CHARS, PolicyDocument, PolicyError, PolicyVersion,
    check_size, non_whitespace_len,
};

fn err(json: &str) -> PolicyError {
    match PolicyDocument::parse(json) {
        Ok(d) => panic!("expected an error, parsed {d:?}"),
        Err(e) => e,
    }
}

fn message(json: &str) -> String {
    err(json).to_string()
}

const OK: &str = r#"{
  "Version": "2012-10-17",
  "Id": "x",
  "Statement": [
    {"Sid": "one", "Effect": "Allow", "Action": ["iot:Connect"], "Resource": ["arn:aws:iot:us-east-1:123456789012:client/${iot:ClientId}"],
     "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": true}}},
    {"Effect": "Deny", "NotAction": "iot:Publish", "NotResource": "*"}
  ]
}"#;

#[test]
fn parses_a_valid_document() {
    let d = PolicyDocument::parse(OK).expect("valid");
    assert_eq!(d.version(), PolicyVersion::V2012_10_17);
    assert_eq!(d.id(), Some("x"));
    assert_eq!(d.statements().len(), 2);
    let s = &d.statements()[0];
    assert_eq!(s.sid(), Some("one"));
    assert_eq!(s.effect(), Effect::Allow);
    assert_eq!(
        s.action_patterns(),
        (&["iot:Connect".to_owned()][..], false)
    );
    assert!(s.has_conditions());
    let s = &d.statements()[1];
    assert_eq!(s.effect(), Effect::Deny);
    assert_eq!(s.resource_patterns(), (&["*".to_owned()][..], true));
}

#[test]
fn single_statement_object() {
    let d = PolicyDocument::parse(
        r#"{"Version":"2008-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}"#,
    )
    .expect("valid");
    assert_eq!(d.version(), PolicyVersion::V2008_10_17);
    assert_eq!(d.statements().len(), 1);
}

#[test]
fn not_json_reports_line_and_column() {
    let e = err("{\n  \"Version\": \"2012-10-17\",\n  \"Statement\": [\n}");
    match &e {
        PolicyError::Syntax { line, column, .. } => {
            assert_eq!(*line, 4);
            assert_eq!(*column, 1);
        }
        other => panic!("not a syntax error: {other:?}"),
    }
    let text = e.to_string();
    assert!(
        text.starts_with("policy document is not valid JSON: "),
        "{text}"
    );
    assert!(text.ends_with("at line 4, column 1"), "{text}");
    assert!(matches!(err(""), PolicyError::Syntax { .. }));
    assert!(matches!(err("{} x"), PolicyError::Syntax { .. }));
}

#[test]
fn semantic_errors_name_the_place() {
    let cases = [
        (r#"[]"#, "a policy document must be a JSON object"),
        (
            r#"{"Statement": []}"#,
            "Version: required element is missing",
        ),
        (
            r#"{"Version": "2013-01-01", "Statement": []}"#,
            r#"Version: expected "2012-10-17" or "2008-10-17", got "2013-01-01""#,
        ),
        (
            r#"{"Version": 2012, "Statement": []}"#,
            r#"Version: expected "2012-10-17" or "2008-10-17", got 2012"#,
        ),
        (
            r#"{"Version": "2012-10-17"}"#,
            "Statement: required element is missing",
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": []}"#,
            "Statement: must contain at least one statement",
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": "x"}"#,
            "Statement: expected a statement object or an array of them",
        ),
        (
            r#"{"Version": "2012-10-17", "Statment": []}"#,
            "Statment: unknown element; a policy document has Version, Statement and optionally Id",
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "iot:*", "Resource": "*"},
                {"Effect": "allow", "Action": "iot:*", "Resource": "*"}]}"#,
            r#"Statement[1].Effect: expected "Allow" or "Deny", got "allow""#,
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": [{"Action": "iot:*", "Resource": "*"}]}"#,
            "Statement[0].Effect: required element is missing",
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": [], "Resource": "*"}]}"#,
            "Statement[0].Action: must not be an empty array",
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "", "Resource": "*"}]}"#,
            "Statement[0].Action: must not be empty",
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*"}]}"#,
            "Statement[0].Action: required element is missing (or use NotAction)",
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "NotAction": "iot:Publish", "Resource": "*"}]}"#,
            "Statement[0]: has both Action and NotAction; use one",
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["iot:*", "Publish"], "Resource": "*"}]}"#,
            r#"Statement[0].Action[1]: expected "<service>:<action>" (such as "iot:Publish") or "*", got "Publish""#,
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*"}]}"#,
            "Statement[0].Resource: required element is missing (or use NotResource)",
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "topic/a"}]}"#,
            r#"Statement[0].Resource: expected an ARN ("arn:aws:iot:...") or "*", got "topic/a""#,
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": ["*", 3]}]}"#,
            "Statement[0].Resource[1]: expected a string",
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "iot:*", "Resource": "*", "Principal": "*"}}"#,
            "Statement.Principal: not allowed in an AWS IoT policy (the policy applies to the principal it is attached to)",
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*",
                "Condition": {"StringEqualz": {"iot:ClientId": "a"}}}]}"#,
            r#"Statement[0].Condition: unknown condition operator "StringEqualz""#,
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*",
                "Condition": {"DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}}}]}"#,
            r#"Statement[0].Condition: condition operator "DateLessThan" is not supported"#,
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*",
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "yes"}}}]}"#,
            r#"Statement[0].Condition.Bool.iot:Connection.Thing.IsAttached: expected "true" or "false", got "yes""#,
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*",
                "Condition": {"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "10.0.0.0/99"]}}}]}"#,
            r#"Statement[0].Condition.IpAddress.aws:SourceIp: expected an IP address or CIDR block, got "10.0.0.0/99""#,
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*",
                "Condition": {"StringEquals": {"iot:ClientId": {"a": 1}}}}]}"#,
            "Statement[0].Condition.StringEquals.iot:ClientId: expected a string, number or boolean, or an array of them",
        ),
        (
            r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*",
                "Condition": {"StringEquals": "x"}}]}"#,
            "Statement[0].Condition.StringEquals: expected an object of condition keys",
        ),
    ];
    for (json, want) in cases {
        assert_eq!(message(json), want, "for {json}");
    }
}

#[test]
fn size_limit() {
    assert_eq!(non_whitespace_len(" { \"a\" :\n\t1 } "), 7);
    assert_eq!(non_whitespace_len("é é"), 2);
    let small = format!(
        "{{\"x\":\"{}\"}}",
        "a".repeat(MAX_POLICY_NON_WHITESPACE_CHARS - 8)
    );
    assert_eq!(non_whitespace_len(&small), MAX_POLICY_NON_WHITESPACE_CHARS);
    assert!(check_size(&small).is_ok());
    let padded = format!("{}{}", " ".repeat(5000), small);
    assert!(check_size(&padded).is_ok());
    let big = format!(
        "{{\"x\":\"{}\"}}",
        "a".repeat(MAX_POLICY_NON_WHITESPACE_CHARS)
    );
    assert_eq!(
        check_size(&big),
        Err(PolicyError::TooLarge {
            len: MAX_POLICY_NON_WHITESPACE_CHARS + 8,
            max: MAX_POLICY_NON_WHITESPACE_CHARS
        })
    );
}
