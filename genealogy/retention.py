"""Trimming the durable broker's log, so that a stack running for weeks keeps a bounded log.

Tansu 0.6 keeps each record batch of a partition as one object
(``clusters/<cluster>/topics/<topic>/partitions/<p:010>/records/<base offset:020>.batch``), does not
enforce retention and answers DeleteRecords with a panic. Its fetch lists every batch object of the
partition, so without trimming each fetch, the broker's disk and the object store's CPU grow with
the whole history (docs/durability.md). ClickHouse is the system of record; the broker's log only
has to hold what some consumer still needs:

* capture, edges, dead letters: batches wholly below the lowest offset committed by every group
  that reads the topic (the workers, the sink). The sink commits only what ClickHouse has stored,
  so what is trimmed is in ``capture_batches`` (which the join recovery replays) or derived from it.
* the join table's changelog: batches wholly below a bound each worker reports after a checkpoint
  (``streams.app``): it re-sends every key of a partition and flushes, so every record before the
  bound is superseded by a later one (a compaction Tansu does not do).

A trimmed batch is deleted from the object store; fetches then list only what is left. Consumers
that start below the first kept batch get the first kept one, as on a Kafka topic whose head was
deleted by retention.
"""

from __future__ import annotations

import json
import logging
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from genealogy import kafka
from genealogy.objectstore import Client
from genealogy.settings import Settings
from genealogy.streams import changelog

log = logging.getLogger(__name__)


def deletable(base_offsets: Sequence[int], below: int) -> int:
    """How many of the first batches hold only offsets below ``below``. ``base_offsets`` is sorted;
    batch i holds offsets base_offsets[i] .. base_offsets[i + 1] - 1, and the last batch is always
    kept (its end is unknown here, and a partition keeps at least its newest batch)."""
    # Batch i may go iff base_offsets[i + 1] <= below.
    return max(bisect_right(base_offsets, below, lo=1) - 1, 0)


def reported_changelog_bounds(run_dir: Path) -> dict[int, int]:
    """The changelog bounds the live workers report in their ready files (partition -> offset)."""
    bounds: dict[int, int] = {}
    for path in run_dir.glob("worker-*.ready"):
        try:
            reported = json.loads(path.read_text()).get("changelog_trim_below", {})
        except (OSError, ValueError):
            continue  # being replaced or removed
        for partition, offset in reported.items():
            bounds[int(partition)] = max(bounds.get(int(partition), 0), int(offset))
    return bounds


class Retention:
    """One trimming pass at a time (``run_once``), called by the stack's supervisor loop."""

    def __init__(self, settings: Settings, store: Client, run_dir: Path):
        self.settings = settings
        self.store = store
        self.run_dir = run_dir
        self.changelog_bounds: dict[int, int] = {}   # kept across passes: a worker that stops takes its file along
        self.trimmed_batches = 0
        self.last_error = ""

    def groups(self) -> dict[str, list[str]]:
        s = self.settings
        return {s.app_id: [s.topic_capture], s.sink_group: [s.topic_edges, s.topic_dead_letters, s.topic_capture, s.topic_epcis]}

    def bounds(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> offset below which no consumer needs the log."""
        s = self.settings
        metadata = AdminClient(s.kafka_config).list_topics(timeout=10)
        readers: dict[tuple[str, int], list[str]] = {}
        for group, topics in self.groups().items():
            for topic in topics:
                for partition in metadata.topics.get(topic).partitions if topic in metadata.topics else ():
                    readers.setdefault((topic, partition), []).append(group)
        lowest: dict[tuple[str, int], int] = {}
        for group in self.groups():
            tps = [TopicPartition(t, p) for (t, p), groups in readers.items() if group in groups]
            for tp, offset in kafka.committed(s, group, tps, timeout=10).items():
                # No commit yet (negative) means that group needs all of it.
                lowest[tp] = min(lowest.get(tp, offset), max(offset, 0))
        for partition, offset in reported_changelog_bounds(self.run_dir).items():
            self.changelog_bounds[partition] = max(self.changelog_bounds.get(partition, 0), offset)
        lowest.update({(changelog.topic(s), p): offset for p, offset in self.changelog_bounds.items()})
        return lowest

    def clusters(self) -> list[str]:
        return self.store.list("clusters/", delimiter="/")

    def run_once(self) -> int:
        """Delete every batch that no consumer needs, where a partition has at least
        ``broker_trim_min_batches`` of them. Returns the number of batches deleted."""
        deleted = 0
        bounds = self.bounds()
        for cluster in self.clusters():
            for (topic, partition), below in bounds.items():
                prefix = f"{cluster}topics/{topic}/partitions/{partition:0>10}/records/"
                keys = sorted(self.store.list(prefix))
                n = deletable([int(k.rsplit("/", 1)[1][:20]) for k in keys], below)
                if n >= max(self.settings.broker_trim_min_batches, 1):
                    self.store.delete(keys[:n])
                    deleted += n
                    log.info("trimmed %d batches of %s[%d] below offset %d", n, topic, partition, below)
        self.trimmed_batches += deleted
        return deleted

    def report(self) -> dict:
        return {"trimmed_batches": self.trimmed_batches, **({"error": self.last_error} if self.last_error else {})}
