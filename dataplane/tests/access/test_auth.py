"""Password authentication, anonymous access, client id matching, disabled credentials."""

import pytest

from accesslib import (BAD_CREDENTIALS, HAVE_MOSQUITTO, NOT_AUTHORIZED, Raw, argon2_hash,
                       bcrypt_hash, connack, credential, mosquitto_pub, mqtt_cluster, secret,
                       uid, user, wait_connack, pw, Dev, MosqSub)

VERSIONS = [pytest.param(5, id="mqtt5"), pytest.param(4, id="mqtt311")]


def _hash(kind: str, password: str) -> str:
    if kind == "argon2id":
        return argon2_hash(password)
    if kind == "argon2id-owasp":  # the usual production parameters (19 MiB, t=2)
        return argon2_hash(password, memory_kib=19456, time_cost=2, parallelism=1)
    if kind == "bcrypt-2b":
        return bcrypt_hash(password)
    if kind == "bcrypt-2y":  # PHP's prefix; same algorithm
        return "$2y$" + bcrypt_hash(password)[4:]
    raise ValueError(kind)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["argon2id", "bcrypt-2b", "bcrypt-2y"])
def test_password_hash_right_and_wrong(registry, start_hub, kind, version):
    password = "s3cret-" + uid()
    registry.apply("cred", credential("alice", username="alice", hash=_hash(kind, password)))
    hub = start_hub()
    assert connack(hub, username="alice", password=password, version=version) == 0
    assert connack(hub, username="alice", password=password + "x",
                   version=version) == BAD_CREDENTIALS[version]
    assert connack(hub, username="alice", password="", version=version) == BAD_CREDENTIALS[version]
    # unknown username: same code as a bad password (no user enumeration)
    assert connack(hub, username="mallory", password=password,
                   version=version) == BAD_CREDENTIALS[version]


def test_argon2id_production_parameters(registry, start_hub):
    password = "prod-" + uid()
    registry.apply("cred", credential("alice", username="alice",
                                      hash=_hash("argon2id-owasp", password)))
    hub = start_hub()
    assert connack(hub, username="alice", password=password) == 0
    assert connack(hub, username="alice", password="nope") == 0x86


def test_username_without_password_is_refused(registry, start_hub):
    registry.apply("cred", credential("alice", username="alice", hash=bcrypt_hash("pw1")))
    hub = start_hub()
    # a credential with a password always needs it: a missing password is a bad one
    assert connack(hub, username="alice") == 0x86


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("form", ["stringData", "data", "custom-key"])
def test_password_from_secret_ref(registry, start_hub, form, version):
    """Standalone reads the Secret from the folder; in cluster mode `cmq registry apply`
    resolves it (same input) and stores an argon2id hash."""
    password = "from-secret-" + uid()
    key = "devpw" if form == "custom-key" else "password"
    docs = [secret("alice-secret", {key: password}, base64_data=(form == "data")),
            credential("alice", username="alice",
                       secret_ref=("alice-secret", key) if form == "custom-key" else "alice-secret")]
    registry.apply("cred", docs)
    hub = start_hub()
    assert connack(hub, username="alice", password=password, version=version) == 0
    assert connack(hub, username="alice", password="wrong",
                   version=version) == BAD_CREDENTIALS[version]


@pytest.mark.standalone_only(reason="Secrets are read from the manifests folder only in standalone mode")
def test_secret_in_another_file_and_rotation(registry, start_hub):
    registry.apply("secret", secret("alice-secret", {"password": "first"}))
    registry.apply("cred", credential("alice", username="alice", secret_ref="alice-secret"))
    hub = start_hub()
    assert connack(hub, username="alice", password="first") == 0
    registry.apply("secret", secret("alice-secret", {"password": "second"}))
    assert wait_connack(hub, 0, username="alice", password="second") == 0
    assert connack(hub, username="alice", password="first") == 0x86


def test_credentials_applied_after_start(registry, start_hub):
    registry.apply("alice", credential("alice", username="alice", hash=bcrypt_hash("a-pw")))
    hub = start_hub()
    assert connack(hub, username="alice", password="a-pw") == 0
    assert connack(hub, username="bob", password="b-pw") == 0x86
    # a new credential
    registry.apply("bob", credential("bob", username="bob", hash=argon2_hash("b-pw")))
    assert wait_connack(hub, 0, username="bob", password="b-pw") == 0
    # a changed password: the old one stops working
    registry.apply("alice", credential("alice", username="alice", hash=bcrypt_hash("a-pw2")))
    assert wait_connack(hub, 0, username="alice", password="a-pw2") == 0
    assert connack(hub, username="alice", password="a-pw") == 0x86
    # removed
    registry.delete("bob")
    assert wait_connack(hub, 0x86, username="bob", password="b-pw") == 0x86


