"""ACL corner cases where a device could slip past its rules: topic aliases, shared
subscriptions, wills, persistent sessions; ordering ties; namespaces."""

import pytest

from accesslib import (DISCONNECT, PUBACK, PUBLISH, Raw, bcrypt_hash, connack, credential, dev,
                       login, pw, roundtrip, rule, topic_acl, uid, user, wait_until)


def test_topic_alias_cannot_bypass_publish_acl(registry, start_hub):
    """An alias registered while the topic was allowed resolves to that topic after an ACL
    change: the aliased publish is denied like the full topic."""
    registry.apply("users", [user("alice"), user("watch")])
    registry.apply("acl", topic_acl("a", [rule("publish", "al/#", "allow")], usernames=["alice"]))
    hub = start_hub()
    watcher = dev(hub, "watch")
    watcher.subscribe("al/#", qos=1)
    alice = login(hub, "alice")
    assert alice.publish("al/x", b"full", qos=1, props={"topic_alias": 1}).reason == 0
    assert alice.publish("", b"aliased", qos=1, props={"topic_alias": 1}).reason == 0
    assert watcher.wait_payload(b"aliased")
    registry.apply("acl", topic_acl("a", [rule("publish", "al/#", "deny")], usernames=["alice"]))
    assert wait_until(lambda: alice.puback("al/probe") == 0x87, 10)
    ack = alice.publish("", b"aliased-after", qos=1, props={"topic_alias": 1})
    assert ack.reason == 0x87, f"aliased publish to a denied topic acknowledged: {ack!r}"
    roundtrip(dev(hub, "watch"), watcher, "al/marker")
    assert b"aliased-after" not in watcher.payloads()


def test_topic_alias_set_by_a_denied_publish(registry, start_hub):
    """An alias set by a denied PUBLISH must not carry a later message to that topic
    (the hub may refuse it with 0x87 or treat the alias as unknown: protocol error)."""
    registry.apply("users", [user("alice"), user("watch")])
    registry.apply("acl", topic_acl("a", [rule("publish", "no/#", "deny")], usernames=["alice"]))
    hub = start_hub()
    watcher = dev(hub, "watch")
    watcher.subscribe("no/#", qos=1)
    alice = login(hub, "alice")
    assert alice.publish("no/x", b"first", qos=1, props={"topic_alias": 3}).reason == 0x87
    alice.publish("", b"second", qos=1, props={"topic_alias": 3}, wait_ack=False)
    p = alice.recv(5)
    if p.type == PUBACK:
        assert p.reason == 0x87, p
    else:
        assert p.type == DISCONNECT and p.reason in (0x82, 0x94), p
    roundtrip(dev(hub, "watch"), watcher, "no/marker")
    assert b"first" not in watcher.payloads() and b"second" not in watcher.payloads()


def test_shared_subscription_is_checked_on_its_filter(registry, start_hub):
    registry.apply("users", [user("alice")])
    registry.apply("acl", topic_acl("a", [rule("subscribe", "secret/#", "deny"),
                                          rule("subscribe", "open/#", "allow")],
                                    usernames=["alice"]))
    hub = start_hub(default_permission="deny")
    alice = login(hub, "alice")
    reasons = alice.subscribe([("$share/g/secret/#", 1), ("$share/g/secret/a", 1),
                               ("$share/g/open/#", 1), ("$share/g/#", 1)]).reasons
    assert reasons == [0x87, 0x87, 1, 0x87], [hex(r) for r in reasons]


def test_will_to_a_denied_topic_is_not_published(registry, start_hub):
    """A will is a publish on the device's behalf: the publish ACL applies (the hub may
    refuse the CONNECT or drop the will; it must never deliver it)."""
    registry.apply("users", [user("alice"), user("bob"), user("watch")])
    registry.apply("acl", topic_acl("a", [rule("publish", "wills/alice/#", "deny")],
                                    usernames=["alice"]))
    hub = start_hub()
    watcher = dev(hub, "watch")
    watcher.subscribe("wills/#", qos=1)
    alice = Raw(hub)
    ack = alice.login(None, "alice", pw("alice"), expect=None,
                      will={"topic": "wills/alice/gone", "payload": b"alice-will", "qos": 1})
    assert ack.reason in (0x00, 0x87), ack
    bob = Raw(hub)
    bob.login(None, "bob", pw("bob"),
              will={"topic": "wills/bob/gone", "payload": b"bob-will", "qos": 1})
    alice.abort()
    bob.abort()
    assert watcher.wait_payload(b"bob-will"), "the allowed will never arrived"
    wait_until(lambda: b"alice-will" in watcher.payloads(), 1.0)
    assert b"alice-will" not in watcher.payloads(), "a will to a denied topic was delivered"


