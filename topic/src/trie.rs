//! The subscription index: which subscriptions does a published topic reach?

use std::collections::HashMap;
use std::hash::Hash;

/// One filter level. Wildcard children live outside the map so a match can
/// reach them without hashing.
#[derive(Debug, Clone)]
struct Node<K, V> {
    children: HashMap<Box<str>, Node<K, V>>,
    plus: Option<Box<Node<K, V>>>,
    hash: Option<Box<Node<K, V>>>,
    /// The full filter, kept only while `subs` is non-empty so matches can be
    /// reported without rebuilding it from the path.
    filter: Option<Box<str>>,
    subs: HashMap<K, V>,
}

impl<K, V> Node<K, V> {
    fn new() -> Self {
        Self {
            children: HashMap::new(),
            plus: None,
            hash: None,
            filter: None,
            subs: HashMap::new(),
        }
    }

    fn child(&self, level: &str) -> Option<&Self> {
        match level {
            "+" => self.plus.as_deref(),
            "#" => self.hash.as_deref(),
            _ => self.children.get(level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Self> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Self {
        match level {
            "+" => self.plus.get_or_insert_with(|| Box::new(Self::new())),
            "#" => self.hash.get_or_insert_with(|| Box::new(Self::new())),
            _ => self.children.entry(level.into()).or_insert_with(Self::new),
        }
    }

    fn take_child(&mut self, level: &str) -> Option<Self> {
        match level {
            "+" => self.plus.take().map(|node| *node),
            "#" => self.hash.take().map(|node| *node),
            _ => self.children.remove(level),
        }
    }

    fn child_count(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some()) + usize::from(self.hash.is_some())
    }

    fn report<'a, F: FnMut(&'a str, &'a K, &'a V)>(&'a self, f: &mut F) {
        if let Some(filter) = &self.filter {
            for (key, value) in &self.subs {
                f(filter, key, value);
            }
        }
    }

    /// Reports the subscriptions below `self` that match the remaining topic
    /// levels `rest` (`None` once every level is consumed). `wildcards` is
    /// false only at the root of a '$' topic (MQTT 5 4.7.2). Recursion depth
    /// is bounded by the depth of the trie, i.e. by the filters' level limit.
    fn walk<'a, F: FnMut(&'a str, &'a K, &'a V)>(
        &'a self,
        rest: Option<&str>,
        wildcards: bool,
        f: &mut F,
    ) {
        if wildcards && let Some(hash) = &self.hash {
            // '#' matches this level and everything below, including nothing.
            hash.report(f);
        }
        let Some(rest) = rest else {
            self.report(f);
            return;
        };
        let (level, rest) = match rest.split_once('/') {
            Some((level, rest)) => (level, Some(rest)),
            None => (rest, None),
        };
        if let Some(child) = self.children.get(level) {
            child.walk(rest, true, f);
        }
        if wildcards && let Some(plus) = &self.plus {
            plus.walk(rest, true, f);
        }
    }

    #[cfg(test)]
    fn count_nodes(&self) -> usize {
        1 + self.children.values().map(Self::count_nodes).sum::<usize>()
            + self.plus.as_ref().map_or(0, |node| node.count_nodes())
            + self.hash.as_ref().map_or(0, |node| node.count_nodes())
    }
}

/// A subscription index mapping topic filters to sets of `(key, value)`.
///
/// A filter may have many subscribers; a key appears at most once per filter
/// (inserting it again replaces its value). Matching walks the trie level by
/// level and allocates nothing itself.
///
/// Filters must be valid (see [`crate::validate_filter`], without the
/// `$share/{group}/` prefix): invalid ones are stored but may never match,
/// and the level limit bounds the recursion of [`Self::for_each_match`].
#[derive(Debug, Clone)]
pub struct SubscriptionTrie<K, V> {
    root: Node<K, V>,
    len: usize,
}

