//! MQTT 5 UNSUBSCRIBE. mqttbytes 0.6's `v5::Unsubscribe::read` contains a `dbg!(pkid)`,
//! active in release builds: every UNSUBSCRIBE would write to stderr under its lock, which a
//! client could use to slow the hub down. The packet is simple enough to read here.

use mqttbytes::v5::Unsubscribe;

use super::DecodeError;

fn malformed(what: &str) -> DecodeError {
    DecodeError::Malformed(format!("UNSUBSCRIBE: {what}"))
}

/// Reads a variable byte integer, returning (value, bytes used).
fn varint(body: &[u8]) -> Result<(usize, usize), DecodeError> {
    let mut value = 0usize;
    for (i, byte) in body.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(malformed("bad property length"))
}

/// Parses the body (after the fixed header) of an MQTT 5 UNSUBSCRIBE. Properties (only
/// user properties are defined) are skipped.
pub fn read_v5(body: &[u8]) -> Result<Unsubscribe, DecodeError> {
    let (pkid, rest) = match body {
        [hi, lo, rest @ ..] => (u16::from_be_bytes([*hi, *lo]), rest),
        _ => return Err(malformed("no packet id")),
    };
    let (props_len, used) = varint(rest)?;
    let mut rest = rest
        .get(used + props_len..)
        .ok_or_else(|| malformed("properties longer than the packet"))?;
    let mut filters = Vec::new();
    while !rest.is_empty() {
        let [hi, lo, tail @ ..] = rest else {
            return Err(malformed("truncated topic filter"));
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let raw = tail
            .get(..len)
            .ok_or_else(|| malformed("truncated topic filter"))?;
        let filter = std::str::from_utf8(raw).map_err(|_| malformed("filter is not UTF-8"))?;
        filters.push(filter.to_owned());
        rest = &tail[len..];
    }
    Ok(Unsubscribe {
        pkid,
        filters,
        properties: None,
    })
}
