use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::matching::tests::CASES;
use crate::{TopicLimits, matches, validate_topic_filter, validate_topic_name};

type Model<V> = BTreeMap<(String, u8), V>;

/// What the index reports for `topic`, sorted.
fn found<V: Clone + Ord>(idx: &SubscriptionIndex<u8, V>, topic: &str) -> Vec<(String, u8, V)> {
    let mut out = Vec::new();
    idx.for_each_match(topic, |f, k, v| out.push((f.to_owned(), *k, v.clone())));
    out.sort();
    out
}

/// What a loop over every entry with `matches` gives for `topic`, sorted.
fn naive<V: Clone + Ord>(model: &Model<V>, topic: &str) -> Vec<(String, u8, V)> {
    let mut out: Vec<_> = model
        .iter()
        .filter(|((f, _), _)| matches(f, topic))
        .map(|((f, k), v)| (f.clone(), *k, v.clone()))
        .collect();
    out.sort();
    out
}

fn everything<V: Clone + Ord>(idx: &SubscriptionIndex<u8, V>) -> Vec<(String, u8, V)> {
    let mut out: Vec<_> = idx
        .iter()
        .map(|(f, k, v)| (f.to_owned(), *k, v.clone()))
        .collect();
    out.sort();
    out
}

fn model_everything<V: Clone + Ord>(model: &Model<V>) -> Vec<(String, u8, V)> {
    model
        .iter()
        .map(|((f, k), v)| (f.clone(), *k, v.clone()))
        .collect()
}

#[test]
fn spec_table_agrees_with_matches() {
    let mut idx = SubscriptionIndex::new();
    let mut model = Model::new();
    for (i, &(filter, _, _)) in CASES.iter().enumerate() {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        idx.insert(filter, 0, i);
        idx.insert(filter, 1, i);
        model.insert((filter.to_owned(), 0), i);
        model.insert((filter.to_owned(), 1), i);
    }
    assert_eq!(idx.len(), model.len());
    for &(filter, topic, want) in CASES {
        let got = found(&idx, topic);
        assert_eq!(got, naive(&model, topic), "topic {topic:?}");
        let hit = got.iter().any(|(f, _, _)| f == filter);
        assert_eq!(hit, want, "{filter:?} vs {topic:?}");
    }
}

#[test]
fn dollar_topics_and_parent_level() {
    let mut idx = SubscriptionIndex::new();
    for f in [
        "#",
        "+/monitor/Clients",
        "+/#",
        "$SYS/#",
        "$SYS/monitor/+",
        "sport/#",
    ] {
        idx.insert(f, 1u8, ());
    }
    let filters = |topic: &str| {
        let mut v = Vec::new();
        idx.for_each_match(topic, |f, _, _| v.push(f.to_owned()));
        v.sort();
        v
    };
    assert_eq!(
        filters("$SYS/monitor/Clients"),
        ["$SYS/#", "$SYS/monitor/+"]
    );
    assert_eq!(filters("$SYS"), ["$SYS/#"]);
    assert_eq!(
        filters("x/monitor/Clients"),
        ["#", "+/#", "+/monitor/Clients"]
    );
    // MQTT 3.1.1 §4.7.1.2, not AWS: `sport/#` matches `sport`.
    assert_eq!(filters("sport"), ["#", "+/#", "sport/#"]);
}

#[test]
fn insert_replace_get_remove() {
    let mut idx = SubscriptionIndex::new();
    assert!(idx.is_empty());
    assert_eq!(idx.insert("a/+", "c1", 1), None);
    assert_eq!(idx.insert("a/+", "c1", 2), Some(1));
    assert_eq!(idx.insert("a/b", "c1", 3), None);
    assert_eq!(idx.insert("a/b", "c2", 4), None);
    assert_eq!(idx.len(), 3);
    assert_eq!(idx.get("a/+", &"c1"), Some(&2));
    assert_eq!(idx.get("a/+", &"c2"), None);
    assert_eq!(idx.get("a/#", &"c1"), None);
    assert_eq!(idx.get("a/b", &"c2"), Some(&4));
    if let Some(v) = idx.get_mut("a/+", &"c1") {
        *v = 5;
    }
    assert_eq!(idx.get("a/+", &"c1"), Some(&5));
    if let Some(v) = idx.get_mut("a/b", &"c1") {
        *v = 6;
    }
    assert_eq!(idx.get("a/b", &"c1"), Some(&6));
    assert!(idx.contains("a/b", &"c2"));
    assert!(!idx.contains("a/c", &"c2"));
    assert_eq!(idx.count_for_key(&"c1"), 2);
    assert_eq!(idx.count_for_key(&"c2"), 1);
    assert_eq!(idx.count_for_key(&"c3"), 0);
    assert_eq!(idx.count_for_filter("a/b"), 2);
    assert_eq!(idx.count_for_filter("a/+"), 1);
    assert_eq!(idx.count_for_filter("x/+"), 0);

    // Misses leave everything as it was.
    assert_eq!(idx.remove("a/+", &"c2"), None);
    assert_eq!(idx.remove("a/+/c", &"c1"), None);
    assert_eq!(idx.remove("a/#", &"c1"), None);
    assert_eq!(idx.remove("x", &"c1"), None);
    assert_eq!(idx.len(), 3);

    assert_eq!(idx.remove("a/+", &"c1"), Some(5));
    assert_eq!(idx.remove("a/+", &"c1"), None);
    assert_eq!(idx.remove("a/b", &"c1"), Some(6));
    assert_eq!(idx.count_for_key(&"c1"), 0);
    assert_eq!(idx.remove("a/b", &"c2"), Some(4));
    assert!(idx.is_empty());
    assert_eq!(idx.node_count(), 0);
}