@pytest.mark.parametrize("version", VERSIONS)
def test_anonymous_default_without_credentials(registry, start_hub, version):
    hub = start_hub()
    # no DeviceCredential at all: allowAnonymous defaults to true, permission to allow
    assert connack(hub, version=version) == 0
    c = Raw(hub, version)
    c.login(uid("anon"))
    assert c.subscribe("open/topic", qos=1).reasons == [1]


@pytest.mark.parametrize("version", VERSIONS)
def test_anonymous_default_refused_once_credentials_exist(registry, start_hub, version):
    hub = start_hub()
    assert connack(hub, version=version) == 0
    registry.apply("alice", user("alice"))
    assert wait_connack(hub, NOT_AUTHORIZED[version], version=version) == NOT_AUTHORIZED[version]
    assert connack(hub, username="alice", password=pw("alice"), version=version) == 0
    # and open again when the last credential goes
    registry.delete("alice")
    assert wait_connack(hub, 0, version=version) == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_allow_anonymous_flag_true_with_credentials(registry, start_hub, version):
    registry.apply("alice", user("alice"))
    hub = start_hub(allow_anonymous=True)
    assert connack(hub, version=version) == 0
    assert connack(hub, username="alice", password=pw("alice"), version=version) == 0
    # a wrong password is not downgraded to anonymous
    assert connack(hub, username="alice", password="wrong",
                   version=version) == BAD_CREDENTIALS[version]


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_username_with_anonymous_allowed(registry, start_hub, version):
    """Spec reason codes: unknown username -> 0x86 / 0x04, also when anonymous clients are
    allowed (a client that names a user is not anonymous)."""
    registry.apply("alice", user("alice"))
    hub = start_hub(allow_anonymous=True)
    assert connack(hub, username="nobody", password="x",
                   version=version) == BAD_CREDENTIALS[version]


@pytest.mark.parametrize("version", VERSIONS)
def test_allow_anonymous_flag_false_without_credentials(registry, start_hub, version):
    hub = start_hub(allow_anonymous=False)
    assert connack(hub, version=version) == NOT_AUTHORIZED[version]
    registry.apply("alice", user("alice"))
    assert wait_connack(hub, 0, username="alice", password=pw("alice"), version=version) == 0
    assert connack(hub, version=version) == NOT_AUTHORIZED[version]


@pytest.mark.standalone_only(reason="the MqttCluster resource is read from the manifests folder")
@pytest.mark.parametrize("allow", [True, False])
def test_allow_anonymous_from_mqtt_cluster(registry, start_hub, allow):
    registry.apply("cluster", mqtt_cluster(auth={"allowAnonymous": allow}))
    registry.apply("alice", user("alice"))
    hub = start_hub()
    assert connack(hub) == (0 if allow else 0x87)
    assert connack(hub, version=4) == (0 if allow else 0x05)
    assert connack(hub, username="alice", password=pw("alice")) == 0


@pytest.mark.standalone_only(reason="clusterRef filtering against the MqttCluster in the folder")
def test_resources_of_another_cluster_are_ignored(registry, start_hub):
    registry.apply("cluster", mqtt_cluster("test"))
    registry.apply("alice", user("alice"))
    registry.apply("other", credential("eve", username="eve", hash=bcrypt_hash("eve-pw"),
                                       cluster_ref="another-cluster"))
    hub = start_hub()
    assert connack(hub, username="alice", password=pw("alice")) == 0
    assert connack(hub, username="eve", password="eve-pw") == 0x86


@pytest.mark.parametrize("version", VERSIONS)
def test_client_id_exact(registry, start_hub, version):
    registry.apply("cred", credential("d7", client_id="dev-7", username="dev",
                                      hash=bcrypt_hash("dev-pw")))
    hub = start_hub()
    assert connack(hub, "dev-7", "dev", "dev-pw", version) == 0
    assert connack(hub, "dev-7", "dev", "bad", version) == BAD_CREDENTIALS[version]
    # no credential matches (its client id differs): like an unknown username
    assert connack(hub, "dev-8", "dev", "dev-pw", version) == BAD_CREDENTIALS[version]


