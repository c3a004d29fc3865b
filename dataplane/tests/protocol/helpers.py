"""Shared helpers for the black-box MQTT protocol tests.

Two kinds of clients are used:

* ``PahoClient``: a thin synchronous wrapper around paho-mqtt (v2 callback
  API) for ordinary traffic; every blocking call has a timeout.
* ``RawClient``: a tiny hand-written MQTT codec over a plain socket, used where
  the test must see exact bytes (reason codes, DUP flags, packet ids, ...) or
  must send malformed/edge-case packets.
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

DEFAULT_TIMEOUT = 5.0


# ---------------------------------------------------------------------------
# generic waiting
# ---------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, interval: float = 0.02):
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes.

    Returns the truthy value, or ``None``/falsy on timeout (callers assert).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def uid(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------
# raw MQTT codec
# ---------------------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

PACKET_NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
    7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
    12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}

# MQTT 5 property identifiers -> (name, type)
# types: byte, u16, u32, varint, str, bin, pair
PROPS = {
    0x01: ("payload_format_indicator", "byte"),
    0x02: ("message_expiry_interval", "u32"),
    0x03: ("content_type", "str"),
    0x08: ("response_topic", "str"),
    0x09: ("correlation_data", "bin"),
    0x0B: ("subscription_identifier", "varint"),
    0x11: ("session_expiry_interval", "u32"),
    0x12: ("assigned_client_identifier", "str"),
    0x13: ("server_keep_alive", "u16"),
    0x15: ("authentication_method", "str"),
    0x16: ("authentication_data", "bin"),
    0x17: ("request_problem_information", "byte"),
    0x18: ("will_delay_interval", "u32"),
    0x19: ("request_response_information", "byte"),
    0x1A: ("response_information", "str"),
    0x1C: ("server_reference", "str"),
    0x1F: ("reason_string", "str"),
    0x21: ("receive_maximum", "u16"),
    0x22: ("topic_alias_maximum", "u16"),
    0x23: ("topic_alias", "u16"),
    0x24: ("maximum_qos", "byte"),
    0x25: ("retain_available", "byte"),
    0x26: ("user_property", "pair"),
    0x27: ("maximum_packet_size", "u32"),
    0x28: ("wildcard_subscription_available", "byte"),
    0x29: ("subscription_identifier_available", "byte"),
    0x2A: ("shared_subscription_available", "byte"),
}
PROP_IDS = {name: (pid, typ) for pid, (name, typ) in PROPS.items()}
MULTI_PROPS = {"user_property", "subscription_identifier"}


def enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def dec_varint(buf: bytes, pos: int) -> tuple[int, int]:
    mult, value = 1, 0
    for _ in range(4):
        b = buf[pos]
        pos += 1
        value += (b & 0x7F) * mult
        if not b & 0x80:
            return value, pos
        mult *= 128
    raise ValueError("malformed varint")


def enc_str(s: str | bytes) -> bytes:
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("!H", len(s)) + s


def enc_props(props: dict | None) -> bytes:
    """Encode a dict of MQTT 5 properties (names as in PROPS) with length prefix."""
    body = bytearray()
    for name, value in (props or {}).items():
        pid, typ = PROP_IDS[name]
        values = value if (name in MULTI_PROPS and isinstance(value, list)) else [value]
        for v in values:
            body += enc_varint(pid)
            if typ == "byte":
                body += bytes([v])
            elif typ == "u16":
                body += struct.pack("!H", v)
            elif typ == "u32":
                body += struct.pack("!I", v)
            elif typ == "varint":
                body += enc_varint(v)
            elif typ in ("str", "bin"):
                body += enc_str(v)
            elif typ == "pair":
                body += enc_str(v[0]) + enc_str(v[1])
    return enc_varint(len(body)) + bytes(body)


def dec_props(buf: bytes, pos: int) -> tuple[dict, int]:
    length, pos = dec_varint(buf, pos)
    end = pos + length
    props: dict = {}
    while pos < end:
        pid, pos = dec_varint(buf, pos)
        name, typ = PROPS.get(pid, (f"unknown_{pid:#x}", None))
        if typ == "byte":
            v = buf[pos]; pos += 1
        elif typ == "u16":
            v = struct.unpack_from("!H", buf, pos)[0]; pos += 2
        elif typ == "u32":
            v = struct.unpack_from("!I", buf, pos)[0]; pos += 4
        elif typ == "varint":
            v, pos = dec_varint(buf, pos)
        elif typ in ("str", "bin"):
            ln = struct.unpack_from("!H", buf, pos)[0]; pos += 2
            v = bytes(buf[pos:pos + ln]); pos += ln
            if typ == "str":
                v = v.decode("utf-8", "replace")
        elif typ == "pair":
            ln = struct.unpack_from("!H", buf, pos)[0]; pos += 2
            k = bytes(buf[pos:pos + ln]).decode(); pos += ln
            ln = struct.unpack_from("!H", buf, pos)[0]; pos += 2
            val = bytes(buf[pos:pos + ln]).decode(); pos += ln
            v = (k, val)
        else:
            raise ValueError(f"unknown property id {pid:#x}")
        if name in MULTI_PROPS:
            props.setdefault(name, []).append(v)
        else:
            props[name] = v
    return props, end


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + enc_varint(len(body)) + body


def connect_packet(
    client_id: str = "",
    version: int = 5,
    clean: bool = True,
    keepalive: int = 60,
    props: dict | None = None,
    will: dict | None = None,
    username: str | None = None,
    password: bytes | None = None,
    protocol_name: bytes | None = None,
    reserved_flag: bool = False,
) -> bytes:
    """Build a CONNECT. ``version``: 3 (MQIsdp), 4 (3.1.1), 5, or anything raw.

    ``will`` = {"topic", "payload", "qos", "retain", "props"}.
    """
    if protocol_name is None:
        protocol_name = b"MQIsdp" if version == 3 else b"MQTT"
    flags = 0
    if reserved_flag:
        flags |= 0x01
    if clean:
        flags |= 0x02
    if will:
        flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80
    body = enc_str(protocol_name) + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == 5:
        body += enc_props(props)
    body += enc_str(client_id)
    if will:
        if version == 5:
            body += enc_props(will.get("props"))
        body += enc_str(will["topic"]) + enc_str(will.get("payload", b""))
    if username is not None:
        body += enc_str(username)
    if password is not None:
        body += enc_str(password)
    return packet(CONNECT, 0, body)


def publish_packet(
    topic: str | bytes,
    payload: bytes = b"",
    qos: int = 0,
    packet_id: int | None = None,
    retain: bool = False,
    dup: bool = False,
    version: int = 5,
    props: dict | None = None,
) -> bytes:
    flags = (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = enc_str(topic)
    if qos > 0:
        body += struct.pack("!H", packet_id if packet_id is not None else 1)
    if version == 5:
        body += enc_props(props)
    body += payload
    return packet(PUBLISH, flags, body)


def ack_packet(ptype: int, packet_id: int, version: int = 5, reason: int | None = None) -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP."""
    flags = 0x02 if ptype == PUBREL else 0
    body = struct.pack("!H", packet_id)
    if version == 5 and reason is not None:
        body += bytes([reason])
    return packet(ptype, flags, body)


