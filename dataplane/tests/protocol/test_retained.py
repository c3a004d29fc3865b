"""Retained messages: store, replace, clear, deliver on subscribe, wildcards."""

import pytest

from helpers import PahoClient, RawClient, PUBLISH, sentinel_roundtrip, uid, wait_for


def _fresh_subscriber(b, filt, marker, version=5):
    """Subscribe a new client to ``filt`` (and ``marker``), return it once a
    sentinel on ``marker`` proved that all retained messages had time to arrive."""
    c = PahoClient(b, version=version).connect()
    c.subscribe(marker, qos=1)
    c.subscribe(filt, qos=1)
    return c


@pytest.mark.parametrize("version", [4, 5])
def test_retained_delivered_on_subscribe_with_retain_flag(b, version):
    topic = uid("ret")
    pub = PahoClient(b, version=version).connect()
    pub.publish(topic, b"stored", qos=1, retain=True)
    c = PahoClient(b, version=version).connect()
    c.subscribe(topic, qos=1)
    msgs = c.wait_messages(1)
    assert [(m.payload, m.retain, m.qos) for m in msgs] == [(b"stored", True, 1)]


def test_retained_qos_is_min_of_stored_and_subscription(b):
    topic = uid("retq")
    pub = PahoClient(b).connect()
    pub.publish(topic, b"q2", qos=2, retain=True)
    c = PahoClient(b).connect()
    c.subscribe(topic, qos=1)
    assert [(m.payload, m.qos) for m in c.wait_messages(1)] == [(b"q2", 1)]
    c0 = PahoClient(b).connect()
    c0.subscribe(topic, qos=0)
    assert [(m.payload, m.qos) for m in c0.wait_messages(1)] == [(b"q2", 0)]


def test_retained_replace(b):
    topic, marker = uid("rep"), uid("mk")
    pub = PahoClient(b).connect()
    pub.publish(topic, b"v1", qos=1, retain=True)
    pub.publish(topic, b"v2", qos=1, retain=True)
    c = _fresh_subscriber(b, topic, marker)
    sentinel_roundtrip(c, pub, marker)
    assert c.payloads(topic) == [b"v2"]


@pytest.mark.parametrize("qos", [0, 1])
def test_retained_clear_with_empty_payload(b, qos):
    topic, marker = uid("clr"), uid("mk")
    pub = PahoClient(b).connect()
    pub.publish(topic, b"v1", qos=1, retain=True)
    pub.publish(topic, b"", qos=qos, retain=True)
    c = _fresh_subscriber(b, topic, marker)
    sentinel_roundtrip(c, pub, marker)
    assert c.payloads(topic) == [], "empty retained publish must clear the retained message"


def test_empty_retained_is_forwarded_live_to_existing_subscribers(b):
    topic = uid("clrl")
    sub = PahoClient(b).connect()
    sub.subscribe(topic, qos=1)
    pub = PahoClient(b).connect()
    pub.publish(topic, b"v1", qos=1, retain=True)
    pub.publish(topic, b"", qos=1, retain=True)
    assert [m.payload for m in sub.wait_messages(2)] == [b"v1", b""]


def test_wildcard_subscribe_gets_all_matching_retained(b):
    root, marker = uid("wr"), uid("mk")
    pub = PahoClient(b).connect()
    retained = {f"{root}/a/1": b"a1", f"{root}/a/2": b"a2", f"{root}/a/b/3": b"ab3",
                f"{root}/b/1": b"b1", f"{root}/a": b"a"}
    for t, p in retained.items():
        pub.publish(t, p, qos=1, retain=True)
    c = _fresh_subscriber(b, f"{root}/a/#", marker)
    sentinel_roundtrip(c, pub, marker)
    got = {m.topic: m.payload for m in c.get_messages() if m.topic != marker}
    assert got == {f"{root}/a/1": b"a1", f"{root}/a/2": b"a2", f"{root}/a/b/3": b"ab3", f"{root}/a": b"a"}
    assert all(m.retain for m in c.get_messages() if m.topic != marker)

    c2 = _fresh_subscriber(b, f"{root}/+/1", marker)
    sentinel_roundtrip(c2, pub, marker)
    got2 = {m.topic: m.payload for m in c2.get_messages() if m.topic != marker}
    assert got2 == {f"{root}/a/1": b"a1", f"{root}/b/1": b"b1"}


def test_retained_survives_publisher_disconnect(b):
    topic = uid("rsd")
    pub = PahoClient(b).connect()
    pub.publish(topic, b"persist", qos=1, retain=True)
    pub.disconnect()
    r = RawClient(b.host, b.port, version=4)
    r.connect(uid("r"))
    r.subscribe(topic, 0)
    p = r.recv_type(PUBLISH)
    assert p.payload == b"persist" and p.retain and p.qos == 0
    r.disconnect()
