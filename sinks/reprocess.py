"""`genealogy reprocess`: recover material events that arrived too late for the streaming join.

Why events are late. The join (``streams/join.py``) answers a unit completion once the
station's watermark (newest event time - grace) has passed it. A material load/unload older
than the watermark changes answers already given: the stream applies it to its state (so
answers from then on are right) and reports it in the dead letters with stage ``late`` (its
payload is the event as a one-event capture batch). A completion older than the retained
material history is late too and gets no answer. The answers given between the late event's
time and its arrival are then wrong for that station:

* a late **load** at t: completions at or after t, answered before it arrived, lack the edge;
* a late **unload** at t: those completions wrongly got the material, so edges must be
  **deleted**, not only added;
* a late **completion**: its unit row and all its edges are missing.

What a run does (deterministic, idempotent). It runs inside the query service, the process
that owns the store (in embedded mode no other process may open chdb).

1. Late dead letters not yet reconciled (``dead_letters_final``, stage ``late``, not in table
   ``reprocessed``) name the stations to fix; a station already reconciled is checked again
   when the stream may have answered wrongly since (see "Limits").
2. The station's history is rebuilt from ``capture_batches`` (every capture message as it
   arrived, ``source`` = station): every material event of the station (the answer at t
   depends on the last load/unload of each slot before t, however old, so material history is
   not cut by time or by the retention) and its completions from the earliest late event on,
   deduplicated by event id, plus the late events themselves.
3. The join is recomputed offline without lateness: events sorted by (event_ms, event_id)
   through ``streams.derive.derive`` with a fresh state, grace 0 and unbounded retention, then
   a heartbeat past the newest event. Same code as the stream, so same edge ids.
4. The store is diffed in the scope lateness can have touched: ``consumed`` edges at the
   station whose material is one a late event moved, at or after that material's earliest
   late event, and every edge of a late completion. Edges of completions absent from the
   rebuilt history (not yet in ``capture_batches``) are never deleted. Missing edges are
   inserted (the materialised views fill ``edges_by_parent`` and ``nodes``); wrong ones are
   removed from ``edges`` and ``edges_by_parent`` with lightweight ``DELETE`` (synchronous;
   ``ALTER TABLE ... DELETE`` with ``mutations_sync = 2`` where the server lacks it): a
   ReplacingMergeTree can only add rows, and a late unload makes existing rows wrong. Unit
   rows of late completions are inserted when missing.
5. The handled dead letters are recorded in ``reprocessed`` with what the run had seen of the
   station: its number of capture messages and its newest ``consumed`` edge row (``inserted_at``,
   taken under the connection's lock right after the writes, so no sink insert slips in unchecked).

Running it twice changes nothing: the second run finds no new late dead letter and no
station whose capture or edges changed, and a forced re-check (``recheck_all=True``) finds an
empty diff.
The writes come before the record, so a crash in between only means the next run redoes an
empty-or-same diff.

Limits.

* The Kafka edges topic stays append-only: the corrections exist only in the store. A store
  rebuilt from the topics gets the wrong edges back and loses the added ones, so reprocess
  must run again after it: on a fresh store ``reprocessed`` is empty and a plain run redoes
  everything; on the same store with the sink's offsets reset the re-sunk edge rows are newer
  than the recorded marks, so a plain run re-checks those stations (``recheck_all=True``
  forces every station with a late dead letter).
* A worker that crashed before its changelog held a late event, and re-reads capture, derives
  the deleted edges once more. So a reconciled station is checked again on the next run when
  its capture count changed or it has ``consumed`` edge rows newer than the recorded mark; run
  reprocess after the feed drained, or periodically.
* Run it on a drained pipeline: a material event still in flight to ``capture_batches`` is
  missing from the rebuilt history (the next run, seeing the capture grow, corrects that).
* Cost: per station to fix, one decode of every capture message of that station (``payload``
  read in pages; only material events and completions in the affected span are kept in
  memory), i.e. linear in the station's capture history, not in the size of the store; the
  capture's ``kafka_time`` is not used to cut it, because the answer at t depends on each
  slot's last load before t, however old. Every run also reads and decodes all late dead
  letters, and scans ``edges`` by station for the re-check marks.
* Validation runs with today's clock: an event the stream rejected only for being more than
  a day in the future of its clock at the time would now be accepted.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from genealogy import schemas
from genealogy.settings import Settings
from genealogy.sinks import queries as q
from genealogy.sinks.connection import Connection
from genealogy.sinks.kafka_sink import ts
from genealogy.sinks.writer import Writer
from genealogy.domain.derive import Invalid, derive, node_of

log = logging.getLogger(__name__)

MATERIAL_KINDS = ("genealogy.MaterialLoaded", "genealogy.MaterialUnloaded")
COMPLETED = "genealogy.UnitCompleted"
UNBOUNDED_MS = 2**62
PAGE_ROWS = 2_000
REPROCESSED_COLUMNS = ["dead_letter_id", "station", "event_id", "captures_seen", "edges_mark"]

# One run at a time in this process (HTTP requests run in a thread pool).
_run_lock = threading.Lock()


@dataclass
class StationWork:
    station: str
    letters: list[str] = field(default_factory=list)            # every late dead letter id of the station
    new_letters: list[str] = field(default_factory=list)        # the ones not reconciled before
    late_events: dict[str, tuple[str, dict]] = field(default_factory=dict)  # event_id -> (kind, event)
    letter_event: dict[str, str] = field(default_factory=dict)  # dead_letter_id -> event_id


def reprocess_late(connection: Connection, writer: Writer, settings: Settings, serde: schemas.Serde | None = None,
                   recheck_all: bool = False) -> dict:
    """Reconcile the store with every late dead letter; see the module docstring. Returns a summary."""
    serde = serde or schemas.serde_for(settings)
    with _run_lock:
        started = time.perf_counter()
        work, new_count, undecodable = _work(connection, serde, recheck_all)
        summary = {"late_dead_letters": new_count, "stations": sorted(work), "edges_added": 0, "edges_removed": 0,
                   "units_added": 0, "events_replayed": 0, "undecodable_dead_letters": undecodable}
        for station in sorted(work):
            added, removed, units, replayed = _reconcile(connection, writer, serde, work[station])
            summary["edges_added"] += added
            summary["edges_removed"] += removed
            summary["units_added"] += units
            summary["events_replayed"] += replayed
        summary["query_ms"] = round((time.perf_counter() - started) * 1000, 2)
        if work:
            log.info("reprocess: %s", summary)
        return summary


# --- what to do ---------------------------------------------------------------------

def _work(connection: Connection, serde: schemas.Serde, recheck_all: bool) -> tuple[dict[str, StationWork], int, int]:
    handled: set[str] = set()
    coverage: dict[str, tuple[int, int]] = {}  # station -> (capture messages, newest edge row) when last reconciled
    for dead_letter_id, station, seen, mark in connection.rows(q.REPROCESSED_SQL):
        handled.add(dead_letter_id)
        old = coverage.get(station, (0, 0))
        coverage[station] = (max(old[0], int(seen)), max(old[1], int(mark)))

    by_station: dict[str, StationWork] = {}
    undecodable = 0
    for dead_letter_id, source, payload in connection.rows(q.LATE_DEAD_LETTERS_SQL, binary=["payload"]):
        try:
            _, batch = serde.decode(payload, expect=schemas.CAPTURE)
        except schemas.DecodeError:
            undecodable += 1
            continue
        station = batch["source"] or source
        w = by_station.setdefault(station, StationWork(station))
        w.letters.append(dead_letter_id)
        if dead_letter_id not in handled:
            w.new_letters.append(dead_letter_id)
        for kind, e in batch["events"]:
            if kind in MATERIAL_KINDS + (COMPLETED,) and e.get("station") == station:
                w.late_events.setdefault(e["event_id"], (kind, e))
                w.letter_event[dead_letter_id] = e["event_id"]

    if not by_station:
        return {}, 0, undecodable
    # A reconciled station is checked again when the stream may have answered wrongly since: new capture
    # (completions the stream answers without the late event), or edge rows newer than the last check
    # (a worker that crashed and re-read capture re-derives the wrong edges).
    counts = _capture_counts(connection, list(by_station))
    marks = _edge_marks(connection, list(by_station))
    todo = {}
    for station, w in by_station.items():
        seen, mark = coverage.get(station, (0, 0))
        if w.new_letters or recheck_all or counts.get(station, 0) != seen or marks.get(station, 0) > mark:
            todo[station] = w
    return todo, sum(len(w.new_letters) for w in by_station.values()), undecodable


def _capture_counts(connection: Connection, stations: list[str]) -> dict[str, int]:
    return {s: int(n) for s, n in connection.rows(q.CAPTURE_COUNT_SQL, {"stations": stations})}


def _edge_marks(connection: Connection, stations: list[str]) -> dict[str, int]:
    return {s: int(ms or 0) for s, ms in connection.rows(q.EDGES_MARK_SQL, {"stations": stations})}


# --- one station ------------------------------------------------------------------------

def _reconcile(connection: Connection, writer: Writer, serde: schemas.Serde, w: StationWork) -> tuple[int, int, int, int]:
    station = w.station
    captures_seen = _capture_counts(connection, [station]).get(station, 0)  # before reading: later arrivals re-check

    # What lateness can have touched: a material from its earliest late event on; a late completion entirely.
    late_material: dict[str, int] = {}
    late_completions: dict[str, str] = {}  # event_id -> unit
    for kind, e in w.late_events.values():
        try:
            if kind == COMPLETED:
                late_completions[e["event_id"]] = node_of(e["unit"], "unit", ("serial",))
            else:
                m = node_of(e["material"], "material", ("serial", "lot", "class"))
                late_material[m] = min(late_material.get(m, e["event_ms"]), e["event_ms"])
        except Invalid:
            continue  # cannot have been late: validation comes first
    if not w.late_events:
        _record(writer, w, captures_seen, _edge_marks(connection, [station]).get(station, 0))
        return 0, 0, 0, 0
    since = min(e["event_ms"] for _, e in w.late_events.values())

    events = _history(connection, serde, station, since)
    for event_id, ke in w.late_events.items():
        events.setdefault(event_id, ke)
    ordered = sorted(events.values(), key=lambda ke: (ke[1]["event_ms"], ke[1]["event_id"]))
    newest = ordered[-1][1]["event_ms"]
    flush = ("genealogy.StationHeartbeat", {"event_id": f"reprocess:{station}:{newest + 1}", "event_ms": newest + 1,
                                            "station": station})
    out = derive({"batch_id": f"reprocess:{station}", "source": station, "sent_ms": newest, "events": [*ordered, flush]},
                 {}, grace_ms=0, retention_ms=UNBOUNDED_MS)
    if any(r.stage == "late" for r in out.rejected):
        raise RuntimeError(f"reprocess {station}: an ordered replay with grace 0 rejected an event as late")

    completions = {u["event_id"] for u in out.units}

    def in_scope(child: str, event_ms: int, completion: str) -> bool:
        return completion in late_completions or (child in late_material and event_ms >= late_material[child])

    expected = {}
    for e in out.edges:
        if e["relation"] == "consumed" and in_scope(e["child"], e["event_ms"], _completion_of(e["source_event"], completions)):
            expected[e["edge_id"]] = e

    # Under the connection's lock (the embedded sink inserts through the same connection) from reading the
    # stored edges to taking the edge mark: no edge row can slip in unchecked below the mark.
    with connection.locked():
        stored_ids, wrong = set(), []
        stored = connection.rows(q.STORED_EDGES_SQL, {"station": station, "since": since})
        for edge_id, child, parent, event_ms, source_event in stored:
            if edge_id in stored_ids:
                continue
            stored_ids.add(edge_id)
            completion = _completion_of(source_event, completions)
            if completion is None:
                continue  # its completion is not in the rebuilt history: not ours to judge
            if edge_id not in expected and in_scope(child, event_ms, completion):
                wrong.append((edge_id, child, parent))

        missing = [e for edge_id, e in expected.items() if edge_id not in stored_ids]
        writer.insert_derived("edges", schemas.columns(missing, "edges"))
        writer.delete_edges(wrong)

        units = [u for u in out.units if u["event_id"] in late_completions]
        present = set()
        if units:
            present = {r[0] for r in connection.rows(q.STORED_UNITS_SQL, {"units": [u["unit"] for u in units],
                                                                       "ids": [u["event_id"] for u in units]})}
        new_units = [u for u in units if u["event_id"] not in present]
        writer.insert_derived("units", schemas.columns(new_units, "units"))
        mark = _edge_marks(connection, [station]).get(station, 0)

    _record(writer, w, captures_seen, mark)
    log.info("reprocess %s: %d events replayed, %d edges added, %d removed, %d units added",
             station, len(ordered), len(missing), len(wrong), len(new_units))
    return len(missing), len(wrong), len(new_units), len(ordered)


def _history(connection: Connection, serde: schemas.Serde, station: str, since: int) -> dict[str, tuple[str, dict]]:
    """The station's material events (all) and completions at or after `since`, first arrival of each id."""
    events: dict[str, tuple[str, dict]] = {}
    cursor = (-(2**62), 0, 0)
    while True:
        page = connection.rows(q.CAPTURE_PAGE_SQL, {"station": station, "t": cursor[0], "p": cursor[1], "o": cursor[2],
                                                    "n": PAGE_ROWS}, binary=["payload"])
        for t, partition, offset, payload in page:
            try:
                _, batch = serde.decode(payload, expect=schemas.CAPTURE)
            except schemas.DecodeError:
                continue  # already a `decode` dead letter
            for kind, e in batch["events"]:
                if e.get("station") != station or e["event_id"] in events:
                    continue
                if kind in MATERIAL_KINDS or (kind == COMPLETED and e["event_ms"] >= since):
                    events[e["event_id"]] = (kind, e)
        if len(page) < PAGE_ROWS:
            return events
        cursor = tuple(int(v) for v in page[-1][:3])


def _completion_of(source_event: str, completions: set[str]) -> str | None:
    """A consumed edge's source_event is '<completion id>+<load id>'; ids may themselves contain '+'."""
    start = 0
    while (i := source_event.find("+", start)) >= 0:
        if source_event[:i] in completions:
            return source_event[:i]
        start = i + 1
    return None


def _record(writer: Writer, w: StationWork, captures_seen: int, edges_mark: int) -> None:
    writer.insert("reprocessed", REPROCESSED_COLUMNS,
                  [[d, w.station, w.letter_event.get(d, ""), captures_seen, ts(edges_mark)] for d in w.letters])

