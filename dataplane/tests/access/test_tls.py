"""TLS listeners (mqtts, wss), client certificates as identities, server certificate reload."""

import os
import shutil

import pytest

from accesslib import (HAVE_MOSQUITTO, BAD_CREDENTIALS, NOT_AUTHORIZED, Dev, MosqSub, Raw,
                       TlsFiles, bcrypt_hash, credential, dev, mosquitto_pub, peer_cert_der, pw,
                       roundtrip, rule, tls_refused, topic_acl, uid, user, wait_until)
from certs import fingerprint

VERSIONS = [pytest.param(5, id="mqtt5"), pytest.param(4, id="mqtt311")]

# TopicAcl for certificate devices: each may use cert/<its CN>/...
CERT_ACL = topic_acl("certs", [rule("all", "cert/${cert.cn}/#", "allow")],
                     credentialSelector={"matchLabels": {"auth": "cert"}})

# lets the user "watch" subscribe to everything (for tests with default permission deny)
WATCH_ACL = topic_acl("watch", [rule("subscribe", "#", "allow")], usernames=["watch"])


def cert_device(name: str, **x509) -> dict:
    return credential(name, x509=x509, labels={"auth": "cert"})


def cert_login(hub, cert, version=5, username=None, password=None, expect=0):
    c = Raw(hub, version, tls=True, cert=cert)
    ack = c.login(None, username, password, expect=expect)
    return c, ack.reason


@pytest.mark.parametrize("version", VERSIONS)
def test_tls_with_password(registry, start_hub, pki, version):
    registry.apply("users", [user("alice")])
    hub = start_hub(tls=True)
    assert peer_cert_der(hub) == pki.server.der
    assert peer_cert_der(hub, port=hub.wss_port) == pki.server.der
    alice = dev(hub, "alice", version, tls=True)
    assert alice.subscribe("secure/#", qos=1) == [1]
    roundtrip(alice, alice, "secure/1")
    bad = Raw(hub, version, tls=True)
    assert bad.login(None, "alice", "wrong", expect=None).reason == BAD_CREDENTIALS[version]
    # the plain listener keeps working next to the TLS ones
    plain = dev(hub, "alice", version)
    roundtrip(plain, alice, "secure/2")


@pytest.mark.parametrize("version", VERSIONS)
def test_mtls_required_common_name_identity_and_acl(registry, start_hub, pki, version):
    registry.apply("devices", [cert_device("dev-1", commonName="dev-cn-1"), user("watch")])
    registry.apply("acl", [CERT_ACL, WATCH_ACL])
    hub = start_hub(tls=True, client_auth="required", default_permission="deny")
    watcher = dev(hub, "watch")               # plain listener
    watcher.subscribe("cert/#", qos=1)
    c, _ = cert_login(hub, pki.client("dev-cn-1"), version)   # no username, no password
    roundtrip(c, watcher, "cert/dev-cn-1/temp")  # ${cert.cn} = dev-cn-1
    assert c.subscribe([("cert/dev-cn-1/cmd", 1), ("cert/other/cmd", 1)]).reasons == \
        [1, {5: 0x87, 4: 0x80}[version]]
    if version == 5:
        assert c.puback("cert/other/temp") == 0x87
        assert c.puback("elsewhere") == 0x87


def test_mtls_required_refuses_missing_and_untrusted_certificates(registry, start_hub, pki):
    registry.apply("devices", [cert_device("dev-1", commonName="dev-cn-1"), user("alice")])
    hub = start_hub(tls=True, client_auth="required")
    assert tls_refused(hub, None), "TLS connection without a client certificate was accepted"
    assert tls_refused(hub, pki.rogue_client), "certificate from an untrusted CA was accepted"
    assert tls_refused(hub, None, port=hub.wss_port), "wss without a client certificate"
    # a trusted certificate still works, and the plain listener is unaffected
    cert_login(hub, pki.client("dev-cn-1"))
    Raw(hub).login(None, "alice", pw("alice"))


@pytest.mark.parametrize("version", VERSIONS)
def test_mtls_trusted_certificate_without_credential(registry, start_hub, pki, version):
    """A valid certificate that matches no DeviceCredential is an anonymous client."""
    registry.apply("devices", [cert_device("dev-1", commonName="dev-cn-1")])
    hub = start_hub(tls=True, client_auth="required")
    _, code = cert_login(hub, pki.client("stranger"), version, expect=None)
    assert code == NOT_AUTHORIZED[version]


