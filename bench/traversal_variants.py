#!/usr/bin/env python3
"""Which way to run a traversal inside ClickHouse: the measurement behind sinks/read_model.py.

Runs on the data recall_bench.py loaded (/tmp/recall-bench/edges-<N>/clickhouse), ClickHouse only,
and times, on the same targets round-robin in random order, question a (forward from a supplier lot, ~10,000
nodes in 6 levels), b (forward from one board, 4 nodes), the lot-level scope of a, and /recall of a:

  forward
    product             genealogy.recall.forward over the store: level by level while frontiers
                        are small (SHIP_MAX), then ReadModel.forward_reach
    recursive CTE       ReadModel.forward_reach: plain rows (node, depth), one lookup per step joined
                        back for the depth; min(depth) per node is its BFS level. No seen set:
                        capped, for cycles
    exact CTE           the same with ReadModel.exact_traversals: the BFS state as one row of arrays
                        (frontier, seen), what the capped CTE falls back to
    loop, temp table    one INSERT ... SELECT per level into a temporary table plus a count to stop:
                        server-side steps, exact BFS levels
    nodes-only CTE      recall_bench.py's "clickhouse (recursive CTE)": nodes only, no levels
    levels (before)     one query per level with the frontier as an id list
  lot-level scope
    product             ReadModel.lot_scope: lot_level's walk as a loop of INSERT ... SELECT steps
    recursive CTE       plain rows on serial/lot nodes, lots and members looked up in each step
                        (capped; exact only without cycles)
    CTE, state row      the walk on representatives (a serial's lot) with the state in one row
    CTE, node level     node by node with the state in one row, 3 steps per level
    levels (before)     genealogy.recall.lot_level one query per Graph call
  /recall               genealogy.recall.recall: product vs levels (before)

Answers are checked equal to the product's first.

    python -m bench.traversal_variants --edges 1000000
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.recall_bench import (CH_FORWARD_CTE, DATA_ROOT, RESULTS, Layout, Params, levels_only,  # noqa: E402
                                loadavg, open_store, pick_targets)
from genealogy.domain import recall  # noqa: E402

FORWARD_BARE = """
WITH RECURSIVE st AS (
    SELECT [{target:String}] AS frontier, frontier AS seen, toUInt32(0) AS depth
  UNION ALL
    SELECT nxt.a, arrayConcat(st.seen, nxt.a), toUInt32(st.depth + 1)
    FROM st
    CROSS JOIN (
        SELECT groupUniqArray(parent) AS a FROM edges
        WHERE child IN (SELECT arrayJoin(frontier) FROM st) AND parent NOT IN (SELECT arrayJoin(seen) FROM st)
    ) AS nxt
    WHERE notEmpty(st.frontier)
)
SELECT depth, frontier FROM st
"""
LOOP_CREATE = "CREATE TEMPORARY TABLE IF NOT EXISTS reach (node String, depth UInt32) ENGINE = Memory"
LOOP_RESET = "TRUNCATE TABLE reach"
LOOP_SEED = "INSERT INTO reach SELECT {target:String}, 0"
LOOP_STEP = """
INSERT INTO reach SELECT DISTINCT parent, {next:UInt32} FROM edges
WHERE child IN (SELECT node FROM reach WHERE depth = {depth:UInt32}) AND parent NOT IN (SELECT node FROM reach)
"""
LOOP_COUNT = "SELECT count() FROM reach WHERE depth = {depth:UInt32}"
LOOP_RESULT = """
SELECT node, depth, '' FROM reach WHERE depth > 0
UNION ALL
SELECT unit, 0, any(production_lot) FROM units WHERE unit IN (SELECT node FROM reach WHERE depth > 0) GROUP BY unit
"""

LOT_SCOPE_CTE_TEMPLATE = """
WITH RECURSIVE
    starts AS ({starts}),
    own AS (SELECT any(production_lot) AS lot FROM units
            WHERE unit IN (SELECT node FROM starts) AND substringIndex(unit, ':', 1) = 'serial' GROUP BY unit),
    f0 AS (SELECT node FROM starts UNION ALL SELECT lot FROM own
           UNION ALL SELECT unit FROM lot_members WHERE production_lot IN (SELECT lot FROM own)),
    st AS (
        SELECT DISTINCT parent AS x, toUInt8(0) AS tag FROM edges
        WHERE child IN (SELECT node FROM f0) 
          AND substringIndex(parent, ':', 1) IN ('serial', 'lot') AND parent NOT IN (SELECT node FROM f0)
      UNION ALL
        SELECT * FROM (
            SELECT DISTINCT parent, toUInt8(0) FROM edges
            WHERE (child IN (SELECT x FROM st WHERE tag = 0)
                   OR child IN (SELECT any(production_lot) FROM units WHERE unit IN (SELECT x FROM st WHERE tag = 0)
                                AND substringIndex(unit, ':', 1) = 'serial' GROUP BY unit)
                   OR child IN (SELECT unit FROM lot_members
                                WHERE production_lot IN (SELECT x FROM st WHERE tag = 0)
                                   OR production_lot IN (SELECT any(production_lot) FROM units WHERE unit IN (SELECT x FROM st WHERE tag = 0)
                                                         AND substringIndex(unit, ':', 1) = 'serial' GROUP BY unit)))
              AND child NOT IN (SELECT node FROM f0)
              AND substringIndex(parent, ':', 1) IN ('serial', 'lot') AND parent NOT IN (SELECT node FROM f0)
          UNION ALL
            SELECT any(production_lot), toUInt8(1) FROM units
            WHERE unit IN (SELECT x FROM st WHERE tag = 0) AND substringIndex(unit, ':', 1) = 'serial' GROUP BY unit)
    )
