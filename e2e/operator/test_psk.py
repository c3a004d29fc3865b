"""DeviceCredential pre-shared keys (spec.psk): the operator seals the key from its Secret
with the cluster's secret before it goes to NATS KV. Opened here with an independent
AES-256-GCM (Python's cryptography), as a hub would: key = HMAC-SHA256(cluster secret,
"cmq psk seal v1"), AAD = "<namespace>/<name>\\n<identity>", value "v1." +
base64url(nonce(12) || ciphertext || tag(16))."""

import base64
import hashlib
import hmac
import json
import re
import uuid

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conftest import apply, condition, get, http_get, kv_entry, mqtt_cluster, wait_until


def synced(kube, ns, name):
    return (condition(get(kube, ns, "devicecredential", name), "Synced") or {}).get("status") == "True"


def psk_credential(name: str, cluster: str, identity: str, secret: str, key: str | None = None,
                   **spec) -> dict:
    ref = {"name": secret, **({"key": key} if key else {})}
    return {"apiVersion": "cmq.io/v1alpha1", "kind": "DeviceCredential", "metadata": {"name": name},
            "spec": {"clusterRef": cluster, "psk": {"identity": identity, "secretRef": ref}, **spec}}


def psk_secret(name: str, value: bytes, key: str = "psk") -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "data": {key: base64.b64encode(value).decode()}}


def cluster_secret(kube, ns: str, cluster: str) -> bytes | None:
    """The value of the Secret the MqttCluster reconcile makes (`<cluster>-cmq-coap`)."""
    s = get(kube, ns, "secret", f"{cluster}-cmq-coap")
    return base64.b64decode(s["data"]["token-secret"]) if s else None


def stored(nats, ns: str, cluster: str, name: str) -> tuple[int, bytes] | None:
    """(revision, bytes) of the credential's entry in the cluster's credentials bucket."""
    return kv_entry(nats, f"cmq_{ns}_{cluster}_credentials", f"{ns}/{name}")


def sealed_of(nats, ns: str, cluster: str, name: str) -> str | None:
    entry = stored(nats, ns, cluster, name)
    return json.loads(entry[1]).get("psk_sealed") if entry else None


def open_seal(secret: bytes, entry: str, identity: str, sealed: str) -> bytes:
    assert sealed.startswith("v1."), sealed
    body = sealed[len("v1."):]
    assert re.fullmatch(r"[A-Za-z0-9_-]+", body), f"not unpadded base64url: {sealed}"
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    key = hmac.new(secret, b"cmq psk seal v1", hashlib.sha256).digest()
    return AESGCM(key).decrypt(raw[:12], raw[12:], f"{entry}\n{identity}".encode())


