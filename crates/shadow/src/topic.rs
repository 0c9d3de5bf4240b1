//! The shadow topic grammar: `$aws/things/<T>/shadow[/name/<S>]/<op>[/<suffix>]`.

use std::fmt;

use crate::name::{ShadowId, ShadowName, ThingName};

/// Filters the shadow service subscribes to in order to receive every request: classic
/// (`$aws/things/<T>/shadow/<op>`) and named (`$aws/things/<T>/shadow/name/<S>/<op>`). None of
/// the response topics matches them, so the service never hears its own answers; anything
/// else they match is refused by [`parse_shadow_topic`] and should be ignored.
pub const REQUEST_FILTERS: [&str; 2] = ["$aws/things/+/shadow/+", "$aws/things/+/shadow/name/+/+"];

/// A shadow operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `get`
    Get,
    /// `update`
    Update,
    /// `delete`
    Delete,
}

impl Operation {
    /// The topic segment (`get`, `update`, `delete`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "get" => Some(Self::Get),
            "update" => Some(Self::Update),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// What follows the operation in a shadow topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suffix {
    /// Nothing: the topic a client publishes a request to.
    Request,
    /// `/accepted`
    Accepted,
    /// `/rejected`
    Rejected,
    /// `/delta` (update only)
    Delta,
    /// `/documents` (update only)
    Documents,
}

impl Suffix {
    /// The trailing topic text, including its leading `/` (empty for [`Suffix::Request`]).
    pub fn as_topic_tail(self) -> &'static str {
        match self {
            Self::Request => "",
            Self::Accepted => "/accepted",
            Self::Rejected => "/rejected",
            Self::Delta => "/delta",
            Self::Documents => "/documents",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "accepted" => Some(Self::Accepted),
            "rejected" => Some(Self::Rejected),
            "delta" => Some(Self::Delta),
            "documents" => Some(Self::Documents),
            _ => None,
        }
    }
}

/// A parsed shadow topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShadowTopic {
    /// The thing and, for a named shadow, the shadow name.
    pub id: ShadowId,
    /// The operation segment.
    pub operation: Operation,
    /// The segment after the operation, if any.
    pub suffix: Suffix,
}

impl ShadowTopic {
    /// Pairs an id with an operation and suffix. Returns `None` for combinations that do not
    /// exist (`/delta` or `/documents` on `get` or `delete`).
    pub fn new(id: ShadowId, operation: Operation, suffix: Suffix) -> Option<Self> {
        let valid = match suffix {
            Suffix::Delta | Suffix::Documents => operation == Operation::Update,
            Suffix::Request | Suffix::Accepted | Suffix::Rejected => true,
        };
        valid.then_some(Self {
            id,
            operation,
            suffix,
        })
    }

    /// True for the topics clients publish requests to (`get`, `update`, `delete`).
    pub fn is_request(&self) -> bool {
        self.suffix == Suffix::Request
    }

    /// The same shadow and operation with another suffix, if that combination exists
    /// (for example the `/accepted` topic answering a request).
    pub fn with_suffix(&self, suffix: Suffix) -> Option<Self> {
        Self::new(self.id.clone(), self.operation, suffix)
    }
}

impl fmt::Display for ShadowTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$aws/things/")?;
        f.write_str(self.id.thing.as_str())?;
        f.write_str("/shadow/")?;
        if let Some(s) = &self.id.shadow {
            f.write_str("name/")?;
            f.write_str(s.as_str())?;
            f.write_str("/")?;
        }
        f.write_str(self.operation.as_str())?;
        f.write_str(self.suffix.as_topic_tail())
    }
}

/// Builds the topic of one shadow response or request, for example
/// `shadow_topic(&id, Operation::Update, Suffix::Delta)` is
/// `$aws/things/<T>/shadow[/name/<S>]/update/delta`.
///
/// A `/delta` or `/documents` suffix on `get` or `delete` is built as written, although
/// nothing is ever published there.
pub fn shadow_topic(id: &ShadowId, operation: Operation, suffix: Suffix) -> String {
    format!(
        "{}/{}{}",
        id.topic_prefix(),
        operation.as_str(),
        suffix.as_topic_tail()
    )
}

