"""Recall and trace over a genealogy graph.

The traversal is pure logic over the ``Graph`` interface, one call per BFS level; tests answer it
from a dict and check it against a brute-force reference. Against ClickHouse, each level shipped
its whole frontier as an id list, and parsing those lists cost more than the lookups (see
bench/README.md). So a graph that can run whole traversals itself (``Traversals``:
``genealogy.sinks.read_model.ReadModel``, one recursive query or a loop of server-side steps each) is asked for them
once a frontier would ship more than SHIP_MAX ids, and always for the lot-level scope and the
widening counts, whose walks ship whole lots. tests/test_store.py asserts both paths answer alike.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

from genealogy.domain import ids


class Graph(Protocol):
    def parents(self, nodes: list[str], since_ms: int | None = None, until_ms: int | None = None) -> list[tuple[str, str]]: ...
    def units_at(self, station: str, since_ms: int, until_ms: int, operator: str | None = None) -> list[str]: ...
    def children(self, nodes: list[str]) -> list[tuple[str, str, str, int, str]]: ...
    def production_lots(self, units: list[str]) -> dict[str, str]: ...
    def lot_members(self, lots: list[str]) -> dict[str, list[str]]: ...


class Traversals(Graph, Protocol):
    """Optional: a graph that runs whole traversals itself, one call each (genealogy.sinks.read_model.ReadModel)."""
    def completed(self, station: str, since_ms: int, until_ms: int, operator: str | None = None) -> object: ...
    def forward_reach(self, starts, since_ms: int | None = None, until_ms: int | None = None,
                      lots: bool = False) -> tuple[dict[str, int], dict[str, str]]: ...
    def lot_scope(self, starts, since_ms: int | None = None, until_ms: int | None = None) -> dict[str, int]: ...
    def serials_downstream(self, sources: list[str]) -> dict[str, int]: ...
    def backward_edges(self, unit: str, max_depth: int = 64) -> list[tuple[str, str, str, int, str]]: ...


class Packing(Graph, Protocol):
    """Optional: a graph that knows when things were packed, and until when (genealogy.sinks.read_model.ReadModel:
    the intervals the sink stored as the facts came, genealogy.domain.holding.intervals)."""
    def packed_into(self, nodes: list[str]) -> list[tuple[str, str, int, int | None]]: ...  # (child, holder, from, to or None)


class ClosedIn(Packing, Protocol):
    """Optional, for speed: the closed intervals of these holders, whatever their child (looked up by holder).
    Without it, _held asks packed_into for everything reached instead: the same answer, more ids shipped."""
    def closed_in(self, holders: list[str]) -> list[tuple[str, str, int, int]]: ...  # (child, holder, from, to)


class Rework(Packing, Protocol):
    """Optional: a graph that knows what was taken out of units at rework (genealogy.sinks.read_model.ReadModel)."""
    def removals(self, units: list[str]) -> list[tuple[str, str, int, float, str]]: ...     # (child, unit, at, quantity, reason)
    def removed_among(self, nodes: list[str]) -> list[tuple[str, str, int, float, str]]: ...  # the same, by child
    def edges_up(self, nodes: list[str]) -> list[tuple[str, str, str, int, float]]: ...    # (child, parent, relation, at, quantity)


def _rework(graph: Graph) -> Rework | None:
    return graph if callable(getattr(graph, "removed_among", None)) else None  # type: ignore[return-value]


def _packing(graph: Graph) -> Packing | None:
    return graph if callable(getattr(graph, "packed_into", None)) else None  # type: ignore[return-value]


def _traversals(graph: Graph) -> Traversals | None:
    return graph if callable(getattr(graph, "forward_reach", None)) else None  # type: ignore[return-value]


# Most ids a walk ships to a graph that can run whole traversals, per call. A small frontier costs
# ~2 ms a level as an id list, what a step of a recursive query costs too; 5,000 ids cost ~25 ms
# to ship (bench/README.md). Past this, the whole traversal runs inside the store instead.
SHIP_MAX = 1_000
# A lot goes into many units (one supplier reel into thousands of boards): its first level alone would
# ship more than SHIP_MAX ids back, only for the walk to start over inside the store (10 ms of a 66 ms
# forward recall at 100M edges). A walk from a lot runs inside the store from the start.
WIDE_KINDS = frozenset({"lot", "class"})


class _Backward:
    """children() for one trace over a graph that can run whole traversals: asked level by level
    while the frontier is small; once it would ship more than SHIP_MAX ids, every row below the
    unit is fetched in one traversal and the rest is answered from those rows (the same answers)."""

    def __init__(self, server: Traversals, unit: str, max_depth: int):
        self.server, self.unit, self.max_depth = server, unit, max_depth
        self.below: dict[str, list[tuple]] | None = None

    def children(self, nodes):
        if self.below is None and len(nodes) <= SHIP_MAX:
            return self.server.children(nodes)
        if self.below is None:
            self.below = defaultdict(list)
            for row in self.server.backward_edges(self.unit, self.max_depth):
                self.below[row[0]].append(row)
        return [row for n in nodes for row in self.below.get(n, ())]


@dataclass
class Recall:
    target: str
    since_ms: int | None
    until_ms: int | None
    units: list[str]
    lots: list[str]
    containers: list[str]
    shipments: list[str]
    production_lots: dict[str, int]
    levels: int
    widened_by: dict[str, int] = field(default_factory=dict)
    # Business transactions (orders, despatch advices, invoices) the reached units, containers and
    # shipments belong to: whom a recall notice goes to.
    transactions: list[str] = field(default_factory=list)
    # Assets (GIAI, GRAI) and locations (SGLN) the reached things are associated with for good (EPCIS
    # AssociationEvent): the machine, returnable asset or room to check, as containers are for packing.
    assets: list[str] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    # Parts of the target (or of what contains it) taken out of reached units at rework: each with
    # ``cleared`` when the unit held none of that component any more from then on.
    reworked: list[dict] = field(default_factory=list)
    # Where each unit reached (and the target, when a unit) is and was: its direct places (cartons, pallets, shipments, assets,
    # locations) with from/to (to None: still there). None when more than WHERE_MAX units were reached:
    # then trace gives it unit by unit.
    where: dict[str, list[dict]] | None = None

    @property
    def lot_scope_count(self) -> int:
        return sum(self.production_lots.values())

    def as_dict(self) -> dict:
        return {
            "target": self.target,
            "window": {"since_ms": self.since_ms, "until_ms": self.until_ms},
            "serial_scope": {"units": self.units, "count": len(self.units)},
            "lot_scope": {"count": self.lot_scope_count, "production_lots": self.production_lots},
            "difference": self.lot_scope_count - len(self.units),
            "lots": self.lots,
            "containers": self.containers,
            "shipments": self.shipments,
            "business_transactions": self.transactions,
            "assets": self.assets,
            "locations": self.locations,
            "reworked": self.reworked,
            "where": self.where,
            "widened_by": self.widened_by,
            "levels": self.levels,
        }


def forward(graph: Graph, target: str | list[str], since_ms: int | None = None, until_ms: int | None = None) -> tuple[set[str], int]:
    """Every node that contains the target(s), transitively. The window bounds the first hop only:
    it says when the target was consumed, not when its consumers were packed or shipped."""
    reached, levels, _ = _forward(graph, [target] if isinstance(target, str) else list(target), since_ms, until_ms)
    return reached, levels


def _forward(graph: Graph, starts: list[str], since_ms: int | None, until_ms: int | None,
             lots: bool = False) -> tuple[set[str], int, dict[str, str] | None]:
    """forward(), and with lots (from a store that ran the traversal itself) unit -> production lot
    of the units reached. Level by level; a store that can run whole traversals does so once a
    frontier would ship more than SHIP_MAX ids (it started over from the starts: same answer), or from
    the start when a start is a lot."""
    server = _traversals(graph)
    seen = set(starts)
    frontier = sorted(seen)
    levels = 0
    first = True
    wide = any(ids.kind_of(n) in WIDE_KINDS for n in starts)
    while frontier:
        if server is not None and (len(frontier) > SHIP_MAX or wide):
            by_level, unit_lots = server.forward_reach(starts, since_ms, until_ms, lots=lots)
            return *_reached(by_level), (unit_lots if lots else None)
        pairs = graph.parents(frontier, since_ms, until_ms) if first else graph.parents(frontier)
        first = False
        nxt = sorted({p for _, p in pairs} - seen)
        if not nxt:
            break
        levels += 1
        seen.update(nxt)
        frontier = nxt
    seen.difference_update(starts)
    return seen, levels, None


def _reached(levels: dict[str, int]) -> tuple[set[str], int]:
    """forward()'s answer from node -> BFS level (starts at 0): the nodes beyond the starts, the deepest level."""
    return {n for n, level in levels.items() if level}, max(levels.values(), default=0)


