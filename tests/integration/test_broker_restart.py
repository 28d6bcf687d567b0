"""The broker really goes away mid-ingest and comes back: store-and-forward loses nothing.

The embedded stack runs Tansu with ``memory://`` storage, so a restart would lose every
topic; ``test_store_and_forward`` therefore only freezes it (SIGSTOP). Here Tansu keeps its
topics, consumer-group offsets and Faust's changelogs in S3 instead: a moto server in this
process stands in for S3 (Tansu needs conditional PUT, which moto implements), and the
broker is stopped with SIGTERM and started again on the same port and bucket while the
capture side keeps appending to its durable spool.

Tansu's S3 engine is configured by ``--storage-engine s3://<bucket>/`` and the environment
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT, AWS_ALLOW_HTTP.

Needs ``moto[server]`` (and boto3, which it brings); skipped without it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("moto.server", reason="moto[server] is not installed: it provides the local S3 the restartable broker stores its topics in")
boto3 = pytest.importorskip("boto3", reason="boto3 (installed with moto[server]) is needed to create the broker's bucket")

from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from genealogy import schemas  # noqa: E402
from genealogy import kafka  # noqa: E402
from genealogy.kafka import free_port
from genealogy.settings import Settings  # noqa: E402
from genealogy.stack import Stack  # noqa: E402
from genealogy.producers.simulator import Plant  # noqa: E402
from genealogy.producers.spool import Forwarder, Spool  # noqa: E402
from tests.integration.test_store_and_forward import PLANT, check_plant, drained, until  # noqa: E402

pytestmark = pytest.mark.integration

BUCKET = "tansu"


class S3Tansu:
    """Tansu on a fixed loopback port with its storage in an S3 bucket: it can be stopped and started again."""

    def __init__(self, port: int, s3_endpoint: str, log_path: Path):
        self.port = port
        self.log_path = log_path
        self.env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
                        AWS_ENDPOINT=s3_endpoint, AWS_ALLOW_HTTP="true")
        url = f"tcp://127.0.0.1:{port}"
        self.argv = [kafka.tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                     "--storage-engine", f"s3://{BUCKET}/"]
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        kafka.wait_for_port("127.0.0.1", self.port, 30.0, self.proc)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def s3_endpoint():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def broker(s3_endpoint, tmp_path):
    (tmp_path / "logs").mkdir(exist_ok=True)
    broker = S3Tansu(free_port(), s3_endpoint, tmp_path / "logs" / "broker-s3.log")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def stack(broker, tmp_path):
    # bootstrap_servers set: Stack.start creates the topics on our broker and starts no broker of its own.
    settings = Settings(data_dir=tmp_path / "stack", bootstrap_servers=broker.bootstrap, tansu_broker=True, broker_port=broker.port,
                        http_port=free_port(), workers=1, idle_flush_s=1.0, sink_flush_s=0.3)
    stack = Stack(settings)
    stack.start(ready_timeout=180)
    yield stack
    stack.stop()


def committed(settings: Settings, group: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=20)}
    finally:
        consumer.close()


def topic_values(settings: Settings, topic: str, want: set[bytes], timeout: float) -> list[bytes]:
    """Read ``topic`` from the beginning with a fresh group until every value of ``want`` was seen."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"audit-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while not want <= set(seen) and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error():
                seen.append(msg.value())
        return seen
    finally:
        consumer.close()


def log_tails(stack: Stack, broker: S3Tansu, chars: int = 3000) -> str:
    out = []
    for path in [broker.log_path, *sorted(stack.log_dir.glob("*.log"))]:
        text = path.read_text(errors="replace") if path.exists() else ""
        out.append(f"--- {path.name}\n{text[-chars:]}")
    return "\n".join(out)


def test_broker_restart_mid_ingest_loses_nothing(broker, stack, tmp_path):
    """SIGTERM the broker while capture is being forwarded and processed, keep capturing into the
    spool, start the broker again on the same port and storage: every edge lands, exactly."""
    settings = stack.settings
    plant = Plant(**PLANT).generate()
    batches = plant.batches()
    serde = schemas.serde_for(settings)
    encoded = [serde.encode(schemas.CAPTURE, b) for b in batches]
    spool = Spool(tmp_path / "edge.db", default_topic=settings.topic_capture)
    forwarder = Forwarder(settings, spool)
    stop = threading.Event()
    thread = threading.Thread(target=forwarder.run, args=(stop,), daemon=True)
    thread.start()
    latencies: list[tuple[float, float]] = []  # (when, how long) per append

    def append(i: int) -> None:
        started = time.monotonic()
        spool.append(batches[i]["source"].encode(), encoded[i])
        latencies.append((started, time.monotonic() - started))

    third = len(batches) // 3
    feeder_error: list[BaseException] = []

    def feed(indices, pace: float) -> None:
        try:
            for i in indices:
                append(i)
                time.sleep(pace)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            feeder_error.append(exc)

    # The second third is captured while the broker shuts down (Tansu serves open connections
    # for a few seconds after SIGTERM), the last third while it is gone.
    feeder = threading.Thread(target=feed, args=(range(third, 2 * third), 0.1), daemon=True)
    try:
        feed(range(third), 0.01)
        until(lambda: forwarder.delivered > 0, 60, "first acks")
        # The Faust worker has consumed and committed part of the feed: it is mid-stream when the broker goes.
        until(lambda: sum(o for o in committed(settings, settings.app_id, settings.topic_capture).values() if o > 0) > 0,
              120, "the worker's first commit on the capture topic", every=0.5)
        before = committed(settings, settings.app_id, settings.topic_capture)
        feeder.start()
        until(lambda: len(latencies) >= third + 3, 30, "the feeder under way")

        sigterm_at = time.monotonic()
        assert broker.stop(signal.SIGTERM) is not None
        down_at = time.monotonic()
        assert not kafka.port_in_use(broker.port)
        feeder.join(60)
        assert not feeder.is_alive() and not feeder_error, feeder_error
        feed(range(2 * third, len(batches)), 0.05)
        time.sleep(3)  # the broker stays away a little after the last capture
        during = forwarder.backlog()
        up_at = time.monotonic()
        broker.start()

        outage = [took for when, took in latencies if down_at <= when < up_at]
        assert len(outage) >= len(batches) - 2 * third, f"only {len(outage)} appends while the broker was down"
        assert during["rows"] >= len(outage) and during["delivered"] < len(batches), during
        print(f"broker exit took {down_at - sigterm_at:.1f} s after SIGTERM, down {up_at - down_at:.1f} s; "
              f"{during['rows']} rows spooled meanwhile")
        assert not stack.dead_children(), log_tails(stack, broker)

        # Offsets committed before the stop are still there: the broker kept its state.
        after = committed(settings, settings.app_id, settings.topic_capture)
        assert all(after[p] >= before[p] for p in before), (before, after)

        until(lambda: len(spool) == 0, 240, "spool drained after the broker came back", every=0.5)
    finally:
        stop.set()
        thread.join(30)
    assert forwarder.delivered >= len(batches) and spool.high_water() == len(batches)

    # Every batch is on the restarted broker, the ones acked before the stop included.
    stored = topic_values(settings, settings.topic_capture, set(encoded), timeout=120)
    assert set(encoded) <= set(stored), f"{len(set(encoded) - set(stored))} of {len(batches)} batches missing from the broker"

    try:
        check_plant(drained(stack), plant)
    except AssertionError:
        print(log_tails(stack, broker))
        raise
    assert not stack.dead_children(), log_tails(stack, broker)
