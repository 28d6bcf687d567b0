#!/usr/bin/env python3
"""Recall latency: our ClickHouse model (embedded chdb, product code) vs PostgreSQL vs DuckDB.

One seeded, deterministic genealogy is generated in chunks and bulk-written into all three
stores (not through Kafka):

    supplier lots -> boards (serial) -> products (serial) -> cartons -> pallets -> shipments

Then the same questions are asked of each store, each many times with different targets:

    a  forward recall of a supplier lot (reaches ~5,000 boards and their products)
    b  forward recall of one board serial
    c  backward trace of one product down to its supplier lots
    d  process window: units completed at station S within one hour, then forward

Ours is `sinks.read_model.ReadModel` over embedded ClickHouse (chdb) answered by `genealogy.recall`
exactly as the product does (traversals inside ClickHouse), and "before" the same code forced to
walk one query per level as the product did before; PostgreSQL and DuckDB answer with recursive
CTEs, and also with the product's level-by-level traversal over a `Graph` adapter. Before timing,
results of every store are asserted identical for a few targets of each question.

    . .venv/bin/activate
    python bench/recall_bench.py --edges 1000000
    python bench/recall_bench.py --edges 1000000 10000000     # each size, then a growth table
    python bench/recall_bench.py --edges 10000000 --reuse --skip "default planner" "duckdb (recursive"
                         # re-time without reloading; skipped engines keep their last figures (marked)

Data lives under /tmp/recall-bench; results go to bench/results/recall-<edges>.md (+ .json).
PostgreSQL is installed with apt-get if missing and run as a private cluster under
/tmp/recall-bench/pg (port 5499). The machine is small and shared: every timed cell stops
after --reps repetitions or --cell-seconds, whichever comes first, and the output says so.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from genealogy.domain import holding, ids, recall  # noqa: E402
from genealogy.sinks.connection import Connection  # noqa: E402
from genealogy.sinks.read_model import ReadModel  # noqa: E402

DATA_ROOT = Path("/tmp/recall-bench")
RESULTS = Path(__file__).resolve().parent / "results"
PG_PORT = 5499
PG_CLUSTER = "recallbench"

# --- the plant ---------------------------------------------------------------------------------

BASE_MS = 1_767_600_000_000          # 2026-01-05T08:00:00Z, as producers/simulator.py
CYCLE_MS = 1_000                     # one board and one product per second across all lines
ASSY_DELAY_MS = 30_000               # board done at SMT -> product done at ASSY
PACK_DELAY_MS = 60_000               # product done -> its carton is packed
SHIFT_MS = 8 * 3_600_000
CARTON, PALLET, SHIPMENT = 20, 10, 5  # products per carton, cartons per pallet, pallets per shipment
BLOCK = CARTON * PALLET * SHIPMENT    # 1,000 products = one shipment; chunks are whole blocks
BOARD_ITEM, PRODUCT_ITEM = "BRD-100", "PRD-500"
WINDOW_MS = 3_600_000                 # question d: a one-hour window


@dataclass(frozen=True)
class Params:
    edges: int
    components: int = 60        # component edges per product, its board's included
    board_share: float = 2 / 3  # of those, the share consumed at SMT by the board
    lot_units: int = 5_000      # units per production lot (boards and products alike)
    reel_units: int = 5_000     # units a supplier lot reaches (each slot varies it by +-20 %)
    lines: int = 4              # parallel lines: stations SMT-1..n and ASSY-1..n
    seed: int = 7
    chunk_products: int = 16_000  # ~1M edges per bulk insert

    @property
    def board_slots(self) -> int:
        return round(self.components * self.board_share)

    @property
    def edges_per_product(self) -> float:
        # components + board installed + packed in a carton + the carton's and pallet's share
        return self.components + 2 + 1 / CARTON + 1 / (CARTON * PALLET)

    @property
    def products(self) -> int:
        return max(BLOCK, round(self.edges / self.edges_per_product / BLOCK) * BLOCK)


@dataclass
class Layout:
    """Everything the generator and the target picker need, derived from the seed alone."""
    p: Params
    reel: np.ndarray       # per slot: units per supplier lot
    offset: np.ndarray     # per slot: where in its first lot the line started
    lot_base: np.ndarray   # per slot: global index of the slot's first lot
    lot_nodes: pa.Array    # every supplier lot node id, by global index
    load_ids: pa.Array     # the load event id of each supplier lot, by global index

    @classmethod
    def plan(cls, p: Params) -> "Layout":
        rng = np.random.default_rng(p.seed)
        reel = (p.reel_units * rng.uniform(0.8, 1.2, p.components)).astype(np.int64)
        offset = rng.integers(0, reel)
        lots_per_slot = (p.products - 1 + offset) // reel + 1
        lot_base = np.concatenate([[0], np.cumsum(lots_per_slot)[:-1]]).astype(np.int64)
        names = [(k, n) for k in range(p.components) for n in range(int(lots_per_slot[k]))]
        return cls(p, reel, offset, lot_base,
                   pa.array([supplier_lot(k, n) for k, n in names]),
                   pa.array([f"ld-{k:03d}-{n:05d}" for k, n in names]))

    def lot_index(self, units: np.ndarray, slots: np.ndarray) -> np.ndarray:
        return self.lot_base[slots] + (units + self.offset[slots]) // self.reel[slots]

    def whole_lots(self, slot: int) -> list[int]:
        """Lot numbers of a slot that lie entirely inside the produced range (no cut-off first/last lot)."""
        reel, off = int(self.reel[slot]), int(self.offset[slot])
        return [n for n in range(1, (self.p.products + off) // reel) if (n + 1) * reel - off <= self.p.products]


def supplier_lot(slot: int, n: int) -> str:
    return f"lot:CMP-{slot:03d}:SL{slot:03d}-{n:05d}"


def board(i: int) -> str:
    return f"serial:{BOARD_ITEM}:B{i:09d}"


def product(i: int) -> str:
    return f"serial:{PRODUCT_ITEM}:P{i:09d}"


# --- generator: one chunk of whole shipments as Arrow tables -----------------------------------

EDGE_SCHEMA = pa.schema([
    ("edge_id", pa.uint64()), ("child", pa.string()), ("parent", pa.string()), ("relation", pa.string()),
    ("event_time", pa.timestamp("ms", tz="UTC")), ("station", pa.string()), ("operator", pa.string()),
    ("work_order", pa.string()), ("parent_lot", pa.string()), ("quantity", pa.float64()),
    ("source_event", pa.string()),
])
UNIT_SCHEMA = pa.schema([
    ("unit", pa.string()), ("production_lot", pa.string()), ("work_order", pa.string()), ("station", pa.string()),
    ("operator", pa.string()), ("completed_at", pa.timestamp("ms", tz="UTC")), ("event_id", pa.string()),
])
KIND_CONSUMED, KIND_INSTALLED, KIND_CARTON, KIND_PALLET, KIND_SHIPMENT = 1, 2, 3, 4, 5


def fmt(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """prefix + zero-padded number, vectorised."""
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def const(value: str, n: int) -> pa.Array:
    return pc.take(pa.array([value]), pa.array(np.zeros(n, dtype=np.int32)))


def edge_ids(kind: int, keys: np.ndarray, seed: int) -> np.ndarray:
    """Random-looking 63-bit ids like the product's blake2b ids (same entropy on disk), but
    vectorised: splitmix64 is a bijection, so distinct (kind, key) give distinct ids."""
    with np.errstate(over="ignore"):
        z = (np.uint64(kind) << np.uint64(56)) | keys.astype(np.uint64)
        z = z + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z & np.uint64(0x7FFF_FFFF_FFFF_FFFF)


def edge_table(ids_: np.ndarray, child, parent, relation: str, t_ms: np.ndarray, station, operator,
               work_order, parent_lot, source_event) -> pa.Table:
    n = len(ids_)
    cols = [pa.array(ids_, pa.uint64()), child, parent, const(relation, n),
            pa.array(t_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")), station, operator,
            work_order, parent_lot, pa.array(np.ones(n)), source_event]
    return pa.Table.from_arrays(cols, schema=EDGE_SCHEMA)


def shift_operator(t_ms: np.ndarray) -> pa.Array:
    return fmt("OP-", (t_ms - BASE_MS) // SHIFT_MS % 3 + 1, 2)


def generate_chunk(lay: Layout, start: int, stop: int) -> tuple[pa.Table, pa.Table]:
    """Edges and units of products [start, stop): boards, products, cartons, pallets, shipments."""
    p = lay.p
    i = np.arange(start, stop, dtype=np.int64)
    n = len(i)
    t_board = BASE_MS + i * CYCLE_MS
    t_product = t_board + ASSY_DELAY_MS
    line = i % p.lines + 1
    lot_no = i // p.lot_units + 1
    units = {
        "board": fmt(f"serial:{BOARD_ITEM}:B", i, 9), "product": fmt(f"serial:{PRODUCT_ITEM}:P", i, 9),
        "board_lot": fmt(f"lot:{BOARD_ITEM}:PL-{BOARD_ITEM}-", lot_no, 4),
        "product_lot": fmt(f"lot:{PRODUCT_ITEM}:PL-{PRODUCT_ITEM}-", lot_no, 4),
        "board_wo": fmt(f"WO-{BOARD_ITEM}-", lot_no, 4), "product_wo": fmt(f"WO-{PRODUCT_ITEM}-", lot_no, 4),
        "smt": fmt("SMT-", line, 1), "assy": fmt("ASSY-", line, 1),
        "board_event": fmt("smt-", i, 9), "product_event": fmt("asy-", i, 9),
    }
    edges = [
        consumption(lay, i, np.arange(0, p.board_slots), units["board"], t_board, units["smt"],
                    units["board_wo"], units["board_lot"], units["board_event"]),
        consumption(lay, i, np.arange(p.board_slots, p.components), units["product"], t_product, units["assy"],
                    units["product_wo"], units["product_lot"], units["product_event"]),
        edge_table(edge_ids(KIND_INSTALLED, i, p.seed), units["board"], units["product"], "installed",
                   t_product - 500, units["assy"], shift_operator(t_product), units["product_wo"],
                   units["product_lot"], fmt("ins-", i, 9)),
        *packing(i, t_product, p.seed),
    ]
    unit_rows = pa.concat_tables([
        pa.Table.from_arrays([units["board"], units["board_lot"], units["board_wo"], units["smt"],
                              shift_operator(t_board), pa.array(t_board).cast(pa.timestamp("ms", tz="UTC")),
                              units["board_event"]], schema=UNIT_SCHEMA),
        pa.Table.from_arrays([units["product"], units["product_lot"], units["product_wo"], units["assy"],
                              shift_operator(t_product), pa.array(t_product).cast(pa.timestamp("ms", tz="UTC")),
                              units["product_event"]], schema=UNIT_SCHEMA),
    ])
    assert n % BLOCK == 0
    return pa.concat_tables(edges), unit_rows


def consumption(lay: Layout, i: np.ndarray, slots: np.ndarray, unit: pa.Array, t_ms: np.ndarray,
                station: pa.Array, work_order: pa.Array, prod_lot: pa.Array, event: pa.Array) -> pa.Table:
    """Every unit consumes one supplier lot per slot: the lot loaded in that slot at the time."""
    k = len(slots)
    rows = np.repeat(np.arange(len(i)), k)
    slot = np.tile(slots, len(i))
    unit_no = i[rows]
    lot = lay.lot_index(unit_no, slot)
    take = pa.array(rows)
    return edge_table(edge_ids(KIND_CONSUMED, unit_no * 512 + slot, lay.p.seed), pc.take(lay.lot_nodes, pa.array(lot)),
                      pc.take(unit, take), "consumed", t_ms[rows], pc.take(station, take),
                      shift_operator(t_ms[rows]), pc.take(work_order, take), pc.take(prod_lot, take),
                      join(pc.take(event, take), "+", pc.take(lay.load_ids, pa.array(lot))))


def packing(i: np.ndarray, t_product: np.ndarray, seed: int) -> list[pa.Table]:
    """Products into cartons, cartons onto pallets, pallets onto shipments, at PACK-1."""
    carton_of = i // CARTON
    cartons = np.unique(carton_of)
    pallets = np.unique(cartons // PALLET)
    shipments = np.unique(pallets // SHIPMENT)
    packed_at = lambda last_product: BASE_MS + last_product * CYCLE_MS + ASSY_DELAY_MS + PACK_DELAY_MS  # noqa: E731
    t_carton = packed_at(cartons * CARTON + CARTON - 1)
    t_pallet = packed_at((pallets + 1) * CARTON * PALLET - 1) + 1
    t_ship = packed_at((shipments + 1) * BLOCK - 1) + 2

    def pack(kind, keys, child, parent, t, event):
        n = len(keys)
        return edge_table(edge_ids(kind, keys, seed), child, parent, "packed", t, const("PACK-1", n),
                          shift_operator(t), const("", n), const("", n), event)

    carton_node = lambda c: fmt("container:carton:CTN-", c, 7)  # noqa: E731
    pallet_node = lambda p: fmt("container:pallet:PAL-", p, 6)  # noqa: E731
    return [
        pack(KIND_CARTON, i, fmt(f"serial:{PRODUCT_ITEM}:P", i, 9), carton_node(carton_of),
             packed_at(carton_of * CARTON + CARTON - 1), fmt("pk-c", carton_of, 7)),
        pack(KIND_PALLET, cartons, carton_node(cartons), pallet_node(cartons // PALLET), t_pallet[(cartons // PALLET) - pallets[0]],
             fmt("pk-p", cartons // PALLET, 6)),
        pack(KIND_SHIPMENT, pallets, pallet_node(pallets), fmt("shipment:shipment:SHP-", pallets // SHIPMENT, 5),
             t_ship[(pallets // SHIPMENT) - shipments[0]], fmt("pk-s", pallets // SHIPMENT, 5)),
    ] if len(t_carton) else []


def chunks(lay: Layout) -> Iterator[tuple[int, pa.Table, pa.Table]]:
    step = max(BLOCK, lay.p.chunk_products // BLOCK * BLOCK)
    for start in range(0, lay.p.products, step):
        stop = min(lay.p.products, start + step)
        yield stop, *generate_chunk(lay, start, stop)


# --- stores: load ------------------------------------------------------------------------------

CH_PARTS_SQL = """
SELECT table, sum(rows), sum(bytes_on_disk), count() FROM system.parts
WHERE active AND database = currentDatabase() GROUP BY table ORDER BY table
"""
CH_MERGES_SQL = "SELECT count() FROM system.merges WHERE database = currentDatabase()"

PG_DDL = """
DROP TABLE IF EXISTS edges;
DROP TABLE IF EXISTS units;
CREATE TABLE edges (
    edge_id      bigint NOT NULL,
    child        text NOT NULL,
    parent       text NOT NULL,
    relation     text NOT NULL,
    event_time   timestamptz NOT NULL,
    station      text NOT NULL,
    operator     text NOT NULL,
    work_order   text NOT NULL,
    parent_lot   text NOT NULL,
    quantity     double precision NOT NULL,
    source_event text NOT NULL
);
CREATE TABLE units (
    unit           text NOT NULL,
    production_lot text NOT NULL,
    work_order     text NOT NULL,
    station        text NOT NULL,
    operator       text NOT NULL,
    completed_at   timestamptz NOT NULL,
    event_id       text NOT NULL
);
"""
# Built after the load (faster than maintaining them row by row), then VACUUM ANALYZE so the
# planner has statistics and the visibility map allows index-only scans.
PG_INDEXES = [
    "ALTER TABLE edges ADD PRIMARY KEY (edge_id)",     # what idempotent ingest (redelivery) needs
    "CREATE INDEX edges_child_parent ON edges (child, parent)",
    "CREATE INDEX edges_parent_child ON edges (parent, child)",
    "ALTER TABLE units ADD PRIMARY KEY (unit)",
    "CREATE INDEX units_production_lot ON units (production_lot)",
    "CREATE INDEX units_station_time ON units (station, completed_at)",
]
PG_SETTINGS = {  # a fair OLTP-ish setup for a 2-core box with the data in RAM
    "shared_buffers": "2GB", "effective_cache_size": "8GB", "random_page_cost": "1.1",
    "maintenance_work_mem": "1GB", "max_wal_size": "8GB", "checkpoint_timeout": "30min",
    # JIT compiles plans whose *estimated* cost is high, which recursive CTEs always are: +50-100 ms.
    "jit": "off",
    # Keep the default on purpose: the recursive UNION's dedup hash table is sized from the planner's
    # (huge) row estimate up to work_mem, so 64MB made a 4-row recall take 55 ms instead of 0.5 ms.
    "work_mem": "4MB",
}
PG_SIZES_SQL = """
SELECT pg_total_relation_size('edges'), pg_relation_size('edges'), pg_indexes_size('edges'),
       pg_total_relation_size('units'), pg_database_size(current_database())
