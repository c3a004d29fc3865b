"""Hub processes, the resource registry (manifest folder or `cmq registry`), resources,
password hashes, metrics and MQTT clients for the access (auth / ACL / TLS) suite.

* ``Hub``: one ``cmq standalone`` or ``cmq hub`` process with ``.port .ws_port .tls_port
  .wss_port .admin_port .log_path .stop() .grep() .metric()`` and ``.registry``.
* ``ManifestRegistry`` (standalone: YAML files in ``--manifests``) and ``KvRegistry``
  (cluster: ``cmq registry apply/delete``), both with ``apply(name, docs)`` and
  ``delete(name)``; by default each call waits until every running hub reloaded.
* resource builders: ``credential() topic_acl() rule() secret() mqtt_cluster()``;
  hashes: ``argon2_hash() bcrypt_hash()``.
* clients: ``Raw`` (byte-exact, from the protocol suite's ``RawClient``, over TCP or TLS,
  optionally from another loopback source address), ``connack()``, ``wait_connack()``,
  ``Dev`` (paho-mqtt v2, TCP / TLS / WebSocket / WSS), ``mosquitto()`` and ``MosqSub``.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.subscribeoptions import SubscribeOptions

import helpers as proto  # the protocol suite's codec (sys.path set by conftest.py)
from helpers import (CONNACK, DISCONNECT, PUBACK, PUBLISH, PUBREC, SUBACK, Closed,  # noqa: F401
                     RawClient, connect_packet)
from natsserver import HOST, free_port, http_get, port_open

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]  # dataplane/tests/access -> repo root

CLUSTER_REF = "test"       # clusterRef of every resource (and the MqttCluster's name)
SYNC_TIMEOUT = 10.0        # apply/delete -> hub reloaded
READY_TIMEOUT = 30.0
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")

# reason codes (docs: issue 4 interface)
V5_BAD_CREDENTIALS, V311_BAD_CREDENTIALS = 0x86, 0x04
V5_NOT_AUTHORIZED, V311_NOT_AUTHORIZED = 0x87, 0x05
V5_RATE_LIMITED, V311_RATE_LIMITED = 0x9F, 0x05
SUBACK_DENIED = {5: 0x87, 4: 0x80}
BAD_CREDENTIALS = {5: V5_BAD_CREDENTIALS, 4: V311_BAD_CREDENTIALS}
NOT_AUTHORIZED = {5: V5_NOT_AUTHORIZED, 4: V311_NOT_AUTHORIZED}
RATE_LIMITED = {5: V5_RATE_LIMITED, 4: V311_RATE_LIMITED}


def uid(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cmq_bin() -> str:
    binary = os.environ.get("CMQ_BIN") or str(REPO_ROOT / "target" / "debug" / "cmq")
    if not os.path.isabs(binary):
        binary = str(REPO_ROOT / binary)
    return binary


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy or ``timeout`` passes; returns
    its last value (callers assert on it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# ---------------------------------------------------------------------------
# password hashes
# ---------------------------------------------------------------------------


def argon2_hash(password: str, *, memory_kib: int = 1024, time_cost: int = 1,
                parallelism: int = 1) -> str:
    """An argon2id PHC string. Cheap parameters by default: the hub under test is a debug
    build, where a 64 MiB argon2 takes seconds."""
    from argon2 import PasswordHasher, Type  # argon2-cffi (requirements.txt)
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism,
                          type=Type.ID).hash(password)


def bcrypt_hash(password: str, rounds: int = 4, prefix: str = "2b") -> str:
    """A bcrypt modular-crypt string ($2b$04$...). Uses the `bcrypt` package, else libcrypt."""
    try:
        import bcrypt
        h = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds,
                                                            prefix=prefix.encode())).decode()
    except ImportError:
        import crypt  # deprecated but present in 3.11; libxcrypt knows $2b$
        h = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=2 ** rounds))
    assert len(h) == 60 and h.startswith("$2"), h
    return h


# ---------------------------------------------------------------------------
# resources (dicts; YAML field names are camelCase)
# ---------------------------------------------------------------------------


def _meta(name: str, namespace: str | None, labels: dict | None) -> dict:
    m: dict = {"name": name}
    if namespace:
        m["namespace"] = namespace
    if labels:
        m["labels"] = dict(labels)
    return m


def credential(name: str, *, username: str | None = None, hash: str | None = None,
               secret_ref: str | tuple[str, str] | None = None, client_id: str | None = None,
               client_id_pattern: str | None = None, x509: dict | None = None,
               attributes: dict | None = None, disabled: bool | None = None,
               labels: dict | None = None, namespace: str | None = None,
               cluster_ref: str = CLUSTER_REF) -> dict:
    spec: dict = {"clusterRef": cluster_ref}
    if client_id is not None:
        spec["clientId"] = {"exact": client_id}
    if client_id_pattern is not None:
        spec["clientId"] = {"pattern": client_id_pattern}
    if username is not None:
        spec["username"] = username
    if hash is not None:
        spec["password"] = {"hash": hash}
    if secret_ref is not None:
        if isinstance(secret_ref, str):
            spec["password"] = {"secretRef": {"name": secret_ref}}
        else:
            spec["password"] = {"secretRef": {"name": secret_ref[0], "key": secret_ref[1]}}
    if x509 is not None:
        spec["x509"] = dict(x509)
    if attributes:
        spec["attributes"] = dict(attributes)
    if disabled is not None:
        spec["disabled"] = disabled
    return {"apiVersion": "cmq.io/v1alpha1", "kind": "DeviceCredential",
            "metadata": _meta(name, namespace, labels), "spec": spec}


def rule(action: str, topics: str | list[str], permission: str, *, qos: list[int] | None = None,
         retain: bool | None = None) -> dict:
    r: dict = {"action": action, "topics": [topics] if isinstance(topics, str) else list(topics)}
    if qos is not None:
        r["qos"] = list(qos)
    if retain is not None:
        r["retain"] = retain
    r["permission"] = permission
    return r


def topic_acl(name: str, rules: list[dict], *, applies_to: dict | None = None, priority: int = 0,
              namespace: str | None = None, cluster_ref: str = CLUSTER_REF, **applies) -> dict:
    """``applies_to`` as a dict, or as keywords: ``all=True``, ``usernames=[..]``,
    ``clientIds=[..]``, ``anonymous=True``, ``credentialSelector={...}``."""
    a = dict(applies_to or {})
    a.update(applies)
    return {"apiVersion": "cmq.io/v1alpha1", "kind": "TopicAcl",
            "metadata": _meta(name, namespace, None),
            "spec": {"clusterRef": cluster_ref, "priority": priority, "appliesTo": a,
                     "rules": rules}}


def secret(name: str, values: dict[str, str], *, base64_data: bool = False,
           namespace: str | None = None) -> dict:
    doc: dict = {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(name, namespace, None)}
    if base64_data:
        doc["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    else:
        doc["stringData"] = dict(values)
    return doc


def mqtt_cluster(name: str = CLUSTER_REF, *, auth: dict | None = None) -> dict:
    spec: dict = {}
    if auth is not None:
        spec["auth"] = dict(auth)
    return {"apiVersion": "cmq.io/v1alpha1", "kind": "MqttCluster",
            "metadata": {"name": name}, "spec": spec}


def to_yaml(docs: dict | list[dict] | str) -> str:
    if isinstance(docs, str):
        return docs
    if isinstance(docs, dict):
        docs = [docs]
    return yaml.safe_dump_all(list(docs), sort_keys=False)


# ---------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------

_SAMPLE_RE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)')
_LABEL_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            continue
        labels = dict(_LABEL_RE.findall(m.group(3) or ""))
        try:
            out.append((m.group(1), labels, float(m.group(4))))
        except ValueError:
            pass
    return out


# ---------------------------------------------------------------------------
# registries
# ---------------------------------------------------------------------------


class RegistryError(AssertionError):
    pass


class _Registry:
    """Common part: the running hubs to wait for after a change."""

    def __init__(self):
        self.hubs: list["Hub"] = []

    def _live_hubs(self) -> list["Hub"]:
        return [h for h in self.hubs if h.alive()]

    def _snapshot(self) -> dict:
        return {h: h.sync_state() for h in self._live_hubs()}

    def _wait_synced(self, before: dict, what: str,
                     expected: tuple[float, float] | None = None) -> None:
        """Wait until every hub running before the change counted a registry reload
        (and, when ``expected`` is given, reports that many credentials and ACLs)."""
        for hub, state in before.items():
            def synced():
                if not hub.alive():
                    return True
                now = hub.sync_state()
                return now[0] > state[0] and (expected is None or now[1:] == expected)
            if wait_until(synced, SYNC_TIMEOUT) and hub.alive():
                continue
            if not hub.alive():
                raise RegistryError(f"hub exited after {what}\n{hub.log_tail(40)}")
            raise RegistryError(
                f"hub on :{hub.port} did not report the change within {SYNC_TIMEOUT}s after "
                f"{what}: (reloads_total, credentials, acls) before {state}, now "
                f"{hub.sync_state()}, expected counts {expected}\n{hub.log_tail(30)}")


class ManifestRegistry(_Registry):
    """Standalone: one YAML file per ``name`` in the manifests folder."""

    mode = "standalone"

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.yaml"

    def write(self, name: str, text: str) -> Path:
        """Write the file atomically (temp file, then rename over)."""
        final = self.path(name)
        tmp = self.folder / f".{name}.{uuid.uuid4().hex[:6]}.tmp"
        tmp.write_text(text)
        os.replace(tmp, final)
        return final

    def apply(self, name: str, docs, wait: bool = True) -> Path:
        before = self._snapshot() if wait else {}
        path = self.write(name, to_yaml(docs))
        if wait:
            self._wait_synced(before, f"writing {path.name}")
        return path

    def delete(self, name: str, wait: bool = True) -> None:
        before = self._snapshot() if wait else {}
        self.path(name).unlink()
        if wait:
            self._wait_synced(before, f"removing {name}.yaml")


class KvRegistry(_Registry):
    """Cluster: ``cmq registry apply/delete`` against the cluster's NATS KV buckets.
    ``apply(name, docs)`` keeps a record of the DeviceCredentials and TopicAcls it applied
    under ``name``; re-applying ``name`` deletes those that the new docs no longer have
    (as replacing a manifest file does), ``delete(name)`` deletes them all."""

    mode = "cluster"
    KINDS = ("DeviceCredential", "TopicAcl")

    def __init__(self, nats_url: str, cluster: str, workdir: Path):
        super().__init__()
        self.nats_url = nats_url
        self.cluster = cluster
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, list[tuple[str, str, str]]] = {}
        self.calls = 0
        self.log: list[str] = []  # every command and its output (attached on failure)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [cmq_bin(), "registry", *args[:1], "--nats", self.nats_url,
               "--cluster", self.cluster, *args[1:]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CMQ_")}
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
        self.log.append(f"$ {' '.join(cmd)}\n-> {res.returncode}\n{res.stdout}{res.stderr}")
        return res

    def apply_file(self, path: Path | str) -> subprocess.CompletedProcess:
        """Run ``cmq registry apply -f PATH`` and return the result (no checks, no wait)."""
        return self.run("apply", "-f", str(path))

    def write(self, name: str, text: str) -> Path:
        self.calls += 1
        path = self.workdir / f"registry-{name}-{self.calls}.yaml"
        path.write_text(text)
        return path

    @staticmethod
    def _resources(text: str) -> list[tuple[str, str, str]]:
        out = []
        for doc in yaml.safe_load_all(text):
            if not isinstance(doc, dict) or doc.get("kind") not in KvRegistry.KINDS:
                continue
            meta = doc.get("metadata") or {}
            out.append((doc["kind"], meta.get("namespace") or "default", meta["name"]))
        return out

    def apply(self, name: str, docs, wait: bool = True) -> Path:
        text = to_yaml(docs)
        kinds = {d.get("kind") for d in yaml.safe_load_all(text) if isinstance(d, dict)}
        assert "MqttCluster" not in kinds, \
            "cluster mode takes auth settings as hub flags: no MqttCluster in the registry"
        new = self._resources(text)
        stale = [r for r in self.records.get(name, []) if r not in new]
        before = self._snapshot() if wait else {}
        path = self.write(name, text)
        res = self.apply_file(path)
        if res.returncode != 0:
            raise RegistryError(f"cmq registry apply -f {path} exited {res.returncode}:\n"
                                f"{res.stdout}{res.stderr}")
        for r in stale:
            self._delete_one(*r)
        self.records[name] = new
        if wait:
            self._wait_synced(before, f"cmq registry apply ({name})", self.expected_counts())
        return path

    def _delete_one(self, kind: str, namespace: str, rname: str) -> None:
        res = self.run("delete", "--kind", kind, "--name", rname, "--namespace", namespace)
        if res.returncode != 0:
            raise RegistryError(f"cmq registry delete {kind} {namespace}/{rname} exited "
                                f"{res.returncode}:\n{res.stdout}{res.stderr}")

    def delete(self, name: str, wait: bool = True) -> None:
        before = self._snapshot() if wait else {}
        for r in self.records.pop(name, []):
            self._delete_one(*r)
        if wait:
            self._wait_synced(before, f"cmq registry delete ({name})", self.expected_counts())

    def expected_counts(self) -> tuple[float, float]:
        """(DeviceCredentials, TopicAcls) this registry has in the KV."""
        everything = {r for recs in self.records.values() for r in recs}
        return (float(sum(1 for r in everything if r[0] == "DeviceCredential")),
                float(sum(1 for r in everything if r[0] == "TopicAcl")))


# ---------------------------------------------------------------------------
# hub process
# ---------------------------------------------------------------------------


class HubError(AssertionError):
    pass


@dataclass
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None = None  # the CA clients verify the server with


class Hub:
    def __init__(self, mode: str, registry: _Registry, workdir: Path, args: list[str],
                 tls: TlsFiles | None = None, nats_url: str | None = None):
        self.mode = mode
        self.registry = registry
        self.host = HOST
        self.port = free_port()
        self.ws_port = free_port()
        self.admin_port = free_port()
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.wss_port = free_port() if tls else None
        self.nats_url = nats_url
        self.args = list(args)
        self.log_path = Path(workdir) / f"hub-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def __repr__(self) -> str:
        return f"<Hub {self.mode} mqtt={self.port} admin={self.admin_port}>"

    def __hash__(self) -> int:
        return id(self)

    def command(self) -> list[str]:
        if self.mode == "standalone":
            cmd = [cmq_bin(), "standalone", "--manifests", str(self.registry.folder),
                   "--manifests-reload-ms", "200"]
        else:
            cmd = [cmq_bin(), "hub", "--nats", self.nats_url, "--cluster",
                   self.registry.cluster, "--hub-id", "h1"]
        cmd += ["--mqtt-listen", f"{HOST}:{self.port}",
                "--ws-listen", f"{HOST}:{self.ws_port}",
                "--admin-listen", f"{HOST}:{self.admin_port}",
                "--coap-listen", "off"]
        if self.tls:
            cmd += ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key),
                    "--mqtts-listen", f"{HOST}:{self.tls_port}",
                    "--wss-listen", f"{HOST}:{self.wss_port}"]
        if "--auth-failure-limit" not in self.args:
            cmd += ["--auth-failure-limit", "1000"]
        return cmd + self.args

    def start(self, timeout: float = READY_TIMEOUT) -> "Hub":
        binary = cmq_bin()
        if not os.path.exists(binary):
            raise HubError(f"cmq binary not found at {binary} (build it or set CMQ_BIN)")
        cmd = self.command()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CMQ_")}
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env["NO_COLOR"] = "1"
        self._log = open(self.log_path, "ab")
        self._log.write(f"=== {time.strftime('%H:%M:%S')} start: {' '.join(cmd)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        ports = [p for p in (self.port, self.ws_port, self.tls_port, self.wss_port) if p]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise HubError(f"hub exited with {self.proc.returncode} before ready:\n"
                               f"{' '.join(cmd)}\n--- {self.log_path} ---\n{self.log_tail(60)}")
            if http_get(self.admin_port, "/readyz", 0.5)[0] == 200 and all(
                    port_open(p) for p in ports):
                self.registry.hubs.append(self)
                return self
            time.sleep(0.05)
        self.stop()
        raise HubError(f"hub not ready after {timeout}s:\n{' '.join(cmd)}\n"
                       f"--- {self.log_path} ---\n{self.log_tail(60)}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self in self.registry.hubs:
            self.registry.hubs.remove(self)
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- logs
    def read_log(self) -> str:
        try:
            return ANSI_RE.sub("", self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def grep(self, *needles: str) -> list[str]:
        return [ln for ln in self.read_log().splitlines() if all(n in ln for n in needles)]

    # -- metrics
    def metrics_text(self) -> str:
        status, body = http_get(self.admin_port, "/metrics", 2.0)
        return body.decode(errors="replace") if status == 200 else ""

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
        total = 0.0
        for n, lab, v in parse_metrics(self.metrics_text()):
            if n == name and all(lab.get(k) == str(val) for k, val in labels.items()):
                total += v
        return total

    def sync_state(self) -> tuple[float, float, float]:
        text = self.metrics_text()
        vals = {"r": 0.0, "c": 0.0, "a": 0.0}
        for n, _lab, v in parse_metrics(text):
            if n == "cmq_hub_registry_reloads_total":
                vals["r"] += v
            elif n == "cmq_hub_registry_credentials":
                vals["c"] += v
            elif n == "cmq_hub_registry_acls":
                vals["a"] += v
        return vals["r"], vals["c"], vals["a"]

    def wait_metric(self, name: str, above: float, timeout: float = 10.0, **labels) -> float:
        """Wait until the metric exceeds ``above``; returns its last value."""
        return wait_until(lambda: (self.metric(name, **labels) > above)
                          and self.metric(name, **labels), timeout) or self.metric(name, **labels)


# ---------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------


def client_context(ca: Path | None, cert=None) -> ssl.SSLContext:
    """A client SSLContext trusting ``ca`` (verification on), presenting ``cert``
    (a certs.Cert) when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        ctx.load_verify_locations(cafile=str(ca))
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


