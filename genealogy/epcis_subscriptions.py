"""EPCIS 2.0 named queries and webhook subscriptions (the REST binding's ``/queries`` resources).

    POST   /queries                                   {"name", "query": {<GET /events parameters>}} -> 201 + Location
    GET    /queries, /queries/{queryName}             the definitions
    DELETE /queries/{queryName}                       204; its subscriptions go with it
    GET    /queries/{queryName}/events                its answer, paged like GET /events (perPage, nextPageToken)
    POST   /queries/{queryName}/subscriptions         {"dest", "signatureToken", "stream": true | "schedule": {...},
                                                       "reportIfEmpty", "initialRecordTime"} -> 201 + Location
    GET    /queries/{queryName}/subscriptions[/{id}]  the subscriptions (never their signatureToken)
    DELETE /queries/{queryName}/subscriptions/{id}    204
    GET    /queries/{queryName}/events?stream=true | ?<schedule fields>[&reportIfEmpty=&initialRecordTime=]
           with Upgrade: websocket                    a subscription for as long as the connection lasts

WebSocket subscriptions are not kept: the documents a webhook would get come as text messages while
the connection is open (at most ``epcis_max_websockets`` at once), from initialRecordTime (default:
the connection's start); a client that reconnects passes the recordTime it got to, to miss nothing.
Deleting the query closes them.

What is kept: definitions, subscriptions and each subscription's delivery cursor are rows of a SQLite
file under the data directory (``<data_dir>/epcis/queries.db``), beside the capture spool and the page
token key, so they survive a restart of the service or of the whole stack; the events themselves stay
in ClickHouse. SQLite rather than ClickHouse: the cursor changes after every delivery, a one-row
transactional update, which a MergeTree table makes a versioned insert read back with FINAL.

Delivery (``Dispatcher``, an asyncio task of the service's loop): a stream subscription takes the
matching events that landed after its cursor (``sinks.epcis_feed``), POSTs them to ``dest`` as
EPCISQueryDocuments of at most ``epcis_webhook_batch`` events, and moves the cursor after each
2xx answer. A scheduled one does the same at its schedule's times (an empty document too if
``reportIfEmpty``). The cursor moves only after the receiver acknowledged, so a crash between the
receiver's 2xx and the cursor's commit sends that batch again: at-least-once, never lost. A POST that fails is retried (tenacity,
exponential backoff, ``epcis_webhook_attempts`` tries, ``epcis_webhook_timeout_s`` each); after that
the subscription waits (doubling, at most ``epcis_webhook_backoff_max_s``) and tries the same events
again: a receiver that is down delays its events, never loses them. Database calls run in the
default executor, POSTs are async, and at most ``epcis_webhook_concurrency`` run at once, so a slow
receiver holds no request of anybody else. Only the service process that runs the sink delivers
(``--no-sink`` replicas serve the resources), so two replicas never send the same events twice.

Signature: ``GS1-Signature: sha256=<hex HMAC-SHA256 of the exact body, keyed with signatureToken>``.
The binding leaves the scheme to the implementation and names HMAC-SHA256 as one; the body carries
``creationDate`` and ``subscriptionID``, so a receiver can refuse an old or foreign document.

SSRF: ``dest`` must start with one of ``GENEALOGY_EPCIS_WEBHOOK_ALLOW``'s URL prefixes (empty, the
default: no subscription at all); redirects are not followed (a 3xx is a failed delivery), so an
allowed host cannot send the service elsewhere.

Schedules (EPCIS 1.2 §8.2.5.3, which 2.0 keeps): ``second``, ``minute``, ``hour``, ``dayOfMonth``,
``month``, ``dayOfWeek`` (1 = Monday), each ``n``, ``[a-b]`` or a comma list of them (``a/step``, the
binding's own example ``"0/30"``, too), in UTC. A time matches when every given field matches. The
units finer than the finest given one are taken as their first value (``{"hour": "1", "minute": "5"}``
runs at 01:05:00, once, which is what the standard's "every morning at 1.05am" means), coarser omitted
units match any value. A run missed while the service was down runs once when it is back.
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import hmac
import json
import logging
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from genealogy import epcis_api
from genealogy.domain import epcis_event
from genealogy.settings import Settings
from genealogy.sinks import epcis_feed

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")   # one URL path segment as written: no escaping games
MAX_DEST = 2048
MAX_SIGNATURE_TOKEN = 512
EPCIS_HEADERS = {"GS1-EPCIS-Version": "2.0", "GS1-CBV-Version": "2.0"}
SIGNATURE_HEADER = "GS1-Signature"
SUBSCRIPTION_KEYS = {"dest", "signatureToken", "stream", "schedule", "reportIfEmpty", "initialRecordTime"}


class Problem(epcis_api.QueryProblem):
    """An RFC 7807 problem of the /queries resources (EPCIS exception types)."""

    TITLES = {"SubscriptionControlsException": "Subscription error", "ValidationException": "Invalid request",
              "ResourceAlreadyExistsException": "A resource with the provided identifier already exists",
              "NoSuchResourceException": "No such resource", "QueryParameterException": "Invalid query parameter",
              "QueryTooComplexException": "Limit reached", "ImplementationException": "Not implemented",
              "SecurityException": "Forbidden", "UnsupportedMediaTypeException": "Unsupported media type"}

    def as_dict(self) -> dict:
        out = super().as_dict()
        out["title"] = self.TITLES.get(self.kind, out["title"])
        return out


# --- pure rules: names, query objects, destinations, signatures, schedules ---------------------------

def check_name(name) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise Problem("name: 1 to 128 characters of A-Z a-z 0-9 . _ ~ - (starting with a letter or digit): "
                      "it is a segment of the query's URL", 400, "ValidationException")
    return name


def query_pairs(query) -> list[tuple[str, str]]:
    """A named query's ``query`` object (the standard's query schema: parameter -> string, number or list
    of strings) -> the (name, value) pairs GET /events takes; checked by the same parser (a Problem if not)."""
    if not isinstance(query, dict) or not query:
        raise Problem("query: an object of EPCIS query parameters, e.g. {\"eventType\": [\"ObjectEvent\"]}")
    pairs: list[tuple[str, str]] = []
    for name, value in query.items():
        if name in epcis_api.PAGING:
            raise Problem(f"{name}: paging belongs to GET /queries/{{queryName}}/events, not to the query")
        values = value if isinstance(value, list) else [value]
        if not values:
            raise Problem(f"{name}: an empty list")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise Problem(f"{name}: values are strings (or numbers), not {type(v).__name__}")
            pairs.append((name, v if isinstance(v, str) else json.dumps(v)))
    epcis_api.parse_query(pairs)  # the same rules as GET /events: an unknown parameter is a 400 here too
    return pairs


def allow_list(settings: Settings) -> list[str]:
    return [p.strip() for p in settings.epcis_webhook_allow.split(",") if p.strip()]


def _origin(url: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default, parts.path or "/"


def check_dest(dest, allowed: list[str]) -> str:
    """``dest`` if the service may POST to it: http(s), no credentials, under one of the allowed prefixes."""
    if not allowed:
        raise Problem("webhook subscriptions are off: this service posts only to destinations its operator allows "
                      "(GENEALOGY_EPCIS_WEBHOOK_ALLOW is empty)", 400, "SubscriptionControlsException")
    if not isinstance(dest, str) or not dest or len(dest) > MAX_DEST:
        raise Problem(f"dest: a URL of at most {MAX_DEST} characters", 400, "SubscriptionControlsException")
    try:
        parts = urlsplit(dest)
        scheme, host, port, path = _origin(dest)
    except ValueError:  # a bad port, a bad IPv6 literal
        raise Problem(f"dest: {dest!r} is not a URL", 400, "SubscriptionControlsException") from None
    if scheme not in ("http", "https") or not host:
        raise Problem("dest: an http or https URL (a WebSocket subscription is GET /queries/{queryName}/events "
                      "with Upgrade: websocket)", 400, "SubscriptionControlsException")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise Problem("dest: no user:password@ and no #fragment", 400, "SubscriptionControlsException")
    for prefix in allowed:
        a_scheme, a_host, a_port, a_path = _origin(prefix)
        if (scheme, host, port) == (a_scheme, a_host, a_port) and path.startswith(a_path):
            return dest
    raise Problem(f"dest: {scheme}://{host}:{port} with this path is not an allowed webhook destination "
                  "(GENEALOGY_EPCIS_WEBHOOK_ALLOW)", 400, "SubscriptionControlsException")


def signature(token: str, body: bytes) -> str:
    """The GS1-Signature header value of a webhook body: HMAC-SHA256 keyed with the subscriber's signatureToken."""
    return "sha256=" + hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(token: str, body: bytes, header: str | None) -> bool:
    """What a receiver checks (the tests do): the header is this body's signature under the token."""
    return header is not None and hmac.compare_digest(signature(token, body), header)


