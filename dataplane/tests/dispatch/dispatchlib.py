"""Processes and receivers for the dispatch (ForwardRule) suite.

* ``Standalone``: ``cmq standalone --manifests DIR`` (rules in process).
* ``Dispatcher``: one ``cmq dispatch`` process of a cluster (``.kill() .terminate()``).
* ``HttpReceiver``: a local HTTP server that records requests and answers with scripted
  statuses (``script=[500, 500]`` then 200).
* ``apply_rules(cluster, docs)``: ``cmq registry apply`` of ForwardRule YAML into a
  cluster's NATS KV (what the operator does).
* ``nats_collect(url, subject, count)``: a NATS subscriber (nats-py) that returns messages.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import yaml

from clusterlib import ANSI_RE, READY_TIMEOUT, cmq_bin, wait_for
from natsserver import HOST, free_port, http_get, port_open


def rule_doc(name: str, sql: str, sinks: list[dict], cluster: str = "dev", **spec) -> dict:
    """A ForwardRule resource."""
    body = {"clusterRef": cluster, "sql": sql, "sinks": sinks}
    body.update(spec)
    return {"apiVersion": "cmq.io/v1alpha1", "kind": "ForwardRule",
            "metadata": {"name": name, "namespace": "default"}, "spec": body}


def write_docs(path: Path, docs: list[dict]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


class Proc:
    """A cmq process with a log file and an admin port."""

    name = "cmq"

    def __init__(self, workdir: Path, label: str):
        self.workdir = Path(workdir)
        self.label = label
        self.admin_port = free_port()
        self.log_path = self.workdir / f"{label}.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def launch(self) -> "Proc":
        env = {k: v for k, v in os.environ.items() if not k.startswith("CMQ_")}
        env.setdefault("RUST_LOG", "info")
        self._log = open(self.log_path, "ab")
        cmd = self.command()
        self._log.write(f"=== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        return self

    def ready(self) -> bool:
        return http_get(self.admin_port, "/readyz", timeout=0.5)[0] == 200

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> "Proc":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"{self.label} exited with {self.proc.returncode}\n"
                                     f"{self.log_tail(60)}")
            if self.ready():
                return self
            time.sleep(0.05)
        raise AssertionError(f"{self.label} not ready after {timeout}s\n{self.log_tail(60)}")

    def start(self) -> "Proc":
        return self.launch().wait_ready()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 40.0) -> int:
        if self.alive():
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"{self.label} still running {timeout}s after SIGTERM\n"
                                 f"{self.log_tail(40)}") from None

    def read_log(self) -> str:
        try:
            return ANSI_RE.sub("", self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def metrics(self) -> str:
        status, body = http_get(self.admin_port, "/metrics")
        return body.decode(errors="replace") if status == 200 else ""

    def metric(self, name: str, **labels) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, rest = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += float(value)
        return total


class Standalone(Proc):
    def __init__(self, workdir: Path, manifests: Path, extra: list[str] | None = None):
        super().__init__(workdir, "standalone")
        self.manifests = manifests
        self.port = free_port()
        self.host = HOST
        self.hub_id = "standalone"  # for clusterlib.Mqtt
        self.extra = list(extra or [])

    def command(self) -> list[str]:
        return [cmq_bin(), "standalone", "--manifests", str(self.manifests),
                "--manifests-reload-ms", "200",
                "--mqtt-listen", f"{HOST}:{self.port}", "--ws-listen", "off",
                "--admin-listen", f"{HOST}:{self.admin_port}", "--coap-listen", "off",
                *self.extra]

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> "Standalone":
        super().wait_ready(timeout)
        assert wait_for(lambda: port_open(self.port), 10)
        return self


class Dispatcher(Proc):
    def __init__(self, workdir: Path, nats_url: str, cluster: str, ident: str,
                 shards: int | None = None, extra: list[str] | None = None):
        super().__init__(workdir, f"dispatch-{cluster}-{ident}")
        self.nats_url = nats_url
        self.cluster = cluster
        self.ident = ident
        self.shards = shards
        self.extra = list(extra or [])

    def command(self) -> list[str]:
        cmd = [cmq_bin(), "dispatch", "--nats", self.nats_url, "--cluster", self.cluster,
               "--dispatcher-id", self.ident, "--admin-listen", f"{HOST}:{self.admin_port}"]
        if self.shards is not None:
            cmd += ["--shards", str(self.shards)]
        return cmd + self.extra


def apply_rules(nats_url: str, cluster: str, path: Path) -> None:
    """``cmq registry apply -f path`` against the cluster's NATS KV."""
    out = subprocess.run([cmq_bin(), "registry", "apply", "--nats", nats_url,
                          "--cluster", cluster, "-f", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"registry apply failed: {out.stdout}\n{out.stderr}"


# ---------------------------------------------------------------------------
# HTTP receiver
# ---------------------------------------------------------------------------


class HttpReceiver:
    """Records every request (method, path, headers, body); answers with the statuses in
    ``script`` first (one per request), then with ``default``."""

    def __init__(self, script: list[int] | None = None, default: int = 200):
        self.script = list(script or [])
        self.default = default
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(n)
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else receiver.default
                    receiver.requests.append({"method": self.command, "path": self.path,
                                              "headers": dict(self.headers), "body": body,
                                              "status": status})
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            do_PUT = do_POST  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{HOST}:{self.port}/ingest"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if 200 <= r["status"] < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------
# NATS
# ---------------------------------------------------------------------------


def nats_collect(url: str, subject: str, count: int, timeout: float, start=None,
                 stream: str | None = None) -> list:
    """Subscribes to ``subject`` (creating JetStream stream ``stream`` on it first when
    given), calls ``start()`` once subscribed, and returns up to ``count`` messages
    (subject, data, headers) received within ``timeout``."""
    import nats as natspy

    async def run():
        nc = await natspy.connect(url)
        got = []
        done = asyncio.Event()

        async def on_msg(m):
            got.append((m.subject, m.data, dict(m.headers or {})))
            if len(got) >= count:
                done.set()

        if stream:
            js = nc.jetstream()
            await js.add_stream(name=stream, subjects=[subject])
        await nc.subscribe(subject, cb=on_msg)
        await nc.flush()
        if start:
            await asyncio.get_running_loop().run_in_executor(None, start)
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        await nc.drain()
        return got

    return asyncio.run(run())


def nats_stream_count(url: str, stream: str) -> int:
    import nats as natspy

    async def run():
        nc = await natspy.connect(url)
        info = await nc.jetstream().stream_info(stream)
        await nc.close()
        return info.state.messages

    return asyncio.run(run())


def json_rows(values) -> list[dict]:
    return [json.loads(v) for v in values]