def lot_level(graph: Graph, target: str | list[str], since_ms: int | None = None, until_ms: int | None = None) -> dict[str, int]:
    """What the same question costs with lot data only: every production lot the target reached,
    transitively at lot granularity, with its number of units. A unit stands for its whole lot."""
    starts = [target] if isinstance(target, str) else list(target)
    if (server := _traversals(graph)) is not None:
        return dict(sorted(server.lot_scope(starts, since_ms, until_ms).items()))
    lots: dict[str, list[str]] = {}
    seen = set(starts)
    frontier = sorted(seen)
    own = graph.production_lots([n for n in starts if ids.kind_of(n) == "serial"])
    frontier += _widen(graph, set(own.values()), lots, seen)
    first = True
    while frontier:
        pairs = graph.parents(frontier, since_ms, until_ms) if first else graph.parents(frontier)
        first = False
        parents = {p for _, p in pairs if ids.kind_of(p) in ("serial", "lot")} - seen
        if not parents:
            break
        seen.update(parents)
        serials = sorted(p for p in parents if ids.kind_of(p) == "serial")
        reached_lots = set(graph.production_lots(serials).values()) | {p for p in parents if ids.kind_of(p) == "lot"}
        frontier = sorted(parents) + _widen(graph, reached_lots, lots, seen)
    return {lot: len(members) for lot, members in sorted(lots.items()) if members}