FIELDS = ("second", "minute", "hour", "dayOfMonth", "month", "dayOfWeek")   # finest first
RANGES = {"second": (0, 59), "minute": (0, 59), "hour": (0, 23), "dayOfMonth": (1, 31), "month": (1, 12),
          "dayOfWeek": (1, 7)}
_ELEMENT = re.compile(r"(\d{1,2})|\[(\d{1,2})-(\d{1,2})\]|(\d{1,2})/(\d{1,2})")
HORIZON_DAYS = 8 * 366   # a schedule with no time in eight years (30 February) never runs: refused


@dataclass(frozen=True)
class Schedule:
    values: dict[str, frozenset[int]]   # every field; an omitted coarse unit holds its whole range
    given: dict[str, str] = field(default_factory=dict)

    def matches(self, t: datetime) -> bool:
        return (t.second in self.values["second"] and t.minute in self.values["minute"] and t.hour in self.values["hour"]
                and self._day(t))

    def _day(self, t: datetime) -> bool:
        return (t.day in self.values["dayOfMonth"] and t.month in self.values["month"]
                and t.isoweekday() in self.values["dayOfWeek"])

    def next_after(self, ms: int) -> int | None:
        """The first query time strictly after epoch ms ``ms``; None if there is none within the horizon."""
        start = datetime.fromtimestamp(ms // 1000, timezone.utc) + timedelta(seconds=1)
        hours, minutes, seconds = (sorted(self.values[f]) for f in ("hour", "minute", "second"))
        day = start.replace(hour=0, minute=0, second=0)
        for _ in range(HORIZON_DAYS):
            if self._day(day):
                for h in hours:
                    for m in minutes:
                        for s in seconds:
                            t = day.replace(hour=h, minute=m, second=s)
                            if t >= start:
                                return calendar.timegm(t.timetuple()) * 1000
            day += timedelta(days=1)
        return None


def parse_field(name: str, text) -> frozenset[int]:
    low, high = RANGES[name]
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str) or not text.strip():
        raise Problem(f"schedule.{name}: a string such as \"5\", \"[1-5]\" or \"0,30\"", 400, "SubscriptionControlsException")
    out: set[int] = set()
    for element in text.replace(" ", "").split(","):
        m = _ELEMENT.fullmatch(element)
        if not m:
            raise Problem(f"schedule.{name}: {element!r} is not a number, [low-high] or start/step", 400,
                          "SubscriptionControlsException")
        if m.group(1) is not None:
            a, b, step = int(m.group(1)), int(m.group(1)), 1
        elif m.group(2) is not None:
            a, b, step = int(m.group(2)), int(m.group(3)), 1
        else:
            a, b, step = int(m.group(4)), high, int(m.group(5))
        if not (low <= a <= high and low <= b <= high) or a > b or step < 1:
            raise Problem(f"schedule.{name}: {element!r} is outside {low}..{high} (or a range backwards)", 400,
                          "SubscriptionControlsException")
        out.update(range(a, b + 1, step))
    return frozenset(out)


