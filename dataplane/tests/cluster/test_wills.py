"""Wills in a cluster: published once when a hub dies with the connection, never after a
clean DISCONNECT, a delayed will cancelled by a resume on another hub, and no will for a
connection that had moved to another hub before its old hub died.

Hub timing (state/nats/presence.rs): heartbeat every 2 s, a hub is dead 6 s after its
last heartbeat, each hub looks for dead hubs every 4 s; so a crashed hub's wills are out
5-12 s after the kill. Every "no will" check is closed by a sentinel published on the
will's topic (same subject, so the same stream and order) after the window.
"""

import time

import pytest

from clusterlib import Mqtt, await_route, note, uid, wait_for, wait_quiet
from helpers import RawClient

REAP_WINDOW = 15.0   # kill -> will (brief: within 15 s)
EXPIRY = 60
WILL_DELAY = 3


def _watch(watch_hub, probe_hub, topic: str) -> tuple[Mqtt, Mqtt]:
    """A QoS 1 subscriber to ``topic`` on ``watch_hub`` and a client on ``probe_hub`` whose
    probes proved the route (and which publishes the sentinels)."""
    watcher = Mqtt(watch_hub).connect()
    assert watcher.subscribe(topic, qos=1) == [1]
    pub = Mqtt(probe_hub).connect()
    assert await_route(pub, [watcher], topic), f"probes from {probe_hub.hub_id} never " \
                                               f"reached the watcher on {watch_hub.hub_id}"
    return watcher, pub


def _count(watcher: Mqtt, payload: bytes) -> list:
    return [m for m in watcher.get() if m.payload == payload]


def _sentinel(pub: Mqtt, watcher: Mqtt, topic: str, timeout: float = 10.0) -> None:
    """Publish a sentinel (QoS 1) on ``topic`` and wait until the watcher has it: anything
    published on that subject before it has been delivered by then."""
    tag = uid("sentinel").encode()
    pub.publish(topic, tag, qos=1)
    assert watcher.wait_count(1, timeout, prefix=tag), f"sentinel {tag!r} not received"
    wait_quiet([watcher], 0.5, 5)


def _sleep_until(t: float) -> None:
    left = t - time.monotonic()
    if left > 0:
        time.sleep(left)


def _will_evidence(hubs) -> str:
    return "\n".join(hubs.grep("will") + hubs.grep("hub is dead")) or "(no will lines)"


def test_will_on_hub_kill(cluster):
    """A client with a QoS 1 will is on hub1; hub1 is SIGKILLed: the reaper on another hub
    publishes the will, a watcher on hub2 gets it exactly once within 15 s."""
    hubs = cluster(3)
    h1, h2, h3 = hubs
    cid = uid("wk")
    topic = f"w/{cid}"
    will = b"will-" + cid.encode()
    watcher, pub = _watch(h2, h3, topic)
    client = Mqtt(h1, cid).will_set(topic, will, qos=1).connect()
    assert client.connected()

    t_kill = time.monotonic()
    h1.kill()
    got = wait_for(lambda: _count(watcher, will), REAP_WINDOW)
    assert got, (f"no will within {REAP_WINDOW}s of killing hub1\n{_will_evidence(hubs)}")
    latency = got[0].at - t_kill
    # exactly once: give every live hub's reaper one more round (4 s) to do it again
    _sleep_until(got[0].at + 4.5)
    _sentinel(pub, watcher, topic)
    wills = _count(watcher, will)
    note(f"will on hub kill: {len(wills)} will(s), first {latency:.1f}s after the kill; "
         f"qos {[m.qos for m in wills]}")
    assert len(wills) == 1, f"will delivered {len(wills)} times\n{_will_evidence(hubs)}"
    assert wills[0].qos == 1


def test_no_will_on_clean_disconnect_across_hubs(cluster):
    """A will client on hub1 sends DISCONNECT (0x00): a watcher on hub3 gets no will within
    3 s. Control in the same run: another will client on hub1 drops its socket (RST), and
    its will does reach the watcher, once."""
    hubs = cluster(3)
    h1, h2, h3 = hubs
    topic = f"w/{uid('wc')}"
    clean_will, control_will = b"will-clean", b"will-control"
    watcher, pub = _watch(h3, h1, topic)

    clean = Mqtt(h1, uid("clean")).will_set(topic, clean_will, qos=1).connect()
    control = RawClient(h1.host, h1.port, version=5)
    control.connect(uid("ctl"), will={"topic": topic, "payload": control_will, "qos": 1})

    clean.close()  # DISCONNECT, reason 0x00: the will is discarded
    assert clean.disconnected is not None
    t0 = time.monotonic()
    control.abort()

    assert wait_for(lambda: _count(watcher, control_will), 10), \
        f"control will (socket reset) never arrived\n{_will_evidence(hubs)}"
    _sleep_until(t0 + 3.0)
    _sentinel(pub, watcher, topic)  # published on hub1, after the 3 s window
    n_clean, n_control = len(_count(watcher, clean_will)), len(_count(watcher, control_will))
    note(f"clean disconnect: {n_clean} will(s) after DISCONNECT 0x00, "
         f"{n_control} will(s) after a socket reset")
    assert n_clean == 0, f"will published after a clean DISCONNECT\n{_will_evidence(hubs)}"
    assert n_control == 1, f"control will delivered {n_control} times"


