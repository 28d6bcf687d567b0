"""Thin typed layer over ClickHouse (embedded chdb or a server, same client API).

SQL lives in ``sql/ddl.sql`` and in the constants below; values are always
bound as parameters. In embedded mode only one process may open the data
directory, so the store serialises its own calls with a lock and the same
process answers queries and runs the sink.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import NamedTuple

import clickhouse_connect
from clickhouse_connect.driver.exceptions import DatabaseError

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

WINDOW = "AND event_time >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') AND event_time < fromUnixTimestamp64Milli({until:Int64}, 'UTC')"

PARENTS_SQL = "SELECT DISTINCT child, parent FROM edges WHERE child IN {nodes:Array(String)}"
CHILDREN_SQL = """
SELECT parent, child, any(relation), min(toUnixTimestamp64Milli(event_time)), any(station)
FROM edges_by_parent WHERE parent IN {nodes:Array(String)}
GROUP BY parent, child ORDER BY parent, child
"""
PRODUCTION_LOTS_SQL = "SELECT unit, any(production_lot) FROM units WHERE unit IN {units:Array(String)} GROUP BY unit"
LOT_MEMBERS_SQL = "SELECT DISTINCT production_lot, unit FROM lot_members WHERE production_lot IN {lots:Array(String)}"
UNITS_AT_SQL = """
SELECT DISTINCT unit FROM units_by_station
WHERE station = {station:String}
  AND completed_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') AND completed_at < fromUnixTimestamp64Milli({until:Int64}, 'UTC')
  AND ({operator:String} = '' OR operator = {operator:String})
ORDER BY unit
"""
RESOLVE_SQL = "SELECT DISTINCT node FROM nodes WHERE ident = {ident:String} AND kind IN {kinds:Array(String)} ORDER BY node LIMIT 20"
# --- whole traversals inside ClickHouse -------------------------------------------------------
# genealogy.recall walks level by level through the Graph interface. With chdb every level then
# shipped its whole frontier as an Array literal that ClickHouse had to parse (~19 ms per 5,000
# ids), and /recall asked 15 such queries. The statements below keep the frontiers inside
# ClickHouse; only answers cross over. genealogy.recall uses them once a walk grows past SHIP_MAX
# ids, and keeps its level-by-level code as the definition: tests/test_store.py asserts they
# answer alike, cycles and windows included. What runs how was picked by measurement
# (bench/README.md, "Where the time goes", and bench/traversal_variants.py):
#
# * Forward: a recursive CTE whose working table is plain rows (node, depth), each step ONE
#   primary-key lookup `child IN (SELECT x FROM st)` joined back to the working table for the
#   depth (~3 ms a step). Without a seen set a node reachable by walks of several lengths is
#   walked again (min(depth) is still its BFS level), and a cycle never ends: the steps are capped
#   (TRAVERSAL_STEPS) and past the cap an exact CTE runs instead, whose working table is ONE row
#   holding the BFS state as arrays (frontier, seen), 2-3x slower. With production lots, the nodes
#   land in a temporary table first: a CTE read twice is evaluated twice. Widening (serials
#   downstream of each lot node on the path) is one more such CTE for all lot nodes at once.
# * Lot-level scope: lot_level's walk as a loop of INSERT ... SELECT steps over a temporary table
#   holding the walk (three statements per level). A recursive CTE needs the same lookups nested in
#   every step; it measured 2x slower at 10M edges.
# * Backward (trace): a plain-rows CTE with the same cap and exact fallback; genealogy.recall.trace
#   walks the rows it returns in memory.
#
# ClickHouse specifics: the key lookup is spelled PREWHERE, or ClickHouse moves the other conditions
# (kind, NOT IN seen) there too and evaluates them on every row of the granules read (2x slower);
# a scalar subquery on the working table is evaluated once for the whole
# recursion (per-step conditions use `IN (SELECT ... FROM st)`); identical IN subqueries share one
# set; an alias in a recursive SELECT shadows the working table's column of that name in its
# WHERE, so recursive parts use none. Temporary tables live in the client's session (chdb: its
# connection; HTTP: clickhouse-connect's session id), and the store's lock serialises their use.

SCRATCH_DDL = {
    "recall_nodes": "CREATE TEMPORARY TABLE IF NOT EXISTS recall_nodes (node String, depth UInt32) ENGINE = Memory",
    "recall_walk": "CREATE TEMPORARY TABLE IF NOT EXISTS recall_walk (node String, tag UInt8, lvl UInt32) ENGINE = Memory",
}

# Where a traversal starts: the given node ids, or the units a station completed in a window
# (UNITS_AT_SQL, evaluated inside ClickHouse).
STARTS_IDS_SQL = "SELECT arrayJoin({starts:Array(String)}) AS node"
STARTS_COMPLETED_SQL = """
SELECT unit AS node FROM units_by_station
WHERE station = {station:String}
  AND completed_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') AND completed_at < fromUnixTimestamp64Milli({until:Int64}, 'UTC')
  AND ({operator:String} = '' OR operator = {operator:String})
