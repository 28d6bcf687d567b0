"""What the worker changes in Faust, applied only by ``streams.app.create_app`` (``apply``).

* On the embedded Tansu broker: table recovery reads each changelog to its true end.
* For any broker: the fetch wait of Faust's consumer (``shorten_fetch_wait``).

Both replace members of faust-streaming's aiokafka driver (``PATCHED``); pyproject pins the
faust-streaming versions this was tested with, and a test asserts that the members still exist.

Tansu 0.6 answers ListOffsets with the base offset of a partition's last record
batch plus one, so a batch of 500 changelog records looks like one. Faust
restores a table by reading its changelog up to that mark (the recovery's
highwaters, from ``Consumer.highwaters``), so a worker taking over a partition
would miss the rest of the last batch: join state written just before the
hand-over. Here Faust's consumer asks for highwaters the way
``genealogy.kafka.end_offsets`` reads them, from the log itself. Before this,
workers on Tansu sent every record in its own batch to keep the mark exact,
which cost about a third of their throughput.

Only the recovery path asks ``highwaters``; against Kafka the two agree, and the
patch is only installed for Tansu (``Settings.is_tansu``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Mapping

from confluent_kafka import KafkaException, TopicPartition
from tenacity import AsyncRetrying, before_sleep_log, retry_if_exception_type, stop_after_delay, wait_exponential
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from genealogy import kafka
from genealogy.settings import Settings

log = logging.getLogger(__name__)

# (class, member) this module replaces.
PATCHED = [(faust_aiokafka.Consumer, "highwaters"),
           (faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer")]
_ORIGINAL = {(cls, name): getattr(cls, name) for cls, name in PATCHED}


def apply(settings: Settings) -> None:
    """Install the patches for these settings (again from the originals: a second app in one process,
    e.g. in a test, gets its own settings, not the first one's)."""
    for (cls, name), original in _ORIGINAL.items():
        setattr(cls, name, original)
    if settings.is_tansu:
        read_highwaters_from_the_log(settings)
    shorten_fetch_wait(settings)


def read_highwaters_from_the_log(settings: Settings) -> None:
    async def highwaters(consumer, *partitions: TP) -> Mapping[TP, int]:
        # A broker just restarted on its object store, on a loaded machine, can take longer than one read's
        # timeout to serve the changelog's tail; Faust's recovery crashes the worker on an exception here.
        tps = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        async for attempt in AsyncRetrying(retry=retry_if_exception_type(KafkaException), stop=stop_after_delay(300),
                                           wait=wait_exponential(max=10), reraise=True,
                                           before_sleep=before_sleep_log(log, logging.WARNING)):
            with attempt:
                ends = await asyncio.get_running_loop().run_in_executor(None, kafka.end_offsets, settings, tps, 30.0)
        return {tp: ends[(tp.topic, tp.partition)] for tp in partitions}

    faust_aiokafka.Consumer.highwaters = highwaters


def shorten_fetch_wait(settings: Settings) -> None:
    """Faust builds its aiokafka consumer with fetch_max_wait_ms=1500, not configurable. Kafka answers a
    fetch once data is there, whatever the wait; Tansu holds it for the wait, and a capture message then
    took 450 ms (p50) to 1.2 s (p99) to reach the worker's agent. aiokafka reads the value when the
    consumer starts, after Faust built it."""
    build = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self, transport):
        consumer = build(self, transport)
        consumer._fetch_max_wait_ms = settings.fetch_wait_ms
        return consumer

    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
