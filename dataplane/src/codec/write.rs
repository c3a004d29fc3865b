//! Control packets the server sends (CONNACK, SUBACK, acks, DISCONNECT), written in the
//! connection's protocol version with mqttbytes' writers.
//!
//! One mqttbytes 0.6 writer bug is avoided here rather than patched: `v5::ConnAck` without
//! properties omits the property length that MQTT 5 requires, so CONNACK always gets a
//! (possibly empty) property set. See `tests.rs`.

use bytes::BytesMut;
use mqttbytes::v4;
use mqttbytes::v5::{self, Packet};

use super::ProtocolVersion;

/// Appends `packet` to `buf`, in `version`. Packets that a 3.1.1 server never sends
/// (DISCONNECT, AUTH) are skipped for 3.1/3.1.1.
pub fn encode_packet(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), mqttbytes::Error> {
    if version.is_v5() {
        encode_v5(packet, buf)
    } else {
        encode_v4(packet, buf)
    }
}

fn encode_v5(packet: &Packet, buf: &mut BytesMut) -> Result<(), mqttbytes::Error> {
    match packet {
        Packet::ConnAck(a) if a.properties.is_none() => {
            let mut a = a.clone();
            a.properties = Some(v5::ConnAckProperties::new());
            a.write(buf)?;
        }
        Packet::ConnAck(a) => {
            a.write(buf)?;
        }
        Packet::SubAck(a) => {
            a.write(buf)?;
        }
        Packet::UnsubAck(a) => {
            a.write(buf)?;
        }
        Packet::PubAck(a) => {
            a.write(buf)?;
        }
        Packet::PubRec(a) => {
            a.write(buf)?;
        }
        Packet::PubRel(a) => {
            a.write(buf)?;
        }
        Packet::PubComp(a) => {
            a.write(buf)?;
        }
        Packet::PingResp => {
            v5::PingResp.write(buf)?;
        }
        Packet::PingReq => {
            v5::PingReq.write(buf)?;
        }
        Packet::Disconnect(d) => {
            d.write(buf)?;
        }
        Packet::Publish(p) => {
            p.write(buf)?;
        }
        Packet::Connect(c) => {
            c.write(buf)?;
        }
        Packet::Subscribe(s) => {
            s.write(buf)?;
        }
        Packet::Unsubscribe(u) => {
            u.write(buf)?;
        }
    }
    Ok(())
}

fn encode_v4(packet: &Packet, buf: &mut BytesMut) -> Result<(), mqttbytes::Error> {
    match packet {
        Packet::ConnAck(a) => {
            v4::ConnAck::new(connack_code_v4(a.code), a.session_present).write(buf)?;
        }
        Packet::SubAck(a) => {
            let codes = a
                .return_codes
                .iter()
                .map(|c| match *c as u8 {
                    0 => v4::SubscribeReasonCode::Success(mqttbytes::QoS::AtMostOnce),
                    1 => v4::SubscribeReasonCode::Success(mqttbytes::QoS::AtLeastOnce),
                    2 => v4::SubscribeReasonCode::Success(mqttbytes::QoS::ExactlyOnce),
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect();
            v4::SubAck::new(a.pkid, codes).write(buf)?;
        }
        Packet::UnsubAck(a) => {
            v4::UnsubAck::new(a.pkid).write(buf)?;
        }
        Packet::PubAck(a) => {
            v4::PubAck::new(a.pkid).write(buf)?;
        }
        Packet::PubRec(a) => {
            v4::PubRec::new(a.pkid).write(buf)?;
        }
        Packet::PubRel(a) => {
            v4::PubRel::new(a.pkid).write(buf)?;
        }
        Packet::PubComp(a) => {
            v4::PubComp::new(a.pkid).write(buf)?;
        }
        Packet::PingResp => {
            v4::PingResp.write(buf)?;
        }
        Packet::PingReq => {
            v4::PingReq.write(buf)?;
        }
        Packet::Publish(p) => {
            let mut out = v4::Publish::from_bytes(p.topic.clone(), p.qos, p.payload.clone());
            out.pkid = p.pkid;
            out.dup = p.dup;
            out.retain = p.retain;
            out.write(buf)?;
        }
        // A 3.1.1 server closes the connection instead of sending DISCONNECT.
        Packet::Disconnect(_) => {}
        Packet::Connect(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => {}
    }
    Ok(())
}

/// MQTT 5 CONNACK reason → 3.1.1 return code (MQTT 5 spec table 3-1 mapping).
fn connack_code_v4(code: v5::ConnectReturnCode) -> v4::ConnectReturnCode {
    use v5::ConnectReturnCode as C5;
    match code {
        C5::Success => v4::ConnectReturnCode::Success,
        C5::UnsupportedProtocolVersion => v4::ConnectReturnCode::RefusedProtocolVersion,
        C5::ClientIdentifierNotValid => v4::ConnectReturnCode::BadClientId,
        C5::BadUserNamePassword => v4::ConnectReturnCode::BadUserNamePassword,
        C5::NotAuthorized | C5::Banned => v4::ConnectReturnCode::NotAuthorized,
        _ => v4::ConnectReturnCode::ServiceUnavailable,
    }
}
