"""Fixtures for the access suite: device authentication, topic ACLs and TLS of the hub.

    pytest --mode=standalone   # default (env CMQ_TEST_MODE): `cmq standalone --manifests DIR`
    pytest --mode=cluster      # `cmq hub` on a session nats-server, resources via `cmq registry`

Fixtures:
    registry    per test: ``registry.apply(name, docs)`` / ``registry.delete(name)``. Standalone:
                writes/removes ``<manifests>/<name>.yaml``; cluster: ``cmq registry apply -f``
                / ``cmq registry delete`` for each resource applied under ``name``. With
                a hub running, each call waits until the hub reloaded.
    start_hub   factory: ``start_hub(*extra_args, tls=False, client_auth=None, **flags)``
                -> started ``accesslib.Hub`` sharing the test's registry (so resources
                applied before the call are there at start). ``flags`` become
                ``--flag-name value`` (True/False -> "true"/"false"), e.g.
                ``allow_anonymous=False, default_permission="deny", auth_failure_limit=3``.
                ``tls=True`` serves the session's server certificate on the mqtts/wss ports;
                ``tls=TlsFiles(...)`` other files; ``client_auth="required"|"optional"``
                adds ``--tls-client-ca <CA> --tls-client-auth X``.
    pki         session: certs.Pki (CA, server certs, client certs, an untrusted client).
    mode        "standalone" or "cluster".

Markers: ``standalone_only(reason)`` and ``cluster_only(reason)``.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "support"))   # natsserver
sys.path.insert(1, str(HERE.parent / "protocol"))  # helpers (RawClient, codec)
sys.path.insert(0, str(HERE))

import accesslib  # noqa: E402
from accesslib import Hub, KvRegistry, ManifestRegistry, TlsFiles  # noqa: E402
from certs import Pki  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--mode", action="store", default=os.environ.get("CMQ_TEST_MODE", "standalone"),
        choices=("standalone", "cluster"),
        help="standalone (`cmq standalone --manifests`, default) or cluster (`cmq hub` on "
             "nats-server, resources via `cmq registry`); env CMQ_TEST_MODE")


def pytest_configure(config):
    config.addinivalue_line("markers", "standalone_only(reason): only meaningful in standalone mode")
    config.addinivalue_line("markers", "cluster_only(reason): only meaningful in cluster mode")


def pytest_collection_modifyitems(config, items):
    mode = config.getoption("--mode")
    other = "cluster_only" if mode == "standalone" else "standalone_only"
    for item in items:
        marker = item.get_closest_marker(other)
        if marker is not None:
            why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"{other}: {why}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the hub log tails (and the registry tool's output)."""
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed or rep.when not in ("setup", "call"):
        return
    for hub in getattr(item, "_access_hubs", []):
        rep.sections.append((f"hub log {hub.log_path} (tail)", hub.log_tail(60)))
    reg = getattr(item, "_access_registry", None)
    if isinstance(reg, KvRegistry) and reg.log:
        rep.sections.append(("cmq registry calls", "\n".join(reg.log[-10:])))


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
        srv = NatsServer(tmp_path_factory.mktemp("nats"), name="nats-access").start()
    except RuntimeError as e:
        pytest.exit(f"--mode=cluster: could not start nats-server: {e}", returncode=1)
    yield srv.url
    srv.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki")).build()


@pytest.fixture
def registry(request, mode, nats_url, tmp_path):
    if mode == "standalone":
        reg = ManifestRegistry(tmp_path / "manifests")
    else:
        reg = KvRegistry(nats_url, f"a{uuid.uuid4().hex[:10]}", tmp_path / "registry")
    request.node._access_registry = reg
    return reg


def _flag_args(flags: dict) -> list[str]:
    out = []
    for key, value in flags.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


@pytest.fixture
def start_hub(request, mode, registry, nats_url, pki, tmp_path):
    started: list[Hub] = []
    request.node._access_hubs = started

    def factory(*extra_args: str, tls=False, client_auth: str | None = None,
                tls_reload_ms: int | None = None, **flags) -> Hub:
        files = None
        if tls is True:
            files = TlsFiles(pki.server.cert, pki.server.key, pki.ca.cert)
        elif tls:
            files = tls
        args = _flag_args(flags)
        if client_auth is not None:
            assert files is not None, "client_auth needs tls"
            args += ["--tls-client-ca", str(pki.ca.cert), "--tls-client-auth", client_auth]
        if tls_reload_ms is not None:
            args += ["--tls-reload-ms", str(tls_reload_ms)]
        hub = Hub(mode, registry, tmp_path, [*args, *extra_args], tls=files, nats_url=nats_url)
        started.append(hub)
        try:
            hub.start()
        except accesslib.HubError as e:
            pytest.fail(str(e), pytrace=False)
        return hub

    yield factory
    accesslib.close_all_clients()  # while the hubs are still up
    for hub in started:
        hub.stop()


@pytest.fixture(autouse=True)
def _clients_closed():
    yield
    accesslib.close_all_clients()
