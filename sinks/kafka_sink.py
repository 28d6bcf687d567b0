"""Kafka -> ClickHouse: batched inserts, offsets committed only after the rows are in.

A crash between insert and commit redelivers the batch; rows carry
deterministic ids, so the store's dedup makes that invisible to answers.
A message the sink cannot decode becomes a dead-letter row, never a stop.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from datetime import datetime, timezone

from confluent_kafka import Consumer, KafkaError, Message

import schemas
from genealogy.settings import Settings
from sinks.store import CAPTURE_COLUMNS, DEAD_LETTER_COLUMNS, EDGE_COLUMNS, FACT_COLUMNS, UNIT_COLUMNS, Store

log = logging.getLogger(__name__)


MAX_MS = 7_258_118_400_000  # 2200-01-01; beyond DateTime64's comfortable range


def ts(ms: int) -> datetime:
    """Event time for a DateTime64 column; impossible times (already dead-lettered upstream) clamp to the epoch."""
    return datetime.fromtimestamp(ms / 1000 if 0 <= ms < MAX_MS else 0, tz=timezone.utc)


class Rows:
    """Rows accumulated for the next flush, one list per table."""

    def __init__(self) -> None:
        self.edges: list[list] = []
        self.units: list[list] = []
        self.facts: list[list] = []
        self.capture: list[list] = []
        self.dead: list[list] = []

    def __len__(self) -> int:
        return len(self.edges) + len(self.units) + len(self.facts) + len(self.capture) + len(self.dead)


class KafkaSink:
    def __init__(self, settings: Settings, store: Store, serde: schemas.Serde):
        self.settings = settings
        self.store = store
        self.serde = serde
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": settings.sink_group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        })
        self.topics = [settings.topic_edges, settings.topic_dead_letters, settings.topic_capture]
        self.flushed_rows = 0
        self.flushes = 0
        self.last_flush_s = 0.0

    def run(self, stop: threading.Event) -> None:
        self.consumer.subscribe(self.topics)
        rows = Rows()
        last = time.monotonic()
        try:
            while not stop.is_set():
                for message in self.consumer.consume(num_messages=2000, timeout=self.settings.sink_flush_s / 2):
                    self._route(message, rows)
                if len(rows) >= self.settings.sink_batch_rows or (rows and time.monotonic() - last >= self.settings.sink_flush_s):
                    self._flush(rows)
                    rows = Rows()
                    last = time.monotonic()
            if rows:
                self._flush(rows)
        finally:
            self.consumer.close()

    def _flush(self, rows: Rows) -> None:
        started = time.monotonic()
        # Parents before children in the dependency sense: units and edges are what answers read.
        self.store.insert("units", UNIT_COLUMNS, rows.units)
        self.store.insert("edges", EDGE_COLUMNS, rows.edges)
        self.store.insert("station_facts", FACT_COLUMNS, rows.facts)
        self.store.insert("capture_batches", CAPTURE_COLUMNS, rows.capture)
        self.store.insert("dead_letters", DEAD_LETTER_COLUMNS, rows.dead)
        self.consumer.commit(asynchronous=False)
        self.flushed_rows += len(rows)
        self.flushes += 1
        self.last_flush_s = time.monotonic() - started

    def _route(self, message: Message, rows: Rows) -> None:
        if message.error():
            if message.error().code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", message.error())
            return
        topic = message.topic()
        try:
            if topic == self.settings.topic_edges:
                _, batch = self.serde.decode(message.value(), expect=schemas.EDGES)
                rows.edges.extend([e["edge_id"], e["child"], e["parent"], e["relation"], ts(e["event_ms"]), e["station"],
                                   e["operator"], e["work_order"], e["parent_lot"], e["quantity"], e["source_event"]]
                                  for e in batch["edges"])
                rows.units.extend([u["unit"], u["production_lot"], u["work_order"], u["station"], u["operator"],
                                   ts(u["event_ms"]), u["event_id"]] for u in batch["units"])
                rows.facts.extend([f["event_id"], f["kind"], f["station"], ts(f["event_ms"]), f["subject"], f["detail"],
                                   f["reason"]] for f in batch["facts"])
            elif topic == self.settings.topic_dead_letters:
                _, d = self.serde.decode(message.value(), expect=schemas.DEAD_LETTER)
                rows.dead.append([d["dead_letter_id"], d["stage"], d["reason"], d["topic"], d["partition"], d["offset"],
                                  d["source"], d["event_id"], d["event_kind"], d["payload"], ts(d["occurred_ms"])])
            else:
                # Raw, undecoded: the stream validates capture; here it is only kept, as it arrived.
                key = message.key() or b""
                rows.capture.append([key.decode(errors="replace"), ts(message.timestamp()[1]), topic,
                                     message.partition(), message.offset(), message.value() or b""])
        except schemas.DecodeError as exc:
            rows.dead.append(self._sink_dead_letter(message, str(exc)))

    @staticmethod
    def _sink_dead_letter(message: Message, reason: str) -> list:
        ident = hashlib.blake2b(f"{message.topic()}:{message.partition()}:{message.offset()}:".encode(), digest_size=12).hexdigest()
        key = message.key() or b""
        return [ident, "sink", reason, message.topic(), message.partition(), message.offset(), key.decode(errors="replace"),
                "", "", message.value() or b"", datetime.now(tz=timezone.utc)]
