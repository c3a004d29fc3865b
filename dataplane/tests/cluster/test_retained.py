"""Retained messages are cluster-wide: newest per topic, delivered on subscribe from any
hub, cleared by an empty retained publish from any hub."""

from clusterlib import Mqtt, wait_quiet


def _retained(sub):
    return sorted((m.topic, m.payload, m.retain) for m in sub.get())


def test_retained_cluster_wide(cluster):
    h1, h2, h3 = cluster(3)

    p1 = Mqtt(h1).connect()
    p1.publish("r/a", b"a1", qos=1, retain=True)
    p1.publish("r/b", b"b1", qos=1, retain=True)

    # set on hub1, seen on subscribe at hub2, with the retain flag
    s2 = Mqtt(h2).connect()
    s2.subscribe("r/+", qos=1)
    s2.wait_count(2, 10)
    assert wait_quiet([s2], 0.5, 5)
    assert _retained(s2) == [("r/a", b"a1", True), ("r/b", b"b1", True)]

    # overwritten from hub2, hub3 sees only the newest
    p2 = Mqtt(h2).connect()
    p2.publish("r/a", b"a2", qos=1, retain=True)
    s3 = Mqtt(h3).connect()
    s3.subscribe("r/a", qos=1)
    s3.wait_count(1, 10)
    assert wait_quiet([s3], 0.5, 5)
    assert _retained(s3) == [("r/a", b"a2", True)]

    # cleared from hub3: a new subscriber on hub1 gets nothing for r/a ...
    p3 = Mqtt(h3).connect()
    p3.publish("r/a", b"", qos=1, retain=True)
    s1 = Mqtt(h1).connect()
    s1.subscribe("r/a", qos=1)
    # ... while r/b is still there for a subscriber on the same hub (the store is
    # reachable from hub1, so the silence above means "cleared")
    s1b = Mqtt(h1).connect()
    s1b.subscribe("r/+", qos=1)
    s1b.wait_count(1, 10)
    assert wait_quiet([s1, s1b], 1.0, 5)
    assert s1.get() == [], f"r/a still retained after the empty publish: {s1.get()}"
    assert _retained(s1b) == [("r/b", b"b1", True)]
