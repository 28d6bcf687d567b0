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
    commit(broker, "done", {0: 500, 1: 500})
    assert kafka.lag(broker, "done", [broker.topic_capture]) == {broker.topic_capture: 0}
    ends = kafka.end_offsets(broker, [TopicPartition(broker.topic_capture, p) for p in (0, 1)])
    assert ends == {(broker.topic_capture, 0): 500, (broker.topic_capture, 1): 500}