@pytest.mark.parametrize("version", [5, 4], ids=["mqtt5", "mqtt311"])
def test_offline_session_subscription_narrowed(registry, start_hub, version):
    """A persistent session's subscription that an ACL change no longer allows must not
    deliver while the device is offline, nor after it comes back."""
    registry.apply("users", [user("alice"), user("pub")])

    def acls(alice_allowed):
        docs = [topic_acl("pub", [rule("publish", "o/#", "allow")], usernames=["pub"])]
        if alice_allowed:
            docs.append(topic_acl("alice", [rule("subscribe", "o/#", "allow")],
                                  usernames=["alice"]))
        return docs

    registry.apply("acl", acls(True))
    hub = start_hub(default_permission="deny")
    cid = uid("persist")
    props = {"session_expiry_interval": 300} if version == 5 else None
    alice = Raw(hub, version)
    alice.login(cid, "alice", pw("alice"), clean=False, props=props)
    assert alice.subscribe("o/#", qos=1).reasons == [1]
    alice.disconnect()

    publisher = dev(hub, "pub")
    assert publisher.publish("o/1", b"while-allowed", qos=1) == 0
    registry.apply("acl", acls(False))
    assert wait_until(lambda: connack(hub, username="pub", password=pw("pub")) == 0, 5)
    assert publisher.publish("o/2", b"after-narrowing", qos=1) == 0

    alice = Raw(hub, version)
    ack = alice.login(cid, "alice", pw("alice"), clean=False, props=props)
    assert ack.session_present
    queued = [p.payload for p in alice.recv_all(1.5) if p.type == PUBLISH]
    # nothing published from now on either
    assert publisher.publish("o/3", b"later", qos=1) == 0
    live = [p.payload for p in alice.recv_all(1.0) if p.type == PUBLISH]
    assert b"after-narrowing" not in queued and b"later" not in live, \
        f"narrowed subscription delivered: queued while offline {queued}, after reconnect {live}"


@pytest.mark.parametrize("deny_first", [True, False])
def test_equal_priority_ties_by_name(registry, start_hub, deny_first):
    registry.apply("users", [user("alice")])
    first, second = ("deny", "allow") if deny_first else ("allow", "deny")
    registry.apply("acl", [
        topic_acl("acl-b", [rule("publish", "tie/#", second)], priority=3, all=True),
        topic_acl("acl-a", [rule("publish", "tie/#", first)], priority=3, all=True),
    ])
    hub = start_hub()
    alice = login(hub, "alice")
    assert alice.puback("tie/1") == (0x87 if deny_first else 0)


def test_same_name_in_two_namespaces(registry, start_hub):
    registry.apply("default-ns", credential("dev", username="ua", hash=bcrypt_hash("pa")))
    registry.apply("other-ns", credential("dev", username="ub", hash=bcrypt_hash("pb"),
                                          namespace="other"))
    hub = start_hub()
    assert connack(hub, username="ua", password="pa") == 0
    assert connack(hub, username="ub", password="pb") == 0
    registry.delete("other-ns")
    assert connack(hub, username="ub", password="pb") == 0x86
    assert connack(hub, username="ua", password="pa") == 0


def test_deny_rule_overlapping_a_wildcard_subscription(registry, start_hub):
    """Default allow, ``deny subscribe secret/#``: a wider subscription (``#``, ``+/x``) must
    not become a way to read secret/... (the hub may refuse it or filter deliveries)."""
    registry.apply("users", [user("alice"), user("pub")])
    registry.apply("acl", topic_acl("a", [rule("subscribe", "secret/#", "deny")],
                                    usernames=["alice"]))
    hub = start_hub()
    alice = dev(hub, "alice")
    codes = alice.subscribe("#", qos=1) + alice.subscribe("+/x", qos=1)
    assert alice.subscribe("public/x", qos=1) == [1]
    publisher = dev(hub, "pub")
    assert publisher.publish("secret/x", b"leak", qos=1) == 0
    roundtrip(publisher, alice, "public/x")
    assert b"leak" not in alice.payloads(), f"secret/x delivered (SUBACK codes {codes})"