def _widen(graph: Graph, new_lots: set[str], lots: dict[str, list[str]], seen: set[str]) -> list[str]:
    new_lots = sorted(new_lots - lots.keys())
    if not new_lots:
        return []
    members = graph.lot_members(new_lots)
    added = []
    for lot in new_lots:
        lots[lot] = members.get(lot, [])
        for node_id in [lot, *lots[lot]]:
            if node_id not in seen:
                seen.add(node_id)
                added.append(node_id)
    return added


def recall(graph: Graph, target: str, since_ms: int | None = None, until_ms: int | None = None) -> Recall:
    reached, levels, unit_lots = _forward(graph, [target], since_ms, until_ms, lots=True)
    if unit_lots is None and len(reached) > SHIP_MAX and (server := _traversals(graph)) is not None:
        # many small levels: the production lots of all they reached, looked up inside the store
        unit_lots = server.forward_reach([target], since_ms, until_ms, lots=True)[1]
    return _scope(graph, target, reached, levels, lot_level(graph, target, since_ms, until_ms), since_ms, until_ms, unit_lots)


def process_window(graph: Graph, station: str, since_ms: int, until_ms: int, operator: str | None = None) -> Recall:
    """"Station S ran out of spec from t1 to t2" (optionally: operator O): the units completed
    there in the window, and everything they went into."""
    label = f"station:{station}" + (f" operator:{operator}" if operator else "")
    if (server := _traversals(graph)) is not None:
        # The window's units are the traversal's starts, selected inside the store (no id list sent).
        starts = server.completed(station, since_ms, until_ms, operator)
        by_level, unit_lots = server.forward_reach(starts, lots=True)
        _, levels = _reached(by_level)
        lot_scope = dict(sorted(server.lot_scope(starts).items())) if by_level else {}
        return _scope(graph, label, set(by_level), levels, lot_scope, since_ms, until_ms, unit_lots)
    units = graph.units_at(station, since_ms, until_ms, operator)
    reached, levels = forward(graph, units)
    return _scope(graph, label, reached | set(units), levels, lot_level(graph, units) if units else {}, since_ms, until_ms)


