"""Every statement the sinks run, written out as ClickHouse runs it (the schema is ``sql/ddl.sql``).

Values are only ever bound by ClickHouse (``{name:Type}``); nothing here is formatted. Where a
statement comes in variants (the kind of start set, a first-hop window, a step cap) each variant
is written out: what runs can be read, and grepped, as it is.
"""

# --- scratch tables of the read model --------------------------------------------------------
# Temporary tables live in the client's session (chdb: its connection; HTTP: clickhouse-connect's
# session id); the connection's lock serialises their use.

CREATE_RECALL_NODES_SQL = "CREATE TEMPORARY TABLE IF NOT EXISTS recall_nodes (node String, depth UInt32) ENGINE = Memory"
TRUNCATE_RECALL_NODES_SQL = "TRUNCATE TABLE recall_nodes"
CREATE_RECALL_WALK_SQL = "CREATE TEMPORARY TABLE IF NOT EXISTS recall_walk (node String, tag UInt8, lvl UInt32) ENGINE = Memory"
TRUNCATE_RECALL_WALK_SQL = "TRUNCATE TABLE recall_walk"

# --- writer: removing edges (reprocess) --------------------------------------------------------
# The sort-key prefix in the WHERE keeps a delete to the parts that hold these rows. ALTER ... DELETE
# is the same for servers without lightweight deletes.

DELETE_EDGES_SQL = "DELETE FROM edges WHERE child IN {keys:Array(String)} AND edge_id IN {ids:Array(UInt64)}"
DELETE_EDGES_BY_PARENT_SQL = "DELETE FROM edges_by_parent WHERE parent IN {keys:Array(String)} AND edge_id IN {ids:Array(UInt64)}"
ALTER_DELETE_EDGES_SQL = "ALTER TABLE edges DELETE WHERE child IN {keys:Array(String)} AND edge_id IN {ids:Array(UInt64)}"
ALTER_DELETE_EDGES_BY_PARENT_SQL = \
    "ALTER TABLE edges_by_parent DELETE WHERE parent IN {keys:Array(String)} AND edge_id IN {ids:Array(UInt64)}"

# --- read model: the Graph, one BFS level per call ----------------------------------------------

# --- writer: error declarations (corrections) -------------------------------------------------

RETRACTED_EDGE_IDS_SQL = "SELECT DISTINCT edge_id FROM corrections WHERE kind = 'edge'"
RETRACTED_UNITS_SQL = "SELECT DISTINCT child, source_event FROM corrections WHERE kind = 'unit'"
RETRACTED_UNPACKINGS_SQL = "SELECT DISTINCT parent, child, source_event FROM corrections WHERE kind = 'unpack'"
DELETE_UNPACKINGS_SQL = """
DELETE FROM unpacked WHERE parent IN {parents:Array(String)}
  AND (parent, child, source_event) IN {keys:Array(Tuple(String, String, String))}
"""
# The unit rows a retraction takes back, with what their materialized views derived from them.
RETRACTED_UNIT_ROWS_SQL = """
SELECT unit, event_id, production_lot, station, completed_at FROM units
WHERE unit IN {units:Array(String)} AND (unit, event_id) IN {pairs:Array(Tuple(String, String))}
"""
DELETE_UNITS_SQL = "DELETE FROM units WHERE unit IN {units:Array(String)} AND (unit, event_id) IN {pairs:Array(Tuple(String, String))}"
DELETE_UNIT_AT_STATION_SQL = """
DELETE FROM units_by_station WHERE station = {station:String} AND completed_at = {at:DateTime64(3, 'UTC')} AND unit = {unit:String}
"""
# A lot membership goes only when no unit row that is left still says it.
DELETE_LOT_MEMBER_SQL = """
DELETE FROM lot_members WHERE production_lot = {lot:String} AND unit = {unit:String}
  AND (SELECT count() FROM units WHERE unit = {unit:String} AND production_lot = {lot:String}) = 0
"""

# --- writer: the intervals of containment (held_intervals, genealogy.domain.holding) ------------------
# The unpackings of the holders a flush touched: all a flush of packings alone needs to close them.
HOLD_ENDS_SQL = """
SELECT child, parent, toUnixTimestamp64Milli(event_time) FROM unpacked WHERE parent IN {holders:Array(String)}
"""
# The stored packings whose end an unpacking (or its retraction) may have moved: those of the pairs
# (child, holder), and every one in the holders emptied whole (child '' unpacked). One row per edge.
HOLD_ADDS_SQL = """
SELECT child, parent, min(toUnixTimestamp64Milli(event_time)), edge_id, any(relation) FROM edges
WHERE child IN {children:Array(String)} AND (child, parent) IN {pairs:Array(Tuple(String, String))}
  AND relation IN ('packed', 'associated', 'transacted')
GROUP BY child, parent, edge_id
UNION ALL
SELECT child, parent, min(toUnixTimestamp64Milli(event_time)), edge_id, any(relation) FROM edges_by_parent
WHERE parent IN {holders:Array(String)} AND relation IN ('packed', 'associated', 'transacted')
GROUP BY parent, child, edge_id
"""
# A store written before held_intervals existed: its packings and unpackings, all of them, once.
HELD_EMPTY_SQL = """
SELECT (SELECT count() FROM (SELECT 1 FROM held_intervals LIMIT 1)) = 0
   AND (SELECT count() FROM (SELECT 1 FROM edges WHERE relation IN ('packed', 'associated', 'transacted') LIMIT 1)) > 0
"""
ALL_HOLD_ADDS_SQL = """
SELECT child, parent, min(toUnixTimestamp64Milli(event_time)), edge_id, any(relation) FROM edges
WHERE relation IN ('packed', 'associated', 'transacted')
GROUP BY child, parent, edge_id
"""
ALL_HOLD_ENDS_SQL = "SELECT child, parent, toUnixTimestamp64Milli(event_time) FROM unpacked"