def subscribe_packet(packet_id: int, filters: Iterable[tuple[str, int]], version: int = 5,
                     props: dict | None = None) -> bytes:
    """``filters``: (topic filter, options byte). For 3.1.1 options is just the QoS."""
    body = struct.pack("!H", packet_id)
    if version == 5:
        body += enc_props(props)
    for f, opts in filters:
        body += enc_str(f) + bytes([opts])
    return packet(SUBSCRIBE, 0x02, body)


def sub_opts(qos: int = 0, no_local: bool = False, rap: bool = False, rh: int = 0) -> int:
    return qos | (0x04 if no_local else 0) | (0x08 if rap else 0) | (rh << 4)


def unsubscribe_packet(packet_id: int, filters: Iterable[str], version: int = 5) -> bytes:
    body = struct.pack("!H", packet_id)
    if version == 5:
        body += enc_props(None)
    for f in filters:
        body += enc_str(f)
    return packet(UNSUBSCRIBE, 0x02, body)


def disconnect_packet(version: int = 5, reason: int | None = None, props: dict | None = None) -> bytes:
    if version == 5 and (reason is not None or props):
        return packet(DISCONNECT, 0, bytes([reason or 0]) + enc_props(props))
    return packet(DISCONNECT, 0, b"")


PINGREQ_PACKET = packet(PINGREQ, 0, b"")