INF = float("inf")
# Kinds that hold things for a time, packed or associated: their intervals are what containment walks.
HOLDERS = ("container", "shipment", "asset", "location", "transaction")
Intervals = list[tuple[float, float]]


def containment(graph: Packing, starts: list[str], max_levels: int = 64) -> dict[str, Intervals]:
    """When each container, shipment and business transaction held any of the starts: holder -> [from, to)
    intervals.

    A packed, associated or transacted edge child -> holder holds from its time to the first unpacking
    (end of the association, unlinking from the transaction) of that child, or of everything in the
    holder, after it (genealogy.domain.holding.intervals; the graph answers them); nested, the intervals
    intersect. A shipment carries what its container held at the shipping instant, from then on.
    Starts are held for all time."""
    held: dict[str, Intervals] = {s: [(-INF, INF)] for s in starts}
    frontier = sorted(set(starts))
    for _ in range(max_levels):
        if not frontier:
            break
        grown: set[str] = set()
        for child, container, at, to in graph.packed_into(frontier):
            end = INF if to is None else to
            if ids.kind_of(container) == "shipment":
                spans = [(at, INF)] if any(lo <= at < hi for lo, hi in held[child]) else []
            else:
                spans = [(max(lo, at), min(hi, end)) for lo, hi in held[child] if max(lo, at) < min(hi, end)]
            merged = _merge(held.get(container, []) + spans)
            if merged != held.get(container, []):
                held[container] = merged
                grown.add(container)
        frontier = sorted(grown)
    return {n: spans for n, spans in held.items() if n not in starts}


# Relations whose edge says a unit (or lot) was made with the child: held for good, unless taken out.
MADE_WITH = ("consumed", "installed", "transformed", "supplied")


def pair_spans(installs: list[tuple[int, float, bool]], removals: list[tuple[int, float]], single: bool = False) -> Intervals:
    """When a unit held a component, from the installations (at, quantity, counted) and the removals
    (at, quantity) of that component into and out of it.

    The first installation holds from the start of time, as every genealogy edge does: its time is the
    unit's completion, which clocks on other systems (packing, shipping) need not agree with. A hold
    ends at the removal that takes out as much as was put in, and only if every installation counted
    its parts: a temporal-join edge ("consumed": the reel was on the slot) does not say how many parts
    went in, so no removal clears it. A serial (``single``) is one part however often it was joined.
    Installing again after a clearing removal holds anew, from that installation."""
    spans: Intervals = []
    lo, net, counted_all, held = -INF, 0.0, True, False
    events = sorted([(at, 0, q, counted) for at, q, counted in installs] + [(at, 1, q, True) for at, q in removals])
    for at, is_removal, quantity, counted in events:
        if not is_removal:
            if not held:
                lo, net, counted_all, held = (at if spans else -INF), 0.0, True, True
            net = 1.0 if single else net + quantity
            counted_all = counted_all and (counted or single)
        elif held:
            net -= quantity
            if counted_all and net <= 1e-9:
                spans.append((lo, at))
                held = False
    if held:
        spans.append((lo, INF))
    return spans


