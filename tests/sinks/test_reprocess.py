"""`genealogy reprocess` against the real embedded ClickHouse, with the stream simulated in process.

`stream()` does what a Faust worker and the sink write for a sequence of capture batches
(capture_batches rows, edges, units, late dead letters with the one-event batch payload), using
the same `derive` as the worker. Reprocessing must then make the store equal the brute-force
reference over every event, whatever arrived late, and a second run must change nothing.
"""

import hashlib
import json
import time
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings, strategies as st

from tests.support import reference
from genealogy import schemas
from genealogy.domain import ids
from genealogy.sinks.reprocess import reprocess_late
from genealogy.settings import Settings
from genealogy.producers.simulator import BASE_MS
from genealogy.sinks.kafka_sink import ts
from genealogy.sinks.writer import CAPTURE_COLUMNS, DEAD_LETTER_COLUMNS, EDGE_COLUMNS
from genealogy.domain.derive import derive
from tests.domain.test_join import station_log

TABLES = ["edges", "edges_by_parent", "units", "lot_members", "nodes", "capture_batches", "dead_letters", "reprocessed"]
SERDE = schemas.local_serde()
SETTINGS = Settings()
B = BASE_MS


def reset(connection) -> None:
    for t in TABLES:
        connection.command(f"TRUNCATE TABLE {t}")


class Stream:
    """The worker (derive with a changelogged state) and the sink, in process."""

    def __init__(self, writer, grace_ms, retention_ms):
        self.writer, self.grace_ms, self.retention_ms = writer, grace_ms, retention_ms
        self.states: dict = {}
        self.offset = 0

    def send(self, source: str, events: list, batch_id: str | None = None, redelivered: bool = False) -> None:
        """One capture message; `redelivered`: a worker re-reads a message the sink already stored."""
        self.offset += 1
        batch = {"batch_id": batch_id or f"{source}-{self.offset}", "source": source, "sent_ms": B, "events": events}
        payload = SERDE.encode(schemas.CAPTURE, batch)
        if not redelivered:
            self.writer.insert("capture_batches", CAPTURE_COLUMNS,
                               [[source, ts(B + self.offset), "genealogy.capture", 0, self.offset, payload]])
        out = derive(SERDE.decode(payload)[1], self.states, self.grace_ms, self.retention_ms, now_ms=B + 10**9)
        self.states = json.loads(json.dumps(self.states))
        self.writer.insert_derived("edges", schemas.columns(out.edges, "edges"))
        self.writer.insert_derived("units", schemas.columns(out.units, "units"))
        dead = []
        for r in out.rejected:
            one = SERDE.encode(schemas.CAPTURE, {"batch_id": f"{batch['batch_id']}/{r.event['event_id']}", "source": source,
                                                 "sent_ms": B, "events": [(r.kind, r.event)]})
            ident = hashlib.blake2b(f"genealogy.capture:0:{self.offset}:{r.event['event_id']}".encode(), digest_size=12).hexdigest()
            dead.append([ident, r.stage, r.reason, "genealogy.capture", 0, self.offset, source, r.event["event_id"], r.kind,
                         one, datetime.now(tz=timezone.utc)])
        self.writer.insert("dead_letters", DEAD_LETTER_COLUMNS, dead)


def ref(kind, item, ident):
    return {"kind": kind, "item": item, "ident": ident}


def load(eid, t, slot, lot, station="ST"):
    return ("genealogy.MaterialLoaded", {"event_id": eid, "event_ms": B + t, "station": station, "slot": slot,
                                         "material": ref("lot", "CAP", lot), "operator": None})


def unload(eid, t, slot, lot, station="ST"):
    return ("genealogy.MaterialUnloaded", {"event_id": eid, "event_ms": B + t, "station": station, "slot": slot,
                                           "material": ref("lot", "CAP", lot), "operator": None})


def done(eid, t, unit, station="ST"):
    return ("genealogy.UnitCompleted", {"event_id": eid, "event_ms": B + t, "station": station,
                                        "unit": ref("serial", "PRD", unit), "production_lot": "PL1", "work_order": "WO1",
                                        "operator": "OP"})


def heartbeat(t, station="ST"):
    return ("genealogy.StationHeartbeat", {"event_id": f"hb-{station}-{t}", "event_ms": B + t, "station": station})


def consumed(read_model, table="edges"):
    return {(c, p) for c, p in read_model.rows(f"SELECT DISTINCT child, parent FROM {table} WHERE relation = 'consumed'")}


