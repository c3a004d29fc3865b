"""Hub processes and MQTT clients for the cluster suite.

* ``Hub``: one ``cmq hub`` process (``.port .ws_port .admin_port .hub_id .kill()
  .terminate() .restart()``).
* ``Cluster``: the hubs sharing one cluster name on one NATS (``cluster[0]`` ...,
  ``.add(n)``).
* ``Mqtt``: a paho-mqtt (v2 API) client that never reconnects by itself, records every
  message with its flags, and tracks PUBACK reason codes per message id.

Byte-exact checks (DISCONNECT reason codes, MQTT 3.1.1 takeover) use ``RawClient`` from
the protocol suite's ``helpers.py``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from natsserver import HOST, free_port, http_get, port_open

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]  # dataplane/tests/cluster -> repo root

READY_TIMEOUT = 30.0     # hub start -> /readyz 200 (debug build, stream creation)
CONNECT_TIMEOUT = 20.0   # CONNECT -> CONNACK (may include a takeover from a dead hub)

# limit name -> CLI flag (the same flags as `cmq standalone`)
LIMIT_FLAGS = {
    "max_connections": "--max-connections",
    "max_packet_size": "--max-packet-size",
    "receive_maximum": "--receive-maximum",
    "max_queued_messages": "--max-queued-messages",
    "max_topic_length": "--max-topic-length",
    "max_topic_levels": "--max-topic-levels",
    "max_subscriptions": "--max-subscriptions",
    "connect_timeout_ms": "--connect-timeout-ms",
    "server_keep_alive": "--server-keep-alive",
    "topic_alias_maximum": "--topic-alias-maximum",
    "max_session_expiry": "--max-session-expiry",
    "drain_timeout_ms": "--drain-timeout-ms",
    "max_publish_wait_ms": "--max-publish-wait-ms",
    "drain_period_ms": "--drain-period-ms",
    "server_reference": "--server-reference",
    "offline_retention_secs": "--offline-retention-secs",
}

CLUSTER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")

# lines that tests want in the run's summary even when they pass (loss/duplicate counts);
# printed by pytest_terminal_summary in conftest.py
SUMMARY: list[str] = []


def note(line: str) -> None:
    """Print ``line`` (shown with -s or on failure) and keep it for the run's summary."""
    print(line)
    SUMMARY.append(line)


