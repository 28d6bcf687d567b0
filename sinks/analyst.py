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

import queue
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import clickhouse_connect

from genealogy.sinks import queries
from genealogy.sinks.sql_guard import Rejected, check

__all__ = ["AnalystSql", "Limits", "Rejected", "Cancelled", "public_error"]


class Cancelled(RuntimeError):
    """The client went away; the query was stopped."""


@dataclass(frozen=True)
class Limits:
    max_execution_s: float = 10.0
    max_memory_bytes: int = 1 << 30
    max_result_rows: int = 100_000
    max_result_bytes: int = 64 << 20
    max_rows_to_read: int = 0  # 0 = no cap: the tables are what an analyst is there to read
    # Threads per analyst query: ClickHouse's default (one per core) left recall sharing every core
    # with a heavy analyst query (bench/analyst_isolation.py: recall p95 x9 on 2 vCPUs).
    max_threads: int = 1

    def session_settings(self) -> dict:
        """Settings of an analyst session, in order: readonly comes last, after it nothing can be set."""
        return {
            "max_execution_time": self.max_execution_s,
            "timeout_overflow_mode": "throw",
            "max_memory_usage": self.max_memory_bytes,
            "max_result_rows": self.max_result_rows,
            "max_result_bytes": self.max_result_bytes,
            "result_overflow_mode": "throw",
            "max_rows_to_read": self.max_rows_to_read,
            "max_threads": self.max_threads,
            "read_overflow_mode": "throw",
            "allow_ddl": 0,
            "allow_introspection_functions": 0,
            "readonly": 1,
        }


class AnalystSql:
    def __init__(self, dsn: str, limits: Limits | None = None, sessions: int = 2, *, own_user: bool = False):
        """`own_user`: the DSN logs in as a server user whose settings profile already holds readonly and
        the caps (deploy/clickhouse-analyst.sql); such a session may not set them again."""
        self.limits = limits or Limits()
        settings = {} if own_user else self.limits.session_settings()
        # A pool: analysts wait for each other (bounded by max_execution_s), never for the sink.
        self._idle: queue.Queue = queue.Queue()
        self._clients = [clickhouse_connect.get_client(dsn=dsn, settings=settings) for _ in range(max(1, sessions))]
        for client in self._clients:
            self._idle.put(client)

    @contextmanager
    def _session(self) -> Iterator:
        try:
            client = self._idle.get(timeout=self.limits.max_execution_s * 2)
        except queue.Empty:
            raise Rejected("every analyst session is busy; try again") from None
        try:
            yield client
        finally:
            self._idle.put(client)

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
        for client in self._clients:
            client.close()


def public_error(exc: BaseException) -> str:
    """What an analyst is told: ClickHouse's reason, without its version, stack or file paths."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"\s*\(version [^)]*\)", "", text)
    text = re.sub(r"(?<![\w:])/[\w.\-/]+", "<path>", text)
    return text[:1000]
