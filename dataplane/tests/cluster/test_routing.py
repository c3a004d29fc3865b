"""Live delivery between hubs: QoS 0/1 fan-out, no_local, retain-as-published, shared
subscriptions. Each test starts its own hubs with a fresh cluster name."""

from clusterlib import (
    PROBE,
    Mqtt,
    assert_exactly_once_in_order,
    await_route,
    duplicates,
    longest_increasing,
    wait_all_acked,
    wait_for,
    wait_quiet,
)

N1 = 200  # QoS 1 messages
N0 = 200  # QoS 0 messages


def test_cross_hub_qos0_and_qos1(cluster):
    """One publisher on hub1; subscribers on hub2, hub3 and hub1 itself each get every
    QoS 1 message exactly once, in order, and QoS 0 without duplicates (hub1's own
    subscriber must not get a second copy back through NATS)."""
    h1, h2, h3 = cluster(3)
    subs = {name: Mqtt(hub).connect() for name, hub in (("hub2", h2), ("hub3", h3), ("hub1", h1))}
    for s in subs.values():
        assert s.subscribe("t/#", qos=1) == [1]
    pub = Mqtt(h1).connect()
    assert await_route(pub, subs.values(), "t/probe"), \
        f"probes never reached every subscriber: { {n: len(s.get(prefix=PROBE)) for n, s in subs.items()} }"

    # QoS 1, pipelined (paho keeps up to 20 in flight), in order
    infos = [pub.publish("t/x", b"q1-%d" % i, qos=1, wait=False) for i in range(N1)]
    assert wait_all_acked(pub, infos, 30), \
        f"only {sum(i.mid in pub.pubacks for i in infos)} of {N1} PUBACKs"
    bad = {i.mid: pub.pubacks[i.mid] for i in infos if pub.pubacks[i.mid] >= 0x80}
    assert not bad, f"PUBACK errors: {bad}"
    for i in range(N0):
        pub.publish("t/x", b"q0-%d" % i, qos=0, wait=False)

    for s in subs.values():
        s.wait_count(N1, 20, topic="t/x", prefix=b"q1-")
    for s in subs.values():
        s.wait_count(N0, 10, topic="t/x", prefix=b"q0-")
    assert wait_quiet(subs.values(), 1.0, 15), "messages kept arriving"

    expected = [b"q1-%d" % i for i in range(N1)]
    for name, s in subs.items():
        q1 = s.get(topic="t/x", prefix=b"q1-")
        assert_exactly_once_in_order([m.payload for m in q1], expected, f"QoS 1 on {name}")
        assert {m.qos for m in q1} == {1}, f"{name}: QoS 1 messages delivered at QoS {set(m.qos for m in q1)}"

        q0 = s.get(topic="t/x", prefix=b"q0-")
        payloads = [m.payload for m in q0]
        dups = duplicates(payloads)
        assert not dups, f"QoS 0 on {name}: duplicated {dups}"
        assert {m.qos for m in q0} <= {0}, f"{name}: QoS 0 messages delivered at QoS > 0"
        in_order = longest_increasing([int(p[3:]) for p in payloads])
        assert in_order >= 0.95 * N0, \
            f"QoS 0 on {name}: only {in_order} of {N0} arrived in order ({len(payloads)} arrived)"


def test_no_local_and_retain_as_published_across_hubs(cluster):
    h1, h2, h3 = cluster(3)

    # -- no_local: A (hub1) never gets its own publish, but gets B's (hub2); B, without
    #    no_local, gets both A's and its own.
    a = Mqtt(h1).connect()
    a.subscribe("nl/t", qos=1, no_local=True)
    b = Mqtt(h2).connect()
    b.subscribe("nl/t", qos=1)
    c = Mqtt(h3).connect()
    assert await_route(c, [a, b], "nl/t"), "probes from hub3 never reached hub1 and hub2"

    a.publish("nl/t", b"from-a", qos=1)
    b.publish("nl/t", b"from-b", qos=1)
    wait_for(lambda: a.get(prefix=b"from-") and len(b.get(prefix=b"from-")) >= 2, 10)
    assert wait_quiet([a, b], 1.0, 10)
    assert a.payloads(prefix=b"from-") == [b"from-b"], \
        f"no_local subscriber on hub1 got {a.payloads(prefix=b'from-')}"
    assert sorted(b.payloads(prefix=b"from-")) == [b"from-a", b"from-b"], \
        f"subscriber on hub2 got {b.payloads(prefix=b'from-')}"

    # -- retain as published: a live retained publish from hub1 keeps retain=1 only for
    #    the RAP=1 subscription on hub2.
    r1 = Mqtt(h2).connect()
    r1.subscribe("rap/t", qos=1, retain_as_published=True)
    r0 = Mqtt(h2).connect()
    r0.subscribe("rap/t", qos=1, retain_as_published=False)
    p = Mqtt(h1).connect()
    assert await_route(p, [r1, r0], "rap/t"), "probes from hub1 never reached hub2"
    p.publish("rap/t", b"kept", qos=1, retain=True)
    wait_for(lambda: r1.get(prefix=b"kept") and r0.get(prefix=b"kept"), 10)
    assert wait_quiet([r1, r0], 0.5, 10)
    assert [(m.payload, m.retain) for m in r1.get(prefix=b"kept")] == [(b"kept", True)], \
        "RAP=1 subscriber on hub2"
    assert [(m.payload, m.retain) for m in r0.get(prefix=b"kept")] == [(b"kept", False)], \
        "RAP=0 subscriber on hub2"
    # the probes were not retained publishes
    assert not any(m.retain for m in r1.get(prefix=PROBE) + r0.get(prefix=PROBE))


NS = 300


def test_shared_subscription_across_hubs(cluster):
    """`$share/g/s/#` members on three hubs: each message reaches exactly one member of
    the group, and the group spreads over every hub."""
    hubs = cluster(3)
    members = [Mqtt(h).connect() for h in hubs]
    for m in members:
        assert m.subscribe("$share/g/s/#", qos=1) == [1]
    pub = Mqtt(hubs[0]).connect()
    # best effort: with a fair distribution every member gets a probe within a few; if not,
    # the assertions below say which member starved
    routed = await_route(pub, members, "s/probe", timeout=10)
    wait_quiet(members, 0.5, 5)

    infos = [pub.publish("s/x", b"m-%d" % i, qos=1, wait=False) for i in range(NS)]
    assert wait_all_acked(pub, infos, 30), \
        f"only {sum(i.mid in pub.pubacks for i in infos)} of {NS} PUBACKs"
    wait_for(lambda: sum(len(m.get(prefix=b"m-")) for m in members) >= NS, 20)
    assert wait_quiet(members, 1.0, 15), "messages kept arriving"

    per_member = [m.payloads(prefix=b"m-") for m in members]
    counts = {f"member on {m.hub.hub_id}": len(p) for m, p in zip(members, per_member)}
    everything = [p for ps in per_member for p in ps]
    expected = {b"m-%d" % i for i in range(NS)}
    missing = sorted(expected - set(everything), key=lambda p: int(p[2:]))
    dups = duplicates(everything)
    assert not missing, f"{len(missing)} messages reached no member: {missing[:10]}; counts {counts}"
    assert not dups, f"{len(dups)} messages reached more than one member: {dict(list(dups.items())[:10])}"
    assert len(everything) == NS, counts
    assert all(len(p) >= 1 for p in per_member), \
        f"a member got nothing: {counts} (probes reached every member: {routed})"
    probes = [p for m in members for p in m.payloads(prefix=PROBE)]
    assert not duplicates(probes), f"probe messages reached more than one member: {duplicates(probes)}"
