"""The read model over the real embedded ClickHouse answers the Graph interface exactly like the reference."""

import random
from contextlib import contextmanager
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from genealogy.sinks import read_model as read_model_module
from tests.domain.test_rework import scenario
from tests.support import reference
from genealogy.domain import ids, recall
from tests.support.graphs import BASE_MS, MemGraph, completions, graph_params, layered
from genealogy.sinks.writer import EDGE_COLUMNS, UNIT_COLUMNS

TABLES = ["edges", "edges_by_parent", "units", "lot_members", "units_by_station", "nodes", "held_intervals", "held_by_holder"]


def load(writer, edges, lots, done=None):
    for t in TABLES:
        writer.connection.command(f"TRUNCATE TABLE {t}")
    writer.insert("edges", EDGE_COLUMNS, [
        [ids.edge_id(c, p, rel, "e"), c, p, rel, datetime.fromtimestamp(t / 1000, tz=timezone.utc), st, "", "", "", 1.0, "e"]
        for c, p, rel, t, st in edges])
    done = done or {}
    writer.insert("units", UNIT_COLUMNS, [
        [u, lot, "WO", done.get(u, ("ST", 0, "OP"))[0], done.get(u, ("ST", 0, "OP"))[2],
         datetime.fromtimestamp(done.get(u, ("ST", BASE_MS, "OP"))[1] / 1000, tz=timezone.utc), f"ev-{u}"]
        for u, lot in lots.items()])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph_params)
def test_store_answers_like_the_reference(writer, read_model, params):
    edges, lots = layered(*params)
    done = completions(lots, params[0])
    load(writer, edges, lots, done)
    mem = MemGraph(edges, lots, done)
    for target in sorted({c for c, *_ in edges})[:4]:
        assert recall.recall(read_model, target).as_dict() == recall.recall(mem, target).as_dict()
        assert set(recall.recall(read_model, target).units) == {n for n in reference.reach_forward(edges, target) if n.startswith("serial:")}
    for unit in sorted(lots)[:3]:
        assert recall.trace(read_model, unit) == recall.trace(mem, unit)
    for operator in (None, "OP2"):
        window = (BASE_MS + 20_000, BASE_MS + 70_000)
        assert recall.process_window(read_model, "ST2", *window, operator).as_dict() == \
            recall.process_window(mem, "ST2", *window, operator).as_dict()


def levels_only(read_model):
    """The same read model without its whole-traversal queries: genealogy.recall then walks it level by
    level through the Graph calls (the portable path MemGraph takes)."""
    return SimpleNamespace(parents=read_model.parents, children=read_model.children, units_at=read_model.units_at,
                           production_lots=read_model.production_lots, lot_members=read_model.lot_members,
                           packed_into=read_model.packed_into, unpackings=read_model.unpackings)


def tangled(params, seed: int, n_extra: int):
    """A layered genealogy plus random edges between any of its nodes and production lots:
    cycles (also through the target), self-loops, production-lot nodes on paths."""
    edges, lots = layered(*params)
    rng = random.Random(seed)
    nodes = sorted({c for c, *_ in edges} | {p for _, p, *_ in edges} | set(lots) | set(lots.values()))
    pairs = {(c, p) for c, p, *_ in edges}
    for _ in range(n_extra if nodes else 0):
        c, p = rng.choice(nodes), rng.choice(nodes)
        if (c, p) not in pairs:  # a second edge of a pair may differ in relation: any() would pick either
            pairs.add((c, p))
            edges.append((c, p, "reworked", BASE_MS + rng.randrange(100_000), "ST1"))
    return edges, lots


@contextmanager
def whole_traversals(read_model, exact=False):
    """Every walk run inside ClickHouse (recall.SHIP_MAX 0): by the capped queries, or (exact) by the
    exact ones they fall back to on cycles and deeper graphs."""
    ship_max, recall.SHIP_MAX = recall.SHIP_MAX, 0
    read_model.exact_traversals = exact
    try:
        yield read_model
    finally:
        recall.SHIP_MAX = ship_max
        del read_model.exact_traversals


