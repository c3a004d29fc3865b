"""Fixtures for the CoAP gateway suite (see README.md).

    pytest --mode=standalone   # default (env CMQ_TEST_MODE): one `cmq standalone`
    pytest --mode=cluster      # two `cmq hub` on a session nats-server

    deploy      factory: ``dep = deploy(docs=[...], args=[...])`` starts the processes with
                the DeviceCredentials / TopicAcls in ``docs`` (manifests folder, or
                ``cmq registry apply``) and extra flags; returns a ``coapenv.Deployment``
                (``dep.coap_hub`` gets the CoAP requests, plain and DTLS, ``dep.mqtt_hub``
                the MQTT clients: hub 1 and hub 2 in cluster mode). Killed at teardown.
    mode        "standalone" or "cluster".

Binaries: $CMQ_BIN (default <repo>/target/debug/cmq), $NATS_SERVER_BIN (cluster mode;
default: what scripts/install-nats.sh prints), coap-client-notls and coap-client-openssl
(DTLS) on the PATH.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
for i, sub in enumerate(("support", "cluster", "dispatch", "access", "protocol")):
    sys.path.insert(i, str(TESTS / sub))  # natsserver, clusterlib, dispatchlib, accesslib, helpers
sys.path.insert(0, str(HERE))

import clusterlib  # noqa: E402
import coaplib  # noqa: E402
import coaptools  # noqa: E402
from coapenv import new_cluster, new_standalone, wait_registry  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--mode", action="store", default=os.environ.get("CMQ_TEST_MODE", "standalone"),
        choices=("standalone", "cluster"),
        help="standalone (one `cmq standalone`, default) or cluster (two `cmq hub` on a "
             "nats-server: CoAP on hub 1, MQTT on hub 2); env CMQ_TEST_MODE")


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_coap_client: uses libcoap's coap-client-notls")
    config.addinivalue_line("markers",
                            "needs_coaps_client: uses libcoap's coap-client-openssl (DTLS)")


def pytest_collection_modifyitems(config, items):
    missing = {"needs_coap_client": (coaptools.have_coap_client(), coaptools.COAP_CLIENT),
               "needs_coaps_client": (coaptools.have_coaps_client(), coaptools.COAPS_CLIENT)}
    for marker, (present, binary) in missing.items():
        if present:
            continue
        skip = pytest.mark.skip(reason=f"{binary} missing: scripts/install-test-deps.sh")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tails of the cmq logs."""
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed or rep.when not in ("setup", "call"):
        return
    for dep in getattr(item, "_coap_deployments", []):
        rep.sections.append((f"cmq logs ({dep.mode}, tail)", dep.log_tails(60)))


@pytest.fixture(scope="session")
def mode(request) -> str:
    return request.config.getoption("--mode")


@pytest.fixture(scope="session")
def nats_url(mode, tmp_path_factory):
    if mode != "cluster":
        yield None
        return
    from natsserver import NatsServer
    try:
        srv = NatsServer(tmp_path_factory.mktemp("nats"), name="nats-coap").start()
    except RuntimeError as e:
        pytest.exit(f"--mode=cluster: could not start nats-server: {e}", returncode=1)
    yield srv.url
    srv.stop()


@pytest.fixture
def deploy(request, mode, nats_url, tmp_path):
    started = []
    request.node._coap_deployments = started

    def factory(docs: list[dict] | None = None, args: list[str] | None = None):
        docs, args = list(docs or []), list(args or [])
        if mode == "standalone":
            dep = new_standalone(tmp_path, docs, args)
        else:
            dep = new_cluster(tmp_path, nats_url, docs, args)
        started.append(dep)
        dep.start()
        if docs:
            wait_registry(dep, docs)
        return dep

    yield factory
    coaptools.close_all()
    coaplib.close_all()
    clusterlib.close_all_clients()
    for dep in started:
        dep.stop()


@pytest.fixture(autouse=True)
def _clients_closed():
    yield
    coaptools.close_all()
    coaplib.close_all()
    clusterlib.close_all_clients()
