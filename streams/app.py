"""The Faust topology.

    genealogy.capture (CaptureBatch, key = station)
        -> derive_edges: decode, validate, join, derive   [table station-join]
            -> genealogy.edges        (DerivedColumns: edges, units, facts)
            -> genealogy.dead-letters (DeadLetter)
    idle_stations (timer): a station that went quiet gets a heartbeat so its
    pending completions resolve without waiting for its next event.

Run one or more workers with ``python -m streams worker``; they share the
consumer group ``<app_id>`` and split the capture partitions between them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys
import time

import faust
from confluent_kafka import KafkaException, TopicPartition
from faust.types import TP, Message
from tenacity import AsyncRetrying, before_sleep_log, retry_if_exception_type, wait_exponential

import schemas
from genealogy import kafka
from genealogy.settings import Settings
from streams.derive import Derived, Rejected, derive, derived_messages
from streams.progress import Progress, Verdict
from streams.tansu import read_highwaters_from_the_log, shorten_fetch_wait

log = logging.getLogger(__name__)

# Skipped capture messages are read back in chunks of this many, to bound memory.
SKIPPED_READ_CHUNK = 1_000

settings = Settings()
serde = schemas.serde_for(settings)
worker_dir = settings.data_dir / "faust" / str(os.getpid())
worker_dir.mkdir(parents=True, exist_ok=True)

app = faust.App(
    settings.app_id,
    broker=f"kafka://{settings.kafka_bootstrap}",
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
if settings.is_tansu:
    read_highwaters_from_the_log(settings)
shorten_fetch_wait(settings)

capture_topic = app.topic(settings.topic_capture, key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw", partitions=settings.partitions)
edges_topic = app.topic(settings.topic_edges, key_serializer="raw", value_serializer="raw")
dead_letter_topic = app.topic(settings.topic_dead_letters, key_serializer="raw", value_serializer="raw")

# station -> temporal join state (see streams.join); changelogged, so a restarted
# or rebalanced worker resumes with the state the previous owner had.
station_state = app.Table("station-join", default=None, partitions=settings.partitions)

# station -> (wall clock of last activity, newest event time, pending completions, partition);
# only for the idle timer, so it lives in worker memory, not in the table.
activity: dict[str, tuple[float, int, int, int]] = {}

# Capture partition -> next offset to handle in the current assignment (see streams.progress).
# Published in the ready file for `genealogy status`, since Faust's committed offset can lag
# behind what was handled (faust-streaming#596, #606).
progress = Progress()
last_handled_at: dict[int, float] = {}
ends_checked_at = 0.0  # when idle_stations last read the capture partitions' ends


def dead_letter(stage: str, reason: str, message, source: str, event_id: str = "", kind: str = "",
                payload: bytes | None = None) -> bytes:
    ident = hashlib.blake2b(f"{message.topic}:{message.partition}:{message.offset}:{event_id}".encode(),
                            digest_size=12).hexdigest()
    return serde.encode(schemas.DEAD_LETTER, {
        "dead_letter_id": ident, "stage": stage, "reason": reason, "topic": message.topic,
        "partition": message.partition, "offset": message.offset, "source": source,
        "event_id": event_id, "event_kind": kind,
        "payload": payload if payload is not None else (message.value or b""),
        "occurred_ms": int(time.time() * 1000),
    })


def single_event_batch(batch: dict, r: Rejected) -> bytes:
    """A rejected event wrapped as a one-event capture batch, so it can be replayed as it is."""
    return serde.encode(schemas.CAPTURE, {"batch_id": f"{batch['batch_id']}/{r.event.get('event_id', '')}",
                                          "source": batch["source"], "sent_ms": batch["sent_ms"],
                                          "events": [(r.kind, r.event)]})


@app.agent(capture_topic)
async def derive_edges(stream):
    async for event in stream.events():
        await handle_in_order(event.message)


async def handle_in_order(message) -> None:
    """Handle a capture message after whatever its partition's consumer skipped before it, and once only."""
    partition, epoch = message.partition, progress.epoch
    verdict = progress.check(partition, message.offset)
    if verdict is Verdict.UNKNOWN:
        progress.start(partition, (await committed_offsets([partition]))[partition])
        verdict = progress.check(partition, message.offset)
    if verdict is Verdict.DUPLICATE:
        return
    if verdict is Verdict.GAP:
        try:
            await handle_skipped(partition, progress.next_offset[partition], message.offset, epoch)
        except KafkaException as exc:
            # Progress stays in front of the gap, so the next message or the stall check retries it.
            log.error("capture[%d]: skipped messages not read back yet: %s", partition, exc)
            return
    progress.handled(partition, message.offset, epoch, sends=await handle(message))
    last_handled_at[partition] = time.monotonic()


