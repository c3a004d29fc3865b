"""MqttCluster → hub workloads, by server-side apply with owner references."""

from conftest import apply, condition, get, mqtt_cluster, wait_until


def owned_by(obj, uid):
    return any(o.get("uid") == uid and o.get("controller") for o in obj["metadata"].get("ownerReferences", []))


def test_children_are_created_owned_and_repaired(kube, ns, nats):
    apply(kube, ns, mqtt_cluster("demo", nats.url, hub={"replicas": 3}))
    uid = get(kube, ns, "mqttcluster", "demo")["metadata"]["uid"]
    kinds = [("deployment", "demo-hub"), ("service", "demo-hub"), ("poddisruptionbudget", "demo-hub"),
             ("configmap", "demo-cmq-config"), ("serviceaccount", "demo-cmq"),
             ("deployment", "demo-dispatch"), ("poddisruptionbudget", "demo-dispatch"),
             ("secret", "demo-cmq-coap")]
    for kind, name in kinds:
        obj = wait_until(lambda: get(kube, ns, kind, name), 30)
        assert obj, f"{kind}/{name} not created"
        assert owned_by(obj, uid), obj["metadata"]
    dep = get(kube, ns, "deployment", "demo-hub")
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["CMQ_CLUSTER"] == f"{ns}_demo" and env["CMQ_NATS_URL"] == nats.url
    # every hub signs CoAP connection tokens with the cluster's one key
    refs = {e["name"]: e.get("valueFrom", {}) for e in pod["containers"][0]["env"]}
    assert refs["CMQ_COAP_TOKEN_SECRET"]["secretKeyRef"]["name"] == "demo-cmq-coap"
    key = get(kube, ns, "secret", "demo-cmq-coap")["data"]["token-secret"]
    assert len(key) >= 40  # 32 random bytes, base64

    # Drift: someone scales the Deployment by hand; the operator puts it back.
    kube.kubectl("scale", "-n", ns, "deployment/demo-hub", "--replicas=7")
    assert wait_until(lambda: get(kube, ns, "deployment", "demo-hub")["spec"]["replicas"] == 3, 30)

    # A spec change rolls the pods: the config checksum annotation changes.
    before = dep["spec"]["template"]["metadata"]["annotations"]["cmq.io/config-checksum"]
    apply(kube, ns, mqtt_cluster("demo", nats.url, hub={"replicas": 3, "limits": {"maxConnections": 5000}}))
    assert wait_until(lambda: get(kube, ns, "deployment", "demo-hub")["spec"]["template"]["metadata"]
                      ["annotations"]["cmq.io/config-checksum"] != before, 30)

    # Autoscaling adds an HPA and hands it the replica count.
    apply(kube, ns, mqtt_cluster("demo", nats.url, hub={"autoscaling": {"minReplicas": 2, "maxReplicas": 5,
                                                                         "targetConnectionsPerPod": 20000}}))
    hpa = wait_until(lambda: get(kube, ns, "hpa", "demo-hub"), 30)
    assert hpa and hpa["spec"]["maxReplicas"] == 5 and len(hpa["spec"]["metrics"]) == 2

    st = wait_until(lambda: condition(get(kube, ns, "mqttcluster", "demo"), "NatsConnected"), 30)
    assert st and st["status"] == "True", st
    # kwok runs the hub pods on a simulated node: once the Deployment reports them ready,
    # so does the MqttCluster.
    def ready_hubs():
        c = get(kube, ns, "mqttcluster", "demo")
        ok = (condition(c, "Ready") or {}).get("status") == "True"
        return ok and c["status"].get("hubReadyReplicas", 0) >= 2  # the HPA's minimum
    assert wait_until(ready_hubs, 60), get(kube, ns, "mqttcluster", "demo").get("status")
    # the dispatcher Deployment's pod runs on the kwok node too
    def dispatch_ready():
        c = get(kube, ns, "mqttcluster", "demo")
        ok = (condition(c, "DispatchAvailable") or {}).get("status") == "True"
        return ok and c["status"].get("dispatchReadyReplicas", 0) >= 1
    assert wait_until(dispatch_ready, 60), get(kube, ns, "mqttcluster", "demo").get("status")
    eps = get(kube, ns, "mqttcluster", "demo")["status"]["endpoints"]
    assert f"mqtt://demo-hub.{ns}.svc:1883" in eps and f"coap://demo-hub.{ns}.svc:5683" in eps, eps
    table = kube.kubectl("get", "-n", ns, "mqttclusters").stdout.splitlines()
    assert table[0].split()[:5] == ["NAME", "HUBS", "DISPATCHERS", "CONNECTIONS", "READY"], table
    assert table[1].split()[0] == "demo" and table[1].split()[-2] == "True", table


def test_children_go_with_the_cluster(kube, ns, nats):
    apply(kube, ns, mqtt_cluster("gone", nats.url))
    assert wait_until(lambda: get(kube, ns, "deployment", "gone-hub"), 30)
    # kube-controller-manager runs the Deployment (a ReplicaSet, pods on the kwok node).
    assert wait_until(lambda: kube.kubectl("get", "-n", ns, "replicasets", "-o", "name").stdout.strip(), 30)
    hub = wait_until(lambda: (condition(get(kube, ns, "mqttcluster", "gone"), "HubAvailable") or {})
                     .get("status") == "True", 60)
    assert hub, get(kube, ns, "mqttcluster", "gone").get("status")
    kube.kubectl("delete", "-n", ns, "mqttcluster", "gone", "--timeout=60s")
    for kind, name in [("deployment", "gone-hub"), ("service", "gone-hub"), ("configmap", "gone-cmq-config"),
                       ("poddisruptionbudget", "gone-hub"), ("serviceaccount", "gone-cmq")]:
        assert wait_until(lambda: get(kube, ns, kind, name) is None, 60), f"{kind}/{name} not collected"


def test_invalid_cluster_gets_a_condition(kube, ns):
    apply(kube, ns, mqtt_cluster("broken", None))
    c = wait_until(lambda: condition(get(kube, ns, "mqttcluster", "broken"), "Ready"), 30)
    assert c and c["status"] == "False" and c["reason"] == "InvalidSpec" and "spec.nats" in c["message"], c
    assert get(kube, ns, "deployment", "broken-hub") is None
