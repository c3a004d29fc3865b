"""Persistent sessions: offline queueing and subscription persistence."""

import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from helpers import PUBLISH, PahoClient, RawClient, ack_packet, props, uid, wait_for, PUBACK


def _persistent(b, cid, version=5, clean=False, expiry=60):
    if version == 5:
        return PahoClient(b, client_id=cid).connect(
            clean_start=clean, properties=props(PacketTypes.CONNECT, SessionExpiryInterval=expiry))
    return PahoClient(b, client_id=cid, version=version, clean=clean).connect()


@pytest.mark.parametrize("version", [4, 5])
def test_qos1_qos2_queued_while_offline(b, version):
    cid, topic = uid("off"), uid("off")
    sub = _persistent(b, cid, version, clean=(version == 5))
    sub.subscribe(topic, qos=2)
    sub.disconnect()
    pub = PahoClient(b).connect()
    pub.publish(topic, b"q1", qos=1)
    pub.publish(topic, b"q2", qos=2)
    sub = _persistent(b, cid, version, clean=False)
    assert sub.session_present
    msgs = sub.wait_messages(2)
    assert [(m.payload, m.qos) for m in msgs] == [(b"q1", 1), (b"q2", 2)]
    time.sleep(0.2)
    assert len(sub.get_messages()) == 2
    sub.disconnect()


def test_subscriptions_survive_reconnect(b):
    cid, topic = uid("subs"), uid("subs")
    sub = _persistent(b, cid, clean=True)
    sub.subscribe(topic, qos=1)
    sub.disconnect()
    sub = _persistent(b, cid)
    assert sub.session_present
    pub = PahoClient(b).connect()
    pub.publish(topic, b"live", qos=1)
    assert [m.payload for m in sub.wait_messages(1)] == [b"live"]


def test_offline_messages_not_delivered_after_clean_start(b):
    cid, topic = uid("cln"), uid("cln")
    sub = _persistent(b, cid, clean=True)
    sub.subscribe(topic, qos=1)
    sub.disconnect()
    pub = PahoClient(b).connect()
    pub.publish(topic, b"lost", qos=1)
    sub = _persistent(b, cid, clean=True)
    assert not sub.session_present
    time.sleep(0.5)
    assert sub.payloads() == []


def test_offline_messages_dropped_after_session_expiry(b):
    cid, topic = uid("sexp"), uid("sexp")
    sub = _persistent(b, cid, clean=True, expiry=1)
    sub.subscribe(topic, qos=1)
    sub.disconnect()
    pub = PahoClient(b).connect()
    pub.publish(topic, b"lost", qos=1)
    time.sleep(2.5)
    sub = _persistent(b, cid, clean=False, expiry=1)
    assert not sub.session_present
    time.sleep(0.5)
    assert sub.payloads() == []


def test_offline_queue_order_preserved(b):
    cid, topic = uid("ord"), uid("ord")
    sub = _persistent(b, cid, clean=True)
    sub.subscribe(topic, qos=1)
    sub.disconnect()
    pub = PahoClient(b).connect()
    for i in range(8):
        pub.publish(topic, b"%d" % i, qos=1)
    sub = _persistent(b, cid)
    msgs = sub.wait_messages(8)
    assert [m.payload for m in msgs] == [b"%d" % i for i in range(8)]


# CMQ keeps QoS 0 messages queued for offline persistent sessions (up to the queue
# limit). mosquitto only does so with queue_qos0_messages, which is off by default.
@pytest.mark.cmq_only
@pytest.mark.memory_state_only(
    reason="cluster mode stores only QoS 1/2 for offline sessions; QoS 0 stays out of JetStream")
def test_qos0_queued_while_offline(b):
    cid, topic = uid("q0"), uid("q0")
    sub = _persistent(b, cid, clean=True)
    sub.subscribe(topic, qos=0)
    sub.disconnect()
    pub = PahoClient(b).connect()
    pub.publish(topic, b"zero", qos=0)
    pub.publish(topic, b"one", qos=1)
    time.sleep(0.2)
    sub = _persistent(b, cid)
    msgs = sub.wait_messages(2)
    assert [(m.payload, m.qos) for m in msgs] == [(b"zero", 0), (b"one", 0)]


def test_session_state_after_takeover_with_clean_start_false(b):
    """A takeover with clean_start=0 keeps subscriptions of the session."""
    cid, topic = uid("tks"), uid("tks")
    first = RawClient(b.host, b.port)
    first.connect(cid, props={"session_expiry_interval": 60})
    first.subscribe(topic, 1)
    second = RawClient(b.host, b.port)
    ack = second.connect(cid, clean=False, props={"session_expiry_interval": 60})
    assert ack.session_present
    first.wait_closed()
    pub = PahoClient(b).connect()
    pub.publish(topic, b"x", qos=1)
    p = second.recv_type(PUBLISH)
    assert p.payload == b"x"
    second.send(ack_packet(PUBACK, p.packet_id))
    second.disconnect()
