"""held_intervals, kept by the sink's flush (kafka_sink.Rows -> Writer), equals genealogy.domain.holding.intervals
of the final facts, whatever order the facts, their redeliveries and their retractions arrive in."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genealogy import schemas
from genealogy.domain import holding, ids
from genealogy.sinks.kafka_sink import Rows
from genealogy.sinks.writer import Writer
from tests.domain.test_containment import scenario

TABLES = ["edges", "edges_by_parent", "nodes", "unpacked", "corrections", "held_intervals", "held_by_holder"]
STORED = """
SELECT child, holder, edge_id, toUnixTimestamp64Milli(from_time), toUnixTimestamp64Milli(to_time) FROM {table} FINAL
"""


def facts(seed: int, n_units: int, n_events: int, retract_share: float):
    """(edge rows, unpacking rows, retraction rows) of a random packing history, some of it taken back."""
    _, edges, unpacks, _ = scenario(seed, n_units, n_events)
    rng = random.Random(seed)
    edge_rows = [{"edge_id": ids.edge_id(c, p, rel, f"e{k}"), "child": c, "parent": p, "relation": rel, "event_ms": t,
                  "station": st_, "operator": "", "work_order": "", "parent_lot": "", "quantity": 1.0, "source_event": f"e{k}"}
                 for k, (c, p, rel, t, st_) in enumerate(edges)]
    unpack_rows = [{"child": c, "parent": p, "event_ms": t, "station": "PK", "source_event": f"u{k}"}
                   for k, (c, p, t) in enumerate(unpacks)]
    declared = {"declaration": "d", "reason": "incorrect_data", "corrective": "", "event_ms": 0, "station": ""}
    retractions = [{"kind": "edge", "edge_id": e["edge_id"], "child": e["child"], "parent": e["parent"], "relation": e["relation"],
                    "source_event": e["source_event"], **declared} for e in edge_rows if rng.random() < retract_share]
    retractions += [{"kind": "unpack", "edge_id": 0, "child": u["child"], "parent": u["parent"], "relation": "",
                     "source_event": u["source_event"], **declared} for u in unpack_rows if rng.random() < retract_share]
    return edge_rows, unpack_rows, retractions


def record(group: str, row: dict) -> dict:
    return {g: schemas.columns([row] if g == group else [], g) for g in ("retractions", "units", "edges", "facts", "unpacked", "removals")}


def expected(edge_rows, unpack_rows, retractions) -> set[tuple]:
    gone_edges = {r["edge_id"] for r in retractions if r["kind"] == "edge"}
    gone_unpacks = {(r["parent"], r["child"], r["source_event"]) for r in retractions if r["kind"] == "unpack"}
    adds = [(e["child"], e["parent"], e["event_ms"], e["edge_id"]) for e in edge_rows if e["edge_id"] not in gone_edges]
    ends = [(u["child"], u["parent"], u["event_ms"]) for u in unpack_rows
            if (u["parent"], u["child"], u["source_event"]) not in gone_unpacks]
    return {(c, h, key, at, to) for (c, h, at, to), (*_, key) in zip(holding.intervals(adds, ends), adds)}


def stored(connection) -> set[tuple]:
    rows = set(connection.rows(STORED.format(table="held_intervals")))
    assert set(connection.rows(STORED.format(table="held_by_holder"))) == rows
    return rows


@pytest.fixture()
def clean(connection):
    for t in TABLES:
        connection.command(f"TRUNCATE TABLE {t}")
    return connection


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10**6), st.integers(1, 4), st.integers(1, 30), st.sampled_from([0.0, 0.2, 0.5]))
def test_held_intervals_equal_the_rule_over_the_final_facts_in_any_arrival_order(connection, read_model, seed, n_units,
                                                                                   n_events, retract_share):
    for t in TABLES:
        connection.command(f"TRUNCATE TABLE {t}")
    edge_rows, unpack_rows, retractions = facts(seed, n_units, n_events, retract_share)
    rng = random.Random(seed + 1)
    messages = [record("edges", e) for e in edge_rows] + [record("unpacked", u) for u in unpack_rows] + \
        [record("retractions", r) for r in retractions]
    messages += rng.sample(messages, len(messages) // 3)  # redelivered
    rng.shuffle(messages)  # an unpacking before its packing, a packing long after, a retraction before its fact
    writer = Writer(connection)
    while messages:
        n = rng.randint(1, 6)
        rows = Rows()
        for message in messages[:n]:
            rows.add_derived(message)
        messages = messages[n:]
        rows.insert_into(writer)
        if rng.random() < 0.2:
            writer = Writer(connection)  # the sink restarted: what was retracted is read back from corrections
    want = expected(edge_rows, unpack_rows, retractions)
    assert stored(connection) == want
    children = sorted({c for c, *_ in want} | {e["child"] for e in edge_rows})
    assert set(read_model.packed_into(children)) == {(c, h, at, to) for c, h, _, at, to in want}


def test_a_flush_that_fails_before_its_intervals_are_in_is_redone_whole(clean, monkeypatch):
    """The facts went in, the interval insert failed: the sink retries the flush (offsets not committed) and
    the intervals come out as if nothing had failed."""
    edge_rows, unpack_rows, _ = facts(7, 3, 30, 0.0)
    writer = Writer(clean)
    rows = Rows()
    for e in edge_rows:
        rows.add_derived(record("edges", e))
    for u in unpack_rows:
        rows.add_derived(record("unpacked", u))
    insert = clean.insert

    def failing(table, *args, **kw):
        if table == "held_intervals":
            raise RuntimeError("ClickHouse went away")
        return insert(table, *args, **kw)

    monkeypatch.setattr(clean, "insert", failing)
    with pytest.raises(RuntimeError):
        rows.insert_into(writer)
    assert stored(clean) == set()
    monkeypatch.setattr(clean, "insert", insert)
    rows.insert_into(writer)
    assert stored(clean) == expected(edge_rows, unpack_rows, [])


def test_an_analyst_asks_where_a_unit_was_at_a_time(clean, analyst):
    """The unit packed into C at T0, C emptied at T0+10, the unit packed into D at T0+20: at T0+5 it was in C."""
    t0 = 1_767_600_000_000
    rows = Rows()
    for k, (holder, at) in enumerate([("container:sscc:C", t0), ("container:sscc:D", t0 + 20)]):
        rows.add_derived(record("edges", {"edge_id": k + 1, "child": "serial:P:U", "parent": holder, "relation": "packed",
                                          "event_ms": at, "station": "PK", "operator": "", "work_order": "", "parent_lot": "",
                                          "quantity": 1.0, "source_event": f"e{k}"}))
    rows.add_derived(record("unpacked", {"child": "", "parent": "container:sscc:C", "event_ms": t0 + 10, "station": "PK",
                                         "source_event": "u"}))
    rows.insert_into(Writer(clean))
    where = """SELECT holder FROM held_intervals FINAL WHERE child = {c:String}
               AND from_time <= fromUnixTimestamp64Milli({t:Int64}) AND (to_time IS NULL OR fromUnixTimestamp64Milli({t:Int64}) < to_time)"""
    for at, holders in [(t0 + 5, [("container:sscc:C",)]), (t0 + 15, []), (t0 + 25, [("container:sscc:D",)])]:
        assert analyst.query(where, {"c": "serial:P:U", "t": at})[1] == holders, at


def test_a_store_from_before_held_intervals_gets_them_once(clean):
    """Edges and unpackings written by a version without held_intervals (straight into their tables)."""
    edge_rows, unpack_rows, _ = facts(11, 3, 30, 0.0)
    clean.insert("edges", [[e[k] for k in ("edge_id", "child", "parent", "relation", "event_ms", "source_event")] for e in edge_rows],
                 ["edge_id", "child", "parent", "relation", "event_time", "source_event"])
    clean.insert("unpacked", [[u[k] for k in ("child", "parent", "event_ms", "source_event")] for u in unpack_rows],
                 ["child", "parent", "event_time", "source_event"])
    assert stored(clean) == set()
    writer = Writer(clean)
    assert writer.backfill_held() == len(edge_rows) > 0
    assert stored(clean) == expected(edge_rows, unpack_rows, [])
    assert writer.backfill_held() == 0
