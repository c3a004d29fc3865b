"""CoAP over DTLS (``--coaps-listen``): the resources of the plain gateway, the client
authenticated by its handshake. A pre-shared key is a DeviceCredential's ``spec.psk`` (key in
a Secret; in cluster mode sealed by ``cmq registry apply --cluster-secret`` and opened by
each hub with its ``--coap-token-secret``); a client certificate is matched against the
DeviceCredentials' ``x509`` as on the MQTT TLS listener. The DTLS client is libcoap's
coap-client-openssl (``-u ID -k KEY``; ``-c CERT -j KEY -C CA``), talking to hub 1 in
cluster mode while the MQTT clients sit on hub 2."""

import os
import random
import socket
import time

import pytest

from accesslib import BAD_CREDENTIALS, connack, credential, rule, secret, topic_acl, user
from certs import Pki
from clusterlib import PROBE, uid, wait_for, wait_quiet
from coapenv import free_udp_port, wait_registry, without_probes
from coaplib import (HANDSHAKE, POST, UNAUTHORIZED, client_hello, dtls_garbage, dtls_record,
                     is_hello_verify_request, local_ports_to, send_spoofed)
from coaptools import COAPS_CLIENT, CliObserver, coaps_client

pytestmark = pytest.mark.needs_coaps_client

DEV, KEY, WATCH = "dev1", "secret-key", "watcher"
HANDSHAKES = "cmq_hub_coap_dtls_handshakes_total"
SESSIONS = "cmq_hub_coap_dtls_sessions"


def psk_device(identity: str, key: str = KEY, secret_key: str | None = None, **kw) -> list[dict]:
    """A Secret with ``key`` and a DeviceCredential with nothing but ``spec.psk`` for
    ``identity`` (``secret_key``: the Secret's key, default "psk"; ``kw``: accesslib's
    ``credential()`` fields such as ``username``, ``client_id``)."""
    name = f"psk-{identity}"
    cred = credential(name, **kw)
    ref = {"name": name} if secret_key is None else {"name": name, "key": secret_key}
    cred["spec"]["psk"] = {"identity": identity, "secretRef": ref}
    return [secret(name, {secret_key or "psk": key}), cred]


def psk(identity: str = DEV, key: str = KEY) -> list[str]:
    return ["-u", identity, "-k", key]


def publish(dep, topic: str, payload: str, *args: str, hub=None, **query):
    """POST ``payload`` to /ps/<topic> over DTLS with coap-client-openssl ``args``."""
    return coaps_client(dep.coaps_uri(f"ps/{topic}", hub=hub, **query), "-m", "post",
                        "-e", payload, *args)


def delivered(sub, n: int) -> list[tuple[str, bytes]]:
    """(topic, payload) of the messages (not probes) ``sub`` got, once ``n`` arrived and
    nothing more came for 0.5 s."""
    wait_for(lambda: len(without_probes(sub.payloads())) >= n, 10)
    assert wait_quiet([sub], 0.5, 5)
    return sorted((m.topic, m.payload) for m in sub.get() if not m.payload.startswith(PROBE))


@pytest.mark.parametrize("method,non", [("post", False), ("put", True)],
                         ids=["post-con", "put-non"])
def test_psk_publish_reaches_mqtt(deploy, method, non):
    dep = deploy(docs=[*psk_device(DEV), user(WATCH)])
    base = uid("dtls")
    topic = f"{base}/sensors/1"
    sub = dep.subscriber(f"{base}/#", user=WATCH)
    res = coaps_client(dep.coaps_uri(f"ps/{topic}"), "-m", method, "-e", "hello",
                       *(["-N"] if non else []), *psk())
    assert res.response.code == "2.04", res
    assert res.response.type == ("NON" if non else "ACK"), res
    msgs = sub.wait_count(1, 10, topic=topic)
    assert [(m.topic, m.payload, m.qos) for m in msgs] == [(topic, b"hello", 0 if non else 1)]
    assert dep.metric(HANDSHAKES, result="ok") == 1
    # libcoap ends with a close_notify: the session is gone
    assert wait_for(lambda: dep.metric(SESSIONS) == 0, 5), dep.metric(SESSIONS)


