"""DeviceCredential and TopicAcl through the operator into NATS KV, used by a real hub."""

import subprocess
import time

from conftest import (apply, condition, connack, credential, get, http_get, mqtt_cluster,
                      secret, topic_acl, wait_until)


def synced(kube, ns, kind, name):
    return (condition(get(kube, ns, kind, name), "Synced") or {}).get("status") == "True"


def test_crds_are_served_with_docs_and_columns(kube):
    explain = kube.kubectl("explain", "devicecredentials.spec.password.hash").stdout
    assert "argon2id" in explain
    cols = kube.kubectl("get", "crd", "devicecredentials.cmq.io", "-o",
                        "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}").stdout
    assert "Synced" in cols.split()


def test_cel_rules_reject_invalid_resources(kube, ns):
    plaintext = credential("bad", "demo", "u")
    plaintext["spec"]["password"] = {"hash": "hunter2"}
    r = apply(kube, ns, plaintext, check=False)
    assert r.returncode != 0 and "plaintext passwords are not accepted" in r.stderr, r.stderr
    nothing = credential("bad2", "demo", "u")
    r = apply(kube, ns, nothing, check=False)
    assert r.returncode != 0 and "a password, an x509 identity or a pre-shared key" in r.stderr, r.stderr
    acl = topic_acl("bad3", "demo", [{"action": "subscribe", "topics": ["a/#"], "retain": True,
                                       "permission": "allow"}])
    r = apply(kube, ns, acl, check=False)
    assert r.returncode != 0 and "retain applies to publish rules only" in r.stderr, r.stderr


def test_credentials_reach_the_hub_and_deletion_revokes(kube, ns, nats, operator_hub):
    apply(kube, ns, mqtt_cluster("demo", nats.url))
    apply(kube, ns, secret("alice-pw", "alice-secret"))
    apply(kube, ns, secret("bob-pw", "bob-secret"))
    apply(kube, ns, credential("alice", "demo", "alice", "alice-pw"))
    apply(kube, ns, credential("bob", "demo", "bob", "bob-pw"))
    apply(kube, ns, topic_acl("own", "demo", [{"action": "all", "topics": ["e2e/#"], "permission": "allow"}]))
    for kind, name in [("devicecredential", "alice"), ("devicecredential", "bob"), ("topicacl", "own")]:
        assert wait_until(lambda: synced(kube, ns, kind, name), 30), get(kube, ns, kind, name)
    cred = get(kube, ns, "devicecredential", "alice")
    assert "cmq.io/registry" in cred["metadata"]["finalizers"]
    assert cred["status"]["observedGeneration"] == cred["metadata"]["generation"]

    # The hub runs with the configuration the operator generated for the cluster.
    hub = operator_hub(ns, "demo")
    assert hub.env["CMQ_CLUSTER"] == f"{ns}_demo"
    assert connack(hub.port, "alice", "alice-secret") == 0, hub.tail()
    assert connack(hub.port, "alice", "wrong") == 0x86

    # The Secret changes: the new password works, the old one no longer does.
    apply(kube, ns, secret("alice-pw", "rotated"))
    assert wait_until(lambda: connack(hub.port, "alice", "rotated") == 0, 30), hub.tail()
    assert connack(hub.port, "alice", "alice-secret") == 0x86

    # A live connection of alice's, then her credential is deleted: the hub closes it.
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(hub.port), "-V", "mqttv5",
                            "-d", "-i", "alice-live", "-u", "alice", "-P", "rotated", "-t", "e2e/#"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until(lambda: hub_connections(hub) == 1, 10), hub.tail()
        kube.kubectl("delete", "-n", ns, "devicecredential", "alice", "--timeout=60s")
        assert get(kube, ns, "devicecredential", "alice") is None
        out, _ = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
    assert "Received DISCONNECT (135)" in out, out
    assert wait_until(lambda: connack(hub.port, "alice", "rotated") == 0x86, 30), hub.tail()
    assert connack(hub.port, "bob", "bob-secret") == 0


def hub_connections(hub) -> int:
    """Open MQTT connections of a hub, from its /metrics."""
    status, body = http_get(hub.admin_port, "/metrics")
    for line in body.decode().splitlines() if status == 200 else []:
        if line.startswith("cmq_hub_connections "):
            return int(float(line.split()[1]))
    return -1


def test_forward_rules_are_synced_and_removed(kube, ns, nats):
    apply(kube, ns, mqtt_cluster("demo", nats.url))
    rule = {"apiVersion": "cmq.io/v1alpha1", "kind": "ForwardRule", "metadata": {"name": "r1"},
            "spec": {"clusterRef": "demo", "sql": 'SELECT * FROM "t/#"',
                     "sinks": [{"name": "out", "mqtt": {"topic": "copy/${topic}"}}]}}
    apply(kube, ns, rule)
    assert wait_until(lambda: synced(kube, ns, "forwardrule", "r1"), 30), get(kube, ns, "forwardrule", "r1")
    two = dict(rule, metadata={"name": "r2"})
    two["spec"] = dict(rule["spec"], sinks=[{"name": "bad", "mqtt": {"topic": "x"}, "http": {"url": "http://x"}}])
    r = apply(kube, ns, two, check=False)
    assert r.returncode != 0 and "set exactly one of kafka, nats, http and mqtt" in r.stderr, r.stderr
    kube.kubectl("delete", "-n", ns, "forwardrule", "r1", "--timeout=60s")
    assert get(kube, ns, "forwardrule", "r1") is None


