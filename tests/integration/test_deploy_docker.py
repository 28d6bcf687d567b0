"""The pipeline against a real Kafka (KRaft) and a real ClickHouse server, as deploy/ runs it.

testcontainers starts the two servers; the query service (+ sink) and one Faust
worker run from this checkout as subprocesses, configured only through
GENEALOGY_* variables, exactly as the compose services are. Skipped, with the
reason, wherever no Docker engine is reachable.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.docker

try:
    import docker

    docker.from_env().ping()
except Exception as exc:  # no SDK, no socket, daemon down: all mean the same here
    pytest.skip(f"no Docker engine reachable: {type(exc).__name__}: {exc}", allow_module_level=True)

try:  # testcontainers >= 4.13 moved the modules; the old paths still work but warn
    from testcontainers.community.clickhouse import ClickHouseContainer
    from testcontainers.community.kafka import KafkaContainer
except ImportError:
    from testcontainers.clickhouse import ClickHouseContainer
    from testcontainers.kafka import KafkaContainer

from genealogy import auth, kafka
from genealogy.client import wait_drained
from genealogy.domain.recall import recall
from genealogy.settings import Settings
from genealogy.client import ServiceClient
from genealogy.producers.publisher import Publisher
from genealogy.producers.simulator import Plant
from genealogy.sinks.connection import Connection
from genealogy.sinks.read_model import ReadModel


KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
CLICKHOUSE_IMAGE = "clickhouse/clickhouse-server:25.8"
CH_USER, CH_PASSWORD, CH_DB = "genealogy", "genealogy", "genealogy"


@pytest.fixture(scope="module")
def servers():
    """(bootstrap servers, ClickHouse DSN) of freshly started containers."""
    broker = KafkaContainer(KAFKA_IMAGE).with_kraft()
    clickhouse = ClickHouseContainer(CLICKHOUSE_IMAGE, username=CH_USER, password=CH_PASSWORD, dbname=CH_DB)
    try:
        broker.start(timeout=180)
        clickhouse.start()
        # The container helper's URL is for the native protocol (9000); the store speaks HTTP.
        dsn = (f"http://{CH_USER}:{CH_PASSWORD}@{clickhouse.get_container_host_ip()}:"
               f"{clickhouse.get_exposed_port(8123)}/{CH_DB}")
        yield broker.get_bootstrap_server(), dsn
    finally:
        for container in (clickhouse, broker):
            try:
                container.stop()
            except Exception:
                pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


class Processes:
    """Pipeline processes of this checkout, started like the compose services."""

    def __init__(self, settings: Settings, log_dir: Path):
        self.settings = settings
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, *argv: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=self.settings.child_env(),
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.procs[name]

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with code {proc.returncode}:\n{self.logs(name)}")

    def logs(self, name: str) -> str:
        return _tail(self.log_dir / f"{name}.log")

    def stop(self) -> None:
        for name in [n for n in self.procs if n.startswith("worker")] + ["service"]:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_recall_through_real_kafka_and_clickhouse(servers, tmp_path):
    bootstrap, dsn = servers
    settings = Settings(bootstrap_servers=bootstrap, clickhouse_dsn=dsn, data_dir=tmp_path / "data",
                        http_host="127.0.0.1", http_port=_free_port(), partitions=4, idle_flush_s=1.0)
    kafka.ensure_topics(settings, timeout=60)
    auth.ensure_admin_token(settings)  # as `genealogy token bootstrap` in the compose service; the client reads it

    procs = Processes(settings, tmp_path)
    try:
        service = procs.spawn("service", "-m", "genealogy.cli", "serve")
        kafka.wait_for_port(settings.http_host, settings.http_port, 90.0, service)
        # --without-web: the `faust worker` command turns Faust's web server on (port 6066)
        # whatever the app says, and that port may be taken on a shared host.
        procs.spawn("worker-1", "-m", "genealogy.cli", "worker")

        # streams.app marks a worker ready once it holds its partitions.
        run_dir = settings.data_dir / "run"
        deadline = time.monotonic() + 120
        while not list(run_dir.glob("worker-*.ready")):
            procs.check_alive()
            if time.monotonic() > deadline:
                pytest.fail(f"worker not ready after 120 s:\n{procs.logs('worker-1')}")
            time.sleep(0.5)

        plant = Plant(units=300, lot_size=100, faulty_units=14).generate()
        sent = Publisher(settings).publish(plant.batches())
        assert sent > 0

        client = ServiceClient.for_settings(settings)
        try:
            status = wait_drained(client, settle_s=settings.idle_flush_s * 2 + 3, timeout=300)
        except TimeoutError:
            procs.check_alive()
            pytest.fail(f"pipeline did not drain:\nservice:\n{procs.logs('service')}\nworker:\n{procs.logs('worker-1')}")
        procs.check_alive()
        assert status["store"] == "clickhouse server"
        assert status["counts"]["units"] > 0, status

        # Straight from the ClickHouse server, not through the service.
        connection = Connection(dsn)
        try:
            result = recall(ReadModel(connection), plant.faulty_lot)
        finally:
            connection.close()
        assert len(result.units) == 14, result.as_dict()

        # And the service answers the same over HTTP.
        code, body = client.get("/recall", lot=plant.faulty_lot)
        assert code == 200, body
        assert body["serial_scope"]["count"] == 14
    finally:
        procs.stop()
