//! `SubscriptionIndex`: every subscription matching a topic, without walking all of them.
//!
//! Filters without wildcards live in a hash map keyed by the filter, found with one lookup.
//! Filters with wildcards live in a trie with one node per level: literal children by level
//! string, a separate `+` child, a slot for the filter that ends at the node, and a slot for
//! the filter that is the node's path followed by `#`. A lookup walks the trie once, following
//! at each level the literal child for the topic's level and the `+` child, and collecting
//! every `#` slot it passes. Each slot stores its filter string once, next to its entries.
//!
//! Matching follows `crate::matches` exactly (including `a/#` matching `a` and the `$` rule);
//! the tests check the two against each other.

use std::collections::{HashMap, hash_map};
use std::hash::Hash;
use std::mem;
use std::str::Split;

use crate::matching::has_wildcards;

/// An index from topic filters to subscribers. Each entry is a (filter, key) pair with a
/// value; one key has at most one entry per filter. Lookup cost grows with the number of
/// levels of the topic and the number of matching entries, not with the number of filters.
///
/// Filters are taken as they are: pass valid, non-shared filters (for `$share/<g>/<f>`, index
/// `<f>` and keep the group in `K` or `V`). On an invalid filter, wildcard characters that are
/// not a whole level, and a non-final `#`, are literal, exactly as in [`crate::matches`].
#[derive(Debug)]
pub struct SubscriptionIndex<K, V> {
    /// Filters without wildcards, by filter.
    exact: HashMap<Box<str>, Entries<K, V>>,
    /// Filters with wildcards.
    root: Node<K, V>,
    /// Number of entries.
    len: usize,
    /// Number of entries per key.
    per_key: HashMap<K, usize>,
}

impl<K: Clone + Eq + Hash, V> Default for SubscriptionIndex<K, V> {
    fn default() -> Self {
        SubscriptionIndex {
            exact: HashMap::new(),
            root: Node::default(),
            len: 0,
            per_key: HashMap::new(),
        }
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
        let entries = if has_wildcards(filter) {
            &mut trie_slot_or_insert(&mut self.root, filter).entries
        } else {
            self.exact
                .entry(Box::from(filter))
                .or_insert_with(Entries::new)
        };
        let old = entries.insert(key.clone(), value);
        if old.is_none() {
            self.len += 1;
            *self.per_key.entry(key).or_insert(0) += 1;
        }
        old
    }

