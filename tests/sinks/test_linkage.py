"""The linkage (data-quality) report over the real embedded ClickHouse: crafted defects with known
answers, and a clean simulated plant that must join 100%."""

import io
from datetime import datetime, timezone

from rich.console import Console

from genealogy import schemas
from genealogy.domain import ids
from genealogy.sinks.linkage import format_linkage, linkage_report
from genealogy.producers.simulator import Plant
from genealogy.sinks.writer import DEAD_LETTER_COLUMNS, EDGE_COLUMNS, UNIT_COLUMNS
from genealogy.domain.derive import derive

TABLES = ["edges", "edges_by_parent", "units", "lot_members", "nodes", "dead_letters"]
T0 = 1_767_600_000_000


def ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def reset(writer) -> None:
    for t in TABLES:
        writer.connection.command(f"TRUNCATE TABLE {t}")


def load(writer, edges, units) -> None:
    """edges: (child, parent, relation); units: (unit, production_lot[, event_id])."""
    reset(writer)
    writer.insert("edges", EDGE_COLUMNS, [[ids.edge_id(c, p, r, "e"), c, p, r, ts(T0), "ST", "", "", "", 1.0, "e"]
                                          for c, p, r in edges])
    writer.insert("units", UNIT_COLUMNS, [[u[0], u[1], "WO", "ST", "OP", ts(T0), u[2] if len(u) > 2 else f"ev-{u[0]}"]
                                          for u in units])


def load_plant(writer, plant: Plant, grace_ms: int = 10_000) -> tuple[int, int]:
    """Derive a plant's capture batches in order with one shared join state, flush every station with a
    heartbeat far ahead, and insert the edges and units. Returns (edges, units) rows inserted."""
    reset(writer)
    states: dict = {}
    now = T0 + 10**10
    edges, units = [], []
    batches = plant.batches()
    last = {}
    for b in batches:
        out = derive(b, states, grace_ms=grace_ms, retention_ms=10**12, now_ms=now)
        assert not out.rejected, out.rejected[:3]
        edges += out.edges
        units += out.units
        last[b["source"]] = max(last.get(b["source"], 0), b["sent_ms"])
    for station, ms in sorted(last.items()):
        hb = {"event_id": f"hb-final-{station}", "station": station, "event_ms": ms + grace_ms + 1}
        out = derive({"batch_id": f"final-{station}", "source": station, "sent_ms": hb["event_ms"],
                      "events": [("genealogy.StationHeartbeat", hb)]}, states, grace_ms=grace_ms, retention_ms=10**12, now_ms=now)
        edges += out.edges
        units += out.units
        assert out.pending[station] == 0  # every completion of the station has its answer
    writer.insert_derived("edges", schemas.columns(edges, "edges"))
    writer.insert_derived("units", schemas.columns(units, "units"))
    return len(edges), len(units)


# A small plant with every defect. PRD and BRD are produced here; CAP lots, MOD serials, GLUE (class) are bought.
DEFECT_EDGES = [
    ("lot:CAP:L1", "serial:PRD:P1", "consumed"),
    ("serial:BRD:B1", "serial:PRD:P1", "installed"),
    ("serial:MOD:M1", "serial:PRD:P1", "installed"),      # received supplier serial: fine
    ("serial:PRD:P1", "container:carton:C1", "packed"),  # containment is not as-built
    ("serial:BRD:B9", "serial:PRD:P2", "installed"),      # broken link: BRD is produced here, B9 never was
    ("class:GLUE:*", "serial:PRD:P4", "consumed"),        # class-level input (does not break completeness)
    ("lot:CAP:L1", "serial:PRD:P4", "consumed"),
    ("serial:MOD:X7", "serial:PRD:P4", "installed"),      # ident X7 also used by serial:PRD:X7
    ("lot:CAP:L1", "serial:PRD:P5", "consumed"),
    ("lot:CAP:L1", "serial:PRD:X7", "consumed"),
    ("lot:CAP:L2", "serial:BRD:B1", "consumed"),
    ("serial:SUB:S1", "serial:BRD:B2", "installed"),      # S1 was built (has a component) but has no units row
    ("lot:CAP:L3", "serial:SUB:S1", "consumed"),
    ("serial:BRD:B2", "serial:PRD:P6", "installed"),      # ... so P6 is incomplete two levels up
    ("serial:BRD:B8", "lot:MIX:M1", "transformed"),       # unaccounted serial mixed into a lot ...
    ("lot:MIX:M1", "serial:PRD:P7", "consumed"),          # ... taints P7 through the lot
    ("lot:CAP:L1", "serial:PRD:P1", "consumed"),          # redelivered
]
DEFECT_UNITS = [
    ("serial:PRD:P1", "lot:PRD:PL1"), ("serial:PRD:P2", "lot:PRD:PL1"), ("serial:PRD:P3", "lot:PRD:PL1"),
    ("serial:PRD:P4", "lot:PRD:PL2"), ("serial:PRD:P5", "lot:PRD:PL1", "ev-a"), ("serial:PRD:P5", "lot:PRD:PL2", "ev-b"),
    ("serial:PRD:P6", "lot:PRD:PL2"), ("serial:PRD:P7", "lot:PRD:PL2"), ("serial:PRD:X7", "lot:PRD:PL2"),
    ("serial:BRD:B1", "lot:BRD:BL1"), ("serial:BRD:B2", "lot:BRD:BL1"), ("serial:BRD:B1", "lot:BRD:BL1"),
]


