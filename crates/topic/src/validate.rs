//! Validation of topic names and filters, and `$share/<group>/<filter>` parsing.
//!
//! AWS IoT Core counts length and levels without two prefixes: `$share/<group>/` on
//! shared-subscription filters and `$aws/rules/<rule>/` (Basic Ingest, the literal part
//! compared without regard to ASCII case). A `$aws/rules/<rule>` with no slash after the rule
//! name, or with an empty rule name, is an ordinary topic and counted in full.

use crate::TopicError;

/// Limits on topic names and filters. `Default` gives AWS IoT Core's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// Maximum length in bytes (excluding the uncounted prefixes).
    pub max_len: usize,
    /// Maximum number of levels.
    pub max_levels: usize,
}

impl Default for TopicLimits {
    fn default() -> Self {
        TopicLimits {
            max_len: 256,
            max_levels: 8,
        }
    }
}

/// The longest share name AWS IoT Core accepts in `$share/<group>/<filter>`, in characters.
pub const MAX_SHARE_NAME_CHARS: usize = 128;

const SHARE_PREFIX: &str = "$share/";
const RULES_PREFIX: &str = "$aws/rules/";

/// Checks a topic name (as in PUBLISH).
///
/// A valid name is non-empty, has no `+`, `#` or U+0000, and within `limits` once a leading
/// `$aws/rules/<rule>/` is set aside. Empty levels (`a//b`, `a/`, `/`) are allowed.
pub fn validate_topic_name(topic: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    let bytes = topic.as_bytes();
    if bytes.contains(&0) {
        return Err(TopicError::NulChar);
    }
    if bytes.iter().any(|&b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    check_size(skip_rules_prefix(topic), limits)
}

/// Checks a topic filter (as in SUBSCRIBE), including the `$share/<group>/<filter>` form.
///
/// A valid filter is non-empty, has no U+0000, uses `+` only as a whole level and `#` only as
/// the whole last level, and is within `limits` once a leading `$share/<group>/` and then a
/// leading `$aws/rules/<rule>/` are set aside. In the shared form the group must be non-empty,
/// at most [`MAX_SHARE_NAME_CHARS`] characters and free of `+` and `#`, and the filter after
/// it must be non-empty and valid by itself.
pub fn validate_topic_filter(filter: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.as_bytes().contains(&0) {
        return Err(TopicError::NulChar);
    }
    let inner = match parse_shared(filter) {
        Some((group, inner)) => {
            check_share_name(group)?;
            if inner.is_empty() {
                return Err(TopicError::BadShare("no topic filter after the share name"));
            }
            inner
        }
        None => filter,
    };
    check_wildcards(inner)?;
    check_size(skip_rules_prefix(inner), limits)
}

/// Splits `$share/<group>/<filter>` into `(group, filter)`; `None` for a non-shared filter.
/// Does not validate; call `validate_topic_filter` first.
///
/// A filter is shared when it starts with `$share/` (case-sensitive). If no second slash
/// follows, the whole rest is the group and the filter is empty (which validation rejects).
pub fn parse_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    Some(rest.split_once('/').unwrap_or((rest, "")))
}

fn check_share_name(group: &str) -> Result<(), TopicError> {
    if group.is_empty() {
        return Err(TopicError::BadShare("empty share name"));
    }
    if group.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::BadShare("share name contains a wildcard"));
    }
    if group.chars().count() > MAX_SHARE_NAME_CHARS {
        return Err(TopicError::BadShare(
            "share name longer than 128 characters",
        ));
    }
    Ok(())
}

/// `+` must be a whole level; `#` must be the whole last level.
fn check_wildcards(filter: &str) -> Result<(), TopicError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let wild = level.bytes().any(|b| b == b'+' || b == b'#');
        if !wild {
            continue;
        }
        let ok = level == "+" || (level == "#" && levels.peek().is_none());
        if !ok {
            return Err(TopicError::BadWildcard);
        }
    }
    Ok(())
}

/// The part of `topic` that counts toward the limits: without a leading
/// `$aws/rules/<rule>/` (literal part matched case-insensitively, rule name non-empty).
fn skip_rules_prefix(topic: &str) -> &str {
    if let Some((head, rest)) = topic.split_at_checked(RULES_PREFIX.len())
        && head.eq_ignore_ascii_case(RULES_PREFIX)
        && let Some((rule, after)) = rest.split_once('/')
        && !rule.is_empty()
    {
        after
    } else {
        topic
    }
}

