"""Data-quality report: does this plant's serial data really join?

Everything is counted by ClickHouse over deduplicated reads (``DISTINCT``,
``uniqExact``, ``IN (SELECT ...)`` sets, ``dead_letters_final``), so redelivered
rows that are not merged yet never change a number.

Definitions (node ids are ``kind:item:ident``; *as-built* edges are the relations
``consumed``, ``installed`` and ``transformed``, i.e. everything but ``packed``):

* **produced unit**: a ``units`` row. A **produced item** is an item with at least
  one produced unit.
* **received** node: a node that never is the parent of an as-built edge (a leaf of
  the as-built graph) and is either a ``lot`` or a ``serial`` of an item this plant
  does not produce. That is what a supplier delivers.
* **package without a supplier lot**: a consumed lot (a reel, a tray) of an item some of whose
  packages were identified with their supplier's lot (``supplied`` edges, CFX MaterialsInitialized),
  that has none itself: a recall of its supplier lot would miss what it went into.
* **unaccounted serial**: a serial that is the child of an as-built edge, has no
  ``units`` row and is not received, i.e. it was built here (it has components) or
  its item is produced here, but its production was never recorded.
* **complete as-built genealogy**: a produced unit with at least one as-built edge
  into it and no unaccounted serial anywhere in its backward as-built closure
  (through lots too: a serial transformed into a lot that the unit consumed counts).
  Lots and ``class:`` inputs never make a unit incomplete; class-level inputs are
  reported on their own. Computed without per-unit closures: the unaccounted
  serials are found in one query, then carried *forward* along as-built edges one
  level per query (at most ``max_levels``); a unit is incomplete iff it was reached.
"""

from __future__ import annotations

from genealogy.domain import ids
from genealogy.sinks import queries as q
from genealogy.sinks.read_model import ReadModel

AS_BUILT = ["consumed", "installed", "transformed"]
LINK = ["consumed", "installed"]
EXAMPLES = 20


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _counted(rows: list[tuple]) -> int:
    return int(rows[0][-1]) if rows else 0


def tainted_units(read_model: ReadModel, max_levels: int = 64) -> tuple[list[str], dict[str, str], bool]:
    """Unaccounted serials; every node that has one in its as-built closure -> one such serial (itself
    for the serials); whether ``max_levels`` cut the walk short (a cycle cannot: nodes are visited once)."""
    bad = [r[0] for r in read_model.rows(q.UNACCOUNTED_SQL, as_built=AS_BUILT)]
    origin = {b: b for b in bad}
    frontier = bad
    for _ in range(max_levels):
        if not frontier:
            return bad, origin, False
        nxt = []
        for child, parent in read_model.rows(q.AS_BUILT_PARENTS_SQL, nodes=frontier, as_built=AS_BUILT):
            if parent not in origin:
                origin[parent] = origin[child]
                nxt.append(parent)
        frontier = sorted(nxt)
    return bad, origin, True


def linkage_report(read_model: ReadModel, examples: int = EXAMPLES, max_levels: int = 64) -> dict:
    bad, origin, truncated = tainted_units(read_model, max_levels)
    tainted = sorted(n for n in origin if ids.kind_of(n) == "serial")
    by_item = []
    for item, units, lots, built, complete in read_model.rows(q.UNITS_BY_ITEM_SQL, as_built=AS_BUILT, tainted=tainted):
        by_item.append({"item": item, "units": int(units), "production_lots": int(lots), "with_genealogy": int(built),
                        "complete": int(complete), "complete_pct": _pct(int(complete), int(units))})
    total = sum(i["units"] for i in by_item)
    complete = sum(i["complete"] for i in by_item)
    with_genealogy = sum(i["with_genealogy"] for i in by_item)

    no_genealogy = [{"unit": r[0], "reason": "no as-built edge into the unit"}
                    for r in read_model.rows(q.NO_GENEALOGY_SQL, as_built=AS_BUILT, limit=examples)]
    produced_tainted = read_model.rows(q.TAINTED_UNITS_SQL, tainted=tainted, limit=examples)
    broken_closure = [{"unit": u, "reason": f"unaccounted serial {origin[u]} in its as-built closure"}
                      for (u,) in produced_tainted]

    broken = read_model.rows(q.BROKEN_LINKS_SQL, link=LINK, limit=examples)
    no_prod = read_model.rows(q.NO_PRODUCTION_SQL, link=LINK, limit=examples)
    in_lots = read_model.rows(q.SERIAL_IN_LOTS_SQL, limit=examples)
    under_items = read_model.rows(q.IDENT_UNDER_ITEMS_SQL, limit=examples)
    unidentified = read_model.rows(q.PACKAGES_WITHOUT_SUPPLIER_LOT_SQL, limit=examples)
    identified, supplier_lots = read_model.rows(q.PACKAGES_WITH_SUPPLIER_LOT_SQL)[0]
    declarations, events, edges, units = read_model.rows(q.CORRECTIONS_SQL)[0]
    corrections = read_model.rows(q.CORRECTION_EXAMPLES_SQL, limit=examples)
    dead = [{"stage": s, "event_kind": k, "count": int(n), "example_reason": r}
            for s, k, n, r in read_model.rows(q.DEAD_LETTERS_BY_KIND_SQL)]
    return {
        "units": {
            "total": total, "with_genealogy": with_genealogy, "complete": complete,
            "complete_pct": _pct(complete, total), "by_item": by_item,
            "unaccounted_serials": len(bad), "walk_truncated": truncated,
            "incomplete_examples": (no_genealogy + broken_closure)[:examples],
        },
        "broken_links": {
            "count": _counted(broken),
            "examples": [{"component": c, "item": i, "used_by": list(p)} for c, i, p, _ in broken],
        },
        "units_without_production": {
            "count": _counted(no_prod),
            "examples": [{"unit": u, "components": int(n)} for u, n, _ in no_prod],
        },
        "supplier_lots": {
            "packages_identified": int(identified), "supplier_lots": int(supplier_lots),
            "consumed_packages_without": _counted(unidentified),
            "examples": [p for p, _ in unidentified],
        },
        "class_level_inputs": {
            "edges": int(read_model.rows(q.CLASS_EDGES_SQL)[0][0]),
            "by_item": [{"item": i, "edges": int(e), "parents": int(p)} for i, e, p in read_model.rows(q.CLASS_INPUTS_SQL)],
        },
        "duplicate_serials": {
            "in_several_production_lots": {"count": _counted(in_lots),
                                           "examples": [{"unit": u, "production_lots": list(ls)} for u, ls, _ in in_lots]},
            "ident_under_several_items": {"count": _counted(under_items),
                                          "examples": [{"ident": i, "nodes": list(ns)} for i, ns, _ in under_items]},
        },
        "corrections": {
            "declarations": int(declarations), "events_retracted": int(events), "edges_retracted": int(edges),
            "unit_rows_retracted": int(units),
            "examples": [{"declaration": d, "reason": r, "corrective_events": [c for c in cs.split(",") if c], "rows": int(n)}
                         for d, r, cs, n in corrections],
        },
        "dead_letters": {"total": sum(d["count"] for d in dead), "by_stage_kind": dead},
    }


