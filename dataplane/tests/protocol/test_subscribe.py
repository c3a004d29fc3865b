"""SUBSCRIBE / UNSUBSCRIBE: wildcards, $-topics, overlapping subscriptions,
subscription options (no local, retain as published, retain handling),
subscription identifiers, shared subscriptions."""

import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

from helpers import (
    PUBLISH, PahoClient, RawClient, props, sentinel_roundtrip, sub_opts, uid, wait_for,
)


def _topics(client):
    return [m.topic for m in client.get_messages()]


@pytest.mark.parametrize("version", [4, 5])
def test_plus_wildcard(b, version):
    root = uid("plus")
    sub = PahoClient(b, version=version).connect()
    sub.subscribe(f"{root}/+/c", qos=1)
    sub.subscribe(f"{root}/end", qos=1)  # sentinel
    pub = PahoClient(b).connect()
    for t in (f"{root}/b/c", f"{root}/x/c", f"{root}/b/d", f"{root}/b/c/d", f"{root}/c", f"{root}//c"):
        pub.publish(t, b"x", qos=1)
    pub.publish(f"{root}/end", b"end", qos=1)
    assert wait_for(lambda: f"{root}/end" in _topics(sub))
    assert sorted(_topics(sub)) == sorted([f"{root}/b/c", f"{root}/x/c", f"{root}//c", f"{root}/end"])


@pytest.mark.parametrize("version", [4, 5])
def test_hash_wildcard_matches_parent_and_children(b, version):
    root = uid("hash")
    sub = PahoClient(b, version=version).connect()
    sub.subscribe(f"{root}/a/#", qos=1)
    sub.subscribe(f"{root}/end", qos=1)
    pub = PahoClient(b).connect()
    for t in (f"{root}/a", f"{root}/a/b", f"{root}/a/b/c", f"{root}/ab", f"{root}/b/a"):
        pub.publish(t, b"x", qos=1)
    pub.publish(f"{root}/end", b"end", qos=1)
    assert wait_for(lambda: f"{root}/end" in _topics(sub))
    assert sorted(_topics(sub)) == sorted([f"{root}/a", f"{root}/a/b", f"{root}/a/b/c", f"{root}/end"])


def test_dollar_topics_not_matched_by_leading_wildcards(b):
    hash_sub = PahoClient(b).connect()
    hash_sub.subscribe("#", qos=1)
    plus_sub = PahoClient(b).connect()
    plus_sub.subscribe("+/bar", qos=1)
    plus_sub.subscribe("foo/end", qos=1)
    dollar_sub = PahoClient(b).connect()
    dollar_sub.subscribe("$foo/#", qos=1)
    dollar_plus = PahoClient(b).connect()
    dollar_plus.subscribe("$foo/+", qos=1)

    pub = PahoClient(b).connect()
    pub.publish("$foo/bar", b"dollar", qos=1)
    pub.publish("foo/bar", b"plain", qos=1)
    pub.publish("foo/end", b"end", qos=1)
    assert wait_for(lambda: "foo/end" in _topics(hash_sub) and "foo/end" in _topics(plus_sub))
    assert wait_for(lambda: _topics(dollar_sub) == ["$foo/bar"])
    assert wait_for(lambda: _topics(dollar_plus) == ["$foo/bar"])
    assert not any(t.startswith("$") for t in _topics(hash_sub)), _topics(hash_sub)
    assert not any(t.startswith("$") for t in _topics(plus_sub)), _topics(plus_sub)
    assert "foo/bar" in _topics(hash_sub) and "foo/bar" in _topics(plus_sub)


def test_suback_grants_requested_qos(b):
    r = RawClient(b.host, b.port)
    r.connect(uid("sq"))
    ack = r.subscribe([("a/0", 0), ("a/1", 1), ("a/2", 2)])
    assert ack.reasons == [0, 1, 2]
    r.disconnect()
    r = RawClient(b.host, b.port, version=4)
    r.connect(uid("sq4"))
    assert r.subscribe([("a/0", 0), ("a/1", 1), ("a/2", 2)]).reasons == [0, 1, 2]
    r.disconnect()


def test_invalid_filter_is_refused(b):
    """'a/#/b' and 'a+' are invalid filters: SUBACK failure code or disconnect."""
    r = RawClient(b.host, b.port)
    r.connect(uid("bad"))
    from helpers import subscribe_packet, SUBACK, Closed
    r.send(subscribe_packet(1, [("a/#/b", 1)]))
    try:
        p = r.recv(5)
    except Closed:
        return
    if p.type == SUBACK:
        assert p.reasons[0] >= 0x80, p
    else:
        assert p.type == 14 and p.reason >= 0x80, p