def _delayed_will_client(hub, cid: str, topic: str, payload: bytes) -> RawClient:
    raw = RawClient(hub.host, hub.port, version=5)
    ack = raw.connect(cid, clean=False, props={"session_expiry_interval": EXPIRY},
                      will={"topic": topic, "payload": payload, "qos": 1,
                            "props": {"will_delay_interval": WILL_DELAY}})
    assert not ack.session_present
    return raw


def test_delayed_will_cancelled_by_reconnect_on_other_hub(cluster):
    """MQTT 5 will with Will Delay 3 s, session expiry 60, on hub1. The socket is reset
    (no DISCONNECT); the client resumes its session on hub2 within 1 s: the will must not
    be published (checked 5 s after the drop, by a watcher on hub3)."""
    hubs = cluster(3)
    h1, h2, h3 = hubs
    cid = uid("wd")
    topic = f"w/{cid}"
    will = b"will-" + cid.encode()
    watcher, pub = _watch(h3, h1, topic)
    raw = _delayed_will_client(h1, cid, topic, will)

    t_drop = time.monotonic()
    raw.abort()
    time.sleep(0.4)  # let hub1 see the reset and start the will-delay timer
    back = RawClient(h2.host, h2.port, version=5)
    ack = back.connect(cid, clean=False, props={"session_expiry_interval": EXPIRY})
    resumed_after = time.monotonic() - t_drop
    assert ack.session_present, f"session not resumed on hub2: {ack!r}"
    assert resumed_after < WILL_DELAY - 1, f"resume took {resumed_after:.1f}s"

    _sleep_until(t_drop + 5.0)
    _sentinel(pub, watcher, topic)  # from hub1, where the will-delay timer ran
    wills = _count(watcher, will)
    note(f"delayed will + resume on other hub after {resumed_after:.2f}s: "
         f"{len(wills)} will(s) in 5 s")
    assert not wills, (f"will published although the session resumed on hub2 "
                       f"{resumed_after:.2f}s after the drop (will delay {WILL_DELAY}s); "
                       f"arrived {[round(m.at - t_drop, 2) for m in wills]}s after the drop"
                       f"\n{_will_evidence(hubs)}")
    back.disconnect()


def test_delayed_will_published_without_reconnect(cluster):
    """Twin of the test above without the resume: exactly one will, about 3 s (the will
    delay) after the drop."""
    hubs = cluster(3)
    h1, h2, h3 = hubs
    cid = uid("wn")
    topic = f"w/{cid}"
    will = b"will-" + cid.encode()
    watcher, pub = _watch(h3, h1, topic)
    raw = _delayed_will_client(h1, cid, topic, will)

    t_drop = time.monotonic()
    raw.abort()
    got = wait_for(lambda: _count(watcher, will), WILL_DELAY + 5)
    assert got, f"no will within {WILL_DELAY + 5}s of the drop\n{_will_evidence(hubs)}"
    after = got[0].at - t_drop
    _sleep_until(max(t_drop + 5.0, got[0].at + 1.0))
    _sentinel(pub, watcher, topic)
    wills = _count(watcher, will)
    note(f"delayed will without reconnect: {len(wills)} will(s), first {after:.2f}s "
         f"after the drop (delay {WILL_DELAY}s)")
    assert len(wills) == 1, f"will delivered {len(wills)} times\n{_will_evidence(hubs)}"
    assert WILL_DELAY - 0.1 <= after <= WILL_DELAY + 3, \
        f"will {after:.2f}s after the drop, will delay is {WILL_DELAY}s"


