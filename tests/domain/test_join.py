"""The temporal join against the brute-force reference, under random disorder, duplicates and batching."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from tests.support import reference
from genealogy.producers.simulator import BASE_MS
from genealogy.domain.derive import derive
from genealogy.domain.join import StationJoin, new_state

GRACE = 1_000
NOW = BASE_MS + 10**9
SLOTS = ["S1", "S2"]
MATERIALS = [("lot", "CAP", "L1"), ("lot", "CAP", "L2"), ("lot", "RES", "R1"), ("serial", "TRAY", "T9")]


def ref(kind, item, ident):
    return {"kind": kind, "item": item, "ident": ident}


@st.composite
def station_log(draw):
    """A station's events with random times, any load/unload sequence, and completions."""
    n_mat = draw(st.integers(1, 25))
    n_units = draw(st.integers(1, 25))
    events = []
    for i in range(n_mat):
        kind = draw(st.sampled_from(["genealogy.MaterialLoaded", "genealogy.MaterialUnloaded"]))
        events.append((kind, {"event_id": f"m{i}", "event_ms": BASE_MS + draw(st.integers(0, 5_000)), "station": "ST",
                              "slot": draw(st.sampled_from(SLOTS)), "material": ref(*draw(st.sampled_from(MATERIALS))),
                              "operator": None}))
    for i in range(n_units):
        events.append(("genealogy.UnitCompleted", {"event_id": f"u{i}", "event_ms": BASE_MS + draw(st.integers(0, 5_000)),
                                                   "station": "ST", "unit": ref("serial", "PRD", f"P{i}"),
                                                   "production_lot": "PL1", "work_order": "WO1", "operator": "OP"}))
    jitter = [draw(st.integers(0, GRACE - 1)) for _ in events]
    arrival = [e for _, e in sorted(zip(jitter, events), key=lambda je: (je[1][1]["event_ms"] + je[0], je[1][1]["event_id"]))]
    dup_every = draw(st.sampled_from([0, 2, 5]))
    if dup_every:
        arrival = [x for i, e in enumerate(arrival) for x in ([e, e] if i % dup_every == 0 else [e])]
    cuts = sorted(draw(st.lists(st.integers(0, len(arrival)), max_size=6)))
    return events, arrival, cuts


