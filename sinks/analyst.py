"""Analyst SQL (`genealogy sql`, `POST /sql`): a SELECT over the genealogy tables, on sessions of its own.

Three fences, each one enough for a different attack:

* own sessions: the analyst's queries run on ClickHouse client sessions of their own, never on
  the one the sink, recall and reprocess share (sinks.connection). chdb allows any number of
  handles on the one engine path of a process, with per-handle settings (measured:
  docs/security.md), so nothing an analyst does can change the settings or temporary tables
  the sink sees, and a slow analyst query does not take the store's lock;
* session settings: readonly=1 (set last, so nothing after it can be changed: SET, per-query
  SETTINGS and DDL are refused by ClickHouse), and caps on time, memory and result size;
* the allow-list (sinks.sql_guard) on ClickHouse's own parse of the statement: readonly=1 lets
  `SYSTEM ...`, `INTO OUTFILE` and the scalar `file()` through, the allow-list does not.

The statement run is ClickHouse's own formatting of what was checked (`formatQuery`), so what
runs is one statement and exactly the one the allow-list saw.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager


from genealogy.sinks import queries
from genealogy.sinks.capped_sessions import CappedSessions, Limits, PoolBusy
from genealogy.sinks.sql_guard import Rejected, check

__all__ = ["AnalystSql", "Limits", "Rejected", "Cancelled", "public_error"]


class Cancelled(RuntimeError):
    """The client went away; the query was stopped."""


class AnalystSql:
    def __init__(self, dsn: str, limits: Limits | None = None, sessions: int = 2, *, own_user: bool = False):
        """`own_user`: the DSN logs in as a server user whose settings profile already holds readonly and
        the caps (deploy/clickhouse-analyst.sql); such a session may not set them again."""
        self._pool = CappedSessions(dsn, limits, sessions, own_user=own_user)
        self.limits = self._pool.limits

    @contextmanager
    def _session(self) -> Iterator:
        try:
            with self._pool.session() as client:
                yield client
        except PoolBusy:
            raise Rejected("every analyst session is busy; try again") from None

    def query(self, sql: str, parameters: dict | None = None,
              cancel: threading.Event | None = None) -> tuple[list[str], list[tuple]]:
        """Column names and rows of an allowed SELECT; Rejected (with the reason) for anything else."""
        if not isinstance(sql, str) or not sql.strip():
            raise Rejected("sql must be a non-empty string")
        if parameters is not None and not (isinstance(parameters, dict) and all(isinstance(k, str) for k in parameters)):
            raise Rejected("parameters must be an object of name: value")
        parameters = parameters or {}
        with self._session() as client:
            # ClickHouse's parser refuses several statements and formats the one it got.
            statement = client.query(queries.ANALYST_FORMAT, parameters={"sql": sql}).result_rows[0][0]
            check(client.command(f"EXPLAIN AST {statement}", parameters=parameters))
            rows: list[tuple] = []
            with client.query_row_block_stream(statement, parameters=parameters) as stream:
                for block in stream:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("the client went away")  # closing the stream cancels the query
                    rows.extend(block)
                columns = list(stream.source.column_names)
            return columns, rows

    def close(self) -> None:
        self._pool.close()


def public_error(exc: BaseException) -> str:
    """What an analyst is told: ClickHouse's reason, without its version, stack or file paths."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"\s*\(version [^)]*\)", "", text)
    text = re.sub(r"(?<![\w:])/[\w.\-/]+", "<path>", text)
    return text[:1000]