def uid(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def cluster_name() -> str:
    """A fresh cluster name, so tests sharing one nats-server never see each other's state."""
    return f"c{uuid.uuid4().hex[:10]}"


def cmq_bin() -> str:
    binary = os.environ.get("CMQ_BIN") or str(REPO_ROOT / "target" / "debug" / "cmq")
    if not os.path.isabs(binary):
        binary = str(REPO_ROOT / binary)
    return binary


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.02):
    """Poll until ``predicate()`` is truthy or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# ---------------------------------------------------------------------------
# hubs
# ---------------------------------------------------------------------------


class HubError(AssertionError):
    pass


class Hub:
    """One ``cmq hub`` process. Ports are chosen once, so ``restart()`` comes back on
    the same addresses with the same hub id."""

    def __init__(self, cluster: "Cluster", hub_id: str):
        self.cluster = cluster
        self.hub_id = hub_id
        self.host = HOST
        self.port = free_port()
        self.ws_port = free_port()
        self.admin_port = free_port()
        self.coap_port = free_port()  # UDP; a free TCP port number is as good a guess
        self.log_path = cluster.workdir / f"hub-{cluster.name}-{hub_id}.log"
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.starts = 0

    def __repr__(self) -> str:
        state = "up" if self.alive() else f"down({self.returncode})"
        return f"<Hub {self.hub_id} mqtt={self.port} admin={self.admin_port} {state}>"

    # -- command line ------------------------------------------------------
    def command(self) -> list[str]:
        c = self.cluster
        cmd = [
            cmq_bin(), "hub",
            "--nats", c.nats_url,
            "--cluster", c.name,
            "--hub-id", self.hub_id,
            "--mqtt-listen", f"{HOST}:{self.port}",
            "--ws-listen", f"{HOST}:{self.ws_port}",
            "--admin-listen", f"{HOST}:{self.admin_port}",
            "--coap-listen", f"{HOST}:{self.coap_port}",
        ]
        if c.stream_replicas is not None:
            cmd += ["--stream-replicas", str(c.stream_replicas)]
        if c.shards is not None:
            cmd += ["--shards", str(c.shards)]
        for key, value in c.limits.items():
            if key not in LIMIT_FLAGS:
                raise ValueError(f"unknown hub limit {key!r}")
            cmd += [LIMIT_FLAGS[key], str(value)]
        cmd += c.extra_args
        return cmd

    # -- lifecycle ---------------------------------------------------------
    def launch(self) -> "Hub":
        """Start the process without waiting for readiness."""
        if self.alive():
            raise HubError(f"{self} already running")
        binary = cmq_bin()
        if not os.path.exists(binary):
            raise HubError(f"cmq binary not found at {binary} (build it or set CMQ_BIN)")
        cmd = self.command()
        # every hub setting has a CMQ_* variable; the flags above say it all, so nothing in
        # the caller's environment (CMQ_CLUSTER, CMQ_MAX_CONNECTIONS, ...) leaks in
        env = {k: v for k, v in os.environ.items() if not k.startswith("CMQ_")}
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        self._log = open(self.log_path, "ab")
        self._log.write(f"=== {time.strftime('%H:%M:%S')} start #{self.starts + 1}: "
                        f"{' '.join(cmd)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        self.starts += 1
        return self

    def ready(self) -> bool:
        return http_get(self.admin_port, "/readyz", timeout=0.5)[0] == 200

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> "Hub":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise HubError(f"hub {self.hub_id} exited with {self.proc.returncode} before "
                               f"ready\n--- {self.log_path} ---\n{self.log_tail(60)}")
            if self.ready() and port_open(self.port):
                return self
            time.sleep(0.05)
        raise HubError(f"hub {self.hub_id} not ready after {timeout}s "
                       f"(/readyz={http_get(self.admin_port, '/readyz')[0]})\n"
                       f"--- {self.log_path} ---\n{self.log_tail(60)}")

    def start(self, timeout: float = READY_TIMEOUT) -> "Hub":
        return self.launch().wait_ready(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL: a hub crash (no drain, no goodbye to NATS)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close_log()

    def signal_term(self) -> None:
        """Send SIGTERM and return at once (see ``wait_exit``)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float | None = None) -> int:
        """Wait for the process to end; SIGKILL and fail if it takes longer than ``timeout``
        (default: drain timeout plus drain period plus 10 s)."""
        if timeout is None:
            lim = self.cluster.limits
            timeout = (int(lim.get("drain_timeout_ms", 10_000))
                       + int(lim.get("drain_period_ms", 0))) / 1000 + 10
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise HubError(f"hub {self.hub_id} still running {timeout}s after SIGTERM\n"
                           f"--- {self.log_path} ---\n{self.log_tail(60)}") from None
        self._close_log()
        return rc

    def terminate(self, timeout: float | None = None) -> int:
        """SIGTERM (drain) and wait for the exit; returns the exit code."""
        if self.proc is None:
            raise HubError(f"hub {self.hub_id} was never started")
        self.signal_term()
        return self.wait_exit(timeout)

    def restart(self, graceful: bool = True, timeout: float = READY_TIMEOUT) -> "Hub":
        """Stop (SIGTERM and wait, or SIGKILL with graceful=False) if running, then start
        again with the same hub id and ports, and wait for /readyz."""
        if self.alive():
            if graceful:
                self.terminate()
            else:
                self.kill()
        return self.start(timeout)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- logs and metrics --------------------------------------------------
    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def grep(self, *needles: str) -> list[str]:
        """Log lines (colour codes removed) containing every one of ``needles``."""
        out = []
        for line in self.read_log().splitlines():
            plain = ANSI_RE.sub("", line)
            if all(n in plain for n in needles):
                out.append(plain)
        return out

    def metrics(self) -> str:
        status, body = http_get(self.admin_port, "/metrics")
        return body.decode(errors="replace") if status == 200 else ""


