"""Broker fixtures for the black-box MQTT protocol suite.

    pytest --broker=cmq         # default; binary from $CMQ_BIN or <repo>/target/debug/cmq
    pytest --broker=mosquitto   # reference broker (Debian mosquitto 2.0.x)
    pytest --state=nats         # cmq on NATS JetStream state: `cmq hub` on one nats-server

With ``--state=nats`` (env CMQ_TEST_STATE) one session-scoped nats-server is started
(binary from $NATS_SERVER_BIN or scripts/install-nats.sh) and every broker is a
single ``cmq hub --nats URL --cluster <fresh random name> --hub-id h1`` with the same
listener and limit flags, so brokers of different tests never share state. The option
does not apply to mosquitto.

The ``broker`` fixture is a factory: ``b = broker()`` or
``b = broker(max_connections=3, max_packet_size=1024)`` starts a fresh broker on
free loopback ports and returns an object with ``.host .port .ws_port
.admin_port .proc .stop()`` (``admin_port`` is None for mosquitto). Every broker
started by a test is killed at teardown.

Tests marked ``@pytest.mark.cmq_only`` are skipped when running against
mosquitto (CMQ-specific behaviour, or a limit mosquitto does not have).
"""

from __future__ import annotations

import os
import sys
import uuid
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]  # dataplane/tests/protocol -> repo root
HOST = "127.0.0.1"
sys.path.insert(1, str(HERE.parent / "support"))  # natsserver (only used with --state=nats)

# limit name -> cmq CLI flag
CMQ_FLAGS = {
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
}


def pytest_addoption(parser):
    parser.addoption(
        "--broker",
        action="store",
        default=os.environ.get("CMQ_TEST_BROKER", "cmq"),
        choices=("cmq", "mosquitto"),
        help="broker under test (default: cmq; env CMQ_TEST_BROKER)",
    )
    parser.addoption(
        "--state",
        action="store",
        default=os.environ.get("CMQ_TEST_STATE", "memory"),
        choices=("memory", "nats"),
        help="cmq state: memory (`cmq standalone`, default) or nats (`cmq hub` on a "
             "nats-server); env CMQ_TEST_STATE; ignored for mosquitto",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "cmq_only: CMQ-specific behaviour/limit; skipped for mosquitto")
    config.addinivalue_line(
        "markers",
        "memory_state_only(reason): behaviour of the in-memory state that cluster mode "
        "deliberately does not have (docs/architecture.md); skipped with --state=nats")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--broker") == "cmq" and config.getoption("--state") == "nats":
        for item in items:
            marker = item.get_closest_marker("memory_state_only")
            if marker is not None:
                why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
                item.add_marker(pytest.mark.skip(reason=f"memory state only: {why}"))
    if config.getoption("--broker") != "mosquitto":
        return
    if os.environ.get("CMQ_TEST_RUN_CMQ_ONLY") == "1":
        return  # debugging aid: see how mosquitto fares on the CMQ-only tests
    skip = pytest.mark.skip(reason="cmq_only: not applicable to mosquitto")
    for item in items:
        if "cmq_only" in item.keywords:
            item.add_marker(skip)


