"""Fixtures for the dispatch suite: ForwardRules forwarding to a real Kafka broker (KRaft,
from its Maven jars), a real NATS server, a local HTTP receiver and back into MQTT.

    kafka       session-scoped KafkaBroker (dataplane/tests/support/kafkabroker.py)
    nats        session-scoped nats-server with JetStream
    standalone  factory: ``standalone(rules=[...docs])`` -> started ``Standalone``
    cluster     factory: ``cluster(hubs=1, dispatchers=1, rules=[...docs])`` -> ``Env``
                (``.hubs``, ``.dispatchers``, ``.name``, ``.add_dispatcher()``)

Binaries: $CMQ_BIN (default <repo>/target/debug/cmq), $NATS_SERVER_BIN, $KAFKA_HOME (else
what the install scripts print). Logs of every process are attached to a failing test.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "support"))   # natsserver, kafka
sys.path.insert(1, str(HERE.parent / "cluster"))   # clusterlib (hubs, paho clients)
sys.path.insert(2, str(HERE.parent / "protocol"))  # helpers (used by clusterlib users)

import clusterlib  # noqa: E402
from dispatchlib import Dispatcher, Standalone, apply_rules, write_docs  # noqa: E402
from kafkabroker import KafkaBroker  # noqa: E402
from natsserver import NatsServer  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed or rep.when not in ("setup", "call"):
        return
    for p in getattr(item, "_cmq_procs", []):
        rep.sections.append((f"{p.label} log (tail): {p.log_path}", p.log_tail(60)))
    for cl in getattr(item, "_cmq_clusters", []):
        rep.sections.append((f"hub logs, cluster {cl.name} (tail)", cl.log_tails(40)))


@pytest.fixture(autouse=True)
def _clients_closed():
    yield
    clusterlib.close_all_clients()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka")).start()
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def nats(tmp_path_factory):
    srv = NatsServer(tmp_path_factory.mktemp("nats"), name="nats-dispatch").start()
    yield srv
    srv.stop()


@pytest.fixture
def standalone(request, tmp_path):
    started: list[Standalone] = []
    request.node._cmq_procs = started

    def factory(rules: list[dict], extra: list[str] | None = None) -> Standalone:
        manifests = tmp_path / f"manifests-{len(started)}"
        manifests.mkdir()
        write_docs(manifests / "rules.yaml", rules)
        s = Standalone(tmp_path, manifests, extra)
        started.append(s)
        return s.start()

    yield factory
    clusterlib.close_all_clients()
    for s in started:
        s.kill()


@dataclass
class Env:
    name: str
    nats_url: str
    workdir: Path
    hubs: clusterlib.Cluster
    dispatchers: list[Dispatcher] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    def add_dispatcher(self) -> Dispatcher:
        d = Dispatcher(self.workdir, self.nats_url, self.name, f"d{len(self.dispatchers) + 1}",
                       shards=4, extra=self.extra)
        self.dispatchers.append(d)
        return d.start()

    def apply(self, rules: list[dict]) -> None:
        path = write_docs(self.workdir / f"rules-{self.name}.yaml", rules)
        apply_rules(self.nats_url, self.name, path)


@pytest.fixture
def cluster(request, nats, tmp_path):
    envs: list[Env] = []
    request.node._cmq_procs = []
    request.node._cmq_clusters = []

    def factory(hubs: int = 1, dispatchers: int = 1, rules: list[dict] | None = None,
                dispatch_args: list[str] | None = None, hub_args: list[str] | None = None) -> Env:
        name = clusterlib.cluster_name()
        hub_cluster = clusterlib.Cluster(nats.url, tmp_path, name=name, shards=4,
                                         extra_args=hub_args or ())
        env = Env(name, nats.url, tmp_path, hub_cluster, extra=list(dispatch_args or []))
        envs.append(env)
        request.node._cmq_clusters.append(hub_cluster)
        if rules:
            env.apply(rules)
        hub_cluster.add(hubs)
        for _ in range(dispatchers):
            request.node._cmq_procs.append(env.add_dispatcher())
        return env

    yield factory
    clusterlib.close_all_clients()
    for env in envs:
        for d in env.dispatchers:
            d.kill()
        env.hubs.kill_all()
