//! MQTT wire codec. Pure: bytes in, packets out, no I/O.
//!
//! Packet bodies are parsed by `mqttbytes`. Every incoming packet is turned into the MQTT 5
//! types (a superset of 3.1.1), so the session logic handles one set of types; outgoing
//! packets are written in the connection's own version. Where mqttbytes 0.6 falls short of
//! the spec this module covers the gap, each case named where it is handled:
//! - framing (`frame`): the packet-size limit must be checked from the fixed header before the
//!   body arrives, fixed-header flags must be validated, and zero-length MQTT 5 DISCONNECT
//!   (`e0 00`, what most clients send) and DISCONNECT with a reason code but no property
//!   length (`e0 01 04`) are rejected by `mqttbytes::v5::read`;
//! - CONNECT (`connect`): MQTT 3.1 (`MQIsdp`, level 3) is not understood at all, and the
//!   reserved flag and will-flag consistency are not checked;
//! - outgoing PUBLISH (`publish`): encoded straight from the shared message, without building
//!   an owned `Publish` per subscriber;
//! - MQTT 5 UNSUBSCRIBE (`unsubscribe`): mqttbytes' reader has a `dbg!` left in it;
//! - CONNACK (`write`): `v5::ConnAck` without properties is written without the mandatory
//!   property length.

mod connect;
mod convert;
mod frame;
mod publish;
mod unsubscribe;
mod write;

pub use connect::{ConnectError, decode_connect};
pub use frame::{FrameError, FrameHeader, parse_frame_header};
pub use mqttbytes::v5::Packet;
pub use publish::{OutgoingPublish, encode_publish, publish_size};
pub use write::encode_packet;

use bytes::BytesMut;

/// The MQTT protocol version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1 (protocol name `MQIsdp`, level 3).
    V31,
    /// MQTT 3.1.1 (level 4).
    V311,
    /// MQTT 5.0 (level 5).
    V5,
}

impl ProtocolVersion {
    /// Label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V31 => "3.1",
            Self::V311 => "3.1.1",
            Self::V5 => "5.0",
        }
    }

    /// Whether the connection speaks MQTT 5.
    pub fn is_v5(self) -> bool {
        self == Self::V5
    }
}

/// Why a packet could not be decoded. Each variant maps to an MQTT 5 disconnect reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The packet announced a size above the limit (reason 0x95).
    #[error("packet of {size} bytes exceeds the maximum packet size {max}")]
    TooLarge { size: usize, max: usize },
    /// The bytes do not form a valid packet (reason 0x81).
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A well-formed packet that the protocol does not allow here (reason 0x82).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

impl DecodeError {
    /// The MQTT 5 DISCONNECT reason code for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            Self::TooLarge { .. } => 0x95,
            Self::Malformed(_) => 0x81,
            Self::Protocol(_) => 0x82,
        }
    }

    /// Label for the malformed-packet metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Malformed(_) => "malformed",
            Self::Protocol(_) => "protocol_error",
        }
    }
}

impl From<mqttbytes::Error> for DecodeError {
    fn from(e: mqttbytes::Error) -> Self {
        Self::Malformed(format!("{e:?}"))
    }
}

/// Decodes the next complete packet (not CONNECT) from `buf`, consuming its bytes.
/// `Ok(None)` means more bytes are needed.
pub fn decode_packet(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = parse_frame_header(buf, max_packet_size)? else {
        return Ok(None);
    };
    let frame = buf.split_to(header.frame_len);
    if header.packet_type == 1 {
        return Err(DecodeError::Protocol("second CONNECT on a connection"));
    }
    if header.remaining_len == 0 {
        return match header.packet_type {
            12 => Ok(Some(Packet::PingReq)),
            14 => Ok(Some(Packet::Disconnect(mqttbytes::v5::Disconnect::new()))),
            _ => Err(DecodeError::Malformed(format!(
                "packet type {} cannot be empty",
                header.packet_type
            ))),
        };
    }
    if header.packet_type == 14 && header.remaining_len == 1 && version.is_v5() {
        // Reason code without property length (MQTT 5 3.14.2.2.1 allows omitting it);
        // mqttbytes 0.6 fails on it with InsufficientBytes.
        let code = frame.get(header.frame_len - 1).copied().unwrap_or(0);
        let reason_code = mqttbytes::v5::DisconnectReasonCode::try_from(code)?;
        return Ok(Some(Packet::Disconnect(mqttbytes::v5::Disconnect {
            reason_code,
            properties: None,
        })));
    }
    if header.packet_type == 10 && version.is_v5() {
        let body = frame
            .get(header.frame_len - header.remaining_len..)
            .unwrap_or_default();
        let packet = Packet::Unsubscribe(unsubscribe::read_v5(body)?);
        validate_incoming(&packet)?;
        return Ok(Some(packet));
    }
    let mut frame = frame;
    let packet = match version {
        ProtocolVersion::V5 => mqttbytes::v5::read(&mut frame, usize::MAX)?,
        ProtocolVersion::V31 | ProtocolVersion::V311 => {
            convert::v4_to_v5(mqttbytes::v4::read(&mut frame, usize::MAX)?)
        }
    };
    validate_incoming(&packet)?;
    Ok(Some(packet))
}

/// Checks the packet kinds a server may receive and what mqttbytes leaves unchecked.
fn validate_incoming(packet: &Packet) -> Result<(), DecodeError> {
    match packet {
        Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
            Err(DecodeError::Protocol("packet type only a server may send"))
        }
        Packet::Subscribe(s) if s.filters.is_empty() => {
            Err(DecodeError::Protocol("SUBSCRIBE without topic filters"))
        }
        Packet::Unsubscribe(u) if u.filters.is_empty() => {
            Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"))
        }
        Packet::Subscribe(s) if s.pkid == 0 => Err(DecodeError::Malformed("packet id 0".into())),
        Packet::Unsubscribe(u) if u.pkid == 0 => Err(DecodeError::Malformed("packet id 0".into())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
