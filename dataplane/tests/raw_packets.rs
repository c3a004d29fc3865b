//! Component tests with a raw-packet client against a real listener on 127.0.0.1:0: the
//! malformed and edge cases a well-behaved client library will not produce.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use cmq::broker::Broker;
use cmq::config::Limits;
use cmq::listener::{self, ListenerKind};
use cmq::metrics::Metrics;
use cmq::state::State;
use mqttbytes::QoS;
use mqttbytes::v5::{self, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Hub {
    addr: std::net::SocketAddr,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(limits: Limits) -> Hub {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let broker = {
        let metrics = Arc::new(Metrics::new());
        let access = cmq::access::Access::empty(metrics.access.clone());
        Broker::new(limits, State::memory(), metrics, access)
    };
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(listener::run(
        socket,
        ListenerKind::Mqtt,
        broker.clone(),
        None,
        shutdown.clone(),
        TaskTracker::new(),
    ));
    Hub {
        addr,
        broker,
        shutdown,
    }
}

struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(hub: &Hub, client_id: &str, props: Option<v5::ConnectProperties>) -> Raw {
        let stream = TcpStream::connect(hub.addr).await.unwrap();
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
        };
        let mut c = v5::Connect::new(client_id);
        c.properties = props;
        let mut out = BytesMut::new();
        c.write(&mut out).unwrap();
        raw.send_bytes(&out).await;
        match raw.recv().await {
            Some(Packet::ConnAck(a)) => assert_eq!(a.code, v5::ConnectReturnCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        cmq::codec::encode_packet(&packet, cmq::codec::ProtocolVersion::V5, &mut out).unwrap();
        self.send_bytes(&out).await;
    }

    /// The next packet, or None when the server closed the connection (5 s timeout).
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(h) = cmq::codec::parse_frame_header(&self.buf, usize::MAX).unwrap() {
                let mut frame = self.buf.split_to(h.frame_len);
                if h.packet_type == 14 && h.remaining_len <= 1 {
                    // mqttbytes 0.6 cannot read a DISCONNECT without property length.
                    let mut d = v5::Disconnect::new();
                    if h.remaining_len == 1 {
                        d.reason_code = frame[2].try_into().unwrap();
                    }
                    return Some(Packet::Disconnect(d));
                }
                if h.packet_type == 2 {
                    // mqttbytes 0.6 cannot read a CONNACK with several properties back
                    // (InsufficientBytes); flags and reason are all these tests need.
                    let code = match frame[h.frame_len - h.remaining_len + 1] {
                        0 => v5::ConnectReturnCode::Success,
                        _ => v5::ConnectReturnCode::UnspecifiedError,
                    };
                    return Some(Packet::ConnAck(v5::ConnAck::new(code, frame[2] & 1 == 1)));
                }
                let copy = frame.clone();
                return Some(
                    v5::read(&mut frame, usize::MAX).unwrap_or_else(|e| panic!("{e:?} {copy:?}")),
                );
            }
            let read =
                tokio::time::timeout(Duration::from_secs(5), self.stream.read_buf(&mut self.buf));
            match read.await.expect("no packet within 5 s") {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Asserts the server sends DISCONNECT with `code` and then closes.
    async fn expect_disconnect(&mut self, code: v5::DisconnectReasonCode) {
        loop {
            match self.recv().await {
                Some(Packet::Disconnect(d)) => {
                    assert_eq!(d.reason_code, code);
                    break;
                }
                Some(Packet::PubAck(_) | Packet::PubRec(_) | Packet::Publish(_)) => continue,
                other => panic!("expected DISCONNECT {code:?}, got {other:?}"),
            }
        }
        assert!(
            self.recv().await.is_none(),
            "connection must close after DISCONNECT"
        );
    }
}

fn queue_full_drops(hub: &Hub) -> u64 {
    let metrics = hub.broker.metrics.render();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("cmq_hub_messages_dropped_total{reason=\"queue_full\"}"))
        .expect("queue_full drop counter is exported");
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn subscribe(filter: &str, qos: QoS) -> Packet {
    let mut s = v5::Subscribe::new(filter, qos);
    s.pkid = 1;
    Packet::Subscribe(s)
}

fn publish(topic: &str, qos: QoS, pkid: u16, payload: &[u8]) -> Packet {
    let mut p = v5::Publish::new(topic, qos, payload.to_vec());
    p.pkid = pkid;
    Packet::Publish(p)
}

#[tokio::test]
async fn oversized_packet_is_refused_from_its_header_with_0x95() {
    let hub = start(Limits {
        max_packet_size: 1024,
        ..Limits::default()
    })
    .await;
    let mut c = Raw::connect(&hub, "big", None).await;
    // Only the fixed header of a 100 KB PUBLISH: the hub must not wait for the body.
    c.send_bytes(&[0x30, 0xA0, 0x8D, 0x06]).await;
    c.expect_disconnect(v5::DisconnectReasonCode::PacketTooLarge)
        .await;
    // The hub still serves others.
    Raw::connect(&hub, "after", None).await;
}

#[tokio::test]
async fn malformed_remaining_length_gets_0x81_and_second_connect_0x82() {
    let hub = start(Limits::default()).await;
    let mut c = Raw::connect(&hub, "m1", None).await;
    c.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await;
    c.expect_disconnect(v5::DisconnectReasonCode::MalformedPacket)
        .await;

    let mut c = Raw::connect(&hub, "m2", None).await;
    let mut out = BytesMut::new();
    v5::Connect::new("m2").write(&mut out).unwrap();
    c.send_bytes(&out).await;
    c.expect_disconnect(v5::DisconnectReasonCode::ProtocolError)
        .await;
    assert!(
        hub.broker
            .metrics
            .render()
            .contains("malformed_packets_total{kind=\"malformed\"} 1")
    );
}

#[tokio::test]
async fn qos2_resend_before_pubrel_is_delivered_once() {
    let hub = start(Limits::default()).await;
    let mut sub = Raw::connect(&hub, "sub", None).await;
    sub.send(subscribe("q2/t", QoS::ExactlyOnce)).await;
    let ack = sub.recv().await;
    assert!(matches!(ack, Some(Packet::SubAck(_))), "{ack:?}");
    let mut publ = Raw::connect(&hub, "pub", None).await;
    publ.send(publish("q2/t", QoS::ExactlyOnce, 9, b"once"))
        .await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(r)) if r.pkid == 9));
    // The PUBREC got "lost": the client resends with DUP before PUBREL.
    let Packet::Publish(mut p) = publish("q2/t", QoS::ExactlyOnce, 9, b"once") else {
        unreachable!()
    };
    p.dup = true;
    publ.send(Packet::Publish(p)).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(r)) if r.pkid == 9));
    publ.send(Packet::PubRel(v5::PubRel::new(9))).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubComp(c)) if c.pkid == 9));
    publ.send(publish("q2/t", QoS::AtMostOnce, 0, b"marker"))
        .await;
    let mut payloads = Vec::new();
    loop {
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                if p.qos == QoS::ExactlyOnce {
                    sub.send(Packet::PubRec(v5::PubRec::new(p.pkid))).await;
                }
                let body = p.payload.to_vec();
                payloads.push(body.clone());
                if body == b"marker" {
                    break;
                }
            }
            Some(Packet::PubRel(r)) => sub.send(Packet::PubComp(v5::PubComp::new(r.pkid))).await,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(payloads, vec![b"once".to_vec(), b"marker".to_vec()]);
}

