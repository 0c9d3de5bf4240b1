//! Thing names, shadow names, and the pair that identifies one shadow.

use std::fmt;

/// Longest thing name, in bytes (all valid characters are ASCII).
pub const MAX_THING_NAME_LEN: usize = 128;

/// Longest shadow name, in bytes (all valid characters are ASCII).
pub const MAX_SHADOW_NAME_LEN: usize = 64;

/// Why a thing or shadow name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("name must not be empty")]
    Empty,
    /// The name is longer than its limit (128 for things, 64 for shadows).
    #[error("name is {len} characters long; the maximum is {max}")]
    TooLong {
        /// Length of the refused name.
        len: usize,
        /// The limit that applies.
        max: usize,
    },
    /// The name holds a character outside its alphabet.
    #[error("name contains the invalid character {0:?}")]
    InvalidCharacter(char),
}

fn check(name: &str, max: usize, allow_dollar: bool) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(bad) = name.chars().find(|&c| {
        !(c.is_ascii_alphanumeric()
            || c == ':'
            || c == '_'
            || c == '-'
            || (allow_dollar && c == '$'))
    }) {
        return Err(NameError::InvalidCharacter(bad));
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            len: name.len(),
            max,
        });
    }
    Ok(())
}

/// A validated thing name: 1 to 128 characters from `[a-zA-Z0-9:_-]`.
///
/// A shadow does not need a registered thing; this type only checks the spelling.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThingName(String);

impl ThingName {
    /// Validates `name` as a thing name.
    pub fn new(name: &str) -> Result<Self, NameError> {
        check(name, MAX_THING_NAME_LEN, false)?;
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ThingName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated named-shadow name: 1 to 64 characters from `[$a-zA-Z0-9:_-]`.
///
/// The `$` is allowed because the current AWS model allows it (for reserved names such as
/// `$package`); older SDKs refuse it client-side, which does not matter to a server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShadowName(String);

impl ShadowName {
    /// Validates `name` as a shadow name.
    pub fn new(name: &str) -> Result<Self, NameError> {
        check(name, MAX_SHADOW_NAME_LEN, true)?;
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShadowName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which shadow: the classic (unnamed) shadow of a thing, or one of its named shadows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShadowId {
    /// The thing the shadow belongs to.
    pub thing: ThingName,
    /// `None` for the classic shadow.
    pub shadow: Option<ShadowName>,
}

impl ShadowId {
    /// The classic shadow of `thing`.
    pub fn classic(thing: ThingName) -> Self {
        Self {
            thing,
            shadow: None,
        }
    }

    /// The named shadow `shadow` of `thing`.
    pub fn named(thing: ThingName, shadow: ShadowName) -> Self {
        Self {
            thing,
            shadow: Some(shadow),
        }
    }

    /// Validates both parts; `shadow` is `None` (or, as the HTTP API's `?name=` is read,
    /// absent) for the classic shadow.
    pub fn parse(thing: &str, shadow: Option<&str>) -> Result<Self, NameError> {
        Ok(Self {
            thing: ThingName::new(thing)?,
            shadow: shadow.map(ShadowName::new).transpose()?,
        })
    }

    /// The name quoted in `No shadow exists with name: '<name>'`: the thing name for the
    /// classic shadow, the shadow name for a named shadow (as the cloud answers).
    pub fn not_found_name(&self) -> &str {
        match &self.shadow {
            Some(s) => s.as_str(),
            None => self.thing.as_str(),
        }
    }

    /// The MQTT topic prefix: `$aws/things/<T>/shadow` or `$aws/things/<T>/shadow/name/<S>`.
    pub fn topic_prefix(&self) -> String {
        match &self.shadow {
            Some(s) => format!("$aws/things/{}/shadow/name/{}", self.thing, s),
            None => format!("$aws/things/{}/shadow", self.thing),
        }
    }
}

impl fmt::Display for ShadowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.shadow {
            Some(s) => write!(f, "{}/{}", self.thing, s),
            None => write!(f, "{}", self.thing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thing_names() {
        assert!(ThingName::new("MyJourneyIoTDevice").is_ok());
        assert!(ThingName::new("a:b_c-d09").is_ok());
        assert!(ThingName::new(&"x".repeat(128)).is_ok());
        assert_eq!(
            ThingName::new(&"x".repeat(129)),
            Err(NameError::TooLong { len: 129, max: 128 })
        );
        assert_eq!(ThingName::new(""), Err(NameError::Empty));
        assert_eq!(ThingName::new("a/b"), Err(NameError::InvalidCharacter('/')));
        assert_eq!(ThingName::new("$x"), Err(NameError::InvalidCharacter('$')));
        assert_eq!(ThingName::new("a+"), Err(NameError::InvalidCharacter('+')));
        assert_eq!(ThingName::new("é"), Err(NameError::InvalidCharacter('é')));
    }

    #[test]
    fn shadow_names() {
        assert!(ShadowName::new("$package").is_ok());
        assert!(ShadowName::new("Limits").is_ok());
        assert!(ShadowName::new(&"s".repeat(64)).is_ok());
        assert!(ShadowName::new(&"s".repeat(65)).is_err());
        assert!(ShadowName::new("").is_err());
        assert!(ShadowName::new("a#").is_err());
        assert!(ShadowName::new("a b").is_err());
    }

    #[test]
    fn ids() {
        let classic = ShadowId::parse("t1", None).unwrap();
        assert_eq!(classic.topic_prefix(), "$aws/things/t1/shadow");
        assert_eq!(classic.not_found_name(), "t1");
        let named = ShadowId::parse("t1", Some("cfg")).unwrap();
        assert_eq!(named.topic_prefix(), "$aws/things/t1/shadow/name/cfg");
        assert_eq!(named.not_found_name(), "cfg");
        assert_eq!(named.to_string(), "t1/cfg");
        assert!(ShadowId::parse("t1", Some("")).is_err());
    }
}
