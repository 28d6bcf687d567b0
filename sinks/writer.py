"""Rows into ClickHouse: the sink's inserts, and reprocess's inserts and edge deletes."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from genealogy.sinks import queries
from genealogy.sinks.connection import Connection

log = logging.getLogger(__name__)

# Table column <- column of a group of schemas.DERIVED (what the stream derived); *_ms are epoch ms.
FROM_DERIVED = {
    "edges": {"edge_id": "edge_id", "child": "child", "parent": "parent", "relation": "relation",
              "event_time": "event_ms", "station": "station", "operator": "operator", "work_order": "work_order",
              "parent_lot": "parent_lot", "quantity": "quantity", "source_event": "source_event"},
    "units": {"unit": "unit", "production_lot": "production_lot", "work_order": "work_order", "station": "station",
              "operator": "operator", "completed_at": "event_ms", "event_id": "event_id"},
    "station_facts": {"event_id": "event_id", "kind": "kind", "station": "station", "event_time": "event_ms",
                      "subject": "subject", "detail": "detail", "reason": "reason"},
}
EDGE_COLUMNS = list(FROM_DERIVED["edges"])
UNIT_COLUMNS = list(FROM_DERIVED["units"])
MAX_MS = 7_258_118_400_000  # 2200-01-01; beyond DateTime64's comfortable range
CAPTURE_COLUMNS = ["source", "kafka_time", "topic", "partition", "offset", "payload"]
DEAD_LETTER_COLUMNS = ["dead_letter_id", "stage", "reason", "topic", "partition", "offset", "source", "event_id",
                       "event_kind", "payload", "occurred_at"]
DELETE_CHUNK = 5_000  # edges per DELETE: bounds the size of the bound id arrays


class Writer:
    def __init__(self, connection: Connection):
        self.connection = connection

    def insert(self, table: str, columns: list[str], rows: Sequence[Sequence]) -> None:
        if rows:
            self.connection.insert(table, rows, columns)

    def insert_derived(self, table: str, columns: Mapping[str, list]) -> None:
        """Rows of `table` given as the columns of a schemas.DERIVED group (FROM_DERIVED), inserted column by
        column: no per-row objects, and times stay epoch ms (clickhouse-connect writes ints as DateTime64 ticks)."""
        mapping = FROM_DERIVED[table]
        data = [epoch_ms(columns[c]) if c.endswith("_ms") else columns[c] for c in mapping.values()]
        if data[0]:
            self.connection.insert(table, data, list(mapping), column_oriented=True)

    def delete_edges(self, edges: Sequence[tuple[int, str, str]]) -> None:
        """Remove (edge_id, child, parent) from both edge copies, synchronously: a ReplacingMergeTree can only
        add rows, and reprocess must take back edges a late unload made wrong."""
        with self.connection.locked():
            for n in range(0, len(edges), DELETE_CHUNK):
                chunk = edges[n:n + DELETE_CHUNK]
                ids = [edge_id for edge_id, _, _ in chunk]
                self._delete("edges", queries.DELETE_EDGES_SQL, queries.ALTER_DELETE_EDGES_SQL,
                             {"keys": sorted({c for _, c, _ in chunk}), "ids": ids})
                self._delete("edges_by_parent", queries.DELETE_EDGES_BY_PARENT_SQL, queries.ALTER_DELETE_EDGES_BY_PARENT_SQL,
                             {"keys": sorted({p for _, _, p in chunk}), "ids": ids})

    def _delete(self, table: str, lightweight: str, mutation: str, parameters: dict) -> None:
        try:
            self.connection.command(lightweight, parameters, settings={"lightweight_deletes_sync": 2})
        except Exception as exc:  # servers without lightweight deletes: a synchronous mutation does the same
            log.info("lightweight delete on %s failed (%s); using ALTER TABLE ... DELETE", table, exc)
            self.connection.command(mutation, parameters, settings={"mutations_sync": 2})


def epoch_ms(values: Iterable[int]) -> list[int]:
    """Event times for a DateTime64(3) column; impossible ones (dead-lettered upstream already) clamp to the epoch."""
    return [v if 0 <= v < MAX_MS else 0 for v in values]