PARENTS_SQL = "SELECT DISTINCT child, parent FROM edges WHERE child IN {nodes:Array(String)}"
PARENTS_IN_WINDOW_SQL = """
SELECT DISTINCT child, parent FROM edges WHERE child IN {nodes:Array(String)}
  AND event_time >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') AND event_time < fromUnixTimestamp64Milli({until:Int64}, 'UTC')
"""
CHILDREN_SQL = """
SELECT parent, child, argMin(relation, event_time), min(toUnixTimestamp64Milli(event_time)), argMin(station, event_time)
FROM edges_by_parent WHERE parent IN {nodes:Array(String)}
GROUP BY parent, child ORDER BY parent, child
"""
# Containment over time (genealogy.domain.recall.containment): when things were packed, and until when
# (the intervals the sink stored, held_intervals); the unpackings themselves (the facts).
PACKED_INTO_SQL = """
SELECT DISTINCT child, holder, toUnixTimestamp64Milli(from_time), toUnixTimestamp64Milli(to_time)
FROM held_intervals FINAL WHERE child IN {nodes:Array(String)}
"""
# Closed intervals of these holders, whatever their child: rare (most packings are never undone).
CLOSED_IN_SQL = """
SELECT DISTINCT child, holder, toUnixTimestamp64Milli(from_time), toUnixTimestamp64Milli(to_time)
FROM held_by_holder FINAL WHERE holder IN {holders:Array(String)} AND to_time IS NOT NULL
"""
UNPACKINGS_SQL = """
SELECT DISTINCT child, parent, toUnixTimestamp64Milli(event_time) FROM unpacked WHERE parent IN {containers:Array(String)}
"""
# Rework (genealogy.domain.recall.holding): every edge up from the nodes, one row per edge however
# often it was delivered (quantities add up), and the removals out of units.
EDGES_UP_SQL = """
SELECT child, parent, any(relation), min(toUnixTimestamp64Milli(event_time)), any(quantity)
FROM edges WHERE child IN {nodes:Array(String)}
GROUP BY child, parent, edge_id
"""
REMOVALS_SQL = """
SELECT DISTINCT child, parent, toUnixTimestamp64Milli(event_time), quantity, reason, source_event FROM removals
WHERE parent IN {units:Array(String)}
"""
REMOVALS_OF_SQL = """
SELECT DISTINCT child, parent, toUnixTimestamp64Milli(event_time), quantity, reason, source_event FROM removals
WHERE child IN {nodes:Array(String)}
"""
REMOVED_COMPONENTS_SQL = "SELECT DISTINCT child FROM removals"
PRODUCTION_LOTS_SQL = "SELECT unit, any(production_lot) FROM units WHERE unit IN {units:Array(String)} GROUP BY unit"
LOT_MEMBERS_SQL = "SELECT DISTINCT production_lot, unit FROM lot_members WHERE production_lot IN {lots:Array(String)}"
UNITS_AT_SQL = """
SELECT DISTINCT unit FROM units_by_station
WHERE station = {station:String}
  AND completed_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')
  AND completed_at < fromUnixTimestamp64Milli({until:Int64}, 'UTC')
  AND ({operator:String} = '' OR operator = {operator:String})
ORDER BY unit
"""
RESOLVE_SQL = "SELECT DISTINCT node FROM nodes WHERE ident = {ident:String} AND kind IN {kinds:Array(String)} ORDER BY node LIMIT 20"

# --- read model: whole traversals inside ClickHouse ----------------------------------------------
# genealogy.domain.recall walks level by level through the Graph interface. With chdb every level then
# shipped its whole frontier as an Array literal that ClickHouse had to parse (~19 ms per 5,000
# ids), and /recall asked 15 such queries. The statements below keep the frontiers inside
# ClickHouse; only answers cross over. recall uses them once a walk grows past SHIP_MAX ids, and
# keeps its level-by-level code as the definition: tests/sinks/test_store.py asserts they answer
# alike, cycles and windows included. What runs how was picked by measurement (bench/README.md,
# "Where the time goes", and bench/traversal_variants.py):
#
# * Forward: a recursive CTE whose working table is plain rows (node, depth), each step ONE
#   primary-key lookup `child IN (SELECT x FROM st)` joined back to the working table for the
#   depth (~3 ms a step). Without a seen set a node reachable by walks of several lengths is
#   walked again (min(depth) is still its BFS level), and a cycle never ends: the steps are capped
#   at 32 (more than genealogies are deep, few enough that a cycle costs little before it is
#   noticed; a BFS level is one step), and past the cap an exact CTE runs instead (cap 1000000),
#   whose working table is ONE row holding the BFS state as arrays (frontier, seen), 2-3x slower.
#   With production lots, the nodes land in recall_nodes first: a CTE read twice is evaluated
#   twice. Widening (serials downstream of each lot node on the path) is one more such CTE for all
#   lot nodes at once.
# * Lot-level scope: lot_level's walk as a loop of INSERT ... SELECT steps over recall_walk (three
#   statements per level). A recursive CTE needs the same lookups nested in every step; it
#   measured 2x slower at 10M edges.
# * Backward (trace): a plain-rows CTE with the same cap and exact fallback; recall.trace walks the
#   rows it returns in memory.
#
# ClickHouse specifics: the key lookup is spelled PREWHERE, or ClickHouse moves the other conditions
# (kind, NOT IN seen) there too and evaluates them on every row of the granules read (2x slower);
# a scalar subquery on the working table is evaluated once for the whole recursion (per-step
# conditions use `IN (SELECT ... FROM st)`); identical IN subqueries share one set; an alias in a
# recursive SELECT shadows the working table's column of that name in its WHERE, so recursive parts
# use none.
#
# Each traversal that starts from a set comes in three variants: _IDS (the given node ids), _WINDOW
# (the given ids, the first hop bounded by [hop_since, hop_until)) and _COMPLETED (the units a station
# completed in a window, as UNITS_AT_SQL, selected inside ClickHouse).

