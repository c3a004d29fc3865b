"""Per-device cost is bytes, not server-side machinery (DESIGN.md, cluster mode, principle 1):
no JetStream consumer per device, session or subscription."""

import time

from clusterlib import Mqtt, uid, wait_for, wait_quiet

NSESS = 40
SLACK = 10  # fixed-per-deployment consumers (shared groups, reaper, watchers) may appear lazily


def test_no_jetstream_consumer_per_session(cluster, nats):
    hubs = cluster(2)
    h1, h2 = hubs

    def consumers():
        # every stream and KV bucket of this cluster carries its name (cmq_<c>_..., KV_cmq_<c>_...)
        return nats.consumers(stream_contains=hubs.name)

    # warm up: one persistent session through a full cycle, so anything a hub creates
    # lazily on first use already exists in the baseline
    pub = Mqtt(h2).connect()
    warm = Mqtt(h1, uid("warm")).connect(clean_start=False, expiry=300)
    warm.subscribe("cs/warm/#", qos=1)
    pub.publish("cs/warm/x", b"w", qos=1)
    assert warm.wait_count(1, 10), "warm-up message not delivered"
    warm.close()
    pub.publish("cs/warm/x", b"w2", qos=1)
    warm = Mqtt(h2, warm.client_id).connect(clean_start=False, expiry=300)
    assert warm.wait_count(1, 10), "warm-up offline message not replayed"
    warm.close()
    time.sleep(1.0)  # let transient consumers go
    before = consumers()

    # NSESS persistent sessions with QoS 1 subscriptions, spread over both hubs; live
    # traffic, then half of them go offline, get messages, and resume on the other hub
    clients = []
    for i in range(NSESS):
        c = Mqtt(hubs[i % 2], uid(f"cs{i}")).connect(clean_start=False, expiry=300)
        c.subscribe(f"cs/{i}/#", qos=1)
        c.subscribe("cs/all", qos=1)
        clients.append(c)
    for i in range(NSESS):
        pub.publish(f"cs/{i}/x", b"live-%d" % i, qos=1)
    pub.publish("cs/all", b"all", qos=1)
    for i, c in enumerate(clients):
        assert len(c.wait_count(2, 10)) == 2, f"session {i} missed live messages: {c.payloads()}"

    offline = clients[::2]
    for c in offline:
        c.close()
    for i in range(0, NSESS, 2):
        pub.publish(f"cs/{i}/x", b"offline-%d" % i, qos=1)
    resumed = []
    for i, c in zip(range(0, NSESS, 2), offline):
        other = hubs[(i + 1) % 2]
        r = Mqtt(other, c.client_id).connect(clean_start=False, expiry=300)
        assert r.session_present
        resumed.append((i, r))
    for i, r in resumed:
        assert r.wait_count(1, 10, prefix=b"offline-"), f"session {i} missed its offline message"
    wait_quiet([r for _, r in resumed] + clients[1::2], 0.5, 10)

    # transient consumers (if any) get time to go away; a consumer per session would not
    settled = wait_for(lambda: len(consumers()) - len(before) < SLACK, 15, interval=0.5)
    after = consumers()
    assert settled, (
        f"JetStream consumers grew from {len(before)} to {len(after)} with {NSESS} persistent "
        f"sessions: {after[:30]}")