def parse_schedule(schedule) -> Schedule:
    if not isinstance(schedule, dict) or not schedule:
        raise Problem("schedule: an object with at least one of " + ", ".join(FIELDS), 400, "SubscriptionControlsException")
    if unknown := sorted(set(schedule) - set(FIELDS)):
        raise Problem(f"schedule.{unknown[0]}: not a schedule field (those are {', '.join(FIELDS)})", 400,
                      "SubscriptionControlsException")
    finest = min(FIELDS.index(f) for f in schedule)
    values = {}
    for i, name in enumerate(FIELDS):
        if name in schedule:
            values[name] = parse_field(name, schedule[name])
        elif i < finest and name in ("second", "minute", "hour"):
            values[name] = frozenset({RANGES[name][0]})   # finer than asked for: its first value, so one run per unit
        else:
            values[name] = frozenset(range(RANGES[name][0], RANGES[name][1] + 1))
    out = Schedule(values, {k: str(v) for k, v in schedule.items()})
    if out.next_after(int(time.time() * 1000)) is None:
        raise Problem("schedule: matches no time at all", 400, "SubscriptionControlsException")
    return out


@dataclass
class SubscriptionRequest:
    dest: str
    signature_token: str
    stream: bool
    schedule: Schedule | None
    report_if_empty: bool
    initial_record_ms: int | None


