"""The EPCIS 2.0 query interface's SQL over ``epcis_events`` (sinks/sql/ddl.sql), on sessions of its own.

One statement answers every combination of the supported query parameters: each filter is
always there, bound to a value that switches it off when the parameter is absent (an empty
array, the widest time range, false). Nothing is formatted into the text; ClickHouse binds every
value. The only choice made outside ClickHouse is between two constant statements, ascending and
descending.

Order and pages: results come ordered by a sort key and the event id, a page at a time. The sort
key is 0 for every event unless ``orderBy`` names ``eventTime`` or ``recordTime`` (then it is that
time in epoch milliseconds), so without ``orderBy`` the order is the event id's. The cursor of a
page is (sort key, event id) of its last event: a keyset, never an OFFSET; one row more than the
page is asked for, so the caller knows whether there is a next page.

EPC parameters (``MATCH_*``) come in three arrays each: the values as written, their normalised
node ids (``genealogy.domain.ids.normalize``) and, for class-level patterns
(``urn:epc:idpat:sgtin:...*``, a GTIN-only Digital Link), prefixes of the node ids they match
(``serial:<gtin>:``, ``lot:<gtin>:``). ``EQ_bizTransaction_<type>`` come as two parallel arrays:
the types, and for each type the ids, one of which the event must carry with that type (AND
across types).

What the columns do not hold is read from the event as stored (``event_json``, ``sensor_elements``)
with ClickHouse's JSON functions, so events captured before a parameter was supported answer it too:

* ``EXISTS_<field>``: a top-level field of the event, present and not null, ``[]``, ``{}`` or ``""``.
* the error declaration: present (an object), its ``declarationTime``, its ``reason`` (CBV term in
  its bare form), its ``correctiveEventIDs``.
* ``transformationID``, ``persistentDisposition`` (``set`` / ``unset``, CBV terms in their bare
  form), ``sourceList`` / ``destinationList`` (per type, bare, AND across types like
  bizTransactions), and the ``quantity`` of the quantity elements of every quantity list (all
  quantity parameters of a query hold for one element).
* sensor data: the pairs (sensorMetadata, sensorReport) of every sensorElement (an element without
  reports is one pair with an empty report). A field a report lacks is taken from its element's
  metadata (the standard: the report's value overrides the metadata's). All sensor parameters of a
  query must hold for one pair: ``GE_value_CEL=2&LT_value_CEL=8`` asks for one reading between 2 and
  8 °C, not for one reading over 2 and another under 8. Numbers compare only with readings in the
  parameter's unit (no unit conversion); ``type`` compares in its bare form (``Temperature``,
  ``gs1:Temperature`` and ``https://gs1.org/voc/Temperature`` are one type), ``hexBinaryValue``
  without regard to case (``f0f0f0`` is ``F0F0F0``), ``booleanValue`` as ``true`` / ``false``.

Limits (docs/security.md): these queries never run on the session the sink, recall and reprocess
share. ``EpcisSessions`` keeps a small pool of ClickHouse sessions whose caps (time, memory, result
size, rows read, threads) ClickHouse itself enforces: on the embedded store as session settings
with ``readonly=1`` set last (after it the session cannot SET or pass per-query SETTINGS), on a
server as the settings profile, with constraints, of the read-only ``epcis`` user of
``deploy/clickhouse-epcis.sql`` (SELECT on ``epcis_events`` only). A query over a cap raises
``LimitExceeded``: ``too_large`` for the result's size, else too complex.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


from genealogy.sinks.capped_sessions import CappedSessions, Limits, PoolBusy

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_PAGE = 1000

# The sort key: 0 (no orderBy: event id order), or eventTime / recordTime in epoch ms.
_KEY = ("multiIf({order_by:String} = 'eventTime', toUnixTimestamp64Milli(event_time), "
        "{order_by:String} = 'recordTime', toUnixTimestamp64Milli(record_time), toInt64(0))")

# (sensorMetadata, sensorReport) pairs of the event; an element without reports is one pair.
_PAIRS = ("arrayFlatten(arrayMap(el -> arrayMap(r -> (JSONExtractRaw(el, 'sensorMetadata'), r), "
          "if(JSONLength(el, 'sensorReport') = 0, [''], JSONExtractArrayRaw(el, 'sensorReport'))), "
          "JSONExtractArrayRaw(sensor_elements)))")
# A field of a pair: the report's, else the metadata's (p.2 report, p.1 metadata), as text
# (a string's value; a number or boolean as JSON writes it).
_FIELD = ("if(JSONType(if(JSONHas(p.2, f), p.2, p.1), f) = 'String', JSONExtractString(if(JSONHas(p.2, f), p.2, p.1), f), "
          "JSONExtractRaw(if(JSONHas(p.2, f), p.2, p.1), f))")
_BARE_TYPE = "replaceRegexpOne({x}, '^(?:gs1:|https?://(?:www\\\\.)?gs1\\\\.org/voc/)', '')"
_SENSOR = f"""
  AND (NOT {{sensor:Bool}} OR arrayExists(p ->
        arrayAll((f, vs) -> has(vs, multiIf(f = 'type', {_BARE_TYPE.format(x=_FIELD)}, f = 'hexBinaryValue', upper({_FIELD}),
                                            {_FIELD})),
                 {{s_fields:Array(String)}}, {{s_values:Array(Array(String))}})
    AND arrayAll((f, op, u, v) -> (u = '' OR JSONExtractString(p.2, 'uom') = u)
                 AND JSONType(p.2, f) IN ('Int64', 'UInt64', 'Double')
                 AND multiIf(op = 'GE', JSONExtractFloat(p.2, f) >= v, op = 'GT', JSONExtractFloat(p.2, f) > v,
                             op = 'LE', JSONExtractFloat(p.2, f) <= v, op = 'LT', JSONExtractFloat(p.2, f) < v,
                             JSONExtractFloat(p.2, f) = v),
                 {{n_fields:Array(String)}}, {{n_ops:Array(String)}}, {{n_uoms:Array(String)}}, {{n_values:Array(Float64)}})
    AND arrayAll((f, op, v) -> ifNull(if(op = 'GE', toUnixTimestamp64Milli(parseDateTime64BestEffortOrNull({_FIELD}, 3, 'UTC')) >= v,
                                        toUnixTimestamp64Milli(parseDateTime64BestEffortOrNull({_FIELD}, 3, 'UTC')) < v), false),
                 {{t_fields:Array(String)}}, {{t_ops:Array(String)}}, {{t_values:Array(Int64)}}),
    {_PAIRS}))"""

# A CBV term in its bare form, as genealogy.domain.epcis_event.cbv_term makes it.
_BARE_CBV = ("replaceRegexpOne({x}, '(?i)^(?:urn:epcglobal:cbv:(?:bizstep|disp|btt|sdt|er):|"
             "(?:https?://ref\\\\.gs1\\\\.org/cbv/|cbv:|gs1:)(?:BizStep|Disp|BTT|SDT|ER)-)', '')")
_QUANTITIES = ("arrayConcat(JSONExtractArrayRaw(event_json, 'quantityList'), JSONExtractArrayRaw(event_json, 'childQuantityList'), "
               "JSONExtractArrayRaw(event_json, 'inputQuantityList'), JSONExtractArrayRaw(event_json, 'outputQuantityList'))")
_PERSISTENT = "JSONExtractRaw(event_json, 'persistentDisposition')"
_ERROR = "JSONExtractRaw(event_json, 'errorDeclaration')"
_ERROR_TIME = f"toUnixTimestamp64Milli(parseDateTime64BestEffortOrNull(JSONExtractString({_ERROR}, 'declarationTime'), 3, 'UTC'))"
_ERROR_REASON = _BARE_CBV.format(x=f"JSONExtractString({_ERROR}, 'reason')")

FILTER = f"""
  (empty({{event_ids:Array(String)}}) OR event_id IN {{event_ids:Array(String)}})
  AND (empty({{event_types:Array(String)}}) OR event_type IN {{event_types:Array(String)}})
  AND toUnixTimestamp64Milli(event_time) >= {{ge_event_time:Int64}} AND toUnixTimestamp64Milli(event_time) < {{lt_event_time:Int64}}
  AND toUnixTimestamp64Milli(record_time) >= {{ge_record_time:Int64}} AND toUnixTimestamp64Milli(record_time) < {{lt_record_time:Int64}}
  AND (empty({{actions:Array(String)}}) OR action IN {{actions:Array(String)}})
  AND (empty({{biz_steps:Array(String)}}) OR biz_step IN {{biz_steps:Array(String)}})
  AND (empty({{dispositions:Array(String)}}) OR disposition IN {{dispositions:Array(String)}})
  AND (empty({{read_points:Array(String)}}) OR read_point IN {{read_points:Array(String)}})
  AND (empty({{wd_read_points:Array(String)}}) OR read_point IN {{wd_read_points:Array(String)}})
  AND (empty({{biz_locations:Array(String)}}) OR biz_location IN {{biz_locations:Array(String)}})
  AND (empty({{wd_biz_locations:Array(String)}}) OR biz_location IN {{wd_biz_locations:Array(String)}})
  AND (empty({{epc:Array(String)}}) OR hasAny(epcs, {{epc:Array(String)}}) OR hasAny(epcs_norm, {{epc_norm:Array(String)}})
       OR arrayExists(x -> arrayExists(pre -> startsWith(x, pre), {{epc_prefix:Array(String)}}), epcs_norm))
  AND (empty({{any_epc:Array(String)}}) OR hasAny(any_epcs, {{any_epc:Array(String)}}) OR hasAny(any_epcs_norm, {{any_epc_norm:Array(String)}})
       OR arrayExists(x -> arrayExists(pre -> startsWith(x, pre), {{any_epc_prefix:Array(String)}}), any_epcs_norm))
  AND (empty({{parent_id:Array(String)}}) OR has({{parent_id:Array(String)}}, parent_id) OR has({{parent_id_norm:Array(String)}}, parent_id_norm)
       OR arrayExists(pre -> parent_id_norm != '' AND startsWith(parent_id_norm, pre), {{parent_id_prefix:Array(String)}}))
  AND (empty({{input_epc:Array(String)}}) OR hasAny(input_epcs, {{input_epc:Array(String)}}) OR hasAny(input_epcs_norm, {{input_epc_norm:Array(String)}})
       OR arrayExists(x -> arrayExists(pre -> startsWith(x, pre), {{input_epc_prefix:Array(String)}}), input_epcs_norm))
  AND (empty({{output_epc:Array(String)}}) OR hasAny(output_epcs, {{output_epc:Array(String)}}) OR hasAny(output_epcs_norm, {{output_epc_norm:Array(String)}})
       OR arrayExists(x -> arrayExists(pre -> startsWith(x, pre), {{output_epc_prefix:Array(String)}}), output_epcs_norm))
  AND (empty({{epc_class:Array(String)}}) OR hasAny(epc_classes, {{epc_class:Array(String)}}) OR hasAny(epc_classes_norm, {{epc_class_norm:Array(String)}})
       OR arrayExists(x -> arrayExists(pre -> startsWith(x, pre), {{epc_class_prefix:Array(String)}}), epc_classes_norm))
  AND arrayAll((t, vs) -> arrayExists(b -> b.1 = t AND has(vs, b.2), biz_transactions),
               {{bt_types:Array(String)}}, {{bt_ids:Array(Array(String))}})
  AND arrayAll(f -> JSONHas(event_json, f) AND JSONType(event_json, f) != 'Null'
                    AND NOT (JSONType(event_json, f) IN ('Array', 'Object') AND JSONLength(event_json, f) = 0)
                    AND NOT (JSONType(event_json, f) = 'String' AND JSONExtractString(event_json, f) = ''),
               {{exists:Array(String)}})
  AND (NOT {{error_declared:Bool}} OR JSONType(event_json, 'errorDeclaration') = 'Object')
  AND ({{ge_error_time:Int64}} = {INT64_MIN} OR ifNull({_ERROR_TIME} >= {{ge_error_time:Int64}}, false))
  AND ({{lt_error_time:Int64}} = {INT64_MAX} OR ifNull({_ERROR_TIME} < {{lt_error_time:Int64}}, false))
  AND (empty({{error_reasons:Array(String)}}) OR (JSONType(event_json, 'errorDeclaration') = 'Object'
       AND JSONHas({_ERROR}, 'reason') AND {_ERROR_REASON} IN {{error_reasons:Array(String)}}))
  AND (empty({{transformation_ids:Array(String)}}) OR has({{transformation_ids:Array(String)}}, JSONExtractString(event_json, 'transformationID')))
  AND (empty({{pd_set:Array(String)}}) OR hasAny(arrayMap(x -> {_BARE_CBV.format(x="x")}, JSONExtract({_PERSISTENT}, 'set', 'Array(String)')),
                                              {{pd_set:Array(String)}}))
  AND (empty({{pd_unset:Array(String)}}) OR hasAny(arrayMap(x -> {_BARE_CBV.format(x="x")}, JSONExtract({_PERSISTENT}, 'unset', 'Array(String)')),
                                                {{pd_unset:Array(String)}}))
  AND arrayAll((t, vs) -> arrayExists(x -> {_BARE_CBV.format(x="JSONExtractString(x, 'type')")} = t AND has(vs, JSONExtractString(x, 'source')),
                                      JSONExtractArrayRaw(event_json, 'sourceList')),
               {{src_types:Array(String)}}, {{src_ids:Array(Array(String))}})
  AND arrayAll((t, vs) -> arrayExists(x -> {_BARE_CBV.format(x="JSONExtractString(x, 'type')")} = t AND has(vs, JSONExtractString(x, 'destination')),
                                      JSONExtractArrayRaw(event_json, 'destinationList')),
               {{dst_types:Array(String)}}, {{dst_ids:Array(Array(String))}})
  AND (empty({{q_ops:Array(String)}}) OR arrayExists(q -> JSONType(q, 'quantity') IN ('Int64', 'UInt64', 'Double')
       AND arrayAll((op, v) -> multiIf(op = 'GE', JSONExtractFloat(q, 'quantity') >= v, op = 'GT', JSONExtractFloat(q, 'quantity') > v,
                                       op = 'LE', JSONExtractFloat(q, 'quantity') <= v, op = 'LT', JSONExtractFloat(q, 'quantity') < v,
                                       JSONExtractFloat(q, 'quantity') = v), {{q_ops:Array(String)}}, {{q_values:Array(Float64)}}),
       {_QUANTITIES}))
  AND (empty({{corrective_ids:Array(String)}})
       OR hasAny(JSONExtract({_ERROR}, 'correctiveEventIDs', 'Array(String)'), {{corrective_ids:Array(String)}}))
  {_SENSOR}
