"""PUBLISH QoS 0/1/2 flows, packet identifiers, inflight window, DUP resend, ordering."""

import time

import pytest

from helpers import (
    PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, PahoClient, RawClient, ack_packet,
    publish_packet, uid, wait_for,
)


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_delivered_qos_is_min_of_pub_and_sub(b, version, pub_qos, sub_qos):
    topic = uid("qos")
    sub = PahoClient(b, version=version).connect()
    assert sub.subscribe(topic, qos=sub_qos) == [sub_qos]
    pub = PahoClient(b, version=version).connect()
    pub.publish(topic, b"payload-%d" % pub_qos, qos=pub_qos)
    msgs = sub.wait_messages(1)
    assert [m.payload for m in msgs] == [b"payload-%d" % pub_qos]
    assert msgs[0].qos == min(pub_qos, sub_qos)
    time.sleep(0.2)
    assert len(sub.get_messages()) == 1, "duplicate delivery"
    pub.disconnect()
    sub.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_raw_qos1_publish_gets_puback_with_same_id(b, version):
    r = RawClient(b.host, b.port, version=version)
    r.connect(uid("p1"))
    r.send(publish_packet("q1/t", b"x", qos=1, packet_id=4242, version=version))
    ack = r.recv_type(PUBACK)
    assert ack.packet_id == 4242
    assert ack.reason in (0x00, 0x10)  # success / no matching subscribers
    r.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_raw_qos2_publish_handshake(b, version):
    topic = uid("q2")
    sub = PahoClient(b, version=version).connect()
    sub.subscribe(topic, qos=2)
    r = RawClient(b.host, b.port, version=version)
    r.connect(uid("p2"))
    r.send(publish_packet(topic, b"exactly-once", qos=2, packet_id=777, version=version))
    rec = r.recv_type(PUBREC)
    assert rec.packet_id == 777 and rec.reason == 0
    # a duplicate PUBLISH (DUP=1) before PUBREL must not cause a second delivery
    r.send(publish_packet(topic, b"exactly-once", qos=2, packet_id=777, dup=True, version=version))
    rec2 = r.recv_type(PUBREC)
    assert rec2.packet_id == 777
    r.send(ack_packet(PUBREL, 777, version))
    comp = r.recv_type(PUBCOMP)
    assert comp.packet_id == 777 and comp.reason == 0
    msgs = sub.wait_messages(1)
    time.sleep(0.3)
    assert [m.payload for m in sub.get_messages()] == [b"exactly-once"]
    assert msgs[0].qos == 2
    r.disconnect()
    sub.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_raw_subscriber_qos1_and_qos2_flows(b, version):
    topic = uid("rq")
    r = RawClient(b.host, b.port, version=version)
    r.connect(uid("rs"))
    assert r.subscribe(topic, 2).reasons == [2]
    pub = PahoClient(b, version=5).connect()
    pub.publish(topic, b"one", qos=1)
    p1 = r.recv_type(PUBLISH)
    assert p1.qos == 1 and p1.payload == b"one" and p1.topic == topic.encode()
    assert p1.packet_id and p1.packet_id > 0
    assert not p1.dup
    r.send(ack_packet(PUBACK, p1.packet_id, version))

    pub.publish(topic, b"two", qos=2)
    p2 = r.recv_type(PUBLISH)
    assert p2.qos == 2 and p2.payload == b"two" and p2.packet_id > 0
    r.send(ack_packet(PUBREC, p2.packet_id, version))
    rel = r.recv_type(PUBREL)
    assert rel.packet_id == p2.packet_id
    assert rel.flags == 0x02, "PUBREL fixed header flags must be 0b0010"
    r.send(ack_packet(PUBCOMP, p2.packet_id, version))
    pub.disconnect()
    r.disconnect()


def test_unacked_messages_use_distinct_packet_ids(b):
    topic = uid("ids")
    r = RawClient(b.host, b.port)
    r.connect(uid("ids"))
    r.subscribe(topic, 1)
    pub = PahoClient(b).connect()
    for i in range(5):
        pub.publish(topic, b"%d" % i, qos=1)
    pkts = [r.recv_type(PUBLISH) for _ in range(5)]
    ids = [p.packet_id for p in pkts]
    assert all(i > 0 for i in ids)
    assert len(set(ids)) == 5, f"in-flight packet ids must be unique: {ids}"
    assert [p.payload for p in pkts] == [b"0", b"1", b"2", b"3", b"4"]
    pub.disconnect()
    r.disconnect()


