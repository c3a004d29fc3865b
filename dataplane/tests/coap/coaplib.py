"""CoAP (RFC 7252) datagrams built and read by hand, and a raw UDP client for the cases
real clients cannot produce: a duplicate CON with the same message id, an RST in answer
to a notification, malformed datagrams, a ping, a notification left unacknowledged.

    raw = RawCoap(port)                                   # bound to 127.0.0.1, own port
    resp = raw.exchange(POST, "ps/a/b", {"c": "dev1"}, payload=b"x")   # -> Msg (2.04)
    obs = RawObservation(raw, "ps/a/#", {"q": "1"})       # GET Observe:0, waits for 2.05
    obs.payloads()                                        # notifications received so far
    obs.deregister()                                      # GET Observe:1, same token

A thread reads every datagram the gateway sends (``raw.received``) and answers its
confirmable messages as ``raw.on_con`` says ("ack", "rst" or None) and its
non-confirmable ones as ``raw.on_non`` says ("rst" or None).
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

HOST = "127.0.0.1"

# message types
CON, NON, ACK, RST = 0, 1, 2, 3
TYPE_NAMES = {CON: "CON", NON: "NON", ACK: "ACK", RST: "RST"}

# option numbers (RFC 7252 5.10, RFC 7641)
IF_MATCH, URI_HOST, ETAG, IF_NONE_MATCH, OBSERVE, URI_PORT = 1, 3, 4, 5, 6, 7
URI_PATH, CONTENT_FORMAT, MAX_AGE, URI_QUERY, ACCEPT = 11, 12, 14, 15, 17
LINK_FORMAT = 40  # Content-Format application/link-format


def code(cls: int, detail: int) -> int:
    return cls << 5 | detail


EMPTY = 0
GET, POST, PUT, DELETE = 1, 2, 3, 4
CHANGED, CONTENT = code(2, 4), code(2, 5)
BAD_REQUEST, UNAUTHORIZED, BAD_OPTION, FORBIDDEN, NOT_FOUND = (
    code(4, 0), code(4, 1), code(4, 2), code(4, 3), code(4, 4))
METHOD_NAMES = {GET: "GET", POST: "POST", PUT: "PUT", DELETE: "DELETE"}


def code_text(c: int) -> str:
    """"2.04" style (requests too: GET is 0.01)."""
    return f"{c >> 5}.{c & 0x1F:02d}"


# ---------------------------------------------------------------------------
# codec
# ---------------------------------------------------------------------------


def uint(value: int) -> bytes:
    """An option's uint value: big-endian, shortest form (0 is the empty string)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _nibble(n: int) -> tuple[int, bytes]:
    """Delta or length as (4-bit field, extended bytes)."""
    if n < 13:
        return n, b""
    if n < 269:
        return 13, bytes([n - 13])
    return 14, (n - 269).to_bytes(2, "big")


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    """Options in number order (stable, so repeated options keep their order), each as
    delta from the previous number, with the 13/14 extended forms."""
    out = bytearray()
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        d, dext = _nibble(number - last)
        ln, lext = _nibble(len(value))
        out.append(d << 4 | ln)
        out += dext + lext + value
        last = number
    return bytes(out)


def encode(mtype: int, c: int, mid: int, token: bytes = b"",
           options: Iterable[tuple[int, bytes]] = (), payload: bytes = b"") -> bytes:
    assert len(token) <= 8, "use raw bytes for a bad token length"
    head = bytes([0x40 | mtype << 4 | len(token), c]) + (mid & 0xFFFF).to_bytes(2, "big")
    body = encode_options(options)
    return head + token + body + (b"\xff" + payload if payload else b"")


def request_options(path: str | Iterable[str] = (), query: dict | Iterable[str] | None = None,
                    observe: int | None = None, content_format: int | None = None
                    ) -> list[tuple[int, bytes]]:
    """Uri-Path segments (a string is split on "/"; segments are sent as given, so "#"
    is a literal "#"), Uri-Query items ("k=v"), Observe, Content-Format."""
    if isinstance(path, str):
        segs = path.split("/") if path else []
    else:
        segs = list(path)
    opts = [(URI_PATH, s.encode()) for s in segs]
    if isinstance(query, dict):
        items = [f"{k}={v}" for k, v in query.items()]
    else:
        items = list(query or ())
    opts += [(URI_QUERY, q.encode()) for q in items]
    if observe is not None:
        opts.append((OBSERVE, uint(observe)))
    if content_format is not None:
        opts.append((CONTENT_FORMAT, uint(content_format)))
    return opts


