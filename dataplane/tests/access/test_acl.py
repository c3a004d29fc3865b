"""TopicAcl rules: publish/subscribe allow and deny, every condition and template, priority,
selectors, default permission and deny action."""

import pytest

from accesslib import (DISCONNECT, PUBACK, PUBLISH, SUBACK_DENIED, Raw,
                       dev, login, mqtt_cluster, pw, roundtrip, rule, topic_acl, uid, user,
                       wait_until)
from helpers import PINGREQ_PACKET, PINGRESP, PUBCOMP, sub_opts

VERSIONS = [pytest.param(5, id="mqtt5"), pytest.param(4, id="mqtt311")]


def denied_publish_not_delivered(pub: Raw, watcher, topic: str, qos: int, marker_topic: str):
    """``pub`` publishes on ``topic`` (denied), then an allowed marker on ``marker_topic``;
    ``watcher`` (subscribed to both) gets the marker but never the denied message
    (per-publisher order: had it been delivered, it would have come first)."""
    payload = uid("denied").encode()
    if qos == 0:
        pub.publish(topic, payload, qos=0)
    else:
        pub.publish(topic, payload, qos=qos)
    roundtrip(pub, watcher, marker_topic)
    assert payload not in watcher.payloads(), f"denied QoS {qos} message on {topic} delivered"


def test_publish_allow_deny_mqtt5(registry, start_hub):
    registry.apply("users", [user("alice"), user("watch")])
    registry.apply("acl", topic_acl("alice", [
        rule("publish", "t/ok/#", "allow"),
        rule("publish", "t/no/#", "deny"),
    ], usernames=["alice"]))
    hub = start_hub()
    watcher = dev(hub, "watch")
    assert watcher.subscribe("t/#", qos=1) == [1]
    alice = login(hub, "alice")
    denied_before = hub.metric("cmq_hub_acl_denied_total", action="publish")

    assert alice.puback("t/ok/a", b"fine", qos=1) == 0x00
    assert alice.puback("t/no/a", b"nope", qos=1) == 0x87          # PUBACK 0x87
    assert alice.puback("t/no/b", b"nope2", qos=2) == 0x87         # PUBREC 0x87
    assert alice.puback("t/ok/b", b"fine2", qos=2) == 0x00
    denied_publish_not_delivered(alice, watcher, "t/no/c", 0, "t/ok/marker")  # QoS 0: dropped
    assert b"fine" in watcher.payloads() and b"fine2" in watcher.payloads()
    assert b"nope" not in watcher.payloads() and b"nope2" not in watcher.payloads()
    assert wait_until(lambda: hub.metric("cmq_hub_acl_denied_total", action="publish")
                      >= denied_before + 3, 5), hub.metrics_text()


def test_publish_denied_mqtt311_is_acked_and_dropped(registry, start_hub):
    registry.apply("users", [user("alice"), user("watch")])
    registry.apply("acl", topic_acl("alice", [rule("publish", "t/no/#", "deny")],
                                    usernames=["alice"]))
    hub = start_hub()
    watcher = dev(hub, "watch")
    watcher.subscribe("t/#", qos=1)
    alice = login(hub, "alice", version=4)
    before = hub.metric("cmq_hub_acl_denied_total", action="publish")
    ack = alice.publish("t/no/x", b"secret-311", qos=1)       # normal PUBACK
    assert ack.type == PUBACK and len(ack.body) == 2, ack
    comp = alice.publish("t/no/y", b"secret-311-q2", qos=2)  # PUBREC / PUBCOMP as usual
    assert comp.type == PUBCOMP
    denied_publish_not_delivered(alice, watcher, "t/no/z", 1, "t/ok/marker")
    assert b"secret-311" not in watcher.payloads()
    assert b"secret-311-q2" not in watcher.payloads()
    assert wait_until(lambda: hub.metric("cmq_hub_acl_denied_total", action="publish")
                      >= before + 3, 5), hub.metrics_text()
    # the connection is still usable
    alice.send(PINGREQ_PACKET)
    assert alice.recv_type(PINGRESP).type == PINGRESP


