"""MQTT 5 properties: message expiry, topic aliases, maximum packet size,
forwarding of user/content/response properties, payload format indicator."""

import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from helpers import (
    DISCONNECT, PUBACK, PUBLISH, PahoClient, RawClient, publish_packet, props,
    sentinel_roundtrip, uid, wait_for, Closed,
)


def test_retained_message_expiry(b):
    topic, marker = uid("exp"), uid("mk")
    pub = PahoClient(b).connect()
    pub.publish(topic, b"short", qos=1, retain=True,
                properties=props(MessageExpiryInterval=1))
    time.sleep(2.2)
    c = PahoClient(b).connect()
    c.subscribe(marker, qos=1)
    c.subscribe(topic, qos=1)
    sentinel_roundtrip(c, pub, marker)
    assert c.payloads(topic) == [], "expired retained message must not be delivered"


def test_message_expiry_remaining_interval(b):
    topic = uid("expr")
    pub = PahoClient(b).connect()
    pub.publish(topic, b"long", qos=1, retain=True, properties=props(MessageExpiryInterval=10))
    time.sleep(2.1)
    c = PahoClient(b).connect()
    c.subscribe(topic, qos=1)
    m = c.wait_messages(1)[0]
    assert m.payload == b"long"
    remaining = m.properties.MessageExpiryInterval
    assert 0 < remaining <= 9, f"remaining expiry {remaining} should be reduced by the time held"


def test_message_expiry_forwarded_on_live_delivery(b):
    topic = uid("expl")
    c = PahoClient(b).connect()
    c.subscribe(topic, qos=1)
    pub = PahoClient(b).connect()
    pub.publish(topic, b"x", qos=1, properties=props(MessageExpiryInterval=30))
    m = c.wait_messages(1)[0]
    assert 0 < m.properties.MessageExpiryInterval <= 30


def test_queued_message_expires_while_offline(b):
    cid, topic = uid("expq"), uid("expq")
    sub = PahoClient(b, client_id=cid).connect(
        properties=props(PacketTypes.CONNECT, SessionExpiryInterval=60))
    sub.subscribe(topic, qos=1)
    sub.disconnect()
    pub = PahoClient(b).connect()
    pub.publish(topic, b"expires", qos=1, properties=props(MessageExpiryInterval=1))
    pub.publish(topic, b"stays", qos=1)
    time.sleep(2.2)
    sub = PahoClient(b, client_id=cid).connect(
        clean_start=False, properties=props(PacketTypes.CONNECT, SessionExpiryInterval=60))
    assert sub.session_present
    sub.wait_messages(1)
    time.sleep(0.3)
    assert sub.payloads() == [b"stays"]


def test_topic_alias_client_to_broker(b):
    topic = uid("alias")
    sub = PahoClient(b).connect()
    sub.subscribe(topic, qos=1)
    r = RawClient(b.host, b.port)
    ack = r.connect(uid("al"))
    assert ack.props.get("topic_alias_maximum", 0) >= 1, f"broker must accept topic aliases: {ack!r}"
    r.publish(topic, b"first", qos=1, props={"topic_alias": 1})
    r.publish("", b"second", qos=1, props={"topic_alias": 1})
    r.publish(b"", b"third", qos=0, props={"topic_alias": 1})
    msgs = sub.wait_messages(3)
    assert [(m.topic, m.payload) for m in msgs] == [(topic, b"first"), (topic, b"second"), (topic, b"third")]
    # aliases are not forwarded as-is to subscribers that did not ask for them
    assert not hasattr(msgs[1].properties, "TopicAlias")
    r.disconnect()


def test_topic_alias_remap(b):
    t1, t2 = uid("a1"), uid("a2")
    sub = PahoClient(b).connect()
    sub.subscribe(t1, qos=1)
    sub.subscribe(t2, qos=1)
    r = RawClient(b.host, b.port)
    r.connect(uid("alr"))
    r.publish(t1, b"1", qos=1, props={"topic_alias": 1})
    r.publish(t2, b"2", qos=1, props={"topic_alias": 1})  # re-map alias 1
    r.publish("", b"3", qos=1, props={"topic_alias": 1})
    msgs = sub.wait_messages(3)
    assert [(m.topic, m.payload) for m in msgs] == [(t1, b"1"), (t2, b"2"), (t2, b"3")]
    r.disconnect()


def test_unknown_topic_alias_is_protocol_error(b):
    r = RawClient(b.host, b.port)
    r.connect(uid("alu"))
    r.send(publish_packet("", b"x", qos=0, props={"topic_alias": 1}))
    seen = r.wait_closed()
    for p in seen:
        assert p.type == DISCONNECT and p.reason in (0x82, 0x94), seen


def test_topic_alias_above_maximum(b):
    r = RawClient(b.host, b.port)
    ack = r.connect(uid("alx"))
    maximum = ack.props.get("topic_alias_maximum", 0)
    r.send(publish_packet("t/x", b"x", qos=0, props={"topic_alias": maximum + 1}))
    seen = r.wait_closed()
    for p in seen:
        assert p.type == DISCONNECT and p.reason == 0x94, seen