impl<K: Eq + Hash + Clone, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone, V> SubscriptionTrie<K, V> {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            root: Node::new(),
            len: 0,
        }
    }

    /// Subscribes `key` to `filter` with `value`, returning the value it
    /// replaces if `key` was already subscribed to exactly this filter.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_or_insert(level);
        }
        if node.filter.is_none() {
            node.filter = Some(filter.into());
        }
        let replaced = node.subs.insert(key, value);
        if replaced.is_none() {
            self.len += 1;
        }
        replaced
    }

    /// Unsubscribes `key` from `filter`, returning its value, and prunes the
    /// nodes left empty so the trie does not grow with subscription churn.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        // Read-only pass: find the deepest node on the path that still holds
        // something after the removal; everything below it goes.
        let depth = filter.split('/').count();
        let mut node = &self.root;
        let mut keep = 0;
        for (index, level) in filter.split('/').enumerate() {
            node = node.child(level)?;
            let stays = if index + 1 == depth {
                node.subs.len() > 1 || node.child_count() > 0
            } else {
                !node.subs.is_empty() || node.child_count() > 1
            };
            if stays {
                keep = index + 1;
            }
        }
        if !node.subs.contains_key(key) {
            return None;
        }

        // The first pass proved the path exists, so the `?`s below never fire.
        let mut levels = filter.split('/');
        let mut node = &mut self.root;
        for _ in 0..keep {
            node = node.child_mut(levels.next()?)?;
        }
        let removed = if keep == depth {
            let removed = node.subs.remove(key)?;
            if node.subs.is_empty() {
                node.filter = None;
            }
            removed
        } else {
            // Detach the now-empty chain, then dig the value out of its end.
            let mut chain = node.take_child(levels.next()?)?;
            for level in levels {
                chain = chain.take_child(level)?;
            }
            chain.subs.remove(key)?
        };
        self.len -= 1;
        Some(removed)
    }

    /// The value `key` subscribed to `filter` with, if any.
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let mut node = &self.root;
        for level in filter.split('/') {
            node = node.child(level)?;
        }
        node.subs.get(key)
    }

    /// Mutable access to the value `key` subscribed to `filter` with.
    pub fn get_mut(&mut self, filter: &str, key: &K) -> Option<&mut V> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_mut(level)?;
        }
        node.subs.get_mut(key)
    }

    /// Calls `f(filter, key, value)` for every subscription whose filter
    /// matches the topic name `topic` (same rules as [`crate::matches()`]).
    ///
    /// Each `(filter, key)` is reported once, but the same key is reported
    /// once per matching filter: the caller merges overlapping subscriptions.
    /// The order is unspecified.
    pub fn for_each_match<'a, F: FnMut(&'a str, &'a K, &'a V)>(&'a self, topic: &str, mut f: F) {
        self.root.walk(Some(topic), !topic.starts_with('$'), &mut f);
    }

    /// The number of `(filter, key)` entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[cfg(test)]
    pub(crate) fn node_count(&self) -> usize {
        self.root.count_nodes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn matched(trie: &SubscriptionTrie<u32, &'static str>, topic: &str) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |filter, key, _| out.push((filter.to_owned(), *key)));
        out.sort();
        out
    }

    #[test]
    fn insert_replace_get_remove() {
        let mut trie = SubscriptionTrie::new();
        assert!(trie.is_empty());
        assert_eq!(trie.insert("a/+", 1, "x"), None);
        assert_eq!(trie.insert("a/+", 2, "y"), None);
        assert_eq!(trie.insert("a/+", 1, "z"), Some("x"));
        assert_eq!(trie.len(), 2);
        assert_eq!(trie.get("a/+", &1), Some(&"z"));
        assert_eq!(trie.get("a/#", &1), None);
        assert_eq!(trie.get("a", &1), None);
        *trie.get_mut("a/+", &2).unwrap() = "w";
        assert_eq!(trie.get("a/+", &2), Some(&"w"));
        assert_eq!(trie.remove("a/+", &3), None);
        assert_eq!(trie.remove("a/b", &1), None);
        assert_eq!(trie.remove("a/+", &1), Some("z"));
        assert_eq!(trie.remove("a/+", &1), None);
        assert_eq!(trie.remove("a/+", &2), Some("w"));
        assert!(trie.is_empty());
        assert_eq!(trie.node_count(), 1);
    }

    #[test]
    fn prunes_only_empty_branches() {
        let mut trie = SubscriptionTrie::new();
        trie.insert("a/b/c/d", 1, "x");
        trie.insert("a/b", 1, "x");
        trie.insert("a/+/#", 1, "x");
        let full = trie.node_count();
        trie.insert("a/b/c/d/e/f", 2, "x");
        assert_eq!(trie.remove("a/b/c/d/e/f", &2), Some("x"));
        assert_eq!(trie.node_count(), full);
        assert_eq!(trie.remove("a/b", &1), Some("x"));
        assert_eq!(
            matched(&trie, "a/b/c/d"),
            [("a/+/#".into(), 1), ("a/b/c/d".into(), 1)]
        );
        assert_eq!(trie.remove("a/b/c/d", &1), Some("x"));
        assert_eq!(trie.remove("a/+/#", &1), Some("x"));
        assert_eq!(trie.node_count(), 1);
    }

    #[test]
    fn matching() {
        let mut trie = SubscriptionTrie::new();
        for (key, filter) in ["#", "+", "a", "a/#", "a/+", "+/b", "$SYS/#", "+/x", "/+"]
            .into_iter()
            .enumerate()
        {
            trie.insert(filter, key as u32, "v");
        }
        let keys = |topic| {
            let mut keys: Vec<u32> = matched(&trie, topic).into_iter().map(|(_, k)| k).collect();
            keys.sort();
            keys
        };
        assert_eq!(keys("a"), [0, 1, 2, 3]);
        assert_eq!(keys("a/b"), [0, 3, 4, 5]);
        assert_eq!(keys("$SYS/x"), [6]);
        assert_eq!(keys("$SYS"), [6]);
        assert_eq!(keys("/x"), [0, 7, 8]);
        assert_eq!(keys("b/c/d"), [0]);
    }
}