async def committed_offsets(partitions: list[int]) -> dict[int, int]:
    """Where the group resumes these capture partitions; waits out a broker that is away, as the consumer does."""
    tps = [TopicPartition(settings.topic_capture, p) for p in partitions]
    async for attempt in AsyncRetrying(retry=retry_if_exception_type(KafkaException), wait=wait_exponential(max=5),
                                       before_sleep=before_sleep_log(log, logging.WARNING)):
        with attempt:
            offsets = await asyncio.get_running_loop().run_in_executor(None, kafka.committed, settings, settings.app_id, tps)
    return {partition: offset for (_, partition), offset in offsets.items()}


async def handle_skipped(partition: int, start: int, end: int, epoch: int) -> None:
    """Capture offsets [start, end) the consumer never delivered: read them from the topic, handle them in order."""
    log.warning("capture[%d] offsets %d..%d were skipped by the consumer; reading them from the topic",
                partition, start, end - 1)
    loop = asyncio.get_running_loop()
    for chunk in range(start, end, SKIPPED_READ_CHUNK):
        read = await loop.run_in_executor(None, kafka.read_range, settings, settings.topic_capture, partition,
                                          chunk, min(end, chunk + SKIPPED_READ_CHUNK))
        for m in read:
            message = Message(m.topic(), m.partition(), m.offset(), m.timestamp()[1] / 1000, m.timestamp()[0],
                              m.headers(), m.key(), m.value(), None, tp=TP(m.topic(), m.partition()),
                              generation_id=app.consumer_generation_id)
            progress.handled(partition, m.offset(), epoch, read_back=True, sends=await handle(message))
            # Faust never saw these, so never acked them: its commit would stall in front of them.
            app.consumer.ack(message)
    last_handled_at[partition] = time.monotonic()


async def handle(message) -> list:
    """One capture batch: its edges, units and facts out, or its dead letters. Returns the sends in flight."""
    key = message.key or b""
    try:
        _, batch = serde.decode(message.value, expect=schemas.CAPTURE)
    except schemas.DecodeError as exc:
        log.warning("dead letter: %s[%d]@%d: %s", message.topic, message.partition, message.offset, exc)
        return [await dead_letter_topic.send(key=key, value=dead_letter("decode", str(exc), message, key.decode(errors="replace")))]

    try:
        out: Derived = derive(batch, station_state, settings.grace_ms, settings.retention_ms)
    except Exception as exc:  # a bug must cost one batch (kept, replayable), not the pipeline
        log.exception("dead letter: derive failed on %s[%d]@%d", message.topic, message.partition, message.offset)
        return [await dead_letter_topic.send(key=key, value=dead_letter(
            "stream", f"{type(exc).__name__}: {exc}", message, batch["source"]))]

    sends = []
    for chunk in derived_messages(batch["batch_id"], out):
        # No wait for the ack here (the ready file counts the message once it comes: streams.progress).
        # Faust flushes its producer before it commits an offset, so a crash can redeliver this batch
        # but never lose its edges.
        sends.append(await edges_topic.send(key=key, value=serde.encode(schemas.DERIVED, chunk)))
    for r in out.rejected:
        event_id = r.event.get("event_id", "")
        log.info("dead letter (%s) %s %s: %s", r.stage, r.kind, event_id, r.reason)
        sends.append(await dead_letter_topic.send(key=key, value=dead_letter(
            r.stage, r.reason, message, batch["source"], event_id, r.kind, single_event_batch(batch, r))))
    now = time.monotonic()
    for station, max_ms in out.max_ms.items():
        activity[station] = (now, max_ms, out.pending.get(station, 0), message.partition)
    return sends