SELECT production_lot, uniqExact(unit) FROM lot_members
WHERE production_lot IN (SELECT x FROM st UNION ALL SELECT lot FROM own)
GROUP BY production_lot
"""

LOT_SCOPE_CTE_STATE_ROW_TEMPLATE = """
WITH RECURSIVE
    starts AS ({starts}),
    own AS (SELECT any(production_lot) AS lot FROM units
            WHERE unit IN (SELECT node FROM starts) AND substringIndex(unit, ':', 1) = 'serial' GROUP BY unit),
    f0 AS (SELECT node FROM starts UNION ALL SELECT lot FROM own
           UNION ALL SELECT unit FROM lot_members WHERE production_lot IN (SELECT lot FROM own)),
    st AS (
        SELECT toUInt8(1) AS phase, CAST([], 'Array(String)') AS frontier, groupUniqArray(parent) AS pending,
               CAST([], 'Array(String)') AS visited, (SELECT groupUniqArray(node) FROM f0) AS start,
               (SELECT groupUniqArray(lot) FROM own) AS own_lots
        FROM edges
        WHERE child IN (SELECT node FROM f0) 
          AND substringIndex(parent, ':', 1) IN ('serial', 'lot') AND parent NOT IN (SELECT node FROM f0)
      UNION ALL
        SELECT
            toUInt8(1 - st.phase),
            arrayFilter(n -> NOT has(st.visited, n), rep.a),
            par.a,
            arrayConcat(st.visited, arrayFilter(n -> NOT has(st.visited, n), rep.a)),
            st.start,
            st.own_lots
        FROM st
        CROSS JOIN (
            SELECT groupUniqArray(parent) AS a FROM edges
            WHERE child IN (SELECT arrayJoin(frontier) FROM st
                            UNION ALL
                            SELECT unit FROM lot_members WHERE production_lot IN (SELECT arrayJoin(frontier) FROM st))
              AND child NOT IN (SELECT arrayJoin(start) FROM st)
              AND substringIndex(parent, ':', 1) IN ('serial', 'lot')
              AND parent NOT IN (SELECT arrayJoin(start) FROM st)
        ) AS par
        CROSS JOIN (
            SELECT groupUniqArray(r) AS a FROM (
                SELECT any(production_lot) AS r FROM units
                WHERE unit IN (SELECT arrayJoin(pending) FROM st) AND substringIndex(unit, ':', 1) = 'serial'
                GROUP BY unit
              UNION ALL
                SELECT arrayJoin(pending) AS r FROM st
                WHERE r NOT IN (SELECT unit FROM units WHERE unit IN (SELECT arrayJoin(pending) FROM st)
                                                         AND substringIndex(unit, ':', 1) = 'serial'))
        ) AS rep
        WHERE notEmpty(st.frontier) OR notEmpty(st.pending)
    )
