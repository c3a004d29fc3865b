"""The operator against a real control plane: etcd + kube-apiserver (e2e/support/kubeenv.py),
a real nats-server, `cmq-operator` and `cmq hub` processes, and MQTT clients written by
others (mosquitto_pub).

Session fixtures: ``kube`` (the control plane, CRDs from crds/*.yaml applied with a plain
client-side ``kubectl apply``), ``nats`` (one nats-server with JetStream), ``operator``
(one cmq-operator process on the admin kubeconfig). Each test works in its own namespace
(``ns`` fixture) so tests do not see each other's objects.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "e2e" / "support"))
sys.path.insert(0, str(REPO / "dataplane" / "tests" / "support"))

from kubeenv import KubeEnv  # noqa: E402
from natsserver import NatsServer, free_port, http_get  # noqa: E402

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug"
OPERATOR_BIN = os.environ.get("CMQ_OPERATOR_BIN", str(TARGET / "cmq-operator"))
CMQ_BIN = os.environ.get("CMQ_BIN", str(TARGET / "cmq"))


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)


@pytest.fixture(scope="session")
def kube(tmp_path_factory):
    # kube-controller-manager garbage-collects owned children and runs Deployments; its
    # collector must see the CRDs at start, so KubeEnv applies them first.
    # One kwok node (with kube-scheduler): Deployments get pods that report Ready.
    env = KubeEnv(tmp_path_factory.mktemp("kube"), nodes=1, crds=[REPO / "crds"]).start()
    # A plain client-side apply works too (each CRD is far under the 256 KiB annotation limit).
    env.kubectl("apply", "-f", str(REPO / "crds"))
    yield env
    env.stop()


@pytest.fixture(scope="session")
def nats(tmp_path_factory):
    srv = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield srv
    srv.stop()


class Proc:
    def __init__(self, args, log: Path, env=None):
        self.log = log
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                                     env={**os.environ, **(env or {})})

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture(scope="session")
def operator(kube, nats, tmp_path_factory):
    # Depends on nats only so that NATS outlives the operator at teardown.
    port = free_port()
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    p = Proc([OPERATOR_BIN, "--admin-listen", f"127.0.0.1:{port}"], log,
             env={"KUBECONFIG": str(kube.kubeconfig), "RUST_LOG": "info,cmq_operator=debug"})
    p.admin_port = port
    ok = wait_until(lambda: http_get(port, "/readyz")[0] == 200, 60)
    assert ok, f"operator did not become ready:\n{p.tail()}"
    yield p
    p.stop()
    assert p.proc.returncode == 0, f"operator exited with {p.proc.returncode}:\n{p.tail()}"


@pytest.fixture
def ns(kube, operator):
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply(kube, ns: str, doc: dict, check=True, server_side=False):
    args = ["apply", "-n", ns, "-f", "-"] + (["--server-side", "--field-manager=e2e"] if server_side else [])
    return kube.kubectl(*args, input=json.dumps(doc), check=check)


def get(kube, ns: str, kind: str, name: str) -> dict | None:
    r = kube.kubectl("get", "-n", ns, kind, name, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def condition(obj: dict | None, type_: str) -> dict | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def mqtt_cluster(name: str, nats_url: str | None, **spec) -> dict:
    body = {"apiVersion": "cmq.io/v1alpha1", "kind": "MqttCluster", "metadata": {"name": name}, "spec": spec}
    if nats_url:
        body["spec"]["nats"] = {"url": nats_url}
    return body


def credential(name: str, cluster: str, username: str, secret: str | None = None, **spec) -> dict:
    s = {"clusterRef": cluster, "username": username, **spec}
    if secret:
        s["password"] = {"secretRef": {"name": secret}}
    return {"apiVersion": "cmq.io/v1alpha1", "kind": "DeviceCredential", "metadata": {"name": name}, "spec": s}


def secret(name: str, password: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"password": password}}


def kv_entry(nats, bucket: str, key: str) -> tuple[int, bytes] | None:
    """The current value of ``key`` in the NATS KV bucket ``bucket`` as (revision, bytes), read
    with ``$JS.API.STREAM.MSG.GET`` on the bucket's stream; None when there is none (never
    written, deleted, purged, or no such bucket)."""
    request = json.dumps({"last_by_subj": f"$KV.{bucket}.{key}"}).encode()
    reply = json.loads(nats.request(f"$JS.API.STREAM.MSG.GET.KV_{bucket}", request))
    if "error" in reply:
        # 10037: no message on the subject, 10059: no such stream (bucket)
        assert reply["error"].get("code") == 404, reply
        return None
    msg = reply["message"]
    if b"KV-Operation" in base64.b64decode(msg.get("hdrs") or ""):
        return None  # a delete or purge marker
    return msg["seq"], base64.b64decode(msg.get("data") or "")


def topic_acl(name: str, cluster: str, rules: list, **applies) -> dict:
    return {"apiVersion": "cmq.io/v1alpha1", "kind": "TopicAcl", "metadata": {"name": name},
            "spec": {"clusterRef": cluster, "appliesTo": applies or {"all": True}, "rules": rules}}


@pytest.fixture
def operator_hub(kube, tmp_path):
    """A `cmq hub` (or, with component="dispatch", `cmq dispatch`) process started as the
    operator's Deployment would start it: its env and the ConfigMap mounted at /etc/cmq,
    only the listen addresses moved to free loopback ports (no kubelet runs here)."""
    hubs = []

    def start(ns: str, cluster: str, component: str = "hub"):
        dep = json.loads(kube.kubectl("get", "-n", ns, "deployment", f"{cluster}-{component}",
                                      "-o", "json").stdout)
        container = dep["spec"]["template"]["spec"]["containers"][0]
        cm = json.loads(kube.kubectl("get", "-n", ns, "configmap", f"{cluster}-cmq-config", "-o", "json").stdout)
        conf = tmp_path / f"etc-cmq-{len(hubs)}"
        conf.mkdir()
        for name, text in cm["data"].items():
            (conf / name).write_text(text)
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        env["CMQ_MANIFESTS"] = str(conf)
        env["CMQ_HUB_ID"] = f"pod-{len(hubs)}"  # the Downward API's metadata.name
        env["CMQ_DISPATCHER_ID"] = f"pod-{len(hubs)}"
        port, admin = free_port(), free_port()
        env.update(CMQ_MQTT_LISTEN=f"127.0.0.1:{port}", CMQ_WS_LISTEN="off", CMQ_COAP_LISTEN="off",
                   CMQ_ADMIN_LISTEN=f"127.0.0.1:{admin}", CMQ_AUTH_FAILURE_LIMIT="0")
        p = Proc([CMQ_BIN, *container["args"]], tmp_path / f"op-{component}-{len(hubs)}.log", env=env)
        p.port, p.admin_port, p.env = port, admin, env
        hubs.append(p)
        assert wait_until(lambda: http_get(admin, "/readyz")[0] == 200, 60), p.tail()
        return p

    yield start
    for h in hubs:
        h.stop()


def connack(port: int, username: str, password: str, client_id: str = "e2e-dev") -> int | None:
    """The MQTT 5 CONNACK reason code mosquitto_pub reports (None if it got none)."""
    r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-d",
                        "-i", client_id, "-u", username, "-P", password, "-t", "e2e/x", "-m", "1"],
                       capture_output=True, text=True, timeout=20)
    for line in (r.stdout + r.stderr).splitlines():
        if "received CONNACK (" in line:
            return int(line.split("received CONNACK (")[1].split(")")[0])
    return None