"""
PG_INDEX_SIZES_SQL = """
SELECT indexrelname, pg_relation_size(indexrelid) FROM pg_stat_user_indexes WHERE relname = 'edges' ORDER BY 1
"""

DUCK_DDL = """
CREATE TABLE edges (
    edge_id UBIGINT NOT NULL, child VARCHAR NOT NULL, parent VARCHAR NOT NULL, relation VARCHAR NOT NULL,
    event_time TIMESTAMPTZ NOT NULL, station VARCHAR NOT NULL, operator VARCHAR NOT NULL,
    work_order VARCHAR NOT NULL, parent_lot VARCHAR NOT NULL, quantity DOUBLE NOT NULL, source_event VARCHAR NOT NULL
);
CREATE TABLE units (
    unit VARCHAR NOT NULL, production_lot VARCHAR NOT NULL, work_order VARCHAR NOT NULL, station VARCHAR NOT NULL,
    operator VARCHAR NOT NULL, completed_at TIMESTAMPTZ NOT NULL, event_id VARCHAR NOT NULL
);
"""
# ART indexes, as PostgreSQL gets btrees. Single-column on purpose: DuckDB's index scan does not
# use a composite ART. It picks the index at scan start for point lookups and for the semi-join of
# the level-by-level variant (dynamic filter); its recursive CTE joins are hash joins over a scan.
DUCK_INDEXES = [
    "CREATE INDEX edges_child ON edges (child)",
    "CREATE INDEX edges_parent ON edges (parent)",
    "CREATE UNIQUE INDEX units_unit ON units (unit)",
    "CREATE INDEX units_production_lot ON units (production_lot)",
]


class Timer:
    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._t


class ClickHouseLoader:
    name = "clickhouse"

    def __init__(self, path: Path):
        self.store = open_store(path)
        self.store.connection.migrate()  # the product's DDL: edges, edges_by_parent + MV, units, lot_members + MV, nodes + MVs

    def write(self, edges: pa.Table, units: pa.Table) -> None:
        self.store.connection.client.insert_arrow("units", units)
        self.store.connection.client.insert_arrow("edges", edges)
        self.store.connection.client.insert_arrow("held_intervals", held_rows(edges))


def held_rows(edges: pa.Table) -> pa.Table:
    """The held_intervals rows the sink would write for these edges (genealogy.domain.holding): nothing in
    this data is unpacked, so every packing is still held. A bulk load bypasses the sink's writer."""
    held = edges.filter(pc.is_in(edges["relation"], pa.array(list(holding.HELD))))
    n = held.num_rows
    return pa.table({"child": held["child"], "holder": held["parent"], "edge_id": held["edge_id"],
                     "relation": held["relation"], "from_time": held["event_time"],
                     "to_time": pa.nulls(n, held.schema.field("event_time").type),
                     "version": pa.array(np.ones(n, dtype=np.uint64)), "is_deleted": pa.array(np.zeros(n, dtype=np.uint8))})

    def finish(self) -> float:
        """Returns the seconds spent only confirming that merges stay idle, not counted as load."""
        # Let background merges of the bulk-inserted parts settle (idle for 5 polls in a row), as they
        # would after a day of streaming, so no merge competes with the timed queries. The merge
        # selector then leaves a few parts per table (e.g. one 6M-row part + 1M-row inserts at 10M).
        deadline = time.monotonic() + 300
        idle, idle_since = 0, time.perf_counter()
        while idle < 5 and time.monotonic() < deadline:
            if self.store.rows(CH_MERGES_SQL)[0][0]:
                idle = 0
            else:
                idle, idle_since = idle + 1, idle_since if idle else time.perf_counter()
            time.sleep(1)
        return time.perf_counter() - idle_since