SELECT production_lot, uniqExact(unit) FROM lot_members
WHERE production_lot IN (SELECT arrayJoin(arrayConcat(own_lots, visited)) FROM st)
GROUP BY production_lot
"""

LOT_SCOPE_CTE = LOT_SCOPE_CTE_TEMPLATE.replace("{starts}", "SELECT arrayJoin([{target:String}]) AS node")
LOT_SCOPE_CTE_STATE_ROW = LOT_SCOPE_CTE_STATE_ROW_TEMPLATE.replace("{starts}", "SELECT arrayJoin([{target:String}]) AS node")

# Lot-level scope node by node: the state row also carries the lots widened so far; per level,
# phase 0 finds the serial/lot parents, phase 1 their production lots, phase 2 the lots' members.
LOT_SCOPE_NODES = """
WITH RECURSIVE st AS (
    SELECT toUInt8(1) AS phase, CAST([], 'Array(String)') AS frontier, [{target:String}] AS pending,
           CAST([], 'Array(String)') AS lots, CAST([], 'Array(String)') AS keep, pending AS seen,
           CAST([], 'Array(String)') AS widened, CAST([], 'Array(Tuple(String, UInt64))') AS counts, toUInt32(0) AS depth
  UNION ALL
    SELECT
        toUInt8(multiIf(st.phase = 0, 1, st.phase = 1, 2, 0)),
        if(st.phase = 2, arrayConcat(st.keep, arrayConcat(arrayFilter(n -> NOT has(st.seen, n), st.lots), mem.fresh) AS added), []),
        par.a,
        arrayFilter(n -> NOT has(st.widened, n), arrayDistinct(arrayConcat(
            lot.a, if(st.depth > 0, arrayFilter(n -> substringIndex(n, ':', 1) = 'lot', st.pending), [])))) AS new_lots,
        if(st.phase = 1, st.pending, []),
        arrayConcat(st.seen, par.a, added),
        arrayConcat(st.widened, new_lots),
        mem.counts,
        toUInt32(st.depth + (st.phase = 0))
    FROM st
    CROSS JOIN (
        SELECT groupUniqArray(parent) AS a FROM edges
        WHERE child IN (SELECT arrayJoin(frontier) FROM st)
          AND substringIndex(parent, ':', 1) IN ('serial', 'lot')
          AND parent NOT IN (SELECT arrayJoin(seen) FROM st)
    ) AS par
    CROSS JOIN (
        SELECT groupUniqArray(lot) AS a FROM (
            SELECT any(production_lot) AS lot FROM units
            WHERE unit IN (SELECT arrayJoin(pending) FROM st) AND substringIndex(unit, ':', 1) = 'serial'
            GROUP BY unit)
    ) AS lot
    CROSS JOIN (
        SELECT CAST(groupArray((production_lot, n)), 'Array(Tuple(String, UInt64))') AS counts,
               arrayDistinct(arrayFlatten(groupArray(fresh))) AS fresh
        FROM (
            SELECT production_lot, uniqExact(unit) AS n,
                   groupUniqArrayIf(unit, unit NOT IN (SELECT arrayJoin(seen) FROM st)) AS fresh
            FROM lot_members WHERE production_lot IN (SELECT arrayJoin(lots) FROM st)
            GROUP BY production_lot)
    ) AS mem
    WHERE st.phase != 0 OR notEmpty(par.a)
)
SELECT arrayJoin(counts) AS c, tupleElement(c, 1), tupleElement(c, 2) FROM st
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edges", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    p = Params(edges=args.edges)
    path = DATA_ROOT / f"edges-{p.edges}" / "clickhouse"
    if not path.exists():
        raise SystemExit(f"{path} missing: run `python bench/recall_bench.py --edges {p.edges}` first")
    store = open_store(path)
    targets = pick_targets(Layout.plan(p), args.reps + 2)
    settings = {"max_recursive_cte_evaluation_depth": 1000}  # bench data has no cycles
    levels = levels_only(store)

    def rows(sql, **kw):
        return store.connection.query(sql, kw, settings=settings)[1]

    def loop(target):
        c = store.connection.client
        c.command(LOOP_CREATE)
        c.command(LOOP_RESET)
        c.command(LOOP_SEED, parameters={"target": target})
        depth = 0
        while True:
            c.command(LOOP_STEP, parameters={"depth": depth, "next": depth + 1})
            if not c.query(LOOP_COUNT, parameters={"depth": depth + 1}).result_rows[0][0]:
                break
            depth += 1
        return {n for n, d, _ in c.query(LOOP_RESULT).result_rows if d}

    def exact(fn):
        def run(t):
            store.exact_traversals = True
            try:
                return fn(t)
            finally:
                del store.exact_traversals
        return run

    inside = lambda t: {n for n, d in store.forward_reach([t])[0].items() if d}  # noqa: E731
    forward = {
        "product": lambda t: recall.forward(store, t)[0],
        "recursive CTE": inside,
        "exact CTE": exact(inside),
        "loop, temp table": loop,
        "nodes-only CTE": lambda t: {r[0] for r in rows(CH_FORWARD_CTE, target=t)} - {t},
        "levels (before)": lambda t: recall.forward(levels, t)[0],
    }
    lot_scope = {
        "product": lambda t: store.lot_scope([t]),
        "recursive CTE": lambda t: {lot: int(n) for lot, n in rows(LOT_SCOPE_CTE, target=t)},
        "CTE, state row": lambda t: {lot: int(n) for lot, n in rows(LOT_SCOPE_CTE_STATE_ROW, target=t)},
        "CTE, node level": lambda t: {lot: int(n) for _, lot, n in rows(LOT_SCOPE_NODES, target=t)},
        "levels (before)": lambda t: recall.lot_level(levels, t),
    }
    full = {
        "product": lambda t: recall.recall(store, t).as_dict(),
        "levels (before)": lambda t: recall.recall(levels, t).as_dict(),
    }
    incomparable: set[str] = set()
    out = {"edges": p.edges, "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "loadavg_start": loadavg()}
    for label, variants, q in (("a forward", forward, "a"), ("b forward", forward, "b"),
                               ("a lot-level scope", lot_scope, "a"), ("a /recall", full, "a")):
        ts = targets[q]
        for t in ts[:2]:
            answers = {name: fn(t) for name, fn in variants.items() if name not in incomparable}
            first = next(iter(answers.values()))
            bad = [name for name, a in answers.items() if a != first]
            if bad:
                raise SystemExit(f"{label} {t}: {bad} differ from the product")
        samples = {name: [] for name in variants}
        order = random.Random(len(ts))
        for t in ts[2:]:  # in a random order per target: a fixed one favours or penalises whoever follows whom
            for name, fn in order.sample(list(variants.items()), len(variants)):
                t0 = time.perf_counter()
                fn(t)
                samples[name].append((time.perf_counter() - t0) * 1000)
        out[label] = {name: {"p50": statistics.median(v), "p95": sorted(v)[int(0.95 * (len(v) - 1))], "n": len(v)}
                      for name, v in samples.items()}
        print(label)
        for name, c in out[label].items():
            print(f"  {name:28s} p50 {c['p50']:7.1f}  p95 {c['p95']:7.1f} ms  (n={c['n']})")
    out["loadavg_end"] = loadavg()
    (RESULTS / f"traversal-variants-{p.edges}.json").write_text(json.dumps(out, indent=1))
    store.connection.close()


if __name__ == "__main__":
    main()