def _complete(r, p, qos):
    if qos == 1:
        r.send(ack_packet(PUBACK, p.packet_id))
    else:
        r.send(ack_packet(PUBREC, p.packet_id))
        r.recv_type(PUBREL, skip=(PUBLISH,))
        r.send(ack_packet(PUBCOMP, p.packet_id))


def _receive_maximum_flow(b, qos, strict):
    topic = uid("rm")
    r = RawClient(b.host, b.port)
    r.connect(uid("rm"), props={"receive_maximum": 2})
    r.subscribe(topic, qos)
    pub = PahoClient(b).connect()
    for i in range(6):
        pub.publish(topic, b"m%d" % i, qos=qos)
    pubs = [p for p in r.recv_all(1.0) if p.type == PUBLISH]
    assert len(pubs) == 2, f"broker exceeded client Receive Maximum 2: {pubs!r}"
    assert [p.payload for p in pubs] == [b"m0", b"m1"]

    outstanding = list(pubs)
    received = [p.payload for p in pubs]
    deadline = time.monotonic() + 8
    while len(received) < 6 and time.monotonic() < deadline:
        # complete the oldest in-flight message; in strict mode exactly one new
        # message may follow (never more than 2 unacknowledged at any time)
        _complete(r, outstanding.pop(0), qos)
        new = [p for p in r.recv_all(0.4) if p.type == PUBLISH]
        if strict:
            assert len(new) == 1, f"expected exactly one new PUBLISH per completed one, got {new!r}"
            assert len(outstanding) + len(new) <= 2
        received += [p.payload for p in new]
        outstanding += new
    for p in outstanding:
        _complete(r, p, qos)
    assert received == [b"m%d" % i for i in range(6)]
    assert r.recv_all(0.3) == []
    pub.disconnect()
    r.disconnect()


@pytest.mark.parametrize("qos", [1, 2])
def test_client_receive_maximum_limits_inflight(b, qos):
    _receive_maximum_flow(b, qos, strict=False)


# Strict send-quota accounting (MQTT 5 §4.9): after one PUBACK/PUBCOMP exactly one
# more message may be sent. mosquitto 2.0.11 sends two more after the first ack
# (3 unacknowledged with Receive Maximum 2), so the strict variant is CMQ-only.
@pytest.mark.cmq_only
@pytest.mark.parametrize("qos", [1, 2])
def test_client_receive_maximum_strict_quota(b, qos):
    _receive_maximum_flow(b, qos, strict=True)


def test_receive_maximum_with_paho_manual_ack(b):
    topic = uid("rmp")
    from helpers import props
    from paho.mqtt.packettypes import PacketTypes
    sub = PahoClient(b, manual_ack=True)
    sub.connect(properties=props(PacketTypes.CONNECT, ReceiveMaximum=2))
    sub.subscribe(topic, qos=1)
    pub = PahoClient(b).connect()
    for i in range(5):
        pub.publish(topic, b"%d" % i, qos=1)
    sub.wait_messages(2)
    time.sleep(0.7)
    msgs = sub.get_messages()
    assert len(msgs) == 2, f"got {len(msgs)} unacked messages, Receive Maximum is 2"
    for m in msgs:
        sub.client.ack(m.mid, m.qos)
    wait_for(lambda: len(sub.get_messages()) >= 4)
    for m in sub.get_messages()[2:]:
        sub.client.ack(m.mid, m.qos)
    msgs = sub.wait_messages(5)
    assert [m.payload for m in msgs] == [b"0", b"1", b"2", b"3", b"4"]
    pub.disconnect()
    sub.disconnect()