class PostgresLoader:
    name = "postgres"

    def __init__(self, dbname: str):
        import psycopg
        self.conn = psycopg.connect(**pg_conninfo(dbname), autocommit=True)
        for statement in sql_statements(PG_DDL):
            self.conn.execute(statement)

    def write(self, edges: pa.Table, units: pa.Table) -> None:
        self._copy("units", units)
        self._copy("edges", edges)

    def _copy(self, table: str, data: pa.Table) -> None:
        buf = io.BytesIO()
        pacsv.write_csv(data, buf, pacsv.WriteOptions(include_header=False))
        with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(data.column_names)}) FROM STDIN (FORMAT csv)") as copy:
            copy.write(buf.getbuffer())

    def finish(self) -> None:
        for statement in PG_INDEXES:
            progress(f"  postgres: {statement}")
            self.conn.execute(statement)
        progress("  postgres: VACUUM ANALYZE")
        self.conn.execute("VACUUM ANALYZE edges")
        self.conn.execute("VACUUM ANALYZE units")
        self.conn.execute("CHECKPOINT")


class DuckLoader:
    name = "duckdb"

    def __init__(self, path: Path):
        import duckdb
        path.unlink(missing_ok=True)
        self.conn = duckdb.connect(str(path))
        self.conn.execute(DUCK_DDL)

    def write(self, edges: pa.Table, units: pa.Table) -> None:
        self.conn.register("chunk_units", units)
        self.conn.register("chunk_edges", edges)
        self.conn.execute("INSERT INTO units SELECT * FROM chunk_units")
        self.conn.execute("INSERT INTO edges SELECT * FROM chunk_edges")
        self.conn.unregister("chunk_units")
        self.conn.unregister("chunk_edges")

    def finish(self) -> None:
        for statement in DUCK_INDEXES:
            progress(f"  duckdb: {statement}")
            self.conn.execute(statement)
        self.conn.execute("CHECKPOINT")


def load(lay: Layout, dirs: "Dirs", dbname: str) -> dict:
    loaders = [ClickHouseLoader(dirs.clickhouse), PostgresLoader(dbname), DuckLoader(dirs.duckdb)]
    timers = {ld.name: Timer() for ld in loaders}
    generate = Timer()
    edges_total = units_total = 0
    started = time.perf_counter()
    it = chunks(lay)
    while True:
        with generate:
            item = next(it, None)
        if item is None:
            break
        done, edges, units = item
        for ld in loaders:
            with timers[ld.name]:
                ld.write(edges, units)
        edges_total += edges.num_rows
        units_total += units.num_rows
        elapsed = time.perf_counter() - started
        progress(f"  loaded {done:,}/{lay.p.products:,} products, {edges_total:,} edges ({elapsed:.0f} s; "
                 + ", ".join(f"{k} {t.seconds:.0f} s" for k, t in timers.items()) + f", generate {generate.seconds:.0f} s)")
    for ld in loaders:
        progress(f"  finishing {ld.name} (indexes / merges / checkpoint) ...")
        with timers[ld.name]:
            not_load = ld.finish() or 0.0
        timers[ld.name].seconds -= not_load
    for ld in loaders:
        (ld.store.connection.close() if ld.name == "clickhouse" else ld.conn.close())
    return {"edges": edges_total, "units": units_total, "generate_s": generate.seconds,
            "load_s": {k: t.seconds for k, t in timers.items()}}


# --- stores: PostgreSQL service ----------------------------------------------------------------

def pg_conninfo(dbname: str) -> dict:
    return {"host": "/var/run/postgresql", "port": PG_PORT, "user": "postgres", "dbname": dbname}


