//! The fixed header: packet type, flags and remaining length, checked before the body is
//! buffered so an oversized packet is refused without reading it.

use super::DecodeError;

/// What the fixed header says about the next packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Packet type, 1..=15.
    pub packet_type: u8,
    /// The low nibble of the first byte.
    pub flags: u8,
    /// Bytes after the fixed header.
    pub remaining_len: usize,
    /// Fixed header plus remaining length.
    pub frame_len: usize,
}

/// Errors reading a fixed header (a subset of [`DecodeError`]).
pub type FrameError = DecodeError;

/// Parses the fixed header at the start of `buf`. `Ok(None)` when the header or the body is
/// not complete yet. Fails fast on a size above `max_packet_size` (counted as the whole
/// packet, as MQTT 5's Maximum Packet Size is).
pub fn parse_frame_header(
    buf: &[u8],
    max_packet_size: usize,
) -> Result<Option<FrameHeader>, DecodeError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let packet_type = byte1 >> 4;
    let flags = byte1 & 0x0F;
    check_flags(packet_type, flags)?;
    let mut remaining_len: usize = 0;
    let mut shift = 0;
    let mut header_len = 1;
    loop {
        let Some(&byte) = buf.get(header_len) else {
            return Ok(None);
        };
        header_len += 1;
        remaining_len |= usize::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(DecodeError::Malformed(
                "remaining length longer than 4 bytes".into(),
            ));
        }
    }
    let frame_len = header_len + remaining_len;
    if frame_len > max_packet_size {
        return Err(DecodeError::TooLarge {
            size: frame_len,
            max: max_packet_size,
        });
    }
    if buf.len() < frame_len {
        return Ok(None);
    }
    Ok(Some(FrameHeader {
        packet_type,
        flags,
        remaining_len,
        frame_len,
    }))
}

/// MQTT 2.1.3: flags are fixed for every type but PUBLISH; PUBLISH may not have QoS 3.
fn check_flags(packet_type: u8, flags: u8) -> Result<(), DecodeError> {
    let ok = match packet_type {
        3 => (flags >> 1) & 0b11 != 0b11,
        6 | 8 | 10 => flags == 0b0010,
        1 | 2 | 4 | 5 | 7 | 9 | 11 | 12 | 13 | 14 => flags == 0,
        15 => false,
        _ => {
            return Err(DecodeError::Malformed(format!(
                "invalid packet type {packet_type}"
            )));
        }
    };
    if ok {
        Ok(())
    } else if packet_type == 15 {
        // AUTH: enhanced authentication is not offered, so an AUTH packet is out of place.
        Err(DecodeError::Protocol(
            "AUTH without an authentication method",
        ))
    } else {
        Err(DecodeError::Malformed(format!(
            "invalid flags {flags:#06b} for packet type {packet_type}"
        )))
    }
}
