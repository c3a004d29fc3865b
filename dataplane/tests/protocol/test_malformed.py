"""Malformed / out-of-order input over a raw socket.

For every case the broker must close the offending connection (an MQTT 5 client
may first get DISCONNECT 0x81 Malformed Packet / 0x82 Protocol Error, plus 0x90
Topic Name invalid / 0x8F for topic cases), and must keep serving other clients.
"""

import socket
import struct

import pytest

from helpers import (
    RawClient, check_broker_alive, connect_packet, enc_str, expect_protocol_close, packet,
    publish_packet, subscribe_packet, uid, unsubscribe_packet,
)

# -- before CONNECT ---------------------------------------------------------

PRE_CONNECT_CASES = {
    "garbage_first_byte": b"\x00\x00",
    "garbage_bytes": b"\xff\xff\xff\xff\xff\xff",
    "http_request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "publish_before_connect": publish_packet("a/b", b"x", qos=0, version=4),
    "subscribe_before_connect": subscribe_packet(1, [("a/b", 0)], version=4),
    "pingreq_before_connect": b"\xc0\x00",
    "connect_bad_fixed_flags": b"\x11" + connect_packet("x", version=4)[1:],
    "connect_truncated_length": b"\x10\x04\x00\x04MQ",
}


@pytest.mark.parametrize("case", sorted(PRE_CONNECT_CASES))
def test_invalid_first_packet(b, case):
    r = RawClient(b.host, b.port)
    r.send(PRE_CONNECT_CASES[case])
    if case == "connect_truncated_length":
        r.sock.shutdown(socket.SHUT_WR)  # let the broker see EOF mid-packet
    seen = r.wait_closed()
    assert all(p.type == 14 or (p.type == 2 and p.reason != 0) for p in seen), seen
    check_broker_alive(b)


# -- after a successful CONNECT ---------------------------------------------

def _publish_qos3(version):
    # PUBLISH with both QoS bits set: topic "a/b", packet id 1, (v5: empty props)
    body = enc_str("a/b") + b"\x00\x01" + (b"\x00" if version == 5 else b"") + b"x"
    return packet(3, 0x06, body)


def _cases(version):
    return {
        "second_connect": connect_packet(uid("again"), version=version),
        "invalid_remaining_length": b"\x30\xff\xff\xff\xff\x7f",
        "publish_qos3": _publish_qos3(version),
        "publish_wildcard_plus": publish_packet("a/+/c", b"x", qos=0, version=version),
        "publish_wildcard_hash": publish_packet("a/#", b"x", qos=0, version=version),
        "publish_invalid_utf8_topic": publish_packet(b"a/\xff\xfe", b"x", qos=0, version=version),
        "publish_nul_in_topic": publish_packet(b"a/\x00b", b"x", qos=0, version=version),
        "publish_qos1_packet_id_zero": publish_packet("a/b", b"x", qos=1, packet_id=0, version=version),
        "subscribe_no_filters": packet(8, 0x02, struct.pack("!H", 7) + (b"\x00" if version == 5 else b"")),
        "subscribe_bad_fixed_flags": packet(8, 0x00, subscribe_packet(3, [("a/b", 0)], version)[2:]),
        "subscribe_invalid_qos": subscribe_packet(4, [("a/b", 3)], version),
        "unsubscribe_no_filters": packet(10, 0x02, struct.pack("!H", 8) + (b"\x00" if version == 5 else b"")),
        "reserved_packet_type_0": b"\x00\x00",
        "connack_from_client": b"\x20\x02\x00\x00",
        "pubrel_bad_flags": b"\x60\x02\x00\x01",
    }


TOPIC_CASES = {"publish_wildcard_plus", "publish_wildcard_hash", "publish_invalid_utf8_topic",
               "publish_nul_in_topic"}


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("case", sorted(_cases(5)))
def test_malformed_after_connect(b, version, case):
    data = _cases(version)[case]
    r = RawClient(b.host, b.port, version=version)
    r.connect(uid("mal"))
    r.send(data)
    allowed = (0x81, 0x82, 0x90) if case in TOPIC_CASES else (0x81, 0x82)
    if case == "subscribe_invalid_qos":
        allowed = (0x81, 0x82)
    expect_protocol_close(r, allowed_reasons=allowed)
    check_broker_alive(b, version=version)


def test_slowloris_partial_packet_does_not_block_others(b):
    """A client stuck mid-packet must not block other clients."""
    r = RawClient(b.host, b.port)
    r.connect(uid("slow"))
    r.send(b"\x30\x7f\x00")  # PUBLISH announcing 127 bytes, only 1 sent
    check_broker_alive(b)
    r.close()


def test_oversized_remaining_length_announced(b):
    """A remaining length of ~256 MB (max varint) must not make the broker
    allocate/wait forever for the other clients: they keep working."""
    r = RawClient(b.host, b.port)
    r.connect(uid("huge"))
    r.send(b"\x30\xff\xff\xff\x7f")
    check_broker_alive(b)
    r.close()


def test_many_abrupt_disconnects(b):
    for _ in range(30):
        r = RawClient(b.host, b.port)
        r.send(connect_packet(uid("ab"), version=5)[:7])
        r.abort()
    check_broker_alive(b)