@pytest.mark.parametrize("version", VERSIONS)
def test_subscribe_allow_deny(registry, start_hub, version):
    registry.apply("users", [user("alice"), user("pub")])
    registry.apply("acl", topic_acl("alice", [
        rule("subscribe", "s/ok/#", "allow"),
        rule("subscribe", "s/no/#", "deny"),
    ], usernames=["alice"]))
    hub = start_hub()
    alice = login(hub, "alice", version)
    before = hub.metric("cmq_hub_acl_denied_total", action="subscribe")
    ack = alice.subscribe([("s/ok/a", 1), ("s/no/b", 1), ("s/other", 0)])
    assert ack.reasons == [1, SUBACK_DENIED[version], 0]
    assert alice.subscribe("s/no/#", qos=2).reasons == [SUBACK_DENIED[version]]
    # the refused filter receives nothing
    publisher = dev(hub, "pub")
    assert publisher.publish("s/no/b", b"should-not-arrive", qos=1) == 0
    assert publisher.publish("s/ok/a", b"arrives", qos=1) == 0
    got = [alice.recv_type(PUBLISH, timeout=5)]
    got += alice.recv_all(0.3)
    payloads = [p.payload for p in got if p.type == PUBLISH]
    assert payloads == [b"arrives"], got
    assert wait_until(lambda: hub.metric("cmq_hub_acl_denied_total", action="subscribe")
                      >= before + 2, 5), hub.metrics_text()


def test_subscribe_filter_coverage(registry, start_hub):
    """A rule filter matches a subscription only when it covers the whole filter."""
    registry.apply("users", [user("alice")])
    registry.apply("acl", topic_acl("alice", [rule("subscribe", "a/#", "allow")],
                                    usernames=["alice"]))
    hub = start_hub(default_permission="deny")
    alice = login(hub, "alice")
    cases = {"a/#": True, "a/+/b": True, "a/x/y": True, "a/+": True,
             "#": False, "+/x": False, "b/#": False, "+/#": False}
    ack = alice.subscribe([(f, 1) for f in cases])
    assert ack.reasons == [1 if ok else 0x87 for ok in cases.values()], \
        dict(zip(cases, map(hex, ack.reasons)))


def test_action_all(registry, start_hub):
    registry.apply("users", [user("alice")])
    registry.apply("acl", topic_acl("alice", [rule("all", "x/#", "deny")], usernames=["alice"]))
    hub = start_hub()
    alice = login(hub, "alice")
    assert alice.subscribe([("x/1", 1), ("y/1", 1)]).reasons == [0x87, 1]
    assert alice.puback("x/1") == 0x87
    assert alice.puback("y/1") == 0


def test_qos_condition(registry, start_hub):
    registry.apply("users", [user("alice")])
    registry.apply("acl", topic_acl("alice", [rule("publish", "q/#", "allow", qos=[0, 1])],
                                    usernames=["alice"]))
    hub = start_hub(default_permission="deny")
    alice = login(hub, "alice")
    assert alice.puback("q/a", qos=1) == 0
    assert alice.puback("q/a", qos=2) == 0x87   # QoS 2 not covered -> default deny


def test_retain_condition(registry, start_hub):
    registry.apply("users", [user("alice"), user("watch")])
    registry.apply("acl", topic_acl("alice", [rule("publish", "r/#", "deny", retain=True)],
                                    usernames=["alice"]))
    hub = start_hub()
    alice = login(hub, "alice")
    assert alice.puback("r/1", b"retained", qos=1, retain=True) == 0x87
    assert alice.puback("r/2", b"live", qos=1, retain=False) == 0
    assert alice.puback("r/3", b"retained-q2", qos=2, retain=True) == 0x87
    # nothing was stored as retained: a new subscriber gets no retained message
    watcher = dev(hub, "watch")
    watcher.subscribe("r/#", qos=1)
    roundtrip(alice, watcher, "r/marker")
    assert b"retained" not in watcher.payloads() and b"retained-q2" not in watcher.payloads()


