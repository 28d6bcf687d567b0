"""The join table's changelog, written from outside a worker: how a rebuilt join state reaches the
workers (genealogy.join_recovery).

Faust restores the ``station-join`` table of a partition by reading its changelog topic,
``<app_id>-station-join-changelog``: records keyed by the JSON of the table key, valued by the
JSON of the piece (Faust's default serializers for a table without types), on the partition of
the capture message that wrote them, which is the station's partition (capture is keyed by
station and hashed like Java clients, murmur2).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiokafka.partitioner import murmur2
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from genealogy.domain.join import SEP
from genealogy.settings import Settings

TABLE = "station-join"


def topic(settings: Settings) -> str:
    return f"{settings.app_id}-{TABLE}-changelog"


def exists(settings: Settings, timeout: float = 10.0) -> bool:
    return topic(settings) in AdminClient(settings.kafka_config).list_topics(timeout=timeout).topics


def partition_of(station: str, partitions: int) -> int:
    """The capture partition of a station (its key hashed as the capture producers do)."""
    return (murmur2(station.encode()) & 0x7FFFFFFF) % partitions


def station_of(key: str) -> str:
    """A table key is a station (its meta record) or ``station<SEP>s|p<SEP>...`` (a slot, a pending bucket)."""
    return key.split(SEP, 1)[0]


def write(settings: Settings, table: Mapping[str, object], timeout: float = 60.0) -> int:
    """Create the changelog topic (compacted, like Faust's) and write every table entry to it. Returns
    the number of records written."""
    admin = AdminClient(settings.kafka_config)
    futures = admin.create_topics([NewTopic(topic(settings), num_partitions=settings.partitions, replication_factor=1,
                                            config={"cleanup.policy": "compact"})])
    for future in futures.values():
        try:
            future.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    # Not idempotent, one request in flight: in order through retries on Tansu (producers.publisher says why).
    producer = Producer({**settings.kafka_config, "enable.idempotence": False, "acks": "all",
                         "max.in.flight.requests.per.connection": 1, "linger.ms": 5})
    failed: list[str] = []
    for key, value in table.items():
        while True:
            try:
                producer.produce(topic(settings), key=json.dumps(key).encode(), value=json.dumps(value).encode(),
                                 partition=partition_of(station_of(key), settings.partitions),
                                 on_delivery=lambda err, msg: failed.append(str(err)) if err else None)
                break
            except BufferError:  # librdkafka's queue is full: let it send
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(timeout) or failed:
        raise KafkaException(f"join state not written to {topic(settings)}: {failed[:1] or 'timeout'}")
    return len(table)
