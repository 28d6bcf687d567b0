"""EPCIS error declarations on the real stack, through `genealogy ingest` as a user sends them: units
packed into carton A, that packing declared erroneous with a corrective event packing them into
carton B, and both cartons shipped. A recall of those units must name carton B and its shipment
only, whether the declaration is ingested long after the events (the edges were stored and must go)
or before them (they must never be stored). Recall's containers and shipments, the stored edges, and
linkage's count of corrections equal a brute-force reference.
"""

from __future__ import annotations

import json

import pytest

from genealogy.domain.ids import gs1_check_digit
from genealogy.producers.epcis import map_epcis
from tests.support import reference
from tests.support.stack import ServiceClient, cli, sql, start_stack, wait_drained

pytestmark = pytest.mark.integration

PACKING, DOCK = "urn:epc:id:sgln:9521141.00000.1", "urn:epc:id:sgln:9521141.00000.2"


def sscc(n: int) -> str:
    body = f"09521141{n:09d}"
    return f"https://id.gs1.org/00/{body}{gs1_check_digit(body)}"


def base(eid: str, minute: int, step: str, where: str) -> dict:
    return {"eventID": f"urn:uuid:{eid}", "eventTime": f"2026-11-30T08:{minute:02d}:00Z", "eventTimeZoneOffset": "+00:00",
            "bizStep": step, "readPoint": {"id": where}}


def scenario(k: int) -> tuple[list[dict], dict, list[str]]:
    """Commission three units, pack them into carton A, then (corrected) into carton B, ship both cartons;
    and the declaration of the packing into A. Returns (events, declaration, units)."""
    serials = [f"urn:epc:id:sgtin:9521141.000001.S{k}{n}" for n in range(3)]
    carton_a, carton_b = sscc(100 * k + 1), sscc(100 * k + 2)
    made = {"type": "ObjectEvent", **base(f"00000000-0000-4000-8000-0000000{k:02d}001", 1, "commissioning", PACKING),
            "epcList": serials, "action": "ADD", "ilmd": {"cbvmda:lotNumber": f"LOT-{k}"}}
    into_a = {"type": "AggregationEvent", **base(f"00000000-0000-4000-8000-0000000{k:02d}002", 5, "packing", PACKING),
              "parentID": carton_a, "childEPCs": serials, "action": "ADD"}
    into_b = {"type": "AggregationEvent", **base(f"00000000-0000-4000-8000-0000000{k:02d}003", 10, "packing", PACKING),
              "parentID": carton_b, "childEPCs": serials, "action": "ADD"}
    ships = [{"type": "ObjectEvent", **base(f"00000000-0000-4000-8000-0000000{k:02d}00{4 + n}", 20 + n, "shipping", DOCK),
              "epcList": [carton], "action": "OBSERVE",
              "bizTransactionList": [{"type": "desadv", "bizTransaction": f"urn:epcglobal:cbv:bt:0614141073467:DESADV-{k}{n}"}]}
             for n, carton in enumerate((carton_a, carton_b))]
    declaration = {**into_a, "errorDeclaration": {"declarationTime": "2026-11-30T09:00:00Z", "reason": "incorrect_data",
                                                  "correctiveEventIDs": [into_b["eventID"]]}}
    return [made, into_a, into_b, *ships], declaration, serials


def document(events: list[dict]) -> str:
    return json.dumps({"@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
                       "type": "EPCISDocument", "schemaVersion": "2.0", "creationDate": "2026-11-30T10:00:00Z",
                       "epcisBody": {"eventList": events}})


def ingest(stack, tmp_path, name: str, events: list[dict]) -> None:
    path = tmp_path / name
    path.write_text(document(events))
    out = cli(stack, "ingest", "--format", "epcis", str(path), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["rejects"] == 0


def test_an_error_declaration_moves_units_out_of_the_carton_and_its_shipment(tmp_path):
    late_events, late_declaration, late_units = scenario(1)     # declared after the events were stored
    early_events, early_declaration, early_units = scenario(2)  # declared before the events arrive
    stack = start_stack(tmp_path)
    try:
        client = ServiceClient.for_settings(stack.settings)
        ingest(stack, tmp_path, "day1.jsonld", late_events + [early_declaration])
        wait_drained(client, settle_s=3.0, timeout=180)
        carton_a = late_events[1]["parentID"]
        assert sql(client, "SELECT count() FROM edges WHERE parent = {a:String}", a=f"container:sscc:{carton_a[-18:]}")[0][0] == 3
        ingest(stack, tmp_path, "day2.jsonld", [late_declaration] + early_events)
        wait_drained(client, settle_s=3.0, timeout=180)

        captured = []
        for events in (late_events + [early_declaration], [late_declaration] + early_events):
            captured += map_epcis(json.loads(document(events)), origin="t").events
        expected = reference.edges(captured)
        stored = {tuple(r) for r in sql(client, "SELECT DISTINCT child, parent, relation FROM edges")}
        assert stored == expected
        for unit in late_units + early_units:
            code, r = client.get("/recall", serial=unit)
            assert code == 200, r
            reached = reference.reach_forward(expected, r["target"])
            assert r["containers"] == sorted(n for n in reached if n.startswith("container:"))
            assert r["shipments"] == sorted(n for n in reached if n.startswith("shipment:"))
            assert len(r["containers"]) == 1 and r["containers"][0].endswith(
                (late_events if unit in late_units else early_events)[2]["parentID"][-18:])
            assert len(r["shipments"]) == 1

        code, report = client.get("/linkage")
        assert code == 200
        assert report["corrections"]["declarations"] == 2 and report["corrections"]["edges_retracted"] == 6
        assert {e["reason"] for e in report["corrections"]["examples"]} == {"incorrect_data"}
        # Each retracted edge is on record with its declaration's corrective event.
        assert sql(client, "SELECT count() FROM corrections WHERE corrective = {c:String}",
                   c=late_events[2]["eventID"]) == [[3]]
    finally:
        stack.stop()


def test_a_declaration_survives_a_whole_stack_stop_before_its_event_arrives(tmp_path):
    """The declaration is stored, the whole stack stops (broker, workers, sink, store); after the restart the
    declared events arrive for the first time and the already stored ones are delivered again: none of
    the retracted edges may come back, since the sink rebuilds what was retracted from the corrections table."""
    events, declaration, units = scenario(3)
    stack = start_stack(tmp_path)
    try:
        client = ServiceClient.for_settings(stack.settings)
        ingest(stack, tmp_path, "declaration.jsonld", [declaration])
        wait_drained(client, settle_s=3.0, timeout=180)
        assert sql(client, "SELECT count() FROM corrections")[0][0] == 3
    finally:
        stack.stop()
    stack = start_stack(tmp_path)
    try:
        client = ServiceClient.for_settings(stack.settings)
        ingest(stack, tmp_path, "events.jsonld", events)
        ingest(stack, tmp_path, "again.jsonld", events)  # a redelivery of the same events
        wait_drained(client, settle_s=3.0, timeout=180)
        captured = map_epcis(json.loads(document(events + [declaration])), origin="t").events
        stored = {tuple(r) for r in sql(client, "SELECT DISTINCT child, parent, relation FROM edges")}
        assert stored == reference.edges(captured)
        for unit in units:
            code, r = client.get("/recall", serial=unit)
            assert code == 200 and len(r["containers"]) == 1 and r["containers"][0].endswith(events[2]["parentID"][-18:]), r
    finally:
        stack.stop()
