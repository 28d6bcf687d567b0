"""EPCIS 2.0 and IPC-CFX mappers: fixtures -> capture events -> stream derivation and the Avro contract."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone

import pytest

from tests.support.paths import FIXTURES

from genealogy import schemas
from genealogy.producers.cfx import CfxContext, map_cfx, map_cfx_lines
from genealogy.producers.epcis import map_epcis
from genealogy.producers.mapping import by_station
from genealogy.domain.derive import derive


NOW_MS = 1_800_000_000_000  # a fixed "processing clock" after every fixture time (2027-01-15)

PRODUCT_GTIN = "04012345333336"
RESIN, HARDENER, KIT_PART = "04012345111118", "04012345222227", "04012345444445"
SSCC = "040123450000000016"
MIXING, PACKING, DISPATCH = "sgln:4012345000016", "sgln:4012345000023", "sgln:4012345000030"
SHIPMENT = "urn:epcglobal:cbv:bt:4012345000016:DESADV-5501"
PLACER, AOI = "Acme.Placer.SN4411", "Acme.AOI.SN0077"


def load(path: str):
    return json.loads((FIXTURES / path).read_text())


def of_kind(events, kind):
    return [e for k, e in events if k == f"genealogy.{kind}"]


def node(ref: dict) -> str:
    return f"{ref['kind']}:{ref['item']}:{ref['ident']}"


def edges(events) -> tuple[set[tuple[str, str, str]], list[dict], list]:
    """Run mapped events through the stream derivation, one batch per station, sharing join state."""
    states: dict = {}
    found, units, rejected = set(), [], []
    for n, (station, group) in enumerate(by_station(events).items()):
        batch = {"batch_id": f"test-{n}", "source": station, "sent_ms": 0, "events": group}
        out = derive(batch, states, grace_ms=0, retention_ms=10**12, now_ms=NOW_MS)
        found |= {(e["child"], e["parent"], e["relation"]) for e in out.edges}
        units += out.units
        rejected += out.rejected
    return found, units, rejected


@pytest.fixture(scope="module")
def plant():
    return map_epcis(load("epcis/plant_document.jsonld"), origin="plant_document.jsonld")


@pytest.fixture(scope="module")
def line():
    lines = (FIXTURES / "cfx/line1_stations.jsonl").read_text().splitlines()
    return map_cfx_lines(lines, origin="line1_stations.jsonl", context=CfxContext(unit_item="BRD-100"))


# --- EPCIS -------------------------------------------------------------------------

def test_transformation_gives_lot_transformed_and_lot_membership(plant):
    [t] = [e for e in of_kind(plant.events, "LotTransformed")]
    assert t["station"] == MIXING
    assert t["event_ms"] == int(datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc).timestamp() * 1000)
    assert [(node(q["node"]), q["quantity"]) for q in t["inputs"]] == [
        (f"lot:{RESIN}:R-77", 20.0), (f"lot:{HARDENER}:H-12", 5.0), (f"class:{KIT_PART}:*", 3.0)]
    assert [node(q["node"]) for q in t["outputs"]] == [f"serial:{PRODUCT_GTIN}:S100{i}" for i in (1, 2, 3)]
    assert t["work_order"] == "urn:epcglobal:cbv:bt:4012345000016:WO-7001"

    completed = [e for e in of_kind(plant.events, "UnitCompleted") if e["event_id"].startswith(t["event_id"])]
    assert [node(e["unit"]) for e in completed] == [f"serial:{PRODUCT_GTIN}:S100{i}" for i in (1, 2, 3)]
    assert {(e["production_lot"], e["work_order"], e["station"]) for e in completed} == {("PL-2026-07", t["work_order"], MIXING)}


def test_aggregation_shipping_and_commissioning(plant):
    packed = {node(e["container"]): e for e in of_kind(plant.events, "Packed")}
    assert set(packed) == {f"container:sscc:{SSCC}", f"shipment:shipment:{SHIPMENT}"}
    carton = packed[f"container:sscc:{SSCC}"]
    assert carton["station"] == PACKING
    assert [node(r) for r in carton["contents"]] == [f"serial:{PRODUCT_GTIN}:S100{i}" for i in (1, 2, 3)] + [f"lot:{RESIN}:R-77"]
    shipped = packed[f"shipment:shipment:{SHIPMENT}"]  # desadv preferred over the po
    assert shipped["station"] == DISPATCH and [node(r) for r in shipped["contents"]] == [f"container:sscc:{SSCC}"]
    assert shipped["event_id"].startswith("ni:///sha-256;")  # no eventID in the fixture: the CBV 2.0 event hash

    commissioned = [e for e in of_kind(plant.events, "UnitCompleted") if "000000000006" in e["event_id"]]
    assert [(node(e["unit"]), e["production_lot"]) for e in commissioned] == [
        (f"serial:{PRODUCT_GTIN}:S2001", "PL-2026-07"), (f"serial:{PRODUCT_GTIN}:S2002", "PL-2026-07")]


def test_class_level_pattern_is_kept_and_listed(plant):
    assert plant.untraceable == [f"class:{KIT_PART}:*"]


def test_rejects_name_the_field_and_the_rest_continue(plant):
    reasons = {r.origin: r.reason for r in plant.rejects}
    assert set(reasons) == {"plant_document.jsonld#eventList[3]", "plant_document.jsonld#eventList[7]"}
    assert reasons["plant_document.jsonld#eventList[3]"].startswith("childEPCs[1]: ")
    assert "check digit" in reasons["plant_document.jsonld#eventList[3]"]
    assert reasons["plant_document.jsonld#eventList[7]"].startswith("eventTime: ")
    assert all(r.raw["type"] in ("AggregationEvent", "TransformationEvent") for r in plant.rejects)
    # 1 transformation + 3 completions, 2 packings, 1 unpacking, 2 commissioned serials, and 3 business
    # transaction links (the transformation's production order, the shipment's purchase order and despatch advice)
    assert len(plant.events) == 12
    links = [e for k, e in plant.events if k == "genealogy.TransactionLinked"]
    assert sorted(e["transaction"]["item"] for e in links) == ["desadv", "po", "prodorder"]


def test_plain_commissioning_is_counted_not_mapped(plant):
    assert plant.unknown == 1
    assert any("eventList[6]" in n and "no ILMD lot" in n for n in plant.notes)


def test_unpacking_is_an_unpacked_event(plant):
    """eventList[4]: an AggregationEvent DELETE with no childEPCs takes everything out of the container."""
    [unpacked] = [e for k, e in plant.events if k == "genealogy.Unpacked"]
    assert node(unpacked["container"]).startswith("container:sscc:") and unpacked["contents"] == []


def test_urn_and_digital_link_forms_give_identical_events():
    urn = map_epcis(load("epcis/transformation_urn.json"), origin="urn")
    dl = map_epcis(load("epcis/transformation_dl.jsonld"), origin="dl")
    assert not urn.rejects and not dl.rejects
    assert urn.events == dl.events
    assert [k for k, _ in urn.events] == ["genealogy.LotTransformed", "genealogy.UnitCompleted", "genealogy.UnitCompleted"]
    assert urn.events[0][1]["station"] == MIXING


def test_event_hash_ids_are_stable():
    raw = load("epcis/transformation_urn.json")
    first = map_epcis(raw, origin="a").events[0][1]["event_id"]
    assert first.startswith("ni:///sha-256;") and first.endswith("?ver=CBV2.0")
    assert map_epcis(copy.deepcopy(raw), origin="b").events[0][1]["event_id"] == first

    resent = dict(reversed(list(raw.items())), recordTime="2026-03-03T00:00:00Z")  # other key order, later record time
    assert map_epcis(resent, origin="c").events[0][1]["event_id"] == first

    changed = copy.deepcopy(raw)
    changed["inputQuantityList"][0]["quantity"] = 11
    assert map_epcis(changed, origin="d").events[0][1]["event_id"] != first


def test_single_event_rejects_name_the_field():
    raw = load("epcis/transformation_urn.json")
    no_place = {k: v for k, v in raw.items() if k not in ("readPoint", "bizLocation")}
    [r] = map_epcis(no_place, origin="x.json").rejects
    assert r.origin == "x.json" and r.reason.startswith("readPoint.id: missing")

    class_output = dict(raw, outputEPCList=[], outputQuantityList=[{"epcClass": "urn:epc:idpat:sgtin:4012345.033333.*"}])
    kept = map_epcis(class_output, origin="y.json")  # a class-level output is kept, reported untraceable
    assert not kept.rejects and "class:04012345333336:*" in kept.untraceable

    bad_urn = dict(raw, inputEPCList=["urn:epc:id:sgtin:4012345.022222"])
    [r] = map_epcis(bad_urn, origin="z.json").rejects
    assert r.reason.startswith("inputEPCList[0]: ")


def test_shipping_named_by_destination_when_no_transaction():
    event = {
        "type": "ObjectEvent", "action": "OBSERVE", "bizStep": "https://ref.gs1.org/cbv/BizStep-shipping",
        "eventTime": "2026-03-02T12:00:00Z", "eventTimeZoneOffset": "+00:00",
        "epcList": [f"https://id.gs1.org/00/{SSCC}"], "readPoint": {"id": "urn:epc:id:sgln:4012345.00003.0"},
        "destinationList": [{"type": "owning_party", "destination": "urn:epc:id:pgln:4098765.00000"},
                            {"type": "location", "destination": "https://id.gs1.org/414/4098765000003"}],
    }
    [(kind, e)] = map_epcis(event, origin="one").events
    assert kind == "genealogy.Packed"
    assert node(e["container"]) == "shipment:shipment:sgln:4098765000003"
    assert [node(r) for r in e["contents"]] == [f"container:sscc:{SSCC}"]


# --- CFX ---------------------------------------------------------------------------

def test_cfx_station_sequence(line):
    kinds = [k.split(".")[1] for k, _ in line.events]
    assert kinds == ["StationHeartbeat", "MaterialLoaded", "MaterialLoaded", "UnitRouted", "UnitCompleted", "UnitCompleted",
                     "UnitCompleted", "PackageUnloaded", "MaterialLoaded", "UnitCompleted", "ComponentInstalled",
                     "MachineStateChanged", "UnitScrapped", "StationHeartbeat"]
    loads = of_kind(line.events, "MaterialLoaded")
    assert [(e["slot"], node(e["material"])) for e in loads] == [
        ("FDR-01", "lot:RES-10K:REEL-R-0001"), ("FDR-02", "lot:CAP-100N:REEL-C-0001"), ("FDR-01", "lot:RES-10K:REEL-R-0002")]
    [unload] = of_kind(line.events, "PackageUnloaded")
    assert unload["package"] == "REEL-R-0001"  # the join finds its slot

    done = of_kind(line.events, "UnitCompleted")
    assert [e["unit"]["ident"] for e in done] == ["B0001", "B0002", "B0003", "B0004"]  # B0001's units came from WorkStarted
    assert {(e["unit"]["item"], e["production_lot"], e["work_order"]) for e in done} == {("BRD-100", "PL-BRD-0042-A", "WO-BRD-0042")}
    assert done[0]["event_id"] == "7d3f9a10-0000-4000-8000-000000000001#B0001"

    [installed] = of_kind(line.events, "ComponentInstalled")
    assert (node(installed["unit"]), node(installed["component"]), installed["quantity"]) == (
        "serial:BRD-100:B0004", "lot:CAP-100N:REEL-C-0001", 2.0)
    [lane] = of_kind(line.events, "UnitRouted")  # WorkStarted's Lane
    assert (node(lane["unit"]), lane["route"], lane["name"]) == ("serial:BRD-100:B0001", "lane", "1")
    [state] = of_kind(line.events, "MachineStateChanged")
    assert (state["state"], state["reason"]) == ("USD_Repair", "NOZZLE-CLOG-12")
    [scrap] = of_kind(line.events, "UnitScrapped")
    assert (scrap["station"], node(scrap["unit"])) == (AOI, "serial:BRD-100:B0003")
    assert scrap["reason"].startswith("DefectiveRepairNotPossible: ")
    assert all(e["event_ms"] > 0 for _, e in line.events)


def test_cfx_unknown_messages_are_counted(line):
    assert line.unknown == 2
    assert line.notes == [
        "line1_stations.jsonl:2#Materials[2]: package REEL-L-0009 kitted onto carrier FEEDER-8MM-119; "
        "it is loaded when MaterialCarriersLoaded puts the carrier on a slot",
        "line1_stations.jsonl:11: CFX.ResourcePerformance.EnergyConsumed: no genealogy mapping for this message"]


def test_cfx_rejects_name_the_line_and_field(line):
    reasons = {r.origin: r.reason for r in line.rejects}
    assert set(reasons) == {"line1_stations.jsonl:13"}
    assert reasons["line1_stations.jsonl:13"].startswith("line is not JSON")


def envelope(name: str, body: dict, uid: str = "u-1", ts: str = "2026-03-02T08:00:00.0000000+01:00") -> dict:
    return {"MessageName": name, "Version": "1.7", "TimeStamp": ts, "UniqueID": uid, "Source": PLACER, "MessageBody": body}


def test_cfx_unload_needs_no_memory_of_the_load():
    """The stream's join finds the slot (PackageUnloaded); a load in an earlier file or before a gateway
    restart is enough. An identifier that is not a string is still a reject."""
    r = map_cfx(envelope("CFX.Materials.Storage.MaterialsUnloaded", {"MaterialPackageIdentifiers": ["REEL-X", 7]}), origin="m")
    [unload] = of_kind(r.events, "PackageUnloaded")
    assert (unload["package"], unload["station"]) == ("REEL-X", PLACER)
    [bad] = r.rejects
    assert bad.origin == "m#MaterialPackageIdentifiers[1]"


def test_cfx_panel_positions_and_default_item():
    body = {"TransactionID": "t-9", "Units": [{"UnitIdentifier": "PANEL-1", "PositionNumber": 1},
                                              {"UnitIdentifier": "PANEL-1", "PositionNumber": 2}]}
    plain = map_cfx(envelope("CFX.Production.WorkCompleted", body), origin="p")
    assert not plain.events and [r.origin for r in plain.rejects] == ["p#Units[0]", "p#Units[1]"]
    assert "several positions" in plain.rejects[0].reason

    qualified = map_cfx(envelope("CFX.Production.WorkCompleted", body), origin="p", context=CfxContext(qualify_positions=True))
    assert [node(e["unit"]) for e in of_kind(qualified.events, "UnitCompleted")] == ["serial:UNKNOWN:PANEL-1#1", "serial:UNKNOWN:PANEL-1#2"]
    assert {e["production_lot"] for e in of_kind(qualified.events, "UnitCompleted")} == {"t-9"}  # no Batch: the transaction


def test_cfx_units_processed_and_work_completed_give_one_completion_per_unit():
    ctx = CfxContext()
    processed = map_cfx(envelope("CFX.Production.Processing.UnitsProcessed",
                                 {"TransactionId": "t-5", "UnitProcessData": [{"UnitIdentifier": "U1", "UnitResult": "Succeeded"}]},
                                 uid="u-1"), origin="a", context=ctx)
    completed = map_cfx(envelope("CFX.Production.WorkCompleted", {"TransactionID": "t-5", "Result": "Completed",
                                                                  "Units": [{"UnitIdentifier": "U1", "PositionNumber": 1}]},
                                 uid="u-2"), origin="b", context=ctx)
    assert processed.events[0][1]["event_id"] == completed.events[0][1]["event_id"] == "t-5#U1"


def test_cfx_envelope_time_needs_an_offset():
    [r] = map_cfx(envelope("CFX.Heartbeat", {}, ts="2026-03-02T08:00:00"), origin="h").rejects
    assert r.reason.startswith("TimeStamp: ")


# --- end to end: stream derivation and the Avro contract --------------------------------

def test_epcis_events_pass_stream_derivation(plant):
    found, units, rejected = edges(plant.events)
    assert rejected == []
    s1001 = f"serial:{PRODUCT_GTIN}:S1001"
    assert {(f"lot:{RESIN}:R-77", s1001, "transformed"), (f"lot:{HARDENER}:H-12", s1001, "transformed"),
            (f"class:{KIT_PART}:*", s1001, "transformed"),
            (s1001, f"container:sscc:{SSCC}", "packed"), (f"lot:{RESIN}:R-77", f"container:sscc:{SSCC}", "packed"),
            (f"container:sscc:{SSCC}", f"shipment:shipment:{SHIPMENT}", "packed")} <= found
    lots = {u["unit"]: u["production_lot"] for u in units}
    assert lots[s1001] == lots[f"serial:{PRODUCT_GTIN}:S2002"] == f"lot:{PRODUCT_GTIN}:PL-2026-07"


def test_cfx_events_pass_stream_derivation(line):
    found, units, rejected = edges(line.events)
    assert rejected == []
    consumed = {(c, p) for c, p, rel in found if rel == "consumed"}
    r1, r2, c1 = "lot:RES-10K:REEL-R-0001", "lot:RES-10K:REEL-R-0002", "lot:CAP-100N:REEL-C-0001"
    board = "serial:BRD-100:B000{}".format
    assert consumed == {(r1, board(1)), (r1, board(2)), (r1, board(3)), (r2, board(4)),
                        (c1, board(1)), (c1, board(2)), (c1, board(3)), (c1, board(4))}
    assert (c1, board(4), "installed") in found
    assert {u["production_lot"] for u in units} == {"lot:BRD-100:PL-BRD-0042-A"}


def test_mapped_events_fit_the_avro_contract(plant, line):
    serde = schemas.local_serde()
    for n, (station, group) in enumerate(by_station(plant.events + line.events).items()):
        batch = {"batch_id": f"avro-{n}", "source": station, "sent_ms": 0, "events": group}
        name, decoded = serde.decode(serde.encode(schemas.CAPTURE, batch), expect=schemas.CAPTURE)
        assert decoded == batch


def test_a_transaction_event_delete_unlinks_its_objects_and_no_objects_unlinks_all():
    """EPCIS: a TransactionEvent declares objects associated with or disassociated from business transactions;
    another event's bizTransactionList is context, so its DELETE unlinks nothing."""
    from genealogy.producers.epcis import map_epcis

    def doc(*events):
        return {"@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"], "type": "EPCISDocument",
                "schemaVersion": "2.0", "creationDate": "2026-11-30T10:00:00Z", "epcisBody": {"eventList": list(events)}}
    po = [{"type": "po", "bizTransaction": "urn:epcglobal:cbv:bt:0614141073467:PO-9"}]
    base = {"eventTime": "2026-11-30T08:00:00Z", "eventTimeZoneOffset": "+00:00", "readPoint": {"id": "urn:epc:id:sgln:9521141.00000.1"}}
    some = {"type": "TransactionEvent", **base, "eventID": "urn:uuid:1", "action": "DELETE", "bizTransactionList": po,
            "epcList": ["urn:epc:id:sgtin:9521141.000001.X1"]}
    every = {"type": "TransactionEvent", **base, "eventID": "urn:uuid:2", "action": "DELETE", "bizTransactionList": po, "epcList": []}
    context = {"type": "ObjectEvent", **base, "eventID": "urn:uuid:3", "action": "DELETE", "bizTransactionList": po,
               "epcList": ["urn:epc:id:sgtin:9521141.000001.X1"]}
    r = map_epcis(doc(some, every, context), origin="t")
    unlinked = [(e["container"]["ident"], [c["ident"] for c in e["contents"]]) for k, e in r.events if k == "genealogy.Unpacked"]
    assert unlinked == [("urn:epcglobal:cbv:bt:0614141073467:PO-9", ["X1"]), ("urn:epcglobal:cbv:bt:0614141073467:PO-9", [])]
    assert not [k for k, _ in r.events if k == "genealogy.TransactionLinked"]
    assert any("only a TransactionEvent unlinks" in note for note in r.notes)
