"""A small pool of ClickHouse sessions capped by ClickHouse itself: what analyst SQL and the EPCIS query
interface run on, never the session the sink, recall and reprocess share.

``Limits.session_settings`` sets the caps and ``readonly=1`` last: after it, a session can neither SET
nor pass per-query SETTINGS, so the caps hold whatever the caller sends. With ``own_user`` the DSN logs
in as a server user whose settings profile holds them instead (deploy/clickhouse-analyst.sql,
deploy/clickhouse-epcis.sql), and the session sends none. Callers wait for each other, bounded by
twice the time cap, never for the sink.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import clickhouse_connect

__all__ = ["CappedSessions", "Limits", "PoolBusy"]


class PoolBusy(RuntimeError):
    """Every session stayed busy for twice the time cap."""


@dataclass(frozen=True)
class Limits:
    max_execution_s: float = 10.0
    max_memory_bytes: int = 1 << 30
    max_result_rows: int = 100_000
    max_result_bytes: int = 64 << 20
    max_rows_to_read: int = 0  # 0 = no cap: the tables are what an analyst is there to read
    # Threads per query: ClickHouse's default (one per core) left recall sharing every core with a heavy
    # analyst query (bench/analyst_isolation.py: recall p95 x9 on 2 vCPUs).
    max_threads: int = 1

    def session_settings(self) -> dict:
        """Settings of a capped session, in order: readonly comes last, after it nothing can be set."""
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


class CappedSessions:
    def __init__(self, dsn: str, limits: Limits | None = None, sessions: int = 2, *, own_user: bool = False):
        self.limits = limits or Limits()
        settings = {} if own_user else self.limits.session_settings()
        self._idle: queue.Queue = queue.Queue()
        # every session, for tests that check ClickHouse refuses to lift the caps
        self.clients = [clickhouse_connect.get_client(dsn=dsn, settings=settings) for _ in range(max(1, sessions))]
        for client in self.clients:
            self._idle.put(client)

    @contextmanager
    def session(self) -> Iterator:
        try:
            client = self._idle.get(timeout=self.limits.max_execution_s * 2)
        except queue.Empty:
            raise PoolBusy("every session is busy") from None
        try:
            yield client
        finally:
            self._idle.put(client)

    def close(self) -> None:
        for client in self.clients:
            client.close()
