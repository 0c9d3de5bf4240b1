//! The `Condition` element: operators, parsing, evaluation.
//!
//! Semantics follow IAM: every operator block and every key in it must hold (AND); the values
//! listed for one key are alternatives (OR), and for a negated operator (`StringNotEquals`,
//! `NotIpAddress`, ...) the request value must match none of them. A key missing from the
//! request makes a condition false, except that a negated operator then holds, `...IfExists`
//! then holds, `ForAllValues:` then holds, and `Null` tests exactly for absence. Multi-valued
//! keys (`iot:ConnectAttributes`, `...List` certificate variables) hold for `ForAnyValue:` when
//! some value matches and for `ForAllValues:` when every value matches; without a prefix they
//! are treated like `ForAnyValue:`.

use std::net::IpAddr;

use serde_json::Value;

use crate::error::PolicyError;
use crate::pattern::{Elem, Pattern, naive_match};
use crate::variables::{VarRef, Variables};

/// Condition operators (without their `ForAllValues:`/`ForAnyValue:`/`IfExists` decorations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operator {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
    NumericEquals,
    NumericNotEquals,
    NumericLessThan,
    NumericLessThanEquals,
    NumericGreaterThan,
    NumericGreaterThanEquals,
    Bool,
    IpAddress,
    NotIpAddress,
    ArnEquals,
    ArnNotEquals,
    ArnLike,
    ArnNotLike,
    Null,
}

const OPERATORS: [(&str, Operator); 20] = [
    ("StringEquals", Operator::StringEquals),
    ("StringNotEquals", Operator::StringNotEquals),
    ("StringEqualsIgnoreCase", Operator::StringEqualsIgnoreCase),
    (
        "StringNotEqualsIgnoreCase",
        Operator::StringNotEqualsIgnoreCase,
    ),
    ("StringLike", Operator::StringLike),
    ("StringNotLike", Operator::StringNotLike),
    ("NumericEquals", Operator::NumericEquals),
    ("NumericNotEquals", Operator::NumericNotEquals),
    ("NumericLessThan", Operator::NumericLessThan),
    ("NumericLessThanEquals", Operator::NumericLessThanEquals),
    ("NumericGreaterThan", Operator::NumericGreaterThan),
    (
        "NumericGreaterThanEquals",
        Operator::NumericGreaterThanEquals,
    ),
    ("Bool", Operator::Bool),
    ("IpAddress", Operator::IpAddress),
    ("NotIpAddress", Operator::NotIpAddress),
    ("ArnEquals", Operator::ArnEquals),
    ("ArnNotEquals", Operator::ArnNotEquals),
    ("ArnLike", Operator::ArnLike),
    ("ArnNotLike", Operator::ArnNotLike),
    ("Null", Operator::Null),
];

/// IAM operators this crate recognises but does not evaluate (they need facts a broker does
/// not have, such as the current time); a policy using them is rejected with a clear message.
const UNSUPPORTED: [&str; 8] = [
    "DateEquals",
    "DateNotEquals",
    "DateLessThan",
    "DateLessThanEquals",
    "DateGreaterThan",
    "DateGreaterThanEquals",
    "BinaryEquals",
    "BinaryNotEquals",
];

impl Operator {
    fn is_negated(self) -> bool {
        matches!(
            self,
            Operator::StringNotEquals
                | Operator::StringNotEqualsIgnoreCase
                | Operator::StringNotLike
                | Operator::NumericNotEquals
                | Operator::NotIpAddress
                | Operator::ArnNotEquals
                | Operator::ArnNotLike
        )
    }