"""
# The window bounds the first hop only (genealogy.recall.forward).
HOP_WINDOW = ("event_time >= fromUnixTimestamp64Milli({hop_since:Int64}, 'UTC') "
              "AND event_time < fromUnixTimestamp64Milli({hop_until:Int64}, 'UTC')")

# Forward (where-used): every node the starts reach with its BFS level (the starts are level 0).
# The window bounds the first hop only; then a start reached again is not walked again. Without a
# window that changes nothing (what lies beyond a start is reached from it at level 1 anyway, and
# reaching the same start again means a cycle: the cap), so only the windowed form filters.
FORWARD_TEMPLATE = """
WITH RECURSIVE
    starts AS ({starts}),
    st AS (
        SELECT DISTINCT parent AS x, toUInt32(1) AS depth FROM edges
        PREWHERE child IN (SELECT node FROM starts) WHERE 1 {window} {not_starts}
      UNION ALL
        SELECT DISTINCT e.parent, toUInt32(r.depth + 1)
        FROM (SELECT child, parent FROM edges PREWHERE child IN (SELECT x FROM st) WHERE 1 {not_starts}) AS e
        INNER JOIN st AS r ON e.child = r.x
    )
SELECT DISTINCT node, toUInt32(0) FROM starts
UNION ALL
SELECT x, min(depth) FROM st WHERE x NOT IN (SELECT node FROM starts) GROUP BY x
SETTINGS max_recursive_cte_evaluation_depth = {steps}
"""
# The same breadth-first, the walk's state in one row: each node is expanded once.
FORWARD_EXACT_TEMPLATE = """
WITH RECURSIVE st AS (
    SELECT groupUniqArray(node) AS frontier, frontier AS seen, toUInt32(0) AS depth FROM ({starts})
  UNION ALL
    SELECT nxt.a, arrayConcat(st.seen, nxt.a), toUInt32(st.depth + 1)
    FROM st
    CROSS JOIN (
        SELECT groupUniqArray(parent) AS a FROM edges
        PREWHERE child IN (SELECT arrayJoin(frontier) FROM st)
        WHERE parent NOT IN (SELECT arrayJoin(seen) FROM st) {first_hop_window}
    ) AS nxt
    WHERE notEmpty(st.frontier)
)
SELECT arrayJoin(frontier), depth FROM st
SETTINGS max_recursive_cte_evaluation_depth = {uncapped}
"""
# With production lots: the walk into recall_nodes, then rows (node, level, '', 0) and (unit, 0, lot, 1).
FORWARD_LOTS_RESULT_SQL = """
SELECT node, depth, '', toUInt8(0) FROM recall_nodes
UNION ALL
SELECT unit, toUInt32(0), any(production_lot), toUInt8(1) FROM units WHERE unit IN (SELECT node FROM recall_nodes) GROUP BY unit
"""

# For each source, the serial nodes downstream of it (unwindowed forward, the source excluded).
SERIALS_DOWNSTREAM_SQL = """
WITH RECURSIVE st AS (
    SELECT DISTINCT child AS src, parent AS x FROM edges WHERE child IN {sources:Array(String)}
  UNION ALL
    SELECT DISTINCT r.src, e.parent
    FROM (SELECT child, parent FROM edges WHERE child IN (SELECT x FROM st)) AS e
    INNER JOIN st AS r ON e.child = r.x
)
SELECT src, uniqExactIf(x, substringIndex(x, ':', 1) = 'serial' AND x != src) FROM st GROUP BY src
SETTINGS max_recursive_cte_evaluation_depth = {steps}
"""
# The same breadth-first, one working row per source.
SERIALS_DOWNSTREAM_EXACT_SQL = """
WITH RECURSIVE st AS (
    SELECT arrayJoin(arrayDistinct({sources:Array(String)})) AS src, [src] AS frontier, [src] AS seen, toUInt32(0) AS depth
  UNION ALL
    SELECT st.src, nxt.a, arrayConcat(st.seen, nxt.a), toUInt32(st.depth + 1)
    FROM st
    INNER JOIN (
        SELECT f.src AS src, groupUniqArray(e.parent) AS a
        FROM (SELECT DISTINCT child, parent FROM edges WHERE child IN (SELECT arrayJoin(frontier) FROM st)) AS e
        INNER JOIN (SELECT src, arrayJoin(frontier) AS node FROM st) AS f ON e.child = f.node
        WHERE (f.src, e.parent) NOT IN (SELECT src, arrayJoin(seen) FROM st)
        GROUP BY f.src
    ) AS nxt ON nxt.src = st.src
)
SELECT src, sum(length(arrayFilter(n -> substringIndex(n, ':', 1) = 'serial', frontier))) FROM st WHERE depth > 0 GROUP BY src
SETTINGS max_recursive_cte_evaluation_depth = {uncapped}
"""

# Lot-level scope (genealogy.recall.lot_level), the same walk in recall_walk (node, tag, lvl):
# tag 0 the start set F0 (the starts, their serials' production lots and those lots' members),
# 1 a serial/lot node reached later, 2 a production lot widened. Per level L: the lots of the
# nodes reached at L not widened yet (a serial's production lot, a lot node itself); then the
# serial/lot parents, not seen yet, of the level's nodes and of those lots' nodes and members
# make level L + 1 (through the window from F0 only). lot_level also marks the lots' nodes and
# members seen; not recording them changes no answer (their lot is widened already, and they
# are walked unwindowed either way), it only saves inserting them.
LOT_START_TEMPLATE = """
INSERT INTO recall_walk
WITH starts AS ({starts}),
     own AS (SELECT any(production_lot) AS lot FROM units
             PREWHERE unit IN (SELECT node FROM starts) WHERE substringIndex(unit, ':', 1) = 'serial' GROUP BY unit)