# Forward (where-used): every node the starts reach with its BFS level (the starts are level 0).
# The window bounds the first hop only; then a start reached again is not walked again. Without a
# window that changes nothing (what lies beyond a start is reached from it at level 1 anyway, and
# reaching the same start again means a cycle: the cap), so only the windowed form filters.
FORWARD_IDS_SQL = """
WITH RECURSIVE
    starts AS (SELECT arrayJoin({starts:Array(String)}) AS node),
    st AS (
        SELECT DISTINCT parent AS x, toUInt32(1) AS depth FROM edges
        PREWHERE child IN (SELECT node FROM starts)
      UNION ALL
        SELECT DISTINCT e.parent, toUInt32(r.depth + 1)
        FROM (SELECT child, parent FROM edges PREWHERE child IN (SELECT x FROM st)) AS e
        INNER JOIN st AS r ON e.child = r.x
    )
SELECT DISTINCT node, toUInt32(0) FROM starts
UNION ALL
SELECT x, min(depth) FROM st WHERE x NOT IN (SELECT node FROM starts) GROUP BY x
SETTINGS max_recursive_cte_evaluation_depth = 32
"""
FORWARD_WINDOW_SQL = """
WITH RECURSIVE
    starts AS (SELECT arrayJoin({starts:Array(String)}) AS node),
    st AS (
        SELECT DISTINCT parent AS x, toUInt32(1) AS depth FROM edges
        PREWHERE child IN (SELECT node FROM starts)
        WHERE event_time >= fromUnixTimestamp64Milli({hop_since:Int64}, 'UTC')
          AND event_time < fromUnixTimestamp64Milli({hop_until:Int64}, 'UTC')
          AND parent NOT IN (SELECT node FROM starts)
      UNION ALL
        SELECT DISTINCT e.parent, toUInt32(r.depth + 1)
        FROM (SELECT child, parent FROM edges PREWHERE child IN (SELECT x FROM st) WHERE parent NOT IN (SELECT node FROM starts)) AS e
        INNER JOIN st AS r ON e.child = r.x
    )
SELECT DISTINCT node, toUInt32(0) FROM starts
UNION ALL
SELECT x, min(depth) FROM st WHERE x NOT IN (SELECT node FROM starts) GROUP BY x
SETTINGS max_recursive_cte_evaluation_depth = 32
"""
FORWARD_COMPLETED_SQL = """
WITH RECURSIVE
    starts AS (
        SELECT unit AS node FROM units_by_station
        WHERE station = {station:String}
          AND completed_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')
          AND completed_at < fromUnixTimestamp64Milli({until:Int64}, 'UTC')
          AND ({operator:String} = '' OR operator = {operator:String})
    ),
    st AS (
        SELECT DISTINCT parent AS x, toUInt32(1) AS depth FROM edges
        PREWHERE child IN (SELECT node FROM starts)
      UNION ALL
        SELECT DISTINCT e.parent, toUInt32(r.depth + 1)
        FROM (SELECT child, parent FROM edges PREWHERE child IN (SELECT x FROM st)) AS e
        INNER JOIN st AS r ON e.child = r.x
    )
SELECT DISTINCT node, toUInt32(0) FROM starts
UNION ALL
SELECT x, min(depth) FROM st WHERE x NOT IN (SELECT node FROM starts) GROUP BY x
SETTINGS max_recursive_cte_evaluation_depth = 32
"""

# The same breadth-first, the walk's state in one row: each node is expanded once.
FORWARD_EXACT_IDS_SQL = """
WITH RECURSIVE st AS (
    SELECT groupUniqArray(node) AS frontier, frontier AS seen, toUInt32(0) AS depth
    FROM (SELECT arrayJoin({starts:Array(String)}) AS node)
  UNION ALL
    SELECT nxt.a, arrayConcat(st.seen, nxt.a), toUInt32(st.depth + 1)
    FROM st
    CROSS JOIN (
        SELECT groupUniqArray(parent) AS a FROM edges
        PREWHERE child IN (SELECT arrayJoin(frontier) FROM st)
        WHERE parent NOT IN (SELECT arrayJoin(seen) FROM st)
    ) AS nxt
    WHERE notEmpty(st.frontier)
)
SELECT arrayJoin(frontier), depth FROM st
SETTINGS max_recursive_cte_evaluation_depth = 1000000
"""
FORWARD_EXACT_WINDOW_SQL = """
WITH RECURSIVE st AS (
    SELECT groupUniqArray(node) AS frontier, frontier AS seen, toUInt32(0) AS depth
    FROM (SELECT arrayJoin({starts:Array(String)}) AS node)
  UNION ALL
    SELECT nxt.a, arrayConcat(st.seen, nxt.a), toUInt32(st.depth + 1)
    FROM st
    CROSS JOIN (
        SELECT groupUniqArray(parent) AS a FROM edges
        PREWHERE child IN (SELECT arrayJoin(frontier) FROM st)
        WHERE parent NOT IN (SELECT arrayJoin(seen) FROM st)
          AND (toUInt32(0) NOT IN (SELECT depth FROM st)
               OR (event_time >= fromUnixTimestamp64Milli({hop_since:Int64}, 'UTC')
                   AND event_time < fromUnixTimestamp64Milli({hop_until:Int64}, 'UTC')))
    ) AS nxt
    WHERE notEmpty(st.frontier)
)
SELECT arrayJoin(frontier), depth FROM st
SETTINGS max_recursive_cte_evaluation_depth = 1000000
"""
FORWARD_EXACT_COMPLETED_SQL = """
WITH RECURSIVE st AS (
    SELECT groupUniqArray(node) AS frontier, frontier AS seen, toUInt32(0) AS depth
    FROM (
        SELECT unit AS node FROM units_by_station
        WHERE station = {station:String}
          AND completed_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')
          AND completed_at < fromUnixTimestamp64Milli({until:Int64}, 'UTC')
          AND ({operator:String} = '' OR operator = {operator:String})
    )
  UNION ALL
    SELECT nxt.a, arrayConcat(st.seen, nxt.a), toUInt32(st.depth + 1)
    FROM st
    CROSS JOIN (
        SELECT groupUniqArray(parent) AS a FROM edges
        PREWHERE child IN (SELECT arrayJoin(frontier) FROM st)
        WHERE parent NOT IN (SELECT arrayJoin(seen) FROM st)
    ) AS nxt
    WHERE notEmpty(st.frontier)
)
SELECT arrayJoin(frontier), depth FROM st
SETTINGS max_recursive_cte_evaluation_depth = 1000000
"""