def sealed_len(sealed: str) -> int:
    body = sealed[len("v1."):]
    return len(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def reconciles_ok(operator) -> float:
    status, body = http_get(operator.admin_port, "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith("cmq_operator_reconciles_total{") and 'kind="DeviceCredential"' in line \
                and 'result="ok"' in line:
            return float(line.split()[-1])
    return 0.0


def test_psk_is_sealed_with_the_cluster_secret(kube, ns, nats):
    apply(kube, ns, mqtt_cluster("demo", nats.url))
    secret = wait_until(lambda: cluster_secret(kube, ns, "demo"), 30)
    assert secret and re.fullmatch(rb"[0-9a-f]{64}", secret), secret
    # The hubs get that Secret's value, the key they will open the seals with.
    hub = get(kube, ns, "deployment", "demo-hub")
    env = {e["name"]: e for e in hub["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CMQ_COAP_TOKEN_SECRET"]["valueFrom"]["secretKeyRef"] == \
        {"name": "demo-cmq-coap", "key": "token-secret", "optional": True}, env["CMQ_COAP_TOKEN_SECRET"]

    key = f"e2e-psk-{uuid.uuid4().hex}".encode()
    apply(kube, ns, psk_secret("dev1-psk", key))
    # A credential with nothing but a pre-shared key is accepted (the CEL rule).
    apply(kube, ns, psk_credential("dev1", "demo", "dev1-identity", "dev1-psk"))
    assert wait_until(lambda: synced(kube, ns, "dev1"), 30), get(kube, ns, "devicecredential", "dev1")
    cred = get(kube, ns, "devicecredential", "dev1")
    assert cred["spec"]["psk"]["secretRef"] == {"name": "dev1-psk", "key": "psk"}  # key defaulted

    entry = stored(nats, ns, "demo", "dev1")
    assert entry, "no KV entry"
    raw = entry[1]
    assert key not in raw and base64.b64encode(key) not in raw and key.hex().encode() not in raw, raw
    body = json.loads(raw)
    assert body["kind"] == "DeviceCredential" and body["namespace"] == ns and body["name"] == "dev1"
    assert body["spec"]["psk"]["identity"] == "dev1-identity"
    sealed = body["psk_sealed"]
    assert sealed_len(sealed) == 12 + len(key) + 16, sealed
    assert open_seal(secret, f"{ns}/dev1", "dev1-identity", sealed) == key
    # Bound to the cluster secret, the credential and the identity.
    for args in [(b"0" * 64, f"{ns}/dev1", "dev1-identity"), (secret, f"{ns}/dev2", "dev1-identity"),
                 (secret, f"{ns}/dev1", "other")]:
        with pytest.raises(InvalidTag):
            open_seal(*args, sealed)

    # The cluster's reconciles keep its secret (so seals stay valid).
    apply(kube, ns, mqtt_cluster("demo", nats.url, hub={"replicas": 2}))
    assert wait_until(lambda: (get(kube, ns, "deployment", "demo-hub") or {})
                      .get("spec", {}).get("replicas") == 2, 30)
    assert cluster_secret(kube, ns, "demo") == secret


def test_psk_rotation_reseals_and_an_unchanged_key_keeps_the_seal(kube, ns, nats, operator):
    apply(kube, ns, mqtt_cluster("demo", nats.url))
    secret = wait_until(lambda: cluster_secret(kube, ns, "demo"), 30)
    assert secret
    first = b"first-key"
    apply(kube, ns, psk_secret("dev-keys", first, key="dtls"))
    apply(kube, ns, psk_credential("dev", "demo", "dev-id", "dev-keys", key="dtls"))
    assert wait_until(lambda: synced(kube, ns, "dev"), 30), get(kube, ns, "devicecredential", "dev")
    rev, _ = stored(nats, ns, "demo", "dev")
    sealed = sealed_of(nats, ns, "demo", "dev")
    assert open_seal(secret, f"{ns}/dev", "dev-id", sealed) == first

    # The Secret is touched, its key is not: a reconcile that writes nothing.
    before = reconciles_ok(operator)
    kube.kubectl("annotate", "-n", ns, "secret", "dev-keys", "e2e/touched=1")
    assert wait_until(lambda: reconciles_ok(operator) > before, 30)
    assert stored(nats, ns, "demo", "dev")[0] == rev

    # The entry changes for another reason: the seal is kept as it is (seals are randomized,
    # so a new one would differ).
    apply(kube, ns, psk_credential("dev", "demo", "dev-id", "dev-keys", key="dtls",
                                   attributes={"fleet": "a"}))
    assert wait_until(lambda: json.loads(stored(nats, ns, "demo", "dev")[1])["spec"]
                      .get("attributes") == {"fleet": "a"}, 30)
    assert sealed_of(nats, ns, "demo", "dev") == sealed

    # The key changes (binary, stored as is): a new seal that opens to it.
    second = bytes(range(256))[::-1][:32] + b"\x00\n"
    apply(kube, ns, psk_secret("dev-keys", second, key="dtls"))
    assert wait_until(lambda: sealed_of(nats, ns, "demo", "dev") != sealed, 30), \
        get(kube, ns, "devicecredential", "dev")
    resealed = sealed_of(nats, ns, "demo", "dev")
    assert open_seal(secret, f"{ns}/dev", "dev-id", resealed) == second
    assert synced(kube, ns, "dev")

    # The identity changes: the seal is bound to the new one.
    apply(kube, ns, psk_credential("dev", "demo", "dev-id-2", "dev-keys", key="dtls",
                                   attributes={"fleet": "a"}))
    assert wait_until(lambda: sealed_of(nats, ns, "demo", "dev") != resealed, 30)
    again = sealed_of(nats, ns, "demo", "dev")
    assert open_seal(secret, f"{ns}/dev", "dev-id-2", again) == second
    with pytest.raises(InvalidTag):
        open_seal(secret, f"{ns}/dev", "dev-id", again)


def test_missing_psk_secret_is_reported_and_nothing_is_written(kube, ns, nats):
    """As for a password Secret: no entry while the Secret is missing; a credential that was
    synced keeps its entry (the last key) when its Secret goes."""
    apply(kube, ns, mqtt_cluster("demo", nats.url))
    secret = wait_until(lambda: cluster_secret(kube, ns, "demo"), 30)
    assert secret
    apply(kube, ns, psk_credential("erin", "demo", "erin-id", "erin-psk"))
    c = wait_until(lambda: condition(get(kube, ns, "devicecredential", "erin"), "Synced"), 30)
    assert c and c["status"] == "False" and c["reason"] == "SecretNotFound", c
    assert f"{ns}/erin-psk" in c["message"], c
    assert stored(nats, ns, "demo", "erin") is None
    events = kube.kubectl("get", "events", "-n", ns, "-o", "json").stdout
    assert "SecretNotFound" in events

    # The Secret appears: synced without touching the credential.
    apply(kube, ns, psk_secret("erin-psk", b"erin-key"))
    assert wait_until(lambda: synced(kube, ns, "erin"), 30), get(kube, ns, "devicecredential", "erin")
    entry = stored(nats, ns, "demo", "erin")
    assert entry and open_seal(secret, f"{ns}/erin", "erin-id", json.loads(entry[1])["psk_sealed"]) == b"erin-key"

    # The Secret goes: reported, the entry stays as it was.
    kube.kubectl("delete", "-n", ns, "secret", "erin-psk")
    assert wait_until(lambda: (condition(get(kube, ns, "devicecredential", "erin"), "Synced") or {})
                      .get("reason") == "SecretNotFound", 30), get(kube, ns, "devicecredential", "erin")
    assert stored(nats, ns, "demo", "erin") == entry

    # A Secret without the key the credential names: the same reason.
    apply(kube, ns, psk_secret("erin-psk", b"erin-key", key="other"))
    c = wait_until(lambda: (lambda c: c if c and "has no key" in c["message"] else None)(
        condition(get(kube, ns, "devicecredential", "erin"), "Synced")), 30)
    assert c and c["status"] == "False" and c["reason"] == "SecretNotFound", c
    assert stored(nats, ns, "demo", "erin") == entry


def test_psk_longer_than_64_bytes_is_invalid(kube, ns, nats):
    apply(kube, ns, mqtt_cluster("demo", nats.url))
    assert wait_until(lambda: cluster_secret(kube, ns, "demo"), 30)
    apply(kube, ns, psk_secret("long-psk", b"k" * 65))
    apply(kube, ns, psk_credential("long", "demo", "long-id", "long-psk"))
    c = wait_until(lambda: condition(get(kube, ns, "devicecredential", "long"), "Synced"), 30)
    assert c and c["status"] == "False" and c["reason"] == "Invalid", c
    assert "1 to 64 bytes" in c["message"] and "65" in c["message"], c
    assert stored(nats, ns, "demo", "long") is None
    # Fixed in the Secret: synced without touching the credential.
    apply(kube, ns, psk_secret("long-psk", b"k" * 64))
    assert wait_until(lambda: synced(kube, ns, "long"), 30), get(kube, ns, "devicecredential", "long")
