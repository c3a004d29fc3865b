//! Hand-rolled hot-path MQTT codec: PUBLISH encode/decode, tiny ack packets,
//! frame splitting and the timestamped payload stamp.
//!
//! Connection setup packets (CONNECT, SUBSCRIBE, CONNACK, SUBACK) go through
//! `mqttbytes`; everything that happens once per message is done here without
//! allocating.

use bytes::{BufMut, BytesMut};

/// MQTT control packet types (upper nibble of the first byte).
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBACK: u8 = 9;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// Size of the stamp at the start of every payload.
pub const STAMP_LEN: usize = 16;

/// What the generator writes into the first 16 bytes of every payload:
/// send timestamp (ns since the process-wide origin `Instant`), publisher id
/// and per-publisher sequence number, all little endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub ts_ns: u64,
    pub publisher: u32,
    pub seq: u32,
}

impl Stamp {
    pub fn write(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.ts_ns);
        buf.put_u32_le(self.publisher);
        buf.put_u32_le(self.seq);
    }

    /// Reads a stamp from the first 16 bytes of `payload`; `None` if shorter.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let b: &[u8; STAMP_LEN] = payload.get(..STAMP_LEN)?.try_into().ok()?;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[0..8]);
        let mut p = [0u8; 4];
        p.copy_from_slice(&b[8..12]);
        let mut s = [0u8; 4];
        s.copy_from_slice(&b[12..16]);
        Some(Stamp {
            ts_ns: u64::from_le_bytes(ts),
            publisher: u32::from_le_bytes(p),
            seq: u32::from_le_bytes(s),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// Remaining length varint longer than 4 bytes.
    BadLength,
    /// Packet larger than we accept.
    TooLarge(usize),
    /// Packet body inconsistent with its type.
    Malformed(&'static str),
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::BadLength => write!(f, "malformed remaining length"),
            CodecError::TooLarge(n) => write!(f, "packet too large ({n} bytes)"),
            CodecError::Malformed(what) => write!(f, "malformed packet: {what}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// Largest packet the generator accepts from a broker.
pub const MAX_PACKET: usize = 16 * 1024 * 1024;

/// Appends an MQTT variable byte integer.
pub fn put_varint(buf: &mut BytesMut, mut v: usize) {
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        buf.put_u8(b);
        if v == 0 {
            break;
        }
    }
}

/// Number of bytes `put_varint` writes for `v`.
pub fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Reads a variable byte integer; returns (value, bytes used) or `None` if
/// the buffer ends first.
pub fn get_varint(buf: &[u8]) -> Result<Option<(usize, usize)>, CodecError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err(CodecError::BadLength)
}

/// One complete packet found in a read buffer.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// First byte (type << 4 | flags).
    pub header: u8,
    /// Offset of the variable header/body within the buffer passed in.
    pub body_start: usize,
    /// Offset just past the packet.
    pub end: usize,
}

impl Frame {
    pub fn kind(&self) -> u8 {
        self.header >> 4
    }
}

/// Finds the next complete packet at the start of `buf`.
pub fn next_frame(buf: &[u8]) -> Result<Option<Frame>, CodecError> {
    let Some(&header) = buf.first() else {
        return Ok(None);
    };
    let Some((len, used)) = get_varint(&buf[1..])? else {
        return Ok(None);
    };
    if len > MAX_PACKET {
        return Err(CodecError::TooLarge(len));
    }
    let body_start = 1 + used;
    let end = body_start + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(Frame {
        header,
        body_start,
        end,
    }))
}

/// Precomputed constant part of the PUBLISH packets one publisher sends:
/// fixed header, remaining length and topic. Encoding a message is then a
/// memcpy of this prefix, the packet id, and the payload.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    prefix: Vec<u8>,
    qos: u8,
    v5: bool,
    payload_len: usize,
}

impl PublishTemplate {
    /// `payload_len` must be >= STAMP_LEN.
    pub fn new(topic: &str, qos: u8, payload_len: usize, v5: bool) -> Self {
        let payload_len = payload_len.max(STAMP_LEN);
        let mut remaining = 2 + topic.len() + payload_len;
        if qos > 0 {
            remaining += 2;
        }
        if v5 {
            remaining += 1; // empty property block
        }
        let mut prefix = BytesMut::with_capacity(5 + 2 + topic.len());
        prefix.put_u8(0x30 | (qos << 1));
        put_varint(&mut prefix, remaining);
        prefix.put_u16(topic.len() as u16);
        prefix.put_slice(topic.as_bytes());
        PublishTemplate {
            prefix: prefix.to_vec(),
            qos,
            v5,
            payload_len,
        }
    }

    /// Bytes one encoded packet takes.
    pub fn packet_len(&self) -> usize {
        self.prefix.len()
            + if self.qos > 0 { 2 } else { 0 }
            + usize::from(self.v5)
            + self.payload_len
    }

