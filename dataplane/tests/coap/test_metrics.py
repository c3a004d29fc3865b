"""``cmq_hub_coap_requests_total{method, code}`` on the admin port counts each answered
request once, by method ("GET", "POST", "PUT") and response code ("2.04"). The observer
gauge, duplicates and retransmissions are checked where they happen (test_observe.py,
test_messaging.py)."""

from clusterlib import uid, wait_for
from coaplib import BAD_REQUEST, CHANGED, CONTENT, GET, NOT_FOUND, POST, PUT

REQUESTS = "cmq_hub_coap_requests_total"


def test_request_counts_by_method_and_code(deploy):
    dep = deploy()
    raw = dep.raw()
    base = uid("met")
    keys = [("POST", "2.04"), ("PUT", "2.04"), ("GET", "4.04"), ("GET", "2.05"),
            ("POST", "4.00")]

    def counts() -> dict:
        return {k: dep.metric(REQUESTS, method=k[0], code=k[1]) for k in keys}

    before = counts()
    assert raw.exchange(POST, ["ps", base, "a"], payload=b"1").code == CHANGED
    assert raw.exchange(POST, ["ps", base, "b"], payload=b"2").code == CHANGED
    assert raw.exchange(PUT, ["ps", base, "c"], payload=b"3").code == CHANGED
    assert raw.exchange(GET, ["ps", base, "none"]).code == NOT_FOUND
    assert raw.exchange(GET, ".well-known/core").code == CONTENT
    assert raw.exchange(POST, ["ps", base, "+"], payload=b"4").code == BAD_REQUEST
    want = {("POST", "2.04"): 2, ("PUT", "2.04"): 1, ("GET", "4.04"): 1, ("GET", "2.05"): 1,
            ("POST", "4.00"): 1}

    def deltas() -> dict:
        now = counts()
        return {k: now[k] - before[k] for k in keys}

    assert wait_for(lambda: deltas() == want, 5), \
        f"deltas {deltas()}, expected {want}\n" + "\n".join(
            line for line in dep.coap_hub.metrics().splitlines() if "coap" in line)