def test_qos1_unacked_resent_with_dup_on_resume(b):
    cid = uid("dup")
    topic = uid("dupt")
    conn_props = {"session_expiry_interval": 60}
    r = RawClient(b.host, b.port)
    r.connect(cid, clean=True, props=conn_props)
    r.subscribe(topic, 1)
    pub = PahoClient(b).connect()
    pub.publish(topic, b"first", qos=1)
    p = r.recv_type(PUBLISH)
    assert p.payload == b"first" and not p.dup
    original_id = p.packet_id
    r.disconnect()  # normal DISCONNECT, but no PUBACK was sent
    time.sleep(0.2)
    pub.publish(topic, b"second", qos=1)

    r = RawClient(b.host, b.port)
    ack = r.connect(cid, clean=False, props=conn_props)
    assert ack.session_present is True
    got = [x for x in r.recv_all(1.5) if x.type == PUBLISH]
    assert len(got) == 2, got
    assert got[0].payload == b"first" and got[0].dup, f"expected DUP resend first: {got!r}"
    assert got[0].packet_id == original_id
    assert got[1].payload == b"second" and not got[1].dup
    for x in got:
        r.send(ack_packet(PUBACK, x.packet_id))
    pub.disconnect()
    r.disconnect()


def test_qos1_unacked_resent_with_dup_on_resume_mqtt311(b):
    cid = uid("dup3")
    topic = uid("dupt3")
    r = RawClient(b.host, b.port, version=4)
    r.connect(cid, clean=False)
    r.subscribe(topic, 1)
    pub = PahoClient(b).connect()
    pub.publish(topic, b"first", qos=1)
    p = r.recv_type(PUBLISH)
    original_id = p.packet_id
    r.abort()
    time.sleep(0.3)
    pub.publish(topic, b"second", qos=1)
    r = RawClient(b.host, b.port, version=4)
    assert r.connect(cid, clean=False).session_present is True
    got = [x for x in r.recv_all(1.5) if x.type == PUBLISH]
    assert [x.payload for x in got[:2]] == [b"first", b"second"], got
    assert got[0].dup and got[0].packet_id == original_id
    assert not got[1].dup
    for x in got:
        r.send(ack_packet(PUBACK, x.packet_id, 4))
    pub.disconnect()
    r.disconnect()


def test_qos2_unacked_publish_resent_with_dup(b):
    cid = uid("dup2")
    topic = uid("dup2t")
    r = RawClient(b.host, b.port)
    r.connect(cid, props={"session_expiry_interval": 60})
    r.subscribe(topic, 2)
    pub = PahoClient(b).connect()
    pub.publish(topic, b"q2", qos=2)
    p = r.recv_type(PUBLISH)
    r.disconnect()
    r = RawClient(b.host, b.port)
    assert r.connect(cid, clean=False, props={"session_expiry_interval": 60}).session_present
    again = r.recv_type(PUBLISH)
    assert again.dup and again.packet_id == p.packet_id and again.payload == b"q2" and again.qos == 2
    r.send(ack_packet(PUBREC, again.packet_id))
    rel = r.recv_type(PUBREL)
    # PUBREC acknowledged -> on the next resume the broker resends PUBREL, not PUBLISH
    r.disconnect()
    r = RawClient(b.host, b.port)
    assert r.connect(cid, clean=False, props={"session_expiry_interval": 60}).session_present
    rel2 = r.recv()
    assert rel2.type == PUBREL and rel2.packet_id == rel.packet_id, rel2
    r.send(ack_packet(PUBCOMP, rel2.packet_id))
    assert r.recv_all(0.5) == []
    pub.disconnect()
    r.disconnect()


@pytest.mark.parametrize("qos", [1, 2])
def test_ordering_per_topic(b, qos):
    topic = uid("order")
    n = 200
    sub = PahoClient(b).connect()
    sub.subscribe(topic, qos=qos)
    pub = PahoClient(b).connect()
    infos = [pub.publish(topic, b"%05d" % i, qos=qos, wait=False) for i in range(n)]
    for info in infos:
        info.wait_for_publish(10)
    msgs = sub.wait_messages(n, timeout=15)
    assert [m.payload for m in msgs] == [b"%05d" % i for i in range(n)]
    pub.disconnect()
    sub.disconnect()


def test_ordering_qos0(b):
    topic = uid("order0")
    n = 200
    sub = PahoClient(b).connect()
    sub.subscribe(topic, qos=0)
    pub = PahoClient(b).connect()
    for i in range(n):
        pub.publish(topic, b"%05d" % i, qos=0, wait=False)
    msgs = sub.wait_messages(n, timeout=10)
    payloads = [m.payload for m in msgs]
    assert payloads == sorted(payloads), "QoS 0 messages reordered"
    assert len(payloads) == n
    pub.disconnect()
    sub.disconnect()