    /// Appends one PUBLISH carrying `stamp` (zero padded to the payload size).
    #[inline]
    pub fn encode(&self, buf: &mut BytesMut, pkid: u16, stamp: Stamp) {
        buf.put_slice(&self.prefix);
        if self.qos > 0 {
            buf.put_u16(pkid);
        }
        if self.v5 {
            buf.put_u8(0);
        }
        stamp.write(buf);
        buf.put_bytes(0, self.payload_len - STAMP_LEN);
    }
}

/// The parts of an incoming PUBLISH the generator cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishView<'a> {
    pub qos: u8,
    pub pkid: u16,
    pub topic: &'a [u8],
    pub payload: &'a [u8],
}

/// Decodes the body of a PUBLISH frame (`body` = bytes after the remaining length).
#[inline]
pub fn decode_publish(header: u8, body: &[u8], v5: bool) -> Result<PublishView<'_>, CodecError> {
    let qos = (header >> 1) & 3;
    if qos == 3 {
        return Err(CodecError::Malformed("publish qos 3"));
    }
    if body.len() < 2 {
        return Err(CodecError::Malformed("publish too short"));
    }
    let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut pos = 2 + tlen;
    let topic = body
        .get(2..pos)
        .ok_or(CodecError::Malformed("publish topic"))?;
    let mut pkid = 0;
    if qos > 0 {
        let b = body
            .get(pos..pos + 2)
            .ok_or(CodecError::Malformed("publish pkid"))?;
        pkid = u16::from_be_bytes([b[0], b[1]]);
        pos += 2;
    }
    if v5 {
        let (plen, used) = get_varint(body.get(pos..).unwrap_or_default())?
            .ok_or(CodecError::Malformed("publish properties"))?;
        pos += used + plen;
    }
    let payload = body
        .get(pos..)
        .ok_or(CodecError::Malformed("publish properties"))?;
    Ok(PublishView {
        qos,
        pkid,
        topic,
        payload,
    })
}

/// Packet id of a PUBACK/PUBREC/PUBREL/PUBCOMP body (v5 reason codes and
/// properties that may follow are ignored).
#[inline]
pub fn ack_pkid(body: &[u8]) -> Result<u16, CodecError> {
    match body {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(CodecError::Malformed("ack too short")),
    }
}

/// Appends a 4-byte ack (PUBACK/PUBREC/PUBREL/PUBCOMP). The short form with
/// no reason code is valid in both 3.1.1 and 5.0 (reason = success).
#[inline]
pub fn put_ack(buf: &mut BytesMut, kind: u8, pkid: u16) {
    let flags = if kind == PUBREL { 0x02 } else { 0 };
    buf.put_u8((kind << 4) | flags);
    buf.put_u8(2);
    buf.put_u16(pkid);
}

pub const PINGREQ_BYTES: [u8; 2] = [0xC0, 0x00];
/// DISCONNECT with no body: valid for 3.1.1 and for 5.0 (normal disconnection).
pub const DISCONNECT_BYTES: [u8; 2] = [0xE0, 0x00];