class FormatError(ValueError):
    pass


@dataclass
class Msg:
    mtype: int
    code: int
    mid: int
    token: bytes
    options: list[tuple[int, bytes]]
    payload: bytes
    raw: bytes = b""
    seq: int = -1       # arrival index in RawCoap.received
    at: float = 0.0     # time.monotonic() on arrival

    def option(self, number: int) -> bytes | None:
        return next((v for n, v in self.options if n == number), None)

    def option_values(self, number: int) -> list[bytes]:
        return [v for n, v in self.options if n == number]

    @property
    def observe(self) -> int | None:
        v = self.option(OBSERVE)
        return None if v is None else int.from_bytes(v, "big")

    @property
    def content_format(self) -> int | None:
        v = self.option(CONTENT_FORMAT)
        return None if v is None else int.from_bytes(v, "big")

    @property
    def code_text(self) -> str:
        return code_text(self.code)

    def __repr__(self) -> str:
        opts = ", ".join(f"{n}={v!r}" for n, v in self.options)
        return (f"<{TYPE_NAMES[self.mtype]} {self.code_text} mid={self.mid:#06x} "
                f"token={self.token.hex()} [{opts}] {self.payload[:60]!r}>")


def _extended(field_: int, data: bytes, i: int) -> tuple[int, int]:
    if field_ < 13:
        return field_, i
    if field_ == 13:
        if i + 1 > len(data):
            raise FormatError("truncated extended field")
        return data[i] + 13, i + 1
    if field_ == 14:
        if i + 2 > len(data):
            raise FormatError("truncated extended field")
        return int.from_bytes(data[i:i + 2], "big") + 269, i + 2
    raise FormatError("reserved nibble 15")


def decode(data: bytes) -> Msg:
    """Strict RFC 7252 reader (raises FormatError)."""
    if len(data) < 4:
        raise FormatError("shorter than the header")
    if data[0] >> 6 != 1:
        raise FormatError(f"version {data[0] >> 6}")
    tkl = data[0] & 0x0F
    if tkl > 8:
        raise FormatError(f"token length {tkl}")
    if len(data) < 4 + tkl:
        raise FormatError("truncated token")
    i = 4 + tkl
    options, number, payload = [], 0, b""
    while i < len(data):
        if data[i] == 0xFF:
            if i + 1 == len(data):
                raise FormatError("payload marker without payload")
            payload = data[i + 1:]
            break
        d, ln = data[i] >> 4, data[i] & 0x0F
        d, i = _extended(d, data, i + 1)
        ln, i = _extended(ln, data, i)
        if i + ln > len(data):
            raise FormatError("option value past the end")
        number += d
        options.append((number, data[i:i + ln]))
        i += ln
    return Msg((data[0] >> 4) & 3, data[1], int.from_bytes(data[2:4], "big"),
               data[4:4 + tkl], options, payload, raw=data)


# ---------------------------------------------------------------------------
# raw client
# ---------------------------------------------------------------------------

_LIVE: list["RawCoap"] = []


def close_all() -> None:
    while _LIVE:
        try:
            _LIVE.pop().close()
        except Exception:
            pass


@dataclass
class Sent:
    mid: int
    token: bytes
    raw: bytes
    seq: int    # len(received) when sent: responses come after


@dataclass
class Undecodable:
    raw: bytes
    error: str
    seq: int
    at: float


