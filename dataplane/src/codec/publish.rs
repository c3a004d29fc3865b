//! Outgoing PUBLISH, encoded straight from the shared message into the connection's write
//! buffer: one message fans out to many subscribers, and building an owned
//! `mqttbytes::v5::Publish` (topic `String`, property vectors) per copy would allocate on the
//! hottest path.

use bytes::{BufMut, BytesMut};
use mqttbytes::v5::PublishProperties;

/// One PUBLISH as a subscriber receives it.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingPublish<'a> {
    /// Topic name; empty when `topic_alias` refers to an alias the client already knows.
    pub topic: &'a str,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    /// Packet id (ignored for QoS 0).
    pub pkid: u16,
    pub payload: &'a [u8],
    /// MQTT 5 only: whether properties are written at all.
    pub v5: bool,
    /// The publisher's properties; `message_expiry_interval`, `topic_alias` and
    /// `subscription_identifiers` inside are ignored in favour of the fields below.
    pub props: Option<&'a PublishProperties>,
    /// Remaining message expiry interval, in seconds.
    pub expiry: Option<u32>,
    pub topic_alias: Option<u16>,
    pub sub_ids: &'a [u32],
}

const PAYLOAD_FORMAT: u8 = 0x01;
const MESSAGE_EXPIRY: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_ID: u8 = 0x0B;
const TOPIC_ALIAS: u8 = 0x23;
const USER_PROPERTY: u8 = 0x26;

/// Bytes of a variable byte integer.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_varint(buf: &mut BytesMut, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if n == 0 {
            break;
        }
    }
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    // Lengths were validated on the way in (every string came from a decoded packet).
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

fn properties_len(p: &OutgoingPublish<'_>) -> usize {
    let mut len = 0;
    if let Some(props) = p.props {
        if props.payload_format_indicator.is_some() {
            len += 2;
        }
        if let Some(ct) = &props.content_type {
            len += 3 + ct.len();
        }
        if let Some(rt) = &props.response_topic {
            len += 3 + rt.len();
        }
        if let Some(cd) = &props.correlation_data {
            len += 3 + cd.len();
        }
        for (k, v) in &props.user_properties {
            len += 5 + k.len() + v.len();
        }
    }
    if p.expiry.is_some() {
        len += 5;
    }
    if p.topic_alias.is_some() {
        len += 3;
    }
    for id in p.sub_ids {
        len += 1 + varint_len(*id as usize);
    }
    len
}

fn remaining_len(p: &OutgoingPublish<'_>) -> (usize, usize) {
    let mut len = 2 + p.topic.len() + p.payload.len();
    if p.qos > 0 {
        len += 2;
    }
    let props = if p.v5 { properties_len(p) } else { 0 };
    if p.v5 {
        len += varint_len(props) + props;
    }
    (len, props)
}

/// The whole packet's size in bytes (for the client's Maximum Packet Size).
pub fn publish_size(p: &OutgoingPublish<'_>) -> usize {
    let (len, _) = remaining_len(p);
    1 + varint_len(len) + len
}

/// Appends the PUBLISH to `buf`.
pub fn encode_publish(p: &OutgoingPublish<'_>, buf: &mut BytesMut) {
    let (len, props_len) = remaining_len(p);
    buf.reserve(1 + varint_len(len) + len);
    let byte1 = 0x30 | (u8::from(p.dup) << 3) | ((p.qos & 0b11) << 1) | u8::from(p.retain);
    buf.put_u8(byte1);
    put_varint(buf, len);
    put_str(buf, p.topic.as_bytes());
    if p.qos > 0 {
        buf.put_u16(p.pkid);
    }
    if p.v5 {
        put_varint(buf, props_len);
        put_properties(p, buf);
    }
    buf.put_slice(p.payload);
}

fn put_properties(p: &OutgoingPublish<'_>, buf: &mut BytesMut) {
    if let Some(props) = p.props {
        if let Some(pfi) = props.payload_format_indicator {
            buf.put_u8(PAYLOAD_FORMAT);
            buf.put_u8(pfi);
        }
        if let Some(ct) = &props.content_type {
            buf.put_u8(CONTENT_TYPE);
            put_str(buf, ct.as_bytes());
        }
        if let Some(rt) = &props.response_topic {
            buf.put_u8(RESPONSE_TOPIC);
            put_str(buf, rt.as_bytes());
        }
        if let Some(cd) = &props.correlation_data {
            buf.put_u8(CORRELATION_DATA);
            put_str(buf, cd);
        }
        for (k, v) in &props.user_properties {
            buf.put_u8(USER_PROPERTY);
            put_str(buf, k.as_bytes());
            put_str(buf, v.as_bytes());
        }
    }
    if let Some(expiry) = p.expiry {
        buf.put_u8(MESSAGE_EXPIRY);
        buf.put_u32(expiry);
    }
    if let Some(alias) = p.topic_alias {
        buf.put_u8(TOPIC_ALIAS);
        buf.put_u16(alias);
    }
    for id in p.sub_ids {
        buf.put_u8(SUBSCRIPTION_ID);
        put_varint(buf, *id as usize);
    }
}
