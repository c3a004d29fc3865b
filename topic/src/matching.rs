//! The reference MQTT topic matcher.

/// True when the first level of `filter` is a wildcard, which MQTT 5 4.7.2
/// forbids from matching topics that start with '$' (such as `$SYS/...`).
pub(crate) fn starts_with_wildcard(filter: &str) -> bool {
    matches!(filter.split('/').next(), Some("+" | "#"))
}

/// Whether the topic name `topic` matches the topic filter `filter`
/// (MQTT 5 section 4.7).
///
/// `+` matches exactly one level, `#` matches its own level and everything
/// below it including the parent (`a/#` matches `a`), empty levels are
/// levels like any other, and topics starting with '$' are not matched by a
/// filter whose first level is `+` or `#`. Both arguments are assumed valid;
/// this function never allocates.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && starts_with_wildcard(filter) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // '#' is last in a valid filter and also covers the parent level.
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            _ => return false,
        }
    }
}

/// Whether every topic the filter `inner` can match is also matched by `outer`: the test
/// an ACL rule's filter passes to allow a subscription (`a/#` covers `a/+/b` and `a`, `+`
/// does not cover `#`). Topics starting with '$' are covered only by a filter that names
/// them. Both arguments are assumed valid; this function never allocates.
pub fn covers(outer: &str, inner: &str) -> bool {
    if inner.starts_with('$') && starts_with_wildcard(outer) {
        return false;
    }
    let mut outer_levels = outer.split('/');
    let mut inner_levels = inner.split('/');
    loop {
        match (outer_levels.next(), inner_levels.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            // `#` in the inner filter reaches deeper than anything but `#`.
            (_, Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(o), Some(i)) if o == i => {}
            _ => return false,
        }
    }
}

/// Whether some topic name is matched by both filters: the test a deny rule's filter uses
/// against a subscription, so that `deny secret/#` refuses a subscription to `#`. Both
/// arguments are assumed valid; this function never allocates.
pub fn intersects(a: &str, b: &str) -> bool {
    if (a.starts_with('$') && starts_with_wildcard(b))
        || (b.starts_with('$') && starts_with_wildcard(a))
    {
        return false;
    }
    let mut a_levels = a.split('/');
    let mut b_levels = b.split('/');
    loop {
        match (a_levels.next(), b_levels.next()) {
            (Some("#"), _) | (_, Some("#")) | (None, None) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersects_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("secret/#", "#", true),
            ("secret/#", "+/x", true),
            ("secret/#", "public/#", false),
            ("a/+/c", "a/b/+", true),
            ("a/b", "a/b/c", false),
            ("a/#", "a", true),
            ("a", "a/#", true),
            ("$SYS/#", "#", false),
            ("$SYS/#", "$SYS/+", true),
            ("a/+", "a/b/c", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(intersects(a, b), *want, "{a} ∩ {b}");
            assert_eq!(intersects(b, a), *want, "{b} ∩ {a}");
        }
    }

    #[test]
    fn covers_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("a/#", "a/+/b", true),
            ("a/#", "a", true),
            ("a/#", "a/#", true),
            ("#", "#", true),
            ("#", "$SYS/#", false),
            ("$SYS/#", "$SYS/x", true),
            ("+", "#", false),
            ("a/+", "a/+", true),
            ("a/+", "a/b", true),
            ("a/b", "a/+", false),
            ("a/+", "a/b/c", false),
            ("a/+/c", "a/#", false),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/+/#", "a/x", true),
            ("devices/d1/#", "devices/d2/x", false),
        ];
        for (outer, inner, want) in cases {
            assert_eq!(covers(outer, inner), *want, "{outer} covers {inner}");
        }
    }

    #[test]
    fn table() {
        let cases: &[(&str, &str, bool)] = &[
            // Examples from MQTT 5 section 4.7.1.
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "sport/tennis", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("sport/+", "sport/tennis/x", false),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            // Section 4.7.2: '$' topics and wildcards.
            ("#", "$SYS/x", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/#", "$SYS", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("+", "$x", false),
            // '$' only matters at the very start of the topic.
            ("a/+", "a/$x", true),
            ("a/#", "a/$x/y", true),
            ("+/$x", "a/$x", true),
            // Plain and empty levels.
            ("a/b", "a/b", true),
            ("a/b", "a/b/", false),
            ("a/b", "a", false),
            ("a/b", "a/c", false),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("+", "", true),
            ("#", "/", true),
            ("/#", "/", true),
            ("+/#", "a", true),
            ("a/+/#", "a", false),
            ("A", "a", false),
        ];
        for &(filter, topic, expected) in cases {
            assert_eq!(matches(filter, topic), expected, "{filter:?} vs {topic:?}");
        }
    }
}
