"""ForwardRules in `cmq standalone`: rows a real Kafka consumer reads, HTTP webhook with
retries and dead letter, NATS JetStream, MQTT republish with its loop guard, `sync`
delivery (PUBACK 0x97 while the sink is down), invalid rules."""

from __future__ import annotations

import json
import subprocess
import time

import paho.mqtt.client as mqtt

from clusterlib import Mqtt, uid, wait_for
from dispatchlib import HttpReceiver, nats_collect, rule_doc, write_docs
from natsserver import HOST, free_port


def mosquitto_pub(broker, topic: str, payload: str, qos: int = 1, client_id: str | None = None,
                  user: str | None = None) -> None:
    cmd = ["mosquitto_pub", "-h", HOST, "-p", str(broker.port), "-t", topic, "-m", payload,
           "-q", str(qos), "-V", "mqttv311"]
    if client_id:
        cmd += ["-i", client_id]
    if user:
        cmd += ["-u", user]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr


def test_kafka_gets_exactly_the_selected_rows_with_key_topic_and_headers(standalone, kafka):
    topic = f"iot.{uid('t')}"
    rule = rule_doc("hot", """
        SELECT clientid, payload.temp AS t, topic_level(2) AS room
        FROM "sensors/+/data" WHERE payload.temp > 30""",
        [{"name": "k", "kafka": {"bootstrapServers": kafka.bootstrap, "topic": topic,
                                  "key": "${room}", "headers": {"who": "${clientid}"},
                                  "compression": "zstd"}}])
    broker = standalone([rule])
    sent = [("kitchen", 31.5), ("kitchen", 12), ("hall", 40), ("garage", 30), ("hall", 33)]
    for room, temp in sent:
        mosquitto_pub(broker, f"sensors/{room}/data", json.dumps({"temp": temp}),
                      client_id=f"dev-{room}")
    mosquitto_pub(broker, "sensors/kitchen/other", json.dumps({"temp": 99}))
    mosquitto_pub(broker, "sensors/kitchen/data", "not json")
    records = kafka.consume(topic, count=3, timeout=30)
    rows = sorted((r.key, json.loads(r.value)["t"], r.headers.get("who")) for r in records)
    assert rows == [(b"hall", 33, b"dev-hall"), (b"hall", 40, b"dev-hall"),
                    (b"kitchen", 31.5, b"dev-kitchen")]
    assert all(set(json.loads(r.value)) == {"clientid", "t", "room"} for r in records)
    # nothing else arrives
    assert len(kafka.consume(topic, count=4, timeout=3)) == 3
    assert broker.metric("cmq_dispatch_rule_matched_total", rule="default/hot") == 3
    assert wait_for(lambda: broker.metric("cmq_dispatch_rule_forwarded_total",
                                          rule="default/hot") == 3, 10)
    # write latency per sink kind, and librdkafka's own statistics (every second)
    assert broker.metric("cmq_dispatch_sink_latency_seconds_count", kind="kafka") >= 3
    assert wait_for(lambda: broker.metric("cmq_dispatch_kafka_sent_messages",
                                          bootstrap=kafka.bootstrap) >= 3, 10)


def test_http_webhook_retries_5xx_and_dead_letters_4xx(standalone):
    hook = HttpReceiver(script=[500, 503])
    dead = HttpReceiver()
    try:
        rule = rule_doc("hook", "SELECT payload, clientid FROM \"alerts/#\"",
                        [{"name": "h", "http": {"url": hook.url, "headers": {"x-api": "k1"}}}],
                        retry={"maxAttempts": 4, "initialBackoffMs": 50},
                        deadLetter={"name": "dl", "http": {"url": dead.url}})
        broker = standalone([rule])
        mosquitto_pub(broker, "alerts/fire", "smoke", client_id="d1")
        assert wait_for(lambda: len(hook.accepted()) == 1, 15), hook.requests
        assert [r["status"] for r in hook.requests] == [500, 503, 200]
        req = hook.accepted()[0]
        assert json.loads(req["body"]) == {"payload": "smoke", "clientid": "d1"}
        assert req["headers"]["x-api"] == "k1"
        # the same message id on every attempt, for the receiver to drop duplicates
        assert len({r["headers"]["x-cmq-message-id"] for r in hook.requests}) == 1
        assert broker.metric("cmq_dispatch_sink_retried_total", sink="h") == 2
        # a 4xx is not retried: straight to the dead letter, with the reason
        hook.script = [400]
        mosquitto_pub(broker, "alerts/flood", "water", client_id="d2")
        assert wait_for(lambda: len(dead.accepted()) == 1, 15), dead.requests
        letter = json.loads(dead.accepted()[0]["body"])
        assert letter["rule"] == "default/hook" and letter["sink"] == "h"
        assert letter["attempts"] == 1 and "400" in letter["error"]
        assert letter["message"]["topic"] == "alerts/flood"
        assert letter["message"]["payload"] == "water"
        assert [r["status"] for r in hook.requests][-1] == 400
        assert wait_for(lambda: broker.metric("cmq_dispatch_sink_dead_lettered_total",
                                              sink="h") == 1, 5)
    finally:
        hook.close()
        dead.close()


def test_nats_jetstream_sink_with_message_id(standalone, nats):
    subject = f"out.{uid('s')}"
    rule = rule_doc("to-nats", "SELECT topic, payload.v AS v FROM \"m/#\"",
                    [{"name": "n", "nats": {"url": nats.url, "subject": subject + ".${v}"}}])
    broker = standalone([rule])

    def publish():
        for v in range(3):
            mosquitto_pub(broker, f"m/{v}", json.dumps({"v": v}))

    got = nats_collect(nats.url, subject + ".*", 3, 20, start=publish,
                       stream=uid("S").replace("-", "_"))
    assert sorted(s for s, _, _ in got) == [f"{subject}.0", f"{subject}.1", f"{subject}.2"]
    assert all("Nats-Msg-Id" in h for _, _, h in got)
    assert sorted(json.loads(d)["v"] for _, d, _ in got) == [0, 1, 2]


