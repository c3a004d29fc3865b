#![allow(clippy::unwrap_used)]

use bytes::{BufMut, Bytes, BytesMut};
use mqttbytes::QoS;
use mqttbytes::v5::{self, Packet};
use proptest::prelude::*;

use super::*;

fn v31_connect(client_id: &str) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_slice(&[0, 6]);
    body.put_slice(b"MQIsdp");
    body.put_u8(3);
    body.put_u8(0x02); // clean session
    body.put_u16(30);
    body.put_u16(client_id.len() as u16);
    body.put_slice(client_id.as_bytes());
    let mut out = BytesMut::new();
    out.put_u8(0x10);
    out.put_u8(body.len() as u8);
    out.put_slice(&body);
    out
}

#[test]
fn mqttbytes_rejects_mqtt_3_1_which_we_accept() {
    // The failing case that made `connect.rs` necessary.
    let mut buf = v31_connect("old-device");
    assert!(mqttbytes::v4::read(&mut buf.clone(), 1 << 20).is_err());
    let (version, connect) = decode_connect(&mut buf, 1 << 20).unwrap().unwrap();
    assert_eq!(version, ProtocolVersion::V31);
    assert_eq!(connect.client_id, "old-device");
    assert_eq!(connect.keep_alive, 30);
    assert!(connect.clean_session);
    assert!(buf.is_empty());
}

#[test]
fn mqttbytes_rejects_empty_v5_disconnect_which_we_accept() {
    let mut buf = BytesMut::from(&[0xE0u8, 0x00][..]);
    assert!(mqttbytes::v5::read(&mut buf.clone(), 1 << 20).is_err());
    let packet = decode_packet(&mut buf, ProtocolVersion::V5, 1 << 20)
        .unwrap()
        .unwrap();
    match packet {
        Packet::Disconnect(d) => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::NormalDisconnection)
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn mqttbytes_rejects_disconnect_without_property_length_which_we_accept() {
    let mut buf = BytesMut::from(&[0xE0u8, 0x01, 0x04][..]);
    assert!(mqttbytes::v5::read(&mut buf.clone(), 1 << 20).is_err());
    match decode_packet(&mut buf, ProtocolVersion::V5, 1 << 20)
        .unwrap()
        .unwrap()
    {
        Packet::Disconnect(d) => {
            assert_eq!(
                d.reason_code,
                v5::DisconnectReasonCode::DisconnectWithWillMessage
            )
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn mqttbytes_v5_connack_without_properties_is_malformed_so_we_add_them() {
    // MQTT 5 3.2.2.3: the property length is mandatory in CONNACK; mqttbytes leaves it out.
    let mut raw = BytesMut::new();
    v5::ConnAck::new(v5::ConnectReturnCode::Success, false)
        .write(&mut raw)
        .unwrap();
    assert_eq!(&raw[..], &[0x20, 2, 0, 0]);
}

#[test]
fn suback_and_unsuback_round_trip() {
    let ack = v5::SubAck::new(
        7,
        vec![
            v5::SubscribeReasonCode::QoS1,
            v5::SubscribeReasonCode::QuotaExceeded,
        ],
    );
    let mut ours = BytesMut::new();
    encode_packet(&Packet::SubAck(ack.clone()), ProtocolVersion::V5, &mut ours).unwrap();
    match mqttbytes::v5::read(&mut ours, 1 << 20).unwrap() {
        Packet::SubAck(a) => assert_eq!(a.return_codes, ack.return_codes),
        other => panic!("unexpected {other:?}"),
    }
    let mut v4 = BytesMut::new();
    encode_packet(&Packet::SubAck(ack), ProtocolVersion::V311, &mut v4).unwrap();
    assert_eq!(&v4[..], &[0x90, 4, 0, 7, 1, 0x80]);
}

#[test]
fn connack_v5_always_carries_property_length() {
    let ack = v5::ConnAck::new(v5::ConnectReturnCode::Success, false);
    let mut ours = BytesMut::new();
    encode_packet(&Packet::ConnAck(ack), ProtocolVersion::V5, &mut ours).unwrap();
    assert_eq!(&ours[..], &[0x20, 3, 0, 0, 0]);
}

#[test]
fn oversized_packet_is_refused_from_its_header() {
    // Only the fixed header of a 1 MiB publish has arrived.
    let mut buf = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x40][..]);
    let err = decode_packet(&mut buf, ProtocolVersion::V311, 1024).unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { .. }));
    assert_eq!(err.reason_code(), 0x95);
}

#[test]
fn bad_fixed_headers_are_malformed() {
    let cases: &[&[u8]] = &[
        &[0x36, 0x00],                         // PUBLISH QoS 3
        &[0x80, 0x00],                         // SUBSCRIBE with flags 0
        &[0x62, 0x02, 0x00, 0x01][..2],        // PUBREL with the right flags but cut: fine
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], // 5-byte remaining length
        &[0x00, 0x00],                         // type 0
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let mut buf = BytesMut::from(*bytes);
        let r = decode_packet(&mut buf, ProtocolVersion::V5, 1 << 20);
        if i == 2 {
            assert!(matches!(r, Ok(None)), "case {i}: {r:?}");
        } else {
            assert!(r.is_err(), "case {i}: {r:?}");
        }
    }
}

#[test]
fn connect_reserved_flag_and_will_flags_are_checked() {
    for flags in [0x03u8, 0x0A, 0x20, 0x1C] {
        let mut body = BytesMut::new();
        body.put_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 10, 0, 1, b'x']);
        let mut buf = BytesMut::new();
        buf.put_u8(0x10);
        buf.put_u8(body.len() as u8);
        buf.put_slice(&body);
        let r = decode_connect(&mut buf, 1 << 20);
        assert!(
            matches!(r, Err(ConnectError::Decode(DecodeError::Malformed(_)))),
            "{flags:#x}"
        );
    }
}

