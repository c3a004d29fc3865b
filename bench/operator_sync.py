#!/usr/bin/env python3
"""How long the operator takes to sync 1 000 DeviceCredentials into NATS KV, and its memory.

    bench/operator_sync.py [--count 1000] [--secrets] [--operator target/release/cmq-operator]

Starts a real control plane (e2e/support/kubeenv.py), a nats-server and `cmq-operator`,
creates one MqttCluster, then applies COUNT DeviceCredentials in one `kubectl apply
--server-side` and polls until every one reports `Synced=True`. With `--secrets` each
credential's password is a Secret (COUNT Secrets applied first), so the operator hashes
COUNT passwords with argon2id; without it the credentials carry a bcrypt hash. Prints the
time from the apply to the last Synced, and the operator's RSS (peak, sampled every 100 ms
from /proc, and at the end).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "e2e" / "support"))
sys.path.insert(0, str(REPO / "dataplane" / "tests" / "support"))
from kubeenv import KubeEnv  # noqa: E402
from natsserver import NatsServer, free_port, http_get  # noqa: E402

HASH = "$2b$04$abcdefghijklmnopqrstuuSlyGJHl1dXr1f8mKcjuVlBqP6iiYV7W"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--secrets", action="store_true")
    ap.add_argument("--operator", default=str(REPO / "target/release/cmq-operator"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="opbench-"))
    kube = KubeEnv(work / "kube", crds=[REPO / "crds"]).start()
    nats = NatsServer(work / "nats").start()
    port = free_port()
    op = subprocess.Popen([args.operator, "--admin-listen", f"127.0.0.1:{port}"],
                          env={**os.environ, "KUBECONFIG": str(kube.kubeconfig), "RUST_LOG": "warn", **{k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}},
                          stderr=open(work / "operator.log", "wb"))
    try:
        while http_get(port, "/readyz")[0] != 200:
            time.sleep(0.1)
        kube.kubectl("create", "namespace", "bench")
        kube.kubectl("apply", "-n", "bench", "-f", "-", input=json.dumps({
            "apiVersion": "cmq.io/v1alpha1", "kind": "MqttCluster", "metadata": {"name": "demo"},
            "spec": {"nats": {"url": nats.url}}}))
        docs = []
        if args.secrets:
            secrets = [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"pw-{i}"},
                        "stringData": {"password": f"secret-{i}"}} for i in range(args.count)]
            kube.kubectl("apply", "--server-side", "-n", "bench", "-f", "-",
                         input=json.dumps({"apiVersion": "v1", "kind": "List", "items": secrets}), timeout=300)
        for i in range(args.count):
            password = {"secretRef": {"name": f"pw-{i}"}} if args.secrets else {"hash": HASH}
            docs.append({"apiVersion": "cmq.io/v1alpha1", "kind": "DeviceCredential",
                         "metadata": {"name": f"dev-{i}", "labels": {"fleet": f"f{i % 10}"}},
                         "spec": {"clusterRef": "demo", "username": f"dev-{i}", "password": password}})
        peak = [rss_kib(op.pid)]
        before = peak[0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(op.pid))
                time.sleep(0.1)

        threading.Thread(target=sample, daemon=True).start()
        t0 = time.monotonic()
        kube.kubectl("apply", "--server-side", "-n", "bench", "-f", "-",
                     input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}), timeout=300)
        applied = time.monotonic() - t0
        query = '{range .items[*]}{.status.conditions[?(@.type=="Synced")].status}{"\\n"}{end}'
        synced = 0
        while synced < args.count:
            time.sleep(0.5)
            out = kube.kubectl("get", "devicecredentials", "-n", "bench", "-o", f"jsonpath={query}",
                               timeout=120).stdout
            synced = out.split().count("True")
            if time.monotonic() - t0 > 900:
                raise SystemExit(f"only {synced}/{args.count} Synced after 900 s")
        total = time.monotonic() - t0
        stop.set()
        print(f"{args.count} DeviceCredentials ({'Secret passwords, argon2id' if args.secrets else 'bcrypt hash in the resource'}):"
              f" kubectl apply {applied:.1f} s, all Synced after {total:.1f} s "
              f"({args.count / total:.0f}/s); operator RSS {before / 1024:.1f} MiB before, "
              f"peak {peak[0] / 1024:.1f} MiB, {rss_kib(op.pid) / 1024:.1f} MiB after")
    finally:
        op.terminate()
        op.wait(20)
        nats.stop()
        kube.stop()


if __name__ == "__main__":
    main()