def same(read_model, mem, fn, *args):
    """fn over MemGraph, over the read model as recall uses it, with every walk inside ClickHouse (capped
    and exact queries), and over the read model level by level: all equal."""
    answers = {"mem": fn(mem, *args), "read model": fn(read_model, *args), "levels": fn(levels_only(read_model), *args)}
    for exact in (False, True):
        with whole_traversals(read_model, exact) as inside:
            answers[f"inside, exact={exact}"] = fn(inside, *args)
    answers = {k: r.as_dict() if isinstance(r, recall.Recall) else r for k, r in answers.items()}
    for k, r in answers.items():
        assert r == answers["mem"], (k, fn.__name__, args)
    return answers["mem"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph_params, st.integers(0, 10**6), st.integers(0, 12), st.integers(0, 100_000), st.integers(0, 100_000))
def test_whole_traversals_match_level_by_level_on_cycles_windows_and_lot_nodes(writer, read_model, params, seed, n_extra, a, b):
    edges, lots = tangled(params, seed, n_extra)
    done = completions(lots, params[0])
    load(writer, edges, lots, done)
    mem = MemGraph(edges, lots, done)
    since, until = BASE_MS + min(a, b), BASE_MS + max(a, b)
    children = sorted({c for c, *_ in edges})
    targets = children[:2] + children[-1:] + sorted(set(lots.values()))[:1] + sorted(lots)[-1:] + ["serial:NONE:X"]
    for target in dict.fromkeys(targets):
        r = same(read_model, mem, recall.recall, target)
        assert set(r["serial_scope"]["units"]) == {n for n in reference.reach_forward(edges, target) if n.startswith("serial:")}
        same(read_model, mem, recall.recall, target, since, until)
        same(read_model, mem, recall.recall, target, None, until)
        same(read_model, mem, recall.trace, target)
        same(read_model, mem, recall.trace, target, 2)
    same(read_model, mem, recall.forward, children[:3])
    same(read_model, mem, recall.forward, children[:3], since, until)
    same(read_model, mem, recall.lot_level, children[:3], since, until)
    for station, operator in (("ST1", None), ("ST2", "OP1"), ("NOWHERE", None)):
        same(read_model, mem, recall.process_window, station, since, until, operator)


def test_edge_cases_of_the_traversal_queries(writer, read_model):
    edges = [("lot:C:BAD", "lot:MIX:M1", "transformed", BASE_MS, "S"),
             ("lot:MIX:M1", "serial:P:1", "consumed", BASE_MS, "S"),
             ("lot:MIX:M1", "serial:P:2", "consumed", BASE_MS + 50, "S"),
             ("serial:P:2", "lot:MIX:M1", "reworked", BASE_MS, "S"),       # a cycle through a lot node
             ("serial:P:1", "serial:P:1", "reworked", BASE_MS, "S"),       # a self-loop
             ("serial:P:3", "serial:Q:1", "installed", BASE_MS, "S"),
             ("serial:Q:1", "container:carton:C1", "packed", BASE_MS, "S"),
             ("serial:Q:2", "serial:P:1", "installed", BASE_MS, "S"),       # Q's lot reaches back into P's lot
             ("lot:P:PL1", "serial:R:1", "consumed", BASE_MS, "S"),        # a production lot as a node
             ("serial:R:1", "serial:E:1", "installed", BASE_MS, "S")]      # a unit whose lot is empty
    lots = {"serial:P:1": "lot:P:PL1", "serial:P:2": "lot:P:PL1", "serial:P:3": "lot:P:PL1",
            "serial:Q:1": "lot:Q:QL1", "serial:Q:2": "lot:Q:QL1", "serial:R:1": "lot:R:RL1", "serial:E:1": ""}
    load(writer, edges, lots)
    mem = MemGraph(edges, lots)
    r = same(read_model, mem, recall.recall, "lot:C:BAD")
    assert r["widened_by"] == {"lot:MIX:M1": 2} and r["levels"] == 2
    assert r["lot_scope"]["production_lots"] == {"": 1, "lot:P:PL1": 3, "lot:Q:QL1": 2, "lot:R:RL1": 1}
    assert same(read_model, mem, recall.recall, "lot:C:BAD", BASE_MS + 1, BASE_MS + 2)["serial_scope"]["count"] == 0
    # only the first hop is windowed; the way back to the target through P:2 does not re-open it
    assert same(read_model, mem, recall.forward, "lot:MIX:M1", BASE_MS + 50, BASE_MS + 51) == ({"serial:P:2"}, 1)
    for target in ("serial:P:2", "lot:P:PL1", "serial:Q:2", "container:carton:C1", "serial:NONE:X", "lot:NONE:X"):
        same(read_model, mem, recall.recall, target)
        same(read_model, mem, recall.trace, target)
    assert same(read_model, mem, recall.forward, []) == (set(), 0)
    assert same(read_model, mem, recall.lot_level, []) == {}
    assert same(read_model, mem, recall.trace, "serial:P:1", 1)["depth"] == 1
    assert same(read_model, mem, recall.forward, "lot:C:BAD") == ({"lot:MIX:M1", "serial:P:1", "serial:P:2"}, 2)


