"""Lot or serial tracking? The trade-off, made computable.

Serial tracking costs something for every unit built (marking, scanning, one unit
record, one genealogy record per as-built link); it pays back only when a recall
happens, by recalling the units that really contain the bad input instead of every
unit of every production lot it reached. ``recall_cost`` is that comparison as a
pure function; ``granularity_report`` measures its inputs from ClickHouse.

Cost model (per year; money in one currency unit, whatever ``unit_value`` is in):

* recall cost per recalled unit = ``unit_value`` (replacement/retrofit of the unit; a
  fixed cost per recall event is the same under both granularities and cancels);
* expected recall cost = ``recall_probability`` x units recalled x ``unit_value``, where
  ``recall_probability`` is the expected number of recall events per year (a
  probability when below 1) and units recalled is the lot- or serial-level scope;
* extra cost of serial capture = ``units_per_year`` x (``serial_record_cost`` +
  ``edges_per_unit`` x ``edge_record_cost``). Defaults: 0.05 per unit for marking, scanning
  and the unit record, 0.002 per genealogy record; orders of magnitude, to be replaced
  by a plant's own figures;
* serial tracking pays off when expected saving (lot - serial scope) x p x value exceeds
  the extra capture cost. Break-even is reported three ways: the recall probability,
  the unit value, and the extra serial cost per unit at which both sides are equal.

IPC-1782 (traceability of electronic products) grades traceability in four levels,
separately for manufacturing process data (M1..M4) and for parts and materials
(P1..P4), from level 1 (basic: materials known per work order / lot) to level 4
(comprehensive: the exact materials of each individual unit, with process data).
Lot-level tracking of an item gives the level-1 granularity; serial units with
per-unit material links (what this pipeline captures) give the per-unit granularity
the upper levels ask for. The standard's other criteria (how much collection is
automated, retention, reporting lead time, process parameters) are not assessed here.
"""

from __future__ import annotations

from genealogy.domain import recall as recall_mod
from genealogy.sinks import queries as q
from genealogy.sinks.linkage import AS_BUILT
from genealogy.sinks.read_model import ReadModel

SERIAL_RECORD_COST = 0.05   # per unit: marking, scanning, the unit record
EDGE_RECORD_COST = 0.002    # per genealogy record (as-built link) captured and kept
UNIT_VALUE = 100.0          # cost of recalling one unit, used when the caller gives none
RECALL_PROBABILITY = 0.05   # expected recall events per year affecting the item

IPC_1782 = {
    "lot_tracking": "level 1 granularity (M1/P1): units and materials known per work order / production lot",
    "serial_tracking": "per-unit granularity of the upper levels (towards M4/P4): exact materials of each unit; "
                       "process-data and automation criteria not assessed",
}


def recall_cost(serial_units: float, lot_units: float, unit_value: float, recall_probability: float,
                units_per_year: float, *, edges_per_unit: float = 1.0, serial_record_cost: float = SERIAL_RECORD_COST,
                edge_record_cost: float = EDGE_RECORD_COST, item: str = "this item") -> dict:
    """Expected yearly cost of lot vs serial tracking for one item, the break-even and a verdict."""
    args = dict(serial_units=serial_units, lot_units=lot_units, unit_value=unit_value, recall_probability=recall_probability,
                units_per_year=units_per_year, edges_per_unit=edges_per_unit, serial_record_cost=serial_record_cost,
                edge_record_cost=edge_record_cost)
    for name, value in args.items():
        if value < 0:
            raise ValueError(f"{name} must not be negative (got {value})")
    avoided = lot_units - serial_units
    per_unit = serial_record_cost + edges_per_unit * edge_record_cost
    capture = units_per_year * per_unit
    recall_lot = recall_probability * lot_units * unit_value
    recall_serial = recall_probability * serial_units * unit_value
    saving = recall_lot - recall_serial
    net = saving - capture
    value_per_event = avoided * unit_value           # saved per recall event
    avoided_per_year = recall_probability * avoided  # units not recalled per year
    break_even = {
        "recall_probability": capture / value_per_event if value_per_event > 0 else None,
        "unit_value": capture / avoided_per_year if avoided_per_year > 0 else None,
        "serial_cost_per_unit": saving / units_per_year if units_per_year > 0 else None,
    }
    pays_off = net > 0
    if avoided <= 0:
        verdict = (f"serial tracking cannot pay off for {item}: a lot-level recall is no wider than a serial one "
                   f"({lot_units:,.0f} vs {serial_units:,.0f} units)")
    elif pays_off:
        verdict = (f"serial tracking pays off for {item}: expected saving {saving:,.2f} per year in avoided recalls "
                   f"({avoided:,.0f} units fewer per recall) against {capture:,.2f} extra capture cost, net {net:,.2f} per year; "
                   f"break-even at {break_even['recall_probability']:.3g} recalls per year")
    else:
        conditions = [f"{break_even['recall_probability']:.3g} recalls per year"] if break_even["recall_probability"] is not None else []
        conditions += [f"a unit value of {break_even['unit_value']:,.2f}"] if break_even["unit_value"] is not None else []
        verdict = (f"serial tracking does not pay off for {item}: expected saving {saving:,.2f} per year "
                   f"({avoided:,.0f} units fewer per recall) does not exceed the extra capture cost {capture:,.2f}"
                   + (f"; it would at {' or '.join(conditions)}" if conditions else "; a recalled unit costs nothing"))
    return {
        "item": item, "inputs": args,
        "units_avoided_per_recall": avoided,
        "extra_cost_per_unit": per_unit,
        "expected_recall_cost": {"lot": recall_lot, "serial": recall_serial},
        "serial_capture_cost": capture,
        "total_cost": {"lot": recall_lot, "serial": recall_serial + capture},
        "expected_saving": saving,
        "net_benefit": net,
        "pays_off": pays_off,
        "break_even": break_even,
        "verdict": verdict,
    }


