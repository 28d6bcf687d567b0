"""Lot vs serial tracking: the cost model's properties, and the measured report over ClickHouse."""

import io
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from rich.console import Console

from genealogy.sinks.granularity import format_granularity, granularity_report, item_profile, recall_cost
from genealogy.producers.simulator import Plant
from tests.sinks.test_linkage import load, load_plant

counts = st.floats(0, 1e6, allow_nan=False)
money = st.floats(0, 1e5, allow_nan=False)
prob = st.floats(0, 10, allow_nan=False)


@given(counts, counts, money, prob, prob, counts)
def test_costs_rise_with_recall_probability_and_net_benefit_follows(serial, lot, value, p1, p2, volume):
    lo, hi = sorted((p1, p2))
    a, b = recall_cost(serial, lot, value, lo, volume), recall_cost(serial, lot, value, hi, volume)
    assert a["expected_recall_cost"]["lot"] <= b["expected_recall_cost"]["lot"]
    assert a["expected_recall_cost"]["serial"] <= b["expected_recall_cost"]["serial"]
    assert a["serial_capture_cost"] == b["serial_capture_cost"]
    if lot >= serial:
        assert a["net_benefit"] <= b["net_benefit"] + 1e-9 * max(1.0, abs(b["net_benefit"]))
        assert not a["pays_off"] or b["pays_off"]


@given(counts, counts, money, money, prob, counts)
def test_costs_rise_with_unit_value_and_net_benefit_follows(serial, lot, v1, v2, p, volume):
    lo, hi = sorted((v1, v2))
    a, b = recall_cost(serial, lot, lo, p, volume), recall_cost(serial, lot, hi, p, volume)
    assert a["expected_recall_cost"]["lot"] <= b["expected_recall_cost"]["lot"]
    assert a["expected_recall_cost"]["serial"] <= b["expected_recall_cost"]["serial"]
    if lot >= serial:
        assert a["net_benefit"] <= b["net_benefit"] + 1e-9 * max(1.0, abs(b["net_benefit"]))
        assert not a["pays_off"] or b["pays_off"]


@settings(max_examples=200)
@given(st.integers(0, 10_000), st.integers(1, 100_000), st.floats(0.01, 1e4), st.floats(1e-4, 5), st.integers(1, 10**6),
       st.floats(0, 10), st.floats(0.001, 1))
def test_break_even_is_where_both_sides_are_equal(serial, extra, value, p, volume, edges, record_cost):
    lot = serial + extra
    kw = dict(edges_per_unit=edges, serial_record_cost=record_cost)
    c = recall_cost(serial, lot, value, p, volume, **kw)
    be = c["break_even"]
    tol = 1e-6 * max(1.0, c["serial_capture_cost"], c["expected_saving"])
    assert abs(recall_cost(serial, lot, value, be["recall_probability"], volume, **kw)["net_benefit"]) <= tol
    assert abs(recall_cost(serial, lot, be["unit_value"], p, volume, **kw)["net_benefit"]) <= tol
    at_cost = recall_cost(serial, lot, value, p, volume, edges_per_unit=0, serial_record_cost=be["serial_cost_per_unit"])
    assert abs(at_cost["net_benefit"]) <= tol
    assume(not math.isclose(p, be["recall_probability"], rel_tol=1e-9))
    assert c["pays_off"] == (p > be["recall_probability"])
    assert c["pays_off"] == (value > be["unit_value"])
    assert c["verdict"].startswith("serial tracking pays off" if c["pays_off"] else "serial tracking does not pay off")


def test_worked_example_and_edge_cases():
    c = recall_cost(140, 5000, 250.0, 0.1, 100_000, edges_per_unit=5, item="PRD-500")
    # saving 0.1 * 4860 * 250 = 121,500; capture 100,000 * (0.05 + 5 * 0.002) = 6,000
    assert c["expected_saving"] == pytest.approx(121_500) and c["serial_capture_cost"] == pytest.approx(6_000)
    assert c["net_benefit"] == pytest.approx(115_500) and c["pays_off"]
    assert c["break_even"]["recall_probability"] == pytest.approx(6_000 / (4860 * 250))
    assert c["verdict"].startswith("serial tracking pays off for PRD-500: expected saving 121,500.00 per year")

    same = recall_cost(100, 100, 250.0, 0.1, 1000)
    assert not same["pays_off"] and same["break_even"]["recall_probability"] is None
    assert same["verdict"].startswith("serial tracking cannot pay off")
    never = recall_cost(1, 100, 10.0, 0.0, 1000)
    assert not never["pays_off"] and never["break_even"]["unit_value"] is None and "would at" in never["verdict"]
    with pytest.raises(ValueError, match="recall_probability"):
        recall_cost(1, 2, 3.0, -0.1, 10)


# --- measured from ClickHouse ---------------------------------------------------------------------