def pg_edges(dbname: str) -> int | None:
    import psycopg
    try:
        with psycopg.connect(**pg_conninfo(dbname)) as conn:
            return conn.execute("SELECT count(*) FROM edges").fetchone()[0]
    except psycopg.Error:
        return None


def ensure_postgres(dbname: str) -> str:
    """Install PostgreSQL if missing, run a private cluster under /tmp/recall-bench/pg, create the db."""
    if not Path("/usr/lib/postgresql").exists() or not shutil.which("pg_createcluster"):
        progress("PostgreSQL missing: apt-get update && apt-get install -y postgresql")
        subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "postgresql"], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    version = max(os.listdir("/usr/lib/postgresql"), key=int)
    clusters = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True).stdout
    if not any(line.split()[:2] == [version, PG_CLUSTER] for line in clusters.splitlines()):
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        DATA_ROOT.chmod(0o755)
        subprocess.run(["pg_createcluster", version, PG_CLUSTER, "-d", str(DATA_ROOT / "pg"), "-p", str(PG_PORT),
                        "--", "--auth-local=trust", "--auth-host=trust"], check=True, stdout=subprocess.DEVNULL)
    conf = Path(f"/etc/postgresql/{version}/{PG_CLUSTER}/conf.d/recall-bench.conf")
    wanted = "".join(f"{k} = '{v}'\n" for k, v in PG_SETTINGS.items())
    changed = not conf.exists() or conf.read_text() != wanted
    conf.write_text(wanted)
    running = subprocess.run(["pg_ctlcluster", version, PG_CLUSTER, "status"], capture_output=True).returncode == 0
    if not running or changed:
        subprocess.run(["pg_ctlcluster", version, PG_CLUSTER, "restart" if running else "start"], check=True)
    import psycopg
    with psycopg.connect(**pg_conninfo("postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone():
            conn.execute(f'CREATE DATABASE "{dbname}"')
        return conn.execute("SHOW server_version").fetchone()[0]


# --- questions: SQL ----------------------------------------------------------------------------
# Written once with $name parameters (DuckDB's style); psycopg gets them as %(name)s.

FORWARD_CTE = """
WITH RECURSIVE reached(node) AS (
    SELECT parent FROM edges WHERE child = $target
  UNION
    SELECT e.parent FROM edges e JOIN reached r ON e.child = r.node
)
SELECT node FROM reached
"""
BACKWARD_CTE = """
WITH RECURSIVE built(parent, child, relation, event_time, station) AS (
    SELECT parent, child, relation, event_time, station FROM edges WHERE parent = $unit
  UNION
    SELECT e.parent, e.child, e.relation, e.event_time, e.station FROM edges e JOIN built b ON e.parent = b.child
)
SELECT parent, child, relation, event_time, station FROM built
"""
WINDOW_UNITS = """
SELECT unit FROM units WHERE station = $station AND completed_at >= $since AND completed_at < $until
"""
WINDOW_CTE = f"""
WITH RECURSIVE reached(node) AS (
    {WINDOW_UNITS.strip()}
  UNION
    SELECT e.parent FROM edges e JOIN reached r ON e.child = r.node
)
SELECT node FROM reached
"""
# The product's Graph, answered by PostgreSQL / DuckDB, for the level-by-level variants.
LEVEL_PARENTS = "SELECT DISTINCT child, parent FROM edges WHERE child = ANY($nodes)"
LEVEL_CHILDREN = """
SELECT parent, child, min(relation), min(epoch_ms(event_time)), min(station)
FROM edges WHERE parent = ANY($nodes) GROUP BY parent, child ORDER BY parent, child
"""
PG_LEVEL_CHILDREN = LEVEL_CHILDREN.replace("epoch_ms(event_time)", "(extract(epoch FROM event_time) * 1000)::bigint")
DUCK_LEVEL_PARENTS = "SELECT DISTINCT child, parent FROM edges WHERE child IN (SELECT unnest($nodes))"
DUCK_LEVEL_CHILDREN = LEVEL_CHILDREN.replace("parent = ANY($nodes)", "parent IN (SELECT unnest($nodes))")

# The window's units for the ClickHouse CTE of question d (ours uses the product's units_by_station).
# units is ordered by (unit, event_id), so this reads the whole (small) units table.
CH_WINDOW_UNITS = """
SELECT DISTINCT unit FROM units
WHERE station = {station:String}
  AND completed_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')
  AND completed_at < fromUnixTimestamp64Milli({until:Int64}, 'UTC')
"""
# For comparison only: the same questions as ClickHouse recursive CTEs over the product's tables.
# ClickHouse allows UNION ALL only; `IN (SELECT ...)` keeps each step a primary-key lookup.
CH_FORWARD_CTE = """
WITH RECURSIVE reached AS (
    SELECT parent AS node FROM edges WHERE child = {target:String}
  UNION ALL
    SELECT DISTINCT parent AS node FROM edges WHERE child IN (SELECT node FROM reached)
)
SELECT DISTINCT node FROM reached
"""
CH_BACKWARD_CTE = """
WITH RECURSIVE built AS (
    SELECT parent, child FROM edges_by_parent WHERE parent = {unit:String}
  UNION ALL
    SELECT DISTINCT parent, child FROM edges_by_parent WHERE parent IN (SELECT child FROM built)
)
SELECT DISTINCT parent, child FROM built
"""
CH_WINDOW_CTE = f"""
WITH RECURSIVE reached AS (
    {CH_WINDOW_UNITS.strip()}
  UNION ALL
    SELECT DISTINCT parent AS unit FROM edges WHERE child IN (SELECT unit FROM reached)
)
SELECT DISTINCT unit FROM reached
"""
CH_BACKFILL_UNITS_BY_STATION = """
INSERT INTO units_by_station SELECT station, completed_at, operator, unit FROM units
"""
CH_PING = "SELECT 1"
CH_IN_LIST_ONLY = "SELECT length({nodes:Array(String)})"
# The same level-2 lookup with the frontier computed inside ClickHouse: no ids cross the boundary.
CH_LEVEL_SERVER_SIDE = """
SELECT DISTINCT child, parent FROM edges
WHERE child IN (SELECT parent FROM edges WHERE child = {target:String})
"""


def pg_sql(sql: str) -> str:
    return re.sub(r"\$(\w+)", r"%(\1)s", sql)


def sql_statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


# --- questions: engines ------------------------------------------------------------------------
# Each engine answers the four questions with a canonical, comparable result:
#   forward(target)   -> frozenset of nodes reached (the target excluded)
#   backward(unit)    -> frozenset of (parent, child) edges of the as-built tree
#   window(st, t0, t1) -> frozenset of window units plus every node they reached

def forward_from(graph: recall.Graph, seeds: list[str]) -> set[str]:
    """recall.forward with many seeds (the window's units): one parents() query per level."""
    seen = set(seeds)
    frontier = sorted(seen)
    while frontier:
        frontier = sorted({p for _, p in graph.parents(frontier)} - seen)
        seen.update(frontier)
    return seen


def tree_edges(node: str, components: list[dict], out: set) -> set:
    for c in components:
        out.add((node, c["node"]))
        tree_edges(c["node"], c["components"], out)
    return out


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def open_store(path: Path) -> ReadModel:
    """The product's read model over its own connection (the driver is at .connection.client)."""
    return ReadModel(Connection(f"chdb://{path}"))


def levels_only(store: ReadModel):
    """The store without its whole-traversal queries: genealogy.recall then walks it one query per
    level through the Graph calls, as the product did before (tests/test_store.py: same answers)."""
    return SimpleNamespace(parents=store.parents, children=store.children, units_at=store.units_at,
                           production_lots=store.production_lots, lot_members=store.lot_members)


class Ours:
    """The product: sinks.read_model.ReadModel + genealogy.recall, embedded ClickHouse. genealogy.recall walks
    level by level while frontiers are small (SHIP_MAX ids), then has the store run the whole
    traversal inside ClickHouse (sinks/queries.py: a recursive CTE; the lot-level scope as a loop of
    server-side steps over a temporary table)."""
    name = "clickhouse (ours)"

    def __init__(self, store: ReadModel):
        self.store = store
        self.graph = store

    def forward(self, target):
        return frozenset(recall.forward(self.graph, target)[0])

    def backward(self, unit):
        t = recall.trace(self.graph, unit)
        return frozenset(tree_edges(unit, t["components"], set()))

    def window(self, station, since_ms, until_ms):
        # process_window's traversal: the window's units selected inside the store, then forward.
        return frozenset(self.store.forward_reach(self.store.completed(station, since_ms, until_ms))[0])

    def full_recall(self, target):
        """What /recall really runs: forward + production lots + lot-level comparison + widening."""
        return recall.recall(self.graph, target)


class OursBefore(Ours):
    """The product's previous path: the same genealogy.recall code, one query per BFS level, each
    shipping its frontier as an id list."""
    name = "clickhouse (before: levels)"

    def __init__(self, store: ReadModel):
        super().__init__(store)
        self.graph = levels_only(store)

    def window(self, station, since_ms, until_ms):
        seeds = self.store.units_at(station, since_ms, until_ms)
        reached, _ = recall.forward(self.graph, seeds)
        return frozenset(reached | set(seeds))


class ClickHouseCte:
    name = "clickhouse (recursive CTE)"

    def __init__(self, store: ReadModel):
        self.store = store

    def forward(self, target):
        return frozenset(r[0] for r in self.store.rows(CH_FORWARD_CTE, target=target))

    def backward(self, unit):
        return frozenset(self.store.rows(CH_BACKWARD_CTE, unit=unit))

    def window(self, station, since_ms, until_ms):
        return frozenset(r[0] for r in self.store.rows(CH_WINDOW_CTE, station=station, since=since_ms, until=until_ms))


class SqlEngine:
    """PostgreSQL or DuckDB behind one small interface: rows(sql, **params)."""

    def __init__(self, name: str, rows: Callable[..., list[tuple]], parents_sql: str, children_sql: str):
        self.name = name
        self.rows = rows
        self.parents_sql = parents_sql
        self.children_sql = children_sql

    # the product's Graph protocol, so genealogy.recall can run on this store
    def parents(self, nodes, since_ms=None, until_ms=None):
        assert since_ms is None and until_ms is None
        return self.rows(self.parents_sql, nodes=list(nodes)) if nodes else []

    def children(self, nodes):
        return self.rows(self.children_sql, nodes=list(nodes)) if nodes else []


class Cte:
    def __init__(self, db: SqlEngine, label: str = "recursive CTE"):
        self.db = db
        self.name = f"{db.name} ({label})"

    def forward(self, target):
        return frozenset(r[0] for r in self.db.rows(FORWARD_CTE, target=target))

    def backward(self, unit):
        return frozenset((r[0], r[1]) for r in self.db.rows(BACKWARD_CTE, unit=unit))

    def window(self, station, since_ms, until_ms):
        return frozenset(r[0] for r in self.db.rows(WINDOW_CTE, station=station, since=utc(since_ms), until=utc(until_ms)))


class Levels:
    """The product's own traversal (genealogy.recall) with this store answering each level."""

    def __init__(self, db: SqlEngine):
        self.db = db
        self.name = f"{db.name} (levels)"

    def forward(self, target):
        return frozenset(recall.forward(self.db, target)[0])

    def backward(self, unit):
        return frozenset(tree_edges(unit, recall.trace(self.db, unit)["components"], set()))

    def window(self, station, since_ms, until_ms):
        seeds = [r[0] for r in self.db.rows(WINDOW_UNITS, station=station, since=utc(since_ms), until=utc(until_ms))]
        return frozenset(forward_from(self.db, seeds))


# PostgreSQL estimates a recursive CTE's work table at 10x its anchor and, from 1M edges on, picks a
# merge join over the whole (child, parent) index for every iteration: 350 ms for a 4-row answer.
# Nested loops over the index are what this traversal needs; a DBA would pin them like this.
PG_NESTED_LOOPS = ["SET enable_mergejoin = off", "SET enable_hashjoin = off"]


def postgres_engine(dbname: str, session: list[str] = ()) -> tuple[SqlEngine, Callable[[], None]]:
    import psycopg
    conn = psycopg.connect(**pg_conninfo(dbname), autocommit=True)
    for statement in session:
        conn.execute(statement)
    cache: dict[str, str] = {}

    def rows(sql, **params):
        return conn.execute(cache.setdefault(sql, pg_sql(sql)), params).fetchall()

    return SqlEngine("postgres", rows, LEVEL_PARENTS, PG_LEVEL_CHILDREN), conn.close


def duck_engine(path: Path) -> tuple[SqlEngine, Callable[[], None]]:
    import duckdb
    conn = duckdb.connect(str(path), read_only=True)

    def rows(sql, **params):
        return conn.execute(sql, params).fetchall()

    return SqlEngine("duckdb", rows, DUCK_LEVEL_PARENTS, DUCK_LEVEL_CHILDREN), conn.close


# --- targets, verification, timing -------------------------------------------------------------

QUESTIONS = {
    "a": "forward recall of a supplier lot (~5,000 boards)",
    "b": "forward recall of one board serial",
    "c": "backward trace of one product to supplier lots",
    "d": "process window: boards done at SMT-n in 1 h, then forward",
}


def pick_targets(lay: Layout, n: int) -> dict[str, list]:
    """Deterministic targets: whole supplier lots of board slots (the deepest paths), random serials,
    random one-hour windows at a random SMT line."""
    rng = np.random.default_rng(lay.p.seed + 1)
    lots = [(k, m) for k in range(lay.p.board_slots) for m in lay.whole_lots(k)]
    if not lots:
        raise SystemExit("no whole supplier lot: increase --edges or lower --reel-units")
    span_ms = lay.p.products * CYCLE_MS - WINDOW_MS
    picks = rng.choice(len(lots), size=n, replace=len(lots) < n)
    return {
        "a": [supplier_lot(*lots[j]) for j in picks],
        "b": [board(int(i)) for i in rng.integers(0, lay.p.products, n)],
        "c": [product(int(i)) for i in rng.integers(0, lay.p.products, n)],
        "d": [(f"SMT-{int(rng.integers(1, lay.p.lines + 1))}", BASE_MS + int(t), BASE_MS + int(t) + WINDOW_MS)
              for t in rng.integers(0, max(1, span_ms), n)],
    }


def ask(engine, question: str, target):
    if question == "a" or question == "b":
        return engine.forward(target)
    if question == "c":
        return engine.backward(target)
    return engine.window(*target)


def verify(engines: list, targets: dict[str, list], count: int) -> dict[str, float]:
    """Assert every engine gives the identical result set; return the mean result size per question."""
    sizes = {}
    for q, ts in targets.items():
        lengths = []
        for target in ts[:count]:
            answers = {e.name: ask(e, q, target) for e in engines}
            reference = answers[engines[0].name]
            for name, answer in answers.items():
                if answer != reference:
                    raise SystemExit(f"MISMATCH question {q} target {target}: {engines[0].name} has {len(reference)}, "
                                     f"{name} has {len(answer)}; only in ours: {sorted(reference - answer)[:5]}, "
                                     f"only in {name}: {sorted(answer - reference)[:5]}")
            if not reference:
                raise SystemExit(f"question {q} target {target}: empty answer, the generator or a query is wrong")
            lengths.append(len(reference))
        sizes[q] = float(np.mean(lengths))
        progress(f"  {q}: {count} targets identical across {len(engines)} engines (mean {sizes[q]:,.0f} rows)")
    return sizes


def time_question(engines: list, question: str, targets: list, reps: int, cell_seconds: float,
                  call: Callable | None = None) -> dict[str, list[float]]:
    """Round-robin over engines (so a burst of load on the shared CPU hits all of them alike), in a
    seeded random order each round: an engine that always ran right after the same other one
    (e.g. after DuckDB, whose work leaves the caches cold) measured 2-7 ms slow on point questions.
    An engine leaves the rotation once it has used its time budget, with at least 5 samples."""
    call = call or (lambda e, t: ask(e, question, t))
    samples: dict[str, list[float]] = {e.name: [] for e in engines}
    spent = {e.name: 0.0 for e in engines}
    for e in engines:  # warm-up, untimed, on targets not reused first
        for t in targets[-2:]:
            call(e, t)
    active = list(engines)
    order = np.random.default_rng(len(targets))
    for k in range(reps):
        for e in [active[i] for i in order.permutation(len(active))]:
            t0 = time.perf_counter()
            call(e, targets[k % len(targets)])
            dt = time.perf_counter() - t0
            samples[e.name].append(dt * 1000)
            spent[e.name] += dt
            if spent[e.name] > cell_seconds and len(samples[e.name]) >= 5:
                active.remove(e)
        if not active:
            break
    return samples


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "mean": float(np.mean(ms))}


class Traced:
    """Store proxy recording each Graph call, for the anatomy of the level-by-level traversal."""

    def __init__(self, store: ReadModel):
        self.store = store
        self.calls: list[tuple[str, int, int, float]] = []

    def _record(self, kind, nodes, fn):
        t0 = time.perf_counter()
        out = fn(nodes)
        self.calls.append((kind, len(nodes), len(out), (time.perf_counter() - t0) * 1000))
        return out

    def parents(self, nodes, since_ms=None, until_ms=None):
        return self._record("parents", list(nodes), lambda n: self.store.parents(n, since_ms, until_ms))

    def children(self, nodes):
        return self._record("children", list(nodes), self.store.children)

    def production_lots(self, units):
        return self._record("production_lots", list(units), self.store.production_lots)

    def lot_members(self, lots):
        return self._record("lot_members", list(lots), self.store.lot_members)


class TracedTraversals:
    """Store proxy recording each whole-traversal call (what genealogy.recall asks the store now)
    and the statements it runs."""
    TRAVERSALS = ("parents", "children", "production_lots", "forward_reach", "lot_scope", "serials_downstream", "backward_edges")

    def __init__(self, store: ReadModel):
        self.store = store
        self.calls: list[tuple[str, int, int, float]] = []  # (call, rows it returned, statements, ms)

    def __getattr__(self, name):
        fn = getattr(self.store, name)
        if name not in self.TRAVERSALS:
            return fn

        def traced(*args, **kwargs):
            client = self.store.connection.client
            statements = []
            plain = client.command, client.query
            client.command = lambda *a, **k: statements.append(1) or plain[0](*a, **k)
            client.query = lambda *a, **k: statements.append(1) or plain[1](*a, **k)
            t0 = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
            finally:
                del client.command, client.query
            ms = (time.perf_counter() - t0) * 1000
            size = len(out[0]) if name == "forward_reach" else len(out)
            self.calls.append((name, size, len(statements), ms))
            return out
        return traced


def anatomy(store: ReadModel, targets: dict[str, list]) -> dict:
    """Where the time goes for ours: one query per traversal now; before, per-level queries, the fixed
    per-query cost, and the cost of the IN list."""
    out = {}
    for q, fn in (("full", recall.recall),):
        traced = TracedTraversals(store)
        total = []
        for _ in range(3):  # keep the last, warm run
            traced.calls.clear()
            total.append(timed(lambda: fn(traced, targets["a" if q == "full" else "c"][0])))
        out[q] = {"calls": traced.calls, "total_ms": total[-1]}
    for q, fn in (("a", recall.forward), ("c", recall.trace), ("full_before", recall.recall)):
        traced = Traced(store)
        for _ in range(3):
            traced.calls.clear()
            fn(traced, targets["c" if q == "c" else "a"][0])
        out[q] = traced.calls
    ping = [timed(lambda: store.rows(CH_PING)) for _ in range(30)]
    big = sorted({n for n in recall.forward(store, targets["a"][0])[0] if ids.kind_of(n) == "serial"})[:5000]
    boards = [n for n in big if ":B" in n] or big
    literal = "[" + ",".join("'" + b + "'" for b in boards) + "]"  # ids are plain ASCII, no escaping needed
    in_list = [timed(lambda: store.rows(CH_IN_LIST_ONLY, nodes=boards)) for _ in range(10)]
    parse_only = [timed(lambda: store.connection.client.query(f"SELECT length({literal})").result_rows) for _ in range(10)]
    lookup = [timed(lambda: store.parents(boards)) for _ in range(10)]
    server_side = [timed(lambda: store.rows(CH_LEVEL_SERVER_SIDE, target=targets["a"][0])) for _ in range(10)]
    out["ping_ms"] = float(np.median(ping))
    out["in_list"] = {"size": len(boards), "bind_parse_ms": float(np.median(in_list)),
                      "parse_only_ms": float(np.median(parse_only)), "parents_query_ms": float(np.median(lookup)),
                      "server_side_ms": float(np.median(server_side))}
    return out


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


# --- machine, sizes, report --------------------------------------------------------------------

def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": model.group(1).strip() if model else platform.processor(),
            "ram_gb": round(mem_kb / 1024 ** 2, 1), "python": platform.python_version()}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def sizes(dirs: "Dirs", dbname: str, edges: int) -> dict:
    store = open_store(dirs.clickhouse)
    parts = {t: {"rows": int(r), "bytes": int(b), "parts": int(n)} for t, r, b, n in store.rows(CH_PARTS_SQL)}
    version = store.rows("SELECT version()")[0][0]
    store.connection.close()
    ch_edges = parts["edges"]["bytes"] + parts["edges_by_parent"]["bytes"]
    import psycopg
    with psycopg.connect(**pg_conninfo(dbname)) as conn:
        pg_total, pg_heap, pg_idx, pg_units, pg_db = conn.execute(PG_SIZES_SQL).fetchone()
        pg_indexes = dict(conn.execute(PG_INDEX_SIZES_SQL).fetchall())
    duck = dirs.duckdb.stat().st_size
    return {
        "clickhouse": {"edges_bytes": ch_edges, "total_bytes": sum(p["bytes"] for p in parts.values()),
                       "tables": parts, "version": version},
        "postgres": {"edges_bytes": pg_total, "heap_bytes": pg_heap, "index_bytes": pg_idx, "indexes": pg_indexes,
                     "units_bytes": pg_units, "total_bytes": pg_db},
        "duckdb": {"edges_bytes": duck, "total_bytes": duck},
        "per_edge": {"clickhouse": ch_edges / edges, "postgres": pg_total / edges, "duckdb": duck / edges},
    }


