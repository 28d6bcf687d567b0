"""What recall, trace, the reports and /status read: the Graph and Traversals of
genealogy.domain.recall over ClickHouse, plus status counts.

The traversals run inside ClickHouse (sinks/queries.py says how and why); one with production lots
or the lot-level scope fills a temporary table of the connection's session, so it holds the
connection's lock from filling it to reading it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from genealogy.domain.recall import SHIP_MAX
from genealogy.sinks import queries as q
from genealogy.sinks.connection import Connection, DatabaseError, error_code

TOO_DEEP_RECURSION = 306  # ClickHouse error codes
UNKNOWN_TABLE = 60

# Per kind of start set (see _starts): the capped statement and the exact one it falls back to.
FORWARD = {"ids": (q.FORWARD_IDS_SQL, q.FORWARD_EXACT_IDS_SQL),
           "window": (q.FORWARD_WINDOW_SQL, q.FORWARD_EXACT_WINDOW_SQL),
           "completed": (q.FORWARD_COMPLETED_SQL, q.FORWARD_EXACT_COMPLETED_SQL)}
FORWARD_INTO = {"ids": (q.FORWARD_IDS_INTO_SQL, q.FORWARD_EXACT_IDS_INTO_SQL),
                "window": (q.FORWARD_WINDOW_INTO_SQL, q.FORWARD_EXACT_WINDOW_INTO_SQL),
                "completed": (q.FORWARD_COMPLETED_INTO_SQL, q.FORWARD_EXACT_COMPLETED_INTO_SQL)}
# The lot-level walk's first two steps: its start set, then level 1 (the only windowed hop).
LOT_START = {"ids": (q.LOT_START_IDS_SQL, q.LOT_FIRST_HOP_SQL),
             "window": (q.LOT_START_IDS_SQL, q.LOT_FIRST_HOP_WINDOW_SQL),
             "completed": (q.LOT_START_COMPLETED_SQL, q.LOT_FIRST_HOP_SQL)}
# Scratch tables: (empty it, create it).
RECALL_NODES = (q.TRUNCATE_RECALL_NODES_SQL, q.CREATE_RECALL_NODES_SQL)
RECALL_WALK = (q.TRUNCATE_RECALL_WALK_SQL, q.CREATE_RECALL_WALK_SQL)


class Completed(NamedTuple):
    """A start set the read model evaluates itself: the units `station` completed in [since_ms, until_ms),
    by `operator` if given (what ``ReadModel.units_at`` returns), without the ids crossing over."""
    station: str
    since_ms: int
    until_ms: int
    operator: str | None = None


class ReadModel:
    # True: traversals skip the capped queries and run the exact ones (tests compare both).
    exact_traversals = False

    def __init__(self, connection: Connection):
        self.connection = connection

    def rows(self, sql: str, **parameters) -> list[tuple]:
        return self.connection.rows(sql, parameters)

    def captured(self, topic: str) -> int:
        return int(self.connection.rows(q.CAPTURE_COUNT_SQL_ALL, {"topic": topic})[0][0])

    def capture_history(self, topic: str, page: int = 2_000) -> Iterator[tuple[str, bytes]]:
        """(station, payload) of every capture message stored, station by station, each in the order its
        worker handled them (``CAPTURE_HISTORY_PAGE_SQL``), read in pages."""
        cursor = ("", -(2**62), 0, 0)
        while True:
            rows = self.connection.rows(q.CAPTURE_HISTORY_PAGE_SQL, {"topic": topic, "s": cursor[0], "t": cursor[1],
                                                                     "p": cursor[2], "o": cursor[3], "n": page},
                                        binary=["payload"])
            for source, _, _, _, payload in rows:
                yield source, payload
            if len(rows) < page:
                return
            cursor = tuple(rows[-1][:4])

    # --- Graph: one BFS level per call ----------------------------------------------------

    def parents(self, nodes: Iterable[str], since_ms: int | None = None, until_ms: int | None = None) -> list[tuple[str, str]]:
        nodes = list(nodes)
        if not nodes:
            return []
        if since_ms is None and until_ms is None:
            return self.rows(q.PARENTS_SQL, nodes=nodes)
        return self.rows(q.PARENTS_IN_WINDOW_SQL, nodes=nodes, since=since_ms or 0, until=until_ms or 2**62)

    def packed_into(self, nodes: Iterable[str]) -> list[tuple[str, str, int, int | None]]:
        """(child, holder, from, to or None): the stored intervals (held_intervals) of the nodes' packings."""
        return self.rows(q.PACKED_INTO_SQL, nodes=sorted(set(nodes)))

    def closed_in(self, holders: Iterable[str]) -> list[tuple[str, str, int, int]]:
        """The closed intervals of these holders, by holder (held_by_holder): recall's is-anything-unpacked check."""
        holders = sorted(set(holders))
        return self.rows(q.CLOSED_IN_SQL, holders=holders) if holders else []

    def unpackings(self, containers: Iterable[str]) -> list[tuple[str, str, int]]:
        return self.rows(q.UNPACKINGS_SQL, containers=sorted(set(containers)))

    def edges_up(self, nodes: Iterable[str]) -> list[tuple[str, str, str, int, float]]:
        nodes = sorted(set(nodes))
        return self.rows(q.EDGES_UP_SQL, nodes=nodes) if nodes else []

    def removals(self, units: Iterable[str]) -> list[tuple[str, str, int, float, str]]:
        units = sorted(set(units))
        return [r[:5] for r in self.rows(q.REMOVALS_SQL, units=units)] if units else []

    def removed_among(self, nodes: Iterable[str]) -> list[tuple[str, str, int, float, str]]:
        """Removals of any of the nodes. A long list is not shipped: the components ever removed are
        few (rework is rare), so they are fetched and matched here instead."""
        nodes = sorted(set(nodes))
        if len(nodes) > SHIP_MAX:
            wanted = set(nodes)
            nodes = [c for (c,) in self.rows(q.REMOVED_COMPONENTS_SQL) if c in wanted]
        return [r[:5] for r in self.rows(q.REMOVALS_OF_SQL, nodes=nodes)] if nodes else []

    def children(self, nodes: Iterable[str]) -> list[tuple[str, str, str, int, str]]:
        nodes = list(nodes)
        return self.rows(q.CHILDREN_SQL, nodes=nodes) if nodes else []

    def production_lots(self, units: Iterable[str]) -> dict[str, str]:
        units = list(units)
        return dict(self.rows(q.PRODUCTION_LOTS_SQL, units=units)) if units else {}

    def lot_members(self, lots: Iterable[str]) -> dict[str, list[str]]:
        lots = list(lots)
        out: dict[str, list[str]] = {lot: [] for lot in lots}
        if lots:
            for lot, unit in self.rows(q.LOT_MEMBERS_SQL, lots=lots):
                out[lot].append(unit)
        return out

    def units_at(self, station: str, since_ms: int, until_ms: int, operator: str | None = None) -> list[str]:
        return [r[0] for r in self.rows(q.UNITS_AT_SQL, station=station, since=since_ms, until=until_ms, operator=operator or "")]

    # --- Traversals: one call each (genealogy.domain.recall uses them when the graph has them) ---

    def completed(self, station: str, since_ms: int, until_ms: int, operator: str | None = None) -> Completed:
        return Completed(station, since_ms, until_ms, operator)

    def forward_reach(self, starts: Sequence[str] | Completed, since_ms: int | None = None,
                      until_ms: int | None = None, lots: bool = False) -> tuple[dict[str, int], dict[str, str]]:
        """Forward from the starts in one traversal: node -> BFS level (the starts are level 0; the
        window bounds the first hop only) and, with lots, unit -> production lot for every node."""
        kind, parameters = _starts(starts, since_ms, until_ms)
        if not lots:
            with self.connection.locked():
                rows = self._capped(*FORWARD[kind], parameters)
            return {node: int(depth) for node, depth in rows}, {}
        with self.connection.locked():
            self._scratch(RECALL_NODES)
            self._capped(*FORWARD_INTO[kind], parameters, into=RECALL_NODES)
            rows = self.connection.rows(q.FORWARD_LOTS_RESULT_SQL)
        levels: dict[str, int] = {}
        unit_lots: dict[str, str] = {}
        for node, depth, lot, is_lot in rows:
            if is_lot:
                unit_lots[node] = lot
            else:
                levels[node] = int(depth)
        return levels, unit_lots

    def serials_downstream(self, sources: Iterable[str]) -> dict[str, int]:
        """For each source, the number of serial nodes forward of it (unwindowed, itself excluded)."""
        sources = list(dict.fromkeys(sources))
        if not sources:
            return {}
        with self.connection.locked():
            rows = self._capped(q.SERIALS_DOWNSTREAM_SQL, q.SERIALS_DOWNSTREAM_EXACT_SQL, {"sources": sources})
        return dict.fromkeys(sources, 0) | {src: int(n) for src, n in rows}

    def lot_scope(self, starts: Sequence[str] | Completed, since_ms: int | None = None,
                  until_ms: int | None = None) -> dict[str, int]:
        """genealogy.domain.recall.lot_level, level by level inside ClickHouse: production lot -> units,
        for every lot reached."""
        kind, parameters = _starts(starts, since_ms, until_ms)
        start, first_hop = LOT_START[kind]
        c = self.connection
        with c.locked():
            self._scratch(RECALL_WALK)
            c.command(start, parameters)
            c.command(first_hop, parameters)
            level = 1
            while c.rows(q.LOT_LEVEL_SIZE_SQL, {"level": level})[0][0]:
                c.command(q.LOT_WIDEN_SQL, {"level": level})
                c.command(q.LOT_NEXT_LEVEL_SQL, {"level": level, "next": level + 1})
                level += 1
            return {lot: int(n) for lot, n in c.rows(q.LOT_SCOPE_RESULT_SQL)}

    def backward_edges(self, unit: str, max_depth: int = 64) -> list[tuple[str, str, str, int, str]]:
        """CHILDREN_SQL's rows for every node below the unit (at least the first max_depth levels)."""
        with self.connection.locked():
            rows = self._capped(q.BACKWARD_SQL, q.BACKWARD_EXACT_SQL, {"unit": unit, "max_depth": max_depth})
        return [tuple(r) for r in rows]

    def _capped(self, fast: str, exact: str, parameters: dict, into: tuple[str, str] | None = None) -> list[tuple]:
        """The capped statement, or past its cap (a cycle, a deeper graph) the exact one. `into`: the
        scratch table the statements fill (emptied again before the exact one). Caller holds the lock."""
        c = self.connection
        if not self.exact_traversals:
            try:
                if into:
                    c.command(fast, parameters)
                    return []
                return c.rows(fast, parameters)
            except DatabaseError as exc:
                if error_code(exc) != TOO_DEEP_RECURSION:
                    raise
                if into:
                    self._scratch(into)
        if into:
            c.command(exact, parameters)
            return []
        return c.rows(exact, parameters)

    def _scratch(self, table: tuple[str, str]) -> None:
        """Empty one of this session's temporary tables, creating it on first use (caller holds the lock)."""
        truncate, create = table
        try:
            self.connection.command(truncate)
        except DatabaseError as exc:
            if error_code(exc) != UNKNOWN_TABLE:
                raise
            self.connection.command(create)

    # --- lookups and status ------------------------------------------------------------------

    def resolve(self, ident: str, kinds: Sequence[str]) -> list[str]:
        return [r[0] for r in self.rows(q.RESOLVE_SQL, ident=ident, kinds=list(kinds))]

    def counts(self) -> dict[str, int]:
        columns, rows = self.connection.query(q.COUNTS_SQL)
        return dict(zip(columns, (int(v) for v in rows[0])))

    def dead_letter_summary(self) -> list[dict]:
        return [{"stage": s, "event_kind": k, "example_reason": r, "count": int(n)}
                for s, k, r, n in self.rows(q.DEAD_LETTERS_BY_REASON_SQL)]


def _starts(starts: Sequence[str] | Completed, since_ms: int | None, until_ms: int | None) -> tuple[str, dict]:
    """The kind of start set ("ids", "window", "completed") and its parameters."""
    if isinstance(starts, Completed):
        if since_ms is not None or until_ms is not None:
            raise ValueError("a first-hop window applies to given start ids only")
        return "completed", {"station": starts.station, "since": starts.since_ms, "until": starts.until_ms,
                             "operator": starts.operator or ""}
    if since_ms is None and until_ms is None:
        return "ids", {"starts": list(starts)}
    # as parents(): an open end of the window is unbounded
    return "window", {"starts": list(starts), "hop_since": since_ms or 0, "hop_until": until_ms or 2**62}
