//! Topic names and topic filters: validation (MQTT rules plus AWS IoT's limits), matching,
//! and the subscription index the broker routes with.
//!
//! Owns: what a valid topic name or filter is, `$share/<group>/<filter>` parsing, whether a
//! filter matches a topic (`+`, `#`, and the rule that a leading wildcard does not match a
//! `$` topic), and `SubscriptionIndex`, which finds every subscription matching a topic
//! without walking all of them. Does not own: sessions, QoS, shared-subscription member
//! selection (the broker picks the member), or authorization.
//!
//! # Layout
//! - `validate`: `TopicLimits`, `validate_topic_name`, `validate_topic_filter`, `parse_shared`.
//! - `matching`: `matches`, the reference matcher.
//! - `index`: `SubscriptionIndex` (exact-filter map + wildcard trie).
//!
//! PLACEHOLDER SIGNATURES: the implementation is being written; the API below is the contract.

use std::hash::Hash;

/// Why a topic name or filter is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty topic name or filter.
    #[error("empty topic")]
    Empty,
    /// Longer than the configured maximum (AWS: 256 bytes, not counting `$share/<g>/` or `$aws/rules/<r>/`).
    #[error("topic of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Counted length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// More levels than allowed (AWS: 8 levels, i.e. 7 slashes).
    #[error("topic has {levels} levels, more than the limit of {max}")]
    TooManyLevels {
        /// Counted levels.
        levels: usize,
        /// Limit.
        max: usize,
    },
    /// A `+` or `#` in a topic name.
    #[error("wildcards are not allowed in a topic name")]
    WildcardInName,
    /// A `+` or `#` that does not fill a whole level, or a `#` that is not last.
    #[error("misplaced wildcard")]
    BadWildcard,
    /// The NUL character U+0000.
    #[error("topic contains U+0000")]
    NulChar,
    /// A malformed `$share/<group>/<filter>`.
    #[error("invalid shared subscription: {0}")]
    BadShare(&'static str),
}

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

/// Checks a topic name (as in PUBLISH).
pub fn validate_topic_name(topic: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    let _ = (topic, limits);
    unimplemented!()
}

/// Checks a topic filter (as in SUBSCRIBE), including the `$share/<group>/<filter>` form.
pub fn validate_topic_filter(filter: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    let _ = (filter, limits);
    unimplemented!()
}

/// Splits `$share/<group>/<filter>` into `(group, filter)`; `None` for a non-shared filter.
/// Does not validate; call `validate_topic_filter` first.
pub fn parse_shared(filter: &str) -> Option<(&str, &str)> {
    let _ = filter;
    unimplemented!()
}

/// Whether `filter` (not shared) matches `topic`, by the MQTT rules.
pub fn matches(filter: &str, topic: &str) -> bool {
    let _ = (filter, topic);
    unimplemented!()
}

/// An index from topic filters to subscribers. Each entry is a (filter, key) pair with a
/// value; one key has at most one entry per filter. Lookup cost grows with the number of
/// levels of the topic and the number of matching entries, not with the number of filters.
#[derive(Debug)]
pub struct SubscriptionIndex<K, V> {
    _p: std::marker::PhantomData<(K, V)>,
}

impl<K: Clone + Eq + Hash, V> Default for SubscriptionIndex<K, V> {
    fn default() -> Self {
        unimplemented!()
    }
}

impl<K: Clone + Eq + Hash, V> SubscriptionIndex<K, V> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the entry for (`filter`, `key`); returns the value it replaced.
    /// `filter` must be a valid, non-shared filter.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let _ = (filter, key, value);
        unimplemented!()
    }

    /// Removes the entry for (`filter`, `key`) and returns its value.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let _ = (filter, key);
        unimplemented!()
    }

    /// Calls `f(filter, key, value)` for every entry whose filter matches `topic`.
    pub fn for_each_match(&self, topic: &str, f: impl FnMut(&str, &K, &V)) {
        let _ = (topic, f);
        unimplemented!()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        unimplemented!()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