class Cluster:
    """Hubs sharing one cluster name. Indexable and iterable: ``h1, h2, h3 = cluster``."""

    def __init__(self, nats_url: str, workdir: Path, name: str | None = None,
                 stream_replicas: int | None = None, shards: int | None = None,
                 limits: dict | None = None, extra_args: Iterable[str] = ()):
        self.nats_url = nats_url
        self.workdir = Path(workdir)
        self.name = name or cluster_name()
        assert CLUSTER_NAME_RE.match(self.name), self.name
        self.stream_replicas = stream_replicas
        self.shards = shards
        self.limits = dict(limits or {})
        self.extra_args = list(extra_args)
        self.hubs: list[Hub] = []

    def add(self, n: int = 1, timeout: float = READY_TIMEOUT) -> list[Hub]:
        """Start ``n`` more hubs (ids h<k>, continuing the numbering) all at once, and
        wait until every one is ready."""
        new = [Hub(self, f"h{len(self.hubs) + i + 1}") for i in range(n)]
        self.hubs.extend(new)
        for h in new:
            h.launch()
        for h in new:
            h.wait_ready(timeout)
        return new

    def __iter__(self):
        return iter(self.hubs)

    def __getitem__(self, i) -> Hub:
        return self.hubs[i]

    def __len__(self) -> int:
        return len(self.hubs)

    def kill_all(self) -> None:
        for h in self.hubs:
            h.kill()

    def terminate_all(self) -> list[int]:
        """SIGTERM every live hub at once, then wait for each; returns the exit codes."""
        live = [h for h in self.hubs if h.alive()]
        for h in live:
            h.signal_term()
        return [h.wait_exit() for h in live]

    def log_tails(self, lines: int = 80) -> str:
        return "\n".join(f"--- hub {h.hub_id} ({h.log_path}) ---\n{h.log_tail(lines)}"
                         for h in self.hubs)

    def grep(self, *needles: str) -> list[str]:
        """``<hub id>: <line>`` for every hub log line containing all of ``needles``."""
        return [f"{h.hub_id}: {line}" for h in self.hubs for line in h.grep(*needles)]


# ---------------------------------------------------------------------------
# what a cluster keeps in NATS (for failure evidence)
# ---------------------------------------------------------------------------


def nats_request(url: str, subject: str, payload: bytes, timeout: float = 5.0) -> bytes:
    """One NATS request over the plain text protocol (no client library needed); returns
    the reply's payload."""
    import socket

    host, port = url.split("://", 1)[-1].split(",")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        buf = b""

        def line() -> bytes:
            nonlocal buf
            while b"\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("NATS closed the connection")
                buf += chunk
            out, buf = buf.split(b"\r\n", 1)
            return out

        def exactly(n: int) -> bytes:
            nonlocal buf
            while len(buf) < n + 2:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("NATS closed the connection")
                buf += chunk
            out, buf = buf[:n], buf[n + 2:]
            return out

        line()  # INFO
        inbox = f"_INBOX.{uuid.uuid4().hex}"
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
                  b'"no_responders":true}\r\n'
                  + f"SUB {inbox} 1\r\nPUB {subject} {inbox} {len(payload)}\r\n".encode()
                  + payload + b"\r\n")
        while True:
            head = line()
            if head == b"PING":
                s.sendall(b"PONG\r\n")
            elif head.startswith(b"-ERR"):
                raise ConnectionError(head.decode())
            elif head.startswith(b"MSG "):
                return exactly(int(head.split()[-1]))
            elif head.startswith(b"HMSG "):
                parts = head.split()
                body = exactly(int(parts[-1]))
                hdr_len = int(parts[-2])
                if b" 503" in body[:hdr_len].split(b"\r\n", 1)[0]:
                    raise ConnectionError(f"no responders for {subject}")
                return body[hdr_len:]


