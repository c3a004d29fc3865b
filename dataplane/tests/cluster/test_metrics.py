"""The cluster counters on a hub's /metrics (Prometheus text): present from the start, and
moved by a cross-hub takeover (the hub that hands the session over) and by an offline
replay (the hub that replays)."""

import re

from clusterlib import Mqtt, note, uid, wait_for

EXPIRY = 300

CLUSTER_COUNTERS = [
    "cmq_hub_cluster_replayed_messages_total",
    "cmq_hub_cluster_store_failures_total",
    "cmq_hub_cluster_fenced_total",
    "cmq_hub_cluster_sessions_handed_over_total",
    "cmq_hub_cluster_orphans_adopted_total",
    "cmq_hub_cluster_resyncs_total",
]


def counters(hub) -> dict[str, float]:
    """Every unlabelled sample of the hub's /metrics: name -> value."""
    body = hub.metrics()
    assert body, f"GET /metrics on hub {hub.hub_id} (admin port {hub.admin_port}) failed"
    out = {}
    for line in body.splitlines():
        m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*) (\S+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def counter(hub, name: str) -> float:
    values = counters(hub)
    assert name in values, f"{name} missing on hub {hub.hub_id}"
    return values[name]


def test_cluster_metrics_exported(cluster):
    """/metrics lists the six cluster counters; a takeover of hub1's client from hub2 adds
    1 to hub1's sessions_handed_over; a persistent subscriber that left hub1 and resumes
    on hub2 after 20 QoS 1 publishes adds 20 to hub2's replayed_messages."""
    h1, h2, h3 = cluster(3)
    for h in (h1, h2):
        body = h.metrics()
        missing = [n for n in CLUSTER_COUNTERS if not re.search(rf"^{n} \S+$", body, re.M)]
        assert not missing, (f"hub {h.hub_id} /metrics lacks {missing}; cluster lines: "
                             f"{[line for line in body.splitlines() if 'cluster' in line]}")
        for n in CLUSTER_COUNTERS:
            assert f"# TYPE {n[:-len('_total')]} counter" in body, f"{n} is not a counter"

    # takeover across hubs: hub1 hands the session to hub2
    handed_before = counter(h1, "cmq_hub_cluster_sessions_handed_over_total")
    cid = uid("mt")
    first = Mqtt(h1, cid).connect(clean_start=False, expiry=EXPIRY)
    second = Mqtt(h2, cid).connect(clean_start=False, expiry=EXPIRY)
    assert second.session_present, "takeover on hub2 did not find the session"
    assert first.wait_disconnected(10), "hub1 did not close the taken-over connection"
    assert first.disconnected[0] == 0x8E, f"hub1 closed with {first.disconnected}"
    wait_for(lambda: counter(h1, "cmq_hub_cluster_sessions_handed_over_total")
             > handed_before, 5, interval=0.1)
    handed_after = counter(h1, "cmq_hub_cluster_sessions_handed_over_total")
    assert handed_after - handed_before == 1, \
        f"hub1 sessions_handed_over: {handed_before} -> {handed_after}"
    second.close()

    # offline replay: 20 QoS 1 messages stored while the session is away, replayed by hub2
    sid = uid("mr")
    sub = Mqtt(h1, sid).connect(clean_start=False, expiry=EXPIRY)
    assert sub.subscribe("mr/#", qos=1) == [1]
    sub.close()
    pub = Mqtt(h3).connect()
    for i in range(20):
        pub.publish("mr/t", b"r-%d" % i, qos=1)
    replayed_before = counter(h2, "cmq_hub_cluster_replayed_messages_total")
    back = Mqtt(h2, sid).connect(clean_start=False, expiry=EXPIRY)
    assert back.session_present, "resume on hub2 did not find the session"
    got = back.wait_count(20, 15, prefix=b"r-")
    assert [m.payload for m in got] == [b"r-%d" % i for i in range(20)]
    wait_for(lambda: counter(h2, "cmq_hub_cluster_replayed_messages_total")
             >= replayed_before + 20, 5, interval=0.1)
    replayed_after = counter(h2, "cmq_hub_cluster_replayed_messages_total")
    note(f"cluster metrics: hub1 sessions_handed_over {handed_before:g} -> {handed_after:g}; "
         f"hub2 replayed_messages {replayed_before:g} -> {replayed_after:g}")
    assert replayed_after - replayed_before == 20, \
        f"hub2 replayed_messages: {replayed_before} -> {replayed_after}"