EDGES = [
    ("lot:CAP:A", "serial:PRD:P1", "consumed"), ("lot:CAP:A", "serial:PRD:P2", "consumed"),
    *[("lot:CAP:B", f"serial:PRD:P{i}", "consumed") for i in range(3, 7)],
    ("lot:RES:R", "lot:MIX:M", "transformed"),                                  # a mixed batch: widens scopes
    ("lot:MIX:M", "serial:PRD:P7", "consumed"), ("lot:MIX:M", "serial:PRD:P8", "consumed"),
    ("serial:BRD:B1", "serial:PRD:P1", "installed"),
    ("lot:CAP:A", "serial:PRD:P1", "consumed"),                                 # redelivered
    ("serial:PRD:P1", "container:carton:C1", "packed"),
]
UNITS = [*[(f"serial:PRD:P{i}", "lot:PRD:PL1") for i in range(1, 5)], *[(f"serial:PRD:P{i}", "lot:PRD:PL2") for i in range(5, 9)],
         ("serial:BRD:B1", "lot:BRD:BL1")]


def test_item_profile_measures_the_graph(writer, read_model):
    load(writer, EDGES, UNITS)
    p = item_profile(read_model, "PRD")
    assert (p["units"], p["production_lots"], p["avg_lot_size"], p["max_lot_size"]) == (8, 2, 4.0, 4)
    assert (p["as_built_edges"], p["edges_per_unit"]) == (9, 1.125)
    assert p["input_lots"] == 3
    assert p["widening_lots"] == {"count": 1, "examples": [{"lot": "lot:MIX:M", "units": 2}]}
    # A: 2 units / PL1 (4); B: 4 units / PL1 + PL2 (8); M: 2 units / PL2 (4)
    assert p["typical_recall"]["serial"] == pytest.approx(8 / 3, abs=0.01)
    assert p["typical_recall"]["lot"] == pytest.approx(16 / 3, abs=0.01)
    assert item_profile(read_model, "NOPE")["units"] == 0


def test_report_uses_the_targets_recall(writer, read_model):
    load(writer, EDGES, UNITS)
    r = granularity_report(read_model, "PRD", "lot:RES:R", unit_value=100.0, recall_probability=0.5)
    assert r["target"]["serial"] == 2 and r["target"]["lot"] == 4 and r["target"]["widened_by"] == {"lot:MIX:M": 2}
    [p] = r["items"]
    assert p["target_recall"] == {"serial": 2, "lot": 4}
    c = p["cost"]
    assert c["basis"] == "recall of lot:RES:R"
    assert (c["inputs"]["serial_units"], c["inputs"]["lot_units"], c["inputs"]["units_per_year"]) == (2, 4, 8)
    assert c["expected_saving"] == pytest.approx(0.5 * 2 * 100)
    assert c["serial_capture_cost"] == pytest.approx(8 * (0.05 + 1.125 * 0.002))
    assert c["pays_off"]

    everything = granularity_report(read_model)
    assert [p["item"] for p in everything["items"]] == ["BRD", "PRD"] and everything["target"] is None
    assert everything["items"][0]["input_lots"] == 0 and not everything["items"][0]["cost"]["pays_off"]
    assert "Lot vs serial tracking" in render(everything)


def test_simulated_plant(writer, read_model):
    load_plant(writer, Plant(units=300, lot_size=100, faulty_units=14, seed=3).generate())
    r = granularity_report(read_model, "PRD-500", "lot:CAP-47U:SUP-CAP-0013", unit_value=250.0, recall_probability=0.1,
                           units_per_year=100_000)
    assert r["target"]["serial"] == 14 and r["target"]["lot"] == 100 and r["target"]["widened_by"] == {}
    [p] = r["items"]
    assert (p["units"], p["production_lots"], p["avg_lot_size"], p["edges_per_unit"]) == (300, 3, 100.0, 5.0)
    assert p["input_lots"] == 6  # three capacitor batches, screws, housings, coating
    assert p["widening_lots"]["count"] == 1 and p["widening_lots"]["examples"][0]["lot"] == "lot:COAT-X:CT-0001"
    c = p["cost"]
    assert (c["inputs"]["serial_units"], c["inputs"]["lot_units"]) == (14, 100)
    # saving 0.1 * 86 * 250 = 2,150 per year; capture 100,000 * (0.05 + 5 * 0.002) = 6,000 per year
    assert c["expected_saving"] == pytest.approx(2_150) and c["serial_capture_cost"] == pytest.approx(6_000)
    assert not c["pays_off"] and "does not pay off for PRD-500" in c["verdict"]
    text = render(r)
    assert "Recall of lot:CAP-47U:SUP-CAP-0013: serial-level 14 units, lot-level 100 units" in text


def render(report) -> str:
    console = Console(width=220, file=io.StringIO(), color_system=None)
    console.print(format_granularity(report))
    return console.file.getvalue()