#[tokio::test]
async fn inbound_qos2_beyond_receive_maximum_gets_0x93() {
    let hub = start(Limits {
        receive_maximum: 2,
        ..Limits::default()
    })
    .await;
    let mut c = Raw::connect(&hub, "rm", None).await;
    for pkid in 1..=3 {
        c.send(publish("rm/t", QoS::ExactlyOnce, pkid, b"x")).await;
    }
    c.expect_disconnect(v5::DisconnectReasonCode::ReceiveMaximumExceeded)
        .await;
}

#[tokio::test]
async fn topic_alias_above_maximum_gets_0x94_and_unknown_alias_0x82() {
    let hub = start(Limits {
        topic_alias_maximum: 4,
        ..Limits::default()
    })
    .await;
    for (alias, topic, code) in [
        (5, "a/b", v5::DisconnectReasonCode::TopicAliasInvalid),
        (2, "", v5::DisconnectReasonCode::ProtocolError),
    ] {
        let mut c = Raw::connect(&hub, "alias", None).await;
        let mut p = v5::Publish::new(topic, QoS::AtMostOnce, b"x".to_vec());
        p.properties = Some(v5::PublishProperties {
            payload_format_indicator: None,
            message_expiry_interval: None,
            topic_alias: Some(alias),
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
            subscription_identifiers: vec![],
            content_type: None,
        });
        c.send(Packet::Publish(p)).await;
        c.expect_disconnect(code).await;
    }
}

