"""`cmq dispatch` in a cluster: dispatchers share the message streams' durable consumers;
acknowledged messages reach Kafka although a dispatcher is killed and Kafka restarts
mid-run; QoS 0 is forwarded from the live feed; `sync` rules gate hubs' PUBACKs."""

from __future__ import annotations

import json
import threading
import time

from clusterlib import Mqtt, RawPublisher, note, publish_qos1, uid, wait_for
from dispatchlib import rule_doc
from natsserver import HOST, free_port


def kafka_rule(name: str, kafka_bootstrap: str, topic: str, source: str = "data/#", **spec):
    return rule_doc(name, f'SELECT payload.n AS n, clientid FROM "{source}"',
                    [{"name": "k", "kafka": {"bootstrapServers": kafka_bootstrap, "topic": topic,
                                              "key": "${clientid}"}}], **spec)


def numbers(records) -> list[int]:
    return [json.loads(r.value)["n"] for r in records]


def test_rows_reach_kafka_from_two_hubs_and_qos0_too(cluster, kafka):
    topic = f"c.{uid('t')}"
    env = cluster(hubs=2, dispatchers=1, rules=[kafka_rule("r", kafka.bootstrap, topic)])
    a = Mqtt(env.hubs[0], client_id="dev-a").connect()
    b = Mqtt(env.hubs[1], client_id="dev-b").connect()
    for n in range(10):
        (a if n % 2 else b).publish("data/x", json.dumps({"n": n}).encode(), qos=1)
    a.publish("data/q0", b'{"n": 100}', qos=0)
    records = kafka.consume(topic, count=11, timeout=30)
    assert sorted(numbers(records)) == list(range(10)) + [100]
    assert {r.key for r in records} == {b"dev-a", b"dev-b"}
    # per device, Kafka keeps the publish order (one key, one partition)
    for key in (b"dev-a", b"dev-b"):
        mine = [n for n, r in zip(numbers(records), records) if r.key == key and n < 100]
        assert mine == sorted(mine)


def test_a_stored_batch_reaches_kafka_message_by_message(cluster, kafka):
    """A burst of QoS 1 publishes in one write is stored as batches (several MQTT messages
    in one stream message); the dispatcher forwards each of them once, in order."""
    topic = f"batch.{uid('t')}"
    env = cluster(hubs=1, dispatchers=1, rules=[kafka_rule("r", kafka.bootstrap, topic)])
    total = 300
    pub = RawPublisher(env.hubs[0], "dev-burst")
    pub.sock.sendall(b"".join(
        publish_qos1("data/x", json.dumps({"n": n}).encode(), n + 1) for n in range(total)))
    assert pub.pubacks(total) == list(range(1, total + 1))
    pub.close()
    records = kafka.consume(topic, count=total, timeout=60)
    assert numbers(records) == list(range(total)), \
        f"Kafka got {len(records)} records, first {numbers(records)[:10]}"
    assert {r.key for r in records} == {b"dev-burst"}
    metrics = env.hubs[0].metrics()
    batches = [ln for ln in metrics.splitlines()
               if ln.startswith("cmq_hub_cluster_store_batches_total ")]
    assert batches and float(batches[0].split()[1]) >= 1, f"no stored batch: {batches}"


def test_no_acknowledged_message_lost_when_a_dispatcher_dies_and_kafka_restarts(cluster, kafka):
    topic = f"loss.{uid('t')}"
    env = cluster(hubs=1, dispatchers=2, rules=[kafka_rule("r", kafka.bootstrap, topic)],
                  dispatch_args=["--kafka-message-timeout-ms", "120000"])
    pub = Mqtt(env.hubs[0], client_id="pub", max_inflight=50).connect()
    total = 900
    acked: list[int] = []
    stop = threading.Event()

    def publish():
        for n in range(total):
            if stop.is_set():
                return
            info = pub.publish("data/x", json.dumps({"n": n}).encode(), qos=1, timeout=60)
            if pub.acked(info):
                acked.append(n)
            time.sleep(0.02)  # ~20 s of publishing: both faults fall inside it

    t = threading.Thread(target=publish)
    t.start()
    assert wait_for(lambda: len(acked) >= 150, 60)
    env.dispatchers[0].kill()             # kill -9 mid-stream
    note(f"dispatcher d1 killed after {len(acked)} acknowledged")
    assert wait_for(lambda: len(acked) >= 300, 60)
    kafka.stop()                          # the broker goes away for a while ...
    time.sleep(5)
    kafka.start()                         # ... and comes back with its data
    at_restart = len(acked)
    note(f"kafka restarted after {at_restart} acknowledged")
    assert at_restart < total, "the publisher finished before Kafka came back: not mid-run"
    t.join(timeout=180)
    stop.set()
    assert len(acked) == total
    records = kafka.consume(topic, count=total, timeout=120)
    got = numbers(records)
    missing = sorted(set(acked) - set(got))
    duplicates = len(got) - len(set(got))
    note(f"dispatch loss test: {total} acknowledged, {len(set(got))} distinct in Kafka, "
         f"{duplicates} duplicates, {len(missing)} lost")
    assert missing == [], f"acknowledged but never in Kafka: {missing[:20]}"