def test_mtls_optional(registry, start_hub, pki):
    registry.apply("devices", [cert_device("dev-2", commonName="dev-cn-2")])
    registry.apply("acl", [CERT_ACL, topic_acl("anon", [rule("publish", "#", "deny")],
                                               anonymous=True)])
    hub = start_hub(tls=True, client_auth="optional")
    # no certificate: anonymous, which is refused by default once credentials exist
    c = Raw(hub, tls=True)
    assert c.login(None, expect=None).reason == 0x87
    # a presented certificate is checked
    assert tls_refused(hub, pki.rogue_client), "optional: untrusted certificate was accepted"
    dev2, _ = cert_login(hub, pki.client("dev-cn-2"))
    assert dev2.puback("cert/dev-cn-2/x") == 0


def test_mtls_optional_anonymous_allowed(registry, start_hub, pki):
    registry.apply("devices", [cert_device("dev-2", commonName="dev-cn-2")])
    registry.apply("acl", [CERT_ACL, topic_acl("anon", [rule("publish", "#", "deny")],
                                               anonymous=True)])
    hub = start_hub(tls=True, client_auth="optional", allow_anonymous=True)
    anon = Raw(hub, tls=True)
    anon.login(None)                               # no certificate: anonymous
    assert anon.puback("cert/dev-cn-2/x") == 0x87  # the anonymous ACL applies
    dev2, _ = cert_login(hub, pki.client("dev-cn-2"))
    assert dev2.puback("cert/dev-cn-2/x") == 0


@pytest.mark.parametrize("form", ["openssl", "lowercase-hex"])
def test_sha256_fingerprint_identity(registry, start_hub, pki, form):
    cert = pki.client("fp-device")
    fp = fingerprint(cert.cert) if form == "openssl" else cert.sha256
    assert fp.replace(":", "").lower() == cert.sha256
    registry.apply("devices", [cert_device("fp", sha256Fingerprint=fp)])
    registry.apply("acl", CERT_ACL)
    hub = start_hub(tls=True, client_auth="required")
    c, _ = cert_login(hub, cert)
    assert c.puback("cert/fp-device/x") == 0   # ${cert.cn} is known here too
    # another certificate from the same CA (other fingerprint) is not this device
    _, code = cert_login(hub, pki.client("fp-other"), expect=None)
    assert code == 0x87


def test_subject_alt_name_identity(registry, start_hub, pki):
    registry.apply("devices", [cert_device("san", subjectAltName="dev7.example")])
    hub = start_hub(tls=True, client_auth="required")
    cert_login(hub, pki.client("san-device", san="DNS:dev7.example"))
    _, code = cert_login(hub, pki.client("san-device-2", san="DNS:dev8.example"), expect=None)
    assert code == 0x87


def test_certificate_and_password_both_needed(registry, start_hub, pki):
    registry.apply("devices", [credential("both", username="both", hash=bcrypt_hash("both-pw"),
                                          x509={"commonName": "dev-both"})])
    hub = start_hub(tls=True, client_auth="optional")
    cert = pki.client("dev-both")
    cert_login(hub, cert, username="both", password="both-pw")
    _, code = cert_login(hub, cert, username="both", password="wrong", expect=None)
    assert code == 0x86
    # the password alone (no certificate) does not match the credential's identity
    c = Raw(hub, tls=True)
    assert c.login(None, "both", "both-pw", expect=None).reason == 0x86
    # nor over the plain listener
    assert Raw(hub).login(None, "both", "both-pw", expect=None).reason == 0x86


def test_cert_cn_template_needs_a_certificate(registry, start_hub, pki):
    """A password device over TLS without a certificate has no ${cert.cn}: the rule does
    not match it."""
    registry.apply("devices", [user("alice", labels={"auth": "cert"})])
    registry.apply("acl", CERT_ACL)
    hub = start_hub(tls=True, default_permission="deny")
    alice = Raw(hub, tls=True)
    alice.login(None, "alice", pw("alice"))
    assert alice.puback("cert/alice/x") == 0x87
    assert alice.puback("cert//x") == 0x87