def _pair_spans(graph: Rework, units: list[str]) -> dict[tuple[str, str], Intervals]:
    """pair_spans of every (component, unit) pair with a removal, for these units."""
    removed: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for child, unit, at, quantity, _ in graph.removals(units):
        removed[(child, unit)].append((at, quantity))
    installs: dict[tuple[str, str], list[tuple[int, float, bool]]] = defaultdict(list)
    for child, parent, relation, at, quantity in graph.edges_up(sorted({c for c, _ in removed})):
        if (child, parent) in removed and relation in MADE_WITH:
            installs[(child, parent)].append((at, quantity, relation == "installed"))
    return {pair: pair_spans(installs[pair], rem, ids.kind_of(pair[0]) == "serial") for pair, rem in removed.items()}


def holding(graph: Rework, starts: list[str], within: set[str], max_levels: int = 64) -> dict[str, Intervals]:
    """containment() through everything, not only containers: when each node of ``within`` held any of
    the starts, once units can give parts back (rework). Made-with edges hold as pair_spans says;
    packings and associations as in containment(); a shipment carries what it shipped held then."""
    held: dict[str, Intervals] = {s: [(-INF, INF)] for s in starts}
    frontier = sorted(set(starts))
    for _ in range(max_levels):
        if not frontier:
            break
        rows = [r for r in graph.edges_up(frontier) if r[1] in within]
        # until when each packing held: (child, holder, from) -> to (a function of the three)
        until = {(c, h, at): INF if to is None else to for c, h, at, to in graph.packed_into(frontier)
                 if h in within} if any(rel not in MADE_WITH for _, _, rel, *_ in rows) else {}
        removed: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
        units = sorted({p for _, p, rel, *_ in rows if rel in MADE_WITH and ids.kind_of(p) == "serial"})
        for child, unit, at, quantity, _ in graph.removals(units) if units else []:
            removed[(child, unit)].append((at, quantity))
        installs: dict[tuple[str, str], list[tuple[int, float, bool]]] = defaultdict(list)
        adds: dict[str, Intervals] = defaultdict(list)
        for child, parent, relation, at, quantity in rows:
            if relation in MADE_WITH:
                installs[(child, parent)].append((at, quantity, relation == "installed"))
            elif ids.kind_of(parent) == "shipment":
                adds[parent] += [(at, INF)] if any(lo <= at < hi for lo, hi in held[child]) else []
            else:
                end = until.get((child, parent, at), INF)
                adds[parent] += [(max(lo, at), min(hi, end)) for lo, hi in held[child] if max(lo, at) < min(hi, end)]
        for (child, parent), inst in installs.items():
            adds[parent] += _intersect(held[child], pair_spans(inst, removed.get((child, parent), []), ids.kind_of(child) == "serial"))
        grown: set[str] = set()
        for node_id, spans in adds.items():
            merged = _merge(held.get(node_id, []) + spans)
            if spans and merged != held.get(node_id, []):
                held[node_id] = merged
                grown.add(node_id)
        frontier = sorted(grown)
    return {n: spans for n, spans in held.items() if n not in starts}


def _intersect(a: Intervals, b: Intervals) -> Intervals:
    return [(max(lo1, lo2), min(hi1, hi2)) for lo1, hi1 in a for lo2, hi2 in b if max(lo1, lo2) < min(hi1, hi2)]


def _merge(spans: Intervals) -> Intervals:
    out: Intervals = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _held(graph: Graph, target: str, reached: set[str], removed: list[tuple]) -> set[str] | None:
    """What of the reached held the target, with time: None when nothing reached (nor the target) ever
    left a reached holder, and nothing was reworked (then everything packed stayed packed, and reach is
    exact). Without rework, only the containers, shipments and business transactions are decided here;
    with it, everything."""
    packing = _packing(graph)
    packed = sorted(n for n in reached if ids.kind_of(n) in HOLDERS)
    rework = _rework(graph)
    if rework is not None and removed:
        return set(holding(rework, [target], reached | {target}))
    if packing is None or not packed:
        return None
    things = [target] + sorted(n for n in reached if ids.kind_of(n) not in HOLDERS)
    if not _closed(packing, packed, things):
        return None
    held = {n for n in containment(packing, things) if ids.kind_of(n) in HOLDERS}
    return reached - {n for n in reached if ids.kind_of(n) in HOLDERS} | held


