#!/usr/bin/env python3
"""Scale check of cluster mode: N persistent sessions with a QoS 1 subscription each, spread
over 3 hubs on one nats-server. Reports the JetStream consumers (with a few sessions and with
N: the design has no consumer per session), hub memory per session and JetStream bytes per
session. Bounded: every step has a timeout; everything started is stopped.

    bench/cluster_scale.py [--sessions 10000] [--cmq target/release/cmq] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "dataplane" / "tests" / "support"))
from natsserver import NatsServer, free_port, http_get  # noqa: E402

HUBS = 3


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_hub(cmq: str, nats: NatsServer, cluster: str, index: int, workdir: Path):
    port, admin = free_port(), free_port()
    log = open(workdir / f"hub{index}.log", "wb")
    proc = subprocess.Popen(
        [cmq, "hub", "--nats", nats.url, "--cluster", cluster, "--hub-id", f"h{index}",
         "--mqtt-listen", f"127.0.0.1:{port}", "--ws-listen", "off", "--coap-listen", "off",
         "--admin-listen", f"127.0.0.1:{admin}", "--max-connections", "200000"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, _ = http_get(admin, "/readyz")
        if status == 200:
            return proc, port
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"hub {index} did not become ready (log: {workdir}/hub{index}.log)")


def js_bytes(nats: NatsServer, cluster: str) -> dict[str, int]:
    return {s["name"]: int(s.get("state", {}).get("bytes", 0)) for s in nats.streams(cluster)}


def hold_sessions(cmq: str, targets: str, n: int, hold: float, tag: str):
    """Starts `cmq bench --mode idle` holding n persistent QoS 1 sessions for `hold` s."""
    return subprocess.Popen(
        [cmq, "bench", "--mode", "idle", "--targets", targets, "--connections", str(n),
         "--connect-rate", "2000", "--hold", str(hold), "--session-expiry", "3600",
         "--idle-subscribe-qos", "1", "--topic-prefix", tag, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def measure(cmq, nats, cluster, hubs, targets, n, tag):
    before_rss = sum(rss_kib(p.pid) for p in hubs)
    before_js = js_bytes(nats, cluster)
    hold = max(8.0, n / 2000 * 1.5 + 6)
    bench = hold_sessions(cmq, targets, n, hold, tag)
    # Sample while every session is connected: after the connect phase, mid-hold.
    time.sleep(n / 2000 + hold / 2)
    during_rss = sum(rss_kib(p.pid) for p in hubs)
    consumers = nats.consumer_count()
    out, err = bench.communicate(timeout=hold + n / 500 + 60)
    report = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
    time.sleep(3)  # records saved at disconnect
    after_js = js_bytes(nats, cluster)
    up = report.get("connections_up") or report.get("up") or n
    return {
        "sessions": n,
        "connected": up,
        "jetstream_consumers": consumers,
        "hub_rss_kib_before": before_rss,
        "hub_rss_kib_connected": during_rss,
        "hub_bytes_per_session": round((during_rss - before_rss) * 1024 / max(1, n)),
        "js_bytes_before": sum(before_js.values()),
        "js_bytes_after": sum(after_js.values()),
        "js_bytes_per_session": round(
            (sum(after_js.values()) - sum(before_js.values())) / max(1, n)),
        "js_streams_after": after_js,
        "bench_errors": report.get("errors"),
        "bench_stderr_tail": err.decode(errors="replace").strip().splitlines()[-3:],
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--cmq", default=str(ROOT / "target" / "release" / "cmq"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cmq-scale-"))
    nats = NatsServer(workdir, "scale").start()
    cluster = f"scale{os.getpid()}"
    hubs = []
    try:
        ports = []
        for i in range(1, HUBS + 1):
            proc, port = start_hub(args.cmq, nats, cluster, i, workdir)
            hubs.append(proc)
            ports.append(port)
        targets = ",".join(f"127.0.0.1:{p}" for p in ports)
        small = measure(args.cmq, nats, cluster, hubs, targets, 10, "small")
        large = measure(args.cmq, nats, cluster, hubs, targets, args.sessions, "large")
        result = {"hubs": HUBS, "small": small, "large": large}
        if args.json:
            print(json.dumps(result))
        else:
            print(json.dumps(result, indent=2))
        same = small["jetstream_consumers"] == large["jetstream_consumers"]
        print(f"JetStream consumers: {small['jetstream_consumers']} with 10 sessions, "
              f"{large['jetstream_consumers']} with {args.sessions} ({'same' if same else 'DIFFERENT'})",
              file=sys.stderr)
        return 0 if same else 1
    finally:
        for p in hubs:
            p.send_signal(signal.SIGTERM)
        for p in hubs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        nats.stop()


if __name__ == "__main__":
    sys.exit(main())
