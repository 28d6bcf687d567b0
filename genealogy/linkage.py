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

from genealogy import ids

AS_BUILT = ["consumed", "installed", "transformed"]
LINK = ["consumed", "installed"]
EXAMPLES = 20

ITEM = "extract({col}, '^[^:]*:([^:]*):')"

UNITS_BY_ITEM_SQL = f"""
SELECT item, uniqExact(unit), uniqExact(production_lot), uniqExactIf(unit, built), uniqExactIf(unit, built AND NOT tainted)
FROM (
    SELECT unit, production_lot, {ITEM.format(col='unit')} AS item,
           unit IN (SELECT parent FROM edges WHERE relation IN {{as_built:Array(String)}}) AS built,
           unit IN {{tainted:Array(String)}} AS tainted
    FROM units
)
GROUP BY item ORDER BY item
"""

UNACCOUNTED_SQL = f"""
SELECT DISTINCT child FROM edges
WHERE relation IN {{as_built:Array(String)}} AND startsWith(child, 'serial:')
  AND child NOT IN (SELECT unit FROM units)
  AND (child IN (SELECT parent FROM edges WHERE relation IN {{as_built:Array(String)}})
       OR {ITEM.format(col='child')} IN (SELECT {ITEM.format(col='unit')} FROM units))
ORDER BY child
"""

FORWARD_SQL = """
SELECT DISTINCT child, parent FROM edges
WHERE child IN {nodes:Array(String)} AND relation IN {as_built:Array(String)}
ORDER BY child, parent
"""

NO_GENEALOGY_SQL = """
SELECT DISTINCT unit FROM units
WHERE unit NOT IN (SELECT parent FROM edges WHERE relation IN {as_built:Array(String)})
ORDER BY unit LIMIT {limit:UInt32}
"""

TAINTED_UNITS_SQL = "SELECT DISTINCT unit FROM units WHERE unit IN {tainted:Array(String)} ORDER BY unit LIMIT {limit:UInt32}"

# count() OVER () is evaluated before LIMIT: the total number of groups, next to the first examples.
BROKEN_LINKS_SQL = f"""
SELECT child, {ITEM.format(col='child')} AS item, arraySort(groupUniqArray(parent)), count() OVER ()
FROM edges
WHERE relation IN {{link:Array(String)}} AND startsWith(child, 'serial:')
  AND child NOT IN (SELECT unit FROM units)
  AND item IN (SELECT {ITEM.format(col='unit')} FROM units)
GROUP BY child ORDER BY child LIMIT {{limit:UInt32}}
"""

NO_PRODUCTION_SQL = """
SELECT parent, uniqExact(child), count() OVER ()
FROM edges
WHERE relation IN {link:Array(String)} AND startsWith(parent, 'serial:') AND parent NOT IN (SELECT unit FROM units)
GROUP BY parent ORDER BY parent LIMIT {limit:UInt32}
"""

CLASS_INPUTS_SQL = f"""
SELECT {ITEM.format(col='child')} AS item, uniqExact(edge_id), uniqExact(parent)
FROM edges WHERE startsWith(child, 'class:')
GROUP BY item ORDER BY item
"""

CLASS_EDGES_SQL = "SELECT uniqExact(edge_id) FROM edges WHERE startsWith(child, 'class:')"

SERIAL_IN_LOTS_SQL = """
SELECT unit, arraySort(groupUniqArray(production_lot)), count() OVER ()
FROM units GROUP BY unit HAVING uniqExact(production_lot) > 1
ORDER BY unit LIMIT {limit:UInt32}
"""

IDENT_UNDER_ITEMS_SQL = """
SELECT ident, arraySort(groupUniqArray(node)), count() OVER ()
FROM nodes WHERE kind = 'serial' GROUP BY ident HAVING uniqExact(node) > 1
ORDER BY ident LIMIT {limit:UInt32}
"""

DEAD_LETTERS_SQL = """
SELECT stage, event_kind, uniqExact(dead_letter_id), any(reason)
FROM dead_letters_final GROUP BY stage, event_kind ORDER BY stage, event_kind
"""


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _counted(rows: list[tuple]) -> int:
    return int(rows[0][-1]) if rows else 0


