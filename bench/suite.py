#!/usr/bin/env python3
"""CMQ against peer brokers, side by side, in one run: the performance issue's suite.

    python3 bench/suite.py                       # every case, 3 rounds, 10 s windows
    python3 bench/suite.py --case fanout_qos0 --rounds 1
    python3 bench/suite.py --broker cmq --broker rumqttd --case qos1
    python3 bench/suite.py --write-docs          # also replace the table in docs/benchmarks.md

Installs what is missing (Debian mosquitto, nats-server via scripts/install-nats.sh, rumqttd
via `cargo install` into ~/.cache/cmq/rumqttd, CMQ's release build). For every round, case
and broker (interleaved: A B C D, A B C D, ...) it starts the broker fresh on loopback pinned
to core 0, runs `cmq bench` pinned to core 1 with the broker's pid (CPU time and RSS come
from /proc), stops the broker, and appends one JSON line to target/bench/suite/results.jsonl.
The table (medians of the rounds, ratios against the best peer, targets) goes to stdout and
target/bench/suite/table.md. `--cores 2` also runs CMQ on both cores for the scaling table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "bench" / "suite"
CACHE = Path(os.environ.get("CMQ_CACHE_DIR", Path.home() / ".cache" / "cmq"))
CMQ = ROOT / "target" / "release" / "cmq"
RUMQTTD = CACHE / "rumqttd" / "bin" / "rumqttd"
RUMQTTD_VERSION = "0.20.0"
PORT = 18900
CLUSTER_NATS_PORT = 18901
BROKERS = ["cmq", "mosquitto", "nats", "rumqttd"]


@dataclass
class Case:
    name: str
    flags: list[str]
    # what the table shows: (report key, label, higher is better)
    metrics: list[tuple[str, str, bool]]
    # target: (report key, kind, factor); kind "best" = factor x the best peer measured,
    # "peer:<name>" = factor x that peer, "max" = absolute upper bound, "le:<peer>" = <= peer
    target: tuple[str, str, float] | None = None
    brokers: list[str] = field(default_factory=lambda: list(BROKERS))
    seconds_flag: bool = True
    # runs per round and broker: a case that lasts about a second is mostly noise once
    repeat: int = 1


THROUGHPUT = [
    ("deliveries_per_s", "deliveries/s", True),
    ("deliveries_per_broker_cpu_s", "deliveries per broker CPU-s", True),
    ("lost", "lost (QoS 1)", False),
]
LATENCY = [("latency_p50_us", "p50 µs", False), ("latency_p99_us", "p99 µs", False)]
IDLE = [
    ("connections_established", "connections held", True),
    ("rss_per_connection", "RSS bytes per idle connection", False),
]
CONNECT = [
    ("connect_rate", "CONNECT→CONNACK per s", True),
    ("connect_p99_us", "handshake p99 µs", False),
    ("broker_cpu_us_per_connection", "broker CPU µs per connection", False),
]


def pubsub(pubs: int, subs: int, topics: int, qos: int, *extra: str) -> list[str]:
    return [
        "--publishers", str(pubs), "--subscribers", str(subs), "--topics", str(topics),
        "--qos", str(qos), "--payload", "64", *extra,
    ]


CASES = [
    Case("qos0", pubsub(8, 8, 8, 0, "--inflight", "500"), THROUGHPUT,
         ("deliveries_per_s", "best", 1.1)),
    Case("qos1", pubsub(8, 8, 8, 1, "--inflight", "500"), THROUGHPUT,
         ("deliveries_per_s", "best", 1.2)),
    Case("fanout_qos0", pubsub(1, 1000, 1, 0, "--inflight", "500"), THROUGHPUT,
         ("deliveries_per_s", "best", 1.1)),
    Case("fanout_qos1", pubsub(1, 1000, 1, 1, "--inflight", "500"), THROUGHPUT,
         ("deliveries_per_s", "best", 1.1)),
    Case("fanin_qos0", pubsub(32, 1, 32, 0, "--inflight", "500", "--sub-filter", "bench/+"),
         THROUGHPUT, ("deliveries_per_s", "best", 1.1)),
    Case("fanin_qos1", pubsub(32, 1, 32, 1, "--inflight", "500", "--sub-filter", "bench/+"),
         THROUGHPUT, ("deliveries_per_s", "best", 1.1)),
    Case("latency_qos0", pubsub(1, 1, 1, 0, "--rate", "5000"), LATENCY,
         ("latency_p99_us", "le:mosquitto", 1.0)),
    Case("latency_qos1", pubsub(1, 1, 1, 1, "--rate", "5000"), LATENCY,
         ("latency_p99_us", "le:mosquitto", 1.0)),
    Case("idle_10k", ["--mode", "idle", "--connections", "10000", "--connect-rate", "5000",
                      "--hold", "2"], IDLE, ("rss_per_connection", "max", 1024),
         seconds_flag=False),
    Case("idle_19k", ["--mode", "idle", "--connections", "19000", "--connect-rate", "5000",
                      "--hold", "2"], IDLE, ("rss_per_connection", "max", 1024),
         seconds_flag=False),
    Case("connect_10k", ["--mode", "connect", "--connections", "10000", "--concurrency", "200"],
         CONNECT, ("connect_rate", "peer:mosquitto", 1.0), seconds_flag=False, repeat=3),
    # CMQ: one hub in cluster mode on one nats-server; NATS: that server's MQTT listener.
    # Both sides: every server process on core 0.
    Case("cluster_qos1", pubsub(8, 8, 8, 1, "--inflight", "500"), THROUGHPUT,
         ("deliveries_per_s", "peer:nats", 3.0), brokers=["cmq", "nats"]),
]


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- install

def ensure_tools(brokers: list[str]) -> dict[str, str]:
    """Installs the missing brokers; returns name -> version string."""
    versions = {}
    log("building cmq (release)")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "cmq", "--bin", "cmq"],
                   cwd=ROOT, check=True)
    versions["cmq"] = "cmq " + git_head()
    if "mosquitto" in brokers:
        if not shutil.which("mosquitto"):
            log("installing mosquitto (apt)")
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "mosquitto"], check=True)
        out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
        versions["mosquitto"] = out.splitlines()[0] if out else "mosquitto"
    if "nats" in brokers or "cluster_qos1" in brokers:
        nats = subprocess.run([str(ROOT / "scripts" / "install-nats.sh")], check=True,
                              capture_output=True, text=True).stdout.strip().splitlines()[-1]
        os.environ["NATS_SERVER_BIN"] = nats
        versions["nats"] = subprocess.run([nats, "--version"], capture_output=True,
                                          text=True).stdout.strip()
    if "rumqttd" in brokers:
        if not RUMQTTD.exists():
            # Not --locked: its lock file pins metrics 0.22.1, which today's rustc refuses.
            log(f"installing rumqttd {RUMQTTD_VERSION} (cargo install, a few minutes once)")
            subprocess.run(["cargo", "install", "rumqttd", "--version",
                            RUMQTTD_VERSION, "--root", str(RUMQTTD.parent.parent)], check=True)
        versions["rumqttd"] = f"rumqttd {RUMQTTD_VERSION}"
    return versions


def git_head() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                       text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return (r.stdout.strip() or "unknown") + ("-dirty" if dirty else "")


# ---------------------------------------------------------------------------------- brokers

def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """One broker process (plus nats-server for CMQ's cluster case), started fresh."""

    def __init__(self, name: str, case: str, cores: str, work: Path):
        self.name, self.case, self.cores, self.work = name, case, cores, work
        self.procs: list[subprocess.Popen] = []

    def spawn(self, argv: list[str], logname: str, env: dict | None = None) -> subprocess.Popen:
        logf = open(OUT / logname, "ab")
        p = subprocess.Popen(["taskset", "-c", self.cores, *argv], stdout=logf,
                             stderr=subprocess.STDOUT, preexec_fn=raise_nofile,
                             env={**os.environ, **(env or {})})
        self.procs.append(p)
        return p

    def start(self) -> list[int]:
        """Starts the broker; returns the pids whose CPU and RSS are measured."""
        cluster = self.case == "cluster_qos1"
        if cluster:
            self.start_nats(mqtt=self.name == "nats")
        if self.name == "cmq":
            common = ["--mqtt-listen", f"127.0.0.1:{PORT}", "--ws-listen", "off",
                      "--coap-listen", "off", "--admin-listen", "off"]
            if cluster:
                argv = [str(CMQ), "hub", "--nats", f"nats://127.0.0.1:{CLUSTER_NATS_PORT}",
                        "--cluster", f"bench{int(time.time())}", "--hub-id", "h1", *common]
            else:
                argv = [str(CMQ), "standalone", *common]
            pid = self.spawn(argv, "cmq.log", {"RUST_LOG": "warn"}).pid
        elif self.name == "nats":
            pid = self.procs[0].pid if cluster else self.start_nats(mqtt=True)
        elif self.name == "mosquitto":
            conf = self.work / "mosquitto.conf"
            conf.write_text(f"listener {PORT} 127.0.0.1\nallow_anonymous true\n"
                            "max_queued_messages 1000\n")
            pid = self.spawn(["mosquitto", "-c", str(conf)], "mosquitto.log").pid
        elif self.name == "rumqttd":
            conf = self.work / "rumqttd.toml"
            conf.write_text(RUMQTTD_CONF.format(port=PORT))
            pid = self.spawn([str(RUMQTTD), "-c", str(conf)], "rumqttd.log").pid
        else:
            raise ValueError(self.name)
        deadline = time.time() + 20
        while not port_open(PORT):
            if time.time() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"{self.name} did not open port {PORT}; see {OUT}")
            time.sleep(0.05)
        if cluster and self.name == "cmq":
            time.sleep(1.0)  # the hub opens its port once its streams exist; let it settle
            return [pid, self.procs[0].pid]  # the hub and its nats-server
        return [pid]

    def start_nats(self, mqtt: bool) -> int:
        store = self.work / f"js-{time.time_ns()}"
        conf = self.work / "nats.conf"
        lines = [
            "server_name: cmq_bench",
            f"listen: 127.0.0.1:{CLUSTER_NATS_PORT}",
            f'jetstream {{ store_dir: "{store}" }}',
        ]
        if mqtt:
            lines.append(f"mqtt {{ listen: 127.0.0.1:{PORT} }}")
        conf.write_text("\n".join(lines) + "\n")
        p = self.spawn([os.environ["NATS_SERVER_BIN"], "-c", str(conf)], "nats.log")
        deadline = time.time() + 20
        while not port_open(CLUSTER_NATS_PORT):
            if time.time() > deadline or p.poll() is not None:
                raise RuntimeError(f"nats-server did not start; see {OUT}/nats.log")
            time.sleep(0.05)
        return p.pid

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        # wait for the port to be free again (TIME_WAIT does not block a listener's bind)
        deadline = time.time() + 5
        while port_open(PORT) and time.time() < deadline:
            time.sleep(0.05)


