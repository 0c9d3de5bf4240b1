//! Policy documents: the JSON grammar and its validation.

use serde_json::{Map, Value};

use crate::action::KNOWN_ACTIONS;
use crate::condition::{Condition, parse_conditions};
use crate::error::PolicyError;
use crate::pattern::{Elem, FastGlob, Pattern, glob_from_text, naive_match};
use crate::variables::Variables;

/// The most non-whitespace characters AWS IoT accepts in one policy document.
pub const MAX_POLICY_NON_WHITESPACE_CHARS: usize = 2048;

/// The number of characters in `json` that are not whitespace, as AWS counts them for the
/// [`MAX_POLICY_NON_WHITESPACE_CHARS`] limit (whitespace inside strings is not counted either).
pub fn non_whitespace_len(json: &str) -> usize {
    json.chars().filter(|c| !c.is_whitespace()).count()
}

/// Fails with [`PolicyError::TooLarge`] when `json` is over the AWS IoT size limit.
pub fn check_size(json: &str) -> Result<(), PolicyError> {
    let len = non_whitespace_len(json);
    if len > MAX_POLICY_NON_WHITESPACE_CHARS {
        return Err(PolicyError::TooLarge {
            len,
            max: MAX_POLICY_NON_WHITESPACE_CHARS,
        });
    }
    Ok(())
}

/// The policy language version (`Version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyVersion {
    /// `2012-10-17`: policy variables `${...}` are substituted.
    V2012_10_17,
    /// `2008-10-17`: `${...}` is ordinary text.
    V2008_10_17,
}

impl PolicyVersion {
    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyVersion::V2012_10_17 => "2012-10-17",
            PolicyVersion::V2008_10_17 => "2008-10-17",
        }
    }

    fn substitutes_variables(self) -> bool {
        self == PolicyVersion::V2012_10_17
    }
}

/// `Allow` or `Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// The statement grants the access it describes.
    Allow,
    /// The statement refuses it, whatever any other statement allows.
    Deny,
}

/// A parsed, validated policy document.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDocument {
    version: PolicyVersion,
    id: Option<String>,
    statements: Vec<Statement>,
}

/// One statement of a policy document.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    sid: Option<String>,
    effect: Effect,
    actions: ActionClause,
    resources: ResourceClause,
    conditions: Vec<Condition>,
}

/// `Action` or `NotAction`: action-name globs, lower-cased (names match ignoring case).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ActionClause {
    pub(crate) negated: bool,
    raw: Vec<String>,
    globs: Vec<Vec<Elem>>,
    /// The same globs compiled, for actions not known by name.
    pub(crate) fast: Vec<FastGlob>,
    /// Bit `i` set: the clause covers `KNOWN_ACTIONS[i]` (precomputed at parse time).
    known_mask: u16,
}

impl ActionClause {
    fn new(negated: bool, raw: Vec<String>) -> ActionClause {
        let globs: Vec<Vec<Elem>> = raw.iter().map(|a| glob_from_text(a, true)).collect();
        let fast = globs.iter().map(|g| FastGlob::new(g)).collect();
        let mut clause = ActionClause {
            negated,
            raw,
            globs,
            fast,
            known_mask: 0,
        };
        for (i, action) in KNOWN_ACTIONS.iter().enumerate() {
            if clause.covers(&action.name().to_lowercase()) {
                clause.known_mask |= 1 << i;
            }
        }
        clause
    }

    /// Whether the clause covers an action whose lower-cased name is `lower_name` (the
    /// reference check, by the naive matcher).
    pub(crate) fn covers(&self, lower_name: &str) -> bool {
        self.globs.iter().any(|g| naive_match(g, lower_name)) != self.negated
    }

    /// Whether the clause covers `KNOWN_ACTIONS[index]`.
    pub(crate) fn covers_known(&self, index: usize) -> bool {
        index < 16 && self.known_mask & (1 << index) != 0
    }
}

/// `Resource` or `NotResource`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResourceClause {
    pub(crate) negated: bool,
    raw: Vec<String>,
    pub(crate) patterns: Vec<Pattern>,
}

