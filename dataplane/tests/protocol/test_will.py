"""Will messages: abrupt close, normal DISCONNECT, DISCONNECT 0x04, will delay."""

import time

import pytest

from helpers import PahoClient, RawClient, sentinel_roundtrip, uid, wait_for


def _watcher(b, topic):
    w = PahoClient(b).connect()
    w.subscribe(topic, qos=1)
    return w


@pytest.mark.parametrize("version", [3, 4, 5])
def test_will_published_on_abrupt_close(b, version):
    topic = uid("will")
    w = _watcher(b, topic)
    r = RawClient(b.host, b.port, version=version)
    r.connect(uid("wc"), will={"topic": topic, "payload": b"gone", "qos": 1})
    r.abort()
    msgs = w.wait_messages(1)
    assert [m.payload for m in msgs] == [b"gone"]
    assert msgs[0].qos == 1


def test_will_retained_flag(b):
    topic = uid("willr")
    r = RawClient(b.host, b.port)
    r.connect(uid("wc"), will={"topic": topic, "payload": b"bye", "qos": 1, "retain": True})
    r.abort()
    time.sleep(0.3)
    c = PahoClient(b).connect()
    c.subscribe(topic, qos=1)
    msgs = c.wait_messages(1)
    assert [(m.payload, m.retain) for m in msgs] == [(b"bye", True)]


def test_will_properties_forwarded(b):
    topic = uid("willp")
    w = _watcher(b, topic)
    r = RawClient(b.host, b.port)
    r.connect(uid("wc"), will={"topic": topic, "payload": b"{}", "qos": 1, "props": {
        "content_type": "application/json", "user_property": [("k", "v")]}})
    r.abort()
    m = w.wait_messages(1)[0]
    assert m.properties.ContentType == "application/json"
    assert m.properties.UserProperty == [("k", "v")]


@pytest.mark.parametrize("version", [4, 5])
def test_will_not_published_on_normal_disconnect(b, version):
    topic = uid("nowill")
    w = _watcher(b, topic)
    r = RawClient(b.host, b.port, version=version)
    r.connect(uid("wc"), will={"topic": topic, "payload": b"gone", "qos": 1})
    r.disconnect(reason=0x00 if version == 5 else None)
    time.sleep(0.5)
    pub = PahoClient(b).connect()
    sentinel_roundtrip(w, pub, topic)
    assert b"gone" not in w.payloads()


def test_will_published_on_disconnect_with_will_message(b):
    topic = uid("will04")
    w = _watcher(b, topic)
    r = RawClient(b.host, b.port)
    r.connect(uid("wc"), will={"topic": topic, "payload": b"requested", "qos": 1})
    r.disconnect(reason=0x04)
    msgs = w.wait_messages(1)
    assert [m.payload for m in msgs] == [b"requested"]


def test_will_delay_cancelled_by_reconnect(b):
    topic = uid("wdc")
    cid = uid("wdc")
    w = _watcher(b, topic)
    conn_props = {"session_expiry_interval": 30}
    r = RawClient(b.host, b.port)
    r.connect(cid, props=conn_props, will={"topic": topic, "payload": b"late", "qos": 1,
                                           "props": {"will_delay_interval": 2}})
    r.abort()
    time.sleep(0.5)
    r2 = RawClient(b.host, b.port)
    assert r2.connect(cid, clean=False, props=conn_props).session_present
    time.sleep(2.5)
    pub = PahoClient(b).connect()
    sentinel_roundtrip(w, pub, topic)
    assert b"late" not in w.payloads(), "reconnect within the will delay must cancel the will"
    r2.disconnect()


def test_will_delay_fires_after_delay(b):
    topic = uid("wdf")
    w = _watcher(b, topic)
    r = RawClient(b.host, b.port)
    r.connect(uid("wdf"), props={"session_expiry_interval": 30},
              will={"topic": topic, "payload": b"late", "qos": 1, "props": {"will_delay_interval": 1}})
    t0 = time.monotonic()
    r.abort()
    time.sleep(0.6)
    assert w.payloads() == [], "will published before its delay"
    assert wait_for(lambda: w.payloads() == [b"late"], timeout=4)
    assert time.monotonic() - t0 >= 0.9


def test_will_delay_capped_by_session_expiry(b):
    """Will is sent when the session ends, even if the will delay is longer."""
    topic = uid("wds")
    w = _watcher(b, topic)
    r = RawClient(b.host, b.port)
    r.connect(uid("wds"), props={"session_expiry_interval": 1},
              will={"topic": topic, "payload": b"session-end", "qos": 1, "props": {"will_delay_interval": 60}})
    r.abort()
    assert wait_for(lambda: w.payloads() == [b"session-end"], timeout=4), w.payloads()


def test_will_published_on_takeover_by_other_connection(b):
    """A new connection with the same client id ends the old network connection
    abnormally -> the old connection's will is published (MQTT 5 §3.1.4 / §3.1.2.5)."""
    topic = uid("wto")
    cid = uid("wto")
    w = _watcher(b, topic)
    r = RawClient(b.host, b.port)
    r.connect(cid, will={"topic": topic, "payload": b"taken", "qos": 1})
    r2 = RawClient(b.host, b.port)
    r2.connect(cid)
    assert wait_for(lambda: w.payloads() == [b"taken"], timeout=4)
    r2.disconnect()


def test_will_published_on_protocol_error(b):
    topic = uid("wpe")
    w = _watcher(b, topic)
    r = RawClient(b.host, b.port)
    r.connect(uid("wpe"), will={"topic": topic, "payload": b"err", "qos": 1})
    r.send(b"\x36\x05\x00\x01a\x00\x01")  # QoS 3 PUBLISH: malformed
    assert wait_for(lambda: w.payloads() == [b"err"], timeout=4)
