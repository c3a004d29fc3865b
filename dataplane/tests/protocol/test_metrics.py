"""CMQ admin endpoints: /healthz, /readyz, /metrics (Prometheus text)."""

import re
import urllib.request

import pytest

from helpers import PahoClient, uid

pytestmark = pytest.mark.cmq_only  # mosquitto has no HTTP admin listener


def _get(b, path):
    with urllib.request.urlopen(f"http://{b.host}:{b.admin_port}{path}", timeout=5) as r:
        return r.status, r.read().decode()


def _samples(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)", line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def _publish_received_total(samples):
    """Sum of counters that count received/inbound PUBLISH packets / messages
    (e.g. cmq_hub_messages_received_total{qos=...})."""
    total, names = 0.0, []
    for k, v in samples.items():
        name = k.split("{")[0]
        if (name.startswith("cmq_") and re.search(r"(publish|message)", name)
                and re.search(r"(recv|receiv|_in(_|$)|inbound|ingress)", name) and "bytes" not in name):
            total += v
            names.append(k)
    return total, names


def test_healthz_and_readyz(b):
    assert _get(b, "/healthz")[0] == 200
    assert _get(b, "/readyz")[0] == 200


def test_metrics_connections_and_publish_counter(b):
    status, text = _get(b, "/metrics")
    assert status == 200
    assert "cmq_hub_connections" in text
    before, _ = _publish_received_total(_samples(text))

    clients = [PahoClient(b).connect() for _ in range(3)]
    topic = uid("met")
    clients[0].subscribe(topic, qos=1)
    for i in range(5):
        clients[1].publish(topic, b"%d" % i, qos=1)
    clients[0].wait_messages(5)

    samples = _samples(_get(b, "/metrics")[1])
    conns = [v for k, v in samples.items() if k.split("{")[0] == "cmq_hub_connections"]
    assert conns and sum(conns) >= 3, f"cmq_hub_connections should count 3 clients: {conns}"
    after, names = _publish_received_total(samples)
    assert names, "no counter of received publishes (cmq_*{publish,message}*received*) exposed"
    assert after - before >= 5, f"{names}: {before} -> {after}"
    for c in clients:
        c.disconnect()
