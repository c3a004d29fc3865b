"""Changes that reach live connections: revoked credentials, narrowed ACLs."""

import pytest

from accesslib import (DISCONNECT, PUBLISH, Raw, connack, dev, login, pw, roundtrip, rule, topic_acl,
                       uid, user, wait_until)
from helpers import PINGREQ_PACKET, PINGRESP


def still_alive(raw) -> None:
    raw.send(PINGREQ_PACKET)
    assert raw.recv_type(PINGRESP, timeout=5, skip=(PUBLISH,)).type == PINGRESP


def revoke(registry, how: str, name: str) -> int:
    """Disable or delete ``name``'s credential; returns the CONNACK code a new login then
    gets (disabled: not authorized; deleted: unknown username)."""
    if how == "disable":
        registry.apply(name, user(name, disabled=True))
        return 0x87
    registry.delete(name)
    return 0x86


@pytest.mark.parametrize("how", ["disable", "delete"])
def test_revoked_credential_disconnects_mqtt5(registry, start_hub, how):
    registry.apply("alice", user("alice"))
    registry.apply("bob", user("bob"))
    hub = start_hub()
    alice = login(hub, "alice")
    bob = login(hub, "bob")
    before = hub.metric("cmq_hub_revoked_connections_total")
    expected_code = revoke(registry, how, "alice")
    seen = alice.expect_closed(10)
    assert [(p.type, p.reason) for p in seen] == [(DISCONNECT, 0x87)], seen
    still_alive(bob)  # other devices are untouched
    assert connack(hub, username="alice", password=pw("alice")) == expected_code
    assert wait_until(lambda: hub.metric("cmq_hub_revoked_connections_total") >= before + 1, 5), \
        hub.metrics_text()


@pytest.mark.parametrize("how", ["disable", "delete"])
def test_revoked_credential_closes_mqtt311(registry, start_hub, how):
    registry.apply("alice", user("alice"))
    registry.apply("bob", user("bob"))
    hub = start_hub()
    alice = login(hub, "alice", 4)
    bob = login(hub, "bob", 4)
    revoke(registry, how, "alice")
    seen = alice.expect_closed(10)
    assert seen == [], f"a 3.1.1 client got {seen} before the close"
    still_alive(bob)


def test_revoked_paho_client_sees_reason_0x87(registry, start_hub):
    registry.apply("alice", user("alice"))
    registry.apply("bob", user("bob"))
    hub = start_hub()
    alice = dev(hub, "alice")
    revoke(registry, "disable", "alice")
    assert alice.wait_disconnected(10), "paho client still connected after revocation"
    assert alice.disconnected[0] == 0x87, alice.disconnected


def test_acl_change_removes_live_subscription(registry, start_hub):
    """Subscriber allowed on a/#, receiving; an ACL change removes that permission: messages
    published afterwards no longer reach it (a control subscriber still allowed gets them),
    and it stays connected."""
    registry.apply("users", [user("alice"), user("carol"), user("pub")])

    def acl(alice_allowed: bool):
        docs = [topic_acl("pub", [rule("publish", "a/#", "allow")], usernames=["pub"]),
                topic_acl("carol", [rule("subscribe", "a/#", "allow")], usernames=["carol"])]
        if alice_allowed:
            docs.append(topic_acl("alice", [rule("subscribe", "a/#", "allow")],
                                  usernames=["alice"]))
        return docs

    registry.apply("acl", acl(True))
    hub = start_hub(default_permission="deny")
    alice, carol, publisher = dev(hub, "alice"), dev(hub, "carol"), dev(hub, "pub")
    assert alice.subscribe("a/#", qos=1) == [1]
    assert carol.subscribe("a/#", qos=1) == [1]
    roundtrip(publisher, alice, "a/before")
    revoked_before = hub.metric("cmq_hub_acl_revoked_subscriptions_total")

    registry.apply("acl", acl(False))
    # the publisher's permission is unchanged: wait for the hub to have applied the change
    # (the revoked-subscriptions counter), then publish
    metric_moved = wait_until(
        lambda: hub.metric("cmq_hub_acl_revoked_subscriptions_total") > revoked_before, 10)
    after = [f"after-{i}-{uid()}".encode() for i in range(5)]
    for p in after:
        assert publisher.publish("a/after", p, qos=1) == 0
    assert wait_until(lambda: all(p in carol.payloads() for p in after), 10), \
        "the control subscriber did not get the messages"
    wait_until(lambda: any(p in alice.payloads() for p in after), 0.5)  # grace for stragglers
    leaked = [p for p in after if p in alice.payloads()]
    assert not leaked, f"revoked subscription still delivered {leaked}"
    assert alice.connected(), "narrowing an ACL must not disconnect the subscriber"
    assert alice.subscribe("a/#", qos=1) == [0x87]  # and it cannot subscribe again
    assert metric_moved, "cmq_hub_acl_revoked_subscriptions_total did not increase"


