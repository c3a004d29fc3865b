"""The single nats-server under a cluster stops (SIGTERM) and comes back on the same port
with the same JetStream store: connected MQTT clients stay connected, QoS 1 publishes
during the outage are refused (PUBACK >= 0x80 after ~5 s), the hubs reconnect by
themselves, and every message that got a success PUBACK is delivered (docs/architecture.md
"NATS unreachable")."""

import time

import pytest

from clusterlib import Mqtt, await_route, note, uid, wait_for, wait_quiet
from natsserver import NatsServer

EXPIRY = 300
RECONNECT_WINDOW = 15.0   # nats-server back -> hubs serve again (async-nats retries)
ACK_FAIL = 5.0            # the hub refuses an unconfirmed store after 5 s


@pytest.fixture
def own_nats(request, tmp_path):
    """A nats-server for this test only (restartable: fixed port and store dir)."""
    srv = NatsServer(tmp_path / "nats-own", name="nats-own").start()
    request.node._cmq_nats = getattr(request.node, "_cmq_nats", []) + [srv]
    yield srv
    srv.stop()


class Publisher:
    """QoS 1 publishes ``<phase>-<i>`` without waiting; keeps (payload, info) in order."""

    def __init__(self, client: Mqtt, topic: str):
        self.client, self.topic = client, topic
        self.sent: list[tuple[bytes, object]] = []

    def publish(self, payload: bytes):
        self.sent.append((payload, self.client.publish(self.topic, payload, qos=1, wait=False)))

    def paced(self, phase: str, n: int, duration: float) -> None:
        t0 = time.monotonic()
        for i in range(n):
            self.publish(b"%s-%d" % (phase.encode(), i))
            left = t0 + (i + 1) * duration / n - time.monotonic()
            if left > 0:
                time.sleep(left)

    def reason(self, info) -> int | None:
        return self.client.pubacks.get(info.mid)

    def by_outcome(self, prefix: bytes = b""):
        ok, refused, unanswered = [], [], []
        for payload, info in self.sent:
            if not payload.startswith(prefix):
                continue
            rc = self.reason(info)
            (unanswered if rc is None else ok if rc < 0x80 else refused).append(payload)
        return ok, refused, unanswered

    def all_answered(self) -> bool:
        return all(info.mid in self.client.pubacks for _, info in self.sent)


