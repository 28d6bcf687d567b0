"""Capture batches -> Kafka with an idempotent confluent-kafka producer.

Keyed by station (the batch source), so a station's events stay in one
partition and in order, which is what the temporal join is partitioned on.
Every delivery is confirmed; a failed delivery is an error, not a log line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from confluent_kafka import KafkaException, Producer

from genealogy import schemas
from genealogy.settings import Settings


class DeliveryFailed(RuntimeError):
    pass


def producer_config(settings: Settings) -> dict:
    """Every capture producer's configuration (this publisher and the spool's forwarder).

    Against Kafka: idempotent. Against the embedded Tansu broker: not, and one request in flight per
    connection instead, which keeps a partition in order through retries. Tansu 0.6 advances the
    producer's sequence and the partition's watermark before it writes the batch; a broker killed
    (or cut off from its storage) in between answers the retry with DUPLICATE_SEQUENCE_NUMBER, which
    an idempotent client counts as delivered: acknowledged and lost (seen in
    tests/integration/test_durability.py: offsets 37-38 of a partition never written). Without
    idempotence the retry is written again: at least once, and duplicates fold downstream."""
    delivery = ({"enable.idempotence": False, "max.in.flight.requests.per.connection": 1} if settings.is_tansu
                else {"enable.idempotence": True})
    return {
        **settings.kafka_config,
        **delivery,
        "acks": "all",
        # Java-compatible key hashing: Faust (aiokafka) and Kafka Streams place a key on the same
        # partition, which the station-keyed join state depends on. librdkafka's default does not.
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "batch.num.messages": 10_000,
    }


class Publisher:
    def __init__(self, settings: Settings, serde: schemas.Serde | None = None):
        self.settings = settings
        self.serde = serde or schemas.serde_for(settings)
        self.producer = Producer(producer_config(settings))
        self.delivered = 0
        self.failed: list[str] = []

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self.failed.append(f"{msg.topic()} key={msg.key()!r}: {err}")
        else:
            self.delivered += 1

    def send_raw(self, key: bytes, value: bytes, topic: str | None = None) -> None:
        while True:
            try:
                self.producer.produce(topic or self.settings.topic_capture, key=key, value=value, on_delivery=self._on_delivery)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)

    def publish(self, batches: Iterable[dict], progress: Callable[[int], None] | None = None) -> int:
        """Send every batch and wait for all acks; returns the number of events sent."""
        events = 0
        for batch in batches:
            self.send_raw(batch["source"].encode(), self.serde.encode(schemas.CAPTURE, batch))
            events += len(batch["events"])
            if progress:
                progress(len(batch["events"]))
        self.flush()
        return events

    def flush(self, timeout: float = 60.0) -> None:
        remaining = self.producer.flush(timeout)
        if remaining:
            raise DeliveryFailed(f"{remaining} messages still undelivered after {timeout:.0f} s")
        if self.failed:
            raise DeliveryFailed(f"{len(self.failed)} deliveries failed, first: {self.failed[0]}")


def check_broker(settings: Settings, timeout: float = 5.0) -> None:
    producer = Producer(settings.kafka_config)
    try:
        producer.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise DeliveryFailed(f"no Kafka broker at {settings.kafka_bootstrap}: {exc}") from None