@pytest.mark.parametrize("version", VERSIONS)
def test_wss_paho(registry, start_hub, pki, version):
    registry.apply("users", [user("alice"), cert_device("dev-1", commonName="dev-cn-1")])
    registry.apply("acl", CERT_ACL)
    hub = start_hub(tls=True, client_auth="optional")
    alice = Dev(hub, version=version, username="alice", password=pw("alice"), tls=True,
                transport="websockets").connect()
    assert alice.subscribe("cert/dev-cn-1/#", qos=1) == [1]
    device = Dev(hub, version=version, tls=True, cert=pki.client("dev-cn-1"),
                 transport="websockets").connect()
    roundtrip(device, alice, "cert/dev-cn-1/ws")
    bad = Dev(hub, version=version, username="alice", password="wrong", tls=True,
              transport="websockets").connect(expect_ok=False)
    assert bad.connack_code == 0x86


@pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto-clients not installed")
@pytest.mark.parametrize("version", ["mqttv5", "mqttv311"])
def test_mosquitto_clients_mtls(registry, start_hub, pki, version):
    registry.apply("devices", [cert_device("dev-1", commonName="dev-cn-1"),
                               cert_device("dev-2", commonName="dev-cn-2")])
    registry.apply("acl", topic_acl("shared", [rule("all", "shared/#", "allow")],
                                    credentialSelector={"matchLabels": {"auth": "cert"}}))
    hub = start_hub(tls=True, client_auth="required", default_permission="deny")
    topic = f"shared/{uid()}"
    sub = MosqSub(hub, topic, tls=True, cert=pki.client("dev-cn-2"), version=version)
    assert sub.subscribed, sub.lines
    res = mosquitto_pub(hub, topic, "over-mtls", tls=True, cert=pki.client("dev-cn-1"),
                        version=version)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sub.finish() == 0
    assert "over-mtls" in sub.data_lines(), sub.lines
    # without a certificate, or with an untrusted one: no connection
    assert mosquitto_pub(hub, topic, "x", tls=True, version=version).returncode != 0
    assert mosquitto_pub(hub, topic, "x", tls=True, cert=pki.rogue_client,
                         version=version).returncode != 0


def _replace(src, dst) -> None:
    """Copy ``src`` over ``dst`` atomically (temp file in the same folder, then rename)."""
    tmp = dst.with_name(f".{dst.name}.{uid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def test_server_certificate_hot_reload(registry, start_hub, pki, tmp_path):
    d = tmp_path / "tls"
    d.mkdir()
    cert, key = d / "server.pem", d / "server.key"
    shutil.copyfile(pki.server.cert, cert)
    shutil.copyfile(pki.server.key, key)
    registry.apply("users", [user("alice"), user("bob")])
    hub = start_hub(tls=TlsFiles(cert, key, pki.ca.cert), tls_reload_ms=200)
    assert peer_cert_der(hub) == pki.server.der
    alice = dev(hub, "alice", tls=True)
    assert alice.subscribe("hot/#", qos=1) == [1]
    roundtrip(alice, alice, "hot/1")
    ok_before = hub.metric("cmq_hub_tls_reloads_total", result="ok")

    _replace(pki.server2.key, key)
    _replace(pki.server2.cert, cert)
    assert wait_until(lambda: peer_cert_der(hub) == pki.server2.der, 10), \
        "new TLS connections still get the old certificate"
    assert peer_cert_der(hub, port=hub.wss_port) == pki.server2.der
    # the connection made before the change is still up and working
    assert alice.connected()
    roundtrip(alice, alice, "hot/2")
    bob = dev(hub, "bob", tls=True)
    roundtrip(bob, alice, "hot/3")
    assert wait_until(lambda: hub.metric("cmq_hub_tls_reloads_total", result="ok") > ok_before,
                      5), hub.metrics_text()


def test_broken_certificate_file_keeps_the_current_one(registry, start_hub, pki, tmp_path):
    d = tmp_path / "tls"
    d.mkdir()
    cert, key = d / "server.pem", d / "server.key"
    shutil.copyfile(pki.server.cert, cert)
    shutil.copyfile(pki.server.key, key)
    hub = start_hub(tls=TlsFiles(cert, key, pki.ca.cert), tls_reload_ms=200)
    failed_before = hub.metric("cmq_hub_tls_reloads_total", result="failed")
    tmp = d / ".broken"
    tmp.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    os.replace(tmp, cert)
    assert wait_until(lambda: hub.metric("cmq_hub_tls_reloads_total", result="failed")
                      > failed_before, 10), hub.metrics_text()
    assert hub.alive()
    assert peer_cert_der(hub) == pki.server.der
    # and a good file afterwards is picked up
    _replace(pki.server2.key, key)
    _replace(pki.server2.cert, cert)
    assert wait_until(lambda: peer_cert_der(hub) == pki.server2.der, 10)