def _closed(packing: Packing, holders: list[str], things: list[str]) -> bool:
    """Whether anything reached (or the target) left a reached holder: a closed interval between them.
    Asked by holder where the graph can (few holders, and closed intervals are rare), else by child."""
    inside = set(holders)
    among = set(things) | inside
    if callable(getattr(packing, "closed_in", None)):
        rows = packing.closed_in(holders)  # type: ignore[attr-defined]
    else:
        rows = packing.packed_into(sorted(among))
    return any(to is not None and child in among and holder in inside for child, holder, _, to in rows)


def _reworked(graph: Graph, target: str, reached: set[str]) -> list[tuple]:
    """Removals of the target, or of anything reached, out of a reached unit."""
    rework = _rework(graph)
    if rework is None or ids.kind_of(target) not in ids.KINDS:  # a process window's units keep the station's work
        return []
    candidates = sorted(n for n in reached | {target} if ids.kind_of(n) in ("serial", "lot", "class"))
    return [r for r in rework.removed_among(candidates) if r[1] in reached]


def _scope(graph: Graph, target: str, reached: set[str], levels: int, lot_scope: dict[str, int], since_ms, until_ms,
           known_lots: dict[str, str] | None = None) -> Recall:
    """known_lots: unit -> production lot, already looked up for (at least) every unit reached."""
    removed = _reworked(graph, target, reached)
    held = _held(graph, target, reached, removed)
    if held is not None:
        reached = held
    by_kind: dict[str, list[str]] = {k: [] for k in ids.KINDS}
    for node_id in sorted(reached):
        by_kind[ids.kind_of(node_id)].append(node_id)
    units = by_kind["serial"]
    if known_lots is None:
        unit_lots = graph.production_lots(units)
    else:
        unit_lots = {u: known_lots[u] for u in units if u in known_lots}
    lots = sorted(set(by_kind["lot"]) | set(unit_lots.values()))
    return Recall(target, since_ms, until_ms, units, lots, by_kind["container"], by_kind["shipment"],
                  lot_scope, levels, _widening_lots(graph, by_kind["lot"]), by_kind["transaction"],
                  by_kind["asset"], by_kind["location"], _rework_rows(graph, removed),
                  _where(graph, units + ([target] if ids.kind_of(target) == "serial" else [])))


# Most units a recall lists the places of (one lookup of their intervals, ~25 ms per 5,000 ids shipped).
WHERE_MAX = 10_000


def _where(graph: Graph, units: list[str]) -> dict[str, list[dict]] | None:
    """Each unit's direct places with from/to, from the stored intervals; orders are not places."""
    packing = _packing(graph)
    if packing is None or len(units) > WHERE_MAX:
        return None
    out: dict[str, list[dict]] = {}
    rows = set(packing.packed_into(units)) if units else set()
    for child, holder, lo, hi in sorted(rows, key=lambda r: (r[0], r[1], r[2], INF if r[3] is None else r[3])):
        if ids.kind_of(holder) != "transaction":
            out.setdefault(child, []).append({"node": holder, "from_ms": lo, "to_ms": hi})
    return out


def _rework_rows(graph: Graph, removed: list[tuple]) -> list[dict]:
    """The removals, each with whether the unit held none of that component from then on."""
    rework = _rework(graph)
    if rework is None or not removed:
        return []
    ends = _pair_spans(rework, sorted({unit for _, unit, *_ in removed}))
    out = []
    for child, unit, at, quantity, reason in sorted(removed, key=lambda r: (r[1], r[2], r[0])):
        spans = ends.get((child, unit), [])
        out.append({"unit": unit, "component": child, "removed_ms": at, "quantity": quantity, "reason": reason,
                    "cleared": any(hi == at for _, hi in spans)})
    return out



