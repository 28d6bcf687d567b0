"""Containment over time (genealogy.domain.recall.containment) against a brute-force replay: packing and
associating, unpacking and ending associations (of some contents or of everything), repacking, nesting and
shipping in random orders; and
a recall names only the containers a unit was in and the shipments that carried it."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from genealogy.domain import recall
from tests.support import reference
from tests.support.graphs import MemGraph

T0 = 1_767_600_000_000


def scenario(seed: int, n_units: int, n_events: int):
    """Random packing history at distinct times: (packed edges, unpacks, ships), each event at its own ms."""
    rng = random.Random(seed)
    units = [f"serial:P:U{i}" for i in range(n_units)]
    cartons = [f"container:sscc:C{i}" for i in range(3)]
    pallets = [f"container:sscc:P{i}" for i in range(2)]
    shipments = [f"shipment:shipment:S{i}" for i in range(3)]
    orders = [f"transaction:po:PO{i}" for i in range(2)]  # linked and unlinked (TransactionEvent ADD / DELETE)
    edges, unpacks, log = [], [], []
    for k in range(n_events):
        t = T0 + 1_000 * (k + 1)
        roll = rng.random()
        if roll < 0.35:
            child, parent = rng.choice(units), rng.choice(cartons)
        elif roll < 0.5:
            child, parent = rng.choice(cartons), rng.choice(pallets)
        elif roll < 0.75:
            child, parent = rng.choice(units + cartons), rng.choice(cartons + pallets + orders)
            child = rng.choice(["", child]) if rng.random() < 0.3 else child
            if child != parent:
                unpacks.append((child, parent, t))
                log.append(("del", child, parent, t))
            continue
        elif roll < 0.85:
            child, parent = rng.choice(cartons + pallets + units), rng.choice(orders)
        else:
            child, parent = rng.choice(cartons + pallets + units), rng.choice(shipments)
        if child != parent:  # an association (EPCIS AssociationEvent) or a transaction link holds and ends like a packing
            relation = "transacted" if parent.startswith("transaction:") else \
                "packed" if parent.startswith("shipment:") or rng.random() < 0.7 else "associated"
            edges.append((child, parent, relation, t, "ST"))
            log.append(("add", child, parent, t))
    return units, edges, unpacks, log


def replay(log) -> dict[str, set[str]]:
    """The brute-force reference, fed as capture events."""
    events = []
    for k, (action, child, parent, t) in enumerate(log):
        ref = (lambda n: dict(zip(("kind", "item", "ident"), n.split(":", 2))))
        if action == "add":
            events.append(("genealogy.Packed", {"event_id": f"e{k}", "event_ms": t, "contents": [ref(child)], "container": ref(parent)}))
        else:
            events.append(("genealogy.Unpacked", {"event_id": f"e{k}", "event_ms": t, "contents": [ref(child)] if child else [],
                                                  "container": ref(parent)}))
    return reference.held_over_time(events)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 5), st.integers(1, 30))
def test_containment_equals_a_replay_of_the_packing_history(seed, n_units, n_events):
    units, edges, unpacks, log = scenario(seed, n_units, n_events)
    graph = MemGraph(edges, {}, unpacks=unpacks)
    truth = replay(log)
    for unit in units:
        assert set(recall.containment(graph, [unit])) == truth.get(unit, set()) - {unit}, unit


def test_a_carton_shipped_after_the_unit_left_it_is_not_in_the_units_recall():
    """Unit U in carton A, taken out and packed into carton B; A ships later in S1, B in S2."""
    edges = [("lot:C:BAD", "serial:P:U", "consumed", T0, "ST"),
             ("serial:P:U", "container:sscc:A", "packed", T0 + 1_000, "PK"),
             ("serial:P:U", "container:sscc:B", "packed", T0 + 3_000, "PK"),
             ("container:sscc:A", "shipment:shipment:S1", "packed", T0 + 5_000, "DOCK"),
             ("container:sscc:B", "shipment:shipment:S2", "packed", T0 + 6_000, "DOCK"),
             ("shipment:shipment:S1", "transaction:desadv:D1", "transacted", T0 + 5_000, "DOCK"),
             ("shipment:shipment:S2", "transaction:desadv:D2", "transacted", T0 + 6_000, "DOCK")]
    unpacked = MemGraph(edges, {}, unpacks=[("serial:P:U", "container:sscc:A", T0 + 2_000)])
    r = recall.recall(unpacked, "lot:C:BAD")
    assert (r.containers, r.shipments, r.transactions) == (
        ["container:sscc:A", "container:sscc:B"], ["shipment:shipment:S2"], ["transaction:desadv:D2"])
    # Where the unit was and is, in the recall itself.
    assert r.where == {"serial:P:U": [{"node": "container:sscc:A", "from_ms": T0 + 1_000, "to_ms": T0 + 2_000},
                                      {"node": "container:sscc:B", "from_ms": T0 + 3_000, "to_ms": None}]}
    # Without the unpacking, the unit stayed in A too, and A's shipment carried it.
    r = recall.recall(MemGraph(edges, {}), "lot:C:BAD")
    assert r.shipments == ["shipment:shipment:S1", "shipment:shipment:S2"]
    # Where it was, and where it is now.
    t = recall.trace(unpacked, "serial:P:U")
    assert [(c["node"], c["from_ms"], c["to_ms"]) for c in t["containment"]] == [
        ("container:sscc:A", T0 + 1_000, T0 + 2_000), ("container:sscc:B", T0 + 3_000, None), ("shipment:shipment:S2", T0 + 6_000, None)]
    assert t["now"] == ["container:sscc:B", "shipment:shipment:S2"]


def test_an_order_unlinked_before_the_unit_went_into_its_carton_is_not_in_the_units_recall():
    """Carton A is allocated to order PO-1, unallocated (TransactionEvent DELETE), then unit U is packed
    into it and A is allocated to PO-2."""
    edges = [("lot:C:BAD", "serial:P:U", "consumed", T0, "ST"),
             ("container:sscc:A", "transaction:po:PO-1", "transacted", T0 + 1_000, "ERP"),
             ("serial:P:U", "container:sscc:A", "packed", T0 + 3_000, "PK"),
             ("container:sscc:A", "transaction:po:PO-2", "transacted", T0 + 4_000, "ERP")]
    unlinked = MemGraph(edges, {}, unpacks=[("container:sscc:A", "transaction:po:PO-1", T0 + 2_000)])
    assert recall.recall(unlinked, "lot:C:BAD").transactions == ["transaction:po:PO-2"]
    assert recall.recall(MemGraph(edges, {}), "lot:C:BAD").transactions == ["transaction:po:PO-1", "transaction:po:PO-2"]