def tainted_units(store, max_levels: int = 64) -> tuple[list[str], dict[str, str], bool]:
    """Unaccounted serials; every node that has one in its as-built closure -> one such serial (itself
    for the serials); whether ``max_levels`` cut the walk short (a cycle cannot: nodes are visited once)."""
    bad = [r[0] for r in store.rows(UNACCOUNTED_SQL, as_built=AS_BUILT)]
    origin = {b: b for b in bad}
    frontier = bad
    for _ in range(max_levels):
        if not frontier:
            return bad, origin, False
        nxt = []
        for child, parent in store.rows(FORWARD_SQL, nodes=frontier, as_built=AS_BUILT):
            if parent not in origin:
                origin[parent] = origin[child]
                nxt.append(parent)
        frontier = sorted(nxt)
    return bad, origin, True


def linkage_report(store, examples: int = EXAMPLES, max_levels: int = 64) -> dict:
    bad, origin, truncated = tainted_units(store, max_levels)
    tainted = sorted(n for n in origin if ids.kind_of(n) == "serial")
    by_item = []
    for item, units, lots, built, complete in store.rows(UNITS_BY_ITEM_SQL, as_built=AS_BUILT, tainted=tainted):
        by_item.append({"item": item, "units": int(units), "production_lots": int(lots), "with_genealogy": int(built),
                        "complete": int(complete), "complete_pct": _pct(int(complete), int(units))})
    total = sum(i["units"] for i in by_item)
    complete = sum(i["complete"] for i in by_item)
    with_genealogy = sum(i["with_genealogy"] for i in by_item)

    no_genealogy = [{"unit": r[0], "reason": "no as-built edge into the unit"}
                    for r in store.rows(NO_GENEALOGY_SQL, as_built=AS_BUILT, limit=examples)]
    produced_tainted = store.rows(TAINTED_UNITS_SQL, tainted=tainted, limit=examples)
    broken_closure = [{"unit": u, "reason": f"unaccounted serial {origin[u]} in its as-built closure"}
                      for (u,) in produced_tainted]

    broken = store.rows(BROKEN_LINKS_SQL, link=LINK, limit=examples)
    no_prod = store.rows(NO_PRODUCTION_SQL, link=LINK, limit=examples)
    in_lots = store.rows(SERIAL_IN_LOTS_SQL, limit=examples)
    under_items = store.rows(IDENT_UNDER_ITEMS_SQL, limit=examples)
    dead = [{"stage": s, "event_kind": k, "count": int(n), "example_reason": r} for s, k, n, r in store.rows(DEAD_LETTERS_SQL)]
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
        "class_level_inputs": {
            "edges": int(store.rows(CLASS_EDGES_SQL)[0][0]),
            "by_item": [{"item": i, "edges": int(e), "parents": int(p)} for i, e, p in store.rows(CLASS_INPUTS_SQL)],
        },
        "duplicate_serials": {
            "in_several_production_lots": {"count": _counted(in_lots),
                                           "examples": [{"unit": u, "production_lots": list(ls)} for u, ls, _ in in_lots]},
            "ident_under_several_items": {"count": _counted(under_items),
                                          "examples": [{"ident": i, "nodes": list(ns)} for i, ns, _ in under_items]},
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
    checks.add_row("class-level inputs (edges)", f"{report['class_level_inputs']['edges']:,}",
                   ex([f"{c['item']}: {c['edges']} edges into {c['parents']} nodes" for c in report["class_level_inputs"]["by_item"]]))
    d = report["duplicate_serials"]
    checks.add_row("serial in several production lots", f"{d['in_several_production_lots']['count']:,}",
                   ex([f"{e['unit']} in {' + '.join(e['production_lots'])}" for e in d["in_several_production_lots"]["examples"]]))
    checks.add_row("serial ident under several items", f"{d['ident_under_several_items']['count']:,}",
                   ex([" / ".join(e["nodes"]) for e in d["ident_under_several_items"]["examples"]]))
    checks.add_row("dead letters", f"{report['dead_letters']['total']:,}",
                   ex([f"{x['stage']}/{x['event_kind'] or '-'}: {x['count']}" for x in report["dead_letters"]["by_stage_kind"]]))
    return Group(head, checks)
