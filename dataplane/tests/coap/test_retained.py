"""Retained messages: r / retain on a CoAP publish; GET /ps/{topic} without Observe reads
the retained message (2.05) or answers 4.04; a new observation gets the retained message
first. In cluster mode the retained message is set on one hub and read on the other."""

import pytest

from clusterlib import uid, wait_for
from coaplib import CHANGED, CONTENT, GET, NOT_FOUND, POST
from coaptools import AioObserver, aio_request, coap_client, have_coap_client


def retained_on_new_subscriber(dep, topic: str, timeout: float = 10.0):
    """The retained message a fresh MQTT subscriber on ``mqtt_hub`` gets for ``topic``
    (polling with a new subscriber until one arrives or ``timeout`` passes)."""
    def attempt():
        s = dep.mqtt()
        s.subscribe(topic, qos=1)
        got = s.wait_count(1, 1.0, topic=topic)
        s.close()
        return got[0] if got else None
    return wait_for(attempt, timeout, interval=0.1)


def coap_get(dep, hub, topic: str, want: int, timeout: float = 10.0):
    """Raw GET /ps/{topic} on ``hub`` until it answers ``want`` (a retained message set
    on another hub may take a moment to be seen); returns the last answer."""
    raw = dep.raw(hub)
    last = []

    def attempt():
        last[:] = [raw.exchange(GET, ["ps", *topic.split("/")])]
        return last[0].code == want
    wait_for(attempt, timeout, interval=0.1)
    raw.close()
    return last[0]


@pytest.mark.parametrize("flag", [{"r": "true"}, {"retain": "1"}], ids=["r=true", "retain=1"])
def test_retain_parameter(deploy, flag):
    dep = deploy()
    topic = f"{uid('ret')}/lamp/state"
    raw = dep.raw()
    resp = raw.exchange(POST, ["ps", *topic.split("/")], {**flag, "c": uid("dev")},
                        payload=b"on")
    assert resp.code == CHANGED, resp

    msg = retained_on_new_subscriber(dep, topic)
    assert msg is not None, f"a new MQTT subscriber on {dep.mqtt_hub} got no retained message"
    assert (msg.payload, msg.retain) == (b"on", True), msg

    for hub in dict.fromkeys(dep.procs):  # each process once (standalone: one)
        got = coap_get(dep, hub, topic, CONTENT)
        assert (got.code, got.payload) == (CONTENT, b"on"), f"GET on {hub}: {got}"

    uri = dep.uri(f"ps/{topic}", hub=dep.mqtt_hub)
    if have_coap_client():
        res = coap_client(uri)
        assert (res.response.code, res.response.payload) == ("2.05", "on"), res
    resp = aio_request(uri)
    assert (resp.code.dotted, resp.payload) == ("2.05", b"on"), resp


def test_retained_get_not_found_then_set_then_cleared(deploy):
    dep = deploy()
    base = uid("rget")
    topic = f"{base}/x"
    path = ["ps", base, "x"]
    raw = dep.raw()
    assert raw.exchange(GET, path).code == NOT_FOUND

    if have_coap_client():
        res = coap_client(dep.uri(f"ps/{base}/never"))
        assert res.response.code == "4.04", res

    # published without r: delivered, not retained
    sub = dep.subscriber(f"{base}/#")
    assert raw.exchange(POST, path, payload=b"live").code == CHANGED
    assert sub.wait_count(1, 10, topic=topic), "the publish was not delivered"
    assert raw.exchange(GET, path).code == NOT_FOUND

    assert raw.exchange(POST, path, {"r": "true"}, payload=b"kept").code == CHANGED
    got = coap_get(dep, dep.coap_hub, topic, CONTENT)
    assert (got.code, got.payload) == (CONTENT, b"kept"), got

    # an empty retained publish removes it (MQTT semantics)
    assert raw.exchange(POST, path, {"r": "true"}, payload=b"").code == CHANGED
    for hub in dict.fromkeys(dep.procs):
        got = coap_get(dep, hub, topic, NOT_FOUND)
        assert got.code == NOT_FOUND, f"retained message still there on {hub}: {got}"


def test_observation_gets_retained_message_first(deploy):
    dep = deploy()
    topic = f"{uid('robs')}/cfg"
    pub = dep.mqtt()
    pub.publish(topic, b"retained-1", qos=1, retain=True)
    got = coap_get(dep, dep.coap_hub, topic, CONTENT)
    assert got.payload == b"retained-1", f"retained message not visible on {dep.coap_hub}: {got}"

    obs = AioObserver(dep.uri(f"ps/{topic}", q=1)).start()
    assert obs.code == "2.05", obs.first
    assert obs.first.opt.observe is not None, "no Observe option in the registration response"
    assert wait_for(obs.all_payloads, 10), "the retained message never came"
    assert obs.all_payloads()[0] == b"retained-1", obs.all_payloads()

    assert dep.await_notified(pub, [obs], topic)
    pub.publish(topic, b"live-1", qos=1)
    assert wait_for(lambda: b"live-1" in obs.all_payloads(), 10), obs.all_payloads()
    payloads = obs.all_payloads()
    assert payloads.count(b"retained-1") == 1, payloads
    assert payloads.index(b"retained-1") < payloads.index(b"live-1")