def test_redelivered_edges_do_not_change_answers_or_counts(writer, read_model):
    edges, lots = layered(3, 8, 10, 20, 4)
    load(writer, edges, lots)
    before = (read_model.counts()["edges"], recall.recall(read_model, edges[0][0]).as_dict())
    load_again = [[ids.edge_id(c, p, rel, "e"), c, p, rel, datetime.fromtimestamp(t / 1000, tz=timezone.utc), st, "", "", "", 1.0, "e"]
                  for c, p, rel, t, st in edges]
    writer.insert("edges", EDGE_COLUMNS, load_again)
    assert (read_model.counts()["edges"], recall.recall(read_model, edges[0][0]).as_dict()) == before


def test_bare_identifiers_resolve_through_the_nodes_table(writer, read_model):
    load(writer, [("lot:CAP:L-77", "serial:PRD:P-1", "consumed", 1_767_600_000_000, "S")], {"serial:PRD:P-1": "lot:PRD:PL-1"})
    assert read_model.resolve("L-77", ["lot"]) == ["lot:CAP:L-77"]
    assert read_model.resolve("P-1", ["serial"]) == ["serial:PRD:P-1"]
    assert read_model.resolve("L-77", ["serial"]) == []


def test_analyst_sql_is_read_only(analyst):
    cols, rows = analyst.query("SELECT count() AS n FROM edges WHERE child = {c:String}", {"c": "lot:CAP:L-77"})
    assert cols == ["n"] and rows[0][0] >= 0
    with pytest.raises(Exception, match="only SELECT"):
        analyst.query("DROP TABLE edges")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10**6), st.integers(1, 28), st.booleans())
def test_rework_and_unpacking_are_answered_from_the_store_like_the_reference(writer, read_model, seed, n_events, ship_few):
    """Removals (table removals), unpackings (unpacked) and counted installations (edges.quantity) read back from
    ClickHouse give the recall and trace the in-memory graph gives; with ``ship_few`` the store matches a long
    component list against the ever-removed components instead of shipping it."""
    targets, mem, _ = scenario(seed, n_events)
    for t in TABLES + ["removals", "unpacked"]:
        writer.connection.command(f"TRUNCATE TABLE {t}")
    utc = lambda ms: datetime.fromtimestamp(ms / 1000, tz=timezone.utc)  # noqa: E731
    writer.insert("edges", EDGE_COLUMNS, [
        [ids.edge_id(c, p, rel, f"e{k}"), c, p, rel, utc(t), st_, "", "", "", mem.quantities.get((c, p, t), 1.0), f"e{k}"]
        for k, (c, p, rel, t, st_) in enumerate(mem.edges)])
    writer.insert("removals", ["child", "parent", "quantity", "reason", "event_time", "station", "source_event"],
                  [[c, u, q, reason, utc(t), "RW", f"r{k}"] for k, (c, u, t, q, reason) in enumerate(mem.removes)])
    writer.insert("unpacked", ["child", "parent", "event_time", "station", "source_event"],
                  [[c, p, utc(t), "PK", f"u{k}"] for k, (c, p, t) in enumerate(mem.unpacks)])
    ship_max = read_model_module.SHIP_MAX
    read_model_module.SHIP_MAX = 1 if ship_few else ship_max
    try:
        for target in targets:
            assert recall.recall(read_model, target).as_dict() == recall.recall(mem, target).as_dict(), target
        for unit in sorted({p for _, p, rel, *_ in mem.edges if rel == "installed" and p.startswith("serial:BRD")})[:2]:
            assert recall.trace(read_model, unit) == recall.trace(mem, unit)
    finally:
        read_model_module.SHIP_MAX = ship_max
