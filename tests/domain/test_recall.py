"""Recall planning (level by level) against brute-force closures over random genealogies."""

from hypothesis import given, settings, strategies as st

from tests.support import reference
from genealogy.domain import recall
from tests.support.graphs import BASE_MS, MemGraph, completions, graph_params, layered


def targets(edges):
    return sorted({c for c, *_ in edges})[:6]


@settings(max_examples=150, deadline=None)
@given(graph_params)
def test_forward_backward_and_lot_scope_match_brute_force(params):
    edges, lots = layered(*params)
    g = MemGraph(edges, lots)
    for target in targets(edges):
        r = recall.recall(g, target)
        reached = reference.reach_forward(edges, target)
        assert r.units == sorted(n for n in reached if n.startswith("serial:"))
        assert r.containers == sorted(n for n in reached if n.startswith("container:"))
        assert r.shipments == sorted(n for n in reached if n.startswith("shipment:"))
        assert r.production_lots == reference.lot_scope(edges, lots, target)
        assert r.lot_scope_count >= len([u for u in r.units if u in lots])
    for unit in sorted(lots)[:5]:
        t = recall.trace(g, unit)
        assert set(t["leaves"]) | set(_all_nodes(t["components"])) == reference.reach_backward(edges, unit)


def _all_nodes(components):
    for c in components:
        yield c["node"]
        yield from _all_nodes(c["components"])


@settings(max_examples=100, deadline=None)
@given(graph_params, st.integers(0, 100_000), st.integers(0, 100_000))
def test_window_bounds_only_the_first_hop(params, a, b):
    edges, lots = layered(*params)
    since, until = BASE_MS + min(a, b), BASE_MS + max(a, b)
    g = MemGraph(edges, lots)
    for target in targets(edges):
        first = {p for c, p, _, t, _ in edges if c == target and since <= t < until}
        expected = set(first)
        for p in first:
            expected |= reference.reach_forward(edges, p)
        expected.discard(target)
        assert recall.recall(g, target, since, until).units == sorted(n for n in expected if n.startswith("serial:"))


def test_lot_node_on_the_path_is_reported_as_widening():
    edges = [("lot:C:BAD", "lot:MIX:M1", "transformed", BASE_MS, "S"),
             ("lot:MIX:M1", "serial:P:1", "consumed", BASE_MS, "S"),
             ("lot:MIX:M1", "serial:P:2", "consumed", BASE_MS, "S")]
    r = recall.recall(MemGraph(edges, {"serial:P:1": "lot:P:PL1", "serial:P:2": "lot:P:PL1"}), "lot:C:BAD")
    assert r.widened_by == {"lot:MIX:M1": 2}
    assert r.as_dict()["difference"] == 0


@settings(max_examples=100, deadline=None)
@given(graph_params, st.integers(0, 100_000), st.integers(0, 100_000), st.sampled_from([None, "OP1"]))
def test_process_window_is_the_window_units_and_everything_they_went_into(params, a, b, operator):
    edges, lots = layered(*params)
    done = completions(lots, params[0])
    since, until = BASE_MS + min(a, b), BASE_MS + max(a, b)
    selected = {u for u, (station, t, op) in done.items()
                if station == "ST1" and since <= t < until and operator in (None, op)}
    expected = set(selected)
    for u in selected:
        expected |= reference.reach_forward(edges, u)
    r = recall.process_window(MemGraph(edges, lots, done), "ST1", since, until, operator)
    assert r.units == sorted(n for n in expected if n.startswith("serial:"))
    assert r.shipments == sorted(n for n in expected if n.startswith("shipment:"))
    assert set(r.production_lots) >= {lots[u] for u in selected}


@settings(max_examples=100, deadline=None)
@given(graph_params, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), max_size=10))
def test_cycles_end_and_reach_what_the_reference_reaches(params, extra):
    edges, lots = layered(*params)
    nodes = sorted({c for c, *_ in edges} | {p for _, p, *_ in edges})
    edges += [(nodes[i % len(nodes)], nodes[j % len(nodes)], "reworked", BASE_MS, "ST1") for i, j in extra] if nodes else []
    g = MemGraph(edges, lots)
    for target in targets(edges):
        r = recall.recall(g, target)
        reached = reference.reach_forward(edges, target)
        assert r.units == sorted(n for n in reached if n.startswith("serial:"))
        assert r.shipments == sorted(n for n in reached if n.startswith("shipment:"))
        t = recall.trace(g, target)  # a self-loop lists the target among its own components; the reference leaves it out
        assert (set(t["leaves"]) | set(_all_nodes(t["components"]))) - {target} == reference.reach_backward(edges, target)