def stream_get(cluster: "Cluster", stream: str, request: dict) -> dict | None:
    """``$JS.API.STREAM.MSG.GET`` on ``stream``: the message (subject, seq, data decoded)
    or None when there is none."""
    import base64
    import json

    reply = json.loads(nats_request(cluster.nats_url, f"$JS.API.STREAM.MSG.GET.{stream}",
                                    json.dumps(request).encode()))
    msg = reply.get("message")
    if not msg:
        return None
    msg["data"] = base64.b64decode(msg.get("data", ""))
    return msg


def session_record(cluster: "Cluster", client_id: str) -> dict | None:
    """The session record the cluster holds for ``client_id`` (JSON from the sessions KV
    bucket: owner, epoch, cursors, delivered positions, ``out`` = outgoing in flight), or
    None. Assumes the client id needs no escaping in a KV key."""
    import json

    bucket = f"cmq_{cluster.name}_sessions"
    msg = stream_get(cluster, f"KV_{bucket}", {"last_by_subj": f"$KV.{bucket}.{client_id}"})
    return json.loads(msg["data"]) if msg and msg["data"] else None


def stored_payload(cluster: "Cluster", shard: int, seq: int) -> bytes | None:
    """Payload of the message at ``seq`` in the cluster's message stream ``shard``."""
    msg = stream_get(cluster, f"cmq_{cluster.name}_msgs_{shard}", {"seq": seq})
    return msg["data"] if msg else None


# ---------------------------------------------------------------------------
# MQTT clients
# ---------------------------------------------------------------------------

_LIVE_CLIENTS: list["Mqtt"] = []


def close_all_clients() -> None:
    while _LIVE_CLIENTS:
        c = _LIVE_CLIENTS.pop()
        try:
            c.close()
        except Exception:
            pass


def rc_value(rc) -> int:
    return rc.value if hasattr(rc, "value") else int(rc)


@dataclass
class Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    at: float   # time.monotonic() on arrival
    mid: int = 0  # packet id (QoS 1/2)


