"""nats-server processes for the end-to-end tests (no Python NATS client needed).

    from natsserver import NatsServer, NatsCluster, nats_server_bin

    srv = NatsServer(workdir).start()          # one node, JetStream on, loopback only
    srv.url                                    # nats://127.0.0.1:PORT
    srv.consumer_count(stream_contains="c_ab12")   # from /jsz on the monitor port
    srv.stop()                                 # SIGTERM, then SIGKILL after a bound

    cl = NatsCluster(workdir, size=3).start()  # 3 routed nodes, JetStream meta group formed
    cl.url                                     # nats://a,nats://b,nats://c (comma-separated)
    cl.nodes[1].kill()                         # kill -9
    cl.nodes[1].restart()                      # same ports, config and store dir
    cl.stop()

The binary is $NATS_SERVER_BIN, else the last line printed by scripts/install-nats.sh
(which installs nats-server >= 2.11 into ~/.cache/cmq/bin when missing).

Every server started here is also killed at interpreter exit, so a crashed test run
leaves no nats-server behind.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]  # dataplane/tests/support -> repo root
HOST = "127.0.0.1"

# ---------------------------------------------------------------------------
# ports (same approach as dataplane/tests/protocol/conftest.py)
# ---------------------------------------------------------------------------

_used_ports: set[int] = set()


def _bindable(family, addr, port) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((addr, port))  # deliberately without SO_REUSEADDR
        return True
    except OSError:
        return False


def free_port() -> int:
    """A free loopback port in 20000-32000 (outside the kernel's ephemeral range, where
    TIME_WAIT sockets of short client connections would collide), bindable on both the
    IPv4 loopback and the IPv6 wildcard, never handed out twice by this process."""
    for _ in range(500):
        port = random.randint(20000, 32000)
        if port in _used_ports:
            continue
        if _bindable(socket.AF_INET, HOST, port) and _bindable(socket.AF_INET6, "::", port):
            _used_ports.add(port)
            return port
    raise RuntimeError("no free port found")


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def http_get(port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """(status, body); status 0 when the server could not be reached."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read() if e.fp else b""
    except (urllib.error.URLError, OSError, ValueError):
        return 0, b""


# ---------------------------------------------------------------------------
# the binary
# ---------------------------------------------------------------------------

_BIN: str | None = None


