"""The Helm chart: lint, render, install and upgrade against the real apiserver; its RBAC
is enough for the operator (and no more than it needs); the examples are valid resources."""

import json
import os
import re
import subprocess
from pathlib import Path

from conftest import OPERATOR_BIN, REPO, Proc, free_port, http_get, wait_until  # noqa: F401

CHART = REPO / "charts" / "cmq"
NS = "cmq-system"


def test_lint_and_render(kube):
    kube.helm("lint", str(CHART))
    out = kube.helm("template", "cmq", str(CHART), "--namespace", NS).stdout
    kinds = re.findall(r"^kind: (\w+)", out, re.M)
    for kind in ["CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Deployment",
                 "ServiceAccount", "Service"]:
        assert kind in kinds, kinds
    assert out.count("helm.sh/resource-policy: keep") == 4
    bad = kube.helm("template", "cmq", str(CHART), "--set", "replicas=0", check=False)
    assert bad.returncode != 0 and "replicas" in bad.stderr, "values.schema.json must refuse 0 replicas"


def test_install_upgrade_and_rbac_suffices(kube, tmp_path):
    # The CRDs are already installed by the session (kubectl apply): install without them.
    kube.helm("install", "cmq", str(CHART), "--namespace", NS, "--create-namespace",
              "--set", "crds.install=false", "--wait=false")
    dep = json.loads(kube.kubectl("get", "-n", NS, "deployment", "cmq-operator", "-o", "json").stdout)
    env = {e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"CMQ_OPERATOR_LEADER_ELECTION", "POD_NAMESPACE", "POD_NAME"} <= env
    kube.helm("upgrade", "cmq", str(CHART), "--namespace", NS, "--set", "crds.install=false",
              "--set", "logLevel=debug")
    dep = json.loads(kube.kubectl("get", "-n", NS, "deployment", "cmq-operator", "-o", "json").stdout)
    levels = [e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
              if e["name"] == "RUST_LOG"]
    assert levels == ["debug"]

    sa = f"system:serviceaccount:{NS}:cmq-operator"
    can = lambda *a: kube.kubectl("auth", "can-i", "--as", sa, *a, check=False).stdout.strip() == "yes"
    assert can("patch", "devicecredentials.cmq.io/status", "-n", "iot")
    assert can("patch", "deployments.apps", "-n", "iot")
    assert can("get", "secrets", "-n", "iot")
    assert not can("delete", "secrets", "-n", "iot")
    assert not can("create", "pods", "-n", "iot")
    assert not can("delete", "mqttclusters.cmq.io", "-n", "iot")

    # The operator itself, as that ServiceAccount (impersonated), with leader election on:
    # it takes the Lease, becomes ready, and its reconciles meet no "forbidden".
    cfg = tmp_path / "as-operator.kubeconfig"
    text = Path(kube.kubeconfig).read_text()
    cfg.write_text(text.replace("  user:\n", f"  user:\n    as: {sa}\n", 1))
    port = free_port()
    log = tmp_path / "rbac-operator.log"
    p = Proc([OPERATOR_BIN, "--admin-listen", f"127.0.0.1:{port}", "--leader-election",
              "--lease-namespace", NS], log,
             env={"KUBECONFIG": str(cfg), "POD_NAME": "rbac-check", "RUST_LOG": "info"})
    try:
        assert wait_until(lambda: http_get(port, "/readyz")[0] == 200, 60), p.tail()
        lease = json.loads(kube.kubectl("get", "-n", NS, "lease", "cmq-operator", "-o", "json").stdout)
        assert lease["spec"]["holderIdentity"] == "rbac-check"
        wait_until(lambda: "reconcile" in log.read_text(errors="replace"), 10)
        text = log.read_text(errors="replace")
        assert "forbidden" not in text.lower(), p.tail(60)
    finally:
        p.stop()
    kube.helm("uninstall", "cmq", "--namespace", NS)
    assert kube.kubectl("get", "crd", "devicecredentials.cmq.io", check=False).returncode == 0


def test_examples_are_valid(kube):
    kube.kubectl("create", "namespace", "iot", check=False)
    r = kube.kubectl("apply", "--dry-run=server", "-f", str(CHART / "examples"))
    assert r.stdout.count("(server dry run)") == 7, r.stdout


def test_examples_applied_for_real(kube, operator):
    """`kubectl apply -f examples/`: the operator builds every child from the example
    cluster (its NATS address does not resolve here, and the status says so)."""
    kube.kubectl("create", "namespace", "iot", check=False)
    kube.kubectl("apply", "-f", str(CHART / "examples"))
    get = lambda kind, name: json.loads(kube.kubectl("get", "-n", "iot", kind, name, "-o", "json",
                                                     check=False).stdout or "null")
    dep = wait_until(lambda: get("deployment", "demo-hub"), 60)
    assert dep, "the example cluster's hub Deployment was not created"
    pod = dep["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/etc/cmq", "/etc/cmq-tls", "/etc/cmq-client-ca"} <= mounts, mounts
    assert pod["containers"][0]["resources"]["requests"]["cpu"] == "500m"
    svc = wait_until(lambda: get("service", "demo-hub"), 30)
    ports = [(p["port"], p["protocol"]) for p in svc["spec"]["ports"]]
    assert ports == [(1883, "TCP"), (8083, "TCP"), (5683, "UDP"), (8883, "TCP"), (8084, "TCP")], ports
    hpa = wait_until(lambda: get("hpa", "demo-hub"), 30)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    nats = wait_until(lambda: [c for c in (get("mqttcluster", "demo").get("status") or {}).get("conditions", [])
                               if c["type"] == "NatsConnected"], 60)
    assert nats and nats[0]["status"] == "False" and nats[0]["reason"] == "NatsUnavailable", nats
    cred = wait_until(lambda: [c for c in (get("devicecredential", "sensor-1").get("status") or {})
                               .get("conditions", []) if c["type"] == "Synced"], 90)
    assert cred and cred[0]["status"] == "False" and cred[0]["reason"] == "NatsUnavailable", cred