def test_template_clientid(registry, start_hub):
    registry.apply("users", [user("alice")])
    registry.apply("acl", topic_acl("devices", [
        rule("publish", "dev/${clientid}/#", "allow"),
        rule("subscribe", "dev/${clientid}/cmd/#", "allow"),
    ], all=True))
    hub = start_hub(default_permission="deny")
    c1 = login(hub, "alice", client_id="c1")
    assert c1.puback("dev/c1/temp") == 0
    assert c1.puback("dev/c2/temp") == 0x87
    assert c1.subscribe([("dev/c1/cmd/#", 1), ("dev/c2/cmd/#", 1), ("dev/+/cmd/#", 1)]
                        ).reasons == [1, 0x87, 0x87]


def test_template_username(registry, start_hub):
    registry.apply("users", [user("alice"), user("bob")])
    registry.apply("acl", topic_acl("homes", [rule("all", "users/${username}/#", "allow")],
                                    all=True))
    hub = start_hub(default_permission="deny")
    alice = login(hub, "alice")
    assert alice.subscribe([("users/alice/#", 1), ("users/bob/#", 1)]).reasons == [1, 0x87]
    assert alice.puback("users/alice/x") == 0
    assert alice.puback("users/bob/x") == 0x87


def test_template_attribute(registry, start_hub):
    registry.apply("users", [user("alice", attributes={"site": "paris"}), user("bob")])
    registry.apply("acl", topic_acl("sites", [rule("publish", "site/${attr.site}/#", "allow")],
                                    all=True))
    hub = start_hub(default_permission="deny")
    alice = login(hub, "alice")
    assert alice.puback("site/paris/t") == 0
    assert alice.puback("site/lyon/t") == 0x87
    bob = login(hub, "bob")  # no such attribute: the rule does not match him
    assert bob.puback("site/paris/t") == 0x87


def test_template_value_with_separator_or_wildcard_does_not_match(registry, start_hub):
    """A template whose value holds '/' or '+' does not match (no self-widening)."""
    registry.apply("users", [user("alice"), user("evil", attributes={"site": "a/b"})])
    registry.apply("acl", topic_acl("devices", [
        rule("publish", "dev/${clientid}/#", "allow"),
        rule("subscribe", "dev/${clientid}/#", "allow"),
        rule("publish", "site/${attr.site}/#", "allow"),
    ], all=True))
    hub = start_hub(default_permission="deny")
    slash = login(hub, "alice", client_id="a/b")
    assert slash.puback("dev/a/b/x") == 0x87
    plus = login(hub, "alice", client_id="+")
    assert plus.subscribe("dev/+/#", qos=1).reasons == [0x87]
    hash_ = login(hub, "alice", client_id="#")
    assert hash_.subscribe("dev/#", qos=1).reasons == [0x87]
    evil = login(hub, "evil")
    assert evil.puback("site/a/b/x") == 0x87
    # control: ordinary values work
    ok = login(hub, "alice", client_id="plain")
    assert ok.puback("dev/plain/x") == 0
    assert ok.subscribe("dev/plain/#", qos=1).reasons == [1]


