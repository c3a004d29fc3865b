"""CONNECT / CONNACK: protocol versions, return codes, sessions, client ids, takeover."""

import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from helpers import (
    CONNACK, DISCONNECT, PahoClient, RawClient, connect_packet, props, rc_value, uid,
    wait_for, Closed,
)


@pytest.mark.parametrize("version", [3, 4, 5], ids=["mqtt31", "mqtt311", "mqtt5"])
def test_connect_each_protocol_version_and_roundtrip(b, version):
    c = PahoClient(b, version=version).connect()
    assert rc_value(c.connack[0]) == 0
    topic = uid("v")
    assert c.subscribe(topic, qos=1) == [1]
    c.publish(topic, b"hello", qos=1)
    msgs = c.wait_messages(1)
    assert [m.payload for m in msgs] == [b"hello"]
    assert msgs[0].qos == 1
    c.disconnect()


@pytest.mark.parametrize("version", [3, 4, 5], ids=["mqtt31", "mqtt311", "mqtt5"])
def test_raw_connack_format(b, version):
    r = RawClient(b.host, b.port, version=version)
    ack = r.connect(uid("raw"))
    assert ack.reason == 0
    assert ack.session_present is False
    if version != 5:
        assert len(ack.body) == 2, "MQTT 3.x CONNACK must have a 2-byte variable header"
    r.disconnect()


def test_unsupported_protocol_level(b):
    """3.1.1 §3.1.2.2: unsupported level -> CONNACK 0x01 (3.1.1 format) and close."""
    r = RawClient(b.host, b.port, version=4)
    r.send(connect_packet(uid("lvl"), version=6))
    seen = r.wait_closed()
    assert len(seen) == 1, f"expected exactly one CONNACK then close, got {seen!r}"
    assert seen[0].type == CONNACK
    assert seen[0].body == b"\x00\x01", f"expected 3.1.1-style CONNACK 0x01, got {seen[0].body!r}"


def test_mqtt5_bad_protocol_name(b):
    """MQTT 5 §3.1.2.1: wrong protocol name -> CONNACK 0x84 (optional) and close."""
    r = RawClient(b.host, b.port, version=5)
    r.send(connect_packet(uid("name"), version=5, protocol_name=b"MQTX"))
    seen = r.wait_closed()
    assert len(seen) <= 1, seen
    if seen:
        assert seen[0].type == CONNACK and seen[0].reason == 0x84, seen


def test_mqtt311_empty_client_id_without_clean_session_rejected(b):
    r = RawClient(b.host, b.port, version=4)
    r.send(connect_packet("", version=4, clean=False))
    seen = r.wait_closed()
    assert len(seen) == 1 and seen[0].type == CONNACK, seen
    assert seen[0].reason == 0x02, f"expected identifier rejected (0x02), got {seen[0]!r}"


def test_mqtt311_empty_client_id_with_clean_session_accepted(b):
    r = RawClient(b.host, b.port, version=4)
    ack = r.connect("", clean=True)
    assert ack.reason == 0 and ack.session_present is False
    topic = uid("anon")
    assert r.subscribe(topic, 1).reasons == [1]
    r.publish(topic, b"x", qos=1)
    p = r.recv_type(3)
    assert p.payload == b"x"
    r.disconnect()


def test_mqtt5_reserved_connect_flag_is_malformed(b):
    r = RawClient(b.host, b.port, version=5)
    r.send(connect_packet(uid("rsv"), version=5, reserved_flag=True))
    seen = r.wait_closed()
    assert len(seen) <= 1, seen
    if seen:
        assert seen[0].type == CONNACK and seen[0].reason == 0x81, seen


def test_mqtt311_reserved_connect_flag_closes(b):
    r = RawClient(b.host, b.port, version=4)
    r.send(connect_packet(uid("rsv"), version=4, reserved_flag=True))
    seen = r.wait_closed()
    assert all(p.type == CONNACK and p.reason != 0 for p in seen), seen


def test_mqtt5_assigned_client_identifier(b):
    r = RawClient(b.host, b.port, version=5)
    ack = r.connect("")
    assigned = ack.props.get("assigned_client_identifier")
    assert assigned, f"no Assigned Client Identifier in CONNACK: {ack!r}"
    r.disconnect()
    # and via paho
    c = PahoClient(b, client_id="", version=5).connect()
    assert getattr(c.connack_props, "AssignedClientIdentifier", None)
    c.disconnect()


def test_mqtt311_session_present_flag(b):
    cid = uid("s311")
    r = RawClient(b.host, b.port, version=4)
    ack = r.connect(cid, clean=False)
    assert ack.session_present is False
    r.subscribe("x/y", 1)
    r.disconnect()

    r = RawClient(b.host, b.port, version=4)
    ack = r.connect(cid, clean=False)
    assert ack.session_present is True, "persistent session must be resumed"
    r.disconnect()

    r = RawClient(b.host, b.port, version=4)
    ack = r.connect(cid, clean=True)
    assert ack.session_present is False, "clean session must discard the old session"
    r.disconnect()

    r = RawClient(b.host, b.port, version=4)
    ack = r.connect(cid, clean=False)
    assert ack.session_present is False, "session must be gone after a clean-session connect"
    r.disconnect()


