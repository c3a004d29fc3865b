"""Credentials in the query (c/clientid, u/username, p/password) go through the same
DeviceCredentials and TopicAcls as MQTT: a refused login is 4.01 Unauthorized, an ACL
deny 4.03 Forbidden, for publish, observe and retained reads alike."""

import pytest

from accesslib import pw, rule, topic_acl, user
from clusterlib import PROBE, uid, wait_for, wait_quiet
from coapenv import without_probes
from coaplib import CHANGED, FORBIDDEN, GET, NOT_FOUND, POST, UNAUTHORIZED, RawObservation
from coaptools import coap_client, have_coap_client

DEV, WATCH = "coapdev", "watcher"
OBSERVERS = "cmq_hub_coap_observers"


def good(**extra) -> dict:
    return {"c": uid("dev"), "u": DEV, "p": pw(DEV), **extra}


def test_wrong_or_missing_credentials_are_401(deploy):
    dep = deploy(docs=[user(DEV), user(WATCH)])
    base = uid("auth")
    topic = f"{base}/t"
    path = ["ps", base, "t"]
    sub = dep.subscriber(f"{base}/#", user=WATCH)
    raw = dep.raw()
    refused = {
        "wrong password": {"c": uid("dev"), "u": DEV, "p": "not-the-password"},
        "unknown user": {"c": uid("dev"), "u": "nobody", "p": "whatever"},
        "username without password": {"c": uid("dev"), "u": DEV},
        "no credentials (anonymous, a DeviceCredential exists)": {"c": uid("dev")},
        "nothing at all": {},
    }
    for name, query in refused.items():
        resp = raw.exchange(POST, path, query, payload=f"refused: {name}".encode())
        assert resp.code == UNAUTHORIZED, f"publish, {name}: {resp}"
        obs = RawObservation(raw, f"ps/{topic}", query)
        assert obs.response.code == UNAUTHORIZED, f"observe, {name}: {obs.response}"
        assert obs.response.observe is None, obs.response
        resp = raw.exchange(GET, path, query)
        assert resp.code == UNAUTHORIZED, f"retained read, {name}: {resp}"
    assert dep.metric(OBSERVERS) == 0

    if have_coap_client():
        res = coap_client(dep.uri(f"ps/{topic}", c=uid("cli"), u=DEV, p="bad"),
                          "-m", "post", "-e", "refused: coap-client")
        assert res.response.code == "4.01", res

    assert raw.exchange(POST, path, good(), payload=b"short names").code == CHANGED
    long_names = {"clientid": uid("dev"), "username": DEV, "password": pw(DEV)}
    assert raw.exchange(POST, path, long_names, payload=b"long names").code == CHANGED
    assert raw.exchange(GET, path, good()).code == NOT_FOUND
    assert wait_for(lambda: len(without_probes(sub.payloads(topic))) >= 2, 10), sub.payloads()
    assert wait_quiet([sub], 0.5, 5)
    got = without_probes(sub.payloads(topic))
    assert sorted(got) == [b"long names", b"short names"], f"delivered: {got}"


