"""Broker limits (CLI flags). Most are CMQ-only: mosquitto lacks the option or
answers differently (e.g. it just drops the socket instead of a CONNACK 0x97)."""

import signal
import socket
import time

import pytest

from helpers import (
    CONNACK, DISCONNECT, PUBACK, PUBLISH, SUBACK, PahoClient, RawClient, ack_packet,
    check_broker_alive, connect_packet, publish_packet, subscribe_packet, uid, wait_for, Closed,
)


# --max-connections 3 -> the 4th client gets CONNACK 0x97 (MQTT 5) / 0x03 (3.1.1).
# mosquitto has no such refusal: its max_connections only drops sockets (and with
# the generated config 2.0.11 even accepted the 4th client), so CMQ-only.
@pytest.mark.cmq_only
@pytest.mark.parametrize("version,code", [(5, 0x97), (4, 0x03)])
def test_max_connections(broker, version, code):
    b = broker(max_connections=3)
    clients = []
    for i in range(3):
        r = RawClient(b.host, b.port, version=version)
        r.connect(uid("mc"))
        clients.append(r)
    extra = RawClient(b.host, b.port, version=version)
    extra.send(connect_packet(uid("mc4"), version=version))
    seen = extra.wait_closed()
    assert len(seen) == 1 and seen[0].type == CONNACK, seen
    assert seen[0].reason == code, seen
    # existing connections are unaffected, and a slot frees up after a disconnect
    clients[0].send(b"\xc0\x00")
    assert clients[0].recv().type == 13
    clients[1].disconnect()
    def can_connect():
        r = RawClient(b.host, b.port, version=version)
        r.send(connect_packet(uid("mc5"), version=version))
        try:
            ok = r.recv(2).reason == 0
        except (Closed, TimeoutError):
            ok = False
        r.close()
        return ok
    assert wait_for(can_connect, timeout=5)


def test_max_packet_size_advertised_and_enforced(broker):
    b = broker(max_packet_size=1024)
    r = RawClient(b.host, b.port)
    ack = r.connect(uid("mps"))
    assert ack.props.get("maximum_packet_size") == 1024, ack
    topic = uid("mps")
    r.subscribe(topic, 1)
    r.publish(topic, b"s" * 500, qos=1)
    assert r.recv_type(PUBLISH).payload == b"s" * 500
    r.send(publish_packet(topic, b"L" * 2000, qos=1, packet_id=77))
    seen = r.wait_closed()
    assert [p.type for p in seen if p.type != PUBLISH] == [DISCONNECT], seen
    assert seen[-1].reason == 0x95, seen
    check_broker_alive(b)


def test_max_packet_size_mqtt311_closes(broker):
    b = broker(max_packet_size=1024)
    r = RawClient(b.host, b.port, version=4)
    r.connect(uid("mps4"))
    r.send(publish_packet("big/topic", b"L" * 2000, qos=0, version=4))
    assert r.wait_closed() == []
    check_broker_alive(b, version=4)


def _reason_for_publish(r, topic):
    """Send a QoS 1 PUBLISH; return the PUBACK or DISCONNECT reason code."""
    r.send(publish_packet(topic, b"x", qos=1, packet_id=99))
    r.pending = [p for p in r.pending if p.type != PUBLISH]
    deadline = time.monotonic() + 5
    while True:
        try:
            p = r.recv(max(0.01, deadline - time.monotonic()))
        except Closed:
            return None
        if p.type == PUBLISH:  # deliveries from the client's own subscriptions
            continue
        assert p.type in (PUBACK, DISCONNECT), p
        return p.reason


@pytest.mark.cmq_only
def test_max_topic_levels(broker):
    b = broker(max_topic_levels=3)
    r = RawClient(b.host, b.port)
    r.connect(uid("mtl"))
    assert r.subscribe("a/b/c", 1).reasons == [1]
    assert r.subscribe("a/b/c/d", 1).reasons[0] in (0x8F, 0x80)
    assert r.publish("a/b/c", b"ok", qos=1).reason in (0x00, 0x10)
    assert _reason_for_publish(r, "a/b/c/d") == 0x90
    check_broker_alive(b)


@pytest.mark.cmq_only
def test_max_topic_levels_mqtt311(broker):
    b = broker(max_topic_levels=3)
    r = RawClient(b.host, b.port, version=4)
    r.connect(uid("mtl4"))
    assert r.subscribe("a/b/c/d", 1).reasons == [0x80]
    r.send(publish_packet("a/b/c/d", b"x", qos=1, packet_id=5, version=4))
    # 3.1.1 has no negative PUBACK: the broker closes the connection
    assert r.wait_closed() == []


@pytest.mark.cmq_only
def test_max_topic_length(broker):
    b = broker(max_topic_length=32)
    r = RawClient(b.host, b.port)
    r.connect(uid("mtlen"))
    long_topic = "t/" + "x" * 40
    assert r.subscribe("t/" + "x" * 10, 1).reasons == [1]
    assert r.subscribe(long_topic, 1).reasons[0] in (0x8F, 0x80)
    assert _reason_for_publish(r, long_topic) == 0x90
    check_broker_alive(b)


