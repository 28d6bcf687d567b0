"""The ClickHouse store (real embedded engine) answers the Graph interface exactly like the reference."""

from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings

import reference
from genealogy import ids, recall
from graphs import BASE_MS, MemGraph, completions, graph_params, layered
from sinks.store import EDGE_COLUMNS, UNIT_COLUMNS, Store

TABLES = ["edges", "edges_by_parent", "units", "lot_members", "units_by_station", "nodes"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # chdb allows one data directory per process, so the module shares one store.
    s = Store(f"chdb://{tmp_path_factory.mktemp('chdb')}")
    s.migrate()
    s.migrate()  # idempotent
    yield s


def load(store, edges, lots, done=None):
    for t in TABLES:
        store.client.command(f"TRUNCATE TABLE {t}")
    store.insert("edges", EDGE_COLUMNS, [
        [ids.edge_id(c, p, rel, "e"), c, p, rel, datetime.fromtimestamp(t / 1000, tz=timezone.utc), st, "", "", "", 1.0, "e"]
        for c, p, rel, t, st in edges])
    done = done or {}
    store.insert("units", UNIT_COLUMNS, [
        [u, lot, "WO", done.get(u, ("ST", 0, "OP"))[0], done.get(u, ("ST", 0, "OP"))[2],
         datetime.fromtimestamp(done.get(u, ("ST", BASE_MS, "OP"))[1] / 1000, tz=timezone.utc), f"ev-{u}"]
        for u, lot in lots.items()])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph_params)
def test_store_answers_like_the_reference(store, params):
    edges, lots = layered(*params)
    done = completions(lots, params[0])
    load(store, edges, lots, done)
    mem = MemGraph(edges, lots, done)
    for target in sorted({c for c, *_ in edges})[:4]:
        assert recall.recall(store, target).as_dict() == recall.recall(mem, target).as_dict()
        assert set(recall.recall(store, target).units) == {n for n in reference.reach_forward(edges, target) if n.startswith("serial:")}
    for unit in sorted(lots)[:3]:
        assert recall.trace(store, unit) == recall.trace(mem, unit)
    for operator in (None, "OP2"):
        window = (BASE_MS + 20_000, BASE_MS + 70_000)
        assert recall.process_window(store, "ST2", *window, operator).as_dict() == \
            recall.process_window(mem, "ST2", *window, operator).as_dict()


def test_redelivered_edges_do_not_change_answers_or_counts(store):
    edges, lots = layered(3, 8, 10, 20, 4)
    load(store, edges, lots)
    before = (store.counts()["edges"], recall.recall(store, edges[0][0]).as_dict())
    load_again = [[ids.edge_id(c, p, rel, "e"), c, p, rel, datetime.fromtimestamp(t / 1000, tz=timezone.utc), st, "", "", "", 1.0, "e"]
                  for c, p, rel, t, st in edges]
    store.insert("edges", EDGE_COLUMNS, load_again)
    assert (store.counts()["edges"], recall.recall(store, edges[0][0]).as_dict()) == before


def test_bare_identifiers_resolve_through_the_nodes_table(store):
    load(store, [("lot:CAP:L-77", "serial:PRD:P-1", "consumed", 1_767_600_000_000, "S")], {"serial:PRD:P-1": "lot:PRD:PL-1"})
    assert store.resolve("L-77", ["lot"]) == ["lot:CAP:L-77"]
    assert store.resolve("P-1", ["serial"]) == ["serial:PRD:P-1"]
    assert store.resolve("L-77", ["serial"]) == []


def test_analyst_sql_is_read_only(store):
    cols, rows = store.query("SELECT count() AS n FROM edges WHERE child = {c:String}", {"c": "lot:CAP:L-77"})
    assert cols == ["n"] and rows[0][0] >= 0
    with pytest.raises(Exception, match="(?i)readonly"):
        store.query("DROP TABLE edges")
