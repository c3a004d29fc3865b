"""Stored batches: consecutive QoS 1 publishes of one read to one topic go to JetStream as
one stored message. A raw MQTT 3.1.1 publisher writes a whole burst with one `sendall`, so
the hub reads it at once; subscribers on both hubs, and persistent sessions that resume
on the other hub, must see every message exactly once, in order, and the publisher its
PUBACKs in PUBLISH order."""

from clusterlib import (
    Mqtt,
    RawPublisher,
    assert_exactly_once_in_order,
    await_route,
    publish_qos1,
    uid,
    wait_for,
    wait_quiet,
)
from test_metrics import counter

EXPIRY = 300


def burst(prefix: str, n: int) -> tuple[bytes, list[tuple[str, bytes]], list[int]]:
    """`n` publishes on `<prefix>/x`, with ten on `<prefix>/y` and one retained message in
    the middle (they end the batch being built): bytes, (topic, payload) list, packet ids."""
    out, sent, ids = [], [], []
    for i in range(n):
        topic = f"{prefix}/y" if 100 <= i < 110 else f"{prefix}/x"
        payload = b"m-%d" % i
        pkid = i + 1
        out.append(publish_qos1(topic, payload, pkid, retain=(i == 150)))
        sent.append((topic, payload))
        ids.append(pkid)
    return b"".join(out), sent, ids


def test_a_burst_is_stored_in_batches_and_delivered_exactly_once_in_order(cluster):
    h1, h2 = cluster(2)
    prefix = uid("b")
    subs = {"hub1": Mqtt(h1).connect(), "hub2": Mqtt(h2).connect()}
    for s in subs.values():
        s.subscribe(f"{prefix}/#", qos=1)
    probe = Mqtt(h1).connect()
    assert await_route(probe, subs.values(), f"{prefix}/probe")
    batches_before = counter(h1, "cmq_hub_cluster_store_batches_total")
    batched_before = counter(h1, "cmq_hub_cluster_batched_messages_total")

    n = 400
    data, sent, ids = burst(prefix, n)
    pub = RawPublisher(h1, uid("raw"))
    pub.sock.sendall(data)
    acked = pub.pubacks(n)
    pub.close()
    # MQTT 3.1.1 4.6: PUBACKs in the order of the PUBLISHes.
    assert acked == ids, f"PUBACK order differs from PUBLISH order: first {acked[:20]}"

    for name, s in subs.items():
        s.wait_count(n, 20, prefix=b"m-")
    assert wait_quiet(subs.values(), 1.0, 15), "messages kept arriving"
    for name, s in subs.items():
        for topic in (f"{prefix}/x", f"{prefix}/y"):
            got = [m.payload for m in s.get(topic=topic, prefix=b"m-")]
            expected = [p for t, p in sent if t == topic]
            assert_exactly_once_in_order(got, expected, f"{topic} on {name}")
        assert {m.qos for m in s.get(prefix=b"m-")} == {1}

    batches = counter(h1, "cmq_hub_cluster_store_batches_total") - batches_before
    batched = counter(h1, "cmq_hub_cluster_batched_messages_total") - batched_before
    # 400 publishes in one write: at least the runs before and after the interruptions
    # are batches (the hub may read the burst in a few pieces).
    assert batches >= 3 and batched >= 300, f"{batches} batches holding {batched} publishes"
    assert batched < n, "the retained publish is never batched"