def peer_cert_der(hub: Hub, port: int | None = None, cert=None) -> bytes:
    """The DER certificate the hub presents on a new TLS connection."""
    ctx = client_context(hub.tls.ca, cert)
    with socket.create_connection((HOST, port or hub.tls_port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            return t.getpeercert(binary_form=True)


# ---------------------------------------------------------------------------
# byte-exact client
# ---------------------------------------------------------------------------


class Raw(RawClient):
    """The protocol suite's RawClient over TCP or TLS (``tls=True``, verifying the hub with
    its CA, presenting ``cert``), optionally bound to another loopback ``source`` address
    (e.g. "127.0.0.2"): the hub then sees another client IP."""

    def __init__(self, hub: Hub, version: int = 5, *, tls: bool = False, cert=None,
                 source: str | None = None, timeout: float = 5.0, port: int | None = None):
        self.version = version
        if port is None:
            port = hub.tls_port if tls else hub.port
        sock = socket.create_connection((HOST, port), timeout=timeout,
                                        source_address=(source, 0) if source else None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            try:
                sock = client_context(hub.tls.ca, cert).wrap_socket(
                    sock, server_hostname="127.0.0.1")
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.buf = bytearray()
        self.closed = False
        self._next_id = 0
        self.pending = []
        proto._LIVE_CLIENTS.append(self)

    def login(self, client_id: str | None = None, username: str | None = None,
              password: str | bytes | None = None, expect: int | None = 0,
              clean: bool = True, props: dict | None = None,
              will: dict | None = None) -> proto.Packet:
        """Send CONNECT, return the CONNACK (asserting its code when ``expect`` is set).
        ``will``: {"topic", "payload", "qos", "retain", "props"}."""
        if isinstance(password, str):
            password = password.encode()
        self.send(connect_packet(uid("raw") if client_id is None else client_id, self.version,
                                 clean, 60, props, will, username=username, password=password))
        ack = self.recv_type(CONNACK)
        if expect is not None:
            assert ack.reason == expect, \
                f"CONNACK {ack.reason:#04x}, expected {expect:#04x} ({ack!r})"
        return ack

    def puback(self, topic: str, payload: bytes = b"x", qos: int = 1, retain: bool = False) -> int:
        """Publish QoS 1 (PUBACK reason) or QoS 2 (PUBREC reason; PUBREL/PUBCOMP done when
        accepted). Returns the reason code of the first acknowledgement."""
        assert qos in (1, 2)
        ack = self.publish(topic, payload, qos=qos, retain=retain)
        if qos == 2:
            return self.last_pubrec.reason
        return ack.reason

    def expect_closed(self, timeout: float = 10.0) -> list[proto.Packet]:
        """Wait for the hub to close the connection; returns the packets seen before."""
        return self.wait_closed(timeout)


def connack(hub: Hub, client_id: str | None = None, username: str | None = None,
            password: str | bytes | None = None, version: int = 5, **kw) -> int:
    """Reason code of a fresh CONNECT (the connection is closed afterwards)."""
    c = Raw(hub, version, **kw)
    try:
        return c.login(client_id, username, password, expect=None).reason
    finally:
        c.close()


def wait_connack(hub: Hub, expected: int, client_id: str | None = None,
                 username: str | None = None, password: str | bytes | None = None,
                 version: int = 5, timeout: float = 10.0, **kw) -> int:
    """Retry a CONNECT until its CONNACK code is ``expected`` (for changes the hub applies
    asynchronously); returns the last code seen."""
    last = [None]

    def attempt():
        try:
            last[0] = connack(hub, client_id, username, password, version, **kw)
        except (Closed, TimeoutError, OSError) as e:
            last[0] = repr(e)
        return last[0] == expected

    wait_until(attempt, timeout, interval=0.1)
    return last[0]


def tls_refused(hub: Hub, cert=None, version: int = 5, port: int | None = None) -> str | None:
    """Try a TLS connection (presenting ``cert``) and a CONNECT. Returns a description of
    how it failed (handshake error, alert on first read, close), or None when the hub
    answered with a CONNACK (whatever its code). With TLS 1.3 the server's verdict on the
    client certificate arrives after the client finished its handshake, so a refusal
    can surface on the first read."""
    try:
        c = Raw(hub, version, tls=True, cert=cert, port=port)
    except (ssl.SSLError, ConnectionError, OSError) as e:
        return f"handshake: {e!r}"
    try:
        c.send(connect_packet(uid("tls"), version))
        p = c.recv(5.0)
        if p.type == CONNACK:
            return None
        return f"got {p!r}"
    except (ssl.SSLError, Closed, ConnectionError, OSError) as e:
        return f"after handshake: {e!r}"
    except TimeoutError:
        raise AssertionError("TLS connection neither refused nor answered within 5 s") from None
    finally:
        c.close()


# ---------------------------------------------------------------------------
# paho-mqtt client
# ---------------------------------------------------------------------------

_LIVE: list["Dev"] = []


def close_all_clients() -> None:
    while _LIVE:
        c = _LIVE.pop()
        try:
            c.close()
        except Exception:
            pass
    proto.close_all_clients()


def rc_value(rc) -> int:
    return rc.value if hasattr(rc, "value") else int(rc)


class Dev:
    """A paho-mqtt (v2 callback API) device. ``transport``: "tcp" (``tls`` picks the
    mqtts port) or "websockets" (``tls`` picks wss). Never reconnects by itself."""

    def __init__(self, hub: Hub, client_id: str | None = None, version: int = 5, *,
                 username: str | None = None, password: str | None = None,
                 tls: bool = False, cert=None, transport: str = "tcp"):
        self.hub = hub
        self.version = version
        self.client_id = uid("dev") if client_id is None else client_id
        self.transport = transport
        self.tls = tls
        kwargs = {"clean_session": True} if version != 5 else {}
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol={4: mqtt.MQTTv311, 5: mqtt.MQTTv5}[version],
            transport=transport,
            reconnect_on_failure=False,
            **kwargs,
        )
        if transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        if username is not None or password is not None:
            self.client.username_pw_set(username, password)
        if tls:
            self.client.tls_set(ca_certs=str(hub.tls.ca),
                                certfile=str(cert.cert) if cert else None,
                                keyfile=str(cert.key) if cert else None)
        self.lock = threading.Lock()
        self.messages: list[mqtt.MQTTMessage] = []
        self.connack = None
        self.disconnected = None  # (reason code value, properties)
        self.disconnect_event = threading.Event()
        self.subacks: dict[int, list[int]] = {}
        self.pubacks: dict[int, int] = {}
        self._loop = False
        c = self.client
        c.on_connect = lambda cl, ud, flags, rc, props: setattr(self, "connack", (rc, flags, props))
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = lambda cl, ud, mid, rcs, props: self.subacks.__setitem__(
            mid, [rc_value(r) for r in rcs])
        c.on_publish = lambda cl, ud, mid, rc, props: self.pubacks.__setitem__(mid, rc_value(rc))
        _LIVE.append(self)

    def __repr__(self) -> str:
        return f"<Dev {self.client_id} v{self.version} {self.transport}{' tls' if self.tls else ''}>"

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnected = (rc_value(reason_code), properties)
        self.disconnect_event.set()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append(msg)

    def port(self) -> int:
        h = self.hub
        if self.transport == "websockets":
            return h.wss_port if self.tls else h.ws_port
        return h.tls_port if self.tls else h.port

    def connect(self, expect_ok: bool = True, timeout: float = 10.0) -> "Dev":
        kwargs = {"clean_start": True} if self.version == 5 else {}
        self.client.connect(HOST, self.port(), keepalive=30, **kwargs)
        self.client.loop_start()
        self._loop = True
        ok = wait_until(lambda: self.connack is not None or self.disconnected is not None,
                        timeout, 0.01)
        assert ok, f"{self}: no CONNACK within {timeout}s"
        if expect_ok:
            assert self.connack is not None, f"{self}: closed before CONNACK: {self.disconnected}"
            assert rc_value(self.connack[0]) == 0, f"{self}: CONNACK refused: {self.connack[0]}"
        return self

    @property
    def connack_code(self) -> int | None:
        return None if self.connack is None else rc_value(self.connack[0])

    def connected(self) -> bool:
        return self.client.is_connected()

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> list[int]:
        if self.version == 5:
            rc, mid = self.client.subscribe(topic, options=SubscribeOptions(qos=qos))
        else:
            rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"{self}: subscribe failed locally: {rc}"
        assert wait_until(lambda: mid in self.subacks, timeout, 0.01), \
            f"{self}: no SUBACK for {topic}"
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes = b"x", qos: int = 1, retain: bool = False,
                timeout: float = 10.0) -> int | None:
        """Publish; for QoS 1 returns the PUBACK reason code (paho reports it)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"{self}: publish failed locally: {info.rc}"
        if qos == 0:
            return None
        ok = wait_until(lambda: info.mid in self.pubacks, timeout, 0.005)
        assert ok, f"{self}: no PUBACK for {topic} within {timeout}s"
        return self.pubacks[info.mid]

    def payloads(self, topic: str | None = None) -> list[bytes]:
        with self.lock:
            return [bytes(m.payload) for m in self.messages if topic is None or m.topic == topic]

    def wait_payload(self, payload: bytes, timeout: float = 10.0) -> bool:
        return bool(wait_until(lambda: payload in self.payloads(), timeout, 0.01))

    def wait_disconnected(self, timeout: float = 10.0) -> bool:
        return self.disconnect_event.wait(timeout)

    def close(self) -> None:
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


def roundtrip(pub, sub: Dev, topic: str, timeout: float = 10.0) -> bytes:
    """Publish a unique QoS 1 message with ``pub`` (a Dev or Raw) and wait until ``sub``
    (subscribed to ``topic``) has it. Asserts delivery; returns the payload."""
    marker = uid("mark").encode()
    if isinstance(pub, Dev):
        rc = pub.publish(topic, marker, qos=1)
    else:
        rc = pub.puback(topic, marker, qos=1)
    assert rc is not None and rc < 0x80, f"marker publish to {topic} refused: {rc:#x}"
    assert sub.wait_payload(marker, timeout), f"{sub} never got the marker on {topic}"
    return marker


# ---------------------------------------------------------------------------
# mosquitto command line clients
# ---------------------------------------------------------------------------

HAVE_MOSQUITTO = bool(shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub"))


def _mosq_conn(hub: Hub, tls: bool, cert, username, password, version) -> list[str]:
    args = ["-h", HOST, "-p", str(hub.tls_port if tls else hub.port), "-V", version]
    if tls:
        args += ["--cafile", str(hub.tls.ca)]
        if cert is not None:
            args += ["--cert", str(cert.cert), "--key", str(cert.key)]
    if username is not None:
        args += ["-u", username]
    if password is not None:
        args += ["-P", password]
    return args


def mosquitto_pub(hub: Hub, topic: str, message: str, *, qos: int = 1, tls: bool = False,
                  cert=None, username: str | None = None, password: str | None = None,
                  version: str = "mqttv5", client_id: str | None = None,
                  extra: Iterable[str] = ()) -> subprocess.CompletedProcess:
    cmd = ["mosquitto_pub", *_mosq_conn(hub, tls, cert, username, password, version),
           "-t", topic, "-m", message, "-q", str(qos), *extra]
    if client_id:
        cmd += ["-i", client_id]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20)


class MosqSub:
    """mosquitto_sub in the background (-d, so SUBACK is visible), for ``count`` messages."""

    def __init__(self, hub: Hub, topic: str, *, count: int = 1, wait_secs: int = 8,
                 tls: bool = False, cert=None, username: str | None = None,
                 password: str | None = None, version: str = "mqttv5",
                 client_id: str | None = None):
        prefix = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
        cmd = prefix + ["mosquitto_sub", "-d",
                        *_mosq_conn(hub, tls, cert, username, password, version),
                        "-t", topic, "-q", "1", "-C", str(count), "-W", str(wait_secs)]
        if client_id:
            cmd += ["-i", client_id]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self.subscribed = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            if "received suback" in self.lines[-1].lower():
                self.subscribed = True
                return

    def finish(self, timeout: float = 15) -> int:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.lines += out.decode(errors="replace").splitlines()
        return self.proc.returncode

    def data_lines(self) -> list[str]:
        return [ln for ln in self.lines
                if not ln.startswith(("Client ", "Subscribed (mid")) and "SUBSCRIBE" not in ln]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


# ---------------------------------------------------------------------------
# users: a DeviceCredential per username with password "<name>-pw" (bcrypt, cheap)
# ---------------------------------------------------------------------------

_HASHES: dict[str, str] = {}


def pw(name: str) -> str:
    return f"{name}-pw"


def user(name: str, **kw) -> dict:
    """A DeviceCredential ``u-<name>`` for username ``name`` with password ``pw(name)``."""
    if name not in _HASHES:
        _HASHES[name] = bcrypt_hash(pw(name))
    return credential(f"u-{name.lower()}", username=name, hash=_HASHES[name], **kw)


def login(hub: Hub, name: str | None, version: int = 5, client_id: str | None = None,
          **kw) -> Raw:
    """A connected Raw client for user ``name`` (None: anonymous)."""
    c = Raw(hub, version, **kw)
    c.login(client_id, name, pw(name) if name else None)
    return c


def dev(hub: Hub, name: str | None, version: int = 5, client_id: str | None = None,
        **kw) -> Dev:
    """A connected paho client for user ``name`` (None: anonymous)."""
    return Dev(hub, client_id, version, username=name,
               password=pw(name) if name else None, **kw).connect()
