//! Packet decoder path: `decode_connect`, then `decode_packet` in each protocol version until
//! it needs more bytes or fails; every decoded packet is re-encoded (must not panic).

#![no_main]

use bytes::BytesMut;
use cmq::codec::{Packet, ProtocolVersion, decode_connect, decode_packet, encode_packet};
use libfuzzer_sys::fuzz_target;

const MAX_PACKET: usize = 1 << 16;
const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V31,
    ProtocolVersion::V311,
    ProtocolVersion::V5,
];

fn reencode(packet: &Packet, version: ProtocolVersion) {
    let mut out = BytesMut::new();
    let _ = encode_packet(packet, version, &mut out);
}

/// Decodes packets until `Ok(None)` or an error, re-encoding each one in `version`.
fn drain(buf: &mut BytesMut, version: ProtocolVersion) {
    // Every successful decode consumes at least the 2-byte fixed header.
    while let Ok(Some(packet)) = decode_packet(buf, version, MAX_PACKET) {
        reencode(&packet, version);
    }
}

fuzz_target!(|data: &[u8]| {
    // The first packet of a connection, then the rest in the version it chose (the real path).
    let mut buf = BytesMut::from(data);
    if let Ok(Some((version, connect))) = decode_connect(&mut buf, MAX_PACKET) {
        let connect = Packet::Connect(connect);
        for v in VERSIONS {
            reencode(&connect, v);
        }
        drain(&mut buf, version);
    }
    // The same bytes as post-CONNECT traffic in each version.
    for version in VERSIONS {
        let mut buf = BytesMut::from(data);
        drain(&mut buf, version);
    }
});
