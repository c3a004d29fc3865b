"""GET /ps/{filter} with Observe: subscriptions. Registration (2.05 + Observe), one
notification per delivered message (CON for QoS 1/2, NON for QoS 0, Observe increasing),
wildcards, deregistration with Observe:1 or an RST, retransmission of an unacknowledged
CON notification. In cluster mode the observers are on hub 1 and the MQTT publisher on
hub 2."""

import time

import pytest

from clusterlib import uid, wait_for
from coapenv import without_probes
from coaplib import (ACK, BAD_REQUEST, CHANGED, CON, CONTENT, EMPTY, NON, POST, RawObservation,
                     encode)
from coaptools import AioObserver, CliObserver

OBSERVERS = "cmq_hub_coap_observers"
RETRANSMISSIONS = "cmq_hub_coap_retransmissions_total"


def increasing(values: list[int]) -> bool:
    return all(a < b for a, b in zip(values, values[1:]))


def test_notifications_con_for_qos1_non_for_qos0(deploy):
    dep = deploy()
    topic = f"{uid('obs')}/cmd"
    raw = dep.raw()
    obs = RawObservation(raw, f"ps/{topic}", {"q": "1", "c": uid("dev")})
    reg = obs.response  # piggybacked in the ACK (or separate, as a CON, if slow)
    assert reg.code == CONTENT and reg.mtype in (ACK, CON) and reg.token == obs.token, reg
    assert reg.mtype == CON or reg.mid == obs.sent.mid, reg
    assert reg.observe is not None, f"no Observe option in the registration response: {reg}"

    pub = dep.mqtt()
    assert dep.await_notified(pub, [obs], topic), "probes never notified the observer"
    pub.publish(topic, b"q1-a", qos=1)
    pub.publish(topic, b"q0-b", qos=0)
    pub.publish(topic, b"q2-c", qos=2)
    want = {b"q1-a": CON, b"q0-b": NON, b"q2-c": CON}
    assert wait_for(lambda: set(want) <= set(obs.payloads()), 10), obs.notifications()

    notes = [n for n in obs.notifications() if n.payload in want]
    assert sorted(n.payload for n in notes) == sorted(want), f"duplicates: {notes}"
    for n in notes:
        assert n.code == CONTENT and n.token == obs.token, n
        assert n.mtype == want[n.payload], \
            f"{n.payload!r}: {'CON' if n.mtype == CON else 'NON'}, expected the other"
        assert n.observe is not None and n.observe < 2 ** 24, n
    values = [reg.observe] + [n.observe for n in obs.notifications()]
    assert increasing(values), f"Observe values not increasing: {values}"
    acked = {mid for kind, mid in raw.answered if kind == "ack"}
    assert {n.mid for n in notes if n.mtype == CON} <= acked


@pytest.mark.parametrize("mtype,query", [(CON, {"q": "0"}), (NON, {})],
                         ids=["con-q0", "non-default"])
def test_qos0_subscription_gets_non_notifications(deploy, mtype, query):
    """A subscription at QoS 0 (q=0, or a NON registration) gets every message as NON."""
    dep = deploy()
    topic = f"{uid('obs0')}/t"
    obs = RawObservation(dep.raw(), f"ps/{topic}", query, mtype=mtype)
    assert obs.response.code == CONTENT and obs.response.observe is not None, obs.response
    assert obs.response.mtype in ((ACK, CON) if mtype == CON else (NON,)), obs.response
    pub = dep.mqtt()
    assert dep.await_notified(pub, [obs], topic)
    pub.publish(topic, b"from-qos1", qos=1)
    pub.publish(topic, b"from-qos2", qos=2)
    assert wait_for(lambda: {b"from-qos1", b"from-qos2"} <= set(obs.payloads()), 10), \
        obs.notifications()
    # NON, but a CON after 4 NONs checks that the observer is still there (RFC 7641 4.5)
    kinds = [n.mtype for n in obs.notifications()]
    runs = "".join("C" if k == CON else "N" for k in kinds).split("C")
    assert all(len(r) >= 4 for r in runs[:-1]) and set(kinds) <= {CON, NON}, kinds


def test_con_liveness_check_among_qos0_notifications(deploy):
    """An observer that only gets QoS 0 still gets a CON every 5 notifications, so one that
    is gone is noticed (no ACK) instead of being sent NONs forever."""
    dep = deploy()
    topic = f"{uid('live')}/t"
    obs = RawObservation(dep.raw(), f"ps/{topic}", {"q": "0"})
    assert obs.registered, obs.response
    pub = dep.mqtt()
    for i in range(10):
        pub.publish(topic, b"m%d" % i, qos=0)
        time.sleep(0.05)
    assert wait_for(lambda: len(obs.notifications()) >= 10, 10), obs.notifications()
    kinds = [n.mtype for n in obs.notifications()][:10]
    assert kinds == [NON] * 4 + [CON] + [NON] * 4 + [CON], kinds