from natsserver import free_port  # noqa: E402  (one port picker for every suite)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def _http_ok(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=0.5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Broker:
    def __init__(self, kind: str, limits: dict, workdir: Path, nats_url: str | None = None):
        self.kind = kind
        self.nats_url = nats_url  # cmq only: run `cmq hub` on this NATS instead of standalone
        self.limits = dict(limits)
        self.host = HOST
        self.port = free_port()
        self.ws_port = free_port()
        self.admin_port = free_port() if kind == "cmq" else None
        self.workdir = workdir
        self.log_path = workdir / f"{kind}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    # -- command lines -----------------------------------------------------
    def _cmq_cmd(self) -> list[str]:
        binary = os.environ.get("CMQ_BIN") or str(REPO_ROOT / "target" / "debug" / "cmq")
        if not os.path.isabs(binary):
            binary = str(REPO_ROOT / binary)
        if not os.path.exists(binary):
            pytest.fail(f"cmq binary not found at {binary} (build it or set CMQ_BIN)")
        if self.nats_url:
            # a fresh cluster name per broker: no state shared with other tests
            mode = ["hub", "--nats", self.nats_url, "--cluster", f"p{uuid.uuid4().hex[:10]}",
                    "--hub-id", "h1"]
        else:
            mode = ["standalone"]
        cmd = [
            binary, *mode,
            "--mqtt-listen", f"{HOST}:{self.port}",
            "--ws-listen", f"{HOST}:{self.ws_port}",
            "--admin-listen", f"{HOST}:{self.admin_port}",
            "--coap-listen", "off",
        ]
        for key, value in self.limits.items():
            if key not in CMQ_FLAGS:
                raise ValueError(f"unknown broker limit {key!r}")
            cmd += [CMQ_FLAGS[key], str(value)]
        return cmd

    def _mosquitto_cmd(self) -> list[str]:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        lim = self.limits
        glob = ["allow_anonymous true", "persistence false", "log_type all",
                "per_listener_settings false", "set_tcp_nodelay true"]
        if "max_packet_size" in lim:
            glob.append(f"max_packet_size {lim['max_packet_size']}")
        if "receive_maximum" in lim:
            # mosquitto advertises max_inflight_messages as Receive Maximum
            glob.append(f"max_inflight_messages {lim['receive_maximum']}")
        if "max_queued_messages" in lim:
            glob.append(f"max_queued_messages {lim['max_queued_messages']}")
        if "server_keep_alive" in lim and int(lim["server_keep_alive"]) >= 10:
            # mosquitto 2.0.11 rejects max_keepalive < 10
            glob.append(f"max_keepalive {lim['server_keep_alive']}")
        if "max_session_expiry" in lim:
            # mosquitto's granularity is hours; only a coarse approximation.
            hours = max(1, int(lim["max_session_expiry"]) // 3600)
            glob.append(f"persistent_client_expiration {hours}h")
        listener = [f"listener {self.port} {HOST}"]
        if "max_connections" in lim:
            listener.append(f"max_connections {lim['max_connections']}")
        if "topic_alias_maximum" in lim:
            listener.append(f"max_topic_alias {lim['topic_alias_maximum']}")
        ws = [f"listener {self.ws_port} {HOST}", "protocol websockets"]
        # limits without a mosquitto equivalent (max_topic_length, max_topic_levels,
        # max_subscriptions, connect_timeout_ms, drain_timeout_ms) are ignored; tests
        # relying on them are marked cmq_only.
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        conf.write_text("\n".join(glob + listener + ws) + "\n")
        return [binary, "-c", str(conf)]

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> "Broker":
        cmd = self._cmq_cmd() if self.kind == "cmq" else self._mosquitto_cmd()
        self.log = open(self.log_path, "wb")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        if self.nats_url:
            for var in ("CMQ_NATS_URL", "CMQ_CLUSTER", "CMQ_HUB_ID"):
                env.pop(var, None)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        # a hub on NATS also connects and creates its streams before it is ready
        deadline = time.monotonic() + (30 if self.nats_url else 10)
        ports = [self.port, self.ws_port]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if all(_port_open(p) for p in ports) and (
                self.admin_port is None or _http_ok(self.admin_port, "/readyz")
            ):
                return self
            time.sleep(0.05)
        log = self.read_log()
        self.stop()
        pytest.fail(f"{self.kind} did not become ready: {' '.join(cmd)}\n--- log ---\n{log[-3000:]}")

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM (graceful shutdown) without waiting."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if getattr(self, "log", None):
            self.log.close()
            self.log = None


@pytest.fixture(autouse=True)
def _close_clients():
    """Stop every paho loop / raw socket a test left open (no stray reconnects)."""
    yield
    from helpers import close_all_clients
    close_all_clients()


@pytest.fixture(scope="session")
def broker_kind(request) -> str:
    return request.config.getoption("--broker")


@pytest.fixture(scope="session")
def nats_url(request, broker_kind, tmp_path_factory):
    """URL of the session's nats-server with --state=nats (cmq only), else None."""
    if broker_kind != "cmq" or request.config.getoption("--state") != "nats":
        yield None
        return
    from natsserver import NatsServer
    try:
        srv = NatsServer(tmp_path_factory.mktemp("nats"), name="nats-protocol").start()
    except RuntimeError as e:
        pytest.exit(f"--state=nats: could not start nats-server: {e}", returncode=1)
    yield srv.url
    srv.stop()


@pytest.fixture
def broker(request, broker_kind, nats_url, tmp_path):
    """Factory: ``broker(**limits)`` -> started Broker (killed at teardown)."""
    started: list[Broker] = []

    def factory(**limits) -> Broker:
        b = Broker(broker_kind, limits, tmp_path, nats_url=nats_url).start()
        started.append(b)
        return b

    yield factory
    from helpers import close_all_clients
    close_all_clients()  # while the broker is still up: clean, fast disconnects
    for b in started:
        b.stop()


@pytest.fixture
def b(broker):
    """A default-configured broker for tests that need no special limits."""
    return broker()


@pytest.fixture
def is_mosquitto(broker_kind) -> bool:
    return broker_kind == "mosquitto"