@pytest.mark.parametrize("outage", ["short", "long"])
def test_nats_restart_single_node(own_nats, cluster, outage):
    """3 hubs on one nats-server; persistent QoS 1 subscriber on hub2, QoS 1 publisher on
    hub1. nats-server is stopped (SIGTERM) while 20 messages are published over 2 s, then
    started again on the same port and store: right away ("short", ~2 s outage: async-nats
    buffers, so those publishes may still be confirmed) or only once the first outage
    publish was refused ("long", > 5 s, which is also past the 6 s heartbeat TTL). Then 50
    more. Every success PUBACK's message is delivered; no success PUBACK arrives while NATS
    is down; the MQTT connections stay up throughout."""
    hubs = cluster(3, nats_url=own_nats.url)
    h1, h2, h3 = hubs
    cid = uid("nr")
    sub = Mqtt(h2, cid).connect(clean_start=False, expiry=EXPIRY)
    assert sub.subscribe("nr/#", qos=1) == [1]
    client = Mqtt(h1, uid("nrp"), max_inflight=200).connect()
    assert await_route(client, [sub], "nr/probe"), "probes from hub1 never reached hub2"
    pub = Publisher(client, "nr/t")

    # before: 50 over 0.5 s, all acknowledged
    pub.paced("a", 50, 0.5)
    assert wait_for(pub.all_answered, 10), "no PUBACK for the first 50 while NATS was up"

    # outage
    t_stop = time.monotonic()
    own_nats.stop()
    t_down = time.monotonic()
    pub.paced("b", 20, 2.0)
    if outage == "long":
        first_b = pub.sent[-20][1]
        wait_for(lambda: first_b.mid in client.pubacks, ACK_FAIL + 5)
    t_restart = time.monotonic()
    own_nats.start()
    t_up = time.monotonic()

    # recovery: a QoS 1 probe every 0.5 s until the subscriber on hub2 gets one (both
    # hubs' NATS links work again), bounded
    n = 0
    while time.monotonic() < t_up + RECONNECT_WINDOW and not sub.get(prefix=b"r-"):
        pub.publish(b"r-%d" % n)
        n += 1
        wait_for(lambda: sub.get(prefix=b"r-"), 0.5)
    first_r = sub.get(prefix=b"r-")
    recovered = first_r[0].at - t_up if first_r else None

    # after: 50 more
    pub.paced("c", 50, 0.5)
    answered = wait_for(pub.all_answered, ACK_FAIL + 15, interval=0.05)
    ok, refused, unanswered = pub.by_outcome()
    wait_for(lambda: set(ok) <= set(sub.payloads()), 30, interval=0.1)
    wait_quiet([sub], 1.5, 15)

    received = [p for p in sub.payloads() if not p.startswith(b"probe-")]
    stats = {}
    for phase in (b"a-", b"b-", b"r-", b"c-"):
        o, r, u = pub.by_outcome(phase)
        got = [p for p in received if p.startswith(phase)]
        stats[phase.decode()[0]] = (len(o), len(r), len(u), len(got), len(set(got)))
    refused_codes = sorted({hex(pub.reason(i)) for p, i in pub.sent if p in refused})
    # success PUBACKs that arrived while nats-server was down (t_down .. t_restart)
    lies = [p for p, i in pub.sent
            if p in set(ok) and t_down <= client.puback_at.get(i.mid, 0) < t_restart]
    b_times = [round(client.puback_at[i.mid] - t_down, 1) if i.mid in client.puback_at else None
               for p, i in pub.sent if p.startswith(b"b-")]
    nats_lines = hubs.grep("NATS") + hubs.grep("dead") + hubs.grep("will")
    label = f"nats restart ({outage})"
    note(f"{label}: nats down {t_restart - t_down:.1f}s; subscriber got a post-restart probe "
         f"{recovered if recovered is None else round(recovered, 1)}s after nats-server was "
         f"back ({n} probes); per phase (ok, refused, unanswered, received, distinct): {stats}; "
         f"refusal codes {refused_codes}; outage PUBACKs at {b_times}s after the stop")
    note(f"{label}: subscriber disconnects {[(hex(r), p) for r, p, _ in sub.disconnects]}, "
         f"publisher disconnects {[(hex(r), p) for r, p, _ in client.disconnects]}")
    lost, dups = _report(label, ok, received)

    problems = []
    if not answered:
        problems.append(f"{len(unanswered)} publishes never answered: {unanswered[:10]}")
    if recovered is None:
        problems.append(f"no message went through hub1 -> NATS -> hub2 within "
                        f"{RECONNECT_WINDOW}s of nats-server being back")
    if stats["a"][0] != 50:
        problems.append(f"before the outage only {stats['a'][0]}/50 acknowledged")
    if stats["c"][0] != 50:
        problems.append(f"after recovery only {stats['c'][0]}/50 acknowledged: "
                        f"refused {[p for p in refused if p.startswith(b'c-')][:10]}")
    if outage == "long" and stats["b"][1] == 0:
        problems.append("no outage publish was refused although NATS was down > 5 s")
    if lies:
        problems.append(f"success PUBACK while nats-server was down: {lies}")
    if lost:
        problems.append(f"{len(lost)} acknowledged messages lost: {lost[:20]}")
    if sub.disconnects or not sub.connected():
        problems.append(f"subscriber (hub2) was disconnected: {sub.disconnects}")
    if client.disconnects or not client.connected():
        problems.append(f"publisher (hub1) was disconnected: {client.disconnects}")
    assert not problems, "\n".join(problems) + "\nhub log lines:\n" + "\n".join(nats_lines)


def _report(label: str, ok: list[bytes], received: list[bytes]):
    dups = {p: received.count(p) for p in set(received) if received.count(p) > 1}
    lost = [p for p in ok if p not in set(received)]
    extra = sorted(set(received) - set(ok))
    note(f"{label}: {len(ok)} acknowledged, {len(received)} received "
         f"({len(set(received))} distinct), lost {len(lost)}, {len(dups)} duplicated "
         f"{sorted(dups)[:10]}, {len(extra)} received without a success ack {extra[:10]}")
    return lost, dups