def test_priority_order(registry, start_hub):
    registry.apply("users", [user("alice")])
    registry.apply("acl", [
        # higher-priority deny beats a lower-priority allow ...
        topic_acl("high-deny", [rule("publish", "p/secret/#", "deny")], priority=10, all=True),
        topic_acl("low-allow", [rule("publish", "p/#", "allow")], priority=0, all=True),
        # ... and a higher-priority allow beats a lower-priority deny
        topic_acl("high-allow", [rule("publish", "q/special", "allow")], priority=5, all=True),
        topic_acl("low-deny", [rule("publish", "q/#", "deny")], priority=-5, all=True),
        # within one ACL the first matching rule decides
        topic_acl("ordered", [rule("publish", "o/x", "allow"), rule("publish", "o/#", "deny"),
                              rule("publish", "o/y", "allow")], priority=1, all=True),
    ])
    hub = start_hub(default_permission="deny")
    alice = login(hub, "alice")
    assert alice.puback("p/secret/x") == 0x87
    assert alice.puback("p/open") == 0
    assert alice.puback("q/special") == 0
    assert alice.puback("q/other") == 0x87
    assert alice.puback("o/x") == 0
    assert alice.puback("o/y") == 0x87


def test_priority_swap_at_runtime(registry, start_hub):
    """The same two ACLs with their priorities exchanged give the opposite verdict."""
    def acls(deny_prio, allow_prio):
        return [topic_acl("deny", [rule("publish", "z/#", "deny")], priority=deny_prio, all=True),
                topic_acl("allow", [rule("publish", "z/#", "allow")], priority=allow_prio,
                          all=True)]
    registry.apply("users", [user("alice")])
    registry.apply("acl", acls(10, 1))
    hub = start_hub()
    alice = login(hub, "alice")
    assert alice.puback("z/1") == 0x87
    registry.apply("acl", acls(1, 10))
    assert wait_until(lambda: alice.puback("z/1") == 0, 10)


def test_credential_selector(registry, start_hub):
    registry.apply("users", [user("alice", labels={"role": "admin"}),
                             user("bob", labels={"role": "sensor", "tier": "b"}),
                             user("carol")])
    registry.apply("acl", [
        topic_acl("admins", [rule("subscribe", "admin/#", "allow")],
                  credentialSelector={"matchLabels": {"role": "admin"}}),
        topic_acl("sensors", [rule("publish", "tele/#", "allow")],
                  credentialSelector={"matchExpressions": [
                      {"key": "role", "operator": "In", "values": ["sensor", "probe"]}]}),
        topic_acl("tiered", [rule("publish", "tier/#", "allow")],
                  credentialSelector={"matchExpressions": [
                      {"key": "tier", "operator": "Exists"}]}),
    ])
    hub = start_hub(default_permission="deny")
    alice, bob, carol = login(hub, "alice"), login(hub, "bob"), login(hub, "carol")
    assert alice.subscribe("admin/#", qos=1).reasons == [1]
    assert bob.subscribe("admin/#", qos=1).reasons == [0x87]
    assert carol.subscribe("admin/#", qos=1).reasons == [0x87]
    assert bob.puback("tele/x") == 0
    assert alice.puback("tele/x") == 0x87
    assert bob.puback("tier/x") == 0
    assert carol.puback("tier/x") == 0x87


def test_applies_to_anonymous_and_client_ids(registry, start_hub):
    registry.apply("users", [user("alice")])
    registry.apply("acl", [
        topic_acl("anon", [rule("publish", "#", "deny")], anonymous=True),
        topic_acl("gw", [rule("publish", "gw/#", "deny")], clientIds=["gw-*"]),
    ])
    hub = start_hub(allow_anonymous=True)
    anon = Raw(hub)
    anon.login(uid("anon"))
    assert anon.puback("any/topic") == 0x87
    alice = login(hub, "alice")
    assert alice.puback("any/topic") == 0
    assert alice.puback("gw/1") == 0
    gw = login(hub, "alice", client_id="gw-17")
    assert gw.puback("gw/1") == 0x87
    assert gw.puback("any/topic") == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_default_permission_deny_flag(registry, start_hub, version):
    registry.apply("users", [user("alice")])
    hub = start_hub(default_permission="deny")
    alice = login(hub, "alice", version)
    assert alice.subscribe("any/#", qos=1).reasons == [SUBACK_DENIED[version]]
    if version == 5:
        assert alice.puback("any/x") == 0x87