@dataclass
class Dirs:
    root: Path

    @property
    def clickhouse(self) -> Path:
        return self.root / "clickhouse"

    @property
    def duckdb(self) -> Path:
        return self.root / "duck.db"

    @property
    def marker(self) -> Path:
        return self.root / "loaded.json"


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fmt_ms(x: float) -> str:
    return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:,.1f} {unit}"
        b /= 1024
    return str(b)


def markdown(r: dict) -> str:
    m, d, s = r["machine"], r["data"], r["sizes"]
    ours = Ours.name
    lines = [
        f"# Recall latency at {d['edges']:,} edges",
        "",
        f"Run {r['started']} UTC, {r['elapsed_s'] / 60:.1f} min in all. Machine: {m['nproc']} CPUs ({m['cpu']}), "
        f"{m['ram_gb']} GiB RAM, **shared with other work** (load average {r['loadavg_start']} at start, "
        f"{r['loadavg_end']} at end). ClickHouse {s['clickhouse']['version']} embedded (chdb), "
        f"PostgreSQL {r['versions']['postgres']}, DuckDB {r['versions']['duckdb']}, Python {m['python']}.",
        "",
        f"Data: {d['edges']:,} edges, {d['units']:,} units ({d['products']:,} products + as many boards), "
        f"{d['components']} component edges per product ({d['board_slots']} on its board), production lots of "
        f"{d['lot_units']:,} units, {d['supplier_lots']:,} supplier lots of ~{d['reel_units']:,} units, "
        f"{d['lines']} lines, seed {d['seed']}.",
        f"Timing: warm, each cell up to {r['reps']} different targets or {r['cell_seconds']:.0f} s "
        f"(whichever first; n says how many ran), engines round-robin per target. Results verified identical "
        f"across all engines on {r['verify']} targets per question first.",
        "",
        "| question | store | n | p50 ms | p95 ms | p95 / ours |",
        "|---|---|---:|---:|---:|---:|",
    ]
    carried = r.get("carried_over", {})
    mark = lambda name: f"{name} †" if name in carried else name  # noqa: E731
    for q, title in QUESTIONS.items():
        cells = r["timings"][q]
        base = cells[ours]["p95"]
        lines.append(f"| **{q}** {title} (~{r['result_rows'][q]:,.0f} rows) | | | | | |")
        for name, c in cells.items():
            ratio = "1.0" if name == ours else f"{c['p95'] / base:.1f}"
            lines.append(f"| | {mark(name)} | {c['n']} | {fmt_ms(c['p50'])} | {fmt_ms(c['p95'])} | {ratio} |")
    full = r["timings"].get("a_full", {})
    if "p50" in full:  # results written before "before" was timed too
        full = {"clickhouse (ours: levels)": full}
    if full:
        base = full.get(ours, next(iter(full.values())))["p95"]
        lines.append("| **a+** the product's full `/recall` of the same lots (forward, production lots, lot-level scope, widening) | | | | | |")
        for name, c in full.items():
            ratio = "1.0" if name == ours else f"{c['p95'] / base:.1f}"
            lines.append(f"| | {name} | {c['n']} | {fmt_ms(c['p50'])} | {fmt_ms(c['p95'])} | {ratio} |")
    if carried:
        lines += ["", "† not re-timed in this run (left out with --skip): " + "; ".join(
            f"{name} from the run of {started}" for name, started in carried.items()) + "."]
    lines += [
        "",
        "| store | load s | edges on disk | bytes / edge | whole database |",
        "|---|---:|---:|---:|---:|",
    ]
    what = {"clickhouse": "edges + edges_by_parent", "postgres": "edges heap + 3 indexes", "duckdb": "whole file"}
    for store in ("clickhouse", "postgres", "duckdb"):
        lines.append(f"| {store} | {r['load']['load_s'][store]:,.0f} | {fmt_bytes(s[store]['edges_bytes'])} "
                     f"({what[store]}) | {s['per_edge'][store]:,.1f} | {fmt_bytes(s[store]['total_bytes'])} |")
    ch = s["clickhouse"]["tables"]
    pg = s["postgres"]
    lines += [
        "",
        "PostgreSQL's join in the recursive step of the forward CTE: "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in r["pg_cte_plan"].items())
        + " (a = lot, b = board; ANALYZEd, settings in PG_SETTINGS; work_mem kept at 4MB, see the script).",
        f"Generation took {r['load']['generate_s']:.0f} s (not in load times). ClickHouse load includes the "
        f"product's materialized views (edges_by_parent, nodes, lot_members) and waiting for merges; PostgreSQL "
        f"load includes building its indexes after COPY plus VACUUM ANALYZE; DuckDB load includes its ART indexes.",
        "ClickHouse per table: " + ", ".join(f"{t} {v['rows']:,} rows / {fmt_bytes(v['bytes'])} / {v['parts']} parts"
                                             for t, v in ch.items() if v["rows"]) + ".",
        f"PostgreSQL edges: heap {fmt_bytes(pg['heap_bytes'])}, indexes "
        + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in pg["indexes"].items()) + f"; units {fmt_bytes(pg['units_bytes'])}.",
    ]
    a = r["anatomy"]
    lines += ["", f"Where our time goes (one warm run; per-query floor `SELECT 1` = {a['ping_ms']:.2f} ms):", ""]
    for q, label in (("full", "ours, `/recall` (a+)"),):
        if q in a:
            calls = a[q]["calls"]
            steps = "; ".join(f"{kind} ({st} statement{'s' if st > 1 else ''}) -> {n:,} rows in {ms:.1f} ms"
                              for kind, n, st, ms in calls)
            rest = a[q]["total_ms"] - sum(c[3] for c in calls)
            lines.append(f"- {label}: {sum(c[2] for c in calls)} statements, {a[q]['total_ms']:.1f} ms in all: {steps}; "
                         f"the rest, {rest:.1f} ms, is genealogy.recall in Python")
    for q, label in (("a", "forward (a)"), ("c", "trace (c)"), ("full_before", "`/recall` (a+)")):
        if q in a:
            steps = "; ".join(f"{kind}({n:,} ids) -> {rows:,} rows in {ms:.1f} ms" for kind, n, rows, ms in a[q])
            lines.append(f"- before, {label}: {len(a[q])} queries, {sum(c[3] for c in a[q]):.1f} ms: {steps}")
    il = a["in_list"]
    lines.append(f"- IN list of {il['size']:,} board ids: the full parents() lookup takes {il['parents_query_ms']:.1f} ms; "
                 f"the list alone (`SELECT length(list)`, bound by clickhouse-connect) {il['bind_parse_ms']:.1f} ms, of which "
                 f"ClickHouse parsing the literal {il['parse_only_ms']:.1f} ms and Python binding the rest; the same lookup "
                 f"with the frontier as a subquery inside ClickHouse (no ids cross) {il['server_side_ms']:.1f} ms.")
    return "\n".join(lines) + "\n"