/// MQTT topic filter matching (`+` and `#`), used to work out which
/// publishers a `--sub-filter` subscriber should hear from.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use mqttbytes::QoS;

    fn qos_of(q: u8) -> QoS {
        match q {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }

    #[test]
    fn stamp_round_trip() {
        let s = Stamp {
            ts_ns: 0x0123_4567_89ab_cdef,
            publisher: 4242,
            seq: u32::MAX - 1,
        };
        let mut buf = BytesMut::new();
        s.write(&mut buf);
        assert_eq!(buf.len(), STAMP_LEN);
        assert_eq!(Stamp::read(&buf), Some(s));
        assert_eq!(Stamp::read(&buf[..15]), None);
        // Trailing padding is ignored.
        buf.put_bytes(0, 100);
        assert_eq!(Stamp::read(&buf), Some(s));
    }

    #[test]
    fn varint_round_trip() {
        for v in [
            0usize,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v));
            assert_eq!(get_varint(&buf).unwrap(), Some((v, buf.len())));
        }
        assert_eq!(get_varint(&[0x80, 0x80]).unwrap(), None);
        assert!(get_varint(&[0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
    }

    #[test]
    fn publish_encode_matches_mqttbytes_v4() {
        for qos in 0..=2u8 {
            for payload_len in [16usize, 100, 200, 20_000] {
                let tmpl = PublishTemplate::new("bench/7", qos, payload_len, false);
                let stamp = Stamp {
                    ts_ns: 987_654_321,
                    publisher: 3,
                    seq: 77,
                };
                let mut buf = BytesMut::new();
                let pkid = if qos > 0 { 513 } else { 0 };
                tmpl.encode(&mut buf, pkid, stamp);
                assert_eq!(buf.len(), tmpl.packet_len());
                let pkt = mqttbytes::v4::read(&mut buf, MAX_PACKET).unwrap();
                let mqttbytes::v4::Packet::Publish(p) = pkt else {
                    panic!("not a publish: {pkt:?}");
                };
                assert_eq!(p.topic, "bench/7");
                assert_eq!(p.qos, qos_of(qos));
                assert_eq!(p.pkid, pkid);
                assert_eq!(p.payload.len(), payload_len);
                assert_eq!(Stamp::read(&p.payload), Some(stamp));
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn publish_encode_matches_mqttbytes_v5() {
        for qos in 0..=2u8 {
            let tmpl = PublishTemplate::new("bench/long/topic", qos, 300, true);
            let stamp = Stamp {
                ts_ns: 5,
                publisher: 1,
                seq: 2,
            };
            let mut buf = BytesMut::new();
            let pkid = if qos > 0 { 9 } else { 0 };
            tmpl.encode(&mut buf, pkid, stamp);
            let pkt = mqttbytes::v5::read(&mut buf, MAX_PACKET).unwrap();
            let mqttbytes::v5::Packet::Publish(p) = pkt else {
                panic!("not a publish: {pkt:?}");
            };
            assert_eq!(p.topic, "bench/long/topic");
            assert_eq!(p.pkid, pkid);
            assert_eq!(p.payload.len(), 300);
            assert_eq!(Stamp::read(&p.payload), Some(stamp));
        }
    }

    #[test]
    fn publish_decode_matches_mqttbytes_v4() {
        for qos in 0..=2u8 {
            let stamp = Stamp {
                ts_ns: 123_456,
                publisher: 17,
                seq: 99_999,
            };
            let mut payload = BytesMut::new();
            stamp.write(&mut payload);
            payload.put_bytes(0xAB, 40);
            let mut p = mqttbytes::v4::Publish::new("a/b/c", qos_of(qos), payload.to_vec());
            if qos > 0 {
                p.pkid = 4096;
            }
            let mut buf = BytesMut::new();
            p.write(&mut buf).unwrap();
            // Two packets back to back: the splitter must find both.
            let first_len = buf.len();
            p.write(&mut buf).unwrap();
            let frame = next_frame(&buf).unwrap().unwrap();
            assert_eq!(frame.kind(), PUBLISH);
            assert_eq!(frame.end, first_len);
            let view =
                decode_publish(frame.header, &buf[frame.body_start..frame.end], false).unwrap();
            assert_eq!(view.qos, qos);
            assert_eq!(view.pkid, if qos > 0 { 4096 } else { 0 });
            assert_eq!(view.topic, b"a/b/c");
            assert_eq!(view.payload, &payload[..]);
            assert_eq!(Stamp::read(view.payload), Some(stamp));
            let second = next_frame(&buf[frame.end..]).unwrap().unwrap();
            assert_eq!(frame.end + second.end, buf.len());
            // Truncated input is "need more bytes", not an error.
            assert!(next_frame(&buf[..first_len - 1]).unwrap().is_none());
        }
    }

    #[test]
    fn publish_decode_matches_mqttbytes_v5_with_properties() {
        let stamp = Stamp {
            ts_ns: 1,
            publisher: 2,
            seq: 3,
        };
        let mut payload = BytesMut::new();
        stamp.write(&mut payload);
        let mut p = mqttbytes::v5::Publish::new("x/y", QoS::AtLeastOnce, payload.to_vec());
        p.pkid = 10;
        p.properties = Some(mqttbytes::v5::PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            topic_alias: None,
            response_topic: Some("resp".into()),
            correlation_data: Some(Bytes::from_static(b"corr")),
            user_properties: vec![("k".into(), "v".into())],
            subscription_identifiers: vec![],
            content_type: None,
        });
        let mut buf = BytesMut::new();
        p.write(&mut buf).unwrap();
        let frame = next_frame(&buf).unwrap().unwrap();
        let view = decode_publish(frame.header, &buf[frame.body_start..frame.end], true).unwrap();
        assert_eq!(view.qos, 1);
        assert_eq!(view.pkid, 10);
        assert_eq!(view.topic, b"x/y");
        assert_eq!(Stamp::read(view.payload), Some(stamp));
    }

    #[test]
    fn acks_match_mqttbytes() {
        let mut buf = BytesMut::new();
        put_ack(&mut buf, PUBACK, 7);
        put_ack(&mut buf, PUBREC, 8);
        put_ack(&mut buf, PUBREL, 9);
        put_ack(&mut buf, PUBCOMP, 10);
        use mqttbytes::v4::{Packet, read};
        assert!(matches!(read(&mut buf, 100).unwrap(), Packet::PubAck(a) if a.pkid == 7));
        assert!(matches!(read(&mut buf, 100).unwrap(), Packet::PubRec(a) if a.pkid == 8));
        assert!(matches!(read(&mut buf, 100).unwrap(), Packet::PubRel(a) if a.pkid == 9));
        assert!(matches!(read(&mut buf, 100).unwrap(), Packet::PubComp(a) if a.pkid == 10));
    }

    #[test]
    fn filters() {
        assert!(topic_matches("bench/+", "bench/3"));
        assert!(topic_matches("bench/#", "bench/3/x"));
        assert!(topic_matches("#", "bench/3"));
        assert!(topic_matches("bench/3", "bench/3"));
        assert!(!topic_matches("bench/+", "bench/3/x"));
        assert!(!topic_matches("bench/4", "bench/3"));
    }
}