SELECT DISTINCT node, toUInt8(0), toUInt32(0) FROM (
    SELECT node FROM starts UNION ALL SELECT lot FROM own
    UNION ALL SELECT unit FROM lot_members WHERE production_lot IN (SELECT lot FROM own))
UNION ALL
SELECT DISTINCT lot, toUInt8(2), toUInt32(0) FROM own
"""
LOT_FIRST_HOP_TEMPLATE = """
INSERT INTO recall_walk
SELECT DISTINCT parent, toUInt8(1), toUInt32(1) FROM edges
PREWHERE child IN (SELECT node FROM recall_walk WHERE tag = 0)
WHERE substringIndex(parent, ':', 1) IN ('serial', 'lot') AND parent NOT IN (SELECT node FROM recall_walk WHERE tag IN (0, 1)) {window}
"""
LOT_WIDEN_SQL = """
INSERT INTO recall_walk
SELECT DISTINCT lot, toUInt8(2), {level:UInt32} FROM (
    SELECT any(production_lot) AS lot FROM units
    PREWHERE unit IN (SELECT node FROM recall_walk WHERE tag = 1 AND lvl = {level:UInt32})
    WHERE substringIndex(unit, ':', 1) = 'serial'
    GROUP BY unit
  UNION ALL
    SELECT node FROM recall_walk WHERE tag = 1 AND lvl = {level:UInt32} AND substringIndex(node, ':', 1) = 'lot')
