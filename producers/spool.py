"""Store-and-forward at the edge: a durable local spool in front of Kafka.

A capture point never talks to the broker directly. It appends each message
(topic, key, value) to a SQLite file in WAL mode with ``synchronous=FULL``: when
``Spool.append`` returns, the row is on disk and survives the producer being
killed or the machine losing power, whether or not a broker is reachable.

A ``Forwarder`` sends spooled rows in append order with a
confluent-kafka producer (the configuration of ``producers.publisher``:
``acks=all``, in order through retries, Java-compatible ``murmur2_random`` key
hashing) and deletes a row only after the broker acknowledged it (the delivery
callback records the ack; the row is deleted right after, in one transaction per
poll, so acks do not cost an fsync each). While the broker is unreachable the
rows stay in the spool; librdkafka retries what is in flight, a failed delivery
is sent again after a bounded backoff, and ``backlog()`` shows how far behind
the edge is.

Delivery is at least once. A row that reached the broker but whose ack was not
recorded before the forwarder died is sent again after a restart. That is safe
downstream: every capture event carries its event id, and edges, units and dead
letters have deterministic ids (hashes of endpoints, relation and source
events) that ClickHouse's ReplacingMergeTree folds and every query reads with
DISTINCT / uniqExact, so a re-sent batch changes no answer.

``genealogy spool forward [--spool PATH] [--follow]`` drains a spool.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from confluent_kafka import KafkaError, KafkaException, Producer

from genealogy.settings import Settings
from genealogy.producers.publisher import producer_config

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    -- AUTOINCREMENT: an id is never reused after its row is acked, so a late delivery
    -- callback can never delete a newer row, and id order is append order.
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    topic       TEXT    NOT NULL,
    key         BLOB,
    value       BLOB    NOT NULL,
    appended_ms INTEGER NOT NULL
);
-- Producer progress (e.g. "appended up to batch n"), written in the same transaction as the rows.
CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- What a mapper remembers between messages (the CFX work transactions still open), so an ingest or
-- bridge that restarts goes on where it stopped. JSON text.
CREATE TABLE IF NOT EXISTS feed_state (name TEXT PRIMARY KEY, state TEXT NOT NULL);
-- Rows the broker refused for good (too large, invalid), moved out of the spool's way so that the
-- rows behind them go on; kept with the reason, for an operator to look at or re-send.
CREATE TABLE IF NOT EXISTS quarantine (
    id             INTEGER PRIMARY KEY,
    topic          TEXT    NOT NULL,
    key            BLOB,
    value          BLOB    NOT NULL,
    appended_ms    INTEGER NOT NULL,
    reason         TEXT    NOT NULL,
    quarantined_ms INTEGER NOT NULL
);
"""

# Errors no retry can cure: the message itself is refused. Any other error (broker down, timeouts,
# leader changes) leaves the row where it is, however long it lasts: that is what the spool is for.
PERMANENT_ERRORS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG, KafkaError.INVALID_MSG_SIZE,
                              KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError._BAD_MSG,
                              KafkaError._INVALID_ARG})


class Row(NamedTuple):
    id: int
    topic: str
    key: bytes | None
    value: bytes


def default_path(settings: Settings) -> Path:
    return settings.data_dir / "spool" / "capture.db"


