"""The GS1 EPCIS 2.0 query interface's HTTP side, without HTTP: parameters, page tokens, answers.

``parse_query`` turns the standard's REST query parameters into a ``sinks.epcis_query.EventQuery``
(or raises ``QueryProblem``, a 4xx RFC 7807 problem); ``PageTokens`` makes and checks the opaque
``nextPageToken``; ``query_document`` wraps a page of events as an ``EPCISQueryDocument``.
genealogy.service routes ``GET /events``, ``/events/{eventID}``, ``/epcs/{epc}/events`` and
``/eventTypes/{type}/events`` through them.

Parameters: a parameter's values are comma-separated and OR-ed (a parameter given twice adds
values); different parameters are AND-ed. Supported: ``eventType``, ``GE_/LT_eventTime``,
``GE_/LT_recordTime``, ``EQ_action``, ``EQ_bizStep``, ``EQ_disposition``, ``EQ_readPoint``,
``WD_readPoint``, ``EQ_bizLocation``, ``WD_bizLocation``, ``EQ_eventID``, ``MATCH_epc`` (epcList,
childEPCs), ``MATCH_anyEPC`` (those, parentID, inputs, outputs), ``MATCH_parentID``,
``MATCH_inputEPC``, ``MATCH_outputEPC``, ``MATCH_epcClass`` (the quantity lists' classes),
``MATCH_anyEPCClass`` (the same), ``EQ_bizTransaction_<type>``, ``EQ_source_<type>``,
``EQ_destination_<type>``, ``EQ_transformationID``, ``EQ_persistentDisposition_set`` / ``_unset``,
``EQ_/GT_/GE_/LT_/LE_quantity``, ``EXISTS_<field>`` (a top-level field, e.g. ``EXISTS_sensorElementList``
or an extension field ``EXISTS_ex:temperatureLog``), ``EXISTS_errorDeclaration``,
``GE_/LT_errorDeclarationTime``, ``EQ_errorReason``, ``EQ_correctiveEventID``, the sensor
parameters (``EQ_type``, ``EQ_deviceID``, ``EQ_dataProcessingMethod``, ``EQ_microorganism``,
``EQ_chemicalSubstance``, ``EQ_bizRules``, ``EQ_stringValue``, ``EQ_booleanValue``,
``EQ_hexBinaryValue``, ``EQ_uriValue``, ``EQ_/GT_/GE_/LT_/LE_`` + ``value``, ``minValue``,
``maxValue``, ``meanValue``, ``sDev`` + ``_<uom>``, the same of ``percRank``, ``GE_/LT_time``,
``GE_/LT_startTime``, ``GE_/LT_endTime``; see sinks.epcis_query for how they combine), ``orderBy``
(``eventTime``, ``recordTime``), ``orderDirection`` (``ASC``, ``DESC``: the default),
``eventCountLimit`` (needs ``orderBy``), ``maxEventCount`` (more matches: QueryTooLargeException),
``perPage`` (1..1000, default 30), ``nextPageToken``. Anything else is a QueryParameterException (400).
EPCs match as written, or by their normalised id (URN and Digital Link alike), and a class
pattern (``urn:epc:idpat:sgtin:<company>.<item>.*``, a GTIN-only Digital Link) matches every
serial and lot of its GTIN. CBV terms match in any of their spellings (``shipping``,
``urn:epcglobal:cbv:bizstep:shipping``, ``https://ref.gs1.org/cbv/BizStep-shipping``).
``WD_readPoint`` / ``WD_bizLocation`` ("with descendants") match like their ``EQ_`` twins: the
descendants of a location are master data, and this repository keeps no location hierarchy, so a
location has none.

Page tokens: base64url of {cursor, events delivered so far, query fingerprint, expiry} and an
HMAC-SHA256 over it with the service's key, so a token cannot be forged, edited, or used with
another query, and expires (``GS1-Next-Page-Token-Expires``). The cursor is (sort key, event id)
of the page's last event (results come in (sort key, event id) order, the sort key being the
``orderBy`` time or 0): a keyset, so a late page costs what the first one does. The count of events
delivered lets ``eventCountLimit`` span pages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

from genealogy.domain import epcis_event
from genealogy.sinks.epcis_query import MAX_PAGE, ORDER_KEYS, EventQuery

DEFAULT_PAGE = 30
TOKEN_TTL_S = 3600
CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
EVENT_TYPES = ("ObjectEvent", "AggregationEvent", "TransactionEvent", "TransformationEvent", "AssociationEvent")
ACTIONS = ("ADD", "OBSERVE", "DELETE")
PAGING = ("perPage", "nextPageToken")
LISTS = {"eventType": "event_types", "EQ_action": "actions", "EQ_bizStep": "biz_steps",
         "EQ_disposition": "dispositions", "EQ_readPoint": "read_points", "EQ_bizLocation": "biz_locations",
         "WD_readPoint": "wd_read_points", "WD_bizLocation": "wd_biz_locations",
         "EQ_eventID": "event_ids", "EQ_errorReason": "error_reasons", "EQ_correctiveEventID": "corrective_ids",
         "EQ_transformationID": "transformation_ids", "EQ_persistentDisposition_set": "pd_set",
         "EQ_persistentDisposition_unset": "pd_unset"}
TIMES = {"GE_eventTime": "ge_event_time", "LT_eventTime": "lt_event_time",
         "GE_recordTime": "ge_record_time", "LT_recordTime": "lt_record_time",
         "GE_errorDeclarationTime": "ge_error_time", "LT_errorDeclarationTime": "lt_error_time",
         # the query schema's spelling (query-schema.json) of the same two
         "GE_errorDeclaration_Time": "ge_error_time", "LT_errorDeclaration_Time": "lt_error_time"}
MATCHES = {"MATCH_epc": "epc", "MATCH_anyEPC": "any_epc", "MATCH_parentID": "parent_id",
           "MATCH_inputEPC": "input_epc", "MATCH_outputEPC": "output_epc", "MATCH_epcClass": "epc_class",
           # the classes of every quantity list: what MATCH_epcClass matches here too (see the module doc)
           "MATCH_anyEPCClass": "epc_class"}
BIZ_TRANSACTION = "EQ_bizTransaction_"
SOURCE, DESTINATION = "EQ_source_", "EQ_destination_"
QUANTITY = re.compile(r"(EQ|GT|GE|LT|LE)_quantity")
# Sensor parameters compared as text: parameter -> field of a sensorReport (or its sensorMetadata).
SENSOR_TEXT = {f"EQ_{f}": f for f in ("type", "deviceID", "dataProcessingMethod", "microorganism", "chemicalSubstance",
                                     "bizRules", "stringValue", "booleanValue", "hexBinaryValue", "uriValue")}
SENSOR_NUMBER = re.compile(r"(EQ|GT|GE|LT|LE)_(?:(value|minValue|maxValue|meanValue|sDev)_([A-Z0-9]{2,4})|(percRank))")
SENSOR_TIME = re.compile(r"(GE|LT)_(time|startTime|endTime)")
EXISTS = "EXISTS_"
# A field EXISTS_ may name: a top-level key of the event, bare (sensorElementList) or an extension field (ex:name).
FIELD_NAME = re.compile(r"[A-Za-z_][\w.-]*(?::[A-Za-z_][\w.-]*)?")
NOT_SUPPORTED_PREFIXES = ("EXISTS_INNER_", "EXISTS_ILMD_", "EXISTS_ERROR_DECLARATION_")
ONE_VALUE = ("orderBy", "orderDirection", "eventCountLimit", "maxEventCount")
MAX_COUNT = 1 << 40


class QueryProblem(ValueError):
    """A request the query interface refuses: an RFC 7807 problem (type, title, status)."""

    def __init__(self, detail: str, status: int = 400, kind: str = "QueryParameterException"):
        super().__init__(detail)
        self.detail, self.status, self.kind = detail, status, kind

    def as_dict(self) -> dict:
        titles = {"QueryParameterException": "Invalid query parameter", "NoSuchResourceException": "No such resource",
                  "ImplementationException": "Implementation exception",
                  "QueryTooLargeException": "The query's result is too large",
                  "QueryTooComplexException": "The query is too complex to run within the repository's limits",
                  "ValidationException": "The event was rejected"}
        return {"type": f"epcisException:{self.kind}", "title": titles.get(self.kind, self.kind),
                "status": self.status, "detail": self.detail}


def _values(name: str, raw: list[str]) -> list[str]:
    out = []
    for item in raw:
        for value in item.split(","):
            value = value.strip()
            if not value:
                raise QueryProblem(f"{name}: an empty value")
            out.append(value)
    return list(dict.fromkeys(out))


def match_values(values: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
    """(as written, normalised, prefixes) of MATCH_ values: a class pattern matches its GTIN's serials and lots."""
    written, norm, prefixes = [], [], []
    for value in values:
        written.append(value)
        n = epcis_event.normalized(value)
        if n == value:
            continue
        norm.append(n)
        kind, _, rest = n.partition(":")
        item, _, ident = rest.partition(":")
        if kind == "class" and ident == "*":
            prefixes += [f"serial:{item}:", f"lot:{item}:"]
    return written, norm, prefixes