def dead_letter(dl_id: str, stage: str, kind: str) -> list:
    return [dl_id, stage, f"{stage} failed", "genealogy.capture", 0, 1, "ASSY-1", "ev", kind, "{}", ts(T0)]


def test_every_defect_is_counted(writer, read_model):
    load(writer, DEFECT_EDGES, DEFECT_UNITS)
    writer.insert("dead_letters", DEAD_LETTER_COLUMNS, [dead_letter("d1", "validate", "genealogy.UnitCompleted"),
                                                        dead_letter("d2", "validate", "genealogy.UnitCompleted"),
                                                        dead_letter("d2", "validate", "genealogy.UnitCompleted"),
                                                        dead_letter("d3", "decode", "")])
    r = linkage_report(read_model)
    u = r["units"]
    assert (u["total"], u["with_genealogy"], u["complete"], u["complete_pct"]) == (10, 9, 5, 50.0)
    assert u["by_item"] == [
        {"item": "BRD", "units": 2, "production_lots": 1, "with_genealogy": 2, "complete": 1, "complete_pct": 50.0},
        {"item": "PRD", "units": 8, "production_lots": 2, "with_genealogy": 7, "complete": 4, "complete_pct": 50.0},
    ]
    assert u["unaccounted_serials"] == 3 and not u["walk_truncated"]
    assert {e["unit"] for e in u["incomplete_examples"]} == {"serial:PRD:P3", "serial:PRD:P2", "serial:BRD:B2",
                                                             "serial:PRD:P6", "serial:PRD:P7"}
    reasons = {e["unit"]: e["reason"] for e in u["incomplete_examples"]}
    assert "serial:BRD:B8" in reasons["serial:PRD:P7"] and "serial:SUB:S1" in reasons["serial:PRD:P6"]

    assert r["broken_links"] == {"count": 1, "examples": [{"component": "serial:BRD:B9", "item": "BRD", "used_by": ["serial:PRD:P2"]}]}
    assert r["units_without_production"] == {"count": 1, "examples": [{"unit": "serial:SUB:S1", "components": 1}]}
    assert r["class_level_inputs"] == {"edges": 1, "by_item": [{"item": "GLUE", "edges": 1, "parents": 1}]}
    d = r["duplicate_serials"]
    assert d["in_several_production_lots"] == {"count": 1, "examples": [
        {"unit": "serial:PRD:P5", "production_lots": ["lot:PRD:PL1", "lot:PRD:PL2"]}]}
    assert d["ident_under_several_items"] == {"count": 1, "examples": [{"ident": "X7", "nodes": ["serial:MOD:X7", "serial:PRD:X7"]}]}
    assert r["dead_letters"]["total"] == 3
    assert {(x["stage"], x["event_kind"]): x["count"] for x in r["dead_letters"]["by_stage_kind"]} == {
        ("decode", ""): 1, ("validate", "genealogy.UnitCompleted"): 2}

    text = render(r)
    assert "5 of 10 units complete (50.00%)" in text and "serial:BRD:B9" in text


def test_examples_are_capped_but_counts_are_not(writer, read_model):
    edges = [(f"serial:BRD:B{i}", f"serial:PRD:P{i}", "installed") for i in range(30)]
    units = [(f"serial:PRD:P{i}", "lot:PRD:PL1") for i in range(30)] + [("serial:BRD:B-made", "lot:BRD:BL1")]
    load(writer, edges, units)
    r = linkage_report(read_model, examples=5)
    assert r["broken_links"]["count"] == 30 and len(r["broken_links"]["examples"]) == 5
    assert r["units"]["complete"] == 0 and r["units"]["with_genealogy"] == 30 and len(r["units"]["incomplete_examples"]) == 5


def test_empty_store(writer, read_model):
    reset(writer)
    r = linkage_report(read_model)
    assert r["units"]["total"] == 0 and r["units"]["complete_pct"] is None
    assert "n/a" in render(r)


def test_cycle_does_not_loop(writer, read_model):
    load(writer, [("serial:PRD:A", "serial:PRD:B", "installed"), ("serial:PRD:B", "serial:PRD:A", "installed"),
                 ("serial:PRD:Z", "serial:PRD:A", "installed")], [("serial:PRD:A", "lot:PRD:PL1"), ("serial:PRD:B", "lot:PRD:PL1")])
    u = linkage_report(read_model)["units"]
    assert (u["total"], u["complete"], u["unaccounted_serials"]) == (2, 0, 1)


def test_clean_simulated_plant_joins_completely(writer, read_model):
    plant = Plant(units=300, lot_size=100, faulty_units=14, seed=3).generate()
    n_edges, n_units = load_plant(writer, plant)
    assert n_units == 600  # 300 boards + 300 products
    r = linkage_report(read_model)
    assert r["units"]["total"] == 600 and r["units"]["complete"] == 600 and r["units"]["complete_pct"] == 100.0
    assert {i["item"]: (i["units"], i["production_lots"]) for i in r["units"]["by_item"]} == {"BRD-100": (300, 3), "PRD-500": (300, 3)}
    assert r["units"]["unaccounted_serials"] == 0
    assert r["broken_links"]["count"] == r["units_without_production"]["count"] == 0
    assert r["class_level_inputs"]["edges"] == 0
    assert r["duplicate_serials"]["in_several_production_lots"]["count"] == 0
    assert r["duplicate_serials"]["ident_under_several_items"]["count"] == 0
    assert r["dead_letters"]["total"] == 0


def render(report) -> str:
    console = Console(width=200, file=io.StringIO(), color_system=None)
    console.print(format_linkage(report))
    return console.file.getvalue()