WHERE lot NOT IN (SELECT node FROM recall_walk WHERE tag = 2)
"""
LOT_NEXT_LEVEL_SQL = """
INSERT INTO recall_walk
SELECT DISTINCT parent, toUInt8(1), {next:UInt32} FROM edges
PREWHERE child IN (SELECT node FROM recall_walk WHERE tag IN (1, 2) AND lvl = {level:UInt32}
                   UNION ALL
                   SELECT unit FROM lot_members WHERE production_lot IN (SELECT node FROM recall_walk WHERE tag = 2 AND lvl = {level:UInt32}))
WHERE child NOT IN (SELECT node FROM recall_walk WHERE tag = 0)
  AND substringIndex(parent, ':', 1) IN ('serial', 'lot') AND parent NOT IN (SELECT node FROM recall_walk WHERE tag IN (0, 1))
"""
LOT_LEVEL_SIZE_SQL = "SELECT count() FROM recall_walk WHERE tag = 1 AND lvl = {level:UInt32}"
LOT_SCOPE_RESULT_SQL = """
SELECT production_lot, uniqExact(unit) FROM lot_members
WHERE production_lot IN (SELECT node FROM recall_walk WHERE tag = 2)
GROUP BY production_lot
"""

# Backward (as built): CHILDREN_SQL's rows for every node below the unit.
BACKWARD_SQL = """
WITH RECURSIVE st AS (
    SELECT parent, child, toString(any(relation)) AS rel, min(toUnixTimestamp64Milli(event_time)) AS ms, toString(any(station)) AS stn
    FROM edges_by_parent WHERE parent = {unit:String} GROUP BY parent, child
  UNION ALL
    SELECT parent, child, toString(any(relation)), min(toUnixTimestamp64Milli(event_time)), toString(any(station))
    FROM edges_by_parent WHERE parent IN (SELECT child FROM st) GROUP BY parent, child
)
SELECT parent, child, any(rel), min(ms), any(stn) FROM st GROUP BY parent, child
SETTINGS max_recursive_cte_evaluation_depth = {steps}
"""
# The same breadth-first, for the nodes of the first {max_depth} levels (genealogy.recall.trace).
BACKWARD_EXACT_SQL = """
WITH RECURSIVE st AS (
    SELECT [{unit:String}] AS frontier, frontier AS seen,
           CAST([], 'Array(Tuple(String, String, String, Int64, String))') AS found, toUInt32(0) AS depth
  UNION ALL
    SELECT c.nodes, arrayConcat(st.seen, c.nodes), c.rows, toUInt32(st.depth + 1)
    FROM st
    CROSS JOIN (
        SELECT CAST(groupArray((parent, child, rel, ms, stn)), 'Array(Tuple(String, String, String, Int64, String))') AS rows,
               groupUniqArrayIf(child, child NOT IN (SELECT arrayJoin(seen) FROM st)) AS nodes
        FROM (
            SELECT parent, child, toString(any(relation)) AS rel, min(toUnixTimestamp64Milli(event_time)) AS ms, toString(any(station)) AS stn
            FROM edges_by_parent PREWHERE parent IN (SELECT arrayJoin(frontier) FROM st)
            GROUP BY parent, child)
    ) AS c
    WHERE notEmpty(st.frontier) AND st.depth < {max_depth:UInt32}
)
SELECT f.1, f.2, f.3, f.4, f.5 FROM st ARRAY JOIN found AS f
SETTINGS max_recursive_cte_evaluation_depth = {uncapped}
"""


# Steps a capped traversal query may take before the exact one runs instead: more than genealogies
# are deep, few enough that a cycle costs little before it is noticed. A BFS level is one step.
TRAVERSAL_STEPS = 32
UNCAPPED_STEPS = 1_000_000
TOO_DEEP_RECURSION = 306  # ClickHouse error codes
UNKNOWN_TABLE = 60


def _by_start(template: str) -> dict[str, str]:
    """One statement per kind of start set: ids, ids with a first-hop window, a station's completions."""
    window = {"window": f"AND {HOP_WINDOW}", "not_starts": "AND parent NOT IN (SELECT node FROM starts)",
              "first_hop_window": f"AND (toUInt32(0) NOT IN (SELECT depth FROM st) OR ({HOP_WINDOW}))"}
    plain = {"window": "", "not_starts": "", "first_hop_window": ""}
    steps = {"steps": TRAVERSAL_STEPS, "uncapped": UNCAPPED_STEPS}
    return {"ids": template.format(starts=STARTS_IDS_SQL, **plain, **steps),
            "window": template.format(starts=STARTS_IDS_SQL, **window, **steps),
            "completed": template.format(starts=STARTS_COMPLETED_SQL, **plain, **steps)}