#[tokio::test]
async fn stuck_subscriber_is_bounded_and_publisher_keeps_going() {
    let max_queued = 100;
    let hub = start(Limits {
        max_queued_messages: max_queued,
        ..Limits::default()
    })
    .await;
    let mut slow = Raw::connect(&hub, "slow", None).await;
    slow.send(subscribe("flood/#", QoS::AtLeastOnce)).await;
    assert!(matches!(slow.recv().await, Some(Packet::SubAck(_))));
    // `slow` never reads again: its socket buffers fill, then its session queue.
    let mut publ = Raw::connect(&hub, "flood-pub", None).await;
    let payload = vec![7u8; 4096];
    let total = 20_000u32;
    let mut out = BytesMut::new();
    for i in 0..total {
        let pkid = (i % 60_000 + 1) as u16;
        cmq::codec::encode_packet(
            &publish("flood/t", QoS::AtLeastOnce, pkid, &payload),
            cmq::codec::ProtocolVersion::V5,
            &mut out,
        )
        .unwrap();
        if out.len() > 256 * 1024 {
            publ.send_bytes(&out).await;
            out.clear();
        }
    }
    publ.send_bytes(&out).await;
    let mut acks = 0;
    while acks < total {
        match publ.recv().await {
            Some(Packet::PubAck(_)) => acks += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // 20 000 × 4 KiB = 80 MiB were published; the slow session holds at most its limit.
    let dropped = queue_full_drops(&hub);
    assert!(dropped > u64::from(total) / 2, "dropped {dropped}");
    drop(slow);
}

#[tokio::test]
async fn a_slow_but_reading_subscriber_gets_every_qos1_message_through_backpressure() {
    // Queue of 10: publishers are far faster than this subscriber, which reads with pauses.
    let hub = start(Limits {
        max_queued_messages: 10,
        ..Limits::default()
    })
    .await;
    let mut sub = Raw::connect(&hub, "slowreader", None).await;
    sub.send(subscribe("bp/t", QoS::AtLeastOnce)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let total = 2_000u16;
    let publisher = {
        let mut publ = Raw::connect(&hub, "bp-pub", None).await;
        tokio::spawn(async move {
            let mut out = BytesMut::new();
            for pkid in 1..=total {
                cmq::codec::encode_packet(
                    &publish("bp/t", QoS::AtLeastOnce, pkid, &pkid.to_be_bytes()),
                    cmq::codec::ProtocolVersion::V5,
                    &mut out,
                )
                .unwrap();
            }
            publ.send_bytes(&out).await;
            let mut acks = 0;
            while acks < total {
                match publ.recv().await {
                    Some(Packet::PubAck(a)) => {
                        assert_eq!(a.reason, v5::PubAckReason::Success);
                        acks += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        })
    };
    let mut next = 1u16;
    while next <= total {
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                assert_eq!(&p.payload[..], &next.to_be_bytes(), "in order, none lost");
                next += 1;
                sub.send(Packet::PubAck(v5::PubAck::new(p.pkid))).await;
                if next.is_multiple_of(200) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    publisher.await.unwrap();
    assert!(
        !hub.broker
            .metrics
            .render()
            .contains("reason=\"queue_full\"} 1")
    );
}

#[tokio::test]
async fn a_message_left_unacknowledged_keeps_its_packet_id_while_others_cycle() {
    let hub = start(Limits::default()).await;
    let mut sub = Raw::connect(&hub, "never-acks-1", None).await;
    sub.send(subscribe("cycle/t", QoS::AtLeastOnce)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    // More messages than there are packet ids, so every other id is used again.
    let total: u32 = 70_000;
    let mut publ = Raw::connect(&hub, "cycle-pub", None).await;
    let publisher = tokio::spawn(async move {
        let mut out = BytesMut::new();
        for i in 0..total {
            let pkid = (i % 65_000 + 1) as u16;
            cmq::codec::encode_packet(
                &publish("cycle/t", QoS::AtLeastOnce, pkid, &i.to_be_bytes()),
                cmq::codec::ProtocolVersion::V5,
                &mut out,
            )
            .unwrap();
            if out.len() > 64 * 1024 {
                publ.send_bytes(&out).await;
                out.clear();
            }
        }
        publ.send_bytes(&out).await;
        publ
    });
    let mut received = 0u32;
    let mut held = None;
    while received < total {
        let Some(Packet::Publish(p)) = sub.recv().await else {
            panic!("expected PUBLISH")
        };
        assert_eq!(
            &p.payload[..],
            &received.to_be_bytes(),
            "in order, none lost"
        );
        received += 1;
        match held {
            None => held = Some(p.pkid),
            Some(h) => {
                assert_ne!(
                    p.pkid, h,
                    "packet id reused while in flight (message {received})"
                );
                sub.send(Packet::PubAck(v5::PubAck::new(p.pkid))).await;
            }
        }
    }
    sub.send(Packet::PingReq).await;
    assert!(matches!(sub.recv().await, Some(Packet::PingResp)));
    drop(publisher.await.unwrap());
}

#[tokio::test]
async fn dup_on_qos0_and_subscription_id_from_a_client_are_refused() {
    let hub = start(Limits::default()).await;
    let mut c = Raw::connect(&hub, "dup0", None).await;
    // PUBLISH QoS 0 with DUP: 0x38, topic "a", payload "x".
    c.send_bytes(&[0x38, 0x05, 0x00, 0x01, b'a', 0x00, b'x'])
        .await;
    c.expect_disconnect(v5::DisconnectReasonCode::MalformedPacket)
        .await;

    let mut c = Raw::connect(&hub, "subid", None).await;
    // PUBLISH QoS 0, topic "a", properties: subscription identifier 5.
    c.send_bytes(&[0x30, 0x07, 0x00, 0x01, b'a', 0x02, 0x0B, 0x05, b'x'])
        .await;
    c.expect_disconnect(v5::DisconnectReasonCode::ProtocolError)
        .await;
}

#[tokio::test]
async fn a_connection_task_stays_small() {
    // Every connection is one task of this size; idle fleets are mostly this.
    let broker = {
        let metrics = Arc::new(Metrics::new());
        let access = cmq::access::Access::empty(metrics.access.clone());
        Broker::new(Limits::default(), State::memory(), metrics, access)
    };
    let (a, _b) = tokio::io::duplex(10);
    let task = cmq::connection::serve(
        broker,
        cmq::connection::Transport::Memory(a),
        "127.0.0.1:1".parse().unwrap(),
        CancellationToken::new(),
    );
    let size = std::mem::size_of_val(&task);
    eprintln!("connection task future: {size} bytes");
    assert!(size <= 768, "connection task grew to {size} bytes");
}

#[tokio::test]
async fn disconnect_may_keep_a_session_expiry_the_hub_capped_to_zero() {
    let hub = start(Limits {
        max_session_expiry: 0,
        ..Limits::default()
    })
    .await;
    let props = v5::ConnectProperties {
        session_expiry_interval: Some(60),
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: vec![],
        authentication_method: None,
        authentication_data: None,
    };
    let mut c = Raw::connect(&hub, "capped", Some(props)).await;
    let mut d = v5::Disconnect::new();
    d.properties = Some(v5::DisconnectProperties {
        session_expiry_interval: Some(30),
        reason_string: None,
        user_properties: vec![],
        server_reference: None,
    });
    c.send(Packet::Disconnect(d)).await;
    // CONNECT asked for a non-zero expiry, so this is legal: a plain close, no 0x82.
    assert!(c.recv().await.is_none());
    let metrics = hub.broker.metrics.render();
    assert!(
        metrics.contains("cmq_hub_disconnects_total{cause=\"client_disconnect\"} 1"),
        "{metrics}"
    );
}