# rumqttd's shipped rumqttd.toml, with the ports moved to loopback, the console and
# prometheus listeners dropped, room for 20 000 connections and no pause between accepts
# (its 1 ms default would cap the connection cases at 1 000/s).
RUMQTTD_CONF = """\
id = 0

[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
"""


# ---------------------------------------------------------------------------------- runs

def run_case(case: Case, broker: str, cores: str, secs: float, work: Path) -> dict | None:
    b = Broker(broker, case.name, cores, work)
    report = None
    try:
        pids = b.start()
        argv = ["taskset", "-c", "1", str(CMQ), "bench", "--port", str(PORT),
                "--broker-pid", ",".join(map(str, pids)), "--json", *case.flags]
        if case.seconds_flag:
            argv += ["--duration", str(secs), "--warmup", "1"]
        if case.name == "cluster_qos1":
            argv += ["--topic-prefix", f"bench{time.time_ns()}"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 90,
                           preexec_fn=raise_nofile)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if lines:
            report = json.loads(lines[-1])
        else:
            log(f"  {broker}/{case.name}: no report (exit {r.returncode}): {r.stderr[-400:]}")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        log(f"  {broker}/{case.name}: {e}")
    finally:
        b.stop()
    time.sleep(0.5)
    return report


def main() -> int:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--case", action="append", help="run only these cases (repeatable)")
    ap.add_argument("--broker", action="append", help="run only these brokers (repeatable)")
    ap.add_argument("--cores", type=int, choices=[1, 2], action="append",
                    help="1: broker on core 0 (default); 2: also CMQ on cores 0-1 (scaling)")
    ap.add_argument("--write-docs", action="store_true",
                    help="replace the suite table in docs/benchmarks.md")
    ap.add_argument("--out", type=Path, default=OUT,
                    help=f"where results and logs go (default {OUT})")
    ap.add_argument("--summarize", action="store_true",
                    help="only summarize the existing results.jsonl")
    args = ap.parse_args()

    cases = [c for c in CASES if not args.case or c.name in args.case]
    if args.case and len(cases) != len(args.case):
        ap.error(f"unknown case; cases: {', '.join(c.name for c in CASES)}")
    brokers = args.broker or BROKERS
    cores = sorted(set(args.cores or [1]))
    OUT = args.out.resolve()
    OUT.mkdir(parents=True, exist_ok=True)
    results = OUT / "results.jsonl"
    meta_path = OUT / "meta.json"
    if not args.summarize:
        versions = ensure_tools(brokers)
        meta = {"versions": versions, "rounds": args.rounds, "seconds": args.seconds,
                "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "argv": sys.argv[1:], "cases": {c.name: c.flags for c in cases}}
        meta_path.write_text(json.dumps(meta, indent=1))
        results.write_text("")
        for f in OUT.glob("*.log"):
            f.unlink()
        with tempfile.TemporaryDirectory(prefix="cmq-suite-") as work:
            for rnd in range(1, args.rounds + 1):
                for case in cases:
                    plan = [(b, "0") for b in case.brokers if b in brokers]
                    if 2 in cores and "cmq" in brokers:
                        plan.append(("cmq@2", "0,1"))
                    for broker, cpuset in plan:
                        name = broker.split("@")[0]
                        for _ in range(case.repeat):
                            log(f"round {rnd}: {case.name} / {broker}")
                            rep = run_case(case, name, cpuset, args.seconds, Path(work))
                            with results.open("a") as f:
                                f.write(json.dumps({"round": rnd, "case": case.name,
                                                    "broker": broker, "report": rep}) + "\n")
    table = summarize(results, json.loads(meta_path.read_text()))
    (OUT / "table.md").write_text(table)
    print(table)
    if args.write_docs:
        write_docs(table)
    return 0


# ---------------------------------------------------------------------------------- table

def fmt(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if abs(v) >= 10 or float(v).is_integer() else f"{v:,.2f}"


def summarize(results: Path, meta: dict) -> str:
    rows: dict[tuple[str, str], list[dict]] = {}
    failed: dict[tuple[str, str], int] = {}
    for line in results.read_text().splitlines():
        r = json.loads(line)
        key = (r["case"], r["broker"])
        rep = r["report"]
        if rep is None:
            failed[key] = failed.get(key, 0) + 1
            continue
        if rep.get("mode") == "connect" and rep.get("broker_cpu_s") is not None \
                and rep.get("connections_established"):
            rep["broker_cpu_us_per_connection"] = (
                rep["broker_cpu_s"] * 1e6 / rep["connections_established"])
        rows.setdefault(key, []).append(rep)

    def med(case: str, broker: str, k: str) -> float | None:
        vals = [x[k] for x in rows.get((case, broker), []) if x.get(k) is not None]
        return statistics.median(vals) if vals else None

    out = [f"Run {meta['started']}, {meta['rounds']} rounds × {meta['seconds']:g} s, "
           f"medians of the rounds. Versions: "
           + "; ".join(f"{v}" for v in meta["versions"].values()) + ".", ""]
    out.append("| case | metric | cmq | mosquitto | nats | rumqttd | cmq / best peer | target | met |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    scaling = []
    for case in CASES:
        if not any(k[0] == case.name for k in rows):
            continue
        for key, label, higher in case.metrics:
            vals = {b: med(case.name, b, key) for b in BROKERS}
            peers = {b: v for b, v in vals.items() if b != "cmq" and v is not None}
            ratio, target, met = "", "", ""
            if vals["cmq"] is not None and peers and key not in ("lost", "connections_established"):
                best = max(peers.values()) if higher else min(peers.values())
                if best:
                    ratio = f"{vals['cmq'] / best:.2f}"
            if case.target and case.target[0] == key and vals["cmq"] is not None:
                tkey, kind, factor = case.target
                goal = None
                if kind == "best" and peers:
                    goal = factor * max(peers.values())
                    target = f"≥ {factor:g} × best ({fmt(goal)})"
                elif kind.startswith("peer:") and kind[5:] in peers:
                    goal = factor * peers[kind[5:]]
                    target = f"≥ {factor:g} × {kind[5:]} ({fmt(goal)})"
                elif kind.startswith("le:") and kind[3:] in peers:
                    goal = peers[kind[3:]]
                    target = f"≤ {kind[3:]} ({fmt(goal)})"
                elif kind == "max":
                    goal = factor
                    target = f"≤ {fmt(goal)}"
                if goal is not None:
                    ok = vals["cmq"] >= goal if higher else vals["cmq"] <= goal
                    met = "yes" if ok else "**no**"
            cells = [fmt(vals[b]) for b in BROKERS]
            out.append(f"| {case.name} | {label} | " + " | ".join(cells)
                       + f" | {ratio} | {target} | {met} |")
            two = med(case.name, "cmq@2", key)
            if two is not None and higher and key != "connections_established" and vals["cmq"]:
                scaling.append(f"| {case.name} | {label} | {fmt(vals['cmq'])} | {fmt(two)} | "
                               f"{two / vals['cmq']:.2f} |")
    if failed:
        out.append("")
        out.append("Runs without a report: " + ", ".join(
            f"{c}/{b} ×{n}" for (c, b), n in sorted(failed.items())) + ".")
    if scaling:
        out += ["", "CMQ on one core vs both cores (the load generator shares core 1 then):", "",
                "| case | metric | 1 core | 2 cores | ratio |", "|---|---|---|---|---|", *scaling]
    return "\n".join(out) + "\n"


def write_docs(table: str) -> None:
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text()
    begin, end = "<!-- suite:begin -->", "<!-- suite:end -->"
    if begin not in text:
        raise SystemExit(f"{doc} has no {begin} marker")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(head + begin + "\n" + table + end + tail)
    log(f"wrote the table into {doc}")


if __name__ == "__main__":
    sys.exit(main())