def test_default_permission_allow_is_the_default(registry, start_hub):
    registry.apply("users", [user("alice")])
    hub = start_hub()
    alice = login(hub, "alice")
    assert alice.subscribe("any/#", qos=2).reasons == [2]
    assert alice.puback("any/x") == 0


@pytest.mark.standalone_only(reason="the MqttCluster resource is read from the manifests folder")
def test_default_permission_and_deny_action_from_mqtt_cluster(registry, start_hub):
    registry.apply("cluster", mqtt_cluster(auth={"defaultPermission": "deny",
                                                 "denyAction": "disconnect"}))
    registry.apply("users", [user("alice")])
    registry.apply("acl", topic_acl("a", [rule("subscribe", "ok/#", "allow")], all=True))
    hub = start_hub()
    alice = login(hub, "alice")
    assert alice.subscribe([("ok/#", 1), ("other/#", 1)]).reasons == [1, 0x87]
    alice.publish("ok/x", b"x", qos=1, wait_ack=False)   # no publish rule: default deny
    seen = alice.expect_closed(10)
    assert [(p.type, p.reason) for p in seen] == [(DISCONNECT, 0x87)], seen


@pytest.mark.parametrize("qos", [0, 1])
def test_deny_action_disconnect_mqtt5(registry, start_hub, qos):
    registry.apply("users", [user("alice"), user("watch")])
    registry.apply("acl", topic_acl("a", [rule("publish", "no/#", "deny"),
                                          rule("subscribe", "nosub/#", "deny")], all=True))
    hub = start_hub(deny_action="disconnect")
    watcher = dev(hub, "watch")
    watcher.subscribe("no/#", qos=1)
    alice = login(hub, "alice")
    # a denied subscribe is only refused, never a disconnect
    assert alice.subscribe("nosub/#", qos=1).reasons == [0x87]
    assert alice.puback("yes/1") == 0
    alice.publish("no/1", b"forbidden", qos=qos, wait_ack=False)
    seen = alice.expect_closed(10)
    assert [(p.type, p.reason) for p in seen
            if p.type != PUBLISH] == [(DISCONNECT, 0x87)], seen
    assert b"forbidden" not in watcher.payloads()


def test_deny_action_disconnect_mqtt311(registry, start_hub):
    registry.apply("users", [user("alice")])
    registry.apply("acl", topic_acl("a", [rule("publish", "no/#", "deny"),
                                          rule("subscribe", "nosub/#", "deny")], all=True))
    hub = start_hub(deny_action="disconnect")
    alice = login(hub, "alice", 4)
    assert alice.subscribe("nosub/#", qos=1).reasons == [0x80]  # refused, still connected
    assert alice.publish("yes/1", b"ok", qos=1).type == 4
    alice.publish("no/1", b"forbidden", qos=1, wait_ack=False)
    seen = alice.expect_closed(10)
    assert seen == [], f"3.1.1 client got {seen} before the close"


def test_subscribe_rule_with_qos_condition(registry, start_hub):
    """A subscribe rule with ``qos`` matches only subscriptions asking for those levels;
    others fall through to the default (deny here)."""
    registry.apply("users", [user("alice"), user("pub")])
    registry.apply("acl", [
        topic_acl("a", [rule("subscribe", "m/#", "allow", qos=[0, 1])], usernames=["alice"]),
        topic_acl("p", [rule("publish", "m/#", "allow")], usernames=["pub"]),
    ])
    hub = start_hub(default_permission="deny")
    alice = Raw(hub)
    alice.login(None, "alice", pw("alice"))
    ack = alice.subscribe([("m/#", sub_opts(qos=1)), ("m/two/#", sub_opts(qos=2))])
    assert ack.reasons == [1, 0x87]
    p = dev(hub, "pub")
    assert p.publish("m/1", b"to-alice", qos=1) == 0
    got = alice.recv_type(PUBLISH, timeout=5)
    assert (got.topic, got.payload, got.qos) == (b"m/1", b"to-alice", 1)