class RawCoap:
    """A UDP socket on 127.0.0.1 connected to one gateway (so it only hears that one)."""

    def __init__(self, port: int, host: str = HOST, on_con: str | None = "ack",
                 on_non: str | None = None):
        self.server = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.connect(self.server)
        self.sock.settimeout(0.05)
        self.local_port = self.sock.getsockname()[1]
        self.on_con = on_con
        self.on_non = on_non
        self.received: list[Msg] = []          # decodable datagrams from the gateway
        self.undecodable: list[Undecodable] = []
        self.answered: list[tuple[str, int]] = []  # ("ack"|"rst", mid) we sent
        self.lock = threading.Lock()
        self._mid = random.randrange(0x10000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True,
                                        name=f"raw-coap-{self.local_port}")
        self._thread.start()
        _LIVE.append(self)

    def __repr__(self) -> str:
        return f"<RawCoap 127.0.0.1:{self.local_port} -> :{self.server[1]}>"

    @property
    def default_client_id(self) -> str:
        """The client id the gateway gives a request without ``c``/``clientid``."""
        return f"coap-{HOST}-{self.local_port}"

    # -- reading -----------------------------------------------------------
    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except socket.timeout:
                continue
            except OSError:   # ICMP port unreachable, or closed
                if self._stop.is_set():
                    return
                time.sleep(0.01)
                continue
            now = time.monotonic()
            try:
                msg = decode(data)
            except FormatError as e:
                with self.lock:
                    self.undecodable.append(Undecodable(data, str(e), len(self.received), now))
                continue
            # answered before anyone can see it: a test that changes on_con / on_non after
            # seeing a message knows how that message was answered
            self._auto_answer(msg)
            with self.lock:
                msg.seq, msg.at = len(self.received), now
                self.received.append(msg)

    def _auto_answer(self, msg: Msg) -> None:
        if msg.code == EMPTY:
            return
        policy = {CON: self.on_con, NON: self.on_non}.get(msg.mtype)
        if policy == "ack" and msg.mtype == CON:
            self.send(encode(ACK, EMPTY, msg.mid))
        elif policy == "rst":
            self.send(encode(RST, EMPTY, msg.mid))
        else:
            return
        with self.lock:
            self.answered.append((policy, msg.mid))

    def messages(self, since: int = 0) -> list[Msg]:
        with self.lock:
            return list(self.received[since:])

    def wait(self, predicate: Callable[[Msg], bool], timeout: float, since: int = 0
             ) -> Msg | None:
        """The first message (arrival index >= ``since``) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.messages(since):
                if predicate(m):
                    return m
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)

    # -- writing -----------------------------------------------------------
    def next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError:
            pass  # an ICMP error from an earlier datagram; UDP gives no guarantee anyway

    def mark(self) -> int:
        with self.lock:
            return len(self.received)

    def request(self, method: int, path: str | Iterable[str], query=None, *,
                mtype: int = CON, observe: int | None = None, token: bytes | None = None,
                payload: bytes = b"", mid: int | None = None,
                content_format: int | None = None) -> Sent:
        mid = self.next_mid() if mid is None else mid
        token = os.urandom(4) if token is None else token
        data = encode(mtype, method, mid, token,
                      request_options(path, query, observe, content_format), payload)
        seq = self.mark()
        self.send(data)
        return Sent(mid, token, data, seq)

    def response(self, sent: Sent, timeout: float = 10.0) -> Msg | None:
        """The response to ``sent``: piggybacked in its ACK, else the first CON/NON with
        its token (a separate response; the reader thread ACKs a CON one)."""
        def is_response(m: Msg) -> bool:
            if m.code == EMPTY:
                return False
            if m.mtype == ACK:
                return m.mid == sent.mid
            return m.token == sent.token and m.mtype in (CON, NON)
        return self.wait(is_response, timeout, since=sent.seq)

    def exchange(self, method: int, path, query=None, timeout: float = 10.0, **kw) -> Msg:
        sent = self.request(method, path, query, **kw)
        resp = self.response(sent, timeout)
        assert resp is not None, (f"{self}: no response to {METHOD_NAMES.get(method, method)} "
                                  f"/{path if isinstance(path, str) else '/'.join(path)} "
                                  f"within {timeout}s; got {self.messages(sent.seq)}")
        return resp

    def ping(self, timeout: float = 2.0) -> Msg | None:
        """Empty CON; returns the gateway's answer to that message id (an RST expected)."""
        mid = self.next_mid()
        seq = self.mark()
        self.send(encode(CON, EMPTY, mid))
        return self.wait(lambda m: m.mid == mid, timeout, since=seq)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        if self in _LIVE:
            _LIVE.remove(self)


