"""Random layered genealogies and a dict-backed Graph, shared by the recall and store tests."""

from __future__ import annotations

import random
from collections import defaultdict

from hypothesis import strategies as st

from genealogy.domain import holding

BASE_MS = 1_767_600_000_000


def layered(seed: int, n_components: int, n_boards: int, n_products: int, lot_size: int) -> tuple[list[tuple], dict[str, str]]:
    """(child, parent, relation, event_ms, station) edges and unit -> production lot."""
    rng = random.Random(seed)
    comps = [f"lot:C{i % 3}:L{i}" if i % 4 else f"serial:CS:S{i}" for i in range(n_components)]
    mixes = [f"lot:MIX:M{i}" for i in range(max(1, n_components // 5))]
    boards = [f"serial:BRD:B{i}" for i in range(n_boards)]
    products = [f"serial:PRD:P{i}" for i in range(n_products)]
    cartons = [f"container:carton:C{i}" for i in range(max(1, n_products // 3))]
    ships = [f"shipment:shipment:S{i}" for i in range(max(1, len(cartons) // 2))]
    lots = {b: f"lot:BRD:PL{i // lot_size}" for i, b in enumerate(boards)}
    lots.update({p: f"lot:PRD:PL{i // lot_size}" for i, p in enumerate(products)})
    edges = []

    def add(child, parent, relation):
        edges.append((child, parent, relation, BASE_MS + rng.randrange(100_000), rng.choice(["ST1", "ST2"])))

    for m in mixes:
        for c in rng.sample(comps, min(2, len(comps))):
            add(c, m, "transformed")
    for b in boards:
        for c in rng.sample(comps + mixes, min(rng.randint(0, 3), len(comps + mixes))):
            add(c, b, "consumed")
    for p in products:
        if boards and rng.random() < 0.9:
            add(rng.choice(boards), p, "installed")
        for c in rng.sample(comps, min(rng.randint(0, 2), len(comps))):
            add(c, p, "consumed")
        if rng.random() < 0.8:
            add(p, rng.choice(cartons), "packed")
    for c in cartons:
        add(c, rng.choice(ships), "packed")
    if edges and rng.random() < 0.3:
        edges.append(edges[0])  # a redelivered edge
    return edges, lots


graph_params = st.tuples(st.integers(0, 10**6), st.integers(1, 12), st.integers(0, 15), st.integers(0, 25), st.integers(1, 6))


def completions(lots: dict[str, str], seed: int) -> dict[str, tuple[str, int, str]]:
    """unit -> (station, completed at, operator), deterministic."""
    rng = random.Random(seed)
    return {u: (rng.choice(["ST1", "ST2"]), BASE_MS + rng.randrange(100_000), rng.choice(["OP1", "OP2"])) for u in sorted(lots)}


class MemGraph:
    def __init__(self, edges, lots, done=None, unpacks=(), removes=None, quantities=None):
        self.edges, self.lots = edges, lots
        self.unpacks = list(unpacks)  # (child or "" = everything, container, at)
        self.quantities = dict(quantities or {})  # (child, parent, at) -> quantity of that edge (else 1)
        if removes is not None:  # (child, unit, at, quantity, reason): answers genealogy.domain.recall.Rework
            self.removes = list(removes)
            self.removals = lambda units: sorted(r for r in self.removes if r[1] in set(units))
            self.removed_among = lambda nodes: sorted(r for r in self.removes if r[0] in set(nodes))
        self.done = done or {}
        self.members = defaultdict(list)
        for unit, lot in lots.items():
            self.members[lot].append(unit)

    def parents(self, nodes, since_ms=None, until_ms=None):
        nodes = set(nodes)
        return sorted({(c, p) for c, p, _, t, _ in self.edges if c in nodes
                       and (since_ms is None or t >= since_ms) and (until_ms is None or t < until_ms)})

    def children(self, nodes):
        nodes = set(nodes)
        best = {}
        for c, p, rel, t, st_ in self.edges:
            if p in nodes and ((p, c) not in best or t < best[(p, c)][1]):
                best[(p, c)] = (rel, t, st_)
        return sorted((p, c, rel, t, st_) for (p, c), (rel, t, st_) in best.items())

    def units_at(self, station, since_ms, until_ms, operator=None):
        return sorted(u for u, (st_, t, op) in self.done.items()
                      if st_ == station and since_ms <= t < until_ms and (operator is None or op == operator))

    def production_lots(self, units):
        return {u: self.lots[u] for u in units if u in self.lots}

    def lot_members(self, lots):
        return {lot: list(self.members.get(lot, [])) for lot in lots}

    def packed_into(self, nodes):
        """(child, holder, from, to or None), as the sink stores them: genealogy.domain.holding.intervals of the
        packed, associated and transacted edges and the unpackings."""
        nodes = set(nodes)
        adds = [(c, p, t, k) for k, (c, p, rel, t, _) in enumerate(self.edges) if c in nodes and rel in holding.HELD]
        return sorted(set(holding.intervals(adds, self.unpacks)))

    def edges_up(self, nodes):
        nodes = set(nodes)
        return sorted((c, p, rel, t, self.quantities.get((c, p, t), 1.0)) for c, p, rel, t, _ in self.edges if c in nodes)

    def unpackings(self, containers):
        containers = set(containers)
        return sorted({u for u in self.unpacks if u[1] in containers})
