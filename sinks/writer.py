"""Rows into ClickHouse: the sink's inserts, and reprocess's inserts and edge deletes."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from genealogy.domain import holding
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
    "corrections": {"kind": "kind", "edge_id": "edge_id", "child": "child", "parent": "parent", "relation": "relation",
                    "source_event": "source_event", "declaration": "declaration", "reason": "reason",
                    "corrective": "corrective", "declared_at": "event_ms", "station": "station"},
    "unpacked": {"child": "child", "parent": "parent", "event_time": "event_ms", "station": "station",
                 "source_event": "source_event"},
    "removals": {"child": "child", "parent": "parent", "quantity": "quantity", "reason": "reason", "event_time": "event_ms",
                 "station": "station", "source_event": "source_event"},
}
EDGE_COLUMNS = list(FROM_DERIVED["edges"])
UNIT_COLUMNS = list(FROM_DERIVED["units"])
MAX_MS = 7_258_118_400_000  # 2200-01-01; beyond DateTime64's comfortable range
CAPTURE_COLUMNS = ["source", "kafka_time", "topic", "partition", "offset", "payload"]
DEAD_LETTER_COLUMNS = ["dead_letter_id", "stage", "reason", "topic", "partition", "offset", "source", "event_id",
                       "event_kind", "payload", "occurred_at"]
DELETE_CHUNK = 5_000  # edges per DELETE: bounds the size of the bound id arrays
HELD_COLUMNS = ["child", "holder", "edge_id", "relation", "from_time", "to_time", "version", "is_deleted"]


@dataclass
class Touched:
    """What a batch of writes changed that held_intervals depends on."""
    adds: dict[int, tuple[str, str, int, str]] = field(default_factory=dict)  # edge id -> (child, holder, at, relation)
    gone: dict[int, tuple[str, str]] = field(default_factory=dict)            # edge id -> (child, holder) taken back
    pairs: set[tuple[str, str]] = field(default_factory=set)  # (child, holder) whose unpackings changed
    whole: set[str] = field(default_factory=set)              # holders whose unpackings of everything changed

    def edges(self, ids, children, parents, relations, times) -> None:
        for edge_id, child, parent, relation, at in zip(ids, children, parents, relations, times):
            if relation in holding.HELD:
                self.adds[edge_id] = (child, parent, at, relation)

    def unpackings(self, children, parents) -> None:
        for child, parent in zip(children, parents):
            if child:
                self.pairs.add((child, parent))
            else:
                self.whole.add(parent)


class Writer:
    def __init__(self, connection: Connection):
        self.connection = connection
        # What error declarations took back (the corrections table), so a retracted edge or unit row that
        # arrives after its declaration is never inserted. Loaded on first use; declarations are rare.
        self._retracted: tuple[set[int], set[tuple[str, str]], set[tuple[str, str, str]]] | None = None
        self._touched: Touched | None = None  # within batch(): what held_intervals must be brought up to
        self._version = 0

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Writes in here bring held_intervals up to date once, at the end, from what is then stored (the
        sink's flush, before it commits its offsets: a crash in between redelivers the facts and the
        intervals are computed again). Nothing is updated if a write fails: the retry redoes it all."""
        if self._touched is not None:
            yield
            return
        self._touched = Touched()
        try:
            yield
            self._hold(self._touched)
        finally:
            self._touched = None

    def insert(self, table: str, columns: list[str], rows: Sequence[Sequence]) -> None:
        if not rows:
            return
        with self.batch():
            self.connection.insert(table, rows, columns)
            if table in ("edges", "unpacked"):
                by = {name: [row[i] for row in rows] for i, name in enumerate(columns)}
                if table == "edges":
                    self._touched.edges(by["edge_id"], by["child"], by["parent"], by["relation"], _ms(by["event_time"]))
                else:
                    self._touched.unpackings(by["child"], by["parent"])

    def insert_derived(self, table: str, columns: Mapping[str, list]) -> None:
        """Rows of `table` given as the columns of a schemas.DERIVED group (FROM_DERIVED), inserted column by
        column: no per-row objects, and times stay epoch ms (clickhouse-connect writes ints as DateTime64 ticks).
        Edges and unit rows an error declaration retracted are left out; corrections are applied."""
        if table == "corrections":
            self.retract(columns)
            return
        if table in ("edges", "units", "unpacked"):
            columns = self._without_retracted(table, columns)
        mapping = FROM_DERIVED[table]
        data = [epoch_ms(columns[c]) if c.endswith("_ms") else columns[c] for c in mapping.values()]
        if not data[0]:
            return
        with self.batch():
            self.connection.insert(table, data, list(mapping), column_oriented=True)
            if table == "edges":
                self._touched.edges(columns["edge_id"], columns["child"], columns["parent"], columns["relation"],
                                    epoch_ms(columns["event_ms"]))
            elif table == "unpacked":
                self._touched.unpackings(columns["child"], columns["parent"])

    def retracted(self) -> tuple[set[int], set[tuple[str, str]], set[tuple[str, str, str]]]:
        """(edge ids, (unit, event id) of unit rows, (parent, child, event id) of unpackings) retracted."""
        if self._retracted is None:
            _, edges = self.connection.query(queries.RETRACTED_EDGE_IDS_SQL)
            _, units = self.connection.query(queries.RETRACTED_UNITS_SQL)
            _, unpacks = self.connection.query(queries.RETRACTED_UNPACKINGS_SQL)
            self._retracted = ({e for (e,) in edges}, {(u, ev) for u, ev in units}, {tuple(k) for k in unpacks})
        return self._retracted

    def _without_retracted(self, table: str, columns: Mapping[str, list]) -> Mapping[str, list]:
        edges, units, unpacks = self.retracted()
        gone = {"edges": edges, "units": units, "unpacked": unpacks}[table]
        if not gone:
            return columns
        if table == "edges":
            keys = columns["edge_id"]
        elif table == "units":
            keys = list(zip(columns["unit"], columns["event_id"]))
        else:
            keys = list(zip(columns["parent"], columns["child"], columns["source_event"]))
        keep = [i for i, key in enumerate(keys) if key not in gone]
        if len(keep) == len(keys):
            return columns
        return {name: [values[i] for i in keep] for name, values in columns.items()}

    def retract(self, columns: Mapping[str, list]) -> None:
        """Record what error declarations take back (the corrections table: the audit of every retraction),
        then remove those edges and unit rows from what answers read. Recorded first, so a crash in between
        redoes the removal on redelivery, and later arrivals of the same rows are left out."""
        if not columns["kind"]:
            return
        with self.batch():
            self._retract(columns)

    def _retract(self, columns: Mapping[str, list]) -> None:
        mapping = FROM_DERIVED["corrections"]
        self.connection.insert("corrections", [epoch_ms(columns[c]) if c.endswith("_ms") else columns[c]
                                               for c in mapping.values()], list(mapping), column_oriented=True)
        edges, units, unpacks = self.retracted()
        gone_edges, gone_units, gone_unpacks = [], [], []
        for kind, edge_id, child, parent, relation, source_event in zip(
                columns["kind"], columns["edge_id"], columns["child"], columns["parent"], columns["relation"],
                columns["source_event"]):
            if kind == "edge":
                edges.add(edge_id)
                gone_edges.append((edge_id, child, parent))
                if relation in holding.HELD:
                    self._touched.gone[edge_id] = (child, parent)
            elif kind == "unit":
                units.add((child, source_event))
                gone_units.append((child, source_event))
            else:
                unpacks.add((parent, child, source_event))
                gone_unpacks.append((parent, child, source_event))
                self._touched.unpackings([child], [parent])  # the packing it ended holds on
        if gone_edges:
            self.delete_edges(gone_edges)
        if gone_units:
            self._delete_units(gone_units)
        if gone_unpacks:
            self.connection.command(queries.DELETE_UNPACKINGS_SQL, {"parents": sorted({p for p, _, _ in gone_unpacks}),
                                                                    "keys": gone_unpacks}, settings={"lightweight_deletes_sync": 2})

    def _hold(self, touched: Touched) -> None:
        """Upsert the intervals (genealogy.domain.holding.intervals) of every packing the batch added, and of
        every stored one whose end an unpacking added or taken back may move; mark the edges taken back
        deleted. Each add's interval depends only on it and its holder's unpackings, so recomputing these
        from what is stored gives, in any arrival order, what a replay of all facts gives. A batch of
        packings alone costs one lookup (its holders' unpackings, by the sort key) and one insert."""
        if not (touched.adds or touched.gone or touched.pairs or touched.whole):
            return
        version = self._next_version()  # before the reads: a later read, fresher, wins
        adds = {k: v for k, v in touched.adds.items() if k not in touched.gone} if touched.gone else dict(touched.adds)
        if touched.pairs or touched.whole:
            pairs = sorted(touched.pairs)
            for child, holder, at, edge_id, relation in self.connection.rows(queries.HOLD_ADDS_SQL, {
                    "children": sorted({c for c, _ in pairs}), "pairs": pairs, "holders": sorted(touched.whole)}):
                if edge_id not in touched.gone:
                    adds.setdefault(edge_id, (child, holder, at, relation))
        # Built as columns, in bulk: a flush packs thousands of units, and per-row Python was most of the step.
        gone = list(touched.gone.items())
        columns = [[c for _, (c, _) in gone], [h for _, (_, h) in gone], [k for k, _ in gone], [""] * len(gone),
                   [0] * len(gone), [None] * len(gone), [version] * len(gone), [1] * len(gone)]
        if adds:
            children, holders, ats, relations = (list(c) for c in zip(*adds.values()))
            ends = self.connection.rows(queries.HOLD_ENDS_SQL, {"holders": sorted(set(holders))})
            tos = [to for *_, to in holding.intervals(zip(children, holders, ats, adds), ends)] if ends else [None] * len(ats)
            for column, values in zip(columns, (children, holders, list(adds), relations, ats, tos,
                                                [version] * len(tos), [0] * len(tos))):
                column.extend(values)
        if columns[0]:
            self.connection.insert("held_intervals", columns, HELD_COLUMNS, column_oriented=True)

    def backfill_held(self) -> int:
        """A store written before held_intervals existed (packings there, no intervals): the intervals of all
        of them, once, before the sink consumes. Returns how many were written."""
        if not self.connection.rows(queries.HELD_EMPTY_SQL)[0][0]:
            return 0
        version = self._next_version()
        stored = self.connection.rows(queries.ALL_HOLD_ADDS_SQL)
        ends = self.connection.rows(queries.ALL_HOLD_ENDS_SQL)
        adds = [(child, holder, at, edge_id) for child, holder, at, edge_id, _ in stored]
        tos = [to for *_, to in holding.intervals(adds, ends)]
        for n in range(0, len(stored), 50_000):
            chunk = stored[n:n + 50_000]
            self.connection.insert("held_intervals", [
                [r[0] for r in chunk], [r[1] for r in chunk], [r[3] for r in chunk], [r[4] for r in chunk],
                [r[2] for r in chunk], tos[n:n + 50_000], [version] * len(chunk), [0] * len(chunk)],
                HELD_COLUMNS, column_oriented=True)
        log.info("held_intervals: %d intervals of packings stored before it existed", len(stored))
        return len(stored)

    def _next_version(self) -> int:
        self._version = max(time.time_ns(), self._version + 1)
        return self._version

    def _delete_units(self, pairs: list[tuple[str, str]]) -> None:
        """Unit rows, and the process-window and lot-membership rows their views made from them."""
        parameters = {"units": sorted({u for u, _ in pairs}), "pairs": pairs}
        with self.connection.locked():
            _, rows = self.connection.query(queries.RETRACTED_UNIT_ROWS_SQL, parameters)
            self.connection.command(queries.DELETE_UNITS_SQL, parameters, settings={"lightweight_deletes_sync": 2})
            for unit, _, lot, station, at in rows:
                self.connection.command(queries.DELETE_UNIT_AT_STATION_SQL, {"station": station, "at": at, "unit": unit},
                                        settings={"lightweight_deletes_sync": 2})
                self.connection.command(queries.DELETE_LOT_MEMBER_SQL, {"lot": lot, "unit": unit},
                                        settings={"lightweight_deletes_sync": 2})

    def delete_edges(self, edges: Sequence[tuple[int, str, str]]) -> None:
        """Remove (edge_id, child, parent) from both edge copies, synchronously: a ReplacingMergeTree can only
        add rows, and reprocess must take back edges a late unload made wrong. held_intervals is not touched
        here: reprocess takes back join edges (consumed), which hold for good; retract() marks the packings
        an error declaration takes back."""
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


def _ms(values: Iterable) -> list[int]:
    """Epoch ms of DateTime values (rows inserted as rows) or of ints already in ms."""
    return [round(v.timestamp() * 1000) if isinstance(v, datetime) else int(v) for v in values]


def epoch_ms(values: Iterable[int]) -> list[int]:
    """Event times for a DateTime64(3) column; impossible ones (dead-lettered upstream already) clamp to the epoch."""
    return [v if 0 <= v < MAX_MS else 0 for v in values]