class RawObservation:
    """GET with Observe:0 on ``raw``; ``.response`` is the gateway's answer."""

    def __init__(self, raw: RawCoap, path: str, query=None, *, mtype: int = CON,
                 token: bytes | None = None, timeout: float = 10.0):
        self.raw, self.path, self.query, self.mtype = raw, path, query, mtype
        self.sent = raw.request(GET, path, query, mtype=mtype, observe=0, token=token)
        self.token = self.sent.token
        self.response = raw.response(self.sent, timeout)
        assert self.response is not None, f"{raw}: no answer to observe {path} in {timeout}s"

    @property
    def registered(self) -> bool:
        r = self.response
        return r.code == CONTENT and r.observe is not None

    def notifications(self) -> list[Msg]:
        """2.xx CON/NON messages with the token after the registration's response (a
        retransmission, same type and message id, counted once)."""
        seen, out = set(), []
        for m in self.raw.messages(self.response.seq + 1):
            if m.token == self.token and m.mtype in (CON, NON) and m.code >> 5 == 2:
                if (m.mtype, m.mid) not in seen:
                    seen.add((m.mtype, m.mid))
                    out.append(m)
        return out

    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.notifications()]

    def wait_payload(self, payload: bytes, timeout: float) -> Msg | None:
        deadline = time.monotonic() + timeout
        while True:
            m = next((n for n in self.notifications() if n.payload == payload), None)
            if m is not None or time.monotonic() >= deadline:
                return m
            time.sleep(0.005)

    def deregister(self, timeout: float = 10.0) -> Msg:
        """GET with Observe:1 and the same token (and query: the same credentials)."""
        return self.raw.exchange(GET, self.path, self.query, timeout, mtype=self.mtype,
                                 observe=1, token=self.token)


def malformed_cases(mid: int) -> dict[str, bytes]:
    """Datagrams RFC 7252 calls message format errors; each would be a CON GET
    /.well-known/core with message id ``mid`` if it were well-formed."""
    path = encode_options([(URI_PATH, b".well-known"), (URI_PATH, b"core")])
    m = mid.to_bytes(2, "big")
    return {
        "empty datagram": b"",
        "1-byte header": b"\x40",
        "3-byte header": b"\x40\x01" + m[:1],
        "token shorter than TKL": b"\x44\x01" + m + b"\xaa\xbb",
        "token length 9": b"\x49\x01" + m + bytes(range(9)) + path,
        "token length 15": b"\x4f\x01" + m + bytes(range(15)) + path,
        "option delta 15": b"\x40\x01" + m + b"\xf1\x00",
        "option length 15": b"\x40\x01" + m + b"\xbf" + b"x" * 20,
        "option value past the end": b"\x40\x01" + m + b"\xbb.well",
        "extended delta truncated": b"\x40\x01" + m + b"\xd0",
        "extended length truncated": b"\x40\x01" + m + b"\xbe\x01",
    }


def subtle_format_errors(mid: int) -> dict[str, bytes]:
    """Datagrams a lenient parser reads as a normal GET /.well-known/core, which RFC 7252
    says must not be: a version other than 1 ("MUST be silently ignored", section 3) and a
    payload marker followed by no payload ("MUST be processed as a message format error",
    section 3)."""
    path = encode_options([(URI_PATH, b".well-known"), (URI_PATH, b"core")])
    m = mid.to_bytes(2, "big")
    return {
        "version 0": b"\x00\x01" + m + path,
        "version 2": b"\x80\x01" + m + path,
        "version 3 NON": b"\xd0\x01" + m + path,
        "payload marker without payload": b"\x40\x01" + m + path + b"\xff",
    }


# ---------------------------------------------------------------------------
# DTLS 1.2 records (RFC 6347) built by hand, for what the DTLS listener must survive
# ---------------------------------------------------------------------------

CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
CLIENT_HELLO, HELLO_VERIFY_REQUEST = 1, 3
DTLS_1_2 = b"\xfe\xfd"
PSK_WITH_AES_128_CCM_8 = 0xC0A8


def dtls_record(content_type: int, body: bytes, seq: int = 0, epoch: int = 0,
                version: bytes = DTLS_1_2, length: int | None = None) -> bytes:
    """Record header (type, version, epoch, 48-bit sequence number, length) + body."""
    n = len(body) if length is None else length
    return (bytes([content_type]) + version + epoch.to_bytes(2, "big") + seq.to_bytes(6, "big")
            + n.to_bytes(2, "big") + body)


