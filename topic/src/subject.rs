//! The mapping between MQTT topics and NATS subjects.
//!
//! # Encoding
//!
//! Each MQTT level becomes one NATS token; tokens are joined with '.'.
//! Inside a token, the bytes `[A-Za-z0-9_-]` stand for themselves and every
//! other byte of the level's UTF-8 is written `=XX` (two uppercase hex
//! digits). An empty level is the token `=` alone.
//!
//! The result uses only `[-_=.A-Za-z0-9]`, so it is a legal NATS subject (no
//! `*`, `>` or whitespace) and a legal JetStream KV key, and has no empty
//! tokens. It is unambiguous: '.' never occurs inside a token, so tokens are
//! exactly the levels; a token is either the lone `=` or a sequence of units
//! that each start with a kept byte or with `=` followed by exactly two hex
//! digits, so a non-empty level can never encode to `=` and each token
//! decodes left to right in exactly one way. A leading '$' becomes `=24`, so
//! `$SYS` cannot collide with anything a plain topic produces.
//!
//! [`subject_to_topic`] accepts only canonical encodings (no escaped kept
//! bytes, no lowercase hex, no escaped '/'), which makes the mapping a
//! bijection between topics and valid subjects.

use crate::TopicError;

/// Bytes that stand for themselves inside a token.
fn is_kept(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-'
}

/// The token for an empty level; no escape is a lone '='.
const EMPTY_LEVEL: &str = "=";

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push_str(EMPTY_LEVEL);
        return;
    }
    for &byte in level.as_bytes() {
        if is_kept(byte) {
            out.push(char::from(byte));
        } else {
            out.push('=');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
    }
}

/// Escapes any string into one NATS token that is also a legal KV key (client ids, group
/// names): the per-level escape of the topic mapping, applied to the whole string, so '/'
/// and '.' are escaped too.
pub fn escape_token(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    push_level(&mut out, text);
    out
}

