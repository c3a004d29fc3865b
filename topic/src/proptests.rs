//! Property tests: the indexes and the subject mapping against the simple
//! reference matcher [`crate::matches()`].

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::subject::{filter_to_subjects, subject_to_topic, topic_to_subject};
use crate::{SubscriptionTrie, TopicLimits, TopicTree, matches, validate_filter, validate_name};

/// Topic levels: empty, '$'-prefixed, plain, and characters NATS treats
/// specially (which must stay literal).
const NAMES: &[&str] = &["", "$x", "a", "b", "x.y", "*", ">"];

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(NAMES), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("MQTT topics are never empty", |t| !t.is_empty())
}

/// Valid filters only: literal levels and '+', optionally ending in '#'.
fn filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![4 => prop::sample::select(NAMES), 2 => Just("+")];
    (prop::collection::vec(level, 0..4), any::<bool>())
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            levels.join("/")
        })
        .prop_filter("MQTT filters are never empty", |f| !f.is_empty())
}

/// Arbitrary strings, plus strings dense in the characters that matter.
fn any_topic() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a./*> =$+#é😀_/Z09-]{0,16}"]
}

/// NATS subject matching: '*' is one token, '>' one or more trailing tokens.
fn nats_match(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for part in pattern.split('.') {
        match (part, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (part, Some(token)) if part == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// `matches` without the '$' rule, which NATS wildcards do not know about.
/// A first-level wildcard matches whatever the first level is, so renaming
/// it away from '$' lifts exactly that rule.
fn matches_ignoring_dollar(filter: &str, topic: &str) -> bool {
    if matches!(filter.split('/').next(), Some("+" | "#")) {
        matches(filter, &format!("z{topic}"))
    } else {
        matches(filter, topic)
    }
}

proptest! {
    #[test]
    fn generators_are_valid(f in filter(), t in topic()) {
        prop_assert!(validate_filter(&f, &TopicLimits::default()).is_ok());
        prop_assert!(validate_name(&t, &TopicLimits::default()).is_ok());
    }

    #[test]
    fn trie_agrees_with_matches(
        ops in prop::collection::vec((filter(), 0u8..3, prop::bool::weighted(0.7)), 0..40),
        topics in prop::collection::vec(topic(), 1..10),
    ) {
        let mut trie = SubscriptionTrie::new();
        let mut reference = BTreeMap::new();
        for (value, (f, key, insert)) in ops.into_iter().enumerate() {
            if insert {
                let expected = reference.insert((f.clone(), key), value);
                prop_assert_eq!(trie.insert(&f, key, value), expected);
            } else {
                prop_assert_eq!(trie.remove(&f, &key), reference.remove(&(f, key)));
            }
        }
        prop_assert_eq!(trie.len(), reference.len());
        for ((f, key), value) in &reference {
            prop_assert_eq!(trie.get(f, key), Some(value));
        }
        for t in &topics {
            let mut found = Vec::new();
            trie.for_each_match(t, |f, key, value| found.push((f.to_owned(), *key, *value)));
            found.sort();
            let expected: Vec<_> = reference
                .iter()
                .filter(|((f, _), _)| matches(f, t))
                .map(|((f, key), value)| (f.clone(), *key, *value))
                .collect();
            prop_assert_eq!(found, expected, "topic {:?}", t);
        }
        for (f, key) in reference.keys() {
            prop_assert!(trie.remove(f, key).is_some());
        }
        prop_assert!(trie.is_empty());
        prop_assert_eq!(trie.node_count(), 1, "empty nodes were not pruned");
    }

    #[test]
    fn tree_agrees_with_matches(
        ops in prop::collection::vec((topic(), prop::bool::weighted(0.7)), 0..40),
        filters in prop::collection::vec(filter(), 1..10),
    ) {
        let mut tree = TopicTree::new();
        let mut reference = BTreeMap::new();
        for (value, (t, insert)) in ops.into_iter().enumerate() {
            if insert {
                prop_assert_eq!(tree.insert(&t, value), reference.insert(t, value));
            } else {
                prop_assert_eq!(tree.remove(&t), reference.remove(&t));
            }
        }
        prop_assert_eq!(tree.len(), reference.len());
        for (t, value) in &reference {
            prop_assert_eq!(tree.get(t), Some(value));
        }
        for f in &filters {
            let mut found = Vec::new();
            tree.for_each_matching(f, |t, value| found.push((t.to_owned(), *value)));
            found.sort();
            let expected: Vec<_> = reference
                .iter()
                .filter(|(t, _)| matches(f, t))
                .map(|(t, value)| (t.clone(), *value))
                .collect();
            prop_assert_eq!(found, expected, "filter {:?}", f);
        }
        for t in reference.keys() {
            prop_assert!(tree.remove(t).is_some());
        }
        prop_assert!(tree.is_empty());
        prop_assert_eq!(tree.node_count(), 1, "empty nodes were not pruned");
    }

    #[test]
    fn subject_round_trips(t in any_topic()) {
        let subject = topic_to_subject(&t);
        prop_assert!(
            subject.bytes().all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)),
            "illegal KV key character in {:?}", subject
        );
        prop_assert!(subject.split('.').all(|token| !token.is_empty()), "empty token in {:?}", subject);
        prop_assert_eq!(subject_to_topic(&subject), Ok(t));
    }

    #[test]
    fn distinct_topics_get_distinct_subjects(a in any_topic(), b in any_topic()) {
        prop_assume!(a != b);
        prop_assert_ne!(topic_to_subject(&a), topic_to_subject(&b));
    }

    #[test]
    fn decoding_is_canonical(s in "[a=.0-9A-F/]{0,12}") {
        // Whatever decodes must encode back to the very same subject.
        if let Ok(t) = subject_to_topic(&s) {
            prop_assert_eq!(topic_to_subject(&t), s);
        }
    }

    #[test]
    fn filter_subjects_agree_with_matches(f in filter(), t in topic()) {
        let subject = topic_to_subject(&t);
        let received = filter_to_subjects(&f).iter().any(|pattern| nats_match(pattern, &subject));
        prop_assert_eq!(received, matches_ignoring_dollar(&f, &t), "{:?} vs {:?}", f, t);
    }
}
