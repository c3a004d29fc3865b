//! MQTT 3.1.1 packets as MQTT 5 types, so the session logic handles one set of types.

use mqttbytes::v4;
use mqttbytes::v5;

/// Converts an incoming 3.1/3.1.1 packet.
pub fn v4_to_v5(packet: v4::Packet) -> v5::Packet {
    match packet {
        v4::Packet::Connect(c) => v5::Packet::Connect(connect_v4_to_v5(c)),
        v4::Packet::Publish(p) => v5::Packet::Publish(v5::Publish {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: p.topic,
            pkid: p.pkid,
            properties: None,
            payload: p.payload,
        }),
        v4::Packet::PubAck(a) => v5::Packet::PubAck(v5::PubAck::new(a.pkid)),
        v4::Packet::PubRec(a) => v5::Packet::PubRec(v5::PubRec::new(a.pkid)),
        v4::Packet::PubRel(a) => v5::Packet::PubRel(v5::PubRel::new(a.pkid)),
        v4::Packet::PubComp(a) => v5::Packet::PubComp(v5::PubComp::new(a.pkid)),
        v4::Packet::Subscribe(s) => v5::Packet::Subscribe(v5::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| v5::SubscribeFilter::new(f.path, f.qos))
                .collect(),
            properties: None,
        }),
        v4::Packet::Unsubscribe(u) => v5::Packet::Unsubscribe(v5::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
            properties: None,
        }),
        v4::Packet::PingReq => v5::Packet::PingReq,
        v4::Packet::PingResp => v5::Packet::PingResp,
        v4::Packet::Disconnect => v5::Packet::Disconnect(v5::Disconnect::new()),
        // Server-to-client packets: the caller rejects them as protocol errors.
        v4::Packet::ConnAck(_) => v5::Packet::PingResp,
        v4::Packet::SubAck(_) | v4::Packet::UnsubAck(_) => v5::Packet::PingResp,
    }
}

/// Converts a 3.1/3.1.1 CONNECT.
pub fn connect_v4_to_v5(c: v4::Connect) -> v5::Connect {
    v5::Connect {
        protocol: mqttbytes::Protocol::V4,
        keep_alive: c.keep_alive,
        client_id: c.client_id,
        clean_session: c.clean_session,
        last_will: c.last_will.map(|w| v5::LastWill {
            topic: w.topic,
            message: w.message,
            qos: w.qos,
            retain: w.retain,
            properties: None,
        }),
        login: c.login.map(|l| v5::Login {
            username: l.username,
            password: l.password,
        }),
        properties: None,
    }
}