@app.timer(interval=max(settings.idle_flush_s / 2, 0.1))
async def idle_stations():
    now = time.monotonic()
    assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == settings.topic_capture}
    quiet = {station: a for station, a in activity.items()
             if a[2] and now - a[0] >= settings.idle_flush_s and a[3] in assigned}
    global ends_checked_at
    if not quiet or now - ends_checked_at < settings.idle_flush_s:
        return
    # Quiet here is not quiet at the station while its partition still holds unhandled messages (a worker
    # catching up): flushing then would turn the station's next, in-grace events into late ones. Reading
    # the ends costs a broker round trip or more (~0.6 s on a busy box), so at most once per idle_flush_s.
    ends_checked_at = now
    try:
        caught_up = await _caught_up_partitions({a[3] for a in quiet.values()})
    except KafkaException as exc:
        log.warning("idle check skipped, partition ends unknown: %s", exc)
        return
    for station, (seen, max_ms, pending, partition) in quiet.items():
        if partition in caught_up:
            flush_ms = max_ms + settings.grace_ms + 1
            batch = {"batch_id": f"idle:{station}:{flush_ms}", "source": station, "sent_ms": int(time.time() * 1000),
                     "events": [("genealogy.StationHeartbeat", {"event_id": f"idle:{station}:{flush_ms}",
                                                                "event_ms": flush_ms, "station": station})]}
            # Same partition as the station's own events: that is where its join state lives.
            await capture_topic.send(key=station.encode(), value=serde.encode(schemas.CAPTURE, batch), partition=partition)
            activity[station] = (now, max_ms, 0, partition)


@app.timer(interval=settings.worker_stall_check_s)
async def wake_stalled_partitions():
    """A skipped message at the end of a partition has no later message to reveal it: compare with the end,
    and where the worker is behind, append an empty capture batch there. Its arrival shows the agent the gap,
    which it then reads back itself (table writes need the agent's event: they go to that event's partition)."""
    if app.rebalancing:
        return
    try:
        for partition in await _behind_partitions():
            wake = {"batch_id": f"wake:{partition}:{time.time_ns()}", "source": "genealogy-worker",
                    "sent_ms": int(time.time() * 1000), "events": []}
            await capture_topic.send(key=b"", value=serde.encode(schemas.CAPTURE, wake), partition=partition)
    except KafkaException as exc:
        log.error("stall check failed, next try in %.0f s: %s", settings.worker_stall_check_s, exc)


async def _caught_up_partitions(partitions: set[int]) -> set[int]:
    ends = await asyncio.get_running_loop().run_in_executor(
        None, kafka.end_offsets, settings, [TopicPartition(settings.topic_capture, p) for p in partitions])
    return {p for p in partitions if p in progress.next_offset and progress.next_offset[p] >= ends[(settings.topic_capture, p)]}


async def _behind_partitions() -> list[int]:
    now = time.monotonic()
    idle = [tp.partition for tp in app.consumer.assignment() if tp.topic == settings.topic_capture
            and now - last_handled_at.get(tp.partition, progress.assigned_at) >= settings.worker_stall_check_s]
    if not idle:
        return []
    unknown = [p for p in idle if p not in progress.next_offset]
    for partition, offset in (await committed_offsets(unknown) if unknown else {}).items():
        progress.start(partition, offset)
    ends = await asyncio.get_running_loop().run_in_executor(
        None, kafka.end_offsets, settings, [TopicPartition(settings.topic_capture, p) for p in idle])
    return sorted(progress.behind({p: ends[(settings.topic_capture, p)] for p in idle}))


def _ready_file() -> "os.PathLike":
    return settings.data_dir / "run" / f"worker-{os.getpid()}.ready"


@app.on_rebalance_complete.connect
async def mark_ready(sender, **kwargs):
    """`genealogy status` counts a worker as ready once it holds its partitions."""
    progress.reassigned(time.monotonic())  # partitions may have moved; each resumes at its committed offset
    last_handled_at.clear()
    _write_ready_file()


def state_size() -> dict:
    """What the worker holds, so its memory can be read against its state (bench.throughput's RSS curve)."""
    return {"stations": len(activity), "table_keys": len(station_state),
            "pending_completions": sum(a[2] for a in activity.values()),
            "python_blocks": sys.getallocatedblocks()}


def _write_ready_file() -> None:
    path = _ready_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"ready_at": time.time(), "handled": progress.delivered(),
                               "read_back": progress.read_back, "redelivered": progress.redelivered,
                               "state": state_size()}))
    tmp.replace(path)


@app.timer(interval=1.0)
async def publish_progress():
    if _ready_file().exists():
        _write_ready_file()


@app.on_before_shutdown.connect
def unmark_ready(sender, **kwargs):
    _ready_file().unlink(missing_ok=True)