class Mqtt:
    """paho-mqtt client bound to one hub. Never reconnects on its own: reconnecting to
    another hub is a new ``Mqtt`` with the same client id."""

    def __init__(self, hub: Hub, client_id: str | None = None, version: int = 5,
                 clean: bool = True, max_inflight: int = 20):
        self.hub = hub
        self.version = version
        self.client_id = client_id or uid("c")
        kwargs = {}
        if version != 5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol={4: mqtt.MQTTv311, 5: mqtt.MQTTv5}[version],
            reconnect_on_failure=False,
            **kwargs,
        )
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)  # unbounded client-side queue
        self.lock = threading.Lock()
        self.messages: list[Msg] = []
        self.connack = None                  # (reason code, flags, properties)
        self.disconnected = None             # (reason code value, properties), the last one
        self.disconnects: list = []          # every (reason code value, properties, time)
        self.disconnect_event = threading.Event()
        self.subacks: dict[int, list[int]] = {}
        self.pubacks: dict[int, int] = {}    # mid -> PUBACK reason code value
        self.puback_at: dict[int, float] = {}  # mid -> time.monotonic() of the PUBACK
        self._loop = False
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        _LIVE_CLIENTS.append(self)

    def __repr__(self) -> str:
        return f"<Mqtt {self.client_id} on {self.hub.hub_id}>"

    # -- callbacks (paho network thread) --
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = (reason_code, flags, properties)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnected = (rc_value(reason_code), properties)
        self.disconnects.append((rc_value(reason_code), properties, time.monotonic()))
        self.disconnect_event.set()

    def _on_message(self, client, userdata, msg):
        m = Msg(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), bool(msg.dup),
                time.monotonic(), msg.mid)
        with self.lock:
            self.messages.append(m)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.subacks[mid] = [rc_value(r) for r in reason_codes]

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self.puback_at[mid] = time.monotonic()
        self.pubacks[mid] = rc_value(reason_code)

    # -- API --
    def will_set(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                 delay: int | None = None) -> "Mqtt":
        """Set the will of the next CONNECT (MQTT 5: ``delay`` = Will Delay Interval)."""
        props = None
        if delay is not None:
            assert self.version == 5, "a will delay needs MQTT 5"
            props = Properties(PacketTypes.WILLMESSAGE)
            props.WillDelayInterval = delay
        self.client.will_set(topic, payload, qos=qos, retain=retain, properties=props)
        return self

    def connect(self, clean_start: bool = True, expiry: int | None = None,
                keepalive: int = 30, timeout: float = CONNECT_TIMEOUT,
                expect_ok: bool = True) -> "Mqtt":
        kwargs = {}
        if self.version == 5:
            kwargs["clean_start"] = clean_start
            if expiry is not None:
                p = Properties(PacketTypes.CONNECT)
                p.SessionExpiryInterval = expiry
                kwargs["properties"] = p
        self.client.connect(self.hub.host, self.hub.port, keepalive=keepalive, **kwargs)
        self.client.loop_start()
        self._loop = True
        ok = wait_for(lambda: self.connack is not None or self.disconnected is not None, timeout)
        assert ok, f"{self}: no CONNACK within {timeout}s"
        if expect_ok:
            assert self.connack is not None, f"{self}: closed before CONNACK: {self.disconnected}"
            assert rc_value(self.connack[0]) == 0, f"{self}: CONNACK refused: {self.connack[0]}"
        return self

    @property
    def session_present(self) -> bool:
        return bool(self.connack[1].session_present)

    def connected(self) -> bool:
        return self.client.is_connected()

    def subscribe(self, topic: str, qos: int = 1, no_local: bool = False,
                  retain_as_published: bool = False, retain_handling: int = 0,
                  timeout: float = 10.0) -> list[int]:
        if self.version == 5:
            opts = SubscribeOptions(qos=qos, noLocal=no_local,
                                    retainAsPublished=retain_as_published,
                                    retainHandling=retain_handling)
            rc, mid = self.client.subscribe(topic, options=opts)
        else:
            rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"{self}: subscribe failed locally: {rc}"
        assert wait_for(lambda: mid in self.subacks, timeout), f"{self}: no SUBACK for {topic}"
        codes = self.subacks[mid]
        assert all(c < 0x80 for c in codes), f"{self}: SUBACK for {topic} refused: {codes}"
        return codes

    def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False,
                wait: bool = True, timeout: float = 10.0) -> mqtt.MQTTMessageInfo:
        """Publish; with ``wait`` (QoS 1) returns only after a successful PUBACK."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"{self}: publish failed locally: {info.rc}"
        if wait and qos > 0:
            ok = wait_for(lambda: info.mid in self.pubacks, timeout, interval=0.002)
            assert ok, f"{self}: no PUBACK for {topic} {payload[:40]!r} within {timeout}s"
            rc = self.pubacks[info.mid]
            assert rc < 0x80, f"{self}: PUBACK reason {rc:#x} for {topic} {payload[:40]!r}"
        return info

    def acked(self, info: mqtt.MQTTMessageInfo) -> bool:
        """True when a successful PUBACK (reason < 0x80) arrived for ``info``."""
        rc = self.pubacks.get(info.mid)
        return rc is not None and rc < 0x80

    def get(self, topic: str | None = None, prefix: bytes | None = None) -> list[Msg]:
        with self.lock:
            msgs = list(self.messages)
        if topic is not None:
            msgs = [m for m in msgs if m.topic == topic]
        if prefix is not None:
            msgs = [m for m in msgs if m.payload.startswith(prefix)]
        return msgs

    def payloads(self, topic: str | None = None, prefix: bytes | None = None) -> list[bytes]:
        return [m.payload for m in self.get(topic, prefix)]

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def last_arrival(self) -> float | None:
        with self.lock:
            return self.messages[-1].at if self.messages else None

    def wait_count(self, n: int, timeout: float, topic: str | None = None,
                   prefix: bytes | None = None) -> list[Msg]:
        wait_for(lambda: len(self.get(topic, prefix)) >= n, timeout)
        return self.get(topic, prefix)

    def wait_disconnected(self, timeout: float) -> bool:
        return self.disconnect_event.wait(timeout)

    def close(self) -> None:
        """DISCONNECT (normal) and stop the network thread."""
        if not self._loop:
            return
        try:
            if self.client.is_connected():
                self.client.disconnect()
                self.disconnect_event.wait(2.0)
        except Exception:
            pass
        self.client.loop_stop()
        self._loop = False


def wait_quiet(clients: Iterable[Mqtt], quiet: float, timeout: float) -> bool:
    """Wait until none of ``clients`` received a message for ``quiet`` seconds, counting
    from this call (so at least one full window of silence), bounded by ``timeout``.
    True when quiet was reached."""
    clients = list(clients)
    start = time.monotonic()
    deadline = start + timeout
    while True:
        now = time.monotonic()
        newest = max([start] + [t for t in (c.last_arrival() for c in clients) if t is not None])
        if now - newest >= quiet:
            return True
        if now >= deadline:
            return False
        time.sleep(0.05)


PROBE = b"probe-"


def await_route(publisher: Mqtt, subscribers: Iterable[Mqtt], topic: str,
                timeout: float = 10.0) -> bool:
    """Publish QoS 1 probes (payload ``probe-<n>``) on ``topic`` every 100 ms until every
    subscriber got at least one (for a shared group: each member, over all the probes).

    This takes subscription propagation between hubs out of what a test measures: the
    test then counts its own payloads, ignoring probes. Returns whether all got a probe.
    """
    subs = list(subscribers)
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        publisher.publish(topic, PROBE + b"%d" % n, qos=1)
        n += 1
        if wait_for(lambda: all(s.get(prefix=PROBE) for s in subs), 0.1):
            return True
    return all(s.get(prefix=PROBE) for s in subs)


def duplicates(payloads: Iterable[bytes]) -> dict[bytes, int]:
    seen: dict[bytes, int] = {}
    for p in payloads:
        seen[p] = seen.get(p, 0) + 1
    return {p: n for p, n in seen.items() if n > 1}


def ranges(numbers: Iterable[int]) -> str:
    """Compact form of a set of integers: "0-251, 300, 302-310"."""
    nums = sorted(set(numbers))
    out, i = [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(f"{nums[i]}" if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ", ".join(out)


def longest_increasing(seq: list[int]) -> int:
    """Length of the longest strictly increasing subsequence (how much arrived in order)."""
    import bisect
    tails: list[int] = []
    for x in seq:
        i = bisect.bisect_left(tails, x)
        if i == len(tails):
            tails.append(x)
        else:
            tails[i] = x
    return len(tails)


def describe_delivery(got: list[bytes], expected: list[bytes]) -> str:
    """A short account of how ``got`` differs from ``expected`` (for assertion messages)."""
    got_set, exp_set = set(got), set(expected)
    missing = [p for p in expected if p not in got_set]
    extra = [p for p in got if p not in exp_set]
    dups = duplicates(got)
    first = next((i for i, (g, e) in enumerate(zip(got, expected)) if g != e),
                 min(len(got), len(expected)))
    return (f"got {len(got)} messages, expected {len(expected)}; "
            f"missing {len(missing)}: {missing[:10]}; "
            f"duplicated {len(dups)}: {dict(list(dups.items())[:10])}; "
            f"unexpected {len(extra)}: {extra[:10]}; "
            f"first difference at index {first}: got {got[first:first + 5]} "
            f"expected {expected[first:first + 5]}")


def assert_exactly_once_in_order(got: list[bytes], expected: list[bytes], who: str) -> None:
    assert got == expected, f"{who}: {describe_delivery(got, expected)}"


def wait_all_acked(publisher: Mqtt, infos: list, timeout: float) -> bool:
    """Wait until every publish in ``infos`` got its PUBACK (any reason code)."""
    return bool(wait_for(lambda: all(i.mid in publisher.pubacks for i in infos), timeout))


class PacedPublisher:
    """Publishes ``n`` messages ``<prefix><i>`` (QoS ``qos``) on ``topic`` at a steady pace
    over ``duration`` seconds from a thread, without waiting for acknowledgements
    (``burst`` messages back to back per step, same average rate).

    ``paused()`` holds the publishing thread (between two publishes) while a test moves
    the publisher's connection; the pace catches up afterwards."""

    def __init__(self, pub: Mqtt, topic: str, n: int, duration: float, qos: int = 1,
                 prefix: bytes = b"m-", burst: int = 1):
        self.pub, self.topic, self.n, self.qos, self.prefix = pub, topic, n, qos, prefix
        self.burst = max(1, burst)  # messages published back to back each step
        self.interval = duration / n
        self.infos: list = []
        self.error: BaseException | None = None
        self.gate = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            t0 = time.monotonic()
            for start in range(0, self.n, self.burst):
                end = min(self.n, start + self.burst)
                with self.gate:
                    for i in range(start, end):
                        self.infos.append(self.pub.publish(self.topic, self.payload(i),
                                                           qos=self.qos, wait=False))
                delay = t0 + end * self.interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        except BaseException as e:  # reported by finish()
            self.error = e

    def start(self) -> "PacedPublisher":
        self.thread.start()
        return self

    def paused(self):
        return self.gate

    @property
    def sent(self) -> int:
        return len(self.infos)

    def payload(self, i: int) -> bytes:
        return self.prefix + b"%d" % i

    def finish(self, ack_timeout: float) -> list[bytes]:
        """Join the thread, wait (bounded) for the acknowledgements (PUBACK, or PUBCOMP for
        QoS 2); returns the payloads acknowledged with a success reason code."""
        self.thread.join(self.n * self.interval + 30)
        assert not self.thread.is_alive(), "publisher thread hung"
        assert self.error is None, f"publisher failed: {self.error!r}"
        wait_all_acked(self.pub, self.infos, ack_timeout)
        return [self.payload(i) for i, info in enumerate(self.infos) if self.pub.acked(info)]

    def refused(self) -> list[bytes]:
        """Payloads acknowledged with a failure reason code (>= 0x80)."""
        return [self.payload(i) for i, info in enumerate(self.infos)
                if self.pub.pubacks.get(info.mid, 0) >= 0x80]

    def reasons(self) -> dict[bytes, int]:
        """payload -> reason code of its PUBACK (QoS 1) or PUBCOMP (QoS 2), when answered."""
        return {self.payload(i): self.pub.pubacks[info.mid]
                for i, info in enumerate(self.infos) if info.mid in self.pub.pubacks}

    def unanswered(self) -> list[bytes]:
        return [self.payload(i) for i, info in enumerate(self.infos)
                if info.mid not in self.pub.pubacks]