def test_observe_with_aiocoap(deploy):
    dep = deploy()
    topic = f"{uid('aobs')}/t"
    obs = AioObserver(dep.uri(f"ps/{topic}")).start()
    assert obs.code == "2.05" and obs.first.opt.observe is not None, obs.first
    pub = dep.mqtt()
    assert dep.await_notified(pub, [obs], topic)
    sent = [b"m-%d" % i for i in range(5)]
    for p in sent:
        pub.publish(topic, p, qos=1)
    assert wait_for(lambda: len(without_probes(obs.payloads())) >= len(sent), 10), obs.payloads()
    assert without_probes(obs.payloads()) == sent
    assert increasing(obs.observe_values()), obs.observe_values()


@pytest.mark.needs_coap_client
def test_observe_with_coap_client(deploy):
    """coap-client -s: notifications printed; at the end libcoap deregisters (GET
    Observe:1, same token), which takes the observer count back to 0."""
    dep = deploy()
    topic = f"{uid('cobs')}/t"
    cli = CliObserver(dep.uri(f"ps/{topic}", q=1, c=uid("cli")), 8).start()
    assert wait_for(cli.first_response, 10), f"no registration response:\n{cli.output()}"
    first = cli.first_response()
    assert first.code == "2.05" and first.observe is not None, first
    assert wait_for(lambda: dep.metric(OBSERVERS) == 1, 5), dep.metric(OBSERVERS)
    pub = dep.mqtt()
    assert dep.await_notified(pub, [cli], topic), cli.output()
    sent = [b"c-%d" % i for i in range(3)]
    for p in sent:
        pub.publish(topic, p, qos=1)
    assert wait_for(lambda: len(without_probes(cli.payloads())) >= 3, 10), cli.output()
    assert without_probes(cli.payloads()) == sent, cli.output()
    assert {d.type for d in cli.notifications()} == {"CON"}
    assert cli.wait_exit(25) == 0, cli.output()
    assert wait_for(lambda: dep.metric(OBSERVERS) == 0, 10), \
        f"observers still {dep.metric(OBSERVERS)} after libcoap deregistered"


@pytest.mark.parametrize("kind", ["hash", "plus"])
def test_wildcard_observation(deploy, kind):
    dep = deploy()
    base = uid("wild")
    if kind == "hash":
        flt = f"{base}/#"
        match = [f"{base}/a", f"{base}/a/state", f"{base}/b/c/d"]
        other = [f"{uid('else')}/a", f"x/{base}/a"]
    else:
        flt = f"{base}/+/state"
        match = [f"{base}/a/state", f"{base}/b/state"]
        other = [f"{base}/a/other", f"{base}/a/b/state", f"{base}/state"]
    obs = AioObserver(dep.uri(f"ps/{flt}")).start()    # "#" goes as %23
    assert obs.code == "2.05", obs.first
    pub = dep.mqtt()
    assert dep.await_notified(pub, [obs], flt.replace("#", "probe").replace("+", "probe"))
    for t in match + other:
        pub.publish(t, t.encode(), qos=1)
    want = sorted(t.encode() for t in match)
    assert wait_for(lambda: len(without_probes(obs.payloads())) >= len(want), 10), obs.payloads()
    time.sleep(1.0)  # anything that should not come has had time to
    assert sorted(without_probes(obs.payloads())) == want


def test_deregister_with_observe_1(deploy):
    dep = deploy()
    topic = f"{uid('unsub')}/t"
    assert dep.metric(OBSERVERS) == 0
    a = RawObservation(dep.raw(), f"ps/{topic}", {"q": "1"})
    b = RawObservation(dep.raw(), f"ps/{topic}", {"q": "1"})
    assert a.registered and b.registered, (a.response, b.response)
    assert wait_for(lambda: dep.metric(OBSERVERS) == 2, 5), dep.metric(OBSERVERS)
    pub = dep.mqtt()
    assert dep.await_notified(pub, [a, b], topic)
    pub.publish(topic, b"before", qos=1)
    assert a.wait_payload(b"before", 10) and b.wait_payload(b"before", 10)

    resp = a.deregister()
    assert (resp.code, resp.token) == (CONTENT, a.token) and resp.mtype in (ACK, CON), resp
    assert wait_for(lambda: dep.metric(OBSERVERS) == 1, 5), dep.metric(OBSERVERS)
    after_dereg = len(a.raw.messages())
    pub.publish(topic, b"after", qos=1)
    assert b.wait_payload(b"after", 10), "the remaining observer missed a message"
    time.sleep(1.0)
    late = [m for m in a.raw.messages(after_dereg) if m.token == a.token]
    assert not late, f"notifications after deregistration: {late}"

    assert b.deregister().code == CONTENT
    assert wait_for(lambda: dep.metric(OBSERVERS) == 0, 5), dep.metric(OBSERVERS)


