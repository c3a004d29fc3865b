//! The message a rule is evaluated against and the columns SQL can name on it (EMQX's
//! `message.publish` fields plus CMQ's `retain`, `user_properties` and `protocol`).

use std::collections::HashMap;

use bytes::Bytes;

use crate::ast::Seg;
use crate::value::{Value, navigate};

/// One published message, as the hub hands it to the rule engine.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Hub-unique message id.
    pub id: &'a str,
    /// Topic the message was published to.
    pub topic: &'a str,
    /// Raw payload.
    pub payload: &'a [u8],
    /// Client id of the publisher.
    pub clientid: &'a str,
    /// Username the publisher authenticated with, if any.
    pub username: Option<&'a str>,
    /// QoS of the PUBLISH (0, 1 or 2).
    pub qos: u8,
    /// The retain flag of the PUBLISH.
    pub retain: bool,
    /// When the publish was received, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// MQTT 5 user properties, in the order received.
    pub user_properties: &'a [(String, String)],
    /// IP address of the publisher, if known.
    pub peerhost: Option<&'a str>,
    /// `"mqtt"` or `"coap"`.
    pub protocol: &'a str,
    /// Id of the hub that received the message.
    pub node: &'a str,
}

/// A column of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Column {
    Id,
    ClientId,
    Username,
    Payload,
    PeerHost,
    Topic,
    Qos,
    Retain,
    Flags,
    PubProps,
    UserProperties,
    Timestamp,
    PublishReceivedAt,
    Node,
    Protocol,
}

/// `SELECT *` order.
pub(crate) const ALL: [Column; 15] = [
    Column::Id,
    Column::ClientId,
    Column::Username,
    Column::Payload,
    Column::PeerHost,
    Column::Topic,
    Column::Qos,
    Column::Retain,
    Column::Flags,
    Column::PubProps,
    Column::UserProperties,
    Column::Timestamp,
    Column::PublishReceivedAt,
    Column::Node,
    Column::Protocol,
];

const USER_PROPERTY: &str = "User-Property";

impl Column {
    /// Column names are case-sensitive, as in EMQX.
    pub(crate) fn from_name(name: &str) -> Option<Column> {
        ALL.into_iter().find(|c| c.name() == name)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Column::Id => "id",
            Column::ClientId => "clientid",
            Column::Username => "username",
            Column::Payload => "payload",
            Column::PeerHost => "peerhost",
            Column::Topic => "topic",
            Column::Qos => "qos",
            Column::Retain => "retain",
            Column::Flags => "flags",
            Column::PubProps => "pub_props",
            Column::UserProperties => "user_properties",
            Column::Timestamp => "timestamp",
            Column::PublishReceivedAt => "publish_received_at",
            Column::Node => "node",
            Column::Protocol => "protocol",
        }
    }

    /// The whole column; `payload` is the raw payload (a string when it is UTF-8).
    pub(crate) fn value(self, msg: &Message<'_>) -> Value {
        let text = |s: &str| Value::Str(s.to_owned());
        let opt = |s: Option<&str>| s.map_or(Value::Null, text);
        match self {
            Column::Id => text(msg.id),
            Column::ClientId => text(msg.clientid),
            Column::Username => opt(msg.username),
            Column::Payload => raw_payload(msg.payload),
            Column::PeerHost => opt(msg.peerhost),
            Column::Topic => text(msg.topic),
            Column::Qos => Value::Int(i64::from(msg.qos)),
            Column::Retain => Value::Bool(msg.retain),
            Column::Flags => Value::Object(vec![
                ("retain".to_owned(), Value::Bool(msg.retain)),
                ("dup".to_owned(), Value::Bool(false)),
            ]),
            Column::PubProps if msg.user_properties.is_empty() => Value::Object(Vec::new()),
            Column::PubProps => Value::Object(vec![(
                USER_PROPERTY.to_owned(),
                user_properties(msg.user_properties),
            )]),
            Column::UserProperties => user_properties(msg.user_properties),
            Column::Timestamp | Column::PublishReceivedAt => Value::Int(msg.timestamp_ms),
            Column::Node => text(msg.node),
            Column::Protocol => text(msg.protocol),
        }
    }

    /// A path into the column (never `payload`, whose decoded JSON the evaluator caches);
    /// user properties are looked up in place rather than built into an object first.
    pub(crate) fn get(self, msg: &Message<'_>, segs: &[Seg]) -> Option<Value> {
        match (self, segs) {
            (Column::UserProperties, [Seg::Key(k), rest @ ..]) => {
                user_property(msg, k).and_then(|v| navigate(&v, rest))
            }
            (Column::PubProps, [Seg::Key(up), Seg::Key(k), rest @ ..]) if up == USER_PROPERTY => {
                user_property(msg, k).and_then(|v| navigate(&v, rest))
            }
            _ => navigate(&self.value(msg), segs),
        }
    }
}

pub(crate) fn raw_payload(payload: &[u8]) -> Value {
    match std::str::from_utf8(payload) {
        Ok(s) => Value::Str(s.to_owned()),
        Err(_) => Value::Bytes(Bytes::copy_from_slice(payload)),
    }
}

/// MQTT allows a key to repeat; like EMQX's map the last value wins.
fn user_property(msg: &Message<'_>, key: &str) -> Option<Value> {
    msg.user_properties
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| Value::Str(v.clone()))
}

fn user_properties(props: &[(String, String)]) -> Value {
    // A PUBLISH can carry thousands of properties: index them rather than scan per key.
    let mut slots: HashMap<&str, usize> = HashMap::with_capacity(props.len());
    let mut map: Vec<(String, Value)> = Vec::with_capacity(props.len());
    for (k, v) in props {
        match slots.get(k.as_str()) {
            Some(&i) => map[i].1 = Value::Str(v.clone()),
            None => {
                slots.insert(k, map.len());
                map.push((k.clone(), Value::Str(v.clone())));
            }
        }
    }
    Value::Object(map)
}