def delivery_report(label: str, acked: list[bytes], received: list[bytes],
                    prefix: bytes = b"m-") -> tuple[list[bytes], dict[bytes, int]]:
    """Note (summary + -s output) how ``received`` compares with ``acked``; returns
    (lost payloads in publish order, duplicates)."""
    dups = duplicates(received)
    num = lambda p: int(p[len(prefix):])  # noqa: E731
    lost = sorted(set(acked) - set(received), key=num)
    extra = sorted(set(received) - set(acked), key=num)
    note(f"{label}: {len(acked)} acknowledged, {len(received)} received "
         f"({len(set(received))} distinct), lost {len(lost)}, {len(dups)} duplicated, "
         f"{len(extra)} received without a success ack, "
         f"{longest_increasing([num(p) for p in received])} in order")
    if lost:
        note(f"  lost: {prefix.decode()}[{ranges(num(p) for p in lost)}]")
    by_times: dict[int, list[int]] = {}
    for p, times in dups.items():
        by_times.setdefault(times, []).append(num(p))
    for times, nums in sorted(by_times.items()):
        note(f"  received {times} times: {prefix.decode()}[{ranges(nums)}]")
    return lost, dups


# -- raw MQTT 3.1.1 publisher: a whole burst in one write (stored batches) --

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def publish_qos1(topic: str, payload: bytes, pkid: int, retain: bool = False) -> bytes:
    return _packet(0x32 | (1 if retain else 0), _s(topic) + struct.pack(">H", pkid) + payload)