"""


def _events_sql(descending: bool) -> str:
    cmp, direction = ("<", "DESC") if descending else (">", "ASC")
    return f"""
SELECT event_id, event_json, {_KEY} AS sort_key FROM epcis_events FINAL
WHERE ({{first:Bool}} OR (sort_key, event_id) {cmp} ({{after_key:Int64}}, {{after:String}}))
  AND {FILTER}
ORDER BY sort_key {direction}, event_id {direction}
LIMIT {{limit:UInt32}}
"""


EVENTS_SQL = {False: _events_sql(False), True: _events_sql(True)}
# maxEventCount: how many events match, counted up to one more than allowed.
COUNT_SQL = f"SELECT count() FROM (SELECT 1 FROM epcis_events FINAL WHERE {FILTER} LIMIT {{cap:UInt64}})"
EVENT_SQL = "SELECT event_json FROM epcis_events FINAL WHERE event_id = {event_id:String} LIMIT 1"

MATCH_FIELDS = ("epc", "any_epc", "parent_id", "input_epc", "output_epc", "epc_class")
LIST_FIELDS = ("event_ids", "event_types", "actions", "biz_steps", "dispositions", "read_points", "wd_read_points",
               "biz_locations", "wd_biz_locations", "exists", "error_reasons", "corrective_ids", "transformation_ids",
               "pd_set", "pd_unset")
ORDER_KEYS = ("eventTime", "recordTime")


@dataclass
class EventQuery:
    """A parsed query (genealogy.epcis_api.parse_query builds it). Empty list = no filter."""
    event_ids: list[str] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    biz_steps: list[str] = field(default_factory=list)
    dispositions: list[str] = field(default_factory=list)
    read_points: list[str] = field(default_factory=list)
    wd_read_points: list[str] = field(default_factory=list)
    biz_locations: list[str] = field(default_factory=list)
    wd_biz_locations: list[str] = field(default_factory=list)
    ge_event_time: int = INT64_MIN
    lt_event_time: int = INT64_MAX
    ge_record_time: int = INT64_MIN
    lt_record_time: int = INT64_MAX
    # MATCH_ field -> (as written, normalised, prefixes)
    matches: dict[str, tuple[list[str], list[str], list[str]]] = field(default_factory=dict)
    biz_transactions: dict[str, list[str]] = field(default_factory=dict)   # type -> ids
    exists: list[str] = field(default_factory=list)          # EXISTS_<field>: top-level fields
    error_declared: bool = False                             # EXISTS_errorDeclaration
    ge_error_time: int = INT64_MIN
    lt_error_time: int = INT64_MAX
    error_reasons: list[str] = field(default_factory=list)   # bare CBV terms
    corrective_ids: list[str] = field(default_factory=list)
    transformation_ids: list[str] = field(default_factory=list)
    pd_set: list[str] = field(default_factory=list)          # EQ_persistentDisposition_set (bare CBV terms)
    pd_unset: list[str] = field(default_factory=list)
    sources: dict[str, list[str]] = field(default_factory=dict)        # EQ_source_<type>: type -> ids
    destinations: dict[str, list[str]] = field(default_factory=dict)   # EQ_destination_<type>
    quantities: list[tuple[str, float]] = field(default_factory=list)  # EQ_/GT_/GE_/LT_/LE_quantity: (op, value)
    sensor_text: dict[str, list[str]] = field(default_factory=dict)              # field -> values (OR)
    sensor_numbers: list[tuple[str, str, str, float]] = field(default_factory=list)  # (field, GE|GT|LE|LT|EQ, uom, value)
    sensor_times: list[tuple[str, str, int]] = field(default_factory=list)        # (field, GE|LT, epoch ms)
    order_by: str = ""            # "" | eventTime | recordTime
    descending: bool = False
    event_count_limit: int | None = None
    max_event_count: int | None = None

    def parameters(self) -> dict:
        out: dict = {name: getattr(self, name) for name in LIST_FIELDS}
        out.update(ge_event_time=self.ge_event_time, lt_event_time=self.lt_event_time,
                   ge_record_time=self.ge_record_time, lt_record_time=self.lt_record_time,
                   ge_error_time=self.ge_error_time, lt_error_time=self.lt_error_time,
                   error_declared=self.error_declared, order_by=self.order_by)
        for name in MATCH_FIELDS:
            written, norm, prefix = self.matches.get(name, ([], [], []))
            out.update({name: written, f"{name}_norm": norm, f"{name}_prefix": prefix})
        types = sorted(self.biz_transactions)
        out.update(bt_types=types, bt_ids=[self.biz_transactions[t] for t in types])
        for name, lists in (("src", self.sources), ("dst", self.destinations)):
            types = sorted(lists)
            out.update({f"{name}_types": types, f"{name}_ids": [lists[t] for t in types]})
        out.update(q_ops=[q[0] for q in self.quantities], q_values=[float(q[1]) for q in self.quantities])
        fields = sorted(self.sensor_text)
        out.update(sensor=bool(fields or self.sensor_numbers or self.sensor_times),
                   s_fields=fields, s_values=[self.sensor_text[f] for f in fields],
                   n_fields=[n[0] for n in self.sensor_numbers], n_ops=[n[1] for n in self.sensor_numbers],
                   n_uoms=[n[2] for n in self.sensor_numbers], n_values=[float(n[3]) for n in self.sensor_numbers],
                   t_fields=[t[0] for t in self.sensor_times], t_ops=[t[1] for t in self.sensor_times],
                   t_values=[t[2] for t in self.sensor_times])
        return out


class LimitExceeded(RuntimeError):
    """A query stopped by one of its ClickHouse caps; ``too_large``: the result was too big (else too complex)."""

    def __init__(self, reason: str, too_large: bool):
        super().__init__(reason)
        self.too_large = too_large


class Busy(RuntimeError):
    """Every EPCIS query session is taken."""


# ClickHouse's error codes of its caps: result size (too large), time, memory, rows or bytes read (too complex).
TOO_LARGE_CODES = {396}                        # TOO_MANY_ROWS_OR_BYTES (max_result_rows / _bytes)
TOO_COMPLEX_CODES = {159, 160, 241, 158, 307}  # TIMEOUT_EXCEEDED, TOO_SLOW, MEMORY_LIMIT_EXCEEDED, TOO_MANY_ROWS, TOO_MANY_BYTES


def clickhouse_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    m = re.search(r"Code: (\d+)\.", str(exc))
    return int(m.group(1)) if m else None


def limit_reason(exc: BaseException) -> str:
    """ClickHouse's own reason, first line, without its version."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"\s*\(version [^)]*\)", "", text)
    return re.sub(r"^(?:Code: \d+\. DB::Exception: )+", "", text)[:500]


