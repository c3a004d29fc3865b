//! A published message as NATS headers and payload. The payload travels untouched (but for
//! batches, below), so NATS-native subscribers read it as is; MQTT metadata goes in
//! headers:
//!
//! | header | value |
//! |---|---|
//! | `Cmq-Hub` | hub that took the publish (a hub skips its own QoS 0 echoes) |
//! | `Cmq-Client` | publishing client id (MQTT 5 no-local on other hubs) |
//! | `Cmq-Qos` | 0, 1 or 2 |
//! | `Cmq-Retain` | `1` when published with RETAIN |
//! | `Cmq-Expires` | absolute expiry, Unix milliseconds (MQTT 5 message expiry) |
//! | `Cmq-Props` | MQTT 5 properties as JSON, non-ASCII escaped (`\uXXXX`) |
//! | `Cmq-User` | publishing client's username, escaped like the client id (rule engine) |
//! | `Cmq-Rule` | the ForwardRule that republished the message (loop guard) |
//! | `Cmq-Batch` | n ≥ 2: the payload holds n messages, each a u32 (big endian) length and the bytes |
//!
//! A batch is several QoS 1 messages of one connection to one topic that arrived together
//! and share every header (no retain flag, properties or expiry): one stored message, one
//! JetStream acknowledgement and one republish for all of them.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use bytes::Bytes;
use mqttbytes::QoS;
use mqttbytes::v5::PublishProperties;
use serde::{Deserialize, Serialize};

use crate::broker::message::{Message, Origin, StreamPos};

const HUB: &str = "Cmq-Hub";
const CLIENT: &str = "Cmq-Client";
const QOS: &str = "Cmq-Qos";
const RETAIN: &str = "Cmq-Retain";
const EXPIRES: &str = "Cmq-Expires";
const PROPS: &str = "Cmq-Props";
const USER: &str = "Cmq-User";
const RULE: &str = "Cmq-Rule";
const BATCH: &str = "Cmq-Batch";

/// MQTT 5 properties carried with a message.
#[derive(Serialize, Deserialize, Default)]
struct Props {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pfi: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ct: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rt: Option<String>,
    /// Correlation data as hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cd: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    up: Vec<(String, String)>,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Headers for `message` published through hub `hub` by `client`.
pub fn encode(message: &Message, hub: &str) -> HeaderMap {
    let client = message.origin.as_ref().map(|o| &*o.client_id);
    let mut headers = HeaderMap::new();
    headers.insert(HUB, hub);
    if let Some(client) = client {
        headers.insert(CLIENT, escape_ascii(client).as_str());
    }
    if let Some(user) = message.origin.as_ref().and_then(|o| o.username.as_deref()) {
        headers.insert(USER, escape_ascii(user).as_str());
    }
    if let Some(rule) = &message.rule {
        headers.insert(RULE, escape_ascii(rule).as_str());
    }
    headers.insert(QOS, qos_str(message.qos));
    if message.retain {
        headers.insert(RETAIN, "1");
    }
    if let Some(at) = message.expires_at {
        let left = at.saturating_duration_since(Instant::now());
        headers.insert(
            EXPIRES,
            unix_ms(SystemTime::now() + left).to_string().as_str(),
        );
    }
    if let Some(p) = &message.properties {
        let props = Props {
            pfi: p.payload_format_indicator,
            ct: p.content_type.clone(),
            rt: p.response_topic.clone(),
            cd: p.correlation_data.as_ref().map(|d| hex(d)),
            up: p.user_properties.clone(),
        };
        if let Ok(json) = serde_json::to_string(&props) {
            // JSON already escapes '\\' and control characters: only non-ASCII is left.
            headers.insert(PROPS, escape_non_ascii(&json).as_str());
        }
    }
    headers
}

/// Headers and payload of one stored message holding `messages` (at least two, all
/// `Message::batchable`, of one topic and origin).
pub fn encode_batch(messages: &[Arc<Message>], hub: &str) -> (HeaderMap, Bytes) {
    let mut headers = match messages.first() {
        Some(first) => encode(first, hub),
        None => HeaderMap::new(),
    };
    headers.insert(BATCH, messages.len().to_string().as_str());
    let size = messages.iter().map(|m| 4 + m.payload.len()).sum();
    let mut payload = bytes::BytesMut::with_capacity(size);
    for m in messages {
        // Payloads are bounded by the packet size limit (< 4 GiB).
        payload.extend_from_slice(&(m.payload.len() as u32).to_be_bytes());
        payload.extend_from_slice(&m.payload);
    }
    (headers, payload.freeze())
}

/// The messages of one NATS message (one, or a batch's).
pub type Messages = smallvec::SmallVec<[Arc<Message>; 1]>;

/// Every message in one stored or live NATS message: itself, or the messages of a batch
/// (at positions `idx` 1..=n of `stored`). `None` when expired or a batch is malformed.
pub fn decode_all(
    topic: Arc<str>,
    headers: Option<&HeaderMap>,
    payload: Bytes,
    stored: Option<StreamPos>,
) -> Option<(Messages, Option<String>)> {
    let count = headers
        .and_then(|h| h.get(BATCH))
        .and_then(|v| v.as_str().parse::<usize>().ok());
    let Some(count) = count else {
        let d = decode(topic, headers, payload, stored)?;
        return Some((smallvec::smallvec![d.message], d.hub));
    };
    let parts = split_batch(&payload, count)?;
    let first = decode(topic, headers, Bytes::new(), stored)?;
    let m = &first.message;
    let messages = parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            Arc::new(Message {
                topic: m.topic.clone(),
                payload: part,
                qos: m.qos,
                retain: m.retain,
                properties: m.properties.clone(),
                expires_at: m.expires_at,
                origin: m.origin.clone(),
                // Index 0 is a stored message that is not a batch.
                stored: m.stored.map(|p| StreamPos {
                    idx: u16::try_from(i + 1).unwrap_or(u16::MAX),
                    ..p
                }),
                rule: m.rule.clone(),
            })
        })
        .collect();
    Some((messages, first.hub))
}

