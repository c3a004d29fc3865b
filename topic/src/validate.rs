//! Validation of topic names, topic filters and shared-subscription filters.

/// Why a topic name, topic filter or subject was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic or filter is the empty string (MQTT 5 4.7.3).
    #[error("topic must not be empty")]
    Empty,
    /// The UTF-8 encoding is longer than the configured limit.
    #[error("topic is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Length in bytes.
        len: usize,
        /// The configured limit in bytes.
        max: usize,
    },
    /// The topic has more '/'-separated levels than the configured limit.
    #[error("topic has {levels} levels, the limit is {max}")]
    TooManyLevels {
        /// Number of levels.
        levels: usize,
        /// The configured limit.
        max: usize,
    },
    /// A topic name (as opposed to a filter) contains '+' or '#'.
    #[error("topic name must not contain the wildcards '+' or '#'")]
    WildcardInName,
    /// The topic contains U+0000, which MQTT forbids everywhere.
    #[error("topic must not contain the null character U+0000")]
    NulChar,
    /// A wildcard does not occupy a whole level, or '#' is not the last level.
    #[error("wildcards must occupy a whole level and '#' must be the last level")]
    InvalidWildcard,
    /// A malformed `$share/{group}/{filter}`.
    #[error(
        "shared subscription must be $share/{{group}}/{{filter}} with a non-empty group \
         free of '+', '#' and '/', and a non-empty filter"
    )]
    InvalidShare,
    /// A string that [`crate::subject::topic_to_subject`] cannot have produced.
    #[error("not a subject produced by topic_to_subject")]
    InvalidSubject,
}

/// Broker-configurable limits on topic names and filters.
#[derive(Debug, Clone, Copy)]
pub struct TopicLimits {
    /// Maximum length in bytes of the UTF-8 encoding.
    pub max_length: usize,
    /// Maximum number of '/'-separated levels.
    pub max_levels: usize,
}

impl Default for TopicLimits {
    /// 65535 bytes is the most an MQTT UTF-8 string can carry; 128 levels
    /// bounds the depth of the trie walks (and their recursion).
    fn default() -> Self {
        Self {
            max_length: 65535,
            max_levels: 128,
        }
    }
}

/// The checks shared by names and filters, cheapest first.
fn validate_common(topic: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > limits.max_length {
        return Err(TopicError::TooLong {
            len: topic.len(),
            max: limits.max_length,
        });
    }
    if topic.contains('\0') {
        return Err(TopicError::NulChar);
    }
    let levels = topic.bytes().filter(|&b| b == b'/').count() + 1;
    if levels > limits.max_levels {
        return Err(TopicError::TooManyLevels {
            levels,
            max: limits.max_levels,
        });
    }
    Ok(())
}

/// Validates a topic name as used in PUBLISH (and Will) packets: non-empty,
/// no wildcards, no U+0000 and within `limits` (length counted in bytes).
pub fn validate_name(topic: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    validate_common(topic, limits)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Validates a subscription topic filter.
///
/// The filter must already be stripped of any `$share/{group}/` prefix (see
/// [`parse_shared`]); a leading `$share` level is otherwise just a level.
pub fn validate_filter(filter: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    validate_common(filter, limits)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" if levels.peek().is_some() => return Err(TopicError::InvalidWildcard),
            "#" | "+" => {}
            _ if level.contains(['+', '#']) => return Err(TopicError::InvalidWildcard),
            _ => {}
        }
    }
    Ok(())
}

/// The parts of a shared subscription filter `$share/{group}/{filter}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The share name; subscribers with equal groups share the messages.
    pub group: &'a str,
    /// The topic filter proper; validate it with [`validate_filter`].
    pub filter: &'a str,
}

/// The first level that marks a shared subscription (MQTT 5 4.8.2).
const SHARE_LEVEL: &str = "$share";

