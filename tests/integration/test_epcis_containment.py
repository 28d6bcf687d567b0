"""Unpacking and repacking on the real stack, through `genealogy ingest`: units packed into carton C,
two of them taken out (AggregationEvent DELETE with childEPCs) and repacked into carton D, carton E
emptied whole (DELETE without childEPCs), then every carton shipped. A recall of each unit names
only the containers it was in and the shipments that carried it, and its trace says where it was
and where it is now. Once with the DELETEs ingested long after everything else was stored, once with
them ingested before the events they affect. Both equal a brute-force replay of the packing history.
"""

from __future__ import annotations

import json

import pytest

from genealogy.producers.epcis import map_epcis
from tests.integration.test_epcis_corrections import base, document, ingest, sscc
from tests.support import reference
from tests.support.stack import ServiceClient, start_stack, wait_drained

pytestmark = pytest.mark.integration

PACKING, DOCK = "urn:epc:id:sgln:9521141.00000.1", "urn:epc:id:sgln:9521141.00000.2"


def history(k: int) -> tuple[list[dict], list[dict], list[str]]:
    """(packings and shipments, unpackings, units) of scenario k."""
    serials = [f"urn:epc:id:sgtin:9521141.000001.K{k}{n}" for n in range(5)]
    c, d, e = sscc(200 * k + 1), sscc(200 * k + 2), sscc(200 * k + 3)
    uid = iter(range(1, 100))

    def ev(minute: int, step: str, where: str) -> dict:
        return base(f"00000000-0000-4000-8000-00000{k:02d}{next(uid):05d}", minute, step, where)

    def pack(minute: int, parent: str, children: list[str]) -> dict:
        return {"type": "AggregationEvent", **ev(minute, "packing", PACKING), "parentID": parent, "childEPCs": children, "action": "ADD"}

    def ship(minute: int, carton: str, n: int) -> dict:
        return {"type": "ObjectEvent", **ev(minute, "shipping", DOCK), "epcList": [carton], "action": "OBSERVE",
                "bizTransactionList": [{"type": "desadv", "bizTransaction": f"urn:epcglobal:cbv:bt:0614141073467:DESADV-{k}{n}"}]}

    def order(minute: int, carton: str, action: str, po: str) -> dict:
        fields = {key: value for key, value in ev(minute, "", PACKING).items() if key != "bizStep"}
        return {"type": "TransactionEvent", **fields, "epcList": [carton], "action": action,
                "bizTransactionList": [{"type": "po", "bizTransaction": f"urn:epcglobal:cbv:bt:0614141073467:{po}"}]}

    made = {"type": "ObjectEvent", **ev(1, "commissioning", PACKING), "epcList": serials, "action": "ADD",
            "ilmd": {"cbvmda:lotNumber": f"LOT-K{k}"}}
    # carton D is allocated to one order, unallocated before the units go in, then allocated to another
    packs = [made, pack(5, c, serials[:4]), pack(6, e, serials[4:]), order(12, d, "ADD", f"PO-{k}1"), pack(20, d, serials[:2]),
             order(21, d, "ADD", f"PO-{k}2"), ship(30, c, 1), ship(31, d, 2), ship(32, e, 3)]
    unpacks = [{"type": "AggregationEvent", **ev(10, "unpacking", PACKING), "parentID": c, "childEPCs": serials[:2], "action": "DELETE"},
               {"type": "AggregationEvent", **ev(11, "unpacking", PACKING), "parentID": e, "action": "DELETE"},
               order(15, d, "DELETE", f"PO-{k}1")]
    return packs, unpacks, serials


def test_unpacked_units_leave_the_carton_and_its_shipment_in_either_arrival_order(tmp_path):
    late_packs, late_unpacks, late_units = history(1)    # DELETEs after everything was stored
    early_packs, early_unpacks, early_units = history(2)  # DELETEs before the events they affect
    stack = start_stack(tmp_path)
    try:
        client = ServiceClient.for_settings(stack.settings)
        ingest(stack, tmp_path, "day1.jsonld", early_unpacks + late_packs)
        wait_drained(client, settle_s=3.0, timeout=180)
        ingest(stack, tmp_path, "day2.jsonld", late_unpacks + early_packs)
        wait_drained(client, settle_s=3.0, timeout=180)

        captured = map_epcis(json.loads(document(late_packs + late_unpacks + early_packs + early_unpacks)), origin="t").events
        held = reference.held_over_time(captured)
        for unit in late_units + early_units:
            code, r = client.get("/recall", serial=unit)
            assert code == 200, r
            expected = held[r["target"]]
            assert r["containers"] == sorted(n for n in expected if n.startswith("container:")), unit
            assert r["shipments"] == sorted(n for n in expected if n.startswith("shipment:")), unit
            assert r["business_transactions"] == sorted(n for n in expected if n.startswith("transaction:")), unit

            # The recall itself says where the unit was and is: its direct cartons, from/to.
            direct = {reference.nid(e["container"]) for k, e in captured
                      if k == "genealogy.Packed" and any(reference.nid(c) == r["target"] for c in e["contents"])}
            assert {w["node"] for w in r["where"].get(r["target"], [])} == direct, unit
            last = (late_units if unit in late_units else early_units).index(unit) == 4  # the unit of the emptied carton E
            assert sum(w["to_ms"] is None for w in r["where"].get(r["target"], [])) == (0 if last else 1)

            code, t = client.get("/trace", serial=unit)
            assert code == 200, t
            assert {c["node"] for c in t["containment"]} == {n for n in expected if not n.startswith("transaction:")}
            now = [n for n in t["now"] if n.startswith("container:")]
            # Repacked units are in D now; the others of C still in C; the unit of the emptied E in nothing.
            position = (late_units if unit in late_units else early_units).index(unit)
            assert len(now) == (0 if position == 4 else 1)
            assert len(r["shipments"]) == (0 if position == 4 else 1)
    finally:
        stack.stop()
