"""MQTT over WebSocket (ws_port, path /mqtt, subprotocol "mqtt")."""

import base64
import os
import socket
import struct

import pytest

from helpers import PahoClient, connect_packet, dec_varint, uid


@pytest.mark.parametrize("version", [4, 5])
def test_paho_websocket_pubsub(b, version):
    topic = uid("ws")
    sub = PahoClient(b, version=version, transport="websockets").connect()
    assert sub.subscribe(topic, qos=1) == [1]
    pub = PahoClient(b, version=version, transport="websockets").connect()
    pub.publish(topic, b"over-ws", qos=1)
    msgs = sub.wait_messages(1)
    assert [(m.payload, m.qos) for m in msgs] == [(b"over-ws", 1)]
    pub.disconnect()
    sub.disconnect()


def test_websocket_and_tcp_interoperate(b):
    topic = uid("wst")
    ws_sub = PahoClient(b, transport="websockets").connect()
    ws_sub.subscribe(topic, qos=1)
    tcp_sub = PahoClient(b).connect()
    tcp_sub.subscribe(topic, qos=1)
    tcp_pub = PahoClient(b).connect()
    tcp_pub.publish(topic, b"from-tcp", qos=1)
    ws_pub = PahoClient(b, transport="websockets").connect()
    ws_pub.publish(topic, b"from-ws", qos=1)
    for c in (ws_sub, tcp_sub):
        assert [m.payload for m in c.wait_messages(2)] == [b"from-tcp", b"from-ws"]


def _ws_handshake(b, protocols="mqtt"):
    s = socket.create_connection((b.host, b.ws_port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    req = (
        "GET /mqtt HTTP/1.1\r\n"
        f"Host: {b.host}:{b.ws_port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {protocols}\r\n\r\n"
    )
    s.sendall(req.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, "connection closed during handshake"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    return s, lines[0], headers, rest


def _ws_send_binary(s, payload):
    mask = os.urandom(4)
    n = len(payload)
    hdr = bytes([0x82])
    if n < 126:
        hdr += bytes([0x80 | n])
    elif n < 65536:
        hdr += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        hdr += bytes([0x80 | 127]) + struct.pack("!Q", n)
    s.sendall(hdr + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))


def _ws_recv_frame(s, buf):
    def need(n):
        nonlocal buf
        while len(buf) < n:
            chunk = s.recv(4096)
            assert chunk, "closed"
            buf += chunk
    need(2)
    opcode, ln = buf[0] & 0x0F, buf[1] & 0x7F
    assert not buf[1] & 0x80, "server frames must not be masked"
    pos = 2
    if ln == 126:
        need(4); ln = struct.unpack("!H", buf[2:4])[0]; pos = 4
    elif ln == 127:
        need(10); ln = struct.unpack("!Q", buf[2:10])[0]; pos = 10
    need(pos + ln)
    return opcode, buf[pos:pos + ln], buf[pos + ln:]


def test_websocket_subprotocol_mqtt_negotiated(b):
    s, status, headers, rest = _ws_handshake(b, "mqtt")
    assert " 101 " in status + " ", status
    assert headers.get("sec-websocket-protocol", "").lower() == "mqtt", headers
    _ws_send_binary(s, connect_packet(uid("wsraw"), version=4))
    opcode, payload, rest = _ws_recv_frame(s, rest)
    assert opcode == 2, "MQTT must be carried in binary frames"
    assert payload[0] == 0x20 and payload[2:4] == b"\x00\x00", payload  # CONNACK accepted
    s.close()


def test_websocket_packet_split_across_frames(b):
    """MQTT packets need not be aligned with WebSocket frames (MQTT 5 §6)."""
    s, status, headers, rest = _ws_handshake(b, "mqtt")
    assert " 101 " in status + " "
    pkt = connect_packet(uid("wssplit"), version=5)
    _ws_send_binary(s, pkt[:5])
    _ws_send_binary(s, pkt[5:] + b"\xc0\x00")  # rest of CONNECT + PINGREQ in one frame
    got = b""
    while len(got) < 2 or len(got) < dec_varint(got, 1)[1] + dec_varint(got, 1)[0] + 2:
        _, payload, rest = _ws_recv_frame(s, rest)
        got += payload
    assert got[0] == 0x20 and got[3] == 0x00, got  # CONNACK success (v5)
    assert got.endswith(b"\xd0\x00"), got  # PINGRESP
    s.close()