/// Parses a topic of the shadow grammar; `None` for anything else, including invalid thing or
/// shadow names and suffixes that do not exist for the operation.
///
/// Accepted shapes: `$aws/things/<T>/shadow/<op>[/<suffix>]` and
/// `$aws/things/<T>/shadow/name/<S>/<op>[/<suffix>]`, where `<op>` is `get`, `update` or
/// `delete` and `<suffix>` is `accepted` or `rejected` (any op) or `delta` or `documents`
/// (update only).
pub fn parse_shadow_topic(topic: &str) -> Option<ShadowTopic> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let (thing, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("shadow/")?;
    let (shadow, rest) = match rest.strip_prefix("name/") {
        Some(named) => {
            let (shadow, rest) = named.split_once('/')?;
            (Some(ShadowName::new(shadow).ok()?), rest)
        }
        None => (None, rest),
    };
    let (operation, suffix) = match rest.split_once('/') {
        None => (Operation::parse(rest)?, Suffix::Request),
        Some((op, suffix)) => (Operation::parse(op)?, Suffix::parse(suffix)?),
    };
    let id = ShadowId {
        thing: ThingName::new(thing).ok()?,
        shadow,
    };
    ShadowTopic::new(id, operation, suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(thing: &str, shadow: Option<&str>, op: Operation, suffix: Suffix) -> ShadowTopic {
        ShadowTopic::new(ShadowId::parse(thing, shadow).unwrap(), op, suffix).unwrap()
    }

    #[test]
    fn parses_and_prints() {
        use Operation::*;
        use Suffix::*;
        let cases = [
            ("$aws/things/t1/shadow/get", t("t1", None, Get, Request)),
            (
                "$aws/things/t1/shadow/update",
                t("t1", None, Update, Request),
            ),
            (
                "$aws/things/t1/shadow/delete",
                t("t1", None, Delete, Request),
            ),
            (
                "$aws/things/t1/shadow/get/accepted",
                t("t1", None, Get, Accepted),
            ),
            (
                "$aws/things/t1/shadow/delete/rejected",
                t("t1", None, Delete, Rejected),
            ),
            (
                "$aws/things/t1/shadow/update/delta",
                t("t1", None, Update, Delta),
            ),
            (
                "$aws/things/t1/shadow/update/documents",
                t("t1", None, Update, Documents),
            ),
            (
                "$aws/things/t1/shadow/name/cfg/update",
                t("t1", Some("cfg"), Update, Request),
            ),
            (
                "$aws/things/t1/shadow/name/cfg/update/accepted",
                t("t1", Some("cfg"), Update, Accepted),
            ),
            // A named shadow whose name is an operation or `name` stays unambiguous.
            (
                "$aws/things/t1/shadow/name/update/get",
                t("t1", Some("update"), Get, Request),
            ),
            (
                "$aws/things/name/shadow/name/name/delete",
                t("name", Some("name"), Delete, Request),
            ),
            (
                "$aws/things/t1/shadow/name/$package/get",
                t("t1", Some("$package"), Get, Request),
            ),
        ];
        for (topic, expected) in cases {
            assert_eq!(
                parse_shadow_topic(topic).as_ref(),
                Some(&expected),
                "{topic}"
            );
            assert_eq!(expected.to_string(), topic);
            assert_eq!(
                shadow_topic(&expected.id, expected.operation, expected.suffix),
                topic
            );
        }
    }

    #[test]
    fn refuses_other_topics() {
        for topic in [
            "",
            "$aws/things/t1/shadow",
            "$aws/things/t1/shadow/",
            "$aws/things/t1/shadow/list",
            "$aws/things/t1/shadow/get/delta",
            "$aws/things/t1/shadow/delete/documents",
            "$aws/things/t1/shadow/update/accepted/x",
            "$aws/things/t1/shadow/update/",
            "$aws/things/t1/shadow/name/get",
            "$aws/things/t1/shadow/name//get",
            "$aws/things//shadow/get",
            "$aws/things/t+/shadow/get",
            "$aws/things/+/shadow/update",
            "$aws/things/t1/shadow/name/+/update",
            "$aws/things/t1/jobs/get",
            "aws/things/t1/shadow/get",
            "$aws/things/t1/shadow/name/a b/get",
        ] {
            assert_eq!(parse_shadow_topic(topic), None, "{topic}");
        }
    }

    /// MQTT filter matching for filters made of literal levels and `+` only.
    fn matches(filter: &str, topic: &str) -> bool {
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        f.len() == t.len() && f.iter().zip(&t).all(|(f, t)| *f == "+" || f == t)
    }

    #[test]
    fn request_filters_hear_requests_and_no_responses() {
        let ops = [Operation::Get, Operation::Update, Operation::Delete];
        let suffixes = [
            Suffix::Request,
            Suffix::Accepted,
            Suffix::Rejected,
            Suffix::Delta,
            Suffix::Documents,
        ];
        for shadow in [None, Some("s"), Some("update"), Some("name")] {
            let id = ShadowId::parse("t", shadow).unwrap();
            for op in ops {
                for suffix in suffixes {
                    let topic = shadow_topic(&id, op, suffix);
                    let heard = REQUEST_FILTERS.iter().any(|f| matches(f, &topic));
                    assert_eq!(heard, suffix == Suffix::Request, "{topic}");
                }
            }
        }
    }

    #[test]
    fn response_topics_from_request() {
        let req = parse_shadow_topic("$aws/things/t1/shadow/name/s/update").unwrap();
        assert!(req.is_request());
        assert_eq!(
            req.with_suffix(Suffix::Documents).unwrap().to_string(),
            "$aws/things/t1/shadow/name/s/update/documents"
        );
        let get = parse_shadow_topic("$aws/things/t1/shadow/get").unwrap();
        assert_eq!(get.with_suffix(Suffix::Delta), None);
    }
}
