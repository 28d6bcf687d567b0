"""The simulated plant spoken in CFX (genealogy simulate --format cfx): the stations load reels, goods
receipt names each reel's supplier lot, and a recall of a supplier lot through the join reaches
exactly the units the plant's own events say consumed it."""

import json

import pytest

from genealogy.domain.derive import derive
from genealogy.producers.cfx_plant import plant_as_cfx, speaks_cfx
from genealogy.producers.ingest import ingest_lines
from genealogy.producers.simulator import BASE_MS, Plant
from tests.support import reference

GRACE, RETENTION, NOW = 10_000, 6 * 3_600_000, BASE_MS + 10**10


def joined_edges(batches) -> set[tuple[str, str, str]]:
    table, edges = {}, set()
    for b in batches:
        out = derive(b, table, GRACE, RETENTION, now_ms=NOW)
        edges |= {(e["child"], e["parent"], e["relation"]) for e in out.edges}
    flush = {s: max(e["event_ms"] for b in batches if b["source"] == s for _, e in b["events"]) + GRACE + 1
             for s in {b["source"] for b in batches}}
    for station, ms in flush.items():
        out = derive({"batch_id": f"hb-{station}", "source": station, "sent_ms": 0, "events": [
            ("genealogy.StationHeartbeat", {"event_id": f"hb-{station}", "event_ms": ms, "station": station})]},
            table, GRACE, RETENTION, now_ms=NOW)
        edges |= {(e["child"], e["parent"], e["relation"]) for e in out.edges}
    return edges


@pytest.mark.parametrize("disorder_ms", [0, 4_000])
def test_supplier_lot_recall_on_the_cfx_plant_equals_the_plants_own_truth(disorder_ms):
    plant = Plant(units=400, lot_size=100, faulty_units=40, reel_size=90, disorder_ms=disorder_ms, bad_events=3).generate()
    messages, native = plant_as_cfx(plant)
    assert {m["Source"] for m in messages} >= {"SMT-1", "ASSY-1", "Stores.GoodsReceipt"}
    # What stays in the plant's own form from a CFX station is its invalid events only.
    assert all(e["event_id"].startswith("bad-") for b in native if speaks_cfx(b["source"]) for _, e in b["events"])
    cfx = ingest_lines([json.dumps(m) for m in messages], "cfx", "plant.cfx")
    assert cfx.counts["rejects"] == 0 and cfx.counts["unknown"] == 0
    edges = joined_edges(cfx.batches + native)

    bad = {e["event_id"] for _, e in plant.all_events() if e["event_id"].startswith("bad-")}
    truth = reference.edges(reference.unique(plant.all_events(), skip_ids=bad))
    lots = {child for child, _, relation in truth if relation == "consumed" and child.startswith("lot:")}
    assert plant.faulty_lot in lots
    for lot in sorted(lots):
        units = {n for n in reference.reach_forward(edges, lot) if n.startswith("serial:")}
        assert units == {n for n in reference.reach_forward(truth, lot) if n.startswith("serial:")}, lot
    # Every consumed material is a reel now, and every reel has its supplier lot.
    reels = {child for child, _, relation in edges if relation == "consumed" and child.startswith("lot:")}
    assert reels and all("-R" in r.rsplit(":", 1)[1] for r in reels)
    assert reels <= {parent for _, parent, relation in edges if relation == "supplied"}