def parse_subscription(body, allowed: list[str], webhook: bool = True) -> SubscriptionRequest:
    """A POST .../subscriptions body -> what to keep; Problem (400 SubscriptionControlsException) if it is not one.
    ``webhook=False``: a WebSocket subscription's controls (no dest, no signatureToken)."""
    def bad(detail: str) -> Problem:
        return Problem(detail, 400, "SubscriptionControlsException")

    if not isinstance(body, dict):
        raise bad('the body must be a JSON object: {"dest": ..., "stream": true} or {"dest": ..., "schedule": {...}}')
    if unknown := sorted(set(body) - SUBSCRIPTION_KEYS):
        raise bad(f"{unknown[0]}: not a subscription field (those are {', '.join(sorted(SUBSCRIPTION_KEYS))})")
    if not webhook and ({"dest", "signatureToken"} & set(body)):
        raise bad("a WebSocket subscription has no dest and no signatureToken: the connection is both")
    dest = check_dest(body.get("dest"), allowed) if webhook else ""
    token = body.get("signatureToken", "")
    if token is None:
        token = ""
    if not isinstance(token, str) or len(token) > MAX_SIGNATURE_TOKEN:
        raise bad(f"signatureToken: a string of at most {MAX_SIGNATURE_TOKEN} characters")
    stream = body.get("stream", False)
    report = body.get("reportIfEmpty", False)
    if not isinstance(stream, bool) or not isinstance(report, bool):
        raise bad("stream and reportIfEmpty are true or false")
    schedule = parse_schedule(body["schedule"]) if body.get("schedule") is not None else None
    if stream == (schedule is not None):
        raise bad("give either \"stream\": true (each new matching event) or a \"schedule\", exactly one of them")
    if stream and report:
        raise bad("reportIfEmpty is for scheduled subscriptions; a stream reports events only")
    initial = body.get("initialRecordTime")
    if initial is not None:
        try:
            initial = epcis_event.parse_time(initial)
        except ValueError as exc:
            raise bad(f"initialRecordTime: {exc}") from None
    return SubscriptionRequest(dest, token, stream, schedule, report, initial)


def websocket_controls(items: list[tuple[str, str]]) -> dict:
    """GET /queries/{name}/events?stream=true | ?minute=5&hour=1 (a WebSocket upgrade) -> a subscription body."""
    body: dict = {}
    schedule = {}
    for name, value in items:
        if name in body or name in schedule:
            raise Problem(f"{name}: given twice", 400, "SubscriptionControlsException")
        if name in ("stream", "reportIfEmpty"):
            if value.lower() not in ("true", "false"):
                raise Problem(f"{name}: true or false", 400, "SubscriptionControlsException")
            body[name] = value.lower() == "true"
        elif name == "initialRecordTime":
            body[name] = value
        elif name in FIELDS:
            schedule[name] = value
        else:
            raise Problem(f"{name}: a WebSocket subscription takes stream, the schedule fields, reportIfEmpty and "
                          "initialRecordTime (the query's parameters are the named query's own)", 400,
                          "SubscriptionControlsException")
    if schedule:
        body["schedule"] = schedule
    return body