def _widening_lots(graph: Graph, lot_nodes: list[str]) -> dict[str, int]:
    """Lot nodes on the path: everything downstream of such a lot is in scope, whichever unit of
    the lot really held the target. Reports how many units each lot node brings in."""
    if (server := _traversals(graph)) is not None:
        return server.serials_downstream(lot_nodes) if lot_nodes else {}
    out = {}
    for lot in lot_nodes:
        reached, _ = forward(graph, lot)
        out[lot] = sum(1 for n in reached if ids.kind_of(n) == "serial")
    return out


def trace(graph: Graph, unit: str, max_depth: int = 64) -> dict:
    """Backward, as built: the unit's components, theirs, down to supplier lots; and where the unit
    was packed (containment: each container and shipment with from/to, ``now``: those still open)."""
    packing, rework = _packing(graph), _rework(graph)
    where = {n: spans for n, spans in (containment(packing, [unit]) if packing is not None else {}).items()
             if ids.kind_of(n) != "transaction"}  # where it was: places, not orders
    if (server := _traversals(graph)) is not None:
        graph = _Backward(server, unit, max_depth)  # type: ignore[assignment]
    levels = _children_by_level(graph, unit, max_depth)
    tree: dict[str, list[dict]] = {}
    seen = {unit}
    for rows in levels:
        for parent, child, relation, event_ms, station in rows:
            tree.setdefault(parent, []).append({"node": child, "relation": relation, "event_ms": event_ms, "station": station})
            seen.add(child)
    depth = len(levels)
    removed = _removed_in(rework, tree, seen) if rework is not None else []

    def build(node_id: str, path: frozenset) -> list[dict]:
        return [{**c, "components": build(c["node"], path | {c["node"]}) if c["node"] not in path else []}
                for c in sorted(tree.get(node_id, []), key=lambda c: c["node"])]

    leaves = sorted(n for n in seen if n != unit and n not in tree)
    return {"unit": unit, "components": build(unit, frozenset({unit})), "depth": depth,
            "leaves": leaves, "supplier_lots": [n for n in leaves if ids.kind_of(n) == "lot"],
            "node_count": len(seen) - 1,
            "containment": [{"node": n, "from_ms": int(lo), "to_ms": None if hi == INF else int(hi)}
                            for n, spans in sorted(where.items(), key=lambda kv: (kv[1][0][0], kv[0])) for lo, hi in spans],
            "now": sorted(n for n, spans in where.items() if spans[-1][1] == INF),
            "removed": removed}


def _removed_in(graph: Rework, tree: dict[str, list[dict]], seen: set[str]) -> list[dict]:
    """Rework in a trace: every removal out of the unit or its sub-assemblies; a component the unit
    (or sub-assembly) no longer holds gets ``removed_ms`` in the tree."""
    serials = sorted(n for n in seen if ids.kind_of(n) == "serial")
    rows = graph.removals(serials) if serials else []
    if not rows:
        return []
    spans = _pair_spans(graph, sorted({unit for _, unit, *_ in rows}))
    for parent, entries in tree.items():
        for entry in entries:
            ends = spans.get((entry["node"], parent))
            if ends is not None and (not ends or ends[-1][1] != INF):
                entry["removed_ms"] = int(ends[-1][1]) if ends else None
    return [{"unit": unit, "component": child, "removed_ms": at, "quantity": quantity, "reason": reason,
             "cleared": any(hi == at for _, hi in spans.get((child, unit), []))}
            for child, unit, at, quantity, reason in sorted(rows, key=lambda r: (r[1], r[2], r[0]))]


def _children_by_level(graph: Graph, unit: str, max_depth: int) -> list[list[tuple[str, str, str, int, str]]]:
    """graph.children() of each BFS level below the unit, at most max_depth levels (one call each)."""
    levels = []
    seen = {unit}
    frontier = [unit]
    while frontier and len(levels) < max_depth:
        rows = graph.children(frontier)
        levels.append(rows)
        nxt = {child for _, child, *_ in rows} - seen
        seen.update(nxt)
        frontier = sorted(nxt)
    return levels