@dataclass
class Packet:
    type: int
    flags: int
    body: bytes
    version: int = 5
    # decoded fields (filled by decode())
    packet_id: int | None = None
    reason: int | None = None          # CONNACK code, PUBACK/.. reason, DISCONNECT reason
    reasons: list[int] = field(default_factory=list)  # SUBACK/UNSUBACK
    props: dict = field(default_factory=dict)
    session_present: bool | None = None
    topic: bytes | None = None
    payload: bytes | None = None

    @property
    def name(self) -> str:
        return PACKET_NAMES.get(self.type, f"type{self.type}")

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 3

    @property
    def dup(self) -> bool:
        return bool(self.flags & 0x08)

    @property
    def retain(self) -> bool:
        return bool(self.flags & 0x01)

    def __repr__(self) -> str:  # concise for assertion messages
        extra = []
        for k in ("packet_id", "reason", "reasons", "topic", "payload", "props", "session_present"):
            v = getattr(self, k)
            if v not in (None, [], {}):
                extra.append(f"{k}={v!r}"[:120])
        return f"<{self.name} flags={self.flags:#x} {' '.join(extra)}>"

    def decode(self) -> "Packet":
        b, v = self.body, self.version
        t = self.type
        if t == CONNACK:
            self.session_present = bool(b[0] & 1)
            self.reason = b[1]
            if v == 5 and len(b) > 2:
                self.props, _ = dec_props(b, 2)
        elif t == PUBLISH:
            ln = struct.unpack_from("!H", b, 0)[0]
            pos = 2 + ln
            self.topic = bytes(b[2:pos])
            if self.qos:
                self.packet_id = struct.unpack_from("!H", b, pos)[0]
                pos += 2
            if v == 5:
                self.props, pos = dec_props(b, pos)
            self.payload = bytes(b[pos:])
        elif t in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            self.packet_id = struct.unpack_from("!H", b, 0)[0]
            self.reason = b[2] if len(b) > 2 else 0
            if v == 5 and len(b) > 3:
                self.props, _ = dec_props(b, 3)
        elif t in (SUBACK, UNSUBACK):
            self.packet_id = struct.unpack_from("!H", b, 0)[0]
            pos = 2
            if v == 5:
                self.props, pos = dec_props(b, pos)
            self.reasons = list(b[pos:])
        elif t == DISCONNECT:
            self.reason = b[0] if b else 0
            if v == 5 and len(b) > 1:
                self.props, _ = dec_props(b, 1)
        return self


# every client created by a test; closed by the autouse fixture in conftest.py
_LIVE_CLIENTS: list = []


def close_all_clients() -> None:
    while _LIVE_CLIENTS:
        c = _LIVE_CLIENTS.pop()
        try:
            c.cleanup()
        except Exception:
            pass


class Closed(Exception):
    """The peer closed the connection."""