def epcis_limits(settings) -> Limits:
    """The caps of an EPCIS query (GENEALOGY_EPCIS_*)."""
    return Limits(max_execution_s=settings.epcis_max_execution_s, max_memory_bytes=settings.epcis_max_memory_bytes,
                  max_result_rows=settings.epcis_max_result_rows, max_result_bytes=settings.epcis_max_result_bytes,
                  max_rows_to_read=settings.epcis_max_rows_to_read, max_threads=settings.epcis_max_threads)


class EpcisSessions:
    """ClickHouse sessions of the EPCIS query interface only (see the module doc)."""

    def __init__(self, dsn: str, limits: Limits | None = None, sessions: int = 2, *, own_user: bool = False):
        """``own_user``: the DSN logs in as a server user whose settings profile holds readonly and the caps
        (deploy/clickhouse-epcis.sql); such a session sends none of its own."""
        self._pool = CappedSessions(dsn, limits, sessions, own_user=own_user)
        self.limits = self._pool.limits

    @contextmanager
    def _session(self) -> Iterator:
        try:
            with self._pool.session() as client:
                yield client
        except PoolBusy:
            raise Busy("every EPCIS query session is busy; try again") from None

    def rows(self, sql: str, parameters: dict) -> list[tuple]:
        with self._session() as client:
            try:
                return client.query(sql, parameters=parameters).result_rows
            except Exception as exc:
                code = clickhouse_code(exc)
                if code in TOO_LARGE_CODES or code in TOO_COMPLEX_CODES:
                    raise LimitExceeded(limit_reason(exc), code in TOO_LARGE_CODES) from None
                raise

    def settings_in_effect(self, names: list[str]) -> dict:
        """What ClickHouse says a session's settings are (``getSetting``), and who it is."""
        with self._session() as client:
            user = client.query("SELECT currentUser()").result_rows[0][0]
            rows = client.query("SELECT name, value FROM system.settings WHERE name IN {names:Array(String)}",
                                parameters={"names": names}).result_rows
        return {"user": user, **dict(rows)}

    def close(self) -> None:
        self._pool.close()


def events_page(sessions: EpcisSessions, query: EventQuery, after: tuple[int, str] | None,
                per_page: int) -> tuple[list[tuple[str, str, int]], bool]:
    """Up to ``per_page`` (event id, event JSON, sort key) after the cursor ``after`` = (sort key, event id)
    of the previous page's last event (None: the first page); and whether more follow."""
    key, last = after if after is not None else (0, "")
    rows = sessions.rows(EVENTS_SQL[query.descending], {**query.parameters(), "first": after is None, "after_key": key,
                                                         "after": last, "limit": per_page + 1})
    return [(r[0], r[1], int(r[2])) for r in rows[:per_page]], len(rows) > per_page


def count_up_to(sessions: EpcisSessions, query: EventQuery, cap: int) -> int:
    """How many events match, counting no further than ``cap``."""
    return int(sessions.rows(COUNT_SQL, {**query.parameters(), "cap": cap})[0][0])


def event_by_id(sessions: EpcisSessions, event_id: str) -> str | None:
    rows = sessions.rows(EVENT_SQL, {"event_id": event_id})
    return rows[0][0] if rows else None
