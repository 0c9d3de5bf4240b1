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
//! - `matching`: `matches`, the reference matcher (and `has_wildcards`).
//! - `index`: `SubscriptionIndex` (exact-filter map + wildcard trie).

mod index;
mod matching;
mod validate;

pub use index::{Iter, SubscriptionIndex};
pub use matching::{has_wildcards, matches};
pub use validate::{
    MAX_SHARE_NAME_CHARS, TopicLimits, parse_shared, validate_topic_filter, validate_topic_name,
};

/// Why a topic name or filter is invalid.
///
/// When a topic breaks several rules, the error reported is the first that applies in this
/// order: `Empty`, `NulChar`, `BadShare` (filters only), `WildcardInName` / `BadWildcard`,
/// `TooLong`, `TooManyLevels`.
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
