"""Failed-authentication limits: per client id and per IP address (--auth-failure-limit,
--auth-failure-window-secs). Clients bind other loopback source addresses (127.0.0.x) so
the two keys can be told apart."""

import time

from accesslib import RATE_LIMITED, connack, pw, user, wait_until

LIMIT = {"auth_failure_limit": 3, "auth_failure_window_secs": 30}


def test_three_failures_limit_client_id_and_ip(registry, start_hub):
    """The brief's scenario, all from 127.0.0.1: after 3 wrong passwords for client id X,
    the right password for X is refused (0x9F), and so is another client id from the
    same address (the IP key is limited too)."""
    registry.apply("users", [user("alice")])
    hub = start_hub(**LIMIT)
    before = hub.metric("cmq_hub_auth_total", result="rate_limited")
    for _ in range(3):
        assert connack(hub, "X", "alice", "wrong") == 0x86
    assert connack(hub, "X", "alice", pw("alice")) == 0x9F
    assert connack(hub, "Y", "alice", pw("alice")) == 0x9F
    assert connack(hub, "Y", "alice", pw("alice"), version=4) == RATE_LIMITED[4]
    assert connack(hub, None, None, None) == 0x9F  # any CONNECT from that address
    # another address and another client id: unaffected
    assert connack(hub, "Z", "alice", pw("alice"), source="127.0.0.2") == 0
    assert wait_until(lambda: hub.metric("cmq_hub_auth_total", result="rate_limited")
                      >= before + 4, 5), hub.metrics_text()
    assert hub.metric("cmq_hub_auth_total", result="bad_credentials") >= 3


def test_ip_address_limit(registry, start_hub):
    registry.apply("users", [user("alice")])
    hub = start_hub(**LIMIT)
    for i in range(3):  # three client ids, one address
        assert connack(hub, f"ip-{i}", "alice", "wrong", source="127.0.0.2") == 0x86
    assert connack(hub, "fresh", "alice", pw("alice"), source="127.0.0.2") == 0x9F
    assert connack(hub, "fresh", "alice", pw("alice"), source="127.0.0.3") == 0


def test_client_id_limit(registry, start_hub):
    registry.apply("users", [user("alice")])
    hub = start_hub(**LIMIT)
    for src in ("127.0.0.4", "127.0.0.5", "127.0.0.6"):  # one failure per address
        assert connack(hub, "victim", "alice", "wrong", source=src) == 0x86
    assert connack(hub, "victim", "alice", pw("alice"), source="127.0.0.7") == 0x9F
    assert connack(hub, "victim", "alice", pw("alice"), source="127.0.0.7",
                   version=4) == RATE_LIMITED[4]
    assert connack(hub, "other", "alice", pw("alice"), source="127.0.0.7") == 0
    # each of the first addresses has only one failure: still fine with another client id
    assert connack(hub, "other2", "alice", pw("alice"), source="127.0.0.4") == 0


def test_limit_expires_with_the_window(registry, start_hub):
    registry.apply("users", [user("alice")])
    hub = start_hub(auth_failure_limit=2, auth_failure_window_secs=2)
    for _ in range(2):
        assert connack(hub, "W", "alice", "wrong", source="127.0.0.8") == 0x86
    t0 = time.monotonic()
    assert connack(hub, "W", "alice", pw("alice"), source="127.0.0.8") == 0x9F
    time.sleep(max(0.0, 2.3 - (time.monotonic() - t0)))  # the window (2 s) has passed
    assert connack(hub, "W", "alice", pw("alice"), source="127.0.0.8") == 0


def test_successful_logins_are_not_limited(registry, start_hub):
    registry.apply("users", [user("alice")])
    hub = start_hub(**LIMIT)
    for i in range(10):
        assert connack(hub, "busy", "alice", pw("alice")) == 0, f"login {i} refused"