    /// Removes the entry for (`filter`, `key`) and returns its value.
    ///
    /// Trie nodes and map entries left empty are freed, so memory follows the live
    /// subscriptions rather than their history.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let old = if has_wildcards(filter) {
            remove_in(&mut self.root, filter.split('/'), key)
        } else {
            let entries = self.exact.get_mut(filter)?;
            let old = entries.remove(key)?;
            if entries.is_empty() {
                self.exact.remove(filter);
                shrink_if_sparse(&mut self.exact);
            }
            Some(old)
        }?;
        self.len -= 1;
        if let Some(count) = self.per_key.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                self.per_key.remove(key);
                shrink_if_sparse(&mut self.per_key);
            }
        }
        Some(old)
    }

    /// Calls `f(filter, key, value)` for every entry whose filter matches `topic`.
    ///
    /// Each matching entry is reported once, in no particular order. Does not allocate.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&str, &K, &V)) {
        if let Some((filter, entries)) = self.exact.get_key_value(topic) {
            entries.for_each(|k, v| f(filter, k, v));
        }
        if self.root.is_empty() {
            return;
        }
        // [MQTT-4.7.2-1]: a leading wildcard does not match a topic starting with `$`.
        let dollar = topic.starts_with('$');
        if !dollar && let Some(slot) = &self.root.hash {
            slot.emit(&mut f);
        }
        let mut levels = topic.split('/');
        let Some(first) = levels.next() else {
            return;
        };
        if let Some(child) = self.root.children.get(first) {
            visit(child, levels.clone(), &mut f);
        }
        if !dollar && let Some(plus) = &self.root.plus {
            visit(plus, levels, &mut f);
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of the entry for (`filter`, `key`).
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        self.entries(filter)?.get(key)
    }

    /// The value of the entry for (`filter`, `key`), mutably.
    pub fn get_mut(&mut self, filter: &str, key: &K) -> Option<&mut V> {
        let entries = if has_wildcards(filter) {
            &mut trie_slot_mut(&mut self.root, filter)?.entries
        } else {
            self.exact.get_mut(filter)?
        };
        entries.get_mut(key)
    }

    /// Whether there is an entry for (`filter`, `key`).
    pub fn contains(&self, filter: &str, key: &K) -> bool {
        self.get(filter, key).is_some()
    }

    /// The number of entries with key `key` (for example, one client's subscriptions).
    pub fn count_for_key(&self, key: &K) -> usize {
        self.per_key.get(key).copied().unwrap_or(0)
    }

    /// The number of entries whose filter is `filter`.
    pub fn count_for_filter(&self, filter: &str) -> usize {
        self.entries(filter).map_or(0, Entries::len)
    }

    /// Every entry as `(filter, key, value)`, in no particular order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter {
            exact: self.exact.iter(),
            nodes: vec![&self.root],
            slots: Vec::new(),
            current: None,
        }
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    fn entries(&self, filter: &str) -> Option<&Entries<K, V>> {
        if has_wildcards(filter) {
            Some(&trie_slot(&self.root, filter)?.entries)
        } else {
            self.exact.get(filter)
        }
    }

    /// Allocated bookkeeping: trie nodes below the root, root slots, exact-filter map
    /// entries and per-key counters. 0 exactly when nothing is left over from removed entries.
    #[cfg(test)]
    pub(crate) fn node_count(&self) -> usize {
        fn below<K, V>(node: &Node<K, V>) -> usize {
            let children: usize = node.children.values().map(|c| 1 + below(c)).sum();
            children + node.plus.as_deref().map_or(0, |p| 1 + below(p))
        }
        below(&self.root)
            + self.exact.len()
            + usize::from(self.root.end.is_some())
            + usize::from(self.root.hash.is_some())
            + self.per_key.len()
    }
}

impl<'a, K: Clone + Eq + Hash, V> IntoIterator for &'a SubscriptionIndex<K, V> {
    type Item = (&'a str, &'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over every entry of a [`SubscriptionIndex`] as `(filter, key, value)`; see
/// [`SubscriptionIndex::iter`].
#[derive(Debug)]
pub struct Iter<'a, K, V> {
    exact: hash_map::Iter<'a, Box<str>, Entries<K, V>>,
    /// Trie nodes not yet opened.
    nodes: Vec<&'a Node<K, V>>,
    /// Slots of opened nodes not yet iterated.
    slots: Vec<&'a Slot<K, V>>,
    current: Option<(&'a str, EntriesIter<'a, K, V>)>,
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a str, &'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((filter, entries)) = &mut self.current {
                if let Some((k, v)) = entries.next() {
                    return Some((filter, k, v));
                }
                self.current = None;
            }
            if let Some((filter, entries)) = self.exact.next() {
                self.current = Some((filter, entries.iter()));
            } else if let Some(slot) = self.slots.pop() {
                self.current = Some((&slot.filter, slot.entries.iter()));
            } else if let Some(node) = self.nodes.pop() {
                self.nodes.extend(node.children.values());
                self.nodes.extend(node.plus.as_deref());
                self.slots.extend(node.end.as_deref());
                self.slots.extend(node.hash.as_deref());
            } else {
                return None;
            }
        }
    }
}

/// One trie level.
#[derive(Debug)]
struct Node<K, V> {
    /// Literal next levels.
    children: HashMap<Box<str>, Node<K, V>>,
    /// The `+` next level.
    plus: Option<Box<Node<K, V>>>,
    /// The wildcard filter whose levels end at this node (its last level is `+` or below one).
    end: Option<Box<Slot<K, V>>>,
    /// The filter made of this node's path followed by `#` (at the root: `#` itself).
    hash: Option<Box<Slot<K, V>>>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            end: None,
            hash: None,
        }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.end.is_none() && self.hash.is_none()
    }
}