impl PolicyDocument {
    /// Parses and validates a policy document.
    ///
    /// Syntax errors carry the JSON line and column; other errors name the element
    /// (`Statement[1].Effect: expected "Allow" or "Deny", got "allow"`). Unknown elements,
    /// `Principal`, a missing or unknown `Version`, an empty `Statement`, `Action` or
    /// `Resource`, both or neither of `Action`/`NotAction` (`Resource`/`NotResource`), and
    /// unknown condition operators are all errors. The size limit is not checked here (see
    /// [`check_size`]).
    pub fn parse(json: &str) -> Result<PolicyDocument, PolicyError> {
        let value: Value = serde_json::from_str(json).map_err(|e| PolicyError::from_json(&e))?;
        let Value::Object(top) = value else {
            return Err(PolicyError::invalid(
                "",
                "a policy document must be a JSON object",
            ));
        };
        for key in top.keys() {
            if !matches!(key.as_str(), "Version" | "Statement" | "Id") {
                return Err(PolicyError::invalid(
                    key.as_str(),
                    "unknown element; a policy document has Version, Statement and optionally Id",
                ));
            }
        }
        let version = match top.get("Version") {
            None => {
                return Err(PolicyError::invalid(
                    "Version",
                    "required element is missing",
                ));
            }
            Some(Value::String(v)) if v == "2012-10-17" => PolicyVersion::V2012_10_17,
            Some(Value::String(v)) if v == "2008-10-17" => PolicyVersion::V2008_10_17,
            Some(other) => {
                return Err(PolicyError::invalid(
                    "Version",
                    format!("expected \"2012-10-17\" or \"2008-10-17\", got {other}"),
                ));
            }
        };
        let id = match top.get("Id") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(PolicyError::invalid("Id", "expected a string")),
        };
        let statements = match top.get("Statement") {
            None => {
                return Err(PolicyError::invalid(
                    "Statement",
                    "required element is missing",
                ));
            }
            Some(Value::Object(obj)) => vec![parse_statement(obj, "Statement", version)?],
            Some(Value::Array(items)) => {
                if items.is_empty() {
                    return Err(PolicyError::invalid(
                        "Statement",
                        "must contain at least one statement",
                    ));
                }
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let path = format!("Statement[{i}]");
                    let Value::Object(obj) = item else {
                        return Err(PolicyError::invalid(path, "expected a statement object"));
                    };
                    out.push(parse_statement(obj, &path, version)?);
                }
                out
            }
            Some(_) => {
                return Err(PolicyError::invalid(
                    "Statement",
                    "expected a statement object or an array of them",
                ));
            }
        };
        Ok(PolicyDocument {
            version,
            id,
            statements,
        })
    }

    /// The `Version`.
    pub fn version(&self) -> PolicyVersion {
        self.version
    }

    /// The optional `Id`.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The statements, in document order.
    pub fn statements(&self) -> &[Statement] {
        &self.statements
    }
}

impl Statement {
    /// The optional `Sid`.
    pub fn sid(&self) -> Option<&str> {
        self.sid.as_deref()
    }

    /// `Allow` or `Deny`.
    pub fn effect(&self) -> Effect {
        self.effect
    }

    /// The action patterns as written, and whether they came from `NotAction`.
    pub fn action_patterns(&self) -> (&[String], bool) {
        (&self.actions.raw, self.actions.negated)
    }

    /// The resource patterns as written, and whether they came from `NotResource`.
    pub fn resource_patterns(&self) -> (&[String], bool) {
        (&self.resources.raw, self.resources.negated)
    }

    /// Whether the statement has a non-empty `Condition`.
    pub fn has_conditions(&self) -> bool {
        !self.conditions.is_empty()
    }

    pub(crate) fn actions(&self) -> &ActionClause {
        &self.actions
    }

    pub(crate) fn resources(&self) -> &ResourceClause {
        &self.resources
    }

    /// Whether every condition holds for `vars`.
    pub(crate) fn conditions_hold(&self, vars: &Variables) -> bool {
        self.conditions.iter().all(|c| c.holds(vars))
    }
}