@pytest.mark.parametrize("delay", [0, 2], ids=["delay0", "delay2"])
def test_will_not_fired_when_client_moved_before_hub_died(cluster, delay):
    """A client with a will (QoS 1, session expiry 60) on hub1 is taken over by a CONNECT
    with the same client id on hub2 (hub1 sends DISCONNECT 0x8E), then hub1 is SIGKILLed:
    the reaper must not publish the moved client's will.

    With Will Delay 0 the takeover itself ends the old network connection, so MQTT 5
    (3.1.2.5) publishes that will once, at the takeover; with Will Delay 2 the new
    connection came first, so never. Either way nothing more after the kill. A control
    client with a will stays on hub1 and dies with it: its will proves the reaper ran."""
    hubs = cluster(3)
    h1, h2, h3 = hubs
    cid = uid("wm")
    topic = f"w/{cid}"
    moved_will, control_will = b"will-moved", b"will-control"
    watcher, pub = _watch(h3, h2, topic)

    first = Mqtt(h1, cid).will_set(topic, moved_will, qos=1, delay=delay)
    first.connect(clean_start=False, expiry=EXPIRY)
    control = Mqtt(h1, uid("wctl")).will_set(topic, control_will, qos=1).connect()

    second = Mqtt(h2, cid).connect(clean_start=False, expiry=EXPIRY)
    assert second.session_present, "takeover on hub2 did not find the session"
    assert first.wait_disconnected(10), "hub1 did not close the taken-over connection"
    assert first.disconnected[0] == 0x8E, f"taken-over connection got {first.disconnected}"
    # settle: a will published by the takeover (delay 0) arrives before the kill
    _sentinel(pub, watcher, topic)
    before_kill = len(_count(watcher, moved_will))

    t_kill = time.monotonic()
    h1.kill()
    got = wait_for(lambda: _count(watcher, control_will), REAP_WINDOW)
    assert got, f"control will not published within {REAP_WINDOW}s of the kill: the " \
                f"reaper did not act for hub1\n{_will_evidence(hubs)}"
    # a will the reaper (wrongly) adopted would go out after its delay
    _sleep_until(got[0].at + delay + 2.0)
    _sentinel(pub, watcher, topic)
    after_kill = len(_count(watcher, moved_will)) - before_kill
    n_control = len(_count(watcher, control_will))
    note(f"moved client (will delay {delay}): {before_kill} will(s) at the takeover, "
         f"{after_kill} after the kill; control will {got[0].at - t_kill:.1f}s after the kill "
         f"({n_control}x)")
    assert second.connected() and second.disconnected is None, \
        f"the moved connection on hub2 was closed: {second.disconnects}"
    assert before_kill == (1 if delay == 0 else 0), \
        f"{before_kill} will(s) at the takeover with will delay {delay}\n{_will_evidence(hubs)}"
    assert after_kill == 0, (f"the reaper published the will of a client that had moved to "
                             f"hub2 ({after_kill}x)\n{_will_evidence(hubs)}")
    assert n_control == 1, f"control will delivered {n_control} times"


@pytest.mark.parametrize("how", ["kill", "sigterm"])
def test_delayed_will_fires_after_its_hub_is_gone(cluster, how):
    """The socket of a client with a 6 s will delay is reset on hub1 (hub1 now holds the
    will's timer); 1 s later hub1 is killed (or drained with SIGTERM). Another hub takes the
    timer over and publishes the will exactly once, not before the delay."""
    hubs = cluster(3)
    h1, h2, h3 = hubs
    cid = uid("wg")
    topic = f"w/{cid}"
    will = b"will-" + cid.encode()
    watcher, pub = _watch(h3, h2, topic)
    delay = 6
    raw = RawClient(h1.host, h1.port, version=5)
    ack = raw.connect(cid, clean=False, props={"session_expiry_interval": EXPIRY},
                      will={"topic": topic, "payload": will, "qos": 1,
                            "props": {"will_delay_interval": delay}})
    assert not ack.session_present
    t_drop = time.monotonic()
    raw.abort()
    time.sleep(1.0)  # hub1 saw the reset and parked the will's timer
    if how == "kill":
        h1.kill()
    else:
        assert h1.terminate() == 0
    got = wait_for(lambda: _count(watcher, will), delay + REAP_WINDOW)
    assert got, f"no will within {delay + REAP_WINDOW}s of the drop\n{_will_evidence(hubs)}"
    after = got[0].at - t_drop
    _sleep_until(got[0].at + 1.0)
    _sentinel(pub, watcher, topic)
    wills = _count(watcher, will)
    note(f"delayed will after hub1 {how}: {len(wills)} will(s), {after:.2f}s after the "
         f"drop (delay {delay}s)")
    assert len(wills) == 1, f"will delivered {len(wills)} times\n{_will_evidence(hubs)}"
    assert after >= delay - 0.5, f"will {after:.2f}s after the drop, before its {delay}s delay"


def test_session_expires_after_its_hub_died(cluster):
    """A persistent session (expiry 3 s) disconnects from hub1, then hub1 is killed: another
    hub takes the expiry timer over, so a resume 14 s later finds no session."""
    hubs = cluster(3)
    h1, h2, _ = hubs
    cid = uid("ex")
    c = RawClient(h1.host, h1.port, version=5)
    assert not c.connect(cid, clean=False, props={"session_expiry_interval": 3}).session_present
    c.subscribe(f"ex/{cid}", 1)
    c.disconnect()
    time.sleep(0.5)
    h1.kill()
    time.sleep(14)  # dead after 6 s, reaped within 4 s more, then the rest of the 3 s
    back = RawClient(h2.host, h2.port, version=5)
    ack = back.connect(cid, clean=False, props={"session_expiry_interval": 3})
    note(f"session expiry after hub kill: session present = {ack.session_present}")
    assert not ack.session_present, \
        f"the session outlived its 3 s expiry by 11 s\n" + "\n".join(hubs.grep("expired"))
    back.disconnect()