/// The `count` payloads of a batch, sharing its buffer; `None` when the lengths do not
/// add up (a batch only this code writes, so that is a bug or a foreign publisher).
fn split_batch(payload: &Bytes, count: usize) -> Option<Vec<Bytes>> {
    // Positions number a batch's messages 1..=n in a u16.
    if count == 0 || count >= usize::from(u16::MAX) {
        return None;
    }
    // Each part takes at least its 4-byte length: a header cannot make us reserve more.
    let mut parts = Vec::with_capacity(count.min(payload.len() / 4));
    let mut at = 0usize;
    for _ in 0..count {
        let len = payload.get(at..at + 4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let start = at + 4;
        let end = start.checked_add(len).filter(|&e| e <= payload.len())?;
        parts.push(payload.slice(start..end));
        at = end;
    }
    (at == payload.len()).then_some(parts)
}

/// What a hub needs besides the message itself.
pub struct Decoded {
    pub message: Arc<Message>,
    pub hub: Option<String>,
}

/// Rebuilds a message from `topic`, its headers and payload. `None` when it has expired.
pub fn decode(
    topic: Arc<str>,
    headers: Option<&HeaderMap>,
    payload: Bytes,
    stored: Option<StreamPos>,
) -> Option<Decoded> {
    let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let qos = match get(QOS) {
        Some("1") => QoS::AtLeastOnce,
        Some("2") => QoS::ExactlyOnce,
        _ => QoS::AtMostOnce,
    };
    let expires_at = match get(EXPIRES).and_then(|v| v.parse::<u64>().ok()) {
        Some(at_ms) => {
            let now_ms = unix_ms(SystemTime::now());
            if at_ms <= now_ms {
                return None;
            }
            Some(Instant::now() + Duration::from_millis(at_ms - now_ms))
        }
        None => None,
    };
    let properties = get(PROPS)
        .and_then(|json| serde_json::from_str::<Props>(json).ok())
        .map(|p| {
            Box::new(PublishProperties {
                payload_format_indicator: p.pfi,
                message_expiry_interval: None,
                topic_alias: None,
                response_topic: p.rt,
                correlation_data: p.cd.and_then(|h| unhex(&h)).map(Bytes::from),
                user_properties: p.up,
                subscription_identifiers: Vec::new(),
                content_type: p.ct,
            })
        });
    let origin = get(CLIENT).map(|c| Origin {
        session: 0,
        client_id: Arc::from(unescape_ascii(c)),
        username: get(USER).map(|u| Arc::from(unescape_ascii(u))),
    });
    Some(Decoded {
        message: Arc::new(Message {
            topic,
            payload,
            qos,
            retain: get(RETAIN) == Some("1"),
            properties,
            expires_at,
            origin,
            stored,
            rule: get(RULE).map(|r| Arc::from(unescape_ascii(r))),
        }),
        hub: get(HUB).map(str::to_owned),
    })
}

fn qos_str(qos: QoS) -> &'static str {
    match qos {
        QoS::AtMostOnce => "0",
        QoS::AtLeastOnce => "1",
        QoS::ExactlyOnce => "2",
    }
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Header values must be printable ASCII: everything else (and `\`) becomes `\uXXXX`.
pub fn escape_ascii(text: &str) -> String {
    escape(text, true)
}

/// Like `escape_ascii` but keeps `\` (for JSON, whose escapes stay valid).
fn escape_non_ascii(text: &str) -> String {
    escape(text, false)
}

fn escape(text: &str, backslash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if (' '..='~').contains(&c) && (c != '\\' || !backslash) {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

pub fn unescape_ascii(text: &str) -> String {
    if !text.contains('\\') {
        return text.to_owned();
    }
    let mut units = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("\\u") {
        units.extend(rest[..pos].encode_utf16());
        let code = rest
            .get(pos + 2..pos + 6)
            .and_then(|h| u16::from_str_radix(h, 16).ok());
        match code {
            Some(code) => {
                units.push(code);
                rest = &rest[pos + 6..];
            }
            None => {
                units.extend("\\u".encode_utf16());
                rest = &rest[pos + 2..];
            }
        }
    }
    units.extend(rest.encode_utf16());
    String::from_utf16_lossy(&units)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_metadata() {
        let message = Message {
            topic: Arc::from("a/b"),
            payload: Bytes::from_static(b"x"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Some(Box::new(PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: None,
                topic_alias: None,
                response_topic: Some("r/é".into()),
                correlation_data: Some(Bytes::from_static(&[0, 255])),
                user_properties: vec![("k\n".into(), "v\\\"".into())],
                subscription_identifiers: Vec::new(),
                content_type: Some("text/plain".into()),
            })),
            expires_at: Some(Instant::now() + Duration::from_secs(60)),
            origin: Some(crate::broker::message::Origin {
                session: 1,
                client_id: Arc::from("dev/é"),
                username: Some(Arc::from("user é")),
            }),
            stored: None,
            rule: Some(Arc::from("ns/rule")),
        };
        let headers = encode(&message, "h1");
        for (_, values) in headers.iter() {
            for v in values {
                assert!(v.as_str().bytes().all(|b| (b' '..=b'~').contains(&b)));
            }
        }
        let d = decode(
            message.topic.clone(),
            Some(&headers),
            message.payload.clone(),
            None,
        )
        .unwrap();
        assert_eq!(d.hub.as_deref(), Some("h1"));
        assert_eq!(
            d.message.origin.as_ref().map(|o| &*o.client_id),
            Some("dev/é")
        );
        assert_eq!(
            d.message
                .origin
                .as_ref()
                .and_then(|o| o.username.as_deref()),
            Some("user é")
        );
        assert_eq!(d.message.rule.as_deref(), Some("ns/rule"));
        assert_eq!(d.message.qos, QoS::ExactlyOnce);
        assert!(d.message.retain);
        assert_eq!(d.message.properties, message.properties);
        let left = d.message.remaining_expiry(Instant::now()).unwrap();
        assert!((59..=60).contains(&left));
    }

    #[test]
    fn batches_split_into_their_messages_with_positions() {
        let m = |p: &'static [u8]| {
            Arc::new(Message {
                topic: Arc::from("t/1"),
                payload: Bytes::from_static(p),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: None,
                expires_at: None,
                origin: Some(crate::broker::message::Origin {
                    session: 3,
                    client_id: Arc::from("pub"),
                    username: None,
                }),
                stored: None,
                rule: None,
            })
        };
        let batch = [m(b"one"), m(b""), m(b"three")];
        assert!(batch.iter().all(|x| x.batchable()));
        let (headers, payload) = encode_batch(&batch, "h1");
        let pos = StreamPos {
            shard: 2,
            seq: 40,
            idx: 0,
        };
        let (messages, hub) =
            decode_all(Arc::from("t/1"), Some(&headers), payload.clone(), Some(pos)).unwrap();
        assert_eq!(hub.as_deref(), Some("h1"));
        let got: Vec<_> = messages
            .iter()
            .map(|x| (x.payload.clone(), x.stored.map(|p| p.idx)))
            .collect();
        assert_eq!(
            got,
            vec![
                (Bytes::from_static(b"one"), Some(1)),
                (Bytes::new(), Some(2)),
                (Bytes::from_static(b"three"), Some(3)),
            ]
        );
        assert!(messages.iter().all(|x| x.qos == QoS::AtLeastOnce
            && x.origin.as_ref().map(|o| &*o.client_id) == Some("pub")));
        // A batch whose lengths do not add up is refused, not misread.
        let cut = payload.slice(..payload.len() - 1);
        assert!(decode_all(Arc::from("t/1"), Some(&headers), cut, Some(pos)).is_none());
        let mut two = headers.clone();
        two.insert(BATCH, "2");
        assert!(decode_all(Arc::from("t/1"), Some(&two), payload, Some(pos)).is_none());
        // Plain messages decode as one, at index 0.
        let plain = encode(&batch[0], "h1");
        let (one, _) = decode_all(
            Arc::from("t/1"),
            Some(&plain),
            Bytes::from_static(b"x"),
            Some(pos),
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].stored, Some(pos));
        let mut retained = Arc::try_unwrap(m(b"x")).unwrap();
        retained.retain = true;
        assert!(!retained.batchable());
    }

    #[test]
    fn expired_messages_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(EXPIRES, "1");
        assert!(decode(Arc::from("t"), Some(&headers), Bytes::new(), None).is_none());
    }
}
