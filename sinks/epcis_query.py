"""The EPCIS 2.0 query interface's SQL over ``epcis_events`` (sinks/sql/ddl.sql).

One statement answers every combination of the supported query parameters: each filter is
always there, bound to a value that switches it off when the parameter is absent (an empty
array, the widest time range). Nothing is formatted into the text; ClickHouse binds every value.
Results come in event id order, a page at a time: ``after`` is the last event id of the previous
page (a keyset cursor, never an OFFSET), and one row more than the page is asked for, so the
caller knows whether there is a next page.

EPC parameters (``MATCH_*``) come in three arrays each: the values as written, their normalised
node ids (``genealogy.domain.ids.normalize``) and, for class-level patterns
(``urn:epc:idpat:sgtin:...*``, a GTIN-only Digital Link), prefixes of the node ids they match
(``serial:<gtin>:``, ``lot:<gtin>:``). ``EQ_bizTransaction_<type>`` come as two parallel arrays:
the types, and for each type the ids, one of which the event must carry with that type (AND
across types).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from genealogy.sinks.connection import Connection

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_PAGE = 1000

EVENTS_SQL = """
SELECT event_id, event_json FROM epcis_events FINAL
WHERE event_id > {after:String}
  AND (empty({event_ids:Array(String)}) OR event_id IN {event_ids:Array(String)})
  AND (empty({event_types:Array(String)}) OR event_type IN {event_types:Array(String)})
  AND toUnixTimestamp64Milli(event_time) >= {ge_event_time:Int64} AND toUnixTimestamp64Milli(event_time) < {lt_event_time:Int64}
  AND toUnixTimestamp64Milli(record_time) >= {ge_record_time:Int64} AND toUnixTimestamp64Milli(record_time) < {lt_record_time:Int64}
  AND (empty({actions:Array(String)}) OR action IN {actions:Array(String)})
  AND (empty({biz_steps:Array(String)}) OR biz_step IN {biz_steps:Array(String)})
  AND (empty({dispositions:Array(String)}) OR disposition IN {dispositions:Array(String)})
  AND (empty({read_points:Array(String)}) OR read_point IN {read_points:Array(String)})
  AND (empty({biz_locations:Array(String)}) OR biz_location IN {biz_locations:Array(String)})
  AND (empty({epc:Array(String)}) OR hasAny(epcs, {epc:Array(String)}) OR hasAny(epcs_norm, {epc_norm:Array(String)})
       OR arrayExists(x -> arrayExists(pre -> startsWith(x, pre), {epc_prefix:Array(String)}), epcs_norm))
  AND (empty({any_epc:Array(String)}) OR hasAny(any_epcs, {any_epc:Array(String)}) OR hasAny(any_epcs_norm, {any_epc_norm:Array(String)})
       OR arrayExists(x -> arrayExists(pre -> startsWith(x, pre), {any_epc_prefix:Array(String)}), any_epcs_norm))
  AND (empty({parent_id:Array(String)}) OR has({parent_id:Array(String)}, parent_id) OR has({parent_id_norm:Array(String)}, parent_id_norm)
       OR arrayExists(pre -> parent_id_norm != '' AND startsWith(parent_id_norm, pre), {parent_id_prefix:Array(String)}))
  AND (empty({input_epc:Array(String)}) OR hasAny(input_epcs, {input_epc:Array(String)}) OR hasAny(input_epcs_norm, {input_epc_norm:Array(String)})
       OR arrayExists(x -> arrayExists(pre -> startsWith(x, pre), {input_epc_prefix:Array(String)}), input_epcs_norm))
  AND (empty({output_epc:Array(String)}) OR hasAny(output_epcs, {output_epc:Array(String)}) OR hasAny(output_epcs_norm, {output_epc_norm:Array(String)})
       OR arrayExists(x -> arrayExists(pre -> startsWith(x, pre), {output_epc_prefix:Array(String)}), output_epcs_norm))
  AND (empty({epc_class:Array(String)}) OR hasAny(epc_classes, {epc_class:Array(String)}) OR hasAny(epc_classes_norm, {epc_class_norm:Array(String)})
       OR arrayExists(x -> arrayExists(pre -> startsWith(x, pre), {epc_class_prefix:Array(String)}), epc_classes_norm))
  AND arrayAll((t, vs) -> arrayExists(b -> b.1 = t AND has(vs, b.2), biz_transactions),
               {bt_types:Array(String)}, {bt_ids:Array(Array(String))})
ORDER BY event_id
LIMIT {limit:UInt32}
"""

EVENT_SQL = "SELECT event_json FROM epcis_events FINAL WHERE event_id = {event_id:String} LIMIT 1"

MATCH_FIELDS = ("epc", "any_epc", "parent_id", "input_epc", "output_epc", "epc_class")
LIST_FIELDS = ("event_ids", "event_types", "actions", "biz_steps", "dispositions", "read_points", "biz_locations")


@dataclass
class EventQuery:
    """A parsed query (genealogy.epcis_api.parse_query builds it). Empty list = no filter."""
    event_ids: list[str] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    biz_steps: list[str] = field(default_factory=list)
    dispositions: list[str] = field(default_factory=list)
    read_points: list[str] = field(default_factory=list)
    biz_locations: list[str] = field(default_factory=list)
    ge_event_time: int = INT64_MIN
    lt_event_time: int = INT64_MAX
    ge_record_time: int = INT64_MIN
    lt_record_time: int = INT64_MAX
    # MATCH_ field -> (as written, normalised, prefixes)
    matches: dict[str, tuple[list[str], list[str], list[str]]] = field(default_factory=dict)
    biz_transactions: dict[str, list[str]] = field(default_factory=dict)   # type -> ids

    def parameters(self) -> dict:
        out: dict = {name: getattr(self, name) for name in LIST_FIELDS}
        out.update(ge_event_time=self.ge_event_time, lt_event_time=self.lt_event_time,
                   ge_record_time=self.ge_record_time, lt_record_time=self.lt_record_time)
        for name in MATCH_FIELDS:
            written, norm, prefix = self.matches.get(name, ([], [], []))
            out.update({name: written, f"{name}_norm": norm, f"{name}_prefix": prefix})
        types = sorted(self.biz_transactions)
        out.update(bt_types=types, bt_ids=[self.biz_transactions[t] for t in types])
        return out


def events_page(connection: Connection, query: EventQuery, after: str, per_page: int) -> tuple[list[tuple[str, str]], bool]:
    """Up to ``per_page`` (event id, event JSON) after event id ``after``; and whether more follow."""
    rows = connection.rows(EVENTS_SQL, {**query.parameters(), "after": after, "limit": per_page + 1})
    return [(r[0], r[1]) for r in rows[:per_page]], len(rows) > per_page


def event_by_id(connection: Connection, event_id: str) -> str | None:
    rows = connection.rows(EVENT_SQL, {"event_id": event_id})
    return rows[0][0] if rows else None
