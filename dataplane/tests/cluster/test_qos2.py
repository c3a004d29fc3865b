"""QoS 2 exactly-once when a session moves between hubs in the middle of a flow: the
subscriber taken over on another hub, the subscriber's hub killed (SIGKILL) and the session
resumed on another hub, and the publisher taken over on another hub.

paho-mqtt 2.x hands a QoS 2 message to ``on_message`` when the PUBREL arrives (it keeps
the PUBLISH until then, by packet id) and answers a PUBREL for an unknown packet id with
PUBCOMP *without* delivering (paho issue #284). So a move is done the way one client
process does it: the same paho client object (same session state) connects to the other
hub with clean_start False while its old TCP connection is still open (``_move``: paho's
descriptor is closed, a dup keeps the connection), which makes it a takeover; what the
old hub still sends on the old connection is read from the dup and never processed, so
whatever was in flight there has to be completed by the new hub. Counting is done on
``on_message``.
"""

import os
import socket
import time

from clusterlib import (
    Mqtt,
    PacedPublisher,
    await_route,
    delivery_report,
    note,
    ranges,
    rc_value,
    session_record,
    stored_payload,
    uid,
    wait_for,
    wait_quiet,
)
from helpers import DISCONNECT, Packet, dec_varint
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

EXPIRY = 300
N = 300
DURATION = 1.5
BURST = 25          # 12 bursts of 25 over 1.5 s: flows are open when the move comes
SLOW_CONSUMER = 0.008  # seconds per message in the subscriber before its move


def _move(m: Mqtt, hub, expiry: int) -> socket.socket:
    """Move paho client ``m`` to ``hub`` as a takeover: the old TCP connection stays open
    (a dup of its descriptor is returned) while the same paho client object, with its
    QoS 2 state, connects to ``hub`` with clean_start False."""
    c = m.client
    old = c.socket()
    keep = socket.socket(fileno=os.dup(old.fileno()))
    old.close()                       # paho's descriptor only: the connection stays up
    try:
        c._sockpairW.send(b"0")       # wake paho's select so it sees the closed socket
    except Exception:
        pass
    assert wait_for(lambda: c._thread is None, 5), "paho's network thread did not stop"
    _connect_again(m, hub, expiry)
    return keep


def _connect_again(m: Mqtt, hub, expiry: int) -> None:
    """Connect the same paho client object (its network thread stopped), with its QoS 2
    state, to ``hub`` with clean_start False, and wait for a successful CONNACK."""
    c = m.client
    m.connack = None
    m.disconnected = None
    m.disconnect_event.clear()
    m.hub = hub
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry
    c.connect(hub.host, hub.port, keepalive=30, clean_start=False, properties=props)
    c.loop_start()
    assert wait_for(lambda: m.connack is not None or m.disconnected is not None, 20), \
        f"no CONNACK from {hub.hub_id}"
    assert m.connack is not None and rc_value(m.connack[0]) == 0, f"CONNACK {m.connack}"


def _drain(sock: socket.socket, timeout: float) -> tuple[list[Packet], bytes]:
    """Read what the old hub still sent on ``sock`` until it closes (bounded); returns the
    packets (MQTT 5) and the bytes that were not part of them (the tail of a packet paho
    had begun to read, or an undecodable rest)."""
    buf = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"old connection still open after {timeout}s ({len(buf)} bytes)")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            break
        buf += chunk
    sock.close()
    # paho may have stopped reading in the middle of a packet: the buffer then starts with
    # the tail of one. Take the first offset from which whole packets run to the end.
    fallback = None
    for start in range(0, min(len(buf), 1 << 16)):
        packets, pos = _parse(buf, start)
        if pos == len(buf) and packets:
            return packets, buf[:start]
        if start == 0:
            fallback = (packets, buf[pos:])
    return fallback if fallback is not None else ([], buf)


