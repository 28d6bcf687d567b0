"""Brute-force reference: the genealogy a capture log implies, computed the slow, obvious way.

Shares no code with streams/ or genealogy/recall.py beyond the node-id format,
so a test comparing the two can fail.
"""

from __future__ import annotations

from collections import defaultdict


def nid(ref: dict) -> str:
    return f"{ref['kind']}:{ref['item']}:{ref['ident']}"


def unique(events: list[tuple[str, dict]], skip_ids: set[str] = frozenset()) -> list[tuple[str, dict]]:
    seen, out = set(), []
    for kind, e in events:
        if e["event_id"] in seen or e["event_id"] in skip_ids:
            continue
        seen.add(e["event_id"])
        out.append((kind, e))
    return out


def consumed(events: list[tuple[str, dict]]) -> set[tuple[str, str]]:
    """(material, unit) for every completion, by scanning every material event of its station."""
    out = set()
    material_events = [(k, e) for k, e in events if k in ("genealogy.MaterialLoaded", "genealogy.MaterialUnloaded")]
    for kind, c in events:
        if kind != "genealogy.UnitCompleted":
            continue
        state = {}
        relevant = [(e["event_ms"], 1 if k.endswith("Loaded") else 0, e["event_id"], e["slot"], nid(e["material"]))
                    for k, e in material_events if e["station"] == c["station"] and e["event_ms"] <= c["event_ms"]]
        for _, rank, _, slot, material in sorted(relevant):
            state[(slot, material)] = rank == 1
        out.update((material, nid(c["unit"])) for (slot, material), on in state.items() if on)
    return out


def consumed_sweep(events: list[tuple[str, dict]]) -> set[tuple[str, str]]:
    """The same answer as ``consumed`` in O(n log n), for feeds of millions of events: per station,
    apply material events in time order up to each completion. Checked against ``consumed``."""
    by_station = defaultdict(list)
    for kind, e in events:
        if kind in ("genealogy.MaterialLoaded", "genealogy.MaterialUnloaded"):
            rank = 1 if kind.endswith("Loaded") else 0
            by_station[e["station"]].append((e["event_ms"], 0, rank, e["event_id"], e["slot"], nid(e["material"])))
        elif kind == "genealogy.PackageUnloaded":  # every material with that identifier, whatever its slot
            by_station[e["station"]].append((e["event_ms"], 0, 0, e["event_id"], None, e["package"]))
        elif kind == "genealogy.UnitCompleted":
            # Sorts after every material event at the same time: those count for it.
            by_station[e["station"]].append((e["event_ms"], 1, 0, e["event_id"], "", nid(e["unit"])))
    out = set()
    for timeline in by_station.values():
        on = {}
        for _, is_completion, rank, _, slot, node_id in sorted(timeline):
            if is_completion:
                out.update((material, node_id) for (_, material), loaded in on.items() if loaded)
            elif slot is None:
                for key in on:
                    if key[1].split(":", 2)[2] == node_id:
                        on[key] = False
            else:
                on[(slot, node_id)] = rank == 1
    return out