def test_mqtt5_session_present_and_clean_start(b):
    cid = uid("s5")
    r = RawClient(b.host, b.port)
    assert r.connect(cid, clean=True, props={"session_expiry_interval": 60}).session_present is False
    r.subscribe("x/y", 1)
    r.disconnect()

    r = RawClient(b.host, b.port)
    ack = r.connect(cid, clean=False, props={"session_expiry_interval": 60})
    assert ack.session_present is True
    r.disconnect()

    r = RawClient(b.host, b.port)
    ack = r.connect(cid, clean=True, props={"session_expiry_interval": 60})
    assert ack.session_present is False
    r.disconnect()


def test_mqtt5_session_present_via_paho(b):
    cid = uid("p5")
    c = PahoClient(b, client_id=cid).connect(
        clean_start=True, properties=props(PacketTypes.CONNECT, SessionExpiryInterval=60))
    assert c.session_present is False
    c.subscribe("q/r", 1)
    c.disconnect()
    c = PahoClient(b, client_id=cid).connect(
        clean_start=False, properties=props(PacketTypes.CONNECT, SessionExpiryInterval=60))
    assert c.session_present is True
    c.disconnect()


def test_mqtt5_session_expiry_zero_discards_session(b):
    cid = uid("se0")
    r = RawClient(b.host, b.port)
    r.connect(cid, clean=True)  # no property -> expiry 0
    r.subscribe("x/y", 1)
    r.disconnect()
    r = RawClient(b.host, b.port)
    ack = r.connect(cid, clean=False)
    assert ack.session_present is False
    r.disconnect()


def test_mqtt5_session_expires_after_interval(b):
    cid = uid("se1")
    r = RawClient(b.host, b.port)
    r.connect(cid, clean=True, props={"session_expiry_interval": 1})
    r.subscribe("x/y", 1)
    r.disconnect()
    time.sleep(2.5)
    r = RawClient(b.host, b.port)
    ack = r.connect(cid, clean=False, props={"session_expiry_interval": 1})
    assert ack.session_present is False, "session should have expired after 1 s"
    r.disconnect()


def test_mqtt5_session_kept_within_interval(b):
    cid = uid("se2")
    r = RawClient(b.host, b.port)
    r.connect(cid, clean=True, props={"session_expiry_interval": 5})
    r.subscribe("x/y", 1)
    r.disconnect()
    time.sleep(1.0)
    r = RawClient(b.host, b.port)
    ack = r.connect(cid, clean=False, props={"session_expiry_interval": 5})
    assert ack.session_present is True
    r.disconnect()


def test_mqtt5_disconnect_can_set_session_expiry(b):
    """Session Expiry set to 0 on DISCONNECT ends the session."""
    cid = uid("sed")
    r = RawClient(b.host, b.port)
    r.connect(cid, clean=True, props={"session_expiry_interval": 60})
    r.subscribe("x/y", 1)
    r.disconnect(reason=0, props={"session_expiry_interval": 0})
    time.sleep(0.3)
    r = RawClient(b.host, b.port)
    assert r.connect(cid, clean=False, props={"session_expiry_interval": 60}).session_present is False
    r.disconnect()


# MQTT 5 §3.1.4: the Server sends DISCONNECT 0x8E (Session taken over) to the
# existing client and MUST close its connection. mosquitto 2.0.11 (Debian) just
# closes the socket without the DISCONNECT, so the 0x8E check is CMQ-only;
# test_takeover_closes_first_connection covers the common part.
@pytest.mark.cmq_only
def test_mqtt5_takeover_disconnects_first_with_0x8e(b):
    cid = uid("take")
    first = RawClient(b.host, b.port)
    first.connect(cid)
    second = RawClient(b.host, b.port)
    second.connect(cid)
    seen = first.wait_closed()
    assert seen, "first connection closed without DISCONNECT"
    assert seen[-1].type == DISCONNECT and seen[-1].reason == 0x8E, seen
    # the new connection works
    topic = uid("tk")
    second.subscribe(topic, 1)
    second.publish(topic, b"ok", qos=1)
    assert second.recv_type(3).payload == b"ok"
    second.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_takeover_closes_first_connection(b, version):
    """Whatever the DISCONNECT policy, the first connection must be closed."""
    cid = uid("take3")
    first = RawClient(b.host, b.port, version=version)
    first.connect(cid)
    second = RawClient(b.host, b.port, version=version)
    second.connect(cid)
    seen = first.wait_closed()
    assert all(p.type == DISCONNECT for p in seen), seen
    second.send(b"\xc0\x00")  # PINGREQ
    assert second.recv().type == 13
    second.disconnect()


def test_mqtt311_takeover_closes_first(b):
    cid = uid("take3")
    first = RawClient(b.host, b.port, version=4)
    first.connect(cid)
    second = RawClient(b.host, b.port, version=4)
    second.connect(cid)
    seen = first.wait_closed()
    assert seen == [], f"MQTT 3.1.1 connection must be closed without packets, got {seen!r}"
    second.send(b"\xc0\x00")  # PINGREQ
    assert second.recv().type == 13
    second.disconnect()


@pytest.mark.cmq_only  # see test_mqtt5_takeover_disconnects_first_with_0x8e
def test_mqtt5_takeover_via_paho_reason_code(b):
    cid = uid("takep")
    first = PahoClient(b, client_id=cid).connect()
    first.client.reconnect_delay_set(30, 60)  # don't fight back
    second = PahoClient(b, client_id=cid).connect()
    assert wait_for(lambda: first.disconnected is not None), "first client not disconnected"
    assert rc_value(first.disconnected[0]) == 0x8E
    assert second.is_connected()
    first.stop()
    second.disconnect()