FORWARD_SQL = _by_start(FORWARD_TEMPLATE)
FORWARD_EXACT_SQL = _by_start(FORWARD_EXACT_TEMPLATE)
FORWARD_INTO_SQL = {k: f"INSERT INTO recall_nodes {v}" for k, v in FORWARD_SQL.items()}
FORWARD_EXACT_INTO_SQL = {k: f"INSERT INTO recall_nodes {v}" for k, v in FORWARD_EXACT_SQL.items()}
SERIALS_DOWNSTREAM_SQL = SERIALS_DOWNSTREAM_SQL.replace("{steps}", str(TRAVERSAL_STEPS))
SERIALS_DOWNSTREAM_EXACT_SQL = SERIALS_DOWNSTREAM_EXACT_SQL.replace("{uncapped}", str(UNCAPPED_STEPS))
BACKWARD_SQL = BACKWARD_SQL.replace("{steps}", str(TRAVERSAL_STEPS))
BACKWARD_EXACT_SQL = BACKWARD_EXACT_SQL.replace("{uncapped}", str(UNCAPPED_STEPS))
LOT_START_SQL = _by_start(LOT_START_TEMPLATE)
LOT_FIRST_HOP_SQL = _by_start(LOT_FIRST_HOP_TEMPLATE)

COUNTS_SQL = """
SELECT
    (SELECT uniqExact(edge_id) FROM edges)                  AS edges,
    (SELECT uniqExact(unit) FROM units)                     AS units,
    (SELECT uniqExact(production_lot) FROM units)           AS production_lots,
    (SELECT uniqExact(topic, partition, offset) FROM capture_batches) AS capture_batches,
    (SELECT uniqExact(event_id) FROM station_facts)         AS station_facts,
    (SELECT uniqExact(dead_letter_id) FROM dead_letters)    AS dead_letters
"""
DEAD_LETTERS_BY_REASON_SQL = """
SELECT stage, event_kind, any(reason), uniqExact(dead_letter_id) FROM dead_letters
GROUP BY stage, event_kind ORDER BY stage, event_kind
"""


class Completed(NamedTuple):
    """A start set the store evaluates itself: the units `station` completed in [since_ms, until_ms),
    by `operator` if given (what ``Store.units_at`` returns), without the ids crossing over."""
    station: str
    since_ms: int
    until_ms: int
    operator: str | None = None