def test_psk_observer_gets_mqtt_publishes(deploy):
    dep = deploy(docs=[*psk_device(DEV), user(WATCH)])
    topic = f"{uid('dtlsobs')}/t"
    obs = CliObserver(dep.coaps_uri(f"ps/{topic}"), 20, *psk(), client=COAPS_CLIENT).start()
    assert wait_for(obs.first_response, 10), obs.output()
    first = obs.first_response()
    assert first.code == "2.05" and first.observe is not None, obs.output()
    assert dep.metric(SESSIONS) == 1
    pub = dep.mqtt(user=WATCH)
    assert dep.await_notified(pub, [obs], topic), obs.output()
    pub.publish(topic, b"from-mqtt", qos=1)
    assert wait_for(lambda: b"from-mqtt" in obs.payloads(), 10), obs.output()


def test_wrong_key_or_unknown_identity_fails_the_handshake(deploy):
    dep = deploy(docs=[*psk_device(DEV), user(WATCH)])
    base = uid("dtlsbad")
    sub = dep.subscriber(f"{base}/#", user=WATCH)
    refused = {"wrong key": psk(DEV, "not-the-key"), "key of another length": psk(DEV, KEY * 2),
               "unknown identity": psk("nobody", KEY)}
    for name, creds in refused.items():
        res = publish(dep, f"{base}/t", f"refused: {name}", *creds)
        assert res.handshake_failed, f"{name}: {res}"
    assert wait_for(lambda: dep.metric(HANDSHAKES, result="failed") == len(refused), 5), \
        dep.metric(HANDSHAKES, result="failed")
    assert dep.metric(HANDSHAKES, result="ok") == 0
    res = publish(dep, f"{base}/t", "accepted", *psk())
    assert res.response.code == "2.04", res
    assert delivered(sub, 1) == [(f"{base}/t", b"accepted")]
    assert dep.alive()


def test_acl_deny_is_403(deploy):
    """The device's client id (its identity) and username (the credential's) meet the ACLs."""
    base = uid("dtlsacl")
    docs = [*psk_device(DEV, username="psk-user", secret_key="key"), user(WATCH),
            topic_acl("by-client-id", [rule("publish", f"{base}/no/#", "deny"),
                                       rule("subscribe", f"{base}/no/#", "deny")],
                      clientIds=[DEV]),
            topic_acl("by-username", [rule("publish", f"{base}/nouser/#", "deny")],
                      usernames=["psk-user"])]
    dep = deploy(docs=docs)
    sub = dep.subscriber(f"{base}/#", user=WATCH)
    assert publish(dep, f"{base}/ok/t", "allowed", *psk()).response.code == "2.04"
    for topic in (f"{base}/no/t", f"{base}/nouser/t"):
        res = publish(dep, topic, "denied", *psk())
        assert res.response.code == "4.03", f"{topic}: {res}"
    res = coaps_client(dep.coaps_uri(f"ps/{base}/no/t"), "-s", "1", *psk())
    assert res.response.code == "4.03" and res.response.observe is None, res
    assert delivered(sub, 1) == [(f"{base}/ok/t", b"allowed")]