def test_forward_rule_valid_condition_and_dispatcher_counts(kube, ns, nats, operator_hub):
    """The operator checks the SQL (Valid, with the error's position) and folds the
    dispatchers' counts into the status; hub and dispatcher run as their Deployments say."""
    apply(kube, ns, mqtt_cluster("demo", nats.url))
    bad = {"apiVersion": "cmq.io/v1alpha1", "kind": "ForwardRule", "metadata": {"name": "bad"},
           "spec": {"clusterRef": "demo", "sql": "SELECT payload FROM \"t/#\" WHERE",
                    "sinks": [{"name": "out", "mqtt": {"topic": "copy"}}]}}
    apply(kube, ns, bad)
    c = wait_until(lambda: condition(get(kube, ns, "forwardrule", "bad"), "Valid"), 30)
    assert c and c["status"] == "False" and c["reason"] == "SqlError", c
    assert "line 1, column" in c["message"], c
    good = {"apiVersion": "cmq.io/v1alpha1", "kind": "ForwardRule", "metadata": {"name": "copy"},
            "spec": {"clusterRef": "demo", "sql": "SELECT payload.v AS v FROM \"in/#\"",
                     "sinks": [{"name": "out", "mqtt": {"topic": "out/${v}", "qos": 1}}]}}
    apply(kube, ns, good)
    assert wait_until(lambda: synced(kube, ns, "forwardrule", "copy"), 30)
    assert (condition(get(kube, ns, "forwardrule", "copy"), "Valid") or {}).get("status") == "True"
    dep = get(kube, ns, "deployment", "demo-dispatch")
    assert dep and dep["spec"]["template"]["spec"]["containers"][0]["args"] == ["dispatch"]
    assert get(kube, ns, "poddisruptionbudget", "demo-dispatch")
    hub = operator_hub(ns, "demo")
    operator_hub(ns, "demo", component="dispatch")
    import paho.mqtt.client as mqtt
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="e2e-sub")
    sub.on_message = lambda c, u, m: got.append((m.topic, m.payload))
    sub.connect("127.0.0.1", hub.port)
    sub.loop_start()
    try:
        sub.subscribe("out/#", qos=1)
        time.sleep(0.5)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="e2e-pub")
        pub.connect("127.0.0.1", hub.port)
        pub.loop_start()
        pub.publish("in/x", b'{"v": 42}', qos=1).wait_for_publish(10)
        assert wait_until(lambda: got, 20), "the dispatcher did not republish"
        assert got[0] == ("out/42", b'{"v":42}')
        pub.loop_stop()
        pub.disconnect()
        # the hubs' heartbeats carry their connections; the operator sums them
        assert wait_until(lambda: ((get(kube, ns, "mqttcluster", "demo") or {}).get("status") or {})
                          .get("connections") == 1, 45), get(kube, ns, "mqttcluster", "demo")["status"]
    finally:
        sub.loop_stop()
        sub.disconnect()

    def counted():
        st = (get(kube, ns, "forwardrule", "copy") or {}).get("status", {})
        return st.get("dispatchers") == 1 and st.get("counters", {}).get("forwarded") == 1
    assert wait_until(counted, 60), get(kube, ns, "forwardrule", "copy").get("status")
    table = kube.kubectl("get", "-n", ns, "forwardrules").stdout
    assert "copy" in table and "bad" in table, table


def test_missing_secret_is_reported_then_recovers(kube, ns, nats):
    apply(kube, ns, mqtt_cluster("demo", nats.url))
    apply(kube, ns, credential("carol", "demo", "carol", "carol-pw"))
    c = wait_until(lambda: condition(get(kube, ns, "devicecredential", "carol"), "Synced"), 30)
    assert c and c["status"] == "False" and c["reason"] == "SecretNotFound", c
    assert "carol-pw" in c["message"]
    events = kube.kubectl("get", "events", "-n", ns, "-o", "json").stdout
    assert "SecretNotFound" in events
    apply(kube, ns, secret("carol-pw", "x"))
    assert wait_until(lambda: synced(kube, ns, "devicecredential", "carol"), 30), \
        get(kube, ns, "devicecredential", "carol")


def test_unknown_cluster_is_reported(kube, ns, nats):
    apply(kube, ns, credential("dave", "nowhere", "dave", x509={"commonName": "dave"}))
    c = wait_until(lambda: condition(get(kube, ns, "devicecredential", "dave"), "Synced"), 30)
    assert c and c["status"] == "False" and c["reason"] == "ClusterNotFound", c
    # The cluster appears: the credential syncs without being touched.
    apply(kube, ns, mqtt_cluster("nowhere", nats.url))
    assert wait_until(lambda: synced(kube, ns, "devicecredential", "dave"), 60), \
        get(kube, ns, "devicecredential", "dave")