def nats_server_bin() -> str:
    """Path of a nats-server >= 2.11: $NATS_SERVER_BIN, else scripts/install-nats.sh."""
    global _BIN
    if _BIN:
        return _BIN
    env = os.environ.get("NATS_SERVER_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise RuntimeError(f"NATS_SERVER_BIN={env} is not an executable")
        _BIN = env
        return _BIN
    script = REPO_ROOT / "scripts" / "install-nats.sh"
    try:
        out = subprocess.run([str(script)], check=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, timeout=600, text=True)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{script} failed:\n{e.stderr}") from None
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    if not lines or not os.access(lines[-1], os.X_OK):
        raise RuntimeError(f"{script} printed no usable path: {out.stdout!r}\n{out.stderr}")
    _BIN = lines[-1]
    os.environ["NATS_SERVER_BIN"] = _BIN  # child processes / later calls agree
    return _BIN


# ---------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------

_LIVE: list["NatsServer"] = []


@atexit.register
def _kill_leftovers() -> None:
    for s in list(_LIVE):
        try:
            s.kill()
        except Exception:
            pass


class NatsServer:
    """One nats-server process with JetStream, bound to 127.0.0.1.

    Standalone (``routes`` is None): started with command-line flags
    ``-js -sd DIR -p PORT -a 127.0.0.1 -m MONITOR``. As a cluster node: a config file
    with ``server_name``, ``jetstream { store_dir }`` and ``cluster { name, listen,
    routes }``. Ports and store dir are fixed at construction, so ``restart()`` brings
    back the same node with its JetStream data.
    """

    def __init__(self, workdir: os.PathLike | str, name: str | None = None, *,
                 port: int | None = None, monitor_port: int | None = None,
                 cluster_name: str | None = None, cluster_port: int | None = None,
                 routes: list[int] | None = None, debug: bool = False):
        self.workdir = Path(workdir)
        self.name = name or f"nats-{random.randrange(16**6):06x}"
        self.host = HOST
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = routes
        self.debug = debug
        self.store_dir = self.workdir / f"{self.name}-js"
        self.log_path = self.workdir / f"{self.name}.log"
        self.conf_path = self.workdir / f"{self.name}.conf"
        self.proc: subprocess.Popen | None = None
        self._log = None

    # -- addresses ---------------------------------------------------------
    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def __repr__(self) -> str:
        state = "up" if self.alive() else "down"
        return f"<NatsServer {self.name} {self.url} monitor={self.monitor_port} {state}>"

    # -- command line ------------------------------------------------------
    def _write_conf(self) -> None:
        routes = ", ".join(f'"nats-route://{HOST}:{p}"' for p in (self.routes or []))
        self.conf_path.write_text(
            f'server_name: "{self.name}"\n'
            f'listen: "{HOST}:{self.port}"\n'
            f'http: "{HOST}:{self.monitor_port}"\n'
            f"jetstream {{\n  store_dir: \"{self.store_dir}\"\n}}\n"
            f"cluster {{\n"
            f'  name: "{self.cluster_name}"\n'
            f'  listen: "{HOST}:{self.cluster_port}"\n'
            f"  routes: [{routes}]\n"
            f"}}\n"
        )

    def command(self) -> list[str]:
        binary = nats_server_bin()
        if self.routes is None:
            cmd = [binary, "-js", "-sd", str(self.store_dir), "-p", str(self.port),
                   "-a", HOST, "-m", str(self.monitor_port), "-n", self.name]
        else:
            self._write_conf()
            cmd = [binary, "-c", str(self.conf_path)]
        if self.debug:
            cmd.append("-D")
        return cmd

    # -- lifecycle ---------------------------------------------------------
    def launch(self) -> "NatsServer":
        """Start the process without waiting for readiness."""
        if self.alive():
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        self._log = open(self.log_path, "ab")
        self._log.write(f"=== {time.strftime('%H:%M:%S')} start: {' '.join(cmd)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        if self not in _LIVE:
            _LIVE.append(self)
        return self

    def start(self, timeout: float = 20.0) -> "NatsServer":
        self.launch()
        self.wait_ready(timeout)
        return self

    def healthy(self, js_only: bool = False) -> bool:
        """/healthz answers 200. Without ``js_only`` this includes JetStream being
        current with the meta leader, which in a cluster means the meta group formed."""
        path = "/healthz?js-enabled-only=true" if js_only else "/healthz"
        return http_get(self.monitor_port, path, timeout=0.5)[0] == 200

    def wait_ready(self, timeout: float = 20.0, js_only: bool = False) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}\n"
                                   f"--- log ---\n{self.log_tail()}")
            if port_open(self.port) and self.healthy(js_only):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout}s: "
                           f"/healthz={http_get(self.monitor_port, '/healthz')}\n"
                           f"--- log ---\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if still running after ``timeout``. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._closed()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9: no flush, no goodbye to routes or clients."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._closed()

    def restart(self, timeout: float = 30.0, graceful: bool = True) -> "NatsServer":
        """Stop (SIGTERM, or SIGKILL with graceful=False) and start again on the same
        ports with the same store dir."""
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start(timeout)

    def _closed(self) -> None:
        if self in _LIVE:
            _LIVE.remove(self)
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- logs --------------------------------------------------------------
    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def log_digest(self, problems: int = 30, last: int = 5) -> str:
        """Warnings and errors (the last ``problems`` of them) plus the last ``last`` lines:
        what matters in a failure report, without the startup banner."""
        all_lines = self.read_log().splitlines()
        bad = [ln for ln in all_lines if any(t in ln for t in ("[WRN]", "[ERR]", "[FTL]"))]
        out = bad[-problems:]
        out += [ln for ln in all_lines[-last:] if ln not in out]
        return "\n".join(out)

    # -- monitoring --------------------------------------------------------
    def monitor(self, path: str, timeout: float = 2.0) -> dict:
        status, body = http_get(self.monitor_port, path, timeout)
        if status != 200:
            raise RuntimeError(f"GET {path} on {self.name}: status {status}: {body[:300]!r}")
        return json.loads(body)

    def jsz(self) -> dict:
        """/jsz with per-account stream and consumer details."""
        return self.monitor("/jsz?accounts=true&streams=true&consumers=true&config=true")

    def streams(self, contains: str | None = None) -> list[dict]:
        """Stream details this node knows (each with ``consumer_detail``)."""
        out = []
        for acc in self.jsz().get("account_details") or []:
            for st in acc.get("stream_detail") or []:
                if contains is None or contains in st.get("name", ""):
                    out.append(st)
        return out

    def consumers(self, stream_contains: str | None = None) -> list[tuple[str, str]]:
        """(stream, consumer) names, for streams whose name contains ``stream_contains``
        (e.g. a cmq cluster name; KV buckets are streams named ``KV_<bucket>``)."""
        out = []
        for st in self.streams(stream_contains):
            for c in st.get("consumer_detail") or []:
                out.append((st.get("name", "?"), c.get("name", "?")))
        return out

    def consumer_count(self, stream_contains: str | None = None) -> int:
        if stream_contains is None:
            return int(self.jsz().get("consumers", 0))
        return len(self.consumers(stream_contains))

    # -- a bare-bones request over the NATS protocol (for checks; no client library) --
    def request(self, subject: str, payload: bytes = b"", timeout: float = 5.0) -> bytes:
        """Send one request (e.g. ``$JS.API.STREAM.NAMES``) and return the reply payload."""
        return nats_request(self.port, subject, payload, timeout)


