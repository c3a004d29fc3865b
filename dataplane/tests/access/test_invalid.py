"""Invalid resources: the hub keeps its last good state (standalone reload), or the
registry tool refuses them (cluster)."""

import pytest

from accesslib import (Raw, bcrypt_hash, connack, credential, rule, to_yaml, topic_acl,
                       wait_until)

# (case id, the invalid document, the field path the error must name)
INVALID = [
    ("permission", lambda: topic_acl("broken", [rule("publish", "x/#", "maybe")], all=True),
     "spec.rules[0].permission"),
    ("template", lambda: topic_acl("broken", [rule("publish", "a/${nope}", "allow")], all=True),
     "spec.rules[0].topics[0]"),
    ("qos", lambda: topic_acl("broken", [rule("publish", "ok/#", "allow"),
                                         rule("publish", "a/#", "allow", qos=[3])], all=True),
     "spec.rules[1].qos"),
    ("plaintext-password", lambda: credential("alice", username="alice", hash="hunter2"),
     "spec.password.hash"),
]
IDS = [c[0] for c in INVALID]


def _setup(registry, start_hub):
    registry.apply("alice", credential("alice", username="alice", hash=bcrypt_hash("pw1")))
    registry.apply("acl", topic_acl("acl", [rule("publish", "x/#", "deny")], all=True))
    hub = start_hub()
    assert connack(hub, username="alice", password="pw1") == 0
    return hub


@pytest.mark.standalone_only(reason="manifest folder reload; cluster: test_registry_apply_rejects_invalid")
@pytest.mark.parametrize("case", INVALID, ids=IDS)
def test_invalid_manifest_keeps_last_good_state(registry, start_hub, case):
    _, make_doc, field = case
    hub = _setup(registry, start_hub)
    invalid_before = hub.metric("cmq_hub_registry_reloads_total", result="invalid")
    # alice's file now changes her password AND holds an invalid resource
    docs = [make_doc()]
    if docs[0]["kind"] != "DeviceCredential":
        docs.insert(0, credential("alice", username="alice", hash=bcrypt_hash("pw2")))
    path = registry.apply("alice", docs)   # waits for the reload (counted as invalid)
    assert hub.metric("cmq_hub_registry_reloads_total", result="invalid") > invalid_before
    # last good state: old password, old ACL
    assert connack(hub, username="alice", password="pw1") == 0
    assert connack(hub, username="alice", password="pw2") == 0x86
    c = login_pw(hub, "alice", "pw1")
    assert c.puback("x/1") == 0x87
    lines = wait_until(lambda: hub.grep(str(path), field), 5)
    assert lines, (f"no log line with {path} and {field}:\n"
                   + "\n".join(hub.grep("WARN")[-10:]))
    assert any("WARN" in ln for ln in lines), lines
    # fixing the file is picked up
    ok_before = hub.metric("cmq_hub_registry_reloads_total", result="ok")
    registry.apply("alice", credential("alice", username="alice", hash=bcrypt_hash("pw2")))
    assert hub.metric("cmq_hub_registry_reloads_total", result="ok") > ok_before
    assert connack(hub, username="alice", password="pw2") == 0


@pytest.mark.standalone_only(reason="manifest folder reload")
def test_unparsable_yaml_file(registry, start_hub):
    hub = _setup(registry, start_hub)
    invalid_before = hub.metric("cmq_hub_registry_reloads_total", result="invalid")
    path = registry.apply("garbage", "kind: TopicAcl\nspec: [unclosed\n")
    assert hub.metric("cmq_hub_registry_reloads_total", result="invalid") > invalid_before
    assert connack(hub, username="alice", password="pw1") == 0
    assert wait_until(lambda: hub.grep(str(path)), 5), "the log does not name the file"
    assert hub.alive()


@pytest.mark.cluster_only(reason="`cmq registry apply` validates; standalone: the reload test")
@pytest.mark.parametrize("case", INVALID, ids=IDS)
def test_registry_apply_rejects_invalid(registry, start_hub, case):
    _, make_doc, field = case
    hub = _setup(registry, start_hub)
    path = registry.write("invalid", to_yaml([make_doc()]))
    res = registry.apply_file(path)
    assert res.returncode != 0, f"invalid file accepted:\n{res.stdout}{res.stderr}"
    assert field in res.stdout + res.stderr, res.stdout + res.stderr
    # nothing changed on the hub
    assert connack(hub, username="alice", password="pw1") == 0
    c = login_pw(hub, "alice", "pw1")
    assert c.puback("x/1") == 0x87
    assert c.puback("ok/1") == 0


def login_pw(hub, name, password):
    c = Raw(hub)
    c.login(None, name, password)
    return c

