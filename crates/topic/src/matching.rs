//! The reference matcher: whether one filter matches one topic.
//!
//! Semantics (MQTT 3.1.1 §4.7 / MQTT 5 §4.7):
//! - Levels are separated by `/` and compared byte for byte (case-sensitive); empty levels are
//!   ordinary levels.
//! - `+` as a whole level matches exactly one topic level, which may be empty.
//! - `#` as the whole last level matches any number of remaining levels, **including none**:
//!   `a/#` matches `a`, `a/` and `a/b/c`. This follows MQTT 3.1.1 §4.7.1.2 ("sport/#" also
//!   matches "sport"), which MQTT clients and conformance suites expect. AWS IoT Core
//!   documents a deviation (`a/#` does not match `a`); thingd deliberately does not copy it.
//! - A filter whose first level is a wildcard does not match a topic that starts with `$`
//!   [MQTT-4.7.2-1]; `$SYS/#` does.
//!
//! On filters that validation would reject, wildcard characters that are not a whole level,
//! and a `#` level that is not last, are compared literally. `SubscriptionIndex` follows the
//! same rule, so the two always agree.

/// Whether `filter` (not shared) matches `topic`, by the MQTT rules.
///
/// `a/#` matches `a` (MQTT 3.1.1 §4.7.1.2, unlike AWS IoT Core's documented behaviour), and a
/// filter starting with `+` or `#` does not match a topic starting with `$`. See the module
/// documentation for the full rules.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && starts_with_wildcard(filter) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // A trailing `#` takes whatever is left, even nothing (the parent level).
            (Some("#"), _) if filter_levels.clone().next().is_none() => return true,
            (Some(f), Some(t)) => {
                if f != "+" && f != t {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `filter` has a wildcard level: a whole-level `+` anywhere, or a whole-level `#` at
/// the end. A filter without one matches exactly one topic, itself; AWS IoT Core delivers
/// retained messages on SUBSCRIBE only to such filters.
pub fn has_wildcards(filter: &str) -> bool {
    filter == "#" || filter.ends_with("/#") || filter.split('/').any(|level| level == "+")
}

/// Whether the first level of `filter` is a wildcard (`+`, or `#` as the whole filter).
pub(crate) fn starts_with_wildcard(filter: &str) -> bool {
    filter == "#" || filter == "+" || filter.starts_with("+/")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// (filter, topic, expected)
    pub(crate) const CASES: &[(&str, &str, bool)] = &[
        // MQTT 3.1.1 §4.7.1.2 examples.
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking",
            true,
        ),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon",
            true,
        ),
        ("sport/tennis/player1/#", "sport/tennis/player2", false),
        ("sport/tennis/player1/#", "sport/tennis", false),
        ("sport/#", "sport", true),
        ("#", "sport", true),
        ("#", "sport/tennis", true),
        // §4.7.1.3.
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player2", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("+/tennis/#", "sport/tennis", true),
        ("+/tennis/#", "sport/tennis/x/y", true),
        ("sport/+/player1", "sport/tennis/player1", true),
        // §4.7.2: `$` topics and leading wildcards.
        ("#", "$SYS/x", false),
        ("#", "$SYS", false),
        ("+", "$SYS", false),
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("+/#", "$SYS/x", false),
        ("$SYS/#", "$SYS/x", true),
        ("$SYS/#", "$SYS", true),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ("$SYS/x", "$SYS/x", true),
        (
            "$aws/things/+/shadow/update",
            "$aws/things/t1/shadow/update",
            true,
        ),
        // `$` only matters at the start of the topic.
        ("#", "a/$SYS", true),
        ("a/+", "a/$x", true),
        // A `$` filter level is a literal.
        ("$x", "$x", true),
        ("$x", "$y", false),
        // AWS deviation not followed: `a/#` matches `a`; it also matches `a/`.
        ("a/#", "a", true),
        ("a/#", "a/", true),
        ("a/#", "ab", false),
        // Empty levels.
        ("a//b", "a//b", true),
        ("a//b", "a/b", false),
        ("a/+/b", "a//b", true),
        ("a/+", "a/", true),
        ("a/", "a", false),
        ("a", "a/", false),
        ("+/+", "/", true),
        ("+", "", true),
        ("/", "/", true),
        ("#", "/", true),
        ("#", "", true),
        ("/#", "/", true),
        ("/#", "", true),
        ("/#", "a", false),
        ("//#", "/", true),
        // Case-sensitive, exact.
        ("A", "a", false),
        ("a/B", "a/b", false),
        ("a/b", "a/b/c", false),
        ("a/b/c", "a/b", false),
        ("a/+/c", "a/b", false),
        // Invalid filters compare literally.
        ("a+", "a+", true),
        ("a+", "ab", false),
        ("#/a", "#/a", true),
        ("#/a", "x/a", false),
        ("a#", "a", false),
    ];

    #[test]
    fn table() {
        for &(filter, topic, want) in CASES {
            assert_eq!(matches(filter, topic), want, "{filter:?} vs {topic:?}");
        }
    }

    #[test]
    fn hash_matches_parent_level_per_mqtt_not_aws() {
        // Deliberate: MQTT 3.1.1 §4.7.1.2 says `sport/#` matches `sport`; AWS IoT Core
        // documents that it does not. thingd follows MQTT.
        assert!(matches("sport/#", "sport"));
        assert!(matches("a/b/#", "a/b"));
    }

    #[test]
    fn wildcard_detection() {
        for f in ["#", "+", "a/#", "a/+", "+/a", "a/+/b", "a//+", "+/+"] {
            assert!(has_wildcards(f), "{f:?}");
        }
        for f in ["a", "a/b", "a+", "a#", "#/a", "a/b#", "$SYS/x", "", "/"] {
            assert!(!has_wildcards(f), "{f:?}");
        }
        for f in ["#", "+", "+/a", "+/#"] {
            assert!(starts_with_wildcard(f), "{f:?}");
        }
        for f in ["a/#", "a/+", "#/a", "+a", "a"] {
            assert!(!starts_with_wildcard(f), "{f:?}");
        }
    }
}