class RawClient:
    """Minimal blocking MQTT client over a raw TCP socket."""

    def __init__(self, host: str, port: int, version: int = 5, timeout: float = DEFAULT_TIMEOUT):
        self.version = version
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.closed = False
        self._next_id = 0
        self.pending: list[Packet] = []   # packets set aside by recv_type(skip=...)
        _LIVE_CLIENTS.append(self)

    def cleanup(self) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------
    def next_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for data from broker")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("timed out waiting for data from broker") from None
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            chunk = b""
        if not chunk:
            self.closed = True
            raise Closed()
        self.buf += chunk

    def recv(self, timeout: float = DEFAULT_TIMEOUT) -> Packet:
        """Return the next packet; raises TimeoutError or Closed."""
        if self.pending:
            return self.pending.pop(0)
        return self._recv_wire(timeout)

    def _recv_wire(self, timeout: float) -> Packet:
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                try:
                    length, pos = dec_varint(self.buf, 1)
                except IndexError:
                    length = None
                if length is not None and len(self.buf) >= pos + length:
                    first = self.buf[0]
                    body = bytes(self.buf[pos:pos + length])
                    del self.buf[:pos + length]
                    return Packet(first >> 4, first & 0x0F, body, self.version).decode()
            self._fill(deadline)

    def recv_type(self, ptype: int, timeout: float = DEFAULT_TIMEOUT, skip: Iterable[int] = ()) -> Packet:
        """Receive the next packet of type ``ptype``. Packets whose type is in
        ``skip`` are set aside (returned later by recv()); anything else fails."""
        for i, q in enumerate(self.pending):
            if q.type == ptype:
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            p = self._recv_wire(max(0.01, deadline - time.monotonic()))
            if p.type in skip:
                self.pending.append(p)
                continue
            assert p.type == ptype, f"expected {PACKET_NAMES[ptype]}, got {p!r}"
            return p

    def recv_all(self, duration: float) -> list[Packet]:
        """Collect every packet arriving within ``duration`` seconds (stops on close)."""
        out = []
        deadline = time.monotonic() + duration
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            try:
                out.append(self.recv(left))
            except (TimeoutError, Closed):
                return out

    def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> list[Packet]:
        """Wait until the broker closes the socket; returns packets seen before.

        Raises AssertionError if the connection is still open after ``timeout``.
        """
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection still open after {timeout}s; got {seen!r}")
            try:
                seen.append(self.recv(left))
            except Closed:
                return seen
            except TimeoutError:
                raise AssertionError(f"connection still open after {timeout}s; got {seen!r}") from None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self) -> None:
        """Close abruptly (RST) without DISCONNECT."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    # -- protocol helpers -------------------------------------------------
    def connect(self, client_id: str = "", clean: bool = True, keepalive: int = 60,
                props: dict | None = None, will: dict | None = None, expect_ok: bool = True,
                **kw) -> Packet:
        self.send(connect_packet(client_id, self.version if self.version != 3 else 3, clean,
                                 keepalive, props, will, **kw))
        ack = self.recv_type(CONNACK)
        if expect_ok:
            assert ack.reason == 0, f"CONNACK refused: {ack!r}"
        return ack

    def subscribe(self, filters: list[tuple[str, int]] | str, qos: int = 0, props: dict | None = None) -> Packet:
        if isinstance(filters, str):
            filters = [(filters, qos)]
        pid = self.next_id()
        self.send(subscribe_packet(pid, filters, self.version, props))
        ack = self.recv_type(SUBACK)
        assert ack.packet_id == pid
        return ack

    def unsubscribe(self, filters: list[str]) -> Packet:
        pid = self.next_id()
        self.send(unsubscribe_packet(pid, filters, self.version))
        ack = self.recv_type(UNSUBACK)
        assert ack.packet_id == pid
        return ack

    def publish(self, topic, payload: bytes = b"", qos: int = 0, retain: bool = False,
                props: dict | None = None, wait_ack: bool = True) -> Packet | None:
        """Publish; for QoS 1/2 completes the handshake and returns PUBACK / PUBCOMP
        (for QoS 2 the PUBREC is stored in ``self.last_pubrec``)."""
        pid = self.next_id() if qos else None
        self.send(publish_packet(topic, payload, qos, pid, retain, False, self.version, props))
        if qos == 0 or not wait_ack:
            return None
        if qos == 1:
            ack = self.recv_type(PUBACK, skip=(PUBLISH,))
            assert ack.packet_id == pid
            return ack
        rec = self.recv_type(PUBREC, skip=(PUBLISH,))
        assert rec.packet_id == pid
        self.last_pubrec = rec
        if rec.reason >= 0x80:
            return rec
        self.send(ack_packet(PUBREL, pid, self.version))
        comp = self.recv_type(PUBCOMP, skip=(PUBLISH,))
        assert comp.packet_id == pid
        return comp

    def disconnect(self, reason: int | None = None, props: dict | None = None) -> None:
        try:
            self.send(disconnect_packet(self.version, reason, props))
        except OSError:
            pass
        self.close()


def expect_protocol_close(raw: RawClient, timeout: float = DEFAULT_TIMEOUT,
                          allowed_reasons: Iterable[int] = (0x81, 0x82)) -> list[Packet]:
    """Assert the broker closes the connection, optionally after a DISCONNECT
    (MQTT 5) carrying one of ``allowed_reasons``. Nothing else may be sent."""
    seen = raw.wait_closed(timeout)
    allowed = set(allowed_reasons)
    for p in seen:
        assert p.type == DISCONNECT, f"unexpected packet before close: {p!r}"
        assert raw.version == 5, f"DISCONNECT sent to an MQTT {raw.version} client: {p!r}"
        assert p.reason in allowed, f"DISCONNECT reason {p.reason:#x} not in {[hex(a) for a in allowed]}"
    return seen


# ---------------------------------------------------------------------------
# paho wrapper
# ---------------------------------------------------------------------------

PROTOCOLS = {3: mqtt.MQTTv31, 4: mqtt.MQTTv311, 5: mqtt.MQTTv5}


def props(packet_type=PacketTypes.PUBLISH, **kw) -> Properties:
    """Build paho Properties: props(PacketTypes.CONNECT, SessionExpiryInterval=10)."""
    p = Properties(packet_type)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def rc_value(rc) -> int:
    if hasattr(rc, "value"):
        return rc.value
    return int(rc)


class PahoClient:
    """Synchronous-ish paho client: background network loop, blocking helpers."""

    def __init__(self, broker, client_id: str | None = None, version: int = 5,
                 transport: str = "tcp", manual_ack: bool = False, clean: bool = True):
        self.broker = broker
        self.version = version
        self.transport = transport
        self.client_id = uid("paho") if client_id is None else client_id
        kwargs = {}
        if version != 5:
            kwargs["clean_session"] = clean
        self.clean = clean
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=PROTOCOLS[version],
            transport=transport,
            manual_ack=manual_ack,
            **kwargs,
        )
        if transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.connack = None          # (reason_code, flags, properties)
        self.disconnected = None     # (reason_code, properties)
        self.subacks: dict[int, list] = {}
        self.unsubacks: dict[int, list] = {}
        self.pubacks: dict[int, Any] = {}
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_publish = self._on_publish
        self._loop_started = False
        _LIVE_CLIENTS.append(self)

    def cleanup(self) -> None:
        if not self._loop_started:
            return
        try:
            self.client.disconnect()  # also wakes the network loop
        except Exception:
            pass
        self.stop()

    # -- callbacks
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = (reason_code, flags, properties)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnected = (reason_code, properties)

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append(msg)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.subacks[mid] = list(reason_codes)

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        self.unsubacks[mid] = list(reason_codes) if reason_codes is not None else []

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self.pubacks[mid] = reason_code

    # -- API
    def connect(self, keepalive: int = 60, clean_start: bool = True, properties: Properties | None = None,
                expect_ok: bool = True, timeout: float = DEFAULT_TIMEOUT, port: int | None = None):
        port = port or (self.broker.ws_port if self.transport == "websockets" else self.broker.port)
        kwargs = {}
        if self.version == 5:
            kwargs["clean_start"] = clean_start
            kwargs["properties"] = properties
        self.client.connect(self.broker.host, port, keepalive=keepalive, **kwargs)
        if not self._loop_started:
            self.client.loop_start()
            self._loop_started = True
        ok = wait_for(lambda: self.connack is not None or self.disconnected is not None, timeout)
        assert ok, "no CONNACK from broker"
        if expect_ok:
            assert self.connack is not None, f"connection closed before CONNACK: {self.disconnected}"
            assert rc_value(self.connack[0]) == 0, f"CONNACK refused: {self.connack[0]}"
        return self

    @property
    def session_present(self) -> bool:
        return bool(self.connack[1].session_present)

    @property
    def connack_props(self):
        return self.connack[2]

    def subscribe(self, topic: str, qos: int = 0, options: SubscribeOptions | None = None,
                  properties: Properties | None = None, timeout: float = DEFAULT_TIMEOUT) -> list[int]:
        if self.version == 5:
            opts = options or SubscribeOptions(qos=qos)
            rc, mid = self.client.subscribe(topic, options=opts, properties=properties)
        else:
            rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {rc}"
        assert wait_for(lambda: mid in self.subacks, timeout), f"no SUBACK for {topic}"
        return [rc_value(r) for r in self.subacks[mid]]

    def unsubscribe(self, topic: str, timeout: float = DEFAULT_TIMEOUT) -> list[int]:
        rc, mid = self.client.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        assert wait_for(lambda: mid in self.unsubacks, timeout), f"no UNSUBACK for {topic}"
        return [rc_value(r) for r in self.unsubacks[mid]]

    def publish(self, topic: str, payload=b"", qos: int = 0, retain: bool = False,
                properties: Properties | None = None, wait: bool = True, timeout: float = DEFAULT_TIMEOUT):
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if wait:
            info.wait_for_publish(timeout)
            assert info.is_published(), f"publish to {topic} not completed"
        return info

    def wait_messages(self, n: int, timeout: float = DEFAULT_TIMEOUT, topic: str | None = None):
        def have():
            return len(self.get_messages(topic)) >= n
        wait_for(have, timeout)
        return self.get_messages(topic)

    def get_messages(self, topic: str | None = None):
        with self.lock:
            msgs = list(self.messages)
        if topic is not None:
            msgs = [m for m in msgs if m.topic == topic]
        return msgs

    def clear(self):
        with self.lock:
            self.messages.clear()

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [m.payload for m in self.get_messages(topic)]

    def disconnect(self, reasoncode=None, properties=None):
        try:
            if self.version == 5 and reasoncode is not None:
                from paho.mqtt.reasoncodes import ReasonCode
                rc = ReasonCode(PacketTypes.DISCONNECT, identifier=reasoncode)
                self.client.disconnect(reasoncode=rc, properties=properties)
            else:
                self.client.disconnect()
        except Exception:
            pass
        self.stop()

    def stop(self):
        if self._loop_started:
            self.client.loop_stop()
            self._loop_started = False

    def is_connected(self) -> bool:
        return self.client.is_connected()


def sentinel_roundtrip(sub: PahoClient, pub: PahoClient, topic: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Publish a unique QoS1 message on ``topic`` (which ``sub`` must be subscribed to)
    and wait until it arrives; used to prove that earlier messages had their chance
    to be delivered (per-publisher ordering)."""
    marker = uid("sentinel").encode()
    pub.publish(topic, marker, qos=1)
    ok = wait_for(lambda: marker in sub.payloads(), timeout)
    assert ok, "sentinel message never arrived"


def check_broker_alive(broker, version: int = 5) -> None:
    """Assert the broker process is alive and a fresh client can pub/sub."""
    assert broker.proc.poll() is None, "broker process died"
    topic = uid("alive")
    c = PahoClient(broker, version=version).connect()
    try:
        assert c.subscribe(topic, qos=1) == [1]
        c.publish(topic, b"still-alive", qos=1)
        msgs = c.wait_messages(1)
        assert [m.payload for m in msgs] == [b"still-alive"]
    finally:
        c.disconnect()