/// Splits a shared subscription filter into group and filter.
///
/// Returns `Ok(None)` when `filter` is not a shared subscription, `Ok(Some)`
/// for `$share/g/f`, and `Err(InvalidShare)` for malformed share forms such as
/// `$share`, `$share/`, `$share/g`, `$share/g/`, `$share//f` or `$share/g+/f`.
/// A bare `$share` is rejected rather than treated as an ordinary filter
/// because the spec reserves that first level for shared subscriptions.
/// The inner filter is not validated here.
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_LEVEL) else {
        return Ok(None);
    };
    let rest = match rest.strip_prefix('/') {
        Some(rest) => rest,
        // "$shared/..." merely starts with the same characters.
        None if !rest.is_empty() => return Ok(None),
        None => return Err(TopicError::InvalidShare),
    };
    let (group, inner) = rest.split_once('/').ok_or(TopicError::InvalidShare)?;
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Err(TopicError::InvalidShare);
    }
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LIMITS: TopicLimits = TopicLimits {
        max_length: 16,
        max_levels: 4,
    };

    #[test]
    fn default_limits() {
        let limits = TopicLimits::default();
        assert_eq!(limits.max_length, 65535);
        assert_eq!(limits.max_levels, 128);
    }

    #[test]
    fn names() {
        use TopicError::*;
        let cases: &[(&str, Result<(), TopicError>)] = &[
            ("a", Ok(())),
            ("/", Ok(())),
            ("a/b/c/d", Ok(())),
            ("$SYS/x", Ok(())),
            ("//", Ok(())),
            ("é/ü", Ok(())),
            ("", Err(Empty)),
            ("a/+", Err(WildcardInName)),
            ("a#", Err(WildcardInName)),
            ("#", Err(WildcardInName)),
            ("a\0b", Err(NulChar)),
            ("a/b/c/d/e", Err(TooManyLevels { levels: 5, max: 4 })),
            ("////", Err(TooManyLevels { levels: 5, max: 4 })),
            ("0123456789abcdef", Ok(())),
            ("0123456789abcdefg", Err(TooLong { len: 17, max: 16 })),
            // Length is in bytes: 9 two-byte characters.
            ("ééééééééé", Err(TooLong { len: 18, max: 16 })),
        ];
        for (topic, expected) in cases {
            assert_eq!(&validate_name(topic, &LIMITS), expected, "{topic:?}");
        }
    }

    #[test]
    fn filters() {
        use TopicError::*;
        let cases: &[(&str, Result<(), TopicError>)] = &[
            ("a", Ok(())),
            ("#", Ok(())),
            ("+", Ok(())),
            ("+/+", Ok(())),
            ("/+", Ok(())),
            ("a/#", Ok(())),
            ("+/b/#", Ok(())),
            ("a//#", Ok(())),
            ("$SYS/#", Ok(())),
            ("$share/g/a", Ok(())),
            ("", Err(Empty)),
            ("a/b#", Err(InvalidWildcard)),
            ("a+/b", Err(InvalidWildcard)),
            ("#/a", Err(InvalidWildcard)),
            ("a/#/", Err(InvalidWildcard)),
            ("##", Err(InvalidWildcard)),
            ("++", Err(InvalidWildcard)),
            ("a/\0", Err(NulChar)),
            ("+/+/+/+/+", Err(TooManyLevels { levels: 5, max: 4 })),
            ("0123456789abcdef/", Err(TooLong { len: 17, max: 16 })),
        ];
        for (filter, expected) in cases {
            assert_eq!(&validate_filter(filter, &LIMITS), expected, "{filter:?}");
        }
    }

    #[test]
    fn shared() {
        let ok: &[(&str, &str, &str)] = &[
            ("$share/g/f", "g", "f"),
            ("$share/group/a/b/#", "group", "a/b/#"),
            ("$share/g/+", "g", "+"),
            ("$share/g//", "g", "/"),
            ("$share/$share/x", "$share", "x"),
        ];
        for (input, group, filter) in ok {
            let parsed = parse_shared(input).unwrap().unwrap();
            assert_eq!(
                (parsed.group, parsed.filter),
                (*group, *filter),
                "{input:?}"
            );
        }
        for input in [
            "a/b",
            "#",
            "$SYS/x",
            "$shared/g/f",
            "share/g/f",
            "x/$share/g/f",
        ] {
            assert_eq!(parse_shared(input), Ok(None), "{input:?}");
        }
        for input in [
            "$share",
            "$share/",
            "$share/g",
            "$share/g/",
            "$share//f",
            "$share/g+/f",
            "$share/#/f",
            "$share/+/f",
            "$share/#",
        ] {
            assert_eq!(
                parse_shared(input),
                Err(TopicError::InvalidShare),
                "{input:?}"
            );
        }
    }

    #[test]
    fn messages_are_readable() {
        let err = TopicError::TooLong { len: 9, max: 8 };
        assert_eq!(err.to_string(), "topic is 9 bytes long, the limit is 8");
        assert!(
            TopicError::InvalidShare
                .to_string()
                .contains("$share/{group}/{filter}")
        );
    }
}
