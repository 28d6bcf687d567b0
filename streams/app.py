"""The Faust worker, built by a factory: ``create_app(settings)`` returns the app, nothing happens at import.

    genealogy.capture (CaptureBatch, key = station)
        -> derive_edges: decode, validate, join, derive   [table station-join]
            -> genealogy.edges        (DerivedColumns: edges, units, facts)
            -> genealogy.dead-letters (DeadLetter)
    idle_stations (timer): a station that went quiet gets a heartbeat so its
    pending completions resolve without waiting for its next event.
    wake_stalled_partitions (timer): a capture partition that delivered nothing
    for a while is compared with its end (see streams.progress).

Run one or more workers with ``genealogy worker``; they share the consumer group
``<app_id>`` and split the capture partitions between them. The join itself is
``genealogy.domain`` (pure); this module only wires it to Kafka.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import sys
import time
from pathlib import Path
from typing import NamedTuple

import faust
from confluent_kafka import KafkaException, TopicPartition
from faust.types import TP, Message
from tenacity import AsyncRetrying, before_sleep_log, retry_if_exception_type, wait_exponential

from genealogy import kafka, schemas
from genealogy.domain.derive import Derived, Rejected, derive
from genealogy.settings import Settings
from genealogy.streams import changelog, faust_patches
from genealogy.streams.progress import Progress, Verdict

log = logging.getLogger(__name__)

# Skipped capture messages are read back in chunks of this many, to bound memory.
SKIPPED_READ_CHUNK = 1_000


class Activity(NamedTuple):
    """What the idle timer knows of a station; worker memory only, not the table."""
    seen: float        # monotonic time of its last capture batch
    max_ms: int        # newest event time
    pending: int       # completions waiting for the watermark
    partition: int     # capture partition (where its join state lives)


def broker_credentials(settings: Settings) -> faust.auth.Credentials | None:
    """Faust's (aiokafka's) form of the Kafka security settings that librdkafka clients get from
    ``Settings.kafka_config``: TLS through an ``ssl.SSLContext``, SASL through ``SASLCredentials``."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=settings.kafka_ssl_ca_location or None)
        if settings.kafka_ssl_certificate_location:
            context.load_cert_chain(settings.kafka_ssl_certificate_location, settings.kafka_ssl_key_location or None,
                                    settings.kafka_ssl_key_password or None)
    if protocol.startswith("SASL"):
        return faust.auth.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                                          mechanism=settings.kafka_sasl_mechanism, ssl_context=context)
    return faust.auth.SSLCredentials(context)


def create_app(settings: Settings) -> faust.App:
    """A worker's Faust app: topics, the join table, the agent and its timers. Applies the Faust patches
    (streams.faust_patches) and creates the worker's data directory; nothing else has side effects."""
    faust_patches.apply(settings)
    worker_dir = settings.data_dir / "faust" / str(os.getpid())
    worker_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=broker_credentials(settings),
        store="memory://",
        web_enabled=False,
        datadir=str(worker_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        # Shorter than the default on Tansu only: see Settings.tansu_broker.
        broker_heartbeat_interval=settings.worker_heartbeat_s,
    )
    worker = Worker(app, settings)
    app.genealogy_worker = worker  # for tests and diagnostics

    @app.agent(worker.capture_topic, name="genealogy.derive_edges")
    async def derive_edges(stream):
        async for event in stream.events():
            await worker.handle_in_order(event.message)

    app.timer(interval=max(settings.idle_flush_s / 2, 0.1), name="genealogy.idle_stations")(worker.idle_stations)
    app.timer(interval=settings.worker_stall_check_s, name="genealogy.wake_stalled")(worker.wake_stalled_partitions)
    app.timer(interval=1.0, name="genealogy.publish_progress")(worker.publish_progress)
    if settings.changelog_checkpoint_records > 0:
        app.timer(interval=1.0, name="genealogy.checkpoint_changelog")(worker.checkpoint_changelog)
    app.on_rebalance_complete.connect(worker.on_rebalance_complete)
    app.on_before_shutdown.connect(worker.on_before_shutdown)
    return app


