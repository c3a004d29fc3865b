"""Apache Kafka (KRaft) brokers for the dispatch tests, without Docker.

    from kafkabroker import KafkaBroker

    kb = KafkaBroker().start()            # broker+controller in one JVM, loopback only
    kb.bootstrap                          # "127.0.0.1:PORT" (PLAINTEXT)
    kb.create_topic("iot.sensors", partitions=3)
    recs = kb.consume("iot.sensors", count=10, timeout=30)   # from the beginning, fresh group
    recs[0].key, recs[0].value, recs[0].headers["clientid"], recs[0].partition
    kb.stop()                             # SIGTERM, SIGKILL after a bound
    kb.start()                            # same port, same data dir: the messages are back
    kb.kill()                             # kill -9
    kb.close()                            # stop, and remove the temp dir this object made

One node is both broker and controller (a static one-voter quorum), formatted on its first
start. Auto topic creation is on with 3 partitions, internal topics have replication factor 1
and the first consumer group rebalance is not delayed. The JVM runs with a small heap.

Kafka itself is $KAFKA_HOME (jars in lib/, a log4j2 config in config/), else the last line
printed by scripts/install-kafka.sh, which installs it into ~/.cache/cmq when missing. Java
is $JAVA_HOME/bin/java, else `java` on PATH (>= 17). The Python client is confluent-kafka.

Every broker started here is also killed at interpreter exit, so a crashed test run leaves
no JVM behind.
"""

from __future__ import annotations

import atexit
import base64
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import NamedTuple

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from natsserver import HOST, free_port, port_open  # one port picker for every suite

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]  # dataplane/tests/support -> repo root
NODE_ID = 1

# librdkafka's own log lines ("Connect to ... failed") go here instead of stderr
_CLIENT_LOG = logging.getLogger("cmq.tests.kafka.client")


class Record(NamedTuple):
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes | None]  # the last value wins when a header repeats
    partition: int
    offset: int


# ---------------------------------------------------------------------------
# the installation
# ---------------------------------------------------------------------------

_HOME: Path | None = None


def kafka_home() -> Path:
    """The Kafka install dir: $KAFKA_HOME, else scripts/install-kafka.sh's last line."""
    global _HOME
    if _HOME:
        return _HOME
    env = os.environ.get("KAFKA_HOME")
    if env:
        home = Path(env)
    else:
        script = REPO_ROOT / "scripts" / "install-kafka.sh"
        try:
            out = subprocess.run([str(script)], check=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, timeout=900, text=True)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"{script} failed:\n{e.stderr}") from None
        lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
        home = Path(lines[-1]) if lines else Path("/nonexistent")
    if not any((home / "lib").glob("kafka_2.13-*.jar")):
        raise RuntimeError(f"no Kafka install at {home} (expected lib/kafka_2.13-*.jar)")
    _HOME = home
    os.environ["KAFKA_HOME"] = str(home)  # child processes / later calls agree
    return home


def java_bin() -> str:
    java_home = os.environ.get("JAVA_HOME")
    return str(Path(java_home) / "bin" / "java") if java_home else "java"