def standing(events: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The events no error declaration retracted: a declaration of event X takes back X and every
    event mapped from it (ids X#...)."""
    retracted = {e["retracts"] for k, e in events if k == "genealogy.EventRetracted"}
    return [(k, e) for k, e in events if k != "genealogy.EventRetracted"
            and e["event_id"] not in retracted and e["event_id"].split("#")[0] not in retracted]


def edges(events: list[tuple[str, dict]]) -> set[tuple[str, str, str]]:
    events = standing(events)
    out = {(m, u, "consumed") for m, u in consumed_sweep(events)}
    for kind, e in events:
        if kind == "genealogy.ComponentInstalled":
            out.add((nid(e["component"]), nid(e["unit"]), "installed"))
        elif kind == "genealogy.LotTransformed":
            out.update((nid(i["node"]), nid(o["node"]), "transformed") for i in e["inputs"] for o in e["outputs"])
        elif kind == "genealogy.Packed":
            out.update((nid(c), nid(e["container"]), "packed") for c in e["contents"])
        elif kind == "genealogy.MaterialIdentified":
            out.add((nid(e["supplier_lot"]), nid(e["package"]), "supplied"))
        elif kind == "genealogy.Associated":
            out.update((nid(c), nid(e["parent"]), "associated") for c in e["contents"])
        elif kind == "genealogy.TransactionLinked":
            out.update((nid(m), nid(e["transaction"]), "transacted") for m in e["members"])
    return out


def production_lots(events: list[tuple[str, dict]]) -> dict[str, str]:
    return {nid(e["unit"]): f"lot:{e['unit']['item']}:{e['production_lot']}"
            for k, e in standing(events) if k == "genealogy.UnitCompleted"}


def reach_forward(edge_set, target: str) -> set[str]:
    parents = defaultdict(set)
    for child, parent, *_ in edge_set:
        parents[child].add(parent)
    seen, stack = set(), [target]
    while stack:
        for p in parents[stack.pop()]:
            if p not in seen and p != target:
                seen.add(p)
                stack.append(p)
    return seen


def reach_backward(edge_set, target: str) -> set[str]:
    return reach_forward({(p, c) for c, p, *_ in edge_set}, target)


def lot_scope(edge_set, lots: dict[str, str], target: str) -> dict[str, int]:
    """Contract every unit into its production lot and walk the contracted graph."""
    rep = lambda n: lots.get(n, n)  # noqa: E731
    contracted = {(rep(c), rep(p)) for c, p, *_ in edge_set if p.split(":", 1)[0] in ("serial", "lot")}
    reached = reach_forward(contracted, rep(target)) | {rep(target)}
    sizes = defaultdict(int)
    for lot in lots.values():
        sizes[lot] += 1
    return {lot: sizes[lot] for lot in sorted(reached) if sizes.get(lot)}


def held_over_time(events: list[tuple[str, dict]]) -> dict[str, set[str]]:
    """node -> every container, shipment and business transaction that ever held it, by replaying packings
    (Packed, Associated, TransactionLinked) and unpackings (Unpacked; no contents = everything) in time
    order and looking at the whole state after each one. A shipment carries what the shipped thing held
    at the shipping instant."""
    log = []
    for kind, e in standing(events):
        if kind in ("genealogy.Packed", "genealogy.Associated", "genealogy.TransactionLinked"):
            parent = {"genealogy.Packed": e.get("container"), "genealogy.Associated": e.get("parent"),
                      "genealogy.TransactionLinked": e.get("transaction")}[kind]
            contents = e["members"] if kind == "genealogy.TransactionLinked" else e["contents"]
            log += [(e["event_ms"], "add", nid(c), nid(parent)) for c in contents]
        elif kind == "genealogy.Unpacked":
            log += [(e["event_ms"], "del", nid(c) if c else "", nid(e["container"])) for c in (e["contents"] or [None])]
    inside: set[tuple[str, str]] = set()
    held: dict[str, set[str]] = defaultdict(set)

    def above(node: str) -> set[str]:
        out, stack = set(), [node]
        while stack:
            n = stack.pop()
            for c, p in inside:
                if c == n and p not in out:
                    out.add(p)
                    stack.append(p)
        return out

    everything = {c for _, _, c, _ in log if c} | {p for _, _, _, p in log}
    for _, action, child, parent in sorted(log):
        if parent.startswith("shipment:"):
            for n in everything:
                if n == child or child in above(n):
                    held[n].add(parent)
            continue
        if action == "add":
            inside.add((child, parent))
        else:
            inside.difference_update({(c, p) for c, p in inside if p == parent and (child == "" or c == child)})
        for n in everything:
            held[n].update(above(n))
    return held


def held_with_rework(target: str, made: list[tuple], packs: list[tuple], unpacks: list[tuple], removes: list[tuple]) -> set[str]:
    """Everything that ever held the target, by looking at the whole state at every instant where it can
    change. made: (child, parent, relation, at, quantity) genealogy edges; packs: (child, container or
    shipment, at); unpacks: (child or "" = everything, container, at); removes: (child, unit, at, quantity).

    A made-with pair holds from the start of time until a removal takes out as much as its installations
    put in, each of which counted its parts ("installed", or a serial child: one part); installed again
    after that, it holds from then. A packing holds from its time until the next unpacking of that child
    (or of everything). A shipment carries what the shipped thing held at the shipping instant."""
    inf = float("inf")
    times = sorted({-inf} | {e[3] for e in made} | {e[2] for e in packs} | {e[2] for e in unpacks} | {e[2] for e in removes})

    def pair_holds(child: str, parent: str, t: float) -> bool:
        events = sorted([(m[3], 0, m[4], m[2] == "installed" or child.startswith("serial:")) for m in made
                         if (m[0], m[1]) == (child, parent)] + [(r[2], 1, r[3], True) for r in removes if (r[0], r[1]) == (child, parent)])
        if not any(kind == 0 for _, kind, _, _ in events):
            return False
        state, cleared_once = None, False  # state: None = not held, else [net, all counted]
        for at, kind, quantity, counted in events:
            if at > t:
                break
            if kind == 0:
                state = state or [0.0, True]
                state[0] = 1.0 if child.startswith("serial:") else state[0] + quantity
                state[1] = state[1] and counted
            elif state is not None:
                state[0] -= quantity
                if state[1] and state[0] <= 1e-9:
                    state, cleared_once = None, True
        # before the first clearing the pair holds from the start of time, installed yet or not
        return state is not None or not cleared_once

    reach_at: dict[float, set[str]] = {}
    ever: set[str] = set()
    for t in times:
        active = [(c, p) for c, p in {(m[0], m[1]) for m in made} if pair_holds(c, p, t)]
        for c, container, at in packs:
            if container.startswith("shipment:") or at > t:
                continue
            if not any(at < u <= t and container == k and (child in ("", c)) for child, k, u in unpacks):
                active.append((c, container))
        reach, stack = {target}, [target]
        while stack:
            n = stack.pop()
            for c, p in active:
                if c == n and p not in reach:
                    reach.add(p)
                    stack.append(p)
        for c, shipment, at in packs:
            if shipment.startswith("shipment:") and at <= t and c in (reach if at == t else reach_at[at]):
                reach.add(shipment)
        reach_at[t] = reach
        ever |= reach
    return ever - {target}
