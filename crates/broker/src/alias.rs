//! Topic aliases: the server→client table (assigned first-come up to the client's Topic Alias
//! Maximum, then topics without an alias go out in full) and the client→server map.

use std::collections::HashMap;

use thingd_mqtt::ByteStr;

/// Aliases the server assigns on one connection.
#[derive(Debug, Default)]
pub(crate) struct OutAliases {
    max: u16,
    /// Boxed when the first alias is given: few clients accept aliases, and an empty map
    /// inline would be 48 bytes in every session.
    #[allow(clippy::box_collection)]
    by_topic: Option<Box<HashMap<ByteStr, u16>>>,
}

/// What to put in an outbound PUBLISH.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AliasUse {
    /// No alias: send the topic.
    None,
    /// A new alias: send topic and alias.
    New(u16),
    /// A known alias: send an empty topic and the alias.
    Known(u16),
}

impl OutAliases {
    pub(crate) fn new(max: u16) -> Self {
        OutAliases {
            max,
            by_topic: None,
        }
    }

    /// True when this connection may use aliases at all.
    pub(crate) fn enabled(&self) -> bool {
        self.max > 0
    }

    /// The alias decision for `topic`, assigning a new alias if one is free.
    pub(crate) fn lookup(&mut self, topic: &ByteStr) -> AliasUse {
        if self.max == 0 {
            return AliasUse::None;
        }
        let by_topic = self.by_topic.get_or_insert_default();
        if let Some(a) = by_topic.get(topic) {
            return AliasUse::Known(*a);
        }
        let next = by_topic.len() + 1;
        if next > self.max as usize {
            return AliasUse::None;
        }
        let a = next as u16;
        by_topic.insert(topic.clone(), a);
        AliasUse::New(a)
    }
}

/// Why an inbound alias could not be resolved (both are DISCONNECT reasons).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AliasError {
    /// Alias 0 or above the maximum (0x94).
    Invalid,
    /// Empty topic with an alias never set (0x82).
    Unknown,
}

/// Aliases a client has set on its connection. The map is boxed when the first alias is
/// set: few clients use aliases, and every byte here is in every idle connection's task.
#[derive(Debug, Default)]
pub(crate) struct InAliases {
    max: u16,
    #[allow(clippy::box_collection)]
    map: Option<Box<HashMap<u16, ByteStr>>>,
}

impl InAliases {
    pub(crate) fn new(max: u16) -> Self {
        InAliases { max, map: None }
    }

    /// Resolves the topic of an inbound PUBLISH with an optional alias.
    pub(crate) fn resolve(
        &mut self,
        topic: ByteStr,
        alias: Option<u16>,
    ) -> Result<ByteStr, AliasError> {
        let Some(a) = alias else {
            return Ok(topic);
        };
        if a == 0 || a > self.max {
            return Err(AliasError::Invalid);
        }
        if topic.is_empty() {
            let known = self.map.as_ref().and_then(|m| m.get(&a));
            known.cloned().ok_or(AliasError::Unknown)
        } else {
            let map = self.map.get_or_insert_default();
            map.insert(a, topic.clone());
            Ok(topic)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_first_come() {
        let mut t = OutAliases::new(2);
        let a = ByteStr::from("a");
        let b = ByteStr::from("b");
        let c = ByteStr::from("c");
        assert_eq!(t.lookup(&a), AliasUse::New(1));
        assert_eq!(t.lookup(&a), AliasUse::Known(1));
        assert_eq!(t.lookup(&b), AliasUse::New(2));
        assert_eq!(t.lookup(&c), AliasUse::None);
        assert_eq!(t.lookup(&b), AliasUse::Known(2));
        let mut off = OutAliases::new(0);
        assert!(!off.enabled());
        assert_eq!(off.lookup(&a), AliasUse::None);
    }

    #[test]
    fn inbound_resolution() {
        let mut t = InAliases::new(8);
        assert_eq!(t.resolve(ByteStr::from("x"), None), Ok(ByteStr::from("x")));
        assert_eq!(
            t.resolve(ByteStr::from(""), Some(3)),
            Err(AliasError::Unknown)
        );
        assert_eq!(
            t.resolve(ByteStr::from("x/y"), Some(3)),
            Ok(ByteStr::from("x/y"))
        );
        assert_eq!(
            t.resolve(ByteStr::from(""), Some(3)),
            Ok(ByteStr::from("x/y"))
        );
        assert_eq!(
            t.resolve(ByteStr::from("z"), Some(3)),
            Ok(ByteStr::from("z"))
        );
        assert_eq!(
            t.resolve(ByteStr::from(""), Some(3)),
            Ok(ByteStr::from("z"))
        );
        assert_eq!(
            t.resolve(ByteStr::from("z"), Some(0)),
            Err(AliasError::Invalid)
        );
        assert_eq!(
            t.resolve(ByteStr::from("z"), Some(9)),
            Err(AliasError::Invalid)
        );
    }
}
