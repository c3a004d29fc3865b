"""Crashes: a hub killed with SIGKILL, a NATS node killed with SIGKILL. A QoS 1 message
acknowledged to its publisher must never be lost; duplicates are allowed (and reported)."""

import json
import threading
import time

import pytest

from clusterlib import (
    Mqtt,
    await_route,
    duplicates,
    longest_increasing,
    note,
    ranges,
    uid,
    wait_all_acked,
    wait_for,
    wait_quiet,
)
from natsserver import http_get

EXPIRY = 300


class PacedPublisher:
    """Publishes ``n`` QoS 1 messages ``m-<i>`` on ``topic`` at a steady pace over
    ``duration`` seconds from a thread, without waiting for each PUBACK."""

    def __init__(self, pub: Mqtt, topic: str, n: int, duration: float):
        self.pub, self.topic, self.n = pub, topic, n
        self.interval = duration / n
        self.infos: list = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            t0 = time.monotonic()
            for i in range(self.n):
                self.infos.append(self.pub.publish(self.topic, b"m-%d" % i, qos=1, wait=False))
                delay = t0 + (i + 1) * self.interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        except BaseException as e:  # reported by finish()
            self.error = e

    def start(self) -> "PacedPublisher":
        self.thread.start()
        return self

    @property
    def sent(self) -> int:
        return len(self.infos)

    def finish(self, ack_timeout: float) -> list[bytes]:
        """Join the thread, wait (bounded) for PUBACKs; returns the payloads acknowledged
        with a success reason code."""
        self.thread.join(self.n * self.interval + 30)
        assert not self.thread.is_alive(), "publisher thread hung"
        assert self.error is None, f"publisher failed: {self.error!r}"
        wait_all_acked(self.pub, self.infos, ack_timeout)
        return [b"m-%d" % i for i, info in enumerate(self.infos) if self.pub.acked(info)]


def _report(acked, received, label):
    dups = duplicates(received)
    nums = [int(p[2:]) for p in received]
    lost = len(set(acked) - set(received))
    note(f"{label}: {len(acked)} acknowledged, {len(received)} received "
         f"({len(set(received))} distinct), lost {lost}, {len(dups)} duplicated, "
         f"{longest_increasing(nums)} in order")
    by_times: dict[int, list[int]] = {}
    for p, times in dups.items():
        by_times.setdefault(times, []).append(int(p[2:]))
    for times, nums_ in sorted(by_times.items()):
        note(f"  received {times} times: m-[{ranges(nums_)}]")


NK = 500


def test_kill_subscribers_hub(cluster):
    """The subscriber's hub is SIGKILLed in the middle of a QoS 1 stream; the subscriber
    resumes its session on hub3 and gets every message its publisher (on hub2) had
    acknowledged."""
    h1, h2, h3 = cluster(3)
    cid = uid("ks")
    sub = Mqtt(h1, cid).connect(clean_start=False, expiry=EXPIRY)
    assert sub.subscribe("e/#", qos=1) == [1]
    pub = Mqtt(h2, max_inflight=100).connect()
    assert await_route(pub, [sub], "e/probe"), "probes from hub2 never reached hub1"

    stream = PacedPublisher(pub, "e/t", NK, duration=2.0).start()
    assert wait_for(lambda: stream.sent >= NK // 2, 10), "publisher stalled before the kill"
    h1.kill()
    print(f"hub1 killed after {stream.sent} publishes; "
          f"subscriber had {len(sub.get(prefix=b'm-'))} messages")

    back = Mqtt(h3, cid).connect(clean_start=False, expiry=EXPIRY)
    assert back.session_present, "session lost with its hub"
    acked = stream.finish(ack_timeout=30)
    assert acked, "the publisher got no PUBACK at all"

    def received():
        return sub.payloads(prefix=b"m-") + back.payloads(prefix=b"m-")

    wait_for(lambda: set(acked) <= set(received()), 30, interval=0.1)
    wait_quiet([back], 2.0, 30)
    got = received()
    _report(acked, got, "kill subscriber's hub")
    lost = sorted(set(acked) - set(got), key=lambda p: int(p[2:]))
    assert not lost, f"{len(lost)} acknowledged messages lost: {lost[:20]}"


NN = 300


def _busiest_node(nats_cluster):
    """The node with the most client connections (where the hubs are attached)."""
    def conns(n):
        status, body = http_get(n.monitor_port, "/varz")
        if status != 200:
            return -1
        return json.loads(body).get("connections", 0)
    return max(nats_cluster.nodes, key=conns)


@pytest.mark.nats_cluster
@pytest.mark.timeout(240)
def test_nats_node_killed(nats_cluster, cluster):
    """Hubs on a 3-node NATS cluster with streams replicated 3 times. The NATS node with the
    most hub connections is SIGKILLed in the middle of a QoS 1 stream and restarted later:
    every acknowledged message reaches the live subscriber, and the cluster keeps working
    (offline replay on another hub afterwards).

    Assumes `--nats` takes a comma-separated list of URLs."""
    hubs = cluster(2, nats_url=nats_cluster.url, stream_replicas=3)
    h1, h2 = hubs
    cid = uid("nk")
    sub = Mqtt(h1, cid).connect(clean_start=False, expiry=EXPIRY)
    assert sub.subscribe("n/#", qos=1) == [1]
    pub = Mqtt(h2, max_inflight=100).connect()
    assert await_route(pub, [sub], "n/probe")

    stream = PacedPublisher(pub, "n/t", NN, duration=3.0).start()
    assert wait_for(lambda: stream.sent >= NN // 3, 10)
    victim = _busiest_node(nats_cluster)
    victim.kill()
    print(f"killed {victim.name} after {stream.sent} publishes")
    acked = stream.finish(ack_timeout=60)
    assert acked, "the publisher got no PUBACK at all"

    wait_for(lambda: set(acked) <= set(sub.payloads(prefix=b"m-")), 60, interval=0.1)
    wait_quiet([sub], 2.0, 30)
    got = sub.payloads(prefix=b"m-")
    _report(acked, got, "kill a NATS node")
    lost = sorted(set(acked) - set(got), key=lambda p: int(p[2:]))
    assert not lost, f"{len(lost)} acknowledged messages lost: {lost[:20]}"

    victim.restart()
    nats_cluster.wait_ready(30)
    # the cluster still works end to end: offline messages replayed on the other hub
    sub.close()
    for i in range(20):
        pub.publish("n/t", b"after-%d" % i, qos=1, timeout=30)
    back = Mqtt(h2, cid).connect(clean_start=False, expiry=EXPIRY)
    assert back.session_present
    back.wait_count(20, 30, prefix=b"after-")
    assert wait_quiet([back], 1.0, 10)
    assert back.payloads(prefix=b"after-") == [b"after-%d" % i for i in range(20)]
