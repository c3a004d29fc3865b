#!/usr/bin/env python3
"""Reconnect storm against a password credential: how much the verification cache saves.

    bench/auth_storm.py [--connects 2000] [--cmq target/release/cmq]

Starts `cmq standalone` with one DeviceCredential whose password is an argon2id hash with
the default parameters of the `argon2` crate (m=19456 KiB, t=2, p=1, what the operator and
`cmq registry apply` write), then opens CONNECT → CONNACK → close connections one after
another (MQTT 3.1.1, raw sockets) with the right password. The first CONNECT runs argon2;
the others are answered from the cache (`--anonymous`: the same loop without any credential,
the baseline). Prints the first CONNECT's latency, the median and
p99 of the rest, the hub's own CPU time per CONNECT (from /proc), and cache hits from
/metrics.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def connect_packet(client_id: str, username: str, password: str) -> bytes:
    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack("!H", len(b)) + b

    body = s("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 30) + s(client_id) + s(username) + s(password)
    rem, n = b"", len(body)
    while True:
        byte, n = n % 128, n // 128
        rem += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return b"\x10" + rem + body


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connects", type=int, default=2000)
    ap.add_argument("--cmq", default=str(REPO / "target/release/cmq"))
    ap.add_argument("--anonymous", action="store_true",
                    help="baseline: no credential, CONNECT without username and password")
    args = ap.parse_args()
    hash_ = subprocess.run(
        [sys.executable, "-c", "import argon2,sys; print(argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash('storm-pw'))"],
        check=True, capture_output=True, text=True).stdout.strip()
    d = Path(tempfile.mkdtemp())
    (d / "dev.yaml").write_text(
        "apiVersion: cmq.io/v1alpha1\nkind: DeviceCredential\nmetadata: {name: storm}\n"
        f"spec: {{clusterRef: demo, username: storm, password: {{hash: '{hash_}'}}}}\n")
    port, admin = 27883, 27890
    manifests = [] if args.anonymous else ["--manifests", str(d)]
    hub = subprocess.Popen([args.cmq, "standalone", *manifests, "--mqtt-listen", f"127.0.0.1:{port}",
                            "--ws-listen", "off", "--admin-listen", f"127.0.0.1:{admin}", "--auth-failure-limit", "0"],
                           stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        pkt = connect_packet("storm-1", "storm", "storm-pw")
        if args.anonymous:
            pkt = b"\x10\x13\x00\x04MQTT\x04\x02\x00\x1e\x00\x07storm-1"
        lat = []
        cpu0 = cpu_seconds(hub.pid)
        t0 = time.perf_counter()
        for i in range(args.connects):
            start = time.perf_counter()
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(pkt)
                ack = s.recv(4)
                if ack[:1] != b"\x20" or ack[3:4] != b"\x00":
                    raise SystemExit(f"CONNACK {ack!r} at connect {i}")
                s.sendall(b"\xe0\x00")
            lat.append(time.perf_counter() - start)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(hub.pid) - cpu0
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
        hits = next((l.split()[-1] for l in metrics.splitlines() if l.startswith("cmq_hub_auth_cache_hits_total")), "?")
        rest = sorted(lat[1:])
        print(f"first CONNECT{'' if args.anonymous else ' (argon2 run)'}: {lat[0] * 1000:.1f} ms")
        print(f"next {len(rest)} CONNECTs (cache): median {statistics.median(rest) * 1e6:.0f} µs, "
              f"p99 {rest[int(len(rest) * 0.99)] * 1e6:.0f} µs, {args.connects / wall:.0f} CONNECT/s one at a time")
        print(f"hub CPU per CONNECT: {cpu / args.connects * 1e6:.0f} µs; cache hits: {hits}")
    finally:
        hub.terminate()
        hub.wait(10)


if __name__ == "__main__":
    main()