@pytest.mark.parametrize("version", VERSIONS)
def test_client_id_pattern_without_username(registry, start_hub, version):
    """A credential identified by client id pattern alone accepts any username."""
    registry.apply("cred", [
        credential("sensors", client_id_pattern="sensor-*", hash=argon2_hash("sensor-pw")),
        credential("units", client_id_pattern="unit-?", hash=bcrypt_hash("unit-pw")),
    ])
    hub = start_hub()
    # MQTT 3.1.1 needs a username with a password; MQTT 5 does not
    name = "anything" if version == 4 else None
    assert connack(hub, "sensor-12", name, "sensor-pw", version) == 0
    assert connack(hub, "sensor-", name, "sensor-pw", version) == 0   # '*' may be empty
    assert connack(hub, "sensor-12", name, "bad", version) == BAD_CREDENTIALS[version]
    assert connack(hub, "unit-1", name, "unit-pw", version) == 0
    for cid, password in (("actuator-1", "sensor-pw"), ("unit-12", "unit-pw"),
                          ("xsensor-1", "sensor-pw")):
        code = connack(hub, cid, name, password, version)  # no credential matches
        assert code == BAD_CREDENTIALS[version], (cid, hex(code))


@pytest.mark.parametrize("version", VERSIONS)
def test_disabled_credential(registry, start_hub, version):
    registry.apply("alice", user("alice", disabled=True))
    registry.apply("bob", user("bob"))
    hub = start_hub()
    assert connack(hub, username="alice", password=pw("alice"),
                   version=version) == NOT_AUTHORIZED[version]
    assert connack(hub, username="bob", password=pw("bob"), version=version) == 0
    registry.apply("alice", user("alice", disabled=False))
    assert wait_connack(hub, 0, username="alice", password=pw("alice"), version=version) == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_paho_username_password(registry, start_hub, version):
    registry.apply("alice", user("alice"))
    hub = start_hub()
    d = Dev(hub, version=version, username="alice", password=pw("alice")).connect()
    assert d.subscribe("paho/t", qos=1) == [1]
    assert d.publish("paho/t", b"hello", qos=1) == 0
    assert d.wait_payload(b"hello")
    bad = Dev(hub, version=version, username="alice", password="wrong").connect(expect_ok=False)
    # paho maps 3.1.1 code 4 onto the MQTT 5 reason "bad user name or password" (0x86)
    assert bad.connack_code == 0x86, bad.connack
    assert not bad.connected()


@pytest.mark.parametrize("version", VERSIONS)
def test_websocket_username_password(registry, start_hub, version):
    registry.apply("alice", user("alice"))
    hub = start_hub()
    d = Dev(hub, version=version, username="alice", password=pw("alice"),
            transport="websockets").connect()
    assert d.subscribe("ws/t", qos=1) == [1]
    assert d.publish("ws/t", b"over-ws", qos=1) == 0
    assert d.wait_payload(b"over-ws")
    bad = Dev(hub, version=version, username="alice", password="wrong",
              transport="websockets").connect(expect_ok=False)
    assert bad.connack_code == 0x86, bad.connack
    anon = Dev(hub, version=version, transport="websockets").connect(expect_ok=False)
    assert anon.connack_code == 0x87, anon.connack


@pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto-clients not installed")
@pytest.mark.parametrize("version", ["mqttv5", "mqttv311"])
def test_mosquitto_clients_username_password(registry, start_hub, version):
    registry.apply("users", [user("alice"), user("bob")])
    hub = start_hub()
    topic = f"mosq/{uid()}"
    sub = MosqSub(hub, topic, username="bob", password=pw("bob"), version=version)
    assert sub.subscribed, sub.lines
    res = mosquitto_pub(hub, topic, "via-mosquitto", username="alice", password=pw("alice"),
                        version=version)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sub.finish() == 0
    assert "via-mosquitto" in sub.data_lines(), sub.lines
    res = mosquitto_pub(hub, topic, "x", username="alice", password="wrong", version=version)
    assert res.returncode != 0
    assert "bad user name or password" in (res.stdout + res.stderr).lower(), res.stderr
    res = mosquitto_pub(hub, topic, "x", version=version)  # anonymous: refused
    assert res.returncode != 0
    assert "not auth" in (res.stdout + res.stderr).lower(), res.stderr
