"""Medians and spread per side and case from bench/cluster_compare.sh's JSON lines, as
Markdown tables (summary, then every round).

    python3 bench/cluster_summarize.py target/bench/cluster/results.jsonl

Server CPU is utime+stime over the whole `cmq bench` run (connect, warmup, window, close) of
every server process of the side: the 3 hubs + nats-server for CMQ, nats-server for NATS MQTT.
"cores busy" = server CPU-s / wall-s of the run; "per server CPU-s" = deliveries/s / cores busy.
"""
import json
import statistics
import sys
from collections import defaultdict

SIDES = ("cmq_cluster", "nats_mqtt")
CASES = ("qos0", "qos1", "latency_qos0", "latency_qos1")

runs = defaultdict(list)  # (case, side) -> [line]
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs[(r["case"], r["side"])].append(r)


def val(r, key):
    b = r["report"] or {}
    if key in b:
        return b[key]
    if key == "cores_busy":
        return r["server_cpu_s"] / r["wall_s"] if r["wall_s"] else None
    if key == "per_cpu_s":
        cores = val(r, "cores_busy")
        return b.get("deliveries_per_s", 0) / cores if cores else None
    return r.get(key)


def values(case, side, key):
    return [v for v in (val(r, key) for r in runs[(case, side)]) if v is not None]


def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def med_spread(case, side, key, digits=0):
    vs = values(case, side, key)
    if not vs:
        return "–", None
    m = statistics.median(vs)
    if len(vs) == 1 or min(vs) == max(vs):
        return fmt(m, digits), m
    return f"{fmt(m, digits)} ({fmt(min(vs), digits)}–{fmt(max(vs), digits)})", m


def total(case, side, key):
    vs = values(case, side, key)
    return "–" if not vs else f"{sum(vs):,}"


METRICS = {
    "qos0": [("deliveries_per_s", "deliveries/s", 0), ("latency_p50_us", "p50 µs (flood)", 0),
             ("server_cpu_s", "server CPU-s per run", 1), ("hubs_cpu_s", "… of which hubs", 1),
             ("nats_cpu_s", "… of which nats-server", 1), ("cores_busy", "server cores busy", 2),
             ("per_cpu_s", "deliveries per server CPU-s", 0), ("bench_cpu_s", "`cmq bench` CPU-s", 1)],
    "latency_qos0": [("latency_p50_us", "p50 µs", 0), ("latency_p99_us", "p99 µs", 0),
                     ("deliveries_per_s", "deliveries/s", 0),
                     ("server_cpu_s", "server CPU-s per run", 1), ("hubs_cpu_s", "… of which hubs", 1),
                     ("nats_cpu_s", "… of which nats-server", 1)],
}
METRICS["qos1"] = METRICS["qos0"]
METRICS["latency_qos1"] = METRICS["latency_qos0"]
COUNTS = [("lost", "lost (sum of rounds)"), ("out_of_order", "out-of-order/dup (sum)"),
          ("window_resets", "QoS 0 window resets (sum)"), ("errors", "errors (sum)")]

print("| case | metric | CMQ 3 hubs + nats-server | NATS MQTT | CMQ / NATS |")
print("|---|---|---|---|---|")
for case in CASES:
    n = f"{len(runs[(case, SIDES[0])])}/{len(runs[(case, SIDES[1])])}"
    for key, label, digits in METRICS[case]:
        c, cm = med_spread(case, SIDES[0], key, digits)
        m, mm = med_spread(case, SIDES[1], key, digits)
        if key == "hubs_cpu_s":
            m = "–"
            mm = None
        ratio = f"{cm / mm:.2f}" if cm is not None and mm else ""
        print(f"| {case} | {label} | {c} | {m} | {ratio} |")
    for key, label in COUNTS:
        if key == "window_resets" and not case.endswith("qos0"):
            continue
        if key == "lost" and case.endswith("qos0"):
            label = "lost (not checked at QoS 0)"
            print(f"| {case} | {label} | – | – | |")
            continue
        print(f"| {case} | {label} | {total(case, SIDES[0], key)} | {total(case, SIDES[1], key)} | |")
    print(f"| {case} | runs (CMQ/NATS) | {n} | | |")

print()
print("| round | case | side | deliveries/s | p50 µs | p99 µs | lost | ooo/dup | errors | server CPU-s (hubs + nats) | bench CPU-s | wall s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
allruns = sorted((r for rs in runs.values() for r in rs),
                 key=lambda r: (r["round"], CASES.index(r["case"]), SIDES.index(r["side"])))
for r in allruns:
    b = r["report"] or {}
    lost = b.get("lost") if b.get("loss_checked") else "–"
    print(f"| {r['round']} | {r['case']} | {r['side']} | {fmt(b.get('deliveries_per_s'))} | "
          f"{fmt(b.get('latency_p50_us'))} | {fmt(b.get('latency_p99_us'))} | {lost} | "
          f"{b.get('out_of_order', '–')} | {b.get('errors', '–')} | "
          f"{r['server_cpu_s']:.1f} ({r['hubs_cpu_s']:.1f} + {r['nats_cpu_s']:.1f}) | "
          f"{fmt(r['bench_cpu_s'], 1)} | {r['wall_s']:.1f} |")

bad = [r for r in allruns if r["report"] is None or (
    (r["report"] or {}).get("loss_checked") and (r["report"] or {}).get("lost"))]
if bad:
    print()
    for r in bad:
        what = "NO REPORT" if r["report"] is None else f"LOST {r['report']['lost']}"
        print(f"**{what}: round {r['round']} {r['case']} {r['side']}**")
