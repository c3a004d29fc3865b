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

#[cfg(test)]
mod tests {
    use super::*;

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
