"""One ClickHouse connection (embedded chdb or a server, same client API), shared by the writer,
the read model and analyst SQL.

In embedded mode only one client per process may open the data directory, so every part of the
process goes through this one, and its lock serialises the calls (temporary tables live in the
client's session too). Each helper takes the lock for its call; ``locked()`` holds it across
statements that must not interleave with others.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources

import clickhouse_connect
from clickhouse_connect.driver.exceptions import DatabaseError

__all__ = ["Connection", "DatabaseError", "error_code"]


class Connection:
    def __init__(self, dsn: str):
        self.dsn = dsn
        # The driver itself, for tools (bench/) that need more than the helpers below.
        self.client = clickhouse_connect.get_client(dsn=dsn)
        self._lock = threading.RLock()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lock across several statements (a scratch table's use, a read-then-write)."""
        with self._lock:
            yield

    def migrate(self) -> None:
        """Apply sql/ddl.sql; every statement in it is idempotent."""
        ddl = resources.files("genealogy.sinks").joinpath("sql/ddl.sql").read_text()
        statements = [s.strip() for s in _strip_comments(ddl).split(";") if s.strip()]
        with self._lock:
            for statement in statements:
                self.client.command(statement)

    def close(self) -> None:
        with self._lock:
            self.client.close()

    def query(self, sql: str, parameters: dict | None = None, *, settings: dict | None = None,
              binary: Sequence[str] = ()) -> tuple[list[str], list[tuple]]:
        """Column names and rows; `binary`: String columns read as bytes (Avro payloads are not text)."""
        formats = {c: "bytes" for c in binary} or None
        with self._lock:
            result = self.client.query(sql, parameters=parameters or {}, settings=settings, column_formats=formats)
        return list(result.column_names), result.result_rows

    def rows(self, sql: str, parameters: dict | None = None, *, binary: Sequence[str] = ()) -> list[tuple]:
        return self.query(sql, parameters, binary=binary)[1]

    def command(self, sql: str, parameters: dict | None = None, *, settings: dict | None = None) -> None:
        with self._lock:
            self.client.command(sql, parameters=parameters, settings=settings)

    def insert(self, table: str, data: Sequence, column_names: list[str], *, column_oriented: bool = False) -> None:
        with self._lock:
            self.client.insert(table, data, column_names=column_names, column_oriented=column_oriented)


def error_code(exc: BaseException) -> int | None:
    """ClickHouse's error code of a failed statement (e.g. 306: recursion too deep; 60: unknown table)."""
    return getattr(exc, "code", None)


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
