"""Thin typed layer over ClickHouse (embedded chdb or a server, same client API).

SQL lives in ``sql/ddl.sql`` and in the constants below; values are always
bound as parameters. In embedded mode only one process may open the data
directory, so the store serialises its own calls with a lock and the same
process answers queries and runs the sink.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from importlib import resources

import clickhouse_connect

EDGE_COLUMNS = ["edge_id", "child", "parent", "relation", "event_time", "station", "operator", "work_order",
                "parent_lot", "quantity", "source_event"]
UNIT_COLUMNS = ["unit", "production_lot", "work_order", "station", "operator", "completed_at", "event_id"]
CAPTURE_COLUMNS = ["source", "kafka_time", "topic", "partition", "offset", "payload"]
FACT_COLUMNS = ["event_id", "kind", "station", "event_time", "subject", "detail", "reason"]
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


class Store:
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


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
