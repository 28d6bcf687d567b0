"""Consumer lag against the real embedded broker, including the tail of a feed sent as one record batch."""

import socket
import subprocess

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from genealogy import kafka
from genealogy.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A bare broker for lag arithmetic: its storage does not matter here.
    settings = Settings(data_dir=tmp_path_factory.mktemp("lag"), broker_port=port, partitions=2, broker_storage="memory")
    with open(settings.data_dir / "broker.log", "ab") as log:
        proc = subprocess.Popen(kafka.broker_argv(settings), stdout=log, stderr=subprocess.STDOUT)
    kafka.wait_for_port("127.0.0.1", port, 20.0, proc)
    kafka.ensure_topics(settings)
    yield settings
    proc.kill()
    proc.wait()


def commit(settings: Settings, group: str, offsets: dict[int, int]) -> None:
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(settings.topic_capture, p, o) for p, o in offsets.items()], asynchronous=False)
    c.close()


def test_lag_counts_every_message_of_a_batched_feed(broker):
    # One linger window: the broker stores these as one record batch per partition.
    producer = Producer({"bootstrap.servers": broker.kafka_bootstrap, "linger.ms": 200, "enable.idempotence": True})
    for i in range(1_000):
        producer.produce(broker.topic_capture, b"x" * 50, partition=i % 2)
    producer.flush()

    assert kafka.lag(broker, "never-consumed", [broker.topic_capture]) == {broker.topic_capture: 1_000}
    commit(broker, "half-way", {0: 200, 1: 300})
    assert kafka.lag(broker, "half-way", [broker.topic_capture]) == {broker.topic_capture: 500}
    # A worker reporting more handled than its group committed (Faust's commit can stall).
    handled = {broker.topic_capture: {0: 450, 1: 100}}
    assert kafka.lag(broker, "half-way", [broker.topic_capture], handled=handled) == {broker.topic_capture: 250}
    commit(broker, "done", {0: 500, 1: 500})
    assert kafka.lag(broker, "done", [broker.topic_capture]) == {broker.topic_capture: 0}
    ends = kafka.end_offsets(broker, [TopicPartition(broker.topic_capture, p) for p in (0, 1)])
    assert ends == {(broker.topic_capture, 0): 500, (broker.topic_capture, 1): 500}


def test_worker_table_recovery_reads_the_changelogs_true_end(broker):
    """Faust restores a table from its changelog up to the highwaters its consumer reports; on
    Tansu the broker's mark stops at the last record batch's base, so workers read it from the log."""
    import asyncio

    from aiokafka import AIOKafkaProducer
    from faust.transport.drivers import aiokafka as faust_aiokafka
    from faust.types import TP

    from genealogy.streams.faust_patches import read_highwaters_from_the_log

    async def produce(topic: str) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.kafka_bootstrap)  # aiokafka's default batching
        await producer.start()
        try:
            await asyncio.gather(*[await producer.send(topic, b"x" * 100, partition=0) for _ in range(500)])
        finally:
            await producer.stop()

    asyncio.run(produce(broker.topic_edges))

    original = faust_aiokafka.Consumer.highwaters
    try:
        read_highwaters_from_the_log(broker)
        tps = [TP(broker.topic_edges, 0), TP(broker.topic_edges, 1)]
        assert asyncio.run(faust_aiokafka.Consumer.highwaters(None, *tps)) == {tps[0]: 500, tps[1]: 0}
    finally:
        faust_aiokafka.Consumer.highwaters = original
