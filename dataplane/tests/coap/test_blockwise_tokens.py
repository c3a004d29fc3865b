"""Block-wise transfers (RFC 7959) with libcoap's coap-client, and connection mode
(`/mqtt/connection` tokens). In cluster mode uploads go to hub 1 and the MQTT subscriber
sits on hub 2; a token issued by hub 1 is used on hub 2 (both hubs share the token key)."""

import os
import subprocess

import pytest

from clusterlib import uid
from coaptools import COAP_CLIENT, coap_client


def cli_payload(target: str, *args: str, wait: int = 15) -> bytes:
    out = subprocess.run([COAP_CLIENT, "-B", str(wait), *args, target], capture_output=True,
                         timeout=wait + 20, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.needs_coap_client
def test_blockwise_upload_is_one_message_and_retained_read_comes_in_blocks(deploy, tmp_path):
    dep = deploy()
    base = uid("blk")
    topic = f"{base}/blob"
    sub = dep.subscriber(f"{base}/#")
    body = os.urandom(5000).hex().encode()[:6668]  # 7 blocks of 1024, 105 of 64
    path = tmp_path / "big.txt"
    path.write_bytes(body)
    res = coap_client(dep.uri(f"ps/{topic}", c=uid("dev"), r="true"), "-m", "post", "-b", "64",
                      "-f", str(path))
    assert res.responses[-1].code == "2.04", res
    # one 2.31 Continue per block but the last
    assert dep.metric("cmq_hub_coap_requests_total", method="POST", code="2.31") == 104
    msgs = sub.wait_count(1, 10, topic=topic)
    assert [m.payload for m in msgs] == [body], "published once, whole"
    # Block2: the retained message is longer than one block
    got = cli_payload(dep.uri(f"ps/{topic}"), "-m", "get")
    assert got.rstrip(b"\n") == body
    assert dep.metric("cmq_hub_coap_blocks_total") >= 104 + 7


@pytest.mark.needs_coap_client
def test_upload_over_the_size_limit_is_413(deploy, tmp_path):
    dep = deploy(args=["--max-packet-size", "2048"])
    path = tmp_path / "big.txt"
    path.write_bytes(b"x" * 6000)
    res = coap_client(dep.uri(f"ps/{uid('big')}/t", c=uid("dev")), "-m", "post", "-b", "64",
                      "-f", str(path))
    assert res.responses[-1].code == "4.13", res


@pytest.mark.needs_coap_client
def test_connection_mode_token_works_on_any_hub(deploy):
    dep = deploy(args=["--coap-token-secret", "shared-key-of-the-cluster"])
    base = uid("tok")
    sub = dep.subscriber(f"{base}/#")
    client_id = uid("dev")
    token = cli_payload(dep.uri("mqtt/connection", clientid=client_id), "-m", "post",
                        "-e", "").strip().decode()
    assert token and "." in token, token
    # the token, on the hub that receives the MQTT subscriber's messages (hub 2 in a cluster)
    res = coap_client(dep.uri(f"ps/{base}/t", hub=dep.mqtt_hub, c=client_id, t=token),
                      "-m", "post", "-e", "with-token")
    assert res.response.code == "2.04", res
    assert [m.payload for m in sub.wait_count(1, 10, topic=f"{base}/t")] == [b"with-token"]
    # good only with its client id, and not forged
    res = coap_client(dep.uri(f"ps/{base}/t", c=uid("other"), t=token), "-m", "post", "-e", "x")
    assert res.response.code == "4.01", res
    res = coap_client(dep.uri(f"ps/{base}/t", c=client_id, t=token[:-2] + "AA"), "-m", "post",
                      "-e", "x")
    assert res.response.code == "4.01", res
    # heartbeat renews, DELETE closes
    res = coap_client(dep.uri("mqtt/connection", c=client_id, t=token), "-m", "put")
    assert res.response.code == "2.04", res
    res = coap_client(dep.uri("mqtt/connection", c=client_id, t=token), "-m", "delete")
    assert res.response.code == "2.02", res
    res = coap_client(dep.uri("mqtt/connection", c=client_id), "-m", "put")
    assert res.response.code == "4.00", res


def test_large_notification_comes_in_blocks(deploy):
    """A notification longer than one block carries the first Block2 block (and Size2);
    aiocoap fetches the rest with GETs and sees the whole message (RFC 7959 2.6)."""
    from coaptools import AioObserver
    from clusterlib import wait_for

    dep = deploy()
    topic = f"{uid('bign')}/t"
    obs = AioObserver(dep.uri(f"ps/{topic}", c=uid("obs"))).start()
    assert obs.code == "2.05", obs.first
    pub = dep.mqtt(dep.coap_hub)
    body = os.urandom(2600).hex().encode()[:5000]
    # the observation may need a moment to be in force across a cluster: publish until seen
    assert wait_for(lambda: (pub.publish(topic, body, qos=1) and False) or body in obs.payloads(),
                    15, interval=1.0), [len(p) for p in obs.payloads()]
    assert dep.metric("cmq_hub_coap_blocks_total") >= 4