def test_sessions_resume_inside_batches_on_the_other_hub(cluster):
    """A persistent session gets half a burst, goes away, and resumes on the other hub:
    it gets the rest once (the positions inside batches it already had are skipped), and
    a session offline during the whole burst gets all of it from the stream."""
    h1, h2 = cluster(2)
    prefix = uid("r")
    seen_id, offline_id = uid("seen"), uid("off")
    seen = Mqtt(h2, client_id=seen_id).connect(clean_start=False, expiry=EXPIRY)
    seen.subscribe(f"{prefix}/x", qos=1)
    offline = Mqtt(h2, client_id=offline_id).connect(clean_start=False, expiry=EXPIRY)
    offline.subscribe(f"{prefix}/x", qos=1)
    probe = Mqtt(h1).connect()
    assert await_route(probe, [seen, offline], f"{prefix}/x")
    offline.close()

    n = 300
    first = b"".join(publish_qos1(f"{prefix}/x", b"m-%d" % i, i + 1) for i in range(n))
    pub = RawPublisher(h1, uid("raw"))
    pub.sock.sendall(first)
    assert pub.pubacks(n) == list(range(1, n + 1))
    seen.wait_count(n, 20, prefix=b"m-")
    # Leave at once: positions not yet settled into the cursor are saved as delivered,
    # each with its index inside its batch.
    seen.close()

    second = b"".join(publish_qos1(f"{prefix}/x", b"m-%d" % i, (i % 60000) + 1)
                      for i in range(n, 2 * n))
    pub.sock.sendall(second)
    assert pub.pubacks(n) == [(i % 60000) + 1 for i in range(n, 2 * n)]
    pub.close()

    back = Mqtt(h1, client_id=seen_id).connect(clean_start=False, expiry=EXPIRY)
    assert back.session_present
    back.wait_count(n, 20, prefix=b"m-")
    assert wait_quiet([back], 1.5, 15)
    assert_exactly_once_in_order(back.payloads(prefix=b"m-"),
                                 [b"m-%d" % i for i in range(n, 2 * n)],
                                 "resumed session (had the first burst)")

    late = Mqtt(h1, client_id=offline_id).connect(clean_start=False, expiry=EXPIRY)
    assert late.session_present
    late.wait_count(2 * n, 20, prefix=b"m-")
    assert wait_quiet([late], 1.5, 15)
    assert_exactly_once_in_order(late.payloads(prefix=b"m-"),
                                 [b"m-%d" % i for i in range(2 * n)],
                                 "session offline during both bursts")
    assert wait_for(lambda: counter(h1, "cmq_hub_cluster_store_batches_total") >= 2, 5)


def test_unacknowledged_messages_of_a_batch_are_sent_again_after_a_move(cluster):
    """A subscriber that acknowledges nothing holds a window of messages from stored
    batches in flight; when its session resumes on the other hub those are fetched again
    by their position inside the batch and resent, then the rest follows: every message
    once, in order."""
    h1, h2 = cluster(2)
    prefix = uid("f")
    cid = uid("noack")
    sub = RawPublisher(h2, cid, clean=False)
    sub.subscribe(f"{prefix}/x")
    probe = Mqtt(h1).connect()
    watcher = Mqtt(h2).connect()
    watcher.subscribe(f"{prefix}/x", qos=1)
    assert await_route(probe, [watcher], f"{prefix}/x")

    n = 300
    pub = RawPublisher(h1, uid("raw"))
    pub.sock.sendall(b"".join(publish_qos1(f"{prefix}/x", b"m-%d" % i, i + 1) for i in range(n)))
    assert pub.pubacks(n) == list(range(1, n + 1))
    pub.close()
    # The probes came first; then the hub's window (receive maximum 128) of the burst.
    got = [p for _, p, _, _ in sub.publishes(100) if p.startswith(b"m-")]
    assert got and got == [b"m-%d" % i for i in range(len(got))], got[:5]
    sub.drop()

    back = Mqtt(h1, client_id=cid, version=4, clean=False).connect()
    assert back.session_present
    back.wait_count(n, 20, prefix=b"m-")
    assert wait_quiet([back], 1.5, 15)
    assert_exactly_once_in_order(back.payloads(prefix=b"m-"),
                                 [b"m-%d" % i for i in range(n)],
                                 "session moved with a window in flight")
    resent = [m for m in back.get(prefix=b"m-") if m.dup]
    assert resent, "nothing was resent with DUP: the window was not in flight"