def backoff_s(failures: int, cap_s: float) -> float:
    """How long a subscription whose deliveries failed ``failures`` times in a row waits before the next try."""
    return min(cap_s, 2.0 ** min(failures, 30))


# --- the store (SQLite under the data directory) ------------------------------------------------------

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


# --- delivery -------------------------------------------------------------------------------------------

class DeliveryFailed(Exception):
    """The receiver did not acknowledge (no 2xx): the batch stays undelivered."""


def document(events: list[dict], query_name: str, sub_id: str, now_ms: int | None = None) -> dict:
    doc = epcis_api.query_document(events, query_name, now_ms)
    doc["epcisBody"]["queryResults"]["subscriptionID"] = sub_id
    return doc


class Dispatcher:
    """Runs every due subscription (see the module doc); one task per subscription at a time."""

    def __init__(self, settings: Settings, store: Store, connection):
        self.settings, self.store, self.connection = settings, store, connection
        self.running: dict[str, asyncio.Task] = {}
        self.scanned: dict[str, int] = {}   # stream subscription -> newest insert ms its last run saw settled
        self._slots = asyncio.Semaphore(max(1, settings.epcis_webhook_concurrency))
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=self.settings.epcis_webhook_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as self._session:
            try:
                while True:
                    try:
                        await self.tick(loop)
                    except Exception:  # a failing store or ClickHouse must not end delivery for good
                        log.exception("subscription dispatch failed; trying again")
                    await asyncio.sleep(self.settings.epcis_subscription_poll_s)
            finally:
                for task in self.running.values():
                    task.cancel()
                await asyncio.gather(*self.running.values(), return_exceptions=True)

    async def tick(self, loop) -> None:
        subs = await loop.run_in_executor(None, self.store.subscriptions)
        for gone in set(self.scanned) - {sub.id for sub in subs}:
            del self.scanned[gone]
        latest = None
        now = int(time.time() * 1000)
        for sub in subs:
            if sub.id in self.running or now < sub.retry_at_ms:
                continue
            scanned = None
            if sub.stream:
                if latest is None:
                    latest, store_now = await loop.run_in_executor(None, epcis_feed.latest_insert_ms, self.connection)
                # Nothing landed since its last event, or since a run that saw every row up to the newest: no query.
                if latest <= sub.cursor_ms or self.scanned.get(sub.id) == latest:
                    continue
                if store_now - self.settings.epcis_subscription_settle_ms > latest:
                    scanned = latest   # every row up to `latest` has settled: the run will have seen them all
            elif sub.next_run_ms is None or now < sub.next_run_ms:
                continue
            task = asyncio.create_task(self._guarded(sub, scanned), name=f"subscription-{sub.id}")
            self.running[sub.id] = task
            task.add_done_callback(lambda _t, key=sub.id: self.running.pop(key, None))

    async def _guarded(self, sub: Subscription, scanned: int | None = None) -> None:
        async with self._slots:
            loop = asyncio.get_running_loop()
            try:
                await self.deliver(sub, loop)
                if scanned is not None:
                    self.scanned[sub.id] = scanned
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"[:500]
                wait = backoff_s(sub.failures + 1, self.settings.epcis_webhook_backoff_max_s)
                log.warning("subscription %s of %s: delivery to %s failed (%s); next try in %.0f s",
                            sub.id, sub.query_name, sub.dest, reason, wait)
                await loop.run_in_executor(None, self.store.failed, sub.id, reason, int((time.time() + wait) * 1000))

    async def deliver(self, sub: Subscription, loop) -> None:
        """Everything new for ``sub``, batch by batch, the cursor persisted after each acknowledged batch."""
        found = await loop.run_in_executor(None, self.store.query, sub.query_name)
        if found is None:
            return   # the query went (and its subscriptions with it) meanwhile
        # The allow-list is checked again at every delivery: an operator who removes a prefix stops its
        # subscriptions at once (they fail, saying why, and keep their events until deleted).
        check_dest(sub.dest, allow_list(self.settings))
        query, _, _ = epcis_api.parse_query(found[1])
        batch = max(1, self.settings.epcis_webhook_batch)
        cursor, first = (sub.cursor_ms, sub.cursor_id), True
        run_started = int(time.time() * 1000)
        while True:
            rows = await loop.run_in_executor(None, epcis_feed.new_events, self.connection, query, cursor,
                                              sub.initial_record_ms, batch, self.settings.epcis_subscription_settle_ms)
            if rows or (first and sub.report_if_empty and not sub.stream):
                await self.post(sub, [json.loads(r[1]) for r in rows])
                if rows:
                    cursor = (rows[-1][2], rows[-1][0])
                await loop.run_in_executor(None, self.store.delivered, sub.id, cursor, len(rows), int(time.time() * 1000))
            first = False
            if len(rows) < batch:
                break
        if not sub.stream:
            schedule = parse_schedule(sub.schedule)
            await loop.run_in_executor(None, self.store.ran, sub.id, schedule.next_after(run_started))
        if sub.failures:
            await loop.run_in_executor(None, self.store.recovered, sub.id)

    async def post(self, sub: Subscription, events: list[dict]) -> None:
        body = json.dumps(document(events, sub.query_name, sub.id), allow_nan=False, default=str).encode()
        headers = {"Content-Type": "application/json", **EPCIS_HEADERS}
        if sub.signature_token:
            headers[SIGNATURE_HEADER] = signature(sub.signature_token, body)
        retrying = AsyncRetrying(stop=stop_after_attempt(max(1, self.settings.epcis_webhook_attempts)),
                                 wait=wait_exponential(multiplier=0.2, max=10),
                                 retry=retry_if_exception_type((aiohttp.ClientError, asyncio.TimeoutError, DeliveryFailed)),
                                 reraise=True)
        async for attempt in retrying:
            with attempt:
                # No redirects: a 3xx could point the service at an address the allow-list does not name.
                async with self._session.post(sub.dest, data=body, headers=headers, allow_redirects=False) as response:
                    if not 200 <= response.status < 300:
                        raise DeliveryFailed(f"{sub.dest} answered {response.status}")