/// One wildcard filter and its entries.
#[derive(Debug)]
struct Slot<K, V> {
    filter: Box<str>,
    entries: Entries<K, V>,
}

impl<K, V> Slot<K, V> {
    fn new(filter: &str) -> Box<Self> {
        Box::new(Slot {
            filter: Box::from(filter),
            entries: Entries::new(),
        })
    }

    fn emit<F: FnMut(&str, &K, &V)>(&self, f: &mut F) {
        self.entries.for_each(|k, v| f(&self.filter, k, v));
    }
}

/// Walks `node`'s subtree for the remaining topic `levels`, reporting matching slots.
/// Recursion depth is bounded by the depth of the trie, i.e. the longest filter.
fn visit<K, V, F: FnMut(&str, &K, &V)>(node: &Node<K, V>, mut levels: Split<'_, char>, f: &mut F) {
    // `<path>/#` matches the rest of the topic, however many levels, including none.
    if let Some(slot) = &node.hash {
        slot.emit(f);
    }
    match levels.next() {
        None => {
            if let Some(slot) = &node.end {
                slot.emit(f);
            }
        }
        Some(level) => {
            if let Some(child) = node.children.get(level) {
                visit(child, levels.clone(), f);
            }
            if let Some(plus) = &node.plus {
                visit(plus, levels, f);
            }
        }
    }
}

/// Whether the level just taken from `levels` was the last one.
fn at_end(levels: &Split<'_, char>) -> bool {
    levels.clone().next().is_none()
}

/// The slot for wildcard filter `filter`, created (with its path) if missing.
fn trie_slot_or_insert<'n, K, V>(mut node: &'n mut Node<K, V>, filter: &str) -> &'n mut Slot<K, V> {
    let mut levels = filter.split('/');
    while let Some(level) = levels.next() {
        if level == "#" && at_end(&levels) {
            return node.hash.get_or_insert_with(|| Slot::new(filter));
        }
        node = if level == "+" {
            node.plus.get_or_insert_with(Box::default)
        } else {
            node.children.entry(Box::from(level)).or_default()
        };
    }
    node.end.get_or_insert_with(|| Slot::new(filter))
}

/// The slot for wildcard filter `filter`, if present.
fn trie_slot<'n, K, V>(mut node: &'n Node<K, V>, filter: &str) -> Option<&'n Slot<K, V>> {
    let mut levels = filter.split('/');
    while let Some(level) = levels.next() {
        if level == "#" && at_end(&levels) {
            return node.hash.as_deref();
        }
        node = if level == "+" {
            node.plus.as_deref()?
        } else {
            node.children.get(level)?
        };
    }
    node.end.as_deref()
}

/// The slot for wildcard filter `filter`, if present, mutably.
fn trie_slot_mut<'n, K, V>(
    mut node: &'n mut Node<K, V>,
    filter: &str,
) -> Option<&'n mut Slot<K, V>> {
    let mut levels = filter.split('/');
    while let Some(level) = levels.next() {
        if level == "#" && at_end(&levels) {
            return node.hash.as_deref_mut();
        }
        node = if level == "+" {
            node.plus.as_deref_mut()?
        } else {
            node.children.get_mut(level)?
        };
    }
    node.end.as_deref_mut()
}

/// Removes `key` from the slot for the remaining filter `levels` below `node`, then frees
/// the slot and any node on the way that was left empty.
fn remove_in<K: Eq + Hash, V>(
    node: &mut Node<K, V>,
    mut levels: Split<'_, char>,
    key: &K,
) -> Option<V> {
    match levels.next() {
        None => take_from(&mut node.end, key),
        Some("#") if at_end(&levels) => take_from(&mut node.hash, key),
        Some("+") => {
            let child = node.plus.as_deref_mut()?;
            let old = remove_in(child, levels, key)?;
            if child.is_empty() {
                node.plus = None;
            }
            Some(old)
        }
        Some(level) => {
            let child = node.children.get_mut(level)?;
            let old = remove_in(child, levels, key)?;
            if child.is_empty() {
                node.children.remove(level);
                shrink_if_sparse(&mut node.children);
            }
            Some(old)
        }
    }
}

