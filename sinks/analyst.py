"""Analyst SQL: whatever an analyst asks, read-only, with parameters bound by ClickHouse."""

from __future__ import annotations

from genealogy.sinks.connection import Connection


class AnalystSql:
    def __init__(self, connection: Connection):
        self.connection = connection

    def query(self, sql: str, parameters: dict | None = None) -> tuple[list[str], list[tuple]]:
        """Column names and rows. readonly=2: no writes or DDL, but the query may still set its own settings."""
        return self.connection.query(sql, parameters or {}, settings={"readonly": 2})