# With production lots: the same six walks into recall_nodes, read by FORWARD_LOTS_RESULT_SQL.
FORWARD_IDS_INTO_SQL = """
INSERT INTO recall_nodes
WITH RECURSIVE
    starts AS (SELECT arrayJoin({starts:Array(String)}) AS node),
    st AS (
        SELECT DISTINCT parent AS x, toUInt32(1) AS depth FROM edges
        PREWHERE child IN (SELECT node FROM starts)
      UNION ALL
        SELECT DISTINCT e.parent, toUInt32(r.depth + 1)
        FROM (SELECT child, parent FROM edges PREWHERE child IN (SELECT x FROM st)) AS e
        INNER JOIN st AS r ON e.child = r.x
    )
SELECT DISTINCT node, toUInt32(0) FROM starts
UNION ALL
SELECT x, min(depth) FROM st WHERE x NOT IN (SELECT node FROM starts) GROUP BY x
SETTINGS max_recursive_cte_evaluation_depth = 32
"""
FORWARD_WINDOW_INTO_SQL = """
INSERT INTO recall_nodes
WITH RECURSIVE
    starts AS (SELECT arrayJoin({starts:Array(String)}) AS node),
    st AS (
        SELECT DISTINCT parent AS x, toUInt32(1) AS depth FROM edges
        PREWHERE child IN (SELECT node FROM starts)
        WHERE event_time >= fromUnixTimestamp64Milli({hop_since:Int64}, 'UTC')
          AND event_time < fromUnixTimestamp64Milli({hop_until:Int64}, 'UTC')
          AND parent NOT IN (SELECT node FROM starts)
      UNION ALL
        SELECT DISTINCT e.parent, toUInt32(r.depth + 1)
        FROM (SELECT child, parent FROM edges PREWHERE child IN (SELECT x FROM st) WHERE parent NOT IN (SELECT node FROM starts)) AS e
        INNER JOIN st AS r ON e.child = r.x
    )
SELECT DISTINCT node, toUInt32(0) FROM starts
UNION ALL
SELECT x, min(depth) FROM st WHERE x NOT IN (SELECT node FROM starts) GROUP BY x
SETTINGS max_recursive_cte_evaluation_depth = 32
"""
FORWARD_COMPLETED_INTO_SQL = """
INSERT INTO recall_nodes
WITH RECURSIVE
    starts AS (
        SELECT unit AS node FROM units_by_station
        WHERE station = {station:String}
          AND completed_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')
          AND completed_at < fromUnixTimestamp64Milli({until:Int64}, 'UTC')
          AND ({operator:String} = '' OR operator = {operator:String})
    ),
    st AS (
        SELECT DISTINCT parent AS x, toUInt32(1) AS depth FROM edges
        PREWHERE child IN (SELECT node FROM starts)
      UNION ALL
        SELECT DISTINCT e.parent, toUInt32(r.depth + 1)
        FROM (SELECT child, parent FROM edges PREWHERE child IN (SELECT x FROM st)) AS e
        INNER JOIN st AS r ON e.child = r.x
    )
SELECT DISTINCT node, toUInt32(0) FROM starts
UNION ALL
SELECT x, min(depth) FROM st WHERE x NOT IN (SELECT node FROM starts) GROUP BY x
SETTINGS max_recursive_cte_evaluation_depth = 32
"""
FORWARD_EXACT_IDS_INTO_SQL = """
INSERT INTO recall_nodes
WITH RECURSIVE st AS (
    SELECT groupUniqArray(node) AS frontier, frontier AS seen, toUInt32(0) AS depth
    FROM (SELECT arrayJoin({starts:Array(String)}) AS node)
  UNION ALL
    SELECT nxt.a, arrayConcat(st.seen, nxt.a), toUInt32(st.depth + 1)
    FROM st
    CROSS JOIN (
        SELECT groupUniqArray(parent) AS a FROM edges
        PREWHERE child IN (SELECT arrayJoin(frontier) FROM st)
        WHERE parent NOT IN (SELECT arrayJoin(seen) FROM st)
    ) AS nxt
    WHERE notEmpty(st.frontier)
)
SELECT arrayJoin(frontier), depth FROM st
SETTINGS max_recursive_cte_evaluation_depth = 1000000
"""
FORWARD_EXACT_WINDOW_INTO_SQL = """
INSERT INTO recall_nodes
WITH RECURSIVE st AS (
    SELECT groupUniqArray(node) AS frontier, frontier AS seen, toUInt32(0) AS depth
    FROM (SELECT arrayJoin({starts:Array(String)}) AS node)
  UNION ALL
    SELECT nxt.a, arrayConcat(st.seen, nxt.a), toUInt32(st.depth + 1)
    FROM st
    CROSS JOIN (
        SELECT groupUniqArray(parent) AS a FROM edges
        PREWHERE child IN (SELECT arrayJoin(frontier) FROM st)
        WHERE parent NOT IN (SELECT arrayJoin(seen) FROM st)
          AND (toUInt32(0) NOT IN (SELECT depth FROM st)
               OR (event_time >= fromUnixTimestamp64Milli({hop_since:Int64}, 'UTC')
                   AND event_time < fromUnixTimestamp64Milli({hop_until:Int64}, 'UTC')))
    ) AS nxt
    WHERE notEmpty(st.frontier)
)
SELECT arrayJoin(frontier), depth FROM st
SETTINGS max_recursive_cte_evaluation_depth = 1000000
"""
FORWARD_EXACT_COMPLETED_INTO_SQL = """
INSERT INTO recall_nodes
WITH RECURSIVE st AS (
    SELECT groupUniqArray(node) AS frontier, frontier AS seen, toUInt32(0) AS depth
    FROM (
        SELECT unit AS node FROM units_by_station
        WHERE station = {station:String}
          AND completed_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')
          AND completed_at < fromUnixTimestamp64Milli({until:Int64}, 'UTC')
          AND ({operator:String} = '' OR operator = {operator:String})
    )
  UNION ALL
    SELECT nxt.a, arrayConcat(st.seen, nxt.a), toUInt32(st.depth + 1)
    FROM st
    CROSS JOIN (
        SELECT groupUniqArray(parent) AS a FROM edges
        PREWHERE child IN (SELECT arrayJoin(frontier) FROM st)
        WHERE parent NOT IN (SELECT arrayJoin(seen) FROM st)
    ) AS nxt
    WHERE notEmpty(st.frontier)
)
SELECT arrayJoin(frontier), depth FROM st
SETTINGS max_recursive_cte_evaluation_depth = 1000000
"""
# Rows (node, level, '', 0) for the walk and (unit, 0, production lot, 1) for its units.
FORWARD_LOTS_RESULT_SQL = """
SELECT node, depth, '', toUInt8(0) FROM recall_nodes
UNION ALL
SELECT unit, toUInt32(0), any(production_lot), toUInt8(1) FROM units WHERE unit IN (SELECT node FROM recall_nodes) GROUP BY unit
"""