def units(read_model):
    return {u for (u,) in read_model.rows("SELECT DISTINCT unit FROM units")}


def no_change(summary):
    return (summary["edges_added"], summary["edges_removed"], summary["units_added"]) == (0, 0, 0)


def test_late_unload_load_and_completion_are_reconciled_exactly(connection, writer, read_model):
    reset(connection)
    s = Stream(writer, grace_ms=1_000, retention_ms=5_000)
    on_time = [load("ld-A", 0, "S1", "A"), load("ld-D", 100, "S3", "D"), done("c1", 2_000, "P1"),
               done("c2", 4_000, "P2"), load("ld-B", 3_100, "S1", "B"), done("c3", 6_000, "P3"),
               done("c5", 8_000, "P5"), heartbeat(20_000)]
    late = [unload("unl-A", 3_000, "S1", "A"), load("ld-C", 3_500, "S2", "C"), done("c4", 5_000, "P4")]
    s.send("ST", on_time)
    s.send("ST", late)
    # An edge of a completion the capture log does not hold (still in flight, say): never judged.
    writer.insert("edges", EDGE_COLUMNS, [[ids.edge_id("lot:CAP:A", "serial:PRD:P9", "consumed", "c9+ld-A"), "lot:CAP:A",
                                           "serial:PRD:P9", "consumed", ts(B + 7_000), "ST", "", "", "", 1.0, "c9+ld-A"]])
    assert read_model.rows("SELECT stage, count() FROM dead_letters GROUP BY stage") == [("late", 3)]
    A, B_, C, D = "lot:CAP:A", "lot:CAP:B", "lot:CAP:C", "lot:CAP:D"
    P = {n: f"serial:PRD:P{n}" for n in range(1, 10)}
    assert {(A, P[2]), (A, P[3]), (A, P[5])} <= consumed(read_model)

    summary = reprocess_late(connection, writer, SETTINGS, SERDE)
    assert summary["late_dead_letters"] == 3 and summary["stations"] == ["ST"]
    # A was unloaded at 3000: P2, P3, P5 lose it; C (loaded at 3500) reaches P2, P3, P5; late P4 gets B, C, D.
    assert (summary["edges_added"], summary["edges_removed"], summary["units_added"]) == (6, 3, 1)
    expected = {(A, P[1]), (D, P[1])} | {(m, P[n]) for n in (2, 3, 4, 5) for m in (B_, C, D)} | {(A, P[9])}
    assert consumed(read_model) == expected
    assert consumed(read_model, "edges_by_parent") == expected
    assert units(read_model) == {P[n] for n in (1, 2, 3, 4, 5)}
    assert read_model.rows("SELECT production_lot FROM lot_members WHERE unit = {u:String}", u=P[4]) == [("lot:PRD:PL1",)]
    ids_, keys = read_model.rows("SELECT uniqExact(edge_id), uniqExact(child, parent, relation, source_event) FROM edges")[0]
    assert ids_ == keys

    again = reprocess_late(connection, writer, SETTINGS, SERDE)
    assert again["late_dead_letters"] == 0 and again["stations"] == [] and no_change(again)
    forced = reprocess_late(connection, writer, SETTINGS, SERDE, recheck_all=True)
    assert forced["stations"] == ["ST"] and no_change(forced)
    assert consumed(read_model) == expected

    # The stream applied the late unload/load to its state when they arrived, so the next unit is
    # answered right by the stream itself; the station's capture grew, so the next run re-checks it
    # and finds nothing to change.
    s.send("ST", [done("c6", 21_000, "P6"), heartbeat(30_000)])
    assert (A, "serial:PRD:P6") not in consumed(read_model) and (C, "serial:PRD:P6") in consumed(read_model)
    later = reprocess_late(connection, writer, SETTINGS, SERDE)
    assert later["late_dead_letters"] == 0 and later["stations"] == ["ST"]
    assert no_change(later)
    expected |= {(m, "serial:PRD:P6") for m in (B_, C, D)}
    assert consumed(read_model) == expected == consumed(read_model, "edges_by_parent")
    assert no_change(reprocess_late(connection, writer, SETTINGS, SERDE))