/// Maps an MQTT topic name to a NATS subject suffix (the caller prepends its
/// prefix, such as `cmq.c1.t.`). Total and lossless; see the module docs.
pub fn topic_to_subject(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    for (index, level) in topic.split('/').enumerate() {
        if index > 0 {
            out.push('.');
        }
        push_level(&mut out, level);
    }
    out
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// The inverse of [`escape_token`].
pub fn unescape_token(token: &str) -> Result<String, TopicError> {
    let mut out = Vec::with_capacity(token.len());
    decode_token_any(token, &mut out, true)?;
    String::from_utf8(out).map_err(|_| TopicError::InvalidSubject)
}

fn decode_token(token: &str, out: &mut Vec<u8>) -> Result<(), TopicError> {
    decode_token_any(token, out, false)
}

fn decode_token_any(token: &str, out: &mut Vec<u8>, slash: bool) -> Result<(), TopicError> {
    if token == EMPTY_LEVEL {
        return Ok(());
    }
    if token.is_empty() {
        return Err(TopicError::InvalidSubject);
    }
    let mut bytes = token.bytes();
    while let Some(byte) = bytes.next() {
        if is_kept(byte) {
            out.push(byte);
            continue;
        }
        if byte != b'=' {
            return Err(TopicError::InvalidSubject);
        }
        let high = bytes.next().and_then(hex_value);
        let low = bytes.next().and_then(hex_value);
        let (Some(high), Some(low)) = (high, low) else {
            return Err(TopicError::InvalidSubject);
        };
        let decoded = high << 4 | low;
        // Kept bytes must not be escaped and '/' cannot occur in a level:
        // either would give a second subject for the same topic.
        if is_kept(decoded) || (decoded == b'/' && !slash) {
            return Err(TopicError::InvalidSubject);
        }
        out.push(decoded);
    }
    Ok(())
}

/// The inverse of [`topic_to_subject`], given the suffix without the prefix.
///
/// Fails with [`TopicError::InvalidSubject`] for anything `topic_to_subject`
/// cannot have produced: empty tokens, stray or malformed escapes,
/// non-canonical escapes, or bytes that are not UTF-8.
pub fn subject_to_topic(subject: &str) -> Result<String, TopicError> {
    let mut out = Vec::with_capacity(subject.len());
    for (index, token) in subject.split('.').enumerate() {
        if index > 0 {
            out.push(b'/');
        }
        decode_token(token, &mut out)?;
    }
    String::from_utf8(out).map_err(|_| TopicError::InvalidSubject)
}

/// NATS subject suffixes that together receive every topic that the
/// (non-shared, valid) `filter` matches: `+` becomes `*` and a trailing `#`
/// becomes `>` plus the parent subject, because MQTT's `#` also matches the
/// parent level while NATS's `>` needs at least one token (`a/#` gives
/// `["a.>", "a"]`; `#` gives `[">"]`).
///
/// NATS wildcards also match subjects of '$' topics (`=24...`), which MQTT
/// excludes for filters starting with `+` or `#`; receivers must re-check
/// each message with [`crate::matches()`]. Wildcard characters that do not
/// form a whole level are escaped like any other byte.
pub fn filter_to_subjects(filter: &str) -> Vec<String> {
    let (prefix, multi) = match filter.strip_suffix("#") {
        Some("") => return vec![">".to_owned()],
        Some(prefix) if prefix.ends_with('/') => (&prefix[..prefix.len() - 1], true),
        _ => (filter, false),
    };
    let mut parent = String::with_capacity(prefix.len() + 8);
    for (index, level) in prefix.split('/').enumerate() {
        if index > 0 {
            parent.push('.');
        }
        if level == "+" {
            parent.push('*');
        } else {
            push_level(&mut parent, level);
        }
    }
    if multi {
        let children = format!("{parent}.>");
        vec![children, parent]
    } else {
        vec![parent]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for text in ["dev/1", "a.b c", "", "é=/"] {
            assert_eq!(unescape_token(&escape_token(text)).unwrap(), text);
        }
    }

    #[test]
    fn encodes() {
        let cases: &[(&str, &str)] = &[
            ("a", "a"),
            ("a/b", "a.b"),
            ("", "="),
            ("/", "=.="),
            ("a//b", "a.=.b"),
            ("$SYS/x", "=24SYS.x"),
            ("a.b", "a=2Eb"),
            ("a b*>", "a=20b=2A=3E"),
            ("x=y", "x=3Dy"),
            ("Ab_-9", "Ab_-9"),
            ("é", "=C3=A9"),
        ];
        for &(topic, subject) in cases {
            assert_eq!(topic_to_subject(topic), subject, "{topic:?}");
            assert_eq!(subject_to_topic(subject).unwrap(), topic, "{subject:?}");
        }
    }

    #[test]
    fn rejects_foreign_subjects() {
        for subject in [
            "", "a..b", "a.", ".a", "==", "=2", "=2G", "=2e", "a=", "=41", "=2F", "a*", ">", "a b",
            "=C3", "=C3.=A9", "==24",
        ] {
            assert_eq!(
                subject_to_topic(subject),
                Err(TopicError::InvalidSubject),
                "{subject:?}"
            );
        }
    }

    #[test]
    fn filters() {
        let cases: &[(&str, &[&str])] = &[
            ("#", &[">"]),
            ("a/#", &["a.>", "a"]),
            ("+", &["*"]),
            ("+/#", &["*.>", "*"]),
            ("a/+/c", &["a.*.c"]),
            ("/#", &["=.>", "="]),
            ("a//#", &["a.=.>", "a.="]),
            ("$SYS/#", &["=24SYS.>", "=24SYS"]),
            ("a.b/+", &["a=2Eb.*"]),
            ("a", &["a"]),
        ];
        for &(filter, subjects) in cases {
            assert_eq!(filter_to_subjects(filter), subjects, "{filter:?}");
        }
    }
}