# For each source, the serial nodes downstream of it (unwindowed forward, the source excluded).
SERIALS_DOWNSTREAM_SQL = """
WITH RECURSIVE st AS (
    SELECT DISTINCT child AS src, parent AS x FROM edges WHERE child IN {sources:Array(String)}
  UNION ALL
    SELECT DISTINCT r.src, e.parent
    FROM (SELECT child, parent FROM edges WHERE child IN (SELECT x FROM st)) AS e
    INNER JOIN st AS r ON e.child = r.x
)
SELECT src, uniqExactIf(x, substringIndex(x, ':', 1) = 'serial' AND x != src) FROM st GROUP BY src
SETTINGS max_recursive_cte_evaluation_depth = 32
"""
# The same breadth-first, one working row per source.
SERIALS_DOWNSTREAM_EXACT_SQL = """
WITH RECURSIVE st AS (
    SELECT arrayJoin(arrayDistinct({sources:Array(String)})) AS src, [src] AS frontier, [src] AS seen, toUInt32(0) AS depth
  UNION ALL
    SELECT st.src, nxt.a, arrayConcat(st.seen, nxt.a), toUInt32(st.depth + 1)
    FROM st
    INNER JOIN (
        SELECT f.src AS src, groupUniqArray(e.parent) AS a
        FROM (SELECT DISTINCT child, parent FROM edges WHERE child IN (SELECT arrayJoin(frontier) FROM st)) AS e
        INNER JOIN (SELECT src, arrayJoin(frontier) AS node FROM st) AS f ON e.child = f.node
        WHERE (f.src, e.parent) NOT IN (SELECT src, arrayJoin(seen) FROM st)
        GROUP BY f.src
    ) AS nxt ON nxt.src = st.src
)
SELECT src, sum(length(arrayFilter(n -> substringIndex(n, ':', 1) = 'serial', frontier))) FROM st WHERE depth > 0 GROUP BY src
SETTINGS max_recursive_cte_evaluation_depth = 1000000
"""

