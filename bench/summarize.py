"""Medians per broker and case from bench/compare.sh's JSON lines, as a Markdown table."""
import json
import statistics
import sys
from collections import defaultdict

rows = defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["report"] is not None:
        rows[(r["case"], r["broker"])].append(r["report"])

FIELDS = {
    "qos0": [("deliveries_per_s", "deliveries/s"), ("deliveries_per_broker_cpu_s", "per broker CPU-s"), ("lost", "lost")],
    "qos1": [("deliveries_per_s", "deliveries/s"), ("deliveries_per_broker_cpu_s", "per broker CPU-s"), ("lost", "lost")],
    "latency_qos0": [("latency_p50_us", "p50 µs"), ("latency_p99_us", "p99 µs")],
    "latency_qos1": [("latency_p50_us", "p50 µs"), ("latency_p99_us", "p99 µs")],
    "idle_10k": [("connections_established", "connections"), ("rss_per_connection", "RSS bytes/connection")],
}

def med(reports, key):
    vals = [r.get(key) for r in reports if r.get(key) is not None]
    return statistics.median(vals) if vals else None

print("| case | metric | cmq | mosquitto | cmq / mosquitto | runs |")
print("|---|---|---|---|---|---|")
for case, fields in FIELDS.items():
    for key, label in fields:
        c = med(rows[(case, "cmq")], key)
        m = med(rows[(case, "mosquitto")], key)
        ratio = f"{c / m:.2f}" if c is not None and m else "–"
        fmt = lambda v: "–" if v is None else (f"{v:,.0f}" if isinstance(v, (int, float)) else str(v))
        n = f"{len(rows[(case, 'cmq')])}/{len(rows[(case, 'mosquitto')])}"
        print(f"| {case} | {label} | {fmt(c)} | {fmt(m)} | {ratio} | {n} |")