def client_hello(suites: Iterable[int] = (PSK_WITH_AES_128_CCM_8,), *, cookie: bytes = b"",
                 session_id: bytes = b"", extensions: bytes = b"", suite_bytes: bytes | None = None,
                 compression: bytes = b"\x01\x00", ext_length: int | None = None,
                 msg_length: int | None = None, frag_offset: int = 0,
                 frag_length: int | None = None, record_length: int | None = None,
                 seq: int = 0, msg_seq: int = 0) -> bytes:
    """A ClientHello in one record, as a PSK client's first flight (``cookie``: its second,
    with ``seq`` / ``msg_seq`` 1). The other keywords make it lie: lengths that do not
    match what follows."""
    suite_list = (b"".join(s.to_bytes(2, "big") for s in suites)
                  if suite_bytes is None else suite_bytes)
    ext_n = len(extensions) if ext_length is None else ext_length
    body = (DTLS_1_2 + os.urandom(32) + bytes([len(session_id)]) + session_id
            + bytes([len(cookie)]) + cookie + len(suite_list).to_bytes(2, "big") + suite_list
            + compression + ext_n.to_bytes(2, "big") + extensions)
    n = len(body) if msg_length is None else msg_length
    frag = len(body) if frag_length is None else frag_length
    handshake = (bytes([CLIENT_HELLO]) + n.to_bytes(3, "big") + msg_seq.to_bytes(2, "big")
                 + frag_offset.to_bytes(3, "big") + frag.to_bytes(3, "big") + body)
    return dtls_record(HANDSHAKE, handshake, seq=seq, length=record_length)


def is_hello_verify_request(datagram: bytes) -> bool:
    return len(datagram) > 13 and datagram[0] == HANDSHAKE and datagram[13] == HELLO_VERIFY_REQUEST


def dtls_garbage() -> dict[str, bytes]:
    """Datagrams that are no valid first flight, each for a new peer: truncated, lying
    about lengths, or records a handshake does not start with."""
    hello = client_hello()
    return {
        "empty datagram": b"",
        "1 byte": bytes([HANDSHAKE]),
        "record header only": hello[:13],
        "ClientHello truncated in the random": hello[:40],
        "ClientHello truncated in the suites": hello[:13 + 12 + 2 + 32 + 2 + 3],
        "ClientHello without its extensions length": hello[:-2],
        "record length past the end": client_hello(record_length=0xFFFF),
        "record length shorter than the message": client_hello(record_length=20),
        "handshake length past the end": client_hello(msg_length=0xFFFFFF),
        "fragment past the message": client_hello(frag_offset=0xFFFFF0),
        "fragment longer than the message": client_hello(frag_length=0xFFFF),
        "empty handshake message": client_hello(msg_length=0, frag_length=0),
        "odd-length cipher suite list": client_hello(suite_bytes=b"\xc0\xa8\x00"),
        "no cipher suites": client_hello(()),
        "unknown cipher suites only": client_hello((0x1301, 0xFFFF)),
        "session id longer than the message": client_hello(session_id=b"\xff" * 32)[:-60],
        "compression methods past the end": client_hello(compression=b"\xff\x00"),
        "no compression method": client_hello(compression=b"\x00"),
        "extensions length past the end": client_hello(ext_length=0xFFFF),
        "extension longer than the extensions": client_hello(extensions=b"\x00\x0a\xff\xff\x00"),
        "cookie never issued": client_hello(cookie=os.urandom(32)),
        "unknown record version": dtls_record(HANDSHAKE, client_hello()[13:], version=b"\xff\xff"),
        "epoch 1 handshake record": dtls_record(HANDSHAKE, os.urandom(64), epoch=1),
        "application data": dtls_record(APPLICATION_DATA, os.urandom(48), epoch=1),
        "alert": dtls_record(ALERT, b"\x02\x28"),
        "change cipher spec": dtls_record(CHANGE_CIPHER_SPEC, b"\x01"),
        "ClientHello then a garbage record": hello + dtls_record(HANDSHAKE, os.urandom(30)),
        "plain CoAP ping": encode(CON, EMPTY, 0x1234),
    }


def local_ports_to(port: int) -> list[int]:
    """Local ports of the connected UDP sockets on 127.0.0.1 whose peer is 127.0.0.1:port
    (Linux /proc/net/udp): which port a client such as coap-client uses."""
    peer = f"0100007F:{port:04X}"
    out = []
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            local, remote = line.split()[1:3]
            if remote == peer and local.startswith("0100007F:"):
                out.append(int(local.split(":")[1], 16))
    return out


def send_spoofed(src_port: int, dst_port: int, payload: bytes) -> None:
    """A UDP datagram 127.0.0.1:src_port -> 127.0.0.1:dst_port through a raw socket (needs
    root): as if another client's socket had sent it. UDP checksum 0 (none, IPv4)."""
    import struct
    udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(payload), 0) + payload
    lo = socket.inet_aton(HOST)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                     lo, lo)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        s.sendto(ip + udp, (HOST, 0))