def parse_query(items: Iterable[tuple[str, str]], fixed: dict[str, str] | None = None) -> tuple[EventQuery, int, str | None]:
    """Query string pairs -> (query, perPage, nextPageToken). ``fixed``: parameters the path gives
    (``/epcs/{epc}/events`` is MATCH_anyEPC, ``/eventTypes/{type}/events`` eventType); the query
    string may not give them again."""
    grouped: dict[str, list[str]] = {}
    for name, value in items:
        grouped.setdefault(name, []).append(value)
    for name, value in (fixed or {}).items():
        if name in grouped:
            raise QueryProblem(f"{name}: given by the path already")
        grouped[name] = [value]
    query, per_page, token, direction = EventQuery(), DEFAULT_PAGE, None, "DESC"
    for name, raw in grouped.items():
        if name in TIMES or name in PAGING or name in ONE_VALUE or SENSOR_NUMBER.fullmatch(name) or SENSOR_TIME.fullmatch(name) \
                or QUANTITY.fullmatch(name):
            if len(raw) > 1:
                raise QueryProblem(f"{name}: given {len(raw)} times; it takes one value")
            value = raw[0].strip()
        if name in LISTS:
            values = _values(name, raw)
            if name == "eventType" and (bad := [v for v in values if v not in EVENT_TYPES]):
                raise QueryProblem(f"eventType: {bad[0]!r} is not one of {', '.join(EVENT_TYPES)}")
            if name == "EQ_action":
                values = [v.upper() for v in values]
                if bad := [v for v in values if v not in ACTIONS]:
                    raise QueryProblem(f"EQ_action: {bad[0]!r} is not one of {', '.join(ACTIONS)}")
            if name in ("EQ_bizStep", "EQ_disposition", "EQ_errorReason", "EQ_persistentDisposition_set",
                        "EQ_persistentDisposition_unset"):
                values = [epcis_event.cbv_term(v) for v in values]
            setattr(query, LISTS[name], values)
        elif name in TIMES:
            try:
                setattr(query, TIMES[name], epcis_event.parse_time(value))
            except ValueError as exc:
                raise QueryProblem(f"{name}: {exc}") from None
        elif name in MATCHES:
            if MATCHES[name] in query.matches:  # MATCH_epcClass and MATCH_anyEPCClass: one column here
                raise QueryProblem(f"{name}: MATCH_epcClass and MATCH_anyEPCClass match the same classes here "
                                   "(every quantity list's); give one of them")
            query.matches[MATCHES[name]] = match_values(_values(name, raw))
        elif name.startswith(BIZ_TRANSACTION) and len(name) > len(BIZ_TRANSACTION):
            kind = epcis_event.cbv_term(name[len(BIZ_TRANSACTION):])
            query.biz_transactions[kind] = list(dict.fromkeys(query.biz_transactions.get(kind, []) + _values(name, raw)))
        elif name.startswith((SOURCE, DESTINATION)) and len(name) > len(DESTINATION if name.startswith(DESTINATION) else SOURCE):
            prefix = DESTINATION if name.startswith(DESTINATION) else SOURCE
            lists = query.destinations if prefix == DESTINATION else query.sources
            kind = epcis_event.cbv_term(name[len(prefix):])
            lists[kind] = list(dict.fromkeys(lists.get(kind, []) + _values(name, raw)))
        elif m := QUANTITY.fullmatch(name):
            query.quantities.append((m.group(1), _number(name, value)))
        elif name in SENSOR_TEXT:
            values = _values(name, raw)
            if name == "EQ_type":
                values = [sensor_type(v) for v in values]
            if name == "EQ_hexBinaryValue":
                if bad := [v for v in values if not re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", v)]:
                    raise QueryProblem(f"EQ_hexBinaryValue: {bad[0]!r} is not hexadecimal binary")
                values = [v.upper() for v in values]
            if name == "EQ_booleanValue":
                if bad := [v for v in values if v.lower() not in ("true", "false")]:
                    raise QueryProblem(f"EQ_booleanValue: {bad[0]!r} is not true or false")
                values = [v.lower() for v in values]
            query.sensor_text[SENSOR_TEXT[name]] = values
        elif m := SENSOR_NUMBER.fullmatch(name):
            number = _number(name, value)
            query.sensor_numbers.append((m.group(2) or m.group(4), m.group(1), m.group(3) or "", number))
        elif m := SENSOR_TIME.fullmatch(name):
            try:
                query.sensor_times.append((m.group(2), m.group(1), epcis_event.parse_time(value)))
            except ValueError as exc:
                raise QueryProblem(f"{name}: {exc}") from None
        elif name == "EXISTS_errorDeclaration":
            query.error_declared = _flag(name, raw)
        elif name.startswith(NOT_SUPPORTED_PREFIXES):
            raise QueryProblem(f"{name}: EXISTS_ of fields inside ILMD, inner fields or error declaration extensions "
                               "is not supported by this repository")
        elif name.startswith(EXISTS):
            field_name = name[len(EXISTS):]
            if not FIELD_NAME.fullmatch(field_name):
                raise QueryProblem(f"{name}: {field_name!r} is not a field name")
            if _flag(name, raw) and field_name not in query.exists:
                query.exists.append(field_name)
        elif name == "orderBy":
            if value not in ORDER_KEYS:
                raise QueryProblem(f"orderBy: {value!r}: this repository orders by {' or '.join(ORDER_KEYS)} "
                                   "(not by extension fields)")
            query.order_by = value
        elif name == "orderDirection":
            if value not in ("ASC", "DESC"):
                raise QueryProblem(f"orderDirection: {value!r} is not ASC or DESC")
            direction = value
        elif name in ("eventCountLimit", "maxEventCount"):
            if not value.isdigit() or not (1 if name == "eventCountLimit" else 0) <= int(value) <= MAX_COUNT:
                raise QueryProblem(f"{name}: {value!r} is not a whole number from "
                                   f"{1 if name == 'eventCountLimit' else 0} to {MAX_COUNT}")
            setattr(query, "event_count_limit" if name == "eventCountLimit" else "max_event_count", int(value))
        elif name == "perPage":
            if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
                raise QueryProblem(f"perPage: {value!r} is not a whole number from 1 to {MAX_PAGE}")
            per_page = int(value)
        elif name == "nextPageToken":
            if not value:
                raise QueryProblem("nextPageToken: empty")
            token = value
        else:
            raise QueryProblem(f"{name}: not a query parameter this repository supports")
    if query.event_count_limit is not None and query.max_event_count is not None:
        raise QueryProblem("eventCountLimit and maxEventCount: give one of them, not both")
    if query.event_count_limit is not None and not query.order_by:
        raise QueryProblem("eventCountLimit: needs orderBy (the first N events of which order?)")
    # orderDirection without orderBy orders nothing (the standard); with it, DESC is the default.
    query.descending = bool(query.order_by) and direction == "DESC"
    return query, per_page, token


def sensor_type(value: str) -> str:
    """A sensor type in its bare form: gs1:Temperature, https://gs1.org/voc/Temperature -> Temperature."""
    return re.sub(r"^(?:gs1:|https?://(?:www\.)?gs1\.org/voc/)", "", value)


def _number(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise QueryProblem(f"{name}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise QueryProblem(f"{name}: {value!r} is not a finite number")
    return number


def _flag(name: str, raw: list[str]) -> bool:
    """EXISTS_ parameters: given (empty, true or 1) asks for the field; false or 0 is no filter."""
    if len(raw) > 1:
        raise QueryProblem(f"{name}: given {len(raw)} times; it takes one value")
    value = raw[0].strip().lower()
    if value not in ("", "true", "1", "false", "0"):
        raise QueryProblem(f"{name}: {raw[0]!r} is not true or false")
    return value in ("", "true", "1")


def fingerprint(items: Iterable[tuple[str, str]], fixed: dict[str, str] | None = None) -> str:
    """What a page token is bound to: the query's parameters (not perPage, not the token), in any order."""
    pairs = sorted([(k, v) for k, v in items if k not in PAGING] + sorted((fixed or {}).items()))
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:32]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PageTokens:
    """Signed, expiring keyset cursors (see the module doc)."""

    def __init__(self, key: bytes, ttl_s: int = TOKEN_TTL_S):
        if len(key) < 16:
            raise ValueError("a page token key needs at least 16 bytes")
        self.key, self.ttl_s = key, ttl_s

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self.key, body, hashlib.sha256).digest()[:16]

    def encode(self, after: str, query: str, now_s: float | None = None, key: int = 0,
               delivered: int = 0) -> tuple[str, int]:
        """(token, expiry epoch seconds). The cursor: ``key`` (sort key) and ``after`` (event id) of the
        page's last event; ``delivered``: events answered so far (eventCountLimit)."""
        expires = int(time.time() if now_s is None else now_s) + self.ttl_s
        body = json.dumps({"a": after, "k": key, "n": delivered, "q": query, "x": expires}, separators=(",", ":")).encode()
        return f"{_b64(body)}.{_b64(self._mac(body))}", expires

    def cursor(self, token: str, query: str, now_s: float | None = None) -> tuple[int, str, int]:
        """(sort key, last event id, events delivered) of the token's page; QueryProblem when it is not
        one of ours, belongs to another query, or has expired."""
        try:
            body_text, mac_text = token.split(".")
            body, mac = _unb64(body_text), _unb64(mac_text)
        except ValueError:  # binascii.Error is a ValueError
            raise QueryProblem("nextPageToken: not a page token of this repository") from None
        if not hmac.compare_digest(mac, self._mac(body)):
            raise QueryProblem("nextPageToken: not a page token of this repository")
        data = json.loads(body)
        if data.get("q") != query:
            raise QueryProblem("nextPageToken: it belongs to a query with other parameters")
        if data.get("x", 0) < (time.time() if now_s is None else now_s):
            raise QueryProblem("nextPageToken: expired; run the query again")
        return int(data.get("k", 0)), str(data["a"]), int(data.get("n", 0))

    def decode(self, token: str, query: str, now_s: float | None = None) -> str:
        """The last event id of the token's page (see ``cursor``)."""
        return self.cursor(token, query, now_s)[1]


def event_out(event_json: str) -> dict:
    return json.loads(event_json)


def query_document(events: list[dict], query_name: str = "SimpleEventQuery", now_ms: int | None = None) -> dict:
    """A page of events as the standard's EPCISQueryDocument (JSON-LD)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return {"@context": [CONTEXT], "type": "EPCISQueryDocument", "schemaVersion": "2.0",
            "creationDate": epcis_event.format_time(now_ms),
            "epcisBody": {"queryResults": {"queryName": query_name, "resultsBody": {"eventList": events}}}}


def load_key(path) -> bytes:
    """The service's page token key: 32 random bytes in ``path`` (created, mode 0600, when missing), so
    that every replica sharing the data directory, and a restarted service, accept each other's tokens."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # first writer wins; a concurrent one reads the winner's key
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()


# --- capture jobs (POST /capture -> 202 + Location: /capture/{captureID}) ---------------------------

_JOBS = """
CREATE TABLE IF NOT EXISTS capture_jobs (
    capture_id  TEXT PRIMARY KEY,
    created_ms  INTEGER NOT NULL,
    finished_ms INTEGER NOT NULL,
    errors      TEXT NOT NULL   -- JSON list of {"reason", "event_id"}: the events rejected (dead letters)
)
"""


class CaptureJobs:
    """What each capture request became, for ``GET /capture/{captureID}`` (EPCIS 2.0 capture job).

    A capture here is done when it is answered: mapped and in the durable spool (the broker may take
    it later, and nothing is lost meanwhile), so a job is never ``running``. Rejected events do not
    stop the rest (captureErrorBehaviour ``proceed``); the job lists them. Kept in a SQLite file
    beside the capture spool, at most ``keep`` jobs (the oldest go first)."""

    def __init__(self, path, keep: int = 10_000):
        import sqlite3
        import threading

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_JOBS)
        self._lock = threading.Lock()
        self.keep = keep

    @staticmethod
    def new_id() -> str:
        return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(6)}"

    def record(self, capture_id: str, created_ms: int, errors: list[dict]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO capture_jobs VALUES (?, ?, ?, ?)",
                             (capture_id, created_ms, int(time.time() * 1000), json.dumps(errors)))
            self._db.execute("DELETE FROM capture_jobs WHERE capture_id NOT IN "
                             "(SELECT capture_id FROM capture_jobs ORDER BY created_ms DESC LIMIT ?)", (self.keep,))

    def get(self, capture_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT created_ms, finished_ms, errors FROM capture_jobs WHERE capture_id = ?",
                                   (capture_id,)).fetchone()
        if row is None:
            return None
        errors = json.loads(row[2])
        return {"captureID": capture_id, "createdAt": epcis_event.format_time(row[0]),
                "finishedAt": epcis_event.format_time(row[1]), "running": False, "success": not errors,
                "captureErrorBehaviour": "proceed",
                "errors": [{"type": "epcisException:ValidationException", "title": "Event rejected", "status": 400,
                            "detail": e["reason"], "eventID": e.get("event_id", "")} for e in errors]}

    def close(self) -> None:
        with self._lock:
            self._db.close()