# --- HTTP ------------------------------------------------------------------------------------------------

def _dumps(obj) -> str:
    return json.dumps(obj, default=str, allow_nan=False)


def problem_response(problem: epcis_api.QueryProblem) -> web.Response:
    return web.Response(text=_dumps(problem.as_dict()), status=problem.status, content_type="application/problem+json",
                        headers=EPCIS_HEADERS)


def _json(body, status: int = 200, **headers) -> web.Response:
    return web.Response(text=_dumps(body), status=status, content_type="application/json",
                        headers={**EPCIS_HEADERS, **headers})


async def _read_json(request: web.Request, settings: Settings):
    kind = request.content_type
    if request.body_exists and kind not in ("application/json", "application/ld+json", "application/octet-stream"):
        raise Problem(f"Content-Type {kind!r}: send application/json", 415, "UnsupportedMediaTypeException")
    limit = settings.epcis_query_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise Problem(f"the body is larger than {limit} bytes", 413, "QueryTooComplexException")
    data, size = [], 0
    while chunk := await request.content.read(1 << 16):
        size += len(chunk)
        if size > limit:
            raise Problem(f"the body is larger than {limit} bytes", 413, "QueryTooComplexException")
        data.append(chunk)
    try:
        value = json.loads(b"".join(data))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Problem("the body is not JSON", 400, "ValidationException") from None
    if _json_depth(value) > settings.json_max_depth:
        raise Problem(f"the JSON body is nested deeper than {settings.json_max_depth} levels", 400, "ValidationException")
    return value


def _json_depth(value) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((c, depth + 1) for c in (item.values() if isinstance(item, dict) else item))
    return deepest


def _owner(request: web.Request) -> str:
    entry = request.get("token_entry")
    return entry.id if entry is not None else ""


def _may_change(request: web.Request, owner: str) -> bool:
    """Who made a query or subscription (or an admin) may delete it; without auth everybody is the same."""
    entry = request.get("token_entry")
    return entry is None or entry.role == "admin" or entry.id == owner


