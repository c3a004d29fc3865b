"""Scale-in under load: SIGTERM on the subscriber's hub while a QoS 1 stream flows. The
hub drains (DISCONNECT 0x8B, or 0x9C with the configured Server Reference, spread over
--drain-period-ms 500), saves the session and exits 0; the subscriber resumes on another
hub and no acknowledged message is lost (duplicates are reported, not failed: a QoS 1
message in flight at a move is sent again, see docs/architecture.md "Known limits")."""

import time

import pytest

from clusterlib import (
    Hub,
    Mqtt,
    PacedPublisher,
    await_route,
    delivery_report,
    note,
    uid,
    wait_for,
    wait_quiet,
)

EXPIRY = 300
N = 1000
DURATION = 3.0
DRAIN_PERIOD_MS = 500


def _three_hubs(cluster, server_reference: bool):
    """Three hubs with --drain-period-ms 500; with ``server_reference`` every hub is started
    with --server-reference <hub3's MQTT address> (known only once hub3's ports are)."""
    hubs = cluster(0, drain_period_ms=DRAIN_PERIOD_MS)
    new = [Hub(hubs, f"h{i}") for i in (1, 2, 3)]
    hubs.hubs.extend(new)
    reference = f"{new[2].host}:{new[2].port}"
    if server_reference:
        hubs.limits["server_reference"] = reference
    for h in new:
        h.launch()
    for h in new:
        h.wait_ready()
    return new, reference


@pytest.mark.parametrize("server_reference", [False, True], ids=["0x8B", "0x9C"])
def test_sigterm_drain_under_load(cluster, server_reference):
    """Persistent QoS 1 subscriber on hub1, 1000 QoS 1 messages published on hub2 over 3 s;
    SIGTERM on hub1 midway: the subscriber gets DISCONNECT 0x8B (0x9C + Server Reference
    when configured), resumes on hub3 with clean_start False, and gets every message the
    publisher had a PUBACK for."""
    (h1, h2, h3), reference = _three_hubs(cluster, server_reference)
    cid = uid("dl")
    sub = Mqtt(h1, cid).connect(clean_start=False, expiry=EXPIRY)
    assert sub.subscribe("dl/#", qos=1) == [1]
    pub = Mqtt(h2, max_inflight=100).connect()
    assert await_route(pub, [sub], "dl/probe"), "probes from hub2 never reached hub1"

    stream = PacedPublisher(pub, "dl/t", N, DURATION, qos=1).start()
    assert wait_for(lambda: stream.sent >= N // 2, 10), "publisher stalled"
    t_term = time.monotonic()
    h1.signal_term()
    sent_at_term = stream.sent
    assert sub.wait_disconnected(DRAIN_PERIOD_MS / 1000 + 10), \
        "subscriber not disconnected by the draining hub"
    t_disc = time.monotonic()
    reason, props = sub.disconnected
    on_hub1 = len(sub.get(prefix=b"m-"))
    back = Mqtt(h3, cid).connect(clean_start=False, expiry=EXPIRY)
    t_back = time.monotonic()
    assert back.session_present, "session lost when its hub drained"

    acked = stream.finish(ack_timeout=30)
    rc = h1.wait_exit()
    wait_for(lambda: set(acked) <= set(sub.payloads(prefix=b"m-") + back.payloads(prefix=b"m-")),
             30, interval=0.1)
    wait_quiet([back], 1.5, 15)
    got = sub.payloads(prefix=b"m-") + back.payloads(prefix=b"m-")
    ref_prop = getattr(props, "ServerReference", None) if props is not None else None
    label = f"drain {'0x9C' if server_reference else '0x8B'}"
    note(f"{label}: SIGTERM after {sent_at_term} publishes; DISCONNECT {reason:#x} "
         f"{t_disc - t_term:.2f}s later (server reference {ref_prop!r}), {on_hub1} received on "
         f"hub1; resumed on hub3 {t_back - t_disc:.2f}s after; hub1 exit code {rc}")
    lost, dups = delivery_report(label, acked, got)

    if server_reference:
        assert reason == 0x9C, f"draining hub sent reason {reason:#x}, expected 0x9C"
        assert ref_prop == reference, f"Server Reference {ref_prop!r}, configured {reference!r}"
    else:
        assert reason == 0x8B, f"draining hub sent reason {reason:#x}, expected 0x8B"
        assert ref_prop is None, f"unexpected Server Reference {ref_prop!r}"
    assert rc == 0, f"hub1 exited with {rc} after SIGTERM"
    assert len(acked) == N, f"{N - len(acked)} publishes on hub2 not acknowledged: " \
                            f"refused {stream.refused()[:10]} unanswered {stream.unanswered()[:10]}"
    assert not lost, f"{len(lost)} acknowledged messages lost: {lost[:20]}"
    assert {m.qos for m in sub.get(prefix=b"m-") + back.get(prefix=b"m-")} == {1}