def _parse(buf: bytes, pos: int) -> tuple[list[Packet], int]:
    """Whole MQTT 5 packets from ``pos`` on; returns them and where parsing stopped."""
    packets = []
    while pos + 2 <= len(buf):
        try:
            length, body_at = dec_varint(buf, pos + 1)
        except (IndexError, ValueError):
            break
        if body_at + length > len(buf):
            break
        first = buf[pos]
        if first >> 4 == 0:
            break  # type 0 is reserved: not a packet boundary
        try:
            packets.append(Packet(first >> 4, first & 0x0F, buf[body_at:body_at + length]).decode())
        except Exception:
            break
        pos = body_at + length
    return packets, pos


def _old_connection_report(packets: list[Packet], rest: bytes) -> str:
    unread = [p.name for p in packets[:-1]]
    counts = {n: unread.count(n) for n in sorted(set(unread))}
    last = packets[-1] if packets else None
    return (f"old connection, unread by the client: {counts}, then {last!r}"
            f"{' + %d undecoded bytes' % len(rest) if rest else ''}")


def _assert_taken_over(packets: list[Packet], rest: bytes) -> None:
    assert packets and packets[-1].type == DISCONNECT and packets[-1].reason == 0x8E, \
        f"old connection did not end with DISCONNECT 0x8E: {packets[-3:]} rest={rest[:20]!r}"