fn check_size(counted: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    let len = counted.len();
    if len > limits.max_len {
        return Err(TopicError::TooLong {
            len,
            max: limits.max_len,
        });
    }
    let levels = counted.bytes().filter(|&b| b == b'/').count() + 1;
    if levels > limits.max_levels {
        return Err(TopicError::TooManyLevels {
            levels,
            max: limits.max_levels,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use TopicError::*;

    const AWS: TopicLimits = TopicLimits {
        max_len: 256,
        max_levels: 8,
    };

    fn name(t: &str) -> Result<(), TopicError> {
        validate_topic_name(t, &AWS)
    }

    fn filter(f: &str) -> Result<(), TopicError> {
        validate_topic_filter(f, &AWS)
    }

    fn levels(n: usize) -> String {
        vec!["l"; n].join("/")
    }

    #[test]
    fn default_limits_are_aws() {
        assert_eq!(TopicLimits::default(), AWS);
    }

    #[test]
    fn topic_names() {
        let a256 = "a".repeat(256);
        let a257 = "a".repeat(257);
        let cases: Vec<(String, Result<(), TopicError>)> = vec![
            ("a".into(), Ok(())),
            ("a/b/c".into(), Ok(())),
            ("a//b".into(), Ok(())),
            ("a/".into(), Ok(())),
            ("/".into(), Ok(())),
            ("/a".into(), Ok(())),
            ("$SYS/x".into(), Ok(())),
            ("$aws/things/t/shadow/update".into(), Ok(())),
            ("$share/g/a".into(), Ok(())),
            ("caf\u{e9}/\u{1f600}".into(), Ok(())),
            ("".into(), Err(Empty)),
            ("a\0b".into(), Err(NulChar)),
            ("\0".into(), Err(NulChar)),
            ("a/+".into(), Err(WildcardInName)),
            ("a/#".into(), Err(WildcardInName)),
            ("+".into(), Err(WildcardInName)),
            ("#".into(), Err(WildcardInName)),
            ("a+b".into(), Err(WildcardInName)),
            ("a#b".into(), Err(WildcardInName)),
            // NUL wins over a wildcard.
            ("+\0".into(), Err(NulChar)),
            // Length: bytes, not characters.
            (a256.clone(), Ok(())),
            (a257.clone(), Err(TooLong { len: 257, max: 256 })),
            ("\u{e9}".repeat(129), Err(TooLong { len: 258, max: 256 })),
            // Levels.
            (levels(8), Ok(())),
            (levels(9), Err(TooManyLevels { levels: 9, max: 8 })),
            ("///////".into(), Ok(())),
            ("////////".into(), Err(TooManyLevels { levels: 9, max: 8 })),
            // Too long is reported before too many levels.
            (
                format!("{a256}/{}", levels(9)),
                Err(TooLong { len: 274, max: 256 }),
            ),
        ];
        for (topic, want) in cases {
            assert_eq!(name(&topic), want, "{topic:?}");
        }
    }

    #[test]
    fn rules_prefix_is_not_counted() {
        let a256 = "a".repeat(256);
        let a257 = "a".repeat(257);
        let cases: Vec<(String, Result<(), TopicError>)> = vec![
            (format!("$aws/rules/r/{a256}"), Ok(())),
            (format!("$AWS/Rules/r/{a256}"), Ok(())),
            (
                format!("$aws/rules/r/{a257}"),
                Err(TooLong { len: 257, max: 256 }),
            ),
            (format!("$aws/rules/my_rule/{}", levels(8)), Ok(())),
            (
                format!("$aws/rules/my_rule/{}", levels(9)),
                Err(TooManyLevels { levels: 9, max: 8 }),
            ),
            // The prefix alone leaves an empty, valid remainder.
            ("$aws/rules/r/".into(), Ok(())),
            ("$aws/rules/r".into(), Ok(())),
            // No slash after the rule name, or an empty rule name: counted in full.
            (
                format!("$aws/rules/{a256}"),
                Err(TooLong { len: 267, max: 256 }),
            ),
            (
                format!("$aws/rules//{}", levels(6)),
                Err(TooManyLevels { levels: 9, max: 8 }),
            ),
            // Not the prefix.
            (
                format!("$aws/rulesx/r/{}", levels(6)),
                Err(TooManyLevels { levels: 9, max: 8 }),
            ),
            (
                format!("x/$aws/rules/r/{}", levels(5)),
                Err(TooManyLevels { levels: 9, max: 8 }),
            ),
            // `$share/` is not special in a topic name.
            (
                format!("$share/g/{}", levels(7)),
                Err(TooManyLevels { levels: 9, max: 8 }),
            ),
        ];
        for (topic, want) in cases {
            assert_eq!(name(&topic), want, "{topic:?}");
        }
    }

    #[test]
    fn topic_filters() {
        let a256 = "a".repeat(256);
        let cases: Vec<(String, Result<(), TopicError>)> = vec![
            ("a".into(), Ok(())),
            ("#".into(), Ok(())),
            ("+".into(), Ok(())),
            ("a/#".into(), Ok(())),
            ("a/+/b".into(), Ok(())),
            ("+/+".into(), Ok(())),
            ("/+".into(), Ok(())),
            ("+/".into(), Ok(())),
            ("a//#".into(), Ok(())),
            ("$SYS/#".into(), Ok(())),
            ("$share".into(), Ok(())),
            ("$SHARE/g/a".into(), Ok(())),
            ("".into(), Err(Empty)),
            ("a/\0".into(), Err(NulChar)),
            ("$share/\0/a".into(), Err(NulChar)),
            ("a+".into(), Err(BadWildcard)),
            ("+a".into(), Err(BadWildcard)),
            ("++".into(), Err(BadWildcard)),
            ("a/b#".into(), Err(BadWildcard)),
            ("##".into(), Err(BadWildcard)),
            ("#/a".into(), Err(BadWildcard)),
            ("a/#/b".into(), Err(BadWildcard)),
            ("#/".into(), Err(BadWildcard)),
            ("a/#/#".into(), Err(BadWildcard)),
            (a256.clone(), Ok(())),
            (format!("{a256}/#"), Err(TooLong { len: 258, max: 256 })),
            (levels(8), Ok(())),
            (format!("{}/#", levels(7)), Ok(())),
            (
                format!("{}/+", levels(8)),
                Err(TooManyLevels { levels: 9, max: 8 }),
            ),
            (format!("$aws/rules/r/{}/#", levels(7)), Ok(())),
            // Misplaced wildcard is reported before size.
            (format!("{a256}/a#"), Err(BadWildcard)),
        ];
        for (f, want) in cases {
            assert_eq!(filter(&f), want, "{f:?}");
        }
    }

    #[test]
    fn shared_filters() {
        let a256 = "a".repeat(256);
        let g128 = "\u{e9}".repeat(128);
        let g129 = "\u{e9}".repeat(129);
        let cases: Vec<(String, Result<(), TopicError>)> = vec![
            ("$share/g/a".into(), Ok(())),
            ("$share/g/#".into(), Ok(())),
            ("$share/g/+/x".into(), Ok(())),
            ("$share/g/$aws/rules/r/a".into(), Ok(())),
            ("$share/".into(), Err(BadShare("empty share name"))),
            ("$share//a".into(), Err(BadShare("empty share name"))),
            ("$share//".into(), Err(BadShare("empty share name"))),
            (
                "$share/g".into(),
                Err(BadShare("no topic filter after the share name")),
            ),
            (
                "$share/g/".into(),
                Err(BadShare("no topic filter after the share name")),
            ),
            (
                "$share/g+/a".into(),
                Err(BadShare("share name contains a wildcard")),
            ),
            (
                "$share/#/a".into(),
                Err(BadShare("share name contains a wildcard")),
            ),
            // The group limit is in characters, not bytes.
            (format!("$share/{g128}/a"), Ok(())),
            (
                format!("$share/{g129}/a"),
                Err(BadShare("share name longer than 128 characters")),
            ),
            // The inner filter is validated like any filter.
            ("$share/g/a#".into(), Err(BadWildcard)),
            ("$share/g/#/a".into(), Err(BadWildcard)),
            // `$share/<g>/` is not counted.
            (format!("$share/g/{a256}"), Ok(())),
            (
                format!("$share/g/{a256}a"),
                Err(TooLong { len: 257, max: 256 }),
            ),
            (format!("$share/g/{}", levels(8)), Ok(())),
            (
                format!("$share/g/{}", levels(9)),
                Err(TooManyLevels { levels: 9, max: 8 }),
            ),
            // Nor is a `$aws/rules/<r>/` after it.
            (format!("$share/g/$aws/rules/r/{}", levels(8)), Ok(())),
        ];
        for (f, want) in cases {
            assert_eq!(filter(&f), want, "{f:?}");
        }
    }

    #[test]
    fn custom_limits() {
        let small = TopicLimits {
            max_len: 5,
            max_levels: 2,
        };
        assert_eq!(validate_topic_name("a/b", &small), Ok(()));
        assert_eq!(validate_topic_name("abcde", &small), Ok(()));
        assert_eq!(
            validate_topic_name("abcdef", &small),
            Err(TooLong { len: 6, max: 5 })
        );
        assert_eq!(
            validate_topic_name("a/b/c", &small),
            Err(TooManyLevels { levels: 3, max: 2 })
        );
        assert_eq!(validate_topic_filter("a/#", &small), Ok(()));
        assert_eq!(
            validate_topic_filter("a/+/#", &small),
            Err(TooManyLevels { levels: 3, max: 2 })
        );
        assert_eq!(validate_topic_filter("$share/group/a/b", &small), Ok(()));
        assert_eq!(validate_topic_name("$aws/rules/r/a/b", &small), Ok(()));
    }

    #[test]
    fn parse_shared_splits() {
        assert_eq!(parse_shared("$share/g/a/b"), Some(("g", "a/b")));
        assert_eq!(parse_shared("$share/g/#"), Some(("g", "#")));
        assert_eq!(parse_shared("$share/g"), Some(("g", "")));
        assert_eq!(parse_shared("$share//a"), Some(("", "a")));
        assert_eq!(parse_shared("$share/"), Some(("", "")));
        assert_eq!(parse_shared("$share"), None);
        assert_eq!(parse_shared("$SHARE/g/a"), None);
        assert_eq!(parse_shared("a/$share/g/a"), None);
        assert_eq!(parse_shared("a/b"), None);
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            TooLong { len: 300, max: 256 }.to_string(),
            "topic of 300 bytes exceeds the limit of 256"
        );
        assert_eq!(
            BadShare("empty share name").to_string(),
            "invalid shared subscription: empty share name"
        );
    }
}