def test_republish_into_mqtt_without_looping(standalone):
    rule = rule_doc("echo", "SELECT payload.n AS n, clientid FROM \"#\"",
                    [{"name": "m", "mqtt": {"topic": "derived/${clientid}", "qos": 1}}])
    broker = standalone([rule])
    sub = Mqtt(broker, version=5).connect()
    sub.subscribe("derived/#", qos=1)
    pub = Mqtt(broker, client_id="src", version=5).connect()
    pub.publish("raw/x", b'{"n": 7}', qos=1)
    assert wait_for(lambda: len(sub.get()) >= 1, 10)
    time.sleep(1.0)
    # the rule reads "#", which includes its own output: it must not match it again
    msgs = sub.get()
    assert [(m.topic, json.loads(m.payload)) for m in msgs] == [
        ("derived/src", {"n": 7, "clientid": "src"})]
    assert broker.metric("cmq_dispatch_rule_matched_total", rule="default/echo") == 1


def test_sync_rule_refuses_with_0x97_while_kafka_is_unreachable(standalone, kafka):
    dead_port = free_port()
    topic = f"sync.{uid('t')}"
    down = rule_doc("sync-down", "SELECT * FROM \"down/#\"",
                    [{"name": "k", "kafka": {"bootstrapServers": f"{HOST}:{dead_port}",
                                              "topic": topic}}], delivery="sync")
    up = rule_doc("sync-up", "SELECT payload FROM \"up/#\"",
                  [{"name": "k", "kafka": {"bootstrapServers": kafka.bootstrap,
                                            "topic": topic}}], delivery="sync")
    broker = standalone([down, up], extra=["--sync-timeout-ms", "2000"])
    pub = Mqtt(broker, version=5).connect()
    sub = Mqtt(broker, version=5).connect()
    sub.subscribe("#", qos=1)
    info = pub.client.publish("down/1", b"x", qos=1)
    assert wait_for(lambda: info.mid in pub.pubacks, 15)
    assert pub.pubacks[info.mid] == 0x97
    # the refused message was not published either
    time.sleep(0.5)
    assert sub.get("down/1") == []
    # a sync rule whose sink works: the PUBACK comes after Kafka has the record
    ok = pub.publish("up/1", b"hello", qos=1, timeout=30)
    assert pub.acked(ok)
    assert [json.loads(r.value) for r in kafka.consume(topic, count=1, timeout=10)] == [
        {"payload": "hello"}]
    assert broker.metric("cmq_dispatch_sync_refused_total") >= 1


def test_sync_rule_delays_the_311_acknowledgement_until_the_sink_takes_it(standalone, kafka):
    """MQTT 3.1.1 has no refusal: the PUBACK waits (and the message is not lost)."""
    hook = HttpReceiver(script=[503] * 3)
    try:
        rule = rule_doc("sync-http", "SELECT payload FROM \"s/#\"",
                        [{"name": "h", "http": {"url": hook.url}}], delivery="sync",
                        retry={"maxAttempts": 1})
        broker = standalone([rule])
        pub = Mqtt(broker, version=4).connect()
        started = time.monotonic()
        info = pub.client.publish("s/1", b"v", qos=1)
        assert wait_for(lambda: info.mid in pub.pubacks, 20)
        waited = time.monotonic() - started
        assert len(hook.accepted()) == 1
        assert [r["status"] for r in hook.requests] == [503, 503, 503, 200]
        assert waited > 0.3, "the acknowledgement waited for the sink"
    finally:
        hook.close()


def test_invalid_rule_is_reported_and_the_others_run(standalone, kafka, tmp_path):
    topic = f"ok.{uid('t')}"
    bad = rule_doc("bad", "SELECT nosuchfn(payload) FROM \"a/#\"",
                   [{"name": "k", "kafka": {"bootstrapServers": kafka.bootstrap,
                                             "topic": topic}}])
    good = rule_doc("good", "SELECT payload FROM \"a/#\"",
                    [{"name": "k", "kafka": {"bootstrapServers": kafka.bootstrap,
                                              "topic": topic}}])
    broker = standalone([bad, good])
    assert wait_for(lambda: "invalid ForwardRule" in broker.read_log(), 10)
    line = [l for l in broker.read_log().splitlines() if "invalid ForwardRule" in l][0]
    assert "default/bad" in line and "line 1, column" in line and "nosuchfn" in line
    assert broker.metric("cmq_dispatch_rules_invalid") == 1
    mosquitto_pub(broker, "a/1", "p")
    assert [json.loads(r.value) for r in kafka.consume(topic, 1, 20)] == [{"payload": "p"}]
    # the folder is re-read: fixing the rule puts it in force without a restart
    fixed = rule_doc("bad", "SELECT upper(payload) AS up FROM \"a/#\"",
                     [{"name": "k", "kafka": {"bootstrapServers": kafka.bootstrap,
                                               "topic": topic}}])
    write_docs(broker.manifests / "rules.yaml", [fixed, good])
    assert wait_for(lambda: broker.metric("cmq_dispatch_rules_invalid") == 0
                    and broker.metric("cmq_dispatch_rules") == 2, 10)
    mosquitto_pub(broker, "a/2", "q")
    values = sorted(r.value for r in kafka.consume(topic, 3, 20))
    assert values == sorted([b'{"payload":"p"}', b'{"payload":"q"}', b'{"up":"Q"}'])
