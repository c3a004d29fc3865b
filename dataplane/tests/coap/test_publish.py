"""POST / PUT /ps/{topic}: a CoAP publish reaches MQTT subscribers with the QoS that the
message type (CON -> 1, NON -> 0) or the q / qos parameter gives; 2.04 Changed; bad topics
and parameters are 4.00. In cluster mode the CoAP request goes to hub 1 and the MQTT
subscriber sits on hub 2."""

import pytest

from clusterlib import uid, wait_quiet
from coapenv import without_probes
from coaplib import ACK, BAD_REQUEST, CHANGED, CON, NON, POST, PUT
from coaptools import aio_request, coap_client


@pytest.mark.needs_coap_client
@pytest.mark.parametrize("non", [False, True], ids=["con", "non"])
def test_publish_with_coap_client(deploy, non):
    dep = deploy()
    base = uid("pub")
    topic = f"{base}/sensors/1/temp"
    sub = dep.subscriber(f"{base}/#")

    args = ["-m", "post", "-e", '{"t":21.5}'] + (["-N"] if non else [])
    res = coap_client(dep.uri(f"ps/{topic}", c=uid("dev")), *args)
    assert res.response.code == "2.04", res
    assert res.response.type == ("NON" if non else "ACK"), res

    msgs = sub.wait_count(1, 10, topic=topic)
    assert [m.payload for m in msgs] == [b'{"t":21.5}'], msgs
    assert msgs[0].qos == (0 if non else 1), f"{'NON' if non else 'CON'} gave QoS {msgs[0].qos}"
    assert not msgs[0].retain


@pytest.mark.parametrize("non", [False, True], ids=["con", "non"])
def test_publish_with_aiocoap_post_and_put(deploy, non):
    dep = deploy()
    base = uid("aio")
    sub = dep.subscriber(f"{base}/#")
    for method in ("POST", "PUT"):
        resp = aio_request(dep.uri(f"ps/{base}/{method.lower()}"), method,
                           f"via-{method}".encode(), non=non)
        assert resp.code.dotted == "2.04", f"{method}: {resp.code} {resp.payload!r}"
    for method in ("POST", "PUT"):
        topic = f"{base}/{method.lower()}"
        msgs = sub.wait_count(1, 10, topic=topic)
        assert [m.payload for m in msgs] == [f"via-{method}".encode()], (method, msgs)
        assert msgs[0].qos == (0 if non else 1), (method, msgs[0])


def test_qos_parameter_overrides_message_type(deploy):
    """q / qos 0-2 set the MQTT QoS whatever the message type; the answer comes as the
    request asked (ACK for CON, NON with the same token for NON)."""
    dep = deploy()
    base = uid("qos")
    sub = dep.subscriber(f"{base}/#", qos=2)
    raw = dep.raw()
    cases = [("con-q0", CON, {"q": "0"}, 0), ("non-q1", NON, {"q": "1"}, 1),
             ("con-qos2", CON, {"qos": "2"}, 2), ("non-qos2", NON, {"qos": "2"}, 2),
             ("non-qos0", NON, {"qos": "0"}, 0), ("con-q1", CON, {"q": "1"}, 1)]
    for name, mtype, query, _ in cases:
        sent = raw.request(POST, f"ps/{base}/{name}", query, mtype=mtype, payload=name.encode())
        resp = raw.response(sent)
        assert resp is not None, f"{name}: no answer"
        assert resp.code == CHANGED, f"{name}: {resp}"
        assert resp.token == sent.token, f"{name}: {resp}"
        if mtype == CON:  # piggybacked, or separate (CON) when the hub took over 1 s
            assert resp.mtype in (ACK, CON), f"{name}: {resp}"
            assert resp.mtype == CON or resp.mid == sent.mid, f"{name}: {resp}"
        else:
            assert resp.mtype == NON, f"{name}: {resp}"
    for name, _, _, qos in cases:
        msgs = sub.wait_count(1, 10, topic=f"{base}/{name}")
        assert [m.payload for m in msgs] == [name.encode()], (name, msgs)
        assert msgs[0].qos == qos, f"{name}: delivered at QoS {msgs[0].qos}, expected {qos}"


def test_bad_topic_or_parameter_is_bad_request(deploy):
    """Wildcards in a publish topic and a QoS outside 0-2 are 4.00; nothing is published."""
    dep = deploy()
    base = uid("bad")
    sub = dep.subscriber(f"{base}/#")
    raw = dep.raw()
    cases = {
        "+ level": (["ps", base, "+"], {}),
        "# level": (["ps", base, "#"], {}),
        "+ inside a path": (["ps", base, "+", "state"], {}),
        "q=3": (["ps", base, "x"], {"q": "3"}),
        "qos=high": (["ps", base, "x"], {"qos": "high"}),
    }
    for name, (path, query) in cases.items():
        resp = raw.exchange(POST, path, query, payload=f"bad {name}".encode())
        assert resp.code == BAD_REQUEST, f"{name}: {resp}"
    resp = raw.exchange(PUT, ["ps", base, "ok"], payload=b"good")
    assert resp.code == CHANGED, resp
    sub.wait_count(1, 10, topic=f"{base}/ok")
    assert wait_quiet([sub], 0.5, 5)
    got = without_probes(sub.payloads())
    assert got == [b"good"], f"refused publishes were delivered: {got}"


@pytest.mark.needs_coap_client
def test_wildcard_topic_from_coap_client_is_bad_request(deploy):
    """``%23`` in a URI is a "#" level for the gateway (libcoap decodes it)."""
    dep = deploy()
    res = coap_client(dep.uri(f"ps/{uid('bad')}/#"), "-m", "post", "-e", "x")
    assert res.response.code == "4.00", res