def test_sync_rule_gates_the_puback_across_hubs(cluster, kafka):
    topic = f"sync.{uid('t')}"
    dead = free_port()
    rules = [
        kafka_rule("down", f"{HOST}:{dead}", topic, source="down/#", delivery="sync"),
        kafka_rule("up", kafka.bootstrap, topic, source="up/#", delivery="sync"),
    ]
    env = cluster(hubs=2, dispatchers=1, rules=rules,
                  dispatch_args=["--sync-timeout-ms", "2000"],
                  hub_args=["--sync-timeout-ms", "2000"])
    pub = Mqtt(env.hubs[0], version=5).connect()
    sub = Mqtt(env.hubs[1], version=5).connect()
    sub.subscribe("#", qos=1)
    info = pub.client.publish("down/1", b'{"n": 1}', qos=1)
    assert wait_for(lambda: info.mid in pub.pubacks, 15)
    assert pub.pubacks[info.mid] == 0x97
    ok = pub.publish("up/1", b'{"n": 2}', qos=1, timeout=20)
    assert pub.acked(ok)
    assert numbers(kafka.consume(topic, count=1, timeout=10)) == [2]
    # the subscriber on the other hub got the accepted message, not the refused one
    assert wait_for(lambda: len(sub.get("up/1")) == 1, 10)
    assert sub.get("down/1") == []
    # a sync rule's messages are not forwarded a second time from the stream
    time.sleep(2)
    assert numbers(kafka.consume(topic, count=2, timeout=3)) == [2]


def test_sync_rule_without_any_dispatcher_refuses(cluster, kafka):
    topic = f"nodisp.{uid('t')}"
    env = cluster(hubs=1, dispatchers=0,
                  rules=[kafka_rule("s", kafka.bootstrap, topic, delivery="sync")],
                  hub_args=["--sync-timeout-ms", "1000"])
    pub = Mqtt(env.hubs[0], version=5).connect()
    info = pub.client.publish("data/1", b'{"n": 1}', qos=1)
    assert wait_for(lambda: info.mid in pub.pubacks, 15)
    assert pub.pubacks[info.mid] == 0x97
    # a topic no sync rule reads is not gated
    assert pub.acked(pub.publish("other/1", b"x", qos=1))


def test_sync_rule_refuses_while_kafka_is_stopped_and_loses_nothing_acknowledged(cluster, kafka):
    topic = f"stop.{uid('t')}"
    env = cluster(hubs=1, dispatchers=1,
                  rules=[kafka_rule("s", kafka.bootstrap, topic, delivery="sync")],
                  dispatch_args=["--sync-timeout-ms", "2000"],
                  hub_args=["--sync-timeout-ms", "2000"])
    pub = Mqtt(env.hubs[0], version=5).connect()
    acked = []
    for n in range(5):
        assert pub.acked(pub.publish("data/a", json.dumps({"n": n}).encode(), qos=1, timeout=20))
        acked.append(n)
    kafka.stop()
    try:
        refused = 0
        for n in range(5, 10):
            info = pub.client.publish("data/a", json.dumps({"n": n}).encode(), qos=1)
            assert wait_for(lambda: info.mid in pub.pubacks, 20)
            if pub.pubacks[info.mid] == 0x97:
                refused += 1
            else:
                acked.append(n)
        note(f"sync rule, Kafka stopped: {refused} of 5 publishes refused with 0x97")
        assert refused == 5
    finally:
        kafka.start()
    # Kafka is back: publishes are accepted again (librdkafka reconnects on its own)
    def accepted(n):
        info = pub.client.publish("data/a", json.dumps({"n": n}).encode(), qos=1)
        return wait_for(lambda: info.mid in pub.pubacks, 20) and pub.pubacks[info.mid] < 0x80
    assert wait_for(lambda: accepted(10), 60, interval=1)
    acked.append(10)
    got = set(numbers(kafka.consume(topic, count=20, timeout=20)))
    assert set(acked) <= got, f"acknowledged but not in Kafka: {sorted(set(acked) - got)}"
