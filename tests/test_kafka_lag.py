"""Consumer lag against the real embedded broker, including the tail of a feed sent as one record batch."""

import socket

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
    settings = Settings(data_dir=tmp_path_factory.mktemp("lag"), broker_port=port, partitions=2)
    proc = kafka.start_broker(settings, settings.data_dir / "broker.log")
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


def test_worker_producer_batches_keep_the_brokers_high_watermark_exact(broker):
    """Faust restores a table from its changelog up to the broker's high watermark; on Tansu that
    mark is exact only if every record is its own batch (what the workers' producer is set to)."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    async def produce(topic: str, max_batch_bytes: int) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.kafka_bootstrap, max_batch_size=max_batch_bytes)
        await producer.start()
        try:
            await asyncio.gather(*[await producer.send(topic, b"x" * 100, partition=0) for _ in range(500)])
        finally:
            await producer.stop()

    reader = Consumer({"bootstrap.servers": broker.kafka_bootstrap, "group.id": "watermarks"})
    assert broker.worker_producer_max_batch_bytes == 1 and broker.embedded_broker
    asyncio.run(produce(broker.topic_edges, broker.worker_producer_max_batch_bytes))
    assert reader.get_watermark_offsets(TopicPartition(broker.topic_edges, 0), timeout=5)[1] == 500
    # What the setting works around: with aiokafka's default batching the mark falls short.
    asyncio.run(produce(broker.topic_dead_letters, 16_384))
    assert reader.get_watermark_offsets(TopicPartition(broker.topic_dead_letters, 0), timeout=5)[1] < 500
    reader.close()