class Store:
    # True: traversals skip the capped queries and run the exact ones (tests compare both).
    exact_traversals = False

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.client = clickhouse_connect.get_client(dsn=dsn)
        self._lock = threading.RLock()

    def migrate(self) -> None:
        ddl = resources.files("sinks").joinpath("sql/ddl.sql").read_text()
        statements = [s.strip() for s in _strip_comments(ddl).split(";") if s.strip()]
        with self._lock:
            for statement in statements:
                self.client.command(statement)

    def close(self) -> None:
        with self._lock:
            self.client.close()

    # --- writes -----------------------------------------------------------------

    def insert(self, table: str, columns: list[str], rows: Sequence[Sequence]) -> None:
        if rows:
            with self._lock:
                self.client.insert(table, rows, column_names=columns)

    def insert_derived(self, table: str, columns: Mapping[str, list]) -> None:
        """Rows of `table` given as the columns of a schemas.DERIVED group (FROM_DERIVED), inserted column by
        column: no per-row objects, and times stay epoch ms (clickhouse-connect writes ints as DateTime64 ticks)."""
        mapping = FROM_DERIVED[table]
        data = [epoch_ms(columns[c]) if c.endswith("_ms") else columns[c] for c in mapping.values()]
        if data[0]:
            with self._lock:
                self.client.insert(table, data, column_names=list(mapping), column_oriented=True)

    # --- reads ------------------------------------------------------------------

    def rows(self, sql: str, **parameters) -> list[tuple]:
        with self._lock:
            return self.client.query(sql, parameters=parameters).result_rows

    def parents(self, nodes: Iterable[str], since_ms: int | None = None, until_ms: int | None = None) -> list[tuple[str, str]]:
        nodes = list(nodes)
        if not nodes:
            return []
        if since_ms is None and until_ms is None:
            return self.rows(PARENTS_SQL, nodes=nodes)
        return self.rows(f"{PARENTS_SQL} {WINDOW}", nodes=nodes, since=since_ms or 0, until=until_ms or 2**62)

    def children(self, nodes: Iterable[str]) -> list[tuple[str, str, str, int, str]]:
        nodes = list(nodes)
        return self.rows(CHILDREN_SQL, nodes=nodes) if nodes else []

    def production_lots(self, units: Iterable[str]) -> dict[str, str]:
        units = list(units)
        return dict(self.rows(PRODUCTION_LOTS_SQL, units=units)) if units else {}

    def lot_members(self, lots: Iterable[str]) -> dict[str, list[str]]:
        lots = list(lots)
        out: dict[str, list[str]] = {lot: [] for lot in lots}
        if lots:
            for lot, unit in self.rows(LOT_MEMBERS_SQL, lots=lots):
                out[lot].append(unit)
        return out

    def units_at(self, station: str, since_ms: int, until_ms: int, operator: str | None = None) -> list[str]:
        return [r[0] for r in self.rows(UNITS_AT_SQL, station=station, since=since_ms, until=until_ms, operator=operator or "")]

    # --- whole traversals, one query each (genealogy.recall uses them when the graph has them) ---

    def completed(self, station: str, since_ms: int, until_ms: int, operator: str | None = None) -> Completed:
        return Completed(station, since_ms, until_ms, operator)

    def forward_reach(self, starts: Sequence[str] | Completed, since_ms: int | None = None,
                      until_ms: int | None = None, lots: bool = False) -> tuple[dict[str, int], dict[str, str]]:
        """Forward from the starts in one traversal: node -> BFS level (the starts are level 0; the
        window bounds the first hop only) and, with lots, unit -> production lot for every node."""
        kind, parameters = self._starts(starts, since_ms, until_ms)
        with self._lock:
            if not lots:
                return {node: int(depth) for node, depth in self._capped(FORWARD_SQL[kind], FORWARD_EXACT_SQL[kind], parameters)}, {}
            self._scratch("recall_nodes")
            self._capped(FORWARD_INTO_SQL[kind], FORWARD_EXACT_INTO_SQL[kind], parameters, into="recall_nodes")
            rows = self.client.query(FORWARD_LOTS_RESULT_SQL).result_rows
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
        with self._lock:
            rows = self._capped(SERIALS_DOWNSTREAM_SQL, SERIALS_DOWNSTREAM_EXACT_SQL, {"sources": sources})
        return dict.fromkeys(sources, 0) | {src: int(n) for src, n in rows}

    def lot_scope(self, starts: Sequence[str] | Completed, since_ms: int | None = None,
                  until_ms: int | None = None) -> dict[str, int]:
        """genealogy.recall.lot_level, level by level inside ClickHouse: production lot -> units,
        for every lot reached."""
        kind, parameters = self._starts(starts, since_ms, until_ms)
        with self._lock:
            self._scratch("recall_walk")
            self.client.command(LOT_START_SQL[kind], parameters=parameters)
            self.client.command(LOT_FIRST_HOP_SQL[kind], parameters=parameters)
            level = 1
            while self.client.query(LOT_LEVEL_SIZE_SQL, parameters={"level": level}).result_rows[0][0]:
                self.client.command(LOT_WIDEN_SQL, parameters={"level": level})
                self.client.command(LOT_NEXT_LEVEL_SQL, parameters={"level": level, "next": level + 1})
                level += 1
            return {lot: int(n) for lot, n in self.client.query(LOT_SCOPE_RESULT_SQL).result_rows}

    def backward_edges(self, unit: str, max_depth: int = 64) -> list[tuple[str, str, str, int, str]]:
        """CHILDREN_SQL's rows for every node below the unit (at least the first max_depth levels)."""
        with self._lock:
            rows = self._capped(BACKWARD_SQL, BACKWARD_EXACT_SQL, {"unit": unit, "max_depth": max_depth})
        return [tuple(r) for r in rows]

    def _capped(self, fast: str, exact: str, parameters: dict, into: str | None = None) -> list[tuple]:
        """The capped statement, or past its cap (a cycle, a deeper graph) the exact one. `into`: a
        temporary table the statements fill (emptied again before the exact one). Caller holds the lock."""
        if not self.exact_traversals:
            try:
                if into:
                    self.client.command(fast, parameters=parameters)
                    return []
                return self.client.query(fast, parameters=parameters).result_rows
            except DatabaseError as exc:
                if getattr(exc, "code", None) != TOO_DEEP_RECURSION:
                    raise
                if into:
                    self._scratch(into)
        if into:
            self.client.command(exact, parameters=parameters)
            return []
        return self.client.query(exact, parameters=parameters).result_rows

    @staticmethod
    def _starts(starts: Sequence[str] | Completed, since_ms: int | None, until_ms: int | None) -> tuple[str, dict]:
        if isinstance(starts, Completed):
            if since_ms is not None or until_ms is not None:
                raise ValueError("a first-hop window applies to given start ids only")
            return "completed", {"station": starts.station, "since": starts.since_ms, "until": starts.until_ms,
                                 "operator": starts.operator or ""}
        if since_ms is None and until_ms is None:
            return "ids", {"starts": list(starts)}
        # as parents(): an open end of the window is unbounded
        return "window", {"starts": list(starts), "hop_since": since_ms or 0, "hop_until": until_ms or 2**62}

    def _scratch(self, table: str) -> None:
        """Empty one of this session's temporary tables, creating it on first use (caller holds the lock)."""
        try:
            self.client.command(f"TRUNCATE TABLE {table}")
        except DatabaseError as exc:
            if getattr(exc, "code", None) != UNKNOWN_TABLE:
                raise
            self.client.command(SCRATCH_DDL[table])

    def resolve(self, ident: str, kinds: Sequence[str]) -> list[str]:
        return [r[0] for r in self.rows(RESOLVE_SQL, ident=ident, kinds=list(kinds))]

    def counts(self) -> dict[str, int]:
        with self._lock:
            result = self.client.query(COUNTS_SQL)
        return dict(zip(result.column_names, (int(v) for v in result.result_rows[0])))

    def dead_letter_summary(self) -> list[dict]:
        return [{"stage": s, "event_kind": k, "example_reason": r, "count": int(n)}
                for s, k, r, n in self.rows(DEAD_LETTERS_BY_REASON_SQL)]

    def query(self, sql: str, parameters: dict | None = None) -> tuple[list[str], list[tuple]]:
        """Analyst SQL: read-only, parameters bound by ClickHouse."""
        with self._lock:
            result = self.client.query(sql, parameters=parameters or {}, settings={"readonly": 2})
        return list(result.column_names), result.result_rows


def epoch_ms(values: Iterable[int]) -> list[int]:
    """Event times for a DateTime64(3) column; impossible ones (dead-lettered upstream already) clamp to the epoch."""
    return [v if 0 <= v < MAX_MS else 0 for v in values]


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