class RawPublisher:
    """MQTT 3.1.1 over a plain socket: writes bursts in one call, reads PUBACKs; as a
    subscriber it reads PUBLISHes and acknowledges none of them."""

    def __init__(self, hub, client_id: str, clean: bool = True):
        self.sock = socket.create_connection((hub.host, hub.port), timeout=10)
        flags = 0x02 if clean else 0x00
        body = _s("MQTT") + bytes([4, flags]) + struct.pack(">H", 30) + _s(client_id)
        self.sock.sendall(_packet(0x10, body))
        self.buf = b""
        kind, ack = self.read_packet()
        assert kind == 0x20 and ack[1] == 0, f"CONNACK {kind:#x} {ack!r}"

    def read_packet(self) -> tuple[int, bytes]:
        while True:
            if len(self.buf) >= 2:
                n, mult, i = 0, 1, 1
                while i < len(self.buf):
                    b = self.buf[i]
                    n += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not b & 0x80:
                        break
                else:
                    i = None
                if i is not None and len(self.buf) >= i + n:
                    kind, body = self.buf[0] & 0xF0, self.buf[i:i + n]
                    self.buf = self.buf[i + n:]
                    return kind, body
            chunk = self.sock.recv(65536)
            assert chunk, "hub closed the connection"
            self.buf += chunk

    def pubacks(self, n: int) -> list[int]:
        ids = []
        while len(ids) < n:
            kind, body = self.read_packet()
            assert kind == 0x40, f"expected PUBACK, got {kind:#x}"
            ids.append(struct.unpack(">H", body[:2])[0])
        return ids

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self.sock.sendall(_packet(0x82, struct.pack(">H", 1) + _s(topic_filter) + bytes([qos])))
        kind, body = self.read_packet()
        assert kind == 0x90 and body[2] == qos, f"SUBACK {kind:#x} {body!r}"

    def publishes(self, n: int) -> list[tuple[str, bytes, int, bool]]:
        """The next `n` PUBLISHes (QoS 1): topic, payload, packet id, DUP. Not acknowledged."""
        out = []
        while len(out) < n:
            kind, body = self.read_packet()
            assert kind == 0x30, f"expected PUBLISH, got {kind:#x}"
            tlen = struct.unpack(">H", body[:2])[0]
            topic = body[2:2 + tlen].decode()
            pkid = struct.unpack(">H", body[2 + tlen:4 + tlen])[0]
            out.append((topic, body[4 + tlen:], pkid, False))
        return out

    def drop(self) -> None:
        """Closes the socket without DISCONNECT."""
        self.sock.close()

    def close(self) -> None:
        try:
            self.sock.sendall(b"\xe0\x00")
        finally:
            self.sock.close()