@pytest.mark.parametrize("q", ["1", "0"], ids=["rst-to-con", "rst-to-non"])
def test_rst_to_notification_cancels(deploy, q):
    dep = deploy()
    topic = f"{uid('rst')}/t"
    victim = RawObservation(dep.raw(), f"ps/{topic}", {"q": q})
    control = RawObservation(dep.raw(), f"ps/{topic}", {"q": "1"})
    assert victim.registered and control.registered
    pub = dep.mqtt()
    assert dep.await_notified(pub, [victim, control], topic)
    assert wait_for(lambda: dep.metric(OBSERVERS) == 2, 5), dep.metric(OBSERVERS)

    victim.raw.on_con = victim.raw.on_non = "rst"
    pub.publish(topic, b"n1", qos=1)
    n1 = victim.wait_payload(b"n1", 10)
    assert n1 is not None and n1.mtype == (CON if q == "1" else NON), n1
    assert wait_for(lambda: ("rst", n1.mid) in victim.raw.answered, 2)
    assert wait_for(lambda: dep.metric(OBSERVERS) == 1, 5), \
        f"observers {dep.metric(OBSERVERS)} after the RST"
    mark = len(victim.raw.messages())
    pub.publish(topic, b"n2", qos=1)
    assert control.wait_payload(b"n2", 10)
    time.sleep(1.0)
    late = [m for m in victim.raw.messages(mark) if m.token == victim.token]
    assert not late, f"notifications after the RST: {late}"


def test_observe_without_token_is_bad_request(deploy):
    dep = deploy()
    obs = RawObservation(dep.raw(), f"ps/{uid('notok')}/t", {"q": "1"}, token=b"")
    assert obs.response.code == BAD_REQUEST, obs.response
    assert dep.metric(OBSERVERS) == 0


def test_unacknowledged_con_notification_is_retransmitted(deploy):
    """RFC 7252 4.2: a CON notification without ACK is sent again after 2-3 s (same
    message id); an ACK stops it, and the next notification follows."""
    dep = deploy()
    topic = f"{uid('retx')}/t"
    obs = RawObservation(dep.raw(), f"ps/{topic}", {"q": "1"})
    raw = obs.raw
    pub = dep.mqtt()
    assert dep.await_notified(pub, [obs], topic)
    before = dep.metric(RETRANSMISSIONS)

    raw.on_con = None
    pub.publish(topic, b"unacked", qos=1)
    first = obs.wait_payload(b"unacked", 10)
    assert first is not None and first.mtype == CON, first
    again = raw.wait(lambda m: m.mid == first.mid and m.seq > first.seq, 8)
    assert again is not None, "no retransmission within 8 s"
    assert (again.mtype, again.token, again.payload) == (CON, first.token, b"unacked"), again
    gap = again.at - first.at
    assert 1.5 <= gap <= 4.5, f"retransmitted after {gap:.2f}s (RFC 7252: 2-3 s)"
    assert wait_for(lambda: dep.metric(RETRANSMISSIONS) >= before + 1, 5)

    raw.send(encode(ACK, EMPTY, first.mid))
    raw.on_con = "ack"
    pub.publish(topic, b"next", qos=1)
    assert obs.wait_payload(b"next", 10), "no notification after the ACK"
    settled = raw.mark()
    time.sleep(6.5)  # past the second retransmission (4-6 s after the first)
    copies = [m for m in raw.messages(settled) if m.mid == first.mid]
    assert not copies, f"still retransmitted after the ACK: {copies}"


def test_coap_publish_reaches_coap_observer(deploy):
    """CoAP to CoAP: an observer on ``mqtt_hub``'s gateway (hub 2 in a cluster) gets a
    CoAP publish made on ``coap_hub`` (hub 1)."""
    dep = deploy()
    topic = f"{uid('c2c')}/t"
    obs = RawObservation(dep.raw(dep.mqtt_hub), f"ps/{topic}", {"q": "1"})
    assert obs.registered, obs.response
    assert dep.await_notified(dep.mqtt(dep.coap_hub), [obs], topic)
    raw = dep.raw()
    assert raw.exchange(POST, f"ps/{topic}", payload=b"hello").code == CHANGED
    note = obs.wait_payload(b"hello", 10)
    assert note is not None and note.mtype == CON, obs.notifications()
