"""Rework (CFX MaterialsUninstalled): parts taken out of units end what those units hold of them
(genealogy.domain.recall.holding, pair_spans), checked against a brute-force replay that looks at the
whole state at every instant (tests.support.reference.held_with_rework)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from genealogy.domain import recall
from tests.support import reference
from tests.support.graphs import MemGraph

T0 = 1_767_600_000_000
INF = float("inf")


def test_a_hold_ends_when_as_much_was_taken_out_as_was_put_in():
    assert recall.pair_spans([(10, 3.0, True)], [(20, 2.0)]) == [(-INF, INF)]
    assert recall.pair_spans([(10, 3.0, True)], [(20, 2.0), (30, 1.0)]) == [(-INF, 30)]
    # installed again after the rework: held anew from then
    assert recall.pair_spans([(10, 1.0, True), (40, 1.0, True)], [(20, 1.0)]) == [(-INF, 20), (40, INF)]
    # a temporal-join edge does not count its parts: no removal clears it
    assert recall.pair_spans([(10, 1.0, False)], [(20, 5.0)]) == [(-INF, INF)]
    # a serial is one part, however often it was joined
    assert recall.pair_spans([(10, 1.0, False), (11, 1.0, False)], [(20, 1.0)], single=True) == [(-INF, 20)]
    # a removal before anything was installed takes nothing out
    assert recall.pair_spans([(10, 1.0, True)], [(5, 1.0)]) == [(-INF, INF)]


def scenario(seed: int, n_events: int):
    """A random rework history at distinct times: lots and serialized modules built into units, parts
    taken out (some, all, more than once), modules moved to other units, units packed, unpacked, shipped."""
    rng = random.Random(seed)
    units = [f"serial:BRD:U{i}" for i in range(4)]
    modules = [f"serial:MOD:M{i}" for i in range(2)]
    lots = [f"lot:IPN:R{i}" for i in range(2)]
    cartons = [f"container:sscc:C{i}" for i in range(2)]
    shipments = [f"shipment:shipment:S{i}" for i in range(2)]
    made, packs, unpacks, removes, quantities = [], [], [], [], {}
    shipped: set[str] = set()  # an SSCC ships once, after its packing (recall assumes so when nothing was unpacked)
    for k in range(n_events):
        t = T0 + 1_000 * (k + 1)
        roll = rng.random()
        if roll < 0.3:
            child, unit = rng.choice(lots + modules), rng.choice(units)
            relation = rng.choice(["installed", "installed", "consumed"])
            quantity = float(rng.randint(1, 3)) if relation == "installed" and child.startswith("lot:") else 1.0
            made.append((child, unit, relation, t, quantity))
            quantities[(child, unit, t)] = quantity
        elif roll < 0.45:
            module, unit = rng.choice(modules), rng.choice(units)
            made.append((rng.choice(lots), module, "installed", t, 1.0))  # a module made from a lot
        elif roll < 0.65:
            child, unit = rng.choice(lots + modules), rng.choice(units)
            removes.append((child, unit, t, float(rng.randint(1, 3)), "DefectiveMaterial"))
        elif roll < 0.8:
            if (carton := rng.choice(cartons)) not in shipped:
                packs.append((rng.choice(units), carton, t))
        elif roll < 0.9:
            unpacks.append((rng.choice(units + [""]), rng.choice(cartons), t))
        elif (carton := rng.choice(cartons)) not in shipped:
            shipped.add(carton)
            packs.append((carton, rng.choice(shipments), t))
    edges = [(c, p, rel, t, "ST") for c, p, rel, t, _ in made] + [(c, p, "packed", t, "PK") for c, p, t in packs]
    graph = MemGraph(edges, {}, unpacks=[(c, p, t) for c, p, t in unpacks],
                     removes=removes, quantities=quantities)
    return lots + modules, graph, (made, packs, unpacks, [r[:4] for r in removes])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 28))
def test_recall_with_rework_equals_a_replay_of_the_history(seed, n_events):
    targets, graph, history = scenario(seed, n_events)
    for target in targets:
        truth = reference.held_with_rework(target, *history)
        r = recall.recall(graph, target)
        got = set(r.units) | set(r.containers) | set(r.shipments) | (set(r.lots) - {target})
        assert got == truth, target


def test_a_carton_packed_after_the_bad_part_was_taken_out_is_not_in_scope():
    """Board B got 2 parts of the bad reel; rework took both out; then B was packed into carton C and shipped."""
    edges = [("lot:IPN:BAD", "serial:BRD:B", "installed", T0, "SMT"),
             ("serial:BRD:B", "container:sscc:C", "packed", T0 + 2_000, "PK"),
             ("container:sscc:C", "shipment:shipment:S", "packed", T0 + 3_000, "DOCK")]
    quantities = {("lot:IPN:BAD", "serial:BRD:B", T0): 2.0}
    graph = MemGraph(edges, {}, removes=[("lot:IPN:BAD", "serial:BRD:B", T0 + 1_000, 2.0, "DefectiveMaterial")],
                     quantities=quantities)
    r = recall.recall(graph, "lot:IPN:BAD")
    assert (r.units, r.containers, r.shipments) == (["serial:BRD:B"], [], [])
    assert r.reworked == [{"unit": "serial:BRD:B", "component": "lot:IPN:BAD", "removed_ms": T0 + 1_000, "quantity": 2.0,
                           "reason": "DefectiveMaterial", "cleared": True}]
    # one part of two taken out: the board still holds the other, and the carton ships it
    partial = MemGraph(edges, {}, removes=[("lot:IPN:BAD", "serial:BRD:B", T0 + 1_000, 1.0, "DefectiveMaterial")],
                       quantities=quantities)
    r = recall.recall(partial, "lot:IPN:BAD")
    assert (r.containers, r.shipments, r.reworked[0]["cleared"]) == (["container:sscc:C"], ["shipment:shipment:S"], False)
    # the trace shows the rework
    t = recall.trace(graph, "serial:BRD:B")
    assert t["components"][0]["removed_ms"] == T0 + 1_000 and t["removed"][0]["cleared"]