def _item_of(node_id: str) -> str:
    return node_id.split(":", 2)[1]


def item_profile(read_model: ReadModel, item: str, examples: int = 20) -> dict:
    """What the item's data says: volume, production lots, genealogy records per unit, input lots."""
    prefix = f"serial:{item}:"
    units, lots, max_lot = read_model.rows(q.ITEM_STATS_SQL, prefix=prefix)[0]
    edges = int(read_model.rows(q.ITEM_EDGES_SQL, prefix=prefix, as_built=AS_BUILT)[0][0])
    inputs = read_model.rows(q.INPUT_LOTS_SQL, prefix=prefix, as_built=AS_BUILT)
    widening = [{"lot": lot, "units": int(s)} for lot, s, _, w in inputs if w]
    n = len(inputs)
    return {
        "item": item, "units": int(units), "production_lots": int(lots),
        "avg_lot_size": round(units / lots, 2) if lots else 0.0, "max_lot_size": int(max_lot or 0),
        "as_built_edges": edges, "edges_per_unit": round(edges / units, 3) if units else 0.0,
        "input_lots": n,
        "widening_lots": {"count": len(widening), "examples": widening[:examples]},
        "typical_recall": {
            "basis": "one bad input lot of the item (average over its directly consumed lots)",
            "serial": round(sum(r[1] for r in inputs) / n, 2) if n else 0.0,
            "lot": round(sum(r[2] for r in inputs) / n, 2) if n else 0.0,
        },
    }


def granularity_report(read_model: ReadModel, item: str | None = None, target: str | None = None, *, since_ms: int | None = None,
                       until_ms: int | None = None, unit_value: float = UNIT_VALUE,
                       recall_probability: float = RECALL_PROBABILITY, units_per_year: float | None = None,
                       serial_record_cost: float = SERIAL_RECORD_COST, edge_record_cost: float = EDGE_RECORD_COST) -> dict:
    """Per produced item (or the one given): its profile, the cost model and a verdict.

    The cost model's scopes come from the target's recall when a target is given and reaches the
    item, else from the item's typical input-lot recall. ``units_per_year`` defaults to the item's
    units in the store (the store is taken as one year of production)."""
    items = [item] if item else [r[0] for r in read_model.rows(q.ITEMS_SQL)]
    target_section = None
    r = None
    if target:
        r = recall_mod.recall(read_model, target, since_ms, until_ms)
        target_section = {"target": target, "serial": len(r.units), "lot": r.lot_scope_count,
                          "production_lots": r.production_lots, "widened_by": r.widened_by}
    out = []
    for it in items:
        profile = item_profile(read_model, it)
        serial, lot, basis = profile["typical_recall"]["serial"], profile["typical_recall"]["lot"], profile["typical_recall"]["basis"]
        if r is not None:
            t_serial = sum(1 for u in r.units if _item_of(u) == it)
            t_lot = sum(n for pl, n in r.production_lots.items() if _item_of(pl) == it)
            profile["target_recall"] = {"serial": t_serial, "lot": t_lot}
            if t_lot or t_serial:
                serial, lot, basis = t_serial, t_lot, f"recall of {target}"
        volume = profile["units"] if units_per_year is None else units_per_year
        profile["cost"] = recall_cost(serial, lot, unit_value, recall_probability, volume,
                                      edges_per_unit=profile["edges_per_unit"], serial_record_cost=serial_record_cost,
                                      edge_record_cost=edge_record_cost, item=it)
        profile["cost"]["basis"] = basis
        out.append(profile)
    return {"target": target_section, "items": out, "ipc1782": IPC_1782}


def format_granularity(report: dict):
    """A rich renderable for humans."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts = []
    t = report["target"]
    if t:
        parts.append(Text(f"Recall of {t['target']}: serial-level {t['serial']:,} units, lot-level {t['lot']:,} units; "
                          f"widened by {len(t['widened_by'])} lot node(s)"
                          + (": " + ", ".join(f"{k} ({v:,})" for k, v in list(t["widened_by"].items())[:5]) if t["widened_by"] else "")))
    table = Table("item", "units", "prod. lots", "avg lot", "edges/unit", "input lots", "widening lots",
                  "serial scope", "lot scope", "lot cost/yr", "serial cost/yr", "net/yr", title="Lot vs serial tracking",
                  title_justify="left")
    for p in report["items"]:
        c = p["cost"]
        table.add_row(p["item"], f"{p['units']:,}", f"{p['production_lots']:,}", f"{p['avg_lot_size']:,.1f}", f"{p['edges_per_unit']:.2f}",
                      f"{p['input_lots']:,}", f"{p['widening_lots']['count']:,}", f"{c['inputs']['serial_units']:,.1f}",
                      f"{c['inputs']['lot_units']:,.1f}", f"{c['total_cost']['lot']:,.2f}", f"{c['total_cost']['serial']:,.2f}",
                      f"{c['net_benefit']:,.2f}")
    parts.append(table)
    parts += [Text(f"{p['cost']['verdict']} (basis: {p['cost']['basis']})") for p in report["items"]]
    parts.append(Text("IPC-1782: lot tracking = " + report["ipc1782"]["lot_tracking"] + "; serial tracking = "
                      + report["ipc1782"]["serial_tracking"], style="dim"))
    return Group(*parts)