fn take_from<K: Eq + Hash, V>(slot: &mut Option<Box<Slot<K, V>>>, key: &K) -> Option<V> {
    let s = slot.as_deref_mut()?;
    let old = s.entries.remove(key)?;
    if s.entries.is_empty() {
        *slot = None;
    }
    Some(old)
}

/// Gives back memory of a map that shrank to a quarter of its capacity (amortised O(1)).
fn shrink_if_sparse<A: Eq + Hash, B>(map: &mut HashMap<A, B>) {
    if map.capacity() > 16 && map.len() * 4 <= map.capacity() {
        map.shrink_to_fit();
    }
}

/// Above this many entries a filter's entries move from a vector to a hash map.
const SMALL_MAX: usize = 8;
/// At or below this many entries a filter's entries move back to a vector.
const SMALL_MIN: usize = 4;

/// The entries of one filter, at most one per key. Most filters have one or a few
/// subscribers, kept in a vector; popular ones switch to a hash map so that subscribing and
/// unsubscribing stay O(1).
#[derive(Debug)]
enum Entries<K, V> {
    Small(Vec<(K, V)>),
    Large(HashMap<K, V>),
}

impl<K, V> Entries<K, V> {
    fn new() -> Self {
        Entries::Small(Vec::new())
    }

    fn len(&self) -> usize {
        match self {
            Entries::Small(v) => v.len(),
            Entries::Large(m) => m.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        match self {
            Entries::Small(v) => v.iter().for_each(|(k, v)| f(k, v)),
            Entries::Large(m) => m.iter().for_each(|(k, v)| f(k, v)),
        }
    }

    fn iter(&self) -> EntriesIter<'_, K, V> {
        match self {
            Entries::Small(v) => EntriesIter::Small(v.iter()),
            Entries::Large(m) => EntriesIter::Large(m.iter()),
        }
    }
}

impl<K: Eq + Hash, V> Entries<K, V> {
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            Entries::Small(v) => {
                if let Some((_, old)) = v.iter_mut().find(|(k, _)| *k == key) {
                    return Some(mem::replace(old, value));
                }
                if v.len() < SMALL_MAX {
                    if v.capacity() == 0 {
                        // Most filters have a single subscriber.
                        v.reserve_exact(1);
                    }
                    v.push((key, value));
                } else {
                    let mut map: HashMap<K, V> = HashMap::with_capacity(2 * SMALL_MAX);
                    map.extend(mem::take(v));
                    map.insert(key, value);
                    *self = Entries::Large(map);
                }
                None
            }
            Entries::Large(m) => m.insert(key, value),
        }
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        match self {
            Entries::Small(v) => {
                let i = v.iter().position(|(k, _)| k == key)?;
                let (_, old) = v.swap_remove(i);
                Some(old)
            }
            Entries::Large(m) => {
                let old = m.remove(key)?;
                if m.len() <= SMALL_MIN {
                    *self = Entries::Small(mem::take(m).into_iter().collect());
                } else {
                    shrink_if_sparse(m);
                }
                Some(old)
            }
        }
    }

    fn get(&self, key: &K) -> Option<&V> {
        match self {
            Entries::Small(v) => v.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            Entries::Large(m) => m.get(key),
        }
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        match self {
            Entries::Small(v) => v.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            Entries::Large(m) => m.get_mut(key),
        }
    }
}

#[derive(Debug)]
enum EntriesIter<'a, K, V> {
    Small(std::slice::Iter<'a, (K, V)>),
    Large(hash_map::Iter<'a, K, V>),
}

impl<'a, K, V> Iterator for EntriesIter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            EntriesIter::Small(it) => it.next().map(|(k, v)| (k, v)),
            EntriesIter::Large(it) => it.next(),
        }
    }
}

#[cfg(test)]
mod tests;
