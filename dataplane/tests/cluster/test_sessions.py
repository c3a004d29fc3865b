"""Sessions live in NATS, not in a hub: takeover across hubs, offline queues replayed on
another hub, sessions surviving the restart of every hub and a draining hub."""

import pytest

from clusterlib import Mqtt, assert_exactly_once_in_order, duplicates, uid, wait_quiet
from helpers import DISCONNECT, PUBACK, PUBLISH, RawClient, ack_packet

EXPIRY = 300


def _recv_publishes(raw: RawClient, n: int, timeout: float) -> list:
    """Receive ``n`` PUBLISH packets (acknowledging QoS 1), failing after ``timeout``."""
    got = []
    for _ in range(n):
        p = raw.recv_type(PUBLISH, timeout=timeout)
        if p.qos == 1:
            raw.send(ack_packet(PUBACK, p.packet_id, raw.version))
        got.append(p)
    return got


@pytest.mark.parametrize("version", [5, 4], ids=["mqtt5", "mqtt311"])
def test_takeover_across_hubs(cluster, version):
    """A second CONNECT with the same client id on another hub takes the session over:
    the first connection is closed (MQTT 5: DISCONNECT 0x8E first), the second resumes the
    session (session present, subscriptions kept) and gets what is published on a third hub."""
    h1, h2, h3 = cluster(3)
    cid = uid("tk")
    props = {"session_expiry_interval": EXPIRY} if version == 5 else None

    first = RawClient(h1.host, h1.port, version=version)
    ack = first.connect(cid, clean=False, props=props)
    assert not ack.session_present
    assert first.subscribe("k/t", 1).reasons == [1]

    second = RawClient(h2.host, h2.port, version=version)
    ack2 = second.connect(cid, clean=False, props=props)
    assert ack2.session_present, f"takeover on hub2 lost the session: {ack2!r}"

    seen = first.wait_closed(10)
    if version == 5:
        assert [(p.type, p.reason) for p in seen] == [(DISCONNECT, 0x8E)], \
            f"first connection (hub1) got {seen!r} before close"
    else:
        assert seen == [], f"MQTT 3.1.1 connection got {seen!r} before close"

    pub = Mqtt(h3).connect()
    for i in range(3):
        pub.publish("k/t", b"after-takeover-%d" % i, qos=1)
    got = _recv_publishes(second, 3, timeout=10)
    assert [(p.topic, p.payload) for p in got] == \
        [(b"k/t", b"after-takeover-%d" % i) for i in range(3)]
    extra = [p for p in second.recv_all(0.5) if p.type == PUBLISH]
    assert extra == [], f"duplicates after takeover: {extra!r}"
    second.disconnect()


NO = 300


def test_offline_qos1_replay_on_other_hub(cluster):
    """A persistent session left cleanly on hub1 collects 300 QoS 1 messages published on
    hub2 while offline, and gets all of them, in order, once, when it resumes on hub3."""
    h1, h2, h3 = cluster(3)
    cid = uid("off")
    sub = Mqtt(h1, cid).connect(clean_start=False, expiry=EXPIRY)
    assert not sub.session_present
    assert sub.subscribe("o/#", qos=1) == [1]
    sub.close()

    pub = Mqtt(h2).connect()
    for i in range(NO):
        pub.publish("o/t", b"%d" % i, qos=1)  # waits for each PUBACK

    back = Mqtt(h3, cid).connect(clean_start=False, expiry=EXPIRY)
    assert back.session_present, "session not found on hub3"
    back.wait_count(NO, 30)
    assert wait_quiet([back], 1.5, 15)
    got = back.payloads()
    dups = duplicates(got)
    assert not dups, f"{len(dups)} duplicates in a graceful reconnect: {dict(list(dups.items())[:10])}"
    assert_exactly_once_in_order(got, [b"%d" % i for i in range(NO)], "replay on hub3")
    assert {m.qos for m in back.get()} == {1}


NH = 50


def test_persistent_session_after_all_hubs_restart(cluster):
    """Stop every hub (SIGTERM, exit 0), start hubs again (hub1 with the same id, plus a new
    hub4): the persistent session and its subscription are still there, because they live
    in NATS and not in any hub's memory."""
    hubs = cluster(3)
    h1 = hubs[0]
    cid = uid("rs")
    sub = Mqtt(h1, cid).connect(clean_start=False, expiry=EXPIRY)
    assert sub.subscribe("h/#", qos=1) == [1]
    sub.close()

    codes = hubs.terminate_all()
    assert codes == [0, 0, 0], f"exit codes after SIGTERM: {codes}"

    h1.restart()
    (h4,) = hubs.add(1)
    pub = Mqtt(h4).connect()
    for i in range(NH):
        pub.publish("h/t", b"%d" % i, qos=1)

    back = Mqtt(h1, cid).connect(clean_start=False, expiry=EXPIRY)
    assert back.session_present, "session lost when every hub restarted"
    back.wait_count(NH, 20)
    assert wait_quiet([back], 1.0, 10)
    assert_exactly_once_in_order(back.payloads(), [b"%d" % i for i in range(NH)],
                                 "after restart of all hubs")


def test_sigterm_drains_clients_and_sessions_resume_elsewhere(cluster):
    """Scale-in: SIGTERM on hub1 sends its MQTT 5 clients DISCONNECT 0x8B (or 0x9C, use
    another server) and exits 0; their persistent sessions resume on hub2 with whatever was
    published meanwhile."""
    h1, h2 = cluster(2)
    cid = uid("dr")
    raw = RawClient(h1.host, h1.port, version=5)
    raw.connect(cid, clean=False, props={"session_expiry_interval": EXPIRY})
    assert raw.subscribe("d/t", 1).reasons == [1]

    h1.signal_term()
    seen = raw.wait_closed(15)
    assert len(seen) == 1 and seen[0].type == DISCONNECT and seen[0].reason in (0x8B, 0x9C), \
        f"draining hub sent {seen!r}"
    assert h1.wait_exit() == 0, "hub1 did not exit 0 after SIGTERM"

    pub = Mqtt(h2).connect()
    for i in range(5):
        pub.publish("d/t", b"%d" % i, qos=1)
    back = Mqtt(h2, cid).connect(clean_start=False, expiry=EXPIRY)
    assert back.session_present, "session lost when its hub drained"
    back.wait_count(5, 15)
    assert wait_quiet([back], 1.0, 10)
    assert_exactly_once_in_order(back.payloads(), [b"%d" % i for i in range(5)], "after drain")