#[test]
fn many_keys_on_one_filter() {
    let mut idx = SubscriptionIndex::new();
    for k in 0..100u8 {
        assert_eq!(idx.insert("a/+", k, u32::from(k)), None);
        assert_eq!(idx.insert("a/b", k, u32::from(k)), None);
        assert_eq!(
            idx.insert("a/b", k, u32::from(k) + 1000),
            Some(u32::from(k))
        );
    }
    assert_eq!(idx.len(), 200);
    assert_eq!(idx.count_for_filter("a/+"), 100);
    assert_eq!(idx.get("a/b", &42), Some(&1042));
    let mut hits = 0;
    idx.for_each_match("a/b", |_, _, _| hits += 1);
    assert_eq!(hits, 200);
    for k in (0..100u8).rev() {
        assert_eq!(idx.remove("a/+", &k), Some(u32::from(k)));
        assert_eq!(idx.get("a/b", &k), Some(&(u32::from(k) + 1000)));
        assert_eq!(idx.remove("a/b", &k), Some(u32::from(k) + 1000));
        assert_eq!(idx.count_for_filter("a/b"), usize::from(k));
        let remaining = usize::from(k);
        let mut hits = 0;
        idx.for_each_match("a/b", |_, _, _| hits += 1);
        assert_eq!(hits, 2 * remaining);
        // Back in a vector once small again.
        if remaining <= SMALL_MIN && remaining > 0 {
            assert!(matches!(
                idx.exact.get("a/b"),
                Some(Entries::Small(v)) if v.len() == remaining
            ));
        }
    }
    assert!(idx.is_empty());
    assert_eq!(idx.node_count(), 0);
}

#[test]
fn churn_does_not_leak() {
    let mut idx = SubscriptionIndex::new();
    for round in 0..3u32 {
        for i in 0..2000u32 {
            idx.insert(&format!("dev/{round}/{i}/+/x"), 1u8, i);
            idx.insert(&format!("dev/{round}/{i}/#"), 2u8, i);
            idx.insert(&format!("dev/{round}/{i}"), 3u8, i);
        }
        assert_eq!(idx.len(), 6000);
        for i in 0..2000u32 {
            assert_eq!(idx.remove(&format!("dev/{round}/{i}/+/x"), &1), Some(i));
            assert_eq!(idx.remove(&format!("dev/{round}/{i}/#"), &2), Some(i));
            assert_eq!(idx.remove(&format!("dev/{round}/{i}"), &3), Some(i));
        }
        assert!(idx.is_empty());
        assert_eq!(idx.node_count(), 0);
        assert!(idx.exact.capacity() <= 16, "{}", idx.exact.capacity());
        assert!(idx.root.children.capacity() <= 16);
    }
}

#[test]
fn iter_and_clear() {
    let mut idx = SubscriptionIndex::new();
    let mut model = Model::new();
    for (i, f) in ["#", "+", "a", "a/#", "a/+/b", "", "/", "+/+"]
        .into_iter()
        .enumerate()
    {
        for k in 0..12u8 {
            let v = i * 100 + usize::from(k);
            idx.insert(f, k, v);
            model.insert((f.to_owned(), k), v);
        }
    }
    assert_eq!(everything(&idx), model_everything(&model));
    assert_eq!((&idx).into_iter().count(), idx.len());
    idx.clear();
    assert!(idx.is_empty());
    assert_eq!(idx.iter().next(), None);
    assert_eq!(idx.node_count(), 0);
}

#[test]
fn empty_index_matches_nothing() {
    let idx: SubscriptionIndex<u8, ()> = SubscriptionIndex::default();
    for topic in ["", "a", "$SYS/x", "/"] {
        idx.for_each_match(topic, |_, _, _| panic!("unexpected match"));
    }
    assert_eq!(idx.len(), 0);
}

// ---- property tests ----

const TOPIC_LEVELS: &[&str] = &["a", "b", "", "$x"];
const FILTER_LEVELS: &[&str] = &["a", "b", "", "$x", "+"];

/// Valid topic names over a small level alphabet.
fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOPIC_LEVELS), 1..=5)
        .prop_map(|l| l.join("/"))
        .prop_filter("topic names are non-empty", |t| !t.is_empty())
}