    /// The positive comparison of a request value `v` with one policy value.
    fn base_match(self, v: &str, pv: &PolicyValue<'_>) -> bool {
        match self {
            Operator::StringEquals | Operator::StringNotEquals => v == pv.text,
            Operator::StringEqualsIgnoreCase | Operator::StringNotEqualsIgnoreCase => {
                v.to_lowercase() == pv.text.to_lowercase()
            }
            Operator::StringLike | Operator::StringNotLike => {
                naive_match(&pv.pattern.resolve(pv.vars), v)
            }
            Operator::NumericEquals
            | Operator::NumericNotEquals
            | Operator::NumericLessThan
            | Operator::NumericLessThanEquals
            | Operator::NumericGreaterThan
            | Operator::NumericGreaterThanEquals => {
                let (Some(a), Some(b)) = (parse_number(v), parse_number(&pv.text)) else {
                    return false;
                };
                match self {
                    Operator::NumericLessThan => a < b,
                    Operator::NumericLessThanEquals => a <= b,
                    Operator::NumericGreaterThan => a > b,
                    Operator::NumericGreaterThanEquals => a >= b,
                    _ => a == b,
                }
            }
            Operator::Bool => v.eq_ignore_ascii_case(&pv.text),
            Operator::IpAddress | Operator::NotIpAddress => {
                match (v.trim().parse::<IpAddr>(), Cidr::parse(&pv.text)) {
                    (Ok(ip), Some(cidr)) => cidr.contains(ip),
                    _ => false,
                }
            }
            Operator::ArnEquals
            | Operator::ArnNotEquals
            | Operator::ArnLike
            | Operator::ArnNotLike => arn_like(&pv.pattern.resolve(pv.vars), v),
            Operator::Null => false,
        }
    }
}

/// ARN comparison: each of the six colon-separated components is matched separately, with
/// `*` and `?` as wildcards inside a component (substituted variables stay literal).
fn arn_like(policy: &[Elem], value: &str) -> bool {
    let mut parts: Vec<&[Elem]> = Vec::with_capacity(6);
    let mut rest = policy;
    while parts.len() < 5 {
        match rest.iter().position(|e| *e == Elem::Char(':')) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + 1..];
            }
            None => break,
        }
    }
    parts.push(rest);
    let v: Vec<&str> = value.splitn(6, ':').collect();
    parts.len() == v.len() && parts.iter().zip(&v).all(|(p, v)| naive_match(p, v))
}