def test_qos2_exactly_once_across_takeover(cluster):
    """A QoS 2 subscriber (persistent session) on hub1 receives 300 QoS 2 messages
    published on hub2 over 1.5 s, slowly (8 ms each), so flows pile up; midway the client
    connects on hub3 (takeover: the old connection gets DISCONNECT 0x8E) and receives the
    rest: every message exactly once over both connections."""
    hubs = cluster(3)
    h1, h2, h3 = hubs
    cid = uid("q2s")
    sub = Mqtt(h1, cid).connect(clean_start=False, expiry=EXPIRY)
    assert sub.subscribe("q2/#", qos=2) == [2]
    pub = Mqtt(h2, max_inflight=100).connect()
    assert await_route(pub, [sub], "q2/probe"), "probes from hub2 never reached hub1"

    fast = sub.client.on_message
    moved = [False]

    def slow_on_message(client, userdata, msg):
        fast(client, userdata, msg)
        if not moved[0]:
            time.sleep(SLOW_CONSUMER)

    sub.client.on_message = slow_on_message
    stream = PacedPublisher(pub, "q2/t", N, DURATION, qos=2, burst=BURST).start()
    assert wait_for(lambda: stream.sent >= N // 2, 10), "publisher stalled"
    on_first = len(sub.get(prefix=b"m-"))
    awaiting = len(sub.client._in_messages)
    t0 = time.monotonic()
    moved[0] = True
    old = _move(sub, h3, EXPIRY)
    took = time.monotonic() - t0
    assert sub.session_present, "takeover on hub3 did not find the session"
    packets, rest = _drain(old, 10)
    note(f"qos2 subscriber takeover: after {stream.sent} publishes, {on_first} delivered on "
         f"hub1, {awaiting} PUBLISH(es) awaiting PUBREL in the client; CONNACK on hub3 in "
         f"{took:.2f}s; {_old_connection_report(packets, rest)}")
    _assert_taken_over(packets, rest)

    acked = stream.finish(ack_timeout=30)
    assert len(acked) == N, (f"{N - len(acked)} QoS 2 publishes not completed: refused "
                             f"{stream.refused()[:10]}, unanswered {stream.unanswered()[:10]}")
    wait_for(lambda: set(acked) <= set(sub.payloads(prefix=b"m-")), 30, interval=0.1)
    wait_quiet([sub], 1.5, 15)
    msgs = sub.get(prefix=b"m-")
    got = [m.payload for m in msgs]
    lost, dups = delivery_report("qos2 subscriber takeover", acked, got)
    dup_details = [(m.payload, "hub1" if m.at < t0 else "hub3", m.mid, m.dup)
                   for m in msgs if m.payload in dups]
    unreleased = sorted(m.payload for m in sub.client._in_messages.values())
    assert not lost, (f"{len(lost)} messages lost: {lost[:20]}; PUBLISHes never released "
                      f"(no PUBREL) in the client: {unreleased[:20]}")
    assert not dups, (f"{len(dups)} duplicated (payload, connection, packet id, dup): "
                      f"{dup_details[:20]}")
    assert {m.qos for m in msgs} == {2}
    assert sub.disconnected is None and sub.connected(), f"subscriber dropped: {sub.disconnects}"


def _record_summary(hubs, rec: dict | None, payloads: bool) -> str:
    """What a session record says about outgoing flows (with ``payloads``: which message
    each stored position is, fetched from the stream)."""
    if rec is None:
        return "no session record"
    out = rec.get("out", [])
    published = [o for o in out if o.get("m")]
    released = [o["p"] for o in out if not o.get("m")]
    delivered = rec.get("delivered", [])
    text = (f"record epoch {rec.get('epoch')} owner {rec.get('owner')} cursors "
            f"{rec.get('cursors')}: PUBLISH in flight ids [{ranges(o['p'] for o in published)}], "
            f"PUBREL in flight ids [{ranges(released)}], {len(delivered)} delivered above "
            f"the cursors")
    if payloads:
        name = lambda shard, seq: (stored_payload(hubs, shard, seq) or b"?").decode()  # noqa: E731
        text += (f"; PUBLISH in flight (id: payload) "
                 f"{[(o['p'], name(*o['m'][:2])) for o in published]}; delivered above the "
                 f"cursors {[name(shard, seq) for shard, seq in delivered]}")
    return text


def test_qos2_exactly_once_across_subscriber_hub_crash(cluster, tmp_path):
    """Like the takeover test, but hub1 is SIGKILLed midway instead: a QoS 2 subscriber
    (persistent session) on hub1 receives 300 QoS 2 messages published on hub2 in bursts,
    slowly, so flows are open at the crash; the same paho client object (its QoS 2 receive
    state kept) resumes on hub3 with clean_start False. The hub saves the session's record
    before a QoS 2 PUBLISH leaves it, before its PUBREL leaves and after PUBCOMP, so hub3
    resends what was open with the same packet ids (PUBLISH only for flows the client has
    not completed): every message is delivered to the application exactly once."""
    hubs = cluster(3)
    h1, h2, h3 = hubs
    cid = uid("q2k")
    sub = Mqtt(h1, cid).connect(clean_start=False, expiry=EXPIRY)
    assert sub.subscribe("q2k/#", qos=2) == [2]
    pub = Mqtt(h2, max_inflight=100).connect()
    assert await_route(pub, [sub], "q2k/probe"), "probes from hub2 never reached hub1"

    # paho's own trace of what reached the client (which connection, packet ids, DUP)
    trace: list[tuple[float, str]] = []
    sub.client.on_log = lambda client, userdata, level, buf: (
        trace.append((time.monotonic(), buf)) if buf.startswith("Received PUB") else None)
    fast = sub.client.on_message
    crashed = [False]

    def slow_on_message(client, userdata, msg):
        fast(client, userdata, msg)
        if not crashed[0]:
            time.sleep(SLOW_CONSUMER)

    sub.client.on_message = slow_on_message
    stream = PacedPublisher(pub, "q2k/t", N, DURATION, qos=2, burst=BURST).start()
    assert wait_for(lambda: stream.sent >= N // 2, 10), "publisher stalled"
    on_first = len(sub.get(prefix=b"m-"))
    awaiting = len(sub.client._in_messages)
    t0 = time.monotonic()
    crashed[0] = True
    h1.kill()
    assert wait_for(lambda: sub.client._thread is None, 10), \
        "paho's network thread did not stop after the crash of hub1"
    t_lost = time.monotonic()
    on_hub1 = len(sub.get(prefix=b"m-"))
    kept = len(sub.client._in_messages)
    record = session_record(hubs, cid)  # what hub1 left, before hub3 claims it
    _connect_again(sub, h3, EXPIRY)
    t_back = time.monotonic()
    assert sub.session_present, "resume on hub3 did not find the session"
    note(f"qos2 subscriber hub crash: hub1 killed after {stream.sent} publishes, {on_first} "
         f"delivered and {awaiting} PUBLISH(es) awaiting PUBREL in the client at the kill; "
         f"{on_hub1} delivered and {kept} awaiting PUBREL when the client saw the loss "
         f"({t_lost - t0:.2f}s); CONNACK on hub3 {t_back - t_lost:.2f}s later; hub1's "
         f"{_record_summary(hubs, record, payloads=False)}")

    acked = stream.finish(ack_timeout=30)
    assert len(acked) == N, (f"{N - len(acked)} QoS 2 publishes not completed: refused "
                             f"{stream.refused()[:10]}, unanswered {stream.unanswered()[:10]}")
    wait_for(lambda: set(acked) <= set(sub.payloads(prefix=b"m-")), 30, interval=0.1)
    wait_quiet([sub], 1.5, 15)
    msgs = sub.get(prefix=b"m-")
    got = [m.payload for m in msgs]
    lost, dups = delivery_report("qos2 subscriber hub crash", acked, got)
    where = lambda t: "hub1" if t < t_lost else "hub3"  # noqa: E731
    # what hub3 sent again for hub1's open flows: PUBLISH with DUP (no PUBREC on record),
    # PUBREL for a packet id it did not PUBLISH on this connection (PUBREC on record)
    on_hub3 = [line for t, line in trace if t >= t_lost]
    published3 = {int(line.split(", m")[1].split(")")[0]) for line in on_hub3
                  if line.startswith("Received PUBLISH")}
    resent_pubrel = [line for line in on_hub3 if line.startswith("Received PUBREL")
                     and int(line.split("Mid: ")[1].rstrip(")")) not in published3]
    resent_publish = [line for line in on_hub3 if line.startswith("Received PUBLISH (d1")]
    note(f"qos2 subscriber hub crash: hub3 resent {len(resent_publish)} PUBLISH (DUP) and "
         f"{len(resent_pubrel)} PUBREL of hub1's flows")
    trace_file = tmp_path / "client-trace.txt"
    events = [(t, f"{where(t)} {line}") for t, line in trace]
    events += [(m.at, f"{where(m.at)} delivered {m.payload.decode()} (m{m.mid})") for m in msgs]
    trace_file.write_text("".join(f"{t - t0:+.4f} {line}\n" for t, line in sorted(events)))
    copies: dict[bytes, list[str]] = {}
    for m in msgs:
        if m.payload in dups:
            copies.setdefault(m.payload, []).append(f"{where(m.at)} m{m.mid} d{int(m.dup)}")
    dup_details = [f"{p.decode()}: {' / '.join(c)}" for p, c in copies.items()]
    hub3_mids = {m.mid for m in msgs if m.payload in dups and where(m.at) == "hub3"}
    dup_trace = [line for t, line in trace if where(t) == "hub3"
                 and any(f"m{mid})" in line or f"(Mid: {mid})" in line for mid in hub3_mids)]
    unreleased = sorted((m.payload, m.mid) for m in sub.client._in_messages.values())
    lost_trace = [f"{where(t)} {line}" for t, line in trace
                  if any(f"m{mid})" in line or f"(Mid: {mid})" in line for _, mid in unreleased)]
    if lost or dups:
        note(f"qos2 subscriber hub crash: hub1's {_record_summary(hubs, record, payloads=True)}")
    assert not lost, (f"{len(lost)} messages lost: {lost[:20]}; PUBLISHes never released "
                      f"(no PUBREL) in the client (payload, packet id): {unreleased[:20]}; "
                      f"client trace for those packet ids: {lost_trace[:40]}; client trace "
                      f"in {trace_file}")
    assert not dups, (f"{len(dups)} duplicated, each delivery as connection, packet id, "
                      f"DUP flag: {dup_details[:30]}; what hub3 sent for the packet ids of "
                      f"its copies: {dup_trace[:60]}; hub3 on the session: "
                      f"{h3.grep(cid)[-10:]}; client trace in {trace_file}")
    assert {m.qos for m in msgs} == {2}
    assert sub.disconnected is None and sub.connected(), f"subscriber dropped: {sub.disconnects}"


def test_qos2_publisher_moves_hub(cluster):
    """A QoS 2 publisher with a persistent session on hub1 sends 300 messages over 1.5 s
    (bursts of 25, at most 20 in flight); right after a burst its connection is taken over
    on hub3 (the old connection gets DISCONNECT 0x8E) and paho resends what was
    unacknowledged (PUBLISH with DUP for no PUBREC yet, PUBREL for no PUBCOMP yet). A
    subscriber on hub2 gets every message exactly once."""
    hubs = cluster(3)
    h1, h2, h3 = hubs
    sub = Mqtt(h2).connect()
    assert sub.subscribe("p2/#", qos=2) == [2]
    cid = uid("q2p")
    pub = Mqtt(h1, cid, max_inflight=20).connect(clean_start=False, expiry=EXPIRY)
    assert await_route(pub, [sub], "p2/probe"), "probes from hub1 never reached hub2"

    stream = PacedPublisher(pub, "p2/t", N, DURATION, qos=2, burst=BURST).start()
    assert wait_for(lambda: stream.sent >= N // 2, 10), "publisher stalled"
    with stream.paused():  # right after a burst
        states: dict[int, int] = {}
        for msg in list(pub.client._out_messages.values()):
            states[msg.state] = states.get(msg.state, 0) + 1
        sent_before = stream.sent
        t0 = time.monotonic()
        old = _move(pub, h3, EXPIRY)
        took = time.monotonic() - t0
    assert pub.session_present, "takeover on hub3 did not find the publisher's session"
    packets, rest = _drain(old, 10)
    # paho message states: 4 wait_for_pubrec, 8 wait_for_pubcomp, 10 queued
    note(f"qos2 publisher move: after {sent_before} publishes, paho message states "
         f"{states}; CONNACK on hub3 in {took:.2f}s; {_old_connection_report(packets, rest)}")
    _assert_taken_over(packets, rest)

    acked = stream.finish(ack_timeout=30)
    # A PUBREL resent for a flow the old hub had completed (its PUBCOMP is among the unread
    # packets above) gets PUBCOMP 0x92, Packet Identifier not found (MQTT 5 4.3.3): that
    # message was accepted, so it counts as acknowledged and must be received.
    not_found = [p for p, rc in stream.reasons().items() if rc == 0x92]
    acked = acked + not_found
    others = {p: hex(rc) for p, rc in stream.reasons().items() if rc >= 0x80 and rc != 0x92}
    note(f"qos2 publisher move: {len(not_found)} resent PUBREL(s) answered 0x92 "
         f"(flow completed on hub1): {not_found}")
    assert len(acked) == N, (f"{N - len(acked)} QoS 2 publishes not completed: refused "
                             f"{others}, unanswered {stream.unanswered()[:10]}")
    wait_for(lambda: set(acked) <= set(sub.payloads(prefix=b"m-")), 30, interval=0.1)
    wait_quiet([sub], 1.5, 15)
    got = sub.payloads(prefix=b"m-")
    lost, dups = delivery_report("qos2 publisher move", acked, got)
    assert not lost, f"{len(lost)} messages lost: {lost[:20]}"
    assert not dups, f"{len(dups)} duplicated: {dict(list(dups.items())[:20])}"
    assert pub.disconnected is None and pub.connected(), f"publisher dropped: {pub.disconnects}"
