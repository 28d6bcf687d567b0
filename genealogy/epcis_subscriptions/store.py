"""What is kept of named queries and subscriptions: the SQLite ``Store``.

Definitions, subscriptions and each subscription's delivery cursor are rows of a SQLite file under
the data directory (``<data_dir>/epcis/queries.db``), beside the capture spool and the page token
key, so they survive a restart of the service or of the whole stack; the events themselves stay in
ClickHouse. SQLite rather than ClickHouse: the cursor changes after every delivery, a one-row
transactional update, which a MergeTree table makes a versioned insert read back with FINAL.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from genealogy.domain import epcis_event
from genealogy.epcis_subscriptions.problems import Problem
from genealogy.epcis_subscriptions.rules import SubscriptionRequest

_SCHEMA = """
CREATE TABLE IF NOT EXISTS named_queries (
    name        TEXT PRIMARY KEY,
    query_json  TEXT NOT NULL,      -- the query object as given (GET /queries/{name} returns it)
    pairs_json  TEXT NOT NULL,      -- the same as GET /events parameters
    owner       TEXT NOT NULL,      -- id of the token that made it ('' without auth): it, or an admin, deletes it
    created_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS subscriptions (
    id               TEXT PRIMARY KEY,
    query_name       TEXT NOT NULL REFERENCES named_queries(name) ON DELETE CASCADE,
    dest             TEXT NOT NULL,
    signature_token  TEXT NOT NULL,   -- the subscriber's secret; the file is 0600 like the token store
    stream           INTEGER NOT NULL,
    schedule_json    TEXT,
    report_if_empty  INTEGER NOT NULL,
    initial_record_ms INTEGER NOT NULL,
    owner            TEXT NOT NULL,
    created_ms       INTEGER NOT NULL,
    cursor_ms        INTEGER NOT NULL DEFAULT 0,   -- (insert time, event id) of the last event acknowledged
    cursor_id        TEXT NOT NULL DEFAULT '',
    next_run_ms      INTEGER,                      -- scheduled: the next query time
    retry_at_ms      INTEGER NOT NULL DEFAULT 0,   -- failing: not before
    failures         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT NOT NULL DEFAULT '',
    last_notified_ms INTEGER,
    delivered        INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass
class Subscription:
    id: str
    query_name: str
    dest: str
    signature_token: str
    stream: bool
    schedule: dict | None
    report_if_empty: bool
    initial_record_ms: int
    owner: str
    created_ms: int
    cursor_ms: int
    cursor_id: str
    next_run_ms: int | None
    retry_at_ms: int
    failures: int
    last_error: str
    last_notified_ms: int | None
    delivered: int

    def public(self) -> dict:
        """What GET shows: never the signatureToken (the binding says not to reveal the secret)."""
        out = {"subscriptionID": self.id, "queryName": self.query_name, "dest": self.dest,
               "createdAt": epcis_event.format_time(self.created_ms),
               "initialRecordTime": epcis_event.format_time(self.initial_record_ms),
               "signed": bool(self.signature_token), "eventsDelivered": self.delivered}
        if self.stream:
            out["stream"] = True
        else:
            out["schedule"], out["reportIfEmpty"] = self.schedule, self.report_if_empty
            if self.next_run_ms is not None:
                out["nextRunAt"] = epcis_event.format_time(self.next_run_ms)
        if self.last_notified_ms is not None:
            out["lastNotifiedAt"] = epcis_event.format_time(self.last_notified_ms)
        if self.failures:
            out["failures"], out["lastError"] = self.failures, self.last_error
        return out


class Store:
    """Named queries and subscriptions, with each subscription's delivery cursor. Thread-safe; calls are short."""

    def __init__(self, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)   # it holds subscribers' signature tokens
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, sql: str, args: tuple = ()):
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    # named queries
    def create_query(self, name: str, query: dict, pairs: list, owner: str, limit: int) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute("SELECT 1 FROM named_queries WHERE name = ?", (name,)).fetchone():
                    raise Problem(f"a query named {name!r} exists already", 409, "ResourceAlreadyExistsException")
                if self._db.execute("SELECT count(*) FROM named_queries").fetchone()[0] >= limit:
                    raise Problem(f"this service keeps at most {limit} named queries (GENEALOGY_EPCIS_MAX_NAMED_QUERIES); "
                                  "delete one first", 409, "QueryTooComplexException")
                self._db.execute("INSERT INTO named_queries VALUES (?, ?, ?, ?, ?)",
                                 (name, json.dumps(query), json.dumps(pairs), owner, int(time.time() * 1000)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def query(self, name: str) -> tuple[dict, list[tuple[str, str]], str] | None:
        row = self._one("SELECT query_json, pairs_json, owner FROM named_queries WHERE name = ?", (name,))
        return None if row is None else (json.loads(row[0]), [tuple(p) for p in json.loads(row[1])], row[2])

    def queries(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT name, query_json FROM named_queries ORDER BY name").fetchall()
        return [{"name": n, "query": json.loads(q)} for n, q in rows]

    def delete_query(self, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM named_queries WHERE name = ?", (name,))   # cascades to its subscriptions

    # subscriptions
    def subscribe(self, query_name: str, request: SubscriptionRequest, owner: str, limit: int,
                  now_ms: int | None = None) -> Subscription:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        sub_id = f"{secrets.token_hex(16)}"
        schedule = request.schedule
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if not self._db.execute("SELECT 1 FROM named_queries WHERE name = ?", (query_name,)).fetchone():
                    raise Problem(f"no named query {query_name!r}", 404, "NoSuchResourceException")
                if self._db.execute("SELECT count(*) FROM subscriptions").fetchone()[0] >= limit:
                    raise Problem(f"this service keeps at most {limit} subscriptions (GENEALOGY_EPCIS_MAX_SUBSCRIPTIONS)",
                                  409, "QueryTooComplexException")
                self._db.execute(
                    "INSERT INTO subscriptions (id, query_name, dest, signature_token, stream, schedule_json, report_if_empty,"
                    " initial_record_ms, owner, created_ms, next_run_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sub_id, query_name, request.dest, request.signature_token, int(request.stream),
                     json.dumps(schedule.given) if schedule else None, int(request.report_if_empty),
                     now_ms if request.initial_record_ms is None else request.initial_record_ms, owner, now_ms,
                     schedule.next_after(now_ms) if schedule else None))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.subscription(query_name, sub_id)

    _COLUMNS = ("id, query_name, dest, signature_token, stream, schedule_json, report_if_empty, initial_record_ms, owner,"
                " created_ms, cursor_ms, cursor_id, next_run_ms, retry_at_ms, failures, last_error, last_notified_ms, delivered")

    @staticmethod
    def _sub(row) -> Subscription:
        values = list(row)
        values[4], values[6] = bool(values[4]), bool(values[6])
        values[5] = json.loads(values[5]) if values[5] else None
        return Subscription(*values)

    def subscription(self, query_name: str, sub_id: str) -> Subscription | None:
        row = self._one(f"SELECT {self._COLUMNS} FROM subscriptions WHERE query_name = ? AND id = ?", (query_name, sub_id))
        return None if row is None else self._sub(row)

    def subscriptions(self, query_name: str | None = None) -> list[Subscription]:
        with self._lock:
            if query_name is None:
                rows = self._db.execute(f"SELECT {self._COLUMNS} FROM subscriptions ORDER BY created_ms, id").fetchall()
            else:
                rows = self._db.execute(f"SELECT {self._COLUMNS} FROM subscriptions WHERE query_name = ? "
                                        "ORDER BY created_ms, id", (query_name,)).fetchall()
        return [self._sub(r) for r in rows]

    def unsubscribe(self, query_name: str, sub_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM subscriptions WHERE query_name = ? AND id = ?",
                                    (query_name, sub_id)).rowcount > 0

    def delivered(self, sub_id: str, cursor: tuple[int, str], events: int, now_ms: int) -> None:
        """A batch was acknowledged: the cursor moves past it (the at-least-once boundary)."""
        with self._lock:
            self._db.execute("UPDATE subscriptions SET cursor_ms = ?, cursor_id = ?, delivered = delivered + ?,"
                             " last_notified_ms = ?, failures = 0, last_error = '', retry_at_ms = 0 WHERE id = ?",
                             (cursor[0], cursor[1], events, now_ms, sub_id))

    def ran(self, sub_id: str, next_run_ms: int | None) -> None:
        with self._lock:
            self._db.execute("UPDATE subscriptions SET next_run_ms = ? WHERE id = ?", (next_run_ms, sub_id))

    def recovered(self, sub_id: str) -> None:
        """A run ended without error (maybe with nothing to send): the failures it had are over."""
        with self._lock:
            self._db.execute("UPDATE subscriptions SET failures = 0, last_error = '', retry_at_ms = 0 WHERE id = ?",
                             (sub_id,))

    def failed(self, sub_id: str, error: str, retry_at_ms: int) -> None:
        with self._lock:
            self._db.execute("UPDATE subscriptions SET failures = failures + 1, last_error = ?, retry_at_ms = ? WHERE id = ?",
                             (error[:500], retry_at_ms, sub_id))
