"""Fixtures for the end-to-end cluster suite: several `cmq hub` processes on one NATS.

    nats        session-scoped single nats-server with JetStream (monitor port for /jsz)
    cluster     factory: ``hubs = cluster(3)`` or ``cluster(2, shards=4, max_queued_messages=100)``
                starts hubs with one fresh cluster name, waits for /readyz on each and
                kills every hub at teardown. Returns a ``clusterlib.Cluster``
                (``h1, h2, h3 = hubs``; ``hubs.add(1)``; ``hubs.name``).
    nats_cluster  3-node NATS cluster (only for tests marked ``nats_cluster``, which run
                with --run-nats-cluster or CMQ_TEST_NATS_CLUSTER=1)

Binaries: $CMQ_BIN (default <repo>/target/debug/cmq) and $NATS_SERVER_BIN (default:
what scripts/install-nats.sh prints). When a test fails, the tail of every hub's log
and of the nats-server log is attached to its report; the full logs stay in the test's
tmp dir (paths in the report).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "support"))   # natsserver
sys.path.insert(1, str(HERE.parent / "protocol"))  # helpers (RawClient, codec)

import clusterlib  # noqa: E402
from natsserver import NatsCluster, NatsServer  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--run-nats-cluster",
        action="store_true",
        default=os.environ.get("CMQ_TEST_NATS_CLUSTER") == "1",
        help="also run tests that start a 3-node NATS cluster (env CMQ_TEST_NATS_CLUSTER=1)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "nats_cluster: needs a 3-node NATS cluster; opt-in")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-nats-cluster"):
        return
    skip = pytest.mark.skip(reason="3-node NATS cluster test: run with --run-nats-cluster")
    for item in items:
        if "nats_cluster" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tails of the hub and nats-server logs to the report."""
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed or rep.when not in ("setup", "call"):
        return
    for cl in getattr(item, "_cmq_clusters", []):
        rep.sections.append((f"cmq hub logs, cluster {cl.name} (tail)", cl.log_tails(80)))
    for srv in getattr(item, "_cmq_nats", []):
        if isinstance(srv, NatsCluster):
            rep.sections.append((f"nats cluster {srv.name} logs (tail)", srv.log_tails(30)))
        else:
            rep.sections.append((f"nats-server {srv.name} warnings/errors: {srv.log_path}",
                                 srv.log_digest(30)))


def pytest_terminal_summary(terminalreporter):
    if clusterlib.SUMMARY:
        terminalreporter.section("cluster delivery reports")
        for line in clusterlib.SUMMARY:
            terminalreporter.write_line(line)


def _close_clients() -> None:
    clusterlib.close_all_clients()
    from helpers import close_all_clients  # protocol suite's RawClient registry
    close_all_clients()


@pytest.fixture(autouse=True)
def _clients_closed():
    """Stop every client a test left open (paho loops, raw sockets)."""
    yield
    _close_clients()


@pytest.fixture(scope="session")
def nats(tmp_path_factory):
    srv = NatsServer(tmp_path_factory.mktemp("nats"), name="nats-single").start()
    yield srv
    srv.stop()


@pytest.fixture
def nats_cluster(request, tmp_path):
    cl = NatsCluster(tmp_path / "nats-cluster", size=3).start()
    request.node._cmq_nats = getattr(request.node, "_cmq_nats", []) + [cl]
    yield cl
    _close_clients()
    cl.stop()


@pytest.fixture
def cluster(request, nats, tmp_path):
    """Factory: ``cluster(n=3, *, nats_url=None, stream_replicas=None, shards=None,
    name=None, extra_args=(), **limits)`` -> started ``clusterlib.Cluster``."""
    started: list[clusterlib.Cluster] = []
    request.node._cmq_clusters = started
    if nats not in getattr(request.node, "_cmq_nats", []):
        request.node._cmq_nats = getattr(request.node, "_cmq_nats", []) + [nats]

    def factory(n: int = 3, *, nats_url: str | None = None, stream_replicas: int | None = None,
                shards: int | None = None, name: str | None = None, extra_args=(),
                **limits) -> clusterlib.Cluster:
        cl = clusterlib.Cluster(nats_url or nats.url, tmp_path, name=name,
                                stream_replicas=stream_replicas, shards=shards,
                                limits=limits, extra_args=extra_args)
        started.append(cl)
        try:
            cl.add(n)
        except clusterlib.HubError as e:
            pytest.fail(str(e), pytrace=False)
        return cl

    yield factory
    _close_clients()  # while the hubs are still up: clean, fast disconnects
    for cl in started:
        cl.kill_all()