fn parse_statement(
    obj: &Map<String, Value>,
    path: &str,
    version: PolicyVersion,
) -> Result<Statement, PolicyError> {
    for key in obj.keys() {
        match key.as_str() {
            "Sid" | "Effect" | "Action" | "NotAction" | "Resource" | "NotResource"
            | "Condition" => {}
            "Principal" | "NotPrincipal" => {
                return Err(PolicyError::invalid(
                    format!("{path}.{key}"),
                    "not allowed in an AWS IoT policy (the policy applies to the principal it is attached to)",
                ));
            }
            _ => {
                return Err(PolicyError::invalid(
                    format!("{path}.{key}"),
                    "unknown element; a statement has Sid, Effect, Action or NotAction, Resource or NotResource, and Condition",
                ));
            }
        }
    }
    let sid = match obj.get("Sid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(PolicyError::invalid(
                format!("{path}.Sid"),
                "expected a string",
            ));
        }
    };
    let effect = match obj.get("Effect") {
        None => {
            return Err(PolicyError::invalid(
                format!("{path}.Effect"),
                "required element is missing",
            ));
        }
        Some(Value::String(s)) if s == "Allow" => Effect::Allow,
        Some(Value::String(s)) if s == "Deny" => Effect::Deny,
        Some(other) => {
            return Err(PolicyError::invalid(
                format!("{path}.Effect"),
                format!("expected \"Allow\" or \"Deny\", got {other}"),
            ));
        }
    };
    let (action_key, negated) = pick(obj, path, "Action", "NotAction")?;
    let action_path = format!("{path}.{action_key}");
    let raw = string_list(obj.get(action_key), &action_path)?;
    let is_array = matches!(obj.get(action_key), Some(Value::Array(_)));
    for (i, a) in raw.iter().enumerate() {
        let ok = a == "*"
            || a.split_once(':')
                .is_some_and(|(service, name)| !service.is_empty() && !name.is_empty());
        if !ok {
            return Err(PolicyError::invalid(
                item_path(&action_path, i, is_array),
                format!(
                    "expected \"<service>:<action>\" (such as \"iot:Publish\") or \"*\", got \"{a}\""
                ),
            ));
        }
    }
    let actions = ActionClause::new(negated, raw);

    let (resource_key, negated) = pick(obj, path, "Resource", "NotResource")?;
    let resource_path = format!("{path}.{resource_key}");
    let raw = string_list(obj.get(resource_key), &resource_path)?;
    let is_array = matches!(obj.get(resource_key), Some(Value::Array(_)));
    for (i, r) in raw.iter().enumerate() {
        if r != "*" && !r.starts_with("arn:") {
            return Err(PolicyError::invalid(
                item_path(&resource_path, i, is_array),
                format!("expected an ARN (\"arn:aws:iot:...\") or \"*\", got \"{r}\""),
            ));
        }
    }
    let variables = version.substitutes_variables();
    let patterns = raw.iter().map(|r| Pattern::parse(r, variables)).collect();
    let resources = ResourceClause {
        negated,
        raw,
        patterns,
    };

    let conditions = match obj.get("Condition") {
        None => Vec::new(),
        Some(v) => parse_conditions(v, &format!("{path}.Condition"), variables)?,
    };
    Ok(Statement {
        sid,
        effect,
        actions,
        resources,
        conditions,
    })
}

/// Exactly one of `positive` and `negative` must be present; returns which, and whether it
/// is the negative one.
fn pick<'k>(
    obj: &Map<String, Value>,
    path: &str,
    positive: &'k str,
    negative: &'k str,
) -> Result<(&'k str, bool), PolicyError> {
    match (obj.contains_key(positive), obj.contains_key(negative)) {
        (true, false) => Ok((positive, false)),
        (false, true) => Ok((negative, true)),
        (true, true) => Err(PolicyError::invalid(
            path,
            format!("has both {positive} and {negative}; use one"),
        )),
        (false, false) => Err(PolicyError::invalid(
            format!("{path}.{positive}"),
            format!("required element is missing (or use {negative})"),
        )),
    }
}

fn item_path(path: &str, i: usize, is_array: bool) -> String {
    if is_array {
        format!("{path}[{i}]")
    } else {
        path.to_owned()
    }
}

/// A string or a non-empty array of non-empty strings.
fn string_list(value: Option<&Value>, path: &str) -> Result<Vec<String>, PolicyError> {
    let nonempty = |s: &str, p: String| -> Result<String, PolicyError> {
        if s.is_empty() {
            Err(PolicyError::invalid(p, "must not be empty"))
        } else {
            Ok(s.to_owned())
        }
    };
    match value {
        Some(Value::String(s)) => Ok(vec![nonempty(s, path.to_owned())?]),
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(PolicyError::invalid(path, "must not be an empty array"));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => nonempty(s, format!("{path}[{i}]")),
                    _ => Err(PolicyError::invalid(
                        format!("{path}[{i}]"),
                        "expected a string",
                    )),
                })
                .collect()
        }
        _ => Err(PolicyError::invalid(
            path,
            "expected a string or an array of strings",
        )),
    }
}