def _resolve_aliases(pkts, maximum):
    aliases, out = {}, []
    for p in pkts:
        alias = p.props.get("topic_alias")
        topic = p.topic
        if alias is not None:
            assert 1 <= alias <= maximum, f"alias {alias} exceeds client maximum {maximum}"
            if topic:
                aliases[alias] = topic
            else:
                assert alias in aliases, f"broker used unset alias {alias}"
                topic = aliases[alias]
        else:
            assert topic, "empty topic without alias"
        out.append((topic, p.payload))
    return out


def test_broker_to_client_aliases_are_valid(b):
    """If the broker uses outbound aliases they must be within the client's
    Topic Alias Maximum and resolvable; without a maximum it must not use them."""
    topic = uid("oal")
    r = RawClient(b.host, b.port)
    r.connect(uid("oal"), props={"topic_alias_maximum": 2})
    r.subscribe(topic, 0)
    plain = RawClient(b.host, b.port)
    plain.connect(uid("noal"))
    plain.subscribe(topic, 0)
    pub = PahoClient(b).connect()
    for i in range(4):
        pub.publish(topic, b"%d" % i, qos=1)
    got = [p for p in r.recv_all(1.0) if p.type == PUBLISH]
    assert _resolve_aliases(got, 2) == [(topic.encode(), b"%d" % i) for i in range(4)]
    got_plain = [p for p in plain.recv_all(0.5) if p.type == PUBLISH]
    assert len(got_plain) == 4
    assert all("topic_alias" not in p.props and p.topic == topic.encode() for p in got_plain)


def test_client_maximum_packet_size_respected(b):
    topic = uid("mps")
    r = RawClient(b.host, b.port)
    r.connect(uid("mps"), props={"maximum_packet_size": 100})
    r.subscribe(topic, 1)
    pub = PahoClient(b).connect()
    pub.publish(topic, b"B" * 500, qos=1)
    pub.publish(topic, b"small", qos=1)
    got = [p for p in r.recv_all(1.0) if p.type == PUBLISH]
    assert [p.payload for p in got] == [b"small"], "oversized message must be dropped for this client"
    r.send(b"\xc0\x00")
    assert r.recv().type == 13, "connection must stay up"
    r.disconnect()


def test_properties_forwarded_intact(b):
    topic = uid("props")
    sub = PahoClient(b).connect()
    sub.subscribe(topic, qos=1)
    v311 = PahoClient(b, version=4).connect()
    v311.subscribe(topic, qos=1)
    pub = PahoClient(b).connect()
    p = props(
        UserProperty=[("a", "1"), ("b", "2"), ("a", "3")],
        ContentType="text/plain; charset=utf-8",
        ResponseTopic="reply/here",
        CorrelationData=b"\x00\x01corr\xff",
        PayloadFormatIndicator=1,
    )
    pub.publish(topic, "héllo".encode(), qos=1, properties=p)
    m = sub.wait_messages(1)[0]
    assert m.payload == "héllo".encode()
    mp = m.properties
    assert mp.UserProperty == [("a", "1"), ("b", "2"), ("a", "3")], "user properties (order kept)"
    assert mp.ContentType == "text/plain; charset=utf-8"
    assert mp.ResponseTopic == "reply/here"
    assert mp.CorrelationData == b"\x00\x01corr\xff"
    assert mp.PayloadFormatIndicator == 1
    # an MQTT 3.1.1 subscriber gets the same payload (no properties)
    assert v311.wait_messages(1)[0].payload == "héllo".encode()


def test_request_response_roundtrip(b):
    req_topic, resp_topic = uid("req"), uid("resp")
    responder = PahoClient(b).connect()
    responder.subscribe(req_topic, qos=1)
    requester = PahoClient(b).connect()
    requester.subscribe(resp_topic, qos=1)
    requester.publish(req_topic, b"ping", qos=1,
                      properties=props(ResponseTopic=resp_topic, CorrelationData=b"id-7"))
    req = responder.wait_messages(1)[0]
    responder.publish(req.properties.ResponseTopic, b"pong", qos=1,
                      properties=props(CorrelationData=req.properties.CorrelationData))
    resp = requester.wait_messages(1)[0]
    assert resp.payload == b"pong" and resp.properties.CorrelationData == b"id-7"


# MQTT 5 §3.3.2.3.2: a Server MAY validate the payload against the Payload Format
# Indicator and reply 0x99. CMQ validates; mosquitto 2.0.11 does not (PUBACK 0x00).
@pytest.mark.cmq_only
@pytest.mark.parametrize("qos", [1, 2])
def test_payload_format_invalid_utf8_rejected(b, qos):
    topic = uid("pfi")
    sub = PahoClient(b).connect()
    sub.subscribe(topic, qos=1)
    r = RawClient(b.host, b.port)
    r.connect(uid("pfi"))
    r.send(publish_packet(topic, b"\xff\xfe\xfd", qos=qos, packet_id=9,
                          props={"payload_format_indicator": 1}))
    try:
        p = r.recv(5)
    except Closed:
        pytest.fail("closed without PUBACK/PUBREC/DISCONNECT 0x99")
    assert p.type in (PUBACK, 5, DISCONNECT), p
    assert p.reason == 0x99, f"expected Payload format invalid (0x99): {p!r}"
    time.sleep(0.3)
    assert sub.payloads(topic) == [], "invalid payload must not be forwarded"