def growth_markdown(results: list[dict]) -> str:
    results = sorted(results, key=lambda r: r["data"]["edges"])
    lo, hi = results[0], results[-1]
    f = hi["data"]["edges"] / lo["data"]["edges"]
    lines = [f"## Growth {lo['data']['edges']:,} -> {hi['data']['edges']:,} edges (x{f:.1f} data)", "",
             "| question | store | p95 ms small | p95 ms large | growth |", "|---|---|---:|---:|---:|"]
    carried = {**lo.get("carried_over", {}), **hi.get("carried_over", {})}
    full = {r["data"]["edges"]: r["timings"].get("a_full", {}) for r in (lo, hi)}
    for q in [*QUESTIONS, "a_full"]:
        cells_hi = hi["timings"].get(q, {}) if q != "a_full" else full[hi["data"]["edges"]]
        cells_lo = lo["timings"].get(q, {}) if q != "a_full" else full[lo["data"]["edges"]]
        for name, c in cells_hi.items():
            small = cells_lo.get(name) if isinstance(cells_lo.get(name), dict) else None
            if small and "p95" in small and "p95" in c:
                label = f"{name} †" if name in carried else name
                lines.append(f"| {'a+' if q == 'a_full' else q} | {label} | {fmt_ms(small['p95'])} | {fmt_ms(c['p95'])} | "
                             f"x{c['p95'] / small['p95']:.1f} |")
    for store in ("clickhouse", "postgres", "duckdb"):
        lines.append(f"| load | {store} | {lo['load']['load_s'][store]:,.0f} s | {hi['load']['load_s'][store]:,.0f} s | "
                     f"x{hi['load']['load_s'][store] / lo['load']['load_s'][store]:.1f} |")
        lines.append(f"| bytes/edge | {store} | {lo['sizes']['per_edge'][store]:.1f} | {hi['sizes']['per_edge'][store]:.1f} | |")
    if carried:
        lines += ["", "† not re-timed at both sizes in the latest run (see the per-size reports)."]
    return "\n".join(lines) + "\n"


