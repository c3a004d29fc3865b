//! CONNECT: protocol detection (3.1, 3.1.1, 5.0) and the checks mqttbytes 0.6 leaves out.
//!
//! mqttbytes rejects MQTT 3.1 (`MQIsdp`, level 3) outright; its body is the same as 3.1.1
//! apart from the protocol name, so the header is rewritten to 3.1.1 before parsing.

use bytes::{BufMut, BytesMut};
use mqttbytes::v5::Connect;

use super::{DecodeError, ProtocolVersion, convert, parse_frame_header};

/// Why a first packet could not start a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The first packet was something other than CONNECT.
    #[error("first packet is type {0}, not CONNECT")]
    NotConnect(u8),
    /// Protocol name or level this server does not speak.
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol { name: String, level: u8 },
    /// The CONNECT itself is invalid.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Decodes a CONNECT from the start of `buf`, consuming it. `Ok(None)` when incomplete.
pub fn decode_connect(
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Option<(ProtocolVersion, Connect)>, ConnectError> {
    let Some(header) = parse_frame_header(buf, max_packet_size)? else {
        return Ok(None);
    };
    if header.packet_type != 1 {
        return Err(ConnectError::NotConnect(header.packet_type));
    }
    let frame = buf.split_to(header.frame_len);
    let body = frame
        .get(header.frame_len - header.remaining_len..)
        .unwrap_or_default();
    let (name, level, flags) = read_protocol(body)?;
    let version = match (name, level) {
        ("MQTT", 4) => ProtocolVersion::V311,
        ("MQTT", 5) => ProtocolVersion::V5,
        ("MQIsdp", 3) => ProtocolVersion::V31,
        _ => {
            return Err(ConnectError::UnsupportedProtocol {
                name: name.to_owned(),
                level,
            });
        }
    };
    check_flags(flags, version)?;
    let connect = match version {
        ProtocolVersion::V5 => {
            let mut frame = frame;
            match mqttbytes::v5::read(&mut frame, usize::MAX).map_err(DecodeError::from)? {
                mqttbytes::v5::Packet::Connect(c) => c,
                _ => return Err(ConnectError::NotConnect(1)),
            }
        }
        ProtocolVersion::V311 => read_v4(frame)?,
        ProtocolVersion::V31 => read_v4(rewrite_v31(body))?,
    };
    Ok(Some((version, connect)))
}

fn read_v4(mut frame: BytesMut) -> Result<Connect, ConnectError> {
    match mqttbytes::v4::read(&mut frame, usize::MAX).map_err(DecodeError::from)? {
        mqttbytes::v4::Packet::Connect(c) => Ok(convert::connect_v4_to_v5(c)),
        _ => Err(ConnectError::NotConnect(1)),
    }
}

/// Reads protocol name, level and connect flags from the variable header.
fn read_protocol(body: &[u8]) -> Result<(&str, u8, u8), DecodeError> {
    let malformed = || DecodeError::Malformed("CONNECT variable header too short".into());
    let name_len = usize::from(u16::from_be_bytes([
        *body.first().ok_or_else(malformed)?,
        *body.get(1).ok_or_else(malformed)?,
    ]));
    let name = body.get(2..2 + name_len).ok_or_else(malformed)?;
    let name = std::str::from_utf8(name)
        .map_err(|_| DecodeError::Malformed("protocol name is not UTF-8".into()))?;
    let level = *body.get(2 + name_len).ok_or_else(malformed)?;
    let flags = *body.get(3 + name_len).ok_or_else(malformed)?;
    Ok((name, level, flags))
}

/// MQTT 3.1.2.3 / 5 3.1.2.3: reserved bit, will QoS/retain only with the will flag.
fn check_flags(flags: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed(
            "CONNECT reserved flag is set".into(),
        ));
    }
    let will = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    if will_qos == 3 {
        return Err(DecodeError::Malformed("will QoS 3".into()));
    }
    if !will && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed(
            "will QoS or retain without a will".into(),
        ));
    }
    let username = flags & 0x80 != 0;
    let password = flags & 0x40 != 0;
    if password && !username && version != ProtocolVersion::V5 {
        return Err(DecodeError::Malformed(
            "password without a user name".into(),
        ));
    }
    Ok(())
}

/// Turns an MQTT 3.1 CONNECT body into a 3.1.1 CONNECT frame (same body, other header).
fn rewrite_v31(body: &[u8]) -> BytesMut {
    // body = [0, 6, "MQIsdp", 3, rest...]; the 3.1.1 header is [0, 4, "MQTT", 4].
    let rest = body.get(9..).unwrap_or_default();
    let remaining = rest.len() + 7;
    let mut out = BytesMut::with_capacity(remaining + 5);
    out.put_u8(0x10);
    let mut len = remaining;
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
    out.put_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4]);
    out.put_slice(rest);
    out
}
