//! Who a published message goes to. The subscription index carries a generation that moves
//! with every change to it; `Routes` are the receivers of one topic worked out from the index
//! at one generation. A connection keeps the routes of its last topic while it works through
//! the PUBLISHes of one read, so a publisher that sends many messages to one topic walks the
//! index, merges its matches and clones the receivers' handles once per read, not once per
//! message (with a thousand receivers, that was about a tenth of the fan-out's CPU).

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use smallvec::SmallVec;
use thingd_mqtt::{ByteStr, QoS, SubscriptionOptions};
use thingd_topic::SubscriptionIndex;

use crate::broker::{SubKey, SubVal};
use crate::session::SessionCell;

pub(crate) type Index = SubscriptionIndex<SubKey, SubVal>;

/// The subscription index and its generation.
pub(crate) struct Subscriptions {
    index: RwLock<Index>,
    generation: AtomicU64,
}

/// Write access to the index; the generation moves when it is dropped (while the lock is
/// still held, so whoever reads the new generation reads the changed index).
pub(crate) struct IndexWrite<'a> {
    guard: RwLockWriteGuard<'a, Index>,
    generation: &'a AtomicU64,
}

impl Subscriptions {
    pub(crate) fn new() -> Subscriptions {
        Subscriptions {
            index: RwLock::new(SubscriptionIndex::new()),
            generation: AtomicU64::new(0),
        }
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read()
    }

    pub(crate) fn write(&self) -> IndexWrite<'_> {
        IndexWrite {
            guard: self.index.write(),
            generation: &self.generation,
        }
    }

    /// Moves with every write. Read it before reading the index: routes worked out after
    /// reading generation `g` are at least as new as `g`.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl Deref for IndexWrite<'_> {
    type Target = Index;
    fn deref(&self) -> &Index {
        &self.guard
    }
}

impl DerefMut for IndexWrite<'_> {
    fn deref_mut(&mut self) -> &mut Index {
        &mut self.guard
    }
}