class Spool:
    """A durable FIFO of Kafka messages in one SQLite file. Thread-safe; several processes may share the file."""

    def __init__(self, path: str | Path, default_topic: str = "genealogy.capture", busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.default_topic = default_topic
        self._lock = threading.RLock()
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE), so a write never waits
        # half-done on a lock upgrade; the timeout covers another process holding the write lock.
        self._db = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
        self._db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit: durable when append returns
        self._db.executescript(_SCHEMA)

    @classmethod
    def for_settings(cls, settings: Settings, path: str | Path | None = None) -> "Spool":
        return cls(path or default_path(settings), default_topic=settings.topic_capture)

    @contextmanager
    def _tx(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- producer side --------------------------------------------------------------

    def feed_state(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM feed_state WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def save_feed_state(self, name: str, state: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO feed_state (name, state) VALUES (?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET state = excluded.state", (name, state))

    def append(self, key: bytes | None, value: bytes, topic: str | None = None) -> int:
        """Store one message; it is on disk when this returns. Returns its id."""
        return self.append_many([(topic, key, value)])[0]

    def append_many(self, rows: Iterable[tuple[str | None, bytes | None, bytes]],
                    mark: tuple[str, int] | None = None) -> list[int]:
        """Store (topic, key, value) rows in one transaction: all of them or none. ``mark``
        (name, value) records the producer's progress atomically with the rows."""
        now = int(time.time() * 1000)
        ids = []
        with self._tx() as db:
            for topic, key, value in rows:
                cur = db.execute("INSERT INTO spool (topic, key, value, appended_ms) VALUES (?, ?, ?, ?)",
                                 (topic or self.default_topic, key, value, now))
                ids.append(cur.lastrowid)
            if mark is not None:
                db.execute("INSERT INTO marks (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                           mark)
        return ids

    def mark(self, name: str, default: int = 0) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM marks WHERE name = ?", (name,)).fetchone()
        return default if row is None else row[0]

    # --- forwarder side -------------------------------------------------------------

    def pending(self, limit: int = 1000, after_id: int = 0) -> list[Row]:
        """Unacknowledged rows with id > after_id, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, key, value FROM spool WHERE id > ? ORDER BY id LIMIT ?",
                                    (after_id, limit)).fetchall()
        return [Row(*r) for r in rows]

    def ack(self, ids: Iterable[int]) -> int:
        """Delete rows the broker has acknowledged; returns how many were still there."""
        ids = list(ids)
        if not ids:
            return 0
        with self._tx() as db:
            return db.executemany("DELETE FROM spool WHERE id = ?", ((i,) for i in ids)).rowcount

    def quarantine(self, row_id: int, reason: str) -> bool:
        """Move a row out of the spool into the quarantine table (one transaction); False if it was gone."""
        now = int(time.time() * 1000)
        with self._tx() as db:
            moved = db.execute("INSERT OR IGNORE INTO quarantine (id, topic, key, value, appended_ms, reason, quarantined_ms) "
                               "SELECT id, topic, key, value, appended_ms, ?, ? FROM spool WHERE id = ?",
                               (reason, now, row_id)).rowcount
            db.execute("DELETE FROM spool WHERE id = ?", (row_id,))
        return bool(moved)

    def quarantined(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT id, topic, length(value), reason, quarantined_ms FROM quarantine ORDER BY id").fetchall()
        return [dict(zip(("id", "topic", "bytes", "reason", "quarantined_ms"), r)) for r in rows]

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM spool").fetchone()[0]

    def high_water(self) -> int:
        """The id of the newest row ever appended (0 for a new spool), acknowledged or not."""
        with self._lock:
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'spool'").fetchone()
        return row[0] if row else 0

    def has_pending(self, upto: int | None = None) -> bool:
        with self._lock:
            row = self._db.execute("SELECT min(id) FROM spool").fetchone()
        return row[0] is not None and (upto is None or row[0] <= upto)

    def stats(self) -> dict:
        with self._lock:
            rows, size, oldest = self._db.execute(
                "SELECT count(*), coalesce(sum(length(value)), 0), min(appended_ms) FROM spool").fetchone()
            quarantined = self._db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        return {"rows": rows, "bytes": size, "oldest_age_s": None if oldest is None else round(time.time() - oldest / 1000, 1),
                "high_water": self.high_water(), "quarantined": quarantined}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Forwarder:
    """Sends a spool's rows to Kafka in id order; deletes each only after the broker's ack.

    Not thread-safe: drive it from one thread, with ``pump`` in your own loop,
    ``forward_all`` (drain what is spooled now) or ``run`` (until a stop event).
    Appending to the spool from other threads or processes at the same time is fine. Run one
    forwarder per spool file: a second one would send rows twice (harmless downstream, but waste).
    """

    def __init__(self, settings: Settings, spool: Spool, *, window: int = 5_000,
                 backoff_s: tuple[float, float] = (0.2, 5.0), config: dict | None = None):
        self.settings = settings
        self.spool = spool
        self.window = window  # rows handed to librdkafka and not yet acked: bounds memory during an outage
        self.backoff_min, self.backoff_max = backoff_s
        # librdkafka's own log lines (connection refused, ...) go to Python logging, not stderr.
        # librdkafka's queue capped at 64 MB (default 1 GB): what waits for the broker waits in the spool, on disk.
        self._config = {**producer_config(settings), "queue.buffering.max.kbytes": 65_536,
                        "error_cb": self._on_error, "logger": log, **(config or {})}
        self.producer = Producer(self._config)
        self.max_attempts = max(1, settings.spool_max_attempts)
        self._refused: dict[int, int] = {}   # row id -> permanent refusals so far (see PERMANENT_ERRORS)
        self._in_flight: set[int] = set()
        self._acked: list[int] = []
        self._cursor = 0                 # highest id handed to the producer; rewound when a delivery fails
        self._retry_at = 0.0
        self._backoff = self.backoff_min
        self._fatal = False
        self.delivered = 0
        self.quarantined_now = 0   # rows this forwarder moved to the quarantine table
        self.failures = 0
        self.last_error: str | None = None
        self._last_ack: float | None = None

    # librdkafka callbacks, called from inside poll()/flush() on the driving thread.

    def _on_delivery(self, row_id: int, err, msg) -> None:
        self._in_flight.discard(row_id)
        if err is None:
            self._acked.append(row_id)
            self._backoff = self.backoff_min
            self._last_ack = time.monotonic()
            return
        self.failures += 1
        self.last_error = f"delivery of spool row {row_id} to {msg.topic()}: {err}"
        self._fatal = self._fatal or err.fatal()
        self._cursor = min(self._cursor, row_id - 1)  # the row is still spooled: send it again, in order
        self._refused_by_broker(row_id, err)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max)

    def _on_error(self, err: KafkaError) -> None:
        # Broker down, connection refused, ...: librdkafka keeps retrying by itself; we only report it.
        self.last_error = str(err)
        self._fatal = self._fatal or err.fatal()

    def _fill(self) -> None:
        if time.monotonic() < self._retry_at:
            return
        while len(self._in_flight) < self.window:
            # At most 500 rows read at a time: a row can be a 500-event batch, the window is counted in rows.
            rows = self.spool.pending(limit=min(500, self.window - len(self._in_flight)), after_id=self._cursor)
            if not rows:
                return
            for row in rows:
                if row.id in self._in_flight:  # after a rewind: still on its way, do not send twice
                    self._cursor = row.id
                    continue
                try:
                    self.producer.produce(row.topic, key=row.key, value=row.value,
                                          on_delivery=functools.partial(self._on_delivery, row.id))
                except BufferError:
                    return  # librdkafka's queue is full; poll() makes room
                except KafkaException as exc:
                    self.failures += 1
                    self.last_error = f"produce spool row {row.id}: {exc}"
                    self._fatal = self._fatal or exc.args[0].fatal()
                    if self._refused_by_broker(row.id, exc.args[0]):
                        self._cursor = row.id  # moved aside: go on with the rows behind it at once
                        continue
                    self._retry_at = time.monotonic() + self._backoff
                    self._backoff = min(self._backoff * 2, self.backoff_max)
                    return
                self._cursor = row.id
                self._in_flight.add(row.id)

    def _refused_by_broker(self, row_id: int, err: KafkaError) -> bool:
        """Count a permanent refusal of a row; at the max_attempts-th, move the row to the quarantine
        table. True when it was moved (the rows behind it are no longer held up)."""
        code = getattr(err, "code", None)  # a KafkaError; anything else (no code) is not known to be permanent
        if code is None or code() not in PERMANENT_ERRORS:
            return False
        tries = self._refused[row_id] = self._refused.get(row_id, 0) + 1
        if tries < self.max_attempts:
            return False
        del self._refused[row_id]
        reason = f"refused {tries} times: {err.name()}: {err.str()}"
        self.spool.quarantine(row_id, reason)
        self.quarantined_now += 1
        log.warning("spool row %d quarantined in %s (%s)", row_id, self.spool.path, reason)
        return True

    def _restart_producer(self) -> None:
        """After a fatal producer error (e.g. the idempotence state is broken) start over with a new
        producer; whatever was in flight is still spooled and is sent again (duplicates are harmless)."""
        log.warning("producer fatal error (%s); starting a new producer", self.last_error)
        self.producer = Producer(self._config)
        self._in_flight.clear()
        self._cursor = 0
        self._fatal = False

    def pump(self, timeout: float = 0.0) -> int:
        """One round: hand spooled rows to the producer, serve callbacks for up to ``timeout`` s,
        delete what was acknowledged. Returns the number of rows acknowledged in this round."""
        if self._fatal:
            self._restart_producer()
        self._fill()
        self.producer.poll(timeout)
        return self._commit_acks()

    def _commit_acks(self) -> int:
        acked, self._acked = self._acked, []
        if acked:
            self.spool.ack(acked)
            self.delivered += len(acked)
        return len(acked)

    def backlog(self) -> dict:
        """How far behind the edge is: rows spooled (not yet acked) and the age of the oldest, rows in
        flight, delivered and failed so far, the last error, and how long ago the broker last acked."""
        last_ack = None if self._last_ack is None else round(time.monotonic() - self._last_ack, 1)
        return {**self.spool.stats(), "in_flight": len(self._in_flight), "delivered": self.delivered,
                "failures": self.failures, "last_error": self.last_error, "last_ack_age_s": last_ack}

    def forward_all(self, timeout: float = 60.0) -> int:
        """Forward until every row spooled when called is acked, or ``timeout`` passes (rows appended
        meanwhile go too, as room allows). Returns the rows still spooled: 0 = everything acked."""
        target = self.spool.high_water()
        deadline = time.monotonic() + timeout
        while self.spool.has_pending(upto=target):
            if time.monotonic() >= deadline:
                return len(self.spool)
            self.pump(0.05)
        return len(self.spool)

    def run(self, stop: threading.Event, idle_s: float = 0.2) -> None:
        """Forward until ``stop`` is set, picking up new rows as they are appended. Then call
        ``close`` (or ``forward_all``) to wait for what is in flight."""
        while not stop.is_set():
            self.pump(0.05)
            if not self._in_flight and not self.spool.has_pending():
                stop.wait(idle_s)

    def close(self, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` s for acks of what is in flight; the rest stays spooled."""
        self.producer.flush(timeout)
        self._commit_acks()


def forward(settings: Settings, path: Path | None = None, follow: bool = False, timeout: float = 60.0,
            stop: threading.Event | None = None) -> dict:
    """Send what a spool holds (``genealogy spool forward``); with ``follow``, keep forwarding until
    ``stop`` is set. Returns the backlog afterwards: rows left over stay spooled."""
    with Spool(path or default_path(settings), default_topic=settings.topic_capture) as spool:
        forwarder = Forwarder(settings, spool)
        if follow:
            forwarder.run(stop or threading.Event())
            forwarder.close()
        else:
            forwarder.forward_all(timeout)
            forwarder.close(timeout=1.0)  # forward_all has waited already
        return forwarder.backlog()