def nats_request(port: int, subject: str, payload: bytes = b"", timeout: float = 5.0,
                 host: str = HOST) -> bytes:
    inbox = f"_INBOX.t{random.randrange(16**12):012x}"
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as s:
        buf = b""

        def read_line() -> bytes:
            nonlocal buf
            while b"\r\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no reply to {subject}")
                s.settimeout(left)
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("nats-server closed the connection")
                buf += chunk
            line, buf = buf.split(b"\r\n", 1)
            return line

        def read_exact(n: int) -> bytes:
            nonlocal buf
            while len(buf) < n + 2:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no reply to {subject}")
                s.settimeout(left)
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("nats-server closed the connection")
                buf += chunk
            data, buf = buf[:n], buf[n + 2:]
            return data

        read_line()  # INFO
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n'
                  + f"SUB {inbox} 1\r\n".encode()
                  + f"PUB {subject} {inbox} {len(payload)}\r\n".encode() + payload + b"\r\n"
                  + b"PING\r\n")
        while True:
            line = read_line()
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise RuntimeError(line.decode(errors="replace"))
            elif line.startswith(b"MSG "):
                return read_exact(int(line.split()[-1]))
            elif line.startswith(b"HMSG "):
                parts = line.split()
                hdr_len, total = int(parts[-2]), int(parts[-1])
                data = read_exact(total)
                if b"503" in data[:hdr_len]:
                    raise RuntimeError(f"no responders for {subject}")
                return data[hdr_len:]
            # PONG, +OK: ignore


class NatsCluster:
    """``size`` routed nodes (server names ``<prefix>-1..N``), JetStream on each."""

    def __init__(self, workdir: os.PathLike | str, size: int = 3, name: str | None = None,
                 debug: bool = False):
        self.workdir = Path(workdir)
        self.name = name or f"nc{random.randrange(16**6):06x}"
        cluster_ports = [free_port() for _ in range(size)]
        self.nodes = [
            NatsServer(self.workdir, f"{self.name}-{i + 1}", cluster_name=self.name,
                       cluster_port=cluster_ports[i],
                       routes=[p for j, p in enumerate(cluster_ports) if j != i],
                       debug=debug)
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        """All nodes' client URLs, comma-separated (what NATS clients accept)."""
        return ",".join(n.url for n in self.nodes)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, timeout: float = 30.0) -> "NatsCluster":
        for n in self.nodes:
            n.launch()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every live node healthy (JetStream current) and agreeing on one meta leader."""
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            if n.alive():
                n.wait_ready(max(0.1, deadline - time.monotonic()))
        while True:
            leader = self.meta_leader()
            if leader:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"cluster {self.name}: no JetStream meta leader after {timeout}s")
            time.sleep(0.1)

    def meta_leader(self) -> str | None:
        """The meta leader's server name when every live node reports the same one."""
        leaders = set()
        for n in self.nodes:
            if not n.alive():
                continue
            try:
                meta = n.monitor("/jsz").get("meta_cluster") or {}
            except (RuntimeError, ValueError):
                return None
            leaders.add(meta.get("leader"))
        if len(leaders) == 1:
            leader = leaders.pop()
            return leader or None
        return None

    def stop(self) -> None:
        for n in self.nodes:
            if n.alive():
                n.proc.send_signal(signal.SIGTERM)
        for n in self.nodes:
            n.stop()

    def kill(self) -> None:
        for n in self.nodes:
            n.kill()

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(f"--- {n.name} ({n.log_path}) ---\n{n.log_digest(lines)}" for n in self.nodes)