#[test]
fn unknown_protocol_level_is_reported() {
    let mut buf = BytesMut::from(&[0x10u8, 10, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 10][..]);
    let r = decode_connect(&mut buf, 1 << 20);
    assert!(
        matches!(r, Err(ConnectError::UnsupportedProtocol { level: 6, .. })),
        "{r:?}"
    );
}

fn arb_props() -> impl Strategy<Value = Option<v5::PublishProperties>> {
    proptest::option::of(
        (
            proptest::option::of(0u8..=1),
            proptest::option::of("[a-z/]{0,12}"),
            proptest::option::of("[a-z/]{1,12}"),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            proptest::collection::vec(("[a-z]{0,5}", "[a-z]{0,5}"), 0..3),
        )
            .prop_map(|(pfi, ct, rt, cd, up)| v5::PublishProperties {
                payload_format_indicator: pfi,
                message_expiry_interval: None,
                topic_alias: None,
                response_topic: rt,
                correlation_data: cd.map(Bytes::from),
                user_properties: up,
                subscription_identifiers: Vec::new(),
                content_type: ct,
            }),
    )
}

proptest! {
    #[test]
    fn outgoing_publish_round_trips_through_mqttbytes(
        topic in "[a-z0-9/ $.]{1,40}",
        qos in 0u8..=2,
        retain in any::<bool>(),
        dup in any::<bool>(),
        pkid in 1u16..,
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        v5 in any::<bool>(),
        props in arb_props(),
        expiry in proptest::option::of(any::<u32>()),
        alias in proptest::option::of(1u16..),
        sub_ids in proptest::collection::vec(1u32..268_435_455, 0..3),
    ) {
        let p = OutgoingPublish {
            topic: &topic, qos, retain, dup, pkid, payload: &payload, v5,
            props: props.as_ref(), expiry, topic_alias: alias, sub_ids: &sub_ids,
        };
        let mut buf = BytesMut::new();
        encode_publish(&p, &mut buf);
        prop_assert_eq!(buf.len(), publish_size(&p));
        let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
        let decoded = decode_packet(&mut buf, version, usize::MAX).unwrap().unwrap();
        let Packet::Publish(d) = decoded else { panic!("not a publish") };
        prop_assert_eq!(&d.topic, &topic);
        prop_assert_eq!(d.qos as u8, qos);
        prop_assert_eq!(d.retain, retain);
        prop_assert_eq!(d.dup, dup);
        if qos > 0 { prop_assert_eq!(d.pkid, pkid); }
        prop_assert_eq!(&d.payload[..], &payload[..]);
        if v5 {
            let dp = d.properties.unwrap_or_else(|| v5::PublishProperties {
                payload_format_indicator: None, message_expiry_interval: None, topic_alias: None,
                response_topic: None, correlation_data: None, user_properties: vec![],
                subscription_identifiers: vec![], content_type: None,
            });
            prop_assert_eq!(dp.message_expiry_interval, expiry);
            prop_assert_eq!(dp.topic_alias, alias);
            let ids: Vec<u32> = dp.subscription_identifiers.iter().map(|i| *i as u32).collect();
            prop_assert_eq!(ids, sub_ids);
            if let Some(p) = props {
                prop_assert_eq!(dp.user_properties, p.user_properties);
                prop_assert_eq!(dp.content_type, p.content_type);
                prop_assert_eq!(dp.response_topic, p.response_topic);
                prop_assert_eq!(dp.correlation_data, p.correlation_data);
                prop_assert_eq!(dp.payload_format_indicator, p.payload_format_indicator);
            }
        }
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode_packet(&mut buf, version, 1 << 16) {}
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = decode_connect(&mut buf, 1 << 16);
        }
    }
}

#[test]
fn subscribe_options_survive_decoding() {
    let mut f = v5::SubscribeFilter::new("a/+".into(), QoS::AtLeastOnce);
    f.set_nolocal(true).set_preserve_retain(true);
    let s = v5::Subscribe {
        pkid: 3,
        filters: vec![f],
        properties: None,
    };
    let mut buf = BytesMut::new();
    s.write(&mut buf).unwrap();
    let Packet::Subscribe(d) = decode_packet(&mut buf, ProtocolVersion::V5, 1 << 20)
        .unwrap()
        .unwrap()
    else {
        panic!("not subscribe")
    };
    assert!(d.filters[0].nolocal);
    assert!(d.filters[0].preserve_retain);
}

#[test]
fn v5_unsubscribe_is_read_without_mqttbytes() {
    let mut u = v5::Unsubscribe::new("a/+");
    u.pkid = 42;
    u.filters.push("$share/g/b".into());
    let mut buf = BytesMut::new();
    u.write(&mut buf).unwrap();
    let Packet::Unsubscribe(d) = decode_packet(&mut buf, ProtocolVersion::V5, 1 << 20)
        .unwrap()
        .unwrap()
    else {
        panic!("not unsubscribe")
    };
    assert_eq!(d.pkid, 42);
    assert_eq!(d.filters, vec!["a/+".to_string(), "$share/g/b".to_string()]);
    // Truncated filter and oversized property length are malformed, not panics.
    for bad in [
        &[0xA2u8, 5, 0, 1, 0, 0, 9][..],
        &[0xA2, 4, 0, 1, 0x7F, 0][..],
    ] {
        let mut buf = BytesMut::from(bad);
        assert!(matches!(
            decode_packet(&mut buf, ProtocolVersion::V5, 1 << 20),
            Err(DecodeError::Malformed(_))
        ));
    }
}