def run(arrival, cuts, grace=GRACE, retention=10**9):
    """Feed the arrival sequence in batches; state goes through JSON between batches, like a changelog."""
    table, edges, units, rejected = {}, set(), set(), []
    bounds = [0, *cuts, len(arrival)]
    batches = [arrival[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    last_ms = max(e["event_ms"] for _, e in arrival)
    batches.append([("genealogy.StationHeartbeat", {"event_id": "hb-end", "event_ms": last_ms + grace + 1, "station": "ST"})])
    for n, events in enumerate(batches):
        out = derive({"batch_id": f"b{n}", "source": "ST", "sent_ms": 0, "events": events}, table, grace, retention, now_ms=NOW)
        table = json.loads(json.dumps(table))
        edges |= {(e["child"], e["parent"]) for e in out.edges}
        units |= {u["unit"] for u in out.units}
        rejected += out.rejected
    return edges, units, rejected, table


@settings(max_examples=300, deadline=None)
@given(station_log())
def test_join_matches_reference_for_any_disorder_within_grace(log):
    events, arrival, cuts = log
    edges, units, rejected, table = run(arrival, cuts)
    assert rejected == []
    assert edges == reference.consumed(events) == reference.consumed_sweep(events)
    assert units == {reference.nid(e["unit"]) for k, e in events if k == "genealogy.UnitCompleted"}
    assert table["ST"]["buckets"] == [] and not any(table[k] for k in table if "\x1ep\x1e" in k)


@settings(max_examples=200, deadline=None)
@given(station_log(), st.integers(1, 400))
def test_join_beyond_grace_accounts_for_every_event(log, grace):
    """With a small grace some events are late: each is reported, none is lost, and every answer
    that no late event could have changed equals the reference over all events."""
    events, arrival, cuts = log
    edges, units, rejected, _ = run(arrival, cuts, grace=grace)
    assert all(r.stage == "late" for r in rejected)
    late = {r.event["event_id"]: r.event for r in rejected}
    completions = {e["event_id"]: e for k, e in events if k == "genealogy.UnitCompleted"}
    late_units = {reference.nid(completions[i]["unit"]) for i in late if i in completions}
    assert units | late_units == {reference.nid(e["unit"]) for e in completions.values()}
    late_material_ms = [e["event_ms"] for i, e in late.items() if i not in completions]
    truth = reference.consumed(events)
    for e in completions.values():
        unit = reference.nid(e["unit"])
        if unit in late_units or any(t <= e["event_ms"] for t in late_material_ms):
            continue  # an answer a late event may have changed: reprocess's job (tests/test_reprocess.py)
        assert {m for m, u in edges if u == unit} == {m for m, u in truth if u == unit}


def test_late_unload_is_applied_from_then_on():
    """Without this, a reel whose unload came late would stay on the slot for every later unit."""
    from genealogy.domain.join import Completion
    j = StationJoin(new_state(), grace_ms=100, retention_ms=10**9)
    j.material("l1", 1_000, "S", "lot:CAP:R1", loaded=True)
    j.heartbeat(5_000)
    late = j.material("u1", 2_000, "S", "lot:CAP:R1", loaded=False)
    assert "behind the station watermark" in late.reason and "reprocess" in late.reason
    j.completed(Completion("c1", 6_000, "serial:P:1", "lot:P:PL", "WO", "OP"))
    assert [c.material for c in j.heartbeat(7_000)] == []


def test_reel_change_at_the_same_instant_feeds_from_the_new_reel():
    j = StationJoin(new_state(), grace_ms=0, retention_ms=10**9)
    assert j.material("l1", 100, "S", "lot:CAP:OLD", loaded=True) == []
    j.material("u1", 200, "S", "lot:CAP:OLD", loaded=False)
    j.material("l2", 200, "S", "lot:CAP:NEW", loaded=True)
    from genealogy.domain.join import Completion
    j.completed(Completion("c1", 200, "serial:P:1", "lot:P:PL", "WO", "OP"))
    out = j.heartbeat(202)
    assert [c.material for c in out] == ["lot:CAP:NEW"]


def test_late_material_event_is_rejected_with_reason():
    j = StationJoin(new_state(), grace_ms=100, retention_ms=10**9)
    j.heartbeat(10_000)
    late = j.material("l-old", 5_000, "S", "lot:CAP:X", loaded=True)
    assert late.event_id == "l-old" and "behind the station watermark" in late.reason


def test_state_is_bounded_by_slots_not_by_time():
    j = StationJoin(new_state(), grace_ms=10, retention_ms=1_000)
    for i in range(2_000):
        j.material(f"u{i}", i * 100, "S", f"lot:CAP:R{i - 1}", loaded=False)
        j.material(f"l{i}", i * 100, "S", f"lot:CAP:R{i}", loaded=True)
    assert len(j.state["materials"]) <= 12
    assert sum(len(h) for h in j.state["materials"].values()) <= 24


@pytest.mark.parametrize("field,value,reason", [
    ("unit", {"kind": "serial", "item": "PRD", "ident": ""}, "empty identifier"),
    ("unit", {"kind": "lot", "item": "PRD", "ident": "X"}, "not allowed here"),
    ("event_ms", 12, "not a plausible time"),
    ("station", "OTHER", "differs from the batch source"),
])
def test_invalid_events_are_rejected_with_the_field_named(field, value, reason):
    e = {"event_id": "u1", "event_ms": BASE_MS, "station": "ST", "unit": ref("serial", "PRD", "P1"),
         "production_lot": "PL1", "work_order": "WO1", "operator": None, field: value}
    good = ("genealogy.UnitCompleted", {**e, field: {"unit": ref("serial", "PRD", "P2"), "event_ms": BASE_MS,
                                                     "station": "ST"}[field], "event_id": "u2"})
    out = derive({"batch_id": "b", "source": "ST", "sent_ms": 0, "events": [("genealogy.UnitCompleted", e), good]},
                 {}, GRACE, 10**9, now_ms=NOW)
    assert [r.reason for r in out.rejected if reason in r.reason], out.rejected
    assert [u["event_id"] for u in out.units] == ["u2"]


def test_changelog_writes_per_batch_stay_small_however_busy_the_station():
    """A station completing 1,000 units a second keeps ~10,000 completions pending in a 10 s grace;
    a batch must not rewrite them all (a record per batch of that size would stop the worker)."""

    class Recording(dict):
        def __init__(self):
            super().__init__()
            self.written = []

        def __setitem__(self, key, value):
            self.written.append(len(json.dumps(value)))
            super().__setitem__(key, value)

    table = Recording()
    for b in range(200):
        events = [("genealogy.UnitCompleted", {"event_id": f"u{b}-{i}", "event_ms": BASE_MS + b * 50 + i, "station": "ST",
                                               "unit": ref("serial", "PRD", f"P{b}-{i}"), "production_lot": "PL1",
                                               "work_order": "WO1", "operator": "OP"}) for i in range(50)]
        table.written.clear()
        derive({"batch_id": f"b{b}", "source": "ST", "sent_ms": 0, "events": events}, table, 10_000, 10**9, now_ms=NOW)
    # Nothing is older than the watermark yet, so every completion is still pending, in its bucket.
    buckets = [k for k in table if "\x1ep\x1e" in k]
    assert sum(len(table[k]) for k in buckets) == 10_000 and len(buckets) == len(table["ST"]["buckets"]) == 100
    assert max(table.written) < 20_000, max(table.written)



def test_completions_resolved_within_their_batch_cost_no_changelog_write():
    """A batch spanning a minute of a station's events resolves most of its completions itself; only the
    pieces still holding something at the end (the last grace period's completions) and the meta record
    are written. Each write is a changelog message the worker has to produce."""

    class Counting(dict):
        writes = 0

        def __setitem__(self, key, value):
            Counting.writes += 1
            super().__setitem__(key, value)

    table = Counting()
    load = ("genealogy.MaterialLoaded", {"event_id": "m0", "event_ms": BASE_MS, "station": "ST", "slot": "S1",
                                         "material": ref("lot", "CAP", "L1"), "operator": None})
    units = [("genealogy.UnitCompleted", {"event_id": f"u{i}", "event_ms": BASE_MS + 1_000 * (i + 1), "station": "ST",
                                          "unit": ref("serial", "PRD", f"P{i}"), "production_lot": "PL1",
                                          "work_order": "WO1", "operator": "OP"}) for i in range(60)]
    out = derive({"batch_id": "b0", "source": "ST", "sent_ms": 0, "events": [load, *units]}, table, 10_000, 10**9, now_ms=NOW)
    assert len(out.edges) == 49 and out.pending["ST"] == 11  # resolved: strictly before the watermark
    # 11 pending buckets, the slot and the meta record; not one write per completion.
    assert Counting.writes == 13, Counting.writes


@st.composite
def long_station_log(draw):
    """Events over minutes of event time, so pending completions sit in several laps of the ring of
    buckets and the watermark can jump by more than a whole lap (a station that went quiet)."""
    events = []
    for i in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["genealogy.MaterialLoaded", "genealogy.MaterialUnloaded"]))
        events.append((kind, {"event_id": f"m{i}", "event_ms": BASE_MS + draw(st.integers(0, 400_000)), "station": "ST",
                              "slot": draw(st.sampled_from(SLOTS)), "material": ref(*draw(st.sampled_from(MATERIALS))),
                              "operator": None}))
    for i in range(draw(st.integers(1, 30))):
        # bucket-aligned times 102.4 s apart land in the same bucket of the ring
        t = draw(st.one_of(st.integers(0, 400_000), st.sampled_from([0, 102_400, 204_800, 307_200])))
        events.append(("genealogy.UnitCompleted", {"event_id": f"u{i}", "event_ms": BASE_MS + t, "station": "ST",
                                                   "unit": ref("serial", "PRD", f"P{i}"), "production_lot": "PL1",
                                                   "work_order": "WO1", "operator": "OP"}))
    arrival = sorted(events, key=lambda e: (e[1]["event_ms"], e[1]["event_id"]))
    grace = draw(st.sampled_from([1_000, 150_000, 300_000]))
    jumps = [("genealogy.StationHeartbeat", {"event_id": f"hb{t}", "event_ms": BASE_MS + t, "station": "ST"})
             for t in draw(st.lists(st.integers(0, 800_000), max_size=4))]
    cuts = sorted(draw(st.lists(st.integers(0, len(arrival)), max_size=5)))
    return events, arrival, jumps, cuts, grace


