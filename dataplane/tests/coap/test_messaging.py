"""The message layer, byte-exact with the raw client: ping, duplicate CON (processed once,
answered again with the same bytes), malformed and random datagrams (ignored or reset,
never stopping the hub), /.well-known/core."""

import random
import time

import pytest

from clusterlib import uid, wait_for, wait_quiet
from coapenv import without_probes
from coaplib import (ACK, CHANGED, CON, CONTENT, EMPTY, GET, LINK_FORMAT, POST, RST, encode,
                     malformed_cases, request_options, subtle_format_errors)
from coaptools import aio_request, coap_client
from natsserver import http_get

DUPLICATES = "cmq_hub_coap_duplicates_total"


def test_ping_gets_rst(deploy):
    dep = deploy()
    raw = dep.raw()
    for mid in (0x0000, 0x1234, 0xFFFF):
        mark = raw.mark()
        raw.send(encode(CON, EMPTY, mid))
        reply = raw.wait(lambda m: m.mid == mid, 5, since=mark)
        assert reply is not None, f"no answer to a ping with message id {mid:#06x}"
        assert reply.raw == b"\x70\x00" + mid.to_bytes(2, "big"), reply


def test_duplicate_con_is_processed_once_and_answered_the_same(deploy):
    dep = deploy()
    topic = f"{uid('dup')}/t"
    sub = dep.subscriber(topic)
    raw = dep.raw()
    before = dep.metric(DUPLICATES)

    sent = raw.request(POST, f"ps/{topic}", {"c": uid("dev")}, payload=b"dup-1")
    first = raw.response(sent)
    assert first is not None and first.code == CHANGED, first
    # the ACK: the response itself (piggybacked), or empty before a separate one (slow hub)
    ack = raw.wait(lambda m: m.mtype == ACK and m.mid == sent.mid, 1, since=sent.seq)
    assert ack is not None, f"no ACK for message id {sent.mid:#06x}"
    mark = raw.mark()
    raw.send(sent.raw)
    raw.send(sent.raw)
    again = wait_for(lambda: len([m for m in raw.messages(mark) if m.mid == sent.mid]) >= 2, 5)
    replies = [m for m in raw.messages(mark) if m.mid == sent.mid]
    assert again, f"duplicates answered {len(replies)} times, expected 2"
    assert [m.raw for m in replies] == [ack.raw, ack.raw], (ack, replies)

    # the same message id from another peer is another exchange
    other = dep.raw()
    data = encode(CON, POST, sent.mid, b"\x0b\x0c", request_options(f"ps/{topic}"), b"dup-2")
    other.send(data)
    resp = other.wait(lambda m: m.code == CHANGED and m.token == b"\x0b\x0c", 10)
    assert resp is not None, other.messages()

    assert raw.exchange(POST, f"ps/{topic}", payload=b"marker").code == CHANGED
    assert sub.wait_count(1, 10, topic=topic, prefix=b"marker")
    assert wait_quiet([sub], 1.0, 5)
    got = without_probes(sub.payloads(topic))
    assert sorted(got) == [b"dup-1", b"dup-2", b"marker"], f"delivered: {got}"
    assert wait_for(lambda: dep.metric(DUPLICATES) == before + 2, 5), dep.metric(DUPLICATES)


def still_serving(dep) -> None:
    """Every process is alive and answers CoAP (ping, GET) and its admin port."""
    assert dep.alive(), dep.log_tails(40)
    for hub in dict.fromkeys(dep.procs):
        raw = dep.raw(hub)
        ping = raw.ping(5)
        assert ping is not None and ping.mtype == RST, f"{hub}: ping answered {ping}"
        resp = raw.exchange(GET, ".well-known/core")
        assert resp.code == CONTENT, resp
        assert http_get(hub.admin_port, "/readyz", 2.0)[0] == 200


def check_ignored_or_reset(dep, cases_for) -> list[str]:
    """Send each datagram of ``cases_for(mid)`` (each with its own message id), with a ping
    after each (the gateway must still answer it); the gateway may stay silent or answer
    an empty RST, nothing else. Returns what went wrong, per case."""
    raw = dep.raw()
    problems, by_mid = [], {}
    for name in cases_for(0):
        mid = raw.next_mid()
        by_mid[mid] = name
        raw.send(cases_for(mid)[name])
        ping = raw.ping(5)
        if ping is None or ping.mtype != RST:
            problems.append(f"{name}: no RST to the ping that followed ({ping})")
    time.sleep(0.3)
    for m in raw.messages():
        if m.mtype == RST and m.code == EMPTY and not m.token and not m.payload:
            continue
        problems.append(f"{by_mid.get(m.mid, 'message id %#06x' % m.mid)}: answered {m}")
    problems += [f"undecodable answer {u.raw!r} ({u.error})" for u in raw.undecodable]
    raw.close()
    return problems


def test_malformed_datagrams_are_ignored_or_reset(deploy):
    """Truncated header or token, token length 9 and 15, option delta / length 15,
    truncated extended fields, an option value past the end."""
    dep = deploy()
    problems = check_ignored_or_reset(dep, malformed_cases)
    assert not problems, "\n".join(problems)
    still_serving(dep)


def test_unknown_version_and_empty_payload_are_not_served(deploy):
    """RFC 7252 section 3: a message with a version other than 1 MUST be silently ignored,
    and a payload marker followed by no payload is a message format error; neither may
    be answered as a GET /.well-known/core."""
    dep = deploy()
    problems = check_ignored_or_reset(dep, subtle_format_errors)
    assert not problems, "\n".join(problems)
    still_serving(dep)


def test_random_datagrams_do_not_stop_the_hub(deploy):
    dep = deploy()
    rng = random.Random(20261129)
    raw = dep.raw(on_con=None)
    for i in range(400):
        n = rng.choice([1, 2, 3, 4, 5, 8, 16, 64, 300])
        data = bytes(rng.randrange(256) for _ in range(n))
        if i % 2:  # a CoAP 1 header, so that parsing goes past it
            data = bytes([0x40 | (data[0] & 0x3F)]) + data[1:]
        raw.send(data)
        if i % 50 == 49:
            time.sleep(0.05)
    raw.send(b"\x40\x02\x00\x01" + b"\xff" + bytes(60_000))   # one big datagram
    raw.close()
    time.sleep(0.5)
    still_serving(dep)


@pytest.mark.needs_coap_client
def test_well_known_core(deploy):
    dep = deploy()
    res = coap_client(dep.uri(".well-known/core"))
    assert res.response.code == "2.05", res
    assert "</ps>" in res.stdout, res
    resp = aio_request(dep.uri(".well-known/core"))
    assert resp.code.dotted == "2.05" and b"</ps>" in resp.payload, resp
    assert int(resp.opt.content_format) == LINK_FORMAT, resp.opt.content_format
    raw_resp = dep.raw().exchange(GET, ".well-known/core")
    assert raw_resp.content_format == LINK_FORMAT and b"</ps>" in raw_resp.payload, raw_resp
