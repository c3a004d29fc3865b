"""The processes under test and the roles the tests give them.

* ``CoapStandalone``: dispatchlib's ``Standalone`` (``cmq standalone --manifests DIR``) with
  ``--coap-listen 127.0.0.1:<udp port>`` and ``--coaps-listen 127.0.0.1:<udp port>`` (DTLS).
* ``CoapHub`` / ``CoapCluster``: clusterlib's ``Hub`` / ``Cluster`` (``cmq hub`` on a
  nats-server), each hub with its own ``--coap-listen`` and ``--coaps-listen`` ports and
  the cluster's ``--coap-token-secret`` (``CLUSTER_SECRET`` unless the test gives one).
* ``Deployment``: what a test gets. ``coap_hub`` takes the CoAP requests and
  ``mqtt_hub`` the MQTT clients: the same process in standalone mode, hub 1 and hub 2 of
  the cluster in cluster mode, so every cluster test crosses hubs.

Resources (DeviceCredential, TopicAcl and the Secrets they refer to) are given before the
start: a YAML file in the manifests folder (standalone), or ``cmq registry apply
--cluster-secret S`` (cluster: pre-shared keys are sealed with the hubs' secret); the
deployment then waits until every hub reports them (``cmq_hub_registry_credentials`` /
``_acls``).
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import clusterlib
from accesslib import parse_metrics, pw, to_yaml
from clusterlib import PROBE, READY_TIMEOUT, Cluster, Hub, Mqtt, cmq_bin, wait_for
from coaplib import RST, RawCoap
from coaptools import uri as coap_uri
from dispatchlib import Standalone
from natsserver import HOST, free_port

REGISTRY_TIMEOUT = 15.0
# cluster mode: every hub's --coap-token-secret and `cmq registry apply --cluster-secret`
CLUSTER_SECRET = "coap-suite-cluster-secret"
TOKEN_SECRET = "--coap-token-secret"


def free_udp_port() -> int:
    """A port free for TCP (natsserver.free_port, never handed out twice) and for UDP on
    127.0.0.1."""
    for _ in range(200):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free UDP port")


def wait_coap(port: int, timeout: float = 10.0) -> bool:
    """True once the gateway answers a CoAP ping (empty CON) with an RST."""
    raw = RawCoap(port)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = raw.ping(timeout=0.3)
            if reply is not None and reply.mtype == RST:
                return True
        return False
    finally:
        raw.close()


def with_flag(cmd: list[str], flag: str, value: str | None) -> list[str]:
    """``cmd`` with ``flag value``: the value replaced where the command already has the
    flag (``--coap-listen off`` in dispatchlib, a guessed port in clusterlib); ``None``
    removes the flag."""
    cmd = list(cmd)
    if flag in cmd:
        i = cmd.index(flag)
        del cmd[i:i + 2]
    return cmd if value is None else cmd + [flag, value]


def with_coap_listeners(cmd: list[str], coap_port: int, coaps_port: int) -> list[str]:
    cmd = with_flag(cmd, "--coap-listen", f"{HOST}:{coap_port}")
    return with_flag(cmd, "--coaps-listen", f"{HOST}:{coaps_port}")


def flag_value(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


class CoapStandalone(Standalone):
    def __init__(self, workdir: Path, manifests: Path, extra: list[str] | None = None):
        super().__init__(workdir, manifests, extra)
        self.coap_port = free_udp_port()
        self.coaps_port = free_udp_port()

    def command(self) -> list[str]:
        return with_coap_listeners(super().command(), self.coap_port, self.coaps_port)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> "CoapStandalone":
        super().wait_ready(timeout)
        assert wait_coap(self.coap_port), \
            f"standalone: no CoAP on udp {self.coap_port}\n{self.log_tail(40)}"
        return self


class CoapHub(Hub):
    """``overrides``: flags of this hub only (``{flag: value}``, ``None`` removes the flag),
    e.g. another ``--coap-token-secret``."""

    def __init__(self, cluster: Cluster, hub_id: str, overrides: dict | None = None):
        super().__init__(cluster, hub_id)
        self.coap_port = free_udp_port()
        self.coaps_port = free_udp_port()
        self.overrides = dict(overrides or {})
        self.label = f"hub {hub_id}"

    def command(self) -> list[str]:
        cmd = with_coap_listeners(super().command(), self.coap_port, self.coaps_port)
        for flag, value in self.overrides.items():
            cmd = with_flag(cmd, flag, value)
        return cmd

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> "CoapHub":
        super().wait_ready(timeout)
        assert wait_coap(self.coap_port), \
            f"hub {self.hub_id}: no CoAP on udp {self.coap_port}\n{self.log_tail(40)}"
        return self


class CoapCluster(Cluster):
    def add(self, n: int = 1, timeout: float = READY_TIMEOUT,
            overrides: dict | None = None) -> list[Hub]:
        new = [CoapHub(self, f"h{len(self.hubs) + i + 1}", overrides) for i in range(n)]
        self.hubs.extend(new)
        for h in new:
            h.launch()
        for h in new:
            h.wait_ready(timeout)
        return new


def registry_apply(nats_url: str, cluster: str, path: Path, secret: str) -> str:
    """``cmq registry apply -f path --cluster-secret secret`` (what the operator does);
    returns its output."""
    out = subprocess.run([cmq_bin(), "registry", "apply", "--nats", nats_url,
                          "--cluster", cluster, "-f", str(path), "--cluster-secret", secret],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"registry apply failed: {out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def metric(proc, name: str, **labels) -> float:
    """Sum of the samples of ``name`` on ``proc``'s /metrics whose labels include
    ``labels`` (0 when there is none)."""
    total = 0.0
    for n, lab, v in parse_metrics(proc.metrics()):
        if n == name and all(lab.get(k) == str(val) for k, val in labels.items()):
            total += v
    return total


@dataclass
class Deployment:
    mode: str
    procs: list
    cluster: CoapCluster | None = None
    hub_count: int = 1

    def start(self) -> "Deployment":
        if self.cluster is not None:
            self.cluster.add(self.hub_count)
        else:
            for p in self.procs:
                p.start()
        return self

    @property
    def coap_hub(self):
        return self.procs[0]

    @property
    def mqtt_hub(self):
        """The second hub (a hub added by ``add_hub`` does not change it)."""
        return self.procs[min(1, len(self.procs) - 1)]

    def add_hub(self, overrides: dict | None = None) -> "CoapHub":
        """Cluster mode: one more hub (started, ready), with ``overrides`` of its flags."""
        assert self.cluster is not None, "add_hub: cluster mode only"
        return self.cluster.add(1, overrides=overrides)[0]

    # -- clients -----------------------------------------------------------
    def raw(self, hub=None, **kw) -> RawCoap:
        return RawCoap((hub or self.coap_hub).coap_port, **kw)

    def uri(self, path: str, hub=None, **query) -> str:
        return coap_uri((hub or self.coap_hub).coap_port, path, **query)

    def coaps_uri(self, path: str, hub=None, **query) -> str:
        """``coaps://`` on the DTLS listener of ``hub`` (default ``coap_hub``)."""
        return coap_uri((hub or self.coap_hub).coaps_port, path, scheme="coaps", **query)

    def mqtt(self, hub=None, user: str | None = None, client_id: str | None = None) -> Mqtt:
        """A connected paho client (MQTT 5) on ``hub`` (default ``mqtt_hub``), as
        DeviceCredential user ``user`` (password ``<user>-pw``) when given."""
        m = Mqtt(hub or self.mqtt_hub, client_id)
        if user is not None:
            m.client.username_pw_set(user, pw(user))
        return m.connect()

    def subscriber(self, topic: str, user: str | None = None, qos: int = 2) -> Mqtt:
        """An MQTT subscriber on ``mqtt_hub`` that a publish on ``coap_hub`` reaches (the
        route is proven with MQTT probes from ``coap_hub``: payloads ``probe-<n>``)."""
        sub = self.mqtt(user=user)
        sub.subscribe(topic, qos=qos)
        probe_topic = topic.replace("#", "probe").replace("+", "probe")
        pub = self.mqtt(self.coap_hub, user=user)
        assert clusterlib.await_route(pub, [sub], probe_topic), \
            f"MQTT probes on {probe_topic} from {pub.hub} never reached {sub}"
        pub.close()
        return sub

    def await_notified(self, pub: Mqtt, observers: Iterable, topic: str,
                       timeout: float = 15.0) -> bool:
        """Publish QoS 1 probes (``probe-<n>``) on ``topic`` from ``pub`` until every one
        of ``observers`` (anything with ``payloads()``) got one: the observation is then
        known to be in place across the cluster. Then one last probe, and wait for it too:
        as messages of one publisher on one topic arrive in order, no probe is still on
        its way afterwards (a test may then change how its raw client answers)."""
        observers = list(observers)

        def reached(payload: bytes | None = None) -> bool:
            return all((payload in o.payloads()) if payload else
                       any(p.startswith(PROBE) for p in o.payloads()) for o in observers)

        deadline = time.monotonic() + timeout
        n = 0
        while time.monotonic() < deadline:
            pub.publish(topic, PROBE + b"%d" % n, qos=1)
            n += 1
            if wait_for(reached, 0.25):
                last = PROBE + b"last-%d" % n
                pub.publish(topic, last, qos=1)
                return bool(wait_for(lambda: reached(last),
                                     max(1.0, deadline - time.monotonic())))
        return False

    # -- metrics and logs --------------------------------------------------
    def metric(self, name: str, hub=None, **labels) -> float:
        return metric(hub or self.coap_hub, name, **labels)

    def alive(self) -> bool:
        return all(p.alive() for p in self.procs)

    def log_tails(self, lines: int = 60) -> str:
        return "\n".join(f"--- {getattr(p, 'label', p)} ({p.log_path}) ---\n{p.log_tail(lines)}"
                         for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()


def without_probes(payloads: Iterable[bytes]) -> list[bytes]:
    return [p for p in payloads if not p.startswith(PROBE)]


def count_kinds(docs: list[dict]) -> tuple[float, float]:
    return (float(sum(1 for d in docs if d.get("kind") == "DeviceCredential")),
            float(sum(1 for d in docs if d.get("kind") == "TopicAcl")))


def wait_registry(dep: Deployment, docs: list[dict], procs: Iterable | None = None) -> None:
    """Wait until every process (or those of ``procs``) reports the DeviceCredentials and
    TopicAcls of ``docs``."""
    want = count_kinds(docs)
    for p in (dep.procs if procs is None else procs):
        def loaded(p=p) -> bool:
            return (metric(p, "cmq_hub_registry_credentials"),
                    metric(p, "cmq_hub_registry_acls")) == want
        assert wait_for(loaded, REGISTRY_TIMEOUT), \
            (f"{getattr(p, 'label', p)} did not load {want} (credentials, acls) within "
             f"{REGISTRY_TIMEOUT}s: now ({metric(p, 'cmq_hub_registry_credentials')}, "
             f"{metric(p, 'cmq_hub_registry_acls')})\n{p.log_tail(30)}")


def new_standalone(workdir: Path, docs: list[dict], extra: list[str]) -> Deployment:
    """A standalone deployment (not started) with ``docs`` in its manifests folder."""
    manifests = workdir / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    if docs:
        (manifests / "resources.yaml").write_text(to_yaml(docs))
    proc = CoapStandalone(workdir, manifests, ["--auth-failure-limit", "1000", *extra])
    return Deployment("standalone", [proc])


def new_cluster(workdir: Path, nats_url: str, docs: list[dict], extra: list[str],
                hubs: int = 2) -> Deployment:
    """A cluster deployment (hubs not started yet) with ``docs`` applied to its KV, sealed
    with the hubs' ``--coap-token-secret`` (the test's, else ``CLUSTER_SECRET``)."""
    name = clusterlib.cluster_name()
    secret = flag_value(extra, TOKEN_SECRET) or CLUSTER_SECRET
    if docs:
        path = workdir / f"resources-{name}.yaml"
        path.write_text(to_yaml(docs))
        registry_apply(nats_url, name, path, secret)
    cluster = CoapCluster(nats_url, workdir, name=name, shards=4,
                          extra_args=["--auth-failure-limit", "1000",
                                      *with_flag(extra, TOKEN_SECRET, secret)])
    return Deployment("cluster", cluster.hubs, cluster, hubs)