# --- one size, end to end ----------------------------------------------------------------------

def run_size(p: Params, args) -> dict:
    started = time.time()
    la_start = loadavg()
    dirs = Dirs(DATA_ROOT / f"edges-{p.edges}")
    dbname = f"recall_{p.edges}"
    lay = Layout.plan(p)
    progress(f"== {p.edges:,} edges: {p.products:,} products, {len(lay.lot_nodes):,} supplier lots; "
             f"data in {dirs.root}; load average {la_start}; 2 shared CPUs, runs are bounded")
    pg_version = ensure_postgres(dbname)

    marker = json.loads(dirs.marker.read_text()) if dirs.marker.exists() else None
    if args.reuse and marker and marker["params"] == asdict(p) and pg_edges(dbname) == marker["load"]["edges"]:
        progress("reusing the data loaded before (--reuse, same parameters)")
        loaded = marker["load"]
    else:
        shutil.rmtree(dirs.root, ignore_errors=True)
        dirs.root.mkdir(parents=True)
        progress("loading all three stores in chunks ...")
        loaded = load(lay, dirs, dbname)
        dirs.marker.write_text(json.dumps({"params": asdict(p), "load": loaded}))
    progress(f"loaded {loaded['edges']:,} edges; load s: " + ", ".join(f"{k} {v:.0f}" for k, v in loaded["load_s"].items()))
    disk = sizes(dirs, dbname, loaded["edges"])
    progress("bytes/edge: " + ", ".join(f"{k} {v:.1f}" for k, v in disk["per_edge"].items()))

    store = open_store(dirs.clickhouse)
    catch_up_schema(store)
    pg, pg_close = postgres_engine(dbname)
    pg_nl, pg_nl_close = postgres_engine(dbname, PG_NESTED_LOOPS)
    duck, duck_close = duck_engine(dirs.duckdb)
    ours, before = Ours(store), OursBefore(store)
    engines = [ours, before, ClickHouseCte(store), Cte(pg_nl, "recursive CTE, nested loops"),
               Cte(pg, "recursive CTE, default planner"), Levels(pg), Cte(duck), Levels(duck)]
    order = [e.name for e in engines]
    skipped = [e.name for e in engines if e is not ours and any(word in e.name for word in args.skip)]
    engines = [e for e in engines if e.name not in skipped]
    targets = pick_targets(lay, max(args.reps, args.verify) + 2)

    pg_plan = {}
    for label, db in (("default planner", pg), ("nested loops", pg_nl)):
        for q, target in (("a", targets["a"][0]), ("b", targets["b"][0])):
            plan = db.rows("EXPLAIN " + FORWARD_CTE, target=target)
            pg_plan[f"{label}, {q}"] = sorted({m for (line,) in plan for m in re.findall(r"Nested Loop|Hash Join|Merge Join", line)})
    progress("postgres plans of the forward CTE: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in pg_plan.items()))
    progress(f"verifying identical answers on {args.verify} targets per question ...")
    result_rows = verify(engines, targets, args.verify)
    timings = {}
    for q, title in QUESTIONS.items():
        progress(f"timing {q}: {title} (up to {args.reps} targets or {args.cell_seconds:.0f} s per store) ...")
        samples = time_question(engines, q, targets[q], args.reps, args.cell_seconds)
        timings[q] = {name: summary(ms) for name, ms in samples.items()}
        progress("  " + "; ".join(f"{n}: p50 {fmt_ms(c['p50'])} / p95 {fmt_ms(c['p95'])} ms (n={c['n']})"
                                  for n, c in timings[q].items()))
    progress("timing a+: the product's full /recall computation on the same lots ...")
    for target in targets["a"][:args.verify]:
        if ours.full_recall(target).as_dict() != before.full_recall(target).as_dict():
            raise SystemExit(f"MISMATCH a+ target {target}: /recall differs between {ours.name} and {before.name}")
    full = time_question([ours, before], "a", targets["a"], max(5, args.reps // 3), args.cell_seconds,
                         call=lambda e, t: e.full_recall(t))
    timings["a_full"] = {name: summary(ms) for name, ms in full.items()}
    progress("  " + "; ".join(f"{n}: p50 {fmt_ms(c['p50'])} / p95 {fmt_ms(c['p95'])} ms (n={c['n']})"
                              for n, c in timings["a_full"].items()))
    carried = carry_over(p, skipped, timings)
    for q in QUESTIONS:
        timings[q] = {name: timings[q][name] for name in order if name in timings[q]}
    anat = anatomy(store, targets)
    pg_close()
    pg_nl_close()
    duck_close()
    store.connection.close()

    import duckdb
    return {
        "started": datetime.fromtimestamp(started, tz=timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "elapsed_s": time.time() - started, "loadavg_start": la_start, "loadavg_end": loadavg(),
        "machine": machine(), "versions": {"postgres": pg_version, "duckdb": duckdb.__version__},
        "data": {**asdict(p), "board_slots": p.board_slots, "products": p.products, "edges": loaded["edges"],
                 "units": loaded["units"], "supplier_lots": len(lay.lot_nodes)},
        "reps": args.reps, "cell_seconds": args.cell_seconds, "verify": args.verify,
        "load": loaded, "sizes": disk, "result_rows": result_rows, "timings": timings, "anatomy": anat,
        "carried_over": carried,
        "pg_cte_plan": pg_plan,
    }


def catch_up_schema(store: ReadModel) -> None:
    """Data loaded by an older version of the product's DDL (--reuse): apply the current DDL, and fill
    tables its new materialized views would have filled at load time (units_by_station)."""
    store.connection.migrate()
    if not store.rows("SELECT count() FROM units_by_station")[0][0]:
        progress("filling units_by_station from units (data loaded before it existed)")
        store.connection.client.command(CH_BACKFILL_UNITS_BY_STATION)


def carry_over(p: Params, skipped: list[str], timings: dict) -> dict[str, str]:
    """Cells of engines left out with --skip, taken from the previous results of the same data
    (marked in the report), so the tables stay complete when only some engines are re-timed."""
    path = RESULTS / f"recall-{p.edges}.json"
    if not skipped or not path.exists():
        return {}
    prev = json.loads(path.read_text())
    same_data = {k: v for k, v in asdict(p).items() if k != "edges"}  # data["edges"] is the count loaded
    if {k: prev["data"].get(k) for k in same_data} != same_data:
        return {}
    carried = {}
    for q in QUESTIONS:
        for name in skipped:
            if name in prev["timings"].get(q, {}):
                timings[q][name] = prev["timings"][q][name]
                carried[name] = prev.get("carried_over", {}).get(name, prev["started"])
    return carried


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edges", type=int, nargs="+", default=[1_000_000], help="target edge counts, e.g. 1000000 10000000")
    ap.add_argument("--components", type=int, default=60, help="component edges per product incl. its board's (50-200 typical)")
    ap.add_argument("--lot-units", type=int, default=5_000, help="units per production lot")
    ap.add_argument("--reel-units", type=int, default=5_000, help="units one supplier lot reaches")
    ap.add_argument("--lines", type=int, default=4, help="parallel SMT/ASSY lines")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--reps", type=int, default=30, help="timed targets per question and store")
    ap.add_argument("--cell-seconds", type=float, default=30.0, help="time budget per question and store")
    ap.add_argument("--verify", type=int, default=3, help="targets per question checked identical across stores")
    ap.add_argument("--skip", nargs="+", default=[], metavar="TEXT",
                    help='leave out engines whose name contains TEXT, e.g. "default planner" "duckdb (recursive"')
    ap.add_argument("--reuse", action="store_true", help="skip loading when the data dir holds the same parameters")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the growth table from results/*.json")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)

    if len(args.edges) > 1 or args.report_only:
        # chdb allows one engine per process: every size runs in a child process of its own.
        if not args.report_only:
            for n in args.edges:
                cmd = [sys.executable, __file__, *child_args(args), "--edges", str(n)]
                subprocess.run(cmd, check=True)
        results = [json.loads((RESULTS / f"recall-{n}.json").read_text()) for n in args.edges]
        for n, r in zip(args.edges, results):
            (RESULTS / f"recall-{n}.md").write_text(markdown(r))
        text = growth_markdown(results)
        out = RESULTS / f"recall-{'-'.join(str(n) for n in args.edges)}.md"
        out.write_text("\n".join(markdown(r) for r in results) + "\n" + text)
        print("\n" + text)
        progress(f"written {out}")
        return

    p = Params(edges=args.edges[0], components=args.components, lot_units=args.lot_units,
               reel_units=args.reel_units, lines=args.lines, seed=args.seed)
    result = run_size(p, args)
    text = markdown(result)
    (RESULTS / f"recall-{p.edges}.json").write_text(json.dumps(result, indent=1, default=str))
    (RESULTS / f"recall-{p.edges}.md").write_text(text)
    print("\n" + text)
    progress(f"written {RESULTS / f'recall-{p.edges}.md'}")


def child_args(args) -> list[str]:
    out = ["--components", str(args.components), "--lot-units", str(args.lot_units), "--reel-units",
           str(args.reel_units), "--lines", str(args.lines), "--seed", str(args.seed), "--reps", str(args.reps),
           "--cell-seconds", str(args.cell_seconds), "--verify", str(args.verify)]
    out += ["--skip", *args.skip] if args.skip else []
    return out + (["--reuse"] if args.reuse else [])


if __name__ == "__main__":
    main()