impl Drop for IndexWrite<'_> {
    fn drop(&mut self) {
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// A session that receives the message directly, its matching subscriptions merged.
pub(crate) struct Target {
    pub(crate) cell: Arc<SessionCell>,
    pub(crate) qos: QoS,
    pub(crate) rap: bool,
    pub(crate) ids: Vec<u32>,
}

/// One member of a share group.
pub(crate) type Member = (Arc<SessionCell>, SubscriptionOptions, Option<u32>);

/// The receivers of a message on one topic from one origin, as the index had them.
pub(crate) struct Routes {
    generation: u64,
    topic: ByteStr,
    origin: Option<Arc<str>>,
    /// One entry per session. Most topics have one receiver (a device's telemetry, a
    /// command to one device): it is kept inline, without an allocation.
    pub(crate) direct: SmallVec<[Target; 1]>,
    /// Each share group (with its filter) that matched, with its members.
    pub(crate) groups: Vec<Vec<Member>>,
}

impl Routes {
    /// The routes of `topic` for a message from `origin` (No Local leaves the origin out).
    pub(crate) fn find(subs: &Subscriptions, topic: &ByteStr, origin: Option<&Arc<str>>) -> Routes {
        let generation = subs.generation();
        // Every matching subscription, then merged per session: a session with several
        // matching filters gets one copy (MQTT 5, 3.3.4). Sorting by session beat a hash
        // map keyed by session in the fan-out profile (one hash and insert per receiver).
        let mut direct: SmallVec<[Target; 1]> = SmallVec::new();
        let mut groups: HashMap<(Arc<str>, String), Vec<Member>> = HashMap::new();
        subs.read()
            .for_each_match(topic, |filter, key, val| match &key.group {
                None => {
                    if val.opts.no_local && origin.is_some_and(|o| **o == *key.client) {
                        return;
                    }
                    direct.push(Target {
                        cell: val.cell.clone(),
                        qos: val.opts.qos,
                        rap: val.opts.retain_as_published,
                        ids: val.id.into_iter().collect(),
                    });
                }
                Some(g) => groups
                    .entry((g.clone(), filter.to_owned()))
                    .or_default()
                    .push((val.cell.clone(), val.opts, val.id)),
            });
        direct.sort_unstable_by_key(|t| Arc::as_ptr(&t.cell) as usize);
        direct.dedup_by(|t, kept| {
            let same = Arc::ptr_eq(&t.cell, &kept.cell);
            if same {
                kept.qos = kept.qos.max(t.qos);
                kept.rap |= t.rap;
                kept.ids.append(&mut t.ids);
            }
            same
        });
        Routes {
            generation,
            topic: topic.clone(),
            origin: origin.cloned(),
            direct,
            groups: groups.into_values().collect(),
        }
    }

    /// Whether these are still the routes of `topic` from `origin`: nothing was subscribed,
    /// unsubscribed or ended since they were worked out.
    pub(crate) fn still_for(
        &self,
        subs: &Subscriptions,
        topic: &ByteStr,
        origin: Option<&Arc<str>>,
    ) -> bool {
        self.generation == subs.generation()
            && self.topic == *topic
            && self.origin.as_ref() == origin
    }

    /// How many sessions may receive the message (a share group counts once).
    pub(crate) fn receivers(&self) -> usize {
        self.direct.len() + self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;
    use thingd_mqtt::ProtocolVersion;

    use super::*;
    use crate::session::Session;

    fn session(client: &str) -> Arc<SessionCell> {
        Arc::new(Mutex::new(Session::new(
            Arc::from(client),
            ProtocolVersion::V5,
            0,
        )))
    }

    fn subscribe(subs: &Subscriptions, cell: &Arc<SessionCell>, filter: &str, no_local: bool) {
        let client = cell.lock().client_id.clone();
        let (group, inner) = crate::broker::split_filter(filter);
        subs.write().insert(
            inner,
            SubKey { client, group },
            SubVal {
                cell: cell.clone(),
                opts: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local,
                    ..SubscriptionOptions::default()
                },
                id: None,
            },
        );
    }

    fn clients(routes: &Routes) -> Vec<String> {
        let mut v: Vec<String> = routes
            .direct
            .iter()
            .map(|t| t.cell.lock().client_id.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn routes_go_stale_when_anything_is_subscribed() {
        let subs = Subscriptions::new();
        let (a, b) = (session("a"), session("b"));
        subscribe(&subs, &a, "t/1", false);
        let routes = Routes::find(&subs, &ByteStr::from("t/1"), None);
        assert_eq!(clients(&routes), ["a"]);
        assert!(routes.still_for(&subs, &ByteStr::from("t/1"), None));
        // A subscription to another topic moves the generation too: the check is cheap,
        // not precise.
        subscribe(&subs, &b, "t/1", false);
        assert!(!routes.still_for(&subs, &ByteStr::from("t/1"), None));
        assert_eq!(
            clients(&Routes::find(&subs, &ByteStr::from("t/1"), None)),
            ["a", "b"]
        );
    }

    #[test]
    fn routes_go_stale_when_a_subscription_is_removed() {
        let subs = Subscriptions::new();
        let a = session("a");
        subscribe(&subs, &a, "t/+", false);
        let routes = Routes::find(&subs, &ByteStr::from("t/1"), None);
        assert_eq!(routes.receivers(), 1);
        subs.write().remove(
            "t/+",
            &SubKey {
                client: Arc::from("a"),
                group: None,
            },
        );
        assert!(!routes.still_for(&subs, &ByteStr::from("t/1"), None));
        assert_eq!(
            Routes::find(&subs, &ByteStr::from("t/1"), None).receivers(),
            0
        );
    }

    #[test]
    fn routes_hold_only_for_their_topic_and_origin() {
        let subs = Subscriptions::new();
        let a = session("a");
        subscribe(&subs, &a, "t/#", true);
        let from_a = Some(Arc::<str>::from("a"));
        let from_b = Some(Arc::<str>::from("b"));
        let routes = Routes::find(&subs, &ByteStr::from("t/1"), from_a.as_ref());
        // No Local: a's own message does not come back to it.
        assert_eq!(routes.receivers(), 0);
        assert!(routes.still_for(&subs, &ByteStr::from("t/1"), from_a.as_ref()));
        assert!(!routes.still_for(&subs, &ByteStr::from("t/2"), from_a.as_ref()));
        assert!(!routes.still_for(&subs, &ByteStr::from("t/1"), from_b.as_ref()));
        assert!(!routes.still_for(&subs, &ByteStr::from("t/1"), None));
        assert_eq!(
            clients(&Routes::find(&subs, &ByteStr::from("t/1"), from_b.as_ref())),
            ["a"]
        );
    }

    #[test]
    fn a_session_with_several_matching_filters_is_one_route_and_groups_are_their_own() {
        let subs = Subscriptions::new();
        let (a, b, c) = (session("a"), session("b"), session("c"));
        subscribe(&subs, &a, "t/1", false);
        subscribe(&subs, &a, "t/+", false);
        subscribe(&subs, &b, "$share/g/t/1", false);
        subscribe(&subs, &c, "$share/g/t/1", false);
        let routes = Routes::find(&subs, &ByteStr::from("t/1"), None);
        assert_eq!(clients(&routes), ["a"]);
        assert_eq!(routes.groups.len(), 1);
        assert_eq!(routes.groups[0].len(), 2);
        assert_eq!(routes.receivers(), 2);
    }
}