# Lot-level scope (genealogy.domain.recall.lot_level), the same walk in recall_walk (node, tag, lvl):
# tag 0 the start set F0 (the starts, their serials' production lots and those lots' members),
# 1 a serial/lot node reached later, 2 a production lot widened. Per level L: the lots of the
# nodes reached at L not widened yet (a serial's production lot, a lot node itself); then the
# serial/lot parents, not seen yet, of the level's nodes and of those lots' nodes and members
# make level L + 1 (through the window from F0 only). lot_level also marks the lots' nodes and
# members seen; not recording them changes no answer (their lot is widened already, and they
# are walked unwindowed either way), it only saves inserting them.
# Start set F0: from ids (windowed or not: the window applies to the first hop), or completions.
LOT_START_IDS_SQL = """
INSERT INTO recall_walk
WITH starts AS (SELECT arrayJoin({starts:Array(String)}) AS node),
     own AS (SELECT any(production_lot) AS lot FROM units
             PREWHERE unit IN (SELECT node FROM starts) WHERE substringIndex(unit, ':', 1) = 'serial' GROUP BY unit)
SELECT DISTINCT node, toUInt8(0), toUInt32(0) FROM (
    SELECT node FROM starts UNION ALL SELECT lot FROM own
    UNION ALL SELECT unit FROM lot_members WHERE production_lot IN (SELECT lot FROM own))
UNION ALL
SELECT DISTINCT lot, toUInt8(2), toUInt32(0) FROM own
"""
LOT_START_COMPLETED_SQL = """
INSERT INTO recall_walk
WITH starts AS (
        SELECT unit AS node FROM units_by_station
        WHERE station = {station:String}
          AND completed_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')
          AND completed_at < fromUnixTimestamp64Milli({until:Int64}, 'UTC')
          AND ({operator:String} = '' OR operator = {operator:String})
     ),
     own AS (SELECT any(production_lot) AS lot FROM units
             PREWHERE unit IN (SELECT node FROM starts) WHERE substringIndex(unit, ':', 1) = 'serial' GROUP BY unit)
SELECT DISTINCT node, toUInt8(0), toUInt32(0) FROM (
    SELECT node FROM starts UNION ALL SELECT lot FROM own
    UNION ALL SELECT unit FROM lot_members WHERE production_lot IN (SELECT lot FROM own))
UNION ALL
SELECT DISTINCT lot, toUInt8(2), toUInt32(0) FROM own
"""
# Level 1: unwindowed (ids, completions) or through the first-hop window.
LOT_FIRST_HOP_SQL = """
INSERT INTO recall_walk
SELECT DISTINCT parent, toUInt8(1), toUInt32(1) FROM edges
PREWHERE child IN (SELECT node FROM recall_walk WHERE tag = 0)
WHERE substringIndex(parent, ':', 1) IN ('serial', 'lot') AND parent NOT IN (SELECT node FROM recall_walk WHERE tag IN (0, 1))
"""
LOT_FIRST_HOP_WINDOW_SQL = """
INSERT INTO recall_walk
SELECT DISTINCT parent, toUInt8(1), toUInt32(1) FROM edges
PREWHERE child IN (SELECT node FROM recall_walk WHERE tag = 0)
WHERE substringIndex(parent, ':', 1) IN ('serial', 'lot') AND parent NOT IN (SELECT node FROM recall_walk WHERE tag IN (0, 1))
  AND event_time >= fromUnixTimestamp64Milli({hop_since:Int64}, 'UTC')
  AND event_time < fromUnixTimestamp64Milli({hop_until:Int64}, 'UTC')
"""
LOT_WIDEN_SQL = """
INSERT INTO recall_walk
SELECT DISTINCT lot, toUInt8(2), {level:UInt32} FROM (
    SELECT any(production_lot) AS lot FROM units
    PREWHERE unit IN (SELECT node FROM recall_walk WHERE tag = 1 AND lvl = {level:UInt32})
    WHERE substringIndex(unit, ':', 1) = 'serial'
    GROUP BY unit
  UNION ALL
    SELECT node FROM recall_walk WHERE tag = 1 AND lvl = {level:UInt32} AND substringIndex(node, ':', 1) = 'lot')
WHERE lot NOT IN (SELECT node FROM recall_walk WHERE tag = 2)
"""
LOT_NEXT_LEVEL_SQL = """
INSERT INTO recall_walk
SELECT DISTINCT parent, toUInt8(1), {next:UInt32} FROM edges
PREWHERE child IN (SELECT node FROM recall_walk WHERE tag IN (1, 2) AND lvl = {level:UInt32}
                   UNION ALL
                   SELECT unit FROM lot_members WHERE production_lot IN (SELECT node FROM recall_walk WHERE tag = 2 AND lvl = {level:UInt32}))
WHERE child NOT IN (SELECT node FROM recall_walk WHERE tag = 0)
  AND substringIndex(parent, ':', 1) IN ('serial', 'lot') AND parent NOT IN (SELECT node FROM recall_walk WHERE tag IN (0, 1))
"""
LOT_LEVEL_SIZE_SQL = "SELECT count() FROM recall_walk WHERE tag = 1 AND lvl = {level:UInt32}"
LOT_SCOPE_RESULT_SQL = """
SELECT production_lot, uniqExact(unit) FROM lot_members
WHERE production_lot IN (SELECT node FROM recall_walk WHERE tag = 2)
GROUP BY production_lot
"""

# Backward (as built): CHILDREN_SQL's rows for every node below the unit.
BACKWARD_SQL = """
WITH RECURSIVE st AS (
    SELECT parent, child, toString(argMin(relation, event_time)) AS rel, min(toUnixTimestamp64Milli(event_time)) AS ms, toString(argMin(station, event_time)) AS stn
    FROM edges_by_parent WHERE parent = {unit:String} GROUP BY parent, child
  UNION ALL
    SELECT parent, child, toString(argMin(relation, event_time)), min(toUnixTimestamp64Milli(event_time)), toString(argMin(station, event_time))
    FROM edges_by_parent WHERE parent IN (SELECT child FROM st) GROUP BY parent, child
)
SELECT parent, child, any(rel), min(ms), any(stn) FROM st GROUP BY parent, child
SETTINGS max_recursive_cte_evaluation_depth = 32
"""
# The same breadth-first, for the nodes of the first {max_depth} levels (genealogy.domain.recall.trace).
BACKWARD_EXACT_SQL = """
WITH RECURSIVE st AS (
    SELECT [{unit:String}] AS frontier, frontier AS seen,
           CAST([], 'Array(Tuple(String, String, String, Int64, String))') AS found, toUInt32(0) AS depth
  UNION ALL
    SELECT c.nodes, arrayConcat(st.seen, c.nodes), c.rows, toUInt32(st.depth + 1)
    FROM st
    CROSS JOIN (
        SELECT CAST(groupArray((parent, child, rel, ms, stn)), 'Array(Tuple(String, String, String, Int64, String))') AS rows,
               groupUniqArrayIf(child, child NOT IN (SELECT arrayJoin(seen) FROM st)) AS nodes
        FROM (
            SELECT parent, child, toString(argMin(relation, event_time)) AS rel, min(toUnixTimestamp64Milli(event_time)) AS ms, toString(argMin(station, event_time)) AS stn
            FROM edges_by_parent PREWHERE parent IN (SELECT arrayJoin(frontier) FROM st)
            GROUP BY parent, child)
    ) AS c
    WHERE notEmpty(st.frontier) AND st.depth < {max_depth:UInt32}
)
SELECT f.1, f.2, f.3, f.4, f.5 FROM st ARRAY JOIN found AS f
SETTINGS max_recursive_cte_evaluation_depth = 1000000
"""