def new_cluster_id() -> str:
    """What `kafka-storage.sh random-uuid` prints (base64url of 16 random bytes, no
    padding, never starting with '-'), without starting a JVM for it."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


# ---------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------

_LIVE: list["KafkaBroker"] = []


@atexit.register
def _kill_leftovers() -> None:
    for b in list(_LIVE):
        try:
            b.kill()
        except Exception:
            pass


class KafkaBroker:
    """One KRaft node (process.roles=broker,controller) bound to 127.0.0.1.

    Ports, data dir and cluster id are fixed at construction, so ``start()`` after
    ``stop()`` or ``kill()`` brings back the same broker with its topics and messages.
    Without ``workdir`` a temp dir is made (and removed by ``close()``); the broker log
    ``<name>.log`` lives there too.
    """

    def __init__(self, workdir: os.PathLike | str | None = None, name: str = "kafka", *,
                 port: int | None = None, controller_port: int | None = None,
                 heap: str = "512m", extra_properties: dict[str, str] | None = None):
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cmq-kafka-"))
        self.name = name
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.heap = heap
        self.extra_properties = dict(extra_properties or {})
        self.cluster_id = new_cluster_id()
        self.data_dir = self.workdir / f"{name}-data"
        self.conf_path = self.workdir / f"{name}.properties"
        self.log_path = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def __repr__(self) -> str:
        state = "up" if self.alive() else "down"
        return f"<KafkaBroker {self.name} {self.bootstrap} {state}>"

    def __enter__(self) -> "KafkaBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- configuration -----------------------------------------------------
    def properties(self) -> dict[str, str]:
        props = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            "controller.quorum.voters": f"{NODE_ID}@{HOST}:{self.controller_port}",
            "listeners": (f"PLAINTEXT://{HOST}:{self.port},"
                          f"CONTROLLER://{HOST}:{self.controller_port}"),
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "auto.create.topics.enable": "true",
            "num.partitions": "3",
            "default.replication.factor": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",  # 50 by default: slow first group join
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "3",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # after kill -9 the restarted node may register only once the controller has
            # expired the old incarnation's session: 9 s by default
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            "num.network.threads": "2",
            "num.io.threads": "2",
        }
        props.update(self.extra_properties)
        return props

    def _write_conf(self) -> None:
        self.conf_path.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))

    def _java(self, main: str, *args: str, heap: str | None = None) -> list[str]:
        home = kafka_home()
        # C1 only: ~0.7 s faster to start and less memory; plenty fast for test traffic
        cmd = [java_bin(), f"-Xmx{heap or self.heap}", "-Xms64m", "-XX:+UseSerialGC",
               "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]
        log4j = home / "config" / "log4j2.properties"
        if log4j.exists():
            cmd.append(f"-Dlog4j2.configurationFile={log4j}")
        return cmd + ["-cp", str(home / "lib" / "*"), main, *args]

    def _format(self) -> None:
        """kafka-storage format, once: Kafka 4 refuses to start on an unformatted dir."""
        if (self.data_dir / "meta.properties").exists():
            return
        cmd = self._java("kafka.tools.StorageTool", "format", "-t", self.cluster_id,
                         "-c", str(self.conf_path), heap="256m")
        self._append_log(f"format: {' '.join(cmd)}")
        with open(self.log_path, "ab") as log:
            res = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"formatting {self.data_dir} failed (exit {res.returncode})\n"
                               f"--- log ---\n{self.log_digest()}")

    # -- lifecycle ---------------------------------------------------------
    def launch(self) -> "KafkaBroker":
        """Start the JVM (formatting the data dir first if needed) without waiting."""
        if self.alive():
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_conf()
        self._format()
        cmd = self._java("kafka.Kafka", str(self.conf_path))
        self._append_log(f"start: {' '.join(cmd)}")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        if self not in _LIVE:
            _LIVE.append(self)
        return self

    def start(self, timeout: float = 90.0) -> "KafkaBroker":
        self.launch()
        try:
            self.wait_ready(timeout)
        except Exception:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until a metadata request lists this broker, every partition of every topic has a
        leader (after a restart the old topics must be writable again) and the group
        coordinator answers (which creates ``__consumer_offsets`` now rather than in a
        test's first ``consume``, where librdkafka's retries would add about 3 s)."""
        deadline = time.monotonic() + timeout
        problem = "listener not open"
        admin = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}\n"
                                   f"--- log ---\n{self.log_digest()}")
            if port_open(self.port):
                admin = admin or self.admin()
                problem = self._not_ready_reason(admin)
                if problem is None:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s: {problem}\n"
                           f"--- log ---\n{self.log_digest()}")

    @staticmethod
    def _not_ready_reason(admin: AdminClient) -> str | None:
        try:
            md = admin.list_topics(timeout=2)
        except KafkaException as e:
            return f"metadata request failed: {e}"
        if NODE_ID not in md.brokers:
            return f"broker {NODE_ID} not in metadata (brokers: {sorted(md.brokers)})"
        for t in md.topics.values():
            if t.error is not None:
                return f"topic {t.topic}: {t.error}"
            for p in t.partitions.values():
                if p.error is not None or p.leader != NODE_ID:
                    return f"{t.topic}[{p.id}] has no leader yet"
        probe = "cmq-readiness-probe"
        try:
            admin.describe_consumer_groups([probe])[probe].result(timeout=5)
        except Exception as e:  # KafkaException, or a timeout from the future
            return f"group coordinator not available: {e}"
        return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (a clean shutdown), then SIGKILL after ``timeout``. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._closed()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9: no flush, no controlled shutdown."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._closed()

    def restart(self, timeout: float = 90.0, graceful: bool = True) -> "KafkaBroker":
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start(timeout)

    def close(self) -> None:
        """Stop the broker; remove the workdir when this object made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _closed(self) -> None:
        if self in _LIVE:
            _LIVE.remove(self)
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- clients -----------------------------------------------------------
    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap, "logger": _CLIENT_LOG})

    def topics(self) -> list[str]:
        """Topic names, internal ones (``__consumer_offsets``) left out."""
        md = self.admin().list_topics(timeout=10)
        return sorted(t for t in md.topics if not t.startswith("__"))

    def create_topic(self, name: str, partitions: int = 3, timeout: float = 30.0) -> None:
        """Create a topic (replication factor 1) and wait until every partition has a leader."""
        admin = self.admin()
        futures = admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=timeout)
        futures[name].result(timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            t = admin.list_topics(name, timeout=5).topics.get(name)
            if t is not None and t.error is None and len(t.partitions) == partitions and all(
                    p.error is None and p.leader == NODE_ID for p in t.partitions.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {name} has no leaders after {timeout}s")
            time.sleep(0.05)

    def consume(self, topic: str, count: int, timeout: float = 30.0) -> list[Record]:
        """Up to ``count`` records of ``topic`` from the beginning, read by a new consumer
        group; fewer when ``timeout`` runs out first (assert on the length)."""
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": f"cmq-test-{uuid.uuid4().hex[:12]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "logger": _CLIENT_LOG,
        })
        out: list[Record] = []
        deadline = time.monotonic() + timeout
        try:
            consumer.subscribe([topic])
            while len(out) < count and time.monotonic() < deadline:
                msg = consumer.poll(min(0.5, max(0.01, deadline - time.monotonic())))
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() in (KafkaError._PARTITION_EOF,
                                      KafkaError.UNKNOWN_TOPIC_OR_PART):
                        continue  # the topic may appear later
                    raise KafkaException(err)
                out.append(Record(msg.key(), msg.value(), dict(msg.headers() or []),
                                  msg.partition(), msg.offset()))
        finally:
            consumer.close()
        return out

    # -- logs --------------------------------------------------------------
    def _append_log(self, line: str) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as f:
            f.write(f"=== {time.strftime('%H:%M:%S')} {line}\n".encode())

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def log_digest(self, problems: int = 20, last: int = 20) -> str:
        """Errors and their causes (the last ``problems`` of them) plus the last ``last``
        lines: the reason a start failed is often mid-log, above a shutdown sequence."""
        all_lines = self.read_log().splitlines()
        bad = [ln for ln in all_lines
               if " ERROR " in ln or " FATAL " in ln or ln.startswith("Caused by:")]
        out = bad[-problems:]
        out += [ln for ln in all_lines[-last:] if ln not in out]
        return "\n".join(out)