@pytest.mark.parametrize("version", [5, 4], ids=["mqtt5", "mqtt311"])
def test_acl_change_refuses_next_publish(registry, start_hub, version):
    registry.apply("users", [user("pub"), user("watch")])

    def acl(topic):
        return topic_acl("pub", [rule("publish", topic, "allow")], usernames=["pub"])

    registry.apply("acl", [acl("a/#"), topic_acl("w", [rule("subscribe", "#", "allow")],
                                                 usernames=["watch"])])
    hub = start_hub(default_permission="deny")
    watcher = dev(hub, "watch")
    watcher.subscribe("#", qos=1)
    p = login(hub, "pub", version)
    roundtrip(p, watcher, "a/1")
    registry.apply("acl", [acl("b/#"), topic_acl("w", [rule("subscribe", "#", "allow")],
                                                 usernames=["watch"])])
    if version == 5:
        # no reconnect: the next QoS 1 publish is refused with 0x87
        assert wait_until(lambda: p.puback("a/1", b"probe") == 0x87, 10), \
            "publisher still allowed on a/# after the ACL change"
        assert p.puback("a/2", b"refused") == 0x87
    else:
        # 3.1.1: acknowledged but dropped; poll until the change is visible
        def dropped():
            # marker on a/ (being revoked), then a sentinel on b/ (being granted): once the
            # sentinel arrives, the marker (published first) has been decided
            marker, sentinel = uid("m311").encode(), uid("s311").encode()
            p.publish("a/2", marker, qos=1)
            p.publish("b/sentinel", sentinel, qos=1)
            if not watcher.wait_payload(sentinel, 1.0):
                return False
            return marker not in watcher.payloads()
        assert wait_until(dropped, 10), "publisher still delivered on a/# after the ACL change"
    roundtrip(p, watcher, "b/1")  # still connected, allowed on b/#


def test_credential_labels_and_attributes_change_on_a_live_connection(registry, start_hub):
    """Changing a credential's labels (credentialSelector) or attributes (${attr.X})
    narrows a connected device's permissions like an ACL change does."""
    registry.apply("alice", user("alice", labels={"role": "admin"}, attributes={"site": "paris"}))
    registry.apply("others", [user("pub"), user("watch")])
    registry.apply("acl", [
        topic_acl("admins", [rule("subscribe", "admin/#", "allow")],
                  credentialSelector={"matchLabels": {"role": "admin"}}),
        topic_acl("sites", [rule("subscribe", "site/${attr.site}/#", "allow")], all=True),
        topic_acl("pub", [rule("publish", "#", "allow")], usernames=["pub"]),
        topic_acl("watch", [rule("subscribe", "#", "allow")], usernames=["watch"]),
    ])
    hub = start_hub(default_permission="deny")
    alice, watcher, publisher = dev(hub, "alice"), dev(hub, "watch"), dev(hub, "pub")
    assert alice.subscribe("admin/#", qos=1) == [1]
    assert alice.subscribe("site/paris/#", qos=1) == [1]
    assert watcher.subscribe("#", qos=1) == [1]
    roundtrip(publisher, alice, "admin/before")
    revoked_before = hub.metric("cmq_hub_acl_revoked_subscriptions_total")

    registry.apply("alice", user("alice", labels={"role": "sensor"}, attributes={"site": "lyon"}))
    wait_until(lambda: hub.metric("cmq_hub_acl_revoked_subscriptions_total")
               >= revoked_before + 2, 10)
    after = [(t, uid("after").encode()) for t in ("admin/x", "site/paris/x")]
    for topic, payload in after:
        assert publisher.publish(topic, payload, qos=1) == 0
    assert wait_until(lambda: all(p in watcher.payloads() for _, p in after), 10)
    wait_until(lambda: any(p in alice.payloads() for _, p in after), 0.5)
    leaked = [t for t, p in after if p in alice.payloads()]
    assert not leaked, f"subscriptions no longer allowed still delivered {leaked}"
    assert alice.connected()
    assert alice.subscribe("site/lyon/#", qos=1) == [1]   # the new attribute value applies
    assert alice.subscribe("admin/#", qos=1) == [0x87]


def test_anonymous_clients_disconnected_when_the_first_credential_appears(registry, start_hub):
    """No credential: anonymous allowed (default). The first DeviceCredential turns that
    off; connected anonymous clients are revoked like a disabled credential."""
    hub = start_hub()
    anon5, anon4 = Raw(hub, 5), Raw(hub, 4)
    anon5.login(None)
    anon4.login(None)
    registry.apply("x", user("x"))
    seen = anon5.expect_closed(10)
    assert [(p.type, p.reason) for p in seen] == [(DISCONNECT, 0x87)], seen
    assert anon4.expect_closed(10) == []