# --- read model: status ---------------------------------------------------------------------------

COUNTS_SQL = """
SELECT
    (SELECT uniqExact(edge_id) FROM edges)                  AS edges,
    (SELECT uniqExact(unit) FROM units)                     AS units,
    (SELECT uniqExact(production_lot) FROM units)           AS production_lots,
    (SELECT uniqExact(topic, partition, offset) FROM capture_batches) AS capture_batches,
    (SELECT uniqExact(event_id) FROM station_facts)         AS station_facts,
    (SELECT uniqExact(dead_letter_id) FROM dead_letters)    AS dead_letters,
    (SELECT uniqExact(event_id) FROM epcis_events)          AS epcis_events
"""
DEAD_LETTERS_BY_REASON_SQL = """
SELECT stage, event_kind, any(reason), uniqExact(dead_letter_id) FROM dead_letters
GROUP BY stage, event_kind ORDER BY stage, event_kind
"""

# --- linkage report (sinks/linkage.py) -------------------------------------------------------------
# A node's item is the middle part of its id (kind:item:ident): extract(x, '^[^:]*:([^:]*):').

UNITS_BY_ITEM_SQL = """
SELECT item, uniqExact(unit), uniqExact(production_lot), uniqExactIf(unit, built), uniqExactIf(unit, built AND NOT tainted)
FROM (
    SELECT unit, production_lot, extract(unit, '^[^:]*:([^:]*):') AS item,
           unit IN (SELECT parent FROM edges WHERE relation IN {as_built:Array(String)}) AS built,
           unit IN {tainted:Array(String)} AS tainted
    FROM units
)
GROUP BY item ORDER BY item
"""
UNACCOUNTED_SQL = """
SELECT DISTINCT child FROM edges
WHERE relation IN {as_built:Array(String)} AND startsWith(child, 'serial:')
  AND child NOT IN (SELECT unit FROM units)
  AND (child IN (SELECT parent FROM edges WHERE relation IN {as_built:Array(String)})
       OR extract(child, '^[^:]*:([^:]*):') IN (SELECT extract(unit, '^[^:]*:([^:]*):') FROM units))
ORDER BY child
"""
# One level forward along as-built edges (carrying unaccounted serials to what contains them).
AS_BUILT_PARENTS_SQL = """
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
BROKEN_LINKS_SQL = """
SELECT child, extract(child, '^[^:]*:([^:]*):') AS item, arraySort(groupUniqArray(parent)), count() OVER ()
FROM edges
WHERE relation IN {link:Array(String)} AND startsWith(child, 'serial:')
  AND child NOT IN (SELECT unit FROM units)
  AND item IN (SELECT extract(unit, '^[^:]*:([^:]*):') FROM units)
GROUP BY child ORDER BY child LIMIT {limit:UInt32}
"""
NO_PRODUCTION_SQL = """
SELECT parent, uniqExact(child), count() OVER ()
FROM edges
WHERE relation IN {link:Array(String)} AND startsWith(parent, 'serial:') AND parent NOT IN (SELECT unit FROM units)
GROUP BY parent ORDER BY parent LIMIT {limit:UInt32}
"""
CLASS_INPUTS_SQL = """
SELECT extract(child, '^[^:]*:([^:]*):') AS item, uniqExact(edge_id), uniqExact(parent)
FROM edges WHERE startsWith(child, 'class:')
GROUP BY item ORDER BY item
"""
# Packages (reels, trays) consumed with no supplier lot: only for items some of whose packages have
# one (a plant that records supplier lots for that part), so a feed that loads supplier lots
# directly is not reported.
PACKAGES_WITHOUT_SUPPLIER_LOT_SQL = """
SELECT child, count() OVER ()
FROM (SELECT DISTINCT child FROM edges WHERE relation = 'consumed' AND startsWith(child, 'lot:'))
WHERE extract(child, '^[^:]*:([^:]*):') IN (SELECT extract(parent, '^[^:]*:([^:]*):') FROM edges WHERE relation = 'supplied')
  AND child NOT IN (SELECT parent FROM edges WHERE relation = 'supplied')
ORDER BY child LIMIT {limit:UInt32}
"""
CORRECTIONS_SQL = """
SELECT uniqExact(declaration), uniqExact(source_event), uniqExactIf(edge_id, kind = 'edge'),
       uniqExactIf((child, source_event), kind = 'unit')
