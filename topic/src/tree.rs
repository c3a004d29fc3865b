//! The retained-message index: which stored topics does a filter reach?

use std::collections::HashMap;

#[derive(Debug, Clone)]
struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    /// The full topic is stored next to the value so lookups can report it
    /// without rebuilding it from the path.
    entry: Option<(Box<str>, V)>,
}

impl<V> Node<V> {
    fn new() -> Self {
        Self {
            children: HashMap::new(),
            entry: None,
        }
    }

    fn report<F: FnMut(&str, &V)>(&self, f: &mut F) {
        if let Some((topic, value)) = &self.entry {
            f(topic, value);
        }
    }

    /// Reports the entries below `self` matching the remaining filter levels
    /// `rest` (`None` once every level is consumed). Recursion depth is
    /// bounded by the filter's level count.
    fn walk<F: FnMut(&str, &V)>(&self, rest: Option<&str>, root: bool, f: &mut F) {
        let Some(rest) = rest else {
            self.report(f);
            return;
        };
        let (level, rest) = match rest.split_once('/') {
            Some((level, rest)) => (level, Some(rest)),
            None => (rest, None),
        };
        match level {
            "#" => self.report_subtree(root, f),
            "+" => {
                for (name, child) in &self.children {
                    // Wildcards never match a '$' first level (MQTT 5 4.7.2).
                    if !(root && name.starts_with('$')) {
                        child.walk(rest, false, f);
                    }
                }
            }
            _ => {
                if let Some(child) = self.children.get(level) {
                    child.walk(rest, false, f);
                }
            }
        }
    }

    /// Reports `self` and everything below it, for '#'. Uses an explicit
    /// stack because stored topics are not depth-limited by any filter.
    fn report_subtree<F: FnMut(&str, &V)>(&self, root: bool, f: &mut F) {
        let mut stack: Vec<&Self> = Vec::new();
        if root {
            stack.extend(
                self.children
                    .iter()
                    .filter(|(name, _)| !name.starts_with('$'))
                    .map(|(_, child)| child),
            );
        } else {
            stack.push(self);
        }
        while let Some(node) = stack.pop() {
            node.report(f);
            stack.extend(node.children.values());
        }
    }

    #[cfg(test)]
    fn count_nodes(&self) -> usize {
        1 + self.children.values().map(Self::count_nodes).sum::<usize>()
    }
}

/// Values stored under exact topic names (retained messages), looked up by
/// topic filter.
///
/// Topics and filters are expected to be valid (see [`crate::validate_name`]
/// and [`crate::validate_filter`]); invalid filters give unspecified results.
#[derive(Debug, Clone)]
pub struct TopicTree<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for TopicTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> TopicTree<V> {
    /// An empty tree.
    pub fn new() -> Self {
        Self {
            root: Node::new(),
            len: 0,
        }
    }

    /// Stores `value` under `topic`, returning the value it replaces.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_insert_with(Node::new);
        }
        let replaced = node
            .entry
            .replace((topic.into(), value))
            .map(|(_, old)| old);
        if replaced.is_none() {
            self.len += 1;
        }
        replaced
    }

    /// Removes the value stored under `topic` and prunes the nodes left
    /// empty, so the tree does not grow with retained-message churn.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        // Read-only pass: find the deepest node on the path that still holds
        // something after the removal; everything below it goes.
        let depth = topic.split('/').count();
        let mut node = &self.root;
        let mut keep = 0;
        for (index, level) in topic.split('/').enumerate() {
            node = node.children.get(level)?;
            let stays = if index + 1 == depth {
                !node.children.is_empty()
            } else {
                node.entry.is_some() || node.children.len() > 1
            };
            if stays {
                keep = index + 1;
            }
        }
        node.entry.as_ref()?;

        // The first pass proved the path exists, so the `?`s below never fire.
        let mut levels = topic.split('/');
        let mut node = &mut self.root;
        for _ in 0..keep {
            node = node.children.get_mut(levels.next()?)?;
        }
        let removed = if keep == depth {
            node.entry.take()?.1
        } else {
            // Detach the now-empty chain, then dig the value out of its end.
            let mut chain = node.children.remove(levels.next()?)?;
            for level in levels {
                chain = chain.children.remove(level)?;
            }
            chain.entry?.1
        };
        self.len -= 1;
        Some(removed)
    }

    /// The value stored under exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.entry.as_ref().map(|(_, value)| value)
    }

    /// Calls `f(topic, value)` for every stored topic that `filter` matches
    /// (same rules as [`crate::matches()`], including the '$' rule).
    ///
    /// Only the branches the filter can reach are visited, so a filter
    /// without wildcards costs one lookup per level. The order is unspecified.
    pub fn for_each_matching<F: FnMut(&str, &V)>(&self, filter: &str, mut f: F) {
        self.root.walk(Some(filter), true, &mut f);
    }

    /// The number of stored topics.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[cfg(test)]
    pub(crate) fn node_count(&self) -> usize {
        self.root.count_nodes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matching(tree: &TopicTree<u32>, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        tree.for_each_matching(filter, |topic, _| out.push(topic.to_owned()));
        out.sort();
        out
    }

    #[test]
    fn insert_get_remove() {
        let mut tree = TopicTree::new();
        assert!(tree.is_empty());
        assert_eq!(tree.insert("a/b", 1), None);
        assert_eq!(tree.insert("a/b", 2), Some(1));
        assert_eq!(tree.insert("a", 3), None);
        assert_eq!(tree.len(), 2);
        assert_eq!(tree.get("a/b"), Some(&2));
        assert_eq!(tree.get("a/"), None);
        assert_eq!(tree.remove("a/b/c"), None);
        assert_eq!(tree.remove("a/b"), Some(2));
        assert_eq!(tree.node_count(), 2);
        assert_eq!(tree.remove("a"), Some(3));
        assert_eq!(tree.remove("a"), None);
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 1);
    }

    #[test]
    fn lookups() {
        let mut tree = TopicTree::new();
        for (value, topic) in ["a", "a/b", "a/b/c", "a/", "/a", "$SYS/x", "b"]
            .into_iter()
            .enumerate()
        {
            tree.insert(topic, value as u32);
        }
        assert_eq!(matching(&tree, "#"), ["/a", "a", "a/", "a/b", "a/b/c", "b"]);
        assert_eq!(matching(&tree, "a/#"), ["a", "a/", "a/b", "a/b/c"]);
        assert_eq!(matching(&tree, "a/+"), ["a/", "a/b"]);
        assert_eq!(matching(&tree, "+"), ["a", "b"]);
        assert_eq!(matching(&tree, "+/x"), Vec::<String>::new());
        assert_eq!(matching(&tree, "$SYS/#"), ["$SYS/x"]);
        assert_eq!(matching(&tree, "$SYS/+"), ["$SYS/x"]);
        assert_eq!(matching(&tree, "a/b"), ["a/b"]);
        assert_eq!(matching(&tree, "a/b/c/d"), Vec::<String>::new());
    }
}