/// Valid filters over a small level alphabet: up to `max` levels, maybe then `#`.
fn filter(max: usize) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(FILTER_LEVELS), 0..=max),
        any::<bool>(),
    )
        .prop_map(|(mut l, hash)| {
            if hash || l.is_empty() {
                l.push("#");
            }
            l.join("/")
        })
        .prop_filter("filters are non-empty", |f| !f.is_empty())
}

#[derive(Debug, Clone)]
enum Op {
    Insert(String, u8, u32),
    Remove(String, u8),
}

fn op(filter: BoxedStrategy<String>) -> impl Strategy<Value = Op> {
    prop_oneof![
        (filter.clone(), 0..4u8, any::<u32>()).prop_map(|(f, k, v)| Op::Insert(f, k, v)),
        (filter, 0..4u8).prop_map(|(f, k)| Op::Remove(f, k)),
    ]
}

/// Applies `ops` to an index and a model, checking each step; then removes what is left and
/// checks that nothing remains allocated.
fn run_ops(ops: &[Op], topics: &[String]) -> Result<(), TestCaseError> {
    let mut idx = SubscriptionIndex::new();
    let mut model = Model::new();
    for op in ops {
        match op {
            Op::Insert(f, k, v) => {
                let want = model.insert((f.clone(), *k), *v);
                prop_assert_eq!(idx.insert(f, *k, *v), want);
                prop_assert_eq!(idx.get(f, k), Some(v));
            }
            Op::Remove(f, k) => {
                let want = model.remove(&(f.clone(), *k));
                prop_assert_eq!(idx.remove(f, k), want);
                prop_assert_eq!(idx.get(f, k), None);
            }
        }
        prop_assert_eq!(idx.len(), model.len());
    }
    for k in 0..4u8 {
        let want = model.keys().filter(|(_, mk)| *mk == k).count();
        prop_assert_eq!(idx.count_for_key(&k), want);
    }
    prop_assert_eq!(everything(&idx), model_everything(&model));
    for t in topics {
        prop_assert_eq!(found(&idx, t), naive(&model, t), "topic {:?}", t);
    }
    for ((f, k), v) in &model {
        prop_assert_eq!(idx.remove(f, k), Some(*v));
    }
    prop_assert!(idx.is_empty());
    prop_assert_eq!(idx.node_count(), 0);
    Ok(())
}

/// The MQTT rules written differently from `matches`, over level slices.
fn oracle(filter: &str, topic: &str) -> bool {
    fn levels(f: &[&str], t: &[&str]) -> bool {
        match (f, t) {
            (["#"], _) => true,
            ([fl, f_rest @ ..], [tl, t_rest @ ..]) => {
                (*fl == "+" || fl == tl) && levels(f_rest, t_rest)
            }
            ([], []) => true,
            _ => false,
        }
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    let leading_wildcard = f[0] == "+" || f == ["#"];
    if topic.starts_with('$') && leading_wildcard {
        return false;
    }
    levels(&f, &t)
}

proptest! {
    #[test]
    fn generators_produce_valid_input(f in filter(5), t in topic()) {
        prop_assert_eq!(validate_topic_filter(&f, &TopicLimits::default()), Ok(()));
        prop_assert_eq!(validate_topic_name(&t, &TopicLimits::default()), Ok(()));
    }

    #[test]
    fn matches_agrees_with_oracle(f in filter(5), t in topic()) {
        prop_assert_eq!(matches(&f, &t), oracle(&f, &t));
    }

    #[test]
    fn index_agrees_with_naive_matching(
        subs in prop::collection::vec((filter(4), 0..4u8), 0..80),
        topics in prop::collection::vec(topic(), 1..40),
    ) {
        let mut idx = SubscriptionIndex::new();
        let mut model = Model::new();
        for (i, (f, k)) in subs.iter().enumerate() {
            idx.insert(f, *k, i);
            model.insert((f.clone(), *k), i);
        }
        prop_assert_eq!(idx.len(), model.len());
        for t in &topics {
            prop_assert_eq!(found(&idx, t), naive(&model, t), "topic {:?}", t);
        }
    }

    #[test]
    fn insert_remove_sequences_stay_consistent(
        // Few levels, so that operations often hit the same (filter, key).
        ops in prop::collection::vec(op(filter(2).boxed()), 0..120),
        topics in prop::collection::vec(topic(), 1..20),
    ) {
        run_ops(&ops, &topics)?;
    }

    /// Arbitrary strings, including invalid filters and topics: no panic, and the index still
    /// agrees with `matches` (which treats misplaced wildcards literally).
    #[test]
    fn arbitrary_strings_agree_with_matches(
        ops in prop::collection::vec(op("[ab+#$/]{0,7}".boxed()), 0..80),
        topics in prop::collection::vec("[ab+#$/]{0,7}", 1..20),
    ) {
        run_ops(&ops, &topics)?;
    }
}