class Worker:
    """The state of one worker process and what it does with each capture message."""

    def __init__(self, app: faust.App, settings: Settings):
        self.app = app
        self.settings = settings
        self.serde = schemas.serde_for(settings)
        self.capture_topic = app.topic(settings.topic_capture, key_type=bytes, value_type=bytes, key_serializer="raw",
                                       value_serializer="raw", partitions=settings.partitions)
        self.edges_topic = app.topic(settings.topic_edges, key_serializer="raw", value_serializer="raw")
        self.dead_letter_topic = app.topic(settings.topic_dead_letters, key_serializer="raw", value_serializer="raw")
        # station -> temporal join state (see genealogy.domain.join); changelogged, so a restarted or
        # rebalanced worker resumes with the state the previous owner had.
        self.station_state = app.Table("station-join", default=None, partitions=settings.partitions)
        self.activity: dict[str, Activity] = {}
        # Capture partition -> next offset to handle in the current assignment (see streams.progress).
        # Published in the ready file for `genealogy status`, since Faust's committed offset can lag
        # behind what was handled (faust-streaming#596, #606).
        self.progress = Progress()
        self.last_handled_at: dict[int, float] = {}
        self.ends_checked_at = 0.0  # when idle_stations last read the capture partitions' ends
        # Changelog checkpoints (checkpoint_changelog): table writes per partition since the last one, and,
        # per changelog partition, the offset below which every record is superseded.
        self.writes_since_checkpoint: dict[int, int] = {}
        self.changelog_trim_below: dict[int, int] = {}
        self._count_table_writes()

    # --- capture messages -------------------------------------------------------------

    def dead_letter(self, stage: str, reason: str, message, source: str, event_id: str = "", kind: str = "",
                    payload: bytes | None = None) -> bytes:
        return self.serde.encode(schemas.DEAD_LETTER, schemas.dead_letter(
            stage=stage, reason=reason, topic=message.topic, partition=message.partition, offset=message.offset,
            source=source, event_id=event_id, event_kind=kind,
            payload=payload if payload is not None else (message.value or b"")))

    def single_event_batch(self, batch: dict, r: Rejected) -> bytes:
        """A rejected event wrapped as a one-event capture batch, so it can be replayed as it is."""
        return self.serde.encode(schemas.CAPTURE, {"batch_id": f"{batch['batch_id']}/{r.event.get('event_id', '')}",
                                                   "source": batch["source"], "sent_ms": batch["sent_ms"],
                                                   "events": [(r.kind, r.event)]})

    async def handle_in_order(self, message) -> None:
        """Handle a capture message after whatever its partition's consumer skipped before it, and once only."""
        progress = self.progress
        partition, epoch = message.partition, progress.epoch
        verdict = progress.check(partition, message.offset)
        if verdict is Verdict.UNKNOWN:
            progress.start(partition, (await self.committed_offsets([partition]))[partition])
            verdict = progress.check(partition, message.offset)
        if verdict is Verdict.DUPLICATE:
            return
        if verdict is Verdict.GAP:
            try:
                await self.handle_skipped(partition, progress.next_offset[partition], message.offset, epoch)
            except KafkaException as exc:
                # Progress stays in front of the gap, so the next message or the stall check retries it.
                log.error("capture[%d]: skipped messages not read back yet: %s", partition, exc)
                return
        progress.handled(partition, message.offset, epoch, sends=await self.handle(message))
        self.last_handled_at[partition] = time.monotonic()

    async def committed_offsets(self, partitions: list[int]) -> dict[int, int]:
        """Where the group resumes these capture partitions; waits out a broker that is away, as the consumer does."""
        tps = [TopicPartition(self.settings.topic_capture, p) for p in partitions]
        async for attempt in AsyncRetrying(retry=retry_if_exception_type(KafkaException), wait=wait_exponential(max=5),
                                           before_sleep=before_sleep_log(log, logging.WARNING)):
            with attempt:
                offsets = await asyncio.get_running_loop().run_in_executor(
                    None, kafka.committed, self.settings, self.settings.app_id, tps)
        return {partition: offset for (_, partition), offset in offsets.items()}

    async def handle_skipped(self, partition: int, start: int, end: int, epoch: int) -> None:
        """Capture offsets [start, end) the consumer never delivered: read them from the topic, handle them in order."""
        log.warning("capture[%d] offsets %d..%d were skipped by the consumer; reading them from the topic",
                    partition, start, end - 1)
        loop = asyncio.get_running_loop()
        for chunk in range(start, end, SKIPPED_READ_CHUNK):
            read = await loop.run_in_executor(None, kafka.read_range, self.settings, self.settings.topic_capture,
                                              partition, chunk, min(end, chunk + SKIPPED_READ_CHUNK))
            for m in read:
                message = Message(m.topic(), m.partition(), m.offset(), m.timestamp()[1] / 1000, m.timestamp()[0],
                                  m.headers(), m.key(), m.value(), None, tp=TP(m.topic(), m.partition()),
                                  generation_id=self.app.consumer_generation_id)
                self.progress.handled(partition, m.offset(), epoch, read_back=True, sends=await self.handle(message))
                # Faust never saw these, so never acked them: its commit would stall in front of them.
                self.app.consumer.ack(message)
        self.last_handled_at[partition] = time.monotonic()

    async def handle(self, message) -> list:
        """One capture batch: its edges, units and facts out, or its dead letters. Returns the sends in flight."""
        key = message.key or b""
        try:
            _, batch = self.serde.decode(message.value, expect=schemas.CAPTURE)
        except schemas.DecodeError as exc:
            log.warning("dead letter: %s[%d]@%d: %s", message.topic, message.partition, message.offset, exc)
            return [await self.dead_letter_topic.send(key=key, value=self.dead_letter(
                "decode", str(exc), message, key.decode(errors="replace")))]

        try:
            out: Derived = derive(batch, self.station_state, self.settings.grace_ms, self.settings.retention_ms)
        except Exception as exc:  # a bug must cost one batch (kept, replayable), not the pipeline
            log.exception("dead letter: derive failed on %s[%d]@%d", message.topic, message.partition, message.offset)
            return [await self.dead_letter_topic.send(key=key, value=self.dead_letter(
                "stream", f"{type(exc).__name__}: {exc}", message, batch["source"]))]

        sends = []
        for chunk in schemas.derived_messages(batch["batch_id"], out):
            # No wait for the ack here (the ready file counts the message once it comes: streams.progress).
            # Faust flushes its producer before it commits an offset, so a crash can redeliver this batch
            # but never lose its edges.
            sends.append(await self.edges_topic.send(key=key, value=self.serde.encode(schemas.DERIVED, chunk)))
        for r in out.rejected:
            event_id = r.event.get("event_id", "")
            log.info("dead letter (%s) %s %s: %s", r.stage, r.kind, event_id, r.reason)
            sends.append(await self.dead_letter_topic.send(key=key, value=self.dead_letter(
                r.stage, r.reason, message, batch["source"], event_id, r.kind, self.single_event_batch(batch, r))))
        now = time.monotonic()
        for station, max_ms in out.max_ms.items():
            self.activity[station] = Activity(now, max_ms, out.pending.get(station, 0), message.partition)
        return sends

    # --- timers -------------------------------------------------------------------------

    async def idle_stations(self) -> None:
        s = self.settings
        now = time.monotonic()
        assigned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == s.topic_capture}
        quiet = {station: a for station, a in self.activity.items()
                 if a.pending and now - a.seen >= s.idle_flush_s and a.partition in assigned}
        if not quiet or now - self.ends_checked_at < s.idle_flush_s:
            return
        # Quiet here is not quiet at the station while its partition still holds unhandled messages (a worker
        # catching up): flushing then would turn the station's next, in-grace events into late ones. Reading
        # the ends costs a broker round trip or more (~0.6 s on a busy box), so at most once per idle_flush_s.
        self.ends_checked_at = now
        try:
            caught_up = await self._caught_up_partitions({a.partition for a in quiet.values()})
        except KafkaException as exc:
            log.warning("idle check skipped, partition ends unknown: %s", exc)
            return
        for station, a in quiet.items():
            if a.partition in caught_up:
                flush_ms = a.max_ms + s.grace_ms + 1
                batch = {"batch_id": f"idle:{station}:{flush_ms}", "source": station, "sent_ms": int(time.time() * 1000),
                         "events": [("genealogy.StationHeartbeat", {"event_id": f"idle:{station}:{flush_ms}",
                                                                    "event_ms": flush_ms, "station": station})]}
                # Same partition as the station's own events: that is where its join state lives.
                await self.capture_topic.send(key=station.encode(), value=self.serde.encode(schemas.CAPTURE, batch),
                                              partition=a.partition)
                self.activity[station] = a._replace(seen=now, pending=0)

    async def wake_stalled_partitions(self) -> None:
        """A skipped message at the end of a partition has no later message to reveal it: compare with the end,
        and where the worker is behind, append an empty capture batch there. Its arrival shows the agent the gap,
        which it then reads back itself (table writes need the agent's event: they go to that event's partition)."""
        if self.app.rebalancing:
            return
        try:
            for partition in await self._behind_partitions():
                wake = {"batch_id": f"wake:{partition}:{time.time_ns()}", "source": "genealogy-worker",
                        "sent_ms": int(time.time() * 1000), "events": []}
                await self.capture_topic.send(key=b"", value=self.serde.encode(schemas.CAPTURE, wake), partition=partition)
        except KafkaException as exc:
            log.error("stall check failed, next try in %.0f s: %s", self.settings.worker_stall_check_s, exc)

    def _count_table_writes(self) -> None:
        """Count the changelog records the table writes, per partition (a set or a delete is one each)."""
        table, partitions = self.station_state, self.settings.partitions
        on_set, on_del = table.on_key_set, table.on_key_del

        def count(key) -> None:
            p = changelog.partition_of(changelog.station_of(key), partitions)
            self.writes_since_checkpoint[p] = self.writes_since_checkpoint.get(p, 0) + 1

        def counted_set(key, value) -> None:
            on_set(key, value)
            count(key)

        def counted_del(key) -> None:
            on_del(key)
            count(key)

        table.on_key_set, table.on_key_del = counted_set, counted_del

    def checkpoint_due(self) -> list[int]:
        """Assigned partitions whose changelog grew by at least ``changelog_checkpoint_records`` and by their
        number of keys since their last checkpoint (so a checkpoint never writes more than it lets go)."""
        s = self.settings
        grown = {p for p in self.assigned_capture_partitions()
                 if self.writes_since_checkpoint.get(p, 0) >= s.changelog_checkpoint_records}
        if not grown:
            return []
        keys: dict[int, int] = {}
        for key in self.station_state.data.keys():
            p = changelog.partition_of(changelog.station_of(key), s.partitions)
            keys[p] = keys.get(p, 0) + 1
        return sorted(p for p in grown if self.writes_since_checkpoint[p] >= keys.get(p, 0))

    async def checkpoint_changelog(self) -> None:
        """Re-send the join state of each busy capture partition to its changelog, then report the offset
        below which that changelog holds nothing the state needs (genealogy.retention trims it).

        The changelog grows by a record per table write and Tansu never compacts it, so a restarted worker
        would replay the whole history. The bound is the changelog's end read before the re-send: every
        record below it was written before, and every key is written again after it. The re-send is
        synchronous (no await), so no agent write of the same key can come between; the bound is reported
        only once the producer has flushed it."""
        s = self.settings
        if self.app.rebalancing:
            return
        due = self.checkpoint_due()
        # The changelog partition of a key is that of its station's capture messages; a producer that
        # partitions stations otherwise would leave keys out of the re-send, so no trim then.
        odd = {a.partition for st, a in self.activity.items() if a.partition != changelog.partition_of(st, s.partitions)}
        due = [p for p in due if p not in odd]
        if not due:
            return
        topic = changelog.topic(s)
        try:
            ends = await asyncio.get_running_loop().run_in_executor(
                None, kafka.end_offsets, s, [TopicPartition(topic, p) for p in due])
        except KafkaException as exc:
            log.warning("changelog checkpoint skipped, ends unknown: %s", exc)
            return
        if self.app.rebalancing:
            return
        due = [p for p in due if p in self.assigned_capture_partitions()]
        table = self.station_state
        for key, value in list(table.data.items()):
            partition = changelog.partition_of(changelog.station_of(key), s.partitions)
            if partition in due:
                table.send_changelog(partition, key, value)
        for p in due:
            self.writes_since_checkpoint[p] = 0
        try:
            await self.app.producer.flush()
        except Exception as exc:  # stopping: the re-sent records may not be stored, so no bound
            log.warning("changelog checkpoint not flushed: %s", exc)
            return
        for p in due:
            self.changelog_trim_below[p] = max(self.changelog_trim_below.get(p, 0), ends[(topic, p)])
        log.info("changelog checkpoint of partitions %s; trim below %s", due, {p: ends[(topic, p)] for p in due})
        await self.publish_progress()

    def assigned_capture_partitions(self) -> set[int]:
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.settings.topic_capture}

    async def _caught_up_partitions(self, partitions: set[int]) -> set[int]:
        topic = self.settings.topic_capture
        ends = await asyncio.get_running_loop().run_in_executor(
            None, kafka.end_offsets, self.settings, [TopicPartition(topic, p) for p in partitions])
        next_offset = self.progress.next_offset
        return {p for p in partitions if p in next_offset and next_offset[p] >= ends[(topic, p)]}

    async def _behind_partitions(self) -> list[int]:
        topic, now = self.settings.topic_capture, time.monotonic()
        idle = [tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic
                and now - self.last_handled_at.get(tp.partition, self.progress.assigned_at) >= self.settings.worker_stall_check_s]
        if not idle:
            return []
        unknown = [p for p in idle if p not in self.progress.next_offset]
        for partition, offset in (await self.committed_offsets(unknown) if unknown else {}).items():
            self.progress.start(partition, offset)
        ends = await asyncio.get_running_loop().run_in_executor(
            None, kafka.end_offsets, self.settings, [TopicPartition(topic, p) for p in idle])
        return sorted(self.progress.behind({p: ends[(topic, p)] for p in idle}))

    # --- readiness and what the worker holds, for `genealogy status` ------------------------

    @property
    def ready_file(self) -> Path:
        return self.settings.data_dir / "run" / f"worker-{os.getpid()}.ready"

    def state_size(self) -> dict:
        """What the worker holds, so its memory can be read against its state (bench.throughput's RSS curve)."""
        return {"stations": len(self.activity), "table_keys": len(self.station_state),
                "pending_completions": sum(a.pending for a in self.activity.values()),
                "python_blocks": sys.getallocatedblocks()}

    def write_ready_file(self) -> None:
        path = self.ready_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"ready_at": time.time(), "handled": self.progress.delivered(),
                                   "read_back": self.progress.read_back, "redelivered": self.progress.redelivered,
                                   "state": self.state_size(), "changelog_trim_below": self.changelog_trim_below}))
        tmp.replace(path)

    async def publish_progress(self) -> None:
        if self.ready_file.exists():
            self.write_ready_file()

    async def on_rebalance_complete(self, sender, **kwargs) -> None:
        """`genealogy status` counts a worker as ready once it holds its partitions."""
        self.progress.reassigned(time.monotonic())  # partitions may have moved; each resumes at its committed offset
        self.last_handled_at.clear()
        self.write_ready_file()

    def on_before_shutdown(self, sender, **kwargs) -> None:
        self.ready_file.unlink(missing_ok=True)


def run_worker(settings: Settings, loglevel: str = "warn") -> None:
    """Run one worker in this process until it is stopped (``genealogy worker``)."""
    from faust.worker import Worker as FaustWorker

    app = create_app(settings)
    FaustWorker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