def test_psk_only_credential_proves_nothing_without_dtls(deploy):
    """A credential with a pre-shared key and no password lets no MQTT client in and
    authenticates no plain CoAP request, whatever password they bring."""
    dep = deploy(docs=[*psk_device(DEV, username=DEV), user(WATCH)])
    base = uid("pskonly")
    sub = dep.subscriber(f"{base}/#", user=WATCH)
    for hub in dict.fromkeys([dep.coap_hub, dep.mqtt_hub]):
        for password in (KEY, "anything", ""):
            code = connack(hub, client_id=DEV, username=DEV, password=password)
            assert code == BAD_CREDENTIALS[5], f"{hub}: password {password!r}: {code:#x}"
        code = connack(hub, client_id=DEV, username=DEV)
        assert code != 0, f"{hub}: username {DEV} without password let in"
        code = connack(hub, client_id=DEV)
        assert code != 0, f"{hub}: client id {DEV}, anonymous, let in"
    raw = dep.raw()
    for query in ({"u": DEV, "p": KEY}, {"u": DEV, "p": "x"}, {"u": DEV}, {"c": DEV}):
        resp = raw.exchange(POST, ["ps", base, "udp"], query, payload=b"plain")
        assert resp.code == UNAUTHORIZED, f"plain CoAP {query}: {resp}"
    assert publish(dep, f"{base}/dtls", "over-dtls", *psk()).response.code == "2.04"
    assert delivered(sub, 1) == [(f"{base}/dtls", b"over-dtls")]


def test_client_id_parameter(deploy):
    """``c`` renames the client (seen by a ``${clientid}`` ACL) unless the credential pins
    its client id; the identity is the client id by default."""
    pinned = "dev2"
    docs = [*psk_device(DEV), *psk_device(pinned, client_id=pinned), user(WATCH),
            topic_acl("devices", [rule("publish", "cid/${clientid}/#", "allow")],
                      clientIds=[DEV, pinned, "other-id"]),
            topic_acl("watch", [rule("all", "#", "allow")], usernames=[WATCH])]
    dep = deploy(docs=docs, args=["--default-permission", "deny"])
    sub = dep.subscriber("cid/#", user=WATCH)
    cases = [  # (identity, c, topic level, expected code)
        (DEV, "other-id", "other-id", "2.04"),
        (DEV, "other-id", DEV, "4.03"),
        (DEV, None, DEV, "2.04"),
        (pinned, "other-id", "other-id", "4.01"),
        (pinned, pinned, pinned, "2.04"),
        (pinned, None, pinned, "2.04"),
    ]
    for identity, cid, level, want in cases:
        query = {"c": cid} if cid else {}
        res = publish(dep, f"cid/{level}/t", f"{identity}-{cid}", *psk(identity), **query)
        assert res.response.code == want, f"{identity} c={cid} -> cid/{level}: {res}"
    assert delivered(sub, 4) == sorted([
        ("cid/other-id/t", b"dev1-other-id"), (f"cid/{DEV}/t", b"dev1-None"),
        (f"cid/{pinned}/t", b"dev2-dev2"), (f"cid/{pinned}/t", b"dev2-None")])


def test_client_certificates(deploy, tmp_path):
    """With the hub's EC certificate the listener serves certificate handshakes too: a
    trusted certificate whose CN a DeviceCredential names publishes (its CN is the client
    id), an untrusted one fails the handshake, none at all is anonymous (4.01); PSK still
    works on the same listener."""
    pki = Pki(tmp_path / "pki").build()
    good = pki.client("dtls-dev-1")
    base = uid("dtlscert")
    docs = [credential("cert-dev", x509={"commonName": good.cn}), *psk_device(DEV), user(WATCH),
            topic_acl("cn", [rule("publish", f"{base}/denied/#", "deny")], clientIds=[good.cn])]
    dep = deploy(docs=docs, args=[
        "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
        "--tls-client-ca", str(pki.ca.cert), "--tls-client-auth", "optional",
        "--mqtts-listen", "off", "--wss-listen", "off"])
    sub = dep.subscriber(f"{base}/#", user=WATCH)
    ca = ["-C", str(pki.ca.cert)]
    cert = ["-c", str(good.cert), "-j", str(good.key), *ca]
    assert publish(dep, f"{base}/t", "with-cert", *cert).response.code == "2.04"
    assert publish(dep, f"{base}/denied/t", "x", *cert).response.code == "4.03"

    rogue = publish(dep, f"{base}/t", "rogue", "-c", str(pki.rogue_client.cert),
                    "-j", str(pki.rogue_client.key), *ca)
    assert rogue.handshake_failed, rogue
    assert wait_for(lambda: dep.metric(HANDSHAKES, result="failed") == 1, 5)
    assert publish(dep, f"{base}/t", "no-cert", *ca).response.code == "4.01"
    assert publish(dep, f"{base}/t", "psk", *psk()).response.code == "2.04"
    assert delivered(sub, 2) == [(f"{base}/t", b"psk"), (f"{base}/t", b"with-cert")]