@pytest.mark.cmq_only
@pytest.mark.parametrize("version,code", [(5, 0x97), (4, 0x80)])
def test_max_subscriptions(broker, version, code):
    b = broker(max_subscriptions=2)
    r = RawClient(b.host, b.port, version=version)
    r.connect(uid("msub"))
    assert r.subscribe("s/1", 1).reasons == [1]
    assert r.subscribe("s/2", 1).reasons == [1]
    assert r.subscribe("s/3", 1).reasons == [code]
    # the two accepted subscriptions still work
    pub = PahoClient(b).connect()
    pub.publish("s/2", b"ok", qos=1)
    p = r.recv_type(PUBLISH)
    assert p.payload == b"ok" and p.topic == b"s/2"
    r.disconnect()


@pytest.mark.cmq_only
def test_connect_timeout(broker):
    b = broker(connect_timeout_ms=500)
    s = socket.create_connection((b.host, b.port), timeout=5)
    t0 = time.monotonic()
    data = s.recv(100)  # blocks until the broker closes us (or 5 s timeout -> error)
    elapsed = time.monotonic() - t0
    assert data == b""
    assert elapsed <= 2.0, f"silent socket closed only after {elapsed:.2f}s"
    s.close()
    check_broker_alive(b)


def test_max_queued_messages_offline(broker):
    b = broker(max_queued_messages=10)
    cid, topic = uid("mq"), uid("mq")
    r = RawClient(b.host, b.port)
    r.connect(cid, props={"session_expiry_interval": 60})
    r.subscribe(topic, 1)
    r.disconnect()
    pub = PahoClient(b).connect()
    for i in range(50):
        pub.publish(topic, b"%02d" % i, qos=1)
    r = RawClient(b.host, b.port)
    assert r.connect(cid, clean=False, props={"session_expiry_interval": 60}).session_present
    got = []
    for p in r.recv_all(1.5):
        if p.type == PUBLISH:
            got.append(p.payload)
            r.send(ack_packet(PUBACK, p.packet_id))
    got += [p.payload for p in r.recv_all(0.5) if p.type == PUBLISH]
    assert 1 <= len(got) <= 10, f"{len(got)} queued messages delivered with limit 10"
    assert got == sorted(got), "queued messages out of order"
    r.disconnect()
    check_broker_alive(b)


def test_receive_maximum_advertised(broker):
    b = broker(receive_maximum=5)
    r = RawClient(b.host, b.port)
    ack = r.connect(uid("rmx"))
    assert ack.props.get("receive_maximum") == 5, ack
    r.disconnect()


# Receive Maximum exceeded by the client -> DISCONNECT 0x93 (MQTT 5 §3.3.4,
# MQTT-3.3.4-7/4.9). mosquitto 2.0.11 instead answers PUBREC 0x97 and keeps the
# connection, hence CMQ-only.
@pytest.mark.cmq_only
def test_receive_maximum_exceeded_by_client(broker):
    b = broker(receive_maximum=2)
    r = RawClient(b.host, b.port)
    r.connect(uid("rmx2"))
    for pid in (1, 2, 3):  # QoS 2 without PUBREL: stays in flight
        r.send(publish_packet("rm/x", b"x", qos=2, packet_id=pid))
    seen = r.wait_closed()
    disc = [p for p in seen if p.type == DISCONNECT]
    assert disc and disc[0].reason == 0x93, seen


def test_topic_alias_maximum(broker):
    b = broker(topic_alias_maximum=3)
    r = RawClient(b.host, b.port)
    ack = r.connect(uid("tam"))
    assert ack.props.get("topic_alias_maximum") == 3, ack
    assert r.publish("tam/x", b"x", qos=1, props={"topic_alias": 3}).reason in (0, 0x10)
    r.send(publish_packet("tam/y", b"y", qos=0, props={"topic_alias": 4}))
    seen = r.wait_closed()
    assert seen and seen[-1].type == DISCONNECT and seen[-1].reason == 0x94, seen


@pytest.mark.cmq_only
def test_max_session_expiry(broker):
    b = broker(max_session_expiry=2)
    cid = uid("mse")
    r = RawClient(b.host, b.port)
    ack = r.connect(cid, props={"session_expiry_interval": 100})
    assert ack.props.get("session_expiry_interval") == 2, ack
    r.subscribe("x/y", 1)
    r.disconnect()
    time.sleep(3.5)
    r = RawClient(b.host, b.port)
    assert r.connect(cid, clean=False, props={"session_expiry_interval": 100}).session_present is False
    r.disconnect()


# --drain-timeout-ms: graceful shutdown sends DISCONNECT 0x8B (Server shutting
# down) to MQTT 5 clients; mosquitto 2.0.11 just closes the sockets.
@pytest.mark.cmq_only
def test_drain_on_sigterm(broker):
    b = broker(drain_timeout_ms=1000)
    v5 = [RawClient(b.host, b.port) for _ in range(2)]
    for r in v5:
        r.connect(uid("drain"))
    v311 = RawClient(b.host, b.port, version=4)
    v311.connect(uid("drain4"))
    t0 = time.monotonic()
    b.terminate()
    for r in v5:
        seen = r.wait_closed(timeout=5)
        assert seen and seen[-1].type == DISCONNECT and seen[-1].reason == 0x8B, seen
    assert v311.wait_closed(timeout=5) == []
    rc = b.proc.wait(timeout=5)
    assert rc == 0, f"broker exited with {rc}"
    assert time.monotonic() - t0 < 5
