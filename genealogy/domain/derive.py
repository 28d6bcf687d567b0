"""From a decoded capture batch to genealogy edges, unit records and dead letters.

Pure: the join state lives in whatever mapping the caller passes (a Faust
table in the worker, a dict in tests), so the whole derivation runs without a
broker.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field

from genealogy.domain import ids
from genealogy.domain.join import Completion, Consumption, Late, StationJoin

# Event times outside this range are impossible for a plant feed: before 2000 or
# more than a day in the future of the processing clock.
MIN_EVENT_MS = 946_684_800_000
FUTURE_SLACK_MS = 24 * 3600 * 1000

TEMPORAL = {"genealogy.MaterialLoaded", "genealogy.MaterialUnloaded", "genealogy.PackageUnloaded", "genealogy.UnitCompleted",
            "genealogy.StationHeartbeat"}


# Node kinds each stateless relation accepts at its ends.
TRANSACTION_MEMBERS = ("serial", "lot", "class", "container", "shipment", "asset", "location", "party")
ASSOCIATION_PARENTS = ("asset", "location", "serial", "container")
ASSOCIATION_CONTENTS = ("serial", "lot", "class", "container", "asset")
# What holds things for a time (a packing or an association, ended by an Unpacked).
HOLDERS = ("container", "shipment", "asset", "location", "serial")


class Invalid(ValueError):
    """An event that cannot be used; the message names the field and the reason."""


@dataclass(slots=True)
class Rejected:
    kind: str
    event: dict
    stage: str  # validate | late
    reason: str


@dataclass(slots=True)
class Derived:
    edges: list[dict] = field(default_factory=list)
    units: list[dict] = field(default_factory=list)
    facts: list[dict] = field(default_factory=list)
    retractions: list[dict] = field(default_factory=list)  # what error declarations take back (``retractions``)
    unpacked: list[dict] = field(default_factory=list)     # contents taken out of containers: packed edges end
    removals: list[dict] = field(default_factory=list)     # parts taken out of units at rework (``removals``)
    rejected: list[Rejected] = field(default_factory=list)
    pending: dict[str, int] = field(default_factory=dict)  # station -> completions waiting for the watermark
    max_ms: dict[str, int] = field(default_factory=dict)   # station -> newest event time


def node_of(ref: dict, field_name: str, kinds: tuple[str, ...]) -> str:
    try:
        node_id = ids.node(ref["kind"], ref["item"], ref["ident"])
    except ids.InvalidId as exc:
        raise Invalid(f"{field_name}: {exc}") from None
    if ref["kind"] not in kinds:
        raise Invalid(f"{field_name}: kind {ref['kind']!r} is not allowed here (expected {' or '.join(kinds)})")
    return node_id


def _check_common(kind: str, e: dict, source: str, now_ms: int) -> None:
    if not e["event_id"].strip():
        raise Invalid("event_id is empty")
    if not e["station"].strip():
        raise Invalid("station is empty")
    if not MIN_EVENT_MS <= e["event_ms"] <= now_ms + FUTURE_SLACK_MS:
        raise Invalid(f"event_ms {e['event_ms']} is not a plausible time (before 2000 or more than a day ahead)")
    if kind in TEMPORAL and e["station"] != source:
        raise Invalid(f"station {e['station']!r} differs from the batch source {source!r}; station events must be keyed by their station")


def edge(child: str, parent: str, relation: str, event_ms: int, station: str, source_event: str, *, operator: str = "",
         work_order: str = "", parent_lot: str = "", quantity: float = 1.0) -> dict:
    return {
        "edge_id": ids.edge_id(child, parent, relation, source_event),
        "child": child, "parent": parent, "relation": relation,
        "event_ms": event_ms, "station": station, "operator": operator or "",
        "work_order": work_order, "parent_lot": parent_lot, "quantity": float(quantity),
        "source_event": source_event,
    }


def consumption_edge(c: Consumption, station: str) -> dict:
    comp = c.completion
    return edge(c.material, comp.unit, "consumed", comp.event_ms, station, f"{comp.event_id}+{c.load_event_id}",
                operator=comp.operator, work_order=comp.work_order, parent_lot=comp.production_lot)


def production_lot_node(unit: str, production_lot: str) -> str:
    item = ids.parse(unit).item
    try:
        return ids.node("lot", item, production_lot)
    except ids.InvalidId as exc:
        raise Invalid(f"production_lot: {exc}") from None


def stateless_edges(kind: str, e: dict) -> list[dict]:
    op = e.get("operator") or ""
    if kind == "genealogy.ComponentInstalled":
        unit = node_of(e["unit"], "unit", ("serial",))
        comp = node_of(e["component"], "component", ("serial", "lot", "class"))
        if e["quantity"] <= 0:
            raise Invalid(f"quantity {e['quantity']} must be positive")
        return [edge(comp, unit, "installed", e["event_ms"], e["station"], e["event_id"], operator=op, quantity=e["quantity"])]
    if kind == "genealogy.LotTransformed":
        if not e["inputs"] or not e["outputs"]:
            raise Invalid("a transformation needs at least one input and one output")
        ins = [(node_of(q["node"], f"inputs[{i}]", ("serial", "lot", "class")), q["quantity"]) for i, q in enumerate(e["inputs"])]
        outs = [node_of(q["node"], f"outputs[{i}]", ("serial", "lot", "class")) for i, q in enumerate(e["outputs"])]
        if any(q < 0 for _, q in ins):
            raise Invalid("input quantities must not be negative")
        return [edge(i, o, "transformed", e["event_ms"], e["station"], e["event_id"], operator=op,
                     work_order=e["work_order"], quantity=q) for i, q in ins for o in outs]
    if kind == "genealogy.MaterialIdentified":
        # Forward from the supplier lot reaches its packages, then what consumed them.
        package = node_of(e["package"], "package", ("lot", "serial"))
        supplier_lot = node_of(e["supplier_lot"], "supplier_lot", ("lot",))
        if package == supplier_lot:
            raise Invalid("package and supplier_lot are the same node")
        return [edge(supplier_lot, package, "supplied", e["event_ms"], e["station"], e["event_id"], operator=op)]
    if kind == "genealogy.TransactionLinked":
        transaction = node_of(e["transaction"], "transaction", ("transaction",))
        if not e["members"]:
            raise Invalid("a transaction link needs at least one member")
        members = [node_of(ref, f"members[{i}]", TRANSACTION_MEMBERS) for i, ref in enumerate(e["members"])]
        return [edge(m, transaction, "transacted", e["event_ms"], e["station"], e["event_id"], operator=op) for m in members]
    if kind == "genealogy.Packed":
        container = node_of(e["container"], "container", ("container", "shipment"))
        if not e["contents"]:
            raise Invalid("a packing event needs at least one content")
        contents = [node_of(ref, f"contents[{i}]", ("serial", "lot", "class", "container")) for i, ref in enumerate(e["contents"])]
        return [edge(c, container, "packed", e["event_ms"], e["station"], e["event_id"], operator=op) for c in contents]
    if kind == "genealogy.Associated":
        # A lasting association (EPCIS AssociationEvent): what is fitted, installed or put into an asset, a
        # unit, a container or a location. Forward from a content reaches its parent, as from a packed unit.
        parent = node_of(e["parent"], "parent", ASSOCIATION_PARENTS)
        if not e["contents"]:
            raise Invalid("an association needs at least one content")
        contents = [node_of(ref, f"contents[{i}]", ASSOCIATION_CONTENTS) for i, ref in enumerate(e["contents"])]
        if parent in contents:
            raise Invalid(f"contents: {parent} is associated with itself")
        return [edge(c, parent, "associated", e["event_ms"], e["station"], e["event_id"], operator=op) for c in contents]
    raise Invalid(f"unknown event kind {kind}")


def station_fact(kind: str, e: dict) -> dict:
    if kind == "genealogy.UnitScrapped":
        unit = node_of(e["unit"], "unit", ("serial",))
        if not e["reason"].strip():
            raise Invalid("reason is empty")
        subject, detail, reason = unit, "scrapped", e["reason"]
    elif kind == "genealogy.UnitTested":
        unit = node_of(e["unit"], "unit", ("serial",))
        if not e["result"].strip():
            raise Invalid("result is empty")
        subject, detail, reason = unit, e["result"].strip(), e["test"]
    elif kind == "genealogy.UnitRouted":
        unit = node_of(e["unit"], "unit", ("serial",))
        if not e["name"].strip():
            raise Invalid(f"the {e['route']} is empty")
        subject, detail, reason = unit, f"{e['route']} {e['name'].strip()}", e["note"]
    else:
        if not e["state"].strip():
            raise Invalid("state is empty")
        subject, detail, reason = "", e["state"], e.get("reason") or ""
    return {"event_id": e["event_id"], "kind": kind.rsplit(".", 1)[-1], "station": e["station"],
            "event_ms": e["event_ms"], "subject": subject, "detail": detail, "reason": reason}


RETRACTABLE = ("genealogy.LotTransformed", "genealogy.Packed", "genealogy.TransactionLinked", "genealogy.UnitCompleted",
               "genealogy.Associated", "genealogy.Unpacked")


def unpackings(e: dict) -> list[dict]:
    """An Unpacked: one row per content taken out (child "" when everything was); out of a transaction:
    unlinked from it (EPCIS TransactionEvent DELETE)."""
    container = node_of(e["container"], "container", HOLDERS + ("transaction",))
    allowed = TRANSACTION_MEMBERS if e["container"]["kind"] == "transaction" else ASSOCIATION_CONTENTS
    contents = [node_of(r, f"contents[{i}]", allowed) for i, r in enumerate(e["contents"])]
    return [{"child": c, "parent": container, "event_ms": e["event_ms"], "station": e["station"],
             "source_event": e["event_id"]} for c in (contents or [""])]


def removal(e: dict) -> dict:
    """A ComponentRemoved: a removal row; whether it ends what the unit holds is decided against what
    was installed (genealogy.domain.recall.holding), which the stream does not keep."""
    unit = node_of(e["unit"], "unit", ("serial",))
    component = node_of(e["component"], "component", ("serial", "lot", "class"))
    if not e["quantity"] > 0:
        raise Invalid(f"quantity {e['quantity']} must be positive")
    return {"child": component, "parent": unit, "quantity": float(e["quantity"]), "reason": e["reason"],
            "event_ms": e["event_ms"], "station": e["station"], "source_event": e["event_id"]}


def retractions(e: dict) -> list[dict]:
    """An EventRetracted: the edges and unit completions its retracted event contributed, recomputed from
    the same content (so the same deterministic edge ids), each with the declaration. The join is not
    consulted: a completion is taken back as a unit row, not as the consumption it matched."""
    if not e["retracts"].strip():
        raise Invalid("retracts is empty")
    if not e["events"]:
        raise Invalid("a retraction needs the retracted event's content")
    declared = {"declaration": e["event_id"], "reason": e["reason"], "corrective": ",".join(e["corrective_event_ids"]),
                "event_ms": e["event_ms"], "station": e["station"]}
    out: list[dict] = []
    for kind, inner in e["events"]:
        if kind == "genealogy.Unpacked":  # a declared DELETE: the packing or association did not end then
            out.extend({"kind": "unpack", "edge_id": 0, "child": x["child"], "parent": x["parent"], "relation": "",
                        "source_event": x["source_event"], **declared} for x in unpackings(inner))
        elif kind == "genealogy.UnitCompleted":
            unit = node_of(inner["unit"], "events[].unit", ("serial",))
            out.append({"kind": "unit", "edge_id": 0, "child": unit, "parent": production_lot_node(unit, inner["production_lot"]),
                        "relation": "", "source_event": inner["event_id"], **declared})
        elif kind in RETRACTABLE:
            out.extend({"kind": "edge", "edge_id": x["edge_id"], "child": x["child"], "parent": x["parent"],
                        "relation": x["relation"], "source_event": x["source_event"], **declared}
                       for x in stateless_edges(kind, inner))
        else:
            raise Invalid(f"{kind} cannot be retracted")
    return out


def derive(batch: dict, states: MutableMapping[str, dict], grace_ms: int, retention_ms: int,
           now_ms: int | None = None) -> Derived:
    """Apply one capture batch. Join state of each station touched is read once; what changed is written back once."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    out = Derived()
    source = batch["source"]
    joins: dict[str, StationJoin] = {}

    def join_for(station: str) -> StationJoin:
        if station not in joins:
            joins[station] = StationJoin.load(states, station, grace_ms, retention_ms)
        return joins[station]

    def collect(station: str, result: list[Consumption] | Late, kind: str, e: dict) -> None:
        if isinstance(result, Late):
            out.rejected.append(Rejected(kind, e, "late", result.reason))
        else:
            out.edges.extend(consumption_edge(c, station) for c in result)

    for kind, e in batch["events"]:
        try:
            _check_common(kind, e, source, now_ms)
            if kind in ("genealogy.MaterialLoaded", "genealogy.MaterialUnloaded"):
                material = node_of(e["material"], "material", ("serial", "lot", "class"))
                if not e["slot"].strip():
                    raise Invalid("slot is empty")
                j = join_for(e["station"])
                collect(e["station"], j.material(e["event_id"], e["event_ms"], e["slot"], material,
                                                 kind == "genealogy.MaterialLoaded"), kind, e)
            elif kind == "genealogy.PackageUnloaded":
                package = e["package"].strip()
                if not package:
                    raise Invalid("package is empty")
                collect(e["station"], join_for(e["station"]).package_unloaded(e["event_id"], e["event_ms"], package), kind, e)
            elif kind == "genealogy.UnitCompleted":
                unit = node_of(e["unit"], "unit", ("serial",))
                lot = production_lot_node(unit, e["production_lot"])
                if not e["work_order"].strip():
                    raise Invalid("work_order is empty")
                c = Completion(e["event_id"], e["event_ms"], unit, lot, e["work_order"], e.get("operator") or "")
                result = join_for(e["station"]).completed(c)
                if not isinstance(result, Late):
                    out.units.append({"unit": unit, "production_lot": lot, "work_order": c.work_order,
                                      "station": e["station"], "operator": c.operator,
                                      "event_ms": c.event_ms, "event_id": c.event_id})
                collect(e["station"], result, kind, e)
            elif kind == "genealogy.StationHeartbeat":
                collect(e["station"], join_for(e["station"]).heartbeat(e["event_ms"]), kind, e)
            elif kind == "genealogy.Unpacked":
                out.unpacked.extend(unpackings(e))
            elif kind == "genealogy.EventRetracted":
                out.retractions.extend(retractions(e))
            elif kind == "genealogy.ComponentRemoved":
                out.removals.append(removal(e))
            elif kind in ("genealogy.UnitScrapped", "genealogy.UnitTested", "genealogy.UnitRouted",
                          "genealogy.MachineStateChanged"):
                out.facts.append(station_fact(kind, e))
            else:
                out.edges.extend(stateless_edges(kind, e))
        except Invalid as exc:
            out.rejected.append(Rejected(kind, e, "validate", str(exc)))

    for station, j in joins.items():
        j.save(states, station)
        out.pending[station] = j.pending
        if j.state["max_ms"] is not None:
            out.max_ms[station] = j.state["max_ms"]
    return out


def replay(batches: Iterable[dict], grace_ms: int, retention_ms: int, now_ms: int | None = None) -> dict:
    """The join state (the table a worker holds) after the given capture batches, applied in order:
    what a worker that handled exactly these messages would hold."""
    table: dict = {}
    for batch in batches:
        derive(batch, table, grace_ms, retention_ms, now_ms)
    return table
