//! Topic filter matching (MQTT §4.7) and the shadow topic names the SDK uses.

/// True when `topic` matches `filter` (`+` one level, `#` the rest; a topic starting with `$`
/// is not matched by a wildcard in the first level).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::filter_matches;

    #[test]
    fn wildcards_match_as_the_spec_says() {
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(filter_matches("#", "x/y"));
        assert!(!filter_matches("#", "$aws/x"));
        assert!(filter_matches(
            "$aws/things/T/shadow/update/+",
            "$aws/things/T/shadow/update/delta"
        ));
        assert!(!filter_matches(
            "$aws/things/T/shadow/update/+",
            "$aws/things/T/shadow/update"
        ));
        assert!(!filter_matches("a/b", "a/b/c"));
        assert!(!filter_matches("a/b/c", "a/b"));
    }
}