def test_malformed_datagrams_do_not_stop_the_listener(deploy):
    """Garbage, truncated ClientHellos (the listener reads the offered suites itself),
    records that lie about their lengths, each from a new peer; then junk after a hello.
    What a new peer sends that is no ClientHello is dropped and counted as malformed."""
    dep = deploy(docs=[*psk_device(DEV), user(WATCH)])
    malformed = dep.metric("cmq_hub_coap_malformed_total")
    base = uid("dtlsjunk")
    sub = dep.subscriber(f"{base}/#", user=WATCH)
    addr = ("127.0.0.1", dep.coap_hub.coaps_port)
    rng = random.Random(20261130)
    hello = client_hello()
    noise = [rng.randbytes(rng.choice([1, 13, 40, 90, 300])) for _ in range(40)]
    noise += [hello[:rng.randrange(14, len(hello))] + rng.randbytes(rng.randrange(60))
              for _ in range(40)]  # hello-shaped: some pass the listener's own reading
    garbage = dtls_garbage()
    no_hello = ["empty datagram", "1 byte", "record header only", "alert", "change cipher spec",
                "ClientHello truncated in the random", "application data", "plain CoAP ping"]
    assert set(no_hello) <= set(garbage)
    socks = []
    for data in list(garbage.values()) + noise:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(data, addr)
        socks.append(s)
        time.sleep(0.002)
    # a well-formed hello is answered (HelloVerifyRequest); junk follows on that session
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(client_hello(), addr)
    assert is_hello_verify_request(s.recv(2048))
    for junk in (b"", b"\x16", b"\x17\xfe\xfd" + bytes(20), client_hello()[:50]):
        s.sendto(junk, addr)
    socks.append(s)
    assert wait_for(lambda: dep.metric("cmq_hub_coap_malformed_total") - malformed
                    >= len(no_hello), 5), dep.metric("cmq_hub_coap_malformed_total")
    res = publish(dep, f"{base}/t", "still-serving", *psk())
    assert res.response.code == "2.04", f"{res}\n{dep.log_tails(30)}"
    assert delivered(sub, 1) == [(f"{base}/t", b"still-serving")]
    assert dep.alive()
    for s in socks:
        s.close()


def test_hub_without_the_cluster_secret_cannot_use_the_key(deploy, mode):
    """Cluster mode: the key is sealed in the KV with the cluster's secret; a hub started
    with another one or none cannot open it (its handshakes fail) but loads the credential."""
    if mode != "cluster":
        pytest.skip("cluster mode only: sealed keys live in the NATS KV")
    docs = [*psk_device(DEV), user(WATCH)]
    dep = deploy(docs=docs)
    others = [dep.add_hub({"--coap-token-secret": "another-secret"}),
              dep.add_hub({"--coap-token-secret": None})]
    wait_registry(dep, docs, others)
    base = uid("dtlssecret")
    for hub in others:
        res = publish(dep, f"{base}/t", "x", *psk(), hub=hub)
        assert res.handshake_failed, f"{hub.label}: {res}"
        assert wait_for(lambda: dep.metric(HANDSHAKES, hub=hub, result="failed") == 1, 5)
        assert "cannot open the pre-shared key" in hub.read_log(), hub.log_tail(20)
    res = publish(dep, f"{base}/t", "x", *psk())
    assert res.response.code == "2.04", res