@settings(max_examples=200, deadline=None)
@given(long_station_log())
def test_join_matches_reference_across_laps_of_the_pending_ring(log):
    """In time order nothing is late; heartbeats far ahead (more than a lap of the ring) resolve what is pending
    at once. Every completion answered must match the reference, whichever lap its bucket holds it in."""
    events, arrival, jumps, cuts, grace = log
    bounds = [0, *cuts, len(arrival)]
    batches = [arrival[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    for hb, at in zip(jumps, range(len(batches))):
        batches[at] = batches[at] + [hb] if hb[1]["event_ms"] >= max(e["event_ms"] for _, e in batches[at]) else batches[at]
    last_ms = max(e["event_ms"] for _, e in events)
    batches.append([("genealogy.StationHeartbeat", {"event_id": "hb-end", "event_ms": last_ms + 10**6, "station": "ST"})])
    table, edges, late = {}, set(), set()
    for n, batch in enumerate(batches):
        out = derive({"batch_id": f"b{n}", "source": "ST", "sent_ms": 0, "events": batch}, table, grace, 10**9, now_ms=NOW)
        table = json.loads(json.dumps(table))
        edges |= {(e["child"], e["parent"]) for e in out.edges}
        late |= {r.event["event_id"] for r in out.rejected}
    late_ms = [e["event_ms"] for k, e in events if e["event_id"] in late and k != "genealogy.UnitCompleted"]
    truth = reference.consumed(events)
    for k, e in events:
        if k != "genealogy.UnitCompleted" or e["event_id"] in late or any(t <= e["event_ms"] for t in late_ms):
            continue  # a heartbeat jumped past events still to come: those are late, and reprocess's job
        unit = reference.nid(e["unit"])
        assert {m for m, u in edges if u == unit} == {m for m, u in truth if u == unit}, e
    assert table["ST"]["buckets"] == []


@st.composite
def log_with_package_unloads(draw):
    """A station log in which some unloads name the package only (CFX MaterialsUnloaded), arriving in any
    order within the grace, before or after the loads they undo."""
    events, _, _ = draw(station_log())
    for i in range(draw(st.integers(1, 8))):
        events.append(("genealogy.PackageUnloaded", {
            "event_id": f"pu{i}", "event_ms": BASE_MS + draw(st.integers(0, 5_000)), "station": "ST",
            "package": draw(st.sampled_from(MATERIALS))[2], "operator": None}))
    jitter = [draw(st.integers(0, GRACE - 1)) for _ in events]
    arrival = [e for _, e in sorted(zip(jitter, events), key=lambda je: (je[1][1]["event_ms"] + je[0], je[1][1]["event_id"]))]
    if draw(st.booleans()):
        arrival = [x for e in arrival for x in (e, e)]
    cuts = sorted(draw(st.lists(st.integers(0, len(arrival)), max_size=6)))
    return events, arrival, cuts


@settings(max_examples=300, deadline=None)
@given(log_with_package_unloads())
def test_an_unload_naming_the_package_only_finds_its_slot_in_the_state(log):
    events, arrival, cuts = log
    edges, _, rejected, _ = run(arrival, cuts)
    assert rejected == []
    assert edges == reference.consumed_sweep(events)


def test_an_unload_by_package_after_a_gateway_restart_equals_the_unload_by_slot():
    """The same feed, once with unloads naming slot and material, once naming the package only."""
    def feed(by_package: bool):
        load = ("genealogy.MaterialLoaded", {"event_id": "l1", "event_ms": BASE_MS, "station": "ST", "slot": "S1",
                                             "material": ref("lot", "CAP", "REEL-7"), "operator": None})
        unload = (("genealogy.PackageUnloaded", {"event_id": "x1", "event_ms": BASE_MS + 500, "station": "ST",
                                                 "package": "REEL-7", "operator": None}) if by_package else
                  ("genealogy.MaterialUnloaded", {"event_id": "x1", "event_ms": BASE_MS + 500, "station": "ST", "slot": "S1",
                                                  "material": ref("lot", "CAP", "REEL-7"), "operator": None}))
        units = [("genealogy.UnitCompleted", {"event_id": f"u{i}", "event_ms": BASE_MS + 200 * i, "station": "ST",
                                              "unit": ref("serial", "PRD", f"P{i}"), "production_lot": "PL1",
                                              "work_order": "WO1", "operator": None}) for i in range(5)]
        return run([load, units[0], units[1]] + [unload] + units[2:], cuts=[3])[0]
    assert feed(by_package=True) == feed(by_package=False) == {("lot:CAP:REEL-7", "serial:PRD:P0"),
                                                               ("lot:CAP:REEL-7", "serial:PRD:P1"),
                                                               ("lot:CAP:REEL-7", "serial:PRD:P2")}
