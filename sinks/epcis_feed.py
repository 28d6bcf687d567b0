"""What a standing EPCIS query (a subscription) has not delivered yet: matching events in the order
they landed in ClickHouse, after a persisted cursor.

A subscription cannot page by event id (GET /events does): a new event may sort anywhere. Nor by
recordTime: the repository's recordTime is given at capture, and events reach ClickHouse later, through
the spool, Kafka and the sink, not in recordTime order, so a recordTime cursor would skip an event that
lands after a younger one. ``epcis_events.inserted_at`` (ClickHouse's own clock at insert) is the order
they became visible in; the cursor is (inserted_at, event_id) of the last event delivered, a keyset.

One caveat makes the reader wait: an insert that is still being written when the subscription reads
already carries its (earlier) insert time. So only rows older than ``settle_ms`` are taken; the rest
come at the next poll. In embedded mode inserts and reads share one lock, so any settle time works; on
a ClickHouse server it must exceed the longest insert (``GENEALOGY_EPCIS_SUBSCRIPTION_SETTLE_MS``).

The filters are GET /events' own (``sinks.epcis_query.FILTER``), so a parameter added there filters
subscriptions the same way; they run on the query interface's capped sessions (``EpcisSessions``).
"""

from __future__ import annotations

from dataclasses import replace

from genealogy.sinks import epcis_query
from genealogy.sinks.epcis_query import EpcisSessions

FEED_SQL = f"""
SELECT event_id, event_json, toUnixTimestamp64Milli(inserted_at) AS inserted_ms FROM epcis_events FINAL
WHERE (toUnixTimestamp64Milli(inserted_at), event_id) > ({{cursor_ms:Int64}}, {{cursor_id:String}})
  AND inserted_at < now64(3) - toIntervalMillisecond({{settle_ms:UInt32}})
  AND {epcis_query.FILTER}
ORDER BY inserted_at, event_id
LIMIT {{limit:UInt32}}
"""
LATEST_INSERT_SQL = "SELECT toUnixTimestamp64Milli(max(inserted_at)), toUnixTimestamp64Milli(now64(3)) FROM epcis_events"


def feed_sql() -> str:
    return FEED_SQL


def new_events(connection: EpcisSessions, query: epcis_query.EventQuery, cursor: tuple[int, str], min_record_ms: int,
               limit: int, settle_ms: int) -> list[tuple[str, str, int]]:
    """Up to ``limit`` (event id, event JSON, insert ms) matching ``query`` after ``cursor`` (insert ms, event id),
    recordTime at or after ``min_record_ms`` (the subscription's initialRecordTime)."""
    query = replace(query, ge_record_time=max(query.ge_record_time, min_record_ms))
    rows = connection.rows(feed_sql(), {**query.parameters(), "cursor_ms": cursor[0], "cursor_id": cursor[1],
                                        "settle_ms": settle_ms, "limit": limit})
    return [(r[0], r[1], int(r[2])) for r in rows]


def latest_insert_ms(connection: EpcisSessions) -> tuple[int, int]:
    """(the newest insert ms in epcis_events, 0 when empty; ClickHouse's clock now, ms). A stream subscription
    whose cursor is at the newest insert, or whose last run saw every row up to it settled, is not asked."""
    rows = connection.rows(LATEST_INSERT_SQL, {})
    return int(rows[0][0] or 0), int(rows[0][1])