def test_a_worker_redelivering_capture_after_a_run_is_corrected_by_the_next_run(connection, writer, read_model):
    reset(connection)
    s = Stream(writer, grace_ms=1_000, retention_ms=10**9)
    first = [load("ld-A", 0, "S1", "A"), done("c1", 2_000, "P1"), done("c2", 4_000, "P2"), heartbeat(20_000)]
    s.send("ST", first)
    before_unload = json.loads(json.dumps(s.states))
    s.send("ST", [unload("unl-A", 3_000, "S1", "A")])
    summary = reprocess_late(connection, writer, SETTINGS, SERDE)
    assert (summary["edges_added"], summary["edges_removed"]) == (0, 1)
    assert consumed(read_model) == {("lot:CAP:A", "serial:PRD:P1")}
    time.sleep(0.01)  # the re-check mark has millisecond resolution
    # A worker that crashed before its changelog held the late unload restarts and re-reads the first
    # message: its state still has A loaded, so c2 gets A again.
    s.states = before_unload
    s.send("ST", first, batch_id="ST-1", redelivered=True)
    assert ("lot:CAP:A", "serial:PRD:P2") in consumed(read_model)
    again = reprocess_late(connection, writer, SETTINGS, SERDE)
    assert again["late_dead_letters"] == 0 and again["stations"] == ["ST"]
    assert (again["edges_added"], again["edges_removed"]) == (0, 1)
    assert consumed(read_model) == consumed(read_model, "edges_by_parent") == {("lot:CAP:A", "serial:PRD:P1")}
    assert reprocess_late(connection, writer, SETTINGS, SERDE)["stations"] == []


def test_other_stations_and_unaffected_materials_are_untouched(connection, writer, read_model):
    reset(connection)
    s = Stream(writer, grace_ms=500, retention_ms=10**9)
    s.send("ST", [load("ld-A", 0, "S1", "A"), done("c1", 1_000, "P1"), done("c2", 3_000, "P2"), heartbeat(10_000)])
    s.send("OTHER", [load("o-A", 0, "S1", "A", "OTHER"), done("o1", 1_000, "Q1", "OTHER"), heartbeat(10_000, "OTHER")])
    s.send("ST", [unload("unl-A", 2_000, "S1", "A")])
    before_other = read_model.rows("SELECT edge_id FROM edges WHERE station = 'OTHER' ORDER BY edge_id")
    summary = reprocess_late(connection, writer, SETTINGS, SERDE)
    assert summary["stations"] == ["ST"] and (summary["edges_added"], summary["edges_removed"]) == (0, 1)
    assert consumed(read_model) == {("lot:CAP:A", "serial:PRD:P1"), ("lot:CAP:A", "serial:PRD:Q1")}
    assert read_model.rows("SELECT edge_id FROM edges WHERE station = 'OTHER' ORDER BY edge_id") == before_other


def test_nothing_late_means_nothing_to_do(connection, writer, read_model):
    reset(connection)
    s = Stream(writer, grace_ms=1_000, retention_ms=10**9)
    s.send("ST", [load("ld-A", 0, "S1", "A"), done("c1", 1_000, "P1"), heartbeat(10_000)])
    summary = reprocess_late(connection, writer, SETTINGS, SERDE)
    assert summary["late_dead_letters"] == 0 and summary["stations"] == [] and no_change(summary)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(station_log(), st.integers(1, 400), st.sampled_from([300, 2_000, 10**9]))
def test_any_lateness_is_recovered_exactly(connection, writer, read_model, log, grace, retention):
    """Disorder beyond the grace (and completions beyond the retention): after reprocessing, the store is
    the reference over every event, and a second run changes nothing."""
    events, arrival, cuts = log
    reset(connection)
    s = Stream(writer, grace_ms=grace, retention_ms=retention)
    bounds = [0, *cuts, len(arrival)]
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            s.send("ST", arrival[a:b])
    s.send("ST", [heartbeat(10**6)])

    reprocess_late(connection, writer, SETTINGS, SERDE)
    expected = reference.consumed(events)
    assert consumed(read_model) == expected
    assert consumed(read_model, "edges_by_parent") == expected
    assert units(read_model) == {reference.nid(e["unit"]) for k, e in events if k == "genealogy.UnitCompleted"}
    ids_, keys = read_model.rows("SELECT uniqExact(edge_id), uniqExact(child, parent, relation, source_event) FROM edges")[0]
    assert ids_ == keys
    assert no_change(reprocess_late(connection, writer, SETTINGS, SERDE))
    assert no_change(reprocess_late(connection, writer, SETTINGS, SERDE, recheck_all=True))