def install(app: web.Application, service) -> Store:
    """Add the /queries routes to the service's app; the sink's process also runs the Dispatcher.
    ``service``: genealogy.service.Service (settings, connection, page_tokens, epcis_page, sink)."""
    settings: Settings = service.settings
    store = Store(settings.data_dir / "epcis" / "queries.db")
    loop_of = asyncio.get_running_loop

    async def blocking(fn, *args):
        return await loop_of().run_in_executor(None, fn, *args)

    def handled(handler):
        async def wrapper(request):
            try:
                return await handler(request)
            except epcis_api.QueryProblem as problem:
                return problem_response(problem)
        return wrapper

    async def create_query(request):
        body = await _read_json(request, settings)
        if not isinstance(body, dict) or set(body) - {"name", "query"}:
            raise Problem('the body must be {"name": ..., "query": {<query parameters>}}', 400, "ValidationException")
        name = check_name(body.get("name"))
        pairs = query_pairs(body.get("query"))
        await blocking(store.create_query, name, body["query"], pairs, _owner(request), settings.epcis_max_named_queries)
        return _json({"name": name, "query": body["query"]}, 201, Location=f"/queries/{name}")

    async def list_queries(request):
        return _json(await blocking(store.queries))

    async def named(request) -> tuple[str, list, str]:
        name = request.match_info["name"]
        found = await blocking(store.query, name)
        if found is None:
            raise Problem(f"no named query {name!r}", 404, "NoSuchResourceException")
        return name, found[1], found[2]

    async def get_query(request):
        name = request.match_info["name"]
        found = await blocking(store.query, name)
        if found is None:
            raise Problem(f"no named query {name!r}", 404, "NoSuchResourceException")
        return _json({"name": name, "query": found[0]})

    async def delete_query(request):
        name, _, owner = await named(request)
        if not _may_change(request, owner):
            raise Problem("only the token that created the query, or an admin, may delete it", 403, "SecurityException")
        await blocking(store.delete_query, name)
        return web.Response(status=204, headers=EPCIS_HEADERS)

    async def query_events(request):
        name, pairs, _ = await named(request)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await websocket(request, name, pairs)
        paging = list(request.query.items())
        if extra := [k for k, _ in paging if k not in epcis_api.PAGING]:
            raise Problem(f"{extra[0]}: a named query's parameters are its own; only perPage and nextPageToken go here")
        query, per_page, token = epcis_api.parse_query(pairs + paging)
        body, headers = await service.epcis_answer(request.url, paging, query, per_page, token,
                                                   epcis_api.fingerprint(pairs + [("queryName", name)]), name)
        return _json(body, **headers)

    sockets: set[web.WebSocketResponse] = set()

    async def websocket(request, name: str, pairs: list):
        """A subscription that lives as long as its connection: the documents come as text messages, the
        same a webhook gets. Nothing is kept: a client that reconnects passes initialRecordTime again."""
        spec = parse_subscription(websocket_controls(list(request.query.items())), [], webhook=False)
        if len(sockets) >= settings.epcis_max_websockets:
            raise Problem(f"this service holds at most {settings.epcis_max_websockets} WebSocket subscriptions "
                          "(GENEALOGY_EPCIS_MAX_WEBSOCKETS)", 409, "QueryTooComplexException")
        query = epcis_api.parse_query(pairs)[0]
        now = int(time.time() * 1000)
        sub = Subscription(id=f"ws-{secrets.token_hex(8)}", query_name=name, dest="", signature_token="",
                           stream=spec.stream, schedule=spec.schedule.given if spec.schedule else None,
                           report_if_empty=spec.report_if_empty,
                           initial_record_ms=now if spec.initial_record_ms is None else spec.initial_record_ms,
                           owner=_owner(request), created_ms=now, cursor_ms=0, cursor_id="",
                           next_run_ms=spec.schedule.next_after(now) if spec.schedule else None, retry_at_ms=0,
                           failures=0, last_error="", last_notified_ms=None, delivered=0)
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        sockets.add(ws)
        scanned = -1
        try:
            while not ws.closed:
                if await blocking(store.query, name) is None:
                    await ws.close(code=1000, message=b"the named query was deleted")
                    break
                now = int(time.time() * 1000)
                due = False
                if sub.stream:
                    latest, store_now = await blocking(epcis_feed.latest_insert_ms, service.connection)
                    due = latest > sub.cursor_ms and latest != scanned
                elif now >= sub.next_run_ms:
                    due = True
                if due:
                    cursor, first = (sub.cursor_ms, sub.cursor_id), True
                    while True:
                        rows = await blocking(epcis_feed.new_events, service.connection, query, cursor,
                                              sub.initial_record_ms, settings.epcis_webhook_batch,
                                              settings.epcis_subscription_settle_ms)
                        if rows or (first and sub.report_if_empty and not sub.stream):
                            doc = document([json.loads(r[1]) for r in rows], name, sub.id)
                            await ws.send_str(_dumps(doc))
                            if rows:
                                cursor = (rows[-1][2], rows[-1][0])
                        first = False
                        if len(rows) < settings.epcis_webhook_batch:
                            break
                    sub.cursor_ms, sub.cursor_id = cursor
                    if sub.stream and store_now - settings.epcis_subscription_settle_ms > latest:
                        scanned = latest
                    if not sub.stream:
                        sub.next_run_ms = parse_schedule(sub.schedule).next_after(now)
                try:   # wait for the next poll, and notice a client that closed meanwhile
                    message = await ws.receive(timeout=settings.epcis_subscription_poll_s)
                except asyncio.TimeoutError:
                    continue
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                                    aiohttp.WSMsgType.ERROR):
                    break
        except ConnectionResetError:   # the client went away mid-send
            pass
        finally:
            sockets.discard(ws)
        return ws

    async def close_sockets(app):
        # Otherwise a graceful stop waits for every open subscription's client to hang up.
        for ws in list(sockets):
            await ws.close(code=1001, message=b"the service is stopping")

    app.on_shutdown.append(close_sockets)

    async def subscribe(request):
        name, _, _ = await named(request)
        sub_request = parse_subscription(await _read_json(request, settings), allow_list(settings))
        sub = await blocking(store.subscribe, name, sub_request, _owner(request), settings.epcis_max_subscriptions)
        return _json(sub.public(), 201, Location=f"/queries/{name}/subscriptions/{sub.id}")

    async def list_subscriptions(request):
        name, _, _ = await named(request)
        return _json([s.public() for s in await blocking(store.subscriptions, name)])

    async def one_subscription(request):
        name, _, _ = await named(request)
        sub = await blocking(store.subscription, name, request.match_info["sub_id"])
        if sub is None:
            raise Problem(f"no subscription {request.match_info['sub_id']!r} of query {name!r}", 404, "NoSuchResourceException")
        return sub, name

    async def get_subscription(request):
        sub, _ = await one_subscription(request)
        return _json(sub.public())

    async def unsubscribe(request):
        sub, name = await one_subscription(request)
        if not _may_change(request, sub.owner):
            raise Problem("only the token that subscribed, or an admin, may unsubscribe", 403, "SecurityException")
        await blocking(store.unsubscribe, name, sub.id)
        return web.Response(status=204, headers=EPCIS_HEADERS)

    app.add_routes([web.post("/queries", handled(create_query)), web.get("/queries", handled(list_queries)),
                    web.get("/queries/{name}", handled(get_query)), web.delete("/queries/{name}", handled(delete_query)),
                    web.get("/queries/{name}/events", handled(query_events)),
                    web.post("/queries/{name}/subscriptions", handled(subscribe)),
                    web.get("/queries/{name}/subscriptions", handled(list_subscriptions)),
                    web.get("/queries/{name}/subscriptions/{sub_id}", handled(get_subscription)),
                    web.delete("/queries/{name}/subscriptions/{sub_id}", handled(unsubscribe))])

    async def lifetime(app):
        task = None
        if getattr(service, "sink", None) is not None:   # one deliverer per deployment: the sink's process
            task = asyncio.create_task(Dispatcher(settings, store, service.epcis).run(), name="epcis-subscriptions")
        yield
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        store.close()

    app.cleanup_ctx.append(lifetime)
    return store