def test_acl_deny_is_403(deploy):
    base = uid("acl")
    docs = [user(DEV), user(WATCH), topic_acl("coapdev", [
        rule("publish", f"{base}/ok/#", "allow"),
        rule("publish", f"{base}/no/#", "deny"),
        rule("publish", f"{base}/live/#", "deny", retain=True),
        rule("subscribe", f"{base}/ok/#", "allow"),
        rule("subscribe", f"{base}/no/#", "deny"),
    ], usernames=[DEV])]
    dep = deploy(docs=docs)
    sub = dep.subscriber(f"{base}/#", user=WATCH)
    raw = dep.raw()

    assert raw.exchange(POST, ["ps", base, "ok", "x"], good(), payload=b"allowed").code == CHANGED
    resp = raw.exchange(POST, ["ps", base, "no", "x"], good(), payload=b"denied")
    assert resp.code == FORBIDDEN, resp
    # the retain condition sees the r parameter
    resp = raw.exchange(POST, ["ps", base, "live", "x"], good(r="true"), payload=b"denied-r")
    assert resp.code == FORBIDDEN, resp
    resp = raw.exchange(POST, ["ps", base, "live", "x"], good(), payload=b"live")
    assert resp.code == CHANGED, resp

    denied = RawObservation(raw, f"ps/{base}/no/#", good())
    assert denied.response.code == FORBIDDEN, denied.response
    assert denied.response.observe is None, denied.response
    assert raw.exchange(GET, ["ps", base, "no", "x"], good()).code == FORBIDDEN
    allowed = RawObservation(dep.raw(), f"ps/{base}/ok/#", good(q="1"))
    assert allowed.registered, allowed.response
    assert wait_for(lambda: dep.metric(OBSERVERS) == 1, 5), dep.metric(OBSERVERS)

    pub = dep.mqtt(user=WATCH)
    assert dep.await_notified(pub, [allowed], f"{base}/ok/probe")
    assert wait_for(lambda: len(without_probes(sub.payloads())) >= 2, 10), sub.payloads()
    assert wait_quiet([sub], 0.5, 5)
    got = sorted(without_probes(sub.payloads()))
    assert got == [b"allowed", b"live"], f"delivered: {got}"


def test_client_id_from_query_or_peer_address(deploy):
    """``c`` names the client (an ACL template ``${clientid}`` sees it); without it the
    client id is ``coap-<ip>-<port>`` of the peer."""
    docs = [user(DEV), user(WATCH),
            topic_acl("devices", [rule("publish", "cid/${clientid}/#", "allow")],
                      usernames=[DEV]),
            topic_acl("watch", [rule("all", "#", "allow")], usernames=[WATCH])]
    dep = deploy(docs=docs, args=["--default-permission", "deny"])
    sub = dep.subscriber("cid/#", user=WATCH)
    raw = dep.raw()
    creds = {"u": DEV, "p": pw(DEV)}
    cid = uid("dev")

    ok = raw.exchange(POST, ["ps", "cid", cid, "t"], {"c": cid, **creds}, payload=b"named")
    assert ok.code == CHANGED, ok
    no = raw.exchange(POST, ["ps", "cid", "someone-else", "t"], {"c": cid, **creds},
                      payload=b"other")
    assert no.code == FORBIDDEN, no

    default_id = raw.default_client_id  # coap-127.0.0.1-<port>
    ok = raw.exchange(POST, ["ps", "cid", default_id, "t"], creds, payload=b"default")
    assert ok.code == CHANGED, f"publish as {default_id}: {ok}"
    no = raw.exchange(POST, ["ps", "cid", cid, "t"], creds, payload=b"not-mine")
    assert no.code == FORBIDDEN, no

    assert wait_for(lambda: len(without_probes(sub.payloads())) >= 2, 10), sub.payloads()
    assert wait_quiet([sub], 0.5, 5)
    got = sorted((m.topic, m.payload) for m in sub.get() if not m.payload.startswith(PROBE))
    assert got == sorted([(f"cid/{cid}/t", b"named"), (f"cid/{default_id}/t", b"default")]), got


@pytest.mark.needs_coap_client
def test_coap_client_with_credentials(deploy):
    dep = deploy(docs=[user(DEV)])
    topic = f"{uid('cc')}/t"
    res = coap_client(dep.uri(f"ps/{topic}", c=uid("cli"), u=DEV, p=pw(DEV), r="true"),
                      "-m", "put", "-e", "from-cli")
    assert res.response.code == "2.04", res
    got = wait_for(lambda: (lambda r: r if r.response.code == "2.05" else None)(
        coap_client(dep.uri(f"ps/{topic}", u=DEV, p=pw(DEV)))), 10, interval=0.2)
    assert got and got.response.payload == "from-cli", got