FROM corrections
"""
CORRECTION_EXAMPLES_SQL = """
SELECT declaration, any(reason), any(corrective), count() FROM corrections
GROUP BY declaration ORDER BY declaration LIMIT {limit:UInt32}
"""
PACKAGES_WITH_SUPPLIER_LOT_SQL = "SELECT uniqExact(parent), uniqExact(child) FROM edges WHERE relation = 'supplied'"
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
DEAD_LETTERS_BY_KIND_SQL = """
SELECT stage, event_kind, uniqExact(dead_letter_id), any(reason)
FROM dead_letters_final GROUP BY stage, event_kind ORDER BY stage, event_kind
"""

# --- granularity report (sinks/granularity.py) ------------------------------------------------------

ITEMS_SQL = "SELECT DISTINCT extract(unit, '^[^:]*:([^:]*):') AS item FROM units ORDER BY item"
ITEM_STATS_SQL = """
SELECT (SELECT uniqExact(unit) FROM units WHERE startsWith(unit, {prefix:String})),
       (SELECT uniqExact(production_lot) FROM units WHERE startsWith(unit, {prefix:String})),
       (SELECT max(n) FROM (SELECT uniqExact(unit) AS n FROM units WHERE startsWith(unit, {prefix:String}) GROUP BY production_lot))
"""
ITEM_EDGES_SQL = """
SELECT uniqExact(edge_id) FROM edges
WHERE startsWith(parent, {prefix:String}) AND relation IN {as_built:Array(String)}
"""
# One row per lot consumed directly by a unit of the item: how many of the item's units it reached
# (serial scope), the units of the item's production lots it reached (lot scope), whether it has
# as-built inputs itself (a mixed / transformed lot: it widens the scope of anything upstream).
# A package (reel) with a supplier lot counts as that lot: the bad input a recall starts from is the
# supplier's lot, of which the reel is one part.
INPUT_LOTS_SQL = """
WITH direct AS (
    SELECT DISTINCT child, parent FROM edges
    WHERE startsWith(parent, {prefix:String}) AND startsWith(child, 'lot:') AND relation IN {as_built:Array(String)}
), supplied AS (
    SELECT DISTINCT child AS supplier_lot, parent AS package FROM edges WHERE relation = 'supplied'
), uses AS (
    SELECT DISTINCT if(supplied.supplier_lot != '', supplied.supplier_lot, direct.child) AS lot, direct.parent AS unit
    FROM direct LEFT JOIN supplied ON supplied.package = direct.child
), lot_sizes AS (
    SELECT production_lot, uniqExact(unit) AS n FROM units WHERE startsWith(unit, {prefix:String}) GROUP BY production_lot
), reached AS (
    SELECT DISTINCT uses.lot AS lot, units.production_lot AS production_lot FROM uses JOIN units ON units.unit = uses.unit
)
SELECT s.lot, s.serial_units, l.lot_units, s.lot IN (SELECT parent FROM edges WHERE relation IN {as_built:Array(String)})
FROM (SELECT lot, uniqExact(unit) AS serial_units FROM uses GROUP BY lot) AS s
JOIN (SELECT lot, sum(n) AS lot_units FROM reached JOIN lot_sizes USING production_lot GROUP BY lot) AS l USING lot
ORDER BY s.lot
"""

# --- reprocess (sinks/reprocess.py) -------------------------------------------------------------------

LATE_DEAD_LETTERS_SQL = """
SELECT dead_letter_id, source, payload FROM dead_letters_final
WHERE stage = 'late' ORDER BY dead_letter_id
"""
REPROCESSED_SQL = """
SELECT dead_letter_id, station, max(captures_seen), max(toUnixTimestamp64Milli(edges_mark)) FROM reprocessed
GROUP BY dead_letter_id, station
"""
CAPTURE_COUNT_SQL = """
SELECT source, uniqExact(topic, partition, offset) FROM capture_batches
WHERE source IN {stations:Array(String)} GROUP BY source
"""
EDGES_MARK_SQL = """
SELECT station, toUnixTimestamp64Milli(max(inserted_at)) FROM edges
WHERE station IN {stations:Array(String)} AND relation = 'consumed' GROUP BY station
"""
CAPTURE_PAGE_SQL = """
SELECT toUnixTimestamp64Milli(kafka_time) AS t, partition, offset, payload FROM capture_batches
WHERE source = {station:String} AND (toUnixTimestamp64Milli(kafka_time), partition, offset) > ({t:Int64}, {p:UInt32}, {o:UInt64})
ORDER BY t, partition, offset LIMIT {n:UInt32}
"""
STORED_EDGES_SQL = """
SELECT DISTINCT edge_id, child, parent, toUnixTimestamp64Milli(event_time), source_event FROM edges
WHERE relation = 'consumed' AND station = {station:String}
  AND event_time >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')
"""
STORED_UNITS_SQL = "SELECT DISTINCT event_id FROM units WHERE unit IN {units:Array(String)} AND event_id IN {ids:Array(String)}"


# --- join-state recovery (genealogy.join_recovery) --------------------------------------------

# Every capture message, in the order a worker handled them: a station's messages share one partition,
# offsets order them within one broker's life, and the producer's time orders what came before a broker
# whose log was lost. Read in pages along the primary key.
CAPTURE_HISTORY_PAGE_SQL = """
SELECT source, toUnixTimestamp64Milli(kafka_time) AS t, partition, offset, payload FROM capture_batches FINAL
WHERE topic = {topic:String} AND (source, toUnixTimestamp64Milli(kafka_time), partition, offset) > ({s:String}, {t:Int64}, {p:UInt32}, {o:UInt64})
ORDER BY source, t, partition, offset LIMIT {n:UInt32}
"""
CAPTURE_COUNT_SQL_ALL = "SELECT count() FROM capture_batches WHERE topic = {topic:String}"

# --- analyst SQL (sinks/analyst.py) ---------------------------------------------

# ClickHouse's own parser: refuses several statements in one, and gives back the one statement
# formatted; that text is what the allow-list checks and what runs.
ANALYST_FORMAT = "SELECT formatQuery({sql:String})"