fn parse_number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n`, or a bare address (a single host).
    pub(crate) fn parse(s: &str) -> Option<Cidr> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside the network. An IPv4-mapped IPv6 request address counts as
    /// IPv4 for an IPv4 network, and an IPv4 address as its mapped form for an IPv6 one.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let prefix = u32::from(self.prefix);
        let v6 = |net: u128, ip: u128| {
            let mask = u128::MAX
                .checked_shl(128u32.saturating_sub(prefix))
                .unwrap_or(0);
            net & mask == ip & mask
        };
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32u32.saturating_sub(prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => v6(u128::from(net), u128::from(ip)),
            (IpAddr::V6(net), IpAddr::V4(ip)) => {
                v6(u128::from(net), u128::from(ip.to_ipv6_mapped()))
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

/// How a multi-valued request key is combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetMode {
    Plain,
    ForAnyValue,
    ForAllValues,
}

/// One `operator: { key: values }` entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Condition {
    op: Operator,
    set: SetMode,
    if_exists: bool,
    key: VarRef,
    values: Vec<ConditionValue>,
}

#[derive(Debug, Clone, PartialEq)]
struct ConditionValue {
    pattern: Pattern,
}

/// A policy value with variables substituted, as needed by one comparison.
struct PolicyValue<'a> {
    text: String,
    pattern: &'a Pattern,
    vars: &'a Variables,
}

/// Parses an operator name with its decorations; `Err` carries the message.
fn parse_operator(name: &str) -> Result<(SetMode, Operator, bool), String> {
    let (set, rest) = if let Some(r) = strip_prefix_ci(name, "ForAnyValue:") {
        (SetMode::ForAnyValue, r)
    } else if let Some(r) = strip_prefix_ci(name, "ForAllValues:") {
        (SetMode::ForAllValues, r)
    } else {
        (SetMode::Plain, name)
    };
    let (base, if_exists) = match strip_suffix_ci(rest, "IfExists") {
        Some(b) => (b, true),
        None => (rest, false),
    };
    if let Some((_, op)) = OPERATORS.iter().find(|(n, _)| n.eq_ignore_ascii_case(base)) {
        if *op == Operator::Null && (if_exists || set != SetMode::Plain) {
            return Err(format!(
                "condition operator \"{name}\": Null takes no ForAllValues/ForAnyValue prefix and no IfExists suffix"
            ));
        }
        return Ok((set, *op, if_exists));
    }
    if UNSUPPORTED.iter().any(|n| n.eq_ignore_ascii_case(base)) {
        return Err(format!("condition operator \"{name}\" is not supported"));
    }
    Err(format!("unknown condition operator \"{name}\""))
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn strip_suffix_ci<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = s.len().checked_sub(suffix.len())?;
    let tail = s.get(cut..)?;
    tail.eq_ignore_ascii_case(suffix).then(|| &s[..cut])
}

/// Parses a whole `Condition` element at `path` (`Statement[0].Condition`).
pub(crate) fn parse_conditions(
    value: &Value,
    path: &str,
    variables: bool,
) -> Result<Vec<Condition>, PolicyError> {
    let Value::Object(blocks) = value else {
        return Err(PolicyError::invalid(
            path,
            "expected an object of condition operators",
        ));
    };
    let mut out = Vec::new();
    for (op_name, block) in blocks {
        let (set, op, if_exists) =
            parse_operator(op_name).map_err(|m| PolicyError::invalid(path, m))?;
        let op_path = format!("{path}.{op_name}");
        let Value::Object(keys) = block else {
            return Err(PolicyError::invalid(
                op_path,
                "expected an object of condition keys",
            ));
        };
        for (key, raw_values) in keys {
            let key_path = format!("{op_path}.{key}");
            if key.is_empty() {
                return Err(PolicyError::invalid(op_path, "empty condition key"));
            }
            let values = condition_values(raw_values, &key_path)?;
            let mut parsed = Vec::with_capacity(values.len());
            for text in values {
                let pattern = Pattern::parse(&text, variables);
                if !pattern.has_variables() {
                    validate_value(op, &text).map_err(|m| PolicyError::invalid(&key_path, m))?;
                }
                parsed.push(ConditionValue { pattern });
            }
            out.push(Condition {
                op,
                set,
                if_exists,
                key: VarRef::parse(key),
                values: parsed,
            });
        }
    }
    Ok(out)
}

/// A condition value: a string, number or boolean, or an array of them.
fn condition_values(value: &Value, path: &str) -> Result<Vec<String>, PolicyError> {
    let scalar = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    match value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                scalar(v).ok_or_else(|| {
                    PolicyError::invalid(
                        format!("{path}[{i}]"),
                        "expected a string, number or boolean",
                    )
                })
            })
            .collect(),
        other => scalar(other).map(|s| vec![s]).ok_or_else(|| {
            PolicyError::invalid(
                path,
                "expected a string, number or boolean, or an array of them",
            )
        }),
    }
}

fn validate_value(op: Operator, text: &str) -> Result<(), String> {
    match op {
        Operator::Bool | Operator::Null => {
            if text.eq_ignore_ascii_case("true") || text.eq_ignore_ascii_case("false") {
                Ok(())
            } else {
                Err(format!("expected \"true\" or \"false\", got \"{text}\""))
            }
        }
        Operator::IpAddress | Operator::NotIpAddress => match Cidr::parse(text) {
            Some(_) => Ok(()),
            None => Err(format!(
                "expected an IP address or CIDR block, got \"{text}\""
            )),
        },
        Operator::NumericEquals
        | Operator::NumericNotEquals
        | Operator::NumericLessThan
        | Operator::NumericLessThanEquals
        | Operator::NumericGreaterThan
        | Operator::NumericGreaterThanEquals => match parse_number(text) {
            Some(_) => Ok(()),
            None => Err(format!("expected a number, got \"{text}\"")),
        },
        _ => Ok(()),
    }
}

impl Condition {
    /// Whether the condition holds for a connection described by `vars`.
    pub(crate) fn holds(&self, vars: &Variables) -> bool {
        let present = self.key.resolve(vars).into_list().filter(|v| !v.is_empty());
        if self.op == Operator::Null {
            let absent = present.is_none();
            return self
                .values
                .iter()
                .any(|v| v.pattern.resolve_text(vars).eq_ignore_ascii_case("true") == absent);
        }
        let Some(request_values) = present else {
            return match self.set {
                SetMode::ForAllValues => true,
                SetMode::ForAnyValue => self.if_exists,
                SetMode::Plain => self.if_exists || self.op.is_negated(),
            };
        };
        let policy_values: Vec<PolicyValue<'_>> = self
            .values
            .iter()
            .map(|v| PolicyValue {
                text: v.pattern.resolve_text(vars),
                pattern: &v.pattern,
                vars,
            })
            .collect();
        let one = |v: &str| {
            let any = policy_values.iter().any(|pv| self.op.base_match(v, pv));
            any != self.op.is_negated()
        };
        match self.set {
            SetMode::ForAllValues => request_values.iter().all(|v| one(v)),
            SetMode::ForAnyValue | SetMode::Plain => request_values.iter().any(|v| one(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::variables::ConnectAttributes;

    fn cond(json: &str) -> Vec<Condition> {
        let v: Value = serde_json::from_str(json).expect("json");
        parse_conditions(&v, "C", true).expect("parse")
    }

    fn holds(json: &str, vars: &Variables) -> bool {
        cond(json).iter().all(|c| c.holds(vars))
    }

    #[test]
    fn cidr() {
        let c = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(c.contains("10.1.200.3".parse().expect("ip")));
        assert!(!c.contains("10.2.0.1".parse().expect("ip")));
        assert!(c.contains("::ffff:10.1.0.9".parse().expect("ip")));
        let c = Cidr::parse("2001:db8::/32").expect("cidr");
        assert!(c.contains("2001:db8:1::5".parse().expect("ip")));
        assert!(!c.contains("2001:db9::5".parse().expect("ip")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("cidr")
                .contains("8.8.8.8".parse().expect("ip"))
        );
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        let mapped = Cidr::parse("::ffff:10.0.0.0/104").expect("cidr");
        assert!(mapped.contains("10.9.9.9".parse().expect("ip")));
        assert!(!mapped.contains("11.0.0.1".parse().expect("ip")));
        assert!(Cidr::parse("nope").is_none());
    }

    #[test]
    fn missing_keys() {
        let vars = Variables::default();
        assert!(!holds(r#"{"StringEquals":{"iot:ClientId":"a"}}"#, &vars));
        assert!(holds(r#"{"StringNotEquals":{"iot:ClientId":"a"}}"#, &vars));
        assert!(holds(
            r#"{"StringEqualsIfExists":{"iot:ClientId":"a"}}"#,
            &vars
        ));
        assert!(holds(r#"{"Null":{"iot:ClientId":"true"}}"#, &vars));
        assert!(!holds(r#"{"Null":{"iot:ClientId":"false"}}"#, &vars));
        assert!(holds(
            r#"{"ForAllValues:StringEquals":{"iot:ConnectAttributes":["PersistentConnect"]}}"#,
            &vars
        ));
        assert!(!holds(
            r#"{"ForAnyValue:StringEquals":{"iot:ConnectAttributes":["PersistentConnect"]}}"#,
            &vars
        ));
    }

    #[test]
    fn set_operators() {
        let vars = Variables {
            connect_attributes: ConnectAttributes {
                persistent_connect: true,
                last_will: true,
            },
            ..Variables::default()
        };
        let any = r#"{"ForAnyValue:StringEquals":{"iot:ConnectAttributes":["LastWill"]}}"#;
        let all = r#"{"ForAllValues:StringEquals":{"iot:ConnectAttributes":["LastWill"]}}"#;
        let all2 = r#"{"ForAllValues:StringEquals":{"iot:ConnectAttributes":["LastWill","PersistentConnect"]}}"#;
        assert!(holds(any, &vars));
        assert!(!holds(all, &vars));
        assert!(holds(all2, &vars));
    }

    #[test]
    fn operator_names() {
        assert!(parse_operator("stringequals").is_ok());
        assert!(parse_operator("ForAnyValue:StringLikeIfExists").is_ok());
        assert_eq!(
            parse_operator("StringEqualz"),
            Err("unknown condition operator \"StringEqualz\"".to_owned())
        );
        assert!(parse_operator("DateLessThan").is_err());
        assert!(parse_operator("NullIfExists").is_err());
    }

    #[test]
    fn arn_and_numeric() {
        let vars = Variables {
            client_id: Some("arn:aws:iot:us-east-1:1:client/x".to_owned()),
            ..Variables::default()
        };
        assert!(holds(
            r#"{"ArnLike":{"iot:ClientId":"arn:aws:iot:*:1:client/*"}}"#,
            &vars
        ));
        assert!(!holds(
            r#"{"ArnLike":{"iot:ClientId":"arn:aws:iot:*:1"}}"#,
            &vars
        ));
        let vars = Variables {
            client_id: Some("42".to_owned()),
            ..Variables::default()
        };
        assert!(holds(r#"{"NumericLessThan":{"iot:ClientId":50}}"#, &vars));
        assert!(!holds(
            r#"{"NumericGreaterThan":{"iot:ClientId":"50"}}"#,
            &vars
        ));
        assert!(holds(
            r#"{"NumericNotEquals":{"iot:ClientId":[1,2]}}"#,
            &vars
        ));
    }
}
