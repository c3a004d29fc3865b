#!/usr/bin/env python3
"""Forwarding to Kafka: CMQ's rate against rdkafka producing the same records directly,
and the end-to-end latency (MQTT publish → record read by a Kafka consumer).

    bench/forward_kafka.py [--mode standalone|cluster] [--seconds 10] [--size 64]

One run, one machine, one real Kafka broker (KRaft, `scripts/install-kafka.sh`):

1. direct: `cargo run --release -p cmq --example kafka_produce` produces N records of
   SIZE bytes with the producer settings of CMQ's Kafka sink (idempotent, acks=all,
   linger 5 ms, murmur2_random); records/s from its delivery reports.
2. through CMQ: `cmq bench` publishes QoS 1 (8 publishers, 8 topics, SIZE-byte payloads)
   for SECONDS into `cmq standalone` (or `cmq hub` + `cmq dispatch` on nats-server) with
   one ForwardRule `SELECT payload FROM "bench/#"` to a Kafka topic (value `${payload}`).
   The forward rate is records in Kafka / (last − first broker append time) of the topic
   (LogAppendTime), so it counts what arrived, not what was published.
3. latency: a paho client publishes QoS 1 at a fixed 500 msg/s for 10 s with its send
   time in the payload; a consumer in the same process takes the difference on arrival.

Prints a Markdown table row per figure.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "dataplane/tests/support"))
sys.path.insert(1, str(REPO / "dataplane/tests/cluster"))
sys.path.insert(2, str(REPO / "dataplane/tests/dispatch"))

from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import NewTopic  # noqa: E402
from kafkabroker import KafkaBroker  # noqa: E402
from natsserver import HOST, NatsServer, free_port, http_get  # noqa: E402

CMQ = os.environ.get("CMQ_BIN", str(REPO / "target/release/cmq"))


def create_topic(kb: KafkaBroker, name: str, partitions: int = 3) -> None:
    admin = kb.admin()  # kept alive until the futures resolve
    futures = admin.create_topics([NewTopic(name, partitions, 1, config={
        "message.timestamp.type": "LogAppendTime"})])
    for f in futures.values():
        f.result(30)


def topic_window(kb: KafkaBroker, topic: str, partitions: int = 3) -> tuple[int, float]:
    """Records in the topic and (last − first) append time in seconds."""
    c = Consumer({"bootstrap.servers": kb.bootstrap, "group.id": f"bench-{time.time_ns()}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    first, last, n = None, None, 0
    idle = time.monotonic()
    while time.monotonic() - idle < 3:
        batch = c.consume(10_000, 0.5)
        if batch:
            idle = time.monotonic()
        for m in batch:
            if m.error():
                continue
            _, ts = m.timestamp()
            n += 1
            first = ts if first is None else min(first, ts)
            last = ts if last is None else max(last, ts)
    c.close()
    return n, ((last - first) / 1000 if n > 1 else 0.0)


def wait_ready(admin_port: int, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_get(admin_port, "/readyz", timeout=0.5)[0] == 200:
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} not ready")


def rule_yaml(bootstrap: str, topic: str, source: str) -> str:
    return (f"apiVersion: cmq.io/v1alpha1\nkind: ForwardRule\nmetadata: {{name: bench}}\n"
            f"spec:\n  clusterRef: bench\n  sql: 'SELECT payload FROM \"{source}\"'\n"
            f"  sinks:\n  - name: k\n    kafka: {{bootstrapServers: '{bootstrap}', "
            f"topic: {topic}, value: '${{payload}}'}}\n")


class Cmq:
    """`cmq standalone`, or `cmq hub` + `cmq dispatch` on a nats-server."""

    def __init__(self, mode: str, work: Path, rules: str):
        self.mode, self.work, self.procs = mode, work, []
        self.port, self.admin = free_port(), free_port()
        (work / "m").mkdir(exist_ok=True)
        (work / "m" / "rules.yaml").write_text(rules)
        log = open(work / f"cmq-{mode}.log", "ab")
        listen = ["--mqtt-listen", f"{HOST}:{self.port}", "--ws-listen", "off", "--coap-listen", "off",
                  "--admin-listen", f"{HOST}:{self.admin}"]
        if mode == "standalone":
            self.procs.append(subprocess.Popen([CMQ, "standalone", "--manifests", str(work / "m"),
                                                *listen], stdout=log, stderr=log))
            wait_ready(self.admin, "cmq standalone")
            return
        self.nats = NatsServer(work / "nats", name="bench-nats").start()
        subprocess.run([CMQ, "registry", "apply", "--nats", self.nats.url, "--cluster", "bench",
                        "-f", str(work / "m")], check=True, capture_output=True)
        self.procs.append(subprocess.Popen([CMQ, "hub", "--nats", self.nats.url, "--cluster",
                                            "bench", "--hub-id", "h1", *listen],
                                           stdout=log, stderr=log))
        wait_ready(self.admin, "cmq hub")
        dadmin = free_port()
        self.procs.append(subprocess.Popen([CMQ, "dispatch", "--nats", self.nats.url, "--cluster",
                                            "bench", "--dispatcher-id", "d1", "--admin-listen",
                                            f"{HOST}:{dadmin}"], stdout=log, stderr=log))
        wait_ready(dadmin, "cmq dispatch")

    def cpu_each(self) -> list[float]:
        """utime + stime of each CMQ process (standalone; or hub, dispatcher)."""
        out = []
        for p in self.procs:
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out.append((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
        return out

    def cpu_seconds(self) -> float:
        return sum(self.cpu_each())

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            p.wait(30)
        if self.mode == "cluster":
            self.nats.stop()


def latency(kb: KafkaBroker, cmq: Cmq, topic: str, rate: int = 500, seconds: int = 10) -> list[float]:
    import paho.mqtt.client as mqtt
    c = Consumer({"bootstrap.servers": kb.bootstrap, "group.id": f"lat-{time.time_ns()}",
                  "auto.offset.reset": "latest", "fetch.wait.max.ms": 5, "fetch.min.bytes": 1})
    c.subscribe([topic])
    lat: list[float] = []
    stop = threading.Event()
    assigned = threading.Event()

    def consume():
        while not stop.is_set():
            m = c.poll(0.05)
            if c.assignment():
                assigned.set()
            if m is None or m.error():
                continue
            now = time.monotonic_ns()
            lat.append((now - int(m.value())) / 1e6)

    t = threading.Thread(target=consume)
    t.start()
    assigned.wait(30)
    time.sleep(1)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lat-pub")
    pub.connect(HOST, cmq.port)
    pub.loop_start()
    interval = 1 / rate
    nxt = time.monotonic()
    for _ in range(rate * seconds):
        pub.publish("lat/x", str(time.monotonic_ns()).encode(), qos=1)
        nxt += interval
        time.sleep(max(0.0, nxt - time.monotonic()))
    time.sleep(2)
    stop.set()
    t.join()
    c.close()
    pub.loop_stop()
    pub.disconnect()
    return lat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["standalone", "cluster"], default="standalone")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cmq-fwd-"))
    kb = KafkaBroker(work / "kafka").start()
    try:
        # 1. direct
        create_topic(kb, "direct")
        count = 300_000
        subprocess.run(["cargo", "build", "-q", "--release", "-p", "cmq", "--example",
                        "kafka_produce"], cwd=REPO, check=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([str(REPO / "target/release/examples/kafka_produce"), kb.bootstrap,
                              "direct", str(count), str(args.size)],
                             capture_output=True, text=True, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        direct_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        direct = json.loads(out.stdout.strip().splitlines()[-1])
        n, span = topic_window(kb, "direct")
        direct_rate = n / span if span else 0
        # 2. through CMQ
        create_topic(kb, "fwd")
        create_topic(kb, "lat", partitions=1)
        rules = rule_yaml(kb.bootstrap, "fwd", "bench/#") + "---\n" + \
            rule_yaml(kb.bootstrap, "lat", "lat/#").replace("name: bench", "name: lat")
        cmq = Cmq(args.mode, work, rules)
        try:
            cpu_before = cmq.cpu_each()
            if os.environ.get("CMQ_BENCH_PERF"):
                perf = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-o",
                                         os.environ["CMQ_BENCH_PERF"], "-p",
                                         str(cmq.procs[-1].pid), "--", "sleep", "8"])
            bench = subprocess.run([CMQ, "bench", "--port", str(cmq.port), "--publishers", "8",
                                    "--subscribers", "1", "--sub-filter", "nothing/#",
                                    "--topics", "8", "--qos", "1", "--payload", str(args.size),
                                    "--duration", str(args.seconds), "--json"],
                                   capture_output=True, text=True, check=True)
            report = json.loads(bench.stdout.strip().splitlines()[-1])
            time.sleep(3)
            each = [a - b for a, b in zip(cmq.cpu_each(), cpu_before)]
            cpu = sum(each)
            print(f"CMQ CPU seconds per process ({args.mode}): {[round(x, 2) for x in each]}",
                  file=sys.stderr)
            fwd_n, fwd_span = topic_window(kb, "fwd")
            fwd_rate = fwd_n / fwd_span if fwd_span else 0
            lat = latency(kb, cmq, "lat")
        finally:
            cmq.stop()
    finally:
        kb.close()
    q = statistics.quantiles(lat, n=100) if len(lat) > 10 else [float("nan")] * 99
    print("| mode | direct rdkafka (records/s) | direct: producer CPU per record (µs) | MQTT QoS 1 publishes/s into CMQ | forwarded to Kafka (records/s) | ratio | CMQ CPU per forwarded record (µs) | e2e p50 (ms) | e2e p99 (ms) | latency samples |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.mode} | {direct_rate:,.0f} (delivery reports: {direct['per_s']:,.0f}) | "
          f"{direct_cpu / count * 1e6:.1f} | "
          f"{report['publishes_per_s']:,.0f} | {fwd_rate:,.0f} ({fwd_n:,} records) | "
          f"{fwd_rate / direct_rate if direct_rate else 0:.2f} | {cpu / max(fwd_n, 1) * 1e6:.1f} | "
          f"{q[49]:.2f} | {q[98]:.2f} | {len(lat)} |")


if __name__ == "__main__":
    main()
