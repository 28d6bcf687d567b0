"""Kafka -> ClickHouse: batched inserts, offsets committed only after the rows are in.

A crash between insert and commit redelivers the batch; rows carry
deterministic ids, so the store's dedup makes that invisible to answers.
A message the sink cannot decode becomes a dead-letter row, never a stop.

What the stream derived arrives as columns (schemas.DERIVED) and goes into
ClickHouse as columns: at serial volume the sink handles a few edges per
capture event, and per-row Python objects made it the busiest process.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from datetime import datetime, timezone

from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from tenacity import Retrying, retry_if_exception_type, wait_exponential

from genealogy import schemas
from genealogy.settings import Settings
from genealogy.sinks import epcis_store
from genealogy.sinks.writer import CAPTURE_COLUMNS, DEAD_LETTER_COLUMNS, MAX_MS, Writer

log = logging.getLogger(__name__)

# Table <- group of a DERIVED message.
# Corrections first: the writer then leaves out rows they retract that arrive in the same flush.
DERIVED_TABLES = {"retractions": "corrections", "units": "units", "edges": "edges", "facts": "station_facts",
                  "unpacked": "unpacked", "removals": "removals"}


def ts(ms: int) -> datetime:
    """Event time for a DateTime64 column; impossible times (already dead-lettered upstream) clamp to the epoch."""
    return datetime.fromtimestamp(ms / 1000 if 0 <= ms < MAX_MS else 0, tz=timezone.utc)


class Rows:
    """What the next flush inserts: derived groups as columns, capture and dead letters as rows."""

    def __init__(self) -> None:
        self.derived = {group: {name: [] for name in schemas.COLUMNS[group]} for group in DERIVED_TABLES}
        self.derived_rows = 0
        self.capture: list[list] = []
        self.dead: list[list] = []
        self.epcis: list[list] = []

    def add_derived(self, record: dict) -> None:
        """One decoded DERIVED record; checked whole before anything is added, so a corrupt one adds nothing."""
        record = {group: record.get(group) or schemas.columns([], group) for group in DERIVED_TABLES}  # older versions lack groups
        counts = {group: schemas.column_lengths(record, group) for group in DERIVED_TABLES}
        for group, columns in self.derived.items():
            for name, column in columns.items():
                column.extend(record[group][name])
        self.derived_rows += sum(counts.values())

    def __len__(self) -> int:
        return self.derived_rows + len(self.capture) + len(self.dead) + len(self.epcis)

    def insert_into(self, writer: Writer) -> None:
        # Parents before children in the dependency sense: units and edges are what answers read. One batch:
        # the containment intervals of what the flush packed, unpacked or took back are brought up to date
        # once, after its facts are in and before the offsets are committed (Writer.batch).
        with writer.batch():
            for group, table in DERIVED_TABLES.items():
                writer.insert_derived(table, self.derived[group])
        writer.insert("capture_batches", CAPTURE_COLUMNS, self.capture)
        writer.insert("dead_letters", DEAD_LETTER_COLUMNS, self.dead)
        if self.epcis:  # EPCIS events (sinks.epcis_store); epoch-ms times go in as DateTime64 ticks
            writer.insert("epcis_events", epcis_store.COLUMNS, self.epcis)


class KafkaSink:
    def __init__(self, settings: Settings, writer: Writer, serde: schemas.Serde):
        self.settings = settings
        self.writer = writer
        self.serde = serde
        self.consumer = Consumer({
            **settings.kafka_config,
            "group.id": settings.sink_group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # As the workers: librdkafka's 45 s default made the sink join its group 23 s after it
            # started on Tansu (the first join completes after half the session timeout there).
            "session.timeout.ms": int(settings.session_timeout_s * 1000),
            "heartbeat.interval.ms": int(settings.worker_heartbeat_s * 1000),
            # Tansu holds a fetch for its whole wait (librdkafka's default 500 ms) even when data is there.
            "fetch.wait.max.ms": settings.fetch_wait_ms,
        })
        self.assigned = threading.Event()  # set once the group has given the sink its partitions
        self.topics = [settings.topic_edges, settings.topic_dead_letters, settings.topic_capture, settings.topic_epcis]
        self.flushed_rows = 0
        self.flushes = 0
        self.last_flush_s = 0.0
        self.failing: str | None = None  # why the last insert failed, while the sink retries it
        self.retries = 0

    def run(self, stop: threading.Event) -> None:
        # A store from before held_intervals gets the intervals of what it holds, before anything new comes.
        self.writer.backfill_held()
        self.consumer.subscribe(self.topics, on_assign=lambda consumer, partitions: self.assigned.set())
        rows = Rows()
        last = time.monotonic()
        try:
            while not stop.is_set():
                for message in self.consumer.consume(num_messages=2000, timeout=self.settings.sink_flush_s / 2):
                    self._route(message, rows)
                if len(rows) >= self.settings.sink_batch_rows or (rows and time.monotonic() - last >= self.settings.sink_flush_s):
                    if not self._flush(rows, stop):
                        break  # stopped while ClickHouse was refusing: nothing committed, Kafka redelivers
                    rows = Rows()
                    last = time.monotonic()
            else:
                if rows:
                    self._flush(rows, stop)
        finally:
            self.consumer.close()

    def _flush(self, rows: Rows, stop: threading.Event) -> bool:
        """Insert, then commit. A failed insert is retried with backoff, offsets uncommitted, until it goes
        in or the sink is stopped (False): nothing Kafka was told is stored can be lost."""
        started = time.monotonic()
        retrying = Retrying(retry=retry_if_exception_type(Exception),
                            wait=wait_exponential(multiplier=0.2, max=self.settings.sink_retry_max_s),
                            stop=lambda state: stop.is_set(), sleep=stop.wait,
                            before_sleep=self._failed, reraise=True)
        try:
            retrying(rows.insert_into, self.writer)
        except Exception:
            if stop.is_set():
                return False
            raise
        self.failing = None
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            # The rows are in; uncommitted they come again (a rebalance while ClickHouse was down) and the
            # store's deterministic ids make the second insert invisible.
            log.warning("offset commit failed, the batch will be redelivered: %s", exc)
        self.flushed_rows += len(rows)
        self.flushes += 1
        self.last_flush_s = time.monotonic() - started
        return True

    def _failed(self, state) -> None:
        exc = state.outcome.exception()
        self.failing = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        self.retries += 1
        log.warning("ClickHouse insert failed (try %d), retrying, offsets not committed: %s", state.attempt_number, self.failing)

    def _route(self, message: Message, rows: Rows) -> None:
        if message.error():
            if message.error().code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", message.error())
            return
        topic = message.topic()
        try:
            if topic == self.settings.topic_edges:
                name, batch = self.serde.decode(message.value(), expect=(schemas.DERIVED, schemas.EDGES))
                if name == schemas.EDGES:  # row by row, from a worker of an earlier version
                    batch = {group: schemas.columns(batch.get(group) or [], group) for group in DERIVED_TABLES}
                rows.add_derived(batch)
            elif topic == self.settings.topic_dead_letters:
                _, d = self.serde.decode(message.value(), expect=schemas.DEAD_LETTER)
                rows.dead.append([d["dead_letter_id"], d["stage"], d["reason"], d["topic"], d["partition"], d["offset"],
                                  d["source"], d["event_id"], d["event_kind"], d["payload"], ts(d["occurred_ms"])])
            elif topic == self.settings.topic_epcis:
                rows.epcis.append(epcis_store.row(message.key(), message.value()))
            else:
                # Raw, undecoded: the stream validates capture; here it is only kept, as it arrived.
                key = message.key() or b""
                rows.capture.append([key.decode(errors="replace"), ts(message.timestamp()[1]), topic,
                                     message.partition(), message.offset(), message.value() or b""])
        except (schemas.DecodeError, epcis_store.BadEpcisMessage) as exc:
            rows.dead.append(self._sink_dead_letter(message, str(exc)))

    @staticmethod
    def _sink_dead_letter(message: Message, reason: str) -> list:
        ident = hashlib.blake2b(f"{message.topic()}:{message.partition()}:{message.offset()}:".encode(), digest_size=12).hexdigest()
        key = message.key() or b""
        return [ident, "sink", reason, message.topic(), message.partition(), message.offset(), key.decode(errors="replace"),
                "", "", message.value() or b"", datetime.now(tz=timezone.utc)]