# MQTT 5 §3.3.4 lets a server send one copy or one copy per matching subscription;
# CMQ promises a single copy at the maximum QoS carrying all subscription ids.
# mosquitto 2.0 delivers one copy per matching subscription, hence cmq_only.
@pytest.mark.cmq_only
def test_overlapping_subscriptions_single_copy_max_qos_all_ids(b):
    root = uid("ovl")
    r = RawClient(b.host, b.port)
    r.connect(uid("ovl"))
    r.subscribe([(f"{root}/#", sub_opts(0))], props={"subscription_identifier": 1})
    r.subscribe([(f"{root}/x", sub_opts(1))], props={"subscription_identifier": 2})
    pub = PahoClient(b).connect()
    pub.publish(f"{root}/x", b"once", qos=2)
    got = [p for p in r.recv_all(1.0) if p.type == PUBLISH]
    assert len(got) == 1, f"expected a single copy, got {got!r}"
    assert got[0].qos == 1, "copy must use the maximum QoS of the matching subscriptions"
    assert sorted(got[0].props.get("subscription_identifier", [])) == [1, 2]
    r.disconnect()


def test_overlapping_subscriptions_identifiers_and_max_qos(b):
    """Spec-level (either delivery style): every matching subscription id shows up,
    and at least one copy is delivered at the maximum granted QoS."""
    root = uid("ovl2")
    r = RawClient(b.host, b.port)
    r.connect(uid("ovl2"))
    r.subscribe([(f"{root}/#", sub_opts(0))], props={"subscription_identifier": 11})
    r.subscribe([(f"{root}/+", sub_opts(1))], props={"subscription_identifier": 12})
    pub = PahoClient(b).connect()
    pub.publish(f"{root}/x", b"m", qos=1)
    got = [p for p in r.recv_all(1.0) if p.type == PUBLISH]
    assert 1 <= len(got) <= 2, got
    ids = sorted(i for p in got for i in p.props.get("subscription_identifier", []))
    assert ids == [11, 12], got
    assert max(p.qos for p in got) == 1
    if len(got) == 2:  # one copy per subscription: each carries its own id
        assert all(len(p.props["subscription_identifier"]) == 1 for p in got)
    for p in got:
        if p.qos:
            from helpers import ack_packet, PUBACK
            r.send(ack_packet(PUBACK, p.packet_id))
    r.disconnect()


def test_subscription_identifier_on_delivery(b):
    topic = uid("sid")
    sub = PahoClient(b).connect()
    sub.subscribe(topic, qos=1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42))
    other = uid("sid2")
    sub.subscribe(other, qos=1)  # no identifier
    pub = PahoClient(b).connect()
    pub.publish(topic, b"a", qos=1)
    pub.publish(other, b"b", qos=1)
    msgs = sub.wait_messages(2)
    by_topic = {m.topic: m for m in msgs}
    assert getattr(by_topic[topic].properties, "SubscriptionIdentifier", None) == [42]
    assert not hasattr(by_topic[other].properties, "SubscriptionIdentifier")


def test_subscription_identifier_replaced_on_resubscribe(b):
    topic = uid("sidr")
    r = RawClient(b.host, b.port)
    r.connect(uid("sidr"))
    r.subscribe([(topic, 1)], props={"subscription_identifier": 5})
    r.subscribe([(topic, 1)], props={"subscription_identifier": 6})
    pub = PahoClient(b).connect()
    pub.publish(topic, b"x", qos=1)
    got = [p for p in r.recv_all(1.0) if p.type == PUBLISH]
    assert len(got) == 1 and got[0].props.get("subscription_identifier") == [6], got
    r.disconnect()


def test_no_local(b):
    topic = uid("nl")
    c = PahoClient(b).connect()
    c.subscribe(topic, options=SubscribeOptions(qos=1, noLocal=True))
    other = PahoClient(b).connect()
    c.publish(topic, b"own", qos=1)
    other.publish(topic, b"foreign", qos=1)
    assert wait_for(lambda: b"foreign" in c.payloads())
    time.sleep(0.2)
    assert c.payloads() == [b"foreign"]

    # without no local, own messages are echoed
    c2 = PahoClient(b).connect()
    t2 = uid("nl2")
    c2.subscribe(t2, qos=1)
    c2.publish(t2, b"echo", qos=1)
    assert c2.wait_messages(1) and c2.payloads() == [b"echo"]


def test_retain_as_published_on_live_delivery(b):
    topic = uid("rap")
    rap = PahoClient(b).connect()
    rap.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=True))
    norap = PahoClient(b).connect()
    norap.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=False))
    v311 = PahoClient(b, version=4).connect()
    v311.subscribe(topic, qos=1)
    pub = PahoClient(b).connect()
    pub.publish(topic, b"retained-live", qos=1, retain=True)
    pub.publish(topic, b"plain-live", qos=1, retain=False)
    for c in (rap, norap, v311):
        c.wait_messages(2)
    assert [(m.payload, m.retain) for m in rap.get_messages()] == [
        (b"retained-live", True), (b"plain-live", False)]
    assert [(m.payload, m.retain) for m in norap.get_messages()] == [
        (b"retained-live", False), (b"plain-live", False)]
    assert [(m.payload, m.retain) for m in v311.get_messages()] == [
        (b"retained-live", False), (b"plain-live", False)]
    pub.publish(topic, b"", qos=1, retain=True)