def format_linkage(report: dict):
    """A rich renderable (print it with a rich Console, or ``str()`` its export) for humans."""
    from rich.console import Group
    from rich.table import Table

    u = report["units"]
    pct = "n/a" if u["complete_pct"] is None else f"{u['complete_pct']:.2f}%"
    head = Table("item", "units", "prod. lots", "with genealogy", "complete", "share",
                 title=f"As-built genealogy: {u['complete']:,} of {u['total']:,} units complete ({pct})", title_justify="left")
    for i in u["by_item"]:
        head.add_row(i["item"], f"{i['units']:,}", f"{i['production_lots']:,}", f"{i['with_genealogy']:,}", f"{i['complete']:,}",
                     "n/a" if i["complete_pct"] is None else f"{i['complete_pct']:.2f}%")

    checks = Table("check", "count", "examples", title="Defects", title_justify="left")

    def ex(values: list[str]) -> str:
        return ", ".join(values[:5]) + (" ..." if len(values) > 5 else "")

    checks.add_row("incomplete units", f"{u['total'] - u['complete']:,}",
                   ex([f"{e['unit']} ({e['reason']})" for e in u["incomplete_examples"]]))
    checks.add_row("consumed, never produced or received", f"{report['broken_links']['count']:,}",
                   ex([f"{e['component']} -> {', '.join(e['used_by'])}" for e in report["broken_links"]["examples"]]))
    checks.add_row("units with no production event", f"{report['units_without_production']['count']:,}",
                   ex([e["unit"] for e in report["units_without_production"]["examples"]]))
    checks.add_row("packages consumed with no supplier lot", f"{report['supplier_lots']['consumed_packages_without']:,}",
                   ex(report["supplier_lots"]["examples"]))
    checks.add_row("class-level inputs (edges)", f"{report['class_level_inputs']['edges']:,}",
                   ex([f"{c['item']}: {c['edges']} edges into {c['parents']} nodes" for c in report["class_level_inputs"]["by_item"]]))
    d = report["duplicate_serials"]
    checks.add_row("serial in several production lots", f"{d['in_several_production_lots']['count']:,}",
                   ex([f"{e['unit']} in {' + '.join(e['production_lots'])}" for e in d["in_several_production_lots"]["examples"]]))
    checks.add_row("serial ident under several items", f"{d['ident_under_several_items']['count']:,}",
                   ex([" / ".join(e["nodes"]) for e in d["ident_under_several_items"]["examples"]]))
    c = report["corrections"]
    checks.add_row("error declarations (corrections)", f"{c['declarations']:,}",
                   ex([f"{e['declaration']} ({e['reason'] or 'no reason'}): {e['rows']} rows" for e in c["examples"]]))
    checks.add_row("dead letters", f"{report['dead_letters']['total']:,}",
                   ex([f"{x['stage']}/{x['event_kind'] or '-'}: {x['count']}" for x in report["dead_letters"]["by_stage_kind"]]))
    return Group(head, checks)