def test_short_key_exchange_does_not_panic(deploy):
    """A peer that answers the cookie request and then sends an empty ClientKeyExchange."""
    dep = deploy(docs=[*psk_device(DEV)])
    addr = ("127.0.0.1", dep.coap_hub.coaps_port)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(client_hello(), addr)
    hvr = s.recv(2048)
    assert is_hello_verify_request(hvr)
    cookie = hvr[28:28 + hvr[27]]  # record 13 + handshake 12 + version 2, then length, cookie
    s.sendto(client_hello(cookie=cookie, seq=1, msg_seq=1), addr)
    key_exchange = bytes([16, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0])  # type 16, empty body
    s.sendto(dtls_record(HANDSHAKE, key_exchange, seq=2), addr)
    s.close()
    assert publish(dep, f"{uid('p')}/t", "after", *psk()).response.code == "2.04"
    panics = wait_for(lambda: [line for line in dep.coap_hub.read_log().splitlines()
                               if "panicked" in line], 2)
    assert not panics, "\n".join(panics)


def test_unanswered_hellos_do_not_lock_devices_out(deploy):
    dep = deploy(docs=[*psk_device(DEV)])
    addr = ("127.0.0.1", dep.coap_hub.coaps_port)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(400)]
    for i, s in enumerate(socks):  # paced: the hub's socket buffer keeps them all
        s.sendto(client_hello(), addr)
        if i % 50 == 49:
            time.sleep(0.05)
    res = coaps_client(dep.coaps_uri(f"ps/{uid('p')}/t"), "-m", "post", "-e", "after",
                       *psk(), wait=5)
    for s in socks:
        s.close()
    assert res.responses and res.response.code == "2.04", \
        f"busy={dep.metric(HANDSHAKES, result='busy')}\n{res}"


@pytest.mark.parametrize("forged", ["hello", "alert"])
def test_spoofed_datagrams_do_not_end_a_session(deploy, forged):
    """A ClientHello or a plaintext fatal alert forged with an observing device's address
    (an off-path attacker's only means) leaves its session up."""
    if os.geteuid() != 0:
        pytest.skip("needs a raw socket (root) to send from the device's address")
    dep = deploy(docs=[*psk_device(DEV), user(WATCH)])
    topic = f"{uid('spoof')}/t"
    port = dep.coap_hub.coaps_port
    obs = CliObserver(dep.coaps_uri(f"ps/{topic}"), 30, *psk(), client=COAPS_CLIENT).start()
    assert wait_for(obs.first_response, 10), obs.output()
    pub = dep.mqtt(user=WATCH)
    assert dep.await_notified(pub, [obs], topic), obs.output()
    [device_port] = local_ports_to(port)
    alert = dtls_record(21, bytes([2, 40]), seq=1000)  # fatal handshake_failure, epoch 0
    send_spoofed(device_port, port, client_hello() if forged == "hello" else alert)
    pub.publish(topic, b"after-spoof", qos=1)
    assert wait_for(lambda: b"after-spoof" in obs.payloads(), 5), \
        f"sessions={dep.metric(SESSIONS)}\n{obs.output()}"


def test_a_device_restarting_on_the_same_port_handshakes_again(deploy):
    """A device killed mid-session (no close_notify) that comes back from the same address
    and port gets a new session at once, replacing the old one."""
    dep = deploy(docs=[*psk_device(DEV), user(WATCH)])
    base = uid("reboot")
    sub = dep.subscriber(f"{base}/#", user=WATCH)
    port = free_udp_port()
    obs = CliObserver(dep.coaps_uri(f"ps/{base}/obs"), 30, "-p", str(port), *psk(),
                      client=COAPS_CLIENT).start()
    assert wait_for(obs.first_response, 10), obs.output()
    obs.proc.kill()  # like a reboot: the hub is not told
    obs.proc.wait()
    res = coaps_client(dep.coaps_uri(f"ps/{base}/t"), "-p", str(port), "-m", "post",
                       "-e", "reborn", *psk(), wait=5)
    assert res.response.code == "2.04", res
    assert [(m.topic, m.payload) for m in sub.wait_count(1, 10, topic=f"{base}/t")] == \
        [(f"{base}/t", b"reborn")]
    assert dep.metric(HANDSHAKES, result="ok") == 2