def _retained_count(client, topic, marker_pub, marker_topic):
    sentinel_roundtrip(client, marker_pub, marker_topic)
    return [m for m in client.get_messages(topic)]


def test_retain_handling_0_1_2(b):
    topic = uid("rh")
    marker = uid("rhm")
    pub = PahoClient(b).connect()
    pub.publish(topic, b"kept", qos=1, retain=True)

    # rh=0: retained message on every subscribe
    c0 = PahoClient(b).connect()
    c0.subscribe(marker, qos=1)
    c0.subscribe(topic, options=SubscribeOptions(qos=1, retainHandling=0))
    c0.wait_messages(1, topic=topic)
    c0.subscribe(topic, options=SubscribeOptions(qos=1, retainHandling=0))
    msgs = c0.wait_messages(2, topic=topic)
    assert [(m.payload, m.retain) for m in msgs] == [(b"kept", True), (b"kept", True)]

    # rh=1: only if the subscription did not exist
    c1 = PahoClient(b).connect()
    c1.subscribe(marker, qos=1)
    c1.subscribe(topic, options=SubscribeOptions(qos=1, retainHandling=1))
    c1.wait_messages(1, topic=topic)
    c1.subscribe(topic, options=SubscribeOptions(qos=1, retainHandling=1))
    msgs = _retained_count(c1, topic, pub, marker)
    assert [(m.payload, m.retain) for m in msgs] == [(b"kept", True)]

    # rh=2: never
    c2 = PahoClient(b).connect()
    c2.subscribe(marker, qos=1)
    c2.subscribe(topic, options=SubscribeOptions(qos=1, retainHandling=2))
    assert _retained_count(c2, topic, pub, marker) == []
    # ... but live messages still flow
    pub.publish(topic, b"live", qos=1)
    assert [m.payload for m in c2.wait_messages(1, topic=topic)] == [b"live"]


def test_shared_subscription_distributes(b):
    topic = uid("shr")
    members = [PahoClient(b).connect() for _ in range(2)]
    for m in members:
        assert m.subscribe(f"$share/g/{topic}", qos=1) == [1]
    plain = PahoClient(b).connect()
    plain.subscribe(topic, qos=1)
    pub = PahoClient(b).connect()
    n = 40
    for i in range(n):
        pub.publish(topic, b"%03d" % i, qos=1)
    assert wait_for(lambda: sum(len(m.get_messages()) for m in members) >= n, 10)
    plain.wait_messages(n)
    time.sleep(0.3)
    got = [p for m in members for p in m.payloads()]
    assert len(got) == n, f"total deliveries {len(got)} != {n}"
    assert sorted(got) == [b"%03d" % i for i in range(n)], "each message exactly once across the group"
    assert all(len(m.get_messages()) > 0 for m in members), [len(m.get_messages()) for m in members]
    assert len(plain.get_messages()) == n, "non-shared subscriber gets every message"
    for m in members:
        assert all(msg.topic == topic for msg in m.get_messages())


def test_shared_subscription_two_groups_each_get_all(b):
    topic = uid("shg")
    g1 = [PahoClient(b).connect() for _ in range(2)]
    g2 = [PahoClient(b).connect()]
    for m in g1:
        m.subscribe(f"$share/one/{topic}", qos=1)
    for m in g2:
        m.subscribe(f"$share/two/{topic}", qos=1)
    pub = PahoClient(b).connect()
    for i in range(10):
        pub.publish(topic, b"%d" % i, qos=1)
    assert wait_for(lambda: sum(len(m.get_messages()) for m in g1) >= 10)
    assert wait_for(lambda: len(g2[0].get_messages()) >= 10)
    time.sleep(0.2)
    assert sum(len(m.get_messages()) for m in g1) == 10
    assert len(g2[0].get_messages()) == 10


@pytest.mark.parametrize("version", [4, 5])
def test_unsubscribe_stops_delivery(b, version):
    topic = uid("uns")
    keep = uid("keep")
    sub = PahoClient(b, version=version).connect()
    sub.subscribe(topic, qos=1)
    sub.subscribe(keep, qos=1)
    pub = PahoClient(b).connect()
    pub.publish(topic, b"before", qos=1)
    sub.wait_messages(1, topic=topic)
    rcs = sub.unsubscribe(topic)
    if version == 5:
        assert rcs == [0]
    pub.publish(topic, b"after", qos=1)
    sentinel_roundtrip(sub, pub, keep)
    assert sub.payloads(topic) == [b"before"]


def test_unsuback_no_subscription_existed(b):
    r = RawClient(b.host, b.port)
    r.connect(uid("unsx"))
    r.subscribe("exists/here", 1)
    ack = r.unsubscribe(["never/subscribed", "exists/here"])
    assert ack.reasons == [0x11, 0x00], ack
    r.disconnect()


def test_unsuback_mqtt311_has_no_payload(b):
    r = RawClient(b.host, b.port, version=4)
    r.connect(uid("uns4"))
    ack = r.unsubscribe(["never/subscribed"])
    assert len(ack.body) == 2, f"3.1.1 UNSUBACK carries only the packet id: {ack.body!r}"
    r.disconnect()
